"""Data: the dataset registry, synthetic scenes and their sharded cache, task-aware transforms and ``collate``.

>>> from mtlkit.data import get_dataset, collate
>>> ds = get_dataset("synthetic-nyu", "train", preset="unit")
>>> batch = collate([ds[0], ds[1]])  # batch["image"]: [2, 3, H, W]
"""
from mtlkit.data.datasets import (
    DATASETS,
    PRESETS,
    SPLITS,
    SYNTHETIC_NAMES,
    SyntheticDataset,
    build_cache,
    collate,
    get_dataset,
    list_datasets,
    register_dataset,
    synth_command,
    verify_cache,
)
from mtlkit.data.transforms import ColorJitter, Compose, RandomHorizontalFlip, RandomScaleCrop

__all__ = [
    "DATASETS", "PRESETS", "SPLITS", "SYNTHETIC_NAMES", "SyntheticDataset", "build_cache", "collate", "get_dataset",
    "list_datasets", "register_dataset", "synth_command", "verify_cache",
    "ColorJitter", "Compose", "RandomHorizontalFlip", "RandomScaleCrop",
]
