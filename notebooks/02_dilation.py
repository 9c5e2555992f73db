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
# # 02 · Dilation: output stride 32, 16 and 8
#
# **Learning goals.** After this notebook you can
# 1. write a dilated (atrous) 3×3 convolution by hand and state its effective kernel size $k + (k-1)(r-1)$;
# 2. explain how replacing a stage's stride by dilation keeps every unit's receptive field while multiplying the
#    number of output positions (output stride 32 → 16 → 8);
# 3. read the cost of that resolution in multiply-adds and seconds, and weigh it against the quality it buys;
# 4. set the DLAD course's `replace_stride_with_dilation` flags — (F,F,F), (F,F,T), (F,T,T) — and say which
#    output stride each gives.
#
# A ResNet halves the resolution five times: a 256×512 crop leaves the last stage at 8×16 (output stride 32). A
# dense prediction has to be painted back from that coarse grid. *Dilation* removes the last downsamplings without
# shrinking what each unit sees: the convolutions after the removed stride spread their taps apart instead.

# %% tags=["parameters"]
import os

PRESET = os.environ.get("MTLKIT_PRESET", "smoke")  # unit | smoke | lesson | paper
DEVICE = "auto"
SEED = 0
DATA = "auto"  # "auto": the preset's dataset (synthetic-city; the paper preset uses the real MiniScapes data)
OUT_DIR = "../runs/notebooks/02_dilation"
STRIDES = (32, 16, 8)  # output strides to train and compare
EPOCHS = None  # None -> the preset's study schedule (smoke: 2 epochs; lesson and paper: their full schedules)
TRAIN_IMAGES = None  # None -> the preset's study schedule (smoke: the first 64 of the 192 training images)
PRETRAINED = None  # ImageNet initialisation of the encoder; None -> the preset's (paper: True, needs the HF hub)
MAX_STEPS = None  # a dry run: stop each training epoch and evaluation after this many batches (None: whole epochs)
N_SHOW = 2  # test images in the prediction figure

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn as nn
import torch.nn.functional as F

from mtlkit import course, viz
from mtlkit.course import print_course_table, relative_error, write_notebook_results
from mtlkit.models import build
from mtlkit.models.encoders import DILATION_TO_OUTPUT_STRIDE, create_encoder
from mtlkit.train import seed_everything

sns.set_theme(style="whitegrid", context="notebook")
plt.rcParams["figure.dpi"] = 70
seed_everything(SEED)
out_dir = Path(OUT_DIR)
out_dir.mkdir(parents=True, exist_ok=True)
# schedule, data (train/val cut to the study's images), tasks, model and Trainer options: one call for 02-05
setup = course.deeplab.setup(PRESET, data=DATA, seed=SEED, device=DEVICE, out_dir=OUT_DIR, epochs=EPOCHS,
                             train_images=TRAIN_IMAGES, pretrained=PRETRAINED, max_steps=MAX_STEPS)
schedule, data_name = setup.schedule, setup.data

# %% [markdown]
# ## 1 · Dilated convolution
#
# A $k\times k$ convolution with dilation (rate) $r$ reads its taps $r$ pixels apart:
# $$y[o, i, j] = \sum_{c}\sum_{u=0}^{k-1}\sum_{v=0}^{k-1} W[o, c, u, v]\;
#   x\big[c,\; i + r\,(u - \tfrac{k-1}{2}),\; j + r\,(v - \tfrac{k-1}{2})\big].$$
# It has the $k^2$ weights of an ordinary kernel but covers an **effective kernel size**
# $$k_{\text{eff}} = k + (k-1)(r-1)$$
# ($3\times3$ at $r=2$ spans 5×5, at $r=6$ 13×13). Padding $r(k-1)/2$ keeps $H\times W$. Written out, the
# convolution is a sum of $k^2$ shifted copies of the (padded) input, each mixed over channels by one tap's
# weights — the same thing `F.unfold` + a matrix product (im2col) computes in one go:

# %%
class DilatedConv2d(nn.Module):
    """k x k convolution with dilation ``r``, stride 1, "same" zero padding, no bias: [B,C,H,W] -> [B,O,H,W]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> None:
        super().__init__()
        self.k, self.r = kernel_size, dilation
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad = self.r * (self.k - 1) // 2
        xp = F.pad(x, (pad, pad, pad, pad))  # [B, C, H + 2 pad, W + 2 pad]
        y = 0
        for u in range(self.k):
            for v in range(self.k):
                shifted = xp[:, :, self.r * u: self.r * u + h, self.r * v: self.r * v + w]  # tap (u, v), [B,C,H,W]
                y = y + torch.einsum("oc,bchw->bohw", self.weight[:, :, u, v], shifted)
        return y


# %% [markdown]
# Check it against PyTorch's `nn.Conv2d(dilation=r)` — the very layer inside the library's ASPP atrous branches
# (`model.aspp.branches[1..3]`, rates 6/12/18 at output stride 16). We copy the library layer's weights into our
# module and run both on the same input, in float64 (float32 sums of 4,608 products leave ~1e-4 relative
# differences wherever an output is close to zero, so a float32 check could not tell a bug from rounding):

# %%
torch.manual_seed(SEED)
library = build("deeplab-joint", {"semseg": 19, "depth": 1}, encoder="resnet18", aspp_channels=16)
x = torch.randn(2, 512, 9, 14, dtype=torch.float64)  # encoder features of a 144x224 crop at output stride 16
errors = {}
for branch in library.aspp.branches[1:4]:
    conv = branch[0].double()  # nn.Conv2d(512, 16, 3, padding=r, dilation=r, bias=False)
    ours = DilatedConv2d(512, 16, 3, dilation=conv.dilation[0]).double()
    ours.load_state_dict(conv.state_dict())
    with torch.no_grad():
        errors[conv.dilation[0]] = relative_error(ours(x), conv(x))
for r, err in errors.items():
    print(f"rate {r:2d}: relative error: {err:.1e}")

# %%
# NBVAL_CHECK_OUTPUT
for r, err in errors.items():
    print(f"rate {r:2d}: effective kernel {3 + 2 * (r - 1)}x{3 + 2 * (r - 1)}, relative error < 1e-6: {err < 1e-6}")
assert all(err < 1e-6 for err in errors.values())

# %% [markdown]
# ## 2 · Output stride: trading stride for dilation
#
# A ResNet has five stride-2 steps (stem conv, max-pool, first conv of stages 2–4). Setting the course's flags
# `replace_stride_with_dilation = (s2, s3, s4)` removes the stride of stage 3 and/or 4 and dilates every later
# 3×3 convolution by the factor the stride would have contributed (2, then 4). timm implements this for the
# BasicBlock ResNets too (torchvision refuses). The flags the library accepts:

# %%
# NBVAL_CHECK_OUTPUT
for flags, stride in DILATION_TO_OUTPUT_STRIDE.items():
    enc = create_encoder("resnet18", dilation=flags)
    convs = {name: (m.stride[0], m.dilation[0]) for name, m in enc.body.named_modules()
             if isinstance(m, nn.Conv2d) and name.startswith(("layer3", "layer4")) and "downsample" not in name}
    s3 = sorted({v for k, v in convs.items() if k.startswith("layer3")})
    s4 = sorted({v for k, v in convs.items() if k.startswith("layer4")})
    print(f"dilation={flags}: output stride {stride:2d}; (stride, dilation) of 3x3 convs: layer3 {s3}, layer4 {s4}")

# %% [markdown]
# The DeepLabV3+ skip always comes from stage 1 (stride 4); only the last features change. Shapes need no
# arithmetic at all: on PyTorch's `meta` device a forward pass propagates shapes only, so even the full-size
# ResNet-34 on a 256×512 crop at output stride 8 costs nothing:

# %%
# NBVAL_CHECK_OUTPUT
rows = []
with torch.device("meta"):
    for stride in STRIDES:
        enc = create_encoder("resnet34", stride)
        for hw in ((64, 128), (256, 512)):
            skip, feats = enc(torch.empty(1, 3, *hw))
            rows.append({"output stride": stride, "input": "x".join(map(str, hw)),
                         "skip (stride 4)": tuple(skip.shape[1:]), "last features": tuple(feats.shape[1:])})
print(pd.DataFrame(rows).to_string(index=False))

# %% [markdown]
# ## 3 · Receptive field
#
# Walking the layers in order, with $j$ the distance in input pixels between neighbouring units (the *jump*, the
# product of the strides so far) and $R$ the receptive field,
# $$R_\ell = R_{\ell-1} + (k_{\text{eff},\ell} - 1)\, j_{\ell-1}, \qquad j_\ell = j_{\ell-1}\, s_\ell .$$
# Removing a stride halves $j$ for every later layer, and dilating those layers by 2 doubles $k_\text{eff}-1$:
# the product — the receptive field — is unchanged. We record the layers of the main path with forward hooks
# (the 1×1 shortcut convolutions add nothing) and apply the recursion:

# %%
def receptive_field(encoder: nn.Module, size=(64, 128)) -> tuple[int, int]:
    """(receptive field in pixels, jump = output stride) of the encoder's last features, by the recursion above."""
    layers = []
    hooks = [m.register_forward_hook(lambda m, i, o: layers.append(m))
             for name, m in encoder.named_modules()
             if isinstance(m, (nn.Conv2d, nn.MaxPool2d)) and "downsample" not in name]
    with torch.device("meta"):
        encoder.to("meta")(torch.empty(1, 3, *size))
    for h in hooks:
        h.remove()
    rf, jump = 1, 1
    for m in layers:
        k, s, d = (m.kernel_size, m.stride, m.dilation)
        k, s, d = (v if isinstance(v, int) else v[0] for v in (k, s, d))
        rf += (k + (k - 1) * (d - 1) - 1) * jump
        jump *= s
    return rf, jump


# %%
# NBVAL_CHECK_OUTPUT
for stride in STRIDES:
    rf, jump = receptive_field(create_encoder("resnet34", stride))
    rates = build("deeplab-joint", {"semseg": 19}, encoder="resnet18", aspp_channels=8, output_stride=stride).aspp_rates
    with_aspp = rf + (3 + 2 * (max(rates) - 1) - 1) * jump
    print(f"OS {stride:2d}: jump {jump:2d} px, receptive field {rf} px; with the widest ASPP branch "
          f"(rate {max(rates)}): {with_aspp} px")

# %% [markdown]
# Every unit sees the same 899 px (ResNet-34) at every output stride — far more than a 64×128 smoke image, so at
# smoke scale all three strides see the whole image and differ only in *how many* units there are. The ASPP rates
# scale with $1/\text{OS}$ (6/12/18 at 16, 12/24/36 at 8) for the same reason: to keep the context in pixels.
#
# The theoretical field is an upper bound; the *effective* receptive field (Luo et al., 2016) — how much the
# centre unit's output actually depends on each input pixel, $|\partial y_\text{centre} / \partial x|$ — is much
# smaller and concentrated. At initialisation (ResNet-18, 128×256 inputs):

# %%
fig, axes = plt.subplots(1, len(STRIDES), figsize=(3.6 * len(STRIDES), 2.2))
torch.manual_seed(SEED)
probe = torch.rand(2, 3, 128, 256, requires_grad=True)
for ax, stride in zip(np.atleast_1d(axes), STRIDES):
    enc = create_encoder("resnet18", stride).eval()
    feats = enc(probe)[1]  # [2, 512, 128/OS, 256/OS]
    h, w = feats.shape[-2:]
    (grad,) = torch.autograd.grad(feats[:, :, h // 2, w // 2].sum(), probe)
    erf = grad.abs().sum((0, 1)).numpy()
    ax.imshow(erf / erf.max(), cmap="magma", vmax=0.5)
    cy, cx = (h // 2 + 0.5) * stride, (w // 2 + 0.5) * stride  # the centre unit's cell in the input
    ax.add_patch(plt.Rectangle((cx - stride / 2, cy - stride / 2), stride, stride, fill=False, ec="cyan", lw=1))
    ax.set(title=f"OS {stride}: {h}x{w} units", xticks=[], yticks=[])
fig.suptitle("effective receptive field of the centre unit (cyan: its cell)", y=1.04)
plt.show()

# %% [markdown]
# ## 4 · What resolution costs
#
# A convolution costs $H_\text{out} W_\text{out}\cdot C_\text{out}\cdot (C_\text{in}/g)\cdot k^2$ multiply-adds,
# independent of dilation. Dropping a stride makes every later layer 4× more expensive (stage 4 runs on 4× the
# positions at OS 16; stages 3 and 4 on 4× and 16× at OS 8), and the ASPP runs on the larger map too; the decoder
# works at stride 4 whatever the output stride. Counted with hooks on the `meta` device (no arithmetic performed):

# %%
def conv_macs(model: nn.Module, size) -> dict[str, float]:
    """Multiply-adds (G) of every convolution per top-level component for one image of ``size`` (H, W)."""
    counts: dict[str, float] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            part = name.split(".")[0]

            def hook(m, i, o, part=part):
                k = m.kernel_size[0] * m.kernel_size[1]
                counts[part] = counts.get(part, 0) + o.numel() * m.in_channels // m.groups * k / 1e9
            hooks.append(m.register_forward_hook(hook))
    with torch.device("meta"):
        model.to("meta")(torch.empty(1, 3, *size))
    for h in hooks:
        h.remove()
    counts["total"] = sum(counts.values())
    return counts


model_options = {**setup.model_options, "pretrained": False}  # counted, not trained: no download needed
rows = []
for stride in STRIDES:
    smoke_model = build("deeplab-joint", {"semseg": 19, "depth": 1}, output_stride=stride, **model_options)
    full_model = build("deeplab-joint", {"semseg": 19, "depth": 1}, encoder="resnet34", output_stride=stride)
    smoke, full = conv_macs(smoke_model, (64, 128)), conv_macs(full_model, (256, 512))
    rows.append({"output stride": stride, f"{PRESET} model @64x128": round(smoke["total"], 2),
                 "full model @256x512": round(full["total"], 1), "  encoder": round(full["encoder"], 1),
                 "  aspp": round(full["aspp"], 1), "  decoder": round(full["decoder"], 1)})
macs = pd.DataFrame(rows).set_index("output stride")

# %%
# NBVAL_CHECK_OUTPUT
print("multiply-adds per image (G)")
print(macs.to_string())

# %% [markdown]
# The full-size encoder costs about 1.5× at OS 16 and about 5× at OS 8 what it costs at OS 32. Multiply-adds are a
# proxy; the time on *this* machine (forward pass of the model we train, batch 8, 64×128):

# %%
x = torch.rand(8, 3, 64, 128)
forward_ms = {}
for stride in STRIDES:
    m = build("deeplab-joint", {"semseg": 19, "depth": 1}, output_stride=stride, **model_options).eval()
    with torch.no_grad():
        m(x)  # warm-up
        start = time.perf_counter()
        for _ in range(3):
            m(x)
    forward_ms[stride] = (time.perf_counter() - start) / 3 * 1000
    print(f"OS {stride:2d}: {forward_ms[stride]:.0f} ms per forward pass of 8 images")

# %% [markdown]
# ## 5 · Training at each output stride
#
# The same joint DeepLabV3+ (semseg + depth), schedule and seed; only the dilation flags differ. In `smoke` the
# model is narrow (ResNet-18, 64-wide ASPP/decoder) and — because three trainings, one of them at OS 8 (over twice
# the time per step of OS 16), share the CPU budget with the rest of the course — each follows the preset's short
# *study* schedule: 2 epochs on the first 64 of the 192 training images, validated on the first 32 validation
# images (the test split is always whole). Set `EPOCHS` and `TRAIN_IMAGES` to override; `lesson` and `paper` use
# their full schedules and all images. A finished run in
# `OUT_DIR` is loaded instead of retrained.

# %%
splits = setup.splits
print(setup.describe())

# %%
results = {stride: course.run(setup, f"os{stride}", "deeplab-joint", output_stride=stride) for stride in STRIDES}
models = {stride: r.model for stride, r in results.items()}

# %%
runs = {f"os{stride}": r.summary() for stride, r in results.items()}
table = pd.DataFrame(runs).T
table["GMACs / image"] = macs[f"{PRESET} model @64x128"].values
table["ms / forward (8 imgs)"] = [forward_ms[s] for s in STRIDES]
show = [c for c in ("semseg/miou", "semseg/pixel_acc", "depth/si_log_rmse", "depth/abs_err", "grader_score",
                    "parameters_M", "GMACs / image", "ms / forward (8 imgs)", "train_seconds") if c in table]
print(f"test split, best epoch on val ({PRESET} preset: a short run on small images, not a paper number)")
print(table[show].round(2).to_string())

# %% [markdown]
# Parameters are identical (dilation adds no weights); only compute and resolution change. Quality against cost
# (multiply-adds, which unlike seconds do not depend on what else the machine is doing):

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for ax, metric, label in zip(axes, ("semseg/miou", "depth/si_log_rmse"), ("mIoU (%) ↑", "SI-log RMSE ↓")):
    ax.plot(table["GMACs / image"], table[metric], "o-")
    for stride in STRIDES:
        ax.annotate(f"OS {stride}", (table.loc[f"os{stride}", "GMACs / image"], table.loc[f"os{stride}", metric]),
                    textcoords="offset points", xytext=(5, 5))
    ax.set(xlabel="multiply-adds per 64x128 image (G)", ylabel=label, title=label.split(" (")[0])
plt.tight_layout()
plt.show()


# %% [markdown]
# Predictions on test images, one column per output stride. At OS 32 the 64×128 smoke image leaves a 2×4 grid
# of features: the decoder's stride-4 skip has to supply all the spatial detail.

# %%
def show_predictions(models: dict, dataset, indices, title=str):
    cols = 2 + 2 * len(models)
    fig, axes = plt.subplots(len(indices), cols, figsize=(1.9 * cols, 1.1 * len(indices) + 0.4), squeeze=False)
    info = dataset.task_info
    for row, idx in enumerate(indices):
        sample = dataset[idx]
        panels = [("image", sample["image"].permute(1, 2, 0).numpy(), {}),
                  ("semseg gt", *viz.label_to_rgb("semseg", sample["semseg"], info["semseg"]))]
        for key, model in models.items():
            pred = course.predict(model, sample["image"][None])  # on the model's device, back on the CPU
            panels.append((f"{title(key)}", *viz.label_to_rgb("semseg", pred["semseg"][0].argmax(0),
                                                                  info["semseg"])))
            panels.append((f"{title(key)} depth", *viz.label_to_rgb("depth", pred["depth"][0].clamp_min(0.1))))
        course.draw_row(axes[row], panels, titles=row == 0)
    plt.tight_layout()
    plt.show()


show_predictions(models, splits["test"], range(N_SHOW), title=lambda s: f"OS {s}")

# %% [markdown]
# ## 6 · The course so far
#
# Every notebook writes `OUT_DIR/metrics.json` with one summary row per trained run; the table below reads all of
# them (notebooks run in the same preset), so it grows as you go. The DLAD course's scores on the real MiniScapes
# data are shown for context — **references from the course, not results of this kit**; the smoke rows come
# from a few minutes of CPU training on small synthetic images.

# %%
path = write_notebook_results(OUT_DIR, "02_dilation", PRESET, runs,
                              extra={"macs_G": macs.reset_index().to_dict(orient="records"),
                                     "forward_ms": {str(k): v for k, v in forward_ms.items()}})
print(f"wrote {path.name} in OUT_DIR")
print_course_table(OUT_DIR, PRESET, ("semseg/miou", "depth/si_log_rmse", "grader_score", "parameters_M"))

# %%
course.deeplab.print_references()  # the DLAD course's paper-preset numbers
