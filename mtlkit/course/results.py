"""Results of the course notebooks: summary rows, the notebooks' metrics.json, the growing course table, Δm.

:func:`write_notebook_results` writes a notebook's ``OUT_DIR/metrics.json``; :func:`course_table` reads every sibling
notebook's file, so the table grows from notebook to notebook (``runs/notebooks/`` by hand, ``runs/<preset>/`` under
``mtlkit reproduce``). Degenerate results (NaN, a zero baseline, an empty class after a tiny run) come out as NaN
with one printed sentence saying why; these helpers never raise on them.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any
from collections.abc import Mapping, Sequence


def _read_metrics(path: Path) -> dict[str, Any] | None:
    """A run's metrics.json, or None when it is missing, unreadable or not a JSON object."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return metrics if isinstance(metrics, dict) else None


def _number(value: Any) -> float:
    """A metric value as a float: None (NaN as JSON may store it) and non-numbers become NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def summarize(metrics: Mapping[str, Any], split: str = "test", name: str | None = None) -> dict[str, float]:
    """A flat row of one run: ``task/metric`` values on ``split``, the grader score where it applies, parameters.

    A metric that is NaN (or missing as JSON null) stays NaN; with ``name`` one sentence says which and why.
    """
    from mtlkit.metrics import grader_score

    row: dict[str, float] = {}
    if split == "test":
        results = metrics.get("test") or {}
    else:
        best = (metrics.get("best") or {}).get("epoch", -1)
        results = next((e.get(split) or {} for e in metrics.get("epochs", []) if e["epoch"] == best), {})
    for task, values in results.items():
        for key, value in (values or {}).items():
            row[f"{task}/{key}"] = _number(value)
    if "semseg/miou" in row and "depth/si_log_rmse" in row:
        row["grader_score"] = grader_score(row["semseg/miou"], row["depth/si_log_rmse"])
    row["parameters_M"] = _number((metrics.get("parameters") or {}).get("total")) / 1e6
    row["train_seconds"] = sum(_number(s) for s in (metrics.get("timings") or {}).get("train_seconds", []))
    nan = [k for k, v in row.items() if k != "parameters_M" and math.isnan(v)]
    if name is not None and nan:
        print(f"{name}: {', '.join(nan)} = NaN on the {split} split (no labelled or valid pixels there, e.g. a "
              "withheld split or a class absent from a tiny split, or a diverged run)")
    return row


def write_notebook_results(out_dir: str | os.PathLike, notebook: str, preset: str, runs: Mapping[str, Mapping],
                           extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``OUT_DIR/metrics.json`` of a notebook: one summary row per run (see :func:`summarize`)."""
    from mtlkit.atomic import atomic_write_json

    path = Path(out_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"notebook": notebook, "preset": preset, "runs": {k: dict(v) for k, v in runs.items()},
                             **dict(extra or {})})
    return path


def course_table(out_dir: str | os.PathLike, preset: str | None = None):
    """Every finished notebook's runs next to ``out_dir`` (its siblings), as a DataFrame indexed by notebook/run."""
    import pandas as pd

    rows = []
    for path in sorted(Path(out_dir).resolve().parent.glob("*/metrics.json")):
        data = _read_metrics(path)
        if data is None or not isinstance(data.get("runs"), dict) or (preset and data.get("preset") != preset):
            continue
        for run, values in data["runs"].items():
            rows.append({"notebook": data.get("notebook", path.parent.name), "run": run, **values})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).set_index(["notebook", "run"])




# ------------------------------------------------------------------------------------------------ the comparison
def print_course_table(out_dir: str | os.PathLike, preset: str, columns: Sequence[str],
                       notebook: str | None = None, digits: int = 2):
    """Print the course table so far (:func:`course_table`: every notebook next to ``out_dir`` in ``preset``), its
    ``columns`` that exist, only ``notebook``'s rows when given; returns the whole table."""
    table = course_table(out_dir, preset=preset)
    shown = [c for c in columns if c in table.columns]
    if table.empty:
        print(f"no finished notebooks of the {preset} preset next to {Path(out_dir).name} yet")
        return table
    rows = table.loc[[notebook]] if notebook is not None and notebook in table.index else table
    print(f"course results, {preset} preset" + (f" (notebook {notebook}'s rows)" if notebook else "") + ":")
    print(rows[shown].round(digits).to_string(na_rep="-"))
    return table


def results_table(folder: str | os.PathLike, preset: str | None = None):
    """Every run of every ``folder/*/metrics.json`` (a notebook's ``write_notebook_results``) as one DataFrame.

    Reads both layouts: ``runs/notebooks/<notebook>/`` (notebooks run by hand or under nbval) and
    ``runs/<preset>/<notebook>[__KEY=value...]/`` (``mtlkit reproduce``). One row per (folder, model) with columns
    ``folder`` (the subfolder: one notebook run with one parameter set), ``notebook``, ``preset``, ``model`` and every
    numeric value the notebook wrote (``task/metric``, ``parameters_M``, ``delta_m``, ...). Unreadable files and
    files of another ``preset`` are skipped; an empty or missing folder gives an empty DataFrame.
    """
    import pandas as pd

    rows = []
    for path in sorted(Path(folder).glob("*/metrics.json")):
        data = _read_metrics(path)
        if data is None or not isinstance(data.get("runs"), dict) or (preset and data.get("preset") != preset):
            continue
        for model, values in data["runs"].items():
            numbers = {k: v for k, v in (values or {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            rows.append({"folder": path.parent.name, "notebook": data.get("notebook", path.parent.name),
                         "preset": data.get("preset"), "model": model, **numbers})
    return pd.DataFrame(rows, columns=None if rows else ["folder", "notebook", "preset", "model"])


def find_results(*candidates: str | os.PathLike | None, preset: str | None = None) -> tuple[Path | None, Any]:
    """The first of ``candidates`` (folders; None is skipped) that holds runs of ``preset``, and its results_table.

    Notebook 10 passes the folder ``mtlkit reproduce`` wrote (``runs/smoke``) first and the notebooks' own
    ``runs/notebooks`` last. Returns ``(None, empty table)`` when none holds runs.
    """
    import pandas as pd

    for candidate in candidates:
        if candidate is not None and Path(candidate).is_dir():
            table = results_table(candidate, preset=preset)
            if not table.empty:
                return Path(candidate), table
    return None, pd.DataFrame(columns=["folder", "notebook", "preset", "model"])


def task_metric_columns(table) -> dict[str, str]:
    """``task -> "task/<delta metric>"`` for every registered task whose Δm metric is a column of ``table``."""
    from mtlkit.tasks import TASK_SPECS

    return {t: f"{t}/{s.delta_metric}" for t, s in TASK_SPECS.items() if f"{t}/{s.delta_metric}" in table}


def relative_to_single(table):
    """Per-task relative change (percent, positive = better) of each multi-task row against its single-task run.

    The single-task baseline of task ``t`` is the row ``single-t`` of the same ``folder`` (one notebook run: the same
    data, schedule and model width), so ``mean over the row's tasks`` is the survey Δm of
    :func:`mtlkit.metrics.delta_m`. Returns a DataFrame indexed like ``table`` (single-task rows and tasks without a
    baseline are NaN), one column per task.
    """
    import pandas as pd

    from mtlkit.tasks import TASK_SPECS

    columns = task_metric_columns(table)
    out = pd.DataFrame(index=table.index, columns=list(columns), dtype=float)
    for folder, rows in table.groupby("folder"):
        for task, col in columns.items():
            base = rows.loc[rows["model"] == f"single-{task}", col].dropna()
            if base.empty:
                continue  # no baseline for this task in this folder: NaN
            if float(base.iloc[0]) == 0:
                print(f"{folder}: the single-{task} baseline's {col} is 0, so changes relative to it are NaN")
                continue
            sign = 1.0 if TASK_SPECS[task].higher_is_better else -1.0
            multi = rows[~rows["model"].astype(str).str.startswith("single-")]
            out.loc[multi.index, task] = 100.0 * sign * (multi[col] - float(base.iloc[0])) / float(base.iloc[0])
    return out


def delta_m_or_nan(multi: Mapping[str, Any], single: Mapping[str, Any], label: str = "Δm", **options: Any) -> float:
    """:func:`mtlkit.metrics.delta_m`, or NaN with one printed sentence why when it cannot be computed (a NaN or
    zero single-task baseline after a short run, a task without results)."""
    from mtlkit.metrics import delta_m

    try:
        value = delta_m(multi, single, **options)
    except (ValueError, ZeroDivisionError, TypeError) as exc:
        print(f"{label}: NaN ({exc})")
        return math.nan
    if not math.isfinite(value):
        print(f"{label}: NaN (a metric of the run or of its baseline is NaN: nothing to compare)")
        return math.nan
    return value
