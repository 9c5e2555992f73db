"""Cross-stitch networks over ResNet branches (Misra et al., CVPR 2016), for dense, box and image-level tasks.

One timm ResNet per task; after each of its four stages a :class:`~mtlkit.models.cross_stitch.CrossStitchUnit`
mixes the branches' feature maps (the survey code's placements). Heads read their own branch: dense tasks the
course's DeepLabV3+ head, ``boxes`` a soft-argmax box head (xyxy pixels), image-level tasks pooling + linear.

The paper's recipe: branches started from single-task networks (:meth:`ResNetCrossStitch.init_from_single`), units
at 0.9 / 0.1, units trained with a larger learning rate (``param_groups=[("cross_stitch", m)]``). ``sources`` adds
frozen feature-only branches (the sequential/transfer variant). ``resnet-single`` is one branch and its head, no
units (the Δm baseline). Parameter accounting and the box head: docs/models.md.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from . import OutputLayer, register_model
from .blocks import ASPP, DeepLabV3PlusDecoder, conv_bn_relu
from .cross_stitch import CROSS_STITCH_MODES, CrossStitchUnit
from .deeplab import DEFAULT_ASPP_RATES
from .encoders import ResNetEncoder, create_encoder

__all__ = ["STAGES", "DenseTaskHead", "BoxHead", "ClassificationHead", "ResNetCrossStitch"]

#: The ResNet stages after which a cross-stitch unit mixes the branches.
STAGES = ("layer1", "layer2", "layer3", "layer4")


class DenseTaskHead(nn.Module):
    """ASPP on the last features + DeepLabV3+ decoder with the stride-4 features, upsampled to ``size``.

    Shapes: skip [B, C_skip, H/4, W/4], features [B, C, h, w] -> [B, out_channels, *size].
    """

    def __init__(self, in_channels: int, skip_in_channels: int, out_channels: int, aspp_channels: int = 256,
                 decoder_channels: int = 256, skip_channels: int = 48, rates: Sequence[int] = (6, 12, 18),
                 aspp_dropout: float = 0.0, aspp_pooling_norm: str = "group") -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, aspp_channels, rates, dropout=aspp_dropout, pooling_norm=aspp_pooling_norm)
        self.decoder = DeepLabV3PlusDecoder(aspp_channels, skip_in_channels, out_channels, skip_channels,
                                            decoder_channels)

    def forward(self, skip: torch.Tensor, features: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self.decoder(self.aspp(features), skip, size)


class BoxHead(nn.Module):
    """One box per image, xyxy pixels, by soft-argmax over a centre-logit map (module docstring).

    Shapes: features [B, C, h, w] -> [B, 4] in pixels of an image of ``size`` (H, W).
    """

    def __init__(self, in_channels: int, channels: int = 256) -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels, 3)
        self.predict = nn.Conv2d(channels, 3, 1)  # centre logit, width logit, height logit

    def forward(self, skip: torch.Tensor, features: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        out = self.predict(self.conv(features))  # [B, 3, h, w]
        b, _, h, w = out.shape
        height, width = float(size[0]), float(size[1])
        weights = out[:, 0].flatten(1).softmax(dim=1)  # [B, h*w], sums to 1 per image
        # pixel coordinates of the cell centres of the h x w grid, in the input image's pixels
        ys = (torch.arange(h, device=out.device, dtype=out.dtype) + 0.5) * (height / h)
        xs = (torch.arange(w, device=out.device, dtype=out.dtype) + 0.5) * (width / w)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # [h, w] each
        cx = (weights * grid_x.flatten()).sum(dim=1)  # [B]
        cy = (weights * grid_y.flatten()).sum(dim=1)
        extent = torch.sigmoid(out[:, 1:]).flatten(2)  # [B, 2, h*w] in (0, 1): width, height fractions
        bw = (weights * extent[:, 0]).sum(dim=1) * width
        bh = (weights * extent[:, 1]).sum(dim=1) * height
        return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=1)  # [B, 4]


class ClassificationHead(nn.Module):
    """Global average pooling + linear layer. Shapes: features [B, C, h, w] -> logits [B, out_channels]."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, out_channels)

    def forward(self, skip: torch.Tensor, features: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self.fc(features.mean(dim=(2, 3)))


def _task_kinds(tasks: Mapping[str, int], sources: Sequence[str], model: str) -> dict[str, str]:
    from mtlkit.tasks import TASK_KINDS

    kinds = {}
    for task, channels in tasks.items():
        if task not in TASK_KINDS:
            raise ValueError(f"{model}: unknown task {task!r}; valid tasks: {', '.join(TASK_KINDS)}")
        if int(channels) < 1:
            raise ValueError(f"{model}: task {task!r} needs at least one output channel; got {channels}")
        if TASK_KINDS[task] == "box" and int(channels) != 4:
            raise ValueError(f"{model}: task {task!r} predicts one xyxy box, so it needs 4 channels; got {channels}")
        kinds[task] = TASK_KINDS[task]
    overlap = [s for s in sources if s in tasks]
    if overlap or len(set(sources)) != len(sources):
        raise ValueError(f"{model}: sources must be distinct branch names that are not trained tasks; got "
                         f"sources={tuple(sources)} for tasks {list(tasks)}")
    return kinds


class ResNetCrossStitch(nn.Module):
    """One ResNet branch per task, cross-stitch units after every stage, one head per task.

    Args:
        tasks: task name -> output channels; dense, box (4) and image-level tasks (:data:`mtlkit.tasks.TASK_KINDS`).
        encoder: "resnet18", "resnet34" or "resnet50" (timm), the same for every branch.
        output_stride: 32, 16 (default: the last stage dilated) or 8.
        pretrained: ImageNet weights for every branch (timm; needs the HF hub or a filled cache).
        mode: cross-stitch form, "channelwise" (faithful, default) | "scalar" | "shared" (see
            :mod:`mtlkit.models.cross_stitch`); the same word as ``segnet-cross-stitch``'s.
        same, other: initial own-branch weight and total other-branch weight (0.9 / 0.1).
        shared_init: initial weight of each branch in the "shared" mode (1.0, a plain sum).
        sources: extra branch names that only feed the units (frozen, no head): the sequential/transfer variant.
        aspp_channels, decoder_channels, skip_channels: widths of the dense heads (256 / 256 / 48).
        box_channels: width of the box head's 3x3 conv (256).
        aspp_rates: three ASPP dilation rates; default ``DEFAULT_ASPP_RATES[output_stride]``.
        aspp_dropout, aspp_pooling_norm: as for the DeepLab family (0 and "group": the course's head).
        normalize_input: ImageNet mean/std normalisation of [0, 1] images inside the model.
    Components (:func:`mtlkit.models.count_parameters`): ``branches.<name>``, ``cross_stitch`` (the units),
    ``heads.<task>``.
    Shapes: images [B, 3, H, W] -> {dense task: [B, K, H, W], boxes: [B, 4] xyxy pixels, image task: [B, K]}.
    """

    def __init__(self, tasks: Mapping[str, int], *, encoder: str = "resnet18", output_stride: int = 16,
                 pretrained: bool = False, mode: str = "channelwise", same: float = 0.9, other: float = 0.1,
                 shared_init: float = 1.0, sources: Sequence[str] = (), aspp_channels: int = 256,
                 decoder_channels: int = 256, skip_channels: int = 48, box_channels: int = 256,
                 aspp_rates: Sequence[int] | None = None, aspp_dropout: float = 0.0,
                 aspp_pooling_norm: str = "group", normalize_input: bool = True,
                 model_name: str = "resnet-cross-stitch") -> None:
        super().__init__()
        if mode not in CROSS_STITCH_MODES:
            raise ValueError(f"{model_name}: unknown mode {mode!r}; valid modes: {', '.join(CROSS_STITCH_MODES)}")
        if isinstance(sources, str):
            sources = (sources,)
        sources = tuple(str(s) for s in sources)
        self.kinds = _task_kinds(tasks, sources, model_name)
        self.task_channels = {t: int(c) for t, c in tasks.items()}
        self.tasks: tuple[str, ...] = tuple(self.task_channels)
        self.sources = sources
        self.mode = mode
        names = self.tasks + sources
        # one independent ResNet per branch; the stem and the four stages are run one by one (see forward)
        self.branches = nn.ModuleDict({n: create_encoder(encoder, output_stride, pretrained=pretrained,
                                                         normalize_input=normalize_input) for n in names})
        first: ResNetEncoder = self.branches[names[0]]  # type: ignore[assignment]
        self.output_stride = first.output_stride
        #: output channels C_1..C_4 of the four stages (64/128/256/512 for ResNet-18/34)
        self.stage_channels: tuple[int, ...] = tuple(_stage_channels(first.body[s]) for s in STAGES)
        if len(names) > 1:
            targets = tuple(range(len(self.tasks)))  # sources come last and continue unmixed
            self.cross_stitch = nn.ModuleList(
                CrossStitchUnit(len(names), c, mode=mode, same=same, other=other, shared_init=shared_init,
                                targets=targets) for c in self.stage_channels)
        else:
            self.cross_stitch = nn.ModuleList()
        rates = tuple(aspp_rates) if aspp_rates is not None else DEFAULT_ASPP_RATES[self.output_stride]
        c_skip, c_last = self.stage_channels[0], self.stage_channels[-1]
        heads: dict[str, nn.Module] = {}
        for task, channels in self.task_channels.items():
            if self.kinds[task] == "dense":
                heads[task] = DenseTaskHead(c_last, c_skip, channels, aspp_channels, decoder_channels, skip_channels,
                                            rates, aspp_dropout, aspp_pooling_norm)
            elif self.kinds[task] == "box":
                heads[task] = BoxHead(c_last, box_channels)
            else:
                heads[task] = ClassificationHead(c_last, channels)
        self.heads = nn.ModuleDict(heads)
        for name in sources:
            self.branches[name].requires_grad_(False)

    # --------------------------------------------------------------------------------------------- forward
    def train(self, mode: bool = True) -> ResNetCrossStitch:
        super().train(mode)
        for name in self.sources:  # frozen networks keep their BatchNorm statistics
            self.branches[name].eval()
        return self

    def _stem(self, name: str, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] (already normalised) -> [B, 64, H/4, W/4]: conv1-BN-ReLU-maxpool of branch ``name``."""
        body = self.branches[name].body
        return body["maxpool"](body["act1"](body["bn1"](body["conv1"](images))))

    def stage_features(self, images: torch.Tensor) -> list[list[torch.Tensor]]:
        """Every branch's features after each stage's unit: ``[stage][branch]`` -> [B, C_i, H/r_i, W/r_i]
        (branches in the order tasks, then sources)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W]; got shape {tuple(images.shape)}")
        first: ResNetEncoder = self.branches[self.tasks[0]]  # type: ignore[assignment]
        x = (images - first.mean) / first.std if first.normalize_input else images
        names = self.tasks + self.sources
        n_out = len(self.tasks)
        with torch.no_grad():  # the sources are frozen: no graph needed for them
            src = [self._stem(n, x) for n in self.sources]
        xs = [self._stem(n, x) for n in self.tasks] + src
        per_stage = []
        for i, stage in enumerate(STAGES):
            trained = [self.branches[n].body[stage](xs[j]) for j, n in enumerate(names[:n_out])]
            with torch.no_grad():
                src = [self.branches[n].body[stage](xs[n_out + j]) for j, n in enumerate(self.sources)]
            xs = trained + src  # [B, C_i, h_i, w_i] each
            if len(self.cross_stitch):
                xs = list(self.cross_stitch[i](xs)) + src  # trained branches continue from their mixtures
            per_stage.append(xs)
        return per_stage

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        stages = self.stage_features(images)
        size = images.shape[-2:]
        return {t: head(stages[0][j], stages[-1][j], size) for j, (t, head) in enumerate(self.heads.items())}

    def output_layer(self, task: str) -> OutputLayer:
        """The last layer of ``task``'s head: the decoder's classifier (dense), the linear layer (image-level) or
        the box head's 1x1 conv (its read-out, soft-argmax and sigmoid, is not linear)."""
        head = self.heads[task]
        if isinstance(head, DenseTaskHead):
            return OutputLayer(head.decoder.classifier, slice(None))
        return OutputLayer(head.predict if isinstance(head, BoxHead) else head.fc, slice(None))

    # ------------------------------------------------------------------------------------- paper's recipe
    def cross_stitch_parameters(self) -> list[nn.Parameter]:
        """The mixing weights, to give them their own learning rate (the paper: ~100x the network's)."""
        return list(self.cross_stitch.parameters())

    def network_parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter except the cross-stitch weights (branches of the tasks, heads)."""
        units = {id(p) for p in self.cross_stitch_parameters()}
        return [p for p in self.parameters() if id(p) not in units and p.requires_grad]

    def alphas(self) -> list[torch.Tensor]:
        """Per unit the mixing matrix [T_out, N] (target task, source branch), channel-averaged (for plots)."""
        return [unit.alpha() for unit in self.cross_stitch]

    @property
    def branch_names(self) -> tuple[str, ...]:
        """The branches in unit order: the trained tasks, then the sources."""
        return self.tasks + self.sources

    @torch.no_grad()
    def init_from_single(self, singles: Mapping[str, nn.Module], heads: bool = True) -> ResNetCrossStitch:
        """Copy trained single-task networks into the branches (and, with ``heads``, the task heads).

        Args:
            singles: branch name -> a single-task model of this family (``build("resnet-single", {name: K})``,
                same encoder), e.g. ``{"semseg": m1, "boxes": m2, "binary": m3}``. Every branch needs one.
            heads: also copy ``heads.<task>`` for the trained tasks.
        Returns ``self``. The cross-stitch units are left as initialised (0.9 / 0.1).
        """
        missing = [n for n in self.branch_names if n not in singles]
        if missing:
            raise ValueError(f"init_from_single needs a single-task model for every branch {list(self.branch_names)}; "
                             f"missing {missing}. Train build('resnet-single', {{task: channels}}) for each first")
        for name in self.branch_names:
            single = singles[name]
            if not (hasattr(single, "branches") and name in single.branches):
                raise ValueError(f"init_from_single: the model given for {name!r} ({type(single).__name__}) has no "
                                 f"branch {name!r}; pass build('resnet-single', {{{name!r}: channels}}) models")
            try:
                self.branches[name].load_state_dict(single.branches[name].state_dict())
                if heads and name in self.heads:
                    self.heads[name].load_state_dict(single.heads[name].state_dict())
            except RuntimeError as err:  # shapes differ: another encoder or head width
                raise ValueError(f"init_from_single: the single-task model for {name!r} does not fit this "
                                 f"network (same encoder and head widths needed): {str(err)[:300]}") from None
        return self


def _stage_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    norm = getattr(last, "bn3", None) or last.bn2  # Bottleneck (ResNet-50) or BasicBlock (ResNet-18/34)
    return norm.num_features


#: Small widths of the smoke preset (notebook 06 on a CPU).
SMOKE_OPTIONS: dict[str, object] = dict(encoder="resnet18", aspp_channels=64, decoder_channels=64, skip_channels=24)


@register_model("resnet-cross-stitch", smoke=SMOKE_OPTIONS,
                smoke_tasks={"semseg": 3, "depth": 1, "boxes": 4, "binary": 2})
def resnet_cross_stitch(tasks: dict[str, int], **options) -> ResNetCrossStitch:
    """One ResNet per task linked by cross-stitch units (``mode`` "channelwise" | "scalar" | "shared", as for
    ``segnet-cross-stitch``); ``sources=(...)`` adds frozen feature-only branches (sequential transfer)."""
    sources = options.get("sources") or ()
    if len(tasks) + (1 if isinstance(sources, str) else len(tuple(sources))) < 2:
        raise ValueError("resnet-cross-stitch links at least 2 branches; got one task and no sources. "
                         "Use 'resnet-single' for a single-task network")
    return ResNetCrossStitch(tasks, **options)


@register_model("resnet-single", smoke=SMOKE_OPTIONS, smoke_tasks={"depth": 1})
def resnet_single(tasks: dict[str, int], **options) -> ResNetCrossStitch:
    """The single-task network of the family: one ResNet branch and its head, no units (the Δm baseline)."""
    if len(tasks) != 1 or options.get("sources"):
        raise ValueError(f"resnet-single predicts exactly one task with no sources; got tasks {list(tasks)}. "
                         "Use 'resnet-cross-stitch' for several")
    return ResNetCrossStitch(tasks, model_name="resnet-single", **options)
