"""The DeepLab notebooks (01-05, the DLAD course on street scenes): schedules per preset, setup, references."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mtlkit.course.common import (Setup, apply_overrides, check_preset, load_splits, make_setup,
                                  tasks_with_options)

__all__ = ["DEEPLAB_SCHEDULES", "REFERENCE_RESULTS", "MODEL_KEYS", "deeplab_schedule", "deeplab_tasks",
           "print_references", "setup"]

# Schedules per preset for the DeepLab notebooks (01-05); the reasons sit next to the keys.
# task_options: task -> options of its row in mtlkit.tasks (they reach the meter); presets other than paper leave an
# absent class out of the mean (the kit's default, docs/reference.md).
DEEPLAB_SCHEDULES: dict[str, dict[str, Any]] = {
    "unit": dict(
        data="synthetic-city",
        data_preset="unit",
        epochs=1,
        batch_size=4,
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        scheduler=None,
        encoder="resnet18",  # full DeepLabV3+ is ~0.7 s/step at 64x128 on 2 cores
        aspp_channels=16,  # narrow: parameter-count cells build the full model
        decoder_channels=16,
        skip_channels=8,
        loss_weights={"semseg": 0.5, "depth": 0.5},
        train_images=None,
        val_images=None,
        study_epochs=None,
        study_train_images=None,
        pretrained=False,
        task_options={},
    ),
    "smoke": dict(
        data="synthetic-city",
        data_preset="smoke",
        epochs=3,
        batch_size=8,
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        scheduler=None,
        encoder="resnet18",  # full DeepLabV3+ is ~0.7 s/step at 64x128 on 2 cores
        aspp_channels=64,  # narrow: parameter-count cells build the full model
        decoder_channels=64,
        skip_channels=24,
        loss_weights={"semseg": 0.5, "depth": 0.5},
        train_images=96,  # the first N images of the split (None: all)
        val_images=32,
        study_epochs=2,  # 02-05 train several models each: shorter study runs
        study_train_images=64,  # keeps the course within a few CPU minutes
        pretrained=False,
        task_options={},
    ),
    "lesson": dict(
        data="synthetic-city",
        data_preset="lesson",
        epochs=12,
        batch_size=8,
        optimizer="adam",
        lr=5e-4,
        weight_decay=1e-4,
        scheduler="poly",
        encoder="resnet34",
        aspp_channels=256,
        decoder_channels=256,
        skip_channels=48,
        loss_weights={"semseg": 0.5, "depth": 0.5},
        train_images=None,
        val_images=None,
        study_epochs=None,
        study_train_images=None,
        pretrained=False,
        task_options={},
    ),
    "paper": dict(
        data="miniscapes",
        data_preset="paper",
        epochs=16,
        batch_size=4,
        optimizer="sgd",  # the DLAD course recipe (docs/reference.md)
        lr=0.01,
        momentum=0.9,
        weight_decay=1e-4,
        scheduler="poly",
        power=0.9,
        encoder="resnet34",
        aspp_channels=256,
        decoder_channels=256,
        skip_channels=48,
        pretrained=True,
        loss_weights={"semseg": 0.5, "depth": 0.5},
        train_images=None,
        val_images=None,
        study_epochs=None,
        study_train_images=None,
        task_options={"semseg": {"absent": "zero"}},  # absent class = IoU 0, as DLAD's grader
    ),
}

# Numbers from the papers and courses (docs/reference.md), always shown labelled as references, never as kit results.
REFERENCE_RESULTS: dict[str, dict[str, Any]] = {
    "DLAD course (MiniScapes, ResNet-34, paper preset): grader score": {
        "template": 40.5, "joint + ImageNet + dilation + ASPP + skip": 62.3, "branched": 65.3,
        "distillation": 67.3, "best staff solution": 78.8,
    },
    "DLAD course: parameters with ResNet-34, 19 classes + depth (millions)": {
        "joint": 26.72, "branched": 32.14, "distillation": 36.87,
    },
}




#: The schedule keys that are build() options of the deeplab-* models.
MODEL_KEYS = ("encoder", "aspp_channels", "decoder_channels", "skip_channels", "pretrained")


def deeplab_schedule(preset: str, **overrides: Any) -> dict[str, Any]:
    """The DeepLab notebooks' schedule for ``preset`` (a copy), with ``overrides`` applied."""
    return {**DEEPLAB_SCHEDULES[check_preset(preset)], **overrides}


def deeplab_tasks(task_info: Mapping[str, Mapping[str, Any]], schedule: Mapping[str, Any]) -> dict[str, Any]:
    """``{task: Task}`` with the schedule's ``task_options`` (the paper preset: DLAD's IoU 0 for a class absent
    from the split)."""
    return tasks_with_options(task_info, schedule)

def setup(preset: str, *, data: str = "auto", seed: int = 0, device: str = "auto",
          out_dir: str | Path = "runs/notebooks/deeplab", study: bool = True, epochs: int | None = None,
          train_images: int | None = None, pretrained: bool | None = None, max_steps: int | None = None,
          **overrides: Any) -> Setup:
    """The :class:`~mtlkit.course.common.Setup` of a DeepLab notebook: MiniScapes-like data, semseg + depth.

    ``study=True`` (02-05, which train several models) uses the preset's study schedule where it has one (smoke:
    ``study_epochs`` on the first ``study_train_images``); ``study=False`` (01) the full one. ``epochs``,
    ``train_images``, ``pretrained`` and ``overrides`` (schedule entries, e.g. ``optimizer="sgd"``; None keeps the
    preset's) change it. Static loss weights: the schedule's ``loss_weights`` (the course's 0.5 / 0.5).
    """
    schedule = apply_overrides(DEEPLAB_SCHEDULES, preset, overrides, "deeplab.setup")  # unknown keys: an error
    if epochs is None:
        epochs = (study and schedule.get("study_epochs")) or schedule["epochs"]
    if train_images is None:
        train_images = (study and schedule.get("study_train_images")) or schedule.get("train_images")
    schedule["epochs"], schedule["train_images"] = int(epochs), train_images
    if pretrained is not None:
        schedule["pretrained"] = bool(pretrained)
    name = schedule["data"] if data == "auto" else data
    splits = load_splits(name, schedule["data_preset"], seed=seed)  # a real dataset says how to prepare it
    return make_setup(preset, name, schedule, splits, deeplab_tasks(splits["train"].task_info, schedule), MODEL_KEYS,
                      out_dir=out_dir, device=device, seed=seed, max_steps=max_steps,
                      loss_weights=schedule["loss_weights"])


def print_references() -> None:
    """The DLAD course's numbers (:data:`REFERENCE_RESULTS`), labelled as references: not results of this kit."""
    print("The paper preset scores mIoU as DLAD's grader does: a class absent from the evaluated split counts as "
          "IoU 0 (task option absent='zero'); the other presets leave such a class out of the mean.")
    for title, values in REFERENCE_RESULTS.items():
        print(f"REFERENCE (DLAD course, not produced here): {title}")
        for name, value in values.items():
            print(f"    {name:<45} {value}")
