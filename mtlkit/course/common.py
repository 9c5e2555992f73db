"""What every course notebook shares: presets, the setup object, one call per trained model, data cuts.

A notebook makes one :class:`Setup` (``course.<family>.setup(PRESET, ...)``: schedule, splits, tasks, model and
Trainer options) and trains each model with :func:`run`: seed, build, a fingerprint of what was built (registry
name, build options, tasks, data, Trainer options), then train, or load the finished run with that fingerprint
from ``OUT_DIR/<run name>/``, so re-opening a notebook shows its figures at once. :func:`predict` runs a trained
model on CPU tensors wherever the Trainer left it (a GPU in the paper preset).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.data import Subset

from mtlkit.course.results import _read_metrics, summarize
from mtlkit.presets import PRESETS  # defined once, torch-free


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return preset


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
        for attr in ("name", "split", "preset", "tasks", "task_info", "image_size", "labelled"):
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


def _describe_tasks(tasks: Any) -> Any:
    """Task names with the Task class (e.g. OwnerPartsTask) and its loss and meter options, for a fingerprint (a
    changed meter option, e.g. ``absent="zero"``, is another run); Task objects are not JSON."""
    if isinstance(tasks, Mapping):
        return {name: [type(task).__name__, _json_safe(getattr(task, "loss_options", {})),
                       _json_safe(getattr(task, "meter_options", {}))] for name, task in tasks.items()}
    return list(tasks) if tasks is not None else None


def tasks_with_options(task_info: Mapping[str, Mapping[str, Any]], schedule: Mapping[str, Any]) -> dict[str, Any]:
    """``{task: Task}`` of a dataset's ``task_info`` with the schedule's ``task_options`` applied (e.g. a meter
    convention of the paper being compared with); an option for a task the data lacks is an error."""
    from mtlkit.tasks import tasks_for

    options = dict(schedule.get("task_options") or {})
    unknown = sorted(set(options) - set(task_info))
    if unknown:
        raise ValueError(f"task_options name tasks {unknown} that the data does not label ({', '.join(task_info)})")
    return tasks_for({t: {**dict(info or {}), **options.get(t, {})} for t, info in task_info.items()})


def run_fingerprint(model: nn.Module, splits: Mapping[str, Any], built: Mapping[str, Any] | None = None,
                    **trainer_kwargs: Any) -> str:
    """The fingerprint of a run: what was built (``built``: registry name, task channels, options; always the model's
    class and parameter shapes), the data and the Trainer arguments that change the result."""
    trainer = {k: v for k, v in trainer_kwargs.items() if k not in _NOT_FINGERPRINTED}
    if "tasks" in trainer:
        trainer["tasks"] = _describe_tasks(trainer["tasks"])
    shapes = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    return fingerprint({
        "built": dict(built or {}),
        "model": type(model).__name__,
        "shapes": fingerprint(shapes),
        "trainer": trainer,
        "data": {s: _describe_data(d) for s, d in splits.items() if d is not None},
    })


def train_or_load(run_name: str, model: nn.Module, splits: Mapping[str, Any], out_dir: str | os.PathLike,
                  built: Mapping[str, Any] | None = None, **trainer_kwargs: Any) -> dict[str, Any]:
    """Train ``model`` with the Trainer into ``out_dir/run_name``, or load that run if it already finished.

    ``built`` is what :func:`run` gave ``build()`` (registry name, task channels, options); with the model's class
    and parameter shapes, the data and the Trainer's arguments it forms the fingerprint (:func:`run_fingerprint`)
    that decides, from what is in ``out_dir/run_name``:

    * a finished run with the same fingerprint: its ``best.pt`` is loaded, nothing is trained;
    * an unfinished run with the same fingerprint (the kernel died): the Trainer resumes it from ``last.pt``;
    * anything else (another fingerprint, a corrupt ``metrics.json`` or ``best.pt``): trained afresh.

    Returns the run's ``metrics.json`` content; ``model`` holds the best epoch's weights either way. A finished run
    keeps ``best.pt`` and ``metrics.json`` only (``keep_last=False`` unless passed).
    """
    from mtlkit.checkpoint import CheckpointError, load_checkpoint
    from mtlkit.train import Trainer

    run_dir = Path(out_dir) / run_name
    key = run_fingerprint(model, splits, built, **trainer_kwargs)
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
                      config={"fingerprint": key, "built": _json_safe(dict(built or {}))}, resume=resume,
                      **trainer_kwargs)
    return trainer.fit()


def relative_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """CS231n's relative error, max |x - y| / max(|x| + |y|, 1e-8): ~1e-7 or less means the same computation."""
    x, y = torch.as_tensor(x).detach().double(), torch.as_tensor(y).detach().double()
    if x.shape != y.shape:  # broadcasting would compare the wrong elements without a word
        raise ValueError(f"relative_error needs two tensors of the same shape; got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if x.numel() == 0:
        raise ValueError("relative_error of empty tensors is undefined; pass tensors with at least one element")
    return float(((x - y).abs() / (x.abs() + y.abs()).clamp_min(1e-8)).max())




# ------------------------------------------------------------------------------------------------ setup and run
#: Schedule keys that are Trainer arguments (each family's schedule holds the ones it uses).
TRAINER_KEYS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "scheduler", "step_size",
                "gamma", "power", "param_groups", "drop_last")


@dataclass
class Setup:
    """Everything a notebook needs before it trains: made by ``course.<family>.setup(preset, ...)``."""

    preset: str
    data: str  # dataset id
    schedule: dict[str, Any]  # the preset's schedule with the notebook's overrides applied
    splits: dict[str, Any]  # train / val / test, cut to the schedule's first images; val may be None
    tasks: dict[str, Any]  # {name: Task}
    task_channels: dict[str, int]  # {name: output channels}
    model_options: dict[str, Any]  # build(name, task_channels, **model_options) for the family's models
    trainer_options: dict[str, Any]  # Trainer arguments: the schedule's, device, seed, max_steps
    out_dir: Path  # where run() writes (or finds) each run's folder
    loss_weights: dict[str, float] | None = None  # static task weights, None: run()'s weighting decides
    notes: list[str] = field(default_factory=list)  # what the setup changed and why (e.g. an unlabelled split)

    def describe(self) -> str:
        """A few lines for the notebook's first output: data, splits, tasks, model, schedule, notes."""
        sizes = "/".join(str(len(self.splits[s])) if self.splits.get(s) is not None else "-"
                         for s in ("train", "val", "test"))
        size = getattr(self.splits["train"], "image_size", None)
        lines = [f"data: {self.data} ({self.schedule.get('data_preset', self.preset)}), images {size}, "
                 f"train/val/test = {sizes}",
                 f"tasks and output channels: {self.task_channels}",
                 "model options: " + ", ".join(f"{k}={_short(v)}" for k, v in self.model_options.items()),
                 "trainer: " + ", ".join(f"{k}={v}" for k, v in self.trainer_options.items() if k != "device")]
        if self.loss_weights:
            lines.append(f"loss weights: {self.loss_weights}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 5] + " ...)"


def labelled_tasks(dataset: Any) -> tuple[str, ...] | None:
    """The tasks ``dataset`` labels when it says (a withheld split labels none), else None (every task it has)."""
    labelled = getattr(dataset, "labelled", None)
    return None if labelled is None else tuple(labelled)


def labelled_splits(splits: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``splits`` with an unlabelled test split replaced, and one sentence per change or unlabelled split.

    A test split without labels (MiniScapes withholds them, as the course does) cannot be scored: the validation
    split becomes the test split and the last training images (as many as the validation split had, at most a fifth
    of the training split) become the validation split, so the best epoch is never selected on the reported split.
    """
    out, notes = dict(splits), []
    tasks = tuple((getattr(out["train"], "task_info", None) or {}).keys())
    for split in ("val", "test"):
        labelled = labelled_tasks(out[split]) if out.get(split) is not None else None
        if labelled is not None and set(tasks) - set(labelled):
            missing = [t for t in tasks if t not in labelled]
            notes.append(f"the {split} split of {getattr(out[split], 'name', 'the data')} has no labels for "
                         f"{', '.join(missing)}: its metrics for them would be NaN")
    test_labels = labelled_tasks(out["test"]) if out.get("test") is not None else None
    val_labels = labelled_tasks(out["val"]) if out.get("val") is not None else None
    if test_labels is not None and not test_labels and out.get("val") is not None and val_labels != ():
        # at least one image is held out (a tiny split, e.g. a format twin, has fewer than five), none if only one
        n = len(out["train"])
        k = min(len(out["val"]), max(1, n // 5)) if n > 1 else 0
        if k:
            notes.append(f"so the course's validation split ({len(out['val'])} images) is evaluated as the test "
                         f"split, and the last {k} training images select the best epoch")
            out = {"train": subset(out["train"], range(n - k)), "val": subset(out["train"], range(n - k, n)),
                   "test": out["val"]}
        else:
            notes.append(f"so the course's validation split ({len(out['val'])} images) is evaluated as the test "
                         "split; with one training image none is left to select an epoch: the last one is reported")
            out = {"train": out["train"], "val": None, "test": out["val"]}
    return out, notes


def make_setup(preset: str, data: str, schedule: Mapping[str, Any], splits: Mapping[str, Any],
               tasks: Mapping[str, Any], model_keys: Iterable[str], *, out_dir: str | os.PathLike,
               device: str = "auto", seed: int = 0, max_steps: int | None = None,
               loss_weights: Mapping[str, float] | None = None, cut: bool = True) -> Setup:
    """The :class:`Setup` of a family's ``setup()``: replaces an unlabelled test split (:func:`labelled_splits`),
    cuts the schedule's first images (:func:`first_images`; ``cut=False`` where the family's splits did), picks
    the model and Trainer options."""
    schedule = dict(schedule)
    splits, notes = labelled_splits(splits)
    if cut:
        splits = first_images(splits, schedule.get("train_images"), schedule.get("val_images"))
    trainer = {k: schedule[k] for k in TRAINER_KEYS if k in schedule and (schedule[k] is not None or k == "scheduler")}
    trainer.update(device=device, seed=seed)
    if max_steps is not None:  # a dry run: every training epoch and evaluation stops after max_steps batches
        trainer["max_steps"] = int(max_steps)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return Setup(preset, data, schedule, splits, dict(tasks), {t: task.out_channels for t, task in tasks.items()},
                 {k: schedule[k] for k in model_keys if k in schedule}, trainer, out,
                 dict(loss_weights) if loss_weights else None, notes)


def apply_overrides(table: Mapping[str, Mapping[str, Any]], preset: str, overrides: Mapping[str, Any],
                    who: str) -> dict[str, Any]:
    """``table[preset]`` (a copy) with the notebook's ``overrides`` applied; None values keep the preset's; an unknown
    key is an error (a typo would otherwise silently train the preset's schedule)."""
    schedule = dict(table[check_preset(preset)])
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(overrides) - set(schedule))
    if unknown:
        raise ValueError(f"{who}: unknown schedule key(s) given (unknown keys {unknown}); valid keys: "
                         f"{', '.join(sorted(schedule))}")
    schedule.update(overrides)
    return schedule


def knob_overrides(overrides: Mapping[str, Any], data: str = "auto", pretrained: bool | None = None,
                   has_pretrained: bool = True) -> dict[str, Any]:
    """A family schedule's overrides from a notebook's knobs: None keeps the preset's value, ``data`` "auto" the
    preset's dataset, ``pretrained`` only where the family's models load ImageNet weights (``has_pretrained``)."""
    out = {k: v for k, v in overrides.items() if v is not None}
    if data != "auto":
        out["data"] = data
    if pretrained is not None and has_pretrained:
        out["pretrained"] = bool(pretrained)
    return out


@dataclass
class Run:
    """One trained (or loaded) model: ``model`` holds the best epoch's weights, ``metrics`` its metrics.json."""

    name: str
    model: nn.Module
    metrics: dict[str, Any]
    dir: Path

    @property
    def test(self) -> dict[str, dict[str, float]]:
        """Test metrics ``{task: {metric: value}}`` of the best epoch."""
        return self.metrics.get("test") or {}

    def summary(self, split: str = "test") -> dict[str, float]:

        return summarize(self.metrics, split=split)


def select_tasks(tasks: Mapping[str, Any], chosen: str | Iterable[str] | None) -> dict[str, Any]:
    """``{name: Task}`` of ``chosen`` (a name, names, or None for all) among ``tasks``."""
    names = list(tasks) if chosen is None else [chosen] if isinstance(chosen, str) else list(chosen)
    unknown = [t for t in names if t not in tasks]
    if unknown or not names:
        raise ValueError(f"run: unknown or no tasks {unknown or names}; the setup's tasks are {', '.join(tasks)}")
    return {t: tasks[t] for t in names}


def state_digest(model: nn.Module) -> str:
    """A hash of every parameter and buffer value: identifies weights set after build() (e.g. copied from runs)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: type(o).__name__))


def run(setup: Setup, name: str, model: str, tasks: str | Iterable[str] | None = None, *,
        weighting: str | None = None, loss_weights: Mapping[str, float] | None = None,
        init: Callable[[nn.Module], Any] | None = None, splits: Mapping[str, Any] | None = None,
        train: Mapping[str, Any] | None = None, callbacks: Sequence[Any] = (), progress: bool | None = None,
        depth_bias: bool = True, **options: Any) -> Run:
    """Train model ``model`` (a registry name) as run ``name`` of ``setup``, or load it when it already finished.

    Seeds, builds ``model`` for ``tasks`` (None: all of the setup's) with ``setup.model_options`` updated by
    ``options``, calls ``init(model)`` (e.g. copying trained weights in; the weights it sets join the fingerprint),
    then :func:`train_or_load` into ``setup.out_dir / name``. Loss weighting: ``weighting`` if given; otherwise
    static weights (``loss_weights``, else the setup's, 1 for a task they do not name) where there are any, else the
    Trainer's default. ``train`` overrides Trainer arguments for this run (e.g. ``{"epochs": 1, "aux_weight": 0.1}``);
    ``splits`` replaces the setup's data (e.g. a few images for a quick grid). With ``depth_bias`` (default) a depth
    head starts at the training split's mean depth (:func:`start_depth_at_train_mean`), before ``init``.
    """
    from mtlkit.models import build
    from mtlkit.train import seed_everything

    chosen = select_tasks(setup.tasks, tasks)
    channels = {t: int(setup.task_channels[t]) for t in chosen}
    build_options = {**setup.model_options, **options}
    trainer = {**setup.trainer_options, **dict(train or {})}
    if trainer.get("max_steps") is None:
        trainer.pop("max_steps", None)  # the Trainer before max_steps does not know the argument
    weights = loss_weights if loss_weights is not None else setup.loss_weights
    if weighting is not None and weighting != "static":
        trainer["weighting"] = weighting
    elif weights and "weighting" not in trainer:
        trainer.update(weighting="static", weighting_options={"weights": {t: float(weights.get(t, 1.0))
                                                                           for t in chosen}})
    seed_everything(int(trainer.get("seed", 0)))
    net = build(model, channels, **build_options)
    built = {"model": model, "task_channels": channels, "options": _json_safe(build_options)}
    if depth_bias and "depth" in channels:
        built["depth_bias"] = start_depth_at_train_mean(net, setup)
    if init is not None:
        init(net)
        built["init"] = state_digest(net)
    metrics = train_or_load(name, net, dict(splits or setup.splits), setup.out_dir, built=built, tasks=chosen,
                            callbacks=list(callbacks), progress=progress, **trainer)
    return Run(name, net.eval(), metrics, Path(setup.out_dir) / name)


#: Training images read to estimate the mean depth for the depth head's starting bias (a bias needs no more).
DEPTH_BIAS_IMAGES = 256


def start_depth_at_train_mean(model: nn.Module, setup: Setup) -> float:
    """Set the bias of ``model``'s depth output layer to the mean valid depth of (the first
    :data:`DEPTH_BIAS_IMAGES` of) the setup's training split, in metres, and return it.

    A depth head that starts at 0 m has to climb to a mean of ~15 m at Adam's ~lr per step, which takes longer than
    a lesson trains; starting at the mean is the usual remedy (docs/models.md, "Output bias"). The value is
    computed once per setup and remembered in ``setup.notes``.
    """
    from mtlkit.baselines import fit_trivial
    from mtlkit.models import set_output_bias

    cache = setup.__dict__.setdefault("_depth_bias", {})
    if "value" not in cache:
        train = setup.splits["train"]
        head = subset(train, min(len(train), DEPTH_BIAS_IMAGES))
        cache["value"] = round(float(fit_trivial({"depth": setup.tasks["depth"]}, head)["depth"].value), 4)
        setup.notes.append(f"depth heads start at the training split's mean depth, {cache['value']:.2f} m "
                           f"(their output layer's bias; see course.start_depth_at_train_mean)")
    set_output_bias(model, "depth", cache["value"])
    return cache["value"]


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters are (the Trainer leaves a trained model on its device, e.g. a GPU)."""
    return next(iter(model.parameters()), torch.empty(0)).device


def predict(model: nn.Module, images: torch.Tensor) -> Any:
    """``model(images)`` in eval mode without gradients, ``images`` moved to the model's device; the outputs (a
    tensor, or a dict / tuple of them) come back on the CPU, ready for figures and metrics."""
    model.eval()
    with torch.no_grad():
        out = model(images.to(model_device(model)))
    return _to_cpu(out)


def _to_cpu(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.cpu()
    if isinstance(out, Mapping):
        return {k: _to_cpu(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_to_cpu(v) for v in out)
    return out


def draw_row(axes: Sequence[Any], panels: Sequence[tuple[str, Any, Mapping[str, Any]]], titles: bool = True,
             fontsize: int = 8) -> None:
    """One row of a prediction figure: ``panels`` of ``(title, image, imshow kwargs)`` on ``axes``, without axes;
    the titles only where ``titles`` (the first row)."""
    for ax, (title, image, kw) in zip(axes, panels):
        ax.imshow(image, **kw)
        ax.set_axis_off()
        if titles:
            ax.set_title(title, fontsize=fontsize)
