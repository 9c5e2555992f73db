"""What the Trainer settles before training: which tasks to train, whether the model's outputs fit them (one
batch through the model, so that a mismatch fails in a second with the fix, not after an epoch in a loss), and
its data loaders (seeded per epoch: reproducible and resumable, sharded under DDP)."""
from __future__ import annotations

import math
import random
from typing import Any
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

__all__ = ["resolve_tasks", "make_task_weighting", "check_model_outputs", "make_loader", "eval_steps", "to_device",
           "float_preds"]


def resolve_tasks(dataset: Dataset, model: nn.Module, tasks: Sequence[str] | Mapping[str, Any] | str | None
                  ) -> dict[str, Any]:
    """``{name: Task}``: the given tasks (names are built with the dataset's task info), or by default the
    dataset's labelled tasks that the model predicts."""
    from mtlkit.tasks import make_task

    ds_name = getattr(dataset, "name", type(dataset).__name__)
    info: Mapping[str, Mapping[str, Any]] = getattr(dataset, "task_info", None) or {}
    labelled = tuple(getattr(dataset, "tasks", tuple(info)))
    model_tasks = tuple(getattr(model, "tasks", ()))
    if tasks is None:
        tasks = [t for t in labelled if not model_tasks or t in model_tasks]
        if not tasks:
            raise ValueError(f"the model predicts {list(model_tasks)} but dataset {ds_name} labels {list(labelled)}: "
                             "no task in common; pass tasks= (--tasks) or build the model for the dataset's tasks")
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    given = dict(tasks) if isinstance(tasks, Mapping) else {str(t): None for t in tasks}
    if not given:
        raise ValueError("no tasks to train; pass tasks=['semseg', ...] (--tasks semseg,...) or leave tasks=None")
    missing = [t for t in given if t not in labelled]
    if missing:
        raise ValueError(f"task(s) {missing} have no labels in dataset {ds_name}; it labels {list(labelled)}")
    return {name: task if task is not None else make_task(name, **dict(info.get(name, {})))
            for name, task in given.items()}


def check_model_outputs(model: nn.Module, dataset: Dataset, tasks: Mapping[str, Any],
                        forward: Callable[[nn.Module, torch.Tensor, str | None], dict[str, Any]],
                        device: torch.device, conditioned: bool) -> None:
    """Two training images through ``model`` (eval mode, no_grad): every task needs an output of its shape
    (dense: [B, C, H, W]; image-level: [B, C])."""
    from mtlkit.data import collate

    n = min(2, len(dataset))
    if n == 0:
        raise ValueError(f"the training set {getattr(dataset, 'name', '')} is empty")
    images = collate([dataset[i] for i in range(n)])["image"].to(device)
    b, _, h, w = images.shape
    was_training = model.training
    model.eval()
    problems = []
    try:
        with torch.no_grad():
            if conditioned:  # a task-conditioned model answers one task per call
                outs = {t: forward(model, images, t) for t in tasks}
            else:
                out = forward(model, images, None)
                outs = {t: out for t in tasks}
        for name, out in outs.items():
            if name not in out:
                problems.append(f"no output for task {name!r} (model outputs {sorted(out)})")
                continue
            pred = out[name]
            got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
            channels = int(tasks[name].out_channels)
            want = (b, channels, h, w) if getattr(tasks[name], "kind", "dense") == "dense" else (b, channels)
            if got != want:
                problems.append(f"{name}: model gives {got}, the task needs {want}")
    finally:
        model.train(was_training)
    if problems:
        ds = getattr(dataset, "name", "the dataset")
        channels = {t: task.out_channels for t, task in tasks.items()}
        raise ValueError(f"model {type(model).__name__} does not match the tasks of {ds}: " + "; ".join(problems)
                         + f". Build the model with the dataset's task channels, e.g. build(name, {channels})")


def make_loader(dataset: Dataset, config: Any, dist: Any, device: torch.device, epoch: int | None = None
                ) -> DataLoader:
    """Training (``epoch`` given): shuffled by ``seed + epoch``, sharded over ranks. Evaluation: in order, a
    disjoint shard per rank without padding (so that the metrics stay exact)."""
    from mtlkit.data import collate

    sampler = None
    if epoch is not None:
        sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                     seed=config.seed)
        sampler.set_epoch(epoch)  # order = randperm(seed + epoch): reproducible and resumable
    elif dist.enabled:
        dataset = Subset(dataset, list(range(dist.rank, len(dataset), dist.world_size)))
    seed = config.seed * 1_000_003 + epoch if epoch is not None else config.seed
    return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, shuffle=False, collate_fn=collate,
                      num_workers=config.num_workers, worker_init_fn=_seed_worker, pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(seed), drop_last=epoch is not None and config.drop_last)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32  # torch seeds each worker from the loader's generator; numpy, python follow
    np.random.seed(seed)
    random.seed(seed)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors (and lists of tensors) on ``device``."""
    def move(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.to(device, non_blocking=True)
        if isinstance(v, (list, tuple)) and v and all(isinstance(x, torch.Tensor) for x in v):
            return [x.to(device, non_blocking=True) for x in v]
        return v
    return {k: move(v) for k, v in batch.items()}


def make_task_weighting(weighting: Any, options: Mapping[str, Any] | None, tasks: Sequence[str]) -> Any:
    """A :class:`~mtlkit.weighting.Weighting` for ``tasks``: built from its name, or checked when given built."""
    from mtlkit.weighting import Weighting, make_weighting

    if not isinstance(weighting, Weighting):
        return make_weighting(str(weighting), tuple(tasks), **dict(options or {}))
    unknown = [t for t in tasks if t not in weighting.tasks]
    if unknown:
        raise ValueError(f"the weighting {type(weighting).__name__} has no weight for tasks {unknown}; "
                         f"it knows {list(weighting.tasks)}")
    return weighting


def eval_steps(dataset: Dataset, world_size: int, batch_size: int, max_steps: int | None = None) -> int:
    """Batches per evaluation pass: ranks loop in lockstep over their shards, the first shard is the longest."""
    steps = math.ceil(len(range(0, len(dataset), world_size)) / batch_size)
    return steps if max_steps is None else min(steps, max_steps)


def float_preds(preds: Any) -> Any:
    """Predictions in float32 (autocast may give float16); dicts are converted recursively."""
    if isinstance(preds, torch.Tensor):
        return preds.float() if preds.is_floating_point() else preds
    if isinstance(preds, Mapping):
        return {k: float_preds(v) for k, v in preds.items()}
    return preds
