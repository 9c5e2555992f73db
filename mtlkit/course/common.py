"""What the course notebooks share: preset schedules, train-or-load, the growing results table, paper numbers.

A notebook calls :func:`train_or_load` for each model it trains. The run lands in ``OUT_DIR/<run name>/`` (the
Trainer's checkpoints and ``metrics.json``); when that folder already holds a finished run with the same
fingerprint (model, data, schedule), the notebook loads its best checkpoint and metrics instead of retraining, so
re-opening a notebook shows its figures at once. :func:`write_notebook_results` writes the notebook's own
``OUT_DIR/metrics.json``; :func:`course_table` reads every sibling notebook's file, so the results table grows
from notebook to notebook (in ``runs/notebooks/`` when run by hand, in ``runs/<preset>/`` under ``mtlkit reproduce``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.data import Subset

PRESETS = ("unit", "smoke", "lesson", "paper")

# Schedules per preset for the DeepLab notebooks (01-05). smoke/unit shrink the model (ResNet-18, narrow ASPP and
# decoder) because a full-width DeepLabV3+ takes ~0.7 s per step at 64x128 on 2 cores; cells that check parameter
# counts always build the full-size model. paper is the DLAD course recipe (REFERENCE.md).
# train_images / val_images: the first N images of those splits (None: all). Notebook 01 trains one model on that;
# notebooks 02-05 compare several models each, and in smoke every one of those runs uses the shorter *study*
# schedule (study_epochs on the first study_train_images), so the whole course stays within a few CPU minutes.
DEEPLAB_SCHEDULES: dict[str, dict[str, Any]] = {
    "unit": dict(data="synthetic-city", data_preset="unit", epochs=1, batch_size=4, optimizer="adam", lr=1e-3,
                 weight_decay=0.0, scheduler=None, encoder="resnet18", aspp_channels=16, decoder_channels=16,
                 skip_channels=8, loss_weights={"semseg": 0.5, "depth": 0.5}, train_images=None, val_images=None,
                 study_epochs=None, study_train_images=None),
    "smoke": dict(data="synthetic-city", data_preset="smoke", epochs=3, batch_size=8, optimizer="adam", lr=1e-3,
                  weight_decay=0.0, scheduler=None, encoder="resnet18", aspp_channels=64, decoder_channels=64,
                  skip_channels=24, loss_weights={"semseg": 0.5, "depth": 0.5}, train_images=96, val_images=32,
                  study_epochs=2, study_train_images=64),
    "lesson": dict(data="synthetic-city", data_preset="lesson", epochs=12, batch_size=8, optimizer="adam",
                   lr=5e-4, weight_decay=1e-4, scheduler="poly", encoder="resnet34", aspp_channels=256,
                   decoder_channels=256, skip_channels=48, loss_weights={"semseg": 0.5, "depth": 0.5},
                   train_images=None, val_images=None, study_epochs=None, study_train_images=None),
    "paper": dict(data="miniscapes", data_preset="paper", epochs=16, batch_size=4, optimizer="sgd", lr=0.01,
                  momentum=0.9, weight_decay=1e-4, scheduler="poly", power=0.9, encoder="resnet34",
                  aspp_channels=256, decoder_channels=256, skip_channels=48, pretrained=True,
                  loss_weights={"semseg": 0.5, "depth": 0.5}, train_images=None, val_images=None,
                  study_epochs=None, study_train_images=None),
}

# Numbers from the papers and courses (REFERENCE.md), always shown labelled as references, never as kit results.
REFERENCE_RESULTS: dict[str, dict[str, Any]] = {
    "DLAD course (MiniScapes, ResNet-34, paper preset): grader score": {
        "template": 40.5, "joint + ImageNet + dilation + ASPP + skip": 62.3, "branched": 65.3,
        "distillation": 67.3, "best staff solution": 78.8,
    },
    "DLAD course: parameters with ResNet-34, 19 classes + depth (millions)": {
        "joint": 26.72, "branched": 32.14, "distillation": 36.87,
    },
}


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return preset


def deeplab_schedule(preset: str, **overrides: Any) -> dict[str, Any]:
    """The DeepLab notebooks' schedule for ``preset`` (a copy), with ``overrides`` applied."""
    return {**DEEPLAB_SCHEDULES[check_preset(preset)], **overrides}


@dataclass
class DeepLabSetup:
    """What a DeepLab notebook (01-05) needs before it builds models: see :func:`deeplab_setup`."""

    schedule: dict[str, Any]  # the preset's schedule with the overrides applied
    data: str  # dataset id
    splits: dict[str, Any]  # train / val (the schedule's first N images) / test
    tasks: dict[str, Any]  # {"semseg": Task, "depth": Task}
    task_channels: dict[str, int]  # {"semseg": 19, "depth": 1}
    model_options: dict[str, Any]  # build("deeplab-...", task_channels, **model_options)
    trainer_options: dict[str, Any]  # Trainer / train_or_load arguments: schedule, device, seed (no weighting)

    @property
    def loss_weights(self) -> dict[str, float]:
        return dict(self.schedule["loss_weights"])


def deeplab_setup(preset: str, data: str = "auto", seed: int = 0, device: str = "auto", study: bool = True,
                  epochs: int | None = None, train_images: int | None = None, **overrides: Any) -> DeepLabSetup:
    """Schedule, data, tasks, model and Trainer options of a DeepLab notebook, in one place.

    ``study=True`` (notebooks 02-05, which train several models) uses the preset's study schedule where it has one
    (smoke: ``study_epochs`` on the first ``study_train_images``); ``study=False`` (notebook 01) the full one.
    ``epochs`` / ``train_images`` override either; ``data="auto"`` is the preset's dataset; other ``overrides``
    change schedule entries (e.g. ``optimizer="sgd"``).
    """
    schedule = deeplab_schedule(preset, **overrides)
    if epochs is None:
        epochs = (study and schedule.get("study_epochs")) or schedule["epochs"]
    if train_images is None:
        train_images = (study and schedule.get("study_train_images")) or schedule.get("train_images")
    schedule["epochs"], schedule["train_images"] = int(epochs), train_images
    name = schedule["data"] if data == "auto" else data
    splits = load_splits(name, schedule["data_preset"], seed=seed)  # a real dataset says how to prepare it
    splits = first_images(splits, train_images, schedule.get("val_images"))
    from mtlkit.tasks import tasks_for

    tasks = tasks_for(splits["train"].task_info)
    model_options = {k: schedule[k] for k in ("encoder", "aspp_channels", "decoder_channels", "skip_channels")}
    model_options["pretrained"] = bool(schedule.get("pretrained", False))
    trainer_options = {k: schedule[k] for k in ("epochs", "batch_size", "optimizer", "lr", "weight_decay",
                                                "scheduler")}
    if schedule["optimizer"] == "sgd":
        trainer_options["momentum"] = schedule.get("momentum", 0.9)
    if schedule["scheduler"] == "poly":
        trainer_options["power"] = schedule.get("power", 0.9)
    trainer_options.update(device=device, seed=seed)
    return DeepLabSetup(schedule, name, splits, tasks, {t: task.out_channels for t, task in tasks.items()},
                        model_options, trainer_options)


def first_images(splits: Mapping[str, Any], train_images: int | None = None,
                 val_images: int | None = None) -> dict[str, Any]:
    """``splits`` with the training split cut to its first ``train_images`` and the validation split (where there is
    one) to its first ``val_images`` (at most all of it); None or 0 keeps a split whole; the test split stays whole.
    The presets' way to make a notebook's runs cheaper while every run sees the same images."""
    out = dict(splits)
    if train_images:
        out["train"] = subset(out["train"], int(train_images))
    if val_images and out.get("val") is not None:
        out["val"] = subset(out["val"], min(int(val_images), len(out["val"])))
    return out


def load_splits(name: str, preset: str, seed: int = 0, **options: Any) -> dict[str, Any]:
    """``{"train", "val", "test"}`` datasets of ``name``; errors (e.g. a real dataset not prepared) say what to run."""
    from mtlkit.data import get_dataset

    return {split: get_dataset(name, split, preset=preset, seed=seed, **options) for split in ("train", "val", "test")}


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able description of a run.

    Values JSON cannot hold are represented by their type name (``str()`` of an object may contain its memory
    address, which would change the hash from one session to the next and make a finished run never load).
    """
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=lambda o: type(o).__name__).encode()).hexdigest()[:16]


class TaskSubset(Subset):
    """A :class:`torch.utils.data.Subset` that keeps the dataset attributes the Trainer reads.

    ``name``, ``split``, ``preset``, ``tasks``, ``task_info`` and ``image_size`` are taken from ``dataset`` (a plain
    ``Subset`` has none of them, so the Trainer could not tell which tasks it labels).
    """

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        super().__init__(dataset, list(indices))
        for attr in ("name", "split", "preset", "tasks", "task_info", "image_size"):
            if hasattr(dataset, attr):
                setattr(self, attr, getattr(dataset, attr))

    def __repr__(self) -> str:
        return f"TaskSubset({self.dataset!r}, {len(self)} of {len(self.dataset)} items)"


def subset(dataset: Any, n: int | Sequence[int]) -> TaskSubset:
    """The first ``n`` items of ``dataset`` (or the items at the indices ``n``) as a :class:`TaskSubset`.

    For cheap ablation runs: ``subset(splits["train"], 48)``. ``n`` larger than the dataset is an error (a silent
    clamp would make two different requests train on the same data).
    """
    if isinstance(n, int):
        if not 1 <= n <= len(dataset):
            raise ValueError(f"subset size must be between 1 and {len(dataset)} (the dataset's size); got {n}")
        return TaskSubset(dataset, range(n))
    indices = [int(i) for i in n]
    bad = [i for i in indices if not 0 <= i < len(dataset)]
    if not indices or bad:
        raise ValueError(f"subset indices must be a non-empty list in [0, {len(dataset)}); got out-of-range {bad[:5]}")
    return TaskSubset(dataset, indices)


def _describe_data(dataset: Any) -> list[Any]:
    """What identifies a split in a run fingerprint: name, preset, length (and the indices of a subset)."""
    described = [getattr(dataset, "name", None), getattr(dataset, "preset", None), len(dataset)]
    if isinstance(dataset, Subset):
        described.append(fingerprint(list(map(int, dataset.indices))))
    return described


# Trainer arguments that do not change what a run computes: left out of the fingerprint, so that e.g. a run trained
# on a GPU, or with progress bars, is still loaded later.
_NOT_FINGERPRINTED = ("resume", "progress", "callbacks", "num_workers", "device", "keep_last")


def _read_metrics(path: Path) -> dict[str, Any] | None:
    """A run's metrics.json, or None when it is missing, unreadable or not a JSON object."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return metrics if isinstance(metrics, dict) else None


def train_or_load(run_name: str, model: nn.Module, splits: Mapping[str, Any], out_dir: str | os.PathLike,
                  describe: Mapping[str, Any] | None = None, **trainer_kwargs: Any) -> dict[str, Any]:
    """Train ``model`` with the Trainer into ``out_dir/run_name``, or load that run if it already finished.

    ``describe`` is whatever distinguishes this run beyond the Trainer's own arguments (model name and options);
    together they form the fingerprint that decides whether an existing run can be reused. Returns the run's
    ``metrics.json`` content; afterwards ``model`` holds the best epoch's weights either way.

    What is in ``out_dir/run_name`` decides:

    * a finished run with the same fingerprint: its ``best.pt`` is loaded, nothing is trained;
    * an unfinished run with the same fingerprint (the kernel died): the Trainer resumes it from ``last.pt``;
    * anything else (another fingerprint, a corrupt ``metrics.json`` or ``best.pt``): trained afresh, and the old
      files are replaced -- never resumed, since they belong to another run.

    A finished run keeps ``best.pt`` and ``metrics.json`` only (the Trainer's ``keep_last=False``, unless passed):
    a changed schedule is another run, so its optimiser state would never be resumed.
    """
    from mtlkit.checkpoint import CheckpointError, load_checkpoint
    from mtlkit.train import Trainer

    run_dir = Path(out_dir) / run_name
    key = fingerprint({
        "describe": describe or {},
        "trainer": {k: v for k, v in trainer_kwargs.items() if k not in _NOT_FINGERPRINTED},
        "model": type(model).__name__,
        "data": {s: _describe_data(d) for s, d in splits.items() if d is not None},
    })
    metrics = _read_metrics(run_dir / "metrics.json")
    same_run = metrics is not None and (metrics.get("config") or {}).get("fingerprint") == key
    if same_run and metrics.get("finished") and (run_dir / "best.pt").exists():
        try:
            model.load_state_dict(load_checkpoint(run_dir / "best.pt", map_location="cpu")["model"])
        except (CheckpointError, RuntimeError) as exc:  # corrupt file, or weights that do not fit the model
            print(f"{run_name}: cannot load best.pt ({str(exc)[:120]}); training afresh")
            same_run = False
        else:
            print(f"{run_name}: loaded the finished run (delete {run_name}/ in OUT_DIR to retrain)")
            return metrics
    resume = bool(trainer_kwargs.pop("resume", True)) and same_run
    trainer_kwargs.setdefault("keep_last", False)
    trainer = Trainer(model, splits["train"], splits.get("val"), splits.get("test"), out_dir=run_dir,
                      config={"fingerprint": key, "describe": dict(describe or {})}, resume=resume,
                      **trainer_kwargs)
    return trainer.fit()


def summarize(metrics: Mapping[str, Any], split: str = "test") -> dict[str, float]:
    """A flat row of one run: ``task/metric`` values on ``split``, the grader score where it applies, parameters."""
    from mtlkit.metrics import grader_score

    row: dict[str, float] = {}
    if split == "test":
        results = metrics.get("test") or {}
    else:
        best = (metrics.get("best") or {}).get("epoch", -1)
        results = next((e.get(split) or {} for e in metrics.get("epochs", []) if e["epoch"] == best), {})
    for task, values in results.items():
        for key, value in values.items():
            row[f"{task}/{key}"] = value
    if "semseg/miou" in row and "depth/si_log_rmse" in row:
        row["grader_score"] = grader_score(row["semseg/miou"], row["depth/si_log_rmse"])
    row["parameters_M"] = metrics.get("parameters", {}).get("total", math.nan) / 1e6
    row["train_seconds"] = sum(metrics.get("timings", {}).get("train_seconds", []))
    return row


def write_notebook_results(out_dir: str | os.PathLike, notebook: str, preset: str, runs: Mapping[str, Mapping],
                           extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``OUT_DIR/metrics.json`` of a notebook: one summary row per run (see :func:`summarize`)."""
    from mtlkit.atomic import atomic_write_json

    path = Path(out_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"notebook": notebook, "preset": preset, "runs": {k: dict(v) for k, v in runs.items()},
                             **dict(extra or {})})
    return path


def course_table(out_dir: str | os.PathLike, preset: str | None = None):
    """Every finished notebook's runs next to ``out_dir`` (its siblings), as a DataFrame indexed by notebook/run."""
    import pandas as pd

    rows = []
    for path in sorted(Path(out_dir).resolve().parent.glob("*/metrics.json")):
        data = _read_metrics(path)
        if data is None or not isinstance(data.get("runs"), dict) or (preset and data.get("preset") != preset):
            continue
        for run, values in data["runs"].items():
            rows.append({"notebook": data.get("notebook", path.parent.name), "run": run, **values})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).set_index(["notebook", "run"])


def relative_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """CS231n's relative error, max |x - y| / max(|x| + |y|, 1e-8): ~1e-7 or less means the same computation."""
    x, y = torch.as_tensor(x).detach().double(), torch.as_tensor(y).detach().double()
    if x.shape != y.shape:  # broadcasting would compare the wrong elements without a word
        raise ValueError(f"relative_error needs two tensors of the same shape; got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if x.numel() == 0:
        raise ValueError("relative_error of empty tensors is undefined; pass tensors with at least one element")
    return float(((x - y).abs() / (x.abs() + y.abs()).clamp_min(1e-8)).max())


# ------------------------------------------------------------------------------------------------ the comparison
def results_table(folder: str | os.PathLike, preset: str | None = None):
    """Every run of every ``folder/*/metrics.json`` (a notebook's ``write_notebook_results``) as one DataFrame.

    Reads both layouts: ``runs/notebooks/<notebook>/`` (notebooks run by hand or under nbval) and
    ``runs/<preset>/<notebook>[__KEY=value...]/`` (``mtlkit reproduce``). One row per (folder, model) with columns
    ``folder`` (the subfolder: one notebook run with one parameter set), ``notebook``, ``preset``, ``model`` and every
    numeric value the notebook wrote (``task/metric``, ``parameters_M``, ``delta_m``, ...). Unreadable files and
    files of another ``preset`` are skipped; an empty or missing folder gives an empty DataFrame.
    """
    import pandas as pd

    rows = []
    for path in sorted(Path(folder).glob("*/metrics.json")):
        data = _read_metrics(path)
        if data is None or not isinstance(data.get("runs"), dict) or (preset and data.get("preset") != preset):
            continue
        for model, values in data["runs"].items():
            numbers = {k: v for k, v in (values or {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            rows.append({"folder": path.parent.name, "notebook": data.get("notebook", path.parent.name),
                         "preset": data.get("preset"), "model": model, **numbers})
    return pd.DataFrame(rows, columns=None if rows else ["folder", "notebook", "preset", "model"])


def find_results(*candidates: str | os.PathLike | None, preset: str | None = None) -> tuple[Path | None, Any]:
    """The first of ``candidates`` (folders; None is skipped) that holds runs of ``preset``, and its results_table.

    Notebook 10 passes the folder ``mtlkit reproduce`` wrote (``runs/smoke``) first and the notebooks' own
    ``runs/notebooks`` last. Returns ``(None, empty table)`` when none holds runs.
    """
    import pandas as pd

    for candidate in candidates:
        if candidate is not None and Path(candidate).is_dir():
            table = results_table(candidate, preset=preset)
            if not table.empty:
                return Path(candidate), table
    return None, pd.DataFrame(columns=["folder", "notebook", "preset", "model"])


def task_metric_columns(table) -> dict[str, str]:
    """``task -> "task/<delta metric>"`` for every registered task whose Δm metric is a column of ``table``."""
    from mtlkit.tasks import TASK_SPECS

    return {t: f"{t}/{s.delta_metric}" for t, s in TASK_SPECS.items() if f"{t}/{s.delta_metric}" in table}


def relative_to_single(table):
    """Per-task relative change (percent, positive = better) of each multi-task row against its single-task run.

    The single-task baseline of task ``t`` is the row ``single-t`` of the same ``folder`` (one notebook run: the same
    data, schedule and model width), so ``mean over the row's tasks`` is the survey Δm of
    :func:`mtlkit.metrics.delta_m`. Returns a DataFrame indexed like ``table`` (single-task rows and tasks without a
    baseline are NaN), one column per task.
    """
    import pandas as pd

    from mtlkit.tasks import TASK_SPECS

    columns = task_metric_columns(table)
    out = pd.DataFrame(index=table.index, columns=list(columns), dtype=float)
    for folder, rows in table.groupby("folder"):
        for task, col in columns.items():
            base = rows.loc[rows["model"] == f"single-{task}", col].dropna()
            if base.empty or float(base.iloc[0]) == 0:
                continue
            sign = 1.0 if TASK_SPECS[task].higher_is_better else -1.0
            multi = rows[~rows["model"].astype(str).str.startswith("single-")]
            out.loc[multi.index, task] = 100.0 * sign * (multi[col] - float(base.iloc[0])) / float(base.iloc[0])
    return out


def reference_table():
    """The papers' and courses' numbers (REFERENCE.md) the kit knows, as rows ``source, model, metric, value``.

    Collected from :data:`REFERENCE_RESULTS` and every ``*_REFERENCE`` dict of the ``mtlkit.course_*`` modules
    (``{model: {metric: value}}``, or a flat ``{metric: value}`` for one model). For display beside the kit's results,
    always labelled as references: they come from other datasets, resolutions and schedules.
    """
    import importlib
    import pkgutil

    import pandas as pd

    import mtlkit

    rows = [{"source": "mtlkit.course", "model": model, "metric": title, "value": float(value)}
            for title, models in REFERENCE_RESULTS.items() for model, value in models.items()]
    for info in pkgutil.iter_modules(mtlkit.__path__):
        if not info.name.startswith("course_"):
            continue
        module = importlib.import_module(f"mtlkit.{info.name}")
        for attr in sorted(a for a in vars(module) if a.endswith("_REFERENCE")):
            table = getattr(module, attr)
            if not isinstance(table, Mapping):
                continue
            label = f"mtlkit.{info.name}.{attr}"
            for key, value in table.items():
                if isinstance(value, Mapping):  # {model: {metric: value}}
                    rows += [{"source": label, "model": key, "metric": m, "value": float(v)} for m, v in value.items()]
                else:  # {metric: value}: one model, named by the table
                    rows.append({"source": label, "model": attr.removesuffix("_REFERENCE").lower() + " (paper)",
                                 "metric": key, "value": float(value)})
    return pd.DataFrame(rows, columns=["source", "model", "metric", "value"])
