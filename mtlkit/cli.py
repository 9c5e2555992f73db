"""The ``mtlkit`` command. Subcommands import their modules lazily so ``mtlkit --help`` is instant."""
from __future__ import annotations

import argparse
import os
import sys

from mtlkit.paths import DataDirError


def _cmd_doctor(args: argparse.Namespace) -> int:
    from mtlkit.doctor import run_doctor

    return run_doctor()


def _cmd_data_list(args: argparse.Namespace) -> int:
    from mtlkit.data import list_datasets

    for name in list_datasets():
        print(name)
    return 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from mtlkit.data import list_datasets
    from mtlkit.data.cache import synth_command

    synthetic = [n for n in list_datasets() if n.startswith("synthetic-")]
    names = synthetic if args.name == ["all"] else args.name
    synth_command(names, preset=args.preset, seed=args.seed, jobs=args.jobs)
    return 0


def _cmd_data_show(args: argparse.Namespace) -> int:
    from mtlkit.viz import save_sample_grid

    out = save_sample_grid(args.name, split=args.split, preset=args.preset, n=args.n, seed=args.seed, out=args.out)
    print(f"saved {out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from mtlkit.train import run_from_args

    result = run_from_args(args)
    return result if isinstance(result, int) else 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from mtlkit.reproduce import run_from_args

    return run_from_args(args)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model on a dataset through the Trainer")
    try:
        from mtlkit.train import add_arguments
    except ImportError:  # the training core is optional at --help time
        return
    add_arguments(p)
    p.set_defaults(func=_cmd_train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtlkit",
        description="mtlkit: a notebook-first course and reproduction kit for multi-task dense prediction.",
    )
    from mtlkit import __version__

    parser.add_argument("--version", action="version", version=f"mtlkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("doctor", help="check the installation: versions, devices, data dir, two training steps")
    p.set_defaults(func=_cmd_doctor)

    data = sub.add_parser("data", help="datasets: list, synthesise, show")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    p = dsub.add_parser("list", help="list the datasets the kit knows")
    p.set_defaults(func=_cmd_data_list)
    p = dsub.add_parser("synth", help="generate and cache synthetic scenes (NAME ... or 'all')")
    p.add_argument("name", nargs="+", help="synthetic dataset name(s), e.g. synthetic-nyu, or 'all'")
    p.add_argument("--preset", default="smoke", help="unit | smoke | lesson | paper (default: smoke)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="generator processes (default: 2)")
    p.set_defaults(func=_cmd_data_synth)
    p = dsub.add_parser("show", help="save a PNG grid of samples with every label")
    p.add_argument("name")
    p.add_argument("--preset", default="smoke")
    p.add_argument("--split", default="train")
    p.add_argument("--n", type=int, default=4, help="number of samples (rows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="PNG path (default: <data dir>/figures/NAME-PRESET-SPLIT.png)")
    p.set_defaults(func=_cmd_data_show)
    data.set_defaults(func=lambda a: (data.print_help(), 0)[1])

    _add_train(sub)

    p = sub.add_parser("reproduce", help="run the notebooks headlessly through papermill and collect results")
    from mtlkit.reproduce import add_arguments as add_reproduce_arguments

    add_reproduce_arguments(p)
    p.set_defaults(func=_cmd_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mtlkit: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError, DataDirError) as exc:
        # User-facing errors carry their own fix; a traceback would only bury it (MTLKIT_DEBUG=1 shows it).
        if os.environ.get("MTLKIT_DEBUG"):
            raise
        print(f"mtlkit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
