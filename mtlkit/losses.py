"""Per-task losses (docs/reference.md#losses).

Plain functions ``loss(pred, target, ...) -> scalar``. Every loss

* masks what the sample contract marks as missing: label ``-1`` (``ignore_index``), depth ``<= 0`` or non-finite,
  all-zero normals, box rows of NaN (an image without a box);
* averages over the valid elements only (pixels for dense tasks, images for image-level and box tasks);
* returns a zero that still has a ``grad_fn`` (``pred.sum() * 0``) when nothing is valid, never NaN, so a batch in
  which a task is unlabelled can go through ``backward()`` like any other.

Targets are the ones :meth:`mtlkit.tasks.Task.target` returns (images whose task is unlabelled already filled with
ignore values), so these functions never look at ``meta``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEPTH_LOSSES",
    "DLAD_DEPTH_MEAN",
    "DLAD_DEPTH_STD",
    "EDGE_POS_WEIGHT",
    "cross_entropy",
    "depth_loss",
    "depth_l1",
    "depth_mse_normalised",
    "normals_cosine",
    "balanced_bce",
    "box_iou",
    "diou_loss",
    "part_allowed",
    "owner_part_loss",
]

#: Depth statistics of the DLAD course (MiniScapes) used to normalise depth for its MSE loss, in metres.
DLAD_DEPTH_MEAN = 27.07
DLAD_DEPTH_STD = 29.13
#: Positive-class weight of the balanced edge BCE (edges are ~5% of pixels; Vandenhende et al. use 0.95).
EDGE_POS_WEIGHT = 0.95
#: Valid values of ``depth_loss`` (see :func:`depth_loss`).
DEPTH_LOSSES = ("l1", "mse")


def _zero_like(pred: Tensor) -> Tensor:
    """A scalar zero connected to ``pred``'s graph (keeps ``backward()`` legal when nothing is valid)."""
    return pred.sum() * 0.0


def _check_same_shape(pred: Tensor, target: Tensor, what: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{what}: prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}; "
            "models must predict at input resolution (upsample the prediction to the target size)."
        )


def _masked_mean(values: Tensor, mask: Tensor, pred: Tensor) -> Tensor:
    """Mean of ``values`` over ``mask``; the graph-connected zero of ``pred`` when the mask is empty.

    ``values`` must already be finite where ``mask`` is False (use ``torch.where`` upstream), otherwise a NaN would
    leak through ``0 * NaN``. The count is clamped to 1 instead of branching on it, so no host sync is needed.
    """
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    count = mask.sum().clamp_min(1)
    return total / count + _zero_like(pred)


# --------------------------------------------------------------------------------------------------- labels
def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = -1, weight: Tensor | None = None) -> Tensor:
    """Cross-entropy averaged over labelled elements.

    Args:
        logits: [B, C, H, W] (dense labels: semseg, parts, material) or [B, C] (image-level labels).
        target: [B, H, W] or [B] int64 class indices; ``ignore_index`` (-1) marks unlabelled pixels/images.
        weight: optional [C] class weights (then the mean is weighted, as in ``F.cross_entropy``).

    Returns:
        Scalar loss; a graph-connected 0 when no element is labelled (``F.cross_entropy`` would return NaN).
    """
    if logits.dim() != target.dim() + 1 or logits.shape[:1] + logits.shape[2:] != target.shape:
        raise ValueError(
            f"cross_entropy: logits {tuple(logits.shape)} must be target {tuple(target.shape)} with a class "
            "dimension inserted at dim 1 ([B,C,H,W] vs [B,H,W], or [B,C] vs [B])."
        )
    target = target.long()
    # reduction="sum" is 0 (not NaN) when everything is ignored; divide by the (weighted) count ourselves.
    total = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction="sum")
    valid = target != ignore_index
    if weight is None:
        count = valid.sum()
    else:
        count = weight.to(logits.dtype)[target.clamp_min(0)].masked_fill(~valid, 0).sum()
    return total / count.clamp_min(1) + _zero_like(logits)


# ---------------------------------------------------------------------------------------------------- depth
def depth_l1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over valid depth pixels.

    Args:
        pred: [B, 1, H, W] depth in metres.
        target: [B, 1, H, W] depth in metres; pixels with ``target <= 0`` (or non-finite) are invalid.
    """
    _check_same_shape(pred, target, "depth_l1")
    valid = torch.isfinite(target) & (target > 0)
    safe_target = torch.where(valid, target, pred.detach())  # no NaN/inf reaches the graph
    return _masked_mean((pred - safe_target).abs(), valid, pred)


def depth_mse_normalised(
    pred: Tensor, target: Tensor, mean: float = DLAD_DEPTH_MEAN, std: float = DLAD_DEPTH_STD
) -> Tensor:
    """DLAD-course depth loss: MSE between depths normalised as ``(d - mean) / std``, over valid pixels.

    Both prediction and target are in metres here (the kit's models predict metres), so the loss equals
    ``mean((pred - target)^2) / std^2``: the mean cancels and only the scale of the loss depends on ``std``.

    Args:
        pred: [B, 1, H, W] depth in metres.
        target: [B, 1, H, W] depth in metres; ``<= 0`` or non-finite is invalid.
        mean, std: normalisation statistics in metres (DLAD: 27.07, 29.13).
    """
    _check_same_shape(pred, target, "depth_mse_normalised")
    if std <= 0:
        raise ValueError(f"depth_mse_normalised: std must be > 0, got {std}.")
    valid = torch.isfinite(target) & (target > 0)
    safe_target = torch.where(valid, target, pred.detach())
    diff = (pred - mean) / std - (safe_target - mean) / std
    return _masked_mean(diff.square(), valid, pred)


def depth_loss(
    pred: Tensor, target: Tensor, kind: str = "l1", mean: float = DLAD_DEPTH_MEAN, std: float = DLAD_DEPTH_STD
) -> Tensor:
    """Depth loss by name: ``"l1"`` (default, :func:`depth_l1`) or ``"mse"`` (DLAD, :func:`depth_mse_normalised`)."""
    if kind == "l1":
        return depth_l1(pred, target)
    if kind == "mse":
        return depth_mse_normalised(pred, target, mean=mean, std=std)
    raise ValueError(f"unknown depth loss {kind!r}; valid choices: {', '.join(DEPTH_LOSSES)}.")


# -------------------------------------------------------------------------------------------------- normals
def normals_cosine(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """``1 - cos(angle)`` between predicted and ground-truth normals, averaged over valid pixels.

    Args:
        pred: [B, 3, H, W], any length (L2-normalised here; a zero vector counts as cosine 0).
        target: [B, 3, H, W] unit vectors; an all-zero (or non-finite) vector marks an invalid pixel. The target
            is L2-normalised too, so slightly non-unit vectors (e.g. after resizing) are handled.
    """
    _check_same_shape(pred, target, "normals_cosine")
    if pred.shape[1] != 3:
        raise ValueError(f"normals_cosine: expected 3 channels at dim 1, got shape {tuple(pred.shape)}.")
    finite = torch.isfinite(target).all(dim=1)
    safe_target = torch.where(finite.unsqueeze(1), target, torch.zeros_like(target))
    valid = finite & (safe_target.abs().sum(dim=1) > 0)  # [B, H, W]
    cos = (F.normalize(pred, dim=1, eps=eps) * F.normalize(safe_target, dim=1, eps=eps)).sum(dim=1)
    return _masked_mean(1.0 - cos, valid, pred)


# ---------------------------------------------------------------------------------------- edges / saliency
def balanced_bce(logits: Tensor, target: Tensor, pos_weight: float | None = None, ignore_index: int = -1) -> Tensor:
    """Class-balanced binary cross-entropy for edges and saliency.

    With ``w`` the weight of the positive class::

        loss = sum_valid( -w * y * log(sigmoid(x)) - (1 - w) * (1 - y) * log(1 - sigmoid(x)) ) / N_valid

    * edges: ``w = pos_weight`` fixed (0.95, :data:`EDGE_POS_WEIGHT`);
    * saliency (``pos_weight=None``): ``w = 1 - N_pos / N_valid``, the fraction of NEGATIVE valid pixels of the
      whole batch (computed without gradient), so the rarer class gets the larger weight; the two classes then
      contribute ``w * N_pos = (1 - w) * N_neg`` total weight each.

    Args:
        logits: [B, 1, H, W] raw scores.
        target: [B, 1, H, W] float {0, 1}; ``ignore_index`` (-1) marks unlabelled pixels.
        pos_weight: fixed positive weight in [0, 1], or None for the batch-balanced form.
    """
    _check_same_shape(logits, target, "balanced_bce")
    valid = target != ignore_index
    y = torch.where(valid, target, torch.zeros_like(target)).to(logits.dtype)
    if pos_weight is None:
        n_valid = valid.sum().clamp_min(1)
        w = 1.0 - (y * valid).sum() / n_valid  # fraction of negatives among valid pixels
    else:
        if not 0.0 <= pos_weight <= 1.0:
            raise ValueError(f"balanced_bce: pos_weight must lie in [0, 1], got {pos_weight}.")
        w = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    # log(sigmoid(x)) = -softplus(-x), log(1 - sigmoid(x)) = -softplus(x): stable for large |x|.
    per_pixel = w * y * F.softplus(-logits) + (1.0 - w) * (1.0 - y) * F.softplus(logits)
    return _masked_mean(per_pixel, valid, logits)


# ---------------------------------------------------------------------------------------------------- boxes
def box_iou(a: Tensor, b: Tensor, eps: float = 1e-9) -> Tensor:
    """Element-wise IoU of paired xyxy boxes.

    Args:
        a, b: [N, 4] boxes ``(x1, y1, x2, y2)`` in pixels. Inverted boxes (x2 < x1) have area 0.

    Returns:
        [N] IoU in [0, 1].
    """
    wh_a = (a[:, 2:] - a[:, :2]).clamp_min(0)
    wh_b = (b[:, 2:] - b[:, :2]).clamp_min(0)
    inter_wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp_min(0)
    inter = inter_wh[:, 0] * inter_wh[:, 1]
    union = wh_a[:, 0] * wh_a[:, 1] + wh_b[:, 0] * wh_b[:, 1] - inter
    return inter / (union + eps)


def diou_loss(pred: Tensor, target: Tensor, eps: float = 1e-9) -> Tensor:
    """Distance-IoU loss ``1 - IoU + rho^2 / c^2`` averaged over images that have a box.

    ``rho`` is the distance between the box centres and ``c`` the diagonal of the smallest box enclosing both,
    so the centre term is in [0, 1) and still pulls non-overlapping boxes together.

    Args:
        pred: [B, 4] predicted xyxy boxes in pixels.
        target: [B, 4] ground-truth xyxy boxes in pixels; a row containing NaN marks an image without a box.
    """
    _check_same_shape(pred, target, "diou_loss")
    if pred.dim() != 2 or pred.shape[1] != 4:
        raise ValueError(f"diou_loss: expected [B, 4] xyxy boxes, got shape {tuple(pred.shape)}.")
    valid = torch.isfinite(target).all(dim=1)  # [B]
    safe_target = torch.where(valid.unsqueeze(1), target, pred.detach())
    iou = box_iou(pred, safe_target, eps=eps)
    centre_p = (pred[:, :2] + pred[:, 2:]) / 2
    centre_t = (safe_target[:, :2] + safe_target[:, 2:]) / 2
    rho2 = (centre_p - centre_t).square().sum(dim=1)
    enclose_lo = torch.minimum(torch.minimum(pred[:, :2], pred[:, 2:]), safe_target[:, :2])
    enclose_hi = torch.maximum(torch.maximum(pred[:, :2], pred[:, 2:]), safe_target[:, 2:])
    c2 = (enclose_hi - enclose_lo).square().sum(dim=1)
    return _masked_mean(1.0 - iou + rho2 / (c2 + eps), valid, pred)


# ------------------------------------------------------------------------------------ parts per owning object
def part_allowed(part_owners, num_objects: int) -> Tensor:
    """``allowed`` [O, P] bool: part class c may occur on object o (o owns c, or c has no owner, like "none").

    ``part_owners[c]`` lists the object classes owning part class c (``()``: no owner). An object that owns no part
    class may only show the unowned classes; if there is none of those either, it may show every class (nothing to
    gate by).
    """
    owned = torch.zeros(num_objects, len(part_owners), dtype=torch.bool)
    unowned = torch.zeros(len(part_owners), dtype=torch.bool)
    for c, owners in enumerate(part_owners):
        if len(owners) == 0:
            unowned[c] = True
        for o in owners:
            if not 0 <= int(o) < num_objects:
                raise ValueError(f"part_owners[{c}] names object class {o}; valid: 0..{num_objects - 1}")
            owned[int(o), c] = True
    allowed = owned | unowned
    allowed[~allowed.any(1)] = True
    return allowed


def owner_part_loss(logits: Tensor, parts: Tensor, objects: Tensor, allowed: Tensor) -> Tensor:
    """UPerNet's part loss: per pixel a softmax over the part classes of its ground-truth object.

    Only pixels whose ground-truth object owns part classes count (and whose part label is one its object may have);
    the NLL is averaged over each object's pixels and these per-object means are summed over the objects present, as
    in unifiedparsing's ``SegmentationModule``. Computed in at least float32, with no host synchronisation.

    Args:
        logits: [B, P, H, W] raw part logits.
        parts: [B, H, W] int64 part labels, -1 = ignore (images that do not label parts).
        objects: [B, H, W] int64 object labels, -1 = ignore.
        allowed: [O, P] bool from :func:`part_allowed`.
    Returns:
        Scalar loss; a graph-connected 0 when no pixel counts.
    """
    if logits.dim() != 4 or parts.shape != logits.shape[:1] + logits.shape[2:] or objects.shape != parts.shape:
        raise ValueError(f"owner_part_loss: logits [B, P, H, W] with parts and objects [B, H, W]; got "
                         f"{tuple(logits.shape)}, {tuple(parts.shape)}, {tuple(objects.shape)}")
    if allowed.dim() != 2 or allowed.shape[1] != logits.shape[1]:
        raise ValueError(f"owner_part_loss: allowed must be [O, {logits.shape[1]}]; got {tuple(allowed.shape)}")
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    allowed = allowed.to(z.device)
    universal = allowed.all(0)                                   # [P] classes every object may show ("none")
    owns_parts = (allowed & ~universal).any(1)                   # [O]
    y, o = parts.long().clamp_min(0), objects.long().clamp_min(0)
    mask = allowed[o].permute(0, 3, 1, 2)                        # [B, P, H, W]: the true object's classes
    valid = (parts >= 0) & (objects >= 0) & owns_parts[o] & mask.gather(1, y[:, None])[:, 0]   # [B, H, W]
    log_p = z.masked_fill(~mask, float("-inf")).log_softmax(1)
    nll = torch.where(valid, -log_p.gather(1, y[:, None])[:, 0], torch.zeros((), dtype=z.dtype, device=z.device))
    zeros = torch.zeros(allowed.shape[0], dtype=z.dtype, device=z.device)
    sums = zeros.index_add(0, o.flatten(), nll.flatten())       # per object: summed NLL and pixel count
    counts = zeros.index_add(0, o.flatten(), valid.flatten().to(z.dtype))
    return (sums / counts.clamp_min(1)).sum() + z.sum() * 0.0
