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
# # 03 · ASPP and the skip decoder, each ablated
#
# **Learning goals.** After this notebook you can
# 1. write Atrous Spatial Pyramid Pooling (ASPP) — parallel atrous convolutions plus image pooling — and say what
#    context each branch adds;
# 2. explain why the image-pooling branch breaks BatchNorm at batch size 1 in train mode (and quietly degrades it
#    at batch size 2), and how the library avoids it;
# 3. describe the DeepLabV3+ decoder and what its stride-4 skip buys at object boundaries;
# 4. run an ablation properly: change one component at a time, keep everything else (data, schedule, seed) fixed,
#    and read parameter counts, metrics and predictions side by side.
#
# DeepLabV3+ = a dilated encoder (notebook 02) + **ASPP** on its last features + a light **decoder** that fuses
# the ASPP output with early, high-resolution features. We write ASPP out, check it against the library, then
# switch ASPP and the skip off (`aspp=False`, `skip=False`) and train each variant.

# %% tags=["parameters"]
import os

PRESET = os.environ.get("MTLKIT_PRESET", "smoke")  # unit | smoke | lesson | paper
DEVICE = "auto"
SEED = 0
DATA = "auto"  # "auto": the preset's dataset (synthetic-city; the paper preset uses the real MiniScapes data)
OUT_DIR = "../runs/notebooks/03_aspp_skip"
OUTPUT_STRIDE = 16  # the course's dilation (False, False, True)
VARIANTS = ("full", "no-aspp", "no-skip")  # trained ablations; add "neither" for both switches off
EPOCHS = None  # None -> the preset's study schedule (smoke: 2 epochs; lesson and paper: their full schedules)
TRAIN_IMAGES = None  # None -> the preset's study schedule (smoke: the first 64 of the 192 training images)
PRETRAINED = None  # ImageNet initialisation of the encoder; None -> the preset's (paper: True, needs the HF hub)
MAX_STEPS = None  # a dry run: stop each training epoch and evaluation after this many batches (None: whole epochs)
BOUNDARY_BAND = 2  # pixels around label boundaries counted as "boundary" in the boundary accuracy
N_SHOW = 3  # test images in the prediction figure

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn as nn
import torch.nn.functional as F

from mtlkit import course, viz
from mtlkit.course import print_course_table, relative_error, write_notebook_results
from mtlkit.models import build, count_parameters
from mtlkit.models.blocks import ASPP
from mtlkit.train import seed_everything

sns.set_theme(style="whitegrid", context="notebook")
plt.rcParams["figure.dpi"] = 70
seed_everything(SEED)
# schedule, data (train/val cut to the study's images), tasks, model and Trainer options: one call for 02-05
setup = course.deeplab.setup(PRESET, data=DATA, seed=SEED, device=DEVICE, out_dir=OUT_DIR, epochs=EPOCHS,
                             train_images=TRAIN_IMAGES, pretrained=PRETRAINED, max_steps=MAX_STEPS)
out_dir = setup.out_dir  # OUT_DIR, created
schedule, data_name = setup.schedule, setup.data
ABLATIONS = {"full": dict(aspp=True, skip=True), "no-aspp": dict(aspp=False, skip=True),
             "no-skip": dict(aspp=True, skip=False), "neither": dict(aspp=False, skip=False)}
unknown = [v for v in VARIANTS if v not in ABLATIONS]
if unknown:
    raise ValueError(f"unknown VARIANTS {unknown}; valid variants: {', '.join(ABLATIONS)}")

# %% [markdown]
# ## 1 · ASPP
#
# On the encoder features $x \in \mathbb{R}^{C\times h\times w}$, ASPP runs five branches in parallel, each
# followed by a normalisation and ReLU ($\phi$):
# $$b_0 = \phi(W_0 * x)\ (1{\times}1), \qquad b_i = \phi(W_i *_{r_i} x)\ (3{\times}3,\ \text{rate } r_i,\ i=1,2,3),
#   \qquad b_4 = \phi\Big(W_4\, \tfrac{1}{hw}\textstyle\sum_{p} x_p\Big)\ \text{broadcast to } h\times w,$$
# then concatenates them and projects: $\;y = \phi\big(W_p\,[b_0; b_1; b_2; b_3; b_4]\big)$ (1×1, $5C' \to C'$).
# The atrous branches see context at several scales without losing resolution (rates 6/12/18 at output stride 16
# reach ±96, ±192, ±288 input pixels); image pooling adds one global descriptor of the whole image — useful when
# the largest rate's taps fall mostly into the zero padding of a small feature map. Written out:

# %%
def cbr(in_channels: int, out_channels: int, kernel_size: int, rate: int = 1) -> nn.Sequential:
    """conv (no bias, "same" padding, dilation ``rate``) -> BatchNorm -> ReLU."""
    pad = rate * (kernel_size - 1) // 2
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad, dilation=rate, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


class ImagePooling(nn.Module):
    """Global average -> 1x1 conv -> GroupNorm -> ReLU: [B, C, h, w] -> [B, C', 1, 1] (section 2: why GroupNorm)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm = nn.GroupNorm(groups, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x.mean((2, 3), keepdim=True))))


class OurASPP(nn.Module):
    """ASPP: [B, C, h, w] -> [B, C', h, w] (five branches, concatenation, 1x1 projection)."""

    def __init__(self, in_channels: int, out_channels: int, rates=(6, 12, 18), groups: int = 32) -> None:
        super().__init__()
        self.branches = nn.ModuleList([cbr(in_channels, out_channels, 1)]
                                      + [cbr(in_channels, out_channels, 3, r) for r in rates]
                                      + [ImagePooling(in_channels, out_channels, groups)])
        self.project = cbr(5 * out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        local = [branch(x) for branch in self.branches[:4]]  # 4 x [B, C', h, w]
        pooled = self.branches[4](x).expand(-1, -1, h, w)  # [B, C', 1, 1] -> [B, C', h, w]
        return self.project(torch.cat(local + [pooled], dim=1))  # [B, 5C', h, w] -> [B, C', h, w]


# %% [markdown]
# Checked against the library's `ASPP` (`mtlkit.models.blocks`): copy its weights (and BatchNorm statistics, set
# to random values so they matter) into ours and compare the outputs in float64, in eval and in train mode:

# %%
torch.manual_seed(SEED)
library = ASPP(512, 64, rates=(6, 12, 18)).double()
for m in library.modules():
    if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.uniform_(m.weight, 0.5, 1.5), nn.init.uniform_(m.bias, -0.5, 0.5)
    if isinstance(m, nn.BatchNorm2d):
        m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
groups = library.branches[4].norm.num_groups
ours = OurASPP(512, 64, rates=(6, 12, 18), groups=groups).double()
ours.load_state_dict({k.replace("branches.4.pool.", ""): v for k, v in library.state_dict().items()})
x = torch.randn(2, 512, 8, 16, dtype=torch.float64)  # ResNet features of a 128x256 crop at output stride 16
aspp_errors = {}
for mode in ("eval", "train"):
    library.train(mode == "train"), ours.train(mode == "train")
    with torch.no_grad():
        aspp_errors[mode] = relative_error(ours(x), library(x))
    print(f"ASPP, {mode} mode: relative error: {aspp_errors[mode]:.1e}")

# %%
# NBVAL_CHECK_OUTPUT
print(f"output {tuple(ours(x).shape)}; image pooling normalised by GroupNorm({groups}, 64)")
for mode, err in aspp_errors.items():
    print(f"ASPP, {mode} mode: relative error < 1e-6: {err < 1e-6}")
assert all(err < 1e-6 for err in aspp_errors.values())

# %% [markdown]
# ## 2 · Image pooling at batch size 1
#
# After global pooling each image contributes **one** value per channel. BatchNorm in train mode normalises each
# channel over the batch, $\hat z_{b} = (z_b - \mu_\mathcal{B}) / \sqrt{\sigma^2_\mathcal{B} + \epsilon}$ with
# $\mu_\mathcal{B}, \sigma^2_\mathcal{B}$ over the $B$ values: with $B = 1$ there is nothing to normalise
# (PyTorch raises), and with $B = 2$ the result is $\pm 1$ whatever the input — the branch carries one bit per
# channel and the running statistics learn from two samples. DeepLab's authors avoid it with large batches (and
# frozen BN); the library normalises the pooled vector with **GroupNorm** instead: per image, over groups of
# channels, the same in train and eval mode, same parameter count.

# %%
torch.manual_seed(SEED)
pooled = torch.randn(2, 8, 1, 1)  # image-pooling outputs of two images, 8 channels, before normalisation
bn = nn.BatchNorm2d(8).train()
try:
    bn(pooled[:1])
    bn_error = None
except ValueError as err:
    bn_error = str(err)
print(f"BatchNorm, train mode, batch 1: ValueError: {bn_error}")
print("BatchNorm, train mode, batch 2, channel 0:", bn(pooled)[:, 0].detach().flatten().numpy().round(3))

gn = nn.GroupNorm(4, 8).train()
library_pool = ASPP(16, 8, rates=(1, 2, 3)).branches[4].train()
single = library_pool(torch.randn(1, 16, 3, 5)).detach()

# %%
# NBVAL_CHECK_OUTPUT
print(f"BatchNorm at batch size 1 in train mode raises: {bn_error is not None}")
print(f"BatchNorm at batch size 2 gives +-1 in every channel: "
      f"{torch.allclose(bn(pooled).abs(), torch.ones(2, 8, 1, 1), atol=1e-2)}")
print(f"GroupNorm at batch size 1: output {tuple(gn(pooled[:1]).shape)}, finite: {bool(gn(pooled[:1]).isfinite().all())}")
print(f"library image pooling ({type(library_pool.norm).__name__}) at batch size 1: {tuple(single.shape)}")

# %% [markdown]
# ## 3 · The skip decoder
#
# At output stride 16 the ASPP output of a 256×512 crop is 16×32; upsampled 16× it cannot place a boundary more
# precisely than a 16-pixel cell. DeepLabV3+ upsamples it 4× to the stride-4 grid, concatenates the encoder's
# stride-4 features (stage 1, 64 channels) after a 1×1 projection to 48 channels — few, so the low-level features
# do not swamp the semantic ones — fuses them with two 3×3 conv-BN-ReLU (256) and predicts at ¼ resolution:
# $$F = \phi\big(W_2 * \phi(W_1 * [\,\mathrm{up}_4(y);\ \phi(W_s\, x_{1/4})\,])\big),\qquad
#   \hat Y = \mathrm{up}_4(W_c\, F).$$
# The ablations: `aspp=False` replaces ASPP by a single 1×1 conv-BN-ReLU to the same width (no atrous branches,
# no image pooling: every position sees only its own encoder feature); `skip=False` keeps the decoder but fuses
# the upsampled ASPP output alone. Parameter counts at full size (ResNet-34, 256 channels, 19 classes + depth):

# %%
# NBVAL_CHECK_OUTPUT
param_rows = {}
for variant, switches in ABLATIONS.items():
    counts = count_parameters(build("deeplab-joint", {"semseg": 19, "depth": 1}, encoder="resnet34", **switches))
    param_rows[variant] = {k: counts[k] for k in ("encoder", "aspp", "decoder", "total")}
params = pd.DataFrame(param_rows).T
params["vs full"] = params["total"] - params.loc["full", "total"]
print(params.to_string())

# %% [markdown]
# Check the differences by hand: ASPP has $512\cdot256\,(1 + 3\cdot 9 + 1) + 5\cdot256\cdot256 + 6\cdot 2\cdot256
# = 4{,}131{,}840$ parameters, its replacement $512\cdot256 + 2\cdot256 = 131{,}584$; the skip costs its projection
# $64\cdot48 + 2\cdot48$ plus the first fusion conv's 48 extra input channels, $9\cdot48\cdot256$: 113,760.

# %%
# NBVAL_CHECK_OUTPUT
aspp_params = 512 * 256 * (1 + 3 * 9 + 1) + 5 * 256 * 256 + 6 * 2 * 256
skip_params = 64 * 48 + 2 * 48 + 9 * 48 * 256
print("no-aspp saves", aspp_params - (512 * 256 + 2 * 256), "=", -params.loc["no-aspp", "vs full"])
print("no-skip saves", skip_params, "=", -params.loc["no-skip", "vs full"])

# %% [markdown]
# ## 4 · Training the ablations
#
# Same data, schedule, seed and output stride; only the switches differ. In `smoke` the model is the narrow one
# of the schedule (ResNet-18, 64-wide ASPP/decoder, 24-channel skip) on the preset's short *study* schedule: 2
# epochs on the first 64 of the 192 training images, validated on the first 32 validation images (`EPOCHS` and
# `TRAIN_IMAGES` override; `lesson` and `paper` use their full schedules and all images). A finished run in
# `OUT_DIR` is loaded instead of retrained.

# %%
splits = setup.splits
print(setup.describe())
print(f"output stride {OUTPUT_STRIDE}, variants {list(VARIANTS)}")

# %%
results = {variant: course.run(setup, variant, "deeplab-joint", output_stride=OUTPUT_STRIDE, **ABLATIONS[variant])
           for variant in VARIANTS}
models = {variant: r.model for variant, r in results.items()}

# %% [markdown]
# ## 5 · Evaluation: overall and at boundaries
#
# mIoU weighs whole regions; a skip connection should matter most near boundaries. The **boundary accuracy**
# counts pixel accuracy only within `BOUNDARY_BAND` pixels of a label change (the band is found with a max-pool
# over the "label differs from a neighbour" map); the interior accuracy counts the rest.

# %%
def boundary_band(labels: torch.Tensor, width: int) -> torch.Tensor:
    """[B,H,W] int labels -> [B,H,W] bool: within ``width`` pixels (Chebyshev) of a label change."""
    edge = torch.zeros_like(labels, dtype=torch.bool)
    edge[:, :, 1:] |= labels[:, :, 1:] != labels[:, :, :-1]
    edge[:, :, :-1] |= labels[:, :, 1:] != labels[:, :, :-1]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    return F.max_pool2d(edge[:, None].float(), 2 * width + 1, stride=1, padding=width)[:, 0] > 0


def boundary_accuracy(model: nn.Module, dataset, width: int) -> dict[str, float]:
    hits, totals = np.zeros(2), np.zeros(2)  # [boundary, interior]
    model.eval()
    for start in range(0, len(dataset), 16):
        batch = [dataset[i] for i in range(start, min(start + 16, len(dataset)))]
        images, labels = torch.stack([s["image"] for s in batch]), torch.stack([s["semseg"] for s in batch])
        correct = course.predict(model, images)["semseg"].argmax(1) == labels
        band, valid = boundary_band(labels, width), labels >= 0
        for k, region in enumerate((band & valid, ~band & valid)):
            hits[k] += int((correct & region).sum())
            totals[k] += int(region.sum())
    share = np.divide(100 * hits, totals, out=np.full(2, np.nan), where=totals > 0)  # NaN: no such pixel
    return {"boundary_acc": share[0], "interior_acc": share[1],
            "boundary_share": 100 * totals[0] / totals.sum() if totals.sum() else np.nan}


runs = {}
for variant in VARIANTS:
    runs[variant] = {**results[variant].summary(), **{f"semseg/{k}": v for k, v in
                                                       boundary_accuracy(models[variant], splits["test"],
                                                                         BOUNDARY_BAND).items()}}
table = pd.DataFrame(runs).T
show = [c for c in ("semseg/miou", "semseg/pixel_acc", "semseg/boundary_acc", "semseg/interior_acc",
                    "depth/si_log_rmse", "depth/abs_err", "grader_score", "parameters_M", "train_seconds")
        if c in table]
print(f"test split, best epoch on val ({PRESET} preset: a short run on small images, not a paper number); "
      f"boundary band ±{BOUNDARY_BAND} px = {table['semseg/boundary_share'].iloc[0]:.0f}% of labelled pixels")
print(table[show].round(2).to_string())

# %%
long = table[["semseg/miou", "semseg/boundary_acc", "semseg/interior_acc"]].rename(
    columns=lambda c: c.split("/")[1]).reset_index(names="variant").melt(id_vars="variant")
fig, axes = plt.subplots(1, 2, figsize=(10, 2.8), gridspec_kw={"width_ratios": [2, 1]})
sns.barplot(long, x="variable", y="value", hue="variant", ax=axes[0])
axes[0].set(xlabel="", ylabel="% (higher is better)", title="segmentation")
sns.barplot(x=table.index, y=table["depth/si_log_rmse"], hue=table.index, ax=axes[1], legend=False)
axes[1].set(xlabel="", ylabel="SI-log RMSE (lower is better)", title="depth")
plt.tight_layout()
plt.show()


# %% [markdown]
# Predictions of each variant on test images, with the boundary band of the ground truth (white) for reference.
# Look at thin structures (poles, signs) and the outlines of cars and people: without the skip the outlines come
# from a 16× upsampling and are blobs.

# %%
def show_predictions(models: dict, dataset, indices) -> None:
    info = dataset.task_info["semseg"]
    cols = 3 + len(models)
    fig, axes = plt.subplots(len(indices), cols, figsize=(2.0 * cols, 1.15 * len(indices) + 0.4), squeeze=False)
    for row, idx in enumerate(indices):
        s = dataset[idx]
        panels = [("image", s["image"].permute(1, 2, 0).numpy(), {}),
                  ("semseg gt", *viz.label_to_rgb("semseg", s["semseg"], info)),
                  (f"boundary band ±{BOUNDARY_BAND}px", boundary_band(s["semseg"][None], BOUNDARY_BAND)[0].numpy(),
                   {"cmap": "gray"})]
        for name, model in models.items():
            pred = course.predict(model, s["image"][None])["semseg"][0].argmax(0)
            panels.append((name, *viz.label_to_rgb("semseg", pred, info)))
        course.draw_row(axes[row], panels, titles=row == 0)
    plt.tight_layout()
    plt.show()


show_predictions(models, splits["test"], range(N_SHOW))

# %% [markdown]
# ## 6 · The course so far
#
# Rows of every notebook run in this preset (each writes `OUT_DIR/metrics.json`), then the DLAD course's scores on
# the real MiniScapes data — **references from the course, not results of this kit**. The course's recipe for its
# joint model is exactly the full variant here (dilation (F,F,T) + ASPP + skip, with ImageNet weights).

# %%
path = write_notebook_results(OUT_DIR, "03_aspp_skip", PRESET, runs,
                              extra={"parameters_full_size": params["total"].to_dict(),
                                     "boundary_band_px": BOUNDARY_BAND, "output_stride": OUTPUT_STRIDE})
print(f"wrote {path.name} in OUT_DIR")
print_course_table(OUT_DIR, PRESET, ("semseg/miou", "depth/si_log_rmse", "grader_score", "parameters_M"))

# %%
course.deeplab.print_references()  # the DLAD course's paper-preset numbers
