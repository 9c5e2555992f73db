"""Distributed data parallel (DDP) helpers of the Trainer: joining the process group under ``torchrun`` and the
few collective operations the Trainer needs (gradient and loss averaging, broadcasting, gathering predictions).

Under ``torchrun`` (``WORLD_SIZE`` > 1) the Trainer joins the group (gloo on CPU, NCCL on CUDA), shards the
training data with a ``DistributedSampler``, wraps the model in DDP, and only rank 0 shows progress and writes files.
Validation/test metrics are exact: each rank evaluates a disjoint shard and rank 0's meters see every prediction.
Every function here is a no-op (or the identity) in a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["DistInfo", "setup_distributed", "shutdown", "resolve_device", "unwrap", "to_cpu"]


@dataclass
class DistInfo:
    """This process's place in the group, and the device collectives run on (gloo needs CPU tensors)."""

    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False
    comm_device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """The sum (or max) over ranks of ``tensor``, on ``tensor``'s device; itself in a single process."""
        if not self.enabled:
            return tensor
        t = tensor.to(self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t.to(tensor.device)

    def broadcast_(self, tensors: Iterable[torch.Tensor]) -> None:
        """Copy rank 0's values into ``tensors`` (in place) on every rank."""
        if not self.enabled:
            return
        for x in tensors:
            t = x.data.to(self.comm_device)
            dist.broadcast(t, 0)
            x.data.copy_(t.to(x.device))

    def average_gradients_(self, params: Iterable[nn.Parameter]) -> None:
        """Average the gradients of ``params`` over ranks (those DDP's own hooks do not cover)."""
        if not self.enabled:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.copy_(self.all_reduce(p.grad) / self.world_size)

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` (CPU copies), on rank 0; None elsewhere."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, to_cpu(obj))
        return out if self.is_main else None

    def from_main(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model: nn.Module, device: torch.device, find_unused_parameters: bool) -> nn.Module:
        """The DDP wrapper of ``model`` (the model itself in a single process)."""
        if not self.enabled or isinstance(model, nn.parallel.DistributedDataParallel):
            return model
        kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        return nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused_parameters, **kwargs)


def setup_distributed(device_request: str) -> DistInfo:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1), else a single-process info."""
    if dist.is_available() and dist.is_initialized():
        info = DistInfo(dist.get_world_size() > 1, dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return DistInfo()
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this torch build")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device_request in ("auto", "cuda") or device_request.startswith("cuda")
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        info = DistInfo(True, dist.get_rank(), dist.get_world_size(), local, True)
    if info.enabled and dist.get_backend() == "nccl":
        info.comm_device = torch.device("cuda", torch.cuda.current_device())
    return info


def shutdown(info: DistInfo) -> None:
    """Leave the process group if this process created it (after every rank got here)."""
    if info.initialised_here and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def resolve_device(request: str | torch.device, info: DistInfo) -> torch.device:
    """``"auto"`` -> CUDA when available; a bare ``"cuda"`` -> this rank's GPU under torchrun."""
    request = str(request)
    if request == "auto":
        request = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(request)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but no CUDA device is available; use device='auto' or 'cpu' "
                             "(--device auto or cpu)")
        if device.index is None:
            device = torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
    return device


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def to_cpu(x: Any) -> Any:
    """Detached CPU copies of the tensors in ``x`` (dicts, lists and tuples followed)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, Mapping):
        return {k: to_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_cpu(v) for v in x)
    return x
