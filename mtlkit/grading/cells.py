"""nbgrader-format notebooks as plain JSON: read them, find graded cells, make the student version, splice submissions.

Cell roles come from ``cell.metadata["nbgrader"]`` (schema_version 3), exactly as nbgrader writes them:

    solution cell          {"solution": true,  "grade": false, "locked": false, "grade_id": ...}
    autograded test cell   {"solution": false, "grade": true,  "locked": true,  "grade_id": ..., "points": P}
    other locked cell      {"solution": false, "grade": false, "locked": true,  "grade_id": ...}

Answers sit between ``### BEGIN SOLUTION`` / ``### END SOLUTION``; instructor-only checks between
``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS``. Nothing here executes a notebook.
"""
from __future__ import annotations

import copy
import json
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["NotebookError", "load_notebook", "nbgrader_meta", "grade_id", "is_solution", "is_test", "is_locked",
           "solution_ids", "test_points", "manual_points", "is_answered",
           "release_notebook", "strip_hidden_tests", "stub_solution", "splice",
           "SpliceReport", "cell_source", "SOLUTION_BEGIN", "SOLUTION_END", "HIDDEN_BEGIN", "HIDDEN_END"]

SOLUTION_BEGIN, SOLUTION_END = "### BEGIN SOLUTION", "### END SOLUTION"
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
MARKDOWN_STUB = "YOUR ANSWER HERE"
MAX_NOTEBOOK_BYTES = 20 * 2**20  # a submission bigger than this is refused before parsing


class NotebookError(ValueError):
    """A notebook that cannot be used: unreadable, not JSON, not nbformat 4, or malformed cells."""


def load_notebook(path: str | Path) -> dict:
    """Read an nbformat-4 notebook as a dict, with an error that names the file and the problem."""
    path = Path(path)
    try:
        st = path.lstat()
    except OSError as exc:
        raise NotebookError(f"{path}: cannot read the notebook ({exc.strerror or exc})") from None
    # a symbolic link (e.g. kept by unzip) would make the grader read a file of its choosing, such as the
    # instructor's notebook; a FIFO or device would hang or flood it: only regular files are notebooks
    if stat.S_ISLNK(st.st_mode):
        raise NotebookError(f"{path.name}: the notebook is a symbolic link; submit the .ipynb file itself")
    if not stat.S_ISREG(st.st_mode):
        raise NotebookError(f"{path.name}: not a regular file; submit the .ipynb file itself")
    size = st.st_size
    if size > MAX_NOTEBOOK_BYTES:
        raise NotebookError(f"{path}: {size / 2**20:.1f} MiB, larger than the {MAX_NOTEBOOK_BYTES >> 20} MiB limit; "
                            "clear the outputs (Kernel > Restart & Clear Output) and save again")
    try:
        nb = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError: JSONDecodeError, and integers longer than Python's conversion limit; RecursionError: deeply
        # nested arrays. Either would otherwise escape and stop the grading of every other submission.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise NotebookError(f"{path.name}: not a valid notebook file (invalid JSON: {reason}); re-download the "
                            "assignment and copy your answers into it") from None
    return check_notebook(nb, path.name)


def check_notebook(nb: Any, name: str = "notebook") -> dict:
    """Validate the parts of the nbformat-4 schema the grader relies on."""
    if not isinstance(nb, dict) or "nbformat" not in nb:
        raise NotebookError(f"{name}: not a Jupyter notebook (no 'nbformat' field)")
    if nb.get("nbformat") != 4:
        raise NotebookError(f"{name}: nbformat {nb.get('nbformat')!r}; the grader reads nbformat 4 notebooks "
                            "(save it from Jupyter 4+ or convert it with `jupyter nbconvert --to notebook`)")
    if not isinstance(nb.get("cells"), list):
        raise NotebookError(f"{name}: not a Jupyter notebook (no 'cells' list)")
    for i, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            raise NotebookError(f"{name}: cell {i} is not a code, markdown or raw cell")
        if not isinstance(cell.get("metadata", {}), dict):
            raise NotebookError(f"{name}: cell {i} has malformed metadata")
        src = cell.get("source", "")
        if not isinstance(src, str) and not (isinstance(src, list) and all(isinstance(s, str) for s in src)):
            raise NotebookError(f"{name}: cell {i} has a malformed source")
    return nb


def cell_source(cell: dict) -> str:
    src = cell.get("source", "")
    return src if isinstance(src, str) else "".join(src)


def _set_source(cell: dict, text: str) -> None:
    cell["source"] = text.splitlines(keepends=True)


def nbgrader_meta(cell: dict) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def grade_id(cell: dict) -> str | None:
    gid = nbgrader_meta(cell).get("grade_id")
    return gid if isinstance(gid, str) else None


def is_solution(cell: dict) -> bool:
    return bool(nbgrader_meta(cell).get("solution"))


def is_test(cell: dict) -> bool:
    return bool(nbgrader_meta(cell).get("grade")) and not is_solution(cell)


def is_locked(cell: dict) -> bool:
    """Instructor-owned cells: locked or autograded (nbgrader locks every non-solution graded cell)."""
    meta = nbgrader_meta(cell)
    return not is_solution(cell) and bool(meta.get("locked") or meta.get("grade"))


def solution_ids(nb: dict) -> list[str]:
    return [grade_id(c) for c in nb["cells"] if is_solution(c) and grade_id(c)]


def test_points(nb: dict) -> dict[str, float]:
    """grade_id -> points of every autograded test cell."""
    return {grade_id(c): float(nbgrader_meta(c).get("points", 0)) for c in nb["cells"] if is_test(c) and grade_id(c)}


def manual_points(nb: dict) -> dict[str, float]:
    """grade_id -> points of every manually graded answer (nbgrader: ``solution`` and ``grade`` both true, e.g. a
    written answer in a markdown cell); ``mtlkit grade`` reports them as needing manual grading, never scores them."""
    return {grade_id(c): float(nbgrader_meta(c).get("points", 0)) for c in nb["cells"]
            if is_solution(c) and nbgrader_meta(c).get("grade") and grade_id(c)}


def is_answered(text: str) -> bool:
    """Whether a manually graded answer holds more than the released stub."""
    stripped = text.strip()
    return bool(stripped) and stripped not in (MARKDOWN_STUB, CODE_STUB)


def check_instructor_notebook(nb: dict, name: str) -> None:
    """Every graded or locked cell has a unique grade_id; every solution cell marks its answer."""
    seen: set[str] = set()
    for i, cell in enumerate(nb["cells"]):
        meta = nbgrader_meta(cell)
        if not meta:
            continue
        gid = grade_id(cell)
        if not gid:
            raise NotebookError(f"{name}: cell {i} has nbgrader metadata but no grade_id")
        if gid in seen:
            raise NotebookError(f"{name}: grade_id {gid!r} is used by two cells; grade ids must be unique")
        seen.add(gid)
        if is_solution(cell) and cell["cell_type"] == "code" and SOLUTION_BEGIN not in cell_source(cell):
            raise NotebookError(f"{name}: solution cell {gid!r} has no '{SOLUTION_BEGIN}' / '{SOLUTION_END}' region")


def _strip_region(text: str, begin: str, end: str, replacement: str | None, what: str) -> str:
    """Replace every ``begin``..``end`` region (marker lines included) by ``replacement`` at the region's indent."""
    out, inside, indent = [], False, ""
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped == begin:
            if inside:
                raise NotebookError(f"nested '{begin}' in a {what}")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            if replacement is not None:
                out.extend(indent + r + "\n" for r in replacement.splitlines())
        elif stripped == end:
            if not inside:
                raise NotebookError(f"'{end}' without '{begin}' in a {what}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise NotebookError(f"'{begin}' without '{end}' in a {what}")
    return "".join(out)


def strip_hidden_tests(text: str) -> str:
    return _strip_region(text, HIDDEN_BEGIN, HIDDEN_END, None, "test cell")


def stub_solution(text: str, cell_type: str = "code") -> str:
    """The student's starting point: each solution region becomes ``# YOUR CODE HERE`` + ``raise``.

    A markdown solution cell (a written answer) is replaced entirely by ``YOUR ANSWER HERE``.
    """
    if cell_type == "markdown":
        return MARKDOWN_STUB
    if SOLUTION_BEGIN not in text:
        return CODE_STUB
    return _strip_region(text, SOLUTION_BEGIN, SOLUTION_END, CODE_STUB, "solution cell")


def release_notebook(nb: dict) -> dict:
    """The student version: stubs for solutions, hidden tests removed, instructor cells read-only, no outputs."""
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        meta = cell.setdefault("metadata", {})
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
        text = cell_source(cell)
        if is_solution(cell):
            _set_source(cell, stub_solution(text, cell["cell_type"]))
        elif HIDDEN_BEGIN in text:
            _set_source(cell, strip_hidden_tests(text))
        if is_locked(cell):
            meta["editable"], meta["deletable"] = False, False
        elif is_solution(cell):
            meta.pop("editable", None)
            meta["deletable"] = False  # deleting it would lose the grade_id the grader matches on
    return nb


@dataclass
class SpliceReport:
    """What splicing a submission changed: per solution id, whether it was found; cells restored."""

    missing: list[str] = field(default_factory=list)  # solution grade ids absent from the submission
    restored: list[str] = field(default_factory=list)  # locked/test cells the submission had altered or deleted
    sources: dict[str, str] = field(default_factory=dict)  # solution grade id -> the student's source


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def splice(instructor: dict, submission: dict) -> tuple[dict, SpliceReport]:
    """The instructor's notebook with only the student's solution cells (matched by grade_id) put in.

    Hidden test regions are removed; everything else (locked cells, test cells, their order) is the instructor's.
    A solution id the submission lacks keeps its released stub (which raises), and is reported as missing.
    """
    report = SpliceReport()
    theirs: dict[str, dict] = {}
    for cell in submission["cells"]:
        gid = grade_id(cell)
        if gid and gid not in theirs:
            theirs[gid] = cell
    released = release_notebook(instructor)
    out = copy.deepcopy(instructor)
    for k, cell in enumerate(out["cells"]):
        gid = grade_id(cell)
        text = cell_source(cell)
        if is_solution(cell):
            student = theirs.get(gid)
            if student is None or not is_solution(student) or student.get("cell_type") != cell["cell_type"]:
                report.missing.append(gid)
                _set_source(cell, cell_source(released["cells"][k]))
            else:
                _set_source(cell, cell_source(student))
            report.sources[gid] = cell_source(cell)
            continue
        if HIDDEN_BEGIN in text:
            _set_source(cell, strip_hidden_tests(text))
        if is_locked(cell) and gid:
            student = theirs.get(gid)
            # the released cell, or the instructor's own (an instructor's notebook graded as a submission)
            expected = {_normalise(cell_source(released["cells"][k])), _normalise(text)}
            if student is None or _normalise(cell_source(student)) not in expected:
                report.restored.append(gid)
    return out, report


_MAGIC = re.compile(r"^\s*(%|!)")


def code_cells(nb: dict) -> list[tuple[str, str]]:
    """(label, python source) of every code cell, IPython line magics and shell escapes commented out."""
    cells = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        lines = [("# (magic removed) " + ln) if _MAGIC.match(ln) else ln for ln in cell_source(cell).splitlines()]
        cells.append((grade_id(cell) or f"cell {i}", "\n".join(lines) + "\n"))
    return cells
