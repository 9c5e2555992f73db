"""Keep the golden notebooks as JupyterLab + jupytext would save them, so opening one marks nothing modified.

:func:`normalise` opens each paired notebook (``NN.ipynb`` + ``NN.py``) through jupytext's own contents manager on
jupyter_server, the code JupyterLab uses, sets the kernelspec the front end writes when it starts the installed
``python3`` kernel, and saves it: the ``jupytext`` metadata (``formats: ipynb,py:percent``), the ``.py`` header of the
installed jupytext version and the cell metadata jupytext keeps are then what an open-and-save would write. Run it
after executing notebooks (papermill adds cell metadata that an open-and-save drops)::

    python -m mtlkit.notebook_format notebooks/00_data_and_tasks.ipynb   # rewrite
    python -m mtlkit.notebook_format --check notebooks/                   # exit 1 if any would change

Needs the ``notebooks`` extra (jupyter_server, jupytext).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

KERNEL = "python3"
FORMATS = "ipynb,py:percent"


def kernelspec() -> dict[str, str]:
    """The kernelspec metadata JupyterLab writes for the installed ``python3`` kernel."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        spec = KernelSpecManager().get_kernel_spec(KERNEL)
        return {"display_name": spec.display_name, "language": spec.language, "name": KERNEL}
    except Exception:  # noqa: BLE001 - no jupyter_client or no such kernel: ipykernel's own default
        return {"display_name": "Python 3 (ipykernel)", "language": "python", "name": KERNEL}


def _contents_manager(root: Path):
    try:
        from jupyter_server.services.contents.filemanager import FileContentsManager
        from jupytext.sync_contentsmanager import build_sync_jupytext_contents_manager_class
    except ImportError as exc:
        raise ImportError(f"normalising notebooks needs jupyter_server and jupytext ({exc}); "
                          "pip install 'mtlkit[notebooks]'") from None
    return build_sync_jupytext_contents_manager_class(FileContentsManager)(root_dir=str(root))


def saved_as_jupyterlab_would(notebook: Path) -> dict[str, bytes]:
    """The bytes of ``notebook`` and its ``.py`` pair after an open-and-save in JupyterLab (computed in a copy)."""
    notebook = Path(notebook)
    pair = notebook.with_suffix(".py")
    if notebook.suffix != ".ipynb" or not notebook.is_file() or not pair.is_file():
        raise FileNotFoundError(f"{notebook}: expected a paired notebook NAME.ipynb + NAME.py")
    with tempfile.TemporaryDirectory(prefix="mtlkit-nbformat-") as tmp:
        copy = Path(tmp) / notebook.name
        for source in (notebook, pair):
            shutil.copyfile(source, Path(tmp) / source.name)
            os.utime(Path(tmp) / source.name, (0, 0))  # as in a fresh clone: neither file newer than the other
        (Path(tmp) / "jupytext.toml").write_text(f'formats = "{FORMATS}"\n')
        cm = _contents_manager(Path(tmp))
        content = cm.get(copy.name, content=True)["content"]
        content["metadata"]["kernelspec"] = kernelspec()
        content["metadata"].setdefault("jupytext", {})["formats"] = FORMATS
        if not _shows_widgets(content):
            content["metadata"].pop("widgets", None)  # saved state of progress widgets no output shows any more
        cm.save({"type": "notebook", "format": "json", "content": content}, copy.name)
        return {notebook.name: copy.read_bytes(), pair.name: copy.with_suffix(".py").read_bytes()}


def _shows_widgets(notebook) -> bool:
    return any("application/vnd.jupyter.widget-view+json" in output.get("data", {})
               for cell in notebook["cells"] for output in cell.get("outputs", []))


def notebooks_in(paths: list[str | Path]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        found += sorted(p.glob("[0-9][0-9]_*.ipynb")) if p.is_dir() else [p]
    return found


def normalise(paths: list[str | Path], check: bool = False) -> list[Path]:
    """Normalise the notebooks (files or folders of ``NN_*.ipynb``); returns the files that changed (or would)."""
    changed = []
    for notebook in notebooks_in(paths):
        for name, data in saved_as_jupyterlab_would(notebook).items():
            target = notebook.with_name(name)
            if target.read_bytes() != data:
                changed.append(target)
                if not check:
                    target.write_bytes(data)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtlkit.notebook_format", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="paired notebooks NN_topic.ipynb, or folders of them")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    args = parser.parse_args(argv)
    try:
        changed = normalise(args.paths, check=args.check)
    except (FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verb = "would change" if args.check else "normalised"
    for path in changed:
        print(f"{verb}: {path}")
    if not changed:
        print("all notebooks already as JupyterLab + jupytext save them")
    return 1 if changed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
