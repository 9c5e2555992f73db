"""``python -m benchmarks {models,data,trainer,meters,synth,all} [--quick] [--no-write]``.

Each subcommand prints its rows as it goes and replaces its own section of ``benchmarks/RESULTS.md`` (between
``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``; other sections are kept). ``--quick`` is a fast sanity pass of the
plumbing (tiny model, unit data, one repeat) whose numbers mean nothing, so it does not write RESULTS.md unless
``--write`` is given. ``all`` runs every benchmark (about 10 minutes on a quiet 2-core machine).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks import bench_data, bench_meters, bench_models, bench_trainer, common

BENCHES = {"models": bench_models, "data": bench_data, "trainer": bench_trainer, "meters": bench_meters}
ORDER = ("synth", "models", "data", "trainer", "meters")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=[*ORDER, "all"], help="which benchmark (all: every one, in this order: "
                    + ", ".join(ORDER) + ")")
    ap.add_argument("--quick", action="store_true", help="fast sanity pass (numbers are meaningless)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--write", action="store_true", help="write RESULTS.md even with --quick")
    ap.add_argument("--results", type=Path, default=common.RESULTS, help="results file (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    for bench in BENCHES.values():
        bench.add_arguments(ap)
    return ap


def _synth(args: argparse.Namespace, write: bool) -> None:
    from benchmarks import bench_synth

    argv = ["--results", str(args.results)]
    if args.quick:
        argv += ["--variants", "synthetic-nyu", "--n-smoke", "4", "--n-paper", "1", "--repeats", "1",
                 "--processes", "0"]
    if not write:
        argv.append("--no-write")
    bench_synth.main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.command_line = " ".join(["python -m benchmarks", *argv])
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    write = not args.no_write and (args.write or not args.quick)
    commands = ORDER if args.command == "all" else (args.command,)
    t0 = time.perf_counter()
    for name in commands:
        print(f"== {name} (load average {common.load_average():.1f})", flush=True)
        if name == "synth":
            _synth(args, write)
            continue
        section = BENCHES[name].run(args)
        text = section.render()
        if write:
            common.write_section(name, text, args.results)
            print(f"wrote section {name!r} of {args.results}", flush=True)
        else:
            print(text, flush=True)
    print(f"== done in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
