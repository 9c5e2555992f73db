"""Dataset registry, the synthetic datasets, and ``collate``.

``get_dataset(name, split, preset)`` is the one way notebooks and the Trainer get data. Every item follows the
sample contract (docs/contracts.md#sample) exactly; the synthetic generator's compact dtypes (uint8 images, int16
labels, int8 edges) are converted here, on read, so one cache on disk serves every consumer (and both Cityscapes
label sets).
"""
from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mtlkit.data.cache import ShardedCache, build_caches, normalize_meta
from mtlkit.paths import cache_dir
from mtlkit.presets import PRESETS
from mtlkit.tasks import TASKS

SPLITS: tuple[str, ...] = ("train", "val", "test")
SYNTHETIC_NAMES: tuple[str, ...] = ("synthetic-nyu", "synthetic-city", "synthetic-pet", "synthetic-pascal",
                                    "synthetic-broden")

# Sample contract: how each key is converted from the generator's compact form (read from the task rows).
LABEL_MAPS = tuple(n for n, s in TASKS.items() if s.kind == "dense" and s.target == "labels")  # [H,W] int64, -1
BINARY_MAPS = tuple(n for n, s in TASKS.items() if s.target == "binary")  # [1,H,W] float32 {0,1}, -1 ignore
IMAGE_LABELS = tuple(n for n, s in TASKS.items() if s.kind == "image")  # 0-d int64, -1 ignore
REGRESSION = tuple(n for n, s in TASKS.items() if s.target in ("depth", "normals"))  # float32 maps

DatasetFactory = Callable[..., Dataset]
DATASETS: dict[str, DatasetFactory] = {}


def register_dataset(name: str) -> Callable[[DatasetFactory], DatasetFactory]:
    """Decorator registering ``factory(split, preset, root, transform, seed, cache, **options) -> Dataset``."""

    def wrap(factory: DatasetFactory) -> DatasetFactory:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        DATASETS[name] = factory
        return factory

    return wrap


def _real_factory(cls: type, split: str, preset: str = "paper", root: Any = None, transform: Any = None,
                  seed: int = 0, cache: bool = True, **options: Any) -> Dataset:
    """get_dataset adapter of a real loader: ``seed``/``cache`` only concern synthetic data and are ignored here."""
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "split", "preset", "root",
                                                                                "transform")]
    for key in options:
        if key not in valid:
            raise ValueError(f"{cls.name} has no option {key!r}; valid options: {', '.join(valid)}")
    return cls(split, preset=preset, root=root, transform=transform, **options)


def _register_real() -> None:
    """Register the real-dataset loaders of :mod:`mtlkit.data.real.registry`; lazily, so ``import mtlkit.data``
    stays light (the loaders import their own dependencies)."""
    from mtlkit.data.real.registry import LOADERS

    for name, cls in LOADERS.items():
        if name not in DATASETS:
            DATASETS[name] = functools.partial(_real_factory, cls)


def list_datasets() -> list[str]:
    """Names accepted by :func:`get_dataset` (synthetic and real)."""
    _register_real()
    return sorted(DATASETS)


def _check_choice(kind: str, value: Any, valid: Sequence[Any]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(map(str, valid))}")


def get_dataset(name: str, split: str, preset: str = "smoke", root: str | Path | None = None,
                transform: Callable[[dict], dict] | None = None, seed: int = 0, cache: bool = True,
                **options: Any) -> Dataset:
    """A dataset of contract samples.

    Args:
        name: a registered name (:func:`list_datasets`), e.g. ``"synthetic-nyu"``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        preset: ``"unit"`` (tests), ``"smoke"`` (CPU default), ``"lesson"``, ``"paper"``.
        root: data directory (default: :func:`mtlkit.paths.data_dir`, i.e. ``$MTLKIT_DATA_DIR``).
        transform: applied to each contract sample (see :mod:`mtlkit.data.transforms`).
        seed: generator seed of synthetic data.
        cache: read from (building if needed) the sharded cache; False generates every item on the fly.
        options: dataset specific, e.g. ``classes=7`` for synthetic-city.
    """
    _check_choice("dataset", name, list_datasets())
    _check_choice("preset", preset, PRESETS)
    return DATASETS[name](split=split, preset=preset, root=root, transform=transform, seed=seed, cache=cache,
                          **options)


# ------------------------------------------------------------------------------------------ synthetic datasets
def _synthetic():
    """The generator module, imported on first use (tests swap in a fake through this function)."""
    from mtlkit.data import synthetic

    return synthetic


def _variant(name: str):
    syn = _synthetic()
    if name not in syn.VARIANTS:
        raise ValueError(f"the generator has no variant {name!r}; it has: {', '.join(sorted(syn.VARIANTS))}")
    return syn.VARIANTS[name]


def _generate_compact(variant_name: str, split: str, seed: int, size: tuple[int, int], index: int) -> dict:
    """One compact sample straight from the generator (module level so a process pool can pickle it)."""
    return _synthetic().generate_sample(variant_name, split, index, seed=seed, size=tuple(size))


def synthetic_cache_dir(variant_name: str, preset: str, seed: int, split: str,
                        root: str | Path | None = None) -> Path:
    """``<cache>/synthetic/<variant>/<preset>/seed<seed>/v<GENERATOR_VERSION>/<split>``."""
    base = Path(root).expanduser().resolve() / "cache" if root is not None else cache_dir()
    return (base / "synthetic" / variant_name / preset / f"seed{seed}" / f"v{_synthetic().GENERATOR_VERSION}"
            / split)


def _to_tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.array(x, copy=True)).to(dtype)


def to_contract(compact: dict, label_map: dict[str, np.ndarray] | None = None) -> dict:
    """Compact generator sample -> contract sample (torch tensors, contract dtypes and shapes).

    ``label_map`` maps a label task's classes through a lookup table (e.g. Cityscapes 19 -> 7); -1 stays -1.
    Keys outside the contract are dropped.
    """
    out: dict[str, Any] = {}
    if "image" in compact:
        img = np.asarray(compact["image"])
        out["image"] = torch.from_numpy(img.astype(np.float32) / 255.0 if img.dtype == np.uint8
                                        else img.astype(np.float32))
    for key in LABEL_MAPS:
        if key in compact:
            lab = np.asarray(compact[key]).astype(np.int64)
            if label_map and key in label_map:
                lut = np.asarray(label_map[key], dtype=np.int64)
                lab = np.where(lab >= 0, lut[np.clip(lab, 0, len(lut) - 1)], -1)
            out[key] = torch.from_numpy(lab)
    if "depth" in compact:
        out["depth"] = _to_tensor(compact["depth"], torch.float32).reshape(1, *np.shape(compact["depth"])[-2:])
    if "normals" in compact:
        out["normals"] = _to_tensor(compact["normals"], torch.float32)
    for key in BINARY_MAPS:
        if key in compact:
            out[key] = _to_tensor(compact[key], torch.float32).reshape(1, *np.shape(compact[key])[-2:])
    for key in IMAGE_LABELS:
        if key in compact:
            out[key] = torch.tensor(int(compact[key]), dtype=torch.int64)
    if "boxes" in compact:
        out["boxes"] = _to_tensor(compact["boxes"], torch.float32).reshape(-1, 4)
        labels = compact.get("box_labels", np.zeros(len(out["boxes"]), dtype=np.int64))
        out["box_labels"] = _to_tensor(labels, torch.int64).reshape(-1)
    out["meta"] = normalize_meta(compact.get("meta", {}))
    return out


class SyntheticDataset(Dataset):
    """Procedural scenes from :mod:`mtlkit.data.synthetic`, cached in checksummed shards, as contract samples.

    Args:
        name: ``synthetic-nyu``, ``synthetic-city``, ``synthetic-pet``, ``synthetic-pascal`` or ``synthetic-broden``.
        split, preset, root, transform, seed, cache: see :func:`get_dataset`.
        classes: synthetic-city only: 19 (default) or 7 categories (mapped on read, same cache).
        shard_size: samples per cache shard.
        progress: show a progress bar while the cache is being built (only on a terminal).
    """

    def __init__(self, name: str, split: str, preset: str = "smoke", root: str | Path | None = None,
                 transform: Callable[[dict], dict] | None = None, seed: int = 0, cache: bool = True,
                 shard_size: int = 64, progress: bool = True, **options: Any) -> None:
        _check_choice("preset", preset, PRESETS)
        variant = _variant(name)
        _check_choice("split", split, tuple(variant.counts[preset]))
        valid_options = ("classes",) if name == "synthetic-city" else ()
        for key in options:
            if key not in valid_options:
                raise ValueError(f"{name} has no option {key!r}; valid options: "
                                 f"{', '.join(valid_options) if valid_options else 'none'}")
        self.name = name
        self.split = split
        self.preset = preset
        self.seed = int(seed)
        self.transform = transform
        self.variant_name = variant.name
        self.tasks: tuple[str, ...] = tuple(variant.tasks)
        self.image_size: tuple[int, int] = tuple(variant.sizes[preset])  # type: ignore[assignment]
        self.task_info: dict[str, dict] = {
            t: ({"num_classes": len(variant.classes[t]), "class_names": list(variant.classes[t])}
                if t in variant.classes else {}) for t in self.tasks}
        self._label_map: dict[str, np.ndarray] | None = None
        self.classes = options.get("classes")
        if name == "synthetic-city":
            self.classes = options.get("classes", 19)
            _check_choice("classes value", self.classes, (19, 7))
            if self.classes == 7:
                syn = _synthetic()
                self._label_map = {"semseg": np.asarray(syn.CITY_19_TO_7)}
                self.task_info["semseg"] = {"num_classes": len(syn.CITY_7_CLASSES),
                                            "class_names": list(syn.CITY_7_CLASSES)}
        self._cache: ShardedCache | None = _synthetic_cache(variant, preset, self.seed, split, root, shard_size)
        self._generate = self._cache.generate
        self._count = self._cache.count
        if cache:
            self._cache.open(progress=progress)
        else:
            self._cache = None

    @property
    def cache_path(self) -> Path | None:
        """Folder of this split's cache (None when generating on the fly)."""
        return self._cache.directory if self._cache is not None else None

    def __len__(self) -> int:
        return self._count

    def compact(self, index: int) -> dict:
        """The generator's compact sample ``index`` (from the cache when enabled)."""
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(f"index {index} out of range for {self.name} {self.split} ({self._count} items)")
        return self._cache.get(index) if self._cache is not None else self._generate(index)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += self._count
        sample = to_contract(self.compact(index), self._label_map)
        meta = sample["meta"]
        meta.update(dataset=self.name, split=self.split, index=index, preset=self.preset, seed=self.seed)
        meta.setdefault("tasks", list(self.tasks))
        if self.classes is not None:
            meta["classes"] = self.classes
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def __repr__(self) -> str:
        extra = f", classes={self.classes}" if self.classes is not None else ""
        return (f"SyntheticDataset({self.name!r}, split={self.split!r}, preset={self.preset!r}, seed={self.seed}"
                f"{extra}, n={len(self)}, size={self.image_size}, tasks={self.tasks})")


for _name in SYNTHETIC_NAMES:
    register_dataset(_name)(functools.partial(SyntheticDataset, _name))


# --------------------------------------------------------------------------------------------------- batching
def collate(samples: Sequence[dict]) -> dict:
    """Batch contract samples: tensors stacked on a new dim 0; ``boxes``/``box_labels``/``meta`` kept as lists.

    Use as ``DataLoader(..., collate_fn=collate)``.
    """
    if len(samples) == 0:
        raise ValueError("collate needs at least one sample")
    keys = list(samples[0])
    for i, s in enumerate(samples):
        if set(s) != set(keys):
            raise ValueError(f"sample {i} has keys {sorted(s)} but sample 0 has {sorted(keys)}; batch samples of "
                             f"one dataset (or give every sample the same keys)")
    batch: dict[str, Any] = {}
    for key in keys:
        values = [s[key] for s in samples]
        if key in ("boxes", "box_labels", "meta") or not torch.is_tensor(values[0]):
            batch[key] = list(values)
            continue
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            raise ValueError(f"cannot stack {key!r}: shapes differ {sorted(shapes)}; crop/resize to one size "
                             f"(e.g. transforms.RandomScaleCrop) before batching")
        batch[key] = torch.stack(values)
    return batch


# --------------------------------------------------------------------------------------- building and checking
def _synthetic_cache(variant: Any, preset: str, seed: int, split: str, root: str | Path | None,
                     shard_size: int = 64) -> ShardedCache:
    """The (unopened) cache of one split of a synthetic variant."""
    _check_choice("split", split, tuple(variant.counts[preset]))
    size = tuple(int(v) for v in variant.sizes[preset])
    count = int(variant.counts[preset][split])
    params = {"dataset": variant.name, "generator_version": _synthetic().GENERATOR_VERSION, "preset": preset,
              "seed": int(seed), "split": split, "size": list(size), "count": count}
    generate = functools.partial(_generate_compact, variant.name, split, int(seed), size)
    return ShardedCache(synthetic_cache_dir(variant.name, preset, int(seed), split, root), generate, count, params,
                        shard_size=shard_size)


def synthetic_caches(name: str, preset: str, seed: int = 0, splits: Sequence[str] = SPLITS,
                     root: str | Path | None = None) -> list[ShardedCache]:
    """Unopened caches of ``splits`` of synthetic dataset ``name`` (backs build_cache/verify_cache)."""
    _check_choice("synthetic dataset", name, SYNTHETIC_NAMES)
    _check_choice("preset", preset, PRESETS)
    variant = _variant(name)
    return [_synthetic_cache(variant, preset, seed, split, root) for split in splits]


# ------------------------------------------------------------------------------------- synthetic-data commands
def build_cache(name: str, preset: str, seed: int = 0, splits: Sequence[str] = ("train", "val", "test"),
                jobs: int = 1, progress: bool = True, root: str | Path | None = None) -> list[Path]:
    """Build every shard of synthetic dataset ``name`` for ``splits``, over ``jobs`` processes.

    Returns the cache folder of each split (each holds a ``manifest.json``). Already built shards whose checksum
    matches are kept, so an interrupted build resumes where it stopped and a damaged one is repaired.
    """
    caches = synthetic_caches(name, preset, seed=seed, splits=splits, root=root)
    build_caches(caches, jobs=jobs, progress=progress, desc=f"{name} {preset}", check=True)
    return [c.directory for c in caches]


def verify_cache(name: str, preset: str, seed: int = 0, splits: Sequence[str] = ("train", "val", "test"),
                 root: str | Path | None = None) -> list[str]:
    """Check the manifests and shard checksums of a built cache; one line per problem (empty list = all good)."""
    return [p for c in synthetic_caches(name, preset, seed=seed, splits=splits, root=root) for p in c.verify()]


def synth_command(names: Sequence[str], preset: str, seed: int = 0, jobs: int = 1) -> None:
    """``mtlkit data synth NAME... --preset P --seed S --jobs J``: build the caches and print where they went.

    All shards of all named datasets form one pool of work, so ``jobs`` processes stay busy across datasets.
    """
    names = list(SYNTHETIC_NAMES) if list(names) == ["all"] else list(names)
    per_name = {name: synthetic_caches(name, preset, seed=seed) for name in names}
    build_caches([c for caches in per_name.values() for c in caches], jobs=jobs, progress=True,
                 desc=f"synth {preset}", check=True)
    for name, caches in per_name.items():
        counts = ", ".join(f"{c.directory.name} {c.count}" for c in caches)
        print(f"{name} ({preset}, seed {seed}): {caches[0].directory.parent}  [{counts}]")
