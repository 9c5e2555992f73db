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
# # 08 · Unified perceptual parsing: UPerNet's multi-head network, with ULSAM attention
#
# **Learning goals.** After this notebook you can
# 1. explain *unified perceptual parsing* (Xiao et al., ECCV 2018): one network that reads a scene at several
#    levels at once — scene class, objects, their parts, materials, textures — and how UPerNet's pyramid (PPM + FPN)
#    gives every head the resolution and context it needs;
# 2. train on **multi-source** data, where each image labels only some tasks (ADE-like images: scene, object, part;
#    OpenSurfaces-like: material; DTD-like: texture; PASCAL-Part-like: object, part), and see that a task an image
#    does not label contributes neither loss nor metric;
# 3. weigh the **context-aware head** (the object head's features fed into the material head): what it costs in
#    parameters and what it does to object vs material;
# 4. write out **ULSAM** (Saini et al., WACV 2020), an attention module with $5C + 3g$ parameters, check it against
#    the library, draw its attention maps over images, and compare UPerNet with three ways of placing it.
#
# Notebooks 01–05 had two tasks labelled on every image. Here five tasks come from four sources that never label
# everything, as in the Broden+ data UPerNet was trained on.

# %% tags=["parameters"]
import os

PRESET = os.environ.get("MTLKIT_PRESET", "smoke")  # unit | smoke | lesson | paper
DEVICE = "auto"
SEED = 0
DATA = "auto"  # "auto": the preset's dataset (synthetic-broden; the paper preset uses the real broden data)
OUT_DIR = "../runs/notebooks/08_upernet_ulsam"
EPOCHS = None  # None: the preset's schedule (smoke 1 epoch, lesson 8, paper 20)
TRAIN_IMAGES = None  # None: the preset's choice (smoke: the first 96 of the 192 training images; others: all)
VAL_IMAGES = None  # None: the preset's choice (smoke: the first 32 of the 64 validation images; others: all)
ULSAM_VARIANTS = ("fused", "pairs", "adjacent")  # which ULSAM placements to train (C(1), C(2), C(3))
ULSAM_GROUPS = None  # None: the preset's g (4)
PRETRAINED = None  # ImageNet initialisation of the encoder; None -> the preset's (paper: True, needs the HF hub)
MAX_STEPS = None  # a dry run: stop each training epoch and evaluation after this many batches (None: whole epochs)
N_SHOW = 2  # test images in the figures

# %%
import copy
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn as nn
import torch.nn.functional as F

from mtlkit import viz
from mtlkit import course
from mtlkit.course import delta_m_or_nan, print_course_table, relative_error, write_notebook_results
from mtlkit.course.broden import UPERNET_REFERENCE
from mtlkit.data import collate
from mtlkit.models import build, count_parameters
from mtlkit.models.ulsam import ULSAM
from mtlkit.train import seed_everything

sns.set_theme(style="whitegrid", context="notebook")

# schedule, data (broden: a held-out part of train selects the epoch, val is the test split), tasks (parts trained
# per owning object), model options (with the part owners the data gives) and Trainer options: one call
setup = course.broden.setup(PRESET, data=DATA, seed=SEED, device=DEVICE, out_dir=OUT_DIR, pretrained=PRETRAINED,
                            max_steps=MAX_STEPS, epochs=EPOCHS, train_images=TRAIN_IMAGES, val_images=VAL_IMAGES,
                            ulsam_groups=ULSAM_GROUPS)
out_dir = setup.out_dir  # OUT_DIR, created
schedule, splits, tasks, task_channels = setup.schedule, setup.splits, setup.tasks, setup.task_channels
info = splits["train"].task_info
model_options = setup.model_options
part_owners = model_options["part_owners"]  # the object classes owning each part class (None: names do not say)

# What the preset decides (smoke: tiny data and models, one epoch each; enough to see the pipeline run on a CPU):
print(setup.describe().split("\nmodel options")[0])  # data, splits and tasks (the owners list is long)
print(f"model: UPerNet on {model_options['encoder']} (ImageNet: {model_options['pretrained']}), F = "
      f"{model_options['fpn_channels']}, PPM branches {model_options['ppm_channels']}, ULSAM groups g = "
      f"{model_options['ulsam_groups']}; parts per owning object: {part_owners is not None}")
print(f"schedule: {schedule['epochs']} epoch(s), batch {schedule['batch_size']}, {schedule['optimizer']} lr "
      f"{schedule['lr']} ({schedule['scheduler'] or 'constant'}), loss weights {setup.loss_weights}")
print("runs: upernet, upernet+context, " + ", ".join(f"ulsam-{v}" for v in ULSAM_VARIANTS))

# %% [markdown]
# ## 1 · Unified perceptual parsing
#
# UPerNet puts a Feature Pyramid Network on a ResNet and a Pyramid Pooling Module on its last stage, then gives each
# level of perception the map that suits it:
#
# * encoder levels $C_2 \dots C_5$ (strides 4, 8, 16, 32);
# * **PPM** on $C_5$: for $s \in \{1, 2, 3, 6\}$, adaptive average pooling to $s \times s$, upsampling, 1×1
#   conv-BN-ReLU; concatenated with $C_5$ and a 3×3 conv-BN-ReLU gives $P_5$ — global context for the scene;
# * **FPN** top-down: $f_i = \mathrm{lat}_i(C_i) + \mathrm{up}(f_{i+1})$, $P_i = \mathrm{conv}_{3\times3}(f_i)$ for
#   $i = 4, 3, 2$;
# * **fusion at ¼**: $P_\text{fuse} = \mathrm{conv}_{3\times3}\big([P_2, \mathrm{up}(P_3), \mathrm{up}(P_4),
#   \mathrm{up}(P_5)]\big)$.
#
# | head (3×3 conv-BN-ReLU + 1×1) | reads | output |
# |---|---|---|
# | scene | $P_5$, globally average-pooled | $[B, C_\text{scene}]$ |
# | object (`semseg`) | $P_\text{fuse}$ | $[B, C_\text{obj}, H, W]$ |
# | part (`parts`) | $P_\text{fuse}$, read per owning object | $[B, C_\text{part}, H, W]$ |
# | material | $P_2$ (fine detail, little semantics) | $[B, C_\text{mat}, H, W]$ |
# | texture | $P_\text{fuse}$, pooled (trained on DTD-like close-ups) | $[B, C_\text{tex}]$ |
#
# **Parts per owning object.** A part class is an (object, part) pair ("chair leg", "table leg"); object $o$ may
# show only the classes $\mathcal P(o)$: its own parts and "none" (just "none" for an object without parts). As in
# the public UPerNet code, the part loss is a softmax over $\mathcal P(o)$ on the pixels $V_o$ whose
# **ground-truth** object $o$ has parts, averaged per object and summed over the objects:
# $$\mathcal L_\text{part} = \sum_{o} \frac{1}{|V_o|} \sum_{i \in V_o}
#   -\log \frac{e^{z_{i, y_i}}}{\sum_{c \in \mathcal P(o)} e^{z_{i,c}}}$$
# (pixels of objects without parts add nothing). At inference a pixel's part is read from its **predicted** object
# $\hat o_i = \arg\max_o p_i(o)$: $\hat y_i = \arg\max_{c \in \mathcal P(\hat o_i)} z_{i,c}$, so it is "none"
# wherever the predicted object has no parts. The gate is not applied in training: gated by an object head that
# has barely started, every part would stay below "none" and the part head would learn nothing else.
#
# **Multi-source training.** No image labels all five tasks. With $V_t$ the labelled images (or pixels) of task $t$
# in a batch, the loss is
# $$\mathcal L = \sum_t w_t\, \frac{1}{|V_t|} \sum_{i \in V_t} \ell_t(\hat y_{t,i}, y_{t,i}),
#   \qquad w = (\text{object } 1,\ \text{part } 0.5,\ \text{scene } 0.25,\ \text{material } 1,\ \text{texture } 1),$$
# and a task with $V_t = \varnothing$ contributes 0 (and no gradient). Metrics likewise count labelled images only.
# Which source labels which task:

# %%
n_look = min(len(splits["train"]), 500)  # enough images to see every source
records = [splits["train"][i]["meta"] for i in range(n_look)]
sources = sorted({m["source"] for m in records})
labels = pd.DataFrame([[np.mean([t in m["tasks"] for m in records if m["source"] == s]) for t in task_channels]
                       for s in sources], index=sources, columns=list(task_channels))
counts = pd.Series([sum(m["source"] == s for m in records) for s in sources], index=sources)
labels.index = [f"{s} ({counts[s]} images)" for s in sources]
fig, ax = plt.subplots(figsize=(5.5, 2.4), dpi=75)
sns.heatmap(labels, annot=True, fmt=".0%", cmap="Greens", vmin=0, vmax=1, cbar=False, ax=ax)
ax.set_title(f"fraction of each source's images labelling a task (first {n_look} training images)", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# A training batch mixes sources, so each task is supervised by a different subset of its images. `Task.labelled`
# reads the mask from the batch's `meta`, and `Task.target` fills the unlabelled images with the ignore value −1.

# %%
batch = collate([splits["train"][i] for i in range(min(8, len(splits["train"])))])
mask = pd.DataFrame({t: tasks[t].labelled(batch).numpy() for t in task_channels},
                    index=[f"{i}: {m['source']}" for i, m in enumerate(batch["meta"])])
fig, axes = plt.subplots(1, len(batch["image"]), figsize=(1.2 * len(batch["image"]), 1.5), dpi=60)
for i, ax in enumerate(np.atleast_1d(axes)):
    ax.imshow(batch["image"][i].permute(1, 2, 0).numpy())
    ax.set_title(f"{i}: {batch['meta'][i]['source']}", fontsize=8)
    ax.set_axis_off()
plt.tight_layout()
plt.show()
fig, ax = plt.subplots(figsize=(4.5, 2.6), dpi=75)
sns.heatmap(mask.astype(int), annot=True, cmap="Greens", vmin=0, vmax=1, cbar=False, ax=ax)
ax.set_title("the batch's label mask (1 = labelled)", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# The loss of an untrained network on this batch: tasks without a labelled image give an exact 0 that is still in
# the graph (so one `backward` works for any batch) but sends no gradient to its head.

# %%
seed_everything(SEED)
probe = build("upernet", task_channels, **{**model_options, "pretrained": False})  # part_owners included
preds = probe(batch["image"])
losses = {t: tasks[t].loss(preds[t], batch) for t in task_channels}
sum(setup.loss_weights[t] * v for t, v in losses.items()).backward()  # UPerNet's weights (UPERNET_LOSS_WEIGHTS)
print(pd.DataFrame({"labelled images": mask.sum(), "loss": {t: v.item() for t, v in losses.items()},
                    "|grad| of its classifier": {t: float(probe.heads[t].classifier.weight.grad.abs().sum())
                                                 for t in task_channels}}).round(4).to_string())
del probe, preds, losses

# %% [markdown]
# ## 2 · ULSAM, written out
#
# ULSAM (Ultra-Lightweight Subspace Attention) splits the $C$ channels of a feature map into $g$ groups of
# $c = C/g$ and learns **one spatial attention map per group**. For group $k$ with features $x_k \in
# \mathbb R^{c \times H \times W}$:
# $$a_k = \mathrm{ReLU}\Big(\mathrm{BN}\big(\mathrm{PW}_k\big(\mathrm{maxpool}_{3\times3}(
#     \mathrm{ReLU}(\mathrm{BN}(\mathrm{DW}_k(x_k))))\big)\big)\Big) \in \mathbb R^{1 \times H \times W},\qquad
#   A_k = \mathrm{softmax}_{H \times W}(a_k),\qquad \hat x_k = x_k \odot A_k + x_k,$$
# with DW a depthwise 1×1 conv (a scale and a bias per channel) and PW a pointwise 1×1 conv from $c$ channels to one.
# $A_k$ sums to 1 over the positions, so $x_k \odot A_k$ is small and the residual keeps $x_k$: the module
# *re-weights* positions instead of replacing features. Parameters per group: DW $2c$, BN $2c$, PW $c + 1$, BN 2,
# i.e. $5c + 3$, and **$5C + 3g$** in all — a 512-channel ULSAM with $g = 4$ has 2,572.
#
# Below, ULSAM group by group with plain tensor operations. Its parameters are held under the same names as the
# library's `ULSAM` (which computes all groups at once with grouped convolutions), so the library's `state_dict`
# loads into it strictly; then both must give the same output, in eval mode (running statistics) and in train mode
# (batch statistics).

# %%
class SubspaceAttention(nn.Module):
    """ULSAM, one group at a time. Shapes: x [B, C, H, W] -> [B, C, H, W]; maps [B, g, H, W] after a forward."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        assert channels % groups == 0, "each group gets C / g channels"
        self.channels, self.groups = channels, groups
        self.depthwise = nn.Conv2d(channels, channels, 1, groups=channels)  # per channel: weight, bias
        self.bn_depthwise = nn.BatchNorm2d(channels)
        self.pointwise = nn.Conv2d(channels, groups, 1, groups=groups)  # group k: c weights -> 1 map, 1 bias
        self.bn_pointwise = nn.BatchNorm2d(groups)
        self.maps = None

    def _bn(self, a: torch.Tensor, bn: nn.BatchNorm2d, s: slice) -> torch.Tensor:
        # the group's slice of the BN (in train mode the slices of the running statistics are updated in place)
        return F.batch_norm(a, bn.running_mean[s], bn.running_var[s], bn.weight[s], bn.bias[s], self.training,
                            bn.momentum, bn.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.channels // self.groups
        outputs, maps = [], []
        for k in range(self.groups):
            s = slice(k * c, (k + 1) * c)
            xk = x[:, s]  # [B, c, H, W]
            a = xk * self.depthwise.weight[s].view(1, c, 1, 1) + self.depthwise.bias[s].view(1, c, 1, 1)  # DW 1x1
            a = F.relu(self._bn(a, self.bn_depthwise, s))
            a = F.max_pool2d(a, kernel_size=3, stride=1, padding=1)
            a = (a * self.pointwise.weight[k].view(1, c, 1, 1)).sum(1, keepdim=True) + self.pointwise.bias[k]  # PW
            a = F.relu(self._bn(a, self.bn_pointwise, slice(k, k + 1)))  # [B, 1, H, W]
            attention = torch.softmax(a.flatten(1), dim=1).view_as(a)  # sums to 1 over the H*W positions
            outputs.append(xk * attention + xk)
            maps.append(attention)
        self.maps = torch.cat(maps, dim=1).detach()
        return torch.cat(outputs, dim=1)


C, g = model_options["fpn_channels"], model_options["ulsam_groups"]
torch.manual_seed(SEED)
library_ulsam = ULSAM(C, g)
with torch.no_grad():  # non-trivial affine parameters and running statistics, so that every slice matters
    for p in library_ulsam.parameters():
        p.copy_(torch.randn_like(p))
    for bn in (library_ulsam.bn_depthwise, library_ulsam.bn_pointwise):
        bn.running_mean.copy_(torch.randn_like(bn.running_mean))
        bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
ours_ulsam = SubspaceAttention(C, g)
ours_ulsam.load_state_dict(library_ulsam.state_dict())  # strict: same names and shapes
x = torch.randn(2, C, 16, 16)
errors = {}
for mode in ("eval", "train"):
    lib, mine = copy.deepcopy(library_ulsam).train(mode == "train"), copy.deepcopy(ours_ulsam).train(mode == "train")
    with torch.no_grad():
        errors[mode] = relative_error(mine(x), lib(x))
    errors[f"{mode} maps"] = relative_error(mine.maps, lib.last_attention)
    if mode == "train":  # the in-place updates of the running statistics agree too
        errors["running stats"] = max(relative_error(getattr(mine, n).running_var, getattr(lib, n).running_var)
                                      for n in ("bn_depthwise", "bn_pointwise"))
print("relative errors:", {k: f"{v:.1e}" for k, v in errors.items()})

# %%
# NBVAL_CHECK_OUTPUT
ulsam_error = max(errors.values())
assert ulsam_error < 1e-5
n_ulsam = sum(p.numel() for p in ours_ulsam.parameters())
print(f"our ULSAM matches the library's (relative error < 1e-5): {ulsam_error < 1e-5}")
print(f"parameters of ULSAM(C={C}, g={g}): {n_ulsam} = 5C + 3g = {5 * C + 3 * g}: {n_ulsam == 5 * C + 3 * g}")
print(f"ULSAM(512, 4) has {sum(p.numel() for p in ULSAM(512, 4).parameters()):,d} parameters")

# %% [markdown]
# ## 3 · Where ULSAM goes, and what each model costs
#
# The course compares three placements (`ulsam=`), all inside UPerNet's fusion:
#
# * **C(1) `fused`**: one ULSAM on the fused map $P_\text{fuse}$; the attended map feeds every pixel head
#   (object, part, texture and also material). Scene keeps reading $P_5$.
# * **C(2) `pairs`**: two maps, $P_2 + \mathrm{up}(P_5)$ at ¼ and $P_4 + \mathrm{up}(P_5)$ at 1/16, each through its
#   own ULSAM, upsampled to ¼, concatenated and fused by a 3×3 conv ($2F \to F$) — replacing the 4-level fusion.
# * **C(3) `adjacent`**: $P_2 + \mathrm{up}(P_3)$, $P_3 + \mathrm{up}(P_4)$, $P_4 + \mathrm{up}(P_5)$, each through
#   its own ULSAM, then the same fusion from $3F$ channels.
#
# The **context-aware head** (`context_head=True`) concatenates the object head's pre-classifier features
# ($F$ channels at ¼) with the material head's input, so its first conv reads $2F$ channels.
#
# Parameter counts of the full-size models (ResNet-50, $F = 512$, 512-channel PPM branches; this data's classes),
# built on PyTorch's `meta` device (shapes only: no memory, no initialisation):

# %%
# NBVAL_CHECK_OUTPUT
full_size = {"upernet": {}, "upernet+context": {"context_head": True},
             **{f"ulsam-{v}": {"ulsam": v} for v in ("fused", "pairs", "adjacent")}}
with torch.device("meta"):
    full_counts = {name: count_parameters(build("upernet", task_channels, encoder="resnet50", **opts))
                   for name, opts in full_size.items()}
full_table = pd.DataFrame(full_counts).T
components = ["encoder", "ppm", "fpn", "fusion"] + [f"heads.{t}" for t in task_channels] + ["total"]
print((full_table[components] / 1e6).round(3).to_string())
extra = {n: full_counts[n]["total"] - full_counts["upernet"]["total"] for n in full_counts}
print("vs UPerNet:", {n: f"{d:+,d}" for n, d in extra.items() if n != "upernet"})
assert extra["ulsam-fused"] == 5 * 512 + 3 * 4 and extra["upernet+context"] == 512 * 512 * 9

# %% [markdown]
# C(1) adds exactly one ULSAM (2,572 parameters, 0.003 % of the model). C(2) and C(3) *save* parameters: their
# fusion conv reads 2 or 3 maps instead of 4 (a 3×3 conv from 512 channels costs 2.36 M). The context head costs
# $9F^2$ = 2.36 M in the material head's first conv.
#
# ## 4 · Training
#
# Five models on the same images and steps, with the public code's loss weights: UPerNet, UPerNet with the context
# head, and UPerNet with each ULSAM placement (without the context head, so that each comparison changes one
# thing). The Trainer selects every run's best epoch on the validation split and evaluates it once on the test split.
# `course.run` reuses a finished run in `OUT_DIR` with the same settings; delete the run's folder to retrain.

# %%
run_options = {"upernet": {}, "upernet+context": {"context_head": True},
               **{f"ulsam-{v}": {"ulsam": v} for v in ULSAM_VARIANTS}}
results = {name: course.run(setup, name, "upernet", **options) for name, options in run_options.items()}
models, metrics = {name: r.model for name, r in results.items()}, {name: r.metrics for name, r in results.items()}

# %% [markdown]
# ## 5 · Evaluation: UPerNet and its ULSAM variants
#
# Test-split metrics (percent): scene and texture top-1 accuracy, object (`semseg`), part and material mIoU and
# pixel accuracy, each over the images that label the task only. "Δm vs UPerNet" is the survey's $\Delta_m$ with
# plain UPerNet in place of the single-task baselines (one metric per task: accuracy or mIoU); positive = better.

# %%
test = {name: m["test"] for name, m in metrics.items()}
columns = {"parameters_M": "params (M)", "scene/accuracy": "scene top-1", "semseg/miou": "object mIoU",
           "semseg/pixel_acc": "object PixAcc", "parts/miou": "part mIoU", "parts/pixel_acc": "part PixAcc",
           "material/miou": "material mIoU", "material/pixel_acc": "material PixAcc",
           "texture/accuracy": "texture top-1"}
summary = pd.DataFrame({name: r.summary() for name, r in results.items()}).T
table = summary[[c for c in columns if c in summary.columns]].rename(columns=columns)


# NaN, said why, where a metric of the baseline is 0 or NaN (possible after one smoke epoch)
table["Δm vs UPerNet (%)"] = [delta_m_or_nan(test[n], test["upernet"], f"{n} Δm vs UPerNet", tasks=tasks)
                              for n in table.index]
table["train s"] = summary["train_seconds"]
print(table.round(2).to_string(na_rep="-"))

# %% [markdown]
# **What the part head predicts.** Part mIoU averages over all part classes, "none" included, and "none" covers most
# pixels, so a model that only ever says "none" still gets a high part pixel accuracy. Below, for each model, the test
# pixels predicted as a part (not "none"), how many part classes it predicts, and how many of the true part pixels
# it gets right. A part can only appear where the object head predicts an object that has parts.

# %%
test_set = splits["test"]
unowned = [c for c, o in enumerate(part_owners or [()]) if not o]  # "none" (class 0 when the names do not say)


def part_predictions(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(predicted, true) part class of every part-labelled test pixel, with the model's inference rule, and whether
    every predicted part is a class that the object predicted at its pixel may show."""
    predicted, true, inside = [], [], True
    with torch.no_grad():
        for start in range(0, len(test_set), 16):
            b = collate([test_set[i] for i in range(start, min(start + 16, len(test_set)))])
            y = tasks["parts"].target(b)
            out = course.predict(model, b["image"])  # on the model's device (a GPU in the paper preset), to the CPU
            p = out["parts"].argmax(1)
            if model.part_allowed is not None:  # allowed [O, P]: the classes each object may show
                shown = model.part_allowed.cpu()[out["semseg"].argmax(1)]               # [B, H, W, P]
                inside &= bool(shown.gather(-1, p[..., None]).all())
            predicted.append(p[y >= 0])
            true.append(y[y >= 0])
    return torch.cat(predicted), torch.cat(true), inside


part_stats, parts_inside = {}, {}
for name, model in models.items():
    pred, true, parts_inside[name] = part_predictions(model)
    is_part, was_part = ~torch.isin(pred, torch.tensor(unowned)), ~torch.isin(true, torch.tensor(unowned))
    part_stats[name] = {"pixels predicted as a part (%)": 100 * is_part.float().mean().item(),
                        "part classes predicted": len(set(pred[is_part].tolist())),
                        "true part pixels found (%)": 100 * (pred == true)[was_part].float().mean().item()}
print(pd.DataFrame(part_stats).T.round(1).to_string())
print(f"labels: {100 * was_part.float().mean().item():.1f} % of the part-labelled test pixels are parts, in "
      f"{len(set(true[was_part].tolist()))} classes")

# %%
# NBVAL_CHECK_OUTPUT
print(f"{len(splits['train'])} training images, {len(splits['val'])} validation images, {len(test_set)} test images")
print("parts read from the predicted object's classes:", part_owners is not None)
print("every predicted part is a class of its pixel's predicted object:", all(parts_inside.values()))

# %% [markdown]
# How to read this: in the smoke preset every model sees 12 steps of 8 images, so the numbers say that the pipeline
# runs, not which design is better (the object head, for one, has only begun to find the objects that carry parts,
# so the part head gets few chances to show what it learnt); the lesson preset trains on 2,000 images for 8 epochs
# and the paper preset on Broden at 384 px, which is where the placements can be told apart. Keep in mind what
# ULSAM can do at all: $x \odot A + x = x\,(1 + A)$ with $A \le 1$ re-weights a position by a factor between 1 and
# 2, for 0.003 % more parameters (C(1)) or even fewer (C(2), C(3)).
#
# **The context-aware head's trade-off.** Material is hard from $P_2$ alone: a wooden table and a wooden floor look
# alike at ¼ resolution, and the object head *knows* that this is a table. Feeding its features into the material
# head gives material that context. The price: $9F^2$ parameters, and the material loss now also back-propagates
# into the object head's features, which must serve two tasks — object may lose what material gains.

# %%
pair = ["upernet", "upernet+context"]
compare = table.loc[pair, ["object mIoU", "object PixAcc", "material mIoU", "material PixAcc"]]
long = compare.reset_index(names="model").melt(id_vars="model", var_name="metric", value_name="%")
fig, ax = plt.subplots(figsize=(6, 2.8), dpi=75)
sns.barplot(data=long, x="metric", y="%", hue="model", ax=ax)
ax.set_title(f"context-aware head: object vs material ({PRESET})", fontsize=9)
ax.tick_params(labelsize=8)
plt.tight_layout()
plt.show()
change = compare.loc["upernet+context"] - compare.loc["upernet"]
print("with the context head minus without (points):", change.round(2).to_dict())

# %% [markdown]
# **Predictions.** Test images with their labels (black = not labelled by the image's source, or the sky for
# material) and the predictions of UPerNet with the context head. Every head predicts on every image; the scene and
# texture titles give the predicted class (and the true one where labelled).

# %%
show = [i for i in range(len(test_set)) if "semseg" in test_set[i]["meta"]["tasks"]][:N_SHOW]
show += [i for i in range(len(test_set)) if "material" in test_set[i]["meta"]["tasks"]][:N_SHOW]
batch = collate([test_set[i] for i in show])
pred = course.predict(models["upernet+context"], batch["image"])


def class_name(task: str, index: int) -> str:
    return info[task]["class_names"][index] if index >= 0 else "-"


dense = ["semseg", "parts", "material"]
fig, axes = plt.subplots(len(show), 1 + 2 * len(dense), figsize=(1.6 + 1.1 * 2 * len(dense), 1.75 * len(show)),
                         dpi=72, squeeze=False, gridspec_kw={"width_ratios": [1.6] + [1.1] * (2 * len(dense))})
for i in range(len(show)):
    axes[i, 0].imshow(batch["image"][i].permute(1, 2, 0).numpy())
    title = [f"{batch['meta'][i]['source']} (pred / true)"]
    for t in ("scene", "texture"):
        title.append(f"{t}: {class_name(t, int(pred[t][i].argmax()))} / {class_name(t, int(batch[t][i]))}")
    axes[i, 0].set_title("\n".join(title), fontsize=8)
    for j, t in enumerate(dense):
        for k, (value, what) in enumerate(((tasks[t].target(batch)[i], "label"), (pred[t][i].argmax(0), "pred"))):
            img, kw = viz.label_to_rgb(t, value, info[t])
            axes[i, 1 + 2 * j + k].imshow(img, **kw)
            if i == 0:
                axes[i, 1 + 2 * j + k].set_title(f"{'object' if t == 'semseg' else t}\n{what}", fontsize=8)
for ax in axes.flat:
    ax.set_axis_off()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6 · ULSAM's attention maps
#
# First the trained ULSAM models are checked once more: each library `ULSAM` inside them is replaced by our
# `SubspaceAttention` (its trained weights loaded strictly) and the whole network must give the same outputs (in
# float64: float32 rounding of two orderings of the same arithmetic would blur the comparison of outputs near 0).
# Then our modules' maps $A_k$ are drawn over test images: one map per group, upsampled from ¼ of the input, each
# scaled to its own maximum (a map sums to 1, so a uniform map would be $1/hw$ everywhere).

# %%
def with_our_ulsam(model: nn.Module) -> nn.Module:
    """A copy of a trained UPerNet whose ULSAMs are SubspaceAttention modules with the same weights."""
    ours = copy.deepcopy(model)
    for i, module in enumerate(ours.fusion.attention):
        mine = SubspaceAttention(module.channels, module.groups)
        mine.load_state_dict(module.state_dict())  # strict
        ours.fusion.attention[i] = mine
    return ours.eval()


ulsam_runs = [f"ulsam-{v}" for v in ULSAM_VARIANTS]
ours_models = {n: with_our_ulsam(models[n]) for n in ulsam_runs}
images = batch["image"][:N_SHOW].to(course.model_device(models[ulsam_runs[0]]))
trained_errors = {}
with torch.no_grad():
    for n in ulsam_runs:
        x64 = images.double()
        expected = copy.deepcopy(models[n]).double()(x64)
        got = copy.deepcopy(ours_models[n]).double()(x64)
        trained_errors[n] = max(relative_error(got[t], expected[t]) for t in task_channels)
        ours_models[n](images)  # float32 pass: our modules keep these maps for the figure
print("relative errors:", {n: f"{e:.1e}" for n, e in trained_errors.items()})

# %%
# NBVAL_CHECK_OUTPUT
print("ULSAMs replaced per model:", {n: len(ours_models[n].fusion.attention) for n in ulsam_runs})
print("trained models: our ULSAM gives the library's outputs (relative error < 1e-7):",
      {n: e < 1e-7 for n, e in trained_errors.items()})

# %%
rows = [(i, n) for i in range(len(images)) for n in ulsam_runs]
fig, axes = plt.subplots(len(rows), 1 + g, figsize=(1.05 * (1 + g), 1.1 * len(rows)), dpi=60, squeeze=False)
for r, (i, n) in enumerate(rows):
    maps = ours_models[n].fusion.attention[0].maps[i].cpu()  # [g, H/4, W/4] of the first ULSAM (at 1/4)
    maps = F.interpolate(maps[None], size=images.shape[-2:], mode="bilinear", align_corners=False)[0]
    picture = images[i].permute(1, 2, 0).cpu().numpy()
    axes[r, 0].imshow(picture)
    axes[r, 0].set_title(f"{n}", fontsize=8)
    for k in range(g):
        axes[r, 1 + k].imshow(picture)
        axes[r, 1 + k].imshow((maps[k] / maps[k].max()).numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        if r == 0:
            axes[r, 1 + k].set_title(f"group {k + 1}", fontsize=8)
for ax in axes.flat:
    ax.set_axis_off()
plt.tight_layout()
plt.show()
peak = {n: float(ours_models[n].fusion.attention[0].maps.flatten(2).max(-1).values.mean() *
                 ours_models[n].fusion.attention[0].maps[0, 0].numel()) for n in ulsam_runs}
print("mean peak of a map relative to a uniform map (1 = uniform):", {n: round(v, 2) for n, v in peak.items()})

# %% [markdown]
# For `pairs` and `adjacent` the figure shows the first ULSAM (the map at ¼, $P_2 + \ldots$); their other ULSAMs
# attend coarser maps. Since $x \odot A + x = x\,(1 + A)$ and $A \le 1$, a position is amplified by at most a factor
# of 2, and in practice by much less: with $hw$ positions, a map that singles out a region of $n$ positions gives each
# about $1/n$.
#
# ## 7 · The paper's number
#
# Xiao et al. report UPerNet-50 trained and evaluated on ADE20K alone (150 object classes): 40.44 mIoU, 79.80 %
# pixel accuracy. This is a **reference, not a result of this kit**; it sits beside the kit's object numbers only in
# the paper preset (real Broden data), and even there Broden's object classes are not ADE20K's 150.

# %%
reference = pd.DataFrame(UPERNET_REFERENCE).T
if PRESET == "paper":
    kit = {f"{n} (kit, paper preset, Broden)": {k: summary.loc[n, k] for k in reference.columns}
           for n in ("upernet", "upernet+context")}
    reference = pd.concat([reference, pd.DataFrame(kit).T])
    print("paper reference and this kit's paper-preset results (object = semseg):")
else:
    print(f"REFERENCE (Xiao et al. 2018, ADE20K; not produced here; this run is the {PRESET} preset):")
print(reference.round(2).to_string())

# %% [markdown]
# ## 8 · Results so far
#
# This notebook's runs join the course table (every earlier notebook's `metrics.json` of the same preset).

# %%
runs = {name: {**r.summary(), "train_images": len(splits["train"]), "epochs": schedule["epochs"]}
        for name, r in results.items()}
write_notebook_results(out_dir, "08_upernet_ulsam", PRESET, runs,
                       extra={"parameters_full_size": {n: c["total"] for n, c in full_counts.items()},
                              "delta_m_vs_upernet": table["Δm vs UPerNet (%)"].to_dict(),
                              "ulsam_relative_error": ulsam_error,
                              "ulsam_trained_relative_error": trained_errors, "references": UPERNET_REFERENCE})
print_course_table(out_dir, PRESET, list(columns), notebook="08_upernet_ulsam")
print(f"wrote {OUT_DIR}/metrics.json")
