"""The Trainer: ``train_step`` (one optimisation step) and the loop around it: evaluation, best-epoch selection,
checkpoint/resume, progress, ``metrics.json``, AMP and DDP.

>>> from mtlkit.data import get_dataset
>>> from mtlkit.models import build
>>> from mtlkit.train import TrainConfig, Trainer, seed_everything
>>> train, val = (get_dataset("synthetic-nyu", s, preset="unit") for s in ("train", "val"))
>>> seed_everything(0)
>>> model = build("tiny", {"semseg": 13, "depth": 1, "normals": 3}, width=8)
>>> metrics = Trainer(model, train, val, config=TrainConfig(out_dir="runs/demo", epochs=2)).fit()  # doctest: +SKIP

A run leaves ``last.pt`` / ``prev.pt`` (the last two epochs' full state), ``best.pt`` (the best epoch on the
VALIDATION set; the test set is evaluated once, at the end, with it) and ``metrics.json`` in ``out_dir``; the same
seed gives the same ``metrics.json`` on the CPU, resumed or not (docs/contracts.md, "Trainer").
Options: :mod:`mtlkit.train_config`; DDP: :mod:`mtlkit.ddp`; CLI: :mod:`mtlkit.train_cli`.
"""
from __future__ import annotations

import contextlib
import itertools
import random
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from mtlkit.atomic import atomic_write_json
from mtlkit.checkpoint import (CheckpointMismatchError, find_checkpoint, load_checkpoint, restore_trainer_state,
                               rotate_and_save, save_checkpoint, trainer_state)
from mtlkit.ddp import resolve_device, setup_distributed, unwrap
from mtlkit.optim import build_optimizer, build_scheduler
from mtlkit.progress import Progress, progress_mode
from mtlkit.run_record import capped_record, empty_history, epoch_score, improves, metrics_document, rounded, run_config
from mtlkit.train_setup import (check_model_outputs, eval_steps, float_preds, make_loader, make_task_weighting,
                                resolve_tasks, to_device)
from mtlkit.train_config import OPTIMIZERS, SCHEDULERS, TrainConfig, TrainConfigError
from mtlkit.weighting import Weighting

__all__ = ["Trainer", "TrainConfig", "TrainConfigError", "train_step", "NonFiniteLossError", "CheckpointMismatchError",
           "Callback", "seed_everything", "OPTIMIZERS", "SCHEDULERS"]


class NonFiniteLossError(RuntimeError):
    """A task's loss became NaN or infinite; the last good checkpoint is left untouched."""


class Callback:
    """Hooks the Trainer calls; override the ones you need. A plain callable is used as ``on_epoch_end``."""

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def on_step_end(self, trainer: Trainer, step: int, info: dict[str, Any]) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        """After the epoch's checkpoint and metrics.json were written."""

    def on_fit_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices). Call it before building a model to make its init repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_step(model: nn.Module, batch: Mapping[str, Any], tasks: Mapping[str, Any], weighting: Weighting,
               optimizer: torch.optim.Optimizer, *, scaler: torch.amp.GradScaler | None = None,
               grad_clip: float | None = None, shared: Sequence[nn.Parameter] = (), task: str | None = None,
               losses_fn: Callable | None = None, check: Callable | None = None, sync: Callable | None = None
               ) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor]:
    """One optimisation step on one batch; returns (predictions, per-task losses, weighted total loss).

    model: images [B, 3, H, W] -> {task: prediction} (dense [B, C_t, H, W], image-level [B, C_t]); a
        task-conditioned model is called ``model(images, task=task)``.
    batch: {"image": [B, 3, H, W], each task's targets}, on the model's device.
    tasks: {name: Task}; ``Task.loss(prediction, batch)`` is a scalar, computed in float32.
    weighting: the task losses -> one scalar; a gradient method (``weighting.owns_backward``: GradNorm, PCGrad)
        runs the backward pass itself, given the ``shared`` parameters.
    scaler: a GradScaler: mixed precision while it is enabled. grad_clip: max global gradient norm.
    losses_fn, check, sync: the Trainer's hooks (deep-supervision losses; the NaN stop, before backward; DDP's
        gradient averaging, after it). A plain loop leaves them out.
    """
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(batch["image"].device.type, enabled=scaler is not None and scaler.is_enabled()):
        preds = model(batch["image"]) if task is None else model(batch["image"], task=task)
    preds = preds if isinstance(preds, Mapping) else {task: preds}
    if losses_fn is not None:
        losses = losses_fn(preds, batch)
    else:
        losses = {name: t.loss(float_preds(preds[name]), batch) for name, t in tasks.items()}
    if check is not None:
        check(losses)
    if weighting.owns_backward:
        total = weighting(losses).detach()
        weighting.backward(losses, list(shared))
    else:
        total = weighting(losses)
        (total if scaler is None else scaler.scale(total)).backward()
    if sync is not None:
        sync()
    if grad_clip:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    return preds, losses, total.detach()


class Trainer:
    """Train a multi-task model on a dataset of the kit, evaluate it, checkpoint and log everything.

    ``Trainer(model, train_set, val_set, test_set, config=TrainConfig(...))``, or the same options as keywords
    (``Trainer(model, train_set, epochs=3, lr=1e-3)``); see :class:`~mtlkit.train_config.TrainConfig`.
    ``train_set`` gives ``task_info``; ``val_set`` selects the best epoch; ``test_set`` is evaluated once, at the
    end, with the best epoch's weights. (``config`` given as a dict is the older spelling of ``extra=``.)
    """

    def __init__(self, model: nn.Module, train_set: Dataset, val_set: Dataset | None = None,
                 test_set: Dataset | None = None, config: TrainConfig | Mapping[str, Any] | None = None,
                 **options: Any) -> None:
        if config is None or isinstance(config, Mapping):
            if config:
                options["extra"] = {**dict(config), **dict(options.get("extra") or {})}
            config = TrainConfig.from_options(**options)
        elif not isinstance(config, TrainConfig):
            raise TrainConfigError(f"config must be a TrainConfig, got {type(config).__name__}")
        elif options:
            config = TrainConfig.from_options(config, **options)
        self.config = c = config
        self.train_set, self.val_set, self.test_set = train_set, val_set, test_set
        self.out_dir, self.callbacks = Path(c.out_dir), list(c.callbacks)
        seed_everything(c.seed)
        self.dist = setup_distributed(str(c.device))
        self.device = resolve_device(c.device, self.dist)
        cuda = self.device.type == "cuda"
        self.model = unwrap(model).to(self.device)
        self.tasks = resolve_tasks(train_set, self.model, c.tasks)
        self.task_names: tuple[str, ...] = tuple(self.tasks)
        self.weighting = make_task_weighting(c.weighting, c.weighting_options, self.task_names).to(self.device)
        if getattr(self.weighting, "representation", None):  # MGDA-UB & co. read a module's output: hook this model
            self.weighting.bind(self.model)
        self.amp = bool(cuda if c.amp is None else c.amp) and cuda and not self.weighting.owns_backward
        self.channels_last = bool(cuda if c.channels_last is None else c.channels_last) and cuda
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.progress_mode = progress_mode(c.progress) if self.dist.is_main else "off"
        self.optimizer = build_optimizer(self.model, self.weighting.parameters(), c.optimizer, c.lr,
                                         c.weight_decay, c.momentum, c.param_groups)
        step_size = c.step_size or max(1, c.epochs // 2)
        self.scheduler = build_scheduler(self.optimizer, c.scheduler, c.epochs, step_size, c.gamma, c.power)
        self.scaler = torch.amp.GradScaler("cuda" if cuda else "cpu", enabled=self.amp)
        self._train_model: nn.Module = self.model  # the DDP wrapper during fit() under torchrun
        self.run_config = run_config(self, step_size)  # what metrics.json records as "config"
        self.history: dict[str, Any] = empty_history()
        self.global_step = self.start_epoch = 0
        self.capped: dict[str, Any] | None = None  # set by fit() for max_steps runs
        self._progress = Progress("off", "", c.epochs, 0)
        check_model_outputs(self.model, train_set, self.tasks, self._forward, self.device,
                            conditioned=c.task_schedule is not None)

    # ------------------------------------------------------------------------------------------- pieces
    def _forward(self, model: nn.Module, images: torch.Tensor, task: str | None = None) -> dict[str, Any]:
        """``model(images)`` or, for task-conditioned models, ``model(images, task=task)`` as a dict."""
        if self.config.task_schedule is None:
            out = model(images)
            if not isinstance(out, Mapping):
                raise ValueError(f"{type(unwrap(model)).__name__} returned {type(out).__name__}; models must return "
                                 "a dict {task: prediction}")
            return dict(out)
        out = model(images, task=task)
        return dict(out) if isinstance(out, Mapping) else {task: out}

    def task_losses(self, preds: Mapping[str, Any], batch: Mapping[str, Any],
                    tasks: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Per-task losses (plus ``aux_weight`` x deep supervision on ``preds["aux"][stage][task]``) in float32."""
        preds = float_preds(preds)
        stages = [s for s in (preds.get("aux") or {}).values() if isinstance(s, Mapping)]
        losses = {}
        for name in (tasks if tasks is not None else self.task_names):
            task = self.tasks[name]
            loss = task.loss(preds[name], batch)
            for stage in stages:
                if name in stage:
                    loss = loss + self.config.aux_weight * task.loss(stage[name], batch)
            losses[name] = loss
        return losses

    def _active_tasks(self, epoch: int, step: int) -> tuple[str, ...]:
        schedule, names = self.config.task_schedule, self.task_names
        if schedule is None:
            return names
        return (names[(epoch if schedule == "epoch" else step) % len(names)],)

    def _shared_parameters(self) -> list[nn.Parameter]:
        """``model.shared_parameters()`` if it has one, else every parameter whose dotted name has no component
        equal to a task name (``heads.semseg.weight`` is task-specific)."""
        if hasattr(self.model, "shared_parameters"):
            return [p for p in self.model.shared_parameters() if p.requires_grad]
        names = set(self.task_names)
        return [p for n, p in self.model.named_parameters() if p.requires_grad and not names.intersection(n.split("."))]

    def _loader(self, dataset: Dataset, epoch: int | None = None) -> DataLoader:
        return make_loader(dataset, self.config, self.dist, self.device, epoch)

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            if hasattr(cb, hook):
                getattr(cb, hook)(self, *args)
            elif hook == "on_epoch_end" and callable(cb):
                cb(self, *args)

    # ------------------------------------------------------------------------------------------- training
    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        c, d = self.config, self.dist
        model, loader = self._train_model, self._loader(self.train_set, epoch)
        model.train()
        steps = len(loader) if c.max_steps is None else min(len(loader), c.max_steps)
        meters = {t: self.tasks[t].meter() for t in self.task_names} if c.train_metrics else {}
        sums = torch.zeros(len(self.task_names) + 2, dtype=torch.float64)  # task losses, total, images
        counts = torch.zeros(len(self.task_names), dtype=torch.float64)    # images each task was trained on
        gradient_method = self.weighting.owns_backward
        shared = self._shared_parameters() if gradient_method else []
        no_sync = model.no_sync if (d.enabled and gradient_method) else contextlib.nullcontext
        # DDP averages the model's gradients, except under no_sync (gradient methods): average what it does not
        unsynced = [*self.weighting.parameters(), *(self.model.parameters() if gradient_method else ())]
        sync = partial(d.average_gradients_, [p for p in unsynced if p.requires_grad]) if d.enabled else None
        bar = self._progress.steps(steps, f"epoch {epoch + 1}/{c.epochs}")
        t0 = time.perf_counter()
        for step, batch in enumerate(itertools.islice(loader, steps)):
            active = self._active_tasks(epoch, self.global_step)
            batch = to_device(batch, self.device)
            if self.channels_last:
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            with no_sync():
                preds, losses, total = train_step(
                    model, batch, {t: self.tasks[t] for t in active}, self.weighting, self.optimizer,
                    scaler=self.scaler, grad_clip=c.grad_clip, shared=shared,
                    task=active[0] if c.task_schedule else None, losses_fn=partial(self.task_losses, tasks=active),
                    check=partial(self._check_finite, epoch=epoch, step=step), sync=sync)
            if gradient_method and d.enabled:  # the method's own state (GradNorm's weights): rank 0's
                d.broadcast_(self.weighting.buffers())
            n, values, total_value = batch["image"].shape[0], self._step_losses, float(total)
            for i, t in enumerate(self.task_names):
                if t in losses:
                    sums[i] += values[t] * n
                    counts[i] += n
            sums[-2:] += torch.tensor([total_value * n, n], dtype=torch.float64)
            weights = self.weighting.weights()
            self.history["step_weights"].append(rounded([weights[t] for t in self.task_names]))
            if meters:
                with torch.no_grad():
                    fp = float_preds(preds)
                    for t in active:
                        meters[t].update(fp[t].detach(), self.tasks[t].target(batch))
            self.global_step += 1
            info = {"epoch": epoch, "loss": total_value, "losses": dict(values)}
            self._call("on_step_end", self.global_step, info)
            if bar is not None:  # no forced redraw per step: update() redraws at most every mininterval
                bar.set_postfix(loss=f"{total_value:.4f}", refresh=False)
                bar.update(1)
        self._progress.close(bar)
        seconds = time.perf_counter() - t0
        both = d.all_reduce(torch.cat([sums, counts]))  # training losses: the mean over every rank's images
        sums, counts = both[: len(sums)], both[len(sums):]
        task_loss = {t: (float(sums[i] / counts[i]) if counts[i] > 0 else None)  # None: not trained this epoch
                     for i, t in enumerate(self.task_names)}
        return {"loss": {**task_loss, "total": float(sums[-2] / max(float(sums[-1]), 1.0))},
                "metrics": {t: m.compute() for t, m in meters.items()}, "images": int(sums[-1]),
                "seconds": seconds, "steps": steps}

    def _check_finite(self, losses: Mapping[str, torch.Tensor], epoch: int, step: int) -> None:
        """Raise :class:`NonFiniteLossError` if a task's loss is NaN/inf; keep the losses as floats.

        The losses come to the host in ONE transfer (float64 holds every float32/float16 value exactly, so the
        floats equal ``float(loss)``). Under DDP every rank stops together (else the others wait in backward)."""
        host = torch.stack([v.detach().reshape(()).to(torch.float64) for v in losses.values()]).cpu()
        self._step_losses = dict(zip(losses, host.tolist()))
        bad = self.dist.all_reduce((~torch.isfinite(host)).to(torch.float32), op="max")
        if bool(bad.any()):
            names = [t for t, b in zip(losses, bad.tolist()) if b]
            values = {t: float(losses[t].detach()) for t in names}
            good, eps = self.out_dir / "last.pt", self.history["epochs"]
            kept = (f"the last good checkpoint {good} (epoch {eps[-1]['epoch'] if eps else None}) is untouched"
                    if good.exists() else "no checkpoint had been written yet")
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch} step {step} (global step {self.global_step}) for task(s) "
                f"{', '.join(names)}: {values}; training stopped and {kept}. Lower the learning rate, set "
                "grad_clip (--grad-clip), or check that task's data and predictions.")

    # ----------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def _evaluate(self, dataset: Dataset, desc: str = "eval") -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        """(metrics {task: {metric: value}}, mean losses {task: value}) over ``dataset`` (exact under DDP)."""
        c, d, model = self.config, self.dist, self.model
        was_training = model.training
        model.eval()
        d.broadcast_(model.buffers())  # BN statistics may differ slightly between ranks: evaluate rank 0's model
        meters = {t: self.tasks[t].meter() for t in self.task_names}
        sums = torch.zeros(len(self.task_names) + 1, dtype=torch.float64)
        steps = eval_steps(dataset, d.world_size, c.batch_size, c.max_steps)
        it = iter(self._loader(dataset))
        bar = self._progress.steps(steps, desc)
        for _ in range(steps):
            batch, local = next(it, None), None
            if batch is not None:
                batch = to_device(batch, self.device)
                images = batch["image"]
                if self.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.device.type, enabled=self.amp):
                    if c.task_schedule is None:
                        preds = self._forward(model, images)
                    else:
                        preds = {t: self._forward(model, images, t)[t] for t in self.task_names}
                preds = float_preds(preds)
                losses = self.task_losses(preds, batch)
                n = images.shape[0]
                sums += torch.tensor([float(losses[t]) * n for t in self.task_names] + [n], dtype=torch.float64)
                local = {t: (preds[t], self.tasks[t].target(batch)) for t in self.task_names}
            for item in d.gather_to_main(local) or []:  # rank 0's meters see every rank's predictions
                for t, (p, y) in (item or {}).items():
                    meters[t].update(p.to(self.device), y.to(self.device))
            if bar is not None:
                bar.update(1)
        self._progress.close(bar)
        model.train(was_training)
        sums = d.all_reduce(sums)
        metrics = d.from_main({t: m.compute() for t, m in meters.items()} if d.is_main else None)
        return metrics, {t: float(sums[i] / max(float(sums[-1]), 1.0)) for i, t in enumerate(self.task_names)}

    def __getattr__(self, name: str) -> Any:
        """The options read as attributes (``trainer.epochs``, ``trainer.task_schedule``), as callbacks did before
        :class:`TrainConfig` held them."""
        config = self.__dict__.get("config")
        if config is not None and name in TrainConfig.__dataclass_fields__:
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def evaluate(self, dataset: Dataset) -> dict[str, dict[str, float]]:
        """Metrics of the current model on ``dataset``: {task: {metric: value}}."""
        return self._evaluate(dataset)[0]

    # --------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (plain data and tensors: ``weights_only``-loadable)."""
        return trainer_state(self)

    # ------------------------------------------------------------------------------------------------ fit
    def fit(self) -> dict[str, Any]:
        """Train (or resume), evaluate, checkpoint; return the ``metrics.json`` content.

        After ``fit()`` the model holds the weights of the best epoch (those the test metrics were computed with).
        """
        c, d = self.config, self.dist
        if not c.resume and d.is_main:  # start afresh: no stale file of an older run may be resumed later
            for name in ("last.pt", "prev.pt", "best.pt", "metrics.json"):
                (self.out_dir / name).unlink(missing_ok=True)
        d.barrier()
        ckpt = find_checkpoint(self.out_dir, report=d.is_main) if c.resume else None
        if ckpt is not None:
            restore_trainer_state(self, ckpt)
            if d.is_main:
                print(f"mtlkit: resuming {self.out_dir} at epoch {self.start_epoch + 1}/{c.epochs}"
                      if self.start_epoch < c.epochs else f"mtlkit: {self.out_dir} already finished its {c.epochs} "
                      "epoch(s): evaluating its best epoch again (resume=False / --no-resume trains afresh)",
                      file=sys.stderr)
        if d.enabled and self._train_model is self.model:
            self._train_model = d.wrap(self.model, self.device, find_unused_parameters=c.task_schedule is not None)
            d.broadcast_(self.weighting.parameters())
        full = {"train": len(self._loader(self.train_set, 0)), **{s: eval_steps(ds, d.world_size, c.batch_size)
                for s, ds in (("val", self.val_set), ("test", self.test_set)) if ds is not None}}
        self.capped = capped_record(c.max_steps, full)
        self._call("on_fit_start")
        self._progress = Progress(self.progress_mode, self.out_dir.name, c.epochs, self.start_epoch)
        try:
            for epoch in range(self.start_epoch, c.epochs):
                self._epoch(epoch)
        finally:  # also on Ctrl-C: what is printed next starts on its own line
            self._progress.close_all()
        # The test set is evaluated once, with the best epoch's weights (selected on validation).
        d.barrier()
        if (self.out_dir / "best.pt").exists():
            self.model.load_state_dict(load_checkpoint(self.out_dir / "best.pt", map_location=self.device)["model"])
        test = self._evaluate(self.test_set, "test")[0] if self.test_set is not None else None
        metrics = metrics_document(self, finished=True, test=test)
        if d.is_main:
            atomic_write_json(self.out_dir / "metrics.json", metrics)
            if not c.keep_last:  # finished: nothing will resume from these any more
                for name in ("last.pt", "prev.pt"):
                    (self.out_dir / name).unlink(missing_ok=True)
        d.barrier()  # nobody leaves (or tears the group down) while another rank still communicates
        self._call("on_fit_end", metrics)
        return metrics

    def _epoch(self, epoch: int) -> None:
        """One epoch: train, validate, score, let the weighting and scheduler move on, save, report."""
        c, h = self.config, self.history
        self._call("on_epoch_start", epoch)
        t_epoch = time.perf_counter()
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
        train = self._train_epoch(epoch)
        weights = self.weighting.weights()  # in effect during this epoch (before DWA's update)
        t_eval = time.perf_counter()
        val, val_loss = self._evaluate(self.val_set, "val") if self.val_set is not None else (None, None)
        eval_seconds = time.perf_counter() - t_eval
        # with task switching some tasks were not trained this epoch: a finite stand-in for the weighting
        self.weighting.epoch_end({t: 1.0 if v is None else v for t, v in train["loss"].items() if t != "total"})
        if self.scheduler is not None:
            self.scheduler.step()
        record: dict[str, Any] = {"epoch": epoch, "lr": lrs, "train_loss": train["loss"], "train": train["metrics"],
                                  "val": val, "val_loss": val_loss, "weights": weights, "score": None}
        if val is not None:
            if h["reference"] is None:
                h["reference"] = val
            record["score"] = epoch_score(val, h["reference"], self.tasks)
        improved = improves(record["score"], h["best"])
        if improved:
            h["best"] = {"epoch": epoch, "score": record["score"]}
        h["epochs"].append(record)
        tim = h["timings"]
        for key, value in (("epoch_seconds", time.perf_counter() - t_epoch), ("train_seconds", train["seconds"]),
                           ("eval_seconds", eval_seconds), ("train_steps", train["steps"]),
                           ("train_images_per_second", train["images"] / max(train["seconds"], 1e-9))):
            tim.setdefault(key, []).append(value)
        if self.dist.is_main:
            if improved:
                save_checkpoint({"model": self.model.state_dict(), "epoch": epoch, "score": record["score"],
                                 "config": self.run_config}, self.out_dir / "best.pt")
            if c.keep_last or epoch < c.epochs - 1:
                rotate_and_save(self.state_dict(), self.out_dir)
            atomic_write_json(self.out_dir / "metrics.json", metrics_document(self, finished=False))
        self.dist.barrier()
        self._progress.epoch_end(epoch, train["loss"]["total"], record["score"])
        self._call("on_epoch_end", epoch, record)
