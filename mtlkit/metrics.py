"""Metrics by task name: ``meter(task)``, the DLAD grader score and multi-task Δm with named metric sets.

The meter classes live in :mod:`mtlkit.meters` (re-exported here); which meter a task uses, and its metric for Δm,
is the task's row in :mod:`mtlkit.tasks`. Δm (docs/reference.md#multi-task-performance) compares multi-task results with
single-task baselines over a named metric set:

* ``"kit"`` (default): one metric per task, its row's ``delta_metric`` (mIoU, depth abs error, normals mean angle,
  edge ODS-F, saliency max-F, accuracy, box mean IoU);
* ``"survey"``: the survey code's (Vandenhende et al.): semseg and parts mIoU, depth RMSE, normals mean angle,
  saliency mIoU (max over thresholds), edge ODS-F;
* ``"libmtl"``: LibMTL's: every listed metric of a task averaged within the task first (seg mIoU + pixel accuracy,
  depth abs + rel error, normals all five, saliency max-F + max-IoU).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mtlkit.meters import (METRIC_HIGHER_IS_BETTER, BoxMeter, ClassificationMeter, DepthMeter, EdgeMeter, Meter,
                           NormalsMeter, SaliencyMeter, SegmentationMeter, grader_score)
from mtlkit.tasks import TASKS, spec_of

__all__ = [
    "Meter", "SegmentationMeter", "DepthMeter", "NormalsMeter", "SaliencyMeter", "EdgeMeter", "ClassificationMeter",
    "BoxMeter", "METER_CLASSES", "METRIC_HIGHER_IS_BETTER", "DELTA_FORMS", "KIT_METRICS", "SURVEY_METRICS",
    "LIBMTL_METRICS", "meter", "grader_score", "delta_m",
]

#: task -> meter class (read from the task rows; kept for code that imports it).
METER_CLASSES: dict[str, type[Meter]] = {name: spec.meter for name, spec in TASKS.items()}

#: The named metric sets of :func:`delta_m` (task -> metric keys), read from the task rows.
KIT_METRICS: dict[str, tuple[str, ...]] = {name: (spec.delta_metric,) for name, spec in TASKS.items()}
SURVEY_METRICS: dict[str, tuple[str, ...]] = {n: s.survey_metrics for n, s in TASKS.items() if s.survey_metrics}
LIBMTL_METRICS: dict[str, tuple[str, ...]] = {n: s.libmtl_metrics for n, s in TASKS.items() if s.libmtl_metrics}
DELTA_FORMS = ("kit", "survey", "libmtl")


def meter(task: str, **task_args: Any) -> Meter:
    """A fresh streaming meter for ``task`` (e.g. ``meter("semseg", num_classes=13, absent="zero")``).

    ``task_args`` are the meter's constructor arguments (see :mod:`mtlkit.meters`); ``binary`` defaults to 2 classes.
    """
    if task not in TASKS:
        raise ValueError(f"no meter for task {task!r}; valid tasks: {', '.join(TASKS)}.")
    spec = TASKS[task]
    if spec.default_classes is not None:
        task_args.setdefault("num_classes", spec.default_classes)
    try:
        return spec.meter(**task_args)
    except TypeError as exc:
        raise TypeError(f"meter({task!r}): {exc}; see {spec.meter.__name__}'s arguments.") from None


def _relative(name: str, metric: str, mt: Mapping[str, float], st: Mapping[str, float], higher: bool) -> float:
    if metric not in mt or metric not in st:
        raise ValueError(
            f"delta_m: metric {metric!r} of task {name!r} is missing from the "
            f"{'multi-task' if metric not in mt else 'single-task'} results; available: "
            f"{sorted(mt if metric not in mt else st)}."
        )
    base = float(st[metric])
    if base == 0 or not math.isfinite(base):
        raise ValueError(f"delta_m: single-task {name}/{metric} = {base}; Δm needs a finite non-zero baseline.")
    sign = 1.0 if higher else -1.0
    return sign * (float(mt[metric]) - base) / base


def _chosen_metrics(name: str, task: Any, form: str, mt: Mapping[str, float], st: Mapping[str, float]) -> list[str]:
    """The metric keys of task ``name`` in metric set ``form``."""
    if form == "kit":
        if task is not None:
            return [task.delta_metric]
        return [spec_of(name).delta_metric]
    if form == "survey":
        if name not in SURVEY_METRICS:
            raise ValueError(f"delta_m: the survey code reports no metric for task {name!r} (it has "
                             f"{', '.join(SURVEY_METRICS)}); use form='kit' or pass metrics={{{name!r}: [...]}}.")
        return list(SURVEY_METRICS[name])
    return list(LIBMTL_METRICS.get(name, [m for m in mt if m in st]))


def delta_m(
    multi: Mapping[str, Mapping[str, float]],
    single: Mapping[str, Mapping[str, float]],
    form: str = "kit",
    tasks: Mapping[str, Any] | Iterable[str] | None = None,
    metrics: Mapping[str, Sequence[str]] | None = None,
) -> float:
    """Multi-task performance relative to single-task baselines, in percent (positive = MTL is better).

    ``Δm = 100/T * Σ_t mean_{m in M_t} (-1)^{l_m} (M_mt,m - M_st,m) / M_st,m`` with ``l_m = 1`` when lower is
    better and ``M_t`` task t's metrics in the named set ``form`` (module docstring): ``"kit"``, ``"survey"`` or
    ``"libmtl"``. With one metric per task this is the survey's formula; LibMTL averages within a task first.

    Args:
        multi, single: task -> metric -> value, as the meters' ``compute()`` return them.
        form: the metric set.
        tasks: the tasks to include: a dict name -> :class:`mtlkit.tasks.Task` (the kit set then uses its
            ``delta_metric`` and ``higher_is_better``), an iterable of names, or None (every task in ``multi``).
        metrics: optional task -> metric names, overriding the set's choice for those tasks.
    """
    if form not in DELTA_FORMS:
        raise ValueError(f"delta_m: unknown form {form!r}; valid choices: {', '.join(DELTA_FORMS)}.")
    if tasks is None:
        tasks = list(multi)
    task_objs = dict(tasks) if isinstance(tasks, Mapping) else {name: None for name in tasks}
    if not task_objs:
        raise ValueError("delta_m: no tasks to compare; pass results for at least one task.")
    per_task = []
    for name, task in task_objs.items():
        if name not in multi or name not in single:
            raise ValueError(f"delta_m: task {name!r} needs results in both multi ({sorted(multi)}) and single "
                             f"({sorted(single)}).")
        mt, st = multi[name], single[name]
        if metrics is not None and name in metrics:
            chosen = list(metrics[name])
        else:
            chosen = _chosen_metrics(name, task, form, mt, st)
        values = []
        for metric in chosen:
            if form == "kit" and task is not None and metric == task.delta_metric:
                higher = task.higher_is_better
            elif metric in METRIC_HIGHER_IS_BETTER:
                higher = METRIC_HIGHER_IS_BETTER[metric]
            else:
                raise ValueError(f"delta_m: direction of metric {metric!r} unknown; known metrics: "
                                 f"{', '.join(METRIC_HIGHER_IS_BETTER)}.")
            values.append(_relative(name, metric, mt, st, higher))
        if not values:
            raise ValueError(f"delta_m: no metric to compare for task {name!r}.")
        per_task.append(sum(values) / len(values))
    return 100.0 * sum(per_task) / len(per_task)
