"""A pretrained-encoder stand-in the kit makes itself, for the initialisation lesson where ImageNet is out of reach.

:func:`pretrain_encoder` trains a timm ResNet encoder (:class:`~mtlkit.models.encoders.ResNetEncoder`) with a
global-pool + linear head on an image-level task drawn from the kit's own synthetic scenes (``synthetic-broden``:
the layout of a rendered scene, or the texture of a close-up; 11 classes), on a generator seed that no lesson reads,
and caches the encoder weights as safetensors plus a JSON sidecar (what it was trained on, accuracy, steps) under
``cache_dir()/pretrained``. The head is stored beside them (``head.*``) but never loaded into an encoder.

:func:`load_pretrained_encoder` initialises an encoder from ImageNet (timm) or from this stand-in and returns a
label saying which, for a notebook to print. ``mtlkit pretrain --encoder resnet18 --preset lesson`` builds the cache.

>>> from mtlkit.models import build
>>> model = build("deeplab-joint", {"semseg": 19, "depth": 1}, encoder="resnet18")
>>> print(load_pretrained_encoder(model, source="synthetic", preset="unit"))  # doctest: +SKIP
encoder initialised from the kit's synthetic stand-in (not ImageNet): resnet18, 56.2% held-out ...
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mtlkit.atomic import atomic_write_bytes, atomic_write_json
from mtlkit.models.encoders import ENCODERS, PretrainedWeightsUnavailable, ResNetEncoder, create_encoder
from mtlkit.paths import cache_dir

__all__ = ["PRETRAIN_PRESETS", "PRETRAIN_DATASET", "PRETRAIN_DATA_SEED", "CLASS_NAMES", "SOURCES", "PretrainPreset",
           "StandIn", "pretrain_encoder", "load_pretrained_encoder", "stand_in_data", "stand_in_label",
           "stand_in_path", "add_arguments", "run_from_args", "main"]

#: The dataset whose scenes the stand-in learns from, and the generator seed reserved for it: the course's lessons,
#: presets and tests read seeds 0, 1, 2, ... of their datasets, so no lesson evaluates on these images.
PRETRAIN_DATASET = "synthetic-broden"
PRETRAIN_DATA_SEED = 104729

#: Bump when the training recipe or the file layout changes: older caches are then rebuilt.
FORMAT_VERSION = 1

SOURCES: tuple[str, ...] = ("imagenet", "synthetic", "auto")

_HEAD_PREFIX = "head."


def _scene_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from mtlkit.data.scenes import LAYOUTS, TEXTURES

    return tuple(LAYOUTS), tuple(TEXTURES)


#: The stand-in's classes: the layout of a rendered scene (every source but the "dtd" close-ups), or the texture
#: of a "dtd" close-up of one surface (nothing else is in view, so its layout is meaningless).
CLASS_NAMES: tuple[str, ...] = (tuple(f"scene: {n}" for n in _scene_classes()[0])
                                + tuple(f"texture: {n}" for n in _scene_classes()[1]))


@dataclass(frozen=True)
class PretrainPreset:
    """How much the stand-in sees: square images of ``image_size``, ``train_images`` generated training scenes,
    ``heldout_images`` held-out ones (the generator's val split), ``steps`` AdamW steps of ``batch_size``."""

    image_size: int
    train_images: int
    heldout_images: int
    steps: int
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05


#: unit: seconds (tests); smoke: under a CPU minute; lesson: about five minutes of one CPU core (ResNet-18).
PRETRAIN_PRESETS: dict[str, PretrainPreset] = {
    "unit": PretrainPreset(image_size=32, train_images=192, heldout_images=96, steps=30),
    "smoke": PretrainPreset(image_size=32, train_images=512, heldout_images=192, steps=100),
    "lesson": PretrainPreset(image_size=64, train_images=2400, heldout_images=400, steps=400),
}


# ------------------------------------------------------------------------------------------------------- data
def stand_in_label(compact: dict) -> int:
    """The stand-in's class (index into :data:`CLASS_NAMES`) of a generator sample (``generate_sample``'s dict)."""
    layouts, textures = _scene_classes()
    meta = compact["meta"]
    if meta["source"] == "dtd":
        texture = int(compact["texture"])
        if not 0 <= texture < len(textures):
            raise ValueError(f"close-up sample {meta.get('index')} has no texture label ({texture})")
        return len(layouts) + texture
    return layouts.index(meta["layout"])


def stand_in_data(split: str, count: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` scenes of the reserved seed: (images uint8 [N, 3, S, S], labels int64 [N]).

    ``split`` is the generator's: "train" for training, "val" for the held-out accuracy.
    """
    from mtlkit.data.synthetic import generate_sample

    images = torch.empty(count, 3, image_size, image_size, dtype=torch.uint8)
    labels = torch.empty(count, dtype=torch.int64)
    for i in range(count):
        sample = generate_sample(PRETRAIN_DATASET, split, i, seed=PRETRAIN_DATA_SEED, size=(image_size, image_size))
        images[i] = torch.from_numpy(sample["image"])
        labels[i] = stand_in_label(sample)
    return images, labels


# ------------------------------------------------------------------------------------------------------ model
class _Classifier(nn.Module):
    """Encoder + global average pool + linear head: images [B, 3, H, W] in [0, 1] -> logits [B, classes]."""

    def __init__(self, encoder: ResNetEncoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.channels[1], num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _, features = self.encoder(images)  # [B, C, H/32, W/32]
        return self.head(features.mean(dim=(2, 3)))


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size].float() / 255)
        correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(images), 1)


def _learning_rate(step: int, cfg: PretrainPreset) -> float:
    """Linear warm-up, then cosine decay to zero (few steps: the decay matters more than the peak)."""
    warmup = max(1, int(cfg.warmup_fraction * cfg.steps))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _train(encoder: str, cfg: PretrainPreset, seed: int, verbose: bool) -> tuple[dict[str, torch.Tensor], dict]:
    """Generate the data, train, measure; the weights (encoder keys + ``head.*``) and the sidecar's facts."""
    say = (lambda msg: print(f"mtlkit pretrain: {msg}", flush=True)) if verbose else (lambda msg: None)
    wall, cpu = time.perf_counter(), time.process_time()
    say(f"generating {cfg.train_images} + {cfg.heldout_images} {PRETRAIN_DATASET} scenes "
        f"({cfg.image_size}x{cfg.image_size}, seed {PRETRAIN_DATA_SEED})")
    train_images, train_labels = stand_in_data("train", cfg.train_images, cfg.image_size)
    heldout_images, heldout_labels = stand_in_data("val", cfg.heldout_images, cfg.image_size)
    generation_s = time.perf_counter() - wall

    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is left as it was
        torch.manual_seed(seed)
        model = _Classifier(create_encoder(encoder, output_stride=32, pretrained=False), len(CLASS_NAMES))
        model.train()
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]  # BN and biases
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        order = torch.Generator().manual_seed(seed)
        queue: list[int] = []
        running_loss, running_correct, seen = 0.0, 0, 0
        say(f"training {encoder} for {cfg.steps} steps of {cfg.batch_size} images")
        for step in range(cfg.steps):
            if len(queue) < cfg.batch_size:  # epochs of a fresh permutation; the tail carries over
                queue += torch.randperm(len(train_images), generator=order).tolist()
            index, queue = torch.tensor(queue[:cfg.batch_size]), queue[cfg.batch_size:]
            images = train_images[index].float() / 255  # [B, 3, S, S]
            flip = torch.rand(len(index), generator=order) < 0.5
            images[flip] = images[flip].flip(-1)
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(step, cfg)
            logits = model(images)
            loss = F.cross_entropy(logits, train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step >= cfg.steps - max(1, cfg.steps // 5):  # training accuracy over the last fifth
                running_loss += loss.item() * len(index)
                running_correct += int((logits.argmax(1) == train_labels[index]).sum())
                seen += len(index)
            if verbose and (step + 1) % max(1, cfg.steps // 10) == 0:
                say(f"step {step + 1}/{cfg.steps}  loss {loss.item():.3f}")
        heldout = _accuracy(model, heldout_images, heldout_labels)
    counts = torch.bincount(heldout_labels, minlength=len(CLASS_NAMES))
    facts = {
        "accuracy": {"heldout": heldout, "train_last_fifth": running_correct / max(seen, 1),
                     "chance": float(counts.max()) / max(len(heldout_labels), 1),
                     "loss_last_fifth": running_loss / max(seen, 1)},
        "heldout_class_counts": counts.tolist(),
        "seconds": {"generation": generation_s, "total_wall": time.perf_counter() - wall,
                    "total_cpu": time.process_time() - cpu},
    }
    say(f"held-out accuracy {heldout:.1%} (chance {facts['accuracy']['chance']:.1%})")
    weights = {k: v.detach().clone().contiguous() for k, v in model.encoder.state_dict().items()}
    weights.update({f"{_HEAD_PREFIX}{k}": v.detach().clone().contiguous()
                    for k, v in model.head.state_dict().items()})
    return weights, facts


# ------------------------------------------------------------------------------------------------------ cache
def _base_name(encoder: str) -> str:
    """The architecture of an encoder name: ``"resnet50.tv_in1k"`` -> ``"resnet50"`` (tags name ImageNet weights)."""
    base = str(encoder).partition(".")[0]
    if base not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; valid encoders: {', '.join(ENCODERS)}")
    return base


def _check_preset(preset: str) -> PretrainPreset:
    if preset not in PRETRAIN_PRESETS:
        raise ValueError(f"unknown pretraining preset {preset!r}; valid presets: {', '.join(PRETRAIN_PRESETS)} "
                         "(unit: seconds, smoke: about a CPU minute, lesson: a few CPU minutes)")
    return PRETRAIN_PRESETS[preset]


def stand_in_path(encoder: str, preset: str = "lesson", seed: int = 0) -> Path:
    """``cache_dir()/pretrained/<encoder>-<preset>-seed<seed>.safetensors`` (its sidecar: same name, ``.json``)."""
    _check_preset(preset)
    return cache_dir() / "pretrained" / f"{_base_name(encoder)}-{preset}-seed{int(seed)}.safetensors"


@dataclass
class StandIn:
    """A cached stand-in: its weights file, its sidecar's content, and whether this call trained it."""

    path: Path
    info: dict
    built: bool = False
    _tensors: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def sidecar(self) -> Path:
        return self.path.with_suffix(".json")

    @property
    def label(self) -> str:
        """One line for a notebook: what initialised the encoder, and how well the stand-in learned its task."""
        acc = self.info["accuracy"]
        return (f"encoder initialised from the kit's synthetic stand-in (not ImageNet): {self.info['encoder']}, "
                f"{acc['heldout']:.1%} held-out scene/texture accuracy (chance {acc['chance']:.1%}) after "
                f"{self.info['training']['steps']} steps (preset {self.info['preset']}, seed {self.info['seed']})")

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights (the keys of ``ResNetEncoder.state_dict()``), head left out."""
        return {k: v for k, v in self._load().items() if not k.startswith(_HEAD_PREFIX)}

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The dropped linear head (``weight`` [classes, C], ``bias`` [classes]), for checking the accuracy."""
        n = len(_HEAD_PREFIX)
        return {k[n:]: v for k, v in self._load().items() if k.startswith(_HEAD_PREFIX)}

    def _load(self) -> dict[str, torch.Tensor]:
        if self._tensors is None:
            self._tensors = _read_verified(self.path, self.info)
        return self._tensors

    def __str__(self) -> str:
        return f"{self.label}\n  weights: {self.path}"


class _StaleCache(Exception):
    """The cached stand-in is missing a part, corrupt, or was made with other settings (the reason says which)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_verified(path: Path, info: dict) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    data = path.read_bytes()
    if _sha256(data) != info.get("sha256"):
        raise _StaleCache(f"{path.name} does not match the sha256 in its sidecar (truncated or corrupted)")
    try:
        return load(data)
    except Exception as err:  # safetensors raises its own error types for malformed headers
        raise _StaleCache(f"{path.name} cannot be read as safetensors ({type(err).__name__})") from err


def _expected_settings(encoder: str, preset: str, seed: int) -> dict:
    from mtlkit.data.synthetic import GENERATOR_VERSION

    return {"format": FORMAT_VERSION, "encoder": encoder, "preset": preset, "seed": int(seed),
            "config": asdict(PRETRAIN_PRESETS[preset]), "data": {"dataset": PRETRAIN_DATASET,
                                                                 "data_seed": PRETRAIN_DATA_SEED,
                                                                 "generator_version": GENERATOR_VERSION}}


def _open_cached(path: Path, expected: dict) -> StandIn:
    """The cached stand-in, checked (sidecar, settings, sha256, tensor names); :class:`_StaleCache` otherwise."""
    sidecar = path.with_suffix(".json")
    if not path.exists() and not sidecar.exists():
        raise FileNotFoundError(path)
    if not path.exists() or not sidecar.exists():
        raise _StaleCache(f"{(sidecar if path.exists() else path).name} is missing (an interrupted build)")
    try:
        info = json.loads(sidecar.read_text())
    except (OSError, ValueError) as err:
        raise _StaleCache(f"{sidecar.name} is not valid JSON ({err})") from err
    for key, value in expected.items():
        if key == "data":
            found = {k: info.get("task", {}).get(k) for k in value}
        else:
            found = info.get(key)
        if found != value:
            raise _StaleCache(f"it was made with {key}={found!r}, this kit uses {value!r}")
    stand_in = StandIn(path, info)
    tensors = stand_in._load()
    missing = set(create_encoder(expected["encoder"], output_stride=32).state_dict()) - set(tensors)
    if missing:
        raise _StaleCache(f"{path.name} lacks {len(missing)} encoder tensors, e.g. {min(missing)}")
    return stand_in


def pretrain_encoder(encoder: str = "resnet18", preset: str = "lesson", seed: int = 0, force: bool = False,
                     verbose: bool = True) -> StandIn:
    """The synthetic stand-in for ``encoder``'s pretrained weights: from the cache, or trained now and cached.

    Args:
        encoder: "resnet18", "resnet34" or "resnet50" (a weight tag such as ``.tv_in1k`` is ignored: it names
            ImageNet weights).
        preset: :data:`PRETRAIN_PRESETS` key: "unit" (seconds), "smoke" (under a CPU minute), "lesson" (about five
            minutes of one CPU core for ResNet-18, 92% held-out accuracy; ResNet-34/50 have 2.0x/2.3x its FLOPs).
        seed: initialisation and batch order (the scenes are always those of :data:`PRETRAIN_DATA_SEED`).
        force: train again even if a valid cache exists.
        verbose: print what is being done (generation, every tenth of the steps, the accuracy).
    Returns:
        a :class:`StandIn`; ``str()`` of it is the label and the file. A corrupt or outdated cache file is
        rebuilt after a one-line warning.
    """
    encoder = _base_name(encoder)
    cfg = _check_preset(preset)
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0; got {seed}")
    path = stand_in_path(encoder, preset, seed)
    expected = _expected_settings(encoder, preset, seed)
    if not force:
        try:
            return _open_cached(path, expected)
        except FileNotFoundError:
            pass
        except _StaleCache as reason:
            warnings.warn(f"mtlkit pretrain: the cached stand-in {path} is unusable ({reason}); rebuilding it",
                          stacklevel=2)
    weights, facts = _train(encoder, cfg, int(seed), verbose)

    from safetensors.torch import save

    import mtlkit
    from mtlkit.data.synthetic import GENERATOR_VERSION

    data = save(weights, metadata={"format": "pt", "mtlkit": "synthetic encoder stand-in (not ImageNet)",
                                   "encoder": encoder, "preset": preset, "seed": str(int(seed))})
    info = {
        **{k: v for k, v in expected.items() if k != "data"},
        "what": "mtlkit's synthetic stand-in for pretrained encoder weights (NOT ImageNet)",
        "weights": path.name, "sha256": _sha256(data), "bytes": len(data),
        "task": {"name": "scene-or-texture", "classes": list(CLASS_NAMES),
                 "description": "image-level classification: the layout of a rendered scene, or the texture of a "
                                "close-up of one surface (the 'dtd' source)",
                 "dataset": PRETRAIN_DATASET, "data_seed": PRETRAIN_DATA_SEED, "generator_version": GENERATOR_VERSION,
                 "train": {"split": "train", "images": cfg.train_images},
                 "heldout": {"split": "val", "images": cfg.heldout_images},
                 "image_size": [cfg.image_size, cfg.image_size],
                 "disjoint_from_lessons": f"generator seed {PRETRAIN_DATA_SEED} is reserved for this stand-in; the "
                                          "lessons, presets and tests use seeds 0, 1, 2, ... of their datasets, so "
                                          "no lesson evaluates on these images"},
        "head": "global average pool + linear (stored as head.*, not loaded into encoders)",
        "training": {"steps": cfg.steps, "batch_size": cfg.batch_size, "optimizer": "AdamW", "lr": cfg.lr,
                     "weight_decay": cfg.weight_decay, "schedule": "linear warm-up + cosine to 0",
                     "augmentation": "horizontal flip", "output_stride": 32},
        **facts,
        "versions": {"mtlkit": mtlkit.__version__, "torch": torch.__version__, "timm": _timm_version(),
                     "numpy": np.__version__, "python": platform.python_version()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_bytes(path, data)  # weights first: a sidecar always describes a complete file
    atomic_write_json(path.with_suffix(".json"), info)
    return StandIn(path, info, built=True, _tensors=weights)


def _timm_version() -> str:
    import timm

    return timm.__version__


# ----------------------------------------------------------------------------------------------------- loading
def _find_encoder(module: nn.Module) -> ResNetEncoder:
    if isinstance(module, ResNetEncoder):
        return module
    encoder = getattr(module, "encoder", None)
    if isinstance(encoder, ResNetEncoder):
        return encoder
    raise TypeError(f"load_pretrained_encoder needs a ResNetEncoder or a model whose .encoder is one; got "
                    f"{type(module).__name__} (build the model with encoder='resnet18'/'resnet34'/'resnet50')")


def _load_imagenet(encoder: ResNetEncoder) -> str:
    try:
        source = ResNetEncoder(encoder.name, encoder.output_stride, pretrained=True,
                               normalize_input=encoder.normalize_input)
    except PretrainedWeightsUnavailable as err:
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights for encoder {encoder.name!r} could not be fetched through timm "
            f"({type(err.__cause__ or err).__name__}). source='synthetic' is the kit's offline stand-in: "
            f"load_pretrained_encoder(model, source='synthetic') (or source='auto', which falls back to it); "
            f"build it ahead with `mtlkit pretrain --encoder {_base_name(encoder.name)} --preset lesson`."
        ) from (err.__cause__ or err)
    encoder.load_state_dict(source.state_dict())
    tag = (getattr(source.body, "pretrained_cfg", None) or {}).get("tag")
    return f"encoder initialised from ImageNet weights (timm {encoder.name}{'.' + tag if tag else ''})"


def load_pretrained_encoder(encoder_module: nn.Module, source: str = "synthetic", preset: str = "lesson",
                            seed: int = 0, verbose: bool = True) -> str:
    """Initialise an encoder in place from pretrained weights; returns a label saying which (print it).

    Args:
        encoder_module: a :class:`~mtlkit.models.encoders.ResNetEncoder`, or a model whose ``.encoder`` is one
            (e.g. ``mtlkit.models.build("deeplab-joint", ...)``); any output stride.
        source: "imagenet" (timm's weights; offline a clear :class:`PretrainedWeightsUnavailable`), "synthetic"
            (the kit's stand-in, built by :func:`pretrain_encoder` if not cached), or "auto" (ImageNet when it
            can be fetched, else the stand-in; the label says which).
        preset, seed, verbose: of the stand-in (see :func:`pretrain_encoder`).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid sources: {', '.join(SOURCES)} "
                         "(imagenet: timm's weights; synthetic: the kit's offline stand-in; auto: either)")
    encoder = _find_encoder(encoder_module)
    if source in ("imagenet", "auto"):
        try:
            return _load_imagenet(encoder)
        except PretrainedWeightsUnavailable:
            if source == "imagenet":
                raise
        note = " [ImageNet weights could not be fetched]"
    else:
        note = ""
    stand_in = pretrain_encoder(encoder.name, preset=preset, seed=seed, verbose=verbose)
    encoder.load_state_dict(stand_in.encoder_state_dict())  # strict: every encoder tensor, nothing else
    return stand_in.label + note


# --------------------------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``mtlkit pretrain``."""
    p.add_argument("--encoder", default="resnet18", choices=ENCODERS)
    p.add_argument("--preset", default="lesson", choices=tuple(PRETRAIN_PRESETS),
                   help="unit: seconds; smoke: about a CPU minute; lesson (default): a few CPU minutes")
    p.add_argument("--seed", type=int, default=0, help="initialisation and batch order (default 0)")
    p.add_argument("--force", action="store_true", help="train again even if a valid cached stand-in exists")
    p.add_argument("--quiet", action="store_true", help="print only the result")


def run_from_args(args: argparse.Namespace) -> int:
    stand_in = pretrain_encoder(args.encoder, preset=args.preset, seed=args.seed, force=args.force,
                                verbose=not args.quiet)
    print(("trained: " if stand_in.built else "cached: ") + str(stand_in))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mtlkit.pretrain``: train (or find cached) the synthetic stand-in for pretrained encoder weights."""
    parser = argparse.ArgumentParser(prog="mtlkit pretrain", description=main.__doc__.split(": ", 1)[1])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
