"""Real datasets: loaders for the papers' data formats, the registry, download/prepare/verify, and format twins.

:func:`mtlkit.data.get_dataset` registers every loader of :data:`LOADERS` on first use, e.g.
``get_dataset("nyuv2", "train", root="/data/nyuv2")``. Loaders read ``<data dir>/prepared/<id>`` unless ``root=``
is given; ``preset`` is recorded but does not resize (every preset reads the native resolution, as
the ``paper`` preset needs); pass ``size=(H, W)`` to resize on read. See ``data/README.md`` for each format.
"""
from __future__ import annotations

from mtlkit.data.real.base import (CorruptFileError, DatasetLayoutError, DatasetNotFoundError, MissingDependencyError,
                                   RealDataset, prepared_root, raw_root)
from mtlkit.data.real.registry import LOADERS, REAL_NAMES, get_entry, load_registry

__all__ = ["CorruptFileError", "DatasetLayoutError", "DatasetNotFoundError", "LOADERS", "MissingDependencyError",
           "REAL_NAMES", "RealDataset", "get_entry", "load_registry", "prepared_root", "raw_root"]
