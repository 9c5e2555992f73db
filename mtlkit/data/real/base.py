"""Shared machinery of the real-dataset loaders: roots, errors, file readers, the contract sample, resizing.

Every loader reads ``<data dir>/prepared/<id>`` unless ``root=`` is given (``mtlkit data prepare ID`` fills that
folder from the raw archives in ``<data dir>/raw/<id>``). A loader lists its split's files when it is constructed
and fails there, naming the first missing folder or file; a file that cannot be decoded raises
:class:`CorruptFileError` naming the file and the sample index. Nothing is skipped silently.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mtlkit.paths import data_dir


class DatasetNotFoundError(FileNotFoundError):
    """A real dataset's root folder does not exist."""


class DatasetLayoutError(FileNotFoundError):
    """The root exists but a folder or file the format needs is missing."""


class CorruptFileError(ValueError):
    """A file of the dataset cannot be decoded or holds values outside its format's conventions."""


class MissingDependencyError(ImportError):
    """An optional package needed for one format is not installed."""


def require(module: str, pip_name: str, why: str):
    """Import ``module`` lazily, or raise a message naming the pip package and what it is needed for."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"{why} needs the Python package {pip_name!r}: `pip install {pip_name}`") from None


def prepared_root(dataset_id: str) -> Path:
    """``<data dir>/prepared/<id>``: where ``mtlkit data prepare`` writes and loaders read by default."""
    return data_dir() / "prepared" / dataset_id


def raw_root(dataset_id: str) -> Path:
    """``<data dir>/raw/<id>``: where ``mtlkit data download`` puts archives (and you put manual downloads)."""
    return data_dir() / "raw" / dataset_id


def resolve_root(dataset_id: str, root: str | Path | None) -> Path:
    """The dataset's root folder; a missing one raises an error naming the dataset and the commands to get it."""
    path = Path(root).expanduser().resolve() if root is not None else prepared_root(dataset_id)
    if not path.is_dir():
        raise DatasetNotFoundError(
            f"dataset {dataset_id!r} not found at {path}. Get it with `mtlkit data download {dataset_id}` "
            f"(or follow the manual steps it prints), then `mtlkit data prepare {dataset_id}`; or pass root= "
            f"(`--root DIR` on the command line) "
            f"pointing at an existing copy. `mtlkit data twin {dataset_id} --out DIR` writes a small fake copy in the "
            f"same format.")
    return path


def need_dir(path: Path, dataset_id: str) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(f"{dataset_id}: missing folder {path} (see data/README.md for the expected layout)")
    return path


def need_file(path: Path, dataset_id: str) -> Path:
    if not path.is_file():
        raise DatasetLayoutError(f"{dataset_id}: missing file {path} (see data/README.md for the expected layout)")
    return path


def read_lines(path: Path, dataset_id: str) -> list[str]:
    """Non-empty, stripped lines of a split list (an empty list is an error: a split with no items is not silent)."""
    need_file(path, dataset_id)
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise DatasetLayoutError(f"{dataset_id}: the split list {path} is empty (one item id a line expected)")
    return lines


# ------------------------------------------------------------------------------------------------- file readers
def _pil():
    return require("PIL.Image", "Pillow", "reading PNG/JPEG files")


def read_image(path: Path, index: int) -> np.ndarray:
    """An RGB image file -> uint8 [H,W,3] (greyscale, palette, RGBA and CMYK files are converted to RGB)."""
    Image = _pil()
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CorruptFileError(f"cannot decode image {path} (sample index {index}): {exc}") from None


def read_png(path: Path, index: int, modes: Sequence[str] | None = None) -> np.ndarray:
    """A label/depth PNG as stored (no colour conversion): uint8 or uint16 [H,W] (palette PNGs give indices)."""
    Image = _pil()
    try:
        with Image.open(path) as im:
            if modes is not None and im.mode not in modes:
                raise CorruptFileError(f"{path} (sample index {index}) has PNG mode {im.mode!r}; expected one of "
                                       f"{', '.join(modes)}")
            arr = np.asarray(im)
    except CorruptFileError:
        raise
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CorruptFileError(f"cannot decode PNG {path} (sample index {index}): {exc}") from None
    if arr.dtype == np.int32:  # PIL reads 16-bit greyscale as mode "I"
        arr = arr.astype(np.uint16)
    return arr


def read_npy(path: Path, index: int) -> np.ndarray:
    """``np.load`` without pickles, naming the file and index when it fails."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CorruptFileError(f"cannot read {path} (sample index {index}): {exc}") from None


def check_shape(arr: np.ndarray, shape: tuple, path: Path, index: int, what: str) -> np.ndarray:
    """Raise unless ``arr.shape`` matches ``shape`` (None entries match anything)."""
    ok = arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape))
    if not ok:
        want = "x".join("?" if s is None else str(s) for s in shape)
        raise CorruptFileError(f"{path} (sample index {index}): {what} has shape {tuple(arr.shape)}, expected {want}")
    return arr


def check_labels(lab: np.ndarray, num_classes: int, path: Path, index: int) -> np.ndarray:
    """Raise unless every label is -1 or in [0, num_classes)."""
    bad = (lab != -1) & ((lab < 0) | (lab >= num_classes))
    if bad.any():
        vals = np.unique(lab[bad])[:5].tolist()
        raise CorruptFileError(f"{path} (sample index {index}): label values {vals} outside 0..{num_classes - 1} "
                               f"(and -1 ignore)")
    return lab


def load_mat(path: Path, index: int, key: str):
    """One variable of a MATLAB v5 ``.mat`` file (scipy), naming the file and index when it cannot be read."""
    sio = require("scipy.io", "scipy", "reading .mat files")
    try:
        return sio.loadmat(str(path))[key]
    except Exception as exc:
        raise CorruptFileError(f"cannot read {key!r} from {path} (sample index {index}): {exc}") from None


def nearest_to(arr: np.ndarray, hw: Sequence[int]) -> np.ndarray:
    """Resize ``arr`` [H,W,...] to ``hw`` by nearest neighbour, source index floor(i * in / out) (the rule of
    OpenCV's INTER_NEAREST, which the reference loaders use to fit a label map to its image)."""
    h, w = arr.shape[:2]
    if (h, w) == (int(hw[0]), int(hw[1])):
        return arr
    rows = (np.arange(int(hw[0])) * h) // int(hw[0])
    cols = (np.arange(int(hw[1])) * w) // int(hw[1])
    return arr[rows][:, cols]


def unit_normals(n: np.ndarray, path: Path, index: int, min_norm: float = 0.0, strict: bool = True) -> np.ndarray:
    """float [H,W,3] normals -> unit vectors, all-zero where invalid (length <= ``min_norm``).

    Stored normals are unit up to the storage's precision, or shorter where a copy was resized with interpolation;
    vectors off unit length by more than 1e-6 are re-normalised. With ``strict`` (float files) a vector longer than
    1.05 cannot come from unit normals and raises :class:`CorruptFileError`; 8-bit images of network-distilled normals
    (``strict=False``) are re-normalised whatever their length, as the reference loaders do.
    """
    n = n.astype(np.float32)
    if not np.isfinite(n).all():
        raise CorruptFileError(f"{path} (sample index {index}): normals hold NaN/inf; invalid pixels must be 0")
    norm = np.linalg.norm(n, axis=-1)
    valid = norm > min_norm
    if strict and valid.any() and norm[valid].max() > 1.05:
        raise CorruptFileError(f"{path} (sample index {index}): normals must be unit vectors or all-zero (invalid); "
                               f"found length {norm[valid].max():.3g}")
    off = valid & (np.abs(norm - 1.0) > 1e-6)
    if off.any():
        n = np.where(off[..., None], n / np.where(off, norm, 1.0)[..., None], n)
    return np.where(valid[..., None], n, 0.0).astype(np.float32)


# ------------------------------------------------------------------------------------------- contract helpers
def image_tensor(img: np.ndarray, path: Path, index: int) -> torch.Tensor:
    """uint8 or float [H,W,3] -> float32 [3,H,W] in [0,1]."""
    check_shape(img, (None, None, 3), path, index, "image")
    if img.dtype == np.uint8:
        out = img.astype(np.float32) / 255.0
    else:
        out = img.astype(np.float32)
        if not np.isfinite(out).all() or out.min() < 0 or out.max() > 1:
            raise CorruptFileError(f"{path} (sample index {index}): float image values must lie in [0, 1], got "
                                   f"[{np.nanmin(out):.3g}, {np.nanmax(out):.3g}]")
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def label_tensor(lab: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64))


def map_tensor(x: np.ndarray) -> torch.Tensor:
    """[H,W] -> float32 [1,H,W]."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)[None])


def resize_sample(sample: dict, size: tuple[int, int]) -> dict:
    """Resize every map of a contract sample to ``size`` (image bilinear; labels, depth, normals, masks nearest).

    Depth keeps its values (a resize is not a change of viewpoint); boxes are scaled with the image.
    """
    from mtlkit.data.transforms import _resize_nearest  # the same nearest rule as the augmentations

    h, w = sample["image"].shape[-2:]
    out = dict(sample)
    for key, x in sample.items():
        if key == "image":
            out[key] = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0].clamp_(0, 1)
        elif key in ("semseg", "parts", "material", "edge", "saliency", "depth", "normals"):
            out[key] = _resize_nearest(x, size)
        elif key == "boxes":
            scale = torch.tensor([size[1] / w, size[0] / h] * 2, dtype=torch.float32)
            out[key] = x * scale
    return out


class RealDataset(Dataset):
    """Base of the real-dataset loaders: split checks, ``meta``, optional resize, transform.

    Subclasses set ``name``, ``tasks``, ``task_info``, ``image_size``, fill ``self.items`` (one entry per sample,
    anything :meth:`load` understands) in ``__init__`` and implement :meth:`load` (-> contract sample without
    ``meta``, plus the list of tasks the item labels).
    """

    name: str = ""
    SPLITS: tuple[str, ...] = ()
    TASKS: tuple[str, ...] = ()

    def __init__(self, split: str, preset: str = "paper", root: str | Path | None = None,
                 transform: Callable[[dict], dict] | None = None, size: Sequence[int] | None = None) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"{self.name} has no split {split!r}; valid splits: {', '.join(self.SPLITS)}")
        self.split = split
        self.preset = preset
        self.root = resolve_root(self.name, root)
        self.transform = transform
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.items: list[Any] = []
        self.ids: list[str] = []

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[dict, list[str]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name} {self.split} ({len(self)} items)")
        sample, labelled = self.load(index)
        if self.size is not None and tuple(sample["image"].shape[-2:]) != self.size:
            sample = resize_sample(sample, self.size)
        sample["meta"] = {"dataset": self.name, "split": self.split, "index": index, "preset": self.preset,
                          "id": self.ids[index] if self.ids else str(index), "tasks": list(labelled)}
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, split={self.split!r}, root={str(self.root)!r}, n={len(self)}, "
                f"tasks={self.tasks})")


def check_options(name: str, options: dict, valid: Sequence[str]) -> None:
    for key in options:
        if key not in valid:
            raise ValueError(f"{name} has no option {key!r}; valid options: {', '.join(valid) or 'none'}")


def class_info(names: Sequence[str]) -> dict:
    return {"num_classes": len(names), "class_names": list(names)}
