"""Shared plumbing of the benchmarks: machine description, repeated timing, peak memory, RESULTS.md sections.

Every benchmark reports the MEDIAN of repeated runs and the load average next to its numbers: on a shared machine
absolute rates move with the other jobs, while ratios measured in the same run (interleaved) are more robust.
"""
from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Sequence

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


# ---------------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float:
    """1-minute load average (NaN where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def machine_line() -> str:
    """One line naming the machine, the accelerator and the library versions."""
    import numpy as np
    import torch

    gpu = (f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU")
    return (f"Machine: {cpu_model()}, {os.cpu_count()} cores, {gpu}, torch threads {torch.get_num_threads()}. "
            f"Versions: Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}. "
            f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------------- timing
def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def sync(device: Any) -> None:
    """Wait for queued device work (CUDA kernels run asynchronously; on the CPU this is a no-op)."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: Any = "cpu") -> float:
    """Wall seconds of one call of ``fn``, device work included."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def repeat(fn: Callable[[], Any], repeats: int, warmup: int = 1, device: Any = "cpu") -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return [timed(fn, device) for _ in range(repeats)]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # monotonic fallback


def release_freed_memory() -> None:
    """Hand memory freed by earlier measurements back to the OS (glibc keeps it otherwise, which would hide the
    next model's allocations from the RSS)."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Peak resident memory above the level at entry, sampled by a thread every ``interval`` seconds.

    Torch's CPU allocator has no peak counter (``torch.cuda.max_memory_allocated`` exists on CUDA only), so on the
    CPU the process RSS is sampled while the measured code runs; torch ops release the GIL, so the sampler keeps
    running during convolutions. The result is the memory the measured code added (activations, gradients,
    optimiser state), not the whole process.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        release_freed_memory()
        self.base = self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def added_mb(self) -> float:
        return (self.peak - self.base) / 2**20


# ---------------------------------------------------------------------------------------------------- results
def command_line(args: Any, name: str) -> str:
    """The command that produced a section: the real one when run through ``python -m benchmarks``."""
    given = getattr(args, "command_line", None)
    return given or f"python -m benchmarks {name}" + (" --quick" if getattr(args, "quick", False) else "")


@dataclass
class Section:
    """One section of RESULTS.md: a title, the command, notes and a table; rendered as markdown."""

    name: str
    title: str
    command: str
    header: Sequence[str]
    rows: list[Sequence[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    load_start: float = field(default_factory=load_average)

    def add(self, *row: Any) -> None:
        self.rows.append(row)

    def _align(self, column: int) -> str:
        """Numbers right-aligned, text left-aligned (judged by the first row)."""
        first = self.rows[0][column] if self.rows and column < len(self.rows[0]) else ""
        return "---:" if isinstance(first, (int, float)) and not isinstance(first, bool) else "---"

    def render(self) -> str:
        seconds = time.perf_counter() - self.started
        lines = [
            f"## {self.title}", "",
            f"Command: `{self.command}` ({seconds:.0f} s). Load average {self.load_start:.1f} at the start, "
            f"{load_average():.1f} at the end (numbers from a loaded machine are slower; compare ratios).",
            machine_line(), "",
            "| " + " | ".join(self.header) + " |",
            "|" + "|".join(self._align(i) for i in range(len(self.header))) + "|",
        ]
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + self.notes
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "n/a"
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_section(name: str, text: str, path: Path = RESULTS) -> None:
    """Replace section ``name`` of ``path`` (between its markers), or append it; the rest of the file is kept."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"section names are letters, digits, '-' and '_'; got {name!r}")
    begin, end = markers(name)
    block = f"{begin}\n{text.rstrip()}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    if old.count(begin) > 1 or old.count(end) > 1:
        raise ValueError(f"{path} has section {name!r} more than once; remove the duplicate by hand")
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)
