"""Cityscapes as preprocessed by the MTAN authors (``cityscapes``) and the DLAD course's MiniScapes (``miniscapes``).

``cityscapes``: ``.npy`` arrays per item (image, 7- or 19-class labels, depth stored as the official disparity
/ 65535), converted to metric depth on read (``depth="disparity"`` keeps the stored values, to compare with MTAN's
numbers). ``miniscapes``: JPEG images and PNG labels, with depth as an 8-bit disparity code over 4..300 m. A split
without a label folder (a withheld test split) gives ignore-filled labels and leaves the task out of
``meta["tasks"]``.

Formats and conversions: docs/data.md#cityscapes, docs/data.md#miniscapes
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlkit.data.real.base import (CorruptFileError, DatasetLayoutError, RealDataset, check_labels, check_shape,
                                   class_info, image_tensor, label_tensor, map_tensor, need_dir, need_file,
                                   read_image, read_npy, read_png)

CITY_19_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                   "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                   "bicycle")
CITY_7_CLASSES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
CITY_19_TO_7 = np.array([0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6], np.int64)
BASELINE_M = 0.209313
FX_PX = 2262.52
MINISCAPES_DEPTH_RANGE = (4.0, 300.0)

# Official Cityscapes labelIds 0..33 -> train id (19 classes, -1 ignore) and category (7, -1 for void).
_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
             27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
# category ids of labelIds (0 void .. 7 vehicle), from the official label table
_CATEGORY = [0] * 7 + [1, 1, 1, 1] + [2] * 6 + [3, 3, 3, 3] + [4, 4] + [5] + [6, 6] + [7] * 8
LABELID_TO_TRAINID = np.array([_TRAIN_ID.get(i, -1) for i in range(34)], np.int64)
LABELID_TO_CATEGORY = np.array([c - 1 for c in _CATEGORY], np.int64)  # void -> -1


def disparity_to_metres(s: np.ndarray, baseline: float = BASELINE_M, fx: float = FX_PX) -> np.ndarray:
    """MTAN's scaled disparity (PNG value / 65535) -> metres; 0 where invalid (PNG value <= 1)."""
    p = s.astype(np.float64) * 65535.0
    disp = (p - 1.0) / 256.0
    with np.errstate(divide="ignore"):
        return np.where(disp > 0, baseline * fx / np.where(disp > 0, disp, 1.0), 0.0).astype(np.float32)


def metres_to_disparity_png(depth: np.ndarray, baseline: float = BASELINE_M, fx: float = FX_PX) -> np.ndarray:
    """Depth in metres -> the official uint16 disparity PNG value (0 invalid: no depth or beyond 16 bits)."""
    d = np.asarray(depth, np.float64)
    with np.errstate(divide="ignore"):
        p = np.where(d > 0, np.round(256.0 * baseline * fx / np.where(d > 0, d, 1.0) + 1.0), 0.0)
    return np.where(p <= 65535, p, 0).astype(np.uint16)


class Cityscapes(RealDataset):
    """Cityscapes, MTAN preprocessing: semseg (``classes=7|19``) and depth; splits train (2975), val (500).

    ``depth="metres"`` (default, the contract) converts the stored scaled disparity to metres; ``"disparity"``
    returns the stored values unchanged (0 invalid), to compare with numbers computed on them (MTAN's tables).
    """

    name = "cityscapes"
    SPLITS = ("train", "val")
    TASKS: tuple[str, ...] = ("semseg", "depth")

    def __init__(self, split: str, preset: str = "paper", root=None, transform=None, size=None, classes: int = 19,
                 depth: str = "metres") -> None:
        super().__init__(split, preset, root, transform, size)
        if classes not in (7, 19):
            raise ValueError(f"cityscapes classes must be 7 or 19, got {classes!r}")
        if depth not in ("metres", "disparity"):
            raise ValueError(f"cityscapes depth must be 'metres' or 'disparity', got {depth!r}")
        self.classes, self.depth_mode = classes, depth
        self.tasks = self.TASKS
        self.task_info = {"semseg": class_info(CITY_19_CLASSES if classes == 19 else CITY_7_CLASSES), "depth": {}}
        base = need_dir(self.root / split, self.name)
        self.label_folder = f"label_{classes}"
        if classes == 7 and not (base / self.label_folder).is_dir() and (base / "label").is_dir():
            self.label_folder = "label"  # LibMTL's copy of the 128x256 data

        folders = ("image", self.label_folder, "depth")
        for folder in folders:
            need_dir(base / folder, self.name)
        n = len(list((base / "image").glob("*.npy")))
        if n == 0:
            raise DatasetLayoutError(f"{self.name}: no .npy files in {base / 'image'}")
        for folder in folders:
            for i in range(n):
                need_file(base / folder / f"{i}.npy", self.name)
        self.base = base
        self.items = list(range(n))
        self.ids = [str(i) for i in range(n)]
        self.image_size = tuple(read_npy(base / "image" / "0.npy", 0).shape[:2])

    def load(self, index: int) -> tuple[dict, list[str]]:
        path = lambda folder: self.base / folder / f"{index}.npy"  # noqa: E731
        img = read_npy(path("image"), index)
        lab = check_shape(read_npy(path(self.label_folder), index), img.shape[:2], path(self.label_folder), index,
                          self.label_folder)
        if not np.isfinite(lab).all() or (lab != np.round(lab)).any():
            raise CorruptFileError(f"{path(self.label_folder)} (sample index {index}): labels must be integers")
        lab = check_labels(lab.astype(np.int64), self.classes, path(self.label_folder), index)
        s = read_npy(path("depth"), index)
        s = check_shape(s[..., 0] if s.ndim == 3 else s, img.shape[:2], path("depth"), index, "depth")
        if not np.isfinite(s).all() or s.min() < 0 or s.max() > 1:
            raise CorruptFileError(f"{path('depth')} (sample index {index}): scaled disparity must lie in [0, 1]")
        depth = disparity_to_metres(s) if self.depth_mode == "metres" else s.astype(np.float32)
        return {"image": image_tensor(img, path("image"), index), "semseg": label_tensor(lab),
                "depth": map_tensor(depth)}, list(self.tasks)


def miniscapes_depth(x: np.ndarray) -> np.ndarray:
    """MiniScapes uint8 disparity code -> metres (0 invalid)."""
    lo, hi = 1.0 / MINISCAPES_DEPTH_RANGE[1], 1.0 / MINISCAPES_DEPTH_RANGE[0]
    disp = lo + (hi - lo) * (x.astype(np.float64) - 1.0) / 254.0
    return np.where(x > 0, 1.0 / disp, 0.0).astype(np.float32)


def miniscapes_code(depth: np.ndarray) -> np.ndarray:
    """Metres -> MiniScapes uint8 code (0 where invalid or outside 4..300 m)."""
    lo, hi = 1.0 / MINISCAPES_DEPTH_RANGE[1], 1.0 / MINISCAPES_DEPTH_RANGE[0]
    d = np.asarray(depth, np.float64)
    with np.errstate(divide="ignore"):
        x = 1.0 + 254.0 * (np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), -1.0) - lo) / (hi - lo)
    x = np.round(x)
    return np.where((d > 0) & (x >= 1) & (x <= 255), x, 0).astype(np.uint8)


class Miniscapes(RealDataset):
    """MiniScapes (DLAD course): semseg (19 Cityscapes train ids) and depth; splits train/val/test."""

    name = "miniscapes"
    SPLITS = ("train", "val", "test")
    TASKS: tuple[str, ...] = ("semseg", "depth")

    def __init__(self, split: str, preset: str = "paper", root=None, transform=None, size=None) -> None:
        super().__init__(split, preset, root, transform, size)
        self.tasks = self.TASKS
        self.task_info = {"semseg": class_info(CITY_19_CLASSES), "depth": {}}
        base = need_dir(self.root / split, self.name)
        need_dir(base / "rgb", self.name)
        n = len(list((base / "rgb").glob("*.jpg")))
        if n == 0:
            raise DatasetLayoutError(f"{self.name}: no .jpg files in {base / 'rgb'}")
        self.labelled = tuple(t for t in self.tasks if (base / t).is_dir())
        for i in range(n):
            need_file(base / "rgb" / f"{i}.jpg", self.name)
            for t in self.labelled:
                need_file(base / t / f"{i}.png", self.name)
        self.base = base
        self.items = list(range(n))
        self.ids = [str(i) for i in range(n)]
        self.image_size = (256, 512)

    def load(self, index: int) -> tuple[dict, list[str]]:
        rgb_path = self.base / "rgb" / f"{index}.jpg"
        img = read_image(rgb_path, index)
        hw = img.shape[:2]
        sem = np.full(hw, -1, np.int64)
        depth = np.zeros(hw, np.float32)
        if "semseg" in self.labelled:
            p = self.base / "semseg" / f"{index}.png"
            raw = check_shape(read_png(p, index, modes=("L", "P")), hw, p, index, "semseg").astype(np.int64)
            sem = check_labels(np.where(raw == 255, -1, raw), 19, p, index)
        if "depth" in self.labelled:
            p = self.base / "depth" / f"{index}.png"
            depth = miniscapes_depth(check_shape(read_png(p, index, modes=("L",)), hw, p, index, "depth"))
        return {"image": image_tensor(img, rgb_path, index), "semseg": label_tensor(sem),
                "depth": map_tensor(depth)}, list(self.labelled)


# ------------------------------------------------------------------------------------------------------ twins
def write_cityscapes_twin(out: Path, samples: dict[str, list[dict]]) -> None:
    """MTAN Cityscapes layout from compact synthetic-city samples (depth through the 16-bit disparity code)."""
    for split, items in samples.items():
        for folder in ("image", "label_7", "label_19", "depth"):
            (out / split / folder).mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(items):
            sem = s["semseg"].astype(np.int64)
            np.save(out / split / "image" / f"{i}.npy", (s["image"].astype(np.float32) / 255.0).transpose(1, 2, 0))
            np.save(out / split / "label_19" / f"{i}.npy", sem.astype(np.float32))
            np.save(out / split / "label_7" / f"{i}.npy",
                    np.where(sem >= 0, CITY_19_TO_7[np.clip(sem, 0, 18)], -1).astype(np.float32))
            code = metres_to_disparity_png(s["depth"][0]).astype(np.float32) / 65535.0
            np.save(out / split / "depth" / f"{i}.npy", code[..., None])


def write_miniscapes_twin(out: Path, samples: dict[str, list[dict]]) -> None:
    """MiniScapes layout: JPEG rgb (quality 100), trainId PNG with 255 ignore, uint8 disparity-coded depth PNG."""
    from PIL import Image

    for split, items in samples.items():
        for folder in ("rgb", "semseg", "depth"):
            (out / split / folder).mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(items):
            Image.fromarray(s["image"].transpose(1, 2, 0)).save(out / split / "rgb" / f"{i}.jpg", quality=100,
                                                               subsampling=0)
            sem = s["semseg"].astype(np.int64)
            Image.fromarray(np.where(sem >= 0, sem, 255).astype(np.uint8)).save(out / split / "semseg" / f"{i}.png")
            Image.fromarray(miniscapes_code(s["depth"][0])).save(out / split / "depth" / f"{i}.png")
