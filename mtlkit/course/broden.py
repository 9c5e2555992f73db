"""Presets and reference numbers of the Broden notebook (08, UPerNet for unified perceptual parsing, with ULSAM).

The paper preset is UPerNet's recipe on the real multi-source Broden(+) data (``broden``: scene, object, part,
material, texture, each source labelling only some of them): ResNet-50 from ImageNet, F = 512, SGD with lr 0.02,
momentum 0.9, weight decay 1e-4 and the poly(0.9) schedule, the public code's loss weights
(:data:`~mtlkit.models.upernet.UPERNET_LOSS_WEIGHTS`). The CPU presets run the same code on ``synthetic-broden``
(64 px in smoke) with a ResNet-18, a narrow decoder and no ImageNet weights.

Parts are trained with UPerNet's per-object part loss: :func:`upernet_tasks` gives the Trainer an
:class:`OwnerPartsTask` for ``parts`` (see "Parts per owning object" in :mod:`mtlkit.models.upernet`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from mtlkit.course.common import (Setup, apply_overrides, first_images, knob_overrides, load_splits, make_setup,
                                  subset)
from mtlkit.tasks import OwnerPartsTask, Task  # the per-object parts task lives with the tasks

__all__ = ["UPERNET_SCHEDULES", "UPERNET_REFERENCE", "upernet_schedule", "broden_splits", "part_owners_for",
           "OwnerPartsTask", "upernet_tasks", "setup"]

# Per preset: data, model, optimiser. Every preset trains the same five models (UPerNet, + context head, three
# ULSAM variants); train_images / val_images: the first N images (None: all).
UPERNET_SCHEDULES: dict[str, dict[str, Any]] = {
    "unit": dict(
        data="synthetic-broden",
        data_preset="unit",
        data_options={},
        train_images=None,
        val_images=None,
        epochs=1,
        batch_size=4,
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        scheduler=None,
        encoder="resnet18",
        pretrained=False,
        fpn_channels=16,
        ppm_channels=8,
        ulsam_groups=4,
    ),
    "smoke": dict(
        data="synthetic-broden",
        data_preset="smoke",
        data_options={},
        train_images=96,  # 12 steps of 8: the five trainings stay a small part
        val_images=32,
        epochs=1,  # of the whole smoke sequence on a 2-core CPU
        batch_size=8,
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        scheduler=None,
        encoder="resnet18",
        pretrained=False,
        fpn_channels=64,
        ppm_channels=32,
        ulsam_groups=4,
    ),
    "lesson": dict(
        data="synthetic-broden",
        data_preset="lesson",
        data_options={},
        train_images=None,
        val_images=None,
        epochs=8,
        batch_size=16,
        optimizer="adam",
        lr=5e-4,
        weight_decay=1e-4,
        scheduler="poly",
        encoder="resnet18",
        pretrained=False,
        fpn_channels=128,
        ppm_channels=64,
        ulsam_groups=4,
    ),
    "paper": dict(
        data="broden",
        data_preset="paper",
        data_options={"size": (384, 384)},  # Broden's 384 px release
        train_images=None,
        val_images=None,
        epochs=20,  # the kit's choice; the rest is UPerNet's recipe
        batch_size=16,
        optimizer="sgd",
        lr=0.02,
        weight_decay=1e-4,
        scheduler="poly",
        encoder="resnet50",
        pretrained=True,
        fpn_channels=512,
        ppm_channels=512,
        ulsam_groups=4,
    ),
}

#: Xiao et al. (ECCV 2018), UPerNet-50 trained and evaluated on ADE20K alone (docs/reference.md, "Recipes"), in the
#: kit's metric names (percent). A reference for the paper preset, never a result of this kit (ADE20K's 150 classes
#: are not Broden's object classes, so even the paper preset is only comparable in kind).
UPERNET_REFERENCE: dict[str, dict[str, float]] = {
    "UPerNet-50, ADE20K (paper)": {"semseg/miou": 40.44, "semseg/pixel_acc": 79.80},
}

# broden has only train and val; the kit holds out a seeded random subset of this many training images to select the
# best epoch (smaller training lists hold out a fifth, see broden_splits) and reports the official val split as the
# test split.
BRODEN_HELD_OUT = 1000


def upernet_schedule(preset: str, **overrides: Any) -> dict[str, Any]:
    """Notebook 08's schedule for ``preset`` (a copy), with ``overrides`` applied (unknown keys are an error)."""
    return apply_overrides(UPERNET_SCHEDULES, preset, overrides, "upernet_schedule")


def broden_splits(schedule: Mapping[str, Any], seed: int = 0, held_out: int | None = None) -> dict[str, Any]:
    """``{"train", "val", "test"}`` for a schedule of :data:`UPERNET_SCHEDULES`.

    ``train_images`` / ``val_images`` keep the first n images of those splits (the validation split at most its
    size; the test split is always whole).

    Synthetic data has all three splits. ``broden`` has train and val: the official val split is the test split, and
    ``held_out`` training images, drawn at random with ``seed``, become the validation split (default:
    ``min(BRODEN_HELD_OUT, len(train) // 5)``, i.e. :data:`BRODEN_HELD_OUT` = 1000 on the real data). A random draw,
    not the last records: Broden+'s training list is ordered by source (ADE20K, PASCAL, OpenSurfaces, DTD), so its
    tail is DTD texture images only, and selecting epochs on them would select on one task. A uniform draw keeps each
    source's share in expectation (about 1000 images hold every source); it is not stratified. The same ``seed`` and
    data give the same split; the training split is the other records. Both splits come in the drawn (shuffled)
    order, so ``train_images`` / ``val_images`` also keep a mix of the sources, not the first source's images.
    """
    name, preset, options = schedule["data"], schedule["data_preset"], dict(schedule.get("data_options") or {})
    if name == "broden":
        import numpy as np

        from mtlkit.data import get_dataset

        train = get_dataset(name, "train", preset=preset, **options)
        k = min(BRODEN_HELD_OUT, len(train) // 5) if held_out is None else int(held_out)
        if not 1 <= k < len(train):
            raise ValueError(f"broden train has {len(train)} images; holding out {k} for validation needs 1 <= "
                             f"held_out < {len(train)}. Check the prepared data (mtlkit data verify broden) or "
                             "pass another held_out")
        order = np.random.default_rng(seed).permutation(len(train)).tolist()
        splits = {"train": subset(train, order[k:]), "val": subset(train, order[:k]),
                  "test": get_dataset(name, "val", preset=preset, **options)}
    else:
        if held_out is not None:
            raise ValueError(f"held_out applies to broden (train only: the validation split is held out of it); "
                             f"{name} has its own validation split")
        splits = load_splits(name, preset, seed=seed, **options)
    return first_images(splits, schedule.get("train_images"), schedule.get("val_images"))


def part_owners_for(task_info: Mapping[str, Mapping[str, Any]]) -> list[tuple[int, ...]] | None:
    """Owning object classes per part class (``upernet(part_owners=...)``), or None where the data does not say.

    ``task_info["parts"]["owners"]`` (one sequence of object class indices per part class, as the ``broden`` loader
    gives for Broden+) is used when present; a malformed one (wrong length, an index that is not an object class) is
    an error. Without it the part names are read: "<owner> <part>", owner = the longest object class name (or group
    of :data:`~mtlkit.models.upernet.PART_OWNER_GROUPS`) that starts the name (see
    :func:`~mtlkit.models.upernet.broden_part_owners`), as in ``synthetic-broden``; names that do not follow that
    pattern give None (parts are then not gated).
    """
    from mtlkit.models.upernet import broden_part_owners

    objects = (task_info.get("semseg") or {}).get("class_names")
    parts = (task_info.get("parts") or {}).get("class_names")
    if not objects or not parts:
        return None
    given = (task_info.get("parts") or {}).get("owners")
    if given is not None:
        owners = [tuple(int(o) for o in entry) for entry in given]
        bad = [c for c, entry in enumerate(owners) if any(not 0 <= o < len(objects) for o in entry)]
        if len(owners) != len(parts) or bad:
            raise ValueError(f"task_info['parts']['owners'] must hold one tuple of object classes (0.."
                             f"{len(objects) - 1}) per part class ({len(parts)}); got {len(owners)} entries"
                             + (f", invalid at part classes {bad[:5]}" if bad else ""))
        return owners
    try:
        return broden_part_owners(objects, parts)
    except ValueError:
        return None


def upernet_tasks(task_info: Mapping[str, Mapping[str, Any]]) -> dict[str, Task]:
    """``{name: Task}`` of a Broden-like dataset for the Trainer (``tasks=``): ``parts`` is an
    :class:`OwnerPartsTask` where :func:`part_owners_for` knows the owners, every other task the plain one."""
    from mtlkit.tasks import tasks_for

    tasks = tasks_for(task_info)
    owners = part_owners_for(task_info)
    if owners is not None and "parts" in tasks and "semseg" in tasks:
        plain = tasks["parts"]
        tasks["parts"] = OwnerPartsTask(**{f.name: getattr(plain, f.name) for f in fields(plain)},
                                        objects=tasks["semseg"], part_owners=tuple(map(tuple, owners)))
    return tasks


#: The schedule keys that are build() options of ``upernet`` (``part_owners`` comes from the data).
MODEL_KEYS = ("encoder", "pretrained", "fpn_channels", "ppm_channels", "ulsam_groups")


def setup(preset: str, *, data: str = "auto", seed: int = 0, device: str = "auto",
          out_dir: str | Path = "runs/notebooks/broden", pretrained: bool | None = None,
          max_steps: int | None = None, **overrides: Any) -> Setup:
    """The :class:`~mtlkit.course.common.Setup` of notebook 08: Broden-like data, :func:`upernet_tasks`, UPerNet's
    loss weights; ``model_options`` holds ``part_owners`` (None where the data does not say)."""
    from mtlkit.models.upernet import UPERNET_LOSS_WEIGHTS

    schedule = upernet_schedule(preset, **knob_overrides(overrides, data, pretrained))
    splits = broden_splits(schedule, seed=seed)  # the real dataset says how to prepare it when it is missing
    info = splits["train"].task_info
    tasks = upernet_tasks(info)
    result = make_setup(preset, schedule["data"], schedule, splits, tasks, MODEL_KEYS, out_dir=out_dir,
                        device=device, seed=seed, max_steps=max_steps, cut=False,
                        loss_weights={t: UPERNET_LOSS_WEIGHTS.get(t, 1.0) for t in tasks})
    result.model_options["part_owners"] = part_owners_for(info)
    return result
