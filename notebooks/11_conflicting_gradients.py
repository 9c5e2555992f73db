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
# # 11 · Conflicting gradients: when the tasks pull the shared weights apart
#
# **Learning goals.** After this notebook you can
# 1. say what a *conflict* between two task gradients is (a negative dot product) and why a plain sum of the losses
#    then serves the task with the larger gradient;
# 2. write five update rules as one recipe, a combination $d = \sum_k a_k g_k$ of the task gradients with
#    coefficients $a$ found from their dot products: summed loss, MGDA, PCGrad, CAGrad, IMTL-G (and Nash-MTL);
# 3. read optimisation trajectories over two loss landscapes and the Pareto front, and say what each method is
#    attracted to.
#
# Notebook 07 weighted the *losses* (Uncertainty, DWA). Here the methods act on the *gradients* of the shared
# parameters: each task's gradient $g_k = \nabla_\theta L_k$ is computed separately, and the update is built from them.
# All of them live in `mtlkit.weighting` (`Trainer(weighting="mgda")`, `"pcgrad"`, `"cagrad"`, `"imtlg"`,
# `"nashmtl"`); `docs/weightings.md` gives every formula and its source.

# %% tags=["parameters"]
import os

PRESET = os.environ.get("MTLKIT_PRESET", "smoke")  # unit | smoke | lesson | paper (the toy is the same in every preset)
DEVICE = "auto"
SEED = 0
DATA = "synthetic-nyu"  # the real-model part (to come) trains on this dataset's three tasks
OUT_DIR = "../runs/notebooks/11_conflicting_gradients"
TOY_STEPS = 300  # gradient steps per trajectory in the two-objective toy
TOY_LR = 0.1  # initial step size of the toy (cosine-decayed to 0, the same for every method)
CAGRAD_C = 0.5  # CAGrad's ball radius c (the authors' default)

# %%
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch

from mtlkit.course import relative_error, write_notebook_results
from mtlkit.weighting import IMTLG, MGDA, CAGrad, NashMTL, PCGrad

sns.set_theme(style="whitegrid", context="notebook")
out_dir = Path(OUT_DIR)
out_dir.mkdir(parents=True, exist_ok=True)
torch.manual_seed(SEED)

# %% [markdown]
# ## 1 · One recipe, five rules
#
# Write $g_k$ for task $k$'s gradient on the shared parameters and $M_{ij} = g_i \cdot g_j$ for their dot products.
# Every method below updates the shared parameters with $\theta \leftarrow \theta - \eta\, d$, and all but PCGrad
# choose $d = \sum_k a_k g_k$ from $M$ alone:
#
# | method | coefficients $a$ | idea |
# |---|---|---|
# | summed loss | $a_k = 1$ | what `weighting="equal"` does |
# | MGDA (Sener & Koltun 2018) | $\arg\min_{a \ge 0,\ \sum a = 1} \lVert \sum_k a_k g_k \rVert$ | the shortest vector in the convex hull of the gradients: it decreases *every* loss, and is 0 on the Pareto set |
# | PCGrad (Yu et al. 2020) | — | if $g_i \cdot g_j < 0$, remove from $g_i$ its component along $g_j$; sum the results |
# | CAGrad (Liu et al. 2021) | dual of $\max_d \min_k g_k \cdot d$ s.t. $\lVert d - g_0\rVert \le c \lVert g_0 \rVert$ | stay near the mean gradient $g_0$ but improve the worst task; $c = 0$ is the mean |
# | IMTL-G (Liu et al. 2021) | $\sum a = 1$, $d \cdot u_k$ equal for all $k$ ($u_k = g_k / \lVert g_k \rVert$) | every task sees the same progress along its own direction, whatever its gradient's size |
# | Nash-MTL (Navon et al. 2022) | $a > 0$ with $(M a)_k = 1 / a_k$ | a bargaining solution: $g_k \cdot d = 1/a_k$, and $\lVert d \rVert^2 = K$ always |
#
# A **conflict** is $g_1 \cdot g_2 < 0$: a step along one task's gradient *raises* the other's loss (to first order).
# With a plain sum, the larger gradient wins the tug of war.

# %% [markdown]
# ## 2 · A two-parameter, two-objective toy
#
# Two quadratic losses of a point $\theta \in \mathbb{R}^2$, with different minima, shapes and scales (task 2's loss
# is ten times smaller, as a depth loss in metres can be next to a segmentation cross-entropy):
# $L_1 = \tfrac12 (\theta - m_1)^\top A (\theta - m_1)$ and $L_2 = \tfrac{s}{2} (\theta - m_2)^\top B (\theta - m_2)$.
# A point is **Pareto-optimal** when no move lowers one loss without raising the other. For two convex quadratics
# the Pareto set is the curve of minimisers of $w L_1 + (1 - w) L_2$ for $w \in [0, 1]$:
# $\theta^*(w) = (wA + (1-w)sB)^{-1}(wAm_1 + (1-w)sBm_2)$ — from task 2's optimum ($w = 0$) to task 1's ($w = 1$).
# The summed loss is minimised at $w = 1/2$.

# %%
dtype = torch.float64
A_MAT, M1 = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=dtype), torch.tensor([-2.0, 0.0], dtype=dtype)
B_MAT, M2 = torch.tensor([[3.0, 1.0], [1.0, 1.0]], dtype=dtype), torch.tensor([2.0, 1.0], dtype=dtype)
SCALE2 = 0.1  # task 2's loss scale s


def toy_losses(theta: torch.Tensor) -> torch.Tensor:
    """theta [..., 2] -> losses [..., 2] (task 1, task 2)."""
    d1, d2 = theta - M1, theta - M2
    l1 = 0.5 * ((d1 @ A_MAT) * d1).sum(-1)
    l2 = SCALE2 * 0.5 * ((d2 @ B_MAT) * d2).sum(-1)
    return torch.stack([l1, l2], -1)


def task_gradients(points: torch.Tensor) -> torch.Tensor:
    """points [S, 2] -> the two task gradients at every point [S, 2 (task), 2 (coordinate)] by autograd."""
    x = points.detach().clone().requires_grad_(True)
    losses = toy_losses(x)
    grads = [torch.autograd.grad(losses[:, k].sum(), x, retain_graph=True)[0] for k in range(2)]
    return torch.stack(grads, 1)


pareto_w = torch.linspace(0, 1, 2001, dtype=dtype)
pareto_set = torch.stack([torch.linalg.solve(w * A_MAT + (1 - w) * SCALE2 * B_MAT,
                                             w * A_MAT @ M1 + (1 - w) * SCALE2 * B_MAT @ M2) for w in pareto_w])
pareto_front = toy_losses(pareto_set)  # [W, 2]: the losses along the Pareto set
summed_optimum = pareto_set[len(pareto_w) // 2]

grid = torch.stack(torch.meshgrid(torch.linspace(-4, 4, 161, dtype=dtype), torch.linspace(-4, 4, 161, dtype=dtype),
                                  indexing="xy"), -1)  # [161, 161, 2]
landscape = toy_losses(grid)  # [161, 161, 2]
log_landscape = landscape.clamp_min(1e-2).log10()  # for the colour scales (0 at an optimum has no logarithm)
conflict = (task_gradients(grid.reshape(-1, 2)).prod(1).sum(-1) < 0).reshape(grid.shape[:2])  # g1 . g2 < 0

fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
for k, ax in enumerate(axes[:2]):
    cs = ax.contourf(grid[..., 0], grid[..., 1], log_landscape[..., k], levels=20, cmap="viridis")
    fig.colorbar(cs, ax=ax, label=f"log10 L{k + 1}")
    ax.set_title(f"task {k + 1}'s loss")
axes[2].contourf(grid[..., 0], grid[..., 1], conflict.double(), levels=[-0.5, 0.5, 1.5], colors=["white", "salmon"])
axes[2].set_title("where the gradients conflict (red: g1 . g2 < 0)")
for ax in axes:
    ax.plot(pareto_set[:, 0], pareto_set[:, 1], "k-", lw=2.5, label="Pareto set")
    ax.plot(*M1, "b*", ms=14, label="task 1's optimum")
    ax.plot(*M2, "*", color="darkorange", ms=14, label="task 2's optimum")
    ax.plot(*summed_optimum, "kX", ms=10, label="summed loss's optimum")
    ax.set_xlabel("θ₁")
    ax.set_ylabel("θ₂")
    ax.set_aspect("equal")
axes[2].legend(loc="lower left", fontsize=8)
plt.tight_layout()
plt.show()
print(f"gradients conflict on {100 * conflict.double().mean():.0f}% of the square shown; "
      f"the summed loss's optimum is at θ = {summed_optimum.numpy().round(2)}")

# %% [markdown]
# ## 3 · The rules, written out for two tasks
#
# For two tasks the first three rules have closed forms worth writing once by hand. MGDA's min-norm point on the
# segment between $g_1$ and $g_2$: $a_1 = \mathrm{clip}\big((g_2 - g_1)\cdot g_2 / \lVert g_1 - g_2 \rVert^2, 0, 1\big)$.
# PCGrad's projection: $g_1' = g_1 - \frac{\min(g_1 \cdot g_2, 0)}{\lVert g_2 \rVert^2} g_2$ (and symmetrically).
# IMTL-G's condition $d \cdot u_1 = d \cdot u_2$ with $a_1 + a_2 = 1$: $a_1 = \frac{g_2 \cdot (u_2 - u_1)}
# {(g_1 - g_2) \cdot (u_1 - u_2)}$. Below they are checked against the library on random gradient pairs.


# %%
def mgda_two(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    a1 = ((g2 - g1) @ g2 / (g1 - g2).pow(2).sum()).clamp(0, 1)
    return a1 * g1 + (1 - a1) * g2


def pcgrad_two(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    dot = (g1 @ g2).clamp(max=0)
    return (g1 - dot / g2.pow(2).sum() * g2) + (g2 - dot / g1.pow(2).sum() * g1)


def imtlg_two(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    u1, u2 = g1 / g1.norm(), g2 / g2.norm()
    a1 = g2 @ (u2 - u1) / ((g1 - g2) @ (u1 - u2))
    return a1 * g1 + (1 - a1) * g2


TWO = ["task 1", "task 2"]
pairs = torch.randn(200, 2, 2, generator=torch.Generator().manual_seed(0), dtype=dtype)
errors = {
    "MGDA": max(relative_error(mgda_two(*g), MGDA(TWO).combine(g)[0]) for g in pairs),
    "PCGrad": max(relative_error(pcgrad_two(*g), PCGrad.project(g).sum(0)) for g in pairs),
    "IMTL-G": max(relative_error(imtlg_two(*g), IMTLG(TWO).combine(g)[0]) for g in pairs),
}
conflicting = int(sum(float(g[0] @ g[1]) < 0 for g in pairs))

# %%
# NBVAL_CHECK_OUTPUT
for name, err in errors.items():
    print(f"{name:7s} written out vs mtlkit.weighting, 200 random pairs: relative error < 1e-9: {err < 1e-9}")
print(f"pairs with a conflict: {conflicting} of 200")
g_orth = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=dtype)
print("MGDA on g1 = (1,0), g2 = (0,1):", MGDA(TWO).combine(g_orth)[0].numpy().round(6).tolist())

# %% [markdown]
# ## 4 · Trajectories from five starting points
#
# Every method starts from the same five points and takes `TOY_STEPS` steps $\theta \leftarrow \theta - \eta_t d$
# with the same step size $\eta_t$ (cosine-decayed from `TOY_LR` to 0, so that Nash-MTL, whose $\lVert d\rVert$ is
# always $\sqrt{2}$, also comes to rest).

# %%
combiners = {"MGDA": MGDA(TWO), "CAGrad": CAGrad(TWO, c=CAGRAD_C), "IMTL-G": IMTLG(TWO), "Nash-MTL": NashMTL(TWO)}
METHODS = {  # task gradients [2, 2] -> update [2]
    "summed loss": lambda g: g.sum(0),
    "MGDA": lambda g: combiners["MGDA"].combine(g)[0],
    "PCGrad": lambda g: PCGrad.project(g).sum(0),
    "CAGrad": lambda g: combiners["CAGrad"].combine(g)[0],
    "IMTL-G": lambda g: combiners["IMTL-G"].combine(g)[0],
    "Nash-MTL": lambda g: combiners["Nash-MTL"].combine(g)[0],
}
starts = torch.tensor([[-3.5, 2.5], [3.5, 3.0], [0.0, -3.5], [3.5, -2.5], [-3.5, -3.0]], dtype=dtype)


def trajectories(rule, steps: int = TOY_STEPS, lr: float = TOY_LR) -> tuple[torch.Tensor, torch.Tensor]:
    """Every start's path under ``rule`` (task gradients [2, 2] -> update [2]): positions [steps + 1, S, 2] and
    the length of each update relative to the smaller of the two task gradients [steps, S]."""
    x = starts.clone()
    path, ratio = [x], []
    for i in range(steps):
        eta = lr * 0.5 * (1 + math.cos(math.pi * i / steps))
        grads = task_gradients(x)  # [S, 2, 2]
        d = torch.stack([rule(g) for g in grads])  # [S, 2]
        ratio.append(d.norm(dim=1) / grads.norm(dim=2).min(1).values.clamp_min(1e-12))
        x = x - eta * d
        path.append(x)
    return torch.stack(path), torch.stack(ratio)


runs = {name: trajectories(rule) for name, rule in METHODS.items()}
paths = {name: path for name, (path, _) in runs.items()}
step_ratio = {name: ratio for name, (_, ratio) in runs.items()}

# %%
colors = sns.color_palette("tab10", len(starts))
fig, axes = plt.subplots(2, 3, figsize=(15, 9.5), sharex=True, sharey=True)
for ax, (name, path) in zip(axes.flat, paths.items()):
    for k, color in enumerate(("royalblue", "darkorange")):
        ax.contour(grid[..., 0], grid[..., 1], log_landscape[..., k], levels=14, colors=color, alpha=0.4,
                   linestyles="solid", linewidths=0.8)
    ax.plot(pareto_set[:, 0], pareto_set[:, 1], "k-", lw=2.5)
    for s in range(len(starts)):
        ax.plot(path[:, s, 0], path[:, s, 1], "-", color=colors[s], lw=1.8)
        ax.plot(*path[0, s], "o", color=colors[s], ms=6)
        ax.plot(*path[-1, s], "X", color=colors[s], ms=10, mec="black")
    ax.plot(*summed_optimum, "k+", ms=14, mew=2)
    ax.set_title(name)
    ax.set_aspect("equal")
    ax.set_xlim(-4, 4)
    ax.set_ylim(-4, 4)
fig.suptitle("blue: task 1's loss, orange: task 2's, black: Pareto set, +: summed loss's optimum; o start, X end")
plt.tight_layout()
plt.show()

# %%
fig, ax = plt.subplots(figsize=(7.5, 6))
ax.plot(pareto_front[:, 0], pareto_front[:, 1], "k-", lw=2.5, label="Pareto front")
markers = dict(zip(METHODS, "osDv^P"))
for (name, path), color in zip(paths.items(), sns.color_palette("deep", len(METHODS))):
    ends = toy_losses(path[-1])
    ax.scatter(ends[:, 0], ends[:, 1], marker=markers[name], s=90, color=color, edgecolor="black", label=name,
               alpha=0.85)
ax.set_xscale("symlog", linthresh=1e-2)
ax.set_yscale("symlog", linthresh=1e-3)
ax.set_xlabel("task 1's loss L1")
ax.set_ylabel("task 2's loss L2")
ax.set_title("where each method ends, in loss space (five starts each)")
ax.legend(fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5 · What each method is attracted to
#
# For every method and start: how far the end point is from the Pareto set, where on it it lies (the $w$ of the
# nearest Pareto point: 1 = task 1's optimum, 0 = task 2's, 0.5 = the summed loss's optimum), how far the five end
# points are from each other, how much of each task's starting loss is gone, and how long the first update is
# (relative to the smaller of the two task gradients at the start). The sentences are printed from these numbers.


# %%
def describe(name: str, path: torch.Tensor) -> dict:
    end = path[-1]
    dist = torch.cdist(end, pareto_set)
    nearest = dist.argmin(1)
    start_loss, end_loss = toy_losses(path[0]), toy_losses(end)
    removed = 1 - end_loss / start_loss  # [S, 2]
    stationary = torch.stack([MGDA(TWO).combine(g)[0].norm() for g in task_gradients(end)])  # 0: Pareto-stationary
    return {
        "method": name,
        "max distance to Pareto set": float(dist.min(1).values.max()),
        "w of nearest Pareto point (min)": float(pareto_w[nearest].min()),
        "w (max)": float(pareto_w[nearest].max()),
        "spread of end points": float(torch.cdist(end, end).max()),
        "distance to summed optimum (max)": float((end - summed_optimum).norm(dim=1).max()),
        "task 1 loss removed (mean %)": float(100 * removed[:, 0].mean()),
        "task 2 loss removed (mean %)": float(100 * removed[:, 1].mean()),
        "min-norm |d| at the end (max)": float(stationary.max()),
        "first |d| / smaller |g_k| (median)": float(step_ratio[name][0].median()),
    }


summary = pd.DataFrame([describe(n, p) for n, p in paths.items()]).set_index("method")
print(summary.round(3).to_string())


# %%
def sentence(name: str, row: pd.Series) -> str:
    near_front = row["max distance to Pareto set"] < 0.05
    if row["distance to summed optimum (max)"] < 0.1:
        where = (f"at most {row['distance to summed optimum (max)']:.2f} from the summed loss's optimum (w = 0.5), "
                 "from every start")
    elif row["spread of end points"] < 0.1:
        where = f"at one Pareto point, w = {row['w (max)']:.2f}, from every start"
    else:
        where = (f"at a different point for each start (end points up to {row['spread of end points']:.1f} apart), "
                 f"w from {row['w of nearest Pareto point (min)']:.2f} to {row['w (max)']:.2f}")
    front = ("on the Pareto set" if near_front else
             f"but up to {row['max distance to Pareto set']:.2f} short of the Pareto set after {TOY_STEPS} steps")
    t1, t2 = row["task 1 loss removed (mean %)"], row["task 2 loss removed (mean %)"]
    favoured = ("task 1" if t1 > t2 + 5 else "task 2" if t2 > t1 + 5 else "neither task")
    pace = row["first |d| / smaller |g_k| (median)"]
    return (f"{name}: ends {where}, {front}; it removes {t1:.0f}% of task 1's loss and {t2:.0f}% of task 2's "
            f"on average (favours {favoured}); its first update is {pace:.2f}x as long as the smaller task "
            "gradient (median over the starts).")


for name, row in summary.iterrows():
    print(sentence(name, row))

# %% [markdown]
# How to read this, method by method (the numbers above say how far each effect goes in this toy):
#
# - **Summed loss** has one fixed point, the optimum of $L_1 + L_2$, whatever the start. When one loss is much
#   larger (here task 1's), that point is where the larger task is nearly solved; the smaller task's loss may even
#   end *higher* than it started (a negative "removed" share).
# - **CAGrad** with $c < 1$ stays in a ball around the mean gradient, so it is drawn to the same point as the summed
#   loss; on the way it bends towards the task that would otherwise lose (compare its paths with the summed loss's).
# - **MGDA, PCGrad, IMTL-G, Nash-MTL** all stop once the two gradients are exactly opposite, i.e. *anywhere* on the
#   Pareto set: which trade-off they settle on depends on where they start (the spread of their end points).
# - **How fast** differs: MGDA's min-norm update is never longer than the smaller gradient, and IMTL-G's is of that
#   size when the gradients differ a lot in size, so both move at the pace of the *smaller* task; Nash-MTL's update
#   always has length $\sqrt{2}$ whatever the gradients (for two tasks it is the bisector of the unit gradients,
#   $d = (u_1 + u_2)/\sqrt{1 + \cos(g_1, g_2)}$), and PCGrad's is the sum minus only the conflicting parts.
#
# None of this says which method wins on a real network: the toy shows their *geometry*; the next part measures them.

# %% [markdown]
# ## Your turn
#
# 1. **Nash-MTL for two tasks, by hand.** Its coefficients solve $(M a)_k = 1/a_k$. Write them in unit-gradient
#    coordinates, $a_k = c_k / \lVert g_k \rVert$, show that $c_1 = c_2$, and complete `nash_two(g1, g2)` below; the
#    check compares it with `mtlkit`'s `NashMTL` on the random pairs of section 3.
# 2. **Equal scales.** Set `SCALE2 = 1.0` in section 2 and run sections 2–5 again. Which methods' end points move,
#    and which do not? Explain from the table of section 1 which rules depend on the gradients' sizes.
# 3. **CAGrad's radius.** Run section 4 again with `CAGRAD_C = 0` and with `CAGRAD_C = 2` (a parameter). Where do
#    its end points go, and which other method does it resemble at each extreme?


# %%
def nash_two(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """Nash-MTL's update for two task gradients."""
    ### BEGIN SOLUTION
    u1, u2 = g1 / g1.norm(), g2 / g2.norm()
    return (u1 + u2) / torch.sqrt(1 + u1 @ u2)  # c_1 = c_2 = 1 / sqrt(1 + cos): the bisector, length sqrt(2)
    ### END SOLUTION


# %%
# NBVAL_CHECK_OUTPUT
nash_error = max(relative_error(nash_two(*g), NashMTL(TWO).combine(g)[0]) for g in pairs)
print(f"nash_two matches NashMTL on 200 random pairs (relative error < 1e-4; the library adds a 1e-8 ridge): "
      f"{nash_error < 1e-4}")

# %% [markdown]
# ## 6 · Next: a real network (to come)
#
# The second part of this notebook trains the tiny shared encoder on `synthetic-nyu`'s three tasks (segmentation,
# depth, normals) with every method of this notebook: per-layer cosine between the task gradients over training,
# test metrics with spread over seeds next to the trivial predictors, and each method's cost per step. It needs the
# course API for multi-seed comparisons and is not written yet.

# %%
toy = {"steps": TOY_STEPS, "lr": TOY_LR, "cagrad_c": CAGRAD_C, "starts": starts.tolist(),
       "summary": {n: {k: round(v, 4) for k, v in row.items()} for n, row in summary.iterrows()},
       "written_out_relative_errors": {**errors, "Nash-MTL (exercise)": nash_error}}
write_notebook_results(out_dir, "11_conflicting_gradients", PRESET, {}, extra={"toy": toy})
print(f"wrote {OUT_DIR}/metrics.json")
