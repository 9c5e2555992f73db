"""`mtlkit assignments release`: the student version holds no solution or hidden-test text, locks instructor cells."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mtlkit.cli import main as cli_main
from mtlkit.grading.assignment import list_assignments, load_assignment
from mtlkit.grading.cells import HIDDEN_BEGIN, SOLUTION_BEGIN, cell_source, grade_id, is_solution, load_notebook
from mtlkit.grading.release import release

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "grading" / "fixtures" / "source"
REAL = ROOT / "assignments" / "source"


def _secret_lines(nb: dict) -> list[str]:
    """Every non-blank line inside a solution or hidden-test region of the instructor's notebook."""
    lines, inside = [], False
    for cell in nb["cells"]:
        for line in cell_source(cell).splitlines():
            s = line.strip()
            if s in (SOLUTION_BEGIN, HIDDEN_BEGIN):
                inside = True
            elif s in ("### END SOLUTION", "### END HIDDEN TESTS"):
                inside = False
            elif inside and len(s) > 12 and not s.startswith("#"):
                lines.append(s)
    return lines


def _released_text(nb: dict) -> str:
    return "\n".join(cell_source(c) for c in nb["cells"])


@pytest.mark.parametrize("source,name", [(FIXTURE, "PSX_tiny")] + [(REAL, n) for n in list_assignments(REAL)])
def test_release_holds_no_solution_or_hidden_text(tmp_path, source, name):
    path = release(name, tmp_path / "release", source=source)
    assert path == tmp_path / "release" / name / f"{name}.ipynb"
    instructor, student = load_notebook(source / name / f"{name}.ipynb"), load_notebook(path)
    text = _released_text(student)
    assert SOLUTION_BEGIN not in text and HIDDEN_BEGIN not in text and "HIDDEN-MARKER" not in text
    # a line both in a solution and in the released notebook must be one the notebook also shows elsewhere
    public = _released_text({"cells": [c for c in instructor["cells"] if not is_solution(c)]})
    public = re.sub(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS", "", public, flags=re.S)
    leaked = [s for s in _secret_lines(instructor) if s in text and s not in public]
    assert not leaked, leaked[:5]
    assert not (path.parent / "grading.py").exists()
    assert [grade_id(c) for c in student["cells"]] == [grade_id(c) for c in instructor["cells"]]
    for cell in student["cells"]:
        meta = cell["metadata"]
        nbg = meta.get("nbgrader", {})
        if (nbg.get("locked") or nbg.get("grade")) and not is_solution(cell):
            assert meta["editable"] is False and meta["deletable"] is False, grade_id(cell)
        if is_solution(cell):
            assert meta["deletable"] is False and "editable" not in meta
            stub = "YOUR ANSWER HERE" if cell["cell_type"] == "markdown" else "raise NotImplementedError()"
            assert stub in cell_source(cell)
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_release_stubs_keep_the_scaffold(tmp_path):
    student = load_notebook(release("PSX_tiny", tmp_path, source=FIXTURE))
    affine = next(cell_source(c) for c in student["cells"] if grade_id(c) == "affine")
    # the class and method signatures stay, each body becomes an indented stub
    assert "def __init__(self, d_in, d_out, seed=0):\n        # YOUR CODE HERE\n        raise NotImplementedError()" \
        in affine
    assert affine.count("raise NotImplementedError()") == 2 and "default_rng" not in affine
    compile(affine, "affine", "exec")


def test_release_cli(tmp_path, capsys):
    assert cli_main(["assignments", "release", "PSX_tiny", "--out", str(tmp_path), "--source", str(FIXTURE)]) == 0
    assert "released PSX_tiny" in capsys.readouterr().out
    assert cli_main(["assignments", "release", "PS0", "--out", str(tmp_path), "--source", str(FIXTURE)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtlkit: error: unknown assignment 'PS0'") and "PSX_tiny" in err
    # releasing into the instructor's own folder would overwrite the solutions
    assert cli_main(["assignments", "release", "PSX_tiny", "--out", str(FIXTURE), "--source", str(FIXTURE)]) == 2
    assert "overlaps the instructor's sources" in capsys.readouterr().err


def _nbgrader_course(tmp_path: Path, sources: dict[str, Path]):
    """An nbgrader course folder holding ``sources`` (name -> folder) and a runner for nbgrader's commands.

    nbgrader often lives in an environment of its own; its autograder must run the notebooks with a kernel that
    sees numpy and mtlkit, so the course gets a ``python3`` kernel spec for the interpreter running these tests
    (the same advice as GRADING.md: give nbgrader a kernel that sees mtlkit), and nbgrader's own bin folder goes
    first on PATH (it runs ``alembic`` from there).
    """
    exe = shutil.which("nbgrader")
    if exe is None:
        pytest.skip("nbgrader is not installed (pip install 'mtlkit[nbgrader]') - checked where it is")
    pytest.importorskip("ipykernel", reason="the kernel for nbgrader's autograder needs ipykernel")
    course = tmp_path / "course"
    for name, folder in sources.items():
        shutil.copytree(folder, course / "source" / name, ignore=shutil.ignore_patterns("__pycache__"))
    (course / "nbgrader_config.py").write_text(
        f"c = get_config()\nc.CourseDirectory.root = {str(course)!r}\n"
        "c.CourseDirectory.ignore = ['grading.py', '__pycache__']\n"
        f"c.CourseDirectory.db_assignments = {[dict(name=n) for n in sources]!r}\n"
        "c.CourseDirectory.db_students = [dict(id='alice')]\n"
        "c.ExecutePreprocessor.timeout = 600\n")
    kernels = tmp_path / "jupyter" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    env = {**os.environ, "JUPYTER_PATH": str(tmp_path / "jupyter"), "MTLKIT_PRESET": "unit",
           "PATH": str(Path(exe).resolve().parent) + os.pathsep + os.environ.get("PATH", "")}

    def nbgrader(*args: str) -> None:
        run = subprocess.run([exe, *args], cwd=course, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    return course, nbgrader


def test_nbgrader_releases_and_autogrades_the_same_sources(tmp_path):
    """Instructors who run nbgrader can use the same sources (grading.py ignored as parent-side code), and its
    autograder gives the instructor's solution the same autograded points as ``mtlkit grade``."""
    course, nbgrader = _nbgrader_course(tmp_path, {"PSX_tiny": FIXTURE / "PSX_tiny"})
    nbgrader("generate_assignment", "PSX_tiny", "--force")
    released = (course / "release" / "PSX_tiny" / "PSX_tiny.ipynb").read_text()
    assert "HIDDEN-MARKER" not in released and "shift-invariant" not in released
    assert not (course / "release" / "PSX_tiny" / "grading.py").exists()
    submitted = course / "submitted" / "alice" / "PSX_tiny"
    submitted.mkdir(parents=True)
    shutil.copy(FIXTURE / "PSX_tiny" / "PSX_tiny.ipynb", submitted)
    nbgrader("autograde", "PSX_tiny", "--force")
    nbgrader("export")
    with (course / "grades.csv").open() as f:
        row = next(csv.DictReader(f))
    # nbgrader's max_score also counts the manually graded written answer ("why", 1 point); mtlkit grades code only
    assert float(row["raw_score"]) == load_assignment("PSX_tiny", FIXTURE).max_score == 4.0
    assert float(row["max_score"]) == 5.0


def test_nbgrader_generates_every_shipped_assignment(tmp_path):
    """``nbgrader generate_assignment`` on the shipped sources: no solution or hidden-test text, no grading.py."""
    names = list_assignments(REAL)
    course, nbgrader = _nbgrader_course(tmp_path, {n: REAL / n for n in names})
    for name in names:
        nbgrader("generate_assignment", name, "--force")
        instructor = load_notebook(REAL / name / f"{name}.ipynb")
        student = load_notebook(course / "release" / name / f"{name}.ipynb")
        text = _released_text(student)
        assert SOLUTION_BEGIN not in text and HIDDEN_BEGIN not in text, name
        public = _released_text({"cells": [c for c in instructor["cells"] if not is_solution(c)]})
        public = re.sub(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS", "", public, flags=re.S)
        leaked = [s for s in _secret_lines(instructor) if s in text and s not in public]
        assert not leaked, (name, leaked[:5])
        assert not (course / "release" / name / "grading.py").exists(), name


@pytest.mark.parametrize("name", list_assignments(REAL))
def test_shipped_assignments_have_public_checks_and_hidden_tests(name):
    """Issue 8: public checks students can run (CS231n style: a printed relative error against the library's
    reference, plus asserts) and hidden tests worth the points (probes that sum to every autograded cell)."""
    assignment = load_assignment(name, REAL)
    points = assignment.points
    assert points and sum(points.values()) == assignment.max_score > 0
    printed_errors = 0
    for cell in assignment.notebook["cells"]:
        gid = grade_id(cell)
        if gid not in points:
            continue
        source = cell_source(cell)
        assert "assert " in source and "print(" in source, f"{name}:{gid} has no printed check or no assert"
        printed_errors += bool(re.search(r"(relative|scaled) error", source))
        probes = [p for p in assignment.probes if p.grade_id == gid or p.grade_id.startswith(gid + ".")]
        assert probes and sum(p.points for p in probes) == points[gid] > 0, f"{name}:{gid}"
    # every exercise check prints an error against the reference; the trained-model cells (PS1 part 3, the
    # leaderboard) print measured metrics instead
    model_cells = {"training", "leaderboard"}
    assert printed_errors >= len(set(points) - model_cells), name


@pytest.mark.parametrize("name", list_assignments(REAL))
def test_shipped_assignments_have_written_questions_with_a_rubric(tmp_path, name):
    """Issue 22: every problem set asks for a written analysis (nbgrader's manually graded answer, with points) whose
    instructor version holds a model answer and a rubric; the student version holds neither, and `mtlkit grade`
    reports the answer as needing manual grading instead of scoring it (max_score: autograded points only)."""
    assignment = load_assignment(name, REAL)
    assert assignment.manual and all(p > 0 for p in assignment.manual.values()), name
    released = load_notebook(release(name, tmp_path, source=REAL))
    for cell in assignment.notebook["cells"]:
        if grade_id(cell) in assignment.manual:
            assert cell["cell_type"] == "markdown" and "Rubric" in cell_source(cell), grade_id(cell)
    assert "Rubric" not in _released_text(released)
    answers = [c for c in released["cells"] if grade_id(c) in assignment.manual]
    assert answers and all(cell_source(c).strip() == "YOUR ANSWER HERE" for c in answers)
    assert assignment.max_score == sum(assignment.points.values())
