"""Presets and reference numbers of the PASCAL-Context notebook (09, Task Switching Networks).

The paper preset is the TSN recipe on the real PASCAL-Context multi-task data (``pascal-mt``: edge, semseg 21,
human parts 7, normals, saliency): ResNet-18 from ImageNet, Adam with encoder lr 1e-6 and decoder lr 1e-4, the
paper's loss weights, tasks switched per epoch. The CPU presets run the same code on ``synthetic-pascal`` with a
narrow decoder, no ImageNet weights (so the encoder trains at the full lr) and tasks switched per iteration (with
one or a few epochs, switching per epoch would leave tasks untrained and let the last task's epoch dominate).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mtlkit.course.common import (Setup, apply_overrides, first_images, knob_overrides, load_splits, make_setup,
                                  subset)

__all__ = ["TSN_SCHEDULES", "TSN_REFERENCE", "PASCAL_TASK_CHANNELS", "tsn_schedule", "pascal_splits", "setup"]

#: PASCAL-Context's five tasks with the paper's output channels (21 classes, 7 human parts incl. background).
PASCAL_TASK_CHANNELS: dict[str, int] = {"edge": 1, "semseg": 21, "parts": 7, "normals": 3, "saliency": 1}

# Per preset: data, model, optimiser and switching, the single-task baselines to train and the task codes to
# compare (code_grid: (kind, d) pairs beside the main run).
TSN_SCHEDULES: dict[str, dict[str, Any]] = {
    "unit": dict(
        data="synthetic-pascal",
        data_preset="unit",
        data_options={},
        train_images=None,
        val_images=None,
        epochs=1,
        batch_size=4,
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        param_groups=None,
        encoder="resnet18",
        pretrained=False,
        decoder_channels=(16, 8, 8, 8, 8),
        task_schedule="iteration",
        single_task=("semseg",),
        code_grid=(),
    ),
    "smoke": dict(
        data="synthetic-pascal",
        data_preset="smoke",
        data_options={},
        train_images=96,  # the first 96 of 192: one epoch is 12 steps of 8
        val_images=32,
        epochs=1,
        batch_size=8,
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        param_groups=None,
        encoder="resnet18",
        pretrained=False,
        decoder_channels=(64, 32, 32, 32, 16),
        task_schedule="iteration",
        single_task=("edge", "semseg", "parts", "normals", "saliency"),  # every baseline, so Δm covers every task
        code_grid=(("gaussian", 100), ("orthogonal", 10)),  # beside orthogonal d=100 (the main run)
    ),
    "lesson": dict(
        data="synthetic-pascal",
        data_preset="lesson",
        data_options={},
        train_images=None,
        val_images=None,
        epochs=10,
        batch_size=16,
        optimizer="adam",
        lr=5e-4,
        weight_decay=0.0,
        param_groups=None,
        encoder="resnet18",
        pretrained=False,
        decoder_channels=(512, 256, 256, 128, 64),
        task_schedule="iteration",
        single_task=("edge", "semseg", "parts", "normals", "saliency"),
        code_grid=(("gaussian", 100), ("orthogonal", 10), ("gaussian", 10), ("orthogonal", 500)),
    ),
    # The paper's recipe, but for the number of epochs.
    "paper": dict(
        data="pascal-mt",
        data_preset="paper",
        data_options={"size": (512, 512)},
        train_images=None,
        val_images=None,
        epochs=50,  # the kit's choice: 10 per task, switching per epoch
        batch_size=8,
        optimizer="adam",
        lr=1e-4,
        weight_decay=0.0,
        param_groups=[("encoder", 0.01)],
        encoder="resnet18",
        pretrained=True,
        decoder_channels=(512, 256, 256, 128, 64),
        task_schedule="epoch",
        single_task=("edge", "semseg", "parts", "normals", "saliency"),
        code_grid=(("gaussian", 100), ("orthogonal", 10), ("gaussian", 10), ("orthogonal", 500)),
    ),
}

#: Sun et al. (ICCV 2021), PASCAL-Context, ResNet-18 (docs/reference.md, "Recipes"), in the kit's metric names
#: (percent, degrees). References for the paper preset, never results of this kit.
TSN_REFERENCE: dict[str, dict[str, float]] = {
    "TSN (paper)": {"edge/ods_f": 70.6, "semseg/miou": 64.2, "parts/miou": 55.0, "normals/mean": 16.3,
                    "saliency/max_f": 63.3},
    "single-task (paper)": {"edge/ods_f": 71.3, "semseg/miou": 64.3, "parts/miou": 55.5, "normals/mean": 16.3,
                            "saliency/max_f": 62.9},
}

# pascal-mt has only train and val; the paper reports val. The kit holds out the last images of train to select
# the best epoch (selection on the reported split would flatter the result).
PASCAL_MT_HELD_OUT = 500


def tsn_schedule(preset: str, **overrides: Any) -> dict[str, Any]:
    """Notebook 09's schedule for ``preset`` (a copy), with ``overrides`` applied (unknown keys are an error)."""
    return apply_overrides(TSN_SCHEDULES, preset, overrides, "tsn_schedule")


def pascal_splits(schedule: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """``{"train", "val", "test"}`` for a schedule of :data:`TSN_SCHEDULES` (``train_images`` and ``val_images``:
    the first images of those splits; the test split is always whole).

    Synthetic data has all three splits. ``pascal-mt`` has train and val: the last
    ``min(PASCAL_MT_HELD_OUT, len(train) // 5)`` training images (at least one; 500 on the real data) become the
    validation split and the official val split is the test split (the one the paper reports).
    """
    name, preset, options = schedule["data"], schedule["data_preset"], dict(schedule.get("data_options") or {})
    if name == "pascal-mt":
        from mtlkit.data import get_dataset

        train = get_dataset(name, "train", preset=preset, **options)
        cut = len(train) - min(PASCAL_MT_HELD_OUT, max(1, len(train) // 5))  # a format twin has a handful of images
        if cut < 1:
            raise ValueError(f"pascal-mt train has {len(train)} image(s); holding one out for validation needs at "
                             "least two. Check the prepared data (mtlkit data verify pascal-mt)")
        splits = {"train": subset(train, range(cut)), "val": subset(train, range(cut, len(train))),
                  "test": get_dataset(name, "val", preset=preset, **options)}
    else:
        splits = load_splits(name, preset, seed=seed, **options)
    return first_images(splits, schedule.get("train_images"), schedule.get("val_images"))


#: The schedule keys that are build() options of ``tsn`` and ``unet``.
MODEL_KEYS = ("encoder", "pretrained", "decoder_channels")


def setup(preset: str, *, data: str = "auto", seed: int = 0, device: str = "auto",
          out_dir: str | Path = "runs/notebooks/pascal", pretrained: bool | None = None,
          max_steps: int | None = None, **overrides: Any) -> Setup:
    """The :class:`~mtlkit.course.common.Setup` of notebook 09: PASCAL-Context-like data, five tasks, TSN's loss
    weights. The task switching (``task_schedule``) is a Trainer option of the TSN runs only."""
    from mtlkit.models.tsn import TSN_LOSS_WEIGHTS
    from mtlkit.tasks import tasks_for

    schedule = tsn_schedule(preset, **knob_overrides(overrides, data, pretrained))
    splits = pascal_splits(schedule, seed=seed)  # the real dataset says how to prepare it when it is missing
    tasks = tasks_for(splits["train"].task_info)
    return make_setup(preset, schedule["data"], schedule, splits, tasks, MODEL_KEYS, out_dir=out_dir,
                      device=device, seed=seed, max_steps=max_steps, cut=False,
                      loss_weights={t: TSN_LOSS_WEIGHTS.get(t, 1.0) for t in tasks})
