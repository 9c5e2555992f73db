"""The metric meters' share of an evaluation pass.

An evaluation pass as the Trainer runs it (eval mode, no_grad, forward, the tasks' losses, meter updates, one
``compute()`` at the end) over a smoke validation split, with every meter update and the final ``compute()``
timed inside the pass (on the CPU nothing runs asynchronously, so the clock around an update is its cost). The
share is meter seconds / the rest of the pass, per task and in total, median over repeated passes. CPU only: on
CUDA the clock around an update would measure a kernel launch, not its cost; there the meters' contract is the
one that matters, no per-batch host sync (``mtlkit.metrics``: no ``.item()``, ``bincount`` or boolean-mask
indexing in ``update``; only ``compute()`` reads back).

Run: ``python -m benchmarks meters`` (``--help`` for options).
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from benchmarks import common

TARGET_SHARE = 0.02
# dataset -> the notebooks' smoke model for it (bench_models.CONFIGS holds its options)
CASES = {"synthetic-city": "deeplab-joint", "synthetic-nyu": "segnet-mtan", "synthetic-pascal": "unet",
         "synthetic-broden": "upernet"}


def eval_pass(model, dataset, tasks, batch_size: int, with_meters: bool = True) -> tuple[float, dict[str, float]]:
    """(seconds of the whole pass, {task: seconds spent in its meter's update + compute})."""
    from mtlkit.data import collate

    meters = {t: task.meter() for t, task in tasks.items()}
    spent = dict.fromkeys(tasks, 0.0)
    model.eval()
    t_pass = time.perf_counter()
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
            preds = model(batch["image"])
            for t, task in tasks.items():
                task.loss(preds[t], batch)
                if with_meters:
                    t0 = time.perf_counter()
                    meters[t].update(preds[t], task.target(batch))
                    spent[t] += time.perf_counter() - t0
        if with_meters:
            for t, m in meters.items():
                t0 = time.perf_counter()
                m.compute()
                spent[t] += time.perf_counter() - t0
    return time.perf_counter() - t_pass, spent


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--meter-datasets", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--meter-repeats", type=int, default=3)
    ap.add_argument("--meter-paper-images", type=int, default=4,
                    help="validation images per paper-scale pass (full-size model at the paper resolution; 0: skip)")


def run(args: argparse.Namespace) -> common.Section:
    from benchmarks.bench_models import CONFIGS
    from mtlkit.course import load_splits, subset
    from mtlkit.data import get_dataset
    from mtlkit.models import build
    from mtlkit.tasks import tasks_for
    from mtlkit.train import seed_everything

    cases = {"synthetic-nyu": "tiny"} if args.quick else {d: CASES[d] for d in args.meter_datasets}
    repeats = 1 if args.quick else args.meter_repeats
    section = common.Section(
        "meters", "Metric meters' share of an evaluation pass",
        common.command_line(args, "meters"),
        ["dataset", "model", "task", "meter s per pass", "pass s (without meters)", "share"],
    )
    worst = {"smoke": 0.0, "paper": 0.0}
    scales = ["smoke"] + (["paper"] if args.meter_paper_images > 0 and not args.quick else [])
    for name, model_name in cases.items():
        for scale in scales:
            if scale == "smoke":
                val = load_splits(name, "unit" if args.quick else "smoke")["val"]
                options = {"width": 8} if args.quick else dict(CONFIGS[model_name].smoke)
                batch = 8
            else:  # the full-size model on a few generated validation images at the paper resolution
                val = subset(get_dataset(name, "val", preset="paper", cache=False), args.meter_paper_images)
                options, batch = dict(CONFIGS[model_name].paper), 2
            tasks = tasks_for(val.task_info)
            seed_everything(0)
            model = build(model_name, {t: task.out_channels for t, task in tasks.items()}, **options)
            val = materialise(val)  # generated once, outside the timed passes
            eval_pass(model, val, tasks, batch)  # warm-up
            runs = [eval_pass(model, val, tasks, batch) for _ in range(repeats)]
            rest = common.median([total - sum(spent.values()) for total, spent in runs])
            label = f"{model_name} ({scale}, {'x'.join(map(str, val[0]['image'].shape[1:]))})"
            for t in tasks:
                s = common.median([spent[t] for _, spent in runs])
                section.add(name, label, t, s, rest, f"{100 * s / rest:.2f}%")
            total_share = common.median([sum(spent.values()) / (total - sum(spent.values()))
                                         for total, spent in runs])
            worst[scale] = max(worst[scale], total_share)
            row = (name, label, "all", common.median([sum(sp.values()) for _, sp in runs]), rest,
                   f"{100 * total_share:.2f}%")
            section.add(*row)
            print("  ".join(common._fmt(v) for v in row), flush=True)
    verdicts = {k: ("met" if v < TARGET_SHARE else "MISSED") for k, v in worst.items() if k in scales}
    section.notes += [
        f"Target: meters add under {100 * TARGET_SHARE:.0f}% to an evaluation pass: "
        + "; ".join(f"{k} scale {v} (worst total share {100 * worst[k]:.2f}%)" for k, v in verdicts.items())
        + ". smoke: the validation split of each dataset's smoke preset, batch 8, the notebooks' narrow smoke model; "
        "paper: the full-size model of the paper recipe on the first validation images generated at the paper "
        "resolution, batch 2. CPU fp32; the pass includes data loading (num_workers 0), forward and losses.",
        "meter s: seconds inside update() for every batch plus one compute(), median over the repeats. The meters' "
        "cost grows with pixels only, the model's with pixels x its width: the narrow smoke models are the worst case.",
    ]
    return section


def materialise(dataset) -> list:
    """The dataset's items in a list that keeps ``task_info`` (so generation is not timed)."""
    items = _Items(dataset[i] for i in range(len(dataset)))
    items.task_info = dataset.task_info
    return items


class _Items(list):
    task_info: dict
