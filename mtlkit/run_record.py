"""What a Trainer run records: its history, the best-epoch score and ``metrics.json``: config, versions, parameter
counts, per-epoch train losses/metrics, validation metrics and loss weights, per-step weights, the best epoch, the
test metrics of the best model (computed once, at the end), timings, and for ``max_steps`` runs the cap and the
projected full-length time (``timings.projected_full_seconds``).

Best-epoch rule: the score of epoch e is the mean over tasks of the direction-aware relative change of the task's
``delta_metric`` on the validation set with respect to the FIRST epoch (a Δm against epoch 0, in percent):
``score_e = 100/T * sum_t s_t (M_t(e) - M_t(0)) / |M_t(0)|`` with ``s_t = +1`` when higher is better, else -1.
The highest score wins (ties: the earlier epoch). Without a validation set the last epoch is the best.
"""
from __future__ import annotations

import math
import platform
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from mtlkit.optim import rule_labels

__all__ = ["METRICS_FORMAT", "empty_history", "epoch_score", "improves", "metrics_document", "run_config", "jsonable"]

METRICS_FORMAT = 1


def empty_history() -> dict[str, Any]:
    return {"epochs": [], "step_weights": [], "best": None, "reference": None,
            "timings": {"epoch_seconds": [], "train_seconds": [], "eval_seconds": [],
                        "train_images_per_second": [], "train_steps": []}}


def epoch_score(val: Mapping[str, Mapping[str, float]], reference: Mapping[str, Mapping[str, float]],
                tasks: Mapping[str, Any]) -> float:
    """Mean direction-aware relative change (%) of each task's delta metric vs the first epoch's value."""
    parts = []
    for name, task in tasks.items():
        key = task.delta_metric
        now, base = float(val[name].get(key, math.nan)), float(reference[name].get(key, math.nan))
        if math.isfinite(now) and math.isfinite(base):
            sign = 1.0 if task.higher_is_better else -1.0
            parts.append(sign * (now - base) / max(abs(base), 1e-8))
    return 100.0 * sum(parts) / len(parts) if parts else float("nan")


def improves(score: float | None, best: Mapping[str, Any] | None) -> bool:
    """Whether an epoch with ``score`` becomes the best (no score: each epoch replaces the last)."""
    if score is None or best is None:
        return True
    return math.isfinite(score) and (not math.isfinite(best["score"]) or score > best["score"])


def capped_record(max_steps: int | None, full_steps: Mapping[str, int]) -> dict[str, Any] | None:
    """For ``max_steps`` runs: the cap, and each split's full and capped steps per pass (deterministic data)."""
    if max_steps is None:
        return None
    return {"max_steps": max_steps, "cut": any(n > max_steps for n in full_steps.values()),
            "full_steps": dict(full_steps), "run_steps": {k: min(n, max_steps) for k, n in full_steps.items()}}


def projected_seconds(timings: Mapping[str, Any], capped: Mapping[str, Any], epochs: int) -> float:
    """A capped run's measured seconds per step times the full-length run's steps (training and evaluation)."""
    train_steps = sum(timings["train_steps"]) or 1
    per_train = sum(timings["train_seconds"]) / train_steps
    eval_steps = capped["run_steps"].get("val", 0) * len(timings["eval_seconds"])
    # without a measured evaluation, a training step's time stands in (an upper bound: no backward in evaluation)
    per_eval = sum(timings["eval_seconds"]) / eval_steps if eval_steps else per_train
    full = capped["full_steps"]
    return epochs * (full["train"] * per_train + full.get("val", 0) * per_eval) + full.get("test", 0) * per_eval


def metrics_document(trainer: Any, finished: bool, test: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``metrics.json`` content of ``trainer`` (``finished``: the test set was evaluated and nothing follows)."""
    import mtlkit
    from mtlkit.models import count_parameters

    h = trainer.history
    splits = (("train", trainer.train_set), ("val", trainer.val_set), ("test", trainer.test_set))
    doc = {
        "format": METRICS_FORMAT,
        "finished": finished,
        "config": trainer.run_config,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "mtlkit": getattr(mtlkit, "__version__", "unknown")},
        "parameters": count_parameters(trainer.model),
        "data": {split: (None if ds is None else {"name": getattr(ds, "name", None), "size": len(ds),
                                                   "split": getattr(ds, "split", split)}) for split, ds in splits},
        "tasks": {t: {"kind": getattr(task, "kind", None), "delta_metric": task.delta_metric,
                      "higher_is_better": bool(task.higher_is_better)} for t, task in trainer.tasks.items()},
        "epochs": h["epochs"],
        "step_weights": {"tasks": list(trainer.task_names), "values": h["step_weights"]},
        "best": None if h["best"] is None else {
            **h["best"], "selected_on": "val" if trainer.val_set is not None else "last epoch (no val set)",
            "criterion": "mean direction-aware relative change (%) of each task's delta metric vs epoch 0"},
        "test": test,
        "timings": h["timings"],
    }
    capped = getattr(trainer, "capped", None)
    if capped is not None:  # a dry run: what the full-length run would cost at the measured speed
        timings = dict(h["timings"])
        timings["seconds_per_train_step"] = sum(timings["train_seconds"]) / (sum(timings["train_steps"]) or 1)
        timings["projected_full_seconds"] = projected_seconds(timings, capped, trainer.config.epochs)
        doc.update(capped=capped, timings=timings)
    return doc


def jsonable(x: Any) -> Any:
    """Config values as JSON/``weights_only``-safe data (callables and objects become their names)."""
    if x is None or isinstance(x, (bool, int, str, float)):
        return x
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, torch.device):
        return str(x)
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, nn.Module):
        return type(x).__name__
    if callable(x):
        return getattr(x, "__name__", type(x).__name__)
    return repr(x)


def rounded(values: Sequence[float], digits: int = 6) -> list[float]:
    return [float(f"{x:.{digits}g}") if math.isfinite(x) else x for x in values]


def run_config(trainer: Any, step_size: int) -> dict[str, Any]:
    """The options of ``trainer`` as ``metrics.json`` records them (options that are not in use are None)."""
    c, train_set = trainer.config, trainer.train_set
    return jsonable({
        "dataset": getattr(train_set, "name", type(train_set).__name__),
        "preset": getattr(train_set, "preset", None), "tasks": list(trainer.task_names),
        "model": type(trainer.model).__name__, "epochs": c.epochs, "batch_size": c.batch_size,
        "optimizer": c.optimizer, "lr": c.lr, "weight_decay": c.weight_decay,
        "momentum": c.momentum if c.optimizer == "sgd" else None, "scheduler": c.scheduler,
        "step_size": step_size if c.scheduler == "step" else None,
        "gamma": c.gamma if c.scheduler == "step" else None, "power": c.power if c.scheduler == "poly" else None,
        "param_groups": [list(rule) for rule in rule_labels(c.param_groups)], "grad_clip": c.grad_clip,
        "weighting": type(trainer.weighting).__name__.lower(), "weighting_options": dict(c.weighting_options or {}),
        "device": str(trainer.device), "amp": trainer.amp, "channels_last": trainer.channels_last, "seed": c.seed,
        "num_workers": c.num_workers, "task_schedule": c.task_schedule, "aux_weight": c.aux_weight,
        "drop_last": c.drop_last, "world_size": trainer.dist.world_size, "out_dir": str(trainer.out_dir),
        **({"max_steps": c.max_steps} if c.max_steps is not None else {}), **dict(c.extra),
    })
