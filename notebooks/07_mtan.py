# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · MTAN: task attention over a shared network, and how to weight the losses
#
# **Learning goals.** After this notebook you can
# 1. write the Multi-Task Attention Network (Liu, Johns & Davison, CVPR 2019) as equations: one shared SegNet, and
#    per task a chain of soft attention masks that *select* features from every shared stage;
# 2. write a task attention block out from scratch and check it against `mtlkit.models.segnet` by loading its
#    `state_dict`;
# 3. count the parameters of the MTAN paper's baselines — One Task, STAN, Split (standard/wide/deep), Dense,
#    Cross-stitch, MTAN — and compare with the paper's numbers;
# 4. train them under Equal, Dynamic Weight Average and Uncertainty weighting, score every task metric and the
#    multi-task score $\Delta_m$ against single-task models, and plot how DWA's $\lambda_k(t)$ and Uncertainty's
#    $\sigma_k$ evolve.
#
# The data is `synthetic-nyu`: indoor-like scenes with 13-class semantic segmentation, depth and surface normals —
# the three tasks of the MTAN paper's NYUv2 experiment.

# %% tags=["parameters"]
import os

PRESET = os.environ.get("MTLKIT_PRESET", "smoke")  # unit | smoke | lesson | paper
DEVICE = "auto"
SEED = 0
DATA = "auto"  # "auto": synthetic-nyu (paper preset: the real nyuv2, as preprocessed by the MTAN authors)
OUT_DIR = "../runs/notebooks/07_mtan"
MODELS = None  # None: the preset's list; full grid: ["stan", "split-wide", "split-deep", "dense", "cross-stitch", "mtan"]
WEIGHTINGS = None  # None: the preset's grid, model -> weightings (see the first code cell); e.g. ["equal", "dwa", "uncertainty"]
EPOCHS = None  # None: the preset's schedule
TRAIN_IMAGES = None  # None: the preset's choice (smoke: 96 of the 192 training images)
WIDTH_MULT = None  # None: the preset's SegNet width multiplier (1.0: full size, as in the paper)

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn as nn
import torch.nn.functional as F

from mtlkit.course import course_table, load_splits, relative_error, subset, summarize, train_or_load, \
    write_notebook_results
from mtlkit.data import collate
from mtlkit.metrics import delta_m
from mtlkit.models import build, count_parameters
from mtlkit.tasks import tasks_for
from mtlkit.train import seed_everything

sns.set_theme(style="whitegrid", context="notebook")
out_dir = Path(OUT_DIR)
out_dir.mkdir(parents=True, exist_ok=True)

# Preset = data + schedule + model width. paper is the MTAN NYUv2 recipe of REFERENCE.md (Adam 1e-4, halved every
# 100 epochs, 200 epochs, batch 2, full-size SegNet). smoke trains a SegNet 1/8 as wide (a full-size SegNet-MTAN
# takes ~3 s per step on 2 CPU cores) on 96 images for 3 epochs (DWA changes its weights from the third epoch on),
# and only a reduced grid: MTAN under the three weightings, Split (standard) under Equal, and one single-task SegNet
# per task (the Δm baselines).
SCHEDULES = {
    "unit": dict(data="synthetic-nyu", data_preset="unit", epochs=3, batch_size=4, lr=1e-3, scheduler=None,
                 width_mult=0.125, train_images=None,
                 grid={"mtan": ["equal", "dwa", "uncertainty"], "split": ["equal"]}),
    "smoke": dict(data="synthetic-nyu", data_preset="smoke", epochs=3, batch_size=8, lr=1e-3, scheduler=None,
                  width_mult=0.125, train_images=96,
                  grid={"mtan": ["equal", "dwa", "uncertainty"], "split": ["equal"]}),
    "lesson": dict(data="synthetic-nyu", data_preset="lesson", epochs=20, batch_size=8, lr=5e-4, scheduler=None,
                   width_mult=0.5, train_images=None,
                   grid={m: ["equal", "dwa", "uncertainty"] for m in ("stan", "split", "mtan")}),
    "paper": dict(data="nyuv2", data_preset="paper", epochs=200, batch_size=2, lr=1e-4, scheduler="step",
                  step_size=100, gamma=0.5, width_mult=1.0, train_images=None,
                  grid={m: ["equal", "dwa", "uncertainty"] for m in ("stan", "split-wide", "split-deep", "dense",
                                                                     "cross-stitch", "mtan")}),
}
schedule = dict(SCHEDULES[PRESET])
if EPOCHS is not None:
    schedule["epochs"] = EPOCHS
width_mult = WIDTH_MULT if WIDTH_MULT is not None else schedule["width_mult"]
grid = schedule["grid"]
if MODELS is not None:
    grid = {m: grid.get(m, ["equal", "dwa", "uncertainty"]) for m in MODELS}
if WEIGHTINGS is not None:
    grid = {m: list(WEIGHTINGS) for m in grid}

data_name = schedule["data"] if DATA == "auto" else DATA
if data_name == "nyuv2":  # the MTAN release has train/val only and the papers report on val, at the last epoch
    from mtlkit.data import get_dataset

    splits = {"train": get_dataset("nyuv2", "train"), "val": None, "test": get_dataset("nyuv2", "val")}
else:
    splits = load_splits(data_name, schedule["data_preset"], seed=SEED)
tasks = tasks_for(splits["train"].task_info)  # {"semseg": Task, "depth": Task, "normals": Task}
task_channels = {t: task.out_channels for t, task in tasks.items()}
n_train = TRAIN_IMAGES if TRAIN_IMAGES is not None else schedule["train_images"]
train_splits = {**splits, "train": subset(splits["train"], n_train) if n_train else splits["train"]}
trainer_kwargs = {k: schedule[k] for k in ("epochs", "batch_size", "lr", "scheduler", "step_size", "gamma")
                  if k in schedule}
trainer_kwargs.update(optimizer="adam", device=DEVICE, seed=SEED)
print(f"{data_name} ({schedule['data_preset']}, {splits['train'].image_size} px): "
      f"{len(train_splits['train'])} training images, tasks {task_channels}")
print(f"SegNet width x{width_mult}, {schedule['epochs']} epochs, batch {schedule['batch_size']}, "
      f"Adam lr {schedule['lr']}; grid {grid}")

# %% [markdown]
# ## 1 · Attention as feature selection
#
# MTAN keeps **one shared network** (SegNet: five encoder stages of widths 64, 128, 256, 512, 512 and a mirrored
# decoder). Every task $t$ owns a small **attention module** per stage $j$ that produces a soft mask
# $a^t_j \in (0,1)^{C_j \times H_j \times W_j}$ and applies it to the shared stage output $p_j$:
# $$\hat a^t_j = a^t_j \odot p_j,\qquad
#   a^t_j = \sigma\!\Big(\mathrm{BN}\,W^t_{j,2}\,\mathrm{ReLU}\big(\mathrm{BN}\,W^t_{j,1}\,[u_j ;\, f_j(\hat a^t_{j-1})]\big)\Big),$$
# where $u_j$ is the output of the stage's first shared convolution, $f_j$ a 3×3 conv (shared by the tasks) plus
# pooling that carries the task's previous attended features to this resolution, $W^t_{j,1}, W^t_{j,2}$ are 1×1
# convolutions and $\sigma$ the sigmoid. The mask can only *select* (scale down) shared features, so the shared
# network must learn features useful to all tasks while each task picks its own subset — at every stage, not
# only at the end as in hard parameter sharing. The decoder repeats the same pattern with bilinear upsampling.
# With one task the same network is **STAN** (single-task attention network): it has MTAN's extra capacity but no
# sharing, separating "more parameters" from "multi-task".
#
# **Loss weighting.** The tasks' losses differ in scale and in how fast they fall, so
# $\mathcal L = \sum_k \lambda_k \mathcal L_k$ needs weights. Three choices:
# * **Equal**: $\lambda_k = 1$.
# * **Dynamic Weight Average** (the MTAN paper): from the epoch-averaged losses,
#   $w_k(t-1) = \bar{\mathcal L}_k(t-1)/\bar{\mathcal L}_k(t-2)$ and
#   $\lambda_k(t) = K\exp(w_k(t-1)/T)/\sum_i \exp(w_i(t-1)/T)$ with $T = 2$ and $\lambda_k = 1$ for the first
#   two epochs: a task whose loss falls slowly gets more weight.
# * **Uncertainty** (Kendall et al. 2018): $\mathcal L = \sum_k \frac{1}{2\sigma_k^2}\mathcal L_k + \log\sigma_k$,
#   written with $s_k = \log\sigma_k^2$ (learnable, initialised to $-0.5$) as
#   $\sum_k \mathcal L_k / (2e^{s_k}) + s_k/2$: a task the model finds noisy (large $\sigma_k$) is down-weighted.
#
# ## 2 · A task attention block, written out
#
# The key module: a 1×1 conv-BN-ReLU to the stage width, a 1×1 conv-BN, and a sigmoid. Below it is written out,
# and with it the whole per-task attention path of MTAN (the shared encoder/decoder and the shared 3×3 convs are
# the library's). Loading the library model's attention weights into it (strictly) and comparing the outputs shows
# that this *is* `segnet-mtan`; the same code returns the masks for the figures further down.

# %%
class AttentionBlock(nn.Sequential):
    """MTAN's task attention block: [B,C_in,H,W] -> soft mask [B,C_out,H,W] in (0, 1).

    Sequential only so that the parameter names (0 = conv1, 1 = bn1, 3 = conv2, 4 = bn2) match the library's.
    """

    def __init__(self, c_in: int, c_mid: int, c_out: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_mid, 1), nn.BatchNorm2d(c_mid), nn.ReLU(),
                         nn.Conv2d(c_mid, c_out, 1), nn.BatchNorm2d(c_out), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv1, bn1, _, conv2, bn2, _ = self
        return torch.sigmoid(bn2(conv2(F.relu(bn1(conv1(x))))))


def make_task_attention(widths: list[int], decoder_in: list[int]) -> nn.Module:
    """One task's 5 encoder and 5 decoder attention blocks (same names as the library's ``TaskAttention``)."""
    low = [widths[max(i - 1, 0)] for i in range(5)]  # output width of decoder stage i
    att = nn.Module()
    # Encoder stage 0 reads only the stage's first conv; later stages also the task's previous attended features.
    att.encoder = nn.ModuleList(AttentionBlock(w if i == 0 else 2 * w, w, w) for i, w in enumerate(widths))
    att.decoder = nn.ModuleList(AttentionBlock(widths[i] + decoder_in[i], low[i], low[i]) for i in range(5))
    return att


def mtan_forward(model, attention: nn.ModuleDict, images: torch.Tensor):
    """MTAN written out: predictions {task: [B,C_t,H,W]} and masks {task: [encoder masks, decoder masks]}."""
    enc = model.encoder(images)  # shared encoder: first[i], out[i] [B,w_i,H/2^i,W/2^i], pooling indices
    ups, outs = model.decoder(enc)  # shared decoder: unpooled inputs and stage outputs, deepest first
    convs, preds, masks = model.attention_convs, {}, {}
    for task, att in attention.items():
        enc_masks, dec_masks, x = [], [], None
        for i in range(5):
            inp = enc.first[i] if i == 0 else torch.cat([enc.first[i], x], dim=1)
            enc_masks.append(att.encoder[i](inp))  # a_j^t [B,w_i,H_i,W_i]
            x = enc_masks[-1] * enc.out[i]  # select from the shared stage output
            x = F.max_pool2d(convs.encoder[i](x), kernel_size=2, stride=2)  # f_j: to the next stage
        for k, i in enumerate(reversed(range(5))):
            x = F.interpolate(x, size=ups[k].shape[-2:], mode="bilinear", align_corners=True)
            x = convs.decoder[i](x)
            dec_masks.append(att.decoder[i](torch.cat([ups[k], x], dim=1)))
            x = dec_masks[-1] * outs[k]  # [B,w_{i-1},H_i,W_i]
        pred = model.heads[task](x)  # [B,C_t,H,W]
        preds[task] = F.normalize(pred, dim=1, eps=1e-12) if task == "normals" else pred
        masks[task] = (enc_masks, dec_masks)
    return preds, masks


seed_everything(SEED)
library_mtan = build("segnet-mtan", task_channels, width_mult=width_mult).eval()
ours = nn.ModuleDict({t: make_task_attention(list(library_mtan.widths), library_mtan.attention_convs.decoder_out)
                      for t in task_channels})
ours.load_state_dict(library_mtan.attention.state_dict())  # strict: every name and shape must match
x = torch.rand(2, 3, *splits["train"].image_size)
with torch.no_grad():
    expected = library_mtan(x)
    got, masks = mtan_forward(library_mtan, ours.eval(), x)
attention_error = max(relative_error(got[t], expected[t]) for t in task_channels)
print(f"relative error: {attention_error:.1e}")

# %%
# NBVAL_CHECK_OUTPUT
assert attention_error < 1e-6
print(f"relative error < 1e-6: {attention_error < 1e-6}")
print("outputs:", {t: tuple(v.shape) for t, v in got.items()})
print("semseg encoder masks:", [tuple(m.shape[1:]) for m in masks["semseg"][0]])

# %% [markdown]
# ## 3 · Parameters of the MTAN paper's models (full size)
#
# Full-size models (widths 64–512, 13 classes + depth + normals), built on PyTorch's `meta` device: the layers and
# their shapes exist, the weights are not allocated, so counting even Dense's 124 M parameters is instant.
# The paper reports each model relative to one single-task SegNet (for semseg, 24,981,069 parameters).

# %%
# NBVAL_CHECK_OUTPUT
PAPER_RATIOS = {"single": 1.0, "stan": 1.53, "split-standard": 1.003, "split-wide": 1.76, "split-deep": 2.03,
                "dense": 4.95, "cross-stitch": 3.00, "mtan": 1.77}  # MTAN paper / REFERENCE.md
MODEL_SPECS = {  # row name -> (registry name, options, tasks: "one" = the semseg model only)
    "single": ("segnet-single", {}, "one"), "stan": ("segnet-stan", {}, "one"),
    "split-standard": ("segnet-split", {"variant": "standard"}, "all"),
    "split-wide": ("segnet-split", {"variant": "wide"}, "all"),
    "split-deep": ("segnet-split", {"variant": "deep"}, "all"),
    "dense": ("segnet-dense", {}, "all"), "cross-stitch": ("segnet-cross-stitch", {}, "all"),
    "mtan": ("segnet-mtan", {}, "all"),
}
full_counts = {}
with torch.device("meta"):
    for row, (name, options, which) in MODEL_SPECS.items():
        model_tasks = {"semseg": task_channels["semseg"]} if which == "one" else task_channels
        full_counts[row] = count_parameters(build(name, model_tasks, **options))["total"]
base = full_counts["single"]
for row, n in full_counts.items():
    print(f"{row:15s} {n:>12,d} = {n / 1e6:6.2f} M   {n / base:5.3f}x one task   (paper {PAPER_RATIOS[row]:.3f}x)")

# %% [markdown]
# MTAN costs 1.77 single-task networks for three tasks — less than three separate networks (3×) or Cross-stitch
# (one network per task plus the units, 3.00×), and about as much as Split-wide. Most of its extra parameters are
# the shared 3×3 convolutions $f_j$; the attention blocks themselves are 1×1 convolutions.
#
# ## 4 · Training the grid
#
# Every run sees the same images, schedule and seed. Δm needs single-task baselines: one single-task SegNet per
# task. `train_or_load` reuses a finished run in `OUT_DIR` with the same settings; delete its folder to retrain.

# %%
def train_run(run_name: str, row: str, run_tasks: list[str], weighting: str):
    """Build the model of ``row`` for ``run_tasks`` (seeded) and train it under ``weighting`` (or load it)."""
    name, options, _ = MODEL_SPECS[row if row != "split" else "split-standard"]
    options = {**options, "width_mult": width_mult}
    seed_everything(SEED)
    model = build(name, {t: task_channels[t] for t in run_tasks}, **options)
    metrics = train_or_load(run_name, model, train_splits, out_dir, tasks=list(run_tasks), weighting=weighting,
                            describe={"model": name, "options": options, "tasks": list(run_tasks)},
                            **trainer_kwargs)
    return model.eval(), metrics


models, metrics = {}, {}
for task in task_channels:  # the Δm baselines
    models[f"single-{task}"], metrics[f"single-{task}"] = train_run(f"single-{task}", "single", [task], "equal")
for row, weightings in grid.items():
    for weighting in weightings:
        if row == "stan":  # STAN is single-task: one network per task, combined into one row below
            for task in task_channels:
                run = f"stan-{task}-{weighting}"
                models[run], metrics[run] = train_run(run, "stan", [task], weighting)
        else:
            run = f"{row}-{weighting}"
            models[run], metrics[run] = train_run(run, row, list(task_channels), weighting)

# %% [markdown]
# ## 5 · The MTAN table: every task metric and Δm
#
# The Trainer picked each run's best epoch on the validation set and evaluated it once on the test set. For
# single-task models (One Task, STAN) the three networks' test results form one row; a one-task network has a
# single loss, so for it a weighting only rescales that loss (Uncertainty: learns its scale). Δm uses one metric per task
# (mIoU, abs. depth error, mean angle; the survey form) and, in brackets, LibMTL's form (every metric of a task).

# %%
test = {run: m["test"] for run, m in metrics.items()}
rows = {"single": {t: test[f"single-{t}"][t] for t in task_channels}}
params = {"single": sum(metrics[f"single-{t}"]["parameters"]["total"] for t in task_channels)}
for row, weightings in grid.items():
    for weighting in weightings:
        key = f"{row}-{weighting}"
        if row == "stan":
            rows[key] = {t: test[f"stan-{t}-{weighting}"][t] for t in task_channels}
            params[key] = sum(metrics[f"stan-{t}-{weighting}"]["parameters"]["total"] for t in task_channels)
        else:
            rows[key], params[key] = test[key], metrics[key]["parameters"]["total"]
single = rows["single"]
COLUMNS = {"semseg": ("miou", "pixel_acc"), "depth": ("abs_err", "rel_err"),
           "normals": ("mean", "median", "within_11_25", "within_22_5", "within_30")}
table = pd.DataFrame({
    key: {"params (M)": params[key] / 1e6,
          **{f"{t}/{m}": res[t][m] for t in task_channels for m in COLUMNS.get(t, ()) if m in res[t]},
          "Δm %": delta_m(res, single, tasks=tasks),
          "Δm % (LibMTL)": delta_m(res, single, form="libmtl", tasks=list(tasks))}
    for key, res in rows.items()}).T
table.index.name = f"model-weighting ({PRESET}, width x{width_mult})"
pd.set_option("display.width", 160)
print(table.round(3).to_string())

# %% [markdown]
# Higher is better for mIoU, pixel accuracy and the "within" columns; lower for the errors and angles. With the
# smoke preset's three epochs on a 1/8-width SegNet these are numbers for checking that everything learns, not
# for ranking the designs (one seed; the paper averages three, and seed-to-seed spread there is 1–2 mIoU).

# %%
fig, axes = plt.subplots(1, 3, figsize=(11, 3), dpi=72)
plot_table = table.drop(index="single").reset_index(names="run")
for ax, column in zip(axes, ("semseg/miou", "depth/abs_err", "normals/mean")):
    if column in plot_table:
        sns.barplot(data=plot_table, y="run", x=column, ax=ax, color="tab:blue")
        ax.axvline(table.loc["single", column], color="black", ls="--", lw=1, label="single task")
        ax.set(ylabel="", title=column)
axes[0].legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6 · What the attention masks select
#
# The trained MTAN (Equal weighting) on a test image: each task's mask, averaged over channels, at the first
# encoder stage and the last decoder stage (both at full resolution). Bright = the shared feature passes, dark =
# it is suppressed. Where the tasks' masks differ, they select different shared features; after the smoke
# preset's few epochs the masks are still close to their initial 0.5 (see the mean values printed below) —
# train with the lesson preset to see them specialise.

# %%
mtan_run = next((r for r in ("mtan-equal", "mtan-dwa", "mtan-uncertainty") if r in models), None)
if mtan_run is not None:
    trained = models[mtan_run]
    trained_att = nn.ModuleDict({t: make_task_attention(list(trained.widths), trained.attention_convs.decoder_out)
                                 for t in task_channels})
    trained_att.load_state_dict(trained.attention.state_dict())
    image = collate([splits["test"][0]])["image"]
    with torch.no_grad():
        _, trained_masks = mtan_forward(trained, trained_att.eval(), image)
    panels = [("encoder 0", lambda m: m[0][0]), ("decoder 0", lambda m: m[1][-1])]
    fig, axes = plt.subplots(1, 1 + len(task_channels) * len(panels), figsize=(1.3 * 7, 1.6), dpi=70)
    axes[0].imshow(image[0].permute(1, 2, 0).numpy())
    axes[0].set_title("image", fontsize=7)
    k = 1
    for task in task_channels:
        for label, pick in panels:
            axes[k].imshow(pick(trained_masks[task])[0].mean(0).numpy(), cmap="magma", vmin=0, vmax=1)
            axes[k].set_title(f"{task}\n{label}", fontsize=7)
            k += 1
    for ax in axes:
        ax.set_axis_off()
    plt.tight_layout()
    plt.show()
    mask_means = {t: [round(float(m.mean()), 3) for m in trained_masks[t][0]] for t in task_channels}
    print(f"{mtan_run}: mean mask value per encoder stage:", mask_means)

# %% [markdown]
# ## 7 · The weights over training: DWA's $\lambda_k(t)$ and Uncertainty's $\sigma_k$
#
# The Trainer records every step's task weights (`metrics["step_weights"]`). For Uncertainty the recorded weight
# is $1/(2\sigma_k^2) = e^{-s_k}/2$, so $\sigma_k = (2\lambda_k)^{-1/2}$. DWA is flat ($\lambda_k = 1$) for the
# first two epochs by definition, so with the smoke preset's three epochs only the last epoch shows a change; the
# lesson and paper presets show the full curves.

# %%
weight_runs = [(r, w) for r, w in (("mtan-dwa", "dwa"), ("mtan-uncertainty", "uncertainty")) if r in metrics]
if weight_runs:
    fig, axes = plt.subplots(1, len(weight_runs), figsize=(5 * len(weight_runs), 2.8), dpi=72, squeeze=False)
    for ax, (run, weighting) in zip(axes[0], weight_runs):
        recorded = metrics[run]["step_weights"]
        values = np.asarray(recorded["values"], dtype=float)  # [steps, tasks]
        steps_per_epoch = len(values) / max(len(metrics[run]["epochs"]), 1)
        epoch = np.arange(len(values)) / steps_per_epoch
        shown = values if weighting == "dwa" else (2 * values) ** -0.5  # sigma_k
        for k, task in enumerate(recorded["tasks"]):
            ax.plot(epoch, shown[:, k], label=task)
        ax.set(xlabel="epoch", ylabel="λ_k" if weighting == "dwa" else "σ_k", title=f"{run}")
        ax.legend(fontsize=7)
    plt.tight_layout()
    plt.show()
    for run, weighting in weight_runs:
        last = metrics[run]["step_weights"]["values"][-1]
        print(f"{run}: last step's weights", dict(zip(metrics[run]["step_weights"]["tasks"], last)))

# %% [markdown]
# ## 8 · References and results
#
# The paper preset (NYUv2 as preprocessed by the MTAN authors, 288×384, full-size SegNet, Adam 1e-4, 200 epochs,
# batch 2) is the recipe behind the numbers below. They are **references from REFERENCE.md (MTAN with
# augmentation, mean of 3 seeds), not results of this kit** — compare with the table above only when it comes from
# the paper preset.

# %%
REFERENCE_MTAN_NYUV2 = pd.DataFrame(
    {"semseg/miou": [40.89, 40.50, 39.34], "semseg/pixel_acc": [66.14, 65.65, 64.88],
     "depth/abs_err": [0.5524, 0.5358, 0.5294], "depth/rel_err": [0.2347, 0.2222, 0.2242],
     "normals/mean": [27.27, 27.58, 26.47]},
    index=["mtan-equal", "mtan-dwa", "mtan-uncertainty"])
print("REFERENCES (MTAN paper setting, NYUv2, SegNet; not produced here):")
print(REFERENCE_MTAN_NYUV2.to_string())

# %%
runs = {}
for key in table.index:
    runs[key] = {col: float(v) for col, v in table.loc[key].items() if col not in ("params (M)",)}
    runs[key] = {(k.replace("Δm %", "delta_m").replace(" (LibMTL)", "_libmtl")): v for k, v in runs[key].items()}
    runs[key].update(parameters_M=float(table.loc[key, "params (M)"]), epochs=schedule["epochs"],
                     train_images=len(train_splits["train"]), width_mult=width_mult)
write_notebook_results(out_dir, "07_mtan", PRESET, runs,
                       extra={"parameters_full_size": full_counts, "attention_relative_error": attention_error,
                              "references_mtan_nyuv2": REFERENCE_MTAN_NYUV2.to_dict(orient="index")})
course = course_table(out_dir, preset=PRESET)
shown_cols = [c for c in ("semseg/miou", "depth/abs_err", "normals/mean", "delta_m", "parameters_M")
              if c in course.columns]
print(f"course results, {PRESET} preset:")
print(course[shown_cols].round(3).to_string())
print(f"wrote {OUT_DIR}/metrics.json")
