"""Figures for notebooks and the CLI (matplotlib/seaborn, PNG-friendly, no display needed)."""
from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence

import matplotlib

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "nbagg", "widget", "ipympl"):
    matplotlib.use("Agg")  # headless by default; Jupyter keeps its inline backend
import matplotlib.pyplot as plt
import numpy as np
import torch

from mtlkit.tasks import TASKS

DENSE_LABELS = tuple(name for name, spec in TASKS.items() if spec.kind == "dense")
IMAGE_LABELS = tuple(name for name, spec in TASKS.items() if spec.kind == "image")


def label_palette(n: int, seed: int = 3) -> np.ndarray:
    """``n`` distinct RGB colours in [0,1] (seaborn's husl, shuffled so neighbouring ids differ)."""
    import seaborn as sns

    colours = np.array(sns.color_palette("husl", max(n, 1)))
    return colours[np.random.default_rng(seed).permutation(len(colours))]


def colourise_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[H,W] int label map (-1 = ignore, drawn black) -> [H,W,3] RGB."""
    palette = label_palette(num_classes)
    rgb = np.zeros(labels.shape + (3,))
    valid = labels >= 0
    rgb[valid] = palette[np.clip(labels[valid], 0, num_classes - 1)]
    return rgb


def label_to_rgb(task: str, value: torch.Tensor, info: dict | None = None) -> tuple[np.ndarray, dict]:
    """A dense label of the sample contract -> (image for imshow, imshow kwargs)."""
    info = info or {}
    arr = value.detach().cpu().numpy()
    if task in ("semseg", "parts", "material"):
        return colourise_labels(arr, int(info.get("num_classes", int(arr.max()) + 1))), {}
    if task == "depth":
        d = np.where(arr[0] > 0, arr[0], np.nan)
        return d, {"cmap": "magma_r"}
    if task == "normals":
        # camera-frame unit normals mapped to RGB; invalid (all-zero) pixels stay black
        valid = np.abs(arr).sum(0) > 0
        return np.where(valid[..., None], (arr.transpose(1, 2, 0) + 1) / 2, 0.0).clip(0, 1), {}
    # edge / saliency: {0,1}, -1 ignore shown grey
    return np.where(arr[0] < 0, 0.5, arr[0]), {"cmap": "gray", "vmin": 0, "vmax": 1}


def sample_grid(dataset, indices: Sequence[int], dpi: int = 80):
    """One row per sample: the image (with boxes and image-level labels) and every dense label the dataset has."""
    tasks = [t for t in DENSE_LABELS if t in dataset.tasks]
    cols = 1 + len(tasks)
    fig, axes = plt.subplots(len(indices), cols, figsize=(2.1 * cols, 2.1 * len(indices) * _aspect(dataset)),
                             dpi=dpi, squeeze=False)
    for row, idx in enumerate(indices):
        sample = dataset[idx]
        ax = axes[row, 0]
        ax.imshow(sample["image"].permute(1, 2, 0).numpy())
        for box in sample.get("boxes", torch.zeros(0, 4)).tolist():
            x1, y1, x2, y2 = box
            ax.add_patch(plt.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color="yellow", lw=1.5))
        ax.set_title(_image_level_title(sample, dataset), fontsize=7)
        for col, task in enumerate(tasks, start=1):
            img, kwargs = label_to_rgb(task, sample[task], dataset.task_info.get(task))
            axes[row, col].imshow(img, interpolation="nearest", **kwargs)
            if row == 0:
                axes[row, col].set_title(task, fontsize=8)
            if task not in sample["meta"].get("tasks", tasks):
                axes[row, col].text(0.5, 0.5, "unlabelled", ha="center", va="center", fontsize=7, color="white",
                                    transform=axes[row, col].transAxes)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def _aspect(dataset) -> float:
    h, w = dataset.image_size
    return h / w


def _image_level_title(sample: dict, dataset) -> str:
    parts = []
    for task in IMAGE_LABELS:
        if task in sample:
            value = int(sample[task])
            names = dataset.task_info.get(task, {}).get("class_names")
            parts.append(f"{task}: {names[value] if names and value >= 0 else value}")
    return "\n".join(parts) or "image"


def save_sample_grid(name: str, split: str = "train", preset: str = "smoke", n: int = 4, seed: int = 0,
                     out: str | Path | None = None) -> Path:
    """``mtlkit data show``: save a PNG grid of ``n`` samples of dataset ``name`` and return its path."""
    from mtlkit.data import get_dataset
    from mtlkit.paths import data_dir, ensure_writable

    dataset = get_dataset(name, split, preset=preset, seed=seed)
    if n < 1:
        raise ValueError("--n must be at least 1")
    fig = sample_grid(dataset, list(range(min(n, len(dataset)))), dpi=100)
    out = Path(out) if out else data_dir() / "figures" / f"{name}-{preset}-{split}.png"
    ensure_writable(out.parent)
    fig.savefig(out)
    plt.close(fig)
    return out
