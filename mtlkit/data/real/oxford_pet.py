"""Oxford-IIIT Pet from the official archives (``oxford-pet``) and the course's chunked HDF5 packaging (``oxpet-h5``).

``oxford-pet``: JPEG images, trimaps (-> background/pet/border), VOC head boxes and the breed lists. Tasks
``semseg``, ``boxes`` (``box_labels`` 0 cat / 1 dog), ``binary`` (0 cat / 1 dog) and ``category`` (37 breeds);
``train``/``val`` split the released ``trainval`` deterministically. ``oxpet-h5``: one HDF5 file per array and split
(images, masks, boxes, species), tasks ``semseg`` (background/pet), ``boxes`` and ``binary``.

Formats: docs/data.md#oxford-pet, docs/data.md#oxpet-h5
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

from mtlkit.data.real.base import (CorruptFileError, DatasetLayoutError, RealDataset, check_shape, class_info,
                                   image_tensor, label_tensor, need_dir, need_file, read_image, read_lines, read_png,
                                   require)

PET_BREEDS = ("Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "Bengal",
              "Birman", "Bombay", "boxer", "British_Shorthair", "chihuahua", "Egyptian_Mau", "english_cocker_spaniel",
              "english_setter", "german_shorthaired", "great_pyrenees", "havanese", "japanese_chin", "keeshond",
              "leonberger", "Maine_Coon", "miniature_pinscher", "newfoundland", "Persian", "pomeranian", "pug",
              "Ragdoll", "Russian_Blue", "saint_bernard", "samoyed", "scottish_terrier", "shiba_inu", "Siamese",
              "Sphynx", "staffordshire_bull_terrier", "wheaten_terrier", "yorkshire_terrier")
SPECIES = ("cat", "dog")
TRIMAP_TO_SEMSEG = np.array([-1, 1, 0, 2], np.int64)  # trimap value -> background 0 / pet 1 / border 2


def parse_voc_boxes(path: Path, index: int) -> tuple[np.ndarray, np.ndarray]:
    """VOC XML -> xyxy float32 [K,4] (0-based, exclusive max) and labels [K] (0 cat, 1 dog)."""
    try:
        root = ET.parse(path).getroot()
        boxes, labels = [], []
        for obj in root.iter("object"):
            name = obj.findtext("name", "").strip().lower()
            if name not in SPECIES:
                raise CorruptFileError(f"{path} (sample index {index}): object name {name!r} is not cat or dog")
            bb = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append([xmin - 1, ymin - 1, xmax, ymax])
            labels.append(SPECIES.index(name))
    except CorruptFileError:
        raise
    except Exception as exc:
        raise CorruptFileError(f"cannot parse VOC annotation {path} (sample index {index}): {exc}") from None
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


class OxfordPet(RealDataset):
    """Oxford-IIIT Pet: trimap semseg, head boxes, cat/dog, breed."""

    name = "oxford-pet"
    SPLITS = ("trainval", "test", "train", "val")
    TASKS: tuple[str, ...] = ("semseg", "boxes", "binary", "category")

    def __init__(self, split: str, preset: str = "paper", root=None, transform=None, size=None,
                 val_every: int = 10) -> None:
        super().__init__(split, preset, root, transform, size)
        if int(val_every) < 2:
            raise ValueError(f"oxford-pet val_every must be >= 2, got {val_every}")
        self.tasks = self.TASKS
        self.task_info = {"semseg": class_info(("background", "pet", "border")), "boxes": class_info(SPECIES),
                          "binary": class_info(SPECIES), "category": class_info(PET_BREEDS)}
        self.image_size = (None, None)  # native sizes vary per image
        ann = need_dir(self.root / "annotations", self.name)
        need_dir(self.root / "images", self.name)
        need_dir(ann / "trimaps", self.name)
        list_file = "test" if split == "test" else "trainval"
        rows = []
        for n, line in enumerate(read_lines(ann / f"{list_file}.txt", self.name)):
            if line.startswith("#"):
                continue
            parts = line.split()
            try:
                name, cls, species = parts[0], int(parts[1]), int(parts[2])
                if not (1 <= cls <= 37 and species in (1, 2)):
                    raise ValueError
            except (ValueError, IndexError):
                raise CorruptFileError(f"{ann / (list_file + '.txt')} line {n + 1}: expected 'Name CLASS-ID SPECIES "
                                       f"BREED-ID' with class 1..37 and species 1|2, got {line!r}") from None
            rows.append((name, cls - 1, species - 1))
        if not rows:
            raise DatasetLayoutError(f"{self.name}: the split list {ann / (list_file + '.txt')} has no items (only "
                                     f"comment lines)")
        if split in ("train", "val"):
            n_all = len(rows)
            rows = [r for k, r in enumerate(rows) if (k % int(val_every) == val_every - 1) == (split == "val")]
            if not rows:
                raise ValueError(f"oxford-pet {split} is empty: trainval.txt has {n_all} items and every "
                                 f"{val_every}th goes to val; use split='trainval' or a smaller val_every")
        for name, _, _ in rows:
            need_file(self.root / "images" / f"{name}.jpg", self.name)
            need_file(ann / "trimaps" / f"{name}.png", self.name)
        self.items = rows
        self.ids = [r[0] for r in rows]

    def load(self, index: int) -> tuple[dict, list[str]]:
        name, cls, species = self.items[index]
        img_path = self.root / "images" / f"{name}.jpg"
        tri_path = self.root / "annotations" / "trimaps" / f"{name}.png"
        img = read_image(img_path, index)
        tri = check_shape(read_png(tri_path, index), img.shape[:2], tri_path, index, "trimap").astype(np.int64)
        if not np.isin(tri, (1, 2, 3)).all():
            raise CorruptFileError(f"{tri_path} (sample index {index}): trimap values must be 1, 2 or 3, got "
                                   f"{np.unique(tri)[:6].tolist()}")
        xml = self.root / "annotations" / "xmls" / f"{name}.xml"
        labelled = ["semseg", "binary", "category"]
        if xml.is_file():
            boxes, labels = parse_voc_boxes(xml, index)
            labelled.insert(1, "boxes")
        else:
            boxes, labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        sample = {"image": image_tensor(img, img_path, index), "semseg": label_tensor(TRIMAP_TO_SEMSEG[tri]),
                  "boxes": torch.from_numpy(boxes), "box_labels": torch.from_numpy(labels),
                  "binary": torch.tensor(species, dtype=torch.int64), "category": torch.tensor(cls, dtype=torch.int64)}
        return sample, labelled


class OxPetH5(RealDataset):
    """Oxford-IIIT Pet in the course's HDF5 packaging: binary mask, head box, cat/dog at 256x256."""

    name = "oxpet-h5"
    SPLITS = ("train", "val", "test")
    TASKS: tuple[str, ...] = ("semseg", "boxes", "binary")
    FILES = ("images", "masks", "bboxes", "binary")

    def __init__(self, split: str, preset: str = "paper", root=None, transform=None, size=None,
                 foreground: int = 1) -> None:
        super().__init__(split, preset, root, transform, size)
        self.h5py = require("h5py", "h5py", "reading the oxpet-h5 dataset")
        if foreground not in (0, 1):
            raise ValueError(f"oxpet-h5 foreground must be 0 or 1 (the mask value of pet pixels), got {foreground!r}")
        self.foreground = int(foreground)
        self.tasks = self.TASKS
        self.task_info = {"semseg": class_info(("background", "pet")), "boxes": class_info(SPECIES),
                          "binary": class_info(SPECIES)}
        self.image_size = (256, 256)
        base = need_dir(self.root / split, self.name)
        counts = {}
        for key in self.FILES:
            path = need_file(base / f"{key}.h5", self.name)
            try:
                with self.h5py.File(path, "r") as f:
                    if key not in f:
                        raise DatasetLayoutError(f"{self.name}: {path} has no dataset {key!r} (it has {list(f)})")
                    counts[key] = len(f[key])
            except DatasetLayoutError:
                raise
            except Exception as exc:
                raise CorruptFileError(f"cannot open HDF5 file {path}: {exc}") from None
        if len(set(counts.values())) != 1:
            raise CorruptFileError(f"{self.name} {split}: the files hold different numbers of items: {counts}")
        self.base = base
        self.items = list(range(counts["images"]))
        self.ids = [str(i) for i in self.items]
        self._files: dict | None = None

    def __getstate__(self) -> dict:  # open HDF5 handles do not survive a fork/pickle: reopen in each worker
        state = dict(self.__dict__)
        state["_files"] = None
        state["h5py"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.h5py = require("h5py", "h5py", "reading the oxpet-h5 dataset")

    def _read(self, key: str, index: int) -> np.ndarray:
        if self._files is None:
            self._files = {k: self.h5py.File(self.base / f"{k}.h5", "r") for k in self.FILES}
        try:
            return np.asarray(self._files[key][key][index])
        except Exception as exc:
            raise CorruptFileError(f"cannot read item {index} of {self.base / (key + '.h5')}: {exc}") from None

    def load(self, index: int) -> tuple[dict, list[str]]:
        path = lambda k: self.base / f"{k}.h5"  # noqa: E731
        img = check_shape(self._read("images", index), (None, None, 3), path("images"), index, "image")
        mask = self._read("masks", index)
        mask = check_shape(mask[..., 0] if mask.ndim == 3 else mask, img.shape[:2], path("masks"), index, "mask")
        if not np.isin(mask, (0, 1)).all():
            raise CorruptFileError(f"{path('masks')} (sample index {index}): mask values must be 0 or 1")
        box = self._read("bboxes", index).astype(np.float32).reshape(-1)
        species = int(np.asarray(self._read("binary", index)).reshape(-1)[0])
        if box.shape != (4,) or species not in (0, 1):
            raise CorruptFileError(f"{self.name} {self.split} item {index}: bbox must have 4 values and binary be "
                                   f"0|1, got {box.tolist()} and {species}")
        labelled = ["semseg", "binary"]
        has_box = box[2] > box[0] and box[3] > box[1]
        if has_box:
            labelled.insert(1, "boxes")
        sample = {"image": image_tensor(img, path("images"), index),
                  "semseg": label_tensor((mask == self.foreground).astype(np.int64)),
                  "boxes": torch.from_numpy(box.reshape(1, 4) if has_box else np.zeros((0, 4), np.float32)),
                  "box_labels": torch.tensor([species] if has_box else [], dtype=torch.int64),
                  "binary": torch.tensor(species, dtype=torch.int64)}
        return sample, labelled


# ------------------------------------------------------------------------------------------------------ twins
def twin_breed(species: int, k: int) -> int:
    """The breed (class id - 1) a twin gives its k-th item of ``species``: the species' breeds in turn."""
    breeds = [i for i, b in enumerate(PET_BREEDS) if (b[0].isupper()) == (species == 0)]  # cats are capitalised
    return breeds[k % len(breeds)]


def write_oxford_pet_twin(out: Path, samples: dict[str, list[dict]]) -> None:
    """Official layout from compact synthetic-pet samples: trainval <- "train" items, test <- "test" items."""
    from PIL import Image

    for folder in ("images", "annotations/trimaps", "annotations/xmls"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    listing = []
    for split, items in samples.items():
        list_name = "test" if split == "test" else "trainval"
        lines = []
        for k, s in enumerate(items):
            species = int(s["binary"])
            cls = twin_breed(species, k)
            name = f"{PET_BREEDS[cls]}_{split}{k}"
            Image.fromarray(s["image"].transpose(1, 2, 0)).save(out / "images" / f"{name}.jpg", quality=100,
                                                               subsampling=0)
            tri = np.array([2, 1, 3], np.uint8)[s["semseg"].astype(np.int64)]
            Image.fromarray(tri).save(out / "annotations" / "trimaps" / f"{name}.png")
            if list_name == "trainval" and len(s["boxes"]):
                objs = "".join(
                    f"<object><name>{SPECIES[int(lab)]}</name><pose>Frontal</pose><truncated>0</truncated>"
                    f"<bndbox><xmin>{int(b[0]) + 1}</xmin><ymin>{int(b[1]) + 1}</ymin><xmax>{int(b[2])}</xmax>"
                    f"<ymax>{int(b[3])}</ymax></bndbox><difficult>0</difficult></object>"
                    for b, lab in zip(s["boxes"], s["box_labels"]))
                h, w = s["semseg"].shape
                (out / "annotations" / "xmls" / f"{name}.xml").write_text(
                    f"<annotation><folder>OXIIIT</folder><filename>{name}.jpg</filename><size><width>{w}</width>"
                    f"<height>{h}</height><depth>3</depth></size><segmented>0</segmented>{objs}</annotation>")
            line = f"{name} {cls + 1} {species + 1} 1"
            lines.append(line)
            listing.append(line)
        with open(out / "annotations" / f"{list_name}.txt", "a") as f:
            f.write("".join(f"{line}\n" for line in lines))
    (out / "annotations" / "list.txt").write_text("#Image CLASS-ID SPECIES BREED ID\n"
                                                  + "".join(f"{line}\n" for line in listing))


def write_oxpet_h5_twin(out: Path, samples: dict[str, list[dict]]) -> None:
    """Course HDF5 layout: mask 1 = pet (trimap pet or border), first head box (zeros if none), species."""
    h5py = require("h5py", "h5py", "writing the oxpet-h5 twin")
    for split, items in samples.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        arrays = {
            "images": np.stack([s["image"].transpose(1, 2, 0) for s in items]).astype(np.uint8),
            "masks": np.stack([(s["semseg"] != 0)[..., None] for s in items]).astype(np.uint8),
            "bboxes": np.stack([s["boxes"][0] if len(s["boxes"]) else np.zeros(4, np.float32)
                                for s in items]).astype(np.float32),
            "binary": np.array([[int(s["binary"])] for s in items], np.int64)}
        for key, arr in arrays.items():
            with h5py.File(out / split / f"{key}.h5", "w") as f:
                f.create_dataset(key, data=arr, chunks=(1, *arr.shape[1:]))
