"""Broden+ (``broden``): scene, object, part, material and texture from several sources, in either of two layouts.

``layout="broden+"`` (picked when the root has ``meta_file/`` or ``broden_dataset/``): the records of
CSAILVision/unifiedparsing resolved against the raw ADE20K, PASCAL, OpenSurfaces and DTD releases, the data UPerNet's
paper trains on (:mod:`mtlkit.data.real.broden_plus`). ``layout="netdissect"`` (picked when the root has
``index.csv``): Broden in the NetDissect release format, read by this module. ``sources=`` restricts the records to
some of ``ade20k``, ``pascal``, ``os``, ``dtd``. In both layouts a task an item has no label for is -1 and left out
of ``meta["tasks"]``; ``meta["source"]`` names the source.

Formats and label rules: docs/data.md#broden
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from mtlkit.data.real.base import (CorruptFileError, DatasetLayoutError, RealDataset, check_shape, class_info,
                                   image_tensor, label_tensor, nearest_to, need_file, read_image, read_png)

CATEGORIES = {"semseg": "object", "parts": "part", "material": "material", "scene": "scene", "texture": "texture"}
PIXEL_TASKS = ("semseg", "parts", "material")
NAME = "broden"


def _read_csv(path: Path, dataset: str) -> list[dict]:
    need_file(path, dataset)
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class _NetDissectReader:
    """Items and label arrays of one split of a NetDissect Broden root (``index.csv``)."""

    def __init__(self, root: Path, split: str, sources=None) -> None:
        self.root = root
        self.task_info, self.lut = {}, {}
        for task, cat in CATEGORIES.items():
            rows = _read_csv(root / f"c_{cat}.csv", NAME)
            try:  # a code-0 row, if present, is the "none" entry: skip it
                rows = [r for r in rows if int(r["code"]) != 0 and int(r["number"]) != 0]
                codes = {int(r["number"]): int(r["code"]) - 1 for r in rows}
                names = [r["name"] for r in sorted(rows, key=lambda r: int(r["code"]))]
            except (KeyError, ValueError) as exc:
                raise CorruptFileError(f"{root / f'c_{cat}.csv'}: expected columns code,number,name ({exc})") \
                    from None
            if sorted(codes.values()) != list(range(len(codes))):
                raise CorruptFileError(f"{root / f'c_{cat}.csv'}: codes must run 1..{len(codes)}")
            self.task_info[task] = class_info(names)
            lut = np.full(max(codes, default=0) + 1, -1, np.int64)  # numbers not of this category: none (-1)
            for number, code in codes.items():
                lut[number] = code
            self.lut[task] = lut
        rows = _read_csv(root / "index.csv", NAME)
        missing = {"image", "split", "ih", "iw"} - set(rows[0] if rows else {})
        if missing:
            raise CorruptFileError(f"{root / 'index.csv'}: missing columns {sorted(missing)}")
        self.items = [r for r in rows if r["split"] == split
                      and (sources is None or r["image"].split("/")[0] in tuple(sources))]
        if not self.items:
            raise DatasetLayoutError(f"{NAME}: index.csv has no rows with split {split!r}"
                                     + (f" from the sources {', '.join(sources)}" if sources is not None else ""))
        for r in self.items:
            need_file(root / "images" / r["image"], NAME)
            for task in PIXEL_TASKS:
                for entry in self._entries(r, task):
                    if not entry.isdigit():
                        need_file(root / "images" / entry, NAME)
        self.ids = [r["image"] for r in self.items]

    @staticmethod
    def _entries(row: dict, task: str) -> list[str]:
        return [e.strip() for e in (row.get(CATEGORIES[task]) or "").split(";") if e.strip()]

    def _code(self, task: str, numbers: np.ndarray) -> np.ndarray:
        """Global label numbers -> the category's code - 1 (-1: none or not of this category)."""
        lut = self.lut[task]
        return np.where((numbers >= 0) & (numbers < len(lut)), lut[np.clip(numbers, 0, len(lut) - 1)], -1)

    def load(self, index: int) -> tuple[dict, list[str], str]:
        row = self.items[index]
        img_path = self.root / "images" / row["image"]
        img = read_image(img_path, index)
        hw = img.shape[:2]
        if (int(row["ih"]), int(row["iw"])) != hw:
            raise CorruptFileError(f"{img_path} (sample index {index}): image is {hw[0]}x{hw[1]} but index.csv says "
                                   f"{row['ih']}x{row['iw']}")
        sample: dict = {"image": img, "image_path": img_path}
        labelled = []
        for task in CATEGORIES:
            entries = self._entries(row, task)
            if task in PIXEL_TASKS:
                lab = np.full(hw, -1, np.int64)
                for entry in entries:
                    if entry.isdigit():
                        layer = np.full(hw, self._code(task, np.array(int(entry))), np.int64)
                    else:
                        p = self.root / "images" / entry
                        rgb = check_shape(read_png(p, index), (None, None, None), p, index, "label PNG (RGB)")
                        numbers = rgb[..., 0].astype(np.int64) + 256 * rgb[..., 1].astype(np.int64)
                        layer = nearest_to(self._code(task, numbers), hw)  # Broden stores labels at (sh, sw)
                    lab = np.where(lab >= 0, lab, layer)
                sample[task] = lab
            else:
                sample[task] = np.array(int(self._code(task, np.array(int(entries[0])))) if entries else -1)
            if entries:
                labelled.append(task)
        return sample, labelled

    def source(self, index: int) -> str:
        return self.items[index]["image"].split("/")[0]


class Broden(RealDataset):
    """Broden+ multi-source data: scene, object (semseg), parts, material, texture; each source labels some.

    Args (besides the common ones): ``layout`` "auto" (default: Broden+ when the root has ``meta_file/`` or
    ``broden_dataset/``, NetDissect when it has ``index.csv``), "broden+" or "netdissect"; ``sources``: only the
    records of these sources (Broden+: ``ade20k``, ``pascal``, ``os``, ``dtd``; NetDissect: the first folder of
    the image path).
    """

    name = "broden"
    SPLITS = ("train", "val")
    TASKS: tuple[str, ...] = ("scene", "semseg", "parts", "material", "texture")
    LAYOUTS = ("auto", "broden+", "netdissect")

    def __init__(self, split: str, preset: str = "paper", root=None, transform=None, size=None, layout: str = "auto",
                 sources=None) -> None:
        super().__init__(split, preset, root, transform, size)
        if layout not in self.LAYOUTS:
            raise ValueError(f"broden layout must be one of {', '.join(self.LAYOUTS)}, got {layout!r}")
        if isinstance(sources, str):
            sources = (sources,)
        if layout == "auto":
            if (self.root / "meta_file").is_dir() or (self.root / "broden_dataset").is_dir():
                layout = "broden+"
            elif (self.root / "index.csv").is_file():
                layout = "netdissect"
            else:
                raise DatasetLayoutError(f"{self.name}: {self.root} holds neither Broden+ (missing folder "
                                         f"{self.root / 'meta_file'} and {self.root / 'broden_dataset'}) nor "
                                         f"NetDissect "
                                         f"Broden (missing file {self.root / 'index.csv'}); see data/README.md")
        self.layout = layout
        if layout == "broden+":
            from mtlkit.data.real.broden_plus import BrodenPlusReader

            self.reader = BrodenPlusReader(self.root, split, sources)
        else:
            self.reader = _NetDissectReader(self.root, split, sources)
        self.tasks = self.TASKS
        self.task_info = self.reader.task_info
        self.image_size = (None, None)
        self.items = self.reader.items
        self.ids = self.reader.ids

    def load(self, index: int) -> tuple[dict, list[str]]:
        arrays, labelled = self.reader.load(index)
        sample = {"image": image_tensor(arrays["image"], arrays["image_path"], index)}
        for task in ("scene", "semseg", "parts", "material", "texture"):
            value = arrays[task]
            sample[task] = label_tensor(value) if np.ndim(value) else torch.tensor(int(value), dtype=torch.int64)
        return sample, [t for t in self.tasks if t in labelled]

    def __getitem__(self, index: int) -> dict:
        sample = super().__getitem__(index)
        sample["meta"]["source"] = self.reader.source(int(index) % len(self))
        sample["meta"]["layout"] = self.layout
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
