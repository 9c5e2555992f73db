"""Broden+ as CSAILVision/unifiedparsing assembles it: records resolved against the raw source datasets.

This is the data UPerNet's multi-task results are trained on. The root is a clone of unifiedparsing after its
``download_Broden+.sh``: ``meta_file/`` (record lists and label tables) and ``broden_dataset/`` (the raw ADE20K,
PASCAL VOC2010 + Context + Part, OpenSurfaces and DTD releases). Raw labels become Broden+ labels through
``label_assignment.csv``; parts become one class per (object, part) pair, labelled only inside an owner whose listed
parts appear, as the reference's ``valid_part``. Which sources label what: ade20k scene + object + part, pascal
object + part, os material, dtd texture.

Layout and label rules: docs/data.md#broden-unifiedparsing
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from collections.abc import Iterable

import numpy as np

from mtlkit.data.real.base import (CorruptFileError, DatasetLayoutError, check_shape, class_info, nearest_to,
                                   need_dir, need_file, read_image, read_png, require)

SOURCES = ("ade20k", "pascal", "os", "dtd")
RECORD_LISTS = {"train": {"ade20k": "broden_ade20k_pascal_train.json", "pascal": "broden_ade20k_pascal_train.json",
                          "os": "broden_os_train.json", "dtd": "dtd_training_list.json"},
                "val": {"ade20k": "broden_ade20k_pascal_val.json", "pascal": "broden_ade20k_pascal_val.json",
                        "os": "broden_os_val.json", "dtd": "dtd_validation_list.json"}}
META_DIRS = ("meta_file", "meta_file/joint_dataset", "meta_file/ade20k", "meta_file/dtd", "meta_file/pascal", "data")
CATEGORY_OF_TASK = {"semseg": "object", "parts": "part", "scene": "scene", "material": "material",
                    "texture": "texture"}
# unifiedparsing's joint dataset collapses these words out of PASCAL-Part names ("left wing" -> "wing")
COLLAPSED_WORDS = frozenset({"left", "right", "front", "back", "upper", "lower", "side"})
# short PASCAL-Part names that part2ind.m leaves unexplained, spelled out as the reference does
PART_ABBREVIATIONS = {"lfho": "left front hoof", "rfho": "right front hoof", "lbho": "left back hoof",
                      "rbho": "right back hoof", "fwheel": "front wheel", "bwheel": "back wheel",
                      "frontside": "front side", "leftside": "left side", "rightside": "right side",
                      "backside": "back side", "roofside": "roof side", "leftmirror": "left mirror",
                      "rightmirror": "right mirror"}
NAME = "broden"


# ------------------------------------------------------------------------------------------------- meta tables
def find_meta(root: Path, name: str) -> Path:
    """A table of ``meta_file/`` by name, looked for in each of ``META_DIRS`` in turn (the repository moved them)."""
    for d in META_DIRS:
        if (root / d / name).is_file():
            return root / d / name
    raise DatasetLayoutError(f"{NAME}: missing file {name} (looked in {', '.join(d + '/' for d in META_DIRS)} under "
                             f"{root}; it comes with CSAILVision/unifiedparsing's meta_file/)")


def _rows(path: Path, columns: Iterable[str]) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = set(columns) - set(rows[0] if rows else ())
    if not rows or missing:
        raise CorruptFileError(f"{path}: expected a header with columns {', '.join(columns)}"
                               + (f" (missing {sorted(missing)})" if rows else " and at least one row"))
    return rows


def read_vocabulary(path: Path) -> tuple[list[str], int]:
    """``label,name`` table -> (names of the contract classes, offset): offset 1 when label 0 is ``-`` (none)."""
    rows = _rows(path, ("label", "name"))
    try:
        labels = [int(r["label"]) for r in rows]
    except ValueError as exc:
        raise CorruptFileError(f"{path}: labels must be integers ({exc})") from None
    if labels != list(range(len(labels))):
        raise CorruptFileError(f"{path}: labels must run 0..{len(labels) - 1} in order")
    names = [r["name"] for r in rows]
    offset = 1 if names[0] == "-" else 0
    return names[offset:], offset


def read_label_assignment(path: Path) -> dict[tuple[str, str], np.ndarray]:
    """(dataset, category) -> lookup table raw label -> Broden+ label; unlisted raw labels -> none (0; scene -1)."""
    rows = _rows(path, ("dataset", "category", "raw_label", "broden_label"))
    pairs: dict[tuple[str, str], dict[int, int]] = {}
    for n, r in enumerate(rows):
        try:
            pairs.setdefault((r["dataset"], r["category"]), {})[int(r["raw_label"])] = int(r["broden_label"])
        except ValueError:
            raise CorruptFileError(f"{path} line {n + 2}: raw_label and broden_label must be integers, got "
                                   f"{r['raw_label']!r}, {r['broden_label']!r}") from None
    luts = {}
    for (ds, cat), mapping in pairs.items():
        lut = np.full(max(mapping) + 1, -1 if cat == "scene" else 0, np.int64)
        for raw, label in mapping.items():
            if raw < 0:
                raise CorruptFileError(f"{path}: negative raw_label {raw} for {ds} {cat}")
            lut[raw] = label
        luts[(ds, cat)] = lut
    return luts


def read_hierarchy(path: Path) -> list[tuple[int, list[int]]]:
    """``object_part_hierarchy.csv`` -> [(object label, [part labels, 0 = '-' included])] in file order."""
    out = []
    for n, r in enumerate(_rows(path, ("object_label", "part_labels"))):
        try:
            out.append((int(r["object_label"]), [int(p) for p in r["part_labels"].split(";") if p.strip()]))
        except ValueError:
            raise CorruptFileError(f"{path} line {n + 2}: object_label and ';'-separated part_labels must be "
                                   f"integers") from None
    return out


# ----------------------------------------------------------------------------------------------- part2ind.m
_HEADER = re.compile(r"^% \[([^\]]*)\]")
_PART = re.compile(r"^pimap\{(\d+)\}\('([^']*)'\)\s*=\s*(\d+);(?:\s*%\s*(\w[\w ]*\w))?")
_LOOP = re.compile(r"^\s*for ii = 1:(\d+)")
_LOOP_PART = re.compile(r"^\s*pimap\{(\d+)\}\(sprintf\('([^']*)_%d',\s*ii\)\)\s*=\s*(\d+)\s*\+\s*ii\s*;"
                        r"(?:\s*%\s*(\w[\w ]*\w))?")
_SILHOUETTE = re.compile(r"^% only has si")
_COPY_FROM = re.compile(r"^(key|value)Set\s*=\s*\1s\(pimap\{(\d+)\}\);")
_COPY_TO = re.compile(r"^pimap\{(\d+)\}\s*=\s*containers\.Map\(keySet,\s*valueSet\);")
_IGNORED = re.compile(r"^(?:function|pimap =|\s*pimap\{ii\}|end|\s*%|remove|\s*$)")


def parse_part2ind(text: str, path: Path | str = "part2ind.m") -> dict[tuple[int, str], tuple[str, str]]:
    """PASCAL-Part's ``part2ind.m`` -> {(object index, part short name): (object name, readable part name)}.

    Reads the file as unifiedparsing does, line pattern by line pattern: ``% [object]`` headers; ``pimap{i}('x') = k;
    % long name`` (the comment is the readable name, else the short name); ``for ii = 1:n`` loops over
    ``sprintf('x_%d', ii)`` (names x_1..x_n, readable x unless the comment names them without "multiple");
    ``% only has silhouette`` (the object after the last one seen gets a "silhouette" part); and ``keySet``/``valueSet``
    copies of another object's parts. ``remove(...)`` lines are ignored, as the reference does. Any other line raises
    :class:`CorruptFileError` naming it.
    """
    result: dict[tuple[int, str], tuple[str, str]] = {}
    object_name, object_index, count, copy_from = "", 0, 0, None
    for n, line in enumerate(text.splitlines()):
        if m := _HEADER.match(line):
            object_name = m.group(1)
        elif m := _PART.match(line):
            object_index = int(m.group(1))
            result[(object_index, m.group(2))] = (object_name, m.group(4) or m.group(2))
        elif m := _LOOP.match(line):
            count = int(m.group(1))
        elif m := _LOOP_PART.match(line):
            object_index = int(m.group(1))
            readable = m.group(4) if m.group(4) and "multiple" not in m.group(4) else m.group(2)
            for k in range(1, count + 1):
                result[(object_index, f"{m.group(2)}_{k}")] = (object_name, readable)
        elif _SILHOUETTE.match(line):
            object_index += 1
            result[(object_index, "silhouette")] = (object_name, "silhouette")
        elif m := _COPY_FROM.match(line):
            copy_from = int(m.group(2))
        elif m := _COPY_TO.match(line):
            object_index = int(m.group(1))
            if copy_from is None:
                raise CorruptFileError(f"{path} line {n + 1}: containers.Map(keySet, valueSet) before keySet = ...")
            for (obj, part), (_, readable) in list(result.items()):
                if obj == copy_from:
                    result[(object_index, part)] = (object_name, readable)
        elif not _IGNORED.match(line):
            raise CorruptFileError(f"{path} line {n + 1}: unrecognised line {line.strip()!r}")
    return result


def readable_part_name(name: str) -> str:
    """unifiedparsing's normalisation: spell out abbreviations, aeroplane -> airplane, drop left/right/front/...."""
    name = PART_ABBREVIATIONS.get(name, name).replace("aeroplane", "airplane")
    return " ".join(w for w in name.split() if w not in COLLAPSED_WORDS)


def pascal_part_codes(raw: dict[tuple[int, str], tuple[str, str]]) -> tuple[dict[tuple[int, str], int], list[str]]:
    """(object index, short name) -> the PASCAL part code of label_assignment.csv, and the part names by code.

    Codes are given in sorted (object index, short name) order, one per distinct normalised part name (code 0 = '-'),
    as unifiedparsing's ``normalize_part_key`` numbers them.
    """
    names = ["-"]
    key: dict[tuple[int, str], int] = {}
    for obj, short in sorted(raw):
        part = readable_part_name(raw[(obj, short)][1])
        if part not in names:
            names.append(part)
        key[(obj, short)] = names.index(part)
    return key, names


# ---------------------------------------------------------------------------------------------------- sources
def _loadmat(path: Path, index: int, **kw) -> dict:
    sio = require("scipy.io", "scipy", "reading Broden+ .mat files")
    try:
        return sio.loadmat(str(path), **kw)
    except Exception as exc:
        raise CorruptFileError(f"cannot read {path} (sample index {index}): {exc}") from None


def _strings(x) -> list[str]:
    """A MATLAB cell array of strings (as scipy reads it with squeeze_me) -> list of str."""
    arr = np.asarray(x, dtype=object)
    if arr.ndim == 0:
        arr = np.asarray(arr.item(), dtype=object)
    return [str(v) for v in np.atleast_1d(arr).ravel()]


def decode_rg(rgb: np.ndarray, path: Path, index: int) -> np.ndarray:
    """ADE20K's label PNG: class = R // 10 * 256 + G."""
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise CorruptFileError(f"{path} (sample index {index}): expected an RGB label PNG, got shape {rgb.shape}")
    return (rgb[..., 0].astype(np.int64) // 10) * 256 + rgb[..., 1].astype(np.int64)


class _Ade:
    def __init__(self, root: Path) -> None:
        self.dir = need_dir(root / "broden_dataset" / "ade20k", NAME)
        index_path = find_meta(root, "index_ade20k.mat")
        mat = _loadmat(index_path, -1, squeeze_me=True)
        try:
            index = mat["index"]
            self.filenames, self.folders = _strings(index["filename"]), _strings(index["folder"])
        except (KeyError, ValueError, IndexError) as exc:
            raise CorruptFileError(f"{index_path}: expected a struct 'index' with fields filename and folder "
                                   f"({exc})") from None
        if len(self.filenames) != len(self.folders):
            raise CorruptFileError(f"{index_path}: {len(self.filenames)} filenames but {len(self.folders)} folders")
        scene_path = find_meta(root, "scene_categories.txt")
        lines = [line.split() for line in scene_path.read_text().splitlines() if line.strip()]
        if len(lines) != len(self.filenames):
            raise CorruptFileError(f"{scene_path}: {len(lines)} lines, but {index_path} lists {len(self.filenames)} "
                                   f"images (one scene a line, in the index's order)")
        names = []
        for n, (parts, filename) in enumerate(zip(lines, self.filenames)):
            if len(parts) != 2 or parts[0] + ".jpg" != filename:
                raise CorruptFileError(f"{scene_path} line {n + 1}: expected '{filename[:-4]} SCENE', got "
                                       f"{' '.join(parts)!r}")
            names.append("-" if parts[1] == "misc" else parts[1])
        scenes = ["-"] + sorted(set(names) - {"-"})
        self.scene_raw = [scenes.index(s) for s in names]

    def size(self) -> int:
        return len(self.filenames)

    def files(self, i: int) -> dict[str, Path]:
        img = self.dir / self.folders[i] / self.filenames[i]
        return {"image": img, "object": img.with_name(img.stem + "_seg.png"),
                "part": img.with_name(img.stem + "_parts_1.png")}

    def required(self, i: int) -> list[Path]:
        f = self.files(i)
        return [f["image"], f["object"]]

    def load(self, i: int, index: int) -> tuple[np.ndarray, dict]:
        f = self.files(i)
        img = read_image(f["image"], index)
        obj = check_shape(decode_rg(read_png(f["object"], index), f["object"], index), img.shape[:2], f["object"],
                          index, "object label PNG")
        part = None
        if f["part"].is_file():
            part = check_shape(decode_rg(read_png(f["part"], index), f["part"], index), img.shape[:2], f["part"],
                               index, "part label PNG")
        return img, {"object": (obj, f["object"]), "part": (part, f["part"]),
                     "scene": (np.array(self.scene_raw[i]), f["image"])}


class _Pascal:
    def __init__(self, root: Path) -> None:
        self.dir = need_dir(root / "broden_dataset" / "pascal", NAME)
        if (self.dir / "JPEGImages").is_dir():
            self.images = self.dir / "JPEGImages"
        else:
            versions = sorted(p for p in self.dir.iterdir() if p.is_dir() and p.name.startswith("VOC"))
            if not versions:
                raise DatasetLayoutError(f"{NAME}: missing folder {self.dir / 'VOC2010' / 'JPEGImages'} (the "
                                         f"PASCAL VOC2010 images)")
            self.images = need_dir(versions[-1] / "JPEGImages", NAME)
        part_dir = self.dir if (self.dir / "part2ind.m").is_file() else self.dir / "part"
        part2ind = need_file(part_dir / "part2ind.m", NAME)
        self.part_key, self.part_names = pascal_part_codes(parse_part2ind(part2ind.read_text(), part2ind))
        self.annotations = need_dir(part_dir / "Annotations_Part", NAME)
        self.context = need_dir(self.dir / "context" / "trainval", NAME)
        self.segs = sorted(p.name for p in self.annotations.glob("*.mat"))

    def size(self) -> int:
        return len(self.segs)

    def files(self, i: int) -> dict[str, Path]:
        seg = self.segs[i]
        return {"image": self.images / (seg[:-4] + ".jpg"), "object": self.context / seg,
                "part": self.annotations / seg}

    def required(self, i: int) -> list[Path]:
        return list(self.files(i).values())

    def _parts(self, path: Path, index: int) -> np.ndarray | None:
        try:
            objects = _loadmat(path, index)["anno"][0, 0]["objects"]
        except (KeyError, IndexError, ValueError) as exc:
            raise CorruptFileError(f"{path} (sample index {index}): expected a struct 'anno' with 'objects' "
                                   f"({exc})") from None
        if objects.size == 0:
            return None  # no annotated object: no parts
        seg = None
        for k in range(objects.shape[1]):
            obj = objects[0, k]
            try:
                class_ind = int(np.asarray(obj["class_ind"]).ravel()[0])
                mask = np.asarray(obj["mask"]).astype(bool)
                parts = obj["parts"]
                seg = np.zeros(mask.shape, np.int64) if seg is None else seg
                for j in range(parts.shape[1] if parts.size else 0):
                    name = str(np.asarray(parts[0, j]["part_name"]).ravel()[0])
                    if (class_ind, name) not in self.part_key:
                        raise CorruptFileError(f"{path} (sample index {index}): part {name!r} of object class "
                                               f"{class_ind} is not in part2ind.m")
                    part_mask = np.asarray(parts[0, j]["mask"]).astype(bool)
                    seg[check_shape(part_mask, seg.shape, path, index, "part mask")] = self.part_key[(class_ind, name)]
            except CorruptFileError:
                raise
            except (KeyError, IndexError, ValueError, TypeError) as exc:
                raise CorruptFileError(f"{path} (sample index {index}): unexpected 'anno' object layout ({exc})") \
                    from None
        return seg

    def load(self, i: int, index: int) -> tuple[np.ndarray, dict]:
        f = self.files(i)
        img = read_image(f["image"], index)
        try:
            obj = np.asarray(_loadmat(f["object"], index)["LabelMap"]).astype(np.int64)
        except KeyError:
            raise CorruptFileError(f"{f['object']} (sample index {index}): no variable 'LabelMap'") from None
        obj = check_shape(obj, img.shape[:2], f["object"], index, "LabelMap")
        part = self._parts(f["part"], index)
        if part is not None:
            check_shape(part, img.shape[:2], f["part"], index, "part annotation")
        return img, {"object": (obj, f["object"]), "part": (part, f["part"])}


class _OpenSurfaces:
    def __init__(self, root: Path) -> None:
        self.dir = need_dir(root / "broden_dataset" / "opensurfaces", NAME)
        _rows(need_file(self.dir / "label-substance-colors.csv", NAME), ("substance_name", "red_color"))
        self.photos = [r["photo_id"] for r in _rows(need_file(self.dir / "photos.csv", NAME), ("photo_id",))]

    def size(self) -> int:
        return len(self.photos)

    def files(self, i: int) -> dict[str, Path]:
        pid = int(float(self.photos[i]))
        return {"image": self.dir / "photos" / f"{pid}.jpg", "material": self.dir / "photos-labels" / f"{pid}.png"}

    def required(self, i: int) -> list[Path]:
        return list(self.files(i).values())

    def load(self, i: int, index: int) -> tuple[np.ndarray, dict]:
        f = self.files(i)
        img = read_image(f["image"], index)
        lab = read_png(f["material"], index)
        if lab.ndim != 3:
            raise CorruptFileError(f"{f['material']} (sample index {index}): expected an RGB label PNG (material in "
                                   f"the red channel), got shape {lab.shape}")
        # OpenSurfaces renders labels 1024 px high; resize_images.py only resizes photos above 512 px with them
        return img, {"material": (nearest_to(lab[..., 0].astype(np.int64), img.shape[:2]), f["material"])}


class _Dtd:
    def __init__(self, root: Path) -> None:
        self.dir = need_dir(root / "broden_dataset" / "dtd" / "dtd-r1.0.1" / "images", NAME)
        anno = find_meta(root, "labels_joint_anno.txt")
        self.items = []
        for n, line in enumerate(anno.read_text().splitlines()):
            if line.strip():
                parts = line.split()
                if len(parts) < 2:
                    raise CorruptFileError(f"{anno} line {n + 1}: expected 'FOLDER/FILE.jpg LABEL [LABEL ...]'")
                self.items.append((parts[0], parts[1:]))
        textures = {t for _, labels in self.items for t in labels}
        for fn, _ in self.items:
            if fn.split("/")[0] not in textures:
                raise CorruptFileError(f"{anno}: the folder of {fn} ({fn.split('/')[0]!r}) is not one of the texture "
                                       f"labels")

    def size(self) -> int:
        return len(self.items)

    def files(self, i: int) -> dict[str, Path]:
        return {"image": self.dir / self.items[i][0]}

    def required(self, i: int) -> list[Path]:
        return [self.files(i)["image"]]

    def load(self, i: int, index: int) -> tuple[np.ndarray, dict]:
        f = self.files(i)
        return read_image(f["image"], index), {"texture": (self.items[i][0].split("/")[0], f["image"])}


SOURCE_READERS = {"ade20k": _Ade, "pascal": _Pascal, "os": _OpenSurfaces, "dtd": _Dtd}


# ---------------------------------------------------------------------------------------------------- reader
class BrodenPlusReader:
    """Items and contract samples of one split of a Broden+ root (used by :class:`mtlkit.data.real.broden.Broden`)."""

    def __init__(self, root: Path, split: str, sources: Iterable[str] | None = None) -> None:
        self.root = root
        sources = tuple(sources) if sources is not None else SOURCES
        bad = [s for s in sources if s not in SOURCES]
        if bad or not sources:
            raise ValueError(f"broden sources must be a non-empty subset of {', '.join(SOURCES)}, got {sources}")
        self.sources = sources
        need_dir(root / "meta_file", NAME)
        self.task_info, self.offset, labels_in = {}, {}, {}
        for task, cat in CATEGORY_OF_TASK.items():
            names, offset = read_vocabulary(find_meta(root, f"{cat}.csv"))
            labels_in[cat] = len(names) + offset
            if task == "parts":
                part_names, part_offset = names, offset
            else:
                self.task_info[task], self.offset[task] = class_info(names), offset
        assignment_path = find_meta(root, "label_assignment.csv")
        self.luts = read_label_assignment(assignment_path)
        for (ds, cat), lut in self.luts.items():
            if cat not in labels_in or lut.max(initial=0) >= labels_in[cat]:
                raise CorruptFileError(f"{assignment_path}: {ds} {cat} assigns Broden+ labels up to {int(lut.max())}"
                                       f", but {cat}.csv has labels 0..{labels_in.get(cat, 0) - 1}")
        self._pairs(find_meta(root, "object_part_hierarchy.csv"), part_names, part_offset)
        self.readers = {s: SOURCE_READERS[s](root) for s in sources}
        self.items: list[tuple[str, int]] = []
        lists = RECORD_LISTS[split]
        for list_name in dict.fromkeys(lists[s] for s in sources):
            path = find_meta(root, list_name)
            for n, line in enumerate(path.read_text().splitlines()):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    ds, i = str(rec["dataset"]), int(rec["file_index"])
                except (ValueError, KeyError, TypeError):
                    raise CorruptFileError(f"{path} line {n + 1}: expected a JSON record with 'dataset' and "
                                           f"'file_index', got {line[:80]!r}") from None
                if ds not in SOURCES:
                    raise CorruptFileError(f"{path} line {n + 1}: unknown dataset {ds!r} (known: "
                                           f"{', '.join(SOURCES)})")
                if ds not in sources:
                    continue
                if not 0 <= i < self.readers[ds].size():
                    raise CorruptFileError(f"{path} line {n + 1}: {ds} file_index {i} outside 0.."
                                           f"{self.readers[ds].size() - 1}")
                self.items.append((ds, i))
        if not self.items:
            raise DatasetLayoutError(f"{NAME}: no {split} records of the sources {', '.join(sources)} in "
                                     f"{', '.join(dict.fromkeys(lists[s] for s in sources))}")
        for ds, i in self.items:
            for path in self.readers[ds].required(i):
                need_file(path, NAME)
        self.ids = [f"{ds}/{i}" for ds, i in self.items]

    def _pairs(self, path: Path, part_names: list[str], part_offset: int) -> None:
        objects = self.task_info["semseg"]["class_names"]
        obj_offset = self.offset["semseg"]
        names, owners = ["none"], [()]
        self.hierarchy: list[tuple[int, np.ndarray, set[int]]] = []  # (object label, part label -> class, listed)
        for obj, parts in read_hierarchy(path):
            if not obj_offset <= obj < len(objects) + obj_offset or any(
                    not 0 <= p < len(part_names) + part_offset for p in parts):
                raise CorruptFileError(f"{path}: object {obj} or parts {parts} outside object.csv / part.csv")
            lut = np.zeros(len(part_names) + part_offset, np.int64)
            for p in parts:
                if p >= part_offset:
                    lut[p] = len(names)
                    names.append(f"{objects[obj - obj_offset]} {part_names[p - part_offset]}")
                    owners.append((obj - obj_offset,))
            self.hierarchy.append((obj, lut, set(parts)))
        self.task_info["parts"] = {**class_info(names), "owners": owners}

    def _map(self, ds: str, cat: str, raw: np.ndarray, path: Path, index: int) -> np.ndarray:
        lut = self.luts.get((ds, cat))
        if lut is None:
            raise CorruptFileError(f"label_assignment.csv has no rows for {ds} {cat} (needed by {path})")
        raw = np.asarray(raw, np.int64)
        bad = (raw < 0) | (raw >= len(lut))
        if bad.any():
            raise CorruptFileError(f"{path} (sample index {index}): {ds} {cat} labels "
                                   f"{np.unique(raw[bad])[:5].tolist()}"
                                   f" beyond label_assignment.csv's largest raw label {len(lut) - 1}")
        return lut[raw]

    def parts(self, obj: np.ndarray, part: np.ndarray | None) -> np.ndarray:
        """Broden+ object and part labels -> the contract's (object, part) classes.

        Rules: docs/data.md#broden-unifiedparsing
        """
        out = np.full(obj.shape, -1, np.int64)
        if part is None:
            return out
        for label, lut, listed in self.hierarchy:
            mask = obj == label
            if not mask.any():
                continue
            present = set(np.unique(part[mask]).tolist()) | ({0} if not mask.all() else set())
            if len(present & listed) <= 1:
                continue  # no listed part annotated on this object: its parts are not labelled
            p = part[mask]
            out[mask] = np.where((p >= 0) & (p < len(lut)), lut[np.clip(p, 0, len(lut) - 1)], 0)
        return out

    def source(self, index: int) -> str:
        return self.items[index][0]

    def load(self, index: int) -> tuple[dict, list[str]]:
        ds, i = self.items[index]
        img, raw = self.readers[ds].load(i, index)
        hw = img.shape[:2]
        labels: dict = {"scene": np.array(-1), "semseg": np.full(hw, -1, np.int64),
                        "parts": np.full(hw, -1, np.int64), "material": np.full(hw, -1, np.int64),
                        "texture": np.array(-1)}
        labelled = []
        if "object" in raw:
            obj = self._map(ds, "object", *raw["object"], index)
            labels["semseg"] = obj - self.offset["semseg"]
            labelled.append("semseg")
            part, part_path = raw["part"]
            part = None if part is None else self._map(ds, "part", part, part_path, index)
            labels["parts"] = self.parts(obj, part)
            if (labels["parts"] >= 0).any():
                labelled.append("parts")
        if "scene" in raw:
            labels["scene"] = self._map(ds, "scene", *raw["scene"], index) - self.offset["scene"]
            if int(labels["scene"]) >= 0:
                labelled.insert(0, "scene")
        if "material" in raw:
            labels["material"] = self._map(ds, "material", *raw["material"], index) - self.offset["material"]
            labelled.append("material")
        if "texture" in raw:
            name, path = raw["texture"]
            names = self.task_info["texture"]["class_names"]
            if name not in names:
                raise CorruptFileError(f"{path} (sample index {index}): texture {name!r} (the image's folder) is not "
                                       f"in texture.csv")
            labels["texture"] = np.array(names.index(name))
            labelled.append("texture")
        return {"image": img, "image_path": self.readers[ds].files(i)["image"], **labels}, labelled


# ------------------------------------------------------------------------------------------------------ twin
def _part_group(obj: str, pairs: dict[str, list[str]]) -> str | None:
    """The owner group of an object class in the synthetic Broden-like data (None: it owns no parts)."""
    from mtlkit.data.scenes import CREATURE_KINDS

    group = "creature" if obj in CREATURE_KINDS else "car" if obj in ("car", "truck", "bus", "train") else obj
    return group if group in pairs else None


def _write_part2ind(owners: list[str], pairs: dict[str, list[str]], obj_names: list[str]) -> tuple[str, dict]:
    """A part2ind.m in PASCAL-Part's syntax for the twin, and (object, part word, variant) -> short name.

    Object c (1-based) = owners[c - 1]. Per owner group, its first member writes the part lines and the others copy
    them with keySet/valueSet. Part word 0 of a group: plain ``'w'``; word 1: ``'lw'``/``'rw'`` with "% left w" /
    "% right w" comments; word 2: a ``for ii`` loop of ``'w_%d'`` ("% multiple ws"); others ``'w'`` with a comment.
    A word the reference's normalisation would erase (an adjective such as "back") is written as ``'<w>rest'``.
    An object without parts ends the file with "% only has silhouette mask".
    """
    lines = ["function pimap = part2ind()", "% Define the part index of each object (mtlkit format twin).",
             f"pimap = cell({len(owners) + 1}, 1);", f"for ii = 1:{len(owners) + 1}",
             "    pimap{ii} = containers.Map('KeyType','char','ValueType','int32');", "end", ""]
    shorts: dict = {}
    first_of: dict[str, int] = {}
    for c, obj in enumerate(owners, start=1):
        group = _part_group(obj, pairs)
        lines.append(f"% [{obj}]")
        if group in first_of:
            lines += [f"keySet = keys(pimap{{{first_of[group]}}});", f"valueSet = values(pimap{{{first_of[group]}}});",
                      f"pimap{{{c}}} = containers.Map(keySet, valueSet);         % same parts as "
                      f"{owners[first_of[group] - 1]}"]
        else:
            first_of[group] = c
            for j, word in enumerate(pairs[group]):
                if word in COLLAPSED_WORDS:
                    lines.append(f"pimap{{{c}}}('{word}rest')   = {j + 1};")
                elif j == 1:
                    lines += [f"pimap{{{c}}}('l{word}')   = {j + 1};          % left {word}",
                              f"pimap{{{c}}}('r{word}')   = {j + 50};          % right {word}"]
                elif j == 2:
                    lines += ["for ii = 1:3",
                              f"    pimap{{{c}}}(sprintf('{word}_%d', ii)) = 20 + ii; % multiple {word}s",
                              "end"]
                else:
                    lines.append(f"pimap{{{c}}}('{word}')   = {j + 1};" + (f"        % {word}" if j > 2 else ""))
        lines.append("")
        for j, word in enumerate(pairs[group]):
            shorts[(obj, word)] = ([f"{word}rest"] if word in COLLAPSED_WORDS else [f"l{word}", f"r{word}"]
                                   if j == 1 else [f"{word}_1", f"{word}_2"] if j == 2 else [word])
    silhouette = next(o for o in obj_names if _part_group(o, pairs) is None)
    lines += [f"% [{silhouette}]", "% only has silhouette mask", ""]
    return "\n".join(lines), shorts


def write_broden_plus_twin(out: Path, samples: dict[str, list[dict]],
                           class_names: dict[str, list[str]]) -> dict[str, list[str]]:
    """Broden+ layout (meta_file/ + broden_dataset/) from compact synthetic-broden samples; returns the loader ids
    of the samples per split (``"<dataset>/<file_index>"``, in sample order).

    Synthetic sources go to ade -> ade20k, pascal_parts -> pascal, opensurfaces -> os, dtd -> dtd. Each source's raw
    vocabulary differs from the Broden+ one (ADE objects 250 + 3k, ADE parts 1000 + 7j, so labels cross the R // 10
    * 256 byte; PASCAL-Context objects 400 + 2k; PASCAL parts numbered by the twin's part2ind.m; OpenSurfaces red 5
    + 4m), and ``label_assignment.csv`` maps them back, with decoy raw labels assigned to none. Every second
    OpenSurfaces label PNG (the first included) is written at twice the photo's size (as OpenSurfaces renders its
    labels 1024 px high).
    """
    from PIL import Image

    sio = require("scipy.io", "scipy", "writing the Broden+ twin's .mat files")
    objects, materials, scenes = class_names["semseg"], class_names["material"], class_names["scene"]
    textures = sorted(class_names["texture"])
    pairs: dict[str, list[str]] = {}
    for name in class_names["parts"][1:]:
        group, word = name.split(" ", 1)
        pairs.setdefault(group, []).append(word)
    words = list(dict.fromkeys(w for ws in pairs.values() for w in ws))
    meta, data = out / "meta_file", out / "broden_dataset"
    for d in (meta / "ade20k", meta / "dtd", data / "ade20k", data / "pascal" / "VOC2010" / "JPEGImages",
              data / "pascal" / "part" / "Annotations_Part", data / "pascal" / "context" / "trainval",
              data / "opensurfaces" / "photos", data / "opensurfaces" / "photos-labels",
              data / "dtd" / "dtd-r1.0.1" / "images"):
        d.mkdir(parents=True, exist_ok=True)

    def table(path: Path, header: list[str], rows: list) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)

    table(meta / "object.csv", ["label", "name"], [[0, "-"]] + [[k + 1, n] for k, n in enumerate(objects)])
    table(meta / "part.csv", ["label", "name"], [[0, "-"]] + [[j + 1, w] for j, w in enumerate(words)])
    table(meta / "scene.csv", ["label", "name"], [[k, n] for k, n in enumerate(scenes)])
    table(meta / "material.csv", ["label", "name"], [[0, "-"]] + [[m + 1, n] for m, n in enumerate(materials)])
    table(meta / "texture.csv", ["label", "name"], [[t, n] for t, n in enumerate(textures)])
    owners = [o for o in objects if _part_group(o, pairs) is not None]
    table(meta / "object_part_hierarchy.csv", ["object_label", "object_name", "part_labels", "part_names"],
          [[objects.index(o) + 1, o, ";".join(["0"] + [str(words.index(w) + 1) for w in pairs[_part_group(o, pairs)]]),
            ";".join(["-"] + pairs[_part_group(o, pairs)])] for o in owners])
    part2ind, shorts = _write_part2ind(owners, pairs, objects)
    (data / "pascal" / "part" / "part2ind.m").write_text(part2ind)
    codes, code_names = pascal_part_codes(parse_part2ind(part2ind))

    by_source: dict[str, list[tuple[str, int, dict]]] = {}
    for split, items in samples.items():
        for k, s in enumerate(items):
            src = {"ade": "ade20k", "pascal_parts": "pascal", "opensurfaces": "os", "dtd": "dtd"}[s["meta"]["source"]]
            by_source.setdefault(src, []).append((split, k, s))
    ids: dict[str, list[str]] = {split: [""] * len(items) for split, items in samples.items()}
    records: dict[tuple[str, str], list[dict]] = {}

    def record(list_name: str, split: str, k: int, ds: str, i: int, s: dict) -> None:
        h, w = s["image"].shape[1:]
        records.setdefault((list_name, split), []).append({"dataset": ds, "file_index": i, "width": w, "height": h})
        ids[split][k] = f"{ds}/{i}"

    def jpeg(path: Path, s: dict) -> None:
        Image.fromarray(s["image"].transpose(1, 2, 0)).save(path, quality=100, subsampling=0)

    def rg(raw: np.ndarray) -> Image.Image:
        return Image.fromarray(np.stack([(raw // 256) * 10, raw % 256, np.full_like(raw, 7)], -1).astype(np.uint8))

    # ADE20K: index_ade20k.mat + scene_categories.txt; objects 250 + 3k, parts 1000 + 7j
    ade = by_source.get("ade20k", [])
    filenames, folders, scene_lines = [], [], []
    for i, (split, k, s) in enumerate(ade):
        scene = scenes[int(s["scene"])]
        stage = "training" if split == "train" else "validation"
        filenames.append(f"ADE_{split}_{i + 1:08d}.jpg")
        folders.append(f"ADE20K_2016_07_26/images/{stage}/{scene[0]}/{scene}")
        scene_lines.append(f"ADE_{split}_{i + 1:08d} {scene}")
        img = data / "ade20k" / folders[-1] / filenames[-1]
        img.parent.mkdir(parents=True, exist_ok=True)
        jpeg(img, s)
        sem, par = s["semseg"].astype(np.int64), s["parts"].astype(np.int64)
        rg(np.where(sem >= 0, 250 + 3 * sem, 0)).save(img.with_name(img.stem + "_seg.png"))
        part_words = [None] + [n.split(" ", 1)[1] for n in class_names["parts"][1:]]
        raw_part = np.zeros_like(par)
        for p in np.unique(par[par > 0]):
            raw_part[par == p] = 1000 + 7 * words.index(part_words[p])
        rg(raw_part).save(img.with_name(img.stem + "_parts_1.png"))
        record("broden_ade20k_pascal", split, k, "ade20k", i, s)
    index = {"filename": np.array(filenames, dtype=object), "folder": np.array(folders, dtype=object),
             "objectnames": np.array([f"raw object {r}" for r in range(1, 250 + 3 * len(objects))], dtype=object)}
    sio.savemat(str(meta / "ade20k" / "index_ade20k.mat"), {"index": index})
    (meta / "ade20k" / "scene_categories.txt").write_text("".join(f"{line}\n" for line in scene_lines))
    ade_scenes = ["-"] + sorted({line.split()[1] for line in scene_lines})

    # PASCAL: VOC2010 images, Annotations_Part (class_ind = position in owners), Context LabelMap 400 + 2k
    obj_dtype = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
    part_dtype = [("part_name", "O"), ("mask", "O")]
    pascal = by_source.get("pascal", [])
    for i, (split, k, s) in enumerate(pascal):
        stem = f"2008_{i:06d}"
        jpeg(data / "pascal" / "VOC2010" / "JPEGImages" / f"{stem}.jpg", s)
        sem, par = s["semseg"].astype(np.int64), s["parts"].astype(np.int64)
        sio.savemat(str(data / "pascal" / "context" / "trainval" / f"{stem}.mat"),
                    {"LabelMap": np.where(sem >= 0, 400 + 2 * sem, 0).astype(np.uint16)})
        present = [o for o in owners if (sem == objects.index(o)).any()]
        objs = np.zeros((1, len(present)), dtype=obj_dtype)
        for j, o in enumerate(present):
            mask = sem == objects.index(o)
            names = []
            for p in np.unique(par[mask & (par > 0)]):
                word = class_names["parts"][p].split(" ", 1)[1]
                choices = shorts[(o, word)]
                names.append((choices[(i + j) % len(choices)], mask & (par == p)))
            parts = np.zeros((1, len(names)), dtype=part_dtype)
            for q, (short, m) in enumerate(names):
                parts[0, q] = (short, m.astype(np.uint8))
            objs[0, j] = (o, np.array([[owners.index(o) + 1]], np.uint8), mask.astype(np.uint8), parts)
        anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
        anno[0, 0] = (f"{stem}.jpg", objs)
        sio.savemat(str(data / "pascal" / "part" / "Annotations_Part" / f"{stem}.mat"), {"anno": anno})
        record("broden_ade20k_pascal", split, k, "pascal", i, s)

    # OpenSurfaces: photos.csv, red channel 5 + 4m
    os_items = by_source.get("os", [])
    photo_ids = [1000 + 13 * i for i in range(len(os_items))]
    table(data / "opensurfaces" / "photos.csv", ["photo_id", "scene_category_name", "scene_category_score"],
          [[pid, "twin", 1.0] for pid in photo_ids])
    table(data / "opensurfaces" / "label-substance-colors.csv", ["substance_id", "substance_name", "red_color"],
          [[m + 1, n, 5 + 4 * m] for m, n in enumerate(materials)])
    for i, ((split, k, s), pid) in enumerate(zip(os_items, photo_ids)):
        jpeg(data / "opensurfaces" / "photos" / f"{pid}.jpg", s)
        mat = s["material"].astype(np.int64)
        red = np.where(mat >= 0, 5 + 4 * mat, 0)
        if i % 2 == 0:
            red = red.repeat(2, 0).repeat(2, 1)
        Image.fromarray(np.stack([red, np.zeros_like(red), np.zeros_like(red)], -1).astype(np.uint8)).save(
            data / "opensurfaces" / "photos-labels" / f"{pid}.png")
        record("broden_os", split, k, "os", i, s)

    # DTD: images/<texture>/..., labels_joint_anno.txt (the folder is the main label)
    dtd = by_source.get("dtd", [])
    anno_lines = []
    for i, (split, k, s) in enumerate(dtd):
        tex = class_names["texture"][int(s["texture"])]
        other = textures[(textures.index(tex) + 1) % len(textures)]
        path = data / "dtd" / "dtd-r1.0.1" / "images" / tex / f"{tex}_{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        jpeg(path, s)
        anno_lines.append(f"{tex}/{path.name} {tex} {other}")
        record("dtd", split, k, "dtd", i, s)
    (meta / "dtd" / "labels_joint_anno.txt").write_text("".join(f"{line}\n" for line in anno_lines))

    assignment = [[ "ade20k", "object", 249, "decoy", 0, "-"]]
    assignment += [["ade20k", "object", 250 + 3 * k, n, k + 1, n] for k, n in enumerate(objects)]
    assignment += [["ade20k", "part", 999, "decoy", 0, "-"]]
    assignment += [["ade20k", "part", 1000 + 7 * j, w, j + 1, w] for j, w in enumerate(words)]
    assignment += [["ade20k", "scene", 0, "", -1, scenes[-1]]]
    assignment += [["ade20k", "scene", r, f"{n}-s", scenes.index(n), n] for r, n in enumerate(ade_scenes) if r]
    assignment += [["pascal", "object", 400 + 2 * k, n, k + 1, n] for k, n in enumerate(objects)]
    for code, name in enumerate(code_names):
        word = name[:-4] if name.endswith("rest") and name[:-4] in COLLAPSED_WORDS else name
        if code and word in words:
            assignment.append(["pascal", "part", code, name, words.index(word) + 1, word])
    assignment += [["os", "material", 5 + 4 * m, n, m + 1, n] for m, n in enumerate(materials)]
    assignment += [["os", "material", 5 + 4 * len(materials), "decoy", 0, "-"]]
    table(meta / "label_assignment.csv", ["dataset", "category", "raw_label", "raw_name", "broden_label",
                                          "broden_name"], assignment)
    lists = {("broden_ade20k_pascal", "train"): meta / "broden_ade20k_pascal_train.json",
             ("broden_ade20k_pascal", "val"): meta / "broden_ade20k_pascal_val.json",
             ("broden_os", "train"): meta / "broden_os_train.json", ("broden_os", "val"): meta / "broden_os_val.json",
             ("dtd", "train"): meta / "dtd" / "dtd_training_list.json",
             ("dtd", "val"): meta / "dtd_validation_list.json"}
    for key, path in lists.items():
        path.write_text("".join(json.dumps(r) + "\n" for r in records.get(key, [])))
    return ids
