"""The ``mtlkit`` command. Subcommands import their modules lazily so ``mtlkit --help`` is instant."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mtlkit.paths import DataDirError

SOURCE_HELP = "instructor sources (default: assignments/source of the mtlkit checkout in use)"


def _cmd_doctor(args: argparse.Namespace) -> int:
    from mtlkit.doctor import run_doctor

    return run_doctor()


def _cmd_data_list(args: argparse.Namespace) -> int:
    from mtlkit.data import SYNTHETIC_NAMES
    from mtlkit.data.real.registry import format_table, table_rows

    print("synthetic (generated, nothing to download):")
    for name in SYNTHETIC_NAMES:
        print(f"  {name}")
    from mtlkit.paths import data_dir

    print(f"\nreal (present = prepared | raw | missing under the data dir {data_dir()}):")
    print(format_table(table_rows(), ("id", "tasks", "size", "licence", "registration", "present")))
    return 0


def _real_errors(fn):
    """Real-data commands: known failures print one line (the message says the fix) and exit 2."""

    def run(args: argparse.Namespace) -> int:
        from mtlkit.data.real.base import MissingDependencyError
        from mtlkit.data.real.download import DownloadError

        try:
            return fn(args)
        except (DownloadError, MissingDependencyError) as exc:
            if os.environ.get("MTLKIT_DEBUG"):
                raise
            print(f"mtlkit: error: {exc}", file=sys.stderr)
            return 2

    return run


@_real_errors
def _cmd_data_download(args: argparse.Namespace) -> int:
    from mtlkit.data.real.download import download

    files = download(args.id, raw=args.raw, include_optional=args.all)
    print(f"{len(files)} file(s) present in the raw folder; next: `mtlkit data prepare {args.id}`")
    return 0


@_real_errors
def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from mtlkit.data.real.prepare import prepare

    options = {}
    if args.size:
        options["size"] = tuple(args.size)
    for key in ("splits", "mapping"):
        if getattr(args, key):
            options[key] = args.__dict__[key]
    out = prepare(args.id, raw=args.raw, out=args.out, **options)
    where = f" --root {out}" if args.out else ""
    print(f"prepared {args.id} at {out}; check it with `mtlkit data verify {args.id}{where}`")
    return 0


@_real_errors
def _cmd_data_verify(args: argparse.Namespace) -> int:
    from mtlkit.data.real.download import verify

    problems = verify(args.id, root=args.root, raw=args.raw, samples=args.samples,
                      expect_counts=None if args.root is None else args.counts)
    for p in problems:
        print(f"PROBLEM: {p}")
    print(f"{args.id}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 0 if not problems else 1


@_real_errors
def _cmd_data_twin(args: argparse.Namespace) -> int:
    from mtlkit.data.real.twins import write_twin

    out = write_twin(args.id, args.out, n=args.n, seed=args.seed, size=tuple(args.size) if args.size else None,
                     layout=args.layout)
    if args.layout == "official":
        print(f"wrote the official raw {args.id} release as a twin ({args.n} items per split) to {out}; convert it "
              f"with `mtlkit data prepare {args.id} --raw {out} --out DIR`")
    else:
        print(f"wrote a {args.id} format twin ({args.n} items per split) to {out}; load it with "
              f"get_dataset({args.id!r}, SPLIT, root={str(out)!r}) or check it with "
              f"`mtlkit data verify {args.id} --root {out}`")
    return 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from mtlkit.data import list_datasets
    from mtlkit.data import synth_command

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
    from mtlkit.train_cli import run_from_args

    result = run_from_args(args)
    return result if isinstance(result, int) else 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from mtlkit.reproduce import run_from_args

    return run_from_args(args)


def _assignment_source(args: argparse.Namespace) -> str:
    """``--source``, else ``assignments/source`` of the checkout in use; outside a checkout, one line on what to do."""
    if args.source:
        return args.source
    from mtlkit.paths import assignments_source_dir

    found = assignments_source_dir()
    if found is None:
        raise FileNotFoundError(f"no assignments/source folder: {Path.cwd()} is not inside an mtlkit checkout; "
                                "run from a checkout or pass --source DIR")
    return str(found)


def _cmd_assignments_list(args: argparse.Namespace) -> int:
    from mtlkit.grading.assignment import list_assignments

    source = _assignment_source(args)
    names = list_assignments(Path(source))
    print(f"assignments in {source}: {', '.join(names) or '(none)'}")
    return 0 if names else 1


def _cmd_assignments_release(args: argparse.Namespace) -> int:
    from mtlkit.grading.release import release

    path = release(args.assignment, args.out, source=_assignment_source(args))
    print(f"released {args.assignment} to {path} (solutions stubbed, hidden tests removed, grading.py not copied)")
    return 0


def _cmd_grade(args: argparse.Namespace) -> int:
    from mtlkit.grading.grade import run_from_args

    args.source = _assignment_source(args)
    return run_from_args(args)


def _usage(parser: argparse.ArgumentParser):
    """A command given without its subcommand: the usage on stderr and exit status 2, like any other usage error."""

    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        print(f"\n{parser.prog}: error: a command is required (see the list above)", file=sys.stderr)
        return 2

    return show


def _add_grading(sub, command: str | None) -> None:
    assignments = sub.add_parser("assignments", help="problem sets: list them, release the student version")
    asub = assignments.add_subparsers(dest="assignments_command", metavar="ASSIGNMENTS_COMMAND")
    p = asub.add_parser("release", help="write the student notebook: stubs, no hidden tests, locked cells")
    p.add_argument("assignment", help="assignment name, e.g. PS1_joint")
    p.add_argument("--out", required=True, help="release folder (the notebook goes to OUT/PS/PS.ipynb)")
    p.add_argument("--source", default=None, help=SOURCE_HELP)
    p.set_defaults(func=_cmd_assignments_release)
    p = asub.add_parser("list", help="list the assignments found in the instructor sources")
    p.add_argument("--source", default=None, help=SOURCE_HELP)
    p.set_defaults(func=_cmd_assignments_list)
    assignments.set_defaults(func=_usage(assignments))
    p = sub.add_parser("grade", help="grade submissions in a sandbox; write a gradebook CSV and feedback")
    if command == "grade":
        from mtlkit.grading.options import add_arguments as add_grade_arguments

        add_grade_arguments(p)
        p.set_defaults(func=_cmd_grade)


def _add_train(sub, full: bool) -> None:
    """The train options come from the training module, which imports torch: only added when ``train`` is run.

    (Likewise ``reproduce`` and ``grade`` load their options only when run, so ``mtlkit --help`` stays instant.)
    """
    p = sub.add_parser("train", help="train a model on a dataset through the Trainer")
    if not full:
        return
    from mtlkit.train_cli import add_arguments

    add_arguments(p)
    p.set_defaults(func=_cmd_train)


def _add_pretrain(sub, full: bool) -> None:
    """``mtlkit pretrain``: the kit's synthetic stand-in for pretrained encoder weights (imports torch when run)."""
    p = sub.add_parser("pretrain", help="train (or reuse the cached) synthetic stand-in for pretrained encoder weights")
    if not full:
        return
    from mtlkit import pretrain

    pretrain.add_arguments(p)
    p.set_defaults(func=pretrain.run_from_args)


def build_parser(prog: str = "mtlkit", command: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``command`` is the subcommand about to run: only its options are loaded if they are heavy."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="mtlkit: a notebook-first course and reproduction kit for multi-task dense prediction.",
        epilog="data folder: $MTLKIT_DATA_DIR, else data/ of the mtlkit checkout in use, else ~/.cache/mtlkit "
               "(`mtlkit doctor` shows which)",
    )
    from mtlkit import __version__

    parser.add_argument("-V", "--version", action="version", version=f"mtlkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("doctor", help="check the installation: versions, devices, data dir, two training steps")
    p.set_defaults(func=_cmd_doctor)

    data = sub.add_parser("data", help="datasets: list, synthesise, show, download, prepare, verify, twin")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    p = dsub.add_parser("list", help="list the datasets the kit knows (real ones with size, licence, presence)")
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
    p = dsub.add_parser("download", help="fetch a real dataset's archives (or print the manual steps)")
    p.add_argument("id", help="registry id, e.g. oxford-pet (see `mtlkit data list`)")
    p.add_argument("--raw", default=None, help="target folder (default: <data dir>/raw/ID)")
    p.add_argument("--all", action="store_true", help="also fetch optional/alternative sources")
    p.set_defaults(func=_cmd_data_download)
    p = dsub.add_parser("prepare", help="convert/unpack raw archives into the loader's layout")
    p.add_argument("id")
    p.add_argument("--raw", default=None, help="raw folder (default: <data dir>/raw/ID)")
    p.add_argument("--out", default=None, help="output folder (default: <data dir>/prepared/ID)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="nyuv2/cityscapes conversion from the official data: output size (default 288 384 / 128 256)")
    p.add_argument("--splits", default=None, help="nyuv2: splits.mat or splits.json")
    p.add_argument("--mapping", default=None,
                   help="nyuv2: class mapping(s) to 13 classes, comma-separated and applied in order (e.g. "
                        "classMapping40.mat,class13Mapping.mat; or one 894-entry .npy/.txt); default: found in the "
                        "raw folder")
    p.set_defaults(func=_cmd_data_prepare)
    p = dsub.add_parser("verify", help="check archive hashes and the contents (counts, shapes, dtypes, ranges)")
    p.add_argument("id")
    p.add_argument("--root", default=None, help="dataset folder (default: <data dir>/prepared/ID)")
    p.add_argument("--raw", default=None, help="raw folder with the archives (default: <data dir>/raw/ID)")
    p.add_argument("--samples", type=int, default=4, help="items checked per split (default 4)")
    p.add_argument("--counts", action="store_true", help="with --root: also require the release's item counts")
    p.set_defaults(func=_cmd_data_verify)
    p = dsub.add_parser("twin", help="write a small synthetic dataset in a real dataset's exact on-disk format")
    p.add_argument("id")
    p.add_argument("--out", required=True, help="an empty or new folder")
    p.add_argument("--n", type=int, default=3, help="items per split (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None, help="default 32 32 (32 64 city)")
    p.add_argument("--layout", default=None, help="nyud-mt: mtl-pytorch | astmt; broden: broden+ | netdissect; "
                   "nyuv2, cityscapes: official (the raw release that `data prepare` converts)")
    p.set_defaults(func=_cmd_data_twin)
    data.set_defaults(func=_usage(data))

    _add_train(sub, full=command == "train")
    _add_pretrain(sub, full=command == "pretrain")

    p = sub.add_parser("reproduce", help="run the notebooks headlessly through papermill and collect results")
    if command == "reproduce":
        from mtlkit.reproduce import add_arguments as add_reproduce_arguments

        add_reproduce_arguments(p)
        p.set_defaults(func=_cmd_reproduce)
    _add_grading(sub, command)
    return parser


def main(argv: list[str] | None = None, prog: str = "mtlkit") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(prog, command)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        return _usage(parser)(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        # on its own line, not glued to the end of a progress bar
        print(("\n" if sys.stderr.isatty() else "") + "mtlkit: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError, DataDirError) as exc:
        # User-facing errors carry their own fix; a traceback would only bury it (MTLKIT_DEBUG=1 shows it).
        if os.environ.get("MTLKIT_DEBUG"):
            raise
        print(f"mtlkit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
