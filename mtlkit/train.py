"""The Trainer: training loop, evaluation, checkpoint/resume, progress, logging, AMP and DDP; ``mtlkit train``.

>>> from mtlkit.data import get_dataset
>>> from mtlkit.models import build
>>> from mtlkit.train import Trainer, seed_everything
>>> train, val = (get_dataset("synthetic-nyu", s, preset="unit") for s in ("train", "val"))
>>> seed_everything(0)
>>> model = build("tiny", {"semseg": 13, "depth": 1, "normals": 3}, width=8)
>>> metrics = Trainer(model, train, val, out_dir="runs/demo", epochs=2, batch_size=4).fit()  # doctest: +SKIP

What a run leaves in ``out_dir``:

* ``last.pt`` / ``prev.pt``: the checkpoints of the last two epochs (model, optimiser, scheduler, weighting,
  GradScaler, RNG states, epoch, history, config), loadable with ``torch.load(weights_only=True)``;
* ``best.pt``: the model of the best epoch on the VALIDATION set (the test set is never used for selection);
* ``metrics.json``: config, versions, parameter counts, per-epoch train losses/metrics, validation metrics and
  loss weights, per-step weights, the best epoch, the test metrics of the best model (computed once, at the end)
  and timings.

Best-epoch rule: the score of epoch e is the mean over tasks of the direction-aware relative change of the task's
``delta_metric`` on the validation set with respect to the FIRST epoch (a Δm against epoch 0, in percent):
``score_e = 100/T * sum_t s_t (M_t(e) - M_t(0)) / |M_t(0)|`` with ``s_t = +1`` when higher is better, else -1.
The highest score wins (ties: the earlier epoch). Without a validation set the last epoch is the best.

Determinism: the same seed gives the same ``metrics.json`` on the CPU (apart from ``timings``): python, numpy and
torch are seeded, each epoch's shuffle comes from a generator seeded with ``seed + epoch`` and the DataLoader's
worker seeds from a generator seeded per epoch, so a resumed run sees exactly the batches an uninterrupted one does.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the Trainer initialises the process group
(gloo on CPU, NCCL on CUDA), shards the training data with a ``DistributedSampler``, wraps the model in DDP and
only rank 0 shows progress and writes files. Validation/test metrics are exact: each rank evaluates a shard and
rank 0 updates the meters with every rank's predictions (gathered batch by batch). Training-set metrics under DDP
are those of rank 0's shard (training losses are averaged over all ranks).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from mtlkit.atomic import atomic_write_json
from mtlkit.checkpoint import (
    CheckpointError,
    get_rng_state,
    load_checkpoint,
    rotate_and_save,
    save_checkpoint,
    set_rng_state,
    state_dict_mismatch,
)
from mtlkit.weighting import Weighting, make_weighting

__all__ = [
    "Trainer", "NonFiniteLossError", "CheckpointMismatchError", "Callback", "seed_everything",
    "train_single_task", "add_arguments", "run_from_args", "main", "OPTIMIZERS", "SCHEDULERS",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = (None, "step", "poly", "cosine")
TASK_SCHEDULES = (None, "epoch", "iteration")
METRICS_FORMAT = 1


class NonFiniteLossError(RuntimeError):
    """A task's loss became NaN or infinite; the last good checkpoint is left untouched."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """The checkpoint in ``out_dir`` belongs to another model (state-dict keys or shapes differ)."""


class Callback:
    """Hooks the Trainer calls; override the ones you need. A plain callable is used as ``on_epoch_end``."""

    def on_fit_start(self, trainer: "Trainer") -> None: ...

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None: ...

    def on_step_end(self, trainer: "Trainer", step: int, info: dict[str, Any]) -> None: ...

    def on_epoch_end(self, trainer: "Trainer", epoch: int, record: dict[str, Any]) -> None:
        """After the epoch's checkpoint and metrics.json were written."""

    def on_fit_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None: ...


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices). Call it before building a model to make its init repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy and python follow it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    try:
        ip = shell.get_ipython() if shell is not None else None
    except Exception:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def _interactive() -> bool:
    err = sys.stderr
    try:
        tty = bool(err is not None and err.isatty())
    except (AttributeError, ValueError):
        tty = False
    return tty or _in_notebook()


# ------------------------------------------------------------------------------------------------ distributed
@dataclass
class _DistInfo:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_request: str) -> _DistInfo:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1), else a single-process info."""
    if dist.is_available() and dist.is_initialized():
        return _DistInfo(dist.get_world_size() > 1, dist.get_rank(), dist.get_world_size(),
                         int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this torch build")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_request in ("auto", "cuda") or device_request.startswith("cuda")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend)
    return _DistInfo(True, dist.get_rank(), dist.get_world_size(), local, True)


def _resolve_device(request: str | torch.device, info: _DistInfo) -> torch.device:
    request = str(request)
    if request == "auto":
        request = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(request)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but no CUDA device is available; use device='auto' or 'cpu'")
        if device.index is None:
            device = torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
    return device


# ------------------------------------------------------------------------------------------------ small helpers
def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=True)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
            out[key] = [v.to(device, non_blocking=True) for v in value]
        else:
            out[key] = value
    return out


def _float_preds(preds: Any) -> Any:
    """Predictions in float32 (AMP may produce float16); dicts are converted recursively."""
    if isinstance(preds, torch.Tensor):
        return preds.float() if preds.is_floating_point() else preds
    if isinstance(preds, Mapping):
        return {k: _float_preds(v) for k, v in preds.items()}
    return preds


def _cpu(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, Mapping):
        return {k: _cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_cpu(v) for v in x)
    return x


def _jsonable(x: Any) -> Any:
    """Config values as JSON/``weights_only``-safe data (callables and objects become their names)."""
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return x
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, torch.device):
        return str(x)
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, nn.Module):
        return type(x).__name__
    if callable(x):
        return getattr(x, "__name__", type(x).__name__)
    return repr(x)


def _fusable(params: Iterable[torch.Tensor]) -> bool:
    """Whether torch's fused optimizer kernels take these parameters: dense floating tensors on the CPU or CUDA."""
    params = list(params)
    return bool(params) and all(p.is_floating_point() and not p.is_sparse and p.device.type in ("cpu", "cuda")
                                for p in params)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _round(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}") if math.isfinite(x) else x


def _metric_value(metrics: Mapping[str, float], key: str) -> float:
    value = metrics.get(key, float("nan"))
    return float(value)


# -------------------------------------------------------------------------------------------------- Trainer
ParamRule = tuple[str | Callable[[str, nn.Parameter], bool], float]


class Trainer:
    """Train a multi-task model on a dataset of the kit, evaluate it, checkpoint and log everything.

    Args:
        model: ``model(images) -> {task: prediction}`` (``model(images, task=name)`` with ``task_schedule``).
        train_set, val_set, test_set: datasets of :func:`mtlkit.data.get_dataset` (``task_info`` is read from
            ``train_set``). ``val_set`` selects the best epoch; ``test_set`` is evaluated once, at the end, with
            the best epoch's weights.
        tasks: task names or ``{name: Task}``; default: the dataset's tasks that the model predicts.
        out_dir: folder for checkpoints and ``metrics.json``.
        epochs, batch_size: schedule.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (``momentum``); ``lr``, ``weight_decay``.
        scheduler: None, ``"step"`` (``step_size`` epochs, ``gamma``), ``"poly"`` (lr (1 - e/E)^``power``) or
            ``"cosine"`` (to 0 at ``epochs``); stepped once per epoch. A callable ``f(optimizer)`` returning a
            scheduler is used as is.
        param_groups: ``[(prefix or predicate(name, param), lr multiplier), ...]``; the first rule that matches a
            parameter name puts it in that group (e.g. ``[("cross_stitch", 100.0)]``); the rest use ``lr``.
        grad_clip: max global gradient norm (None: no clipping).
        weighting: a name of :data:`mtlkit.weighting.WEIGHTINGS` or a :class:`~mtlkit.weighting.Weighting`;
            ``weighting_options`` go to its constructor (e.g. ``{"weights": {"semseg": 0.5, "depth": 0.5}}``).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        amp: mixed precision (autocast + GradScaler); None = on for CUDA (off with gradient weighting methods).
        channels_last: None = on for CUDA.
        seed: seeds python/numpy/torch at construction, the shuffles and the DataLoader workers.
        num_workers: DataLoader worker processes.
        resume: continue from ``out_dir/last.pt`` (or ``prev.pt`` if ``last.pt`` is corrupt) when present.
        progress: tqdm bars; None = only when stderr is a terminal or in a Jupyter kernel.
        task_schedule: for task-conditioned models (``model(images, task=name)``): ``"epoch"`` trains task
            ``tasks[e % T]`` in epoch e, ``"iteration"`` task ``tasks[step % T]`` at each step; evaluation runs
            every task.
        callbacks: :class:`Callback` objects or callables ``f(trainer, epoch, record)`` run at epoch end.
        aux_weight: weight of deep-supervision losses on ``prediction["aux"][stage][task]``.
        train_metrics: compute metrics on the training predictions too (cheap; off saves a little time).
        drop_last: drop the last incomplete training batch.
        keep_last: keep ``last.pt``/``prev.pt`` (weights + optimiser state) after a finished fit, so that more epochs
            can be trained on later. False (what :func:`mtlkit.course.train_or_load` uses): the final epoch writes no
            ``last.pt`` (a crash before the end resumes from the epoch before) and both files are removed once
            ``metrics.json`` says finished, leaving ``best.pt``: the biggest checkpoint writes of a short run saved.
        config: extra JSON-able values recorded in ``metrics.json["config"]`` (e.g. the model name).
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: Dataset,
        val_set: Dataset | None = None,
        test_set: Dataset | None = None,
        *,
        tasks: Sequence[str] | Mapping[str, Any] | None = None,
        out_dir: str | os.PathLike = "runs/run",
        epochs: int = 10,
        batch_size: int = 8,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        scheduler: str | Callable | None = None,
        step_size: int | None = None,
        gamma: float = 0.1,
        power: float = 0.9,
        param_groups: Sequence[ParamRule] | Mapping[str, float] | None = None,
        grad_clip: float | None = None,
        weighting: str | Weighting = "equal",
        weighting_options: Mapping[str, Any] | None = None,
        device: str | torch.device = "auto",
        amp: bool | None = None,
        channels_last: bool | None = None,
        seed: int = 0,
        num_workers: int = 0,
        resume: bool = True,
        progress: bool | None = None,
        task_schedule: str | None = None,
        callbacks: Sequence[Callback | Callable] = (),
        aux_weight: float = 1.0,
        train_metrics: bool = True,
        drop_last: bool = False,
        keep_last: bool = True,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got epochs={epochs}, batch_size={batch_size}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
        if not (scheduler in SCHEDULERS or callable(scheduler)):
            raise ValueError(f"unknown scheduler {scheduler!r}; valid schedulers: None, step, poly, cosine "
                             "(or a callable optimizer -> scheduler)")
        if task_schedule not in TASK_SCHEDULES:
            raise ValueError(f"unknown task_schedule {task_schedule!r}; valid: None, 'epoch', 'iteration'")

        self.train_set, self.val_set, self.test_set = train_set, val_set, test_set
        self.out_dir = Path(out_dir)
        self.epochs, self.batch_size = int(epochs), int(batch_size)
        self.seed, self.num_workers = int(seed), int(num_workers)
        self.resume, self.grad_clip, self.aux_weight = bool(resume), grad_clip, float(aux_weight)
        self.task_schedule, self.train_metrics, self.drop_last = task_schedule, bool(train_metrics), bool(drop_last)
        self.keep_last = bool(keep_last)
        self.callbacks = list(callbacks)

        seed_everything(self.seed)
        self.dist = _setup_distributed(str(device))
        self.device = _resolve_device(device, self.dist)
        cuda = self.device.type == "cuda"
        self.model = _unwrap(model).to(self.device)
        self.tasks = self._resolve_tasks(tasks)
        self.task_names: tuple[str, ...] = tuple(self.tasks)

        if isinstance(weighting, Weighting):
            unknown = [t for t in self.task_names if t not in weighting.tasks]
            if unknown:
                raise ValueError(f"the weighting {type(weighting).__name__} has no weight for tasks {unknown}; "
                                 f"it knows {list(weighting.tasks)}")
            self.weighting = weighting
        else:
            self.weighting = make_weighting(str(weighting), self.task_names, **dict(weighting_options or {}))
        self.weighting.to(self.device)

        self.amp = bool(cuda if amp is None else amp) and cuda and not self.weighting.owns_backward
        self.channels_last = bool(cuda if channels_last is None else channels_last) and cuda
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.progress = (_interactive() if progress is None else bool(progress)) and self.dist.is_main

        self.optimizer = self._build_optimizer(optimizer, lr, weight_decay, momentum, param_groups)
        self.scheduler = self._build_scheduler(scheduler, step_size, gamma, power)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp) if cuda else torch.amp.GradScaler(
            "cpu", enabled=False)
        self._train_model: nn.Module = self.model  # the DDP wrapper during fit() under torchrun

        self.config: dict[str, Any] = _jsonable({
            "dataset": getattr(train_set, "name", type(train_set).__name__),
            "preset": getattr(train_set, "preset", None),
            "tasks": list(self.task_names),
            "model": type(self.model).__name__,
            "epochs": self.epochs, "batch_size": self.batch_size, "optimizer": optimizer, "lr": lr,
            "weight_decay": weight_decay, "momentum": momentum if optimizer == "sgd" else None,
            "scheduler": scheduler, "step_size": self._step_size if scheduler == "step" else None,
            "gamma": gamma if scheduler == "step" else None, "power": power if scheduler == "poly" else None,
            "param_groups": [[rule, mult] for rule, mult in self._param_rules],
            "grad_clip": grad_clip, "weighting": type(self.weighting).__name__.lower(),
            "weighting_options": dict(weighting_options or {}), "device": str(self.device), "amp": self.amp,
            "channels_last": self.channels_last, "seed": self.seed, "num_workers": self.num_workers,
            "task_schedule": task_schedule, "aux_weight": self.aux_weight, "drop_last": self.drop_last,
            "world_size": self.dist.world_size, "out_dir": str(self.out_dir),
            **dict(config or {}),
        })
        self.history: dict[str, Any] = self._empty_history()
        self.global_step = 0
        self.start_epoch = 0
        self._check_model_outputs()

    # ------------------------------------------------------------------------------------------ construction
    def _resolve_tasks(self, tasks: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
        from mtlkit.tasks import make_task

        ds = self.train_set
        ds_name = getattr(ds, "name", type(ds).__name__)
        info: Mapping[str, Mapping[str, Any]] = getattr(ds, "task_info", None) or {}
        labelled = tuple(getattr(ds, "tasks", tuple(info)))
        model_tasks = tuple(getattr(self.model, "tasks", ()))
        if tasks is None:
            names = [t for t in labelled if not model_tasks or t in model_tasks]
            if not names:
                raise ValueError(f"the model predicts {list(model_tasks)} but dataset {ds_name} labels "
                                 f"{list(labelled)}: no task in common; pass tasks= or build the model for "
                                 f"the dataset's tasks")
            tasks = names
        if isinstance(tasks, str):
            tasks = [t.strip() for t in tasks.split(",") if t.strip()]
        given = dict(tasks) if isinstance(tasks, Mapping) else {str(t): None for t in tasks}
        if not given:
            raise ValueError("no tasks to train; pass tasks=['semseg', ...] or leave tasks=None")
        missing = [t for t in given if t not in labelled]
        if missing:
            raise ValueError(f"task(s) {missing} have no labels in dataset {ds_name}; it labels {list(labelled)}")
        resolved = {}
        for name, task in given.items():
            resolved[name] = task if task is not None else make_task(name, **dict(info.get(name, {})))
        return resolved

    def _build_optimizer(self, name: str, lr: float, weight_decay: float, momentum: float,
                         rules: Sequence[ParamRule] | Mapping[str, float] | None) -> torch.optim.Optimizer:
        rules = list(rules.items()) if isinstance(rules, Mapping) else list(rules or [])
        self._param_rules = [(r if isinstance(r, str) else getattr(r, "__name__", "predicate"), float(m))
                             for r, m in rules]
        groups: list[dict[str, Any]] = [{"params": [], "lr": lr * float(m), "name": str(label), "lr_mult": float(m)}
                                        for (_, m), (label, _) in zip(rules, self._param_rules)]
        rest: list[nn.Parameter] = []
        for pname, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            for i, (rule, _) in enumerate(rules):
                hit = pname.startswith(rule) if isinstance(rule, str) else bool(rule(pname, p))
                if hit:
                    groups[i]["params"].append(p)
                    break
            else:
                rest.append(p)
        for g, (label, _) in zip(groups, self._param_rules):
            if not g["params"]:
                raise ValueError(f"param_groups rule {label!r} matches no parameter of {type(self.model).__name__}; "
                                 f"names look like {[n for n, _ in list(self.model.named_parameters())[:3]]}")
        groups = [g for g in groups if g["params"]]
        if rest:
            groups.append({"params": rest, "lr": lr, "name": "default", "lr_mult": 1.0})
        extra = [p for p in self.weighting.parameters() if p.requires_grad]
        if extra:  # learnable loss weights (Uncertainty): plain lr, no weight decay
            groups.append({"params": extra, "lr": lr, "name": "weighting", "lr_mult": 1.0, "weight_decay": 0.0})
        # The fused kernels do one pass over all parameters instead of a dozen small ops per tensor: on a 2-core
        # CPU Adam's per-tensor loop was ~1/6 of a smoke training step; fused is about 8x faster there (and on CUDA).
        fused = {"fused": True} if _fusable(p for g in groups for p in g["params"]) else {}
        if name == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, **fused)
        if name == "adamw":
            return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **fused)
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, **fused)

    def _build_scheduler(self, name: str | Callable | None, step_size: int | None, gamma: float, power: float):
        self._step_size = int(step_size) if step_size else max(1, self.epochs // 2)
        if name is None:
            return None
        if callable(name):
            return name(self.optimizer)
        if name == "step":
            return torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=self._step_size, gamma=gamma)
        if name == "poly":
            return torch.optim.lr_scheduler.PolynomialLR(self.optimizer, total_iters=self.epochs, power=power)
        return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.epochs)

    def _empty_history(self) -> dict[str, Any]:
        return {"epochs": [], "step_weights": [], "best": None, "reference": None,
                "timings": {"epoch_seconds": [], "train_seconds": [], "eval_seconds": [],
                            "train_images_per_second": []}}

    # ------------------------------------------------------------------------------------------- validation
    def _forward(self, model: nn.Module, images: torch.Tensor, task: str | None = None) -> dict[str, Any]:
        """``model(images)`` or, for task-conditioned models, ``model(images, task=task)`` as a dict."""
        if self.task_schedule is None:
            out = model(images)
            if not isinstance(out, Mapping):
                raise ValueError(f"{type(_unwrap(model)).__name__} returned {type(out).__name__}; models must return "
                                 "a dict {task: prediction}")
            return dict(out)
        out = model(images, task=task)
        return dict(out) if isinstance(out, Mapping) else {task: out}

    def _expected_shape(self, name: str, b: int, h: int, w: int) -> tuple[int, ...]:
        task = self.tasks[name]
        kind = getattr(task, "kind", "dense")
        channels = int(getattr(task, "out_channels"))
        if kind == "dense":
            return (b, channels, h, w)
        return (b, channels)  # image-level logits, or [B,4] boxes

    def _check_model_outputs(self) -> None:
        """One batch through the model (eval, no_grad): its outputs must cover the tasks with the right shapes."""
        from mtlkit.data import collate

        n = min(2, len(self.train_set))
        if n == 0:
            raise ValueError(f"the training set {getattr(self.train_set, 'name', '')} is empty")
        batch = collate([self.train_set[i] for i in range(n)])
        images = batch["image"].to(self.device)
        b, _, h, w = images.shape
        was_training = self.model.training
        self.model.eval()
        problems = []
        try:
            with torch.no_grad():
                if self.task_schedule is None:
                    outs = {t: self._forward(self.model, images) for t in self.task_names[:1]}
                    outs = {t: outs[self.task_names[0]] for t in self.task_names}
                else:  # a task-conditioned model answers one task per call
                    outs = {t: self._forward(self.model, images, t) for t in self.task_names}
                for name, out in outs.items():
                    if name not in out:
                        problems.append(f"no output for task {name!r} (model outputs {sorted(out)})")
                        continue
                    pred = out[name]
                    got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
                    want = self._expected_shape(name, b, h, w)
                    if got != want:
                        problems.append(f"{name}: model gives {got}, the task needs {want}")
        finally:
            self.model.train(was_training)
        if problems:
            ds = getattr(self.train_set, "name", "the dataset")
            channels = {t: self.tasks[t].out_channels for t in self.task_names}
            raise ValueError(f"model {type(self.model).__name__} does not match the tasks of {ds}: "
                             + "; ".join(problems)
                             + f". Build the model with the dataset's task channels, e.g. build(name, {channels})")

    # -------------------------------------------------------------------------------------------- data
    def _train_loader(self, epoch: int) -> DataLoader:
        from mtlkit.data import collate

        sampler = DistributedSampler(self.train_set, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                     shuffle=True, seed=self.seed, drop_last=False)
        sampler.set_epoch(epoch)  # order = randperm(seed + epoch): reproducible and resumable
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate, worker_init_fn=_seed_worker, generator=gen,
                          drop_last=self.drop_last, pin_memory=self.device.type == "cuda")

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        from mtlkit.data import collate

        if self.dist.enabled:  # a disjoint shard per rank, no padding (metrics stay exact)
            dataset = Subset(dataset, list(range(self.dist.rank, len(dataset), self.dist.world_size)))
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          collate_fn=collate, worker_init_fn=_seed_worker,
                          generator=torch.Generator().manual_seed(self.seed),
                          pin_memory=self.device.type == "cuda")

    # ------------------------------------------------------------------------------------------- losses
    def task_losses(self, preds: Mapping[str, Any], batch: Mapping[str, Any],
                    tasks: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Per-task losses (plus deep supervision on ``preds["aux"][stage][task]``) in float32."""
        preds = _float_preds(preds)
        aux = preds.get("aux") or {}
        losses = {}
        for name in (tasks if tasks is not None else self.task_names):
            task = self.tasks[name]
            loss = task.loss(preds[name], batch)
            for stage in aux.values():
                if isinstance(stage, Mapping) and name in stage:
                    loss = loss + self.aux_weight * task.loss(stage[name], batch)
            losses[name] = loss
        return losses

    def _active_tasks(self, epoch: int, step: int) -> tuple[str, ...]:
        if self.task_schedule == "epoch":
            return (self.task_names[epoch % len(self.task_names)],)
        if self.task_schedule == "iteration":
            return (self.task_names[step % len(self.task_names)],)
        return self.task_names

    def _shared_parameters(self) -> list[nn.Parameter]:
        """Parameters shared by all tasks: ``model.shared_parameters()`` if it has one, else every parameter
        whose dotted name has no component equal to a task name (``heads.semseg.weight`` is task-specific)."""
        if hasattr(self.model, "shared_parameters"):
            return [p for p in self.model.shared_parameters() if p.requires_grad]
        names = set(self.task_names)
        return [p for n, p in self.model.named_parameters()
                if p.requires_grad and not names.intersection(n.split("."))]

    # ------------------------------------------------------------------------------------------- training
    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        model = self._train_model
        model.train()
        loader = self._train_loader(epoch)
        meters = {t: self.tasks[t].meter() for t in self.task_names} if self.train_metrics else {}
        sums = torch.zeros(len(self.task_names) + 2, dtype=torch.float64)  # task losses, total, images
        counts = torch.zeros(len(self.task_names), dtype=torch.float64)    # images each task was trained on
        ddp = isinstance(model, nn.parallel.DistributedDataParallel)
        gradient_method = self.weighting.owns_backward
        shared = self._shared_parameters() if gradient_method else []
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{self.epochs}", leave=False, dynamic_ncols=True)
        t0 = time.perf_counter()
        for step, batch in enumerate(loader):
            active = self._active_tasks(epoch, self.global_step)
            batch = _to_device(batch, self.device)
            images = batch["image"]
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            self.optimizer.zero_grad(set_to_none=True)
            sync = model.no_sync() if (ddp and gradient_method) else contextlib.nullcontext()
            with sync:
                with torch.autocast(self.device.type, enabled=self.amp):
                    preds = self._forward(model, images, active[0])
                losses = self.task_losses(preds, batch, active)
                loss_values = self._check_finite(losses, epoch, step)  # the one host sync for the task losses
                if gradient_method:
                    total = self.weighting(losses).detach()
                    self.weighting.backward(losses, shared)
                else:
                    total = self.weighting(losses)
                    self.scaler.scale(total).backward()
            if self.dist.enabled:
                self._sync_gradients(gradient_method)
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if gradient_method and self.dist.enabled:  # the method's own state (GradNorm's weights): rank 0's
                for buf in self.weighting.buffers():
                    dist.broadcast(buf, 0)

            n = images.shape[0]
            total_value = float(total.detach())
            for i, t in enumerate(self.task_names):
                if t in losses:
                    sums[i] += loss_values[t] * n
                    counts[i] += n
            sums[-2] += total_value * n
            sums[-1] += n
            weights = self.weighting.weights()
            self.history["step_weights"].append([_round(weights[t]) for t in self.task_names])
            if meters:
                with torch.no_grad():
                    fp = _float_preds(preds)
                    for t in active:
                        meters[t].update(fp[t].detach(), self.tasks[t].target(batch))
            self.global_step += 1
            info = {"epoch": epoch, "loss": total_value, "losses": dict(loss_values)}
            for cb in self.callbacks:
                if hasattr(cb, "on_step_end"):
                    cb.on_step_end(self, self.global_step, info)
            if bar is not None:  # no forced redraw per step: update() redraws at most every mininterval
                bar.set_postfix(loss=f"{info['loss']:.4f}", refresh=False)
                bar.update(1)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        if self.dist.enabled:
            both = torch.cat([sums, counts]).to(self._comm_device())
            dist.all_reduce(both)
            both = both.cpu()
            sums, counts = both[: len(sums)], both[len(sums):]
        task_loss = {t: (float(sums[i] / counts[i]) if counts[i] > 0 else None)  # None: not trained this epoch
                     for i, t in enumerate(self.task_names)}
        return {
            "loss": {**task_loss, "total": float(sums[-2] / max(float(sums[-1]), 1.0))},
            "metrics": {t: m.compute() for t, m in meters.items()} if meters else {},
            "images": int(sums[-1]), "seconds": seconds,
        }

    def _check_finite(self, losses: Mapping[str, torch.Tensor], epoch: int, step: int) -> dict[str, float]:
        """Raise :class:`NonFiniteLossError` if a task's loss is NaN/inf; else return the losses as floats.

        The scalar losses come to the host in ONE transfer (float64 holds every float32/float16 value exactly, so
        the floats equal ``float(loss)``): one sync per step instead of one per task and use.
        """
        host = torch.stack([v.detach().reshape(()).to(torch.float64) for v in losses.values()]).cpu()
        values = dict(zip(losses, host.tolist()))
        bad = (~torch.isfinite(host)).to(torch.float32)
        if self.dist.enabled:  # every rank must stop together, or the others would wait forever in backward
            bad = bad.to(self._comm_device())
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bool(bad.any()):
            names = [t for t, b in zip(losses, bad.tolist()) if b]
            values = {t: float(losses[t].detach()) for t in names}
            good = self.out_dir / "last.pt"
            kept = (f"the last good checkpoint {good} (epoch {self._last_checkpointed_epoch()}) is untouched"
                    if good.exists() else "no checkpoint had been written yet")
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch} step {step} (global step {self.global_step}) for task(s) "
                f"{', '.join(names)}: {values}; training stopped and {kept}. Lower the learning rate, set "
                "grad_clip, or check that task's data and predictions.")
        return values

    def _last_checkpointed_epoch(self) -> int | None:
        eps = self.history["epochs"]
        return eps[-1]["epoch"] if eps else None

    def _comm_device(self) -> torch.device:
        return self.device if (self.dist.enabled and dist.get_backend() == "nccl") else torch.device("cpu")

    def _sync_gradients(self, all_model_params: bool) -> None:
        """Average gradients DDP does not (the weighting's parameters; every parameter for gradient methods)."""
        params = [p for p in self.weighting.parameters() if p.requires_grad]
        if all_model_params:
            params += [p for p in self.model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            g = p.grad.to(self._comm_device())
            dist.all_reduce(g)
            p.grad.copy_(g.to(p.grad.device) / self.dist.world_size)

    # ----------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def _evaluate(self, dataset: Dataset, desc: str = "eval") -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        """(metrics {task: {metric: value}}, mean losses {task: value}) over ``dataset`` (exact under DDP)."""
        model = self.model
        was_training = model.training
        model.eval()
        if self.dist.enabled:  # BN statistics may differ slightly between ranks: evaluate rank 0's model
            for buf in model.buffers():
                b = buf.to(self._comm_device())
                dist.broadcast(b, 0)
                buf.copy_(b.to(buf.device))
        loader = self._eval_loader(dataset)
        meters = {t: self.tasks[t].meter() for t in self.task_names}
        sums = torch.zeros(len(self.task_names) + 1, dtype=torch.float64)
        steps = len(loader)
        if self.dist.enabled:  # ranks loop in lockstep; the first shard is the longest
            first = len(range(0, len(dataset), self.dist.world_size))
            steps = math.ceil(first / self.batch_size)
        it = iter(loader)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc=desc, leave=False, dynamic_ncols=True)
        for _ in range(steps):
            batch = next(it, None)
            local = None
            if batch is not None:
                batch = _to_device(batch, self.device)
                images = batch["image"]
                if self.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                preds: dict[str, Any] = {}
                with torch.autocast(self.device.type, enabled=self.amp):
                    if self.task_schedule is None:
                        preds = self._forward(model, images)
                    else:
                        for t in self.task_names:
                            preds[t] = self._forward(model, images, t)[t]
                preds = _float_preds(preds)
                losses = self.task_losses(preds, batch)
                n = images.shape[0]
                for i, t in enumerate(self.task_names):
                    sums[i] += float(losses[t]) * n
                sums[-1] += n
                local = {t: (preds[t], self.tasks[t].target(batch)) for t in self.task_names}
            if self.dist.enabled:
                gathered: list[Any] = [None] * self.dist.world_size
                dist.all_gather_object(gathered, _cpu(local))
                if self.dist.is_main:
                    for item in gathered:
                        if item is not None:
                            for t, (p, y) in item.items():
                                meters[t].update(p.to(self.device), y.to(self.device))
            elif local is not None:
                for t, (p, y) in local.items():
                    meters[t].update(p, y)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        model.train(was_training)
        if self.dist.enabled:
            s = sums.to(self._comm_device())
            dist.all_reduce(s)
            sums = s.cpu()
            result = [{t: m.compute() for t, m in meters.items()} if self.dist.is_main else None]
            dist.broadcast_object_list(result, src=0)
            metrics = result[0]
        else:
            metrics = {t: m.compute() for t, m in meters.items()}
        losses_mean = {t: float(sums[i] / max(float(sums[-1]), 1.0)) for i, t in enumerate(self.task_names)}
        return metrics, losses_mean

    def evaluate(self, dataset: Dataset) -> dict[str, dict[str, float]]:
        """Metrics of the current model on ``dataset``: {task: {metric: value}}."""
        return self._evaluate(dataset)[0]

    # ------------------------------------------------------------------------------------------- selection
    def _score(self, val: Mapping[str, Mapping[str, float]]) -> float:
        """Mean direction-aware relative change (%) of each task's delta metric vs the first epoch's value."""
        ref = self.history["reference"]
        parts = []
        for t in self.task_names:
            task = self.tasks[t]
            key = task.delta_metric
            now, base = _metric_value(val[t], key), _metric_value(ref[t], key)
            if not (math.isfinite(now) and math.isfinite(base)):
                continue
            sign = 1.0 if task.higher_is_better else -1.0
            parts.append(sign * (now - base) / max(abs(base), 1e-8))
        return 100.0 * sum(parts) / len(parts) if parts else float("nan")

    # --------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (plain data and tensors: ``weights_only``-loadable)."""
        return {
            "format": METRICS_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "weighting": self.weighting.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": get_rng_state(),
            "epoch": self.history["epochs"][-1]["epoch"] if self.history["epochs"] else -1,
            "global_step": self.global_step,
            "history": self.history,
            "config": self.config,
        }

    def _find_checkpoint(self) -> dict[str, Any] | None:
        last, prev = self.out_dir / "last.pt", self.out_dir / "prev.pt"
        for path in (last, prev):
            if not path.exists():
                continue
            try:
                ckpt = load_checkpoint(path)
            except CheckpointError as exc:
                if self.dist.is_main:
                    other = "prev.pt" if path == last and prev.exists() else "nothing (starting afresh)"
                    print(f"mtlkit: {path} is corrupt ({str(exc).split(': ', 1)[-1][:120]}); resuming from {other}",
                          file=sys.stderr)
                continue
            return ckpt
        return None

    def _load_state(self, ckpt: Mapping[str, Any]) -> None:
        problems = state_dict_mismatch(self.model.state_dict(), ckpt["model"])
        if problems:
            raise CheckpointMismatchError(
                f"the checkpoint in {self.out_dir} belongs to another model ({'; '.join(problems)}). "
                "Use another out_dir, or resume=False to start afresh (the old checkpoints will be overwritten).")
        self.model.load_state_dict(ckpt["model"])
        try:
            self.weighting.load_state_dict(ckpt["weighting"])
        except RuntimeError as exc:
            raise CheckpointMismatchError(f"the checkpoint in {self.out_dir} has another weighting state: {exc}; "
                                          "use another out_dir or resume=False") from None
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.scheduler is not None and ckpt.get("scheduler") is not None:
                self.scheduler.load_state_dict(ckpt["scheduler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointMismatchError(
                f"the optimiser/scheduler state in {self.out_dir} does not fit this run ({exc}); were param_groups "
                "or the optimiser changed? Use another out_dir or resume=False") from None
        old = ckpt.get("config") or {}
        changed = sorted(k for k in set(old) | set(self.config)
                         if k not in ("out_dir", "epochs") and old.get(k) != self.config.get(k))
        if changed and self.dist.is_main:
            print(f"mtlkit: resuming with a changed config ({', '.join(changed)}); the new values apply from now",
                  file=sys.stderr)
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.history = ckpt["history"]
        self.global_step = int(ckpt["global_step"])
        self.start_epoch = int(ckpt["epoch"]) + 1

    # ------------------------------------------------------------------------------------------------ fit
    def fit(self) -> dict[str, Any]:
        """Train (or resume), evaluate, checkpoint; return the ``metrics.json`` content.

        After ``fit()`` the model holds the weights of the best epoch (those the test metrics were computed with).
        """
        if not self.resume and self.dist.is_main:  # start afresh: no stale file of an older run may be resumed later
            for name in ("last.pt", "prev.pt", "best.pt", "metrics.json"):
                (self.out_dir / name).unlink(missing_ok=True)
        if self.dist.enabled:
            dist.barrier()
        if self.resume:
            ckpt = self._find_checkpoint()
            if ckpt is not None:
                self._load_state(ckpt)
                if self.dist.is_main and self.start_epoch < self.epochs:
                    print(f"mtlkit: resuming {self.out_dir} at epoch {self.start_epoch + 1}/{self.epochs}",
                          file=sys.stderr)
        if self.dist.enabled and not isinstance(self._train_model, nn.parallel.DistributedDataParallel):
            kwargs = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
            self._train_model = nn.parallel.DistributedDataParallel(
                self.model, find_unused_parameters=self.task_schedule is not None, **kwargs)
            for p in self.weighting.parameters():
                dist.broadcast(p.data, 0)
        for cb in self.callbacks:
            if hasattr(cb, "on_fit_start"):
                cb.on_fit_start(self)

        epoch_bar = None
        if self.progress and self.start_epoch < self.epochs:
            from tqdm.auto import tqdm

            epoch_bar = tqdm(total=self.epochs, initial=self.start_epoch, desc="training", dynamic_ncols=True)
        for epoch in range(self.start_epoch, self.epochs):
            for cb in self.callbacks:
                if hasattr(cb, "on_epoch_start"):
                    cb.on_epoch_start(self, epoch)
            t_epoch = time.perf_counter()
            lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
            train = self._train_epoch(epoch)
            weights = self.weighting.weights()  # in effect during this epoch (before DWA's update)
            t_eval = time.perf_counter()
            val, val_loss = self._evaluate(self.val_set, "val") if self.val_set is not None else (None, None)
            eval_seconds = time.perf_counter() - t_eval
            self.weighting.epoch_end({t: v for t, v in train["loss"].items() if t != "total"}
                                     if self.task_schedule is None else self._scheduled_epoch_losses(train))
            if self.scheduler is not None:
                self.scheduler.step()
            record: dict[str, Any] = {
                "epoch": epoch, "lr": lrs, "train_loss": train["loss"], "train": train["metrics"],
                "val": val, "val_loss": val_loss, "weights": weights, "score": None,
            }
            improved = True
            if val is not None:
                if self.history["reference"] is None:
                    self.history["reference"] = val
                record["score"] = self._score(val)
                best = self.history["best"]
                improved = best is None or (math.isfinite(record["score"]) and
                                            (not math.isfinite(best["score"]) or record["score"] > best["score"]))
            if improved:
                self.history["best"] = {"epoch": epoch, "score": record["score"]}
            self.history["epochs"].append(record)
            tim = self.history["timings"]
            tim["epoch_seconds"].append(time.perf_counter() - t_epoch)
            tim["train_seconds"].append(train["seconds"])
            tim["eval_seconds"].append(eval_seconds)
            tim["train_images_per_second"].append(train["images"] / max(train["seconds"], 1e-9))
            if self.dist.is_main:
                if improved:
                    save_checkpoint({"model": self.model.state_dict(), "epoch": epoch, "score": record["score"],
                                     "config": self.config}, self.out_dir / "best.pt")
                if self.keep_last or epoch < self.epochs - 1:
                    rotate_and_save(self.state_dict(), self.out_dir)
                atomic_write_json(self.out_dir / "metrics.json", self._metrics(finished=False))
            if self.dist.enabled:
                dist.barrier()
            if epoch_bar is not None:
                post = {"loss": f"{train['loss']['total']:.4f}"}
                if record["score"] is not None:
                    post["val_score"] = f"{record['score']:+.2f}"
                epoch_bar.set_postfix(post)
                epoch_bar.update(1)
            for cb in self.callbacks:
                if hasattr(cb, "on_epoch_end"):
                    cb.on_epoch_end(self, epoch, record)
                elif callable(cb):
                    cb(self, epoch, record)
        if epoch_bar is not None:
            epoch_bar.close()

        # The test set is evaluated once, with the best epoch's weights (selected on validation).
        best_path = self.out_dir / "best.pt"
        if self.dist.enabled:
            dist.barrier()
        if best_path.exists():
            self.model.load_state_dict(load_checkpoint(best_path, map_location=self.device)["model"])
        test = None
        if self.test_set is not None:
            test = self._evaluate(self.test_set, "test")[0]
        metrics = self._metrics(finished=True, test=test)
        if self.dist.is_main:
            atomic_write_json(self.out_dir / "metrics.json", metrics)
            if not self.keep_last:  # finished: nothing will resume from these any more
                for name in ("last.pt", "prev.pt"):
                    (self.out_dir / name).unlink(missing_ok=True)
        if self.dist.enabled:  # nobody leaves (or tears the group down) while another rank still communicates
            dist.barrier()
        for cb in self.callbacks:
            if hasattr(cb, "on_fit_end"):
                cb.on_fit_end(self, metrics)
        return metrics

    def _scheduled_epoch_losses(self, train: Mapping[str, Any]) -> dict[str, float]:
        # With task switching some tasks were not trained this epoch; carry a finite value for the weighting.
        return {t: (1.0 if v is None else v) for t, v in train["loss"].items() if t != "total"}

    def _metrics(self, finished: bool, test: Mapping[str, Any] | None = None) -> dict[str, Any]:
        import mtlkit
        from mtlkit.models import count_parameters

        h = self.history
        return {
            "format": METRICS_FORMAT,
            "finished": finished,
            "config": self.config,
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "numpy": np.__version__, "mtlkit": getattr(mtlkit, "__version__", "unknown")},
            "parameters": count_parameters(self.model),
            "data": {split: (None if ds is None else {"name": getattr(ds, "name", None), "size": len(ds),
                                                       "split": getattr(ds, "split", split)})
                     for split, ds in (("train", self.train_set), ("val", self.val_set), ("test", self.test_set))},
            "tasks": {t: {"kind": getattr(task, "kind", None), "delta_metric": task.delta_metric,
                          "higher_is_better": bool(task.higher_is_better)} for t, task in self.tasks.items()},
            "epochs": h["epochs"],
            "step_weights": {"tasks": list(self.task_names), "values": h["step_weights"]},
            "best": None if h["best"] is None else {
                **h["best"], "selected_on": "val" if self.val_set is not None else "last epoch (no val set)",
                "criterion": "mean direction-aware relative change (%) of each task's delta metric vs epoch 0"},
            "test": test,
            "timings": h["timings"],
        }

    # ---------------------------------------------------------------------------------------- convenience
    @classmethod
    def single_task(cls, dataset: str, task: str, model: str = "tiny", *, preset: str = "smoke",
                    root: str | os.PathLike | None = None, seed: int = 0,
                    model_options: Mapping[str, Any] | None = None, data_options: Mapping[str, Any] | None = None,
                    out_dir: str | os.PathLike | None = None, **trainer_kwargs: Any) -> "Trainer":
        """A Trainer for the single-task baseline of ``task`` on ``dataset`` (train/val/test splits)."""
        from mtlkit.data import get_dataset
        from mtlkit.models import build
        from mtlkit.tasks import make_task

        data_options = dict(data_options or {})
        splits = {s: get_dataset(dataset, s, preset=preset, root=root, seed=seed, **data_options)
                  for s in ("train", "val", "test")}
        train = splits["train"]
        if task not in train.tasks:
            raise ValueError(f"task {task!r} has no labels in dataset {dataset}; it labels {list(train.tasks)}")
        spec = make_task(task, **dict(train.task_info.get(task, {})))
        seed_everything(seed)
        net = build(model, {task: spec.out_channels}, **dict(model_options or {}))
        out_dir = out_dir or Path("runs") / f"single-{dataset}-{task}-{model}-{preset}-s{seed}"
        config = {"model": model, "model_options": dict(model_options or {}), **trainer_kwargs.pop("config", {})}
        return cls(net, train, splits["val"], splits["test"], tasks={task: spec}, out_dir=out_dir, seed=seed,
                   config=config, **trainer_kwargs)


def train_single_task(dataset: str, task: str, model: str = "tiny", **kwargs: Any) -> dict[str, Any]:
    """Train the single-task baseline of ``task`` on ``dataset``; returns its metrics.json content.

    ``kwargs``: :meth:`Trainer.single_task`'s options (preset, seed, model_options, ...) and Trainer arguments.
    """
    return Trainer.single_task(dataset, task, model, **kwargs).fit()


# ------------------------------------------------------------------------------------------------ the CLI
def _key_values(items: Sequence[str] | None, what: str) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{what} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mtlkit train``."""
    a = parser.add_argument
    a("--data", default="synthetic-nyu", help="dataset name (default: synthetic-nyu)")
    a("--preset", default="smoke", help="unit | smoke | lesson | paper (default: smoke)")
    a("--root", default=None, help="dataset root for real datasets")
    a("--data-opt", action="append", metavar="KEY=VALUE", help="dataset option, e.g. classes=7 (repeatable)")
    a("--model", default="tiny", help="model name of mtlkit.models (default: tiny)")
    a("--model-opt", action="append", metavar="KEY=VALUE", help="model option, e.g. width=8 (repeatable)")
    a("--tasks", default=None, help="comma-separated tasks (default: all the dataset's tasks)")
    a("--epochs", type=int, default=10)
    a("--batch-size", type=int, default=8)
    a("--lr", type=float, default=1e-3)
    a("--optimizer", default="adam", choices=OPTIMIZERS)
    a("--weight-decay", type=float, default=0.0)
    a("--momentum", type=float, default=0.9)
    a("--scheduler", default=None, choices=[s for s in SCHEDULERS if s])
    a("--step-size", type=int, default=None, help="epochs per step of the step scheduler")
    a("--gamma", type=float, default=0.1)
    a("--power", type=float, default=0.9)
    a("--grad-clip", type=float, default=None)
    a("--weighting", default="equal", help="equal | static | uncertainty | dwa | gradnorm | pcgrad")
    a("--weighting-opt", action="append", metavar="KEY=VALUE",
      help="weighting option, e.g. 'weights={semseg: 0.5, depth: 0.5}' or alpha=1.5 (repeatable)")
    a("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    a("--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision (default: on for CUDA)")
    a("--seed", type=int, default=0)
    a("--num-workers", type=int, default=0)
    a("--out", default=None, help="output folder (default: runs/<data>-<model>-<preset>-s<seed>)")
    a("--resume", action=argparse.BooleanOptionalAction, default=True, help="continue from OUT/last.pt")
    a("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars (default: if a tty)")


def run_from_args(args: argparse.Namespace) -> int:
    """Build data, model and Trainer from parsed ``mtlkit train`` arguments; train; print a summary."""
    from mtlkit.data import get_dataset
    from mtlkit.models import build
    from mtlkit.tasks import make_task

    data_opts = _key_values(args.data_opt, "--data-opt")
    splits = {s: get_dataset(args.data, s, preset=args.preset, root=args.root, seed=args.seed, **data_opts)
              for s in ("train", "val", "test")}
    train = splits["train"]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else list(train.tasks)
    missing = [t for t in tasks if t not in train.tasks]
    if missing:
        raise ValueError(f"--tasks {','.join(missing)}: not labelled by {args.data}; it labels {','.join(train.tasks)}")
    specs = {t: make_task(t, **dict(train.task_info.get(t, {}))) for t in tasks}
    seed_everything(args.seed)
    model_opts = _key_values(args.model_opt, "--model-opt")
    model = build(args.model, {t: s.out_channels for t, s in specs.items()}, **model_opts)
    out = args.out or os.path.join("runs", f"{args.data}-{args.model}-{args.preset}-s{args.seed}")
    trainer = Trainer(
        model, train, splits["val"], splits["test"], tasks=specs, out_dir=out, epochs=args.epochs,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        momentum=args.momentum, scheduler=args.scheduler, step_size=args.step_size, gamma=args.gamma,
        power=args.power, grad_clip=args.grad_clip, weighting=args.weighting,
        weighting_options=_key_values(args.weighting_opt, "--weighting-opt"), device=args.device, amp=args.amp,
        seed=args.seed, num_workers=args.num_workers, resume=args.resume, progress=args.progress,
        config={"model": args.model, "model_options": model_opts, "data_options": data_opts},
    )
    try:
        metrics = trainer.fit()
    finally:
        if trainer.dist.initialised_here and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    if trainer.dist.is_main:
        best = metrics["best"] or {}
        print(f"best epoch {best.get('epoch', -1) + 1}/{args.epochs} (selected on {best.get('selected_on')}); "
              f"metrics: {Path(out) / 'metrics.json'}")
        for task, values in (metrics["test"] or {}).items():
            shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
            print(f"  test {task}: {shown}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mtlkit.train ...`` (the same options as ``mtlkit train``)."""
    parser = argparse.ArgumentParser(prog="mtlkit train", description="train a model through the mtlkit Trainer")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
