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
# # 00 · Data and tasks
#
# **Learning goals.** After this notebook you can
# 1. name the dense and image-level tasks of the course and say what each label means and how it is stored;
# 2. explain how one ray-cast *hit buffer* yields every label of a scene, so that depth, normals, edges and
#    segmentation agree exactly;
# 3. derive surface normals from a depth map and check them against the normal labels;
# 4. say how each task is measured (mIoU, depth errors, angular error, max-F, ODS-F, accuracy, box IoU) and which
#    metric represents it in the multi-task score $\Delta_m$.
#
# The course trains on the kit's own **synthetic scenes**: procedural 3-D rooms, corridors, tabletops, outdoor
# scenes and streets, rendered by a small ray caster in numpy (`mtlkit.data.raycast`). Nothing is downloaded, every
# scene is reproducible from (generator version, dataset, seed, split, index), and five variants mimic the task sets
# of the real datasets the papers use (NYUv2, Cityscapes, Oxford-IIIT Pet, PASCAL-Context, Broden+).

# %% tags=["parameters"]
import os

PRESET = os.environ.get("MTLKIT_PRESET", "smoke")  # unit | smoke | lesson | paper
DEVICE = "auto"  # nothing is trained here; kept so every notebook takes the same knobs
SEED = 0
DATA = "synthetic-pascal"  # the variant looked at in detail below
OUT_DIR = "../runs/notebooks/00_data_and_tasks"
N_SHOW = 3  # samples per grid

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from mtlkit import viz
from mtlkit.data import build_cache, get_dataset, list_datasets
from mtlkit.metrics import meter
from mtlkit.tasks import TASK_SPECS

sns.set_theme(style="whitegrid", context="notebook")
torch.manual_seed(SEED)
out_dir = Path(OUT_DIR)
out_dir.mkdir(parents=True, exist_ok=True)
VARIANTS = [name for name in list_datasets() if name.startswith("synthetic-")]
for name in VARIANTS:  # generated once, then read from the cache (data/cache/ or $MTLKIT_DATA_DIR)
    build_cache(name, PRESET, seed=SEED, jobs=2)

# %% [markdown]
# ## 1 · The variants and their tasks
#
# Every dataset yields the same **sample contract**: `image` [3,H,W] in [0,1]; label maps `semseg`, `parts`,
# `material` [H,W] int64 with −1 = ignore; `depth` [1,H,W] in metres (≤ 0 invalid); `normals` [3,H,W] unit vectors in
# the camera frame (x right, y down, z forward; all-zero invalid); `edge`, `saliency` [1,H,W] in {0,1}; image-level
# `scene`, `texture`, `binary` int64; `boxes` [K,4] in pixels. Normalisation belongs to the model, not the data.

# %%
# NBVAL_CHECK_OUTPUT
rows = []
for name in VARIANTS:
    train = get_dataset(name, "train", preset=PRESET, seed=SEED)
    sizes = {split: len(get_dataset(name, split, preset=PRESET, seed=SEED)) for split in ("train", "val", "test")}
    classes = {t: info["num_classes"] for t, info in train.task_info.items() if "num_classes" in info}
    rows.append({"dataset": name, "H x W": "x".join(map(str, train.image_size)), **sizes,
                 "tasks": ", ".join(f"{t}({classes[t]})" if t in classes else t for t in train.tasks)})
table = pd.DataFrame(rows).set_index("dataset")
print(table.to_string())

# %% [markdown]
# ## 2 · What the labels look like
#
# One row per sample: the image (with head boxes and image-level labels in the title), then each dense label.
# Depth uses a perceptual colour map (near = bright); normals are shown as RGB = (n + 1) / 2.

# %%
for name in VARIANTS:
    ds = get_dataset(name, "train", preset=PRESET, seed=SEED)
    fig = viz.sample_grid(ds, list(range(N_SHOW)), dpi=60)
    fig.suptitle(name, y=1.02)
    plt.show()

# %% [markdown]
# ## 3 · One hit buffer, every label: normals from depth
#
# A pixel $(u, v)$ with z-depth $d$ back-projects to the camera-frame point
# $$X(u,v) = d\,\Big(\tfrac{u - c_x}{f_x},\ \tfrac{v - c_y}{f_y},\ 1\Big).$$
# On a smooth surface the two finite differences $X(u{+}1,v) - X(u,v)$ and $X(u,v{+}1) - X(u,v)$ span the tangent
# plane, so their cross product is normal to it:
# $$\hat n = \frac{\partial_u X \times \partial_v X}{\lVert \partial_u X \times \partial_v X\rVert},$$
# oriented towards the camera ($\hat n \cdot X < 0$). Because depth and normals come from the same ray hits, the
# derived normals must agree with the labels wherever the surface is planar. Here is the computation in full:

# %%
def normals_from_depth(depth: np.ndarray, intrinsics) -> np.ndarray:
    """[H,W] z-depth (metres) -> [H-1,W-1,3] unit normals (camera frame) from forward differences."""
    fx, fy, cx, cy = intrinsics
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    points = np.stack([(u - cx) / fx * depth, (v - cy) / fy * depth, depth], axis=-1)  # [H,W,3]
    du = points[:-1, 1:] - points[:-1, :-1]
    dv = points[1:, :-1] - points[:-1, :-1]
    n = np.cross(du, dv)
    n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-12
    facing_camera = (n * points[:-1, :-1]).sum(-1, keepdims=True) < 0
    return np.where(facing_camera, n, -n)


ds = get_dataset("synthetic-nyu", "train", preset=PRESET, seed=SEED)
angles = []
for i in range(min(16, len(ds))):
    s = ds[i]
    depth, labels = s["depth"][0].double().numpy(), s["normals"].permute(1, 2, 0).double().numpy()
    derived = normals_from_depth(depth, s["meta"]["intrinsics"])
    seg = s["semseg"].numpy()
    # planar interiors: the 2x2 stencil lies on one label and both depths are valid
    same = (seg[:-1, :-1] == seg[1:, :-1]) & (seg[:-1, :-1] == seg[:-1, 1:]) & (seg[:-1, :-1] == seg[1:, 1:])
    valid = same & (depth[:-1, :-1] > 0) & (depth[1:, 1:] > 0) & (depth[:-1, 1:] > 0) & (depth[1:, :-1] > 0)
    cos = np.clip((derived * labels[:-1, :-1]).sum(-1), -1, 1)
    angles.append(np.degrees(np.arccos(cos))[valid])
angles = np.concatenate(angles)

# %%
# NBVAL_CHECK_OUTPUT
print(f"median angle between derived and labelled normals: {np.median(angles):.0f} degrees (under 5: "
      f"{np.median(angles) < 5})")

# %%
fig, ax = plt.subplots(figsize=(5, 2.5))
sns.histplot(np.clip(angles, 0, 45), bins=45, ax=ax)
ax.set(xlabel="angle between derived and labelled normal (degrees, clipped at 45)", ylabel="pixels", yscale="log")
plt.show()

# %% [markdown]
# The few large angles sit where a 2×2 stencil straddles a depth discontinuity inside one label (an object occluding
# another part of the same class) — exactly the places where finite differences are not a derivative.
#
# ## 4 · Edges are label boundaries
#
# PASCAL-style edge labels mark where the semantic label changes. Written out: a pixel is an edge pixel when its
# label differs from its right or its lower neighbour (a one-pixel-wide boundary on the upper-left side).

# %%
def edges_from_labels(seg: torch.Tensor) -> torch.Tensor:
    """[H,W] int labels -> [H,W] float {0,1}: 1 where the right or lower neighbour has another label."""
    edge = torch.zeros_like(seg, dtype=torch.bool)
    edge[:, :-1] |= seg[:, 1:] != seg[:, :-1]
    edge[:-1, :] |= seg[1:, :] != seg[:-1, :]
    return edge.float()


pascal = get_dataset(DATA, "train", preset=PRESET, seed=SEED)
mismatch = sum(int((edges_from_labels(pascal[i]["semseg"]) != pascal[i]["edge"][0]).sum()) for i in range(8))

# %%
# NBVAL_CHECK_OUTPUT
print(f"pixels where our edges differ from the dataset's edge labels (8 images): {mismatch}")

# %% [markdown]
# ## 5 · Label statistics
#
# Class imbalance shapes what a model learns first: floors and walls dominate indoor scenes, roads and buildings the
# streets. mIoU weighs every class equally, pixel accuracy weighs every pixel, so the two disagree on imbalanced data.

# %%
def class_frequencies(ds, task: str, n: int = 64) -> pd.Series:
    names = ds.task_info[task]["class_names"]
    counts = np.zeros(len(names))
    for i in range(min(n, len(ds))):
        lab = ds[i][task].flatten().numpy()
        counts += np.bincount(lab[lab >= 0], minlength=len(names))[: len(names)]
    return pd.Series(counts / counts.sum(), index=names)


freq = {name: class_frequencies(get_dataset(name, "train", preset=PRESET, seed=SEED), "semseg")
        for name in ("synthetic-nyu", "synthetic-city")}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
for ax, (name, f) in zip(axes, freq.items()):
    sns.barplot(x=f.index, y=f.values, ax=ax, color="tab:blue")
    ax.set(title=f"{name}: semseg pixel share", xlabel="", ylabel="fraction of labelled pixels")
    ax.tick_params(axis="x", rotation=80, labelsize=7)
plt.tight_layout()
plt.show()

# %%
depths = []
for name in ("synthetic-nyu", "synthetic-city"):
    d = get_dataset(name, "train", preset=PRESET, seed=SEED)
    for i in range(min(32, len(d))):
        v = d[i]["depth"].flatten().numpy()
        depths.append(pd.DataFrame({"depth (m)": v[v > 0][::7], "dataset": name}))
fig, ax = plt.subplots(figsize=(6, 2.8))
sns.histplot(pd.concat(depths), x="depth (m)", hue="dataset", bins=60, stat="density", common_norm=False,
             element="step", log_scale=(True, False), ax=ax)
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
broden = get_dataset("synthetic-broden", "train", preset=PRESET, seed=SEED)
labelled = pd.Series([t for i in range(len(broden)) for t in broden[i]["meta"]["tasks"]]).value_counts().sort_index()
print("synthetic-broden: images labelling each task (several sources, each labels some tasks)")
print(labelled.to_string())

# %% [markdown]
# ## 6 · How each task is measured
#
# Each task has a loss, a streaming metric and one metric that represents it in the multi-task score
# $$\Delta_m = \frac{1}{T}\sum_{t=1}^{T} (-1)^{l_t}\,\frac{M_{\mathrm{mt},t} - M_{\mathrm{st},t}}{M_{\mathrm{st},t}},$$
# with $l_t = 1$ when lower is better. Metrics accumulate over the **whole split** (one confusion matrix for mIoU,
# pixel-weighted depth errors, the global median angle) — averaging per image gives different numbers.

# %%
spec_rows = [{"task": name, "kind": spec.kind, "Δm metric": spec.delta_metric,
              "better": "higher" if spec.higher_is_better else "lower"} for name, spec in TASK_SPECS.items()]
print(pd.DataFrame(spec_rows).set_index("task").to_string())

# %% [markdown]
# What does resolution cost? A "blurry oracle" that sees the labels at ¼ resolution and upsamples them (nearest)
# is what a decoder without skip connections can at best deliver. Scoring it with the kit's meters:

# %%
def blurry(x: torch.Tensor, factor: int = 4) -> torch.Tensor:
    small = x[..., ::factor, ::factor]
    return small.repeat_interleave(factor, -2).repeat_interleave(factor, -1)[..., : x.shape[-2], : x.shape[-1]]


nyu_val = get_dataset("synthetic-nyu", "val", preset=PRESET, seed=SEED)
meters = {t: meter(t, **({"num_classes": nyu_val.task_info[t]["num_classes"]} if t == "semseg" else {}))
          for t in ("semseg", "depth", "normals")}
for i in range(len(nyu_val)):
    s = nyu_val[i]
    meters["semseg"].update(blurry(s["semseg"])[None], s["semseg"][None])
    meters["depth"].update(blurry(s["depth"])[None], s["depth"][None])
    meters["normals"].update(blurry(s["normals"])[None], s["normals"][None])
oracle = {t: m.compute() for t, m in meters.items()}

# %%
# NBVAL_CHECK_OUTPUT
print(f"blurry oracle on synthetic-nyu/{PRESET} val: mIoU {oracle['semseg']['miou']:.0f}%, "
      f"abs err {oracle['depth']['abs_err']:.1f} m, normals mean {oracle['normals']['mean']:.0f} deg")

# %% [markdown]
# ## 7 · Results of this notebook
#
# Every notebook writes `OUT_DIR/metrics.json`; `mtlkit reproduce` and notebook 10 collect them.

# %%
result = {
    "notebook": "00_data_and_tasks", "preset": PRESET, "seed": SEED,
    "datasets": table.reset_index().to_dict(orient="records"),
    "normals_from_depth_median_deg": float(np.median(angles)),
    "edge_label_mismatch_pixels": mismatch,
    "blurry_oracle": oracle,
}
(out_dir / "metrics.json").write_text(json.dumps(result, indent=2, default=float))
print(f"wrote {OUT_DIR}/metrics.json")
