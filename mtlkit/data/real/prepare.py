"""``mtlkit data prepare``: raw archives in ``<data dir>/raw/<id>`` -> the loader's layout in ``prepared/<id>``.

Most releases already are in their loader's layout: prepare unpacks the archives (safely: no paths outside the
target) and moves the folder holding the layout's marker (e.g. ``train/image`` for nyuv2) into place. Two datasets
can also be built from their official raw data, because the preprocessed copies' code is lost: ``nyuv2`` from
``nyu_depth_v2_labeled.mat`` with a split file and class mapping(s), and ``cityscapes`` from ``leftImg8bit/``,
``gtFine/`` and ``disparity/``. Neither reproduces the published copies' values exactly (MTAN's crop and normals
are unpublished).

Inputs and conversions: docs/data.md#preparing-from-the-raw-releases
"""
from __future__ import annotations

import json
import shutil
import tarfile
import zipfile
from pathlib import Path
from collections.abc import Callable

import numpy as np

from mtlkit.data.real.base import (CorruptFileError, DatasetLayoutError, DatasetNotFoundError, prepared_root, raw_root,
                                   read_png, require)
from mtlkit.data.real.cityscapes import LABELID_TO_CATEGORY, LABELID_TO_TRAINID

MARKERS = {"nyuv2": "train/image", "nyud-mt": "gt_sets", "cityscapes": "train/image", "miniscapes": "train/rgb",
           "oxford-pet": "annotations/trimaps", "oxpet-h5": "train/images.h5", "pascal-mt": "ImageSets/Context",
           "broden": ("broden_dataset", "index.csv")}
# Broden+ roots are CSAILVision/unifiedparsing clones: only these two folders are data
BRODEN_PLUS_FOLDERS = ("meta_file", "broden_dataset")
ARCHIVES = (".zip", ".tar.gz", ".tgz", ".tar")
NYU_INTRINSICS = (518.857901, 519.469611, 325.582449, 253.736166)  # fx, fy, cx, cy of the 640x480 Kinect images


def extract(archive: Path, dest: Path) -> None:
    """Unpack a zip/tar archive into ``dest``, refusing members that would land outside it."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if not (root / name).resolve().is_relative_to(root):
                    raise CorruptFileError(f"{archive}: member {name!r} would be written outside {dest}")
            z.extractall(dest)
    else:
        with tarfile.open(archive) as t:
            for m in t.getmembers():
                if not (root / m.name).resolve().is_relative_to(root) or m.issym() or m.islnk():
                    raise CorruptFileError(f"{archive}: member {m.name!r} is a link or lies outside {dest}")
            t.extractall(dest)


def find_marker(base: Path, marker: str | tuple[str, ...], depth: int = 3) -> Path | None:
    """The folder under ``base`` (itself included, up to ``depth`` levels) that holds ``marker`` (or one of them)."""
    markers = (marker,) if isinstance(marker, str) else marker
    frontier = [base]
    for _ in range(depth + 1):
        for folder in frontier:
            if any((folder / m).exists() for m in markers):
                return folder
        frontier = [c for f in frontier for c in sorted(f.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    return None


def _or(marker: str | tuple[str, ...]) -> str:
    return marker if isinstance(marker, str) else " or ".join(marker)


def prepare(dataset_id: str, raw: str | Path | None = None, out: str | Path | None = None,
            say: Callable[[str], None] = print, **options) -> Path:
    """Build ``out`` (default ``<data dir>/prepared/<id>``) from ``raw`` (default ``<data dir>/raw/<id>``)."""
    if dataset_id not in MARKERS:
        raise ValueError(f"unknown real dataset {dataset_id!r}; valid ids: {', '.join(MARKERS)}")
    raw = Path(raw) if raw is not None else raw_root(dataset_id)
    out = Path(out) if out is not None else prepared_root(dataset_id)
    if not raw.is_dir():
        raise DatasetNotFoundError(f"no raw data for {dataset_id!r} at {raw}: run `mtlkit data download {dataset_id}` "
                                   f"(and follow the manual steps it prints) first")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{dataset_id} is already prepared at {out}; delete that folder to prepare it again")
    official_nyu = (raw / "nyu_depth_v2_labeled.mat").is_file()
    if dataset_id == "nyuv2" and official_nyu and find_marker(raw, MARKERS[dataset_id]) is None \
            and not any(raw.glob("*.zip")):
        return convert_nyuv2_labeled(raw / "nyu_depth_v2_labeled.mat", out, say=say, **_nyu_options(raw, options))
    if dataset_id == "cityscapes" and find_marker(raw, MARKERS[dataset_id]) is None and (
            (raw / "leftImg8bit").is_dir() or (raw / "leftImg8bit_trainvaltest.zip").is_file()):
        for name in ("leftImg8bit", "gtFine", "disparity"):
            if not (raw / name).is_dir():
                archive = raw / f"{name}_trainvaltest.zip"
                if not archive.is_file():
                    raise DatasetLayoutError(f"cityscapes: need {raw / name}/ or {archive} to convert the official "
                                             f"data")
                say(f"extracting {archive}")
                extract(archive, raw)
        return convert_cityscapes(raw, out, say=say, **options)
    found = find_marker(raw, MARKERS[dataset_id])
    if found is not None:
        say(f"copying {found} -> {out}")
        if dataset_id == "broden" and (found / "broden_dataset").exists():
            for name in BRODEN_PLUS_FOLDERS:
                if not (found / name).is_dir():
                    raise DatasetLayoutError(f"broden: missing folder {found / name} (Broden+ needs "
                                             f"{' and '.join(BRODEN_PLUS_FOLDERS)})")
                shutil.copytree(found / name, out / name, dirs_exist_ok=True)
        else:
            shutil.copytree(found, out, dirs_exist_ok=True)
        return out
    archives = sorted(p for p in raw.iterdir() if p.name.endswith(ARCHIVES))
    if not archives:
        raise DatasetLayoutError(f"{dataset_id}: {raw} holds neither the layout (no {_or(MARKERS[dataset_id])}) nor an "
                                 f"archive ({', '.join(ARCHIVES)}); see `mtlkit data download {dataset_id}`")
    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for archive in archives:
            say(f"extracting {archive}")
            extract(archive, staging)
        found = find_marker(staging, MARKERS[dataset_id])
        if found is None:
            raise DatasetLayoutError(f"{dataset_id}: the archives {[a.name for a in archives]} do not contain "
                                     f"{_or(MARKERS[dataset_id])}; is this the right download?")
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        shutil.move(str(found), str(out))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------------------------ NYUv2
def _nyu_options(raw: Path, options: dict) -> dict:
    opts = dict(options)
    if "splits" not in opts:
        cands = [raw / "splits.mat", raw / "splits.json"]
        opts["splits"] = next((c for c in cands if c.is_file()), None)
    if "mapping" not in opts:
        chain = [raw / "classMapping40.mat", raw / "class13Mapping.mat"]
        single = [raw / n for n in ("mapping13.npy", "mapping13.txt")]
        if all(c.is_file() for c in chain):
            opts["mapping"] = chain
        else:
            opts["mapping"] = next((c for c in single if c.is_file()), None)
            if opts["mapping"] is None and chain[1].is_file():
                raise DatasetLayoutError(f"nyuv2: {chain[1]} maps the 40 NYU classes to 13; it needs {chain[0]} "
                                         f"(894 -> 40) next to it; see `mtlkit data download nyuv2`")
    for key, what in (("splits", "splits.mat or splits.json"),
                      ("mapping", "classMapping40.mat + class13Mapping.mat, or mapping13.txt")):
        if opts[key] is None:
            raise DatasetLayoutError(f"nyuv2: converting nyu_depth_v2_labeled.mat needs {what} in {raw} (or "
                                     f"--{key} PATH); see `mtlkit data download nyuv2`")
    return opts


def _read_table(path: Path) -> np.ndarray:
    """One mapping table: the single numeric array of a ``.mat``, or the integers of a ``.npy``/``.txt``."""
    path = Path(path)
    if path.suffix == ".mat":
        sio = require("scipy.io", "scipy", "reading the NYUv2 class mapping .mat")
        arrays = []

        def walk(x):
            if isinstance(x, np.ndarray) and x.dtype.names:
                for name in x.dtype.names:
                    for item in x[name].ravel():
                        walk(item)
            elif isinstance(x, np.ndarray) and x.dtype == object:
                for item in x.ravel():
                    walk(item)
            elif isinstance(x, np.ndarray) and x.size > 1 and np.issubdtype(x.dtype, np.number):
                arrays.append(x.ravel())

        for key, value in sio.loadmat(str(path)).items():
            if not key.startswith("__"):
                walk(value)
        if len(arrays) != 1:
            raise CorruptFileError(f"{path}: expected exactly one numeric mapping array, found {len(arrays)} "
                                   f"(sizes {[a.size for a in arrays]})")
        values = arrays[0]
    elif path.suffix == ".npy":
        values = np.load(path, allow_pickle=False).ravel()
    else:
        values = np.array(path.read_text().split(), dtype=np.float64)
    if (values < 0).any() or (values != np.round(values)).any():
        raise CorruptFileError(f"{path}: a class mapping must hold non-negative integers")
    return values.astype(np.int64)


def _read_mapping(mapping) -> np.ndarray:
    """The 894-class labels (0 = unlabelled) -> target classes (1-based, 0 = unlabelled): int64 [895].

    ``mapping`` is one path, a list of paths, or a comma-separated string of paths (a chain applied in order: the
    first table has 894 entries, each next one as many entries as the previous table's largest class).
    """
    paths = [Path(p) for p in (mapping.split(",") if isinstance(mapping, str) else
                               mapping if isinstance(mapping, (list, tuple)) else [mapping])]
    lut = None
    for path in paths:
        values = _read_table(path)
        need = 894 if lut is None else int(lut.max())
        if (lut is None and values.size != 894) or (lut is not None and values.size < need):
            raise CorruptFileError(f"{path}: this mapping needs {need} entries (one per "
                                   f"{'NYUv2 894-vocabulary label' if lut is None else 'class of the previous table'}"
                                   f"), got {values.size}")
        table = np.concatenate([[0], values])
        lut = table if lut is None else table[lut]
    return lut


def _read_splits(path: Path) -> dict[str, np.ndarray]:
    """0-based indices of the train and val (= official test) images."""
    path = Path(path)
    if path.suffix == ".mat":
        m = require("scipy.io", "scipy", "reading NYUv2 splits.mat").loadmat(str(path))
        try:
            return {"train": m["trainNdxs"].ravel().astype(np.int64) - 1,
                    "val": m["testNdxs"].ravel().astype(np.int64) - 1}
        except KeyError:
            raise CorruptFileError(f"{path}: expected variables trainNdxs and testNdxs") from None
    data = json.loads(path.read_text())
    return {k: np.asarray(data[k], np.int64) - 1 for k in ("train", "val")}


def normals_from_depth(depth: np.ndarray, intrinsics: tuple[float, float, float, float] = NYU_INTRINSICS) -> np.ndarray:
    """Camera-frame unit normals [H,W,3] (OpenCV axes, facing the camera: n . p < 0) from a depth map in metres.

    Central differences of the back-projected points; all-zero where the pixel or a neighbour has no depth and on
    the image border.
    """
    fx, fy, cx, cy = intrinsics
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    z = depth.astype(np.float64)
    p = np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], -1)
    du = np.zeros_like(p)
    dv = np.zeros_like(p)
    du[:, 1:-1] = p[:, 2:] - p[:, :-2]
    dv[1:-1, :] = p[2:, :] - p[:-2, :]
    n = np.cross(du, dv)
    n *= np.where(np.sum(n * p, -1, keepdims=True) > 0, -1.0, 1.0)  # face the camera
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    valid = (z > 0) & (norm[..., 0] > 0)
    valid[:, [0, -1]] = False
    valid[[0, -1], :] = False
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        valid &= np.roll(z, (dy, dx), (0, 1)) > 0
    return np.where(valid[..., None], n / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def _resize(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    if tuple(arr.shape[:2]) == tuple(size):
        return arr
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64)).reshape(*arr.shape[:2], -1).permute(2, 0, 1)[None]
    y = F.interpolate(x, size=size, mode="nearest-exact" if nearest else "bilinear", align_corners=None if nearest
                      else False)
    return y[0].permute(1, 2, 0).reshape(*size, *arr.shape[2:]).numpy()


def convert_nyuv2_labeled(mat: Path, out: Path, splits: Path, mapping: Path, size: tuple[int, int] | None = (288, 384),
                          intrinsics: tuple[float, float, float, float] = NYU_INTRINSICS,
                          say: Callable[[str], None] = print) -> Path:
    """Official labelled NYUv2 -> the MTAN layout (docs/data.md#preparing-from-the-raw-releases).

    ``size=None`` keeps 480x640; ``intrinsics`` (fx, fy, cx, cy of the stored images) back-project the depth for the
    normals."""
    h5py = require("h5py", "h5py", "reading nyu_depth_v2_labeled.mat (MATLAB v7.3)")
    lut = _read_mapping(mapping)
    split_idx = _read_splits(splits)
    num_classes = int(lut.max())
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with h5py.File(mat, "r") as f:
        for key in ("images", "depths", "labels"):
            if key not in f:
                raise CorruptFileError(f"{mat}: no dataset {key!r} (has {list(f)}); is this nyu_depth_v2_labeled.mat?")
        n = f["images"].shape[0]
        for split, idx in split_idx.items():
            if len(idx) and (idx.min() < 0 or idx.max() >= n):
                raise CorruptFileError(f"{splits}: {split} indices outside 1..{n}")
            for folder in ("image", "label", "depth", "normal"):
                (tmp / split / folder).mkdir(parents=True, exist_ok=True)
            say(f"nyuv2 {split}: converting {len(idx)} images")
            for k, i in enumerate(idx):
                img = np.asarray(f["images"][i]).transpose(2, 1, 0)  # MATLAB column-major [3,W,H] -> [H,W,3]
                depth = np.asarray(f["depths"][i]).T.astype(np.float32)
                lab894 = np.asarray(f["labels"][i]).T.astype(np.int64)
                if lab894.max() >= len(lut):
                    raise CorruptFileError(f"{mat} image {i}: label {lab894.max()} outside the 894-class vocabulary")
                lab = lut[lab894] - 1  # 0 (unlabelled / unmapped) -> -1
                normal = normals_from_depth(depth, intrinsics)
                target = tuple(size) if size is not None else img.shape[:2]
                np.save(tmp / split / "image" / f"{k}.npy",
                        _resize(img.astype(np.float32) / 255.0, target, nearest=False).astype(np.float32))
                np.save(tmp / split / "label" / f"{k}.npy", _resize(lab, target, nearest=True).astype(np.float32))
                np.save(tmp / split / "depth" / f"{k}.npy", _resize(depth, target, nearest=True)[..., None]
                        .astype(np.float32))
                np.save(tmp / split / "normal" / f"{k}.npy", _resize(normal, target, nearest=True).astype(np.float32))
    (tmp / "classes.json").write_text(json.dumps({"num_classes": num_classes}))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


# ------------------------------------------------------------------------------------------------- Cityscapes
def convert_cityscapes(raw: Path, out: Path, size: tuple[int, int] | None = (128, 256),
                       say: Callable[[str], None] = print) -> Path:
    """Official Cityscapes -> the MTAN layout (docs/data.md#preparing-from-the-raw-releases).

    ``size=None`` keeps 1024x2048."""
    from PIL import Image

    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for split in ("train", "val"):
        images = sorted((raw / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        if not images:
            raise DatasetLayoutError(f"cityscapes: no images in {raw / 'leftImg8bit' / split}/CITY/*_leftImg8bit.png")
        for folder in ("image", "label_7", "label_19", "depth"):
            (tmp / split / folder).mkdir(parents=True, exist_ok=True)
        say(f"cityscapes {split}: converting {len(images)} images")
        for k, img_path in enumerate(images):
            city, stem = img_path.parent.name, img_path.name[: -len("_leftImg8bit.png")]
            gt = raw / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            disp = raw / "disparity" / split / city / f"{stem}_disparity.png"
            for p in (gt, disp):
                if not p.is_file():
                    raise DatasetLayoutError(f"cityscapes: missing file {p} (for {img_path.name})")
            with Image.open(img_path) as im:
                img = np.asarray(im.convert("RGB"))
            ids = read_png(gt, k).astype(np.int64)
            if ids.min() < 0 or ids.max() > 33:
                raise CorruptFileError(f"{gt} (image {k}): labelIds must be 0..33")
            d = read_png(disp, k).astype(np.float64)
            target = tuple(size) if size is not None else img.shape[:2]
            ids = _resize(ids, target, nearest=True).astype(np.int64)
            np.save(tmp / split / "image" / f"{k}.npy",
                    _resize(img.astype(np.float32) / 255.0, target, nearest=False).astype(np.float32))
            np.save(tmp / split / "label_19" / f"{k}.npy", LABELID_TO_TRAINID[ids].astype(np.float32))
            np.save(tmp / split / "label_7" / f"{k}.npy", LABELID_TO_CATEGORY[ids].astype(np.float32))
            np.save(tmp / split / "depth" / f"{k}.npy", (_resize(d, target, nearest=True) / 65535.0)
                    .astype(np.float32)[..., None])
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


# ------------------------------------------------------------------------------------------------- raw twins
TRAINID_TO_LABELID = np.array([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33], np.uint8)


def write_cityscapes_raw_twin(out: Path, samples: dict[str, list[dict]]) -> None:
    """Official Cityscapes folders (leftImg8bit PNG, gtFine labelIds, uint16 disparity) from synthetic-city samples;
    ignore (-1) is written as labelId 0 (unlabeled)."""
    from PIL import Image

    from mtlkit.data.real.cityscapes import metres_to_disparity_png

    for split, items in samples.items():
        for k, s in enumerate(items):
            stem = f"twin_{0:06d}_{k:06d}"
            paths = {"img": out / "leftImg8bit" / split / "twin" / f"{stem}_leftImg8bit.png",
                     "gt": out / "gtFine" / split / "twin" / f"{stem}_gtFine_labelIds.png",
                     "disp": out / "disparity" / split / "twin" / f"{stem}_disparity.png"}
            for p in paths.values():
                p.parent.mkdir(parents=True, exist_ok=True)
            sem = s["semseg"].astype(np.int64)
            Image.fromarray(s["image"].transpose(1, 2, 0)).save(paths["img"])
            Image.fromarray(np.where(sem >= 0, TRAINID_TO_LABELID[np.clip(sem, 0, 18)], 0).astype(np.uint8)).save(
                paths["gt"])
            Image.fromarray(metres_to_disparity_png(s["depth"][0])).save(paths["disp"])


def write_nyuv2_raw_twin(out: Path, samples: dict[str, list[dict]]) -> None:
    """``nyu_depth_v2_labeled.mat`` (HDF5, MATLAB axis order), ``splits.json`` and ``mapping13.txt`` from
    synthetic-nyu samples: class c is written as 894-vocabulary label c + 1 and the mapping sends label k <= 13 to
    class k, the other 881 labels to 0 (unlabelled)."""
    h5py = require("h5py", "h5py", "writing the NYUv2 raw twin")
    items = [s for split in ("train", "val") for s in samples[split]]
    n_train = len(samples["train"])
    out.mkdir(parents=True, exist_ok=True)
    with h5py.File(out / "nyu_depth_v2_labeled.mat", "w") as f:
        f.create_dataset("images", data=np.stack([s["image"].transpose(0, 2, 1) for s in items]).astype(np.uint8))
        f.create_dataset("depths", data=np.stack([s["depth"][0].T for s in items]).astype(np.float32))
        f.create_dataset("labels", data=np.stack([np.where(s["semseg"] >= 0, s["semseg"] + 1, 0).T for s in items])
                         .astype(np.uint16))
    (out / "splits.json").write_text(json.dumps({"train": list(range(1, n_train + 1)),
                                                 "val": list(range(n_train + 1, len(items) + 1))}))
    (out / "mapping13.txt").write_text(" ".join(str(k if k <= 13 else 0) for k in range(1, 895)))
