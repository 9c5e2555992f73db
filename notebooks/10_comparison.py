# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 10 · The whole course side by side
#
# **Learning goals.** After this notebook you can
# 1. collect every notebook's results (a `mtlkit reproduce` folder, or the notebooks' own `runs/notebooks/`) into
#    one table, and say which runs may be compared with which;
# 2. compute the multi-task score $\Delta_m$ by hand from the single-task baselines, task by task, and check it
#    against the library;
# 3. read a parameters-versus-quality plot, a $\Delta_m$ ranking and a per-task heatmap, and tell negative transfer
#    (one task pays for another) from a model that is simply too small;
# 4. put the kit's numbers beside the papers' (paper preset only) without mixing the two up.
#
# Nothing is trained here: the notebook reads the `metrics.json` that notebooks 01–09 wrote with
# `write_notebook_results`. Each notebook trained its own single-task baselines on the same data, schedule and
# model width as its multi-task models, so $\Delta_m$ is only computed **within** a notebook run, never across two.
#
# $$\Delta_m = \frac{100}{T}\sum_{t=1}^{T} (-1)^{l_t}\,\frac{M_{\mathrm{mt},t} - M_{\mathrm{st},t}}{M_{\mathrm{st},t}}
# \qquad l_t = 1 \text{ if lower is better for task } t \text{ (depth error, normal angle), else } 0$$
#
# (Vandenhende et al.'s survey form: one metric per task, the task's `delta_metric`; positive = the multi-task model
# beats its single-task baselines on average.)

# %% tags=["parameters"]
import os

PRESET = os.environ.get("MTLKIT_PRESET", "smoke")  # unit | smoke | lesson | paper
DEVICE = "auto"  # unused: nothing is trained here
SEED = 0  # unused: the seeds are those of the runs read
DATA = "auto"  # unused: each notebook chose its own dataset
OUT_DIR = "../runs/notebooks/10_comparison"
RESULTS_DIR = None  # None: ../runs/PRESET (what `mtlkit reproduce --preset PRESET` wrote), else OUT_DIR's siblings
DPI = 72

# %%
import json
import re
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import display

from mtlkit.course import (find_results, reference_table, relative_to_single, results_table, task_metric_columns,
                           write_notebook_results)
from mtlkit.metrics import delta_m
from mtlkit.tasks import TASK_SPECS

sns.set_theme(style="whitegrid", context="notebook")
pd.set_option("display.width", 160)
out_dir = Path(OUT_DIR)
out_dir.mkdir(parents=True, exist_ok=True)

# Where the results come from, first match wins: an explicit RESULTS_DIR; the folder `mtlkit reproduce` is writing
# when it runs this notebook (OUT_DIR = <its --out>/10_comparison, beside its reproduce.json stamp); the reproduce
# folder of this preset; OUT_DIR's siblings (runs/notebooks/ when the notebooks ran by hand or under nbval).
in_reproduce = (out_dir.parent / "reproduce.json").exists()
candidates = ([RESULTS_DIR] if RESULTS_DIR else
              [out_dir.parent] if in_reproduce else [f"../runs/{PRESET}", out_dir.parent])
print(f"preset {PRESET}: looking for results in", ", ".join(str(c) for c in candidates))

# %% [markdown]
# ## 1 · The key module in view: Δm from the single-task rows
#
# Every notebook writes one row per trained model: `task/metric` values, `parameters_M`, and the single-task
# baselines as rows named `single-<task>`. Below, $\Delta_m$ is written out from those rows, then checked on a
# small results folder built here with the library's own writer (so this check never depends on which runs exist)
# against `mtlkit.metrics.delta_m` and the per-task table `mtlkit.course.relative_to_single` that the figures use.

# %%
def per_task_change(rows: pd.DataFrame) -> pd.DataFrame:
    """Relative change (%) of each multi-task row against the `single-<task>` row of the same folder, signed so
    that positive is better. rows: one notebook run's models (columns `model`, `task/metric`); returns [models, tasks].
    """
    out = {}
    multi = rows[~rows["model"].str.startswith("single-")]
    for task, spec in TASK_SPECS.items():
        col = f"{task}/{spec.delta_metric}"  # the metric that represents the task in Δm
        base = rows.loc[rows["model"] == f"single-{task}", col] if col in rows else pd.Series(dtype=float)
        if base.dropna().empty:
            continue  # no single-task baseline for this task: it cannot enter Δm
        sign = 1.0 if spec.higher_is_better else -1.0  # (-1)^{l_t}
        out[task] = 100.0 * sign * (multi[col] - base.iloc[0]) / base.iloc[0]
    return pd.DataFrame(out, index=multi.index)


def delta_m_by_hand(rows: pd.DataFrame) -> pd.Series:
    """Δm of each multi-task row: the mean of its per-task changes over the tasks it predicts."""
    return per_task_change(rows).mean(axis=1, skipna=True)


# %%
# NBVAL_CHECK_OUTPUT
# A two-notebook results folder with hand-picked numbers: joint semseg +10 % and depth +25 % (lower error) -> +17.5 %.
demo_dir = Path(tempfile.mkdtemp(prefix="mtlkit-10-"))
write_notebook_results(demo_dir / "01_demo", "01_demo", PRESET, {
    "single-semseg": {"semseg/miou": 50.0, "parameters_M": 1.0},
    "single-depth": {"depth/abs_err": 2.0, "parameters_M": 1.0},
    "joint": {"semseg/miou": 55.0, "depth/abs_err": 1.5, "parameters_M": 1.2},
})
write_notebook_results(demo_dir / "02_demo", "02_demo", PRESET, {
    "single-semseg": {"semseg/miou": 40.0}, "single-depth": {"depth/abs_err": 1.0},
    "branched": {"semseg/miou": 38.0, "depth/abs_err": 1.1},  # -5 % and -10 %: negative transfer, Δm = -7.5 %
})
demo = results_table(demo_dir, preset=PRESET)
print("columns:", list(demo.columns))
print("rows per folder:", demo.groupby("folder").size().to_dict())
ours = pd.concat([delta_m_by_hand(rows) for _, rows in demo.groupby("folder")])
library = {i: delta_m({t: {TASK_SPECS[t].delta_metric: demo.loc[i, c]} for t, c in task_metric_columns(demo).items()
                       if not np.isnan(demo.loc[i, c])},
                      {t: {TASK_SPECS[t].delta_metric: demo[(demo.folder == demo.loc[i, "folder"])
                                                              & (demo.model == f"single-{t}")][c].iloc[0]}
                       for t, c in task_metric_columns(demo).items()})
           for i in ours.index}
print("Δm by hand:", {demo.loc[i, "model"]: round(v, 3) for i, v in ours.items()})
print("same as mtlkit.metrics.delta_m:", all(abs(ours[i] - library[i]) < 1e-9 for i in ours.index))
by_hand = pd.concat([per_task_change(rows) for _, rows in demo.groupby("folder")])
print("same per-task table as relative_to_single:",
      np.allclose(by_hand, relative_to_single(demo).loc[by_hand.index, by_hand.columns], equal_nan=True))

# %% [markdown]
# ## 2 · The course's results, dataset by dataset
#
# One row per (notebook run, model). `folder` names the notebook run: under `mtlkit reproduce` it carries the grid
# parameters (`04_branched__SEED=1`), so several seeds or weightings of one notebook stay apart. The notebooks train
# on different datasets (at the smoke preset synthetic-city for 01–05, -pet for 06, -nyu for 07, -broden for 08,
# -pascal for 09), and a metric is only comparable on the same data: every table and figure below is therefore split
# **by dataset**, and nothing is ranked across two. The dataset is the `data` a notebook records in its
# `metrics.json`; a notebook that records none is kept apart as its own group.

# %%
def notebook_dataset(folder: str, notebook: str) -> str:
    """The dataset a notebook run trained on (its metrics.json `data`), or a group of its own when unrecorded."""
    try:
        recorded = json.loads((Path(source) / folder / "metrics.json").read_text()).get("data")
    except (OSError, ValueError, AttributeError, TypeError):
        recorded = None
    return str(recorded) if recorded else f"{notebook} (dataset not recorded)"


def shown_columns(rows: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The rows' given columns, without those that are empty for every row."""
    return rows[[c for c in columns if c in rows]].dropna(axis=1, how="all")


source, table = find_results(*candidates, preset=PRESET)
if source is None:
    print(f"No {PRESET}-preset results found. Produce them with either\n"
          f"  make reproduce                                  (runs every notebook into runs/{PRESET}/), or\n"
          f"  mtlkit reproduce --preset {PRESET} --notebooks 01 04   (a few), or\n"
          "  run notebooks 01-09 in JupyterLab (they write runs/notebooks/NN_topic/metrics.json),\n"
          "then re-run this notebook. The figures below stay empty until then.")
    table["dataset"] = []
else:
    table["dataset"] = [notebook_dataset(f, nb) for f, nb in zip(table["folder"], table["notebook"])]
    print(f"read {len(table)} model rows from {table['folder'].nunique()} notebook runs on "
          f"{table['dataset'].nunique()} datasets in {source}")
metric_cols = task_metric_columns(table)
table["delta_m (recomputed)"] = relative_to_single(table).mean(axis=1) if len(table) else []
datasets = sorted(table["dataset"].unique()) if len(table) else []
all_metrics = sorted({c for c in table if "/" in c and c.split("/")[0] in TASK_SPECS})
for dataset in datasets:
    rows = table[table["dataset"] == dataset].set_index(["folder", "model"])
    print(f"\n{dataset}: {len(rows)} models from {rows.index.get_level_values('folder').nunique()} notebook run(s)")
    display(shown_columns(rows, all_metrics + ["parameters_M", "delta_m", "delta_m (recomputed)", "train_seconds"])
            .round(3))

# %% [markdown]
# The notebooks' own `delta_m` and the one recomputed here agree where both exist (a notebook may use another
# baseline choice, e.g. a different subset of tasks, and then says so in its text). Smoke-preset numbers check that
# the pipeline learns; they are far too noisy to rank designs — use the `lesson` or `paper` preset for that.
#
# ## 3 · Quality versus parameters
#
# One row of panels per dataset, one panel per task of that dataset: every model that predicts the task, at its
# parameter count (the smoke preset's narrow models, so the counts are those actually trained, not the full-size
# ones the notebooks check). The arrow in a panel's title gives the metric's direction: up and to the left is better
# for ↑, down and to the left for ↓. Each model has its own colour, named in the legend of its row (a cross marks a
# single-task baseline), so no label covers a point.

# %%
def short(notebook: str) -> str:
    return notebook.split("_")[0]


plotted = [(d, [(t, c) for t, c in metric_cols.items() if table.loc[table["dataset"] == d, c].notna().any()])
           for d in datasets] if "parameters_M" in table else []
plotted = [(d, tasks) for d, tasks in plotted if tasks]
if plotted:
    cols = max(len(tasks) for _, tasks in plotted)
    fig, axes = plt.subplots(len(plotted), cols, figsize=(3.3 * cols + 3.4, 2.7 * len(plotted)), dpi=DPI,
                             squeeze=False)
    for row_axes, (dataset, tasks) in zip(axes, plotted):
        rows = table[table["dataset"] == dataset].dropna(subset=["parameters_M"])
        labels = [f"{short(nb)} · {m}" for nb, m in zip(rows["notebook"], rows["model"])]
        palette = dict(zip(labels, sns.color_palette("tab20", n_colors=len(labels))))
        # a cross for a single-task baseline; otherwise one marker shape per notebook of the dataset
        shapes = dict(zip(sorted(rows["notebook"].unique()), "osD^vP*"))
        markers = {label: "x" if m.startswith("single-") else shapes.get(nb, "o")
                   for label, nb, m in zip(labels, rows["notebook"], rows["model"])}
        for ax, (task, col) in zip(row_axes, tasks):
            for label, (_, r) in zip(labels, rows.iterrows()):
                if r[col] == r[col]:  # not NaN
                    ax.scatter(r["parameters_M"], r[col], color=palette[label], s=45, marker=markers[label])
            ax.set_title(f"{col} {'↑' if TASK_SPECS[task].higher_is_better else '↓'}", fontsize=9)
            ax.set_xlabel("parameters (M)", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in row_axes[len(tasks):]:
            ax.axis("off")
        row_axes[0].set_ylabel(dataset, fontsize=9)
        handles = [plt.Line2D([], [], ls="", color=palette[label], marker=markers[label], label=label)
                   for label in labels]
        row_axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7,
                            frameon=False, title=dataset, title_fontsize=8)
    fig.tight_layout()
    plt.show()
else:
    print("no task metric with a parameter count to plot")

# %% [markdown]
# ## 4 · Δm per model (and per weighting), within each dataset
#
# Each bar is one multi-task model against the single-task baselines of its own notebook run, in one panel per
# dataset. A grid over `WEIGHTING` (e.g. `mtlkit reproduce --grid WEIGHTING=equal,dwa,uncertainty`) gives one bar per
# weighting; a grid over `SEED` gives mean ± std (the error bar, shown where there are two seeds or more).

# %%
ranked = table.dropna(subset=["delta_m (recomputed)"]).copy() if len(table) else table
if len(ranked):
    # the run's setting without its seed, so seeds of one setting pool into one bar
    ranked["setting"] = [re.sub(r"__SEED=[^_]+", "", f) + " · " + m for f, m in zip(ranked.folder, ranked.model)]
    groups = [(d, ranked[ranked["dataset"] == d].groupby("setting")["delta_m (recomputed)"]
               .agg(["mean", "std", "size"]).sort_values("mean")) for d in sorted(ranked["dataset"].unique())]
    fig, axes = plt.subplots(len(groups), 1, dpi=DPI, squeeze=False,
                             figsize=(6.5, sum(0.28 * len(b) + 0.9 for _, b in groups)),
                             gridspec_kw={"height_ratios": [len(b) + 1.5 for _, b in groups]})
    for ax, (dataset, bars) in zip(axes[:, 0], groups):
        ax.barh(bars.index, bars["mean"], xerr=bars["std"].fillna(0),
                color=np.where(bars["mean"] >= 0, "#4c72b0", "#c44e52"))
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(dataset, fontsize=9, loc="left")
        ax.tick_params(axis="y", labelsize=7)
    axes[-1, 0].set_xlabel("Δm (%) vs the notebook's single-task baselines")
    fig.tight_layout()
    plt.show()
    for dataset, bars in groups:
        print(dataset)
        display(bars.rename(columns={"mean": "Δm mean (%)", "std": "Δm std", "size": "seeds"}).round(2)
                .dropna(axis=1, how="all"))
else:
    print("no multi-task row with single-task baselines: nothing to rank")

# %% [markdown]
# ## 5 · Per-task heatmap
#
# The per-task terms of $\Delta_m$, one heatmap per dataset (its own tasks only): which task gains and which pays. A
# row that is red in one column and blue in another is negative transfer between those tasks; a row red everywhere is
# more likely a capacity or schedule problem.

# %%
changes = relative_to_single(table) if len(table) else pd.DataFrame()
changes = changes.dropna(how="all")
heatmaps = [(d, changes[table.loc[changes.index, "dataset"] == d].dropna(axis=1, how="all")) for d in datasets]
heatmaps = [(d, c) for d, c in heatmaps if c.size]
if heatmaps:
    limit = float(np.nanpercentile(np.abs(changes.to_numpy(dtype=float)), 95)) or 1.0
    width = max(c.shape[1] for _, c in heatmaps)
    fig, axes = plt.subplots(len(heatmaps), 1, dpi=DPI, squeeze=False,
                             figsize=(1.0 * width + 5.0, sum(0.3 * len(c) + 0.8 for _, c in heatmaps)),
                             gridspec_kw={"height_ratios": [len(c) + 1.5 for _, c in heatmaps]})
    for ax, (dataset, part) in zip(axes[:, 0], heatmaps):
        part = part.copy()
        part.index = [f"{table.loc[i, 'folder']} · {table.loc[i, 'model']}" for i in part.index]
        sns.heatmap(part.astype(float), annot=True, fmt=".0f", cmap="RdBu", center=0, vmin=-limit, vmax=limit,
                    annot_kws={"fontsize": 7}, cbar=False, ax=ax)
        ax.set_title(dataset, fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.colorbar(axes[0, 0].collections[0], ax=axes[:, 0].tolist(), label="% vs single-task (+ = better)",
                 shrink=0.6, pad=0.02)  # one scale for every dataset
    plt.show()
else:
    print("no per-task changes to show")

# %% [markdown]
# ## 6 · The papers' numbers
#
# The papers' and the course's published numbers (kept in `mtlkit.course.REFERENCE_RESULTS` and the `*_REFERENCE`
# tables of the `mtlkit.course.*` modules; sources in `docs/reference.md`) come from real datasets at full
# resolution and schedule. Only the **paper** preset trains on those datasets, so only there are they put beside
# the kit's numbers; they are always labelled `reference`, and never enter the kit's tables or Δm.

# %%
references = reference_table()
references["kind"] = "reference (paper/course)"
if PRESET == "paper" and len(table):
    # the kit's best run of each referenced metric (direction from the task registry), beside the paper's
    def kit_best(metric: str) -> str:
        task = metric.split("/")[0]
        if metric not in table or task not in TASK_SPECS or table[metric].dropna().empty:
            return ""
        best = table[metric].idxmax() if TASK_SPECS[task].higher_is_better else table[metric].idxmin()
        return f"{table.loc[best, metric]:.2f} ({table.loc[best, 'folder']} · {table.loc[best, 'model']})"

    references["kit, paper preset (best run)"] = references["metric"].map(kit_best)
else:
    print(f"{PRESET} preset: the references below are NOT comparable with this preset's runs (other data, "
          "resolution and schedule); run the paper preset to see them side by side.")
display(references.replace("", np.nan).dropna(axis=1, how="all").fillna(""))

# %% [markdown]
# ## 7 · Write the summary
#
# This notebook's own `metrics.json` records where it read from, how many runs it saw and on which datasets (it trains
# no model, so its `runs` mapping is empty and `mtlkit reproduce` lists it without metrics).

# %%
summary = {
    "results_dir": str(source) if source is not None else None,
    "notebook_runs": int(table["folder"].nunique()) if len(table) else 0,
    "model_rows": int(len(table)),
    "datasets": {d: sorted(table.loc[table["dataset"] == d, "folder"].unique()) for d in datasets},
    "delta_m": {f"{f} · {m}": round(float(d), 3) for f, m, d in
                zip(table.get("folder", []), table.get("model", []), table.get("delta_m (recomputed)", []))
                if d == d},
}
write_notebook_results(out_dir, "10_comparison", PRESET, {}, extra=summary)
print(f"wrote {OUT_DIR}/metrics.json")
