"""timm ResNet encoders for the dense models: a stride-4 skip and the last features, with optional dilation.

Dilation ("output stride") is timm's: ``output_stride=16`` replaces the stride of the last stage by dilation 2,
``8`` the last two (dilations 2 and 4), which timm supports for BasicBlock ResNets too (torchvision refuses).
The DLAD course describes the same thing with ``replace_stride_with_dilation`` flags, accepted here as
``dilation=(False, False, True)``.
"""
from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
import torch.nn as nn

__all__ = ["ENCODERS", "DILATION_TO_OUTPUT_STRIDE", "PretrainedWeightsUnavailable", "check_encoder",
           "resolve_output_stride",
           "ResNetEncoder", "create_encoder"]

#: Encoder names accepted by :class:`ResNetEncoder` (timm model names).
ENCODERS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50")

#: Weight tags of the encoders: timm's default ("a1_in1k", timm's own ImageNet recipe) and torchvision's original
#: weights ("tv_in1k"), the ones the authors' code loads (docs/fidelity.md). Written as ``"resnet50.tv_in1k"``.
ENCODER_TAGS: tuple[str, ...] = ("a1_in1k", "tv_in1k")

#: The course's dilation flags (stride of stages 2, 3, 4 replaced by dilation) -> output stride.
DILATION_TO_OUTPUT_STRIDE: dict[tuple[bool, bool, bool], int] = {
    (False, False, False): 32,
    (False, False, True): 16,
    (False, True, True): 8,
}

#: ImageNet statistics of the timm ResNet weights; images arrive in [0, 1] (normalisation is the model's job).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Modules whose exceptions mean "the weights could not be fetched" (besides OSError, which covers
#: requests/urllib connection errors and huggingface_hub's LocalEntryNotFoundError).
_NETWORK_ERROR_MODULES = ("huggingface_hub", "requests", "urllib3", "httpx", "httpcore", "urllib", "socket")


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were requested (``pretrained=True``) but could not be downloaded or found in the cache."""


def resolve_output_stride(output_stride: int | None = None,
                          dilation: Sequence[bool] | None = None, default: int = 16) -> int:
    """The encoder's output stride from ``output_stride`` (32, 16, 8) and/or the course's ``dilation`` flags.

    ``dilation`` maps (False, False, False) -> 32, (False, False, True) -> 16, (False, True, True) -> 8. When both
    are given they must agree; when neither is, ``default`` is returned.
    """
    from_flags = None
    if dilation is not None:
        flags = tuple(bool(f) for f in dilation)
        if flags not in DILATION_TO_OUTPUT_STRIDE:
            valid = ", ".join(f"{k} -> output stride {v}" for k, v in DILATION_TO_OUTPUT_STRIDE.items())
            raise ValueError(f"unsupported dilation flags {tuple(dilation)}; valid flags: {valid}. Dilation can only "
                             "replace the strides of the last stages (a dilated stage keeps every later stage dilated)")
        from_flags = DILATION_TO_OUTPUT_STRIDE[flags]
    if output_stride is not None:
        if output_stride not in (32, 16, 8):
            raise ValueError(f"output_stride must be 32, 16 or 8; got {output_stride!r}")
        if from_flags is not None and from_flags != output_stride:
            raise ValueError(f"output_stride={output_stride} contradicts dilation={tuple(dilation)} "
                             f"(which means output stride {from_flags}); pass only one of them")
        return int(output_stride)
    return from_flags if from_flags is not None else default


def check_encoder(name: str) -> str:
    """``name`` if it is an encoder of :data:`ENCODERS`, optionally with a weight tag of :data:`ENCODER_TAGS`
    (``"resnet50.tv_in1k"``: torchvision's weights, as the authors' code); a clear error otherwise."""
    base, _, tag = str(name).partition(".")
    if base not in ENCODERS or (tag and tag not in ENCODER_TAGS):
        raise ValueError(f"unknown encoder {name!r}; valid encoders: {', '.join(ENCODERS)}, optionally with a weight "
                         f"tag: {', '.join(ENCODER_TAGS)} (e.g. 'resnet50.tv_in1k', torchvision's ImageNet weights)")
    return str(name)


def _is_download_error(err: BaseException) -> bool:
    if isinstance(err, (OSError, ConnectionError, TimeoutError)):
        return True
    return any(type(e).__module__.split(".")[0] in _NETWORK_ERROR_MODULES for e in (err, err.__cause__) if e)


class ResNetEncoder(nn.Module):
    """A timm ResNet (``features_only``) returning the stride-4 skip and the last (possibly dilated) features.

    Args:
        name: one of :data:`ENCODERS`, optionally with a weight tag (``"resnet50.tv_in1k"``, see :func:`check_encoder`).
        output_stride: 32 (no dilation), 16 or 8.
        pretrained: load timm's ImageNet weights (downloads through the HF hub unless cached).
        normalize_input: subtract the ImageNet mean and divide by its std inside the model, so that images can
            stay in [0, 1] as datasets give them (buffers, not parameters: counts are unaffected).
    Attributes:
        channels: (skip channels, last channels): (64, 512) for ResNet-18/34, (256, 2048) for ResNet-50.
        reductions: (4, output_stride).
    Shapes: images [B, 3, H, W] -> (skip [B, C_skip, H/4, W/4], features [B, C, H/os, W/os]) (sizes rounded up).
    """

    def __init__(self, name: str = "resnet34", output_stride: int = 32, pretrained: bool = False,
                 normalize_input: bool = True) -> None:
        super().__init__()
        name = check_encoder(name)
        output_stride = resolve_output_stride(output_stride)
        kwargs = dict(features_only=True, out_indices=(1, 4), output_stride=output_stride)
        try:
            # looked up on the module at call time so tests can fake an offline hub
            self.body = timm.create_model(name, pretrained=pretrained, **kwargs)
        except Exception as err:
            if pretrained and _is_download_error(err):
                raise PretrainedWeightsUnavailable(
                    f"could not download ImageNet weights for encoder {name!r} through timm "
                    f"({type(err).__name__}: {str(err)[:200]}). Either build the model with pretrained=False "
                    "(random initialisation, the smoke/unit default), or make the weights available offline: "
                    f"run timm.create_model({name!r}, pretrained=True) once on a machine with internet access and copy "
                    "its Hugging Face cache (~/.cache/huggingface, or $HF_HOME) or torch cache ($TORCH_HOME) here; "
                    "set HF_HUB_OFFLINE=1 to skip the network retries."
                ) from err
            raise
        self.name = name
        self.output_stride = output_stride
        self.channels: tuple[int, int] = tuple(self.body.feature_info.channels())  # type: ignore[assignment]
        self.reductions: tuple[int, int] = tuple(self.body.feature_info.reduction())  # type: ignore[assignment]
        assert self.reductions == (4, output_stride), self.reductions
        self.normalize_input = normalize_input
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W]; got shape {tuple(images.shape)}")
        if self.normalize_input:
            images = (images - self.mean) / self.std
        skip, features = self.body(images)
        return skip, features


def create_encoder(name: str = "resnet34", output_stride: int | None = None, dilation: Sequence[bool] | None = None,
                   pretrained: bool = False, normalize_input: bool = True) -> ResNetEncoder:
    """:class:`ResNetEncoder` with the output stride given by ``output_stride`` or the course's ``dilation`` flags
    (default 16)."""
    return ResNetEncoder(name, resolve_output_stride(output_stride, dilation), pretrained=pretrained,
                         normalize_input=normalize_input)
