"""``mtlkit doctor``: what is installed, where data goes, and whether a model can take two training steps."""
from __future__ import annotations

import os
import platform
import sys
import time


def _line(label: str, value: object) -> None:
    print(f"  {label:<14} {value}")


def run_doctor() -> int:
    """Print the environment, then train the tiny model for two steps on the ``unit`` preset. Returns an exit code."""
    problems: list[str] = []
    print("mtlkit doctor")
    import mtlkit

    _line("mtlkit", f"{mtlkit.__version__} ({os.path.dirname(mtlkit.__file__)})")
    _line("python", f"{platform.python_version()} ({sys.executable})")
    try:
        import torch

        _line("torch", torch.__version__)
        cuda = torch.cuda.is_available()
        _line("CUDA", f"available, {torch.cuda.device_count()} device(s): {torch.cuda.get_device_name(0)}" if cuda
              else "not available (training runs on the CPU)")
        _line("threads", f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs")
    except ImportError as exc:
        problems.append(f"torch does not import ({exc}); run `make install`")
    for module in ("torchvision", "timm"):
        try:
            mod = __import__(module)
            _line(module, mod.__version__)
        except Exception as exc:  # noqa: BLE001 - any import failure is worth reporting
            _line(module, f"MISSING ({exc})")
            problems.append(f"{module} does not import ({exc}); run `make install`")

    problems += _check_files()

    if not problems:
        try:
            seconds = _two_training_steps()
            _line("training", f"2 steps of the tiny model on synthetic-nyu/unit in {seconds:.2f} s")
        except Exception as exc:  # noqa: BLE001 - the doctor reports, it does not crash
            problems.append(f"two training steps failed: {type(exc).__name__}: {exc}")

    if problems:
        print("NOT OK:")
        for p in problems:
            print(f"  - {p}")
        return 1
    print("OK")
    return 0


def _check_files() -> list[str]:
    """Data folder, dataset registry, notebooks, assignment sources: where each is, or what to do. Creates nothing."""
    from mtlkit.paths import assignments_source_dir, data_dir, data_dir_source, notebooks_dir, writable_problem

    problems = []
    folder = data_dir()
    _line("data dir", f"{folder} ({data_dir_source()}{'' if folder.is_dir() else '; created on first use'})")
    problem = writable_problem(folder)
    if problem:
        problems.append(f"{problem}. Point MTLKIT_DATA_DIR at a folder you can write, "
                        "e.g. `export MTLKIT_DATA_DIR=$HOME/mtlkit-data`.")
    try:
        from mtlkit.data.real.registry import REGISTRY_PATH, load_registry

        _line("registry", f"{len(load_registry())} real datasets ({REGISTRY_PATH})")
    except Exception as exc:  # noqa: BLE001 - a missing or broken registry is reported, not raised
        problems.append(f"dataset registry: {exc}")
    # the notebooks and assignments live in a checkout: outside one they are optional, and the line says how to
    # point at them
    notebooks = notebooks_dir()
    _line("notebooks", notebooks or "none (not in an mtlkit checkout): `mtlkit reproduce --notebooks-dir DIR`")
    source = assignments_source_dir()
    _line("assignments", source or "none (not in an mtlkit checkout): `mtlkit assignments ... --source DIR`")
    return problems


def _two_training_steps() -> float:
    import torch

    from mtlkit.data import collate, get_dataset
    from mtlkit.models import build
    from mtlkit.tasks import tasks_for

    torch.manual_seed(0)
    data = get_dataset("synthetic-nyu", "train", preset="unit", cache=False)  # writes nothing to the data dir
    tasks = tasks_for(data.task_info)
    model = build("tiny", {name: task.out_channels for name, task in tasks.items()}, width=4)
    optim = torch.optim.SGD(model.parameters(), lr=0.01)
    batch = collate([data[i] for i in range(min(4, len(data)))])
    start = time.perf_counter()
    for _ in range(2):
        preds = model(batch["image"])
        loss = sum(task.loss(preds[name], batch) for name, task in tasks.items())
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss {loss.item()}")
        optim.zero_grad()
        loss.backward()
        optim.step()
    return time.perf_counter() - start
