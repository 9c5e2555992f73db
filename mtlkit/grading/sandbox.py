"""Run the grader's child process under limits, with no secrets in reach where the operating system allows.

Modes (the strongest available is chosen per run and recorded in the gradebook and the feedback):

``namespaces``  Linux mount + network + PID namespaces (``unshare``): no network, a private /tmp, tmpfs over the
                instructor's sources, the submissions, feedback and gradebook, its own /proc (the secret lives in
                the grader's environment); every process it starts dies with it.
``bwrap``       Bubblewrap, where ``unshare`` is refused but bwrap works (Ubuntu 24.04): the same isolation, on a
                read-only view of the file system with the job folder bound read-write.
``rlimits``     Limits, a clean environment and a temporary working folder only; used only when asked for by name.

All modes: a wall-clock limit, time budgets for the cells and each probe, RLIMIT_DATA / NPROC / FSIZE / CORE, an
output cap, a clean environment and a working folder holding only the job. A root grader runs each child as a user
of its own. The details, and what each mode does not hide: assignments/GRADING.md, "How the sandbox works" and
"Sandbox modes".
"""
from __future__ import annotations

import functools
import itertools
import os
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Limits", "ChildResult", "detect_mode", "run_child", "can_hide", "MODES", "READY", "SETUP_FAILED"]

MODES = ("namespaces", "bwrap", "rlimits")  # strongest first
CHILD_UID_BASE = 2_000_000  # root grader: children run as unnamed users CHILD_UID_BASE + n
_uid_counter = itertools.count()
_uid_lock = threading.Lock()
JOB_PATH = "/tmp/job"  # where the child sees its job folder in namespaces mode
SCRATCH = ("/var/tmp", "/dev/shm")  # world-writable folders besides /tmp: a fresh tmpfs over each in the sandbox
SETUP_FAILED = 97  # exit status of a sandbox whose mounts failed (a grader problem, not the student's)
# the child's first line, printed before it runs anything of the student's: a run without it never started
READY = "[mtlkit grading child started]"
READY_WITHIN = 4096  # bytes of the log it must appear in (the sandbox's own messages may precede it)


@dataclass(frozen=True)
class Limits:
    """Per-submission limits. ``nproc`` counts threads too (torch's pools included)."""

    timeout_s: float = 600.0
    memory_mb: int = 3072
    output_kb: int = 256
    nproc: int = 128
    fsize_mb: int = 1024


@dataclass
class ChildResult:
    returncode: int | None
    timed_out: bool
    output_exceeded: bool
    log: str
    mode: str
    wall_s: float
    user: str = ""  # who the student code ran as: "uid N" (a user of its own), "grader" or "root"
    started: bool = True  # False: the sandbox never started the child (a grader problem, not the student's)
    tries: int = 1  # starts it took (a sandbox that fails to start is tried again)

    def to_dict(self) -> dict:
        return asdict(self)


def _unshare() -> str | None:
    return shutil.which("unshare")


def _drop_privileges() -> bool:
    """A root grader never runs student code as root (root also ignores RLIMIT_NPROC)."""
    return os.geteuid() == 0


@functools.cache
def detect_mode() -> str:
    """``namespaces`` when a mount+net+pid namespace with a tmpfs mount works here (a user namespace too unless
    the grader is root, which needs none), else ``bwrap`` when bubblewrap can build its sandbox, else ``rlimits``."""
    if not sys.platform.startswith("linux"):
        return "rlimits"
    exe = _unshare()
    if exe is not None and _works([exe, _unshare_flags(), "--mount-proc", "sh", "-c", "mount -t tmpfs none /tmp"]):
        return "namespaces"
    return "bwrap" if bwrap_works() else "rlimits"


@functools.cache
def bwrap_works() -> bool:
    """Whether ``bwrap`` is installed and can build the sandbox :func:`run_child` asks of it."""
    exe = shutil.which("bwrap")
    return exe is not None and sys.platform.startswith("linux") and \
        _works([exe, *_bwrap_base(), "--", "sh", "-c", "test -w /tmp"])


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20, preexec_fn=os.setsid, cwd="/").returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _bwrap_base() -> list[str]:
    """Namespaces (a user namespace unless the grader is root: root keeps the right to drop to the child's own
    user), a read-only view of the file system, its own /dev and /proc, a fresh /tmp."""
    spaces = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"] \
        if _drop_privileges() else ["--unshare-all"]
    return ["--die-with-parent", *spaces, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]


def _scratch(needed: set[Path]) -> list[Path]:
    """The :data:`SCRATCH` folders here that hold nothing the child needs (those get a fresh tmpfs)."""
    return [Path(d) for d in SCRATCH if os.path.isdir(d) and not any(Path(d) == n or Path(d) in n.parents
                                                                      for n in needed)]


def _unshare_flags() -> str:
    # root: mount+net+pid namespaces, real root does the mounts then the child drops to a user of its own;
    # anyone else: a user namespace too (unprivileged mounts), the student code keeps the grader's uid
    return "-mnpf" if _drop_privileges() else "-Urmnpf"



def _next_uid() -> int:
    """A user id of its own for each child (no passwd entry needed): RLIMIT_NPROC counts processes per user, so a
    fork bomb in one submission cannot starve a submission graded beside it."""
    with _uid_lock:
        return CHILD_UID_BASE + (os.getpid() % 1000) * 1000 + next(_uid_counter) % 1000


def _preexec(limits: Limits | None, uid: int | None):
    def setup() -> None:
        os.setsid()
        if limits is not None:
            mem = limits.memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_DATA, (mem, mem))
            resource.setrlimit(resource.RLIMIT_FSIZE, (limits.fsize_mb * 2**20,) * 2)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.nproc,) * 2)
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return setup


def _clean_env(home: str, extra: dict[str, str]) -> dict[str, str]:
    env = {"PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin", "HOME": home, "TMPDIR": home,
           "MPLCONFIGDIR": home + "/.mpl", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "LANG": "C.UTF-8",
           "PYTHONNOUSERSITE": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.update(extra)
    return env


def mirror_data(data: Path, dst: str, public_only: bool = False) -> list[tuple[str, str | None]]:
    """(path, symlink target or None for a folder) that give the child a data dir of its own.

    Every prepared dataset and every complete cache folder (``cache/<kind>/<name>/<preset>``) is a symlink to the
    real, read-only one; anything missing the child builds in its private copy, which is thrown away.
    ``public_only``: link only what any user may read (a child running as a user of its own could not open the
    rest, e.g. a 0700 test-session folder; it builds those itself).
    """
    plan: list[tuple[str, str | None]] = [(dst, None)]

    def link(path: str, entry: Path) -> None:
        if not public_only or _world_readable(entry):
            plan.append((path, str(entry.resolve())))

    def walk(src: Path, out: str, depth: int) -> None:
        for entry in sorted(src.iterdir()) if src.is_dir() else []:
            target = f"{out}/{entry.name}"
            if depth > 0 and entry.is_dir() and not entry.is_symlink():
                plan.append((target, None))
                walk(entry, target, depth - 1)
            else:
                link(target, entry)

    for entry in sorted(data.iterdir()) if data.is_dir() else []:
        if entry.name == "cache" and entry.is_dir():
            plan.append((f"{dst}/cache", None))
            walk(entry, f"{dst}/cache", 2)
        else:
            link(f"{dst}/{entry.name}", entry)
    return plan


def _world_readable(path: Path) -> bool:
    """Any user can reach ``path`` and read it, and everything under it."""
    path = path.resolve()
    try:
        if _blocked(path) is not None:
            return False
        return all(_others_may_read(p) for p in ([path, *path.rglob("*")] if path.is_dir() else [path]))
    except OSError:
        return False


def _others_may_read(path: Path) -> bool:
    mode = path.stat().st_mode
    need = 0o005 if stat.S_ISDIR(mode) else 0o004
    return mode & need == need


def _under_tmp(p: Path) -> bool:
    return p == Path("/tmp") or Path("/tmp") in p.parents


def _namespace_command(argv: Sequence[str], job_dir: Path, hide: Sequence[Path], data_plan: list,
                       keep: Sequence[Path] = (), reveal: Sequence[str] = (), uid: int | None = None,
                       data_src: Path | None = None, scratch: Sequence[Path] = ()) -> list[str]:
    """Mount a private /tmp, hide each path (tmpfs over folders, /dev/null over files), mirror the data, exec.

    The fresh /tmp is built in ``<job>/.tmp`` and moved over /tmp: it holds the job folder (bound) at /tmp/job, so
    code that resolves its working folder (os.getcwd) finds it, and ``keep``, the folders the child needs that lie
    under /tmp (Python or the checkout installed there), bound back read-only at their own paths; nothing else of the
    host's /tmp (other jobs, other checkouts, other gradebooks) is in reach, and nothing the child writes there stays.
    A root grader also makes the interpreter reachable for the child's own user (``reveal``) and hands the child's
    folders to it; the child then drops to that user itself (``--uid``) before running anything of the student's.
    A failure of these steps exits with :data:`SETUP_FAILED` before any student code runs.
    """
    fresh = shlex.quote(str(job_dir / ".tmp"))
    steps = [f"mkdir -p {fresh}", f"mount -t tmpfs -o size=1g,mode=1777 none {fresh}",
             f"mkdir -p {fresh}/home {fresh}/job", f"mount --bind {shlex.quote(str(job_dir))} {fresh}/job"]
    for p in sorted(keep):
        inside = fresh + shlex.quote(str(p)[len("/tmp"):])
        steps += [f"mkdir -p {inside}", f"mount --bind {shlex.quote(str(p))} {inside}",
                  f"mount -o remount,bind,ro {inside}"]
    if data_src is not None:  # a data folder under /tmp: bound read-only into the fresh one
        steps += [f"mkdir -p {fresh}/.data", f"mount --bind {shlex.quote(str(data_src))} {fresh}/.data",
                  f"mount -o remount,bind,ro {fresh}/.data"]
    steps += [f"mount --move {fresh} /tmp", f"cd {JOB_PATH}", *reveal]
    # the host's other world-writable folders: empty and private too (nothing read there, nothing left there)
    steps += [f"mount -t tmpfs -o size=256m,mode=1777 none {shlex.quote(str(d))}" for d in scratch]
    for p in hide:
        if _under_tmp(p) and not any(k == p or k in p.parents for k in keep):
            continue  # already gone with the old /tmp
        q = shlex.quote(str(p))
        # a path gone from view is already hidden: it lay under a folder a reveal step covered
        mount = f"mount -t tmpfs -o size=64k,mode=0755 none {q}" if p.is_dir() else f"mount --bind /dev/null {q}"
        steps.append(f"{{ [ ! -e {q} ] || {mount}; }}")
    steps += [f"mkdir -p {shlex.quote(path)}" if target is None else f"ln -s {shlex.quote(target)} {shlex.quote(path)}"
              for path, target in data_plan]
    if uid is not None:
        steps.append(f"chown -R -h {uid}:{uid} /tmp/home" + (" /tmp/data" if data_plan else ""))
    argv = list(argv) + (["--uid", str(uid)] if uid is not None else [])
    script = "{ " + " && ".join(steps) + f"; }} || exit {SETUP_FAILED}\nexec " + \
        " ".join(shlex.quote(a) for a in argv)
    return [_unshare() or "unshare", _unshare_flags(), "--mount-proc", "sh", "-c", script]


def _bwrap_command(argv: Sequence[str], job_dir: Path, hide: Sequence[Path], needed: set[Path],
                   uid: int | None) -> list[str]:
    """bwrap's arguments: the base sandbox, then (in order, later mounts on top) the folders the child needs that
    the fresh /tmp covered, a tmpfs over each folder its own user may not traverse with the needed paths bound back
    (a root grader: ``/root`` when Python lives in ``/root/.pyenv``), the hidden paths, and the job folder itself
    (read-write, at its own path: HOME, MTLKIT_DATA_DIR and the data symlinks name it)."""
    args = [shutil.which("bwrap") or "bwrap", *_bwrap_base()]
    scratch = _scratch(needed)
    args += [arg for d in scratch for arg in ("--tmpfs", str(d))]
    for p in sorted(needed):
        if _under_tmp(p):
            args += [*_bwrap_parents(p, Path("/tmp")), "--ro-bind", str(p), str(p)]
    if uid is not None:
        blocked: dict[Path, list[Path]] = {}
        for p in sorted(needed):
            top = _blocked(p)
            if top is not None and not _under_tmp(p):
                blocked.setdefault(top, []).append(p)
        for top, paths in blocked.items():
            args += ["--tmpfs", str(top)]
            for p in paths:
                args += [*_bwrap_parents(p, top), "--ro-bind", str(p), str(p)]
    for p in hide:
        if _under_tmp(p) and not any(n in p.parents for n in needed):
            continue  # gone with the old /tmp
        args += ["--tmpfs", str(p)] if p.is_dir() else ["--ro-bind", "/dev/null", str(p)]
    for top in [Path("/tmp"), *scratch]:
        if top in job_dir.parents:
            args += _bwrap_parents(job_dir, top)
    args += ["--bind", str(job_dir), str(job_dir), "--chdir", str(job_dir)]
    return [*args, "--", *argv, *(["--uid", str(uid)] if uid is not None else [])]


def _bwrap_parents(path: Path, top: Path) -> list[str]:
    """bwrap arguments creating the folders between ``top`` (a fresh tmpfs) and ``path`` with mode 0755: bwrap
    makes missing ones 0700, which a child that drops to a user of its own could not traverse."""
    between = [p for p in reversed(path.parents) if top in p.parents]
    return [arg for p in between for arg in ("--perms", "0755", "--dir", str(p))]


def _nproc_limit(limits: Limits, drop: bool) -> Limits:
    """RLIMIT_NPROC counts every process of the real user: a non-root grader's own processes count too."""
    if drop or os.geteuid() == 0:
        return limits
    mine = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _owned(p))
    return Limits(**{**asdict(limits), "nproc": limits.nproc + mine})


def _owned(p: Path) -> bool:
    try:
        return p.stat().st_uid == os.getuid()
    except OSError:
        return False


def _needed() -> set[Path]:
    """Folders the child must reach: Python, the venv, the mtlkit checkout."""
    return {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.executable).resolve().parent,
            Path(_package_root())}


def _blocked(path: Path) -> Path | None:
    """The topmost folder on ``path``'s way that other users cannot traverse (e.g. a 0700 /root), or None."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not parent.stat().st_mode & 0o001:
            return parent
    return None


def _reveal_steps(needed: set[Path], stage_root: str) -> list[str]:
    """Shell steps (run as root in the private mount namespace) that let an unnamed user reach ``needed`` paths
    lying under folders it may not traverse: bind each aside, put a tmpfs over the blocking folder (which also hides
    the rest of it, e.g. /root), and move the binds back to their old paths."""
    blocked: dict[Path, list[Path]] = {}
    for p in sorted(needed):
        top = _blocked(p)
        if top is not None and not any(p != q and q in p.parents for q in needed if _blocked(q) == top):
            blocked.setdefault(top, []).append(p)
    steps, k = [], 0
    for top, paths in blocked.items():
        staged = []
        for p in paths:
            stage = f"{shlex.quote(stage_root)}/.reveal{k}"
            k += 1
            steps += [f"mkdir -p {stage}", f"mount --bind {shlex.quote(str(p))} {stage}"]
            staged.append((stage, p))
        steps.append(f"mount -t tmpfs -o size=1m,mode=0755 none {shlex.quote(str(top))}")
        for stage, p in staged:
            steps += [f"mkdir -p {shlex.quote(str(p))}", f"mount --move {stage} {shlex.quote(str(p))}"]
    return steps


def _check_hide(hide: Sequence[Path], needed: set[Path]) -> list[Path]:
    out = []
    for p in hide:
        p = Path(p).resolve()
        if not p.exists():
            continue
        for n in needed:
            if p == n or p in n.parents:
                raise ValueError(f"cannot hide {p} from the grading sandbox: it holds Python or mtlkit ({n}); "
                                 "keep submissions, feedback and gradebooks outside the checkout and the venv")
        out.append(p)
    return out


def can_hide(path: Path, data: Path | None = None) -> bool:
    """Whether a tmpfs over ``path`` leaves the child what it needs (Python, the venv, mtlkit, the data folder)."""
    path = Path(path).resolve()
    needed = _needed() | ({Path(data).resolve()} if data is not None else set())
    return path != Path("/") and not any(path == n or path in n.parents for n in needed)


def _reachable(paths: set[Path]) -> bool:
    """Whether a user with no rights of its own can reach and read every path (no 0700 folder on the way)."""
    return all(_blocked(p) is None and p.stat().st_mode & 0o005 == 0o005 for p in paths)


def run_child(job_dir: Path, limits: Limits, hide: Sequence[Path] = (), mode: str | None = None,
              env: dict[str, str] | None = None, data: Path | None = None, spec: bytes = b"") -> ChildResult:
    """Run ``python -m mtlkit.grading.child .`` in ``job_dir`` in the sandbox; return its capped log and how it ended.

    ``spec`` (the job: cells and probe code, JSON) reaches the child on its standard input, never as a file: no
    file a submission hands in can stand in for it. The child works with paths relative to its working directory.
    ``ChildResult.started`` is False when the sandbox never started the child (a grader problem, not the student's).
    """
    mode = mode or detect_mode()
    if mode not in MODES:
        raise ValueError(f"sandbox mode {mode!r}; valid modes: {', '.join(MODES)}")
    job_dir = Path(job_dir).resolve()
    argv = [sys.executable, "-m", "mtlkit.grading.child", "."]
    extra = {"PYTHONPATH": _package_root(), **(env or {})}
    data = Path(data).resolve() if data is not None else None
    needed = _needed() | ({data} if data is not None else set())
    hidden = _check_hide([*hide, *_private_parts()], needed)
    uid = _next_uid() if _drop_privileges() else None
    preexec_uid = None  # rlimits mode: the uid is set before exec; namespaces mode: by the child after the mounts
    if mode == "namespaces":
        keep = {n for n in _needed() if _under_tmp(n)}  # Python or the checkout under /tmp: bound back read-only
        keep = {n for n in keep if not any(k != n and k in n.parents for k in keep)}
        data_plan, data_src = [], None
        if data is not None:
            data_plan = mirror_data(data, "/tmp/data", public_only=uid is not None)
            extra["MTLKIT_DATA_DIR"] = "/tmp/data"
            if _under_tmp(data):  # e.g. a test session's data folder: reached through its read-only bind
                data_src = data
                data_plan = [(path, "/tmp/.data" + target[len(str(data)):] if target and
                              (target == str(data) or target.startswith(str(data) + "/")) else target)
                             for path, target in data_plan]
        reveal = _reveal_steps({n for n in needed if not _under_tmp(n)}, JOB_PATH) if uid is not None else []
        cmd = _namespace_command(argv, job_dir, hidden, data_plan, sorted(keep), reveal, uid, data_src,
                                 _scratch(needed))
        home = "/tmp/home"
    else:
        if data is not None:
            for path, target in mirror_data(data, str(job_dir / "data"), public_only=uid is not None):
                if target is None:
                    Path(path).mkdir(parents=True, exist_ok=True)
                elif not os.path.lexists(path):  # (a retried start finds them made)
                    os.symlink(target, path)
            extra["MTLKIT_DATA_DIR"] = str(job_dir / "data")
        if mode == "bwrap":
            cmd = _bwrap_command(argv, job_dir, hidden, needed, uid)
        else:
            if uid is not None and not _reachable(needed):
                uid = None  # the interpreter sits in a folder only root may enter (/root/.pyenv): run as root
            cmd, preexec_uid = argv, uid
        home = str(job_dir)
    if uid is not None:  # the child's own user owns its working folder (never what the data symlinks point to)
        for root, dirs, files in os.walk(job_dir):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.chown(name, uid, uid, follow_symlinks=False)
    user = f"uid {uid}" if uid is not None else ("root" if os.geteuid() == 0 else "grader")
    child_env = _clean_env(home, extra)
    limits = _nproc_limit(limits, uid is not None)
    cap = limits.output_kb * 1024
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=job_dir, env=child_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, preexec_fn=_preexec(limits, preexec_uid), close_fds=True)
    kept, exceeded = bytearray(), threading.Event()

    def feed() -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(spec)
            proc.stdin.close()
        except OSError:  # the sandbox died before it read the job: reported through ``started``
            pass

    def pump() -> None:
        assert proc.stdout is not None
        total = 0
        while chunk := proc.stdout.read1(65536):
            total += len(chunk)
            if len(kept) < cap:
                kept.extend(chunk[: cap - len(kept)])
            if total > 4 * cap and not exceeded.is_set():  # a flood: stop it now rather than at the time limit
                exceeded.set()
                _kill(proc)

    threads = [threading.Thread(target=f, daemon=True) for f in (feed, pump)]
    for t in threads:
        t.start()
    timed_out = False
    try:
        proc.wait(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill(proc)
        proc.wait()
        for t in threads:
            t.join(timeout=5)
    log = kept.decode("utf-8", "replace")
    started = READY in log[:READY_WITHIN]
    log = log.replace(READY + "\n", "", 1)
    if len(kept) >= cap:
        log += f"\n[output truncated at {limits.output_kb} KiB]"
    return ChildResult(proc.returncode, timed_out, exceeded.is_set(), log, mode, time.monotonic() - start, user,
                       started)


def _private_parts() -> list[Path]:
    """Parts of the checkout the child never needs: the kit's own instructor sources (``assignments/``, also
    when grading from a copy with ``--source``), the tests (the attack corpus' fixture assignment) and the git
    history, which holds all of them too."""
    root = Path(_package_root())
    return [root / name for name in (".git", "assignments", "tests")] if (root / "mtlkit").is_dir() else []


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole session (its process group); in a PID namespace its init takes the rest along."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@functools.cache
def _package_root() -> str:
    import mtlkit

    return str(Path(mtlkit.__file__).resolve().parent.parent)
