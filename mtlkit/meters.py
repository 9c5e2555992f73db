"""Streaming meters, one class per kind of target, with explicit aggregation (docs/reference.md, "Metrics").

This module knows nothing about task names: :mod:`mtlkit.tasks` says which meter a task uses, and
:mod:`mtlkit.metrics` builds meters by task name and computes Δm.

Conventions: scores that are fractions in the papers' tables are in PERCENT (``miou``, ``pixel_acc``, ``accuracy``,
``within_*``, ``delta*``, ``max_f``, ``max_iou``, ``ods_f``, ``mean_iou``); errors keep their units (depth
``abs_err``/``rmse`` metres, ``rel_err`` a fraction, ``si_log_rmse`` 100 x log units, normals degrees).
``update(pred, target)`` takes a prediction and the target :meth:`mtlkit.tasks.Task.target` returns (ignore values:
label -1, depth <= 0, all-zero normals, edge/saliency -1, a NaN box row). State lives on the first prediction's
device and ``update`` never syncs with the host; ``compute()`` returns NaN for a metric that saw no valid element.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.losses import box_iou

__all__ = [
    "Meter",
    "SegmentationMeter",
    "DepthMeter",
    "NormalsMeter",
    "SaliencyMeter",
    "EdgeMeter",
    "ClassificationMeter",
    "BoxMeter",
    "METRIC_HIGHER_IS_BETTER",
    "grader_score",
]

_NAN = float("nan")


def _acc_dtype(device: torch.device) -> torch.dtype:
    """float64 accumulators where the backend has them (MPS has no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _pct(num: Tensor | float, den: Tensor | float) -> float:
    """100 * num / den as a Python float, NaN when den == 0."""
    num, den = float(num), float(den)
    return 100.0 * num / den if den > 0 else _NAN


def _labels(pred: Tensor, target: Tensor) -> Tensor:
    """Class indices from logits (one more dim than target, classes at dim 1) or pass-through indices."""
    if pred.dim() == target.dim() + 1:
        if pred.device.type == "cpu":  # same indices (first maximum, NaN wins) as argmax, ~3x faster over dim 1
            return pred.max(dim=1).indices
        return pred.argmax(dim=1)
    if pred.shape == target.shape:
        return pred.long()
    raise ValueError(
        f"prediction shape {tuple(pred.shape)} fits neither logits [B,C,...] nor labels {tuple(target.shape)} "
        f"for target shape {tuple(target.shape)}."
    )


def _bincount(index: Tensor, size: int, mask: Tensor | None = None) -> Tensor:
    """``bincount(index[mask], minlength=size)`` without a host sync, as int64 [size].

    ``torch.bincount`` and boolean-mask indexing both read a size back from the device on CUDA; instead, masked-out
    elements go to an extra bin that is dropped, and off the CPU the counts are scattered into a fixed-size tensor.
    """
    index = index.reshape(-1)
    if mask is not None:
        index = torch.where(mask.reshape(-1), index, torch.full_like(index, size))
    if index.device.type == "cpu":
        return torch.bincount(index, minlength=size + 1)[:size]
    return _scatter_count(index, size + 1)[:size]


def _scatter_count(index: Tensor, size: int) -> Tensor:
    """``bincount(index, minlength=size)`` for indices known to lie in [0, size), with no device-to-host read."""
    counts = torch.zeros(size, dtype=torch.int64, device=index.device)
    return counts.index_add_(0, index, torch.ones_like(index))


class Meter:
    """Base class: a streaming metric. Subclasses implement ``update``, ``compute`` and ``_init_state``."""

    #: metric keys this meter's ``compute()`` returns
    keys: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._device: torch.device | None = None

    def reset(self) -> None:
        """Forget everything seen so far (the device is chosen again by the next update)."""
        self._device = None

    def _state_on(self, pred: Tensor, target: Tensor) -> Tensor:
        """Create the state on the prediction's device at the first update (later updates must use the same
        device); returns ``target`` moved there (a no-op when it already is, an async copy from pinned memory)."""
        device = pred.device
        if self._device is None:
            self._device = device
            self._init_state(device)
        elif device != self._device:
            raise ValueError(
                f"{type(self).__name__}: inputs moved from {self._device} to {device}; keep the model and the "
                "targets on one device, or call reset() first."
            )
        return target.to(device, non_blocking=True)

    def _init_state(self, device: torch.device) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, pred: Tensor, target: Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute(self) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _empty(self) -> dict[str, float]:
        return {k: _NAN for k in self.keys}


# ------------------------------------------------------------------------------------------ segmentation
class SegmentationMeter(Meter):
    """mIoU and pixel accuracy from one confusion matrix accumulated over the whole split.

    ``C[g, p]`` counts valid pixels with ground truth ``g`` and prediction ``p`` (built with ``bincount``);
    ``IoU_c = C[c,c] / (row_c + col_c - C[c,c])``, ``pixel_acc = trace(C) / sum(C)``.

    Args:
        num_classes: number of classes C.
        ignore_index: ground-truth value to skip (-1). Ground truth outside [0, C) is skipped too.
        absent: what to do with a class absent from both ground truth and prediction (its IoU is 0/0):
            ``"exclude"`` (default, mean over the other classes) or ``"zero"`` (counted as IoU 0).
        per_image: if True, ``miou`` is the legacy per-image mean (older MTAN code): per image, the mean IoU over the
            classes present in that image's ground truth or prediction (valid pixels only), then the mean over
            images with at least one valid pixel. ``pixel_acc`` stays accumulated.
        class_names: optional names for :meth:`class_iou`.
    """

    keys = ("miou", "pixel_acc")
    ABSENT = ("exclude", "zero")

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = -1,
        absent: str = "exclude",
        per_image: bool = False,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"SegmentationMeter: num_classes must be >= 1, got {num_classes}.")
        if absent not in self.ABSENT:
            raise ValueError(f"SegmentationMeter: unknown absent={absent!r}; valid choices: {', '.join(self.ABSENT)}.")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.absent = absent
        self.per_image = bool(per_image)
        self.class_names = list(class_names) if class_names is not None else None
        self.confusion: Tensor | None = None  # [C, C] int64, rows = ground truth, cols = prediction

    def reset(self) -> None:
        super().reset()
        self.confusion = None

    def _init_state(self, device: torch.device) -> None:
        c = self.num_classes
        self.confusion = torch.zeros(c, c, dtype=torch.int64, device=device)
        self._image_miou_sum = torch.zeros((), dtype=_acc_dtype(device), device=device)
        self._image_count = torch.zeros((), dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """pred: logits [B,C,H,W] or labels [B,H,W]; target: [B,H,W] int64 (-1 = ignore)."""
        c = self.num_classes
        if pred.dim() == target.dim() + 1 and pred.shape[1] != c:
            raise ValueError(f"SegmentationMeter: logits have {pred.shape[1]} classes at dim 1, expected {c}.")
        labels = _labels(pred, target)
        target = self._state_on(pred, target)
        target = target.long()
        valid = (target >= 0) & (target < c) & (target != self.ignore_index)
        # predictions outside [0, C) cannot come from argmax; clamp label inputs so bincount stays in range
        labels = labels.clamp(0, c - 1)
        index = target.clamp_min(0) * c + labels
        self.confusion += _bincount(index, c * c, valid).view(c, c)
        if self.per_image:
            b = target.shape[0]
            image = torch.arange(b, device=target.device).view(b, *([1] * (target.dim() - 1)))
            conf = _bincount(image * (c * c) + index, b * c * c, valid).view(b, c, c).to(self._image_miou_sum.dtype)
            inter = conf.diagonal(dim1=1, dim2=2)  # [B, C]
            union = conf.sum(dim=2) + conf.sum(dim=1) - inter
            present = union > 0
            iou = inter / union.clamp_min(1)
            n_present = present.sum(dim=1)
            has_pixels = n_present > 0
            image_miou = (iou * present).sum(dim=1) / n_present.clamp_min(1)
            self._image_miou_sum += (image_miou * has_pixels).sum()
            self._image_count += has_pixels.sum()

    def class_iou(self) -> Tensor:
        """[C] IoU per class in [0, 1] (NaN for classes absent from both ground truth and prediction)."""
        if self.confusion is None:
            return torch.full((self.num_classes,), _NAN, dtype=torch.float64)
        conf = self.confusion.double().cpu()
        inter = conf.diagonal()
        union = conf.sum(dim=1) + conf.sum(dim=0) - inter
        return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, _NAN))

    def compute(self) -> dict[str, float]:
        if self.confusion is None:
            return self._empty()
        iou = self.class_iou()
        if self.absent == "zero":
            iou = torch.nan_to_num(iou, nan=0.0)
        present = ~torch.isnan(iou)
        total = int(self.confusion.sum())
        if self.per_image:
            miou = _pct(self._image_miou_sum, int(self._image_count))
        else:
            miou = 100.0 * float(iou[present].mean()) if total > 0 and bool(present.any()) else _NAN
        return {"miou": miou, "pixel_acc": _pct(int(self.confusion.diagonal().sum()), total)}


# ------------------------------------------------------------------------------------------------- depth
class DepthMeter(Meter):
    """Depth errors over valid pixels (ground truth > 0 and finite).

    * ``abs_err = sum|p - g| / N``, ``rel_err = sum(|p - g| / g) / N``, ``rmse = sqrt(sum (p - g)^2 / N)``;
    * ``log_rmse = sqrt(mean (log p' - log g')^2)`` and ``delta_k = % of pixels with max(p'/g', g'/p') < 1.25^k``,
      where ``p' = max(p, clamp)`` and ``g' = max(g, clamp)`` (default 0.01 m, so non-positive predictions have a log);
    * ``si_log_rmse`` (DLAD): per image, ``d = log g' - log p'`` over its valid pixels,
      ``100 * sqrt(mean(d^2) - mean(d)^2)``; then the mean over images with at least one valid pixel.

    Args:
        mode: ``"pixel"`` (default): every pixel-averaged metric is pooled over the whole split (pixel-weighted).
            ``"per_batch"`` (MTAN's convention): each metric is computed on each batch alone, then averaged over the
            batches that had valid pixels (equal weight per batch). ``si_log_rmse`` is per image in both modes.
        clamp: lower clamp in metres for the log metrics and delta (DLAD clamps both at 0.01 m).
    """

    keys = ("abs_err", "rel_err", "rmse", "log_rmse", "si_log_rmse", "delta1", "delta2", "delta3")
    MODES = ("pixel", "per_batch")
    # order of the pooled sums kept in self._sums
    _SUMS = ("abs", "rel", "sq", "logsq", "delta1", "delta2", "delta3")

    def __init__(self, mode: str = "pixel", clamp: float = 0.01) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"DepthMeter: unknown mode={mode!r}; valid choices: {', '.join(self.MODES)}.")
        if clamp <= 0:
            raise ValueError(f"DepthMeter: clamp must be > 0 metres, got {clamp}.")
        self.mode = mode
        self.clamp = float(clamp)

    def _init_state(self, device: torch.device) -> None:
        dt = _acc_dtype(device)
        self._sums = torch.zeros(len(self._SUMS), dtype=dt, device=device)  # pixel mode: pooled sums
        self._count = torch.zeros((), dtype=dt, device=device)
        self._batch_metrics = torch.zeros(len(self._SUMS), dtype=dt, device=device)  # per_batch: sum of batch values
        self._batch_count = torch.zeros((), dtype=dt, device=device)
        self._si_sum = torch.zeros((), dtype=dt, device=device)
        self._si_count = torch.zeros((), dtype=dt, device=device)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """pred, target: [B,1,H,W] (or [B,H,W]) metres; target <= 0 is invalid."""
        if pred.shape != target.shape:
            raise ValueError(f"DepthMeter: prediction {tuple(pred.shape)} vs target {tuple(target.shape)}.")
        target = self._state_on(pred, target)
        dt = self._sums.dtype
        valid = torch.isfinite(target) & (target > 0)
        p = pred.to(dt)
        g = torch.where(valid, target.to(dt), torch.ones_like(p))  # 1 m where invalid: finite, masked below
        p_c, g_c = p.clamp_min(self.clamp), g.clamp_min(self.clamp)
        err = (p - g).abs()
        log_diff = torch.log(g_c) - torch.log(p_c)
        ratio = torch.maximum(p_c / g_c, g_c / p_c)
        per_pixel = torch.stack(
            [err, err / g, err.square(), log_diff.square()] + [(ratio < 1.25**k).to(dt) for k in (1, 2, 3)]
        )  # [7, B, 1, H, W]
        mask = valid.to(dt)
        # where (not a product) so that a non-finite prediction on an invalid pixel cannot leak in
        sums = torch.where(valid, per_pixel, 0.0).flatten(1).sum(dim=1)  # [7]
        n = mask.sum()
        self._sums += sums
        self._count += n
        has = (n > 0).to(dt)
        self._batch_metrics += self._finalise(sums, n.clamp_min(1)) * has
        self._batch_count += has
        # SI-logRMSE per image, two-pass variance for accuracy
        dims = tuple(range(1, target.dim()))
        n_img = mask.sum(dim=dims)  # [B]
        log_diff = torch.where(valid, log_diff, 0.0)
        mean_d = log_diff.sum(dim=dims) / n_img.clamp_min(1)
        centred = torch.where(valid, log_diff - mean_d.view(-1, *([1] * len(dims))), 0.0)
        var = centred.square().sum(dim=dims) / n_img.clamp_min(1)
        has_img = n_img > 0
        self._si_sum += (100.0 * var.clamp_min(0).sqrt() * has_img).sum()
        self._si_count += has_img.sum()

    @staticmethod
    def _finalise(sums: Tensor, n: Tensor) -> Tensor:
        """Pooled sums [7] and pixel count -> metric values [7] (abs, rel, rmse, log_rmse, delta1..3 in %)."""
        means = sums / n
        return torch.cat([means[:2], means[2:4].sqrt(), 100.0 * means[4:]])

    def compute(self) -> dict[str, float]:
        if self._device is None:
            return self._empty()
        if self.mode == "pixel":
            n = float(self._count)
            values = self._finalise(self._sums, self._count).tolist() if n > 0 else [_NAN] * 7
        else:
            nb = float(self._batch_count)
            values = (self._batch_metrics / nb).tolist() if nb > 0 else [_NAN] * 7
        abs_err, rel_err, rmse, log_rmse, d1, d2, d3 = values
        si_n = float(self._si_count)
        si = float(self._si_sum) / si_n if si_n > 0 else _NAN
        return {
            "abs_err": abs_err, "rel_err": rel_err, "rmse": rmse, "log_rmse": log_rmse, "si_log_rmse": si,
            "delta1": d1, "delta2": d2, "delta3": d3,
        }


# ----------------------------------------------------------------------------------------------- normals
class NormalsMeter(Meter):
    """Angular error of surface normals in degrees over valid pixels (ground truth not all-zero).

    ``angle = degrees(acos(clamp(<p/|p|, g/|g|>, -1, 1)))``; ``mean``; ``median`` = the TRUE median over all valid
    pixels of the split (for an even count, the average of the two middle values, as ``numpy.median``);
    ``within_t`` = % of pixels with angle < t for t in 11.25, 22.5, 30.

    Args:
        median: ``"exact"`` (default) keeps every valid angle (float32, on device) and takes the median at
            ``compute()``: 4 bytes per pixel (NYUv2 test at 288x384: ~0.3 GB). ``"histogram"`` keeps a
            0.01-degree histogram instead (18,000 bins, constant memory) and returns the centre of the bin holding
            the median, so it is within 0.005 degrees of the exact value.
        mode: ``"pixel"`` (default): every metric pooled over the split's valid pixels. ``"per_batch"`` (MTAN's
            convention): each metric (the median too) computed on each batch alone, then the mean over the batches
            that had valid pixels; ``median`` is then ignored (a batch's median is exact).
    """

    keys = ("mean", "median", "within_11_25", "within_22_5", "within_30")
    MEDIANS = ("exact", "histogram")
    MODES = ("pixel", "per_batch")
    BIN_DEG = 0.01
    THRESHOLDS = (11.25, 22.5, 30.0)

    def __init__(self, median: str = "exact", mode: str = "pixel") -> None:
        super().__init__()
        if median not in self.MEDIANS:
            raise ValueError(f"NormalsMeter: unknown median={median!r}; valid choices: {', '.join(self.MEDIANS)}.")
        if mode not in self.MODES:
            raise ValueError(f"NormalsMeter: unknown mode={mode!r}; valid choices: {', '.join(self.MODES)}.")
        self.median = median
        self.mode = mode

    def _init_state(self, device: torch.device) -> None:
        dt = _acc_dtype(device)
        self._sum = torch.zeros((), dtype=dt, device=device)
        self._count = torch.zeros((), dtype=torch.int64, device=device)
        self._within = torch.zeros(len(self.THRESHOLDS), dtype=torch.int64, device=device)
        self._angles: list[Tensor] = []
        self._hist = torch.zeros(round(180 / self.BIN_DEG), dtype=torch.int64, device=device)
        self._batch_metrics = torch.zeros(len(self.keys), dtype=dt, device=device)  # per_batch: sum of batch values
        self._batch_count = torch.zeros((), dtype=dt, device=device)

    @staticmethod
    def angles(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Per-pixel angular error in degrees [B,H,W] and the validity mask [B,H,W] (pred/target [B,3,H,W])."""
        finite = torch.isfinite(target).all(dim=1)
        target = torch.where(finite.unsqueeze(1), target, torch.zeros_like(target))
        valid = finite & (target.abs().sum(dim=1) > 0)
        # cos = <p / max(|p|, eps), g / max(|g|, eps)> as F.normalize defines it, written over the 3 channels:
        # a reduction over dim 1 of [B,3,H,W] is strided and ~20x slower on a CPU than these elementwise ops
        p0, p1, p2 = pred.float().unbind(1)
        g0, g1, g2 = target.float().unbind(1)
        eps = 1e-12
        p_len = (p0 * p0 + p1 * p1 + p2 * p2).sqrt().clamp_min(eps)
        g_len = (g0 * g0 + g1 * g1 + g2 * g2).sqrt().clamp_min(eps)
        cos = (p0 * g0 + p1 * g1 + p2 * g2) / (p_len * g_len)
        return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0))), valid

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """pred: [B,3,H,W] (any length); target: [B,3,H,W] unit vectors, all-zero = invalid."""
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(
                f"NormalsMeter: expected [B,3,H,W] pairs, got {tuple(pred.shape)} / {tuple(target.shape)}."
            )
        target = self._state_on(pred, target)
        angle, valid = self.angles(pred, target)
        if self.mode == "per_batch":
            self._update_batch(angle, valid)
            return
        self._sum += torch.where(valid, angle, 0.0).to(self._sum.dtype).sum()
        self._count += valid.sum()
        self._within += torch.stack([(valid & (angle < t)).sum() for t in self.THRESHOLDS])
        if self.median == "exact":
            # invalid pixels kept as NaN (dropped at compute): selecting valid ones here would sync on CUDA
            self._angles.append(torch.where(valid, angle, float("nan")).reshape(-1))
        else:
            bins = (angle / self.BIN_DEG).long().clamp_(0, self._hist.numel() - 1)
            self._hist += _bincount(bins, self._hist.numel(), valid)

    def _update_batch(self, angle: Tensor, valid: Tensor) -> None:
        """Add this batch's five metrics (mean, median, within_t in %) to the per-batch sums, without a host sync."""
        dt = self._batch_metrics.dtype
        a = torch.where(valid, angle, float("nan")).reshape(-1)
        n = valid.sum()
        n_safe = n.clamp_min(1)
        mean = torch.where(valid, angle, 0.0).to(dt).sum() / n_safe
        ordered = a.sort().values  # NaN (invalid) sorts last, so the valid angles come first
        lo, hi = ((n_safe - 1) // 2).view(1), (n_safe // 2).view(1)
        median = (ordered.gather(0, lo).to(dt) + ordered.gather(0, hi).to(dt)) / 2
        within = [100.0 * (valid & (angle < t)).sum().to(dt) / n_safe for t in self.THRESHOLDS]
        values = torch.stack([mean, median[0], *within])
        has = n > 0
        self._batch_metrics += torch.where(has, values, torch.zeros_like(values))
        self._batch_count += has.to(dt)

    def _median(self, n: int) -> float:
        lo_k, hi_k = (n - 1) // 2, n // 2  # 0-based ranks of the middle value(s)
        if self.median == "exact":
            a = torch.cat(self._angles)
            a = a[~torch.isnan(a)]
            lo = a.kthvalue(lo_k + 1).values
            hi = a.kthvalue(hi_k + 1).values
            return float((lo.double() + hi.double()) / 2)
        cum = self._hist.cumsum(0)
        lo_bin = int(torch.searchsorted(cum, torch.tensor(lo_k + 1, device=cum.device)))
        hi_bin = int(torch.searchsorted(cum, torch.tensor(hi_k + 1, device=cum.device)))
        return (lo_bin + hi_bin + 1) / 2 * self.BIN_DEG  # mean of the two bin centres

    def compute(self) -> dict[str, float]:
        if self._device is None:
            return self._empty()
        if self.mode == "per_batch":
            nb = float(self._batch_count)
            return dict(zip(self.keys, (self._batch_metrics / nb).tolist())) if nb > 0 else self._empty()
        if int(self._count) == 0:
            return self._empty()
        n = int(self._count)
        within = self._within.tolist()
        return {
            "mean": float(self._sum) / n,
            "median": self._median(n),
            "within_11_25": 100.0 * within[0] / n,
            "within_22_5": 100.0 * within[1] / n,
            "within_30": 100.0 * within[2] / n,
        }


# -------------------------------------------------------------------------------------- binary dense maps
def _above_counts(
    values: Tensor, thresholds: Tensor, mask: Tensor, groups: Tensor | None = None, n_groups: int = 1
) -> Tensor:
    """How many ``values[mask]`` exceed each threshold, optionally per group, in O(N) instead of O(N*T).

    ``bucketize`` gives each value the number of thresholds strictly below it; a reverse cumulative sum of the
    bucket histogram then counts, for every threshold t_j, the values > t_j.

    Args:
        values: floats; thresholds: [T] ascending; mask: bool like values (elements to count);
        groups: optional int64 group ids in [0, n_groups), broadcastable to values.

    Returns:
        [n_groups, T] int64 counts.
    """
    t = thresholds.numel()
    bucket = torch.bucketize(values, thresholds, right=False)  # number of thresholds < value, in [0, T]
    if groups is not None:
        bucket = groups * (t + 1) + bucket
    hist = _bincount(bucket.expand_as(mask), n_groups * (t + 1), mask).view(n_groups, t + 1)
    above = hist.flip(1).cumsum(1).flip(1)  # above[:, j] = #values with bucket >= j
    return above[:, 1:]  # > t_j  <=>  bucket >= j + 1


class SaliencyMeter(Meter):
    """Max F-measure and max mean IoU over thresholds, with per-image precision/recall.

    For each threshold t (default ``linspace(0.2, 0.9, 15)``) and each image, over its valid pixels, the prediction
    is ``sigmoid(logit) > t``: precision ``P = TP / (TP + FP)`` and recall ``R = TP / (TP + FN)`` (0 when the
    denominator is 0) and IoU ``TP / |pred or gt|`` (1 when both are empty). P, R and IoU are averaged over the
    images; ``F_t = 2 P_t R_t / (P_t + R_t)`` (0 when P_t + R_t = 0); ``max_f = max_t F_t``,
    ``max_iou = max_t meanIoU_t``. Images without valid pixels are skipped.

    Args:
        thresholds: ascending probability thresholds.
        from_logits: apply a sigmoid to predictions (set False when passing probabilities).
    """

    keys = ("max_f", "max_iou")

    def __init__(self, thresholds: Sequence[float] | Tensor | None = None, from_logits: bool = True) -> None:
        super().__init__()
        thr = torch.linspace(0.2, 0.9, 15) if thresholds is None else torch.as_tensor(thresholds, dtype=torch.float32)
        if thr.dim() != 1 or thr.numel() == 0 or bool((thr[1:] <= thr[:-1]).any()):
            raise ValueError("SaliencyMeter: thresholds must be a non-empty strictly ascending 1-D sequence.")
        self.thresholds = thr.float()
        self.from_logits = from_logits

    def _init_state(self, device: torch.device) -> None:
        dt = _acc_dtype(device)
        t = self.thresholds.numel()
        self._thr = self.thresholds.to(device)
        self._prec_sum = torch.zeros(t, dtype=dt, device=device)
        self._rec_sum = torch.zeros(t, dtype=dt, device=device)
        self._iou_sum = torch.zeros(t, dtype=dt, device=device)
        self._images = torch.zeros((), dtype=dt, device=device)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """pred: [B,1,H,W] logits (or probabilities); target: [B,1,H,W] {0,1}, -1 = ignore."""
        if pred.shape != target.shape:
            raise ValueError(f"SaliencyMeter: prediction {tuple(pred.shape)} vs target {tuple(target.shape)}.")
        target = self._state_on(pred, target)
        dt = self._prec_sum.dtype
        b = target.shape[0]
        prob = (torch.sigmoid(pred.float()) if self.from_logits else pred.float()).reshape(b, -1)
        tgt = target.reshape(b, -1)
        valid = (tgt == 0) | (tgt == 1)
        gt = tgt == 1
        image = torch.arange(b, device=target.device).unsqueeze(1)
        pred_pos = _above_counts(prob, self._thr, valid, image, b).to(dt)  # [B, T] TP + FP
        tp = _above_counts(prob, self._thr, valid & gt, image, b).to(dt)  # [B, T]
        gt_pos = (valid & gt).sum(dim=1, keepdim=True).to(dt)  # [B, 1] TP + FN
        has = valid.any(dim=1).to(dt).unsqueeze(1)  # [B, 1]
        prec = torch.where(pred_pos > 0, tp / pred_pos.clamp_min(1), torch.zeros_like(tp))
        rec = torch.where(gt_pos > 0, tp / gt_pos.clamp_min(1), torch.zeros_like(tp))
        union = pred_pos + gt_pos - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.ones_like(tp))
        self._prec_sum += (prec * has).sum(0)
        self._rec_sum += (rec * has).sum(0)
        self._iou_sum += (iou * has).sum(0)
        self._images += has.sum()

    def curves(self) -> dict[str, Tensor]:
        """Per-threshold mean precision, recall, F and IoU (fractions, CPU float64 [T]) for plotting."""
        n = float(self._images) if self._device is not None else 0.0
        if n == 0:
            nan = torch.full((self.thresholds.numel(),), _NAN, dtype=torch.float64)
            return {"thresholds": self.thresholds.double(), "precision": nan, "recall": nan, "f": nan, "iou": nan}
        p = self._prec_sum.double().cpu() / n
        r = self._rec_sum.double().cpu() / n
        f = torch.where(p + r > 0, 2 * p * r / (p + r).clamp_min(1e-300), torch.zeros_like(p))
        return {"thresholds": self.thresholds.double(), "precision": p, "recall": r, "f": f,
                "iou": self._iou_sum.double().cpu() / n}

    def compute(self) -> dict[str, float]:
        c = self.curves()
        if torch.isnan(c["f"]).all():
            return self._empty()
        return {"max_f": 100.0 * float(c["f"].max()), "max_iou": 100.0 * float(c["iou"].max())}


class EdgeMeter(Meter):
    """ODS F-measure of edge maps: one threshold for the whole dataset, with a pixel distance tolerance.

    Matching (a pure-PyTorch stand-in for the BSDS/SEISM MATLAB benchmark, which matches pixels one-to-one): with
    ``r`` the tolerance in pixels, a predicted edge pixel (``sigmoid(logit) > t``) is a true positive when a
    ground-truth edge pixel lies within Chebyshev distance ``r`` (a (2r+1)x(2r+1) max-pool dilation of the ground
    truth); a ground-truth edge pixel is recalled when a predicted edge pixel lies within distance ``r``
    (max-pooling the probability map once serves every threshold, as ``dilate(prob > t) == maxpool(prob) > t``).
    Matches are not exclusive, so the score is a little more lenient than the one-to-one benchmark. Counts are
    summed over the dataset per threshold; ``P_t = matched_pred / pred``, ``R_t = matched_gt / gt``,
    ``ods_f = max_t 2 P_t R_t / (P_t + R_t)``. Ignored pixels (-1) are neither predictions nor ground truth.

    Args:
        tolerance: ``r`` in pixels. None (default) uses BSDS's ``maxDist = 0.0075`` of the image diagonal,
            ``r = max(1, round(0.0075 * sqrt(H^2 + W^2)))``: 1 px below a 200 px diagonal (smoke 64x64), 4 px at
            288x384, 5 px at 512x512.
        thresholds: ascending probability thresholds (default 99: 0.01, 0.02, ..., 0.99).
        from_logits: apply a sigmoid to predictions.
    """

    keys = ("ods_f",)
    MAX_DIST = 0.0075

    def __init__(
        self,
        tolerance: int | None = None,
        thresholds: Sequence[float] | Tensor | None = None,
        from_logits: bool = True,
    ) -> None:
        super().__init__()
        if tolerance is not None and (int(tolerance) != tolerance or tolerance < 0):
            raise ValueError(f"EdgeMeter: tolerance must be a non-negative integer number of pixels, got {tolerance}.")
        thr = torch.linspace(0.01, 0.99, 99) if thresholds is None else torch.as_tensor(thresholds, dtype=torch.float32)
        if thr.dim() != 1 or thr.numel() == 0 or bool((thr[1:] <= thr[:-1]).any()):
            raise ValueError("EdgeMeter: thresholds must be a non-empty strictly ascending 1-D sequence.")
        self.tolerance = None if tolerance is None else int(tolerance)
        self.thresholds = thr.float()
        self.from_logits = from_logits

    def tolerance_for(self, height: int, width: int) -> int:
        """The tolerance in pixels used for images of this size."""
        if self.tolerance is not None:
            return self.tolerance
        return max(1, round(self.MAX_DIST * math.hypot(height, width)))

    def _init_state(self, device: torch.device) -> None:
        t = self.thresholds.numel()
        self._thr = self.thresholds.to(device)
        self._pred = torch.zeros(t, dtype=torch.int64, device=device)
        self._pred_matched = torch.zeros(t, dtype=torch.int64, device=device)
        self._gt_matched = torch.zeros(t, dtype=torch.int64, device=device)
        self._gt = torch.zeros((), dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """pred: [B,1,H,W] logits (or probabilities); target: [B,1,H,W] {0,1}, -1 = ignore."""
        if pred.shape != target.shape or pred.dim() != 4:
            raise ValueError(f"EdgeMeter: expected [B,1,H,W] pairs, got {tuple(pred.shape)} / {tuple(target.shape)}.")
        target = self._state_on(pred, target)
        r = self.tolerance_for(*target.shape[-2:])
        valid = (target == 0) | (target == 1)
        gt = target == 1
        prob = torch.sigmoid(pred.float()) if self.from_logits else pred.float()
        prob = torch.where(valid, prob, torch.zeros_like(prob))  # ignored pixels never predict an edge
        if r > 0:
            gt_near = F.max_pool2d(gt.float(), 2 * r + 1, stride=1, padding=r) > 0
            prob_near = F.max_pool2d(prob, 2 * r + 1, stride=1, padding=r)
        else:
            gt_near, prob_near = gt, prob
        self._pred += _above_counts(prob, self._thr, valid)[0]
        self._pred_matched += _above_counts(prob, self._thr, valid & gt_near)[0]
        self._gt_matched += _above_counts(prob_near, self._thr, gt)[0]
        self._gt += gt.sum()

    def curves(self) -> dict[str, Tensor]:
        """Per-threshold dataset precision, recall and F (fractions, CPU float64 [T])."""
        if self._device is None:
            nan = torch.full((self.thresholds.numel(),), _NAN, dtype=torch.float64)
            return {"thresholds": self.thresholds.double(), "precision": nan, "recall": nan, "f": nan}
        pred, gt = self._pred.double().cpu(), float(self._gt)
        p = torch.where(pred > 0, self._pred_matched.double().cpu() / pred.clamp_min(1), torch.zeros_like(pred))
        r = self._gt_matched.double().cpu() / gt if gt > 0 else torch.zeros_like(pred)
        f = torch.where(p + r > 0, 2 * p * r / (p + r).clamp_min(1e-300), torch.zeros_like(p))
        return {"thresholds": self.thresholds.double(), "precision": p, "recall": r, "f": f}

    def compute(self) -> dict[str, float]:
        if self._device is None or (int(self._gt) == 0 and int(self._pred.max()) == 0):
            return self._empty()  # nothing seen, or only ignored / edge-free pixels with no prediction
        return {"ods_f": 100.0 * float(self.curves()["f"].max())}


# ------------------------------------------------------------------------------------ image-level, boxes
class ClassificationMeter(Meter):
    """Top-1 accuracy (%) over labelled images.

    Args:
        num_classes: optional; checked against the logits' class dimension.
        ignore_index: label of unlabelled images (-1).
        class_names: optional names, kept for reports.
    """

    keys = ("accuracy",)

    def __init__(self, num_classes: int | None = None, ignore_index: int = -1,
                 class_names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else None

    def _init_state(self, device: torch.device) -> None:
        self._correct = torch.zeros((), dtype=torch.int64, device=device)
        self._count = torch.zeros((), dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """pred: logits [B,C] or labels [B]; target: [B] int64, -1 = unlabelled."""
        if pred.dim() == 2 and self.num_classes is not None and pred.shape[1] != self.num_classes:
            raise ValueError(f"ClassificationMeter: logits have {pred.shape[1]} classes, expected {self.num_classes}.")
        labels = _labels(pred, target.view(-1))
        target = self._state_on(pred, target)
        target = target.view(-1).long()
        valid = (target != self.ignore_index) & (target >= 0)
        self._correct += ((labels == target) & valid).sum()
        self._count += valid.sum()

    def compute(self) -> dict[str, float]:
        if self._device is None:
            return self._empty()
        return {"accuracy": _pct(int(self._correct), int(self._count))}


class BoxMeter(Meter):
    """Mean IoU (%) of the predicted box vs the image's ground-truth box, over images that have one.

    pred: [B,4] xyxy pixels; target: [B,4] xyxy pixels with a NaN row for an image without a box.
    """

    keys = ("mean_iou",)

    def _init_state(self, device: torch.device) -> None:
        self._sum = torch.zeros((), dtype=_acc_dtype(device), device=device)
        self._count = torch.zeros((), dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.shape != target.shape or pred.dim() != 2 or pred.shape[1] != 4:
            raise ValueError(f"BoxMeter: expected [B,4] pairs, got {tuple(pred.shape)} / {tuple(target.shape)}.")
        target = self._state_on(pred, target)
        valid = torch.isfinite(target).all(dim=1)
        safe = torch.where(valid.unsqueeze(1), target, torch.zeros_like(target))
        iou = box_iou(pred.to(self._sum.dtype), safe.to(self._sum.dtype))
        self._sum += (iou * valid).sum()
        self._count += valid.sum()

    def compute(self) -> dict[str, float]:
        if self._device is None:
            return self._empty()
        return {"mean_iou": _pct(float(self._sum), int(self._count))}


# ---------------------------------------------------------------------------------- scores across tasks
#: Direction of every metric key the meters report (True: higher is better).
METRIC_HIGHER_IS_BETTER: dict[str, bool] = {
    "miou": True, "pixel_acc": True,
    "abs_err": False, "rel_err": False, "rmse": False, "log_rmse": False, "si_log_rmse": False,
    "delta1": True, "delta2": True, "delta3": True,
    "mean": False, "median": False, "within_11_25": True, "within_22_5": True, "within_30": True,
    "max_f": True, "max_iou": True, "ods_f": True, "accuracy": True, "mean_iou": True,
}


def grader_score(miou: float, si_log_rmse: float) -> float:
    """DLAD 2021 grader score ``max(miou - 50, 0) + max(50 - si_log_rmse, 0)`` (miou in percent, SI-log x100).

    >>> round(grader_score(90.9, 12.1), 1)
    78.8
    """
    return max(float(miou) - 50.0, 0.0) + max(50.0 - float(si_log_rmse), 0.0)


