"""Atomic file writes: readers see the old file or the complete new one, never half of it (crash, Ctrl-C)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO
from collections.abc import Callable

_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync(fd: int) -> None:
    """``os.fsync``; a separate function so tests can interrupt a write at its most delicate moment."""
    os.fsync(fd)


def fsync_dir(directory: Path) -> None:
    """Make a rename durable; not every filesystem lets one open a directory, which is harmless."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder + fsync + ``os.replace`` + fsync of the folder.

    The temp file is removed on any exception, KeyboardInterrupt included.
    """
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_with(path: str | os.PathLike, write: Callable[[BinaryIO], Any],
                      replace: Callable[[Path, Path], None] | None = None) -> None:
    """:func:`atomic_write_bytes` for a writer that streams into the open temp file (``torch.save(obj, f)``), so
    large files are never held in memory twice. ``replace(tmp, path)`` (default ``os.replace``) may rotate the old
    file aside first; it runs only after the new one is complete and fsynced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; shared data and run folders need the usual modes
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            _fsync(f.fileno())
        (replace or os.replace)(Path(tmp), path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """``json.dumps`` (indent 1: long lists stay readable, files small) through :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, allow_nan=True) + "\n").encode())
