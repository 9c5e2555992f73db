"""Trivial predictors: the constant each task's model must beat, fitted on a training split.

Each task row names its predictor (:attr:`mtlkit.tasks.TaskSpec.trivial`): the majority class at every pixel, the
training-mean depth over valid pixels, the mean training normal (renormalised), the mean training box, the majority
image label, and for edge/saliency the constant probability that scores best on the training split. Fit on
``train``, score on another split with the task's own meter::

    trivial = trivial_metrics(tasks, train_set, test_set)     # {"semseg": {"miou": ..., ...}, ...}
    for check in beats_trivial(model_metrics, trivial, tasks): print(check)

:func:`beats_trivial` applies the "beats trivial clearly" thresholds of :data:`BEATS` (docs/reference.md).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlkit.tasks import TRIVIAL_PREDICTORS, Task

__all__ = ["TrivialPredictor", "fit_trivial", "evaluate_trivial", "trivial_metrics", "BEATS", "Check", "beats_trivial",
           "format_checks"]


@dataclass(frozen=True)
class TrivialPredictor:
    """A fitted constant: ``value`` is a class index (labels), metres (depth), a unit [3] vector (normals), a [4]
    xyxy box, or a probability (edge/saliency). :meth:`predict` writes it in the task's prediction format."""

    task: Task
    rule: str
    value: Tensor

    def predict(self, target: Tensor) -> Tensor:
        """The constant prediction for a batch whose target is ``target`` (from ``task.target(batch)``)."""
        if self.rule in ("majority_pixel", "majority_label"):  # class indices, shaped like the target
            return torch.full(target.shape, int(self.value), dtype=torch.long, device=target.device)
        if self.rule == "mean_depth":
            return torch.full(target.shape, float(self.value), dtype=torch.float32, device=target.device)
        if self.rule == "mean_normal":
            b, _, h, w = target.shape
            return self.value.float().to(target.device).view(1, 3, 1, 1).expand(b, 3, h, w).clone()
        if self.rule == "mean_box":
            return self.value.float().to(target.device).view(1, 4).expand(target.shape[0], 4).clone()
        p = float(self.value)  # best_constant: a probability, written as the logit the meters expect
        logit = torch.logit(torch.tensor(p).clamp(1e-6, 1 - 1e-6)).item()
        return torch.full(target.shape, logit, dtype=torch.float32, device=target.device)


def _batches(data: Any, batch_size: int) -> Iterable[Mapping[str, Any]]:
    """Collated batches of a dataset (anything with ``__getitem__`` and ``__len__``), or the batches given."""
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (list, tuple)):
        from torch.utils.data import DataLoader

        from mtlkit.data.datasets import collate

        return DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate)
    return data


def _candidate_probabilities(task: Task) -> list[float]:
    """Constants that give every distinct score of a max-over-thresholds meter: below every threshold (nothing
    predicted), above every one (everything predicted), and between the middle two (both, at different t)."""
    thr = sorted(float(t) for t in task.meter().thresholds.tolist())
    below, above = thr[0] / 2, (1 + thr[-1]) / 2
    k = len(thr) // 2
    middle = (thr[k - 1] + thr[k]) / 2 if len(thr) > 1 else above
    return [middle, above, below]


def fit_trivial(tasks: Mapping[str, Task], train: Any, batch_size: int = 16) -> dict[str, TrivialPredictor]:
    """Fit every task's trivial predictor (its row's ``trivial``) on ``train`` (a dataset or collated batches).

    Ignored and invalid pixels / unlabelled images never count; ties go to the lowest class index.
    """
    for name, task in tasks.items():
        if task.spec.trivial not in TRIVIAL_PREDICTORS:
            raise ValueError(f"task {name!r}: unknown trivial predictor {task.spec.trivial!r}; "
                             f"valid: {', '.join(TRIVIAL_PREDICTORS)}")
    counts: dict[str, Tensor] = {}
    sums: dict[str, Tensor] = {}
    candidates = {n: _candidate_probabilities(t) for n, t in tasks.items() if t.spec.trivial == "best_constant"}
    cand_meters = {n: [t.meter() for _ in candidates[n]] for n, t in tasks.items() if n in candidates}
    for batch in _batches(train, batch_size):
        for name, task in tasks.items():
            rule = task.spec.trivial
            y = task.target(batch).cpu()
            if rule in ("majority_pixel", "majority_label"):
                valid = (y >= 0) & (y < task.num_classes)
                c = torch.bincount(y[valid].long(), minlength=task.num_classes).double()
                counts[name] = counts.get(name, 0) + c
            elif rule == "mean_depth":
                valid = torch.isfinite(y) & (y > 0)
                sums[name] = sums.get(name, 0) + y[valid].double().sum()
                counts[name] = counts.get(name, 0) + valid.sum()
            elif rule == "mean_normal":
                length = y.double().norm(dim=1, keepdim=True)
                valid = (torch.isfinite(y).all(dim=1, keepdim=True) & (length > 0))
                unit = torch.where(valid, y.double() / length.clamp_min(1e-12), 0.0)
                sums[name] = sums.get(name, 0) + unit.sum(dim=(0, 2, 3))
            elif rule == "mean_box":
                valid = torch.isfinite(y).all(dim=1)
                sums[name] = sums.get(name, 0) + y[valid].double().sum(dim=0)
                counts[name] = counts.get(name, 0) + valid.sum()
            else:  # best_constant
                for p, m in zip(candidates[name], cand_meters[name]):
                    m.update(TrivialPredictor(task, rule, torch.tensor(p)).predict(y), y)
    fitted = {}
    for name, task in tasks.items():
        rule = task.spec.trivial
        if rule in ("majority_pixel", "majority_label", "mean_depth", "mean_box") and not bool(
                torch.as_tensor(counts.get(name, 0)).sum() > 0):
            raise ValueError(f"fit_trivial: the training split has no valid {name!r} target to fit on.")
        if rule in ("majority_pixel", "majority_label"):
            value = counts[name].argmax()
        elif rule in ("mean_depth", "mean_box"):
            value = sums[name] / counts[name]
        elif rule == "mean_normal":
            total = sums.get(name, torch.zeros(3, dtype=torch.float64))
            if float(total.norm()) == 0:
                raise ValueError(f"fit_trivial: the training split has no valid {name!r} normal to fit on.")
            value = total / total.norm()
        else:
            # rank by the Δm metric, then the meter's other keys (saliency: max-F, then max-IoU)
            keys = [task.delta_metric] + [k for k in task.metric_keys if k != task.delta_metric]
            scores = [tuple(_or_low(m.compute()[k]) for k in keys) for m in cand_meters[name]]
            best = max(range(len(scores)), key=lambda i: (scores[i], -i))
            value = torch.tensor(candidates[name][best])
        fitted[name] = TrivialPredictor(task, rule, value.detach().cpu())
    return fitted


def _or_low(x: float) -> float:
    return x if x == x else float("-inf")  # NaN (nothing valid) ranks last


def evaluate_trivial(predictors: Mapping[str, TrivialPredictor], data: Any,
                     batch_size: int = 16) -> dict[str, dict[str, float]]:
    """Score fitted predictors on ``data`` with each task's own meter: ``{task: {metric: value}}``, the shape of
    the Trainer's test metrics."""
    meters = {name: p.task.meter() for name, p in predictors.items()}
    for batch in _batches(data, batch_size):
        for name, p in predictors.items():
            y = p.task.target(batch)
            meters[name].update(p.predict(y), y)
    return {name: m.compute() for name, m in meters.items()}


def trivial_metrics(tasks: Mapping[str, Task], train: Any, test: Any, batch_size: int = 16
                    ) -> dict[str, dict[str, float]]:
    """Fit each task's trivial predictor on ``train`` and score it on ``test``."""
    return evaluate_trivial(fit_trivial(tasks, train, batch_size), test, batch_size)


# ------------------------------------------------------------------------------------ "beats trivial clearly"
#: Per trivial predictor: (metric, how the model must compare, amount). "ratio_at_least": model >= amount x trivial;
#: "ratio_at_most": model <= amount x trivial; "plus": model >= trivial + amount (percentage points);
#: "chance_plus": model >= 100 / num_classes + amount.
BEATS: dict[str, tuple[tuple[str, str, float], ...]] = {
    "majority_pixel": (("miou", "ratio_at_least", 3.0), ("pixel_acc", "plus", 15.0)),
    "mean_depth": (("abs_err", "ratio_at_most", 0.5),),
    "mean_normal": (("mean", "ratio_at_most", 0.75),),
    "majority_label": (("accuracy", "chance_plus", 20.0),),
    "mean_box": (("mean_iou", "plus", 15.0),),
    "best_constant": (("delta_metric", "plus", 15.0),),  # ODS-F / max-F + 0.15 (the meters report percent)
}


@dataclass(frozen=True)
class Check:
    """One threshold check: the model's value, the trivial predictor's, the value needed and whether it passed."""

    task: str
    metric: str
    model: float
    trivial: float
    needed: float
    rule: str
    passed: bool

    @property
    def attainable(self) -> bool:
        """False when the bar lies above 100 % (e.g. pixel accuracy +15 points over a majority class at 90 %)."""
        return self.rule == "ratio_at_most" or not self.needed > 100.0

    def __str__(self) -> str:
        sign = "<=" if self.rule == "ratio_at_most" else ">="
        return (f"{'PASS' if self.passed else 'FAIL'}  {self.task}/{self.metric}: model {self.model:.3f} {sign} "
                f"{self.needed:.3f} needed (trivial {self.trivial:.3f}; {self.rule})"
                + ("" if self.attainable else "; unattainable: the bar is above 100 %"))


def beats_trivial(model: Mapping[str, Mapping[str, float]], trivial: Mapping[str, Mapping[str, float]],
                  tasks: Mapping[str, Task]) -> list[Check]:
    """Check the model's metrics against the trivial predictor's, per :data:`BEATS`, for every task in ``tasks``
    that ``model`` reports. A NaN on either side fails."""
    checks = []
    for name, task in tasks.items():
        if name not in model:
            continue
        if name not in trivial:
            raise ValueError(f"beats_trivial: no trivial metrics for task {name!r}; compute them with "
                             "trivial_metrics(tasks, train, test).")
        for metric, rule, amount in BEATS[task.spec.trivial]:
            metric = task.delta_metric if metric == "delta_metric" else metric
            m, t = float(model[name][metric]), float(trivial[name][metric])
            if rule == "ratio_at_least":
                needed = amount * t
            elif rule == "ratio_at_most":
                needed = amount * t
            elif rule == "plus":
                needed = t + amount
            else:
                needed = 100.0 / task.num_classes + amount
            passed = m <= needed if rule == "ratio_at_most" else m >= needed  # False when either is NaN
            checks.append(Check(name, metric, m, t, needed, rule, bool(passed)))
    return checks


def format_checks(checks: Iterable[Check]) -> str:
    """One line per check, for a notebook to print."""
    return "\n".join(str(c) for c in checks)
