"""PASCAL-Context with the multi-task labels of ASTMT / Multi-Task-Learning-PyTorch (``pascal-mt``, ``PASCAL_MT.tgz``).

Tasks ``semseg`` (21 VOC classes), ``edge`` (derived from the Context label map, thinned as ASTMT by default;
``edges=`` picks another rule), ``parts`` (6 person-part groups), ``normals`` (distilled, valid on ASTMT's
NYU-named classes by default; ``normal_classes=``) and ``saliency`` (distilled). Images without person parts give
all -1 and leave ``parts`` out of ``meta["tasks"]``. Maps of another size are fitted to the image by nearest
neighbour, as the reference loaders do.

Format and conversions: docs/data.md#pascal-mt
"""
from __future__ import annotations

from pathlib import Path
from collections.abc import Iterable

import numpy as np
import torch

from mtlkit.data.real.base import (CorruptFileError, RealDataset, check_labels, check_shape, class_info,
                                   image_tensor, label_tensor, load_mat, map_tensor, nearest_to, need_dir, need_file,
                                   read_image, read_lines, read_png, require, unit_normals)

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
# LabelMap ids (of the 459 PASCAL-Context classes) on which ASTMT trusts the distilled normals: the context classes
# whose name is also one of NYUv2's 894 class names, except "unknown", plus "tvmonitor" (ASTMT's custom addition).
# Derived from data/db_info/context_classes.json and nyu_classes.json of Multi-Task-Learning-PyTorch (170 ids).
ASTMT_NORMAL_CLASSES = np.array([
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49, 50, 51, 53, 55, 56, 59,
    61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101, 104, 105, 107, 111, 113, 115, 122, 124, 135,
    141, 142, 143, 146, 150, 154, 157, 158, 159, 165, 172, 174, 181, 183, 184, 191, 193, 195, 197, 199, 202, 213, 215,
    216, 219, 220, 223, 225, 228, 230, 232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255, 260, 261, 263, 269, 272,
    273, 275, 281, 283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295, 304, 307, 309, 310, 314, 315, 319, 323, 329,
    330, 331, 336, 342, 345, 349, 350, 351, 352, 355, 357, 368, 370, 371, 374, 379, 380, 383, 384, 397, 401, 403, 405,
    407, 408, 411, 412, 413, 414, 417, 419, 421, 423, 427, 429, 430, 432, 440, 441, 442, 443, 444, 446, 454, 457],
    np.int64)


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


def _guo_hall_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two Guo-Hall subiterations, indexed by the 8-neighbour code.

    Bit k of the code is neighbour x_{k+1}, counter-clockwise from the east: E, NE, N, NW, W, SW, S, SE. A pixel is
    deleted when G1 (crossing number X_H = 1), G2 (2 <= min(N1, N2) <= 3) and G3 ((x2 | x3 | ~x8) & x1 == 0; in the
    second subiteration G3': (x6 | x7 | ~x4) & x5 == 0) hold (Guo & Hall, CACM 32(3), 1989).
    """
    code = np.arange(256)
    x = [((code >> k) & 1).astype(bool) for k in range(8)]
    crossing = sum((~x[2 * k]) & (x[2 * k + 1] | x[(2 * k + 2) % 8]) for k in range(4))
    n1 = sum(x[2 * k] | x[2 * k + 1] for k in range(4))
    n2 = sum(x[2 * k + 1] | x[(2 * k + 2) % 8] for k in range(4))
    g12 = (crossing == 1) & np.isin(np.minimum(n1, n2), (2, 3))
    first = g12 & ~((x[1] | x[2] | ~x[7]) & x[0])
    second = g12 & ~((x[5] | x[6] | ~x[3]) & x[4])
    return first, second


_GUO_HALL = _guo_hall_tables()


def thin_edges(mask: np.ndarray) -> np.ndarray:
    """Guo-Hall thinning of a binary map (zeros outside the image) to one-pixel-wide lines: float32 {0,1}."""
    skel = np.asarray(mask).astype(bool).copy()
    while True:
        before = int(skel.sum())
        for table in _GUO_HALL:
            p = np.pad(skel, 1)
            neighbours = (p[1:-1, 2:], p[:-2, 2:], p[:-2, 1:-1], p[:-2, :-2], p[1:-1, :-2], p[2:, :-2], p[2:, 1:-1],
                          p[2:, 2:])
            code = sum(nb.astype(np.int64) << k for k, nb in enumerate(neighbours))
            skel &= ~table[code]
        if int(skel.sum()) == before:
            return skel.astype(np.float32)


def astmt_edges(labels: np.ndarray) -> np.ndarray:
    """ASTMT's PASCAL edges: non-zero 4-neighbour Laplacian of the label map, thinned (Guo-Hall)."""
    return thin_edges(laplacian_edges(labels) > 0)


def _loadmat(path: Path, index: int, key: str):
    return load_mat(path, index, key)


EDGE_RULES = {"astmt": astmt_edges, "laplacian": laplacian_edges, "kit": kit_edges}


class PascalMT(RealDataset):
    """PASCAL-Context multi-task: edge, semseg (21), human parts (7), normals, saliency; train 4998 / val 5105."""

    name = "pascal-mt"
    SPLITS = ("train", "val")
    TASKS: tuple[str, ...] = ("edge", "semseg", "parts", "normals", "saliency")

    def __init__(self, split: str, preset: str = "paper", root=None, transform=None, size=None,
                 edges: str = "astmt", normal_classes: str | Iterable[int] = "astmt") -> None:
        super().__init__(split, preset, root, transform, size)
        if edges not in EDGE_RULES:
            raise ValueError(f"pascal-mt edges must be one of {', '.join(EDGE_RULES)}, got {edges!r}")
        self.edge_rule = edges
        if isinstance(normal_classes, str):
            if normal_classes not in ("astmt", "all"):
                raise ValueError(f"pascal-mt normal_classes must be 'astmt', 'all' or LabelMap ids, got "
                                 f"{normal_classes!r}")
            self.normal_classes = ASTMT_NORMAL_CLASSES if normal_classes == "astmt" else None
        else:
            self.normal_classes = np.asarray(sorted(normal_classes), np.int64)
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
            for part in parts[0]:
                pname = str(np.asarray(part[0]).reshape(-1)[0])
                if pname not in HUMAN_PART_6:
                    raise CorruptFileError(f"{path} (sample index {index}): unknown human part {pname!r}")
                mask = np.asarray(part[1]).astype(bool)
                if target is None:  # the annotation's own size; fitted to the image below
                    target = np.zeros(mask.shape, np.int64)
                check_shape(mask, target.shape, path, index, "part mask")
                target[mask] = HUMAN_PART_6[pname]
        return None if target is None else nearest_to(target, hw)

    def load(self, index: int) -> tuple[dict, list[str]]:
        i = self.ids[index]
        img_path = self.root / "JPEGImages" / f"{i}.jpg"
        img = read_image(img_path, index)
        hw = img.shape[:2]
        seg_path = self.items[index]
        seg = read_png(seg_path, index, modes=("L", "P")).astype(np.int64)
        seg = nearest_to(check_shape(seg, (None, None), seg_path, index, "semseg"), hw)
        seg = check_labels(np.where(seg == 255, -1, seg), 21, seg_path, index)
        lm_path = self.root / "pascal-context" / "trainval" / f"{i}.mat"
        label_map = np.asarray(_loadmat(lm_path, index, "LabelMap"))
        label_map = nearest_to(check_shape(label_map, (None, None), lm_path, index, "LabelMap"), hw)
        edge = EDGE_RULES[self.edge_rule](label_map)
        labelled = ["edge", "semseg"]
        parts = self._parts(self.root / "human_parts" / f"{i}.mat", index, hw)
        if parts is None:
            parts = np.full(hw, -1, np.int64)
        else:
            labelled.append("parts")
        n_path = self.root / "normals_distill" / f"{i}.png"
        raw = nearest_to(check_shape(read_png(n_path, index, modes=("RGB",)), (None, None, 3), n_path, index,
                                     "normals"), hw)
        # a stored normal is unit up to 8-bit rounding; far shorter (grey 128) means no normal
        n = unit_normals(2.0 * raw.astype(np.float32) / 255.0 - 1.0, n_path, index, min_norm=0.5, strict=False)
        if self.normal_classes is not None:
            n = np.where(np.isin(label_map, self.normal_classes)[..., None], n, 0.0).astype(np.float32)
        s_path = self.root / "sal_distill" / f"{i}.png"
        sal = read_png(s_path, index)
        sal = nearest_to(check_shape(sal[..., 0] if sal.ndim == 3 else sal, (None, None), s_path, index,
                                     "saliency"), hw)
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
