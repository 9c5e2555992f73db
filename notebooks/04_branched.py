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
# # 04 · Branched decoders: where should the tasks part ways?
#
# **Learning goals.** After this notebook you can
# 1. describe hard parameter sharing at different depths — a joint decoder (tasks share everything up to the last
#    1×1 conv) versus branched decoders (tasks share only the encoder) — and write both as equations;
# 2. explain negative transfer through the gradients the tasks send into the shared layers, and measure it;
# 3. count where the parameters of each design live (ResNet-34, 19 classes + depth: 26.72 M joint vs 32.14 M
#    branched) and derive the difference by hand;
# 4. train joint, branched and single-task models through the Trainer and compare them with the multi-task score
#    $\Delta_m$ and on a parameters-versus-quality plot.
#
# Notebooks 01–03 built the **joint** DeepLabV3+: one encoder, one ASPP, one decoder whose last 1×1 convolution
# outputs $19 + 1$ channels, split into semantic logits and depth. Here the tasks get their own ASPP and decoder.

# %% tags=["parameters"]
import os

PRESET = os.environ.get("MTLKIT_PRESET", "smoke")  # unit | smoke | lesson | paper
DEVICE = "auto"
SEED = 0
DATA = "auto"  # "auto": the preset's dataset (synthetic-city; the paper preset uses the real MiniScapes data)
OUT_DIR = "../runs/notebooks/04_branched"
EPOCHS = None  # None: the preset's study schedule (smoke: 2 epochs; lesson and paper: their full schedules)
TRAIN_IMAGES = None  # None: the preset's study schedule (smoke: the first 64 of the 192 training images)
PRETRAINED = None  # ImageNet initialisation of the encoder; None -> the preset's (paper: True, needs the HF hub)
MAX_STEPS = None  # a dry run: stop each training epoch and evaluation after this many batches (None: whole epochs)
SINGLE_TASK_BASELINES = True  # train one deeplab-single per task (the Δm baselines): two more trainings
N_SHOW = 2  # test images in the prediction figure

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn as nn
import torch.nn.functional as F

from mtlkit import course, viz
from mtlkit.course import REFERENCE_RESULTS, delta_m_or_nan, print_course_table, relative_error, write_notebook_results
from mtlkit.data import collate
from mtlkit.models import build, count_parameters
from mtlkit.models.blocks import ASPP, DeepLabV3PlusDecoder
from mtlkit.models.encoders import create_encoder
from mtlkit.train import seed_everything

sns.set_theme(style="whitegrid", context="notebook")

# schedule, data (train/val cut to the study's images), tasks, model and Trainer options: one call for 02-05
setup = course.deeplab.setup(PRESET, data=DATA, seed=SEED, device=DEVICE, out_dir=OUT_DIR, epochs=EPOCHS,
                             train_images=TRAIN_IMAGES, pretrained=PRETRAINED, max_steps=MAX_STEPS)
tasks, task_channels = setup.tasks, setup.task_channels  # {"semseg": Task, "depth": Task}, {"semseg": 19, "depth": 1}

# The smoke preset shrinks the model (ResNet-18, narrow ASPP/decoder) and follows the preset's short study
# schedule: four trainings (joint, branched and two single-task baselines) of 2 epochs on the first 64 training
# images, validated on the first 32 validation images. Every run here sees the same images and steps, so the
# comparison is fair (notebook 01 trained longer, on 96 images).
splits, model_options = setup.splits, setup.model_options
print(setup.describe())

# %% [markdown]
# ## 1 · Hard parameter sharing at two depths
#
# Write the encoder as $f_\theta$ (ResNet), and the "head" that turns its features into a prediction as $g$
# (ASPP + DeepLabV3+ decoder). The **joint** model shares everything but the last 1×1 convolution $W_t$:
# $$\hat y_t = W_t\, g_\phi\big(f_\theta(x)\big), \qquad t \in \{\text{semseg}, \text{depth}\}.$$
# The **branched** model shares only the encoder; each task has its own head $g_{\phi_t}$:
# $$\hat y_t = g_{\phi_t}\big(f_\theta(x)\big).$$
# Both are trained on the same weighted loss (the course uses $w_t = 0.5$):
# $$\mathcal L(\theta, \phi) = \sum_t w_t\, \mathcal L_t(\hat y_t, y_t), \qquad
#   \nabla_\theta \mathcal L = \sum_t w_t \nabla_\theta \mathcal L_t .$$
# The shared parameters receive the **sum** of the tasks' gradients. When the task gradients point in similar
# directions (cosine > 0) each task helps the other learn shared features; when they conflict (cosine < 0) a step
# that lowers one loss raises the other — **negative transfer**. Branching moves the point where the sum happens
# from the last layer down to the encoder's output: the decoders no longer compromise, at the price of one more ASPP
# and decoder per task. Single-task models (no sharing at all) are the reference of the multi-task score
# $$\Delta_m = \frac{100\%}{T}\sum_t (-1)^{l_t}\,\frac{M_{\mathrm{mt},t} - M_{\mathrm{st},t}}{M_{\mathrm{st},t}},$$
# ($l_t = 1$ when lower is better): $\Delta_m > 0$ means the multi-task model beats the task-specialists on average.
#
# ## 2 · The branched forward, written out
#
# The module below holds the library's building blocks — an encoder, and per task an `ASPP` and a
# `DeepLabV3PlusDecoder` — and writes out how they connect. Loading the library model's `state_dict` into it
# (strictly: every name and shape must match) and comparing outputs shows that this *is* `deeplab-branched`.

# %%
class BranchedDeepLab(nn.Module):
    """Shared encoder f, one ASPP + DeepLabV3+ decoder g_t per task: y_t = g_t(f(x)).

    Args:
        encoder: returns (skip [B, C_skip, H/4, W/4], features [B, C, H/s, W/s]).
        aspp: task -> ASPP (C -> A channels).
        decoders: task -> DeepLabV3PlusDecoder (A channels + skip -> C_t outputs).
    """

    def __init__(self, encoder: nn.Module, aspp: nn.ModuleDict, decoders: nn.ModuleDict) -> None:
        super().__init__()
        self.encoder, self.aspp, self.decoders = encoder, aspp, decoders

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        skip, features = self.encoder(images)  # [B,64,H/4,W/4], [B,512,H/16,W/16]: computed once, shared
        out = {}
        for task, dec in self.decoders.items():
            context = self.aspp[task](features)  # [B,A,H/16,W/16]: multi-scale context, this task's own
            context = F.interpolate(context, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            fused = dec.fuse(torch.cat([context, dec.skip(skip)], dim=1))  # [B,D,H/4,W/4]: + projected skip
            logits = dec.classifier(fused)  # [B,C_t,H/4,W/4]
            out[task] = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return out


def make_branched(task_channels: dict, encoder: str, aspp_channels: int, skip_channels: int,
                  decoder_channels: int, **_) -> BranchedDeepLab:
    enc = create_encoder(encoder)  # output stride 16 (the default): ASPP rates 6/12/18
    aspp = nn.ModuleDict({t: ASPP(enc.channels[1], aspp_channels, (6, 12, 18)) for t in task_channels})
    decoders = nn.ModuleDict({t: DeepLabV3PlusDecoder(aspp_channels, enc.channels[0], c, skip_channels,
                                                      decoder_channels) for t, c in task_channels.items()})
    return BranchedDeepLab(enc, aspp, decoders)


seed_everything(SEED)
library_model = build("deeplab-branched", task_channels, **{**model_options, "pretrained": False}).eval()
ours = make_branched(task_channels, **model_options).eval()
ours.load_state_dict(library_model.state_dict())  # strict: raises if any name or shape differed
x = torch.rand(2, 3, *splits["train"].image_size)
with torch.no_grad():
    expected, got = library_model(x), ours(x)
branched_error = max(relative_error(got[t], expected[t]) for t in task_channels)
print(f"relative error: {branched_error:.1e}")

# %%
# NBVAL_CHECK_OUTPUT
assert branched_error < 1e-6
print(f"relative error < 1e-6: {branched_error < 1e-6}")
print("output shapes:", {t: tuple(v.shape) for t, v in got.items()})

# %% [markdown]
# ## 3 · Where the parameters live (full size)
#
# The course model: ResNet-34, output stride 16, ASPP and decoder 256 channels wide, 48-channel skip,
# 19 classes + depth. (Nothing is run here, so the full-size models cost only their construction.)

# %%
# NBVAL_CHECK_OUTPUT
full_tasks = {"semseg": 19, "depth": 1}
full = {name: build(f"deeplab-{name}", full_tasks, encoder="resnet34") for name in ("joint", "branched")}
full_counts = {name: count_parameters(m) for name, m in full.items()}
ref = REFERENCE_RESULTS["DLAD course: parameters with ResNet-34, 19 classes + depth (millions)"]
for name, counts in full_counts.items():
    print(f"{name:9s} {counts['total']:>12,d} parameters = {counts['total'] / 1e6:.2f} M "
          f"(DLAD reference {ref[name]:.2f} M)")
    for component, n in counts.items():
        if component != "total":
            print(f"    {component:18s} {n:>12,d}")

# %% [markdown]
# The difference is one more ASPP and one more decoder body (the 1×1 classifiers only move: 20 output channels in
# one conv, or 19 + 1 in two). Counting by hand, with bias-free convolutions before every norm layer
# (a norm has 2 parameters per channel):
# * ASPP 512 → 256: a 1×1 branch, three 3×3 atrous branches, an image-pooling 1×1 branch, a 1×1 projection of the
#   $5 \cdot 256$ concatenated channels;
# * decoder body: the 1×1 skip projection 64 → 48 and two 3×3 convolutions $(256 + 48) \to 256 \to 256$.

# %%
# NBVAL_CHECK_OUTPUT
def conv_norm(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + 2 * c_out


aspp_by_hand = (conv_norm(512, 256, 1) + 3 * conv_norm(512, 256, 3)  # 1x1 and atrous branches
                + conv_norm(512, 256, 1) + conv_norm(5 * 256, 256, 1))  # image pooling, projection
decoder_body_by_hand = conv_norm(64, 48, 1) + conv_norm(256 + 48, 256, 3) + conv_norm(256, 256, 3)
difference = full_counts["branched"]["total"] - full_counts["joint"]["total"]
print(f"branched - joint = {difference:,d}")
print(f"one ASPP {aspp_by_hand:,d} + one decoder body {decoder_body_by_hand:,d} = "
      f"{aspp_by_hand + decoder_body_by_hand:,d}: {difference == aspp_by_hand + decoder_body_by_hand}")

# %%
def component_kind(name: str) -> str:
    return "encoder" if name == "encoder" else "ASPP" if name.startswith("aspp") else "decoder"


rows = [{"model": model, "component": comp, "kind": component_kind(comp), "M": n / 1e6}
        for model, counts in full_counts.items() for comp, n in counts.items() if comp != "total"]
breakdown = pd.DataFrame(rows)
fig, ax = plt.subplots(figsize=(7, 2.4), dpi=75)
colours = {"encoder": "tab:gray", "ASPP": "tab:blue", "decoder": "tab:orange"}
for y, (_, group) in enumerate(breakdown.groupby("model", sort=False)):
    left = 0.0
    for _, r in group.iterrows():
        ax.barh(y, r["M"], left=left, color=colours[r["kind"]], edgecolor="white")
        if r["M"] > 3.0:  # label the wide segments (the per-task ones by task name)
            ax.text(left + r["M"] / 2, y, r["component"].split(".")[-1], ha="center", va="center", fontsize=7,
                    color="white")
        left += r["M"]
    ax.text(left + 0.3, y, f"{left:.2f} M", va="center", fontsize=8)
ax.set_yticks(range(len(full_counts)), list(full_counts))
ax.set(xlabel="parameters (millions), ResNet-34, 19 classes + depth", xlim=(0, 37))
ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()], labels=list(colours),
          loc="lower right", fontsize=7)
plt.show()
del full  # free the full-size models

# %% [markdown]
# The encoder (21.3 M) dominates both models; branching adds about 20 % for a second head. With ResNet-50 (whose
# last features have 2048 channels) each extra ASPP costs four times as much, and with many tasks the heads
# outgrow the encoder — one reason later notebooks look for cheaper ways to let tasks differ.
#
# ## 4 · Training: joint, branched and the single-task baselines
#
# The same schedule for every run (the preset's; see the first cell), the course's loss weights 0.5/0.5 for the
# multi-task models, weight 1 for a single-task model (with Adam a constant factor on a loss barely changes the
# steps). `course.run` reuses a finished run in `OUT_DIR` with the same settings, so re-running this notebook
# shows the results at once; delete the run's folder to retrain.

# %%
results = {name: course.run(setup, name, f"deeplab-{name}") for name in ("joint", "branched")}
if SINGLE_TASK_BASELINES:  # one network per task, its loss at weight 1
    for task in task_channels:
        results[f"single-{task}"] = course.run(setup, f"single-{task}", "deeplab-single", task,
                                               loss_weights={task: 1.0})
models, metrics = {name: r.model for name, r in results.items()}, {name: r.metrics for name, r in results.items()}

# %% [markdown]
# ## 5 · Evaluation
#
# The Trainer selected each run's best epoch on the validation set and evaluated it once on the test set. One row
# per run (`summarize`); a single-task model only has its own task's columns.

# %%
summary = pd.DataFrame({name: r.summary() for name, r in results.items()}).T
columns = [c for c in ("semseg/miou", "semseg/pixel_acc", "depth/abs_err", "depth/si_log_rmse", "grader_score",
                       "parameters_M", "train_seconds") if c in summary.columns]
print(summary[columns].round(3).to_string())

# %%
test = {name: m["test"] for name, m in metrics.items()}
deltas = {}
if all(f"single-{t}" in test for t in task_channels):
    single = {t: test[f"single-{t}"][t] for t in task_channels}
    for name in ("joint", "branched"):
        deltas[name] = {"survey": delta_m_or_nan(test[name], single, f"{name} Δm", tasks=tasks),
                        "libmtl": delta_m_or_nan(test[name], single, f"{name} Δm (LibMTL form)", form="libmtl",
                                                 tasks=list(tasks))}
        per_task = ", ".join(f"{t} {tasks[t].delta_metric} {test[name][t][tasks[t].delta_metric]:.3f} "
                             f"(single {single[t][tasks[t].delta_metric]:.3f})" for t in tasks)
        print(f"{name:9s} Δm = {deltas[name]['survey']:+.1f}% (LibMTL form {deltas[name]['libmtl']:+.1f}%): "
              f"{per_task}")
else:
    print("no single-task baselines (SINGLE_TASK_BASELINES = False): Δm needs them")

# %% [markdown]
# With a few epochs on a CPU the differences are small and noisy (one seed; the paper preset's numbers come from
# 16 epochs at 256 px, and seed-to-seed spread there is several grader points). What to look for: does giving each
# task its own decoder help the task that suffered in the joint model, and what did those parameters buy?
#
# **Parameters versus quality.** Two single-task models together hold two encoders; the joint model is the
# smallest; branched sits in between. On the left, each model's Δm (the single-task pair is 0 by definition);
# on the right, the DLAD grader score $\max(\text{mIoU}-50,0)+\max(50-\text{SI-log},0)$ (0 until the
# models are good enough — then the mIoU and SI-log columns above are the ones to read).

# %%
points = []
for name in ("joint", "branched"):
    points.append({"model": name, "parameters (M)": summary.loc[name, "parameters_M"],
                   "Δm (%)": deltas.get(name, {}).get("survey", np.nan),
                   "grader score": summary.loc[name].get("grader_score", np.nan)})
if deltas:
    pair = sum(summary.loc[f"single-{t}", "parameters_M"] for t in task_channels)
    points.append({"model": "single-task pair", "parameters (M)": pair, "Δm (%)": 0.0, "grader score": np.nan})
points = pd.DataFrame(points)
fig, axes = plt.subplots(1, 2, figsize=(9, 3), dpi=75)
for ax, metric in zip(axes, ("Δm (%)", "grader score")):
    sns.scatterplot(data=points, x="parameters (M)", y=metric, hue="model", s=80, ax=ax, legend=ax is axes[0])
    ax.set_title(f"{metric} vs parameters ({PRESET} model size)")
axes[0].axhline(0, color="gray", lw=0.8, ls="--")
plt.tight_layout()
plt.show()

# %% [markdown]
# **Predictions.** Test images, the ground truth and each model's prediction. Predicted depth is drawn on its own
# colour scale: after a few smoke-preset epochs its range is still far off (the depth errors above say by how much),
# and on the ground truth's scale it would be one flat colour — the layout shows what has been learned so far.

# %%
test_set = splits["test"]
batch = collate([test_set[i] for i in range(min(N_SHOW, len(test_set)))])
shown = [n for n in ("joint", "branched", "single-semseg", "single-depth") if n in models]
preds = {n: course.predict(models[n], batch["image"]) for n in shown}  # on each model's device
info = test_set.task_info
cols = ["image", "semseg"] + [f"{n}\nsemseg" for n in shown if "semseg" in preds[n]] + ["depth"] + \
       [f"{n}\ndepth" for n in shown if "depth" in preds[n]]
fig, axes = plt.subplots(len(batch["image"]), len(cols), figsize=(1.9 * len(cols), 1.2 * len(batch["image"])),
                         dpi=70, squeeze=False)
for row in range(len(batch["image"])):
    panels = [(batch["image"][row].permute(1, 2, 0).numpy(), {})]
    panels.append(viz.label_to_rgb("semseg", batch["semseg"][row], info["semseg"]))
    panels += [viz.label_to_rgb("semseg", preds[n]["semseg"][row].argmax(0), info["semseg"])
               for n in shown if "semseg" in preds[n]]
    gt_depth, kw = viz.label_to_rgb("depth", batch["depth"][row])
    panels.append((gt_depth, kw))
    panels += [(preds[n]["depth"][row, 0].numpy(), kw) for n in shown if "depth" in preds[n]]
    course.draw_row(axes[row], [(title, img, kw) for (img, kw), title in zip(panels, cols)], row == 0, fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6 · Negative transfer, measured
#
# Where the tasks share parameters, their gradients add up. The cosine between $\nabla \mathcal L_{\text{semseg}}$
# and $\nabla \mathcal L_{\text{depth}}$ on a shared block says whether they pull together (> 0) or apart (< 0).
# For the trained models, on two validation batches: the encoder's stages (shared by both designs) and, for the
# joint model, its shared ASPP + decoder (the classifier is left out: its rows are per task, so they never conflict).

# %%
def gradient_cosines(model: nn.Module, batch: dict, groups: dict[str, str | tuple]) -> dict[str, float]:
    """cos(grad L_semseg, grad L_depth) over the parameters whose names start with each group's prefix(es)."""
    out = model(batch["image"].to(course.model_device(model)))  # the labels follow the predictions' device
    grads = {}
    for task in ("semseg", "depth"):
        model.zero_grad()
        tasks[task].loss(out[task], batch).backward(retain_graph=True)
        grads[task] = {n: p.grad.flatten().clone() for n, p in model.named_parameters() if p.grad is not None}
    result = {}
    for group, prefix in groups.items():
        names = [n for n in grads["semseg"] if n.startswith(prefix) and "classifier" not in n]
        g_seg = torch.cat([grads["semseg"][n] for n in names])
        g_depth = torch.cat([grads["depth"][n] for n in names])
        result[group] = float(F.cosine_similarity(g_seg, g_depth, dim=0))
    model.zero_grad()
    return result


val_set = splits["val"]
stages = {f"encoder {s}": f"encoder.body.{s}" for s in ("layer1", "layer2", "layer3", "layer4")}
cos_rows = []
if all(t in task_channels for t in ("semseg", "depth")):
    for b in range(min(2, -(-len(val_set) // 8))):  # two batches of 8 (fewer on a tiny split)
        vbatch = collate([val_set[i] for i in range(8 * b, min(8 * b + 8, len(val_set)))])
        for name in ("joint", "branched"):
            groups = {**stages, **({"joint ASPP + decoder": ("aspp", "decoder")} if name == "joint" else {})}
            for group, value in gradient_cosines(models[name], vbatch, groups).items():
                cos_rows.append({"model": name, "shared block": group, "cosine": value})
cosines = pd.DataFrame(cos_rows)
if len(cosines):
    fig, ax = plt.subplots(figsize=(7, 2.6), dpi=75)
    sns.barplot(data=cosines, x="shared block", y="cosine", hue="model", errorbar=None, ax=ax)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(ylabel="cos(∇L_semseg, ∇L_depth)", xlabel="")
    plt.show()
    print(cosines.groupby(["model", "shared block"], sort=False)["cosine"].mean().round(3).unstack(0).to_string())

# %% [markdown]
# Cosines near zero mean the tasks mostly use different directions of the shared parameters (neither helping nor
# hurting); clearly negative values are the conflicts that gradient-surgery methods such as PCGrad (a later
# notebook) remove. Compare the encoder rows of the two designs: in the joint model the two tasks' gradients reach
# the encoder already mixed by the shared decoder; in the branched model each arrives through its own decoder.
#
# ## 7 · Results so far
#
# The course table collects every earlier notebook's `metrics.json` (same preset). Smoke-preset numbers are for
# checking that the pipeline learns, not for ranking designs; the DLAD course's reference scores below come from
# the paper preset (MiniScapes, ResNet-34, ImageNet, 16 epochs) and are **references, not results of this kit**.

# %%
runs = {name: {**r.summary(), "train_images": len(splits["train"]), "epochs": setup.schedule["epochs"]}
        for name, r in results.items()}
for name, d in deltas.items():
    runs[name]["delta_m"] = d["survey"]
write_notebook_results(OUT_DIR, "04_branched", PRESET, runs,
                       extra={"parameters_full_size": {k: v["total"] for k, v in full_counts.items()},
                              "branched_relative_error": branched_error,
                              "gradient_cosines": cosines.to_dict(orient="records")})
print_course_table(OUT_DIR, PRESET, ("semseg/miou", "depth/abs_err", "depth/si_log_rmse", "grader_score", "delta_m",
                                     "parameters_M", "train_images", "epochs"), digits=3)
print(f"wrote {OUT_DIR}/metrics.json")

# %%
course.deeplab.print_references()  # the DLAD course's paper-preset numbers
