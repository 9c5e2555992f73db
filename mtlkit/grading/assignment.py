"""Instructor-side assignment folders: ``<source>/<PS>/<PS>.ipynb`` + ``grading.py`` (+ optional ``files/``)."""
from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mtlkit.grading.cells import (
    check_instructor_notebook,
    grade_id,
    is_test,
    load_notebook,
    manual_points,
    solution_ids,
    test_points,
)
from mtlkit.grading.spec import Probe

__all__ = ["Assignment", "default_source_root", "list_assignments", "load_assignment", "check_consistency"]


def default_source_root() -> Path:
    """``assignments/source`` of this checkout (or of the working directory)."""
    checkout = Path(__file__).resolve().parents[2] / "assignments" / "source"
    return checkout if checkout.is_dir() else Path.cwd() / "assignments" / "source"


def list_assignments(root: Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / f"{p.name}.ipynb").is_file() and (p / "grading.py").is_file())


@dataclass
class Assignment:
    name: str
    folder: Path
    notebook: dict
    probes: list[Probe]
    leaderboard: Callable | None
    digest: str  # sha256 of the notebook and grading.py: a changed assignment regrades every submission
    needs_secret: bool = False  # grading.py's NEEDS_SECRET: hidden inputs derive from MTLKIT_GRADING_SECRET

    @property
    def points(self) -> dict[str, float]:
        return test_points(self.notebook)

    @property
    def max_score(self) -> float:
        """Autograded points only (nbgrader's max_score also counts the manually graded answers)."""
        return sum(self.points.values())

    @property
    def manual(self) -> dict[str, float]:
        return manual_points(self.notebook)

    @property
    def files(self) -> Path:
        return self.folder / "files"


def check_consistency(notebook: dict, probes: list[Probe]) -> list[str]:
    """The consistency rule: each autograded cell's points = the points of its probes (``X`` or ``X.*``)."""
    problems = []
    points = test_points(notebook)
    ids = [p.grade_id for p in probes]
    if len(set(ids)) != len(ids):
        problems.append(f"probe grade_ids are not unique: {sorted({i for i in ids if ids.count(i) > 1})}")
    owners = {}
    for p in probes:
        owner = next((cell for cell in points if p.grade_id == cell or p.grade_id.startswith(cell + ".")), None)
        if owner is None:
            problems.append(f"probe {p.grade_id!r} belongs to no autograded cell (cells: {', '.join(points)})")
        owners.setdefault(owner, []).append(p)
    for cell, pts in points.items():
        got = sum(p.points for p in owners.get(cell, []))
        if abs(got - pts) > 1e-9:
            problems.append(f"autograded cell {cell!r} is worth {pts:g} points but its probes sum to {got:g}")
    sols = set(solution_ids(notebook))
    for p in probes:
        unknown = set(p.solution_ids) - sols
        if unknown:
            problems.append(f"probe {p.grade_id!r} names unknown solution cells {sorted(unknown)}")
    return problems


def test_cell_of(notebook: dict, probe_id: str) -> str | None:
    for cell in notebook["cells"]:
        gid = grade_id(cell)
        if is_test(cell) and gid and (probe_id == gid or probe_id.startswith(gid + ".")):
            return gid
    return None


def _load_spec(name: str, path: Path):
    module_name = f"_mtlkit_grading_{name}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_assignment(name: str, root: Path | None = None) -> Assignment:
    """Read and check an assignment; unknown names list the valid ones."""
    root = Path(root) if root is not None else default_source_root()
    valid = list_assignments(root)
    if name not in valid:
        where = f"in {root}" if root.is_dir() else f"({root} does not exist; pass --source DIR)"
        raise ValueError(f"unknown assignment {name!r}; valid assignments {where}: {', '.join(valid) or 'none'}")
    folder = root / name
    nb_path, spec_path = folder / f"{name}.ipynb", folder / "grading.py"
    notebook = load_notebook(nb_path)
    check_instructor_notebook(notebook, nb_path.name)
    module = _load_spec(name, spec_path)
    probes = list(getattr(module, "PROBES", []))
    if not all(isinstance(p, Probe) for p in probes):
        raise ValueError(f"{spec_path}: PROBES must be a list of mtlkit.grading.spec.Probe")
    problems = check_consistency(notebook, probes)
    if problems:
        raise ValueError(f"{name}: the notebook and grading.py disagree: " + "; ".join(problems))
    digest = hashlib.sha256(nb_path.read_bytes() + spec_path.read_bytes()).hexdigest()
    return Assignment(name, folder, notebook, probes, getattr(module, "LEADERBOARD", None), digest,
                      bool(getattr(module, "NEEDS_SECRET", False)))
