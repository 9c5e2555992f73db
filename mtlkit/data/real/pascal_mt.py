"""PASCAL-Context with the multi-task labels of ASTMT / Multi-Task-Learning-PyTorch (``pascal-mt``, ``PASCAL_MT.tgz``).

Layout (root = ``<data dir>/prepared/pascal-mt``)::

    ImageSets/Context/{train,val}.txt    image ids (4998 / 5105)
    JPEGImages/{id}.jpg                  RGB, up to 500x500
    semseg/VOC12/{id}.png or semseg/pascal-context/{id}.png
                                         uint8 21 VOC classes 0..20 (0 background), 255 ignore
    pascal-context/trainval/{id}.mat     MATLAB v5, ``LabelMap`` int [H,W] (459 context classes): the edge source
    human_parts/{id}.mat                 MATLAB v5, struct ``anno``: objects (class, class_ind, mask, parts(part_name,
                                         mask)); parts of person objects (class_ind 15) -> 6 part classes
    normals_distill/{id}.png             uint8 RGB, n = 2 v / 255 - 1 (distilled normals; re-normalised to unit)
    sal_distill/{id}.png                 uint8 grey, salient where v / 255 > 0.5

Conversions: semseg 255 -> -1. Edges from ``LabelMap``: ``edges="laplacian"`` (default) marks pixels where the
4-neighbour Laplacian of the label map (reflect-101 border, as cv2) is non-zero. ASTMT additionally thins that map
with skimage's ``thin``: not applied here (see data/README.md). ``edges="kit"`` uses the kit's synthetic rule (right or
lower neighbour differs). Human parts: images without a person that has parts give all -1 (ignore) and ``parts`` is
left out of ``meta["tasks"]``, as ASTMT's ignore regions do. Normals: valid everywhere the PNG is not (128,128,128)
grey-zero unless ``normal_classes`` (context LabelMap ids where normals are meaningful) is given.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from mtlkit.data.real.base import (CorruptFileError, RealDataset, check_labels, check_shape, class_info,
                                   image_tensor, label_tensor, map_tensor, need_dir, need_file, read_image,
                                   read_lines, read_png, require)

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
# PASCAL-Context LabelMap ids of the 21 VOC classes (background -> 0).
CONTEXT_IDS_OF_VOC = np.array([0, 2, 23, 25, 31, 34, 45, 59, 65, 72, 98, 397, 113, 207, 258, 284, 308, 347, 368, 416,
                               427], np.int64)
HUMAN_PART_CLASSES = ("background", "head", "torso", "upper arm", "lower arm", "upper leg", "lower leg")
# part names of PASCAL-Part persons -> the 6-class grouping of ASTMT
HUMAN_PART_6 = {"hair": 1, "head": 1, "lear": 1, "lebrow": 1, "leye": 1, "mouth": 1, "nose": 1, "rear": 1,
                "rebrow": 1, "reye": 1, "neck": 2, "torso": 2, "luarm": 3, "ruarm": 3, "lhand": 4, "llarm": 4,
                "rhand": 4, "rlarm": 4, "luleg": 5, "ruleg": 5, "lfoot": 6, "llleg": 6, "rfoot": 6, "rlleg": 6}
PERSON = 15


def laplacian_edges(labels: np.ndarray) -> np.ndarray:
    """1 where the 4-neighbour Laplacian of ``labels`` is non-zero (reflect-101 border), else 0: float32 [H,W]."""
    x = np.pad(labels.astype(np.float64), 1, mode="reflect")
    lap = x[:-2, 1:-1] + x[2:, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:] - 4 * x[1:-1, 1:-1]
    return (lap != 0).astype(np.float32)


def kit_edges(labels: np.ndarray) -> np.ndarray:
    """The synthetic scenes' rule: 1 where the right or lower neighbour differs."""
    e = np.zeros(labels.shape, bool)
    e[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    e[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return e.astype(np.float32)


def _loadmat(path: Path, index: int, key: str):
    sio = require("scipy.io", "scipy", "reading PASCAL-Context .mat files")
    try:
        return sio.loadmat(str(path))[key]
    except Exception as exc:
        raise CorruptFileError(f"cannot read {key!r} from {path} (sample index {index}): {exc}") from None


class PascalMT(RealDataset):
    """PASCAL-Context multi-task: edge, semseg (21), human parts (7), normals, saliency; train 4998 / val 5105."""

    name = "pascal-mt"
    SPLITS = ("train", "val")
    TASKS: tuple[str, ...] = ("edge", "semseg", "parts", "normals", "saliency")

    def __init__(self, split: str, preset: str = "paper", root=None, transform=None, size=None,
                 edges: str = "laplacian", normal_classes: Iterable[int] | None = None) -> None:
        super().__init__(split, preset, root, transform, size)
        if edges not in ("laplacian", "kit"):
            raise ValueError(f"pascal-mt edges must be 'laplacian' or 'kit', got {edges!r}")
        self.edge_rule = edges
        self.normal_classes = None if normal_classes is None else np.asarray(sorted(normal_classes), np.int64)
        self.tasks = self.TASKS
        self.task_info = {"edge": {}, "semseg": class_info(VOC_CLASSES), "parts": class_info(HUMAN_PART_CLASSES),
                          "normals": {}, "saliency": {}}
        self.image_size = (None, None)  # up to 500x500, varies
        self.ids = read_lines(self.root / "ImageSets" / "Context" / f"{split}.txt", self.name)
        for folder in ("JPEGImages", "pascal-context/trainval", "human_parts", "normals_distill", "sal_distill",
                       "semseg"):
            need_dir(self.root / folder, self.name)
        self.items = []
        for i in self.ids:
            seg = self.root / "semseg" / "VOC12" / f"{i}.png"
            if not seg.is_file():
                seg = need_file(self.root / "semseg" / "pascal-context" / f"{i}.png", self.name)
            for rel in (f"JPEGImages/{i}.jpg", f"pascal-context/trainval/{i}.mat", f"human_parts/{i}.mat",
                        f"normals_distill/{i}.png", f"sal_distill/{i}.png"):
                need_file(self.root / rel, self.name)
            self.items.append(seg)

    def _parts(self, path: Path, index: int, hw: tuple[int, int]) -> np.ndarray | None:
        """Human part classes [H,W] (0 background) or None when no person has part annotations."""
        objects = _loadmat(path, index, "anno")[0][0][1][0]
        target = None
        for obj in objects:
            try:
                is_person = int(np.asarray(obj[1]).reshape(-1)[0]) == PERSON
                parts = obj[3]
            except Exception as exc:
                raise CorruptFileError(f"{path} (sample index {index}): unexpected 'anno' object layout: "
                                       f"{exc}") from None
            if not is_person or np.asarray(parts).size == 0:
                continue
            if target is None:
                target = np.zeros(hw, np.int64)
            for part in parts[0]:
                pname = str(np.asarray(part[0]).reshape(-1)[0])
                if pname not in HUMAN_PART_6:
                    raise CorruptFileError(f"{path} (sample index {index}): unknown human part {pname!r}")
                mask = check_shape(np.asarray(part[1]).astype(bool), hw, path, index, "part mask")
                target[mask] = HUMAN_PART_6[pname]
        return target

    def load(self, index: int) -> tuple[dict, list[str]]:
        i = self.ids[index]
        img_path = self.root / "JPEGImages" / f"{i}.jpg"
        img = read_image(img_path, index)
        hw = img.shape[:2]
        seg_path = self.items[index]
        seg = check_shape(read_png(seg_path, index, modes=("L", "P")), hw, seg_path, index, "semseg").astype(np.int64)
        seg = check_labels(np.where(seg == 255, -1, seg), 21, seg_path, index)
        lm_path = self.root / "pascal-context" / "trainval" / f"{i}.mat"
        label_map = check_shape(np.asarray(_loadmat(lm_path, index, "LabelMap")), hw, lm_path, index, "LabelMap")
        edge = laplacian_edges(label_map) if self.edge_rule == "laplacian" else kit_edges(label_map)
        labelled = ["edge", "semseg"]
        parts = self._parts(self.root / "human_parts" / f"{i}.mat", index, hw)
        if parts is None:
            parts = np.full(hw, -1, np.int64)
        else:
            labelled.append("parts")
        n_path = self.root / "normals_distill" / f"{i}.png"
        raw = check_shape(read_png(n_path, index, modes=("RGB",)), (*hw, 3), n_path, index, "normals")
        n = 2.0 * raw.astype(np.float32) / 255.0 - 1.0
        norm = np.linalg.norm(n, axis=-1, keepdims=True)
        valid = norm[..., 0] > 0.5  # a stored normal is unit up to 8-bit rounding; far shorter means no normal
        if self.normal_classes is not None:
            valid &= np.isin(label_map, self.normal_classes)
        n = np.where(valid[..., None], n / np.maximum(norm, 1e-6), 0.0).astype(np.float32)
        s_path = self.root / "sal_distill" / f"{i}.png"
        sal = read_png(s_path, index)
        sal = check_shape(sal[..., 0] if sal.ndim == 3 else sal, hw, s_path, index, "saliency")
        labelled += ["normals", "saliency"]
        sample = {"image": image_tensor(img, img_path, index), "edge": map_tensor(edge), "semseg": label_tensor(seg),
                  "parts": label_tensor(parts), "normals": torch.from_numpy(np.ascontiguousarray(n.transpose(2, 0, 1))),
                  "saliency": map_tensor((sal.astype(np.float32) / 255.0 > 0.5).astype(np.float32))}
        return sample, labelled


# ------------------------------------------------------------------------------------------------------ twins
# synthetic PASCAL_PARTS (background, head, torso, arm, leg, tail) -> a PASCAL-Part person part name (None: no part)
TWIN_PART_NAMES = (None, "head", "torso", "luarm", "luleg", None)


def normals_to_png(n: np.ndarray) -> np.ndarray:
    """Unit normals [3,H,W] (all-zero invalid) -> uint8 RGB [H,W,3] with v = round((n + 1) 255 / 2).

    Invalid pixels are written as grey 128, which decodes to a vector of length ~0.007 (< 0.5): invalid on read.
    """
    v = np.round((n.transpose(1, 2, 0) + 1.0) * 255.0 / 2.0)
    valid = np.abs(n).sum(0) > 0
    return np.where(valid[..., None], v, 128).clip(0, 255).astype(np.uint8)


def write_pascal_mt_twin(out: Path, samples: dict[str, list[dict]]) -> None:
    """PASCAL_MT layout from compact synthetic-pascal samples."""
    from PIL import Image

    sio = require("scipy.io", "scipy", "writing the pascal-mt twin's .mat files")
    for folder in ("ImageSets/Context", "JPEGImages", "semseg/pascal-context", "pascal-context/trainval",
                   "human_parts", "normals_distill", "sal_distill"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    obj_dtype = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
    part_dtype = [("part_name", "O"), ("mask", "O")]
    for split, items in samples.items():
        ids = [f"2008_{split}{k:03d}" for k in range(len(items))]
        (out / "ImageSets" / "Context" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for i, s in zip(ids, items):
            Image.fromarray(s["image"].transpose(1, 2, 0)).save(out / "JPEGImages" / f"{i}.jpg", quality=100,
                                                               subsampling=0)
            sem = s["semseg"].astype(np.int64)
            Image.fromarray(np.where(sem >= 0, sem, 255).astype(np.uint8)).save(
                out / "semseg" / "pascal-context" / f"{i}.png")
            sio.savemat(str(out / "pascal-context" / "trainval" / f"{i}.mat"),
                        {"LabelMap": np.where(sem >= 0, CONTEXT_IDS_OF_VOC[np.clip(sem, 0, 20)], 0).astype(np.uint16)})
            person = sem == PERSON
            objects = np.zeros((1, 1 if person.any() else 0), dtype=obj_dtype)
            if person.any():
                names = [(n, (s["parts"] == k) & person) for k, n in enumerate(TWIN_PART_NAMES) if n is not None]
                names = [(n, m) for n, m in names if m.any()]
                parts = np.zeros((1, len(names)), dtype=part_dtype)
                for j, (n, m) in enumerate(names):
                    parts[0, j] = (n, m.astype(np.uint8))
                objects[0, 0] = ("person", np.array([[PERSON]], np.uint8), person.astype(np.uint8), parts)
            anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
            anno[0, 0] = (f"{i}.jpg", objects)
            sio.savemat(str(out / "human_parts" / f"{i}.mat"), {"anno": anno})
            Image.fromarray(normals_to_png(s["normals"])).save(out / "normals_distill" / f"{i}.png")
            Image.fromarray((s["saliency"][0] > 0).astype(np.uint8) * 255).save(out / "sal_distill" / f"{i}.png")
