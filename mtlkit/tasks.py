"""Task registry: what each task predicts, how it is trained (loss) and scored (meter, Δm metric, direction).

Models and the Trainer talk about tasks by name only; everything task-specific lives here::

    tasks = tasks_for(dataset.task_info)            # {"semseg": Task(...), "depth": Task(...), ...}
    model = build("tiny", {n: t.out_channels for n, t in tasks.items()})
    loss = sum(t.loss(preds[n], batch) for n, t in tasks.items())
    meters = {n: t.meter() for n, t in tasks.items()}; meters[n].update(preds[n], t.target(batch))

Prediction conventions (at input resolution): semseg/parts/material logits [B,C,H,W]; depth [B,1,H,W] metres;
normals [B,3,H,W] (any length); edge/saliency logits [B,1,H,W]; scene/texture/binary/category logits [B,C];
boxes [B,4] xyxy pixels (one box per image).

Targets (:meth:`Task.target`), with images whose ``meta["tasks"]`` does not list the task filled with ignore values:
labels [B,H,W] / [B] int64 (-1 = ignore); depth [B,1,H,W] float metres (0 = invalid); normals [B,3,H,W] (all-zero
= invalid); edge/saliency [B,1,H,W] float {0,1} (-1 = ignore); boxes [B,4] float xyxy, the image's FIRST ground-truth
box, with a NaN row for an image without a box.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mtlkit import losses
from mtlkit.metrics import METER_CLASSES, Meter, meter

__all__ = ["TASK_KINDS", "TASK_SPECS", "TaskSpec", "Task", "make_task", "tasks_for"]

TASK_KINDS: dict[str, str] = {
    "semseg": "dense", "parts": "dense", "material": "dense", "depth": "dense", "normals": "dense",
    "edge": "dense", "saliency": "dense", "scene": "image", "texture": "image", "binary": "image",
    "category": "image", "boxes": "box",
}


@dataclass(frozen=True)
class TaskSpec:
    """Static facts of a task type.

    Attributes:
        kind: "dense", "image" or "box" (:data:`TASK_KINDS`).
        delta_metric: the meter key that represents the task in Δm.
        higher_is_better: direction of ``delta_metric``.
        out_channels: fixed output channels, or None when it is ``num_classes`` (label tasks).
        default_classes: ``num_classes`` when the dataset does not say (binary: cat/dog).
    """

    kind: str
    delta_metric: str
    higher_is_better: bool
    out_channels: int | None = None
    default_classes: int | None = None

    @property
    def is_label(self) -> bool:
        """True for classification-style tasks (predict class logits, need ``num_classes``)."""
        return self.out_channels is None


TASK_SPECS: dict[str, TaskSpec] = {
    "semseg": TaskSpec("dense", "miou", True),
    "parts": TaskSpec("dense", "miou", True),
    "material": TaskSpec("dense", "miou", True),
    "depth": TaskSpec("dense", "abs_err", False, out_channels=1),
    "normals": TaskSpec("dense", "mean", False, out_channels=3),
    "edge": TaskSpec("dense", "ods_f", True, out_channels=1),
    "saliency": TaskSpec("dense", "max_f", True, out_channels=1),
    "scene": TaskSpec("image", "accuracy", True),
    "texture": TaskSpec("image", "accuracy", True),
    "binary": TaskSpec("image", "accuracy", True, default_classes=2),
    "category": TaskSpec("image", "accuracy", True),
    "boxes": TaskSpec("box", "mean_iou", True, out_channels=4),
}
assert set(TASK_SPECS) == set(TASK_KINDS) == set(METER_CLASSES)

# Options make_task understands, per task: option -> (goes to "loss" | "meter", name of the argument there).
_LABEL_METER = {"absent": ("meter", "absent"), "per_image": ("meter", "per_image")}
_OPTIONS: dict[str, dict[str, tuple[str, str]]] = {
    "semseg": _LABEL_METER, "parts": _LABEL_METER, "material": _LABEL_METER,
    "depth": {
        "depth_loss": ("loss", "kind"), "depth_mean": ("loss", "mean"), "depth_std": ("loss", "std"),
        "depth_mode": ("meter", "mode"), "depth_clamp": ("meter", "clamp"),
    },
    "normals": {"median": ("meter", "median")},
    "edge": {"pos_weight": ("loss", "pos_weight"), "tolerance": ("meter", "tolerance"),
             "thresholds": ("meter", "thresholds")},
    "saliency": {"pos_weight": ("loss", "pos_weight"), "thresholds": ("meter", "thresholds")},
}
_LOSS_DEFAULTS: dict[str, dict[str, Any]] = {
    "depth": {"kind": "l1"},
    "edge": {"pos_weight": losses.EDGE_POS_WEIGHT},
    "saliency": {"pos_weight": None},  # balanced by the batch's positive fraction
}
# ignore value written into the target of an image that does not label the task
_FILL = {"dense-label": -1, "depth": 0.0, "normals": 0.0, "edge": -1.0, "saliency": -1.0, "image": -1}


@dataclass(frozen=True)
class Task:
    """One task of a multi-task problem (build with :func:`make_task` / :func:`tasks_for`).

    Attributes:
        name: task name (a key of :data:`TASK_KINDS`).
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
    def metric_keys(self) -> tuple[str, ...]:
        """The keys this task's meter reports."""
        return METER_CLASSES[self.name].keys

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
        if self.kind == "box":
            target = _first_boxes(raw)
            fill: float = float("nan")
        elif self.kind == "image":
            target = torch.as_tensor(raw).long().reshape(-1)
            fill = _FILL["image"]
        elif self.num_classes is not None:
            target = raw.long()
            fill = _FILL["dense-label"]
        else:
            target = raw.float() if not raw.is_floating_point() else raw
            fill = _FILL[self.name]
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
        target = self.target(batch).to(pred.device)
        if self.num_classes is not None:
            return losses.cross_entropy(pred, target)
        if self.name == "depth":
            return losses.depth_loss(pred, target, **self.loss_options)
        if self.name == "normals":
            return losses.normals_cosine(pred, target)
        if self.name in ("edge", "saliency"):
            return losses.balanced_bce(pred, target, **self.loss_options)
        if self.name == "boxes":
            return losses.diou_loss(pred, target)
        raise AssertionError(f"no loss for task {self.name!r}")  # unreachable: every registered task is covered

    def meter(self) -> Meter:
        """A fresh streaming meter for this task (update with ``(pred, task.target(batch))``)."""
        return meter(self.name, **self.meter_options)


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
    names; binary defaults to 2); options ``absent``, ``per_image`` (segmentation meters); ``depth_loss``
    ("l1" | "mse"), ``depth_mean``, ``depth_std``, ``depth_mode`` ("pixel" | "per_batch"), ``depth_clamp``;
    ``median`` ("exact" | "histogram", normals); ``pos_weight``, ``tolerance``, ``thresholds`` (edge/saliency).
    Other keys are kept in ``Task.info``.
    """
    if name not in TASK_SPECS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASK_SPECS)}.")
    spec = TASK_SPECS[name]
    info = dict(info)
    num_classes = info.pop("num_classes", None)
    class_names = info.pop("class_names", None)
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
    loss_options = dict(_LOSS_DEFAULTS.get(name, {}))
    meter_options: dict[str, Any] = {}
    if spec.is_label:
        meter_options["num_classes"] = num_classes
        if class_names is not None:
            meter_options["class_names"] = list(class_names)
    for key, (target, arg) in _OPTIONS.get(name, {}).items():
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
