"""MTAN over a dilated ResNet with per-task ASPP heads, and its hard-parameter-sharing baseline (LibMTL, survey).

- ``resnet-shared``: a dilated ResNet (output stride 8) shared by all tasks, one DeepLab head per task
  (ASPP -> dropout -> 3x3 conv-BN-ReLU -> 1x1 conv), upsampled to the input size (LibMTL's HPS).
- ``resnet-mtan``: the same encoder and heads; each task builds its own features stage by stage with MTAN's
  attention modules (1x1 conv-BN-ReLU -> 1x1 conv-BN-Sigmoid) and task-shared bottleneck refinements.

ResNet-50, A = 256, 13-class semseg + depth + normals: 71,888,721 (shared) and 92,347,921 (MTAN) parameters,
pinned by formulas in tests/test_resnet_mtan.py. Options restoring the authors' code: ``aspp_dropout=0.5`` (the
default), ``aspp_pooling_norm="batch"``, ``align_corners=True`` (LibMTL's final upsampling). Formulas and the stage
equations: docs/models.md; differences from the authors' code: docs/fidelity.md.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import OutputLayer, register_model
from .blocks import ASPP, conv_bn_relu, upsample_to
from .deeplab import DEFAULT_ASPP_RATES, _check_dense_tasks
from .encoders import create_encoder
from .segnet import attention_block

__all__ = ["ASPPHead", "RefinementBlock", "ResNetShared", "ResNetMTAN"]

_STAGES = ("layer1", "layer2", "layer3", "layer4")


class ASPPHead(nn.Module):
    """DeepLab head of the survey/LibMTL code: ASPP (with dropout after its projection) -> 3x3 conv-BN-ReLU -> 1x1
    conv (bias) to the task's channels.

    Args:
        dropout: dropout probability after the ASPP projection (the authors' 0.5; 0 disables it).
        pooling_norm: norm of the ASPP image-pooling branch, "group" (kit) or "batch" (authors).
    Shapes: [B, in_channels, h, w] -> [B, out_channels, h, w].
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int = 256,
                 rates: Sequence[int] = (12, 24, 36), dropout: float = 0.5, pooling_norm: str = "group") -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, channels, rates, dropout=dropout, pooling_norm=pooling_norm)
        self.conv = conv_bn_relu(channels, channels, 3)
        self.classifier = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.conv(self.aspp(x)))


class RefinementBlock(nn.Module):
    """MTAN's task-shared block between stages: a ResNet bottleneck C_in -> C_out with a projected shortcut.

    1x1 (C_in -> C_out/4) -> 3x3 (C_out/4) -> 1x1 (-> C_out), each BN (ReLU on the first two), plus a 1x1-BN
    shortcut, then ReLU. Shapes: [B, C_in, h, w] -> [B, C_out, h, w].
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels % 4:
            raise ValueError(f"RefinementBlock out_channels must be divisible by 4 (bottleneck width C/4); "
                             f"got {out_channels}")
        mid = out_channels // 4
        self.body = nn.Sequential(
            conv_bn_relu(in_channels, mid, 1),
            conv_bn_relu(mid, mid, 3),
            nn.Conv2d(mid, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class _ResNetHeads(nn.Module):
    """Shared constructor: validated tasks, a dilated timm ResNet and one ASPP head per task.

    Args:
        tasks: task name -> output channels (dense tasks only).
        encoder: "resnet18", "resnet34" or "resnet50" (LibMTL's NYUv2 setting: resnet50).
        output_stride: 8 (default, dilated stages 3-4, as in the survey/LibMTL), 16 or 32.
        pretrained: ImageNet weights through timm (needs the HF hub or a filled cache).
        aspp_channels: width A of each ASPP head (256; smaller for the smoke preset).
        aspp_rates: three dilation rates; default ``DEFAULT_ASPP_RATES`` of the output stride ((12, 24, 36) at 8).
        aspp_dropout: dropout after each ASPP projection (0.5, the authors'; 0 disables it).
        aspp_pooling_norm: "group" (default, trains at batch size 1) or "batch" (the authors' form).
        align_corners: of the final bilinear upsampling to the input size (False; LibMTL uses True).
        normalize_input: ImageNet mean/std normalisation of [0, 1] images inside the encoder.
    """

    def __init__(self, tasks: Mapping[str, int], *, encoder: str = "resnet50", output_stride: int = 8,
                 pretrained: bool = False, aspp_channels: int = 256, aspp_rates: Sequence[int] | None = None,
                 aspp_dropout: float = 0.5, aspp_pooling_norm: str = "group", align_corners: bool = False,
                 normalize_input: bool = True, model_name: str = "resnet") -> None:
        super().__init__()
        self.task_channels = _check_dense_tasks(tasks, model_name)
        self.tasks: tuple[str, ...] = tuple(self.task_channels)
        self.encoder = create_encoder(encoder, output_stride, pretrained=pretrained, normalize_input=normalize_input)
        self.output_stride = self.encoder.output_stride
        body = self.encoder.body
        #: output channels of the four ResNet stages, C_0..C_3
        self.stage_channels: tuple[int, ...] = tuple(_stage_out_channels(body[name]) for name in _STAGES)
        rates = tuple(aspp_rates) if aspp_rates is not None else DEFAULT_ASPP_RATES[self.output_stride]
        self.align_corners = bool(align_corners)
        self.heads = nn.ModuleDict({t: ASPPHead(self.stage_channels[-1], c, aspp_channels, rates,
                                                dropout=aspp_dropout, pooling_norm=aspp_pooling_norm)
                                    for t, c in self.task_channels.items()})

    def output_layer(self, task: str) -> OutputLayer:
        """The 1x1 classifier of ``task``'s head."""
        return OutputLayer(self.heads[task].classifier, slice(None))

    def _upsample(self, x: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return upsample_to(x, images.shape[-2:], align_corners=self.align_corners)

    def _stem(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 64, H/4, W/4] (conv1-BN-ReLU-maxpool of the ResNet)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W]; got shape {tuple(images.shape)}")
        enc = self.encoder
        x = (images - enc.mean) / enc.std if enc.normalize_input else images
        body = enc.body
        return body["maxpool"](body["act1"](body["bn1"](body["conv1"](x))))


def _stage_out_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    norm = getattr(last, "bn3", None) or last.bn2  # Bottleneck (ResNet-50) or BasicBlock (ResNet-18/34)
    return norm.num_features


class ResNetShared(_ResNetHeads):
    """Hard parameter sharing: dilated ResNet shared by all tasks -> one ASPP head per task -> input size.

    Shapes: images [B, 3, H, W] -> {task: [B, K_t, H, W]}; the encoder features are [B, C_3, H/8, W/8] at output
    stride 8.
    """

    def __init__(self, tasks: Mapping[str, int], **options) -> None:
        options.setdefault("model_name", "resnet-shared")
        super().__init__(tasks, **options)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        _, features = self.encoder(images)  # [B, C_3, H/os, W/os]
        return {t: self._upsample(head(features), images) for t, head in self.heads.items()}


class ResNetMTAN(_ResNetHeads):
    """MTAN over a dilated ResNet: per-task attention modules on the four stages, per-task ASPP heads.

    Components (for :func:`mtlkit.models.count_parameters`): ``encoder`` (the shared ResNet), ``attention.<task>``
    (four attention modules per task), ``refine`` (three task-shared bottlenecks), ``heads.<task>``.
    :meth:`forward_with_masks` also returns the soft masks in (0, 1) per task and stage, for plotting.
    """

    def __init__(self, tasks: Mapping[str, int], **options) -> None:
        options.setdefault("model_name", "resnet-mtan")
        super().__init__(tasks, **options)
        c = self.stage_channels
        # stage 0 sees only the shared features; later stages also the task's previous attended features (2 C_i)
        self.attention = nn.ModuleDict({
            t: nn.ModuleList([attention_block(c[i] if i == 0 else 2 * c[i], c[i] // 4, c[i]) for i in range(4)])
            for t in self.tasks
        })
        self.refine = nn.ModuleList([RefinementBlock(c[i], c[i + 1]) for i in range(3)])

    def forward_with_masks(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, list[torch.Tensor]]]:
        """Predictions {task: [B, K_t, H, W]} and masks {task: [mask_0 .. mask_3]}, mask_i [B, C_i, h_i, w_i]."""
        body = self.encoder.body
        x = self._stem(images)  # [B, 64, H/4, W/4]
        before_last, shared = [], []  # b_i (stage without its last block), u_i (stage output): [B, C_i, h_i, w_i]
        for name in _STAGES:
            stage = body[name]
            b = stage[:-1](x)
            x = stage[-1](b)
            before_last.append(b)
            shared.append(x)
        out: dict[str, torch.Tensor] = {}
        masks: dict[str, list[torch.Tensor]] = {}
        for t in self.tasks:
            masks[t] = []
            a = None  # the task's attended features, [B, C_i, h, w]
            for i, att in enumerate(self.attention[t]):
                if a is None:
                    inp = before_last[i]
                else:
                    if a.shape[-2:] != before_last[i].shape[-2:]:
                        # the next ResNet stage is strided: match its (ceil) size; dilated stages keep the size
                        a = F.max_pool2d(a, kernel_size=2, stride=2, ceil_mode=True)
                    inp = torch.cat([before_last[i], a], dim=1)  # [B, 2 C_i, h_i, w_i]
                mask = att(inp)  # [B, C_i, h_i, w_i] in (0, 1)
                masks[t].append(mask)
                a = mask * shared[i]
                if i < 3:
                    a = self.refine[i](a)  # [B, C_{i+1}, h_i, w_i]
            out[t] = self._upsample(self.heads[t](a), images)
        return out, masks

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_with_masks(images)[0]

    @torch.no_grad()
    def attention_masks(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """The soft masks only (no gradients): {task: [mask_0 .. mask_3]}, mask_i [B, C_i, h_i, w_i]."""
        return self.forward_with_masks(images)[1]


#: Small widths of the smoke preset (notebook 07's resnet50 backbone on a CPU).
SMOKE_OPTIONS: dict[str, object] = dict(encoder="resnet18", aspp_channels=32)


@register_model("resnet-shared", smoke=SMOKE_OPTIONS)
def resnet_shared(tasks: dict[str, int], **options) -> ResNetShared:
    """Shared dilated ResNet + per-task ASPP heads (LibMTL's HPS); with one task, the single-task baseline."""
    return ResNetShared(tasks, **options)


@register_model("resnet-mtan", smoke=SMOKE_OPTIONS)
def resnet_mtan(tasks: dict[str, int], **options) -> ResNetMTAN:
    """MTAN attention over a dilated ResNet with per-task ASPP heads (options: see ``_ResNetHeads``)."""
    return ResNetMTAN(tasks, **options)
