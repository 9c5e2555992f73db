"""Notebook 07 (MTAN on NYUv2-like data): schedules per preset and backbone, augmentation, models, references.

Two backbones, chosen by the notebook's ``BACKBONE`` parameter: ``"segnet"``, the MTAN paper's table (One Task,
STAN, Split, Dense, Cross-stitch, MTAN on :mod:`mtlkit.models.segnet`), and ``"resnet50"``, LibMTL's NYUv2 setting
(a dilated ResNet shared by the tasks with one ASPP head per task, and MTAN's attention over it). Each ``paper``
preset is its authors' recipe; the CPU presets shrink the model (docs/contracts.md, "Presets").

Training augmentation (paper and lesson presets) is the MTAN code's random scale-and-crop with depth divided by the
scale, then a horizontal flip. ``nyuv2`` has only train and val, and both papers report val: :func:`nyu_splits`
makes val the test split and uses no validation split. The ``*_REFERENCE`` tables are the papers' numbers in the
kit's units, references beside the paper preset's results, never results of this kit.

The recipes, the augmentation and the splits in full: docs/course.md, "07 MTAN on NYUv2".
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.nn as nn

from mtlkit.course.common import (Setup, check_preset, first_images, knob_overrides, make_setup,
                                  tasks_with_options)

__all__ = ["NYU_TASK_CHANNELS", "BACKBONES", "NYU_WEIGHTINGS", "AUGMENT_SCALES", "SEGNET_ROWS", "RESNET_ROWS",
           "SINGLE_TASK_ROWS", "NYU_SCHEDULES", "MTAN_NYUV2_REFERENCE", "LIBMTL_NYUV2_REFERENCE",
           "MTAN_PARAMETERS_REFERENCE", "REFERENCE_SOURCES", "nyu_schedule", "nyu_trainer_kwargs", "nyu_model_spec",
           "nyu_model", "nyu_augmentation", "nyu_splits", "nyu_references", "nyu_tasks", "run_options", "setup"]

#: The three tasks of the MTAN paper's NYUv2 experiment and their output channels (13 classes).
NYU_TASK_CHANNELS: dict[str, int] = {"semseg": 13, "depth": 1, "normals": 3}
BACKBONES = ("segnet", "resnet50")
NYU_WEIGHTINGS = ("equal", "dwa", "uncertainty")
#: Scale range of the training augmentation (the MTAN code's RandomScaleCrop: 1.0 to 1.5).
AUGMENT_SCALES = (1.0, 1.5)

#: Row of the MTAN paper's table -> (registry name, options). "split" is Split-standard. "cross-stitch" is the row of
#: MTAN's table, whose form the schedule sets (every preset: one shared mixture per stage, initialised to 1, trained
#: from scratch with the network's learning rate, as the MTAN authors' code); "cross-stitch-channelwise" is Misra et
#: al.'s own form (channel-wise units, 0.9 / 0.1), started from the single-task SegNets with faster units
#: (``channelwise_init``, ``channelwise_units_lr_mult``): its own labelled row, not MTAN's (docs/fidelity.md).
SEGNET_ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "single": ("segnet-single", {}),
    "stan": ("segnet-stan", {}),
    "split": ("segnet-split", {"variant": "standard"}),
    "split-standard": ("segnet-split", {"variant": "standard"}),
    "split-wide": ("segnet-split", {"variant": "wide"}),
    "split-deep": ("segnet-split", {"variant": "deep"}),
    "dense": ("segnet-dense", {}),
    "cross-stitch": ("segnet-cross-stitch", {}),
    "cross-stitch-channelwise": ("segnet-cross-stitch", {"mode": "channelwise"}),
    "mtan": ("segnet-mtan", {}),
}
#: LibMTL's rows: the single-task baseline is resnet-shared with one task. The heads have LibMTL's dropout (the
#: model's default 0.5) and its final upsampling (align_corners=True); docs/fidelity.md lists the rest.
_LIBMTL_FORM: dict[str, Any] = {"align_corners": True}
RESNET_ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "single": ("resnet-shared", dict(_LIBMTL_FORM)),
    "shared": ("resnet-shared", dict(_LIBMTL_FORM)),
    "mtan": ("resnet-mtan", dict(_LIBMTL_FORM)),
}
#: Rows that are one network per task (trained once per task and reported as one row).
SINGLE_TASK_ROWS = ("single", "stan")

_ALL = list(NYU_WEIGHTINGS)
_DATA_KEYS = ("data", "data_preset", "train_images", "val_images", "augment")

# Per preset: the data (shared by both backbones), then per backbone the Trainer settings, the model options and the
# grid {row: [weightings]} (the single-task baselines of Δm are always trained, once per task, under Equal).
# _MTAN_CROSS_STITCH: "cross-stitch" is MTAN's row (one shared mixture per stage, init 1, from scratch, one optimiser,
# as the MTAN code); "cross-stitch-channelwise" is Misra et al.'s recipe (channel-wise units started from the trained
# single-task SegNets). Its units get 10x, not the paper's ~100x: that is for SGD, and under Adam every parameter
# moves ~lr per step, so 100x would wash out the single-task start within an epoch (as notebook 06).
_MTAN_CROSS_STITCH = dict(cross_stitch="shared", cross_stitch_init="scratch", units_lr_mult=1.0,
                          channelwise_init="single-task", channelwise_units_lr_mult=10.0)
# task_options: task -> options of its row in mtlkit.tasks (they reach the meter).
_MTAN_METERS = {"depth": {"depth_mode": "per_batch"}, "normals": {"normals_mode": "per_batch"}}
NYU_SCHEDULES: dict[str, dict[str, Any]] = {
    "unit": dict(
        data="synthetic-nyu",
        data_preset="unit",
        train_images=None,
        val_images=None,
        augment=False,
        segnet=dict(
            epochs=3,
            batch_size=4,
            optimizer="adam",
            lr=1e-3,
            weight_decay=0.0,
            scheduler=None,
            step_size=None,
            gamma=None,
            drop_last=False,
            width_mult=0.125,
            **_MTAN_CROSS_STITCH,
            task_options={},
            grid={"mtan": _ALL, "split": ["equal"]},
        ),
        resnet50=dict(
            epochs=1,
            batch_size=4,
            optimizer="adam",
            lr=1e-3,
            weight_decay=0.0,
            scheduler=None,
            step_size=None,
            gamma=None,
            drop_last=False,
            encoder="resnet18",  # a preset may shrink the model (docs/contracts.md)
            output_stride=8,
            pretrained=False,
            aspp_channels=16,
            aspp_pooling_norm="group",  # the last batch may hold one image
            task_options={},
            grid={"shared": ["equal"], "mtan": ["equal"]},
        ),
    ),
    "smoke": dict(
        data="synthetic-nyu",
        data_preset="smoke",
        train_images=64,  # the first 64 of 192 training images
        val_images=32,
        augment=False,
        segnet=dict(
            epochs=3,  # DWA changes its weights from the third epoch on
            batch_size=8,
            optimizer="adam",
            lr=1e-3,
            weight_decay=0.0,
            scheduler=None,
            step_size=None,
            gamma=None,
            drop_last=False,
            width_mult=0.125,  # full SegNet-MTAN: ~3 s per step on 2 cores
            **_MTAN_CROSS_STITCH,
            task_options={},
            grid={"mtan": _ALL, "split": ["equal"]},  # MTAN x 3 weightings, Split under Equal
        ),
        resnet50=dict(
            epochs=3,
            batch_size=8,
            optimizer="adam",
            lr=1e-3,
            weight_decay=0.0,
            scheduler=None,
            step_size=None,
            gamma=None,
            drop_last=False,
            encoder="resnet18",  # a preset may shrink the model (docs/contracts.md)
            output_stride=8,
            pretrained=False,
            aspp_channels=32,
            aspp_pooling_norm="group",  # the last batch may hold one image
            task_options={},
            grid={"shared": ["equal"], "mtan": _ALL},
        ),
    ),
    # lesson: CPU, tens of minutes
    "lesson": dict(
        data="synthetic-nyu",
        data_preset="lesson",
        train_images=None,
        val_images=None,
        augment=True,
        segnet=dict(
            epochs=20,
            batch_size=8,
            optimizer="adam",
            lr=5e-4,
            weight_decay=0.0,
            scheduler=None,
            step_size=None,
            gamma=None,
            drop_last=False,
            width_mult=0.5,
            **_MTAN_CROSS_STITCH,
            task_options={},
            grid={m: _ALL for m in ("stan", "split", "mtan")},
        ),
        resnet50=dict(
            epochs=20,
            batch_size=8,
            optimizer="adam",
            lr=5e-4,
            weight_decay=0.0,
            scheduler=None,
            step_size=None,
            gamma=None,
            drop_last=False,
            encoder="resnet18",  # a preset may shrink the model (docs/contracts.md)
            output_stride=8,
            pretrained=False,
            aspp_channels=64,
            aspp_pooling_norm="group",  # the last batch may hold one image
            task_options={},
            grid={"shared": _ALL, "mtan": _ALL},
        ),
    ),
    # paper: the real NYUv2 (MTAN preprocessing, 288x384), both authors' recipes (docs/reference.md)
    "paper": dict(
        data="nyuv2",
        data_preset="paper",
        train_images=None,
        val_images=None,
        augment=True,
        segnet=dict(
            epochs=200,
            batch_size=2,  # Adam 1e-4 halved every 100 epochs: the MTAN code
            optimizer="adam",
            lr=1e-4,
            weight_decay=0.0,
            scheduler="step",
            step_size=100,
            gamma=0.5,
            drop_last=False,
            width_mult=1.0,
            **_MTAN_CROSS_STITCH,
            task_options=_MTAN_METERS,  # per-batch depth/normals means, as MTAN's code
            grid={m: _ALL for m in ("stan", "split-wide", "split-deep", "dense", "cross-stitch",
                                    "cross-stitch-channelwise", "mtan")},
        ),
        resnet50=dict(
            epochs=200,
            batch_size=8,  # LibMTL's examples/nyu recipe
            optimizer="adam",
            lr=1e-4,
            weight_decay=1e-5,
            scheduler="step",
            step_size=100,
            gamma=0.5,
            drop_last=True,  # LibMTL drops the last incomplete batch
            encoder="resnet50.tv_in1k",
            output_stride=8,
            pretrained=True,
            aspp_channels=256,
            aspp_pooling_norm="batch",  # the authors' BatchNorm (batch 8, last dropped)
            task_options={},  # LibMTL's means are the kit's default
            grid={"shared": ["equal"], "mtan": ["equal"]},
        ),
    ),
}

#: MTAN paper, NYUv2 (MTAN preprocessing, 13 classes), SegNet-MTAN with augmentation, mean of 3 seeds
#: (docs/reference.md);
#: parameters_M: the full-size SegNet-MTAN, 1.77x one single-task SegNet.
MTAN_NYUV2_REFERENCE: dict[str, dict[str, float]] = {
    "mtan-equal": {"parameters_M": 44.23, "semseg/miou": 40.89, "semseg/pixel_acc": 66.14, "depth/abs_err": 0.5524,
                   "depth/rel_err": 0.2347, "normals/mean": 27.27},
    "mtan-dwa": {"parameters_M": 44.23, "semseg/miou": 40.50, "semseg/pixel_acc": 65.65, "depth/abs_err": 0.5358,
                 "depth/rel_err": 0.2222, "normals/mean": 27.58},
    "mtan-uncertainty": {"parameters_M": 44.23, "semseg/miou": 39.34, "semseg/pixel_acc": 64.88,
                         "depth/abs_err": 0.5294, "depth/rel_err": 0.2242, "normals/mean": 26.47},
}
#: LibMTL, NYUv2, ResNet-50 dilated + ASPP heads, Equal weighting (docs/reference.md): shared encoder (HPS) and MTAN.
LIBMTL_NYUV2_REFERENCE: dict[str, dict[str, float]] = {
    "shared-equal": {"semseg/miou": 54.10, "semseg/pixel_acc": 75.78, "depth/abs_err": 0.3771,
                     "depth/rel_err": 0.1596, "normals/mean": 23.53},
    "mtan-equal": {"semseg/miou": 54.38, "semseg/pixel_acc": 75.84, "depth/abs_err": 0.3764,
                   "depth/rel_err": 0.1561, "normals/mean": 22.98},
}
#: MTAN paper: parameters of each SegNet model relative to one single-task SegNet (3 tasks, 13 classes).
MTAN_PARAMETERS_REFERENCE: dict[str, dict[str, float]] = {
    row: {"parameters_ratio": ratio} for row, ratio in (
        ("single", 1.0), ("stan", 1.53), ("split-standard", 1.003), ("split-wide", 1.76), ("split-deep", 2.03),
        ("dense", 4.95), ("cross-stitch", 3.00), ("mtan", 1.77))
}
#: Which reference table goes with which backbone, and how to label it.
REFERENCE_SOURCES: dict[str, tuple[str, dict[str, dict[str, float]]]] = {
    "segnet": ("MTAN paper, SegNet, NYUv2 + aug., 3 seeds", MTAN_NYUV2_REFERENCE),
    "resnet50": ("LibMTL, ResNet-50 dil. + ASPP, NYUv2", LIBMTL_NYUV2_REFERENCE),
}


def nyu_schedule(preset: str, backbone: str = "segnet", **overrides: Any) -> dict[str, Any]:
    """Notebook 07's schedule for ``preset`` and ``backbone`` (a flat copy) with ``overrides`` applied.

    Keys: the data (``data``, ``data_preset``, ``train_images``, ``val_images``, ``augment``), ``backbone``, the
    Trainer settings (see :func:`nyu_trainer_kwargs`), the model options and ``grid`` ``{row: [weightings]}``.
    Unknown keys are an error (a typo would otherwise silently train the preset's schedule).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; valid backbones: {', '.join(BACKBONES)}")
    entry = NYU_SCHEDULES[check_preset(preset)]
    schedule = {**{k: entry[k] for k in _DATA_KEYS}, "backbone": backbone, **entry[backbone]}
    schedule["grid"] = {row: list(ws) for row, ws in schedule["grid"].items()}
    schedule["task_options"] = {t: dict(o) for t, o in schedule["task_options"].items()}
    unknown = sorted(set(overrides) - set(schedule) - {"backbone"})
    if unknown:
        raise ValueError(f"nyu_schedule: unknown keys {unknown}; valid keys: {', '.join(sorted(schedule))}")
    if "backbone" in overrides:
        raise ValueError("nyu_schedule: pass the backbone as nyu_schedule(preset, backbone=...), not as an override")
    schedule.update(overrides)
    rows = SEGNET_ROWS if backbone == "segnet" else RESNET_ROWS
    bad_rows = sorted(set(schedule["grid"]) - set(rows))
    from mtlkit.weighting import WEIGHTINGS  # any loss weighting of the kit, not only the paper's three

    bad_weightings = sorted({w for ws in schedule["grid"].values() for w in ws} - set(WEIGHTINGS))
    if bad_rows or bad_weightings:
        raise ValueError(f"nyu_schedule: grid has unknown rows {bad_rows} / weightings {bad_weightings} for the "
                         f"{backbone} backbone; rows: {', '.join(rows)}; weightings: {', '.join(WEIGHTINGS)}")
    return schedule


def nyu_trainer_kwargs(schedule: Mapping[str, Any]) -> dict[str, Any]:
    """The Trainer arguments of a schedule (``step_size``/``gamma`` only with the step scheduler)."""
    keys = ["epochs", "batch_size", "optimizer", "lr", "weight_decay", "scheduler", "drop_last"]
    if schedule["scheduler"] == "step":
        keys += ["step_size", "gamma"]
    return {k: schedule[k] for k in keys}


def nyu_model_spec(row: str, schedule: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(registry name, options)`` of the model of ``row`` under ``schedule`` (its backbone, width or encoder)."""
    backbone = schedule["backbone"]
    rows = SEGNET_ROWS if backbone == "segnet" else RESNET_ROWS
    if row not in rows:
        raise ValueError(f"unknown row {row!r} for the {backbone} backbone; valid rows: {', '.join(rows)}")
    name, options = rows[row]
    options = dict(options)
    if backbone == "segnet":
        options["width_mult"] = schedule["width_mult"]
        if row == "cross-stitch":
            options["mode"] = schedule["cross_stitch"]  # the unit form (segnet-cross-stitch's mode=)
    else:
        options.update({k: schedule[k] for k in MODEL_KEYS["resnet50"]})
    return name, options


def run_options(row: str, schedule: Mapping[str, Any],
                trained: Mapping[str, nn.Module] | None = None) -> tuple[str, dict[str, Any]]:
    """``(registry name, course.run keyword arguments)`` of ``row``: its build options and, for the two Cross-stitch
    rows started from single-task networks (``cross-stitch``: ``cross_stitch_init``; ``cross-stitch-channelwise``:
    ``channelwise_init``), ``init`` copying the trained ``trained["single-<task>"]`` networks into the branches,
    and the units' own learning rate (``units_lr_mult`` / ``channelwise_units_lr_mult``) as a parameter group."""
    name, options = nyu_model_spec(row, schedule)
    keys = {"cross-stitch": ("cross_stitch_init", "units_lr_mult"),
            "cross-stitch-channelwise": ("channelwise_init", "channelwise_units_lr_mult")}
    if row in keys:
        init_key, lr_key = keys[row]
        if schedule[init_key] == "single-task":
            singles = dict(trained or {})
            missing = [f"single-{t}" for t in NYU_TASK_CHANNELS if f"single-{t}" not in singles]
            if missing:
                raise ValueError(f"run_options({row!r}): {init_key}='single-task' needs the trained single-task "
                                 f"networks {missing} in trained=; train them first or set {init_key}='scratch'")
            options["init"] = lambda m: m.load_single_task_branches({t: singles[f"single-{t}"] for t in m.tasks})
        if schedule[lr_key] != 1:
            options["train"] = {"param_groups": [("cross_stitch", schedule[lr_key])]}
    return name, options


def nyu_model(row: str, task_channels: Mapping[str, int], schedule: Mapping[str, Any]) -> nn.Module:
    """Build the model of ``row`` for ``task_channels`` (``{task: output channels}``) under ``schedule``."""
    from mtlkit.models import build

    name, options = nyu_model_spec(row, schedule)
    return build(name, dict(task_channels), **options)


def nyu_augmentation(image_size: tuple[int, int]):
    """The training augmentation: random scale in :data:`AUGMENT_SCALES`, crop back to ``image_size``, flip."""
    from mtlkit.data import Compose, RandomHorizontalFlip, RandomScaleCrop

    return Compose([RandomScaleCrop(tuple(image_size), scales=AUGMENT_SCALES), RandomHorizontalFlip(0.5)])


def nyu_splits(schedule: Mapping[str, Any], seed: int = 0, root: Any = None) -> dict[str, Any]:
    """``{"train", "val", "test"}`` for a schedule of :data:`NYU_SCHEDULES` (subsets and augmentation applied).

    Synthetic data has all three splits. ``nyuv2`` has train and val: val becomes the test split (the one the papers
    report) and there is no validation split (the last epoch is kept). Only the training split is augmented.
    """
    from mtlkit.data import get_dataset

    name, preset = schedule["data"], schedule["data_preset"]
    common = dict(preset=preset, root=root, seed=seed)
    if name == "nyuv2":
        val, test = None, get_dataset(name, "val", **common)
    else:
        val, test = get_dataset(name, "val", **common), get_dataset(name, "test", **common)
    transform = nyu_augmentation(test.image_size) if schedule["augment"] else None
    train = get_dataset(name, "train", transform=transform, **common)
    return first_images({"train": train, "val": val, "test": test}, schedule.get("train_images"),
                        schedule.get("val_images"))


def nyu_references(columns: Any = None):
    """Both reference tables as one DataFrame: index ``(source, model)``, the metric columns (NaN where absent).

    ``source`` is ``"paper (reference): <which paper and setting>"``; ``columns`` (optional) orders/limits them.
    """
    import pandas as pd

    rows = []
    for label, table in REFERENCE_SOURCES.values():
        for model, values in table.items():
            rows.append({"source": f"paper (reference): {label}", "model": model, **values})
    frame = pd.DataFrame(rows).set_index(["source", "model"])
    return frame if columns is None else frame.reindex(columns=list(columns))


#: Per backbone, the schedule keys that are build() options of every row's model.
MODEL_KEYS = {"segnet": ("width_mult",),
              "resnet50": ("encoder", "output_stride", "pretrained", "aspp_channels", "aspp_pooling_norm")}


def nyu_tasks(task_info: Mapping[str, Mapping[str, Any]], schedule: Mapping[str, Any]) -> dict[str, Any]:
    """``{task: Task}`` with the schedule's ``task_options`` (the paper preset: MTAN's per-batch depth and normals
    metrics)."""
    return tasks_with_options(task_info, schedule)

def setup(preset: str, backbone: str = "segnet", *, data: str = "auto", seed: int = 0, device: str = "auto",
          out_dir: str | Path = "runs/notebooks/nyu", pretrained: bool | None = None, max_steps: int | None = None,
          **overrides: Any) -> Setup:
    """The :class:`~mtlkit.course.common.Setup` of notebook 07 for ``backbone``; the model of a row and its options
    come from :func:`nyu_model_spec`. ``overrides`` change schedule entries (None keeps the preset's)."""
    # the SegNet has no ImageNet weights to load: PRETRAINED applies to the ResNet backbone only
    schedule = nyu_schedule(preset, backbone, **knob_overrides(overrides, data, pretrained, backbone != "segnet"))
    splits = nyu_splits(schedule, seed=seed)  # nyuv2: val is the test split (what the papers report), no val split
    return make_setup(preset, schedule["data"], schedule, splits, nyu_tasks(splits["train"].task_info, schedule),
                      MODEL_KEYS[backbone], out_dir=out_dir, device=device, seed=seed, max_steps=max_steps,
                      cut=False)
