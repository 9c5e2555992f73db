"""Training throughput, peak memory and inference latency of every model in the registry.

Each model is measured at the smoke resolution (the narrow smoke-preset configuration the notebooks train on a CPU)
and at the paper resolution (the full-size model of the paper recipe), on the CPU and, when a GPU is present, on
CUDA in fp32 and AMP (fp16 autocast + GradScaler), each with channels_last off and on. A training step is
zero_grad + forward + a surrogate loss (mean square of every output: the loss of a real task costs a negligible
share of a step) + backward + Adam step. Inference latency is one batch-1 forward in eval mode under no_grad.

Run: ``python -m benchmarks models`` (``--help`` for options).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping

import torch
import torch.nn as nn

from benchmarks import common

NYU = {"semseg": 13, "depth": 1, "normals": 3}
CITY = {"semseg": 19, "depth": 1}
PASCAL = {"semseg": 21, "parts": 7, "edge": 1, "normals": 3, "saliency": 1}
BRODEN = {"scene": 5, "semseg": 47, "parts": 28, "material": 10, "texture": 6}


def _smoke(name: str) -> dict[str, Any]:
    """The model's smoke options, from its registration (mtlkit.models.smoke_config): one place for them."""
    from mtlkit.models import smoke_config

    return smoke_config(name)[1]


@dataclass(frozen=True)
class ModelConfig:
    """How to benchmark one registered model: its tasks, its paper options and the two resolutions.

    The smoke (narrow) options are not written here: they live with the model's registration (``smoke``).
    """

    name: str
    tasks: Mapping[str, int]
    paper: Mapping[str, Any] = field(default_factory=dict)   # the paper's full-size options
    smoke_size: tuple[int, int] = (64, 64)                   # H, W of the smoke preset's data
    paper_size: tuple[int, int] = (288, 384)                 # H, W of the paper recipe's data
    paper_batch: int = 8                                     # the paper recipe's batch size (on CUDA)
    task_conditioned: bool = False                           # model(images, task=name): TSN

    @property
    def smoke(self) -> dict[str, Any]:
        """Narrow options trained in the smoke preset (the registry's)."""
        return _smoke(self.name)


_DEEPLAB = dict(paper=dict(encoder="resnet34"), smoke_size=(64, 128), paper_size=(256, 512), paper_batch=4)
_SEGNET = dict(paper=dict(width_mult=1.0), paper_batch=2)
_RESNET = dict(paper=dict(encoder="resnet50"), paper_batch=8)
_ROWS: dict[str, tuple[Mapping[str, int], dict[str, Any]]] = {
    "tiny": (NYU, dict(paper=dict(width=32))),
    "deeplab-joint": (CITY, _DEEPLAB),
    "deeplab-single": ({"semseg": 19}, _DEEPLAB),
    "deeplab-branched": (CITY, _DEEPLAB),
    "deeplab-distill": (CITY, _DEEPLAB),
    "segnet-single": ({"semseg": 13}, _SEGNET),
    "segnet-stan": ({"semseg": 13}, _SEGNET),
    "segnet-split": (NYU, _SEGNET),
    "segnet-dense": (NYU, _SEGNET),
    "segnet-mtan": (NYU, _SEGNET),
    "segnet-cross-stitch": (NYU, _SEGNET),
    "resnet-shared": (NYU, _RESNET),
    "resnet-mtan": (NYU, _RESNET),
    "resnet-cross-stitch": ({"semseg": 13, "depth": 1}, dict(paper={})),
    "resnet-single": ({"semseg": 13}, dict(paper={})),
    "tsn": (PASCAL, dict(paper=dict(encoder="resnet18"), paper_size=(512, 512), task_conditioned=True)),
    "unet": (PASCAL, dict(paper=dict(encoder="resnet18"), paper_size=(512, 512))),
    "upernet": (BRODEN, dict(paper=dict(encoder="resnet50"), paper_batch=8)),
}
CONFIGS: dict[str, ModelConfig] = {name: ModelConfig(name, tasks, **kw) for name, (tasks, kw) in _ROWS.items()}
QUICK_MODELS = ("tiny",)


@dataclass(frozen=True)
class Setting:
    device: str
    amp: bool
    channels_last: bool

    @property
    def label(self) -> str:
        return f"{'amp' if self.amp else 'fp32'}{' +CL' if self.channels_last else ''}"


def settings(device: str, resolution: str) -> list[Setting]:
    """fp32 and AMP, each with channels_last off and on, on CUDA. On the CPU: fp32 with channels_last off/on at
    the smoke resolution and plain fp32 at the paper resolution (full-size models take seconds per image there;
    CPU autocast is bf16, not the GPU recipe, so AMP is a CUDA-only row)."""
    if device == "cuda":
        return [Setting(device, amp, cl) for amp in (False, True) for cl in (False, True)]
    return [Setting(device, False, cl) for cl in ((False, True) if resolution == "smoke" else (False,))]


def build_model(name: str, resolution: str) -> nn.Module:
    from mtlkit.models import build

    cfg = CONFIGS[name]
    return build(name, dict(cfg.tasks), **dict(cfg.smoke if resolution == "smoke" else cfg.paper))


def _outputs(model: nn.Module, images: torch.Tensor, cfg: ModelConfig, all_tasks: bool) -> list[torch.Tensor]:
    """Every prediction tensor of a forward pass (aux predictions included); TSN answers one task per call."""
    if cfg.task_conditioned:
        tasks = list(cfg.tasks) if all_tasks else list(cfg.tasks)[:1]  # training: one task per step (Trainer)
        return [_task_output(model(images, task=t), t) for t in tasks]
    out = model(images)
    flat: list[torch.Tensor] = []

    def collect(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            flat.append(x)
        elif isinstance(x, Mapping):
            for v in x.values():
                collect(v)

    collect(out)
    return flat


def _task_output(out: Any, task: str) -> torch.Tensor:
    return out[task] if isinstance(out, Mapping) else out


def surrogate_loss(outputs: list[torch.Tensor]) -> torch.Tensor:
    return sum(o.float().square().mean() for o in outputs)


@dataclass
class Measurement:
    train_images_per_s: float = math.nan
    peak_mb: float = math.nan
    latency_ms: float = math.nan
    compile_s: float = math.nan
    note: str = ""


def measure(name: str, resolution: str, setting: Setting, batch: int, repeats: int, latency_repeats: int,
            compile: bool = False, latency_warmup: int = 1, train_warmup: int = 1) -> Measurement:
    """Train-step throughput, peak memory and batch-1 latency of one model in one setting."""
    cfg = CONFIGS[name]
    device = torch.device(setting.device)
    h, w = cfg.smoke_size if resolution == "smoke" else cfg.paper_size
    torch.manual_seed(0)
    model = build_model(name, resolution).to(device)
    if setting.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=setting.amp) if device.type == "cuda" else None
    fmt = torch.channels_last if setting.channels_last else torch.contiguous_format
    images = torch.rand(batch, 3, h, w, device=device).contiguous(memory_format=fmt)
    step_model: nn.Module = model
    result = Measurement()
    if compile:
        step_model = torch.compile(model)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=setting.amp):
            loss = surrogate_loss(_outputs(step_model, images, cfg, all_tasks=False))
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    model.train()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        firsts = [common.timed(step, device) for _ in range(train_warmup)]
        seconds = [common.timed(step, device) for _ in range(repeats)]
        result.peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        with common.PeakRSS() as mem:
            firsts = [common.timed(step, device) for _ in range(train_warmup)]
            seconds = [common.timed(step, device) for _ in range(repeats)]
        result.peak_mb = mem.added_mb
    step_s = common.median(seconds)
    result.train_images_per_s = batch / step_s
    if compile and firsts:
        result.compile_s = max(firsts[0] - step_s, 0.0)

    model.eval()
    one = images[:1]

    @torch.no_grad()
    def infer() -> None:
        with torch.autocast(device.type, enabled=setting.amp):
            _outputs(step_model, one, cfg, all_tasks=True)

    latencies = common.repeat(infer, latency_repeats, warmup=latency_warmup, device=device)
    result.latency_ms = 1e3 * common.median(latencies)
    model = opt = step_model = None  # free them (the closures above hold the names) before empty_cache
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--models", nargs="*", default=None, help="model names (default: every registered model)")
    ap.add_argument("--resolutions", nargs="*", default=["smoke", "paper"], choices=["smoke", "paper"])
    ap.add_argument("--devices", nargs="*", default=None, help="cpu and/or cuda (default: cpu, plus cuda if present)")
    ap.add_argument("--smoke-batch", type=int, default=8)
    ap.add_argument("--cpu-paper-batch", type=int, default=1,
                    help="batch at paper resolution on the CPU (full-size models take seconds per image there)")
    ap.add_argument("--repeats", type=int, default=3, help="timed training steps (median) after one warm-up step")
    ap.add_argument("--paper-repeats", type=int, default=1,
                    help="timed steps at paper resolution on the CPU (no warm-up step there)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (compile time reported apart)")


def run(args: argparse.Namespace) -> common.Section:
    from mtlkit.models import count_parameters, list_models

    registered = list_models()
    names = args.models or (list(QUICK_MODELS) if args.quick else registered)
    unknown = [n for n in names if n not in registered]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; registered: {', '.join(registered)}")
    devices = args.devices or (["cpu", "cuda"] if common.cuda_available() else ["cpu"])
    resolutions = ["smoke"] if args.quick else args.resolutions
    repeats = 1 if args.quick else args.repeats
    section = common.Section(
        "models", "Models: training throughput, peak memory, inference latency",
        common.command_line(args, "models"),
        ["model", "resolution", "device", "precision", "batch", "params (M)", "train images/s", "peak MB",
         "latency ms (batch 1)"] + (["compile s"] if args.compile else []),
    )
    if "cuda" not in devices or not common.cuda_available():
        msg = ("CUDA: skipped (no GPU on this machine): the fp32/AMP x channels_last rows on CUDA and the target "
               "'AMP + channels_last >= 1.6x fp32 for DeepLab and SegNet at paper resolution' cannot be measured here.")
        print(msg, flush=True)
        section.notes.append(msg)
        devices = [d for d in devices if d != "cuda"]
    missing = [n for n in names if n not in CONFIGS]
    for name in missing:  # a new model without a benchmark configuration is reported, never silently dropped
        section.add(name, "-", "-", "-", "-", math.nan, math.nan, math.nan, math.nan, *([math.nan] * args.compile))
        section.notes.append(f"{name}: no benchmark configuration in benchmarks/bench_models.py CONFIGS; add one.")
    # one discarded measurement first: autograd engine, thread pools and allocator arenas start up once per process,
    # and would otherwise be billed to the first model's peak memory and time
    measure("tiny", "smoke", Setting("cpu", False, False), 2, 1, latency_repeats=1)
    for name in [n for n in names if n in CONFIGS]:
        cfg = CONFIGS[name]
        for resolution in resolutions:
            params = count_parameters(build_model(name, resolution))["total"] / 1e6
            size = cfg.smoke_size if resolution == "smoke" else cfg.paper_size
            for device in devices:
                if resolution == "smoke":
                    batch = args.smoke_batch
                else:
                    batch = cfg.paper_batch if device == "cuda" else args.cpu_paper_batch
                for s in settings(device, resolution):
                    slow = resolution == "paper" and device == "cpu"
                    m = measure(name, resolution, s, batch, args.paper_repeats if slow else repeats,
                                latency_repeats=args.paper_repeats if slow else max(repeats, 3),
                                compile=args.compile, latency_warmup=0 if slow else 1,
                                train_warmup=0 if slow and not args.compile else 1)
                    row = [name, f"{resolution} {size[0]}x{size[1]}", device, s.label, batch, params,
                           m.train_images_per_s, m.peak_mb, m.latency_ms] + ([m.compile_s] if args.compile else [])
                    section.add(*row)
                    print("  ".join(common._fmt(v) for v in row), flush=True)
    section.notes += [
        "Training: median of the timed steps after one warm-up step; the surrogate loss is the mean square of every "
        "output. Peak MB: on the CPU the RSS the training steps added (activations, gradients, Adam state), sampled "
        "every 2 ms; on CUDA torch.cuda.max_memory_allocated. +CL: channels_last. TSN trains one task per step "
        "(as the Trainer's task switching does) and its latency covers one pass per task.",
        "Smoke rows use the narrow smoke configurations (ResNet-18, narrow ASPP/decoders, SegNet width 0.25); "
        "paper rows the full-size models of the paper recipes (on the CPU: batch 1, fp32 only, one training step and "
        "one inference pass without warm-up, so they include first-call costs; they show scale, not precise rates).",
    ]
    return section
