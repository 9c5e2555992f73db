"""NYUv2 as preprocessed by the MTAN authors (``nyuv2``) and NYUD-v2 for multi-task learning (``nyud-mt``).

``nyuv2``: the MTAN ``.npy`` layout at 288x384 (13 classes, depth, normals); normals a resize left shorter than unit
are re-normalised on read. ``nyud-mt``: the 480x640 ``NYUD_MT`` data (40 classes, depth, normals, edges) in either
of its two published layouts (Multi-Task-Learning-PyTorch's ``.npy``/``.png`` files or ASTMT's ``.mat``/``.jpg``
files), accepted per file. A map whose size differs from its image is fitted to it by nearest neighbour, as the
reference loaders do.

Formats: docs/data.md#nyuv2, docs/data.md#nyud-mt
"""
from __future__ import annotations

from pathlib import Path
import numpy as np
import torch

from mtlkit.data.real.base import (CorruptFileError, DatasetLayoutError, RealDataset, check_labels, check_shape,
                                   class_info, image_tensor, label_tensor, load_mat, map_tensor, nearest_to,
                                   need_dir, need_file, read_image, read_lines, read_npy, read_png, require,
                                   unit_normals)

NYU_13_CLASSES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "painting", "sofa", "table",
                  "tv", "wall", "window")
NYU_40_CLASSES = ("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
                  "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
                  "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
                  "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub",
                  "bag", "otherstructure", "otherfurniture", "otherprop")


def _normals(arr: np.ndarray, path: Path, index: int, min_norm: float = 0.0, strict: bool = True) -> torch.Tensor:
    """float [H,W,3] -> float32 [3,H,W] unit normals, all-zero where invalid."""
    check_shape(arr, (None, None, 3), path, index, "normals")
    n = unit_normals(arr, path, index, min_norm, strict)
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


# per folder: the extensions of the Multi-Task-Learning-PyTorch copy first, then ASTMT's
NYUD_FILES = (("images", ("jpg",)), ("segmentation", ("png", "mat")), ("depth", ("npy", "mat")),
              ("normals", ("npy", "jpg", "png")), ("edge", ("npy", "png")))


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
        for folder, _ in NYUD_FILES:
            need_dir(self.root / folder, self.name)
        self.items = []
        for i in self.ids:
            paths = {}
            for folder, exts in NYUD_FILES:
                found = next((self.root / folder / f"{i}.{e}" for e in exts
                              if (self.root / folder / f"{i}.{e}").is_file()), None)
                if found is None:
                    raise DatasetLayoutError(f"{self.name}: missing file {self.root / folder / f'{i}.{exts[0]}'} "
                                             f"(or {', '.join('.' + e for e in exts[1:]) or 'no alternative'}; see "
                                             f"data/README.md for the expected layout)")
                paths[folder] = found
            self.items.append(paths)

    def load(self, index: int) -> tuple[dict, list[str]]:
        p = self.items[index]
        img = read_image(p["images"], index)
        hw = img.shape[:2]
        if p["segmentation"].suffix == ".mat":
            seg = np.asarray(load_mat(p["segmentation"], index, "segmentation"))
        else:
            seg = read_png(p["segmentation"], index, modes=("L", "P"))
        seg = nearest_to(check_shape(seg, (None, None), p["segmentation"], index, "segmentation"), hw)
        if not np.isfinite(seg).all() or (seg != np.round(seg)).any():
            raise CorruptFileError(f"{p['segmentation']} (sample index {index}): labels must be integers")
        seg = check_labels(seg.astype(np.int64) - 1, 40, p["segmentation"], index)  # 0 unlabelled -> -1
        if p["depth"].suffix == ".mat":
            depth = np.asarray(load_mat(p["depth"], index, "depth"), np.float32)
        else:
            depth = read_npy(p["depth"], index)
        depth = nearest_to(depth[..., 0] if depth.ndim == 3 else depth, hw)
        if p["edge"].suffix == ".png":
            raw = read_png(p["edge"], index)
            edge = ((raw[..., 0] if raw.ndim == 3 else raw).astype(np.float32) / 255.0 >= 0.5).astype(np.float32)
        else:
            edge = read_npy(p["edge"], index).astype(np.float32)
            if not np.isin(edge, (0.0, 1.0)).all():
                raise CorruptFileError(f"{p['edge']} (sample index {index}): edge values must be 0 or 1")
        edge = nearest_to(check_shape(edge, (None, None), p["edge"], index, "edge"), hw)
        if p["normals"].suffix == ".npy":
            normals, min_norm, strict = read_npy(p["normals"], index), 0.0, True
        else:  # 8-bit image: v = 128 grey (length ~0.004) or JPEG noise around it means no normal
            raw = read_png(p["normals"], index) if p["normals"].suffix == ".png" else read_image(p["normals"], index)
            normals, min_norm, strict = 2.0 * raw.astype(np.float32) / 255.0 - 1.0, 0.5, False
        normals = nearest_to(check_shape(normals, (None, None, 3), p["normals"], index, "normals"), hw)
        sample = {"image": image_tensor(img, p["images"], index), "semseg": label_tensor(seg),
                  "depth": _depth(depth, p["depth"], index),
                  "normals": _normals(normals, p["normals"], index, min_norm, strict), "edge": map_tensor(edge)}
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


def write_nyudmt_twin(out: Path, samples: dict[str, list[dict]], layout: str = "mtl-pytorch") -> None:
    """NYUD_MT layout: JPEG images (quality 100, no chroma subsampling), 1-based 40-class labels, and
    ``layout="mtl-pytorch"`` (default): PNG labels, npy depth/normals/edges; ``"astmt"``: .mat labels and depth,
    JPEG normals (invalid = grey 128), PNG edges (0/255)."""
    from PIL import Image

    from mtlkit.data.real.pascal_mt import normals_to_png
    from mtlkit.data.synthetic import edges_from_labels

    if layout not in ("mtl-pytorch", "astmt"):
        raise ValueError(f"nyud-mt twin layout must be 'mtl-pytorch' or 'astmt', got {layout!r}")
    sio = require("scipy.io", "scipy", "writing the ASTMT nyud-mt twin's .mat files") if layout == "astmt" else None
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
            edge = edges_from_labels(sem).astype(np.float32)
            if layout == "astmt":
                sio.savemat(str(out / "segmentation" / f"{i}.mat"), {"segmentation": seg})
                sio.savemat(str(out / "depth" / f"{i}.mat"), {"depth": s["depth"][0].astype(np.float32)})
                Image.fromarray(normals_to_png(s["normals"])).save(out / "normals" / f"{i}.jpg", quality=100,
                                                                   subsampling=0)
                Image.fromarray((edge * 255).astype(np.uint8)).save(out / "edge" / f"{i}.png")
            else:
                Image.fromarray(seg).save(out / "segmentation" / f"{i}.png")
                np.save(out / "depth" / f"{i}.npy", s["depth"][0].astype(np.float32))
                np.save(out / "normals" / f"{i}.npy", s["normals"].transpose(1, 2, 0).astype(np.float32))
                np.save(out / "edge" / f"{i}.npy", edge)
