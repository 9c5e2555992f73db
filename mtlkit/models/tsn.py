"""Task Switching Networks (Sun et al., 2021) and the U-Net baselines they are compared with (GuoleiSun/TSNs).

``tsn``: ONE ResNet-18 encoder and ONE U-Net decoder shared by all tasks; a task code (orthogonal block one-hot or
Gaussian) goes through a mapping network (PixelNorm, 8 x [equalised-lr linear, LeakyReLU 0.2]) to an embedding
that sets every decoder conv's AdaIN scale and shift. A shared final 1x1 conv gives ``max_t C_t`` channels, and
task t reads C_t of them: ``readout="pool"`` (default, the authors' code) averages the channels in C_t consecutive
bins (21 -> parts 7: groups of 3; normals 3: groups of 7; edge/saliency 1: the mean of all 21; semseg 21: as is),
``readout="slice"`` takes the first C_t. Parameters do not depend on the number of tasks: 18,258,805 for PASCAL's
five (the paper's 18.26 M). Call ``model(images, task=name)`` (``task=None``: every task on one encoder pass).

``unet``: the same encoder and decoder widths without conditioning, one decoder and output conv per task (one task:
the single-task U-Net baseline, 17,730,005 parameters for 21 classes). Layer list and kit choices (upsampling to
the skip's size, ``align_corners``, a hand-written instance norm): docs/models.md and docs/fidelity.md.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import OutputLayer, register_model
from .blocks import upsample_to
from .upernet import ResNetPyramid

__all__ = ["TASK_CODES", "TSN_READOUTS", "TSN_DECODER_CHANNELS", "TSN_LOSS_WEIGHTS", "TSN_PARAM_GROUPS", "task_codes",
           "channel_pool_matrix", "EqualLinear", "PixelNorm", "MappingNetwork", "InstanceNorm", "AdaINConv",
           "PlainConv", "UNetDecoder", "TaskSwitchingNet", "MultiDecoderUNet"]

#: Kinds of task code.
TASK_CODES: tuple[str, ...] = ("orthogonal", "gaussian")
#: How a task reads its channels from TSN's shared output conv: "pool" (the authors' channel pooling), "slice".
TSN_READOUTS: tuple[str, ...] = ("pool", "slice")
#: The paper's loss weights, for ``Trainer(weighting="static", weighting_options={"weights": TSN_LOSS_WEIGHTS})``.
TSN_LOSS_WEIGHTS: dict[str, float] = {"normals": 10.0, "parts": 2.0, "edge": 50.0, "saliency": 5.0, "semseg": 1.0}
#: The paper's Adam learning rates (encoder 1e-6, the rest 1e-4) as Trainer ``param_groups`` for ``lr=1e-4``.
TSN_PARAM_GROUPS: list[tuple[str, float]] = [("encoder", 0.01)]
#: Output widths of up3, up2, up1, up0 and the final conv in the public code.
TSN_DECODER_CHANNELS: tuple[int, int, int, int, int] = (512, 256, 256, 128, 64)


def task_codes(num_tasks: int, dim: int = 100, kind: str = "orthogonal", seed: int = 0) -> torch.Tensor:
    """[num_tasks, dim] task codes.

    ``"orthogonal"``: task t has ones on dims [t*k, (t+1)*k) with k = dim // num_tasks, zeros elsewhere (5 tasks,
    dim 100: 20 ones each, as in the public code); ``"gaussian"``: i.i.d. N(0, 1) entries drawn with ``seed``.
    """
    if kind not in TASK_CODES:
        raise ValueError(f"unknown task code {kind!r}; valid choices: {', '.join(TASK_CODES)}")
    if num_tasks < 1 or dim < num_tasks:
        raise ValueError(f"task codes need 1 <= num_tasks <= dim; got num_tasks={num_tasks}, dim={dim} "
                         "(raise code_dim)")
    if kind == "gaussian":
        return torch.randn(num_tasks, dim, generator=torch.Generator().manual_seed(seed))
    block = dim // num_tasks
    codes = torch.zeros(num_tasks, dim)
    for t in range(num_tasks):
        codes[t, t * block:(t + 1) * block] = 1.0
    return codes


def channel_pool_matrix(in_channels: int, out_channels: int) -> torch.Tensor:
    """[out_channels, in_channels] averaging matrix of adaptive average pooling over channels.

    Output i is the mean of input channels floor(i * C / n) .. ceil((i + 1) * C / n) - 1 (C = ``in_channels``,
    n = ``out_channels``): the bins of ``adaptive_avg_pool`` along the channel axis, as the TSN authors read each task
    from the 21 shared channels (21 -> 7: groups of 3; 21 -> 1: the mean; 21 -> 21: the identity).
    """
    if not 1 <= out_channels <= in_channels:
        raise ValueError(f"channel pooling needs 1 <= out_channels <= in_channels; got {out_channels}, {in_channels}")
    weights = torch.zeros(out_channels, in_channels, dtype=torch.float64)  # cast at use: exact in any precision
    for i in range(out_channels):
        start = (i * in_channels) // out_channels
        end = -((-(i + 1) * in_channels) // out_channels)  # ceil
        weights[i, start:end] = 1.0 / (end - start)
    return weights


class EqualLinear(nn.Module):
    """Linear layer with an equalised learning rate (StyleGAN): weight ~ N(0, 1), multiplied by sqrt(2 / fan_in)
    at every forward, so that Adam's per-parameter step sizes act alike on all layers. [B, in] -> [B, out]."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = math.sqrt(2.0 / in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class PixelNorm(nn.Module):
    """x / sqrt(mean(x^2 over features) + 1e-8): puts every code on the same scale. [B, d] -> [B, d]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class MappingNetwork(nn.Sequential):
    """PixelNorm then ``layers`` x [EqualLinear(d, d), LeakyReLU(0.2)]: task code -> task embedding. [B,d]->[B,d]."""

    def __init__(self, dim: int, layers: int = 8) -> None:
        blocks: list[nn.Module] = [PixelNorm()]
        for _ in range(layers):
            blocks += [EqualLinear(dim, dim), nn.LeakyReLU(0.2)]
        super().__init__(*blocks)


class InstanceNorm(nn.Module):
    """Instance norm over H, W (biased variance, eps 1e-5), optional per-channel affine; a 1x1 map gives 0 (where
    ``nn.InstanceNorm2d`` refuses to train). [B, C, H, W] -> same."""

    def __init__(self, channels: int, affine: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # half (autocast): stats in float32
        var, mean = torch.var_mean(xf, dim=(2, 3), keepdim=True, correction=0)
        y = ((xf - mean) * torch.rsqrt(var + self.eps)).to(x.dtype)
        if self.weight is not None:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y


class AdaINConv(nn.Module):
    """conv (bias) -> instance norm (no affine) -> y * gamma(w) + beta(w) -> LeakyReLU (0.01).

    (gamma, beta) come from the task embedding w [B or 1, d] through an EqualLinear d -> 2C whose biases start at
    gamma = 1, beta = 0. Shapes: x [B, C_in, H, W], w [B or 1, d] -> [B, C_out, H, W].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, embed_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = InstanceNorm(out_channels, affine=False)
        self.style = EqualLinear(embed_dim, 2 * out_channels)
        with torch.no_grad():
            self.style.bias[:out_channels] = 1.0
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.style(w)[:, :, None, None].chunk(2, dim=1)      # [B or 1, C_out, 1, 1] each
        return self.act(self.norm(self.conv(x)) * gamma + beta)


class PlainConv(nn.Module):
    """conv (bias) -> instance norm with affine -> ReLU (the unconditioned U-Net); ignores ``w``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, embed_dim: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = InstanceNorm(out_channels, affine=True)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class UNetDecoder(nn.Module):
    """The TSN U-Net decoder over encoder levels L0..L4, conditioned (AdaIN) or plain.

    Args:
        encoder_channels: channels of L0..L4 (ResNet-18: 64, 64, 128, 256, 512).
        channels: widths of up3, up2, up1, up0 and the final conv (:data:`TSN_DECODER_CHANNELS`).
        embed_dim: d of the task embedding (conditioned) or None (plain).
        align_corners: of the bilinear upsampling (False, the kit's; the authors' nn.Upsample uses True).
    Shapes: levels [B, C_i, H/2^(i+1), W/2^(i+1)], w [B or 1, d], size (H, W) -> [B, channels[-1], H, W].
    """

    def __init__(self, encoder_channels: Sequence[int], channels: Sequence[int] = TSN_DECODER_CHANNELS,
                 embed_dim: int | None = 100, align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = bool(align_corners)
        if len(encoder_channels) != 5 or len(channels) != 5:
            raise ValueError(f"the U-Net decoder needs 5 encoder levels and 5 widths; got {list(encoder_channels)} "
                             f"and {list(channels)}")
        block = AdaINConv if embed_dim is not None else PlainConv
        e, c = list(encoder_channels), list(channels)
        self.laterals = nn.ModuleList(block(ch, ch, 1, embed_dim) for ch in e)          # L0'..L4'
        ins = [e[4] + e[3], c[0] + e[2], c[1] + e[1], c[2] + e[0]]
        self.ups = nn.ModuleList(block(i, o, 3, embed_dim) for i, o in zip(ins, c[:4]))   # up3, up2, up1, up0
        self.final = block(c[3], c[4], 3, embed_dim)
        self.out_channels = c[4]

    def forward(self, levels: Sequence[torch.Tensor], size: Sequence[int],
                w: torch.Tensor | None = None) -> torch.Tensor:
        lat = [m(x, w) for m, x in zip(self.laterals, levels)]
        x = lat[4]
        ac = self.align_corners
        for up, skip in zip(self.ups, reversed(lat[:4])):
            x = up(torch.cat([upsample_to(x, skip.shape[-2:], ac), skip], dim=1), w)
        return self.final(upsample_to(x, size, ac), w)


def _check_dense(tasks: Mapping[str, int], model: str) -> dict[str, int]:
    from mtlkit.tasks import TASK_KINDS

    dense = [t for t, k in TASK_KINDS.items() if k == "dense"]
    for task, channels in tasks.items():
        if task not in TASK_KINDS:
            raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASK_KINDS)}")
        if TASK_KINDS[task] != "dense":
            raise ValueError(f"{model} has a U-Net decoder and predicts dense (per-pixel) tasks only; {task!r} is a "
                             f"{TASK_KINDS[task]}-level task. Valid tasks: {', '.join(dense)}")
        if int(channels) < 1:
            raise ValueError(f"task {task!r} needs at least one output channel; got {channels}")
    return {t: int(c) for t, c in tasks.items()}


class TaskSwitchingNet(nn.Module):
    """One encoder, one task-conditioned U-Net decoder, one shared output conv (see the module docstring).

    Args:
        tasks: task name -> output channels (dense tasks).
        encoder: ResNet name (the paper: "resnet18"); pretrained: ImageNet weights.
        code: "orthogonal" or "gaussian"; code_dim: d (100 = 5 tasks x 20 in the paper); code_seed: Gaussian seed.
        mapping_layers: linear layers of the mapping network (8).
        decoder_channels: widths of up3, up2, up1, up0, final (:data:`TSN_DECODER_CHANNELS`).
        out_channels: width of the shared output conv (default: max over tasks; set it to compare task sets).
        readout: "pool" (default, the authors': task t averages the shared channels in C_t bins) or "slice" (the
            first C_t channels; every task then shares channel 0, and only semseg trains channels beyond 7).
        align_corners: of the decoder's bilinear upsampling (False; the authors' code: True).
    Components (for :func:`~mtlkit.models.count_parameters`): encoder, mapping, decoder, head.
    Shapes: images [B, 3, H, W] -> {task: [B, C_task, H, W]}.
    """

    def __init__(self, tasks: Mapping[str, int], encoder: str = "resnet18", pretrained: bool = False,
                 code: str = "orthogonal", code_dim: int = 100, code_seed: int = 0, mapping_layers: int = 8,
                 decoder_channels: Sequence[int] = TSN_DECODER_CHANNELS, out_channels: int | None = None,
                 readout: str = "pool", align_corners: bool = False) -> None:
        super().__init__()
        if readout not in TSN_READOUTS:
            raise ValueError(f"unknown TSN readout {readout!r}; valid: {', '.join(TSN_READOUTS)}")
        self.readout = readout
        self.out_channels = _check_dense(tasks, "tsn")
        self.tasks = tuple(tasks)
        width = max(self.out_channels.values()) if out_channels is None else int(out_channels)
        if width < max(self.out_channels.values()):
            raise ValueError(f"out_channels={width} is smaller than a task's channels {self.out_channels}")
        self.code_kind = code
        self.register_buffer("codes", task_codes(len(self.tasks), code_dim, code, code_seed))   # [T, d]
        self.encoder = ResNetPyramid(encoder, (0, 1, 2, 3, 4), pretrained=pretrained)
        self.mapping = MappingNetwork(code_dim, mapping_layers)
        self.decoder = UNetDecoder(self.encoder.channels, decoder_channels, embed_dim=code_dim,
                                   align_corners=align_corners)
        self.head = nn.Conv2d(self.decoder.out_channels, width, 1)
        # task -> [C_t, width] channel averaging of the "pool" read-out (derived, not in the state_dict)
        self._pools = {t: channel_pool_matrix(width, c) for t, c in self.out_channels.items()}

    def _task_index(self, task: str) -> int:
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r} for this {type(self).__name__}; valid tasks: "
                             f"{', '.join(self.tasks)}")
        return self.tasks.index(task)

    def embedding(self, task: str) -> torch.Tensor:
        """The task embedding w_t [1, d] (mapping network applied to the task's code)."""
        i = self._task_index(task)
        return self.mapping(self.codes[i:i + 1])

    def forward(self, images: torch.Tensor, task: str | None = None) -> dict[str, torch.Tensor]:
        names = self.tasks if task is None else (task,)
        for name in names:
            self._task_index(name)
        size = images.shape[-2:]
        levels = self.encoder(images)                     # computed once, whatever the number of tasks
        out = {}
        for name in names:
            features = self.decoder(levels, size, self.embedding(name))
            out[name] = self.read_task(self.head(features), name)
        return out

    def read_task(self, shared: torch.Tensor, task: str) -> torch.Tensor:
        """Task ``task``'s output [B, C_t, H, W] from the shared output conv's [B, width, H, W] (see ``readout``)."""
        if self.readout == "slice":
            return shared[:, : self.out_channels[task]]
        pool = self._pools[task].to(device=shared.device, dtype=shared.dtype)  # [C_t, width]
        return torch.einsum("tc,bchw->bthw", pool, shared)

    def output_layer(self, task: str) -> OutputLayer:
        """The shared output conv and the channels ``task`` reads: the first C_t ("slice") or all of them ("pool").

        The layer is shared: changing its bias for one task changes every task that reads those channels.
        """
        self._task_index(task)
        return OutputLayer(self.head, slice(0, self.out_channels[task]) if self.readout == "slice" else slice(None))


class MultiDecoderUNet(nn.Module):
    """Shared ResNet encoder, one plain U-Net decoder and one 1x1 output conv per task.

    One task: the single-task U-Net baseline of TSN; several: the multi-decoder baseline. Components: encoder,
    decoders.<task>, heads.<task>. Shapes: images [B, 3, H, W] -> {task: [B, C_task, H, W]}.
    """

    def __init__(self, tasks: Mapping[str, int], encoder: str = "resnet18", pretrained: bool = False,
                 decoder_channels: Sequence[int] = TSN_DECODER_CHANNELS, align_corners: bool = False) -> None:
        super().__init__()
        self.out_channels = _check_dense(tasks, "unet")
        self.tasks = tuple(tasks)
        self.encoder = ResNetPyramid(encoder, (0, 1, 2, 3, 4), pretrained=pretrained)
        self.decoders = nn.ModuleDict(
            {t: UNetDecoder(self.encoder.channels, decoder_channels, embed_dim=None, align_corners=align_corners)
             for t in tasks})
        self.heads = nn.ModuleDict({t: nn.Conv2d(decoder_channels[-1], c, 1) for t, c in self.out_channels.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        size = images.shape[-2:]
        levels = self.encoder(images)
        return {t: self.heads[t](self.decoders[t](levels, size)) for t in self.tasks}

    def output_layer(self, task: str) -> OutputLayer:
        """The 1x1 output conv of ``task``."""
        return OutputLayer(self.heads[task], slice(None))


#: Small widths of the smoke preset (notebook 09 on a CPU).
SMOKE_OPTIONS: dict[str, object] = dict(encoder="resnet18", decoder_channels=(64, 32, 32, 32, 16))
_PASCAL_SMOKE = {"semseg": 6, "parts": 3, "edge": 1, "normals": 3, "saliency": 1}


@register_model("tsn", smoke=SMOKE_OPTIONS, smoke_tasks=_PASCAL_SMOKE)
def tsn(tasks: dict[str, int], **options) -> TaskSwitchingNet:
    """Task Switching Network (options: encoder, code, code_dim, code_seed, mapping_layers, decoder_channels,
    out_channels, readout, align_corners, pretrained); call as ``model(images, task=name)``."""
    return TaskSwitchingNet(tasks, **options)


@register_model("unet", smoke=SMOKE_OPTIONS, smoke_tasks=_PASCAL_SMOKE)
def unet(tasks: dict[str, int], **options) -> MultiDecoderUNet:
    """ResNet U-Net, one plain decoder per task (options: encoder, decoder_channels, align_corners, pretrained)."""
    return MultiDecoderUNet(tasks, **options)
