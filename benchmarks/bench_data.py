"""Data pipeline throughput: images/s a DataLoader delivers per dataset, against what the training step consumes.

Sources: the synthetic variants read from their sharded cache and generated on the fly (``cache=False``), and the
real-dataset loaders read from their format twins (``mtlkit.data.real.twins.write_twin``, the real on-disk formats
at the smoke and paper image sizes). Every source is read through ``DataLoader(collate=mtlkit.data.collate)`` with
0 and 2 worker processes, the way the Trainer reads it. The target is a loader at least 3x faster than the training
step of the model the notebooks train on that dataset (``consumes``: the smoke model's training images/s on this
machine, measured in the same run), so that no worker ever idles the step.

Run: ``python -m benchmarks data`` (``--help`` for options).
"""
from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

from benchmarks import common

# The model each synthetic variant is trained with in the notebooks (for the loader/step ratio).
STEP_MODELS = {"synthetic-city": "deeplab-joint", "synthetic-nyu": "segnet-mtan", "synthetic-pascal": "tsn",
               "synthetic-broden": "upernet", "synthetic-pet": "tiny"}
TARGET_RATIO = 3.0


def loader_rate(dataset, batch_size: int, workers: int, max_images: int, repeats: int) -> float:
    """Median images/s of ``repeats`` passes over the first ``max_images`` images (worker start-up included)."""
    from mtlkit.data import collate
    from mtlkit.course import subset

    data = subset(dataset, min(max_images, len(dataset)))
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = 0
        loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                            persistent_workers=False)
        for batch in loader:
            n += batch["image"].shape[0]
        rates.append(n / (time.perf_counter() - t0))
    return common.median(rates)


def step_rate(model_name: str, batch_size: int, repeats: int) -> float:
    """Training images/s of the smoke configuration of ``model_name`` (fp32 on the CPU)."""
    from benchmarks.bench_models import Setting, measure

    m = measure(model_name, "smoke", Setting("cpu", False, False), batch_size, repeats, latency_repeats=1)
    return m.train_images_per_s


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--datasets", nargs="*", default=None,
                    help="synthetic variants and/or real twin ids (default: all of both)")
    ap.add_argument("--images", type=int, default=64, help="images per pass (smoke size)")
    ap.add_argument("--paper-images", type=int, default=8, help="images per pass (paper size)")
    ap.add_argument("--workers", nargs="*", type=int, default=[0, 2])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--data-repeats", type=int, default=3)


def run(args: argparse.Namespace) -> common.Section:
    from mtlkit.data import get_dataset
    from mtlkit.data import synthetic
    from mtlkit.data.real.twins import TWINS, write_twin

    synth = list(synthetic.VARIANTS)
    real = list(TWINS)
    chosen = args.datasets or (["synthetic-nyu"] if args.quick else synth + real)
    unknown = [d for d in chosen if d not in synth and d not in real]
    if unknown:
        raise SystemExit(f"unknown dataset(s) {unknown}; valid: {', '.join(synth + real)}")
    repeats = 1 if args.quick else args.data_repeats
    workers = [0] if args.quick else args.workers
    preset = "unit" if args.quick else "smoke"
    section = common.Section(
        "data", "Data pipeline: DataLoader images/s per dataset vs the training step",
        common.command_line(args, "data"),
        ["dataset", "source", "size (HxW)", "workers", "images/s", "step consumes images/s", "loader / step"],
    )
    steps: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="mtlkit-bench-data-"))
    try:
        for name in chosen:
            if name in synth:
                variant = synthetic.get_variant(name)
                step_model = "tiny" if args.quick else STEP_MODELS.get(name, "tiny")
                if name not in steps:
                    steps[name] = step_rate(step_model, args.batch_size, repeats=1 if args.quick else 3)
                for source, cache in (("cache", True), ("generator", False)):
                    ds = get_dataset(name, "train", preset=preset, cache=cache)
                    h, w = variant.sizes[preset]
                    for nw in workers:
                        rate = loader_rate(ds, args.batch_size, nw, args.images, repeats)
                        row = (name, f"{source} ({preset})", f"{h}x{w}", nw, rate, steps[name], rate / steps[name])
                        section.add(*row)
                        print("  ".join(common._fmt(v) for v in row), flush=True)
                continue
            variant_name = TWINS[name][0]
            variant = synthetic.get_variant(variant_name)
            sizes = ["unit"] if args.quick else ["smoke", "paper"]
            for size_preset in sizes:
                size = tuple(variant.sizes[size_preset])
                n = args.images if size_preset != "paper" else args.paper_images
                root = write_twin(name, tmp / f"{name}-{size_preset}", n=max(2, n if not args.quick else 2),
                                  size=size)
                ds = None
                for split in ("train", "trainval", "val"):
                    try:
                        ds = get_dataset(name, split, root=root)
                        break
                    except ValueError:
                        continue
                if ds is None:
                    section.notes.append(f"{name}: no readable split in its twin")
                    continue
                for nw in workers:
                    rate = loader_rate(ds, args.batch_size, nw, n, repeats)
                    row = (name, f"twin ({size_preset} size)", f"{size[0]}x{size[1]}", nw, rate, math.nan, math.nan)
                    section.add(*row)
                    print("  ".join(common._fmt(v) for v in row), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cached = [r for r in section.rows
              if isinstance(r[-1], float) and not math.isnan(r[-1]) and r[1].startswith("cache")]
    default = [r for r in cached if r[3] == 0]  # the Trainer's default (num_workers=0), what every notebook uses
    if default:
        low = min(default, key=lambda r: r[-1])
        verdict = "met" if low[-1] >= TARGET_RATIO else "MISSED"
        text = (f"Target loader >= {TARGET_RATIO:.0f}x the step's images/s (smoke preset, from the cache, the "
                f"Trainer's default num_workers=0): {verdict}; lowest ratio {low[-1]:.1f}x ({low[0]}).")
        others = [r for r in cached if r[3] != 0]
        if others:
            low_w = min(others, key=lambda r: r[-1])
            text += (f" With worker processes the lowest is {low_w[-1]:.2f}x ({low_w[0]}, {low_w[3]} workers): "
                     "a pass this short is mostly worker start-up, so keep num_workers=0 for cached smoke data.")
        section.notes.append(text)
    section.notes += [
        "'step consumes': training images/s of the notebooks' smoke model for that dataset (deeplab-joint for city, "
        "segnet-mtan for nyu, tsn for pascal, upernet for broden, tiny for pet), fp32 on the CPU, measured in this "
        "run. With workers > 0 the DataLoader prefetches in other processes, so the step waits for data only when "
        "the loader is slower than the step. Worker start-up (fork) is inside each pass; the Trainer pays it once "
        "per epoch. The paper preset trains on a GPU, whose step rate this machine cannot measure: compare the "
        "paper-size twin rates with the CUDA rows of the models section when a GPU is present.",
    ]
    return section
