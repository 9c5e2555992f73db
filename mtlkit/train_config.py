"""``TrainConfig``: every option of the :class:`~mtlkit.train.Trainer` in one validated dataclass.

``Trainer(model, train, val, test, config=TrainConfig(epochs=3, lr=1e-3))`` and the keyword form
``Trainer(model, train, val, test, epochs=3, lr=1e-3)`` are the same thing: the keywords build a ``TrainConfig``.
A bad value fails here, before any data is touched, with the option's name and its valid values.
This module imports no torch, so ``mtlkit train --help`` can read the choices cheaply.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Mapping, Sequence

__all__ = ["TrainConfig", "TrainConfigError", "OPTIMIZERS", "SCHEDULERS", "TASK_SCHEDULES", "PROGRESS_MODES"]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = (None, "step", "poly", "cosine")
TASK_SCHEDULES = (None, "epoch", "iteration")
PROGRESS_MODES = ("auto", "bars", "text", "lines", "off")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class TrainConfigError(ValueError, TypeError):
    """A Trainer option is unknown or has a bad value (a ValueError; a TypeError too, as for a bad keyword)."""


@dataclass
class TrainConfig:
    """The Trainer's options.

    out_dir: folder for checkpoints and ``metrics.json``. epochs, batch_size: the schedule.
    optimizer: adam, adamw or sgd (``momentum``); ``lr``, ``weight_decay``.
    scheduler: None, step (x ``gamma`` every ``step_size`` epochs, default epochs // 2), poly (lr (1 - e/E)^``power``)
        or cosine (to 0 at ``epochs``), stepped once per epoch; a callable ``f(optimizer) -> scheduler`` as is.
    param_groups: ``[(name prefix or predicate(name, param), lr multiplier), ...]``; the first matching rule puts a
        parameter in its group (e.g. ``[("cross_stitch", 100.0)]``). grad_clip: max global gradient norm.
    weighting: a name of ``mtlkit.weighting.WEIGHTINGS`` or a Weighting; ``weighting_options`` go to its constructor.
    tasks: task names or ``{name: Task}``; default: the dataset's tasks that the model predicts.
    task_schedule: for task-conditioned models (``model(images, task=name)``): "epoch" trains task e % T in epoch
        e, "iteration" task step % T at each step; evaluation runs every task.
    aux_weight: weight of deep-supervision losses on ``prediction["aux"][stage][task]``.
    device: auto (CUDA when available), cpu, cuda, cuda:N. amp, channels_last: None = on for CUDA (AMP off for
        gradient methods). seed: python/numpy/torch at construction, the shuffles, the DataLoader workers.
    drop_last: drop the last incomplete training batch. train_metrics: metrics on the training predictions too.
    max_steps: at most this many batches per training epoch and per evaluation (a dry run of a long recipe;
        metrics.json then says the run was capped and projects the full-length time from the measured steps).
    resume: continue from ``out_dir/last.pt`` (``prev.pt`` if ``last.pt`` is corrupt) when present.
    keep_last: keep ``last.pt``/``prev.pt`` after a finished fit (to train more epochs later). False: the final
        epoch writes no ``last.pt`` and both are removed once metrics.json says finished, leaving ``best.pt``.
    progress: None/True: ``MTLKIT_PROGRESS`` (default auto), False: off, or a mode (see :mod:`mtlkit.progress`).
    callbacks: :class:`mtlkit.train.Callback` objects or callables ``f(trainer, epoch, record)`` (epoch end).
    extra: values recorded as is in ``metrics.json["config"]`` (e.g. the model name).
    """

    out_dir: str | os.PathLike = "runs/run"
    epochs: int = 10
    batch_size: int = 8
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: str | Callable | None = None
    step_size: int | None = None
    gamma: float = 0.1
    power: float = 0.9
    param_groups: Sequence[tuple[Any, float]] | Mapping[str, float] | None = None
    grad_clip: float | None = None
    weighting: Any = "equal"  # a name of mtlkit.weighting.WEIGHTINGS or a Weighting
    weighting_options: Mapping[str, Any] | None = None
    tasks: Sequence[str] | Mapping[str, Any] | str | None = None
    task_schedule: str | None = None
    aux_weight: float = 1.0
    device: Any = "auto"
    amp: bool | None = None
    channels_last: bool | None = None
    seed: int = 0
    num_workers: int = 0
    drop_last: bool = False
    train_metrics: bool = True
    max_steps: int | None = None
    resume: bool = True
    keep_last: bool = True
    progress: bool | str | None = None
    callbacks: Sequence[Any] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _integer(self, "epochs", 1)
        _integer(self, "batch_size", 1)
        _integer(self, "seed", 0)
        _integer(self, "num_workers", 0)
        _integer(self, "step_size", 1, optional=True)
        _integer(self, "max_steps", 1, optional=True)
        _number(self, "lr", positive=True)
        _number(self, "weight_decay")
        _number(self, "gamma", positive=True)
        _number(self, "power")
        _number(self, "aux_weight")
        _number(self, "grad_clip", positive=True, optional=True)
        if not 0 <= self.momentum < 1:
            raise TrainConfigError(f"momentum={self.momentum!r}: must be in [0, 1)")
        _choice(self, "optimizer", OPTIMIZERS)
        if not callable(self.scheduler):
            _choice(self, "scheduler", SCHEDULERS, "(or a callable optimizer -> scheduler)")
        _choice(self, "task_schedule", TASK_SCHEDULES)
        for name in ("resume", "keep_last", "drop_last", "train_metrics"):
            _flag(self, name)
        for name in ("amp", "channels_last"):
            _flag(self, name, optional=True)
        if not (self.progress is None or isinstance(self.progress, bool) or self.progress in PROGRESS_MODES):
            raise TrainConfigError(f"progress={self.progress!r}: valid values are None (MTLKIT_PROGRESS or auto), "
                                   f"True, False or one of {', '.join(PROGRESS_MODES)}")
        if not _DEVICE.match(str(self.device)):
            raise TrainConfigError(f"device={self.device!r}: valid devices are auto, cpu, cuda, cuda:N, mps")
        if not (isinstance(self.weighting, str) or hasattr(self.weighting, "weights")):
            raise TrainConfigError(f"weighting={self.weighting!r}: give a name of mtlkit.weighting.WEIGHTINGS "
                                   "or a Weighting object")
        if self.weighting_options is not None and not isinstance(self.weighting_options, Mapping):
            raise TrainConfigError(f"weighting_options={self.weighting_options!r}: must be a dict")
        if not isinstance(self.extra, Mapping):
            raise TrainConfigError(f"extra={self.extra!r}: must be a dict of values to record in metrics.json")
        if callable(self.callbacks) or isinstance(self.callbacks, (str, bytes)):
            raise TrainConfigError("callbacks must be a list of Callback objects or callables, e.g. [my_callback]")
        self.callbacks = list(self.callbacks)

    @classmethod
    def from_options(cls, base: TrainConfig | None = None, **options: Any) -> TrainConfig:
        """``base`` (or the defaults) with ``options`` replaced; an unknown option name is a clear error."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in options:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise TrainConfigError(f"unknown Trainer option {key!r}{hint}; valid options: {', '.join(names)}")
        return dataclasses.replace(base, **options) if base is not None else cls(**options)


def _integer(cfg: TrainConfig, name: str, minimum: int, optional: bool = False) -> None:
    value = getattr(cfg, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        none = "None or " if optional else ""
        raise TrainConfigError(f"{name}={value!r}: must be {none}an integer >= {minimum}")
    setattr(cfg, name, int(value))


def _number(cfg: TrainConfig, name: str, positive: bool = False, optional: bool = False) -> None:
    value = getattr(cfg, name)
    if optional and value is None:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        none = "None or " if optional else ""
        raise TrainConfigError(f"{name}={value!r}: must be {none}a finite number {'> 0' if positive else '>= 0'}")
    setattr(cfg, name, float(value))


def _choice(cfg: TrainConfig, name: str, valid: Sequence[Any], more: str = "") -> None:
    value = getattr(cfg, name)
    if value not in valid:
        shown = ", ".join("None" if v is None else str(v) for v in valid)
        plural = {"optimizer": "optimizers", "scheduler": "schedulers"}.get(name, "values")
        raise TrainConfigError(f"unknown {name} {value!r}; valid {plural}: {shown} {more}".rstrip())


def _flag(cfg: TrainConfig, name: str, optional: bool = False) -> None:
    value = getattr(cfg, name)
    if not (isinstance(value, bool) or (optional and value is None)):
        raise TrainConfigError(f"{name}={value!r}: must be True or False{' (or None: automatic)' if optional else ''}")
