"""Checkpoint files: atomic writes, rotation (``last.pt`` / ``prev.pt`` / ``best.pt``), safe loading, RNG states,
and a Trainer's full state (what an exact resume needs: model, optimiser, scheduler, weighting, GradScaler, RNGs,
history, config).

Checkpoints hold only tensors, dicts, lists, numbers and strings so that they load with
``torch.load(weights_only=True)`` (no pickled code runs when a checkpoint is opened).
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import numpy as np
import torch

from mtlkit.atomic import atomic_write_with

__all__ = [
    "save_checkpoint", "load_checkpoint", "rotate_and_save", "find_checkpoint", "CheckpointError",
    "CheckpointMismatchError", "trainer_state", "restore_trainer_state", "get_rng_state", "set_rng_state",
    "state_dict_mismatch",
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


def find_checkpoint(folder: str | os.PathLike, report: bool = True) -> dict[str, Any] | None:
    """The checkpoint to resume from in ``folder``: ``last.pt``, else ``prev.pt`` when ``last.pt`` is missing or
    corrupt (said on stderr when ``report``), else None."""
    last, prev = Path(folder) / "last.pt", Path(folder) / "prev.pt"
    for path in (last, prev):
        if not path.exists():
            continue
        try:
            return load_checkpoint(path)
        except CheckpointError as exc:
            if report:
                other = "prev.pt" if path == last and prev.exists() else "nothing (starting afresh)"
                print(f"mtlkit: {path} is corrupt ({str(exc).split(': ', 1)[-1][:120]}); resuming from {other}",
                      file=sys.stderr)
    return None


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


# -- a Trainer's full state ---------------------------------------------------------------------------------------
class CheckpointMismatchError(CheckpointError, ValueError):
    """The checkpoint in ``out_dir`` belongs to another model (state-dict keys or shapes differ)."""


def trainer_state(trainer: Any) -> dict[str, Any]:
    """Everything a :class:`~mtlkit.train.Trainer` needs to resume exactly (``weights_only``-loadable)."""
    return {
        "format": 1,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "weighting": trainer.weighting.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "rng": get_rng_state(),
        "epoch": trainer.history["epochs"][-1]["epoch"] if trainer.history["epochs"] else -1,
        "global_step": trainer.global_step,
        "history": trainer.history,
        "config": trainer.run_config,
    }


def restore_trainer_state(trainer: Any, ckpt: Mapping[str, Any]) -> None:
    """Load a :func:`trainer_state` into ``trainer``; a checkpoint of another model fails before anything changes."""
    out, fix = trainer.out_dir, "Use another out_dir (--out), or resume=False (--no-resume) to start afresh"
    problems = state_dict_mismatch(trainer.model.state_dict(), ckpt["model"])
    if problems:
        raise CheckpointMismatchError(f"the checkpoint in {out} belongs to another model ({'; '.join(problems)}). "
                                      f"{fix} (the old checkpoints will be overwritten).")
    trainer.model.load_state_dict(ckpt["model"])
    try:
        trainer.weighting.load_state_dict(ckpt["weighting"])
    except RuntimeError as exc:
        raise CheckpointMismatchError(f"the checkpoint in {out} has another weighting state: {exc}. {fix}.") from None
    try:
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        if trainer.scheduler is not None and ckpt.get("scheduler") is not None:
            trainer.scheduler.load_state_dict(ckpt["scheduler"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointMismatchError(f"the optimiser/scheduler state in {out} does not fit this run ({exc}); "
                                      f"were param_groups or the optimiser changed? {fix}.") from None
    old, new = ckpt.get("config") or {}, trainer.run_config
    changed = sorted(k for k in set(old) | set(new) if k not in ("out_dir", "epochs") and old.get(k) != new.get(k))
    if changed and trainer.dist.is_main:
        print(f"mtlkit: resuming with a changed config ({', '.join(changed)}); the new values apply from now",
              file=sys.stderr)
    if ckpt.get("scaler"):
        trainer.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    trainer.history = ckpt["history"]
    trainer.global_step = int(ckpt["global_step"])
    trainer.start_epoch = int(ckpt["epoch"]) + 1
