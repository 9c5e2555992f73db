"""Broden in the NetDissect release format (``broden``: ``broden1_224``, ``broden1_227``; CSAILVision/NetDissect-Lite
``loader/data_loader.py``, ``script/dlbroden.sh``).

Broden+ as assembled by CSAILVision/unifiedparsing (``download_Broden+.sh``: the raw ADE20K, PASCAL VOC2010 +
Context + Part, OpenSurfaces and DTD releases plus that repository's JSON lists) is a different layout: it has no
``index.csv`` and is not read by this loader.

Layout (root = ``<data dir>/prepared/broden``)::

    index.csv       image,split,ih,iw,sh,sw,color,object,part,material,scene,texture
                    image = path under images/ (its first folder is the source: ade20k, pascal, opensurfaces, dtd,
                    ...); object/part/material = ';'-separated PNG paths under images/ (or a number: one label for
                    the whole image); scene/texture = ';'-separated label numbers; empty = not labelled
    label.csv       number,name,category,frequency,coverage,syns   (global label numbers, 0 = none)
    category.csv    one row per category (name, frequency, ...); not needed by this loader
    c_{object,part,material,scene,texture}.csv   code,number,name,frequency,coverage (code 1.. per category)
    images/...      the JPEG images and label PNGs; a label PNG encodes number = R + 256 G (0 = unlabelled)

Contract: ``semseg`` = object, ``parts``, ``material`` [H,W] and ``scene``, ``texture`` (0-d) as the category's
code - 1 (-1 where unlabelled, and for numbers the category's c_*.csv does not list, which NetDissect's dense map
also sends to 0 = none); PNGs stored at (sh, sw) smaller than the image are upsampled (nearest). Where several
PNGs label one task, the first non-zero label wins. A task an item has no entry for is filled with -1 and left out of
``meta["tasks"]``; ``meta["source"]`` names the source.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from mtlkit.data.real.base import (CorruptFileError, DatasetLayoutError, RealDataset, check_shape, class_info,
                                   image_tensor, label_tensor, need_file, read_image, read_png)

CATEGORIES = {"semseg": "object", "parts": "part", "material": "material", "scene": "scene", "texture": "texture"}
PIXEL_TASKS = ("semseg", "parts", "material")


def _read_csv(path: Path, dataset: str) -> list[dict]:
    need_file(path, dataset)
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class Broden(RealDataset):
    """Broden(+) multi-source data: scene, object (semseg), part, material, texture; each source labels some."""

    name = "broden"
    SPLITS = ("train", "val")
    TASKS: tuple[str, ...] = ("scene", "semseg", "parts", "material", "texture")

    def __init__(self, split: str, preset: str = "paper", root=None, transform=None, size=None) -> None:
        super().__init__(split, preset, root, transform, size)
        self.tasks = self.TASKS
        self.task_info, self.lut = {}, {}
        for task, cat in CATEGORIES.items():
            rows = _read_csv(self.root / f"c_{cat}.csv", self.name)
            try:  # a code-0 row, if present, is the "none" entry: skip it
                rows = [r for r in rows if int(r["code"]) != 0 and int(r["number"]) != 0]
                codes = {int(r["number"]): int(r["code"]) - 1 for r in rows}
                names = [r["name"] for r in sorted(rows, key=lambda r: int(r["code"]))]
            except (KeyError, ValueError) as exc:
                raise CorruptFileError(f"{self.root / f'c_{cat}.csv'}: expected columns code,number,name ({exc})") \
                    from None
            if sorted(codes.values()) != list(range(len(codes))):
                raise CorruptFileError(f"{self.root / f'c_{cat}.csv'}: codes must run 1..{len(codes)}")
            self.task_info[task] = class_info(names)
            lut = np.full(max(codes, default=0) + 1, -1, np.int64)  # numbers not of this category: none (-1)
            for number, code in codes.items():
                lut[number] = code
            self.lut[task] = lut
        self.image_size = (None, None)
        rows = _read_csv(self.root / "index.csv", self.name)
        missing = {"image", "split", "ih", "iw"} - set(rows[0] if rows else {})
        if missing:
            raise CorruptFileError(f"{self.root / 'index.csv'}: missing columns {sorted(missing)}")
        self.items = [r for r in rows if r["split"] == split]
        if not self.items:
            raise DatasetLayoutError(f"{self.name}: index.csv has no rows with split {split!r}")
        for r in self.items:
            need_file(self.root / "images" / r["image"], self.name)
            for task in PIXEL_TASKS:
                for entry in self._entries(r, task):
                    if not entry.isdigit():
                        need_file(self.root / "images" / entry, self.name)
        self.ids = [r["image"] for r in self.items]

    @staticmethod
    def _entries(row: dict, task: str) -> list[str]:
        return [e.strip() for e in (row.get(CATEGORIES[task]) or "").split(";") if e.strip()]

    def _code(self, task: str, numbers: np.ndarray) -> np.ndarray:
        """Global label numbers -> the category's code - 1 (-1: none or not of this category)."""
        lut = self.lut[task]
        return np.where((numbers >= 0) & (numbers < len(lut)), lut[np.clip(numbers, 0, len(lut) - 1)], -1)

    def load(self, index: int) -> tuple[dict, list[str]]:
        row = self.items[index]
        img_path = self.root / "images" / row["image"]
        img = read_image(img_path, index)
        hw = img.shape[:2]
        if (int(row["ih"]), int(row["iw"])) != hw:
            raise CorruptFileError(f"{img_path} (sample index {index}): image is {hw[0]}x{hw[1]} but index.csv says "
                                   f"{row['ih']}x{row['iw']}")
        sample: dict = {"image": image_tensor(img, img_path, index)}
        labelled = []
        for task in self.tasks:
            entries = self._entries(row, task)
            if task in PIXEL_TASKS:
                lab = np.full(hw, -1, np.int64)
                for entry in entries:
                    if entry.isdigit():
                        layer = np.full(hw, self._code(task, np.array(int(entry))), np.int64)
                    else:
                        p = self.root / "images" / entry
                        rgb = read_png(p, index)
                        rgb = check_shape(rgb, (None, None, None), p, index, "label PNG (RGB)")
                        numbers = rgb[..., 0].astype(np.int64) + 256 * rgb[..., 1].astype(np.int64)
                        layer = self._code(task, numbers)
                        if layer.shape != hw:  # Broden stores labels at (sh, sw), e.g. half resolution
                            rows_ = np.arange(hw[0]) * layer.shape[0] // hw[0]
                            cols = np.arange(hw[1]) * layer.shape[1] // hw[1]
                            layer = layer[rows_][:, cols]
                    lab = np.where(lab >= 0, lab, layer)
                sample[task] = label_tensor(lab)
            else:
                value = int(self._code(task, np.array(int(entries[0])))) if entries else -1
                sample[task] = torch.tensor(value, dtype=torch.int64)
            if entries:
                labelled.append(task)
        sample = {k: sample[k] for k in ("image", "scene", "semseg", "parts", "material", "texture")}
        return sample, labelled

    def __getitem__(self, index: int) -> dict:
        sample = super().__getitem__(index)
        sample["meta"]["source"] = self.items[int(index) % len(self)]["image"].split("/")[0]
        return sample


# ------------------------------------------------------------------------------------------------------ twins
def write_broden_twin(out: Path, samples: dict[str, list[dict]], class_names: dict[str, list[str]]) -> None:
    """NetDissect layout from compact synthetic-broden samples; class c of a category is code c + 1 and the
    categories' global numbers are consecutive in the order object, part, material, scene, texture."""
    from PIL import Image

    (out / "images").mkdir(parents=True, exist_ok=True)
    numbers, label_rows, start = {}, [], 1
    for task, cat in CATEGORIES.items():
        names = class_names[task]
        numbers[task] = np.arange(start, start + len(names))
        with open(out / f"c_{cat}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["code", "number", "name", "frequency", "coverage"])
            for c, name in enumerate(names):
                w.writerow([c + 1, start + c, name, 0, 0.0])
                label_rows.append([start + c, f"{name}-{cat[0]}", f"{cat}({c + 1})", 0, 0.0, ""])
        start += len(names)
    with open(out / "category.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "frequency"])
        w.writerows([[cat, 0] for cat in CATEGORIES.values()])
    with open(out / "label.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        w.writerows([[0, "-", "-", 0, 0.0, ""]] + label_rows)
    rows = []
    for split, items in samples.items():
        for k, s in enumerate(items):
            source = s["meta"]["source"]
            (out / "images" / source).mkdir(exist_ok=True)
            stem = f"{source}/{split}_{k:04d}"
            h, w = s["image"].shape[1:]
            Image.fromarray(s["image"].transpose(1, 2, 0)).save(out / "images" / f"{stem}.jpg", quality=100,
                                                               subsampling=0)
            row = {"image": f"{stem}.jpg", "split": split, "ih": h, "iw": w, "sh": h, "sw": w, "color": ""}
            tasks = s["meta"]["tasks"]
            for task, cat in CATEGORIES.items():
                if task not in tasks:
                    row[cat] = ""
                elif task in PIXEL_TASKS:
                    lab = s[task].astype(np.int64)
                    num = np.where(lab >= 0, numbers[task][np.clip(lab, 0, None)], 0)
                    png = np.stack([num % 256, num // 256, np.zeros_like(num)], -1).astype(np.uint8)
                    Image.fromarray(png).save(out / "images" / f"{stem}_{cat}.png")
                    row[cat] = f"{stem}_{cat}.png"
                else:
                    row[cat] = str(int(numbers[task][int(s[task])]))
            rows.append(row)
    with open(out / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "split", "ih", "iw", "sh", "sw", "color", "object", "part",
                                          "material", "scene", "texture"])
        w.writeheader()
        w.writerows(rows)
