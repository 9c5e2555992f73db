"""Real datasets: loaders for the papers' data formats, the registry, download/prepare/verify, and format twins.

Importing this package registers every loader with :func:`mtlkit.data.get_dataset` (``get_dataset`` imports it on
first use), e.g. ``get_dataset("nyuv2", "train", root="/data/nyuv2")``. Loaders read ``<data dir>/prepared/<id>``
unless ``root=`` is given; ``preset`` is recorded but does not resize (every preset reads the native resolution, as
the ``paper`` preset needs); pass ``size=(H, W)`` to resize on read. See ``data/README.md`` for each format.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any

from mtlkit.data.datasets import DATASETS, register_dataset
from mtlkit.data.real.base import (CorruptFileError, DatasetLayoutError, DatasetNotFoundError, MissingDependencyError,
                                   RealDataset, prepared_root, raw_root)
from mtlkit.data.real.registry import LOADERS, REAL_NAMES, get_entry, load_registry


def _factory(cls: type, split: str, preset: str = "paper", root: Any = None, transform: Any = None, seed: int = 0,
             cache: bool = True, **options: Any) -> RealDataset:
    """get_dataset adapter: ``seed``/``cache`` only concern synthetic data and are ignored here."""
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "split", "preset", "root",
                                                                                "transform")]
    for key in options:
        if key not in valid:
            raise ValueError(f"{cls.name} has no option {key!r}; valid options: {', '.join(valid)}")
    return cls(split, preset=preset, root=root, transform=transform, **options)


for _name, _cls in LOADERS.items():
    if _name not in DATASETS:
        register_dataset(_name)(functools.partial(_factory, _cls))

__all__ = ["CorruptFileError", "DatasetLayoutError", "DatasetNotFoundError", "LOADERS", "MissingDependencyError",
           "REAL_NAMES", "RealDataset", "get_entry", "load_registry", "prepared_root", "raw_root"]
