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
#    multi-task score $\Delta_m$ against single-task models, put the papers' numbers beside the kit's, and plot how
#    DWA's $\lambda_k(t)$ and Uncertainty's $\sigma_k$ evolve.
#
# The data is `synthetic-nyu`: indoor-like scenes with 13-class semantic segmentation, depth and surface normals —
# the three tasks of the MTAN paper's NYUv2 experiment. The `paper` preset trains on the real NYUv2 (288×384) with
# the recipe and augmentation of the references. `BACKBONE = "resnet50"` swaps the SegNet family for LibMTL's
# setting — a dilated ResNet shared by the tasks with one ASPP head per task (`resnet-shared`) and MTAN's attention
# over it (`resnet-mtan`) — whose NYUv2 numbers are the second reference.

# %% tags=["parameters"]
import os

PRESET = os.environ.get("MTLKIT_PRESET", "smoke")  # unit | smoke | lesson | paper
DEVICE = "auto"
SEED = 0
DATA = "auto"  # "auto": synthetic-nyu (paper preset: the real nyuv2, as preprocessed by the MTAN authors)
OUT_DIR = "../runs/notebooks/07_mtan"
BACKBONE = "segnet"  # segnet: the MTAN paper's table; resnet50: LibMTL's dilated ResNet with per-task ASPP heads
MODELS = None  # None: the preset's rows (paper: all seven; see the grid printed below); e.g. ["mtan", "cross-stitch"]
WEIGHTINGS = None  # None: the preset's grid (mtlkit.course.nyu.NYU_SCHEDULES); e.g. ["equal", "dwa", "uncertainty"]
EPOCHS = None  # None: the preset's schedule
TRAIN_IMAGES = None  # None: the preset's choice (smoke: 64 of the 192 training images)
VAL_IMAGES = None  # None: the preset's choice (smoke: the first 32 of 64 validation images)
AUGMENT = None  # None: the preset's choice (lesson, paper: random scale-crop and flip; smoke: off)
WIDTH_MULT = None  # SegNet only. None: the preset's width multiplier (1.0: full size, as in the paper)
CROSS_STITCH = None  # SegNet, row "cross-stitch" only. None: "shared" (MTAN's table); "channelwise" | "scalar"
CROSS_STITCH_INIT = None  # SegNet, row "cross-stitch" only. None: "scratch" (MTAN's); "single-task": trained singles
PRETRAINED = None  # ResNet only (SegNet has no ImageNet weights); None -> the preset's (paper: True, needs the HF hub)
MAX_STEPS = None  # a dry run: stop each training epoch and evaluation after this many batches (None: whole epochs)

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn as nn
import torch.nn.functional as F

from mtlkit import course
from mtlkit.course import delta_m_or_nan, print_course_table, relative_error, write_notebook_results
from mtlkit.course.nyu import (LIBMTL_NYUV2_REFERENCE, MTAN_NYUV2_REFERENCE, MTAN_PARAMETERS_REFERENCE,
                               NYU_WEIGHTINGS, SINGLE_TASK_ROWS, nyu_model_spec, nyu_references, nyu_schedule,
                               run_options)
from mtlkit.data import collate
from mtlkit.models import build, count_parameters
from mtlkit.train import seed_everything

sns.set_theme(style="whitegrid", context="notebook")

# Preset = data + schedule + model width, per backbone: see mtlkit.course.nyu (NYU_SCHEDULES). paper is the MTAN
# NYUv2 recipe of docs/reference.md for SegNet (Adam 1e-4, halved every 100 epochs, 200 epochs, batch 2, full-size
# SegNet) and LibMTL's for ResNet-50 (the same optimiser and schedule, batch 8), both with augmentation. smoke trains a
# SegNet 1/8 as wide on the first 64 training and 32 validation images for 3 epochs (DWA changes its weights from
# the third epoch on), and only a reduced grid: MTAN under the three weightings, Split (standard) under Equal, and
# one single-task SegNet per task (the Δm baselines).
overrides = {k: v for k, v in (("epochs", EPOCHS), ("train_images", TRAIN_IMAGES), ("val_images", VAL_IMAGES),
                               ("augment", AUGMENT), ("width_mult", WIDTH_MULT), ("cross_stitch", CROSS_STITCH),
                               ("cross_stitch_init", CROSS_STITCH_INIT)) if v is not None}
as_list = lambda v: [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else list(v)  # noqa: E731
grid = nyu_schedule(PRESET, BACKBONE, **overrides)["grid"]  # the preset's rows, narrowed by MODELS / WEIGHTINGS
if MODELS is not None:  # a list, or one string "mtan,cross-stitch"
    grid = {m: grid.get(m, list(NYU_WEIGHTINGS)) for m in as_list(MODELS)}
if WEIGHTINGS is not None:
    grid = {m: as_list(WEIGHTINGS) for m in grid}
# schedule (checks every row and weighting), data (nyuv2: val is the test split, what the papers report, and there
# is no validation split), tasks, model and Trainer options: one call
setup = course.nyu.setup(PRESET, BACKBONE, data=DATA, seed=SEED, device=DEVICE, out_dir=OUT_DIR,
                         pretrained=PRETRAINED, max_steps=MAX_STEPS, **overrides, grid=grid)
out_dir = setup.out_dir  # OUT_DIR, created
schedule, splits = setup.schedule, setup.splits
tasks, task_channels = setup.tasks, setup.task_channels  # {"semseg": Task, "depth": Task, "normals": Task}
run_prefix = "" if BACKBONE == "segnet" else f"{BACKBONE}-"  # run folders in OUT_DIR, one set per backbone
model_desc = (f"SegNet width x{schedule['width_mult']}" if BACKBONE == "segnet" else
              f"{schedule['encoder']} (OS {schedule['output_stride']}, ASPP {schedule['aspp_channels']}, "
              f"ImageNet {schedule['pretrained']})")
print(setup.describe())
print(f"augmentation {schedule['augment']}")
print(f"{model_desc}, {schedule['epochs']} epochs, batch {schedule['batch_size']}, Adam lr {schedule['lr']}, "
      f"scheduler {schedule['scheduler']}; grid {grid}")

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
check_width = schedule.get("width_mult", 0.125)  # the SegNet MTAN is checked with either backbone
library_mtan = build("segnet-mtan", task_channels, width_mult=check_width).eval()
ours = nn.ModuleDict({t: make_task_attention(list(library_mtan.widths), library_mtan.attention_convs.decoder_out)
                      for t in task_channels})
ours.load_state_dict(library_mtan.attention.state_dict())  # strict: every name and shape must match
x = torch.rand(2, 3, *splits["test"].image_size)
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
# The paper reports each model relative to one single-task SegNet (for semseg, 24,981,069 parameters). Below them,
# LibMTL's two ResNet-50 models (output stride 8, 256-channel ASPP heads), the `resnet50` backbone at paper size.

# %%
# NBVAL_CHECK_OUTPUT
paper_ratios = {row: ref["parameters_ratio"] for row, ref in MTAN_PARAMETERS_REFERENCE.items()}
full_schedule = nyu_schedule("paper", "segnet")  # full width, whatever the preset
full_counts = {}
with torch.device("meta"):
    for row in paper_ratios:
        name, options = nyu_model_spec(row, full_schedule)
        model_tasks = {"semseg": task_channels["semseg"]} if row in SINGLE_TASK_ROWS else task_channels
        full_counts[row] = count_parameters(build(name, model_tasks, **options))["total"]
    resnet_counts = {row: count_parameters(build(name, task_channels, encoder="resnet50", output_stride=8,
                                                 aspp_channels=256))["total"]
                     for row, name in (("resnet50 shared", "resnet-shared"), ("resnet50 mtan", "resnet-mtan"))}
base = full_counts["single"]
for row, n in full_counts.items():
    print(f"{row:15s} {n:>12,d} = {n / 1e6:6.2f} M   {n / base:5.3f}x one task   (paper {paper_ratios[row]:.3f}x)")
for row, n in resnet_counts.items():
    print(f"{row:15s} {n:>12,d} = {n / 1e6:6.2f} M")

# %% [markdown]
# MTAN costs 1.77 single-task networks for three tasks — less than three separate networks (3×) or Cross-stitch
# (one network per task plus the units, 3.00×), and about as much as Split-wide. Most of its extra parameters are
# the shared 3×3 convolutions $f_j$; the attention blocks themselves are 1×1 convolutions.
#
# ## 4 · Training the grid
#
# Every run sees the same images, schedule and seed. Δm needs single-task baselines: one single-task network per
# task (a one-task SegNet; with the ResNet backbone, `resnet-shared` with one head). `course.run` reuses a
# finished run in `OUT_DIR` with the same settings; delete its folder to retrain.
#
# **Two Cross-stitch rows.** The paper preset trains both (other presets: name them in `MODELS`):
# * `cross-stitch` is the row of MTAN's table, in the form of the MTAN authors' code: one shared mixture per
#   stage (`mode="shared"`), initialised to 1, trained from scratch with the network's learning rate. Its numbers
#   are the ones to put beside MTAN's.
# * `cross-stitch-channelwise` is Misra et al.'s own recipe: channel-wise units (0.9 on the own task, 0.1 across),
#   each branch started from that task's trained single-task network, the units trained faster. The single-task
#   SegNets are already trained here (they are the Δm baselines), so `course.nyu.run_options` loads them with
#   `load_single_task_branches` and puts the units in their own optimiser group (`param_groups`, ×10 the network's
#   learning rate under Adam; see `mtlkit.course.nyu` for why not the paper's SGD-era ×100).
#
# `CROSS_STITCH` and `CROSS_STITCH_INIT` change the form of the `cross-stitch` row only.

# %%
runs_by_name = {f"single-{t}": ("single", [t], "equal") for t in task_channels}  # the Δm baselines first
for row, weightings in grid.items():
    for weighting in weightings:
        if row in SINGLE_TASK_ROWS:  # STAN is single-task: one network per task, combined into one row below
            runs_by_name.update({f"{row}-{t}-{weighting}": (row, [t], weighting) for t in task_channels})
        else:
            runs_by_name[f"{row}-{weighting}"] = (row, list(task_channels), weighting)
models, metrics = {}, {}
for run_name, (row, run_tasks, weighting) in runs_by_name.items():
    model_name, options = run_options(row, schedule, trained=models)  # cross-stitch: init from the single nets
    result = course.run(setup, run_prefix + run_name, model_name, run_tasks, weighting=weighting, **options)
    models[run_name], metrics[run_name] = result.model, result.metrics

# %% [markdown]
# ## 5 · The MTAN table: every task metric and Δm
#
# Each run is evaluated once on the test split, with the weights of its best epoch on the validation split (on
# NYUv2, which has no validation split, the last epoch — as the papers report it). For single-task models (One
# Task, STAN) the three networks' test results form one row; a one-task network has a single loss, so for it a
# weighting only rescales that loss (Uncertainty: learns its scale). Δm uses one metric per task — mIoU, depth abs
# error, normals mean angle, the metrics of MTAN's table (`delta_m(form="kit")`; the survey code's set,
# `form="survey"`, would use depth RMSE instead) — and, in brackets, LibMTL's form (every metric of a task).
#
# **How the metrics are averaged.** In the `paper` preset of the SegNet backbone, whose numbers sit beside MTAN's,
# depth and normals metrics are averaged per test batch as MTAN's code does (task options `depth_mode` /
# `normals_mode` = `"per_batch"`, `schedule["task_options"]`); other presets and the ResNet backbone (compared with
# LibMTL, which pools normals over pixels) pool every valid pixel of the split. The ResNet heads' image-pooling
# branch uses the authors' BatchNorm in the paper preset (`aspp_pooling_norm="batch"`; GroupNorm on the CPU
# presets, whose last batch can hold a single image).

# %%
test = {run: m["test"] for run, m in metrics.items()}
rows = {"single": {t: test[f"single-{t}"][t] for t in task_channels}}
params = {"single": sum(metrics[f"single-{t}"]["parameters"]["total"] for t in task_channels)}
for row, weightings in grid.items():
    for weighting in weightings:
        key = f"{row}-{weighting}"
        if row in SINGLE_TASK_ROWS:
            rows[key] = {t: test[f"{row}-{t}-{weighting}"][t] for t in task_channels}
            params[key] = sum(metrics[f"{row}-{t}-{weighting}"]["parameters"]["total"] for t in task_channels)
        else:
            rows[key], params[key] = test[key], metrics[key]["parameters"]["total"]
single = rows["single"]


DM = "Δm % (mIoU, abs err, mean angle)"  # one metric per task, MTAN's table's: delta_m(form="kit")
DM_COLUMNS = {DM: ("kit", "delta_m"), "Δm % (LibMTL)": ("libmtl", "delta_m_libmtl")}  # column -> (form, results key)


def delta(res, form):
    """Δm in percent, or NaN (said why) where a baseline metric is 0 or NaN (e.g. no pixel within 11.25°)."""
    return delta_m_or_nan(res, single, f"Δm ({form})", form=form, tasks=tasks if form == "kit" else list(tasks))


COLUMNS = {"semseg": ("miou", "pixel_acc"), "depth": ("abs_err", "rel_err"),
           "normals": ("mean", "median", "within_11_25", "within_22_5", "within_30")}
table = pd.DataFrame({
    key: {"params (M)": params[key] / 1e6,
          **{f"{t}/{m}": res[t][m] for t in task_channels for m in COLUMNS.get(t, ()) if m in res[t]},
          **{column: delta(res, form) for column, (form, _) in DM_COLUMNS.items()}}
    for key, res in rows.items()}).T
table.index.name = f"model-weighting ({PRESET}, {BACKBONE})"
pd.set_option("display.width", 160)
print(table.round(3).to_string())

# %% [markdown]
# Higher is better for mIoU, pixel accuracy and the "within" columns; lower for the errors and angles. With the
# smoke preset's three epochs on a 1/8-width SegNet these are numbers for checking that everything learns, not
# for ranking the designs (one seed; the paper averages three, and seed-to-seed spread there is 1–2 mIoU).
#
# **Beside the references.** Below, the kit's rows and the published numbers in one table, labelled by `source`:
# the MTAN paper's SegNet-MTAN (NYUv2 with augmentation, mean of 3 seeds) and LibMTL's ResNet-50 models (shared
# encoder and MTAN, Equal weighting). Only a `paper`-preset run of the matching backbone is comparable with them;
# in the smoke preset the kit's rows come from a narrow network trained for three epochs on 64-px synthetic scenes,
# so they are obviously not comparable — the references are there to show what the paper preset should reach.

# %%
ref_columns = ["parameters_M", "semseg/miou", "semseg/pixel_acc", "depth/abs_err", "depth/rel_err", "normals/mean"]
kit_rows = table.rename(columns={"params (M)": "parameters_M"})[ref_columns]
kit_rows.index = pd.MultiIndex.from_product([[f"mtlkit ({PRESET}, {BACKBONE})"], kit_rows.index],
                                            names=["source", "model"])
references = nyu_references(columns=ref_columns)  # source "paper (reference): ...", never a result of the kit
beside = pd.concat([kit_rows, references])
print(beside.round(4).to_string())
if PRESET != "paper":
    print(f"\n{PRESET} preset: the mtlkit rows are not comparable with the paper (reference) rows "
          "(synthetic data, a small network, a few epochs).")

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
# The trained MTAN (Equal weighting) on a test image: each task's mask, averaged over channels. For SegNet, at the
# first encoder stage and the last decoder stage (both at full resolution), computed by the attention path written
# out above; for the ResNet backbone, at the first and last ResNet stage (¼ and ⅛ resolution), from the library's
# `forward_with_masks`. Bright = the shared feature passes, dark = it is suppressed. Where the tasks' masks differ,
# they select different shared features; after the smoke preset's few epochs the masks are still close to their
# initial 0.5 (see the mean values printed below) — train with the lesson preset to see them specialise.

# %%
mtan_run = next((r for r in ("mtan-equal", "mtan-dwa", "mtan-uncertainty") if r in models), None)
if mtan_run is not None:
    trained = models[mtan_run]
    device = course.model_device(trained)
    image = collate([splits["test"][0]])["image"]
    with torch.no_grad():
        if BACKBONE == "segnet":
            trained_att = nn.ModuleDict({t: make_task_attention(list(trained.widths),
                                                                trained.attention_convs.decoder_out)
                                         for t in task_channels})
            trained_att.load_state_dict(trained.attention.state_dict())
            _, trained_masks = mtan_forward(trained, trained_att.to(device).eval(), image.to(device))
            stage_masks = {t: list(enc) for t, (enc, _) in trained_masks.items()}  # encoder stages 0..4
            panels = {t: [("encoder 0", enc[0]), ("decoder 0", dec[-1])] for t, (enc, dec) in trained_masks.items()}
        else:
            _, stage_masks = trained.forward_with_masks(image.to(device))  # ResNet stages 1..4
            panels = {t: [("stage 1", m[0]), ("stage 4", m[-1])] for t, m in stage_masks.items()}
    n_panels = sum(len(p) for p in panels.values())
    fig, axes = plt.subplots(1, 1 + n_panels, figsize=(1.3 * (1 + n_panels), 1.6), dpi=70)
    axes[0].imshow(image[0].permute(1, 2, 0).numpy())
    axes[0].set_title("image", fontsize=7)
    k = 1
    for task, shown in panels.items():
        for label, mask in shown:
            axes[k].imshow(mask[0].mean(0).float().cpu().numpy(), cmap="magma", vmin=0, vmax=1)
            axes[k].set_title(f"{task}\n{label}", fontsize=7)
            k += 1
    for ax in axes:
        ax.set_axis_off()
    plt.tight_layout()
    plt.show()
    mask_means = {t: [round(float(m.mean()), 3) for m in stage_masks[t]] for t in task_channels}
    print(f"{mtan_run}: mean mask value per stage (SegNet: encoder stages):", mask_means)

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
    for run, _ in weight_runs:
        last = metrics[run]["step_weights"]["values"][-1]
        print(f"{run}: last step's weights", dict(zip(metrics[run]["step_weights"]["tasks"], last)))

# %% [markdown]
# ## 8 · Results for the course table
#
# The notebook's `metrics.json` holds one row per trained model: the single-task baselines as `single-<task>` (so
# notebook 10 can recompute Δm), the multi-task rows, and STAN's three networks as one row. The references go in
# separately (`references`), never as rows of the kit.

# %%
runs = {}
common = dict(epochs=schedule["epochs"], train_images=len(splits["train"]), backbone=BACKBONE,
              **({"width_mult": schedule["width_mult"]} if BACKBONE == "segnet" else {}))
for task in task_channels:
    runs[f"single-{task}"] = {**{f"{task}/{m}": float(v) for m, v in test[f"single-{task}"][task].items()},
                              "parameters_M": metrics[f"single-{task}"]["parameters"]["total"] / 1e6, **common}
for key in table.index.drop("single"):
    values = {DM_COLUMNS[col][1] if col in DM_COLUMNS else col: float(v)
              for col, v in table.loc[key].items() if col != "params (M)"}
    runs[key] = {**values, "parameters_M": float(table.loc[key, "params (M)"]), **common}
write_notebook_results(out_dir, "07_mtan", PRESET, runs,
                       extra={"parameters_full_size": {**full_counts, **resnet_counts},
                              "attention_relative_error": attention_error,
                              "references": {"mtan_nyuv2_segnet": MTAN_NYUV2_REFERENCE,
                                             "libmtl_nyuv2_resnet50": LIBMTL_NYUV2_REFERENCE}})
print_course_table(out_dir, PRESET, ("semseg/miou", "depth/abs_err", "normals/mean", "delta_m", "parameters_M"),
                   digits=3)
print(f"wrote {OUT_DIR}/metrics.json")
