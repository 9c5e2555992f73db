"""``mtlkit assignments release PS --out DIR``: the student version of an assignment."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from mtlkit.atomic import atomic_write_bytes
from mtlkit.grading.assignment import load_assignment
from mtlkit.grading.cells import release_notebook

__all__ = ["release"]


def release(name: str, out: str | Path, source: str | Path | None = None) -> Path:
    """Write ``OUT/<PS>/<PS>.ipynb`` (stubs, no hidden tests, locked cells read-only) and ``files/``; never
    ``grading.py``. Returns the released notebook's path."""
    assignment = load_assignment(name, Path(source) if source else None)
    out = Path(out).resolve()
    folder = assignment.folder.resolve()
    if out == folder or folder in out.parents or out in folder.parents:
        raise ValueError(f"--out {out} overlaps the instructor's sources {folder}; release into another folder")
    target = out / name
    target.mkdir(parents=True, exist_ok=True)
    notebook = release_notebook(assignment.notebook)
    path = target / f"{name}.ipynb"
    atomic_write_bytes(path, (json.dumps(notebook, indent=1, ensure_ascii=False) + "\n").encode())
    if assignment.files.is_dir():
        shutil.copytree(assignment.files, target / "files", dirs_exist_ok=True)
    return path
