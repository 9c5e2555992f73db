"""``mtlkit reproduce``: run the course notebooks headlessly through papermill and collect their results.

Each run lands in its own folder ``OUT/<notebook>[__key=value...]/`` holding the executed notebook, the notebook's
``metrics.json`` and a ``run.json`` status record. A run counts as finished only once ``run.json`` says so, and the
executed notebook is written under a temporary name and renamed at the end, so a run killed mid-way is redone cleanly.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
PRESETS = ("unit", "smoke", "lesson", "paper")


@dataclass
class Run:
    notebook: Path
    params: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        extra = "".join(f"__{k}={v}" for k, v in sorted(self.params.items()))
        return self.notebook.stem + extra


def find_notebooks(selection: list[str] | None = None, directory: Path = NOTEBOOK_DIR) -> list[Path]:
    """Course notebooks ``NN_topic.ipynb`` in order; ``selection`` filters by prefix/stem (e.g. ``00`` or ``00_data``)."""
    found = sorted(p for p in directory.glob("[0-9][0-9]_*.ipynb"))
    if not selection:
        return found
    chosen = [p for p in found if any(p.stem == s or p.stem.startswith(s) or p.name == s for s in selection)]
    missing = [s for s in selection if not any(p.stem == s or p.stem.startswith(s) or p.name == s for p in found)]
    if missing:
        names = ", ".join(p.stem for p in found) or "(none)"
        raise ValueError(f"no notebook matches {', '.join(missing)}; available: {names}")
    return chosen


def parse_grid(items: list[str] | None) -> list[dict]:
    """``["SEED=0,1", "WEIGHTING=equal,dwa"]`` -> the Cartesian product as a list of parameter dicts."""
    if not items:
        return [{}]
    axes = []
    for item in items:
        if "=" not in item:
            raise ValueError(f"grid entry {item!r} is not KEY=v1,v2 (e.g. SEED=0,1,2)")
        key, values = item.split("=", 1)
        axes.append([(key, _literal(v)) for v in values.split(",") if v != ""])
    return [dict(combo) for combo in itertools.product(*axes)]


def _literal(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def execute(run: Run, out_root: Path, preset: str, device: str, log=print) -> dict:
    """Execute one notebook run (skipping it when ``run.json`` says it finished). Returns the status record."""
    import papermill

    run_dir = out_root / run.name
    status_path = run_dir / "run.json"
    if status_path.exists():
        try:
            status = json.loads(status_path.read_text())
            if status.get("status") == "ok":
                status["skipped"] = True
                return status
        except json.JSONDecodeError:
            pass  # an unreadable record means an unfinished run: redo it
    if run_dir.exists():
        shutil.rmtree(run_dir)  # leftovers of a killed or failed run
    run_dir.mkdir(parents=True)
    params = {"PRESET": preset, "DEVICE": device, "OUT_DIR": str(run_dir.resolve()), **run.params}
    partial = run_dir / (run.notebook.stem + ".partial.ipynb")
    start = time.perf_counter()
    status = {"notebook": run.notebook.name, "params": run.params, "preset": preset}
    try:
        papermill.execute_notebook(
            str(run.notebook), str(partial), parameters=params, kernel_name="python3",
            cwd=str(run.notebook.parent), progress_bar=False, log_output=False,
        )
        os.replace(partial, run_dir / run.notebook.name)
        status["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - a failing notebook is recorded and the others go on
        status["status"] = "failed"
        status["error"] = _summarise_error(exc)
        (run_dir / "error.txt").write_text("".join(traceback.format_exception(exc)))
        if partial.exists():
            os.replace(partial, run_dir / (run.notebook.stem + ".failed.ipynb"))
    status["seconds"] = round(time.perf_counter() - start, 2)
    tmp = status_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(status, indent=2))
    os.replace(tmp, status_path)
    return status


def _summarise_error(exc: Exception) -> str:
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    cell = getattr(exc, "cell_index", None)
    where = f" in cell {cell}" if cell is not None else ""
    return f"{ename}{where}: {str(evalue).strip().splitlines()[-1] if str(evalue).strip() else ''}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="smoke", choices=PRESETS)
    p.add_argument("--notebooks", nargs="*", default=None, help="notebook stems or prefixes (default: all, in order)")
    p.add_argument("--grid", nargs="*", default=None, help="KEY=v1,v2 parameter grid (Cartesian product)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="results folder (default: runs/PRESET)")
    p.add_argument("--notebook-dir", default=str(NOTEBOOK_DIR), help=argparse.SUPPRESS)


def run_from_args(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    notebooks = find_notebooks(args.notebooks, Path(args.notebook_dir))
    if not notebooks:
        print(f"no notebooks found in {args.notebook_dir}")
        return 1
    out_root = Path(args.out or f"runs/{args.preset}").resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    runs = [Run(nb, params) for nb in notebooks for params in parse_grid(args.grid)]
    results = []
    bar = tqdm(runs, desc="notebooks", unit="run", disable=not sys.stderr.isatty())
    for run in bar:
        bar.set_postfix_str(run.name)
        results.append((run, execute(run, out_root, args.preset, args.device)))
    print(f"\n{'run':<40} {'status':<8} {'seconds':>8}")
    for run, st in results:
        state = "skipped" if st.get("skipped") else st["status"]
        print(f"{run.name:<40} {state:<8} {st.get('seconds', 0):>8}")
    print(f"\nexecuted notebooks and metrics.json files are in {out_root}/<run>/")
    failed = [(r, s) for r, s in results if s["status"] != "ok"]
    for run, st in failed:
        print(f"FAILED {run.name}: {st.get('error')} (see {out_root / run.name / 'error.txt'})")
    return 1 if failed else 0
