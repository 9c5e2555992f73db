"""Model registry: ``build(name, tasks, **options)`` is the one way to make a model of the kit.

Every model follows the model contract (docs/models.md): ``model(images) -> {task: prediction}`` at input
resolution (auxiliary predictions only under ``"aux"``), a ``tasks`` tuple, named top-level components for
:func:`count_parameters`, and ``output_layer(task)`` naming the layer whose bias :func:`set_output_bias` sets.
Each registration carries the model's smoke configuration (small widths, a task set it serves), which the
contract test (tests/test_model_contract.py) and the benchmarks read with :func:`smoke_config`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple
from collections.abc import Callable, Mapping

import torch
import torch.nn as nn

__all__ = ["register_model", "list_models", "build", "smoke_config", "count_parameters", "OutputLayer",
           "output_layer", "set_output_bias"]


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., nn.Module]
    smoke_options: Mapping[str, Any] = field(default_factory=dict)
    smoke_tasks: Mapping[str, int] = field(default_factory=dict)


_REGISTRY: dict[str, _Entry] = {}

#: The task set a model is smoke-tested with when its registration names none.
DEFAULT_SMOKE_TASKS: dict[str, int] = {"semseg": 4, "depth": 1, "normals": 3}


def register_model(name: str, *, smoke: Mapping[str, Any] | None = None,
                   smoke_tasks: Mapping[str, int] | None = None) -> Callable[[Callable[..., nn.Module]], Callable]:
    """Decorator adding a model constructor ``fn(tasks: dict[str, int], **options)`` under ``name``.

    Args:
        smoke: constructor options of the model's small (smoke/unit) configuration, e.g. ``{"width_mult": 0.125}``.
        smoke_tasks: a task set the model serves, for the contract test (default :data:`DEFAULT_SMOKE_TASKS`).
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = _Entry(fn, dict(smoke or {}), dict(smoke_tasks or DEFAULT_SMOKE_TASKS))
        return fn

    return wrap


def list_models() -> list[str]:
    """Names accepted by :func:`build`."""
    _load_families()
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    _load_families()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build(name: str, tasks: Mapping[str, int], **options) -> nn.Module:
    """Build model ``name`` for ``tasks`` (task name -> output channels), e.g. ``{"semseg": 13, "depth": 1}``."""
    entry = _entry(name)
    if not tasks:
        raise ValueError("a model needs at least one task, e.g. build(name, {'semseg': 13, 'depth': 1})")
    tasks = {str(k): int(v) for k, v in dict(tasks).items()}
    return entry.fn(tasks, **options)


def smoke_config(name: str) -> tuple[dict[str, int], dict[str, Any]]:
    """``(tasks, options)`` of model ``name``'s smoke configuration (a small model for tests and benchmarks), e.g.
    ``tasks, options = smoke_config("resnet-mtan"); build("resnet-mtan", tasks, **options)``."""
    entry = _entry(name)
    return dict(entry.smoke_tasks), dict(entry.smoke_options)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> dict[str, int]:
    """Parameter count per top-level component and in total.

    Children that are ``nn.ModuleDict`` (per-task heads or decoders) are reported per key as ``"heads.semseg"``.
    Parameters registered directly on the model are reported under ``"other"``.
    """
    counts: dict[str, int] = {}

    def n(params) -> int:
        return sum(p.numel() for p in params if p.requires_grad or not trainable_only)

    for child_name, child in model.named_children():
        if isinstance(child, nn.ModuleDict):
            for key, sub in child.items():
                counts[f"{child_name}.{key}"] = n(sub.parameters())
        else:
            counts[child_name] = n(child.parameters())
    direct = n(model.parameters(recurse=False))
    if direct:
        counts["other"] = direct
    counts["total"] = n(model.parameters())
    return counts


class OutputLayer(NamedTuple):
    """The last layer producing a task's output: ``layer`` (Conv2d or Linear) and the ``channels`` (a slice of its
    outputs) that the task reads. Outputs of ``layer`` outside ``channels`` belong to other tasks; where the layer is
    shared by several tasks (TSN), ``channels`` may cover other tasks' channels too (see the model's docstring)."""

    layer: nn.Module
    channels: slice


def output_layer(model: nn.Module, task: str) -> OutputLayer:
    """``model.output_layer(task)``, checked: the layer producing ``task``'s output and its channel slice."""
    if not hasattr(model, "output_layer"):
        raise TypeError(f"{type(model).__name__} has no output_layer(task) method; every registered model has one")
    tasks = getattr(model, "tasks", ())
    if task not in tasks:
        raise ValueError(f"unknown task {task!r} for this {type(model).__name__}; valid tasks: {', '.join(tasks)}")
    found = model.output_layer(task)
    if not isinstance(found, OutputLayer):
        found = OutputLayer(found, slice(None))
    return found


@torch.no_grad()
def set_output_bias(model: nn.Module, task: str, value: float | torch.Tensor,
                    aux: bool = True) -> OutputLayer:
    """Set the bias of ``task``'s output layer to ``value`` (a number, or one value per task channel).

    The standard way to start a regression head at the right scale: with ``value`` the training split's mean depth,
    the depth head predicts the mean from the first step (docs/models.md, "Output bias"). Where the read-out after
    the layer is linear and keeps constants (1x1 conv or linear layer, bilinear upsampling, channel averaging), the
    task's output moves by exactly the change of the bias. With ``aux``, auxiliary output layers of the task (deep
    supervision: ``model.aux_output_layers(task)``) get the same bias. Returns the main :class:`OutputLayer`.
    """
    found = output_layer(model, task)
    layers = [found]
    if aux and hasattr(model, "aux_output_layers"):
        layers += list(model.aux_output_layers(task))
    for layer, channels in layers:
        if getattr(layer, "bias", None) is None:
            raise ValueError(f"the output layer of task {task!r} ({type(layer).__name__}) has no bias to set")
        bias = layer.bias[channels]
        value_t = torch.as_tensor(value, dtype=bias.dtype, device=bias.device)
        if value_t.numel() not in (1, bias.numel()):
            raise ValueError(f"set_output_bias: task {task!r}'s output layer has {bias.numel()} values to set; got "
                             f"{value_t.numel()} (pass one number, or one value per channel)")
        bias.copy_(value_t.reshape(-1).expand_as(bias) if value_t.numel() == 1 else value_t.reshape(bias.shape))
    return found


def _load_families() -> None:
    """Import every module of this package once: each family file registers its models on import."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
