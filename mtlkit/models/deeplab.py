"""The DeepLabV3+ family of the course (DLAD): joint, branched, task distillation, and the single-task baseline.

- ``deeplab-joint``: one ASPP + one decoder; the last 1x1 conv outputs sum(channels), split per task.
- ``deeplab-single``: the joint model with exactly one task (the single-task baseline of Δm).
- ``deeplab-branched``: shared encoder, one ASPP + decoder per task.
- ``deeplab-distill``: branched decoders give initial predictions (``out["aux"]["initial"]``, deep supervision)
  and features F_t; F'_t = F_t + sum_{s != t} SA_{s->t}(F_s), SA(x) = conv3x3(x) * sigmoid(conv3x3(x)); a final
  decoder per task gives the output.

Outputs at input resolution: label tasks logits, depth raw (metres), normals unnormalised. Ablations (notebook 03):
``aspp=False``, ``skip=False``. Parameter counts (ResNet-34, semseg 19 + depth): 26,716,084 / 32,142,356 /
36,868,136, the course's 26.72 M / 32.14 M / 36.87 M. The DLAD template's ASPP has no dropout (``aspp_dropout=0``)
and BatchNorm in its pooling branch (``aspp_pooling_norm="batch"``; the kit's default "group" trains at batch size 1).
Details: docs/models.md; differences from the authors' code: docs/fidelity.md.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from . import OutputLayer, register_model
from .blocks import ASPP, DeepLabV3PlusDecoder, DenseHead, SelfAttentionGate, conv_bn_relu, upsample_to
from .encoders import create_encoder

__all__ = ["DEFAULT_ASPP_RATES", "DeepLabV3PlusJoint", "DeepLabV3PlusBranched", "DeepLabV3PlusDistill"]

#: ASPP dilation rates per output stride: DeepLab's (6, 12, 18) at 16, doubled at 8, halved at 32 (the course
#: template's 3/6/9, which it used without dilation).
DEFAULT_ASPP_RATES: dict[int, tuple[int, int, int]] = {32: (3, 6, 9), 16: (6, 12, 18), 8: (12, 24, 36)}


def _check_dense_tasks(tasks: Mapping[str, int], model: str) -> dict[str, int]:
    from mtlkit.tasks import TASK_KINDS

    for task, channels in tasks.items():
        if task not in TASK_KINDS:
            raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASK_KINDS)}")
        if TASK_KINDS[task] != "dense":
            dense = ", ".join(t for t, k in TASK_KINDS.items() if k == "dense")
            raise ValueError(f"{model} predicts dense (per-pixel) tasks only; {task!r} is an {TASK_KINDS[task]}-level "
                             f"task. Valid tasks: {dense} (use a model with image-level heads, e.g. 'tiny', for it)")
        if int(channels) < 1:
            raise ValueError(f"task {task!r} needs at least one output channel; got {channels}")
    return {t: int(c) for t, c in tasks.items()}


class _DeepLabBase(nn.Module):
    """Shared constructor: validates tasks, builds the encoder, resolves the ASPP rates.

    Args:
        tasks: task name -> output channels (dense tasks only).
        encoder: "resnet18", "resnet34" or "resnet50" (timm).
        output_stride: 32, 16 or 8 (default 16), or give ``dilation`` instead.
        dilation: the course's flags: (False, False, False) = 32, (False, False, True) = 16, (False, True, True) = 8.
        pretrained: ImageNet weights through timm (needs the HF hub or a filled cache).
        aspp_rates: three dilation rates; default :data:`DEFAULT_ASPP_RATES` for the output stride.
        aspp_channels: ASPP width (256). skip_channels: projected stride-4 skip (48).
        decoder_channels: decoder width (256). aspp_dropout: dropout after the ASPP projection (0, as the DLAD
            template; the survey/LibMTL heads use 0.5).
        aspp_pooling_norm: "group" (default, trains at batch size 1) or "batch" (the DLAD template's form).
        normalize_input: ImageNet mean/std normalisation of [0, 1] images inside the encoder.
        aspp: True (default) for ASPP; False replaces it by a 1x1 conv-BN-ReLU projection to ``aspp_channels``
            (ablation: no atrous branches, no image pooling).
        skip: True (default) fuses the projected stride-4 skip in the decoder; False upsamples the ASPP output to
            1/4 and decodes it alone (ablation).
    """

    def __init__(self, tasks: Mapping[str, int], *, encoder: str = "resnet34", output_stride: int | None = None,
                 dilation: Sequence[bool] | None = None, pretrained: bool = False,
                 aspp_rates: Sequence[int] | None = None, aspp_channels: int = 256, skip_channels: int = 48,
                 decoder_channels: int = 256, aspp_dropout: float = 0.0, aspp_pooling_norm: str = "group",
                 normalize_input: bool = True, aspp: bool = True, skip: bool = True,
                 model_name: str = "deeplab") -> None:
        super().__init__()
        for option, value in (("aspp", aspp), ("skip", skip)):
            if not isinstance(value, bool):
                raise ValueError(f"{model_name}: {option} must be True or False (an ablation switch); got {value!r}")
        self.task_channels = _check_dense_tasks(tasks, model_name)
        self.tasks: tuple[str, ...] = tuple(self.task_channels)
        self.encoder = create_encoder(encoder, output_stride, dilation, pretrained=pretrained,
                                      normalize_input=normalize_input)
        self.output_stride = self.encoder.output_stride
        self.aspp_rates = tuple(aspp_rates) if aspp_rates is not None else DEFAULT_ASPP_RATES[self.output_stride]
        self.aspp_channels, self.skip_channels, self.decoder_channels = aspp_channels, skip_channels, decoder_channels
        self.aspp_dropout, self.aspp_pooling_norm = aspp_dropout, aspp_pooling_norm
        self.use_aspp, self.use_skip = aspp, skip

    def _make_aspp(self) -> nn.Module:
        """ASPP, or (``aspp=False``) a 1x1 conv-BN-ReLU projection: [B, C_enc, h, w] -> [B, aspp_channels, h, w]."""
        if self.use_aspp:
            return ASPP(self.encoder.channels[1], self.aspp_channels, self.aspp_rates, dropout=self.aspp_dropout,
                        pooling_norm=self.aspp_pooling_norm)
        projection = conv_bn_relu(self.encoder.channels[1], self.aspp_channels, 1)
        if self.aspp_dropout > 0:
            projection.append(nn.Dropout(self.aspp_dropout))
        return projection

    def _make_decoder(self, out_channels: int) -> DeepLabV3PlusDecoder:
        return DeepLabV3PlusDecoder(self.aspp_channels, self.encoder.channels[0], out_channels,
                                    skip_channels=self.skip_channels, channels=self.decoder_channels,
                                    use_skip=self.use_skip)


class DeepLabV3PlusJoint(_DeepLabBase):
    """Joint DeepLabV3+: shared encoder, ASPP and decoder; the decoder's last 1x1 conv outputs all tasks' channels.

    Components: ``encoder``, ``aspp``, ``decoder``. Shapes: images [B,3,H,W] -> {task: [B, C_task, H, W]}.
    """

    def __init__(self, tasks: Mapping[str, int], **options) -> None:
        options.setdefault("model_name", "deeplab-joint")
        super().__init__(tasks, **options)
        self.aspp = self._make_aspp()
        self.decoder = self._make_decoder(sum(self.task_channels.values()))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        skip, features = self.encoder(images)
        y = self.decoder(self.aspp(features), skip, size=images.shape[-2:])  # [B, sum C, H, W]
        return dict(zip(self.tasks, torch.split(y, list(self.task_channels.values()), dim=1)))

    def output_layer(self, task: str) -> OutputLayer:
        """The decoder's classifier and ``task``'s slice of its channels."""
        start = 0
        for t, c in self.task_channels.items():
            if t == task:
                return OutputLayer(self.decoder.classifier, slice(start, start + c))
            start += c
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(self.tasks)}")


class DeepLabV3PlusBranched(_DeepLabBase):
    """Branched DeepLabV3+: shared encoder, one ASPP and one decoder per task.

    Components: ``encoder``, ``aspp`` and ``decoders`` (ModuleDicts keyed by task).
    Shapes: images [B,3,H,W] -> {task: [B, C_task, H, W]}.
    """

    def __init__(self, tasks: Mapping[str, int], **options) -> None:
        options.setdefault("model_name", "deeplab-branched")
        super().__init__(tasks, **options)
        self.aspp = nn.ModuleDict({t: self._make_aspp() for t in self.tasks})
        self.decoders = nn.ModuleDict({t: self._make_decoder(c) for t, c in self.task_channels.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        skip, features = self.encoder(images)
        size = images.shape[-2:]
        return {t: self.decoders[t](self.aspp[t](features), skip, size=size) for t in self.tasks}

    def output_layer(self, task: str) -> OutputLayer:
        """The classifier of ``task``'s decoder."""
        return OutputLayer(self.decoders[task].classifier, slice(None))


class DeepLabV3PlusDistill(DeepLabV3PlusBranched):
    """Task distillation on the branched model (PAD-Net-style, as in the DLAD course).

    Components: ``encoder``, ``aspp``, ``decoders`` (initial predictions), ``distill`` (``distill[t][s]`` is the
    gate SA_{s->t} carrying task s's features to task t) and ``final`` (final decoders), all keyed by task.
    Shapes: images [B,3,H,W] -> {task: [B, C_task, H, W], "aux": {"initial": {task: [B, C_task, H, W]}}}.

    ``out["aux"]`` follows the model contract's dict of dicts (stage -> task -> prediction) that the Trainer's deep
    supervision iterates; metrics ignore it.
    """

    def __init__(self, tasks: Mapping[str, int], **options) -> None:
        options.setdefault("model_name", "deeplab-distill")
        super().__init__(tasks, **options)
        if len(self.tasks) < 2:
            raise ValueError(f"deeplab-distill needs at least two tasks to distil between; got {list(self.tasks)}. "
                             "Use deeplab-single for one task")
        c = self.decoder_channels
        self.distill = nn.ModuleDict({
            t: nn.ModuleDict({s: SelfAttentionGate(c, c) for s in self.tasks if s != t}) for t in self.tasks
        })
        self.final = nn.ModuleDict({t: DenseHead(c, ch, channels=c, num_convs=2)
                                    for t, ch in self.task_channels.items()})

    def forward(self, images: torch.Tensor) -> dict[str, object]:
        skip, features = self.encoder(images)
        size = images.shape[-2:]
        feats = {t: self.decoders[t].features(self.aspp[t](features), skip) for t in self.tasks}  # [B,256,H/4,W/4]
        initial = {t: upsample_to(self.decoders[t].classifier(feats[t]), size) for t in self.tasks}
        out: dict[str, object] = {}
        for t in self.tasks:
            refined = feats[t] + sum(gate(feats[s]) for s, gate in self.distill[t].items())
            out[t] = upsample_to(self.final[t](refined), size)
        out["aux"] = {"initial": initial}
        return out

    def output_layer(self, task: str) -> OutputLayer:
        """The classifier of ``task``'s final decoder."""
        return OutputLayer(self.final[task].classifier, slice(None))

    def aux_output_layers(self, task: str) -> list[OutputLayer]:
        """The classifier of ``task``'s initial decoder (deep supervision's prediction)."""
        return [OutputLayer(self.decoders[task].classifier, slice(None))]


#: Small widths of the smoke preset (notebooks 01-05 on a CPU).
SMOKE_OPTIONS: dict[str, object] = dict(encoder="resnet18", aspp_channels=64, decoder_channels=64, skip_channels=24)
_CITY = {"semseg": 4, "depth": 1}


@register_model("deeplab-joint", smoke=SMOKE_OPTIONS, smoke_tasks=_CITY)
def deeplab_joint(tasks: dict[str, int], **options) -> DeepLabV3PlusJoint:
    """Joint DeepLabV3+ (options: see :class:`_DeepLabBase`)."""
    return DeepLabV3PlusJoint(tasks, **options)


@register_model("deeplab-single", smoke=SMOKE_OPTIONS, smoke_tasks={"depth": 1})
def deeplab_single(tasks: dict[str, int], **options) -> DeepLabV3PlusJoint:
    """Single-task DeepLabV3+ baseline: the joint model with exactly one task."""
    if len(tasks) != 1:
        raise ValueError(f"deeplab-single takes exactly one task, e.g. {{'semseg': 19}}; got {list(tasks)}. "
                         "Build one model per task, or use deeplab-joint / deeplab-branched for several")
    options.setdefault("model_name", "deeplab-single")
    return DeepLabV3PlusJoint(tasks, **options)


@register_model("deeplab-branched", smoke=SMOKE_OPTIONS, smoke_tasks=_CITY)
def deeplab_branched(tasks: dict[str, int], **options) -> DeepLabV3PlusBranched:
    """Branched DeepLabV3+: one ASPP + decoder per task."""
    return DeepLabV3PlusBranched(tasks, **options)


@register_model("deeplab-distill", smoke=SMOKE_OPTIONS, smoke_tasks=_CITY)
def deeplab_distill(tasks: dict[str, int], **options) -> DeepLabV3PlusDistill:
    """Branched DeepLabV3+ with self-attention task distillation and deep supervision."""
    return DeepLabV3PlusDistill(tasks, **options)
