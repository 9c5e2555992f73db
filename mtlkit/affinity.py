"""Inter-task affinity by lookahead (Fifty et al., NeurIPS 2021, "Efficiently Identifying Task Groupings").

Z[i, j] = 1 - L_j(theta_s - lr * grad_{theta_s} L_i) / L_j(theta_s): how much one SGD step of the shared
parameters theta_s on task i's loss alone lowers (Z > 0) or raises (Z < 0) task j's loss on the same batch.

* :func:`lookahead_affinity` computes the T x T matrix on one batch without touching the model (parameters,
  BatchNorm statistics and the global RNG are as before; the lookahead runs through ``torch.func.functional_call``).
* :class:`AffinityCallback` records it every ``every`` training steps into ``trainer.history["affinity"]`` (saved
  in the checkpoints) and ``out_dir/affinity.json``, on batches of its own, so the training run is unchanged.
* :func:`rank_groupings` / :func:`best_grouping` choose task groups for a budget of networks from the averaged
  matrix, exhaustively (the paper's network selection; each task counts in the group that helps it most).
See ``docs/weightings.md`` for the formulas.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import random
from pathlib import Path
from typing import Any
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

__all__ = ["lookahead_affinity", "shared_parameter_names", "AffinityCallback", "average_affinity",
           "group_score", "rank_groupings", "best_grouping"]

LossFn = Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, torch.Tensor]]


def shared_parameter_names(model: nn.Module, tasks: Sequence[str]) -> list[str]:
    """Names of the parameters every task shares, by the Trainer's rule: ``model.shared_parameters()`` if the model
    has it, else every parameter whose dotted name has no component equal to a task name."""
    if hasattr(model, "shared_parameters"):
        ids = {id(p) for p in model.shared_parameters()}
        return [n for n, p in model.named_parameters() if id(p) in ids and p.requires_grad]
    names = set(tasks)
    return [n for n, p in model.named_parameters() if p.requires_grad and not names.intersection(n.split("."))]


@contextlib.contextmanager
def _rng_untouched(device: torch.device):
    """Run a block without changing python's, numpy's or torch's (CPU and this CUDA device) random state."""
    py, npy = random.getstate(), np.random.get_state()
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def lookahead_affinity(model: nn.Module, batch: Mapping[str, Any], tasks: Mapping[str, Any] | Sequence[str],
                       lr: float, *, loss_fn: LossFn | None = None, shared: Sequence[str] | None = None,
                       seed: int = 0) -> torch.Tensor:
    """The lookahead affinity matrix Z [T, T] (float64; row i: the task stepped on, column j: the task measured).

    Args:
        model: ``model(batch["image"]) -> {task: prediction}``; used in its current mode (train mode: batch
            statistics, as the training loss sees them), never modified.
        batch: a collated batch on the model's device (``"image"`` plus the targets the losses read).
        tasks: ``{name: Task}`` (losses from ``Task.loss(prediction, batch)``) or names, with ``loss_fn``.
        lr: step size of the lookahead SGD step on the shared parameters.
        loss_fn: ``(predictions, batch) -> {task: loss}`` instead of the tasks' own losses (e.g. the Trainer's
            ``task_losses``, which adds deep supervision).
        shared: names of the shared parameters (default: :func:`shared_parameter_names`).
        seed: every forward runs with this torch seed (same dropout masks before and after the step).
    """
    from torch.func import functional_call

    names = list(tasks)
    if len(names) < 1:
        raise ValueError("lookahead_affinity needs at least one task")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lookahead_affinity: lr must be a finite step size > 0, got {lr}")
    if loss_fn is None:
        if not isinstance(tasks, Mapping):
            raise ValueError("lookahead_affinity: pass tasks as {name: Task} or give loss_fn=(preds, batch) -> losses")
        def loss_fn(preds, b):
            return {t: tasks[t].loss(preds[t], b) for t in names}
    shared = list(shared) if shared is not None else shared_parameter_names(model, names)
    params = dict(model.named_parameters())
    missing = [n for n in shared if n not in params]
    if missing or not shared:
        raise ValueError(f"lookahead_affinity: shared parameters {missing or '(none)'} are not parameters of "
                         f"{type(model).__name__}; pass shared= names from model.named_parameters()")
    buffers = dict(model.named_buffers())
    images = batch["image"]
    device = images.device

    def losses_at(overrides: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        fresh = {n: b.clone() for n, b in buffers.items()}  # BatchNorm updates these copies, not the model's
        preds = functional_call(model, ({**params, **overrides}, fresh), (images,))
        losses = loss_fn(preds, batch)
        return {t: losses[t] for t in names}

    z = torch.zeros(len(names), len(names), dtype=torch.float64)
    with _rng_untouched(device):
        with torch.enable_grad():
            before = losses_at({})
            tensors = [params[n] for n in shared]
            grads = [torch.autograd.grad(before[t], tensors, retain_graph=True, allow_unused=True) for t in names]
        base = torch.stack([before[t].detach().double() for t in names]).cpu()  # [T]
        if bool((base <= 0).any()):
            raise ValueError(f"lookahead_affinity divides by the losses, which must be > 0; got "
                             f"{dict(zip(names, base.tolist()))}")
        with torch.no_grad():
            for i, g_i in enumerate(grads):
                stepped = {n: (p.detach() if g is None else p.detach() - lr * g)
                           for n, p, g in zip(shared, tensors, g_i)}
                after = losses_at(stepped)
                z[i] = 1.0 - torch.stack([after[t].double() for t in names]).cpu() / base
    return z


class AffinityCallback:
    """Trainer callback: the lookahead affinity every ``every`` steps, on a random training batch of its own.

    Records ``{"step", "epoch", "lr", "matrix"}`` in ``trainer.history["affinity"]["records"]`` (kept in the
    checkpoints, so a resumed run keeps them) and writes ``out_dir/affinity.json`` at each epoch end. Its batches
    come from a generator seeded with ``seed``, and every random state is restored, so the training run itself is
    exactly the one without the callback.

    Args:
        every: steps between two measurements (the first at step ``every``).
        lr: lookahead step size; None: the first optimiser group's current learning rate.
        batch_size: images per measurement batch (None: the Trainer's batch size).
        seed: seed of the batch sampler and of the forwards.
    """

    def __init__(self, every: int = 10, lr: float | None = None, batch_size: int | None = None,
                 seed: int = 0) -> None:
        if every < 1:
            raise ValueError(f"AffinityCallback every must be >= 1 step, got {every}")
        self.every, self.lr, self.batch_size, self.seed = int(every), lr, batch_size, int(seed)
        self._gen: torch.Generator | None = None

    def on_fit_start(self, trainer) -> None:
        if trainer.task_schedule is not None:
            raise ValueError("AffinityCallback needs every task's loss at each step; it does not work with "
                             "task_schedule (one task per step)")
        self._gen = torch.Generator().manual_seed(self.seed + trainer.global_step)  # resume: a fresh stream
        trainer.history.setdefault("affinity", {"tasks": list(trainer.task_names), "records": []})

    def on_step_end(self, trainer, step: int, info: Mapping[str, Any]) -> None:
        if step % self.every:
            return
        from mtlkit.data import collate

        model = trainer.model
        device = trainer.device
        with _rng_untouched(device):
            n = min(self.batch_size or trainer.batch_size, len(trainer.train_set))
            idx = torch.randperm(len(trainer.train_set), generator=self._gen)[:n].tolist()
            batch = collate([trainer.train_set[i] for i in idx])
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        if trainer.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        lr = float(self.lr if self.lr is not None else trainer.optimizer.param_groups[0]["lr"])
        z = lookahead_affinity(model, batch, list(trainer.task_names), lr,
                               loss_fn=lambda preds, b: trainer.task_losses(preds, b),
                               shared=shared_parameter_names(model, trainer.task_names), seed=self.seed + step)
        trainer.history["affinity"]["records"].append(
            {"step": int(step), "epoch": int(info.get("epoch", -1)), "lr": lr, "matrix": z.tolist()})

    def on_epoch_end(self, trainer, epoch: int, record: Mapping[str, Any]) -> None:
        if getattr(trainer.dist, "is_main", True):
            from mtlkit.atomic import atomic_write_json

            atomic_write_json(Path(trainer.out_dir) / "affinity.json", trainer.history["affinity"])


def average_affinity(records: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> np.ndarray:
    """Mean matrix [T, T] of the callback's records (``history["affinity"]`` or its ``"records"`` list)."""
    if isinstance(records, Mapping):
        records = records["records"]
    if not records:
        raise ValueError("no affinity records to average: was AffinityCallback(every=k) given k <= the steps run?")
    return np.mean([np.asarray(r["matrix"], dtype=np.float64) for r in records], axis=0)


def _onto(z: np.ndarray, group: Sequence[int], j: int) -> float:
    """Affinity of ``group`` onto its member j: the mean of Z[i, j] over the other members (0 alone)."""
    others = [i for i in group if i != j]
    return float(np.mean([z[i, j] for i in others])) if others else 0.0


def group_score(affinity, tasks: Sequence[str], groups: Sequence[Sequence[str]]) -> float:
    """Total affinity of a grouping: the sum over tasks of the best affinity onto it among the groups holding it."""
    z = np.asarray(affinity, dtype=np.float64)
    index = {t: k for k, t in enumerate(tasks)}
    unknown = sorted({t for g in groups for t in g} - set(index))
    if unknown:
        raise ValueError(f"groups name unknown tasks {unknown}; tasks are {list(tasks)}")
    uncovered = [t for t in tasks if not any(t in g for g in groups)]
    if uncovered:
        raise ValueError(f"every task needs a group; {uncovered} have none")
    members = [[index[t] for t in g] for g in groups]
    return sum(max(_onto(z, g, index[t]) for g in members if index[t] in g) for t in tasks)


def _partitions(items: list[int], n: int):
    """Every partition of ``items`` into exactly n non-empty blocks (each once)."""
    if n == 1:
        yield [items]
        return
    if len(items) == n:
        yield [[i] for i in items]
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest, n - 1):  # first alone
        yield [[first]] + part
    for part in _partitions(rest, n):  # first joins a block
        for b in range(n):
            yield [blk if k != b else [first] + blk for k, blk in enumerate(part)]


def rank_groupings(affinity, tasks: Sequence[str], n_groups: int, overlap: bool = False,
                   limit: int = 200_000) -> list[tuple[float, list[tuple[str, ...]]]]:
    """Every grouping of ``tasks`` into ``n_groups`` networks with its :func:`group_score`, best first.

    ``overlap=False``: partitions (each task in exactly one network). ``overlap=True``: the paper's network
    selection, any ``n_groups`` distinct non-empty subsets covering every task, each task served by the group
    that helps it most. Exhaustive; refuses more than ``limit`` candidates (the paper does this for <= 6 tasks).
    """
    z = np.asarray(affinity, dtype=np.float64)
    t = len(tasks)
    if z.shape != (t, t):
        raise ValueError(f"affinity has shape {z.shape}, expected ({t}, {t}) for tasks {list(tasks)}")
    if not 1 <= n_groups <= (2 ** t - 1 if overlap else t):
        raise ValueError(f"n_groups must be between 1 and {2 ** t - 1 if overlap else t} for {t} tasks, got {n_groups}")
    count = math.comb(2 ** t - 1, n_groups) if overlap else _stirling2(t, n_groups)
    if count > limit:
        raise ValueError(f"{count} candidate groupings exceed limit={limit}; use fewer tasks or raise the limit")
    if overlap:
        subsets = [list(c) for r in range(1, t + 1) for c in itertools.combinations(range(t), r)]
        candidates = (list(c) for c in itertools.combinations(subsets, n_groups)
                      if set().union(*map(set, c)) == set(range(t)))
    else:
        candidates = _partitions(list(range(t)), n_groups)
    ranked = []
    for groups in candidates:
        score = sum(max(_onto(z, g, j) for g in groups if j in g) for j in range(t))
        ranked.append((score, sorted(tuple(tasks[i] for i in sorted(g)) for g in groups)))
    ranked.sort(key=lambda item: -item[0])
    return ranked


def best_grouping(affinity, tasks: Sequence[str], n_groups: int,
                  overlap: bool = False) -> tuple[list[tuple[str, ...]], float]:
    """The grouping with the highest total affinity (see :func:`rank_groupings`) and its score."""
    score, groups = rank_groupings(affinity, tasks, n_groups, overlap)[0]
    return groups, score


def _stirling2(n: int, k: int) -> int:
    """Number of partitions of n items into k non-empty blocks."""
    return sum((-1) ** i * math.comb(k, i) * (k - i) ** n for i in range(k + 1)) // math.factorial(k)
