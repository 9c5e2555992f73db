"""Where mtlkit finds its data, notebooks and assignment sources; one rule for the CLI and the notebooks.

The data folder is ``$MTLKIT_DATA_DIR`` if set; else ``data/`` of the mtlkit checkout in use (the checkout this
package was imported from, or the one the working directory is in, e.g. ``notebooks/``); else the per-user folder
``$XDG_CACHE_HOME/mtlkit`` (``~/.cache/mtlkit``), e.g. for a wheel install run outside any checkout. The notebooks
and ``assignments/source`` come from the same checkout.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

ENV_VAR = "MTLKIT_DATA_DIR"
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent  # a checkout when installed editable or on PYTHONPATH


class DataDirError(RuntimeError):
    """The data directory is missing or cannot be written."""


def _is_checkout(folder: Path) -> bool:
    return (folder / "pyproject.toml").is_file() and (folder / "mtlkit" / "__init__.py").is_file()


def checkout_root(cwd: Path | None = None) -> Path | None:
    """The mtlkit checkout in use: the package's own (editable install), else the working folder or one above it."""
    if _is_checkout(_PACKAGE_PARENT):
        return _PACKAGE_PARENT
    here = Path(cwd or Path.cwd()).resolve()
    return next((folder for folder in (here, *here.parents) if _is_checkout(folder)), None)


def user_data_dir() -> Path:
    """The per-user data folder used outside a checkout."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().resolve() / "mtlkit"


def data_dir() -> Path:
    """``$MTLKIT_DATA_DIR``, else the checkout's ``data/``, else :func:`user_data_dir` (see the module docstring)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    root = checkout_root()
    return root / "data" if root is not None else user_data_dir()


def data_dir_source() -> str:
    """Why :func:`data_dir` is what it is, for ``mtlkit doctor``."""
    if os.environ.get(ENV_VAR):
        return f"from ${ENV_VAR}"
    root = checkout_root()
    return f"data/ of the mtlkit checkout {root}" if root else f"the per-user folder; set ${ENV_VAR} for another"


def cache_dir() -> Path:
    """Generated and converted data (gitignored)."""
    return data_dir() / "cache"


def notebooks_dir() -> Path | None:
    """``notebooks/`` of the checkout in use, or None outside a checkout."""
    root = checkout_root()
    return root / "notebooks" if root is not None and (root / "notebooks").is_dir() else None


def assignments_source_dir() -> Path | None:
    """``assignments/source`` of the checkout in use, or None outside a checkout."""
    root = checkout_root()
    folder = root / "assignments" / "source" if root is not None else None
    return folder if folder is not None and folder.is_dir() else None


def writable_problem(path: Path) -> str | None:
    """Why files could not be written in ``path`` (None if they could), without creating anything."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"data directory {path} is not writable ({existing} is not a folder)"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"data directory {path} is not writable (no write permission on {existing})"
    return None


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
