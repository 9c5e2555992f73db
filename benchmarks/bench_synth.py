"""Synthetic generation speed: images/s per core per variant (smoke and paper sizes) and the whole smoke preset.

Run: ``python -m benchmarks synth`` or ``python -m benchmarks.bench_synth`` (``--help`` for options). Writes the
"Synthetic generation" section of ``benchmarks/RESULTS.md`` (between the ``synth`` markers; the rest is kept).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from mtlkit.data import synthetic

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TARGETS = {"smoke": 150.0, "paper": 6.0}  # images/s per core at 64x64 and 288x384


def rate(variant: str, preset: str, n: int, repeats: int) -> tuple[float, float]:
    """Median images/s (wall clock, and process CPU time) over ``repeats`` runs of ``n`` images in this process."""
    size = synthetic.get_variant(variant).sizes[preset]
    synthetic.generate_sample(variant, "train", 0, size=size)  # warm-up (imports, caches)
    wall, cpu = [], []
    for r in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            synthetic.generate_sample(variant, "train", r * n + i, size=size)
        wall.append(n / (time.perf_counter() - t0))
        cpu.append(n / max(time.process_time() - c0, 1e-9))
    return statistics.median(wall), statistics.median(cpu)


def _one(job: tuple[str, str, int, tuple[int, int]]) -> int:
    variant, split, index, size = job
    s = synthetic.generate_sample(variant, split, index, size=size)
    return int(s["image"].shape[-1])


def whole_preset(preset: str, processes: int) -> tuple[float, int]:
    """Wall time to generate every item (train+val+test) of every variant at ``preset`` with a process pool."""
    jobs = []
    for name, v in synthetic.VARIANTS.items():
        for split, n in v.counts[preset].items():
            jobs += [(name, split, i, v.sizes[preset]) for i in range(n)]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(processes) as pool:
        for _ in pool.imap_unordered(_one, jobs, chunksize=16):
            pass
    return time.perf_counter() - t0, len(jobs)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_section(text: str, path: Path = RESULTS) -> None:
    """Replace (or append) the synth section of RESULTS.md, keeping everything else."""
    from benchmarks.common import write_section as write

    write("synth", text, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="*", default=list(synthetic.VARIANTS), help="variants to time")
    ap.add_argument("--n-smoke", type=int, default=60, help="images per repeat at smoke size")
    ap.add_argument("--n-paper", type=int, default=4, help="images per repeat at paper size")
    ap.add_argument("--repeats", type=int, default=3, help="repeats (the median is reported)")
    ap.add_argument("--processes", type=int, default=2,
                    help="pool size for the whole smoke preset (0: skip that measurement)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the results file to update")
    args = ap.parse_args(argv)

    rows = []
    for variant in args.variants:
        for preset, n in (("smoke", args.n_smoke), ("paper", args.n_paper)):
            wall, cpu = rate(variant, preset, n, args.repeats)
            h, w = synthetic.get_variant(variant).sizes[preset]
            rows.append((variant, preset, f"{h}x{w}", wall, cpu))
            print(f"{variant:18s} {preset:6s} {h}x{w:<4d} {wall:7.1f} img/s wall  {cpu:7.1f} img/s cpu", flush=True)
    total, count = whole_preset("smoke", args.processes) if args.processes > 0 else (float("nan"), 0)
    print(f"whole smoke preset: {count} images in {total:.1f} s with {args.processes} processes", flush=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "## Synthetic generation",
        "",
        f"Command: `python -m benchmarks.bench_synth` (median of {args.repeats} repeats of {args.n_smoke} (smoke) / "
        f"{args.n_paper} (paper) images per variant, one process = one core).",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, load average {load:.1f} at the end of the run "
        "(shared machine: wall-clock rates drop when other jobs run; the CPU-time rate is the per-core speed).",
        f"Versions: Python {platform.python_version()}, numpy {np.__version__}, "
        f"GENERATOR_VERSION {synthetic.GENERATOR_VERSION}. Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| variant | preset | size (HxW) | images/s (wall) | images/s (CPU time) |",
        "|---|---|---|---:|---:|",
    ]
    lines += [f"| {v} | {p} | {s} | {w:.1f} | {c:.1f} |" for v, p, s, w, c in rows]
    lines += [
        "",
        f"Whole smoke preset of all variants (train+val+test, {count} images) with a {args.processes}-process pool: "
        f"**{total:.1f} s** wall clock (target < 30 s on 2 cores).",
        f"Targets: >= {TARGETS['smoke']:.0f} images/s per core at 64x64, >= {TARGETS['paper']:.0f} images/s per core "
        "at 288x384 (city renders twice the pixels at its smoke and paper sizes: 64x128 and 256x512).",
    ]
    text = "\n".join(lines)
    if not args.no_write:
        write_section(text, args.results)
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
