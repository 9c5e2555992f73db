"""``mtlkit grade PS SUBMISSIONS --out gradebook.csv``: grade every submission in a sandboxed child process.

Per submission: read the notebook (errors become that student's error row), splice only its solution cells into
the instructor's notebook (hidden tests removed), check the probes' ``forbid`` patterns on those cells, write a job
folder (code cells, probe code, hidden inputs as ``.npy``), run it in :mod:`mtlkit.grading.sandbox`, read back
plain arrays only (``numpy.load(allow_pickle=False)``, safetensors) and score them in this process with each
probe's ``check``. Each student's feedback is written when graded, and the gradebook rewritten, atomically: a
crash loses nothing, and a rerun reuses every feedback whose submission, assignment and limits are unchanged.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mtlkit.grading.assignment import Assignment, load_assignment, test_cell_of
from mtlkit.grading.cells import NotebookError, code_cells, load_notebook, splice
from mtlkit.grading.feedback import write_feedback, write_gradebook
from mtlkit.grading.options import SECRET_ENV
from mtlkit.grading.sandbox import MODES, SETUP_FAILED, ChildResult, Limits, detect_mode, run_child

__all__ = ["grade", "Submission", "find_submissions", "run_from_args", "SECRET_ENV"]

# extra files a submission folder may carry into the sandbox (e.g. trained weights); never unpickled by the grader
ALLOWED_EXTRA = (".safetensors", ".npy", ".npz", ".json", ".csv", ".txt")
MAX_EXTRA_BYTES = 200 * 2**20
MAX_OUTPUT_BYTES = 512 * 2**20
_STUDENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}$")


@dataclass
class Submission:
    student_id: str
    notebook: Path | None
    extras: list[Path] = field(default_factory=list)
    error: str = ""
    timestamp: str = ""


def find_submissions(folder: Path, assignment: str) -> list[Submission]:
    """One folder (``<student>/``, holding ``<PS>.ipynb`` or a single notebook) or one ``<student>.ipynb`` each."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"submissions folder {folder} does not exist (one sub-folder or .ipynb per student)")
    subs = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name == "students.csv":
            continue
        linked = entry.is_symlink()
        single = entry.suffix == ".ipynb" and (linked or not entry.is_dir())
        sid = entry.stem if single or (not linked and entry.is_file()) else entry.name
        if not _STUDENT.match(sid):
            continue  # not a student's submission (and not a safe file name for the feedback)
        if single:  # <student>.ipynb (a link or a FIFO becomes that student's error row in load_notebook)
            subs.append(Submission(sid, entry, timestamp=_mtime(entry)))
            continue
        if linked:  # a linked folder would let a submission name any folder on the grader's disk
            subs.append(Submission(sid, None, error="the submission folder is a symbolic link; submit the files "
                                   "themselves", timestamp=_mtime(entry)))
            continue
        if not entry.is_dir():
            continue
        # anything named *.ipynb that is not a folder counts, so that links and FIFOs become clear error rows
        notebooks = sorted(p for p in entry.glob("*.ipynb") if not p.name.startswith(".")
                           and (p.is_symlink() or not p.is_dir()))
        preferred = entry / f"{assignment}.ipynb"
        sub = Submission(sid, None, timestamp=_timestamp(entry))
        if preferred in notebooks:
            sub.notebook = preferred
        elif len(notebooks) == 1:
            sub.notebook = notebooks[0]
        elif not notebooks:
            sub.error = f"no notebook in the submission folder (expected {assignment}.ipynb)"
        else:
            sub.error = (f"{len(notebooks)} notebooks in the submission folder and none is named {assignment}.ipynb; "
                         "submit exactly one")
        sub.extras = sorted(p for p in entry.rglob("*") if p.is_file() and not p.is_symlink() and p != sub.notebook
                            and not p.name.startswith("."))
        subs.append(sub)
    return subs


def _mtime(path: Path) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(path.lstat().st_mtime))  # lstat: links may dangle


def _timestamp(folder: Path) -> str:
    stamp = folder / "timestamp.txt"  # nbgrader's collected submissions carry one
    if stamp.is_file() and not stamp.is_symlink():  # a link would copy another file's first line into the gradebook
        return stamp.read_text(errors="replace").strip()[:64]
    return _mtime(folder)


def _students(folder: Path) -> dict[str, dict[str, str]]:
    """Optional ``students.csv`` (id,last_name,first_name,email) for the gradebook's name columns."""
    path = folder / "students.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row["id"]: row for row in csv.DictReader(f) if row.get("id")}


# ------------------------------------------------------------------------------------------------ probes
@dataclass
class Group:
    """Probes that share their code and input generator run once; ``inputs`` are written for the child."""

    name: str
    code: str
    timeout_s: float
    inputs: dict[str, np.ndarray | dict[str, np.ndarray]]  # arrays (load_input) and weights (load_weights)
    probes: list


def make_groups(assignment: Assignment, secret: str | None) -> list[Group]:
    """Hidden inputs for every group, seeded per assignment (and instructor secret) so every student gets the same."""
    base = int(hashlib.sha256(f"{assignment.name}:{secret or ''}".encode()).hexdigest()[:8], 16)
    groups: list[Group] = []
    for probe in assignment.probes:
        for g in groups:
            if g.code == probe.code and g.probes[0].inputs is probe.inputs:
                g.probes.append(probe)
                g.timeout_s = max(g.timeout_s, probe.timeout_s)
                break
        else:
            k = len(groups)
            inputs = probe.inputs(np.random.default_rng([base, k])) if probe.inputs else {}
            groups.append(Group(f"g{k}", probe.code, probe.timeout_s, {n: _input_value(v) for n, v in inputs.items()},
                                [probe]))
    return groups


def _input_value(value) -> np.ndarray | dict[str, np.ndarray]:
    """An array (written as ``.npy``, read with ``load_input``) or a mapping of arrays, i.e. weights (written as
    ``.safetensors``, read with ``load_weights``)."""
    if isinstance(value, Mapping):
        return {str(k): np.array(_as_numpy(v), order="C") for k, v in value.items()}  # (0-d arrays stay 0-d)
    return np.asarray(_as_numpy(value))


def _as_numpy(value):
    return value.detach().cpu().numpy() if hasattr(value, "detach") and hasattr(value, "cpu") else np.asarray(value)


def _forbidden(probe, sources: dict[str, str]) -> str | None:
    for sid in probe.solution_ids:
        for pattern in probe.forbid:
            match = re.search(pattern, sources.get(sid, ""))
            if match:
                return (f"solution cell {sid!r} uses {match.group(0)!r}, which this test does not allow "
                        "(implement it yourself rather than calling a reference)")
    return None


def _read_outputs(folder: Path) -> tuple[dict, list[str]]:
    """Plain arrays only: ``.npy`` without pickles, ``.safetensors`` through the safetensors API."""
    from safetensors.numpy import load_file

    outputs, problems = {}, []
    if folder.is_symlink() or not folder.is_dir():  # the child may have replaced its folder by a link elsewhere
        return outputs, problems
    total = 0
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.is_symlink():
            continue
        total += path.stat().st_size
        if total > MAX_OUTPUT_BYTES:
            problems.append("the results exceed the size limit; the rest were ignored")
            break
        try:
            if path.suffix == ".npy":
                array = np.load(path, allow_pickle=False)
                if array.dtype.kind not in "biuf":
                    raise ValueError(f"dtype {array.dtype}")
                outputs[path.stem] = array
            elif path.suffix == ".safetensors":
                outputs[path.stem] = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - anything malformed is the submission's problem
            problems.append(f"result {path.name!r} is not a plain array ({type(exc).__name__}); ignored")
    return outputs, problems


def _finished(job: Path, group: Group) -> bool:
    return (job / "outputs" / group.name / ".finished").exists()


# ------------------------------------------------------------------------------------------------ one student
def _digest(assignment: Assignment, sub: Submission, settings: dict) -> str:
    h = hashlib.sha256(assignment.digest.encode() + json.dumps(settings, sort_keys=True).encode())
    for p in ([sub.notebook] if sub.notebook else []) + sub.extras:
        h.update(p.name.encode())
        h.update(_file_digest(p))
    return h.hexdigest()


def _file_digest(path: Path) -> bytes:
    """sha256 of a regular file; of its link target or file type otherwise (never read: a FIFO would hang)."""
    try:
        st = path.lstat()
        if stat.S_ISREG(st.st_mode):
            return hashlib.sha256(path.read_bytes()).digest()
        what = os.readlink(path) if stat.S_ISLNK(st.st_mode) else f"mode {st.st_mode:o}"
    except OSError as exc:
        what = f"unreadable: {exc.errno}"
    return hashlib.sha256(what.encode()).digest()


def _base_result(assignment: Assignment, sub: Submission, people: dict, digest: str, duedate: str) -> dict:
    person = people.get(sub.student_id, {})
    return {"assignment": assignment.name, "student_id": sub.student_id, "duedate": duedate,
            "timestamp": sub.timestamp, "last_name": person.get("last_name", ""),
            "first_name": person.get("first_name", ""), "email": person.get("email", ""), "status": "graded",
            "error": "", "score": 0.0, "max_score": assignment.max_score, "tests": [], "notes": [], "log": "",
            "sandbox": {}, "digest": digest}


def cells_budget(limits: Limits, groups: list[Group]) -> float:
    """Seconds the notebook's cells may take in all: what the probes' own limits leave of the run's (and at least
    half of it), so a hung cell still leaves the tests their time."""
    return round(max(limits.timeout_s - sum(g.timeout_s for g in groups) - 3.0, limits.timeout_s / 2), 3)


def prepare_job(assignment: Assignment, sub: Submission, groups: list[Group], work: Path,
                limits: Limits = Limits()) -> tuple[Path | None, dict]:
    """The job folder for one submission, or None and the reasons (unreadable notebook)."""
    info: dict = {"notes": [], "forbidden": {}}
    if sub.error:
        info["error"] = sub.error
        return None, info
    try:
        submitted = load_notebook(sub.notebook)
        nb, report = splice(assignment.notebook, submitted)
    except NotebookError as exc:
        info["error"] = str(exc)
        return None, info
    for gid in report.missing:
        info["notes"].append(f"solution cell {gid!r} is missing from your notebook (or is not a solution cell); "
                             "its tests score 0")
    for gid in report.restored:
        info["notes"].append(f"cell {gid!r} differs from (or is missing in) the released notebook; the grader used "
                             "the original")
    info["missing"] = report.missing
    for probe in assignment.probes:
        reason = _forbidden(probe, report.sources)
        if reason:
            info["forbidden"][probe.grade_id] = reason
    job = Path(tempfile.mkdtemp(prefix=f"{sub.student_id}-", dir=work))
    (job / "outputs").mkdir()
    job_spec = {"cells": code_cells(nb), "cells_timeout_s": cells_budget(limits, groups),
                "groups": [{"name": g.name, "code": g.code, "timeout_s": g.timeout_s} for g in groups]}
    (job / "job.json").write_text(json.dumps(job_spec))
    for g in groups:
        (job / "inputs" / g.name).mkdir(parents=True)
        for name, value in g.inputs.items():
            if isinstance(value, dict):  # weights: a state_dict for load_weights
                from safetensors.numpy import save

                (job / "inputs" / g.name / f"{name}.safetensors").write_bytes(save(value))
            else:
                np.save(job / "inputs" / g.name / f"{name}.npy", value, allow_pickle=False)
    if assignment.files.is_dir():
        shutil.copytree(assignment.files, job / "files")
    size = 0
    for p in sub.extras:
        size += p.stat().st_size
        if p.suffix.lower() not in ALLOWED_EXTRA or size > MAX_EXTRA_BYTES:
            info["notes"].append(f"file {p.name!r} was not used (allowed: {', '.join(ALLOWED_EXTRA)}, at most "
                                 f"{MAX_EXTRA_BYTES >> 20} MiB in all)")
            continue
        shutil.copy2(p, job / p.name)
    return job, info


def _prepare_safely(assignment: Assignment, sub: Submission, groups: list[Group], work: Path,
                    limits: Limits) -> tuple[Path | None, dict]:
    """:func:`prepare_job`, where anything unforeseen in one submission becomes that student's error row instead of
    stopping the grading of all the others."""
    try:
        return prepare_job(assignment, sub, groups, work, limits)
    except Exception as exc:  # noqa: BLE001
        return None, {"notes": [], "forbidden": {}, "error": "the submission could not be prepared for grading "
                      f"({type(exc).__name__}: {str(exc)[:200]})"}


def score(assignment: Assignment, groups: list[Group], job: Path, info: dict, child: ChildResult,
          result: dict) -> dict:
    """Run each probe's check on what the child emitted; every failure becomes a message, never an exception."""
    if child.timed_out:
        result["notes"].append("the notebook ran past the time limit and was stopped; tests it did not reach "
                               "score 0")
    if child.output_exceeded:
        result["notes"].append("the notebook printed far more than the output limit and was stopped")
    by_cell: dict[str, dict] = {}
    for cell, pts in assignment.points.items():
        by_cell[cell] = {"grade_id": cell, "max_points": pts, "probes": []}
    for g in groups:
        outputs, problems = _read_outputs(job / "outputs" / g.name)
        result["notes"].extend(problems)
        for probe in g.probes:
            fraction, message = 0.0, ""
            if probe.grade_id in info["forbidden"]:
                message = info["forbidden"][probe.grade_id]
            elif missing := [s for s in probe.solution_ids if s in info.get("missing", [])]:
                message = f"solution cell(s) {', '.join(missing)} missing"
            elif not outputs and not _finished(job, g):
                message = ("the run ended before this test ran (" + ("time limit" if child.timed_out else
                           "output limit" if child.output_exceeded else f"exit code {child.returncode}") + ")")
            else:
                try:
                    fraction, message = probe.check(outputs, g.inputs)
                    fraction = float(fraction)
                    fraction = min(max(fraction, 0.0), 1.0) if math.isfinite(fraction) else 0.0
                except Exception as exc:  # noqa: BLE001 - malformed results must not stop the others
                    fraction, message = 0.0, f"your results could not be checked ({type(exc).__name__}: {exc})"
            cell = test_cell_of(assignment.notebook, probe.grade_id)
            by_cell[cell]["probes"].append({"grade_id": probe.grade_id, "points": round(fraction * probe.points, 6),
                                            "max_points": probe.points, "description": probe.description,
                                            "message": str(message)[:2000]})
        if assignment.leaderboard is not None and any(p.grade_id.startswith("leaderboard") for p in g.probes):
            try:
                result["leaderboard"] = {k: float(v) for k, v in assignment.leaderboard(outputs, g.inputs).items()}
            except Exception:  # noqa: BLE001 - no valid predictions: no leaderboard entry
                pass
    result["tests"] = list(by_cell.values())
    result["score"] = round(sum(p["points"] for t in result["tests"] for p in t["probes"]), 6)
    return result


def run_job(job: str, limits: Limits, hide: list[str], mode: str, data: str | None, env: dict) -> ChildResult:
    """The part that may run on another machine (SLURM): the sandboxed child, nothing secret."""
    return run_child(Path(job), limits, [Path(h) for h in hide], mode, env, Path(data) if data else None)


# ------------------------------------------------------------------------------------------------ all students
def grade(name: str, submissions: str | Path, out: str | Path, *, source: str | Path | None = None,
          feedback: str | Path | None = None, jobs: int = 1, executor: str = "local", limits: Limits = Limits(),
          mode: str | None = None, preset: str | None = None, secret: str | None = None, regrade: bool = False,
          duedate: str = "", cluster: str | None = None, slurm_options: dict | None = None,
          progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Grade every submission of ``name`` in ``submissions``; write ``out`` (CSV) and the feedback folder.

    ``preset`` / ``secret`` default to ``$MTLKIT_PRESET`` (else smoke) / ``$MTLKIT_GRADING_SECRET``; both are set
    in this process while grading (grading.py and the checks read them) and restored afterwards. The child gets
    the preset, never the secret.
    """
    preset = preset or os.environ.get("MTLKIT_PRESET", "smoke")
    secret = secret or os.environ.get(SECRET_ENV)
    with _environ({"MTLKIT_PRESET": preset, SECRET_ENV: secret}):
        return _grade(name, submissions, out, source=source, feedback=feedback, jobs=jobs, executor=executor,
                      limits=limits, mode=mode, preset=preset, secret=secret, regrade=regrade, duedate=duedate,
                      cluster=cluster, slurm_options=slurm_options, progress=progress)


@contextlib.contextmanager
def _environ(values: dict[str, str | None]):
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _grade(name: str, submissions: str | Path, out: str | Path, *, source, feedback, jobs: int, executor: str,
           limits: Limits, mode: str | None, preset: str, secret: str | None, regrade: bool, duedate: str,
           cluster: str | None, slurm_options: dict | None, progress: Callable[[dict], None] | None) -> list[dict]:
    assignment = load_assignment(name, Path(source) if source else None)
    if assignment.needs_secret and not secret:
        # without it the hidden split's seed follows from the assignment's name and mtlkit's public code: a
        # submission could regenerate the split, labels included, inside the sandbox
        raise ValueError(f"{name} grades on a hidden split generated from the instructor's secret: pass "
                         f"--secret-seed or set {SECRET_ENV} (a long random string, the same for every grading run "
                         "of the course, e.g. `openssl rand -hex 16`)")
    submissions, out = Path(submissions).resolve(), Path(out).resolve()
    subs = find_submissions(submissions, name)
    feedback = Path(feedback).resolve() if feedback else out.with_name(out.stem + "_feedback")
    feedback.mkdir(parents=True, exist_ok=True)
    mode = mode or detect_mode()
    if mode not in MODES:
        raise ValueError(f"sandbox mode {mode!r}; valid modes: {', '.join(MODES)}")
    settings = {"limits": asdict(limits), "mode": mode, "preset": preset,
                # a new secret (a new hidden split) regrades everyone; the digest never reveals it
                "secret": hashlib.sha256(secret.encode()).hexdigest() if secret else ""}
    people = _students(submissions)
    test_ids = list(assignment.points)
    results: dict[str, dict] = {}
    todo = []
    for sub in subs:
        digest = _digest(assignment, sub, settings)
        previous = feedback / f"{sub.student_id}.json"
        if not regrade and previous.is_file():
            try:
                old = json.loads(previous.read_text())
                if old.get("digest") == digest:
                    results[sub.student_id] = old
                    continue
            except (OSError, json.JSONDecodeError):
                pass
        todo.append((sub, digest))
    groups = make_groups(assignment, secret) if todo else []
    from mtlkit.paths import data_dir

    data = data_dir() if data_dir().is_dir() else None
    work = Path(tempfile.mkdtemp(prefix=f"mtlkit-grade-{name}-",
                                 dir=out.parent if executor == "slurm" else None))  # slurm: a shared filesystem
    hide = [str(p) for p in (assignment.folder.parent, submissions, feedback, out, work)]
    env = {"MTLKIT_PRESET": preset}

    def finish(sub: Submission, digest: str, job: Path | None, info: dict, child: ChildResult | None) -> None:
        result = _base_result(assignment, sub, people, digest, duedate)
        result["notes"] = list(info["notes"])
        if child is not None and child.returncode == SETUP_FAILED and not child.timed_out:
            info = {**info, "error": "the grading sandbox could not be set up (a grader problem, not yours): "
                                     + child.log.strip()[-500:]}
            child = None
        if child is None:
            result["status"], result["error"] = "error", info.get("error", "not graded")
            result["tests"] = [{"grade_id": c, "max_points": p, "probes": []} for c, p in assignment.points.items()]
            result["sandbox"] = {"mode": mode}
        else:
            result["sandbox"] = {"mode": child.mode, "wall_s": round(child.wall_s, 2), "returncode": child.returncode,
                                 "timed_out": child.timed_out, "output_exceeded": child.output_exceeded,
                                 "user": child.user, "limits": asdict(limits)}
            result["log"] = child.log[-16000:]
            score(assignment, groups, job, info, child, result)
        results[sub.student_id] = result
        write_feedback(feedback, result)
        write_gradebook(out, list(results.values()), test_ids)
        if job is not None:
            shutil.rmtree(job, ignore_errors=True)
        if progress:
            progress(result)

    try:
        prepared = [(sub, digest, *_prepare_safely(assignment, sub, groups, work, limits)) for sub, digest in todo]
        runnable = [p for p in prepared if p[2] is not None]
        for sub, digest, job, info in prepared:
            if job is None:
                finish(sub, digest, None, info, None)
        args = (limits, hide, mode, str(data) if data else None, env)
        if executor == "slurm":
            _run_slurm(runnable, args, work, finish, cluster, slurm_options or {})
        else:
            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # threads only wait on child processes
                futures = {pool.submit(run_job, str(job), *args): (sub, digest, job, info)
                           for sub, digest, job, info in runnable}
                for future in as_completed(futures):
                    finish(*futures[future], future.result())
        write_gradebook(out, list(results.values()), test_ids)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [results[k] for k in sorted(results)]


def _run_slurm(runnable: list, args: tuple, work: Path, finish, cluster: str | None, options: dict) -> None:
    """One SLURM array task per submission through submitit (local processes where SLURM is absent)."""
    try:
        import submitit
    except ImportError:
        raise ValueError("--executor slurm needs submitit: pip install 'mtlkit[cluster]'") from None
    if not runnable:
        return
    executor = submitit.AutoExecutor(folder=str(work / "submitit" / "%j"), cluster=cluster)
    params = {"timeout_min": max(1, math.ceil(args[0].timeout_s / 60) + 5), **options}
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    n = len(runnable)
    columns = [[str(r[2]) for r in runnable]] + [[a] * n for a in args]
    for (sub, digest, job, info), task in zip(runnable, executor.map_array(run_job, *columns)):
        try:
            child = task.result()
        except Exception as exc:  # noqa: BLE001 - the array task itself died (node failure, time limit)
            child = ChildResult(None, False, False, f"grading job failed: {type(exc).__name__}: {exc}", args[2], 0.0)
        finish(sub, digest, job, info, child)


# ------------------------------------------------------------------------------------------------ CLI
def run_from_args(args: argparse.Namespace) -> int:
    limits = Limits(timeout_s=args.timeout, memory_mb=args.memory_mb, output_kb=args.output_kb, nproc=args.nproc)
    slurm = {"slurm_partition": args.partition, "cpus_per_task": args.cpus,
             "slurm_array_parallelism": args.array_parallelism} if args.cluster in (None, "slurm") else {}

    def show(r: dict) -> None:
        extra = f" ({r['error']})" if r["error"] else ""
        print(f"{r['student_id']}: {r['score']:g} / {r['max_score']:g} {r['status']}{extra}", flush=True)

    results = grade(args.assignment, args.submissions, args.out, source=args.source, feedback=args.feedback,
                    jobs=args.jobs, executor=args.executor, limits=limits, mode=args.sandbox, preset=args.preset,
                    secret=args.secret_seed, regrade=args.regrade, duedate=args.duedate, cluster=args.cluster,
                    slurm_options=slurm, progress=show)
    modes = sorted({r.get("sandbox", {}).get("mode", "") for r in results} - {""})
    print(f"graded {len(results)} submission(s) of {args.assignment} (sandbox: {', '.join(modes) or '-'}); "
          f"gradebook {args.out}")
    return 0
