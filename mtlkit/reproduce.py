"""``mtlkit reproduce``: run the course notebooks headlessly through papermill and collect their results.

Each run lands in its own folder ``OUT/<notebook>[__KEY=value...]/``: the executed notebook, its ``metrics.json``,
``log.txt`` and a ``run.json`` status record. A run counts as finished only once ``run.json`` says so, and the
executed notebook is written under a temporary name and renamed at the end, so a run killed mid-way (even by SIGKILL
of the whole command) is redone on the next invocation. Failed runs stay failed until ``--retry-failed``. A running
kernel's output streams into ``log.txt`` (the Trainer prints one line per epoch there: ``MTLKIT_PROGRESS=lines``),
and the console shows each running notebook's latest line. Runs execute in local processes (``--jobs N`` kernels at
once) or as a SLURM job array through submitit (``--executor slurm``; without SLURM it runs the jobs locally).

``OUT/results.csv`` and ``OUT/results.md`` hold one row per notebook run and model: every ``task/metric``, Δm (survey
form) against the run's own ``single-<task>`` rows, parameters and wall time; ``OUT/results_by_seed.md`` gives
mean ± std over a SEED grid. ``--dry-run`` runs every notebook that has ``MAX_STEPS`` with ``MAX_STEPS=2`` and
reports the data, weights and projected full cost each notebook's ``metrics.json`` states.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Sequence

from mtlkit.presets import PRESETS

STAMP = "reproduce.json"
# Filled in by reproduce itself; a grid may not set them.
RESERVED = ("PRESET", "OUT_DIR")
# A notebook with this parameter (10_comparison) reads the other runs' results: it runs once, without the grid,
# after every other run has finished.
READS_RESULTS = "RESULTS_DIR"
# The notebook parameter that caps every training and evaluation (the paper path's dry run), and its dry-run value.
MAX_STEPS, DRY_RUN_STEPS = "MAX_STEPS", 2
# The kernels' progress output: one line per epoch (the Trainer reads it), so log.txt shows where a run is.
PROGRESS_ENV = ("MTLKIT_PROGRESS", "lines")


@dataclass
class Run:
    notebook: Path
    params: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        extra = "".join(f"__{k}={v}" for k, v in sorted(self.params.items()))
        return self.notebook.stem + extra


# ------------------------------------------------------------------------------------------------ planning
def default_notebooks_dir() -> Path:
    """``notebooks/`` of the mtlkit checkout in use; outside a checkout, an error that says where it looked."""
    from mtlkit.paths import notebooks_dir

    found = notebooks_dir()
    if found is None:
        raise FileNotFoundError(f"no course notebooks found: neither the installed mtlkit nor {Path.cwd()} (or a "
                                "folder above it) is an mtlkit checkout; run from a checkout or pass --notebooks-dir "
                                "DIR (the folder holding NN_topic.ipynb)")
    return found


def find_notebooks(selection: list[str] | None, directory: Path) -> list[Path]:
    """Course notebooks ``NN_topic.ipynb`` in order; ``selection`` filters by prefix or stem (``00``, ``00_data``)."""
    found = sorted(p for p in Path(directory).glob("[0-9][0-9]_*.ipynb"))
    if not selection:
        return found

    def matches(p: Path, s: str) -> bool:
        return p.stem == s or p.stem.startswith(s) or p.name == s

    missing = [s for s in selection if not any(matches(p, s) for p in found)]
    if missing:
        names = ", ".join(p.stem for p in found) or "(none)"
        raise ValueError(f"no notebook matches {', '.join(missing)}; available in {directory}: {names}")
    return [p for p in found if any(matches(p, s) for s in selection)]


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


def notebook_parameters(path: Path) -> list[str]:
    """Names defined in the notebook's ``parameters`` cell."""
    import papermill

    return list(papermill.inspect_notebook(str(path)))


@dataclass
class Plan:
    runs: list[Run]
    skipped_keys: dict[str, list[str]]  # notebook stem -> grid keys (or MAX_STEPS) it has no parameter for


def plan(notebooks: Sequence[Path], grid: list[dict], max_runs: int, yes: bool, dry_run: bool = False) -> Plan:
    """Validate the grid against the notebooks' parameters and return the runs, before anything executes.

    A grid key applies to the notebooks that have it and is left out (and listed) for the others; a key that no
    notebook has is an error. Notebooks that read the results (a ``RESULTS_DIR`` parameter) get one run without
    grid parameters, last. ``dry_run`` adds ``MAX_STEPS`` to every notebook that has it.
    """
    keys = list(dict.fromkeys(k for params in grid for k in params))
    for key in keys:
        if key in RESERVED:
            raise ValueError(f"{key} is set by `mtlkit reproduce` itself (use --preset / --out)")
        if key == MAX_STEPS and dry_run:
            raise ValueError(f"--dry-run sets {MAX_STEPS}={DRY_RUN_STEPS} itself; leave {MAX_STEPS} out of --grid")
    parameters = {nb: notebook_parameters(nb) for nb in notebooks}
    readers = [nb for nb in notebooks if READS_RESULTS in parameters[nb]]
    trainers = [nb for nb in notebooks if nb not in readers]
    unused = [k for k in keys if not any(k in parameters[nb] for nb in trainers)]
    if unused:
        listing = "; ".join(f"{nb.stem}: {', '.join(parameters[nb])}" for nb in trainers)
        raise ValueError(f"no notebook has a parameter {', '.join(map(repr, unused))}; their parameters: {listing}")
    runs: list[Run] = []
    skipped: dict[str, list[str]] = {}
    for nb in notebooks:
        extra = {MAX_STEPS: DRY_RUN_STEPS} if dry_run and MAX_STEPS in parameters[nb] else {}
        missing = [k for k in (keys if nb in trainers else []) + ([MAX_STEPS] if dry_run else [])
                   if k not in parameters[nb]]
        if missing:
            skipped[nb.stem] = missing
        if nb in readers:
            continue  # added last, below
        for params in grid:
            run = Run(nb, {**{k: v for k, v in params.items() if k in parameters[nb]}, **extra})
            if run.name not in {r.name for r in runs}:  # a key the notebook lacks does not multiply its runs
                runs.append(run)
    runs += [Run(nb, {MAX_STEPS: DRY_RUN_STEPS} if dry_run and MAX_STEPS in parameters[nb] else {})
             for nb in readers]
    if len(runs) > max_runs and not yes:
        raise ValueError(f"this grid launches {len(runs)} runs (more than --max-runs {max_runs}); "
                         "add --yes to launch them all")
    return Plan(runs, skipped)


def check_results_folder(out_root: Path, preset: str) -> None:
    """Refuse a results folder written by another kit version or preset (results would be mixed)."""
    from mtlkit import __version__

    stamp = out_root / STAMP
    if stamp.exists():
        try:
            info = json.loads(stamp.read_text())
        except json.JSONDecodeError:
            info = {}
        if info.get("mtlkit") != __version__ or info.get("preset") != preset:
            raise ValueError(f"results folder {out_root} was written by mtlkit {info.get('mtlkit', '?')} with preset "
                             f"{info.get('preset', '?')}; this is mtlkit {__version__} with preset {preset}. "
                             "Use another --out, or remove that folder to start afresh.")
        return
    out_root.mkdir(parents=True, exist_ok=True)
    from mtlkit.atomic import atomic_write_json

    atomic_write_json(stamp, {"mtlkit": __version__, "preset": preset})


def read_status(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # never started, or killed before it finished: redo


# ------------------------------------------------------------------------------------------------ executing
def execute(run: Run, out_root: Path, preset: str, device: str) -> dict:
    """Execute one notebook run from scratch into its folder and return its status record (also in run.json)."""
    import papermill

    run_dir = Path(out_root) / run.name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # leftovers of a killed or failed run
    run_dir.mkdir(parents=True)
    params = {"PRESET": preset, "DEVICE": device, "OUT_DIR": str(run_dir.resolve()), **run.params}
    partial = run_dir / (run.notebook.stem + ".partial.ipynb")
    os.environ.setdefault(*PROGRESS_ENV)  # inherited by the kernel (also in a SLURM job, which runs this function)
    start = time.perf_counter()
    status: dict[str, Any] = {"notebook": run.notebook.name, "run": run.name, "params": run.params, "preset": preset}
    try:
        with open(run_dir / "log.txt", "w", buffering=1) as log:  # line-buffered: the log is read while it grows
            papermill.execute_notebook(
                str(run.notebook), str(partial), parameters=params, kernel_name="python3",
                cwd=str(run.notebook.parent), progress_bar=False, log_output=True, stdout_file=log, stderr_file=log,
                # the kernel's own start-up notices (e.g. "running over TCP without encryption": it listens on
                # localhost only) would print once per run on the console; errors still show
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
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
    if status["status"] == "failed" and status["error"].startswith("KeyboardInterrupt"):
        # Ctrl-C reaches the kernels too: an interrupted run is not a failure, and with no run.json the next
        # invocation redoes it
        status["status"] = "interrupted"
        return status
    from mtlkit.atomic import atomic_write_json

    atomic_write_json(run_dir / "run.json", status)
    return status


def _summarise_error(exc: Exception) -> str:
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = str(getattr(exc, "evalue", str(exc))).strip()
    cell = getattr(exc, "exec_count", None)
    where = f" (cell [{cell}])" if cell is not None else ""
    return f"{ename}{where}: {evalue.splitlines()[-1] if evalue else ''}"


class LiveLogs:
    """Shows on the console where each running notebook is: the latest line of its ``log.txt``.

    On a terminal the line replaces itself (``show`` is a tqdm bar's postfix); redirected to a file (a SLURM job's
    output) a line ``[run] latest log line`` is printed when it changed, at most every ``every`` seconds per run.
    """

    def __init__(self, show: Callable[[str], None] | None, every: float = 60.0, poll: float = 1.0):
        self.show, self.every, self.poll = show, every, poll
        self.running: dict[str, Path] = {}
        self.printed: dict[str, tuple[float, str]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> LiveLogs:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def started(self, run: Run, log: Path) -> None:
        with self.lock:
            self.running[run.name] = log
        _console(f"started {run.name}; live log: {_rel(log)}")

    def finished(self, run: Run) -> None:
        with self.lock:
            self.running.pop(run.name, None)

    def _loop(self) -> None:
        while not self.stop.wait(self.poll):
            with self.lock:
                running = dict(self.running)
            latest = {name: last_log_line(log) for name, log in running.items()}
            if self.show is not None:
                self.show(" | ".join(f"{name}: {line or 'starting'}" for name, line in latest.items()))
                continue
            now = time.monotonic()
            for name, line in latest.items():
                when, before = self.printed.get(name, (-math.inf, ""))
                if line and line != before and now - when >= self.every:
                    self.printed[name] = (now, line)
                    _console(f"[{name}] {line}")


def last_log_line(log: Path, tail: int = 4096) -> str:
    """The last non-empty line of a growing log (after the last carriage return: a progress bar's latest state)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.rsplit("\r", 1)[-1].strip() for line in text.replace("\r\n", "\n").split("\n")]
    lines = [line for line in lines if line]
    return lines[-1][:160] if lines else ""


def _console(text: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stdout)  # above a live progress bar, never inside it
    sys.stdout.flush()


def run_local(todo: list[Run], out_root: Path, preset: str, device: str, jobs: int,
              on_done: Callable[[Run, dict], None], live: LiveLogs | None = None) -> None:
    """Each run is its own papermill kernel; threads only wait on them, so ``jobs`` kernels run at once.

    With ``jobs > 1`` each kernel gets ``cores // jobs`` intra-op threads (unless OMP_NUM_THREADS is set): torch
    otherwise starts one thread per core in every kernel, and ``jobs`` kernels oversubscribe the machine.
    """
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))  # inherited by the kernels

    def one(run: Run) -> dict:
        if live is not None:
            live.started(run, Path(out_root) / run.name / "log.txt")
        try:
            return execute(run, out_root, preset, device)
        finally:
            if live is not None:
                live.finished(run)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(one, run): run for run in todo}
        for future in as_completed(futures):
            on_done(futures[future], future.result())


def run_slurm(todo: list[Run], out_root: Path, preset: str, device: str, args: argparse.Namespace,
              on_done: Callable[[Run, dict], None]) -> None:
    """Submit the runs as one SLURM job array through submitit's ``map_array`` (local processes without SLURM)."""
    try:
        import submitit
    except ImportError:
        raise ValueError("--executor slurm needs submitit: pip install 'mtlkit[cluster]'") from None
    executor = submitit.AutoExecutor(folder=str(out_root / "slurm" / "%j"), cluster=args.cluster)
    options: dict[str, Any] = {"timeout_min": args.time, "slurm_array_parallelism": args.array_parallelism}
    if executor.cluster == "slurm":
        options.update(slurm_partition=args.partition, gpus_per_node=args.gpus, cpus_per_task=args.cpus)
    executor.update_parameters(**{k: v for k, v in options.items() if v is not None})
    print(f"submitting {len(todo)} runs through submitit ({executor.cluster} executor); live logs: "
          f"{_rel(out_root)}/<run>/log.txt")
    n = len(todo)
    jobs = executor.map_array(execute, todo, [out_root] * n, [preset] * n, [device] * n)
    for run, job in zip(todo, jobs):
        try:
            status = job.result()
        except Exception as exc:  # noqa: BLE001 - the job itself died (time limit, node failure)
            status = {"notebook": run.notebook.name, "run": run.name, "params": run.params, "preset": preset,
                      "status": "failed", "error": f"job {job.job_id}: {type(exc).__name__}: {exc}"}
        on_done(run, status)


# ------------------------------------------------------------------------------------------------ results
def collect(out_root: Path, runs: Sequence[Run]):
    """One row per (run, model row of its metrics.json): status, parameters, every metric, Δm vs single-task rows."""
    import pandas as pd

    rows = []
    for run in runs:
        run_dir = out_root / run.name
        status = read_status(run_dir) or {"status": "not run"}
        base = {"notebook": run.notebook.stem, "params": _params_text(run.params), **{f"param:{k}": v for k, v in
                run.params.items()}, "status": status.get("status"), "seconds": status.get("seconds")}
        try:
            data = json.loads((run_dir / "metrics.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            data = {}
        models = data.get("runs") if isinstance(data, dict) else None
        if not models:
            rows.append({**base, "model": ""})
            continue
        for model, values in models.items():
            rows.append({**base, "model": model, **{k: v for k, v in values.items() if _is_number(v)}})
    table = pd.DataFrame(rows)
    if not table.empty:
        table["delta_m"] = _delta_m_column(table)
    return table


def _params_text(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(params.items()))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _delta_m_column(table) -> list[float]:
    """Survey Δm of each multi-task row against the single-task rows (``single-<task>``) of the same run.

    Only the same run's baselines share its data, schedule, model width and seed: pooling the single-task rows of
    several notebooks would compare e.g. notebook 06's pet segmentation with notebook 04's city segmentation.
    """
    from mtlkit.course import relative_to_single

    per_run = table.assign(folder=table["notebook"].astype(str) + "/" + table["params"].astype(str))
    return relative_to_single(per_run).mean(axis=1, skipna=True).tolist()


def over_seeds(table):
    """Mean ± std over the SEED grid axis: one row per notebook, other parameters and model."""
    import pandas as pd

    if "param:SEED" not in table or table.empty:
        return None
    keys = ["notebook", "model"] + [c for c in table if c.startswith("param:") and c != "param:SEED"]
    numeric = [c for c in table if c not in keys and c not in ("params", "status", "param:SEED")
               and pd.api.types.is_numeric_dtype(table[c])]
    grouped = table.groupby(keys, dropna=False)[numeric]
    mean, std, n = grouped.mean(), grouped.std(ddof=0), grouped.size()
    text = mean.copy().astype(object)
    for c in numeric:
        text[c] = [("" if math.isnan(m) else f"{m:.3g} ± {s:.2g}") for m, s in zip(mean[c], std[c])]
    text["seeds"] = n
    return text.reset_index()


def write_results(out_root: Path, table) -> list[Path]:
    paths = [out_root / "results.csv", out_root / "results.md"]
    table.to_csv(paths[0], index=False)
    paths[1].write_text(_markdown(table))
    by_seed = over_seeds(table)
    if by_seed is not None:
        paths.append(out_root / "results_by_seed.md")
        paths[-1].write_text(_markdown(by_seed))
    return paths


def _summary(table) -> str:
    """The printed summary: per run and model, Δm, parameters, wall time and each task's Δm metric."""
    from mtlkit.tasks import TASK_SPECS

    if table.empty or "model" not in table:
        return "(no results)"
    metrics = [f"{t}/{s.delta_metric}" for t, s in TASK_SPECS.items() if f"{t}/{s.delta_metric}" in table]
    cols = [c for c in ["notebook", "params", "model", "delta_m", "parameters_M", "seconds", *metrics] if c in table]
    return table[cols].to_string(index=False, na_rep="", float_format=lambda v: f"{v:.4g}")


def _markdown(table) -> str:
    cols = list(table.columns)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def dry_run_report(out_root: Path, runs: Sequence[Run]) -> str:
    """Per dry run: the data and weights it used and the full run's projected cost, from its ``metrics.json``.

    A notebook reports them as top-level keys of its ``metrics.json``: ``data`` and ``weights`` (text),
    ``seconds_per_step`` (measured in the dry run) and ``full_steps`` (training + evaluation steps at full length).
    Where it does not, its ``DATA`` / ``PRETRAINED`` parameters are shown instead.
    """
    import papermill

    lines = []
    for run in runs:
        try:
            info = json.loads((out_root / run.name / "metrics.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            info = {}
        info = info if isinstance(info, dict) else {}
        defaults = {k: v.get("default") for k, v in papermill.inspect_notebook(str(run.notebook)).items()}

        def stated(key: str, param: str, info: dict = info, run: Any = run, defaults: dict = defaults) -> str:
            if info.get(key):
                return str(info[key])
            value = run.params.get(param, defaults.get(param))
            return "not reported" + (f" (parameter {param}={value})" if value is not None else "")

        per_step, steps = info.get("seconds_per_step"), info.get("full_steps")
        if _is_number(per_step) and _is_number(steps):
            cost = f"{_duration(per_step * steps)} ({steps:g} steps × {per_step:.3g} s, on this machine)"
        else:
            cost = "unknown (its metrics.json reports no seconds_per_step and full_steps)"
        lines.append(f"{run.name}\n    data: {stated('data', 'DATA')}\n"
                     f"    weights: {stated('weights', 'PRETRAINED')}\n    full run: {cost}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


# ------------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Run the course notebooks headlessly (papermill) into OUT/<run>/ and collect their results. "
                     "Notebooks come from --notebooks-dir, else notebooks/ of the mtlkit checkout in use (the "
                     "installed one if it is a checkout, else the one the working folder is in).")
    p.add_argument("--preset", default="smoke", choices=PRESETS)
    p.add_argument("--notebooks", nargs="*", default=None, help="notebook stems or prefixes (default: all, in order)")
    p.add_argument("--notebooks-dir", "--notebook-dir", dest="notebooks_dir", default=None, metavar="DIR",
                   help="folder of the course notebooks NN_topic.ipynb (default: notebooks/ of the mtlkit checkout "
                        "in use)")
    p.add_argument("--grid", nargs="*", default=None, help="KEY=v1,v2 parameter grid (Cartesian product); a key "
                   "applies to the notebooks that have that parameter, the others run without it")
    p.add_argument("--dry-run", action="store_true", help=f"run every notebook that has {MAX_STEPS} with "
                   f"{MAX_STEPS}={DRY_RUN_STEPS} (the preset's data, model and recipe, a few steps) and report the "
                   "data, weights and projected full cost of each")
    p.add_argument("--jobs", type=int, default=1, help="notebooks executed at once (local executor)")
    p.add_argument("--executor", default="local", choices=("local", "slurm"))
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="results folder (default: runs/PRESET, or runs/PRESET-dry-run)")
    p.add_argument("--retry-failed", action="store_true", help="rerun only the runs that failed before")
    p.add_argument("--max-runs", type=int, default=64, help="runs allowed without --yes (default 64)")
    p.add_argument("--yes", action="store_true", help="launch a grid larger than --max-runs")
    slurm = p.add_argument_group("slurm executor (submitit)")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--time", type=int, default=60, help="minutes per run")
    slurm.add_argument("--gpus", type=int, default=None, help="GPUs per run")
    slurm.add_argument("--cpus", type=int, default=None, help="CPUs per run")
    slurm.add_argument("--array-parallelism", type=int, default=64)
    slurm.add_argument("--cluster", default=None, help=argparse.SUPPRESS)  # tests force "local"


def run_from_args(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    directory = Path(args.notebooks_dir) if args.notebooks_dir else default_notebooks_dir()
    notebooks = find_notebooks(args.notebooks, directory)
    if not notebooks:
        raise FileNotFoundError(f"no course notebooks (NN_topic.ipynb) in {directory}; pass --notebooks-dir DIR")
    planned = plan(notebooks, parse_grid(args.grid), args.max_runs, args.yes, dry_run=args.dry_run)
    runs = planned.runs
    for stem, keys in planned.skipped_keys.items():
        print(f"{stem}: has no parameter {', '.join(keys)}; runs without it")
    out_root = Path(args.out or f"runs/{args.preset}{'-dry-run' if args.dry_run else ''}").resolve()
    check_results_folder(out_root, args.preset)

    before = {run.name: read_status(out_root / run.name) for run in runs}
    if args.retry_failed:
        todo = [r for r in runs if (before[r.name] or {}).get("status") == "failed"]
    else:
        todo = [r for r in runs if before[r.name] is None]
    skipped = len(runs) - len(todo)
    print(f"{len(runs)} runs: {len(todo)} to execute, {skipped} already recorded (in {_rel(out_root)}/)")
    for run in runs:
        if run not in todo and (before[run.name] or {}).get("status") == "ok":
            print(f"{run.name}: already finished, not rerun (delete {_rel(out_root / run.name)}/ to rerun it)")

    results: dict[str, dict] = {name: st for name, st in before.items() if st is not None}
    tty = sys.stderr.isatty()
    bar = tqdm(total=len(todo), desc="notebooks", unit="run", disable=not tty)

    def done(run: Run, status: dict) -> None:
        results[run.name] = status
        _console(f"{status['status']:<6} {run.name} ({status.get('seconds', 0):.0f} s)")
        bar.update(1)

    readers = {nb for nb in {r.notebook for r in runs} if READS_RESULTS in notebook_parameters(nb)}
    with LiveLogs(show=bar.set_postfix_str if tty else None) as live:
        for batch in ([r for r in todo if r.notebook not in readers], [r for r in todo if r.notebook in readers]):
            if not batch:
                continue  # the readers run after every other run has finished (and never in the same batch)
            if args.executor == "slurm":
                run_slurm(batch, out_root, args.preset, args.device, args, done)
            else:
                run_local(batch, out_root, args.preset, args.device, args.jobs, done, live)
    bar.close()

    executed = {r.name for r in todo}
    print(f"\n{'run':<48} {'status':<8} {'seconds':>8}")
    for run in runs:
        st = results.get(run.name, {})
        state = st.get("status", "?") if run.name in executed else f"{st.get('status', '?')} (earlier)"
        print(f"{run.name:<48} {state:<8} {st.get('seconds', 0):>8}")
    if args.dry_run:
        print(f"\ndry run ({MAX_STEPS}={DRY_RUN_STEPS}) of the {args.preset} preset:")
        print(dry_run_report(out_root, runs))
    table = collect(out_root, runs)
    paths = write_results(out_root, table)
    print("\n" + _summary(table))
    print(f"\nexecuted notebooks, logs and metrics.json: {_rel(out_root)}/<run>/")
    print("results: " + ", ".join(_rel(p) for p in paths))
    failed = [(r, results[r.name]) for r in runs if results.get(r.name, {}).get("status") == "failed"]
    for run, st in failed:
        print(f"FAILED {run.name}: {st.get('error')} (see {_rel(out_root / run.name / 'error.txt')})")
    if failed and not args.retry_failed:
        print("rerun only the failures with --retry-failed")
    stopped = [r.name for r in runs if results.get(r.name, {}).get("status") == "interrupted"]
    if stopped:
        print(f"INTERRUPTED {', '.join(stopped)}: not recorded; the same command redoes them")
        return 130
    return 1 if failed else 0


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
