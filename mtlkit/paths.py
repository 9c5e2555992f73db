"""Where mtlkit keeps its data: ``MTLKIT_DATA_DIR`` or the checkout's ``data/`` folder."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

ENV_VAR = "MTLKIT_DATA_DIR"
_CHECKOUT_DATA = Path(__file__).resolve().parent.parent / "data"


class DataDirError(RuntimeError):
    """The data directory is missing or cannot be written."""


def data_dir() -> Path:
    """The data directory: ``$MTLKIT_DATA_DIR`` if set, else ``data/`` of this checkout (or of the cwd)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    if (_CHECKOUT_DATA / "README.md").exists():
        return _CHECKOUT_DATA
    return (Path.cwd() / "data").resolve()


def cache_dir() -> Path:
    """Generated and converted data (gitignored)."""
    return data_dir() / "cache"


def ensure_writable(path: Path) -> Path:
    """Create ``path`` if needed and check that files can be written in it, with a message that says how to fix it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True):
            pass
    except OSError as exc:
        raise DataDirError(
            f"data directory {path} is not writable ({exc.strerror or exc}). "
            f"Point {ENV_VAR} at a folder you can write, e.g. `export {ENV_VAR}=$HOME/mtlkit-data`."
        ) from None
    return path
