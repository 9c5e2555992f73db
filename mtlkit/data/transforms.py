"""Task-aware augmentations of contract samples (dicts of torch tensors, see docs/contracts.md#sample).

Geometry must stay consistent across tasks: label maps are resampled with nearest neighbour (no invented classes),
scaling the image up by ``s`` is a camera ``s`` times closer so depth is divided by ``s``, a horizontal flip
mirrors the x component of surface normals, and boxes follow the pixels. Photometric changes touch the image only.

Each transform takes an optional ``torch.Generator``: pass one for exact reproducibility (tests, figures); leave it
None in training so that DataLoader workers, which torch seeds differently, draw different augmentations.
"""
from __future__ import annotations

from typing import Any
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

# How each contract key is treated by geometric transforms.
_LABEL = ("semseg", "parts", "material")        # [H,W] int64, -1 ignore
_MASK = ("edge", "saliency")                    # [1,H,W] float32, -1 ignore
_GLOBAL = ("scene", "texture", "binary", "category", "meta")
KNOWN_KEYS = ("image", "depth", "normals", "boxes", "box_labels") + _LABEL + _MASK + _GLOBAL
# Fill values for pixels a crop takes from outside the (scaled) image: all "ignore/invalid".
_PAD = {"image": 0.0, "depth": 0.0, "normals": 0.0, "edge": -1.0, "saliency": -1.0,
        "semseg": -1, "parts": -1, "material": -1}


def _check_keys(sample: dict, who: str) -> None:
    if "image" not in sample:
        raise ValueError(f"{who} needs an 'image' key to know the sample size; got keys {sorted(sample)}")
    unknown = sorted(set(sample) - set(KNOWN_KEYS))
    if unknown:
        raise ValueError(f"{who} does not know how to transform key(s) {unknown}; known keys: "
                         f"{', '.join(KNOWN_KEYS)}")


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * torch.rand((), generator=generator).item()


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [0, high]."""
    return int(torch.randint(0, high + 1, (), generator=generator).item())


def _resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest (half-pixel centred) resize of [..., H, W] keeping the dtype, so label sets are preserved."""
    lead = x.shape[:-2]
    y = F.interpolate(x.reshape(1, -1, *x.shape[-2:]).double(), size=size, mode="nearest-exact")
    return y.reshape(*lead, *size).to(x.dtype)


def _pad_to(x: torch.Tensor, size: tuple[int, int], value: float) -> torch.Tensor:
    """Pad [..., H, W] at the bottom/right up to at least ``size`` with ``value``."""
    ph, pw = max(size[0] - x.shape[-2], 0), max(size[1] - x.shape[-1], 0)
    if ph == 0 and pw == 0:
        return x
    out = x.new_full((*x.shape[:-2], x.shape[-2] + ph, x.shape[-1] + pw), value)
    out[..., : x.shape[-2], : x.shape[-1]] = x
    return out


class RandomScaleCrop:
    """Scale the whole sample by ``s ~ U(scales)``, then take a random ``size`` crop.

    Image: bilinear. Label maps, edge, saliency, normals: nearest (labels stay in their set, normals stay unit or
    all-zero invalid). Depth: nearest and divided by ``s`` (the scene looks ``s`` times closer). Boxes: scaled,
    shifted by the crop offset, clipped to the crop; boxes left with no area are dropped together with their label.
    Crops larger than the scaled sample are padded bottom/right with ignore values.

    Args:
        size: crop (H, W), or one int for a square crop.
        scales: (min, max) scale factors; (1.0, 1.0) gives a plain random crop.
        generator: optional torch.Generator for the scale and crop offset.
    """

    def __init__(self, size: int | Sequence[int], scales: Sequence[float] = (1.0, 1.5),
                 generator: torch.Generator | None = None) -> None:
        self.size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if min(self.size) < 1:
            raise ValueError(f"RandomScaleCrop size must be positive, got {self.size}")
        if len(scales) != 2 or not 0 < scales[0] <= scales[1]:
            raise ValueError(f"RandomScaleCrop scales must be (min, max) with 0 < min <= max, got {tuple(scales)}")
        self.scales = (float(scales[0]), float(scales[1]))
        self.generator = generator

    def __call__(self, sample: dict) -> dict:
        _check_keys(sample, "RandomScaleCrop")
        h, w = sample["image"].shape[-2:]
        s = _uniform(*self.scales, self.generator)
        sh, sw = max(1, round(h * s)), max(1, round(w * s))
        ch, cw = self.size
        top = _randint(max(sh - ch, 0), self.generator)
        left = _randint(max(sw - cw, 0), self.generator)
        out: dict[str, Any] = {}
        for key, x in sample.items():
            if key == "image":
                y = F.interpolate(x[None], size=(sh, sw), mode="bilinear", align_corners=False)[0].clamp_(0, 1)
            elif key in _LABEL or key in _MASK or key in ("normals", "depth"):
                y = _resize_nearest(x, (sh, sw))
                if key == "depth":
                    y = y / s  # invalid depth (<= 0) stays <= 0
            else:
                out[key] = x
                continue
            y = _pad_to(y, (ch, cw), _PAD[key])
            out[key] = y[..., top: top + ch, left: left + cw].contiguous()
        if "boxes" in sample:
            scale = torch.tensor([sw / w, sh / h, sw / w, sh / h], dtype=torch.float32)
            shift = torch.tensor([left, top, left, top], dtype=torch.float32)
            boxes = sample["boxes"].reshape(-1, 4) * scale - shift
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, cw)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, ch)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            out["boxes"] = boxes[keep]
            if "box_labels" in sample:
                out["box_labels"] = sample["box_labels"][keep]
        if "meta" in sample:
            out["meta"] = {**sample["meta"], "scale": s, "crop": [top, left, ch, cw]}
        return out

    def __repr__(self) -> str:
        return f"RandomScaleCrop(size={self.size}, scales={self.scales})"


class RandomHorizontalFlip:
    """Mirror the sample left-right with probability ``p``.

    Every map is flipped; normals' x component is negated (a surface facing right now faces left); boxes are
    mirrored: x1' = W - x2, x2' = W - x1.
    """

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip p must be in [0, 1], got {p}")
        self.p = float(p)
        self.generator = generator

    def __call__(self, sample: dict) -> dict:
        _check_keys(sample, "RandomHorizontalFlip")
        if torch.rand((), generator=self.generator).item() >= self.p:
            return dict(sample)
        w = sample["image"].shape[-1]
        out: dict[str, Any] = {}
        for key, x in sample.items():
            if key in ("image", "depth", "normals") or key in _LABEL or key in _MASK:
                y = x.flip(-1)
                if key == "normals":
                    y = y.clone()
                    y[0] = -y[0]
                out[key] = y
            elif key == "boxes":
                b = x.reshape(-1, 4)
                out[key] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
            elif key == "meta":
                out[key] = {**x, "hflip": True}
            else:
                out[key] = x
        return out

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def _grayscale(img: torch.Tensor) -> torch.Tensor:
    """[3,H,W] RGB -> [1,H,W] luma (ITU-R 601 weights)."""
    return (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]


class ColorJitter:
    """Random brightness, contrast and saturation changes of the image (in that order); labels are untouched.

    Each factor is drawn from U[max(0, 1 - v), 1 + v]; v = 0 disables that change. Brightness multiplies;
    contrast blends with the mean grey level; saturation blends with the grey image. The result is clamped to
    [0, 1] after each step.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if v < 0:
                raise ValueError(f"ColorJitter {name} must be >= 0, got {v}")
        self.brightness, self.contrast, self.saturation = float(brightness), float(contrast), float(saturation)
        self.generator = generator

    def _factor(self, v: float) -> float | None:
        return _uniform(max(0.0, 1.0 - v), 1.0 + v, self.generator) if v > 0 else None

    def __call__(self, sample: dict) -> dict:
        if "image" not in sample:
            raise ValueError(f"ColorJitter needs an 'image' key; got keys {sorted(sample)}")
        img = sample["image"]
        b, c, s = self._factor(self.brightness), self._factor(self.contrast), self._factor(self.saturation)
        if b is not None:
            img = (img * b).clamp(0, 1)
        if c is not None:
            mean = _grayscale(img).mean()
            img = (mean + c * (img - mean)).clamp(0, 1)
        if s is not None:
            gray = _grayscale(img)
            img = (gray + s * (img - gray)).clamp(0, 1)
        return {**sample, "image": img}

    def __repr__(self) -> str:
        return f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation})"


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[dict], dict]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: dict) -> dict:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"
