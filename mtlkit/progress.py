"""Training progress wherever the Trainer runs: bars in a terminal, text in an executed notebook, one line per epoch
in a log file.

``MTLKIT_PROGRESS`` (or ``Trainer(progress=...)``) picks the mode: ``bars`` (tqdm.auto: widgets in a live notebook,
terminal bars otherwise), ``text`` (one plain-text epoch bar: what a notebook run by papermill/nbval keeps, since
saved widgets show 0% in an untrusted clone), ``lines`` (one line per epoch with loss, validation score, elapsed
time and ETA: SLURM logs, ``> log.txt``), ``off``; ``auto`` = bars in a terminal or a live Jupyter kernel, text
in a notebook kernel with no frontend (papermill, nbval), lines otherwise. Only rank 0 reports.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any

from mtlkit.train_config import PROGRESS_MODES

__all__ = ["progress_mode", "Progress"]


def _notebook_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    try:
        shell = ipython.get_ipython() if ipython is not None else None
    except Exception:
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _live_frontend() -> bool:
    """A person is watching the kernel: Jupyter server (Lab, Notebook 7), VS Code or Colab started it. papermill
    and nbval start kernels themselves, without these markers."""
    return bool(os.environ.get("JPY_SESSION_NAME") or os.environ.get("VSCODE_PID")
                or "google.colab" in sys.modules)


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def progress_mode(progress: bool | str | None = None) -> str:
    """The concrete mode (bars, text, lines, off) for ``Trainer(progress=...)``: False is off, a mode name is
    that mode; None or True read ``MTLKIT_PROGRESS`` (default auto)."""
    if progress is False:
        return "off"
    mode = progress if isinstance(progress, str) else (os.environ.get("MTLKIT_PROGRESS") or "auto").strip().lower()
    if mode not in PROGRESS_MODES:
        raise ValueError(f"MTLKIT_PROGRESS={mode!r}: valid values are {', '.join(PROGRESS_MODES)}")
    if mode == "auto":
        if _notebook_kernel():
            return "bars" if _live_frontend() else "text"
        return "bars" if _stderr_is_terminal() else "lines"
    return mode


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """The reports of one ``fit()``: an epoch bar (bars, text) or epoch lines (lines), and per-step bars (bars)."""

    def __init__(self, mode: str, name: str, epochs: int, start_epoch: int) -> None:
        self.mode, self.name, self.epochs, self.start_epoch = mode, name, epochs, start_epoch
        self.t0 = time.perf_counter()
        self._bars: list[Any] = []
        self.epoch_bar = None
        if mode == "bars":
            self.epoch_bar = self._bar(total=epochs, initial=start_epoch, desc="training")
        elif mode == "text":  # plain text, redrawn once per epoch: a short, finished record in a saved notebook
            from tqdm.std import tqdm

            self.epoch_bar = tqdm(total=epochs, initial=start_epoch, desc="training", file=sys.stderr,
                                  ascii=True, mininterval=0, dynamic_ncols=False, ncols=100)
            self._bars.append(self.epoch_bar)
        elif mode == "lines" and start_epoch < epochs:
            resumed = f" (resuming at epoch {start_epoch + 1})" if start_epoch else ""
            self.line(f"training {epochs} epoch(s){resumed}")

    def _bar(self, **kwargs: Any):
        from tqdm.auto import tqdm

        bar = tqdm(dynamic_ncols=True, **kwargs)
        self._bars.append(bar)
        return bar

    def steps(self, total: int, desc: str):
        """A transient bar over one pass of ``total`` batches (bars mode), else None."""
        return self._bar(total=total, desc=desc, leave=False) if self.mode == "bars" else None

    def line(self, text: str) -> None:
        print(f"{self.name}: {text}", file=sys.stderr, flush=True)

    def epoch_end(self, epoch: int, loss: float, score: float | None) -> None:
        """After epoch ``epoch`` (0-based): move the epoch bar, or write one line with the ETA."""
        if self.epoch_bar is not None:
            post = {"loss": f"{loss:.4f}"}
            if score is not None:
                post["val_score"] = f"{score:+.2f}"
            self.epoch_bar.set_postfix(post, refresh=False)
            self.epoch_bar.update(1)
        elif self.mode == "lines":
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / (epoch + 1 - self.start_epoch) * (self.epochs - epoch - 1)
            val = "" if score is None else f", val score {score:+.2f}%"
            self.line(f"epoch {epoch + 1}/{self.epochs}: train loss {loss:.4f}{val}, "
                      f"elapsed {_clock(elapsed)}, ETA {_clock(eta)}")

    def close(self, bar: Any) -> None:
        """Close one bar of :meth:`steps` (None: nothing to close)."""
        if bar is not None and bar in self._bars:
            bar.close()
            self._bars.remove(bar)

    def close_all(self) -> None:
        """Close every bar still open (what an exception or Ctrl-C needs: whatever is printed next starts on its
        own line, not glued to a bar)."""
        for bar in reversed(list(self._bars)):
            self.close(bar)
