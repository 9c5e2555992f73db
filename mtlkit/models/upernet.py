"""UPerNet for unified perceptual parsing (Xiao et al., ECCV 2018), with the course's ULSAM variants.

ResNet C2..C5 -> PPM on C5 (= P5) -> FPN (P2..P4) -> fusion of all levels at 1/4. Heads (3x3 conv-BN-ReLU + 1x1):
scene from P5 (pooled), object (semseg) and part from the fused map, material from P2, texture from the fused map
(pooled); other dense/image-level tasks get a head on the fused map; boxes are refused.

Parts per owning object (``part_owners``): training returns raw part logits for :func:`owner_part_loss` (a softmax
over the parts of the ground-truth object), inference the log-probabilities of the predicted object's parts
(:func:`gate_parts`). ``context_head=True`` feeds the object head's features into the material head.
``ulsam=`` "fused" (C(1)), "pairs" (C(2)) or "adjacent" (C(3)) puts :class:`~mtlkit.models.ulsam.ULSAM` on the
fused map or on merged level pairs. Loss weights of the public code: :data:`UPERNET_LOSS_WEIGHTS`.
The layout, the part gating and the ULSAM variants in full: docs/models.md; differences: docs/fidelity.md.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import timm
import torch
import torch.nn as nn

from . import OutputLayer, register_model
from .blocks import conv_bn_relu, upsample_to
from .encoders import IMAGENET_MEAN, IMAGENET_STD, PretrainedWeightsUnavailable, _is_download_error, check_encoder
from .ulsam import ULSAM
from ..losses import owner_part_loss, part_allowed  # the per-object part loss lives with the losses

__all__ = ["ULSAM_VARIANTS", "UPERNET_LOSS_WEIGHTS", "PART_OWNER_GROUPS", "PART_GATE_FLOOR", "ResNetPyramid",
           "PyramidPooling", "FPN", "UPerFusion", "DenseHead", "ImageHead", "UPerNet", "broden_part_owners",
           "part_allowed", "owner_part_loss", "gate_parts"]

#: Values of ``ulsam=`` (None = plain UPerNet).
ULSAM_VARIANTS: tuple[str, ...] = ("fused", "pairs", "adjacent")
#: Task loss weights of unifiedparsing's ``SegmentationModule`` (object = semseg, part = parts), plus texture 1.
UPERNET_LOSS_WEIGHTS: dict[str, float] = {"semseg": 1.0, "parts": 0.5, "scene": 0.25, "material": 1.0,
                                          "texture": 1.0}
#: Owner names of part classes that stand for several object classes (as in the synthetic Broden-like data).
PART_OWNER_GROUPS: dict[str, tuple[str, ...]] = {"creature": ("cat", "dog", "person", "rider"),
                                                 "car": ("car", "truck", "bus", "train")}
#: Probability mass spread over all part classes at inference (:func:`gate_parts`), so that the parts of objects
#: other than the predicted one get log(eps / P) instead of -inf.
PART_GATE_FLOOR = 1e-6


# ---------------------------------------------------------------------------------------------------- encoder
class ResNetPyramid(nn.Module):
    """A timm ResNet (``features_only``, no dilation) returning the feature maps of ``out_indices``.

    timm's indices: 0 = stem after conv1-BN-ReLU (stride 2, 64 ch), 1..4 = layer1..layer4 (strides 4..32), i.e.
    C2..C5 are ``(1, 2, 3, 4)``. Images arrive in [0, 1]; the ImageNet normalisation is done here (buffers).

    Args:
        name: one of :data:`mtlkit.models.encoders.ENCODERS`.
        out_indices: which levels to return, in increasing stride.
        pretrained: timm's ImageNet weights (downloads through the HF hub unless cached).
    Attributes: ``channels`` and ``reductions`` (strides) of the returned levels.
    Shapes: [B, 3, H, W] -> list of [B, channels[i], H / reductions[i], W / reductions[i]] (rounded up).
    """

    def __init__(self, name: str = "resnet50", out_indices: Sequence[int] = (1, 2, 3, 4), pretrained: bool = False,
                 normalize_input: bool = True) -> None:
        super().__init__()
        name = check_encoder(name)
        try:
            self.body = timm.create_model(name, pretrained=pretrained, features_only=True,
                                          out_indices=tuple(out_indices))
        except Exception as err:
            if pretrained and _is_download_error(err):
                raise PretrainedWeightsUnavailable(
                    f"could not download ImageNet weights for encoder {name!r} through timm "
                    f"({type(err).__name__}: {str(err)[:200]}). Build the model with pretrained=False, or copy a "
                    "Hugging Face cache that holds them (~/.cache/huggingface or $HF_HOME) to this machine."
                ) from err
            raise
        self.name = name
        self.channels: tuple[int, ...] = tuple(self.body.feature_info.channels())
        self.reductions: tuple[int, ...] = tuple(self.body.feature_info.reduction())
        self.normalize_input = normalize_input
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W]; got shape {tuple(images.shape)}")
        if self.normalize_input:
            images = (images - self.mean) / self.std
        return list(self.body(images))


# ------------------------------------------------------------------------------------------------ PPM and FPN
class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling on C5, ending in a 3x3 conv-BN-ReLU to ``out_channels`` (UPerNet's P5).

    Shapes: [B, C_in, h, w] -> [B, out_channels, h, w].
    """

    def __init__(self, in_channels: int, out_channels: int, branch_channels: int = 512,
                 scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.pools = nn.ModuleList(nn.AdaptiveAvgPool2d(s) for s in scales)
        self.branches = nn.ModuleList(conv_bn_relu(in_channels, branch_channels, 1) for _ in scales)
        self.project = conv_bn_relu(in_channels + len(scales) * branch_channels, out_channels, 3)

    def forward(self, c5: torch.Tensor) -> torch.Tensor:
        size = c5.shape[-2:]
        feats = [c5] + [conv(upsample_to(pool(c5), size)) for pool, conv in zip(self.pools, self.branches)]
        return self.project(torch.cat(feats, dim=1))


class FPN(nn.Module):
    """Laterals (1x1 conv-BN-ReLU to F) and the top-down path (upsample + add, then 3x3 conv-BN-ReLU) for C2..C4.

    Shapes: ([C2, C3, C4], P5 [B, F, h5, w5]) -> [P2, P3, P4, P5], each [B, F, h_i, w_i].
    """

    def __init__(self, in_channels: Sequence[int], channels: int) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in in_channels)
        self.outputs = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in in_channels)

    def forward(self, feats: Sequence[torch.Tensor], p5: torch.Tensor) -> list[torch.Tensor]:
        top, levels = p5, [p5]
        for i in reversed(range(len(feats))):
            lateral = self.laterals[i](feats[i])
            top = lateral + upsample_to(top, lateral.shape[-2:])
            levels.insert(0, self.outputs[i](top))
        return levels


class UPerFusion(nn.Module):
    """The map at 1/4 that the object/part/texture heads read, for every ``ulsam`` variant (see the module doc).

    Shapes: [P2, P3, P4, P5] ([B, F, h_i, w_i]) -> [B, F, h2, w2].
    """

    def __init__(self, channels: int, num_levels: int = 4, ulsam: str | None = None, groups: int = 4,
                 bn_momentum: float = 0.1) -> None:
        super().__init__()
        if ulsam is not None and ulsam not in ULSAM_VARIANTS:
            raise ValueError(f"unknown ulsam variant {ulsam!r}; valid choices: None, "
                             + ", ".join(repr(v) for v in ULSAM_VARIANTS))
        self.variant = ulsam
        # (finer, coarser) level pairs merged before attention: C(2) P2+P5, P4+P5; C(3) adjacent levels
        self.pairs: tuple[tuple[int, int], ...] = {
            None: (), "fused": (),
            "pairs": ((0, num_levels - 1), (num_levels - 2, num_levels - 1)),
            "adjacent": tuple((i, i + 1) for i in range(num_levels - 1)),
        }[ulsam]
        n_maps = len(self.pairs) if self.pairs else num_levels
        self.conv = conv_bn_relu(n_maps * channels, channels, 3)
        if ulsam == "fused":
            self.attention = nn.ModuleList([ULSAM(channels, groups, bn_momentum)])
        elif ulsam is not None:
            self.attention = nn.ModuleList(ULSAM(channels, groups, bn_momentum) for _ in self.pairs)
        else:
            self.attention = nn.ModuleList()

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        size = levels[0].shape[-2:]
        if not self.pairs:  # UPerNet: concat all levels at 1/4 (C(1) then attends the fused map)
            fused = self.conv(torch.cat([upsample_to(p, size) for p in levels], dim=1))
            return self.attention[0](fused) if self.variant == "fused" else fused
        maps = []
        for (fine, coarse), attn in zip(self.pairs, self.attention):
            merged = levels[fine] + upsample_to(levels[coarse], levels[fine].shape[-2:])
            maps.append(upsample_to(attn(merged), size))
        return self.conv(torch.cat(maps, dim=1))


# -------------------------------------------------------------------------------------------------------- heads
class DenseHead(nn.Module):
    """3x3 conv-BN-ReLU (``mid``) then 1x1 conv with bias; ``features`` exposes the pre-classifier map.

    Shapes: [B, C_in, h, w] -> [B, out, h, w].
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.features = conv_bn_relu(in_channels, mid_channels, 3)
        self.classifier = nn.Conv2d(mid_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ImageHead(nn.Module):
    """3x3 conv-BN-ReLU, global average pool, 1x1 conv with bias (UPerNet's scene head). [B, C, h, w] -> [B, out]."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.features = conv_bn_relu(in_channels, mid_channels, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Conv2d(mid_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x))).flatten(1)


def broden_part_owners(object_names: Sequence[str], part_names: Sequence[str],
                       groups: Mapping[str, Sequence[str]] = PART_OWNER_GROUPS) -> list[tuple[int, ...]]:
    """For each part class named "<owner> <part>", the indices of the object classes that own it.

    ``owner`` is the longest object class name, or group of :data:`PART_OWNER_GROUPS` ("creature": cat, dog,
    person, rider) with a member among the object classes, that the part name starts with, followed by a space:
    owners may be several words ("chest of drawers drawer" -> "chest of drawers", not "chest"). A group name stands
    for its members even where it is also an object class ("car"). Part classes without a space ("none",
    "background") have no owner: ``()``. Data that lists each part's owner (Broden+: ``task_info["parts"]
    ["owners"]``) does not need this rule (:func:`mtlkit.course.broden.part_owners_for`).

    Raises:
        ValueError: a part name with a space that no object class or group starts.
    """
    index = {n: i for i, n in enumerate(object_names)}
    resolve = {n: (i,) for n, i in index.items()}
    for group, members in groups.items():
        found = tuple(index[m] for m in members if m in index)
        if found:
            resolve[group] = found
    owners: list[tuple[int, ...]] = []
    for name in part_names:
        if " " not in name:
            owners.append(())
            continue
        candidates = [o for o in resolve if name.startswith(o + " ")]
        if not candidates:
            raise ValueError(f"part class {name!r}: no object class nor group of {sorted(groups)} starts its name; "
                             f"object classes: {', '.join(object_names)}")
        owners.append(resolve[max(candidates, key=len)])
    return owners


def gate_parts(part_logits: torch.Tensor, object_logits: torch.Tensor, allowed: torch.Tensor,
               floor: float = PART_GATE_FLOOR) -> torch.Tensor:
    """Inference: log-probabilities of the part classes of each pixel's predicted object.

    ``log((1 - floor) * softmax_{c in allowed[o_hat]}(z)_c + floor / P)`` with ``o_hat`` the argmax of the object
    logits at the pixel; in at least float32 (float64 stays float64).

    Shapes: part_logits [B, P, H, W], object_logits [B, O, H, W], allowed [O, P] bool -> [B, P, H, W].
    """
    dtype = torch.promote_types(part_logits.dtype, torch.float32)
    mask = allowed.to(part_logits.device)[object_logits.argmax(1)].permute(0, 3, 1, 2)   # [B, P, H, W]
    log_p = part_logits.to(dtype).masked_fill(~mask, float("-inf")).log_softmax(1)
    spread = torch.full_like(log_p, math.log(floor / part_logits.shape[1]))
    return torch.logaddexp(log_p + math.log1p(-floor), spread)


# -------------------------------------------------------------------------------------------------------- model
def _check_tasks(tasks: Mapping[str, int]) -> dict[str, str]:
    from mtlkit.tasks import TASK_KINDS

    kinds = {}
    for task, channels in tasks.items():
        if task not in TASK_KINDS:
            raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASK_KINDS)}")
        if TASK_KINDS[task] not in ("dense", "image"):
            valid = ", ".join(t for t, k in TASK_KINDS.items() if k in ("dense", "image"))
            raise ValueError(f"upernet predicts dense and image-level tasks; {task!r} is a {TASK_KINDS[task]} task. "
                             f"Valid tasks: {valid}")
        if int(channels) < 1:
            raise ValueError(f"task {task!r} needs at least one output channel; got {channels}")
        kinds[task] = TASK_KINDS[task]
    return kinds


class UPerNet(nn.Module):
    """UPerNet with heads for the kit's tasks (see the module docstring for the layout and options).

    Args:
        tasks: task name -> output channels (scene, semseg (object), parts, material, texture, or any dense /
            image-level task).
        encoder: ResNet name (:data:`~mtlkit.models.encoders.ENCODERS`); pretrained: ImageNet weights.
        fpn_channels: F, width of PPM output, FPN, fusion and heads (512 in the public code).
        ppm_channels: width of each PPM branch (512 in the public code).
        pool_scales: PPM pooling grid sizes.
        context_head: feed the object head's pre-classifier features into the material head.
        ulsam: None, "fused", "pairs" or "adjacent"; ulsam_groups: g of every ULSAM.
        ulsam_bn_momentum: BatchNorm momentum of every ULSAM (PyTorch's 0.1; docs/fidelity.md).
        part_owners: per part class, the object classes owning it. In eval mode the parts are then read from each
            pixel's predicted object (:func:`gate_parts`); training mode returns the raw part logits, to be
            trained with :func:`owner_part_loss`.
    Shapes: images [B, 3, H, W] -> dense [B, C_t, H, W], image-level [B, C_t]; in eval mode with ``part_owners``,
    ``parts`` are log-probabilities (at least float32) instead of logits.
    """

    def __init__(self, tasks: Mapping[str, int], encoder: str = "resnet50", pretrained: bool = False,
                 fpn_channels: int = 512, ppm_channels: int = 512, pool_scales: Sequence[int] = (1, 2, 3, 6),
                 context_head: bool = False, ulsam: str | None = None, ulsam_groups: int = 4,
                 ulsam_bn_momentum: float = 0.1, part_owners: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        self.kinds = _check_tasks(tasks)
        self.tasks = tuple(tasks)
        if ulsam is not None and ulsam not in ULSAM_VARIANTS:
            raise ValueError(f"unknown ulsam variant {ulsam!r}; valid choices: None, "
                             + ", ".join(repr(v) for v in ULSAM_VARIANTS))
        if ulsam is not None and fpn_channels % ulsam_groups:
            raise ValueError(f"ULSAM splits fpn_channels={fpn_channels} into ulsam_groups={ulsam_groups} groups: "
                             "choose fpn_channels divisible by ulsam_groups")
        if context_head and not {"semseg", "material"} <= set(tasks):
            raise ValueError("context_head=True feeds the object (semseg) head's features into the material head: "
                             f"both 'semseg' and 'material' must be tasks; got {list(tasks)}")
        self.context_head, self.ulsam = bool(context_head), ulsam
        F_ = int(fpn_channels)

        self.encoder = ResNetPyramid(encoder, (1, 2, 3, 4), pretrained=pretrained)   # C2..C5
        c2, c3, c4, c5 = self.encoder.channels
        self.ppm = PyramidPooling(c5, F_, ppm_channels, pool_scales)
        self.fpn = FPN((c2, c3, c4), F_)
        self.fusion = UPerFusion(F_, 4, ulsam, ulsam_groups, ulsam_bn_momentum)

        heads: dict[str, nn.Module] = {}
        for task, channels in tasks.items():
            if self.kinds[task] == "image":
                heads[task] = ImageHead(F_, F_, channels)
            elif task == "material" and context_head:
                heads[task] = DenseHead(2 * F_, F_, channels)
            else:
                heads[task] = DenseHead(F_, F_, channels)
        self.heads = nn.ModuleDict(heads)

        self.part_owners: tuple[tuple[int, ...], ...] | None = None
        if part_owners is not None:
            if "parts" not in tasks or "semseg" not in tasks:
                raise ValueError("part_owners gates the part logits by the object (semseg) head: both 'parts' and "
                                 f"'semseg' must be tasks; got {list(tasks)}")
            n_parts, n_objects = tasks["parts"], tasks["semseg"]
            if len(part_owners) != n_parts:
                raise ValueError(f"part_owners has {len(part_owners)} entries; it needs one per part class "
                                 f"({n_parts})")
            self.part_owners = tuple(tuple(int(o) for o in owners) for owners in part_owners)
            # [O, P], derived from the arguments: not part of the state_dict
            self.register_buffer("part_allowed", part_allowed(self.part_owners, n_objects), persistent=False)
        else:
            self.part_allowed = None

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        size = images.shape[-2:]
        c2, c3, c4, c5 = self.encoder(images)
        p5 = self.ppm(c5)                                               # [B, F, H/32, W/32]
        levels = self.fpn((c2, c3, c4), p5)                             # P2..P5
        fused = self.fusion(levels)                                     # [B, F, H/4, W/4]
        material_in = fused if self.ulsam == "fused" else levels[0]

        out: dict[str, torch.Tensor] = {}
        object_features = None
        if "semseg" in self.heads:
            object_features = self.heads["semseg"].features(fused)
        for task, head in self.heads.items():
            if task == "scene":
                out[task] = head(p5)
            elif self.kinds[task] == "image":
                out[task] = head(fused)
            elif task == "semseg":
                out[task] = head.classifier(object_features)
            elif task == "material":
                x = torch.cat([material_in, object_features], dim=1) if self.context_head else material_in
                out[task] = head(x)
            else:
                out[task] = head(fused)
        out = {t: (upsample_to(v, size) if self.kinds[t] == "dense" else v) for t, v in out.items()}
        if self.part_allowed is not None and not self.training:  # inference: the predicted object's parts only
            out["parts"] = gate_parts(out["parts"], out["semseg"], self.part_allowed)
        return out

    def output_layer(self, task: str) -> OutputLayer:
        """The 1x1 classifier of ``task``'s head (in eval mode with ``part_owners`` the parts are gated after it)."""
        return OutputLayer(self.heads[task].classifier, slice(None))

    def attention_maps(self) -> list[torch.Tensor]:
        """The last forward's ULSAM maps, one [B, g, h, w] tensor per ULSAM (empty without ``ulsam``)."""
        return [m.last_attention for m in self.fusion.attention if m.last_attention is not None]


#: Small widths of the smoke configuration (the benchmarks' smoke rows).
SMOKE_OPTIONS: dict[str, object] = dict(encoder="resnet18", fpn_channels=64, ppm_channels=64)


@register_model("upernet", smoke=SMOKE_OPTIONS,
                smoke_tasks={"scene": 3, "semseg": 4, "parts": 5, "material": 3, "texture": 3})
def upernet(tasks: dict[str, int], **options) -> UPerNet:
    """UPerNet (options: encoder, fpn_channels, ppm_channels, context_head, ulsam, ulsam_groups, part_owners)."""
    return UPerNet(tasks, **options)
