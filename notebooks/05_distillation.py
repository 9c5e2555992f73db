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
# # 05 · Task distillation: tasks that talk to each other
#
# **Learning goals.** After this notebook you can
# 1. explain PAD-Net-style task distillation: initial per-task predictions under deep supervision, then
#    self-attention-gated messages between the tasks' features, then final per-task decoders — with equations;
# 2. write the distillation gate
#    $\mathrm{SA}(x) = \mathrm{conv}_{3\times3}(x) \odot \sigma(\mathrm{conv}_{3\times3}(x))$ and the message
#    passing step yourself and check them against the library;
# 3. count the parameters the distillation stage adds (ResNet-34, 19 classes + depth: 36.87 M) by hand;
# 4. measure what intermediate supervision does (auxiliary weight 1 vs 0) and what each task gains over the
#    branched model of notebook 04; read the gates' attention maps.
#
# In the branched model (notebook 04) the tasks share an encoder and then never meet again. Yet semantic labels
# tell depth where objects end, and depth discontinuities tell segmentation where boundaries are. Distillation
# lets each task's decoder read the other tasks' features — *after* each task has formed its own view.

# %% tags=["parameters"]
import os

PRESET = os.environ.get("MTLKIT_PRESET", "smoke")  # unit | smoke | lesson | paper
DEVICE = "auto"
SEED = 0
DATA = "auto"  # "auto": the preset's dataset (synthetic-city; the paper preset uses the real MiniScapes data)
OUT_DIR = "../runs/notebooks/05_distillation"
EPOCHS = None  # None: the preset's study schedule (smoke: 2 epochs; lesson and paper: their full schedules)
TRAIN_IMAGES = None  # None: the preset's study schedule (smoke: the first 64 of the 192 training images)
PRETRAINED = None  # ImageNet initialisation of the encoder; None -> the preset's (paper: True, needs the HF hub)
MAX_STEPS = None  # a dry run: stop each training epoch and evaluation after this many batches (None: whole epochs)
AUX_WEIGHTS = (1.0, 0.0)  # deep-supervision weights to train: with and without intermediate supervision
SAMPLE = 0  # test image for the prediction and attention figures

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn as nn
import torch.nn.functional as F

from mtlkit import course, viz
from mtlkit.course import REFERENCE_RESULTS, course_table, print_course_table, relative_error, write_notebook_results
from mtlkit.data import collate
from mtlkit.models import build, count_parameters
from mtlkit.models.blocks import SelfAttentionGate
from mtlkit.train import seed_everything

sns.set_theme(style="whitegrid", context="notebook")

# schedule, data (train/val cut to the study's images), tasks, model and Trainer options: one call for 02-05
setup = course.deeplab.setup(PRESET, data=DATA, seed=SEED, device=DEVICE, out_dir=OUT_DIR, epochs=EPOCHS,
                             train_images=TRAIN_IMAGES, pretrained=PRETRAINED, max_steps=MAX_STEPS)
tasks, task_channels = setup.tasks, setup.task_channels  # {"semseg": Task, "depth": Task}, {"semseg": 19, "depth": 1}

# smoke: the same study schedule and training images as notebook 04, so its branched run is a fair comparison
splits, model_options = setup.splits, setup.model_options
print(setup.describe())

# %% [markdown]
# ## 1 · The idea
#
# Start from the branched model: a shared encoder $f$, and per task $t$ an ASPP + decoder body $g_t$ that gives
# features at ¼ resolution and a 1×1 classifier $h_t$ that gives an **initial prediction**:
# $$F_t = g_t\big(f(x)\big) \in \mathbb R^{D\times \frac H4 \times \frac W4}, \qquad \hat y_t^{\,0} = h_t(F_t).$$
# Each task then receives a message from every other task, passed through a **self-attention gate** — two separate
# 3×3 convolutions, one producing the message, one (through a sigmoid) deciding where it gets through:
# $$\mathrm{SA}_{s\to t}(F_s) = \big(W^{m}_{s\to t} * F_s\big) \odot \sigma\big(W^{a}_{s\to t} * F_s\big),
#   \qquad F'_t = F_t + \sum_{s \neq t} \mathrm{SA}_{s\to t}(F_s).$$
# A **final decoder** $d_t$ (two 3×3 conv-BN-ReLU and a 1×1 conv) turns the refined features into the output,
# $\hat y_t = d_t(F'_t)$, bilinearly upsampled to the input size.
#
# The features $F_t$ only carry task information if something forces them to: **deep supervision** puts a loss on
# the initial predictions too. With task weights $w_t$ and auxiliary weight $\lambda$ (the Trainer's `aux_weight`):
# $$\mathcal L = \sum_t w_t\Big(\mathcal L_t(\hat y_t, y_t) + \lambda\,\mathcal L_t(\hat y_t^{\,0}, y_t)\Big).$$
# The model returns the initial predictions under `out["aux"]["initial"]`; the Trainer adds their losses (scaled by
# `aux_weight`) to each task's loss, and the metrics ignore them. $\lambda = 0$ turns intermediate supervision off
# — the architecture is unchanged, the initial heads simply receive no gradient.
#
# ## 2 · The gate and the distillation step, written out
#
# First the gate alone, against the library's `SelfAttentionGate`. The library initialises the attention conv at
# zero (every position passes half the message, $\sigma(0) = 0.5$), so we randomise it first — otherwise the check
# could not tell a wrong attention branch from a right one.

# %%
class DistillationGate(nn.Module):
    """SA(x) = conv3x3_m(x) * sigmoid(conv3x3_a(x)); [B, C_in, H, W] -> [B, C_out, H, W]."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.message = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)  # what to send
        self.gate = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)  # where it passes, via sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.message(x) * torch.sigmoid(self.gate(x))


seed_everything(SEED)
library_gate = SelfAttentionGate(16, 16)
nn.init.normal_(library_gate.gate.weight, std=0.1)  # leave the zero init so the sigmoid branch matters
ours_gate = DistillationGate(16, 16)
ours_gate.load_state_dict(library_gate.state_dict())  # strict: the same parameter names and shapes
x = torch.randn(2, 16, 8, 12)
gate_error = relative_error(ours_gate(x), library_gate(x))
print(f"relative error: {gate_error:.1e}")

# %% [markdown]
# Now the whole forward pass of `deeplab-distill`, written with the library model's own components
# (`encoder`, per-task `aspp` and `decoders` for $g_t$ and $h_t$, `distill[t][s]` $= \mathrm{SA}_{s\to t}$, and `final`
# $= d_t$), compared with the model's output, final and initial, on a random image:

# %%
def distill_forward(model: nn.Module, images: torch.Tensor) -> tuple[dict, dict]:
    """(final, initial) predictions of a deeplab-distill model, each task -> [B, C_t, H, W]."""
    size = images.shape[-2:]
    skip, features = model.encoder(images)  # shared: [B,64,H/4,W/4], [B,512,H/16,W/16]
    # F_t [B,D,H/4,W/4]: each task's ASPP + decoder body
    feats = {t: model.decoders[t].features(model.aspp[t](features), skip) for t in model.tasks}
    initial = {t: F.interpolate(model.decoders[t].classifier(feats[t]), size=size, mode="bilinear",
                                align_corners=False) for t in model.tasks}  # y_t^0 (deep supervision)
    final = {}
    for t in model.tasks:
        refined = feats[t] + sum(model.distill[t][s](feats[s]) for s in model.tasks if s != t)  # F'_t
        final[t] = F.interpolate(model.final[t](refined), size=size, mode="bilinear", align_corners=False)
    return final, initial


seed_everything(SEED)
library_model = build("deeplab-distill", task_channels, **{**model_options, "pretrained": False}).eval()
for gates in library_model.distill.values():  # randomise the zero-initialised attention convs (see above)
    for g in gates.values():
        nn.init.normal_(g.gate.weight, std=0.05)
images = torch.rand(2, 3, *splits["train"].image_size)
with torch.no_grad():
    expected = library_model(images)
    final, initial = distill_forward(library_model, images)
forward_error = max(max(relative_error(final[t], expected[t]),
                        relative_error(initial[t], expected["aux"]["initial"][t])) for t in task_channels)
print(f"relative error: {forward_error:.1e}")

# %%
# NBVAL_CHECK_OUTPUT
assert gate_error < 1e-6 and forward_error < 1e-6
print(f"gate: relative error < 1e-6: {gate_error < 1e-6}")
print(f"distillation forward (final and initial): relative error < 1e-6: {forward_error < 1e-6}")
print("outputs:", {t: tuple(v.shape) for t, v in final.items()}, "+ aux/initial:",
      {t: tuple(v.shape) for t, v in initial.items()})

# %% [markdown]
# ## 3 · What distillation costs (full size)
#
# ResNet-34, 256-channel ASPP and decoders, 19 classes + depth. Over the branched model, distillation adds one gate
# per ordered task pair (two 3×3 convolutions 256 → 256, no bias) and one final decoder per task (two 3×3
# conv-BN-ReLU at 256 and a 1×1 classifier with bias).

# %%
# NBVAL_CHECK_OUTPUT
full_tasks = {"semseg": 19, "depth": 1}
full_distill = build("deeplab-distill", full_tasks, encoder="resnet34")
full_counts = count_parameters(full_distill)
branched_total = count_parameters(build("deeplab-branched", full_tasks, encoder="resnet34"))["total"]
ref = REFERENCE_RESULTS["DLAD course: parameters with ResNet-34, 19 classes + depth (millions)"]
print(f"distillation {full_counts['total']:,d} parameters = {full_counts['total'] / 1e6:.2f} M "
      f"(DLAD reference {ref['distillation']:.2f} M)")
for component, n in full_counts.items():
    if component != "total":
        print(f"    {component:18s} {n:>12,d}")

gates_by_hand = 2 * (2 * 256 * 256 * 9)  # semseg->depth and depth->semseg, each message + attention conv
final_by_hand = sum(2 * (256 * 256 * 9 + 2 * 256) + 256 * c + c for c in full_tasks.values())
print(f"distillation - branched = {full_counts['total'] - branched_total:,d}")
print(f"gates {gates_by_hand:,d} + final decoders {final_by_hand:,d} = {gates_by_hand + final_by_hand:,d}: "
      f"{full_counts['total'] - branched_total == gates_by_hand + final_by_hand}")

# %%
groups = {"encoder": "encoder", "ASPP": "aspp", "decoder (initial)": "decoders", "gates": "distill",
          "final decoder": "final"}
sizes = pd.Series({label: sum(n for comp, n in full_counts.items() if comp.split(".")[0] == prefix) / 1e6
                   for label, prefix in groups.items()})
fig, ax = plt.subplots(figsize=(6, 2.2), dpi=75)
sns.barplot(x=sizes.values, y=sizes.index, ax=ax, color="tab:blue")
ax.set(xlabel="parameters (millions), ResNet-34, 19 classes + depth", ylabel="")
for y, v in enumerate(sizes.values):
    ax.text(v + 0.2, y, f"{v:.2f} M", va="center", fontsize=8)
plt.show()
del full_distill

# %% [markdown]
# ## 4 · Training with and without intermediate supervision
#
# Two runs of `deeplab-distill` with the preset's schedule, the course's loss weights 0.5/0.5 and
# `aux_weight` $\lambda$ = 1 (deep supervision) and 0 (none). In the smoke preset both use the study schedule (2
# epochs on the first 64 training images), exactly like notebook 04's runs.

# %%
results = {f"distill-aux{aux:g}": course.run(setup, f"distill-aux{aux:g}", "deeplab-distill",
                                             train={"aux_weight": aux}) for aux in AUX_WEIGHTS}
models, metrics = {name: r.model for name, r in results.items()}, {name: r.metrics for name, r in results.items()}

# %% [markdown]
# ## 5 · Evaluation
#
# Test metrics of the best validation epoch of each run, and the validation curves (metrics ignore the initial
# predictions: they score the final ones).

# %%
summary = pd.DataFrame({name: r.summary() for name, r in results.items()}).T
columns = [c for c in ("semseg/miou", "semseg/pixel_acc", "depth/abs_err", "depth/si_log_rmse", "grader_score",
                       "parameters_M", "train_seconds") if c in summary.columns]
print(summary[columns].round(3).to_string())

# %%
curve_rows = [{"run": name, "epoch": e["epoch"] + 1, "metric": f"{t} {tasks[t].delta_metric}",
               "value": e["val"][t][tasks[t].delta_metric]}
              for name, m in metrics.items() for e in m["epochs"] if e.get("val") for t in tasks]
curves = pd.DataFrame(curve_rows)
g = sns.relplot(data=curves, x="epoch", y="value", hue="run", col="metric", kind="line", marker="o",
                facet_kws={"sharey": False}, height=2.4, aspect=1.4)
g.figure.set_dpi(70)
plt.show()

# %% [markdown]
# **What each task gains over branched.** Notebook 04 trained `deeplab-branched` with the same data, schedule and
# loss weights; the course table holds its test metrics. The relative change of each task's Δm metric
# (positive = better, whichever direction the metric runs):

# %%
table = course_table(OUT_DIR, preset=PRESET)
branched = None
if len(table) and ("04_branched", "branched") in table.index:
    row = table.loc[("04_branched", "branched")]
    same_setup = row.get("train_images") == len(splits["train"]) and row.get("epochs") == setup.schedule["epochs"]
    branched = row if same_setup else None
    if not same_setup:
        print("notebook 04's branched run used another training set or schedule: no like-for-like comparison")
else:
    print("notebook 04 has no results for this preset yet (run 04_branched first): no comparison with branched")
gains = pd.DataFrame()
if branched is not None:
    rows = []
    for t, task in tasks.items():
        key, sign = f"{t}/{task.delta_metric}", (1.0 if task.higher_is_better else -1.0)
        row = {"task": t, "metric": task.delta_metric, "branched (04)": branched[key]}
        for name in metrics:
            row[name] = summary.loc[name, key]
            base = float(branched[key])  # 0 or NaN after a degenerate run: no relative gain (NaN)
            row[f"{name} gain (%)"] = 100 * sign * (summary.loc[name, key] - base) / abs(base) if base else np.nan
        rows.append(row)
    gains = pd.DataFrame(rows).set_index("task")
    print(gains.round(3).to_string())
    print(f"parameters ({PRESET} size): branched {branched['parameters_M']:.2f} M, "
          f"distillation {summary['parameters_M'].iloc[0]:.2f} M")

# %% [markdown]
# ## 6 · Initial versus final predictions
#
# For one test image: the ground truth, the initial prediction $\hat y^{\,0}_t$ (from the task's own features) and
# the final prediction $\hat y_t$ (after the other task's message), for each run. Without deep supervision
# ($\lambda = 0$) the initial 1×1 heads never receive a gradient: they keep their random weights, so their output is
# meaningless, and the features $F_t$ are whatever helped the final decoders.

# %%
test_set = splits["test"]
sample = collate([test_set[SAMPLE]])
info = test_set.task_info
outputs = {name: course.predict(model, sample["image"]) for name, model in models.items()}


def show(task: str, pred: torch.Tensor):
    """(image, imshow kwargs) of one image's prediction [C,H,W] (depth on its own colour scale)."""
    if task in ("semseg", "parts", "material"):
        return viz.label_to_rgb(task, pred.argmax(0), info[task])
    if task == "depth":
        return pred[0].numpy(), {"cmap": "magma_r"}  # own scale: a short schedule leaves the range far off
    if task == "normals":
        return viz.label_to_rgb(task, F.normalize(pred, dim=0))
    return viz.label_to_rgb(task, torch.sigmoid(pred))  # edge / saliency logits


ncol = 2 + 2 * len(outputs)
fig, axes = plt.subplots(len(task_channels), ncol, figsize=(1.9 * ncol, 1.25 * len(task_channels)), dpi=70,
                         squeeze=False)
for r, t in enumerate(task_channels):
    gt, kw = viz.label_to_rgb(t, sample[t][0], info[t])
    row = [("image", sample["image"][0].permute(1, 2, 0).numpy(), {}) if r == 0 else None,
           (f"{t}: ground truth", gt, kw)]
    for name, out in outputs.items():
        row.append((f"{name}\n{t}: initial", *show(t, out["aux"]["initial"][t][0])))
        row.append((f"{name}\n{t}: final", *show(t, out[t][0])))
    for ax, panel in zip(axes[r], row):
        ax.set_axis_off()
        if panel is not None:
            title, img, kw = panel
            ax.imshow(img, **kw)
            ax.set_title(title, fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 7 · Where the gates let messages through
#
# The attention $\sigma(W^a_{s\to t} * F_s)$ has one value per channel and position; its channel mean shows where the
# gate opens, and the message magnitude $\lVert \mathrm{SA}_{s\to t}(F_s)\rVert$ per position shows what actually
# arrives at task $t$ (both at ¼ resolution, for the deep-supervision run).

# %%
name = f"distill-aux{AUX_WEIGHTS[0]:g}"
model = models[name]
with torch.no_grad():
    skip, features = model.encoder(sample["image"].to(course.model_device(model)))
    feats = {t: model.decoders[t].features(model.aspp[t](features), skip) for t in model.tasks}
    maps = {}
    for t in model.tasks:
        for s, gate in model.distill[t].items():
            maps[f"gate {s}→{t}\n(mean attention)"] = gate.attention(feats[s])[0].mean(0).cpu()
            maps[f"message {s}→{t}\n(norm)"] = gate(feats[s])[0].norm(dim=0).cpu()
fig, axes = plt.subplots(1, 1 + len(maps), figsize=(2.2 * (1 + len(maps)), 1.5), dpi=70)
axes[0].imshow(sample["image"][0].permute(1, 2, 0).numpy())
axes[0].set_title("image", fontsize=7)
for ax, (title, m) in zip(axes[1:], maps.items()):
    im = ax.imshow(m.numpy(), cmap="viridis")
    ax.set_title(title, fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.03)
for ax in axes:
    ax.set_axis_off()
plt.tight_layout()
plt.show()

# %% [markdown]
# At initialisation every gate is 0.5 everywhere; after training, structure in the attention maps (object
# outlines, the horizon, near versus far regions) shows the gate choosing where the other task's features are
# useful. With a few CPU epochs the maps are only beginning to form; the lesson and paper presets make them clearer.
#
# ## 8 · Results so far
#
# The course table collects every earlier notebook's `metrics.json` (same preset). The DLAD course's reference
# scores come from the paper preset (MiniScapes, ResNet-34, ImageNet, 16 epochs) and are **references, not
# results of this kit**: distillation 67.3 ± 4 vs branched 65.3 ± 4 grader points.

# %%
runs = {name: {**r.summary(), "train_images": len(splits["train"]), "epochs": setup.schedule["epochs"],
               "aux_weight": float(name.removeprefix("distill-aux"))} for name, r in results.items()}
gains_records = gains.reset_index().to_dict(orient="records") if len(gains) else None
write_notebook_results(OUT_DIR, "05_distillation", PRESET, runs,
                       extra={"parameters_full_size": full_counts["total"], "gate_relative_error": gate_error,
                              "forward_relative_error": forward_error, "gains_vs_branched": gains_records})
print_course_table(OUT_DIR, PRESET, ("semseg/miou", "depth/abs_err", "depth/si_log_rmse", "grader_score", "delta_m",
                                     "parameters_M", "train_images", "epochs"), digits=3)
print(f"wrote {OUT_DIR}/metrics.json")

# %%
course.deeplab.print_references()  # the DLAD course's paper-preset numbers
