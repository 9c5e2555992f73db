"""Reusable building blocks of the dense models: conv-BN-ReLU, ASPP, the DeepLabV3+ decoder, self-attention gates.

Conventions: every convolution that is followed by a normalisation has no bias (the norm's shift replaces it);
the last 1x1 convolution that produces task outputs has a bias. Shapes are written ``[B, C, H, W]``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ASPP_POOLING_NORMS", "conv_bn_relu", "ASPP", "DeepLabV3PlusDecoder", "DenseHead", "SelfAttentionGate",
           "upsample_to"]

#: Normalisations of ASPP's image-pooling branch: "group" (the kit's default, works at batch size 1) or "batch"
#: (the authors' form: torchvision / survey / LibMTL / DLAD; needs batch size >= 2 in training).
ASPP_POOLING_NORMS: tuple[str, ...] = ("group", "batch")


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> nn.Sequential:
    """``kernel_size`` conv (no bias, "same" padding, optional dilation) -> BatchNorm -> ReLU; keeps H, W."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def upsample_to(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of ``x`` [B,C,h,w] to ``size`` (H, W); no-op when already that size.

    ``align_corners=False`` is PyTorch's default and the kit's; some authors' code uses True (docs/fidelity.md).
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=bool(align_corners))


class _ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pool -> 1x1 conv -> norm -> ReLU -> broadcast to H x W.

    ``norm="group"`` (default): after pooling the map is 1x1, so BatchNorm in train mode normalises over the batch
    only and raises at batch size 1; GroupNorm (up to 32 groups, at least 2 channels each) normalises each image
    and behaves the same in train and eval mode. ``norm="batch"`` is the authors' form. Both have a scale and a shift
    per channel, so parameter counts do not depend on the choice.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "group") -> None:
        super().__init__()
        if norm not in ASPP_POOLING_NORMS:
            raise ValueError(f"unknown ASPP pooling norm {norm!r}; valid: {', '.join(ASPP_POOLING_NORMS)}")
        if out_channels < 2:
            raise ValueError(f"ASPP image pooling needs at least 2 channels to normalise; got {out_channels}")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        if norm == "group":
            self.norm = nn.GroupNorm(math.gcd(32, out_channels // 2), out_channels)
        else:
            self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, H, W] -> [B, C_out, H, W] (the same vector at every position)."""
        y = self.act(self.norm(self.conv(self.pool(x))))  # [B, C_out, 1, 1]
        return y.expand(-1, -1, *x.shape[-2:])  # bilinear upsampling of a 1x1 map is a broadcast


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (DeepLabV3).

    Five parallel branches over the encoder's last features -- a 1x1 conv, three 3x3 atrous convs (``rates``) and
    image pooling -- each conv-norm-ReLU, concatenated (5 * ``out_channels``) and projected by a 1x1 conv-BN-ReLU
    to ``out_channels``, optionally followed by dropout.

    Args:
        in_channels: channels of the encoder features (512 for ResNet-18/34, 2048 for ResNet-50).
        out_channels: width of every branch and of the output (256 in DeepLab).
        rates: dilation rates of the three 3x3 branches, e.g. (6, 12, 18) at output stride 16.
        dropout: dropout probability after the projection (0 disables it; the survey/LibMTL/torchvision heads
            use 0.5, the DLAD course none).
        pooling_norm: "group" (default) or "batch" (the authors' form), see :class:`_ImagePooling`.
    Shapes: [B, in_channels, H, W] -> [B, out_channels, H, W].
    """

    def __init__(self, in_channels: int, out_channels: int = 256, rates: Sequence[int] = (6, 12, 18),
                 dropout: float = 0.0, pooling_norm: str = "group") -> None:
        super().__init__()
        rates = tuple(int(r) for r in rates)
        if len(rates) != 3 or min(rates) < 1:
            raise ValueError(f"ASPP needs three positive dilation rates, e.g. (6, 12, 18); got {rates}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ASPP dropout must be in [0, 1); got {dropout}")
        self.rates = rates
        branches = [conv_bn_relu(in_channels, out_channels, 1)]
        branches += [conv_bn_relu(in_channels, out_channels, 3, dilation=r) for r in rates]
        branches.append(_ImagePooling(in_channels, out_channels, pooling_norm))
        self.branches = nn.ModuleList(branches)
        self.project = conv_bn_relu(len(branches) * out_channels, out_channels, 1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, H, W] -> [B, C_out, H, W]."""
        y = torch.cat([branch(x) for branch in self.branches], dim=1)  # [B, 5*C_out, H, W]
        return self.dropout(self.project(y))


class DenseHead(nn.Module):
    """``num_convs`` 3x3 conv-BN-ReLU at ``channels`` width, then a 1x1 conv (with bias) to ``out_channels``.

    Shapes: [B, in_channels, H, W] -> [B, out_channels, H, W] (no resizing).
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int = 256, num_convs: int = 2) -> None:
        super().__init__()
        convs = [conv_bn_relu(in_channels if i == 0 else channels, channels, 3) for i in range(num_convs)]
        self.convs = nn.Sequential(*convs)
        self.classifier = nn.Conv2d(channels if num_convs else in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.convs(x))


class DeepLabV3PlusDecoder(nn.Module):
    """DeepLabV3+ decoder: fuse the ASPP output with the encoder's stride-4 features, predict at 1/4.

    The ASPP output is bilinearly upsampled to the skip's size, concatenated with the skip projected to
    ``skip_channels`` (1x1 conv-BN-ReLU), fused by two 3x3 conv-BN-ReLU at ``channels`` width, and a 1x1 conv maps
    to ``out_channels``. :meth:`features` returns the fused features (used by task distillation), :meth:`forward`
    the predictions at the requested size (bilinear).

    Args:
        in_channels: channels of the ASPP output (256).
        skip_in_channels: channels of the stride-4 encoder features (64 for ResNet-18/34, 256 for ResNet-50).
        out_channels: output channels (sum over tasks for a joint decoder).
        skip_channels: width of the projected skip (48 in DeepLabV3+).
        channels: width of the fusion convs (256).
        use_skip: False drops the skip (ablation): the upsampled ASPP output alone is fused at 1/4, so the skip
            projection (``skip_in_channels * skip_channels`` + BN) and ``9 * skip_channels * channels`` weights of
            the first fusion conv disappear.
    """

    def __init__(self, in_channels: int, skip_in_channels: int, out_channels: int, skip_channels: int = 48,
                 channels: int = 256, use_skip: bool = True) -> None:
        super().__init__()
        self.use_skip = bool(use_skip)
        # without the skip (ablation) the decoder still works at 1/4, so only the skip's information is removed
        self.skip = conv_bn_relu(skip_in_channels, skip_channels, 1) if self.use_skip else None
        fused_in = in_channels + (skip_channels if self.use_skip else 0)
        self.fuse = nn.Sequential(conv_bn_relu(fused_in, channels, 3), conv_bn_relu(channels, channels, 3))
        self.classifier = nn.Conv2d(channels, out_channels, 1)

    def features(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """x [B, C_aspp, h, w], skip [B, C_skip, H/4, W/4] -> fused features [B, channels, H/4, W/4].

        With ``use_skip=False`` only the skip's size is used (the ASPP output is upsampled to it).
        """
        x = upsample_to(x, skip.shape[-2:])
        if self.skip is None:
            return self.fuse(x)
        return self.fuse(torch.cat([x, self.skip(skip)], dim=1))

    def forward(self, x: torch.Tensor, skip: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """Predictions [B, out_channels, *size] (at the skip's resolution when ``size`` is None)."""
        y = self.classifier(self.features(x, skip))
        return y if size is None else upsample_to(y, size)


class SelfAttentionGate(nn.Module):
    """Self-attention gate of task distillation: SA(x) = conv3x3(x) * sigmoid(conv3x3(x)) (two separate convs).

    The gate's conv starts at zero, so at initialisation every position passes half of the message
    (sigmoid(0) = 0.5): distillation starts as a plain scaled conv and learns where to look.

    Shapes: [B, in_channels, H, W] -> [B, out_channels, H, W].
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.message = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.gate = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        nn.init.zeros_(self.gate.weight)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The gate in (0, 1), [B, out_channels, H, W] (for attention-map figures)."""
        return torch.sigmoid(self.gate(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.message(x) * self.attention(x)
