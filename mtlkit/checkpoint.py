"""Checkpoint files: atomic writes, rotation (``last.pt`` / ``prev.pt`` / ``best.pt``), safe loading, RNG states.

Checkpoints hold only tensors, dicts, lists, numbers and strings so that they load with
``torch.load(weights_only=True)`` (no pickled code runs when a checkpoint is opened).
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from mtlkit.atomic import atomic_write_with

__all__ = [
    "save_checkpoint", "load_checkpoint", "rotate_and_save",
    "CheckpointError", "get_rng_state", "set_rng_state", "state_dict_mismatch",
]


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model."""


def save_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` through an atomic write."""
    atomic_write_with(path, lambda f: torch.save(dict(obj), f))  # streamed: no second copy in memory


def rotate_and_save(obj: Mapping[str, Any], folder: str | os.PathLike, name: str = "last.pt",
                    previous: str = "prev.pt") -> Path:
    """Save ``obj`` as ``folder/name`` and keep the file it replaces as ``folder/previous``.

    The new checkpoint is fully written (temp file, fsync) before the rotation, so a crash at any point leaves
    at least one complete checkpoint: the old ``last.pt``, or ``prev.pt`` if it died between the two renames.
    """
    folder = Path(folder)

    def rotate(tmp: Path, last: Path) -> None:
        if last.exists():
            os.replace(last, folder / previous)
        os.replace(tmp, last)

    atomic_write_with(folder / name, lambda f: torch.save(dict(obj), f), replace=rotate)
    return folder / name


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; any failure becomes a :class:`CheckpointError`."""
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated zip, wrong format, unpickling refused, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{path} is not an mtlkit checkpoint (no 'model' entry)")
    return obj


# -- RNG states as plain data ------------------------------------------------------------------------------------
def get_rng_state() -> dict[str, Any]:
    """python, numpy, torch (and CUDA) RNG states as tensors/lists/numbers (``weights_only``-loadable)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`."""
    version, py_state, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in py_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between a model's state dict and a checkpoint's (empty when they match)."""
    problems = []
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    shapes = [f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items()
              if k in found and hasattr(found[k], "shape") and tuple(found[k].shape) != tuple(v.shape)]
    if shapes:
        more = f" (+{len(shapes) - 5} more)" if len(shapes) > 5 else ""
        problems.append("shape mismatch " + "; ".join(shapes[:5]) + more)
    return problems


def _short(keys: list[str], n: int = 5) -> str:
    head = ", ".join(keys[:n])
    return f"[{head}{f', ... +{len(keys) - n} more' if len(keys) > n else ''}]"
