"""The SegNet family of the MTAN paper (Liu, Johns & Davison, CVPR 2019), after the authors' lorenmt/mtan code.

A VGG-16-style SegNet (widths 64-128-256-512-512, max-pool indices and unpooling) with heads 3x3 conv -> 1x1 conv,
and the paper's members built from it: ``segnet-single``, ``segnet-stan``, ``segnet-split`` (standard / wide /
deep), ``segnet-dense``, ``segnet-cross-stitch`` and ``segnet-mtan``. Parameter counts with 13-class semseg + depth
+ normals (one-task SegNet 24,981,069; MTAN 44,229,073 = 1.77x) are pinned in tests/test_segnet.py.

Kit conventions: semseg/parts/material are logits (the loss applies log-softmax), normals are L2-normalised in the
model as in MTAN, no ``logsigma`` parameter (Uncertainty weighting lives in ``mtlkit.weighting``), ``width_mult``
scales every width for the CPU presets, and any input size works (unpooling to the exact pre-pooling size).
The table of counts and every difference from the public code: docs/models.md and docs/fidelity.md.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import OutputLayer, register_model
from .cross_stitch import CROSS_STITCH_MODES, CrossStitchUnit

__all__ = [
    "SEGNET_WIDTHS", "SPLIT_VARIANTS", "SegNet", "SegNetMTAN", "SegNetDense", "SegNetCrossStitch",
    "segnet_widths",
]

SEGNET_WIDTHS = (64, 128, 256, 512, 512)
_WIDE_WIDTHS = (64, 128, 256, 512, 1024)  # Split-wide: the last stage doubled
SPLIT_VARIANTS = ("standard", "wide", "deep")
_NUM_STAGES = 5


# --------------------------------------------------------------------------------------------------- building blocks
def segnet_widths(width_mult: float = 1.0, widths: Sequence[int] = SEGNET_WIDTHS) -> tuple[int, ...]:
    """Stage widths scaled by ``width_mult`` (rounded, at least 1 channel)."""
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0 (1.0 = the paper's widths), got {width_mult}")
    return tuple(max(1, int(round(c * width_mult))) for c in widths)


def conv_bn_relu(cin: int, cout: int, repeats: int = 1) -> nn.Sequential:
    """3x3 conv (bias) + BN + ReLU; ``repeats=2`` is Split-deep's doubled layer (cin->cout, then cout->cout)."""
    layers: list[nn.Module] = []
    for r in range(repeats):
        layers += [nn.Conv2d(cin if r == 0 else cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class ConvStage(nn.Module):
    """A chain of conv-BN-ReLU layers through ``channels`` = [c_in, c_1, ..., c_n], split as ``first`` + ``rest``.

    MTAN's attention reads the output of the first conv of every stage, so it is kept separately.
    Shapes: [B,c_in,H,W] -> (first [B,c_1,H,W], out [B,c_n,H,W]).
    """

    def __init__(self, channels: Sequence[int], repeats: int = 1) -> None:
        super().__init__()
        if len(channels) < 3:
            raise ValueError(f"a SegNet stage has at least two convs, got channels={list(channels)}")
        self.first = conv_bn_relu(channels[0], channels[1], repeats)
        self.rest = nn.Sequential(*(conv_bn_relu(a, b, repeats) for a, b in zip(channels[1:-1], channels[2:])))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = self.first(x)
        return first, self.rest(first)


def _depth(stage: int) -> int:
    """Number of convs in a SegNet stage: two in stages 0-1, three in stages 2-4."""
    return 2 if stage < 2 else 3


def encoder_channels(widths: Sequence[int], stage: int, in_channels: int) -> list[int]:
    """Channel list of encoder ``stage`` whose input has ``in_channels`` channels."""
    return [in_channels] + [widths[stage]] * _depth(stage)


def decoder_channels(widths: Sequence[int], stage: int, in_channels: int) -> list[int]:
    """Channel list of decoder ``stage`` (mirror of encoder ``stage``: width_i -> width_{i-1}; 64 -> 64 for stage 0)."""
    return [in_channels] + [widths[max(stage - 1, 0)]] * _depth(stage)


def prediction_head(cin: int, cout: int) -> nn.Sequential:
    """MTAN's head: 3x3 conv (bias, no BN) -> 1x1 conv to the task's channels. [B,cin,H,W] -> [B,cout,H,W]."""
    return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1), nn.Conv2d(cin, cout, 1))


def attention_block(cin: int, cmid: int, cout: int) -> nn.Sequential:
    """MTAN attention: 1x1 conv-BN-ReLU -> 1x1 conv-BN-Sigmoid, a soft mask in (0, 1). [B,cin,..] -> [B,cout,..]."""
    return nn.Sequential(
        nn.Conv2d(cin, cmid, 1), nn.BatchNorm2d(cmid), nn.ReLU(inplace=True),
        nn.Conv2d(cmid, cout, 1), nn.BatchNorm2d(cout), nn.Sigmoid(),
    )


def pool(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2x2 max-pool keeping the indices for unpooling. [B,C,H,W] -> [B,C,H//2,W//2] (x2)."""
    return F.max_pool2d(x, kernel_size=2, stride=2, return_indices=True)


def unpool(x: torch.Tensor, indices: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Max-unpool to the pre-pooling spatial ``size`` (exact also for odd sizes)."""
    return F.max_unpool2d(x, indices, kernel_size=2, stride=2, output_size=size[-2:])


def init_weights(module: nn.Module, uniform: bool = False) -> None:
    """The authors' initialisation: Xavier convs (normal; uniform for Dense/Cross-stitch), zero biases, BN 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            (nn.init.xavier_uniform_ if uniform else nn.init.xavier_normal_)(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_dense_tasks(tasks: Mapping[str, int]) -> None:
    """SegNets predict dense maps only: reject unknown and image-level/box tasks with a clear message."""
    from mtlkit.tasks import TASK_KINDS

    for task, channels in tasks.items():
        if task not in TASK_KINDS:
            raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASK_KINDS)}")
        if TASK_KINDS[task] != "dense":
            dense = [t for t, k in TASK_KINDS.items() if k == "dense"]
            raise ValueError(
                f"SegNet models predict dense tasks only, {task!r} is {TASK_KINDS[task]}-level; "
                f"valid tasks: {', '.join(dense)} (use 'tiny' or a ResNet model for image-level tasks)"
            )
        if channels < 1:
            raise ValueError(f"task {task!r} needs at least 1 output channel, got {channels}")


def _check_num_tasks(name: str, tasks: Mapping[str, int], exactly: int | None = None, at_least: int = 1) -> None:
    n = len(tasks)
    if exactly is not None and n != exactly:
        raise ValueError(f"{name} is a single-task network: give exactly one task, got {list(tasks)} "
                         f"(use segnet-split / segnet-mtan for several tasks)")
    if n < at_least:
        raise ValueError(f"{name} needs at least {at_least} tasks, got {list(tasks)} (use segnet-single for one)")


def _finish(task: str, pred: torch.Tensor) -> torch.Tensor:
    """Normals are L2-normalised in the model (as in MTAN); every other output is returned raw (logits)."""
    return F.normalize(pred, p=2, dim=1) if task == "normals" else pred


# ------------------------------------------------------------------------------------------ encoder and decoder
@dataclass
class EncoderFeatures:
    """Everything the SegNet encoder computes, per stage i = 0..4 (H_i = H / 2**i).

    first[i]: [B,w_i,H_i,W_i] after the stage's first conv; out[i]: [B,w_i,H_i,W_i] stage output before pooling;
    pooled[i]: [B,w_i,H_{i+1},W_{i+1}]; indices[i]: pooling indices (same shape as pooled[i]).
    """

    first: list[torch.Tensor]
    out: list[torch.Tensor]
    pooled: list[torch.Tensor]
    indices: list[torch.Tensor]


class SegNetEncoder(nn.Module):
    """Five conv stages, each followed by a 2x2 max-pool with indices. [B,3,H,W] -> :class:`EncoderFeatures`."""

    def __init__(self, widths: Sequence[int] = SEGNET_WIDTHS, in_channels: int = 3, repeats: int = 1) -> None:
        super().__init__()
        ins = [in_channels, *widths[:-1]]
        self.stages = nn.ModuleList(
            ConvStage(encoder_channels(widths, i, ins[i]), repeats) for i in range(_NUM_STAGES)
        )

    def forward(self, x: torch.Tensor) -> EncoderFeatures:
        feats = EncoderFeatures([], [], [], [])
        for stage in self.stages:
            first, out = stage(x)
            x, idx = pool(out)
            feats.first.append(first)
            feats.out.append(out)
            feats.pooled.append(x)
            feats.indices.append(idx)
        return feats


class SegNetDecoder(nn.Module):
    """Mirror of the encoder: per stage i = 4..0, unpool with stage i's indices then convs width_i -> width_{i-1}.

    ``stages`` holds the conv stages by stage number. With ``num_stages < 5`` only stages 4..5-num_stages have
    convs; the remaining steps only unpool (Dense's shared decoder: its branches read the unpooled maps).
    forward returns (up, out), lists over the decoding steps k = 0..4 (stage i = 4 - k):
    up[k] [B,w_i,H_i,W_i] (the unpooled input of stage i), out[k] [B,w_{i-1},H_i,W_i] (its output).
    """

    def __init__(self, widths: Sequence[int] = SEGNET_WIDTHS, repeats: int = 1, num_stages: int = _NUM_STAGES) -> None:
        super().__init__()
        self.first_stage = _NUM_STAGES - num_stages
        self.stages = nn.ModuleList(
            ConvStage(decoder_channels(widths, i, widths[i]), repeats) for i in range(self.first_stage, _NUM_STAGES)
        )

    def forward(self, enc: EncoderFeatures) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        x, ups, outs = enc.pooled[-1], [], []
        for i in reversed(range(_NUM_STAGES)):
            x = unpool(x, enc.indices[i], enc.out[i].shape)
            ups.append(x)
            if i >= self.first_stage:
                x = self.stages[i - self.first_stage](x)[1]
                outs.append(x)
        return ups, outs


class SegNetBranch(nn.Module):
    """One task's own encoder + decoder (the cross-stitch network's branches; same layout as :class:`SegNet`)."""

    def __init__(self, widths: Sequence[int], in_channels: int = 3) -> None:
        super().__init__()
        self.encoder = SegNetEncoder(widths, in_channels)
        self.decoder = SegNetDecoder(widths)


class _TaskHeads:
    """``output_layer(task)``: the 1x1 conv of ``task``'s head (:func:`prediction_head`), shared by the family."""

    heads: nn.ModuleDict

    def output_layer(self, task: str) -> OutputLayer:
        """The 1x1 conv of ``task``'s head (normals are L2-normalised after it, so their read-out is not linear)."""
        return OutputLayer(self.heads[task][1], slice(None))


# ------------------------------------------------------------------------------------------------------ models
class SegNet(_TaskHeads, nn.Module):
    """Shared SegNet encoder-decoder + one head per task: one-task SegNet and MTAN's "Split" baselines.

    Args:
        tasks: task name -> output channels (dense tasks).
        variant: ``"standard"`` (SegNet widths), ``"wide"`` (last stage 1024 channels) or ``"deep"`` (every conv
            layer doubled: conv-BN-ReLU twice).
        width_mult: scales every width (1.0 = the paper's model).
        in_channels: image channels.
    Components: ``encoder``, ``decoder`` (shared), ``heads`` (per task).
    Shapes: [B,3,H,W] -> {task: [B,C_t,H,W]}.
    """

    def __init__(
        self, tasks: Mapping[str, int], variant: str = "standard", width_mult: float = 1.0, in_channels: int = 3
    ) -> None:
        super().__init__()
        if variant not in SPLIT_VARIANTS:
            raise ValueError(f"unknown SegNet split variant {variant!r}; valid variants: {', '.join(SPLIT_VARIANTS)}")
        check_dense_tasks(tasks)
        self.tasks = tuple(tasks)
        self.variant = variant
        self.widths = segnet_widths(width_mult, _WIDE_WIDTHS if variant == "wide" else SEGNET_WIDTHS)
        repeats = 2 if variant == "deep" else 1
        self.encoder = SegNetEncoder(self.widths, in_channels, repeats)
        self.decoder = SegNetDecoder(self.widths, repeats)
        self.heads = nn.ModuleDict({t: prediction_head(self.widths[0], c) for t, c in tasks.items()})
        init_weights(self)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        _, outs = self.decoder(self.encoder(images))
        feat = outs[-1]  # [B,w_0,H,W]
        return {t: _finish(t, self.heads[t](feat)) for t in self.tasks}


class TaskAttention(nn.Module):
    """One task's MTAN attention modules: ``encoder[i]`` and ``decoder[i]`` for stage i = 0..4.

    encoder[i] reads [first conv of shared encoder stage i, the task's features from stage i-1] (stage 0: the
    first conv only); decoder[i] reads [shared unpooled input of decoder stage i, the task's upsampled features].
    """

    def __init__(self, widths: Sequence[int], decoder_conv_out: Sequence[int]) -> None:
        super().__init__()
        w = widths
        self.encoder = nn.ModuleList(
            attention_block(w[i] if i == 0 else 2 * w[i], w[i], w[i]) for i in range(_NUM_STAGES)
        )
        low = [w[max(i - 1, 0)] for i in range(_NUM_STAGES)]  # output width of decoder stage i
        self.decoder = nn.ModuleList(
            attention_block(w[i] + decoder_conv_out[i], low[i], low[i]) for i in range(_NUM_STAGES)
        )


class AttentionConvs(nn.Module):
    """MTAN's task-shared 3x3 convs (conv-BN-ReLU) applied to every task's attended features.

    encoder[i]: width_i -> width_{i+1} (stage 4: width_4 -> width_4), before the task's 2x2 max-pool;
    decoder[i]: width_i -> width_{i-1} (stage 0: width_0 -> width_0; stage 4: width_4 -> width_4), after the
    task's bilinear upsampling, before the decoder attention of stage i.
    """

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        w, last = widths, _NUM_STAGES - 1
        self.encoder = nn.ModuleList(conv_bn_relu(w[i], w[min(i + 1, last)]) for i in range(_NUM_STAGES))
        self.decoder_out = [w[0]] + [w[i - 1] for i in range(1, last)] + [w[last]]
        self.decoder = nn.ModuleList(conv_bn_relu(w[i], self.decoder_out[i]) for i in range(_NUM_STAGES))


class SegNetMTAN(_TaskHeads, nn.Module):
    """Multi-Task Attention Network on SegNet (and, with one task, the single-task attention network STAN).

    The shared SegNet runs as usual; each task then builds its own features stage by stage: a soft mask from its
    attention module multiplies the shared block output (mask ⊙ shared features), followed by a task-shared 3x3
    conv (then a 2x2 max-pool in the encoder; in the decoder, bilinear upsampling precedes the conv).

    Args:
        tasks: task name -> output channels (dense tasks).
        width_mult: scales every width (1.0 = the paper's model).
        in_channels: image channels.
    Components: ``encoder``, ``decoder`` (shared SegNet), ``attention_convs`` (shared), ``attention`` and ``heads``
    (per task).
    Shapes: [B,3,H,W] -> {task: [B,C_t,H,W]}.
    """

    def __init__(self, tasks: Mapping[str, int], width_mult: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        check_dense_tasks(tasks)
        self.tasks = tuple(tasks)
        self.widths = w = segnet_widths(width_mult)
        self.encoder = SegNetEncoder(w, in_channels)
        self.decoder = SegNetDecoder(w)
        self.attention_convs = AttentionConvs(w)
        self.attention = nn.ModuleDict({t: TaskAttention(w, self.attention_convs.decoder_out) for t in tasks})
        self.heads = nn.ModuleDict({t: prediction_head(w[0], c) for t, c in tasks.items()})
        init_weights(self)

    def task_features(self, task: str, enc: EncoderFeatures, ups: list[torch.Tensor],
                      outs: list[torch.Tensor]) -> torch.Tensor:
        """The attended features [B,w_0,H,W] of ``task`` from the shared encoder/decoder features."""
        att, convs = self.attention[task], self.attention_convs
        x = None
        for i in range(_NUM_STAGES):
            inp = enc.first[i] if i == 0 else torch.cat([enc.first[i], x], dim=1)
            x = att.encoder[i](inp) * enc.out[i]  # mask ⊙ shared stage output, [B,w_i,H_i,W_i]
            x = F.max_pool2d(convs.encoder[i](x), kernel_size=2, stride=2)
        for k, i in enumerate(reversed(range(_NUM_STAGES))):
            x = F.interpolate(x, size=ups[k].shape[-2:], mode="bilinear", align_corners=True)
            x = convs.decoder[i](x)
            x = att.decoder[i](torch.cat([ups[k], x], dim=1)) * outs[k]  # [B,w_{i-1},H_i,W_i]
        return x

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        enc = self.encoder(images)
        ups, outs = self.decoder(enc)
        return {t: _finish(t, self.heads[t](self.task_features(t, enc, ups, outs))) for t in self.tasks}


class DenseBranch(nn.Module):
    """A task's own SegNet in the Dense baseline: every stage also reads the shared network's matching map.

    Encoder stage i > 0 reads [task pooled map, shared pooled map] (2 x width_{i-1} channels); decoder stage i reads
    [task unpooled map, shared unpooled map] (2 x width_i). The last decoder stage goes 2w_0 -> 2w_0 -> w_0, as in
    the public code.
    """

    def __init__(self, widths: Sequence[int], in_channels: int = 3) -> None:
        super().__init__()
        w = widths
        self.encoder = nn.ModuleList(
            ConvStage(encoder_channels(w, i, in_channels if i == 0 else 2 * w[i - 1])) for i in range(_NUM_STAGES)
        )
        dec = [[2 * w[0], 2 * w[0], w[0]]] + [decoder_channels(w, i, 2 * w[i]) for i in range(1, _NUM_STAGES)]
        self.decoder = nn.ModuleList(ConvStage(c) for c in dec)


class SegNetDense(_TaskHeads, nn.Module):
    """MTAN's "Dense" baseline: a shared SegNet plus one full SegNet per task that reads the shared maps.

    Args:
        tasks: task name -> output channels (dense tasks).
        width_mult: scales every width (1.0 = the paper's model).
        in_channels: image channels.
    Components: ``encoder``, ``decoder`` (shared; decoder stages 4..1, its unpooled maps feed the branches),
    ``branches`` and ``heads`` (per task).
    Shapes: [B,3,H,W] -> {task: [B,C_t,H,W]}.
    """

    def __init__(self, tasks: Mapping[str, int], width_mult: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        check_dense_tasks(tasks)
        self.tasks = tuple(tasks)
        self.widths = w = segnet_widths(width_mult)
        self.encoder = SegNetEncoder(w, in_channels)
        self.decoder = SegNetDecoder(w, num_stages=_NUM_STAGES - 1)
        self.branches = nn.ModuleDict({t: DenseBranch(w, in_channels) for t in tasks})
        self.heads = nn.ModuleDict({t: prediction_head(w[0], c) for t, c in tasks.items()})
        init_weights(self, uniform=True)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        enc = self.encoder(images)
        ups, _ = self.decoder(enc)
        out = {}
        for t in self.tasks:
            branch = self.branches[t]
            x, indices, sizes = images, [], []
            for i in range(_NUM_STAGES):
                inp = x if i == 0 else torch.cat([x, enc.pooled[i - 1]], dim=1)
                y = branch.encoder[i](inp)[1]
                x, idx = pool(y)
                indices.append(idx)
                sizes.append(y.shape)
            for k, i in enumerate(reversed(range(_NUM_STAGES))):
                x = unpool(x, indices[i], sizes[i])
                x = branch.decoder[i](torch.cat([x, ups[k]], dim=1))[1]
            out[t] = _finish(t, self.heads[t](x))
        return out


def _cross_stitch_alias(mode: str, cross_stitch: str | None) -> str:
    """``mode``, or the value of its old name ``cross_stitch`` (DeprecationWarning); two different forms is an error."""
    if cross_stitch is None:
        return mode
    if mode != "channelwise" and mode != cross_stitch:
        raise ValueError(f"segnet-cross-stitch: give the unit form once, as mode=...; got mode={mode!r} and "
                         f"cross_stitch={cross_stitch!r} (the old name of mode)")
    warnings.warn("segnet-cross-stitch: cross_stitch= is the old name of mode= (the word resnet-cross-stitch uses "
                  "too); pass mode=...", DeprecationWarning, stacklevel=3)
    return cross_stitch


class SegNetCrossStitch(_TaskHeads, nn.Module):
    """One SegNet per task, linked by cross-stitch units after every stage (MTAN's "Cross-Stitch" baseline).

    Units sit after each encoder stage's pooling (9 in all: after encoder stages 0..4 and decoder stages 4..1, the
    placements of the public code); every branch unpools the mixture it receives with its own pooling indices.

    Args:
        tasks: task name -> output channels (dense tasks, at least 2).
        mode: the unit form, ``"channelwise"`` (faithful, default) | ``"scalar"`` | ``"shared"`` (the public SegNet
            code's form); see :mod:`mtlkit.models.cross_stitch`. The same word as ``resnet-cross-stitch``'s.
        same, other: initial same-task weight and total other-task weight (0.9 / 0.1; channelwise and scalar).
            The "shared" form starts at 1 for every branch (a plain sum), as in the public code.
        width_mult: scales every width (1.0 = the paper's model).
        in_channels: image channels.
        cross_stitch: the old name of ``mode`` (before both cross-stitch networks used ``mode``), still accepted
            with a DeprecationWarning; giving both with different values is an error.
    Components: ``branches`` and ``heads`` (per task), ``cross_stitch`` (the units).
    Shapes: [B,3,H,W] -> {task: [B,C_t,H,W]}.
    """

    def __init__(
        self,
        tasks: Mapping[str, int],
        mode: str = "channelwise",
        same: float = 0.9,
        other: float = 0.1,
        width_mult: float = 1.0,
        in_channels: int = 3,
        *,
        cross_stitch: str | None = None,
    ) -> None:
        super().__init__()
        mode = _cross_stitch_alias(mode, cross_stitch)
        if mode not in CROSS_STITCH_MODES:
            raise ValueError(f"segnet-cross-stitch: unknown mode {mode!r}; valid: {', '.join(CROSS_STITCH_MODES)}")
        check_dense_tasks(tasks)
        _check_num_tasks("segnet-cross-stitch", tasks, at_least=2)
        self.tasks = tuple(tasks)
        self.mode = mode
        self.widths = w = segnet_widths(width_mult)
        self.branches = nn.ModuleDict({t: SegNetBranch(w, in_channels) for t in tasks})
        self.heads = nn.ModuleDict({t: prediction_head(w[0], c) for t, c in tasks.items()})
        init_weights(self, uniform=True)
        # channels at the 9 mixing points: pooled encoder stages 0..4, then decoder stages 4..1 outputs
        points = [w[0], w[1], w[2], w[3], w[4], w[3], w[2], w[1], w[0]]
        self.cross_stitch = nn.ModuleList(
            CrossStitchUnit(len(tasks), c, mode=mode, same=same, other=other) for c in points
        )

    def cross_stitch_parameters(self) -> list[nn.Parameter]:
        """The mixing weights, to give them their own learning rate (the paper: ~100x the network's)."""
        return list(self.cross_stitch.parameters())

    def network_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the cross-stitch weights (branches and heads)."""
        return list(self.branches.parameters()) + list(self.heads.parameters())

    @torch.no_grad()
    def load_single_task_branches(self, state_dicts: Mapping[str, Mapping[str, torch.Tensor] | nn.Module]) -> None:
        """Initialise branches (and heads) from single-task SegNets, as the paper does.

        Args:
            state_dicts: task -> state dict (or model) of a ``segnet-single`` model for that task, built with the
                same ``width_mult``; tasks left out keep their weights.
        """
        for task, sd in state_dicts.items():
            if task not in self.branches:
                raise ValueError(f"no branch for task {task!r}; this model's tasks: {', '.join(self.tasks)}")
            if isinstance(sd, nn.Module):
                sd = sd.state_dict()
            head_prefix = f"heads.{task}."
            branch_sd = {k: v for k, v in sd.items() if k.startswith(("encoder.", "decoder."))}
            head_sd = {k[len(head_prefix):]: v for k, v in sd.items() if k.startswith(head_prefix)}
            unknown = [k for k in sd if not k.startswith(("encoder.", "decoder.", head_prefix))]
            if unknown or not head_sd:
                raise ValueError(
                    f"state dict for {task!r} is not a segnet-single model of that task (expected keys encoder.*, "
                    f"decoder.*, {head_prefix}*; unexpected: {unknown[:3]}, head found: {bool(head_sd)})"
                )
            self.branches[task].load_state_dict(branch_sd, strict=True)
            self.heads[task].load_state_dict(head_sd, strict=True)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        branches = [self.branches[t] for t in self.tasks]
        units = iter(self.cross_stitch)
        xs = [images] * len(branches)
        indices: list[list[torch.Tensor]] = [[] for _ in branches]
        sizes: list[torch.Size] = []
        for i in range(_NUM_STAGES):
            ys = [b.encoder.stages[i](x)[1] for b, x in zip(branches, xs)]
            sizes.append(ys[0].shape)
            pooled = [pool(y) for y in ys]
            xs = next(units)([p for p, _ in pooled])
            for idx, (_, ix) in zip(indices, pooled):
                idx.append(ix)
        for i in reversed(range(_NUM_STAGES)):
            xs = [
                b.decoder.stages[i](unpool(x, idx[i], sizes[i]))[1] for b, x, idx in zip(branches, xs, indices)
            ]
            if i > 0:
                xs = next(units)(xs)
        return {t: _finish(t, self.heads[t](x)) for t, x in zip(self.tasks, xs)}


# ---------------------------------------------------------------------------------------------------- registry
#: Small width of the smoke configuration (the benchmarks' smoke rows; notebook 07's smoke preset uses 0.125).
SMOKE_OPTIONS: dict[str, object] = dict(width_mult=0.25)
_ONE_TASK = {"semseg": 4}


@register_model("segnet-single", smoke=SMOKE_OPTIONS, smoke_tasks=_ONE_TASK)
def segnet_single(tasks: dict[str, int], width_mult: float = 1.0, in_channels: int = 3) -> SegNet:
    """One-task SegNet (24,981,069 parameters for 13-class semseg)."""
    _check_num_tasks("segnet-single", tasks, exactly=1)
    return SegNet(tasks, "standard", width_mult, in_channels)


@register_model("segnet-split", smoke=SMOKE_OPTIONS)
def segnet_split(
    tasks: dict[str, int], variant: str = "standard", width_mult: float = 1.0, in_channels: int = 3
) -> SegNet:
    """Shared SegNet, task-specific heads only; ``variant`` "standard" | "wide" | "deep"."""
    return SegNet(tasks, variant, width_mult, in_channels)


@register_model("segnet-stan", smoke=SMOKE_OPTIONS, smoke_tasks=_ONE_TASK)
def segnet_stan(tasks: dict[str, int], width_mult: float = 1.0, in_channels: int = 3) -> SegNetMTAN:
    """Single-task attention network: MTAN's attention with one task."""
    _check_num_tasks("segnet-stan", tasks, exactly=1)
    return SegNetMTAN(tasks, width_mult, in_channels)


@register_model("segnet-mtan", smoke=SMOKE_OPTIONS)
def segnet_mtan(tasks: dict[str, int], width_mult: float = 1.0, in_channels: int = 3) -> SegNetMTAN:
    """Multi-Task Attention Network on SegNet."""
    return SegNetMTAN(tasks, width_mult, in_channels)


@register_model("segnet-dense", smoke=SMOKE_OPTIONS)
def segnet_dense(tasks: dict[str, int], width_mult: float = 1.0, in_channels: int = 3) -> SegNetDense:
    """Shared SegNet + a full task SegNet per task reading the shared maps."""
    return SegNetDense(tasks, width_mult, in_channels)


@register_model("segnet-cross-stitch", smoke=SMOKE_OPTIONS)
def segnet_cross_stitch(
    tasks: dict[str, int],
    mode: str = "channelwise",
    same: float = 0.9,
    other: float = 0.1,
    width_mult: float = 1.0,
    in_channels: int = 3,
    *,
    cross_stitch: str | None = None,
) -> SegNetCrossStitch:
    """One SegNet per task linked by cross-stitch units (``mode`` "channelwise" | "scalar" | "shared", as for
    ``resnet-cross-stitch``; ``cross_stitch=`` is the old name, still accepted)."""
    return SegNetCrossStitch(tasks, mode, same, other, width_mult, in_channels, cross_stitch=cross_stitch)
