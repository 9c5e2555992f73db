"""NYUv2 as preprocessed by the MTAN authors (``nyuv2``) and NYUD-v2 for multi-task learning (``nyud-mt``).

``nyuv2`` layout (root = ``<data dir>/prepared/nyuv2``)::

    {train,val}/image/{i}.npy   float [288,384,3] RGB in [0,1]  (i = 0..N-1, N = 795 train / 654 val)
    {train,val}/label/{i}.npy   float [288,384]   13 classes 0..12, -1 ignore
    {train,val}/depth/{i}.npy   float [288,384,1] metres, 0 invalid
    {train,val}/normal/{i}.npy  float [288,384,3] unit normals in [-1,1], all-zero invalid

``nyud-mt`` layout (ASTMT / Multi-Task-Learning-PyTorch ``NYUD_MT``)::

    gt_sets/{train,val}.txt        image ids, one a line (795 / 654)
    images/{id}.jpg                RGB 480x640
    segmentation/{id}.png          uint8 40 classes 1..40, 0 unlabelled (-> -1; class k -> k-1)
    depth/{id}.npy                 float [H,W] metres, <= 0 invalid
    normals/{id}.npy               float [H,W,3] in [-1,1], all-zero invalid
    edge/{id}.npy                  float [H,W] {0,1}
"""
from __future__ import annotations

from pathlib import Path
import numpy as np
import torch

from mtlkit.data.real.base import (CorruptFileError, DatasetLayoutError, RealDataset, check_labels, check_shape,
                                   class_info, image_tensor, label_tensor, map_tensor, need_dir, need_file,
                                   read_image, read_lines, read_npy, read_png)

NYU_13_CLASSES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "painting", "sofa", "table",
                  "tv", "wall", "window")
NYU_40_CLASSES = ("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
                  "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
                  "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
                  "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub",
                  "bag", "otherstructure", "otherfurniture", "otherprop")


def _normals(arr: np.ndarray, path: Path, index: int) -> torch.Tensor:
    """float [H,W,3] -> float32 [3,H,W]; rows must be unit vectors or all zero (invalid)."""
    check_shape(arr, (None, None, 3), path, index, "normals")
    n = arr.astype(np.float32)
    norm = np.linalg.norm(n, axis=-1)
    valid = norm > 0
    if not np.isfinite(n).all() or (valid.any() and np.abs(norm[valid] - 1).max() > 0.05):
        raise CorruptFileError(f"{path} (sample index {index}): normals must be unit vectors or all-zero (invalid)")
    return torch.from_numpy(np.ascontiguousarray(n.transpose(2, 0, 1)))


def _depth(arr: np.ndarray, path: Path, index: int) -> torch.Tensor:
    d = arr[..., 0] if arr.ndim == 3 else arr
    check_shape(d, (None, None), path, index, "depth")
    d = d.astype(np.float32)
    if not np.isfinite(d).all():
        raise CorruptFileError(f"{path} (sample index {index}): depth holds NaN/inf; invalid pixels must be 0")
    return map_tensor(np.where(d > 0, d, 0.0))


class NYUv2(RealDataset):
    """NYUv2, MTAN preprocessing: semseg (13 classes), depth (m), normals at 288x384; splits train (795), val (654).

    The MTAN release has no separate test split: the papers report on ``val``.
    """

    name = "nyuv2"
    SPLITS = ("train", "val")
    TASKS: tuple[str, ...] = ("semseg", "depth", "normals")
    FOLDERS = ("image", "label", "depth", "normal")

    def __init__(self, split: str, preset: str = "paper", root=None, transform=None, size=None) -> None:
        super().__init__(split, preset, root, transform, size)
        self.tasks = self.TASKS
        self.task_info = {"semseg": class_info(NYU_13_CLASSES), "depth": {}, "normals": {}}
        self.image_size = (288, 384)
        base = need_dir(self.root / split, self.name)
        for folder in self.FOLDERS:
            need_dir(base / folder, self.name)
        n = len(list((base / "image").glob("*.npy")))
        if n == 0:
            raise DatasetLayoutError(f"{self.name}: no .npy files in {base / 'image'}")
        for folder in self.FOLDERS:  # files are numbered 0..n-1 in every folder
            for i in range(n):
                need_file(base / folder / f"{i}.npy", self.name)
        self.base = base
        self.items = list(range(n))
        self.ids = [str(i) for i in range(n)]

    def load(self, index: int) -> tuple[dict, list[str]]:
        path = lambda folder: self.base / folder / f"{index}.npy"  # noqa: E731
        img = read_npy(path("image"), index)
        lab = read_npy(path("label"), index)
        check_shape(lab, img.shape[:2], path("label"), index, "label")
        if not np.isfinite(lab).all() or (lab != np.round(lab)).any():
            raise CorruptFileError(f"{path('label')} (sample index {index}): labels must be integers (-1 ignore)")
        lab = check_labels(lab.astype(np.int64), 13, path("label"), index)
        sample = {"image": image_tensor(img, path("image"), index), "semseg": label_tensor(lab),
                  "depth": _depth(read_npy(path("depth"), index), path("depth"), index),
                  "normals": _normals(read_npy(path("normal"), index), path("normal"), index)}
        return sample, list(self.tasks)


class NYUDMT(RealDataset):
    """NYUD-v2 for multi-task learning: semseg (40 classes), depth (m), normals, edge at 480x640; 795/654."""

    name = "nyud-mt"
    SPLITS = ("train", "val")
    TASKS: tuple[str, ...] = ("semseg", "depth", "normals", "edge")

    def __init__(self, split: str, preset: str = "paper", root=None, transform=None, size=None) -> None:
        super().__init__(split, preset, root, transform, size)
        self.tasks = self.TASKS
        self.task_info = {"semseg": class_info(NYU_40_CLASSES), "depth": {}, "normals": {}, "edge": {}}
        self.image_size = (480, 640)
        self.ids = read_lines(self.root / "gt_sets" / f"{split}.txt", self.name)
        for folder, ext in (("images", "jpg"), ("segmentation", "png"), ("depth", "npy"), ("normals", "npy"),
                            ("edge", "npy")):
            need_dir(self.root / folder, self.name)
            for i in self.ids:
                need_file(self.root / folder / f"{i}.{ext}", self.name)
        self.items = list(self.ids)

    def load(self, index: int) -> tuple[dict, list[str]]:
        i = self.ids[index]
        p = {k: self.root / k / f"{i}.{e}" for k, e in (("images", "jpg"), ("segmentation", "png"),
                                                           ("depth", "npy"), ("normals", "npy"), ("edge", "npy"))}
        img = read_image(p["images"], index)
        hw = img.shape[:2]
        seg = check_shape(read_png(p["segmentation"], index, modes=("L", "P")), hw, p["segmentation"], index,
                          "segmentation").astype(np.int64)
        seg = check_labels(seg - 1, 40, p["segmentation"], index)  # 0 unlabelled -> -1
        depth = read_npy(p["depth"], index)
        check_shape(depth[..., 0] if depth.ndim == 3 else depth, hw, p["depth"], index, "depth")
        edge = check_shape(read_npy(p["edge"], index), hw, p["edge"], index, "edge").astype(np.float32)
        if not np.isin(edge, (0.0, 1.0)).all():
            raise CorruptFileError(f"{p['edge']} (sample index {index}): edge values must be 0 or 1")
        normals = read_npy(p["normals"], index)
        check_shape(normals, (*hw, 3), p["normals"], index, "normals")
        sample = {"image": image_tensor(img, p["images"], index), "semseg": label_tensor(seg),
                  "depth": _depth(depth, p["depth"], index), "normals": _normals(normals, p["normals"], index),
                  "edge": map_tensor(edge)}
        return sample, list(self.tasks)


# ------------------------------------------------------------------------------------------------------ twins
# Synthetic NYU's 13 classes written as NYU-40 ids (for the nyud-mt twin): the same scene, the 40-class vocabulary.
TWIN_13_TO_40 = np.array([NYU_40_CLASSES.index(n) for n in (
    "bed", "books", "ceiling", "chair", "floor", "otherfurniture", "otherprop", "picture", "sofa", "table",
    "television", "wall", "window")], np.int64)


def write_nyuv2_twin(out: Path, samples: dict[str, list[dict]]) -> None:
    """MTAN layout from compact synthetic-nyu samples: float32 HWC npy, -1 ignore, depth [H,W,1]."""
    for split, items in samples.items():
        for folder in NYUv2.FOLDERS:
            (out / split / folder).mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(items):
            np.save(out / split / "image" / f"{i}.npy", (s["image"].astype(np.float32) / 255.0).transpose(1, 2, 0))
            np.save(out / split / "label" / f"{i}.npy", s["semseg"].astype(np.float32))
            np.save(out / split / "depth" / f"{i}.npy", s["depth"].astype(np.float32).transpose(1, 2, 0))
            np.save(out / split / "normal" / f"{i}.npy", s["normals"].astype(np.float32).transpose(1, 2, 0))


def write_nyudmt_twin(out: Path, samples: dict[str, list[dict]]) -> None:
    """NYUD_MT layout: JPEG images (quality 100, no chroma subsampling), 1-based 40-class PNG, npy maps."""
    from PIL import Image

    from mtlkit.data.synthetic import edges_from_labels

    for folder in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for split, items in samples.items():
        ids = [f"{split}_{i:04d}" for i in range(len(items))]
        (out / "gt_sets" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for i, s in zip(ids, items):
            Image.fromarray(s["image"].transpose(1, 2, 0)).save(out / "images" / f"{i}.jpg", quality=100,
                                                               subsampling=0)
            sem = s["semseg"].astype(np.int64)
            seg = np.where(sem >= 0, TWIN_13_TO_40[np.clip(sem, 0, 12)] + 1, 0).astype(np.uint8)
            Image.fromarray(seg).save(out / "segmentation" / f"{i}.png")
            np.save(out / "depth" / f"{i}.npy", s["depth"][0].astype(np.float32))
            np.save(out / "normals" / f"{i}.npy", s["normals"].transpose(1, 2, 0).astype(np.float32))
            np.save(out / "edge" / f"{i}.npy", edges_from_labels(sem).astype(np.float32))

