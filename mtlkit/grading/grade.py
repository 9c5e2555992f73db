"""``mtlkit grade PS SUBMISSIONS --out gradebook.csv``: grade every submission in a sandboxed child process.

Per submission: check sizes (nothing is read before), read the notebook (errors become that student's error row),
splice only its solution cells into the instructor's notebook (hidden tests removed), check the probes' ``forbid``
patterns on those cells, write a job folder (hidden inputs as ``.npy``, the submission's files) and the job (code
cells, probe code) for the child's standard input, run it in :mod:`mtlkit.grading.sandbox`, read back plain arrays
only (``numpy.load(allow_pickle=False)``, safetensors) and score them in this process with each probe's ``check``.
Each student's feedback is written atomically when graded (a rerun reuses every one whose submission, assignment
and limits are unchanged); the gradebook is written once no child runs, also after a crash or an interrupt.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import hmac
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
from mtlkit.grading.cells import MAX_NOTEBOOK_BYTES, NotebookError, code_cells, is_answered, load_notebook, splice
from mtlkit.grading.feedback import write_feedback, write_gradebook
from mtlkit.grading.options import SECRET_ENV
from mtlkit.grading.sandbox import MODES, ChildResult, Limits, can_hide, detect_mode, run_child

__all__ = ["grade", "Submission", "find_submissions", "run_from_args", "SECRET_ENV"]

# extra files a submission folder may carry into the sandbox (e.g. trained weights); never unpickled by the grader
ALLOWED_EXTRA = (".safetensors", ".npy", ".npz", ".json", ".csv", ".txt")
MAX_EXTRA_BYTES = 200 * 2**20  # all of a submission's extra files together
MAX_EXTRA_FILES = 64
# names the grader itself writes into the job folder: a submission's file of that name would stand in for them
RESERVED = frozenset({"inputs", "outputs", "files", "data", "home", "job.json"})
MAX_OUTPUT_BYTES = 512 * 2**20
ROSTER = "students.csv"
_STUDENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}$")
_CHUNK = 2**20


@dataclass
class Submission:
    student_id: str
    notebook: Path | None
    extras: list[Path] = field(default_factory=list)  # the files that go into the sandbox (checked, not yet read)
    error: str = ""
    timestamp: str = ""
    notes: list[str] = field(default_factory=list)  # what the collector left out, and why
    entry: str = ""  # the top-level entry of the submissions folder it came from


def find_submissions(folder: Path, assignment: str, timestamps: Mapping[str, str] | None = None
                     ) -> tuple[list[Submission], list[tuple[str, str]]]:
    """One folder (``<student>/``, holding ``<PS>.ipynb`` or a single notebook) or one ``<student>.ipynb`` each.

    Returns the submissions (one per student; anything else named after a student, e.g. a stray ``dave.py``,
    is that student's error row) and ``(entry, reason)`` for every other top-level entry. Timestamps come from the
    instructor's record (``timestamps``: student id -> time) or the collected file's modification time, never from
    the submission's text. Nothing is read here but directory listings and file metadata.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"submissions folder {folder} does not exist (one sub-folder or .ipynb per student)")
    if not folder.is_dir():
        raise ValueError(f"submissions folder {folder} is not a folder (one sub-folder or .ipynb per student)")
    by_student: dict[str, list[Submission]] = {}
    skipped: list[tuple[str, str]] = []
    for entry in sorted(folder.iterdir()):
        if entry.name == ROSTER:
            skipped.append((entry.name, "the roster (names for the gradebook)"))
            continue
        if entry.name.startswith("."):
            skipped.append((entry.name, "a hidden entry"))
            continue
        sub = _submission(entry, assignment)
        if sub is None:
            skipped.append((entry.name, "not a student id (letters, digits and _ . @ + -, starting with a letter, "
                                        "digit or _): rename it to the student's id to grade it"))
            continue
        by_student.setdefault(sub.student_id, []).append(sub)
    subs = []
    for sid, found in by_student.items():
        sub = found[0]
        if len(found) > 1:
            names = ", ".join(sorted(s.entry for s in found))
            sub = Submission(sid, None, error=f"several submissions for {sid} ({names}); keep exactly one",
                             timestamp=found[0].timestamp)
        if timestamps and sid in timestamps:
            sub.timestamp = timestamps[sid]
        subs.append(sub)
    if not subs:
        raise ValueError(f"submissions folder {folder} holds no submission (expected one folder <student>/ or one "
                         "<student>.ipynb per student" + (f"; found only {', '.join(n for n, _ in skipped)}"
                                                          if skipped else "") + ")")
    return subs, skipped


def _submission(entry: Path, assignment: str) -> Submission | None:
    """The submission one top-level entry makes, or None when its name cannot be a student id."""
    linked = entry.is_symlink()
    single = entry.suffix == ".ipynb" and (linked or not entry.is_dir())
    folder = not linked and entry.is_dir()
    sid = entry.name if folder or (linked and not single) else entry.stem
    if not _STUDENT.match(sid):
        return None  # (and not a safe file name for the feedback)
    stamp = _mtime(entry)
    if single:  # <student>.ipynb (a link or a FIFO becomes that student's error row in load_notebook)
        return Submission(sid, entry, timestamp=stamp, entry=entry.name)
    if linked:  # a linked folder would let a submission name any folder on the grader's disk
        return Submission(sid, None, error="the submission folder is a symbolic link; submit the files themselves",
                          timestamp=stamp, entry=entry.name)
    if not folder:  # e.g. a stray dave.py: the student does not disappear from the gradebook
        return Submission(sid, None, timestamp=stamp, entry=entry.name,
                          error=f"{entry.name} is not a notebook: hand in {sid}.ipynb (or a folder {sid}/ holding "
                                f"{assignment}.ipynb)")
    # anything named *.ipynb that is not a folder counts, so that links and FIFOs become clear error rows
    notebooks = sorted(p for p in entry.glob("*.ipynb") if not p.name.startswith(".")
                       and (p.is_symlink() or not p.is_dir()))
    preferred = entry / f"{assignment}.ipynb"
    sub = Submission(sid, None, entry=entry.name + "/")
    if preferred in notebooks:
        sub.notebook = preferred
    elif len(notebooks) == 1:
        sub.notebook = notebooks[0]
    elif not notebooks:
        sub.error = f"no notebook in the submission folder (expected {assignment}.ipynb)"
    else:
        sub.error = (f"{len(notebooks)} notebooks in the submission folder and none is named {assignment}.ipynb; "
                     "submit exactly one")
    sub.timestamp = _mtime(sub.notebook) if sub.notebook is not None else stamp
    sub.extras, sub.notes = _extras(entry, sub.notebook)
    return sub


def _extras(folder: Path, notebook: Path | None) -> tuple[list[Path], list[str]]:
    """The files of a submission folder that go into the sandbox (flat, by name), and a note for each left out.
    Only metadata is read (``lstat``): a huge or sparse file is refused before anything reads it."""
    used, notes, names, total = [], [], set(), 0
    files = []
    for p in folder.rglob("*"):
        if p.is_symlink() or not p.is_file() or p == notebook or any(s.startswith(".") for s in
                                                                       p.relative_to(folder).parts):
            continue
        files.append(p)
        if len(files) > MAX_EXTRA_FILES:
            notes.append(f"more than {MAX_EXTRA_FILES} files in the submission folder; the rest were not used")
            files.pop()
            break
    for p in sorted(files, key=lambda p: (len(p.relative_to(folder).parts), p)):  # the top level's first
        size = p.lstat().st_size
        name = p.name
        if p.name == "timestamp.txt":
            notes.append("timestamp.txt is not read: the gradebook's timestamp is the time the submission was "
                         "collected")
            continue
        if p.suffix.lower() not in ALLOWED_EXTRA:
            reason = f"allowed: {', '.join(ALLOWED_EXTRA)}"
        elif name in RESERVED:
            reason = "the grader uses that name itself; rename the file"
        elif name in names:
            reason = "another file of the same name was used (files are placed side by side in one folder)"
        elif total + size > MAX_EXTRA_BYTES:
            reason = (f"{size / 2**20:.1f} MiB: over the limit of {MAX_EXTRA_BYTES >> 20} MiB for all of a "
                      "submission's files together; it was not read")
        else:
            used.append(p)
            names.add(name)
            total += size
            continue
        notes.append(f"file {str(p.relative_to(folder))!r} was not used ({reason})")
    return used, notes


def _mtime(path: Path) -> str:
    """The collected file's modification time (UTC): the collector's record, not anything the student wrote."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(path.lstat().st_mtime))  # lstat: links may dangle


def read_timestamps(path: str | Path) -> dict[str, str]:
    """The instructor's submission times, ``student_id,timestamp`` per line (e.g. an LMS export); each time is
    parsed (ISO 8601) and written back as ``YYYY-MM-DD HH:MM:SS`` (UTC where it names a zone)."""
    import datetime as dt

    out = {}
    with Path(path).open(newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or (n == 1 and row[0].strip().lower() in ("id", "student_id")):
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{n}: expected student_id,timestamp")
            try:
                when = dt.datetime.fromisoformat(row[1].strip())
            except ValueError:
                raise ValueError(f"{path}:{n}: {row[1]!r} is not an ISO 8601 time (e.g. 2026-12-07 21:30:00)") \
                    from None
            if when.tzinfo is not None:
                when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
            out[row[0].strip()] = when.strftime("%Y-%m-%d %H:%M:%S")
    return out


def _students(folder: Path) -> dict[str, dict[str, str]]:
    """Optional ``students.csv`` (id,last_name,first_name,email) for the gradebook's name columns."""
    path = folder / ROSTER
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
    key = f"mtlkit-probe-inputs:{assignment.name}".encode()
    base = int.from_bytes(hmac.new((secret or "").encode(), key, hashlib.sha256).digest(), "big")  # 256 bits
    groups: list[Group] = []
    for probe in assignment.probes:
        for g in groups:
            if g.code == probe.code and g.probes[0].inputs == probe.inputs:  # (== : bound methods)
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
    """What a grade depends on: the assignment, the settings, the notebook and the files used (streamed, and only
    after their sizes passed the limits), and what the collector decided (errors, files left out)."""
    h = hashlib.sha256(assignment.digest.encode() + json.dumps(settings, sort_keys=True).encode())
    h.update(json.dumps([sub.error, sub.notes]).encode())
    if sub.notebook is not None:
        h.update(sub.notebook.name.encode() + _file_digest(sub.notebook, MAX_NOTEBOOK_BYTES))
    for p in sub.extras:
        h.update(p.name.encode() + _file_digest(p, MAX_EXTRA_BYTES))
    return h.hexdigest()


def _file_digest(path: Path, limit: int) -> bytes:
    """sha256 of a regular file of at most ``limit`` bytes, read in chunks; of its size, link target or file type
    otherwise (never read: a FIFO would hang, a huge or sparse file would fill the grader's memory)."""
    try:
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) and st.st_size <= limit:
            h = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
            return h.digest()
        what = os.readlink(path) if stat.S_ISLNK(st.st_mode) else f"mode {st.st_mode:o}, {st.st_size} bytes"
    except OSError as exc:
        what = f"unreadable: {exc.errno}"
    return hashlib.sha256(what.encode()).digest()


def _base_result(assignment: Assignment, sub: Submission, people: dict, digest: str, duedate: str) -> dict:
    return {"assignment": assignment.name, "student_id": sub.student_id, "duedate": duedate, **_person(sub, people),
            "status": "graded", "error": "", "score": 0.0, "max_score": assignment.max_score, "tests": [],
            "manual": [], "notes": [], "log": "", "sandbox": {}, "digest": digest}


def _manual(assignment: Assignment, info: dict) -> list[dict]:
    """The written answers, for the instructor to grade by hand (never scored here): each with its points and the
    student's text ("" where there is none)."""
    answers = info.get("answers", {})
    return [{"grade_id": gid, "max_points": pts, "status": MANUAL if is_answered(answers.get(gid, "")) else "no answer",
             "answer": answers.get(gid, "")[:20000]} for gid, pts in assignment.manual.items()]


MANUAL = "needs manual grading"


def cells_budget(limits: Limits, groups: list[Group]) -> float:
    """Seconds the notebook's cells may take in all: what the probes' own limits leave of the run's (and at least
    half of it), so a hung cell still leaves the tests their time."""
    return round(max(limits.timeout_s - sum(g.timeout_s for g in groups) - 3.0, limits.timeout_s / 2), 3)


def prepare_job(assignment: Assignment, sub: Submission, groups: list[Group], work: Path,
                limits: Limits = Limits()) -> tuple[Path | None, dict]:
    """The job folder for one submission, or None and the reasons (unreadable notebook).

    The folder holds the hidden inputs (``inputs/``), ``outputs/``, the assignment's ``files/`` and the files the
    submission handed in (written last, each a new file: none can replace one of the grader's). The job itself
    (cells, probe code) is ``info["spec"]``, which reaches the child on its standard input, not as a file.
    """
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
    info["answers"] = {gid: report.sources.get(gid, "") for gid in assignment.manual}
    for probe in assignment.probes:
        reason = _forbidden(probe, report.sources)
        if reason:
            info["forbidden"][probe.grade_id] = reason
    job = Path(tempfile.mkdtemp(prefix=f"{sub.student_id}-", dir=work))
    (job / "outputs").mkdir()
    info["spec"] = json.dumps({"cells": code_cells(nb), "cells_timeout_s": cells_budget(limits, groups),
                               "groups": [{"name": g.name, "code": g.code, "timeout_s": g.timeout_s}
                                          for g in groups]})
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
    budget = MAX_EXTRA_BYTES
    for p in sub.extras:  # (names, sizes and types were checked when the submission was found)
        budget -= _copy_new(p, job / p.name, budget)
    return job, info


def _copy_new(src: Path, dst: Path, budget: int) -> int:
    """Copy at most ``budget`` bytes of the regular file ``src`` into a file ``dst`` that must not exist yet
    (``O_EXCL``: a submission's file never replaces the grader's); returns the bytes copied. Links are refused."""
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError(f"{src.name} is not a regular file")
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        copied = 0
        with os.fdopen(out, "wb") as g:
            while copied < budget and (chunk := f.read(min(_CHUNK, budget - copied))):
                g.write(chunk)
                copied += len(chunk)
        return copied


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


START_TRIES = 3  # a sandbox that fails to start (before any student code) is tried this many times


def run_job(job: str, spec: str, limits: Limits, hide: list[str], mode: str, data: str | None,
            env: dict) -> ChildResult:
    """The part that may run on another machine (SLURM): the sandboxed child, nothing secret. A sandbox that did
    not start (a mount that failed: nothing of the student's ran) is tried again."""
    for attempt in range(START_TRIES):
        child = run_child(Path(job), limits, [Path(h) for h in hide], mode, env, Path(data) if data else None,
                          spec.encode())
        child.tries = attempt + 1
        if child.started or child.timed_out:
            break
        time.sleep(0.2 * (attempt + 1))
    return child


# ------------------------------------------------------------------------------------------------ all students
def grade(name: str, submissions: str | Path, out: str | Path, *, source: str | Path | None = None,
          feedback: str | Path | None = None, jobs: int = 1, executor: str = "local", limits: Limits = Limits(),
          mode: str | None = None, preset: str | None = None, secret: str | None = None, regrade: bool = False,
          duedate: str = "", cluster: str | None = None, slurm_options: dict | None = None,
          timestamps: Mapping[str, str] | None = None, progress: Callable[[dict], None] | None = None,
          notice: Callable[[str], None] | None = None) -> list[dict]:
    """Grade every submission of ``name`` in ``submissions``; write ``out`` (CSV) and the feedback folder.

    ``preset`` / ``secret`` default to ``$MTLKIT_PRESET`` (else smoke) / ``$MTLKIT_GRADING_SECRET``; both are set
    in this process while grading (grading.py and the checks read them) and restored afterwards. The child gets
    the preset, never the secret. ``timestamps``: the instructor's record of submission times (student id ->
    time); the default is each collected notebook's modification time. ``notice`` hears one line for every
    top-level entry of ``submissions`` that is not graded (and why) and for every warning.
    """
    preset = preset or os.environ.get("MTLKIT_PRESET", "smoke")
    secret = secret or os.environ.get(SECRET_ENV)
    with _environ({"MTLKIT_PRESET": preset, SECRET_ENV: secret}):
        return _grade(name, submissions, out, source=source, feedback=feedback, jobs=jobs, executor=executor,
                      limits=limits, mode=mode, preset=preset, secret=secret, regrade=regrade, duedate=duedate,
                      cluster=cluster, slurm_options=slurm_options, timestamps=timestamps, progress=progress,
                      notice=notice or (lambda line: None))


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


FEEDBACK_FORMAT = 2  # feedback written by an older grader (no written answers, student timestamps) is not reused
GRADER_ERROR = "grader-error"  # a gradebook status: the sandbox failed, not the submission (never reused)


def _sandbox_mode(mode: str | None) -> str:
    """The mode asked for, else the strongest that works; ``rlimits`` (which hides nothing from student code) only
    when asked for by name."""
    if mode is not None:
        if mode not in MODES:
            raise ValueError(f"sandbox mode {mode!r}; valid modes: {', '.join(MODES)}")
        return mode
    mode = detect_mode()
    if mode == "rlimits":
        raise ValueError("no sandbox here can hide the grader's files from student code (neither `unshare` nor "
                         "bubblewrap works): install bubblewrap (apt install bubblewrap), or pass --sandbox rlimits "
                         "to grade with limits only (student code can then read what the grader's user can read)")
    return mode


def _grader_folders(assignment: Assignment, submissions: Path, feedback: Path, out: Path, work: Path,
                    data: Path | None) -> list[str]:
    """What the child must never see: the instructor's sources (the ones graded and the kit's own), every
    submission, the feedback, the gradebook (its whole folder where that leaves the child what it needs: other
    gradebooks lie there too) and every job folder."""
    from mtlkit.grading.assignment import default_source_root

    book = out.parent if can_hide(out.parent, data) else out
    return [str(p) for p in (assignment.folder.parent, default_source_root(), submissions, feedback, book, work)]


def _grade(name: str, submissions: str | Path, out: str | Path, *, source, feedback, jobs: int, executor: str,
           limits: Limits, mode: str | None, preset: str, secret: str | None, regrade: bool, duedate: str,
           cluster: str | None, slurm_options: dict | None, timestamps: Mapping[str, str] | None,
           progress: Callable[[dict], None] | None, notice: Callable[[str], None]) -> list[dict]:
    assignment = load_assignment(name, Path(source) if source else None)
    if assignment.needs_secret and not secret:
        # without it the hidden split's seed follows from the assignment's name and mtlkit's public code: a
        # submission could regenerate the split, labels included, inside the sandbox
        raise ValueError(f"{name} grades on a hidden split generated from the instructor's secret: pass "
                         f"--secret-seed or set {SECRET_ENV} (a long random string, the same for every grading run "
                         "of the course, e.g. `openssl rand -hex 16`)")
    submissions, out = Path(submissions).resolve(), Path(out).resolve()
    subs, skipped = find_submissions(submissions, name, timestamps)
    mode = _sandbox_mode(mode)
    for entry, reason in skipped:
        notice(f"skipped {entry}: {reason}")
    feedback = Path(feedback).resolve() if feedback else out.with_name(out.stem + "_feedback")
    feedback.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"limits": asdict(limits), "mode": mode, "preset": preset, "format": FEEDBACK_FORMAT,
                # a new secret (a new hidden split) regrades everyone; the digest never reveals it
                "secret": hashlib.sha256(secret.encode()).hexdigest() if secret else ""}
    people = _students(submissions)
    test_ids, manual_ids = list(assignment.points), list(assignment.manual)
    results: dict[str, dict] = {}
    todo = []
    for sub in subs:
        digest = _digest(assignment, sub, settings)
        previous = feedback / f"{sub.student_id}.json"
        if not regrade and previous.is_file():
            try:
                old = json.loads(previous.read_text())
                if old.get("digest") == digest:  # (a grader error is stored without one: never reused)
                    results[sub.student_id] = {**old, **_person(sub, people)}
                    continue
            except (OSError, json.JSONDecodeError):
                pass
        todo.append((sub, digest))
    groups = make_groups(assignment, secret) if todo else []
    from mtlkit.paths import data_dir

    data = data_dir() if data_dir().is_dir() else None
    work = Path(tempfile.mkdtemp(prefix=f"mtlkit-grade-{name}-",
                                 dir=out.parent if executor == "slurm" else None))  # slurm: a shared filesystem
    hide = _grader_folders(assignment, submissions, feedback, out, work, data)
    env = {"MTLKIT_PRESET": preset}

    def finish(sub: Submission, digest: str, job: Path | None, info: dict, child: ChildResult | None) -> None:
        result = _base_result(assignment, sub, people, digest, duedate)
        result["notes"] = list(sub.notes) + list(info["notes"])
        result["manual"] = _manual(assignment, info)
        if child is not None and not child.started:
            info = {**info, "error": f"the grading sandbox could not start ({child.tries} tries; a grader problem, "
                                     "not the submission's: it is graded again on the next run): "
                                     + child.log.strip()[-500:]}
            result["status"], result["digest"] = GRADER_ERROR, ""
            child = None
        if child is None:
            result["status"] = result["status"] if result["status"] == GRADER_ERROR else "error"
            result["error"] = info.get("error", "not graded")
            result["tests"] = [{"grade_id": c, "max_points": p, "probes": []} for c, p in assignment.points.items()]
            result["sandbox"] = {"mode": mode}
        else:
            result["sandbox"] = {"mode": child.mode, "wall_s": round(child.wall_s, 2), "returncode": child.returncode,
                                 "timed_out": child.timed_out, "output_exceeded": child.output_exceeded,
                                 "user": child.user, "limits": asdict(limits)}
            result["log"] = child.log[-16000:]
            score(assignment, groups, job, info, child, result)
        results[sub.student_id] = result
        # the feedback folder is hidden from every child; the gradebook is written only once no child runs
        write_feedback(feedback, result)
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
            pool = ThreadPoolExecutor(max_workers=max(1, jobs))  # threads only wait on child processes
            try:
                futures = {pool.submit(run_job, str(job), info["spec"], *args): (sub, digest, job, info)
                           for sub, digest, job, info in runnable}
                for future in as_completed(futures):
                    finish(*futures[future], future.result())
            finally:  # (an interrupt: the children that run finish, the others never start)
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        if results:  # every child has ended: nothing running can observe or disturb the gradebook's rewrite
            write_gradebook(out, list(results.values()), test_ids, manual_ids)
        shutil.rmtree(work, ignore_errors=True)
    faults = sorted(r["student_id"] for r in results.values() if r["status"] == GRADER_ERROR)
    if faults:
        notice(f"warning: the grading sandbox could not start for {', '.join(faults)} (a grader problem, see their "
               "error column); run the same command again to grade them")
    return [results[k] for k in sorted(results)]


def _person(sub: Submission, people: dict) -> dict:
    """The columns that come from the collector and the roster (refreshed when a feedback is reused)."""
    person = people.get(sub.student_id, {})
    return {"timestamp": sub.timestamp, "last_name": person.get("last_name", ""),
            "first_name": person.get("first_name", ""), "email": person.get("email", "")}


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
    columns = [[str(r[2]) for r in runnable], [r[3]["spec"] for r in runnable]] + [[a] * n for a in args]
    tasks = executor.map_array(run_job, *columns)
    try:
        for (sub, digest, job, info), task in zip(runnable, tasks):
            try:
                child = task.result()
            except Exception as exc:  # noqa: BLE001 - the array task itself died (node failure, time limit)
                child = ChildResult(None, False, False, f"grading job failed: {type(exc).__name__}: {exc}", args[2],
                                    0.0, started=False)
            finish(sub, digest, job, info, child)
    finally:  # (an interrupt: no task may outlive the grader, which is about to write the gradebook)
        for task in tasks:
            if not task.done():
                task.cancel(check=False)


# ------------------------------------------------------------------------------------------------ CLI
def run_from_args(args: argparse.Namespace) -> int:
    if args.secret_seed and args.sandbox == "rlimits":
        raise ValueError(f"in the rlimits sandbox student code can read the grader's command line: pass the secret in "
                         f"{SECRET_ENV} instead of --secret-seed")
    limits = Limits(timeout_s=args.timeout, memory_mb=args.memory_mb, output_kb=args.output_kb, nproc=args.nproc)
    slurm = {"slurm_partition": args.partition, "cpus_per_task": args.cpus,
             "slurm_array_parallelism": args.array_parallelism} if args.cluster in (None, "slurm") else {}

    def show(r: dict) -> None:
        extra = f" ({r['error']})" if r["error"] else ""
        print(f"{r['student_id']}: {r['score']:g} / {r['max_score']:g} {r['status']}{extra}", flush=True)

    results = grade(args.assignment, args.submissions, args.out, source=args.source, feedback=args.feedback,
                    jobs=args.jobs, executor=args.executor, limits=limits, mode=args.sandbox, preset=args.preset,
                    secret=args.secret_seed, regrade=args.regrade, duedate=args.duedate, cluster=args.cluster,
                    slurm_options=slurm, timestamps=read_timestamps(args.timestamps) if args.timestamps else None,
                    progress=show, notice=lambda line: print(line, flush=True))
    modes = sorted({r.get("sandbox", {}).get("mode", "") for r in results} - {""})
    print(f"graded {len(results)} submission(s) of {args.assignment} (sandbox: {', '.join(modes) or '-'}); "
          f"gradebook {args.out}")
    return 1 if any(r["status"] == GRADER_ERROR for r in results) else 0
