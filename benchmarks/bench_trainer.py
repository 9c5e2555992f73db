"""The Trainer's overhead over a bare training loop, and the size and write time of its checkpoints.

The same model (same initial weights), the same batches (same DataLoader order) and the same losses go through
(a) a bare loop: zero_grad, forward, the tasks' losses, their sum (Equal weighting), backward, Adam step (fused,
as the Trainer builds it): what ``mtlkit.train.train_step`` does, written out without its options; and
(b) ``Trainer(...).fit()``: the same epochs with everything the notebooks get (construction checks, training
metrics, per-step weight log, progress, checkpoint + metrics.json every epoch), without validation (the meters'
share of an evaluation pass is the ``meters`` benchmark).
The two alternate (a, b, a, b, ...) so that a change of machine load hits both; the overhead is the median of the
per-pair ratios. ``loop`` is the Trainer's own timing of its training loop (``metrics["timings"]["train_seconds"]``),
``fit`` everything from construction to the return of ``fit()``.

Run: ``python -m benchmarks trainer`` (``--help`` for options).
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from benchmarks import common

TARGET_OVERHEAD = 0.05


def _setup(quick: bool, n_images: int):
    from mtlkit.course import deeplab_schedule, load_splits, subset
    from mtlkit.tasks import tasks_for

    if quick:
        train = load_splits("synthetic-nyu", "unit")["train"]
        return "tiny", {"width": 8}, train, tasks_for(train.task_info)
    s = deeplab_schedule("smoke")
    train = subset(load_splits(s["data"], s["data_preset"])["train"], n_images)
    options = {k: s[k] for k in ("encoder", "aspp_channels", "decoder_channels", "skip_channels")}
    return "deeplab-joint", options, train, tasks_for(train.task_info)


def _model(name, options, tasks):
    from mtlkit.models import build
    from mtlkit.train import seed_everything

    seed_everything(0)
    return build(name, {t: task.out_channels for t, task in tasks.items()}, **options)


def bare_loop(name, options, train, tasks, epochs: int, batch_size: int) -> tuple[float, float]:
    """(wall, CPU) seconds of ``epochs`` epochs of the minimal loop over the Trainer's batches (its sampler and
    collate)."""
    from mtlkit.data import collate

    model = _model(name, options, tasks)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # the Trainer's Adam: fused kernels
    model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    for epoch in range(epochs):
        sampler = DistributedSampler(train, num_replicas=1, rank=0, shuffle=True, seed=0)
        sampler.set_epoch(epoch)
        for batch in DataLoader(train, batch_size=batch_size, sampler=sampler, collate_fn=collate):
            opt.zero_grad(set_to_none=True)
            preds = model(batch["image"])
            total = sum(task.loss(preds[t], batch) for t, task in tasks.items())  # Equal weighting
            total.backward()
            opt.step()
    return time.perf_counter() - t0, time.process_time() - c0


def trainer_fit(name, options, train, tasks, epochs: int, batch_size: int, out: Path,
                progress: bool = False) -> tuple[float, float, float, dict]:
    """(fit wall seconds from construction on, fit CPU seconds, the Trainer's own training-loop seconds, metrics)."""
    from mtlkit.train import TrainConfig, Trainer

    model = _model(name, options, tasks)
    t0, c0 = time.perf_counter(), time.process_time()
    config = TrainConfig(tasks=tasks, out_dir=out, epochs=epochs, batch_size=batch_size, lr=1e-3, device="cpu",
                         resume=False, progress=progress)
    trainer = Trainer(model, train, config=config)
    metrics = trainer.fit()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return seconds, cpu, sum(metrics["timings"]["train_seconds"]), metrics


def checkpoint_cost(out: Path) -> tuple[float, float, float, float]:
    """(last.pt MB, best.pt MB, seconds to serialise last.pt's content, seconds to write it to disk with fsync)."""
    import os

    last, best = out / "last.pt", out / "best.pt"
    obj = torch.load(last, weights_only=True)
    t0 = time.perf_counter()
    buf = io.BytesIO()
    torch.save(obj, buf)
    t_ser = time.perf_counter() - t0
    t0 = time.perf_counter()
    with open(out / "probe.tmp", "wb") as fh:
        fh.write(buf.getbuffer())
        fh.flush()
        os.fsync(fh.fileno())
    t_write = time.perf_counter() - t0
    (out / "probe.tmp").unlink()
    return last.stat().st_size / 2**20, best.stat().st_size / 2**20, t_ser, t_write


def profile_fit(name, options, train, tasks, epochs: int, batch_size: int, out: Path, top: int = 12) -> str:
    """cProfile of one ``fit()``: the mtlkit functions with the largest cumulative time (where the overhead is)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    trainer_fit(name, options, train, tasks, epochs, batch_size, out)
    prof.disable()
    stream = io.StringIO()
    stats = pstats.Stats(prof, stream=stream).sort_stats("cumulative")
    stats.print_stats(r"mtlkit/(train\w*|checkpoint|atomic|metrics|weighting|tasks|ddp|optim|progress|run_record)\.py",
                      top)
    lines = [line for line in stream.getvalue().splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    return "\n".join(line.replace(str(Path.cwd()) + "/", "") for line in lines[start:])


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--profile", action="store_true", help="add a cProfile summary of one Trainer.fit()")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-images", type=int, default=128, help="training images (default 128)")
    ap.add_argument("--pairs", type=int, default=3, help="bare/Trainer pairs (median of the ratios)")


def run(args: argparse.Namespace) -> common.Section:
    name, options, train, tasks = _setup(args.quick, args.train_images)
    epochs, pairs, batch = (1, 1, 4) if args.quick else (args.epochs, args.pairs, 8)
    section = common.Section(
        "trainer", "Trainer overhead over a bare loop, and checkpoint cost",
        common.command_line(args, "trainer"),
        ["pair", "bare loop s", "Trainer loop s", "Trainer fit s", "loop overhead", "fit overhead",
         "fit overhead (CPU time)"],
    )
    loop_ratios, fit_ratios, cpu_ratios = [], [], []
    with tempfile.TemporaryDirectory(prefix="mtlkit-bench-trainer-") as tmp:
        out = Path(tmp) / "run"
        trainer_fit(name, options, train, tasks, 1, batch, out)  # warm-up: imports, allocator, page cache
        for i in range(pairs):
            bare, bare_cpu = bare_loop(name, options, train, tasks, epochs, batch)
            fit_s, fit_cpu, loop_s, metrics = trainer_fit(name, options, train, tasks, epochs, batch, out)
            loop_ratios.append(loop_s / bare - 1)
            fit_ratios.append(fit_s / bare - 1)
            cpu_ratios.append(fit_cpu / bare_cpu - 1)
            row = (i + 1, bare, loop_s, fit_s, f"{100 * loop_ratios[-1]:+.1f}%", f"{100 * fit_ratios[-1]:+.1f}%",
                   f"{100 * cpu_ratios[-1]:+.1f}%")
            section.add(*row)
            print("  ".join(common._fmt(v) for v in row), flush=True)
        last_mb, best_mb, t_ser, t_write = checkpoint_cost(out)
        profile = profile_fit(name, options, train, tasks, epochs, batch, out) if args.profile else ""
        params = metrics["parameters"]["total"]
    loop_o, fit_o, cpu_o = common.median(loop_ratios), common.median(fit_ratios), common.median(cpu_ratios)
    steps = epochs * -(-len(train) // batch)
    section.add("median", "", "", "", f"{100 * loop_o:+.1f}%", f"{100 * fit_o:+.1f}%", f"{100 * cpu_o:+.1f}%")
    # judged on the larger of the wall and CPU-time overheads: under load the wall ratio swings both ways
    verdict = "met" if max(fit_o, cpu_o) <= TARGET_OVERHEAD else "MISSED"
    section.notes += [
        f"Model {name} {options}, {len(train)} training images of {getattr(train, 'name', '?')} "
        f"({'x'.join(map(str, getattr(train, 'image_size', ())))}), batch {batch}, {epochs} epoch(s) = {steps} "
        f"steps per run, num_workers 0, CPU, progress bars off.",
        f"Target: Trainer fit() at most {100 * TARGET_OVERHEAD:.0f}% over the bare loop: {verdict} "
        f"(median fit overhead {100 * fit_o:+.1f}% wall, {100 * cpu_o:+.1f}% CPU time; training-loop overhead "
        f"{100 * loop_o:+.1f}%). fit - loop = construction checks + a checkpoint and metrics.json per epoch + the "
        f"final reload of best.pt; loop - bare = per-step work (training meters, loss logging, weight log).",
        f"Checkpoints: last.pt {last_mb:.1f} MB, best.pt {best_mb:.1f} MB for {params / 1e6:.2f} M parameters "
        f"({4 * params / 2**20:.1f} MB of fp32 weights): last.pt = weights + Adam's two moment buffers "
        f"(exp_avg, exp_avg_sq) = 3x the weights, the minimum for an exact resume; prev.pt is the previous "
        f"last.pt (renamed, not rewritten). Serialising last.pt takes {t_ser:.2f} s, writing it with fsync "
        f"{t_write:.2f} s (once per epoch).",
    ]
    if profile:
        section.notes += ["", f"cProfile of one fit() ({epochs} epoch(s), mtlkit functions, cumulative seconds):",
                          "", "```", profile, "```"]
    return section
