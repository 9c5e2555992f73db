"""Model registry: ``build(name, tasks, **options)`` is the one way to make a model of the kit.

Every model follows the model contract of DESIGN.md: ``model(images) -> dict[task, prediction]`` at input
resolution, a ``tasks`` tuple, and named top-level components (``encoder``, ``decoder``, ``heads``, ...) so that
:func:`count_parameters` can report them.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a model constructor ``fn(tasks: dict[str, int], **options)`` under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    """Names accepted by :func:`build`."""
    _load_families()
    return sorted(_REGISTRY)


def build(name: str, tasks: Mapping[str, int], **options) -> nn.Module:
    """Build model ``name`` for ``tasks`` (task name -> output channels), e.g. ``{"semseg": 13, "depth": 1}``."""
    _load_families()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(sorted(_REGISTRY))}")
    if not tasks:
        raise ValueError("a model needs at least one task, e.g. build(name, {'semseg': 13, 'depth': 1})")
    tasks = {str(k): int(v) for k, v in dict(tasks).items()}
    return _REGISTRY[name](tasks, **options)


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


def _load_families() -> None:
    """Import every module of this package once: each family file registers its models on import."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
