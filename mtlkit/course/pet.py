"""Notebook 06 (cross-stitch networks on pet data): schedules per preset, the report's numbers, α recording.

The tasks are those of Oxford-IIIT Pet: ``semseg`` (background / pet / border trimap), ``boxes`` (the head box,
DIoU loss) and ``binary`` (cat / dog). The ``synthetic-pet`` variant has the same three; the ``paper`` preset reads
``oxpet-h5``, the course packaging of Oxford-IIIT Pet (256 x 256, background/pet masks, a head box for EVERY image;
``mtlkit data prepare oxpet-h5`` first). The official ``oxford-pet`` release has no head boxes for its test split,
so the box IoU could not be measured on it.

:class:`CrossStitchRecorder` is a Trainer callback that writes the units' mixing matrices after every epoch to
``<run dir>/alphas.json``, so the α heat maps can be drawn again when a finished run is loaded instead of trained.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from mtlkit.atomic import atomic_write_json
from mtlkit.course.common import Setup, apply_overrides, load_splits, make_setup

__all__ = ["PET_TASKS", "PET_SCHEDULES", "PET_REFERENCE", "pet_schedule", "pet_tasks", "CrossStitchRecorder",
           "load_alphas", "setup"]

#: The three tasks of the notebook, main task first (the sequential variant transfers the others into it).
PET_TASKS = ("semseg", "boxes", "binary")

# Every preset trains the full comparison (_FULL_GRID: the three single-task networks, the channel-wise network,
# both ablations, the scalar and shared unit forms and the sequential variant); presets differ in data and schedule.
# units_lr_mult: the paper's ~100x is for SGD. Under Adam each parameter moves ~lr per step whatever its gradient,
# so 100x would wash out the single-task start of α; 10x keeps the units clearly faster. SGD at 100x is no fix:
# the three unit forms' α gradients differ by 1-2 orders of magnitude (measured on a smoke batch).
_FULL_GRID = dict(ablations=("boxes", "binary"), variants=("channelwise", "scalar", "shared"), sequential=True)
PET_SCHEDULES: dict[str, dict[str, Any]] = {
    "unit": dict(
        data="synthetic-pet",
        data_preset="unit",
        data_options={},
        train_images=None,
        val_images=None,
        single_epochs=1,
        epochs=1,
        batch_size=4,
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        scheduler=None,
        units_lr_mult=10.0,  # not the paper's 100x: Adam, see above
        encoder="resnet18",
        pretrained=False,
        aspp_channels=16,
        decoder_channels=16,
        skip_channels=8,
        box_channels=16,
        **_FULL_GRID,  # the same 9 trainings in every preset
    ),
    "smoke": dict(
        data="synthetic-pet",
        data_preset="smoke",
        data_options={},
        train_images=64,
        val_images=16,
        single_epochs=1,
        epochs=1,  # one epoch per run: 8 steps of 8 images
        batch_size=8,
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        scheduler=None,
        units_lr_mult=10.0,  # not the paper's 100x: Adam, see above
        encoder="resnet18",  # no ImageNet weights, narrow heads, 64 px on CPU
        pretrained=False,
        aspp_channels=32,
        decoder_channels=32,
        skip_channels=16,
        box_channels=32,
        **_FULL_GRID,  # the same 9 trainings in every preset
    ),
    # lesson: 128 px, the first 320 training and 96 validation images, 4 epochs per run
    "lesson": dict(
        data="synthetic-pet",
        data_preset="lesson",
        data_options={},
        train_images=320,
        val_images=96,
        single_epochs=4,
        epochs=4,
        batch_size=16,
        optimizer="adam",
        lr=5e-4,
        weight_decay=1e-4,
        scheduler="cosine",
        units_lr_mult=10.0,  # not the paper's 100x: Adam, see above
        encoder="resnet18",
        pretrained=False,
        aspp_channels=64,
        decoder_channels=64,
        skip_channels=32,
        box_channels=64,
        **_FULL_GRID,  # the same 9 trainings in every preset
    ),
    "paper": dict(
        data="oxpet-h5",
        data_preset="paper",
        data_options={},
        train_images=None,
        val_images=None,
        single_epochs=20,
        epochs=20,
        batch_size=16,
        optimizer="adam",
        lr=1e-4,
        weight_decay=1e-4,
        scheduler="cosine",
        units_lr_mult=10.0,  # not the paper's 100x: Adam, see above
        encoder="resnet34",
        pretrained=True,
        aspp_channels=256,
        decoder_channels=256,
        skip_channels=48,
        box_channels=256,
        **_FULL_GRID,  # the same 9 trainings in every preset
    ),
}

#: The indicative Oxford-IIIT Pet numbers of docs/reference.md ("Recipes"): one report's three-task cross-stitch
#: model, test split, in the kit's units (percent). A reference to compare the paper preset with, never a result of
#: this kit.
PET_REFERENCE: dict[str, float] = {"semseg/miou": 81.0, "boxes/mean_iou": 76.0, "binary/accuracy": 92.0}

#: The model options a schedule holds (the rest are data and Trainer settings).
MODEL_KEYS = ("encoder", "pretrained", "aspp_channels", "decoder_channels", "skip_channels", "box_channels")
TRAINER_KEYS = ("batch_size", "optimizer", "lr", "weight_decay", "scheduler")


def pet_schedule(preset: str, **overrides: Any) -> dict[str, Any]:
    """Notebook 06's schedule for ``preset`` (a copy) with ``overrides`` applied (unknown keys are an error)."""
    return apply_overrides(PET_SCHEDULES, preset, overrides, "pet_schedule")


def pet_tasks(task_info: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``{name: Task}`` for :data:`PET_TASKS` from a pet dataset's ``task_info``.

    The pet datasets describe the boxes' labels (cat / dog) in ``task_info["boxes"]``; those are the classes of
    ``box_labels``, not outputs of the box regression (4 coordinates), so they are not passed to ``make_task``
    (which refuses ``num_classes`` for a regression task). Pass the result to the Trainer as ``tasks=``.
    """
    from mtlkit.tasks import make_task

    missing = [t for t in PET_TASKS if t not in task_info]
    if missing:
        raise ValueError(f"pet_tasks: the dataset does not label {missing}; it labels {list(task_info)} "
                         "(use synthetic-pet, oxford-pet or oxpet-h5)")
    return {t: make_task(t, **({} if t == "boxes" else dict(task_info[t] or {}))) for t in PET_TASKS}


class CrossStitchRecorder:
    """Trainer callback: the mixing matrices of ``model.alphas()`` at the start and after every epoch.

    Writes ``<trainer.out_dir>/alphas.json``: ``{"branches": [...], "tasks": [...], "epochs": [-1, 0, 1, ...],
    "alphas": [[unit 0 [T_out][N], unit 1, ...] per entry]}``; epoch -1 is the initialisation. A resumed run keeps
    the entries of the epochs it had finished.
    """

    filename = "alphas.json"

    def __init__(self) -> None:
        self.record: dict[str, Any] = {}

    def _write(self, trainer: Any) -> None:
        atomic_write_json(Path(trainer.out_dir) / self.filename, self.record)

    def _snapshot(self, trainer: Any) -> list[list[list[float]]]:
        return [a.cpu().tolist() for a in trainer.model.alphas()]

    def on_fit_start(self, trainer: Any) -> None:
        model = trainer.model
        if not hasattr(model, "alphas"):
            raise TypeError(f"CrossStitchRecorder needs a model with alphas() (a cross-stitch network); got "
                            f"{type(model).__name__}")
        start = int(getattr(trainer, "start_epoch", 0))
        old = load_alphas(trainer.out_dir) if start > 0 else None
        if old is not None:  # resumed: keep the init and the finished epochs
            keep = [i for i, e in enumerate(old["epochs"]) if e < start]
            self.record = {**old, "epochs": [old["epochs"][i] for i in keep],
                           "alphas": [old["alphas"][i] for i in keep]}
        else:
            self.record = {"branches": list(getattr(model, "branch_names", ())), "tasks": list(model.tasks),
                           "epochs": [-1], "alphas": [self._snapshot(trainer)]}
        if trainer.dist.is_main:
            self._write(trainer)

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        self.record["epochs"].append(int(epoch))
        self.record["alphas"].append(self._snapshot(trainer))
        if trainer.dist.is_main:
            self._write(trainer)


def load_alphas(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``alphas.json`` a :class:`CrossStitchRecorder` wrote in ``run_dir``, or None when there is none."""
    path = Path(run_dir) / CrossStitchRecorder.filename
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and "alphas" in data else None


def setup(preset: str, *, data: str = "auto", seed: int = 0, device: str = "auto",
          out_dir: str | Path = "runs/notebooks/pet", pretrained: bool | None = None, max_steps: int | None = None,
          **overrides: Any) -> Setup:
    """The :class:`~mtlkit.course.common.Setup` of notebook 06: pet data, :data:`PET_TASKS`, the schedule's first
    images; ``overrides`` change schedule entries (None keeps the preset's)."""
    schedule = pet_schedule(preset, **{k: v for k, v in overrides.items() if v is not None})
    if pretrained is not None:
        schedule["pretrained"] = bool(pretrained)
    name = schedule["data"] if data == "auto" else data
    splits = load_splits(name, schedule["data_preset"], seed=seed, **schedule["data_options"])
    return make_setup(preset, name, schedule, splits, pet_tasks(splits["train"].task_info), MODEL_KEYS,
                      out_dir=out_dir, device=device, seed=seed, max_steps=max_steps)
