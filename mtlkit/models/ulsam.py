"""ULSAM: Ultra-Lightweight Subspace Attention Module (Saini et al., WACV 2020).

The C channels are split into g groups; each group gets one spatial attention map (depthwise 1x1 conv -> BN ->
ReLU -> 3x3 max-pool -> pointwise 1x1 conv to 1 channel -> BN -> ReLU -> softmax over all H*W positions) and
``out_k = x_k * A_k + x_k``. Parameters: 5C + 3g. The g groups are computed at once (depthwise conv, grouped
pointwise conv, one g-channel BN), which is exactly the per-group computation. BatchNorm momentum is PyTorch's 0.1
(``bn_momentum``; the public file's 0.9 is a Keras-style value, docs/fidelity.md).
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ULSAM", "ulsam_parameters"]


def ulsam_parameters(channels: int, groups: int) -> int:
    """Parameters of :class:`ULSAM` with ``channels`` inputs and ``groups`` subspaces: 5C + 3g."""
    return 5 * channels + 3 * groups


class ULSAM(nn.Module):
    """Subspace attention over ``groups`` channel groups, residual form ``x * A + x``.

    Args:
        channels: C, input (= output) channels; must be divisible by ``groups``.
        groups: g, number of subspaces (one attention map each).
        bn_momentum: BatchNorm momentum in PyTorch's convention (0.1).
    Shapes: x [B, C, H, W] -> [B, C, H, W]. After each forward, ``last_attention`` holds the (detached) maps
    [B, g, H, W] (each sums to 1 over H*W) for plotting.
    """

    def __init__(self, channels: int, groups: int = 4, bn_momentum: float = 0.1) -> None:
        super().__init__()
        if channels < 1 or groups < 1 or channels % groups:
            raise ValueError(f"ULSAM needs channels divisible by groups (each group gets C/g channels); got "
                             f"channels={channels}, groups={groups}. Pick groups among the divisors of {channels}.")
        self.channels, self.groups = int(channels), int(groups)
        self.depthwise = nn.Conv2d(channels, channels, kernel_size=1, groups=channels)   # c weights + c biases / group
        self.bn_depthwise = nn.BatchNorm2d(channels, momentum=bn_momentum)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.pointwise = nn.Conv2d(channels, groups, kernel_size=1, groups=groups)       # group k: c -> 1 channel
        self.bn_pointwise = nn.BatchNorm2d(groups, momentum=bn_momentum)
        self.relu = nn.ReLU()
        self.last_attention: torch.Tensor | None = None

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention maps A [B, g, H, W] of ``x`` [B, C, H, W]; each map sums to 1 over its H*W positions."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"ULSAM({self.channels}, groups={self.groups}) expects [B, {self.channels}, H, W]; "
                             f"got {tuple(x.shape)}")
        a = self.relu(self.bn_depthwise(self.depthwise(x)))
        a = self.relu(self.bn_pointwise(self.pointwise(self.pool(a))))        # [B, g, H, W]
        b, g, h, w = a.shape
        return torch.softmax(a.reshape(b, g, h * w), dim=-1).reshape(b, g, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attention(x)
        self.last_attention = attn.detach()
        b, c, h, w = x.shape
        xg = x.reshape(b, self.groups, c // self.groups, h, w)                 # [B, g, C/g, H, W]
        out = xg * attn.unsqueeze(2) + xg                                       # broadcast A_k over its group
        return out.reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"
