"""The real-dataset registry (``registry.yaml`` beside this module, shipped in the wheel): sources, sizes,
licences, checksums; and the loaders by id."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from mtlkit.data.real.base import prepared_root, raw_root

REGISTRY_PATH = Path(__file__).resolve().with_name("registry.yaml")  # package data (pyproject.toml)


def _loaders() -> dict[str, type]:
    from mtlkit.data.real.broden import Broden
    from mtlkit.data.real.cityscapes import Cityscapes, Miniscapes
    from mtlkit.data.real.nyuv2 import NYUDMT, NYUv2
    from mtlkit.data.real.oxford_pet import OxfordPet, OxPetH5
    from mtlkit.data.real.pascal_mt import PascalMT

    return {c.name: c for c in (NYUv2, NYUDMT, Cityscapes, Miniscapes, OxfordPet, OxPetH5, PascalMT, Broden)}


LOADERS: dict[str, type] = _loaders()
REAL_NAMES: tuple[str, ...] = tuple(LOADERS)


@functools.lru_cache(maxsize=4)
def _load(path: str) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"dataset registry {p} not found; it ships inside the mtlkit package "
                                "(reinstall mtlkit, or pass the path of a registry.yaml)")
    with open(p) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping of dataset id -> entry")
    return data


def load_registry(path: str | Path | None = None) -> dict[str, dict]:
    """id -> registry entry (a dict as written in the YAML)."""
    return _load(str(path or REGISTRY_PATH))


def get_entry(dataset_id: str, path: str | Path | None = None) -> dict:
    reg = load_registry(path)
    if dataset_id not in reg:
        raise ValueError(f"unknown real dataset {dataset_id!r}; valid ids: {', '.join(reg)}")
    return reg[dataset_id]


def status(dataset_id: str) -> str:
    """'prepared', 'raw' (archives downloaded, not prepared), or 'missing'."""
    if prepared_root(dataset_id).is_dir() and any(prepared_root(dataset_id).iterdir()):
        return "prepared"
    if raw_root(dataset_id).is_dir() and any(raw_root(dataset_id).iterdir()):
        return "raw"
    return "missing"


def table_rows() -> list[dict[str, Any]]:
    """One row per registered real dataset, for ``mtlkit data list``."""
    rows = []
    for dataset_id, e in load_registry().items():
        rows.append({"id": dataset_id, "tasks": ",".join(e.get("tasks", [])), "size": e.get("size", "?"),
                     "licence": e.get("licence", "?"), "registration": "yes" if e.get("registration") else "no",
                     "present": status(dataset_id)})
    return rows


def format_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) if rows else len(c) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)
