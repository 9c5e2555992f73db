"""Cross-stitch units (Misra et al., CVPR 2016): learnt linear mixing of the task branches' feature maps.

Branch ``t`` continues from ``y_t = sum_s alpha[t, s] * x_s``. Three forms of ``alpha`` (``mode=``, the same word
for ``segnet-cross-stitch`` and ``resnet-cross-stitch``): ``"channelwise"`` (the paper's, default: a T x T matrix
per channel, [T, T, C]), ``"scalar"`` ([T, T]) and ``"shared"`` (one mixture [T] shared by every target, initialised
to 1: the form of the MTAN authors' SegNet baseline). The paper initialises the same-task weight to 0.9 and spreads
0.1 over the others, and trains the units with a larger learning rate. ``targets`` makes a unit one-directional
(sources only feed the mixture: the sequential/transfer variant). Details: docs/models.md.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["CROSS_STITCH_MODES", "CrossStitchUnit"]

CROSS_STITCH_MODES = ("channelwise", "scalar", "shared")


class CrossStitchUnit(nn.Module):
    """Mix ``num_tasks`` feature maps of ``channels`` channels.

    Args:
        num_tasks: number of branches T (at least 2).
        channels: channels C of every branch's feature map at this point.
        mode: ``"channelwise"`` | ``"scalar"`` | ``"shared"`` (module docstring).
        same: initial weight of a branch's own features (channelwise/scalar).
        other: initial total weight of the other branches, spread evenly: ``other / (T - 1)`` each.
        shared_init: initial weight of every branch in the ``"shared"`` mode (1.0 as in the MTAN authors' code).
        targets: indices of the branches that continue from a mixture (default: all T); the others only feed it.
    Shapes: a sequence of T tensors [B,C,H,W] -> a list of T_out = len(targets) tensors [B,C,H,W].
    Parameters: T_out * T * C (channelwise), T_out * T (scalar), T (shared).
    """

    def __init__(
        self,
        num_tasks: int,
        channels: int,
        mode: str = "channelwise",
        same: float = 0.9,
        other: float = 0.1,
        shared_init: float = 1.0,
        targets: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if mode not in CROSS_STITCH_MODES:
            raise ValueError(f"unknown cross-stitch mode {mode!r}; valid modes: {', '.join(CROSS_STITCH_MODES)}")
        if num_tasks < 2:
            raise ValueError(f"a cross-stitch unit mixes at least 2 task branches, got num_tasks={num_tasks}")
        targets = tuple(range(num_tasks)) if targets is None else tuple(int(t) for t in targets)
        if not targets or len(set(targets)) != len(targets) or not all(0 <= t < num_tasks for t in targets):
            raise ValueError(f"cross-stitch targets must be distinct branch indices in [0, {num_tasks}); "
                             f"got {targets}")
        self.num_tasks, self.channels, self.mode, self.targets = num_tasks, channels, mode, targets
        if mode == "shared":
            weight = torch.full((num_tasks,), float(shared_init))
        else:
            pair = torch.full((num_tasks, num_tasks), other / (num_tasks - 1))
            pair.fill_diagonal_(same)
            pair = pair[list(targets)]  # [T_out, T]: row t is the mixture branch targets[t] continues from
            weight = pair if mode == "scalar" else pair[:, :, None].repeat(1, 1, channels)  # [T_out,T] / [T_out,T,C]
        self.weight = nn.Parameter(weight)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != self.num_tasks:
            raise ValueError(f"cross-stitch unit expects {self.num_tasks} feature maps, got {len(features)}")
        x = torch.stack(list(features))  # [S,B,C,H,W], S = source task
        if self.mode == "shared":
            mixed = torch.einsum("s,sbchw->bchw", self.weight, x)
            return [mixed] * len(self.targets)
        if self.mode == "scalar":
            y = torch.einsum("ts,sbchw->tbchw", self.weight, x)
        else:
            y = torch.einsum("tsc,sbchw->tbchw", self.weight, x)
        return list(y.unbind(0))

    @torch.no_grad()
    def alpha(self) -> torch.Tensor:
        """The mixing matrix [T_out, T] (target, source) for plots: channel mean in the channelwise mode, the one
        shared mixture repeated per target in the shared mode."""
        w = self.weight.detach()
        if self.mode == "shared":
            return w.expand(len(self.targets), -1).clone()
        return w.mean(dim=-1) if self.mode == "channelwise" else w.clone()

    def extra_repr(self) -> str:
        targets = "" if len(self.targets) == self.num_tasks else f", targets={self.targets}"
        return f"num_tasks={self.num_tasks}, channels={self.channels}, mode={self.mode!r}{targets}"
