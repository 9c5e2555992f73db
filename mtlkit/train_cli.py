"""``mtlkit train`` (and ``python -m mtlkit.train_cli``): data, model and Trainer from command-line options, and
:func:`train_single_task`, the same in one Python call for a single-task baseline.

Bad options fail before any data is built or any epoch runs, in one line that names the flag and the fix: an
unknown ``--model-opt`` key or a value of the wrong type (the valid keys come from the model's constructor), an
``--out`` that cannot be a folder. Importing this module does not import torch (``mtlkit train --help`` is quick).
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
import typing
from pathlib import Path
from typing import Any
from collections.abc import Mapping, Sequence

from mtlkit.train_config import OPTIMIZERS, SCHEDULERS

__all__ = ["add_arguments", "run_from_args", "main", "train_single_task", "model_option_keys", "check_out_dir"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mtlkit train``."""
    a = parser.add_argument
    a("--data", default="synthetic-nyu", help="dataset name (default: synthetic-nyu)")
    a("--preset", default="smoke", help="unit | smoke | lesson | paper (default: smoke)")
    a("--root", default=None, help="dataset root for real datasets")
    a("--data-opt", action="append", metavar="KEY=VALUE", help="dataset option, e.g. classes=7 (repeatable)")
    a("--model", default="tiny", help="model name of mtlkit.models (default: tiny)")
    a("--model-opt", action="append", metavar="KEY=VALUE", help="model option, e.g. width=8 (repeatable)")
    a("--tasks", default=None, help="comma-separated tasks (default: all the dataset's tasks)")
    a("--epochs", type=int, default=10)
    a("--batch-size", type=int, default=8)
    a("--max-steps", type=int, default=None,
      help="dry run: at most this many batches per training epoch and per evaluation; metrics.json then records "
           "the seconds per step and the projected full-length time")
    a("--lr", type=float, default=1e-3)
    a("--optimizer", default="adam", choices=OPTIMIZERS)
    a("--weight-decay", type=float, default=0.0)
    a("--momentum", type=float, default=0.9)
    a("--scheduler", default=None, choices=[s for s in SCHEDULERS if s])
    a("--step-size", type=int, default=None, help="epochs per step of the step scheduler")
    a("--gamma", type=float, default=0.1)
    a("--power", type=float, default=0.9)
    a("--grad-clip", type=float, default=None)
    a("--weighting", default="equal",
      help="equal | static | uncertainty | dwa | gradnorm | pcgrad | mgda | cagrad | imtlg | nashmtl")
    a("--weighting-opt", action="append", metavar="KEY=VALUE",
      help="weighting option, e.g. 'weights={semseg: 0.5, depth: 0.5}' or alpha=1.5 (repeatable)")
    a("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    a("--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision (default: on for CUDA)")
    a("--seed", type=int, default=0)
    a("--num-workers", type=int, default=0)
    a("--out", default=None, help="output folder (default: runs/<data>-<model>-<preset>-s<seed>)")
    a("--resume", action=argparse.BooleanOptionalAction, default=True, help="continue from OUT/last.pt")
    a("--progress", action=argparse.BooleanOptionalAction, default=None,
      help="progress reports (default: bars in a terminal, one line per epoch otherwise; MTLKIT_PROGRESS="
           "auto|bars|text|lines|off chooses)")


def _key_values(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def model_option_keys(name: str) -> dict[str, inspect.Parameter] | None:
    """The keyword options model ``name`` takes (from its builder's and its class's constructor signatures), or
    None when they cannot be known (a ``**options`` that leads nowhere inspectable)."""
    from mtlkit.models import _REGISTRY, _load_families

    _load_families()
    if name not in _REGISTRY:
        return None
    builder = _REGISTRY[name].fn
    keys: dict[str, inspect.Parameter] = {}
    chain: list[Any] = [builder]
    try:
        cls = typing.get_type_hints(builder).get("return")
    except Exception:  # unresolvable annotations: the builder's own signature is all we know
        cls = None
    if inspect.isclass(cls):
        chain += [k.__init__ for k in cls.__mro__ if "__init__" in vars(k) and k.__module__.startswith("mtlkit")]
    for fn in chain:
        params = list(inspect.signature(fn).parameters.values())[1:]  # skip tasks / self
        keys.update({p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                     and p.name not in keys and p.name != "tasks"})
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return keys
    return None


def _check_model_options(model: str, options: Mapping[str, Any]) -> None:
    keys = model_option_keys(model)
    if keys is None:
        return
    valid = ", ".join(f"{k}={p.default!r}" if p.default is not p.empty else k for k, p in keys.items())
    for key, value in options.items():
        if key not in keys:
            raise ValueError(f"--model-opt {key}: model {model} has no option {key!r}; valid keys: {valid}")
        default = keys[key].default
        kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(type(default))
        if kinds and not (isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))):
            what = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[type(default)]
            raise ValueError(f"--model-opt {key}={value!r}: model {model} expects {what} (default {default!r}); "
                             f"valid keys: {valid}")


def check_out_dir(out: str | os.PathLike, flag: str = "--out") -> Path:
    """``out`` as a folder that exists or can be created (checked before training starts)."""
    path = Path(out)
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {out}: {parent} is a file, not a folder; choose another {flag}")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"{flag} {out}: cannot write in {parent}; choose another {flag}")
            break
    path.mkdir(parents=True, exist_ok=True)
    return path


def _splits_and_model(data: str, model: str, preset: str, root: Any, seed: int, data_options: Mapping[str, Any],
                      model_options: Mapping[str, Any], tasks: Sequence[str] | None) -> tuple[dict, dict, Any]:
    """The train/val/test splits of ``data``, the tasks' specs and the model built for them (seeded)."""
    from mtlkit.data import get_dataset
    from mtlkit.models import build
    from mtlkit.tasks import make_task
    from mtlkit.train import seed_everything

    _check_model_options(model, model_options)
    splits = {s: get_dataset(data, s, preset=preset, root=root, seed=seed, **dict(data_options))
              for s in ("train", "val", "test")}
    train = splits["train"]
    names = list(tasks) if tasks else list(train.tasks)
    missing = [t for t in names if t not in train.tasks]
    if missing:
        raise ValueError(f"--tasks {','.join(missing)}: not labelled by {data}; it labels {','.join(train.tasks)}")
    specs = {t: make_task(t, **dict(train.task_info.get(t, {}))) for t in names}
    seed_everything(seed)
    try:
        net = build(model, {t: s.out_channels for t, s in specs.items()}, **dict(model_options))
    except TypeError as exc:  # an option the signature check could not see
        raise ValueError(f"--model-opt: model {model} rejected the options {dict(model_options)}: {exc}") from None
    return splits, specs, net


def train_single_task(dataset: str, task: str, model: str = "tiny", *, preset: str = "smoke",
                      root: str | os.PathLike | None = None, seed: int = 0,
                      model_options: Mapping[str, Any] | None = None, data_options: Mapping[str, Any] | None = None,
                      out_dir: str | os.PathLike | None = None, **trainer_options: Any) -> dict[str, Any]:
    """Train the single-task baseline of ``task`` on ``dataset`` (train/val/test); returns its metrics.json."""
    from mtlkit.train import Trainer

    splits, specs, net = _splits_and_model(dataset, model, preset, root, seed, data_options or {},
                                           model_options or {}, [task])
    out_dir = out_dir or Path("runs") / f"single-{dataset}-{task}-{model}-{preset}-s{seed}"
    extra = {"model": model, "model_options": dict(model_options or {}), **trainer_options.pop("extra", {})}
    return Trainer(net, splits["train"], splits["val"], splits["test"], tasks=specs, out_dir=out_dir, seed=seed,
                   extra=extra, **trainer_options).fit()


def run_from_args(args: argparse.Namespace) -> int:
    """Build data, model and Trainer from parsed ``mtlkit train`` arguments; train; print a summary."""
    from mtlkit.ddp import shutdown
    from mtlkit.train import TrainConfig, Trainer

    out = args.out or os.path.join("runs", f"{args.data}-{args.model}-{args.preset}-s{args.seed}")
    data_opts = _key_values(args.data_opt, "--data-opt")
    model_opts = _key_values(args.model_opt, "--model-opt")
    config = TrainConfig(
        out_dir=out, epochs=args.epochs, batch_size=args.batch_size, max_steps=args.max_steps,
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum,
        scheduler=args.scheduler, step_size=args.step_size, gamma=args.gamma, power=args.power,
        grad_clip=args.grad_clip, weighting=args.weighting,
        weighting_options=_key_values(args.weighting_opt, "--weighting-opt"), device=args.device, amp=args.amp,
        seed=args.seed, num_workers=args.num_workers, resume=args.resume, progress=args.progress,
        extra={"model": args.model, "model_options": model_opts, "data_options": data_opts},
    )
    check_out_dir(out)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    splits, specs, model = _splits_and_model(args.data, args.model, args.preset, args.root, args.seed, data_opts,
                                             model_opts, tasks)
    trainer = Trainer(model, splits["train"], splits["val"], splits["test"], config=config, tasks=specs)
    try:
        metrics = trainer.fit()
    finally:
        shutdown(trainer.dist)
    if trainer.dist.is_main:
        best = metrics["best"] or {}
        print(f"best epoch {best.get('epoch', -1) + 1}/{args.epochs} (selected on {best.get('selected_on')}); "
              f"metrics: {Path(out) / 'metrics.json'}")
        for task, values in (metrics["test"] or {}).items():
            shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
            print(f"  test {task}: {shown}")
        if metrics.get("capped"):
            print(f"  capped at {args.max_steps} steps per pass; full length would take about "
                  f"{metrics['timings']['projected_full_seconds'] / 60:.1f} min at the measured speed")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mtlkit.train_cli ...`` (the same options as ``mtlkit train``)."""
    parser = argparse.ArgumentParser(prog="mtlkit train", description="train a model through the mtlkit Trainer")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
