"""Task Switching Networks (Sun et al., 2021) and the U-Net baselines they are compared with.

``tsn``: ONE ResNet-18 encoder (not conditioned) and ONE U-Net decoder shared by all tasks; the decoder is told which
task to solve by a task embedding::

    code z_t (orthogonal block one-hot or Gaussian, d-dim)  -> mapping network: PixelNorm, 8 x [equalised-lr
    linear d -> d, LeakyReLU 0.2]  -> embedding w_t (d-dim)
    every decoder conv:  conv (bias) -> instance norm (no affine) -> AdaIN: y * gamma(w_t) + beta(w_t) -> LeakyReLU
    (gamma, beta) = equalised-lr linear d -> 2C, biases initialised to gamma = 1, beta = 0
    a shared final 1x1 conv with max_t C_t outputs; task t reads the first C_t channels

Forward: ``model(images, task=name) -> {name: prediction}`` (``task=None`` runs every task on one encoder pass).
The parameter count does not depend on the number of tasks: tasks only add a code (a buffer) and share the final
conv, as long as the largest output channel count stays the same.

The U-Net (GuoleiSun/TSNs ``model.py``, ``ResNetUNet2_2``): encoder levels L0 (stride 2, 64 ch), L1 (4, 64),
L2 (8, 128), L3 (16, 256), L4 (32, 512); a 1x1 conditioned conv on each level (same width); then
up3 = conv3x3(up(L4') ++ L3') -> 512, up2 = conv3x3(up ++ L2') -> 256, up1 -> 256, up0 -> 128, upsample to the input,
final = conv3x3 -> 64, then the 1x1 output conv. With d = 100 (5 tasks x 20 ones) and 21 output channels this is
11,176,512 (encoder) + 80,800 (mapping) + 7,000,128 (decoder with its style layers) + 1,365 (output conv)
= 18,258,805 parameters, the paper's 18.26 M.

``unet``: the same encoder and decoder widths without conditioning (each conv: conv -> instance norm with affine ->
ReLU, as in the public ``ResNetUNet2_2_no_adain``), one decoder and one 1x1 output conv per task on a shared
encoder. With one task it is the single-task U-Net baseline (17,730,005 parameters for 21 classes; five of them for
PASCAL-Context's 21/7/1/3/1 channels: 88,645,345, the paper's 88.65 M); with several tasks it is the
multi-decoder baseline.

Kit choices: upsampling is bilinear to the skip's size (align_corners=False, so odd sizes work); the instance norm is
computed by hand so that a 1x1 map (C5 of a 32-px image) normalises to 0 instead of raising; the decoder's
LeakyReLU slope is PyTorch's default 0.01, as in the public code.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register_model
from .blocks import upsample_to
from .upernet import ResNetPyramid

__all__ = ["TASK_CODES", "TSN_DECODER_CHANNELS", "TSN_LOSS_WEIGHTS", "TSN_PARAM_GROUPS", "task_codes", "EqualLinear", "PixelNorm", "MappingNetwork",
           "InstanceNorm", "AdaINConv", "PlainConv", "UNetDecoder", "TaskSwitchingNet", "MultiDecoderUNet"]

#: Kinds of task code.
TASK_CODES: tuple[str, ...] = ("orthogonal", "gaussian")
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
    Shapes: levels [B, C_i, H/2^(i+1), W/2^(i+1)], w [B or 1, d], size (H, W) -> [B, channels[-1], H, W].
    """

    def __init__(self, encoder_channels: Sequence[int], channels: Sequence[int] = TSN_DECODER_CHANNELS,
                 embed_dim: int | None = 100) -> None:
        super().__init__()
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
        for up, skip in zip(self.ups, reversed(lat[:4])):
            x = up(torch.cat([upsample_to(x, skip.shape[-2:]), skip], dim=1), w)
        return self.final(upsample_to(x, size), w)


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
    Components (for :func:`~mtlkit.models.count_parameters`): encoder, mapping, decoder, head.
    Shapes: images [B, 3, H, W] -> {task: [B, C_task, H, W]}.
    """

    def __init__(self, tasks: Mapping[str, int], encoder: str = "resnet18", pretrained: bool = False,
                 code: str = "orthogonal", code_dim: int = 100, code_seed: int = 0, mapping_layers: int = 8,
                 decoder_channels: Sequence[int] = TSN_DECODER_CHANNELS, out_channels: int | None = None) -> None:
        super().__init__()
        self.out_channels = _check_dense(tasks, "tsn")
        self.tasks = tuple(tasks)
        width = max(self.out_channels.values()) if out_channels is None else int(out_channels)
        if width < max(self.out_channels.values()):
            raise ValueError(f"out_channels={width} is smaller than a task's channels {self.out_channels}")
        self.code_kind = code
        self.register_buffer("codes", task_codes(len(self.tasks), code_dim, code, code_seed))   # [T, d]
        self.encoder = ResNetPyramid(encoder, (0, 1, 2, 3, 4), pretrained=pretrained)
        self.mapping = MappingNetwork(code_dim, mapping_layers)
        self.decoder = UNetDecoder(self.encoder.channels, decoder_channels, embed_dim=code_dim)
        self.head = nn.Conv2d(self.decoder.out_channels, width, 1)

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
            out[name] = self.head(features)[:, : self.out_channels[name]]
        return out


class MultiDecoderUNet(nn.Module):
    """Shared ResNet encoder, one plain U-Net decoder and one 1x1 output conv per task.

    One task: the single-task U-Net baseline of TSN; several: the multi-decoder baseline. Components: encoder,
    decoders.<task>, heads.<task>. Shapes: images [B, 3, H, W] -> {task: [B, C_task, H, W]}.
    """

    def __init__(self, tasks: Mapping[str, int], encoder: str = "resnet18", pretrained: bool = False,
                 decoder_channels: Sequence[int] = TSN_DECODER_CHANNELS) -> None:
        super().__init__()
        self.out_channels = _check_dense(tasks, "unet")
        self.tasks = tuple(tasks)
        self.encoder = ResNetPyramid(encoder, (0, 1, 2, 3, 4), pretrained=pretrained)
        self.decoders = nn.ModuleDict(
            {t: UNetDecoder(self.encoder.channels, decoder_channels, embed_dim=None) for t in tasks})
        self.heads = nn.ModuleDict({t: nn.Conv2d(decoder_channels[-1], c, 1) for t, c in self.out_channels.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        size = images.shape[-2:]
        levels = self.encoder(images)
        return {t: self.heads[t](self.decoders[t](levels, size)) for t in self.tasks}


@register_model("tsn")
def tsn(tasks: dict[str, int], **options) -> TaskSwitchingNet:
    """Task Switching Network (options: encoder, code, code_dim, code_seed, mapping_layers, decoder_channels,
    out_channels, pretrained); call as ``model(images, task=name)``."""
    return TaskSwitchingNet(tasks, **options)


@register_model("unet")
def unet(tasks: dict[str, int], **options) -> MultiDecoderUNet:
    """ResNet U-Net, one plain decoder per task (options: encoder, decoder_channels, pretrained)."""
    return MultiDecoderUNet(tasks, **options)
