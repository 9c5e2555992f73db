"""One row per task: what it predicts, its target and fill value, loss, meter, options, Δm metrics and display label.

Models and the Trainer talk about tasks by name only; everything task-specific is the task's :class:`TaskSpec` row
in :data:`TASKS`. Adding a task is one row here, one meter (:mod:`mtlkit.meters`) and one loss (:mod:`mtlkit.losses`)::

    tasks = tasks_for(dataset.task_info)            # {"semseg": Task(...), "depth": Task(...), ...}
    model = build("tiny", {n: t.out_channels for n, t in tasks.items()})
    loss = sum(t.loss(preds[n], batch) for n, t in tasks.items())
    meters = {n: t.meter() for n, t in tasks.items()}; meters[n].update(preds[n], t.target(batch))

Predictions (input resolution): label logits [B,C,H,W] or [B,C]; depth [B,1,H,W] metres; normals [B,3,H,W] (any
length); edge/saliency logits [B,1,H,W]; boxes [B,4] xyxy pixels. Targets (:meth:`Task.target`): labels int64
(-1 ignore), depth metres (0 invalid), normals (all-zero invalid), edge/saliency {0,1} (-1 ignore), boxes [B,4] (the
image's first box, NaN row when none); an image whose ``meta["tasks"]`` omits the task gets the row's ``fill``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mtlkit import losses
from mtlkit.meters import (BoxMeter, ClassificationMeter, DepthMeter, EdgeMeter, Meter, NormalsMeter, SaliencyMeter,
                           SegmentationMeter)

__all__ = ["TASKS", "TaskSpec", "Task", "OwnerPartsTask", "make_task", "tasks_for", "TASK_KINDS", "TASK_SPECS",
           "TRIVIAL_PREDICTORS"]

#: Trivial predictors a row may name (fitted on a training split by :mod:`mtlkit.baselines`).
TRIVIAL_PREDICTORS = ("majority_pixel", "mean_depth", "mean_normal", "best_constant", "majority_label", "mean_box")
TARGETS = ("labels", "depth", "normals", "binary", "box")


@dataclass(frozen=True, eq=False)
class TaskSpec:
    """The row of one task type.

    Attributes:
        kind: "dense" (per pixel), "image" (one label per image) or "box" (one box per image).
        target: what the target holds: "labels", "depth", "normals", "binary" ({0,1} maps) or "box".
        loss: ``loss(pred, target, **loss_options) -> scalar`` (:mod:`mtlkit.losses`).
        meter: the meter class (:mod:`mtlkit.meters`), built with ``meter_options``.
        delta_metric / higher_is_better: the meter key that stands for the task in the kit's Δm, and its direction.
        fill: target value of an image that does not label the task (NaN for boxes).
        trivial: the trivial predictor to beat (one of :data:`TRIVIAL_PREDICTORS`).
        title: display label.
        out_channels: fixed output channels, or None when it is ``num_classes`` (label tasks).
        default_classes: ``num_classes`` when the dataset does not say (binary: cat/dog).
        loss_defaults: default keyword arguments of ``loss``.
        options: ``task_info`` keys :func:`make_task` understands: key -> ("loss" | "meter", argument name).
        survey_metrics / libmtl_metrics: the task's metrics in the survey code's and LibMTL's Δm (empty: none).
    """

    kind: str
    target: str
    loss: Callable[..., Tensor]
    meter: type[Meter]
    delta_metric: str
    higher_is_better: bool
    fill: float
    trivial: str
    title: str
    out_channels: int | None = None
    default_classes: int | None = None
    loss_defaults: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    survey_metrics: tuple[str, ...] = ()
    libmtl_metrics: tuple[str, ...] = ()

    @property
    def is_label(self) -> bool:
        """True for classification-style tasks (predict class logits, need ``num_classes``)."""
        return self.out_channels is None


_SEG_OPTIONS = {"absent": ("meter", "absent"), "per_image": ("meter", "per_image")}
_SEG_METRICS = ("miou", "pixel_acc")
_NAN = float("nan")


def _segmentation(title: str, survey: tuple[str, ...] = ()) -> TaskSpec:
    return TaskSpec("dense", "labels", losses.cross_entropy, SegmentationMeter, "miou", True, fill=-1,
                    trivial="majority_pixel", title=title, options=_SEG_OPTIONS, survey_metrics=survey,
                    libmtl_metrics=_SEG_METRICS)


def _image_label(title: str, default_classes: int | None = None) -> TaskSpec:
    return TaskSpec("image", "labels", losses.cross_entropy, ClassificationMeter, "accuracy", True, fill=-1,
                    trivial="majority_label", title=title, default_classes=default_classes)


TASKS: dict[str, TaskSpec] = {
    "semseg": _segmentation("semantic segmentation", survey=("miou",)),
    "parts": _segmentation("parts", survey=("miou",)),
    "material": _segmentation("material"),
    "depth": TaskSpec(
        "dense", "depth", losses.depth_loss, DepthMeter, "abs_err", False, fill=0.0, trivial="mean_depth",
        title="depth", out_channels=1, loss_defaults={"kind": "l1"},
        options={"depth_loss": ("loss", "kind"), "depth_mean": ("loss", "mean"), "depth_std": ("loss", "std"),
                 "depth_mode": ("meter", "mode"), "depth_clamp": ("meter", "clamp")},
        survey_metrics=("rmse",), libmtl_metrics=("abs_err", "rel_err")),
    "normals": TaskSpec(
        "dense", "normals", losses.normals_cosine, NormalsMeter, "mean", False, fill=0.0, trivial="mean_normal",
        title="surface normals", out_channels=3,
        options={"median": ("meter", "median"), "normals_mode": ("meter", "mode")},
        survey_metrics=("mean",), libmtl_metrics=("mean", "median", "within_11_25", "within_22_5", "within_30")),
    "edge": TaskSpec(
        "dense", "binary", losses.balanced_bce, EdgeMeter, "ods_f", True, fill=-1.0, trivial="best_constant",
        title="edges", out_channels=1, loss_defaults={"pos_weight": losses.EDGE_POS_WEIGHT},
        options={"pos_weight": ("loss", "pos_weight"), "tolerance": ("meter", "tolerance"),
                 "thresholds": ("meter", "thresholds")},
        survey_metrics=("ods_f",)),
    "saliency": TaskSpec(
        "dense", "binary", losses.balanced_bce, SaliencyMeter, "max_f", True, fill=-1.0, trivial="best_constant",
        title="saliency", out_channels=1,
        loss_defaults={"pos_weight": None},  # balanced by the batch's positive fraction
        options={"pos_weight": ("loss", "pos_weight"), "thresholds": ("meter", "thresholds")},
        survey_metrics=("max_iou",), libmtl_metrics=("max_f", "max_iou")),
    "scene": _image_label("scene"),
    "texture": _image_label("texture"),
    "binary": _image_label("cat or dog", default_classes=2),
    "category": _image_label("category"),
    "boxes": TaskSpec("box", "box", losses.diou_loss, BoxMeter, "mean_iou", True, fill=_NAN, trivial="mean_box",
                      title="box", out_channels=4),
}

# Names older code imports: the row table, and task -> kind.
TASK_SPECS = TASKS
TASK_KINDS: dict[str, str] = {name: spec.kind for name, spec in TASKS.items()}


def spec_of(name: str) -> TaskSpec:
    """The row of task ``name``; a clear error for an unknown name."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}.")
    return TASKS[name]


@dataclass(frozen=True)
class Task:
    """One task of a multi-task problem (build with :func:`make_task` / :func:`tasks_for`).

    Attributes:
        name: task name (a key of :data:`TASKS`).
        kind: "dense", "image" or "box".
        out_channels: channels the model's head must output for it.
        num_classes: classes of label tasks, None for regression tasks.
        delta_metric: meter key that represents the task in Δm; higher_is_better: its direction.
        class_names: optional class names of label tasks.
        loss_options / meter_options: keyword arguments for the loss function and the meter.
        info: any other keys of the dataset's ``task_info`` entry, kept for reference.
    """

    name: str
    kind: str
    out_channels: int
    num_classes: int | None
    delta_metric: str
    higher_is_better: bool
    class_names: tuple[str, ...] | None = None
    loss_options: dict[str, Any] = field(default_factory=dict, compare=False)
    meter_options: dict[str, Any] = field(default_factory=dict, compare=False)
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def spec(self) -> TaskSpec:
        """This task's row in :data:`TASKS`."""
        return TASKS[self.name]

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """The keys this task's meter reports."""
        return self.spec.meter.keys

    # ------------------------------------------------------------------------------------------ targets
    def labelled(self, batch: Mapping[str, Any]) -> Tensor | None:
        """[B] bool: which images label this task according to ``meta[i]["tasks"]``; None if meta does not say."""
        metas = batch.get("meta")
        if isinstance(metas, Mapping):
            metas = [metas]
        if not isinstance(metas, Sequence) or not metas:
            return None
        if not all(isinstance(m, Mapping) and "tasks" in m for m in metas):
            return None
        return torch.tensor([self.name in m["tasks"] for m in metas], dtype=torch.bool)

    def target(self, batch: Mapping[str, Any]) -> Tensor:
        """This task's target from a collated batch (formats in the module docstring), unlabelled images masked."""
        if self.name not in batch:
            raise KeyError(
                f"batch has no {self.name!r} entry (keys: {sorted(batch)}); the dataset does not provide this "
                "task: build the tasks from its task_info (tasks_for(dataset.task_info))."
            )
        raw = batch[self.name]
        fill = self.spec.fill
        if self.kind == "box":
            target = _first_boxes(raw)
        elif self.kind == "image":
            target = torch.as_tensor(raw).long().reshape(-1)
        elif self.num_classes is not None:
            target = raw.long()
        else:
            target = raw.float() if not raw.is_floating_point() else raw
        mask = self.labelled(batch)
        if mask is not None:
            if mask.numel() != target.shape[0]:
                raise ValueError(
                    f"batch meta has {mask.numel()} entries but {self.name!r} has {target.shape[0]} items."
                )
            if not bool(mask.all()):
                mask = mask.to(target.device).view(-1, *([1] * (target.dim() - 1)))
                target = torch.where(mask, target, torch.full_like(target, fill))
        return target

    # ------------------------------------------------------------------------------------------- losses
    def loss(self, pred: Tensor, batch: Mapping[str, Any]) -> Tensor:
        """Scalar training loss of ``pred`` (this task's model output) against the batch.

        Unlabelled images / pixels are masked; a graph-connected 0 comes back when nothing is valid.
        """
        if not isinstance(pred, Tensor):
            raise TypeError(
                f"Task {self.name!r}: loss expects this task's prediction tensor, got {type(pred).__name__} "
                "(index the model output: task.loss(outputs[task.name], batch))."
            )
        if pred.dim() < 2 or pred.shape[1] != self.out_channels:
            raise ValueError(f"Task {self.name!r}: prediction {tuple(pred.shape)} should have {self.out_channels} "
                             "channels at dim 1.")
        return self.spec.loss(pred, self.target(batch).to(pred.device), **self.loss_options)

    def meter(self) -> Meter:
        """A fresh streaming meter for this task (update with ``(pred, task.target(batch))``)."""
        cls = self.spec.meter
        try:
            return cls(**self.meter_options)
        except TypeError as exc:
            raise TypeError(f"Task {self.name!r}: {exc}; see {cls.__name__}'s arguments.") from None


@dataclass(frozen=True)
class OwnerPartsTask(Task):
    """The ``parts`` task trained with UPerNet's per-object part loss (:func:`mtlkit.losses.owner_part_loss`).

    Everything but the loss is the plain parts task's (targets, meter, metrics). The loss needs each pixel's
    ground-truth object, taken from the batch through ``objects`` (the ``semseg`` task, so that images which do
    not label objects are ignored); ``part_owners`` is what ``upernet(part_owners=...)`` gets.
    """

    objects: Task | None = field(default=None, compare=False, repr=False)
    part_owners: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.objects is None or self.objects.num_classes is None:
            raise ValueError("OwnerPartsTask needs objects=<the semseg Task> (a label task with num_classes)")
        if len(self.part_owners) != self.out_channels:
            raise ValueError(f"OwnerPartsTask: part_owners has {len(self.part_owners)} entries for "
                             f"{self.out_channels} part classes")

    def loss(self, pred: Tensor, batch: Mapping[str, Any]) -> Tensor:
        if pred.dim() != 4 or pred.shape[1] != self.out_channels:
            raise ValueError(f"Task {self.name!r}: prediction {tuple(pred.shape)} should be [B, {self.out_channels}, "
                             "H, W]")
        allowed = losses.part_allowed(self.part_owners, self.objects.num_classes)
        return losses.owner_part_loss(pred, self.target(batch).to(pred.device),
                                      self.objects.target(batch).to(pred.device), allowed)


def _first_boxes(raw: Any) -> Tensor:
    """[B,4] float: the first box of each image, NaN row where an image has none.

    Accepts the collated list of [K_i, 4] tensors, or a [B, K, 4] / [B, 4] tensor.
    """
    if isinstance(raw, Tensor):
        boxes = raw.float()
        if boxes.dim() == 3:
            boxes = boxes[:, 0] if boxes.shape[1] > 0 else torch.full((boxes.shape[0], 4), float("nan"))
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes: expected [B,4], [B,K,4] or a list of [K,4] tensors, got {tuple(raw.shape)}.")
        return boxes
    rows = []
    device = next((b.device for b in raw if isinstance(b, Tensor)), torch.device("cpu"))
    for b in raw:
        b = torch.as_tensor(b, dtype=torch.float32, device=device).reshape(-1, 4)
        rows.append(b[0] if b.shape[0] > 0 else torch.full((4,), float("nan"), device=device))
    if not rows:
        raise ValueError("boxes: empty batch.")
    return torch.stack(rows)


def make_task(name: str, **info: Any) -> Task:
    """Build a :class:`Task` from its name and the dataset's ``task_info[name]`` entry.

    Recognised keys: ``num_classes`` and ``class_names`` (label tasks; ``num_classes`` may be inferred from the
    names; binary defaults to 2) and the row's ``options``: ``absent`` ("exclude" | "zero": DLAD counts a class
    absent from the split as IoU 0), ``per_image`` (segmentation meters); ``depth_loss`` ("l1" | "mse"),
    ``depth_mean``, ``depth_std``, ``depth_mode`` ("pixel" | "per_batch"), ``depth_clamp``; ``median``
    ("exact" | "histogram") and ``normals_mode`` ("pixel" | "per_batch", MTAN's) for normals; ``pos_weight``,
    ``tolerance``, ``thresholds`` (edge/saliency). Other keys are kept in ``Task.info`` (so are a box task's
    ``num_classes``/``class_names``, which label its boxes, not its 4 outputs).
    """
    spec = spec_of(name)
    info = dict(info)
    # a box task's classes label its boxes (``box_labels``), not model outputs: they stay in ``info``
    num_classes = info.pop("num_classes", None) if spec.kind != "box" else None
    class_names = info.pop("class_names", None) if spec.kind != "box" else None
    if spec.is_label:
        if num_classes is None and class_names is not None:
            num_classes = len(class_names)
        if num_classes is None:
            num_classes = spec.default_classes
        if num_classes is None:
            raise ValueError(
                f"task {name!r} needs num_classes: make_task({name!r}, num_classes=...) or pass the dataset's "
                f"task_info[{name!r}] (which should hold num_classes)."
            )
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"task {name!r}: num_classes must be a positive integer, got {num_classes!r}.")
        num_classes = int(num_classes)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"task {name!r}: {len(class_names)} class_names for num_classes={num_classes}.")
        out_channels = num_classes
    else:
        if num_classes is not None:
            raise ValueError(f"task {name!r} is a regression task; it takes no num_classes (got {num_classes}).")
        out_channels = spec.out_channels
    loss_options = dict(spec.loss_defaults)
    meter_options: dict[str, Any] = {}
    if spec.is_label:
        meter_options["num_classes"] = num_classes
        if class_names is not None:
            meter_options["class_names"] = list(class_names)
    for key, (target, arg) in spec.options.items():
        if key in info:
            (loss_options if target == "loss" else meter_options)[arg] = info.pop(key)
    task = Task(
        name=name, kind=spec.kind, out_channels=out_channels, num_classes=num_classes if spec.is_label else None,
        delta_metric=spec.delta_metric, higher_is_better=spec.higher_is_better,
        class_names=tuple(class_names) if class_names is not None else None,
        loss_options=loss_options, meter_options=meter_options, info=info,
    )
    _validate_options(task)
    return task


def _validate_options(task: Task) -> None:
    """Fail at construction (not mid-training) on a bad option value."""
    kind = task.loss_options.get("kind")
    if kind is not None and kind not in losses.DEPTH_LOSSES:
        raise ValueError(f"unknown depth_loss {kind!r}; valid choices: {', '.join(losses.DEPTH_LOSSES)}.")
    pos_weight = task.loss_options.get("pos_weight")
    if pos_weight is not None and not 0.0 <= float(pos_weight) <= 1.0:
        raise ValueError(f"task {task.name!r}: pos_weight must lie in [0, 1] (or None for batch balancing), "
                         f"got {pos_weight}.")
    task.meter()  # the meter validates its own options


def tasks_for(task_info: Mapping[str, Mapping[str, Any]] | Any) -> dict[str, Task]:
    """``{name: make_task(name, **info)}`` for a dataset's ``task_info`` (or a dataset that has one), in order."""
    if not isinstance(task_info, Mapping) and hasattr(task_info, "task_info"):
        task_info = task_info.task_info
    if not isinstance(task_info, Mapping):
        raise TypeError(f"tasks_for expects a dict task -> info (dataset.task_info), got {type(task_info).__name__}.")
    return {name: make_task(name, **dict(info or {})) for name, info in task_info.items()}
