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
# # 06 · Cross-stitch networks: let the network learn how much to share
#
# **Learning goals.** After this notebook you can
# 1. write a cross-stitch unit as an equation and as code, in its faithful channel-wise form and in the two forms
#    found in public code (one scalar per task pair; one mixture shared by all tasks), and count its parameters;
# 2. build a cross-stitch network from single-task ResNets for three tasks of different kinds — segmentation
#    (pixels), a head box (DIoU loss) and cat/dog (one label per image) — with the paper's recipe: branches start
#    from single-task weights, units start at 0.9 / 0.1 and learn with their own learning rate;
# 3. read the learnt mixing matrices α as heat maps over training and say which tasks the network chose to share;
# 4. measure each auxiliary task's contribution (ablations that drop one), compare the three unit forms and a
#    *sequential* alternative (frozen auxiliary networks feeding the segmentation network), with $\Delta_m$ against
#    the single-task models.
#
# Notebooks 01–05 decided *by hand* where the tasks part ways (joint, branched, distillation). Misra et al.
# (CVPR 2016) let the network learn it: one network per task, and between their stages small linear units that mix
# the task networks' feature maps.

# %% tags=["parameters"]
import os

PRESET = os.environ.get("MTLKIT_PRESET", "smoke")  # unit | smoke | lesson | paper
DEVICE = "auto"
SEED = 0
DATA = "auto"  # "auto": the preset's dataset (synthetic-pet; the paper preset reads the real oxpet-h5 data)
OUT_DIR = "../runs/notebooks/06_cross_stitch"
EPOCHS = None  # None: the preset's epochs for the cross-stitch runs (smoke 1; the single-task runs: SINGLE_EPOCHS)
SINGLE_EPOCHS = None  # None: the preset's epochs for the single-task networks (smoke 1)
TRAIN_IMAGES = None  # None: the preset's choice (smoke: the first 64 of the 192 training images)
VAL_IMAGES = None  # None: the preset's choice (smoke: the first 16 of the 64 validation images)
UNITS_LR_MULT = None  # None: the preset's (10x the network's learning rate under Adam, see section 4)
ABLATIONS = None  # auxiliary tasks to drop one at a time; None: the preset's (every preset: boxes, then binary)
VARIANTS = None  # unit forms; None: the preset's (every preset: all three; channelwise is the main run)
SEQUENTIAL = None  # None: the preset's (True): train the sequential variant (frozen auxiliary networks)
PRETRAINED = None  # ImageNet initialisation of the branches; None -> the preset's (paper: True, needs the HF hub)
MAX_STEPS = None  # a dry run: stop each training epoch and evaluation after this many batches (None: whole epochs)
N_SHOW = 3  # test images in the prediction figure

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn as nn

from mtlkit import viz
from mtlkit import course
from mtlkit.course import delta_m_or_nan, print_course_table, relative_error, write_notebook_results
from mtlkit.course.pet import PET_REFERENCE, CrossStitchRecorder, load_alphas
from mtlkit.data import collate
from mtlkit.models import build, count_parameters
from mtlkit.models.cross_stitch import CROSS_STITCH_MODES, CrossStitchUnit
from mtlkit.train import seed_everything

sns.set_theme(style="whitegrid", context="notebook")

# schedule, data (the preset's first training and validation images), tasks, model and Trainer options: one call
setup = course.pet.setup(PRESET, data=DATA, seed=SEED, device=DEVICE, out_dir=OUT_DIR, pretrained=PRETRAINED,
                         max_steps=MAX_STEPS, epochs=EPOCHS, single_epochs=SINGLE_EPOCHS, train_images=TRAIN_IMAGES,
                         val_images=VAL_IMAGES, units_lr_mult=UNITS_LR_MULT, ablations=ABLATIONS, variants=VARIANTS,
                         sequential=SEQUENTIAL)
out_dir = setup.out_dir  # OUT_DIR, created
schedule, data_name, splits = setup.schedule, setup.data, setup.splits
tasks = setup.tasks  # {"semseg": Task, "boxes": Task, "binary": Task}
task_channels = setup.task_channels  # semseg 3 (trimap), boxes 4 (xyxy), binary 2
ablations, variants, sequential = list(schedule["ablations"]), list(schedule["variants"]), schedule["sequential"]

# Every preset trains the full comparison: three single-task networks, the cross-stitch network, two ablations,
# the two other unit forms and the sequential variant (9 trainings), all on the same data. The smoke preset pays for
# it with small runs: ResNet-18 branches without ImageNet weights, narrow heads, 64 px images, the first 64
# training and 16 validation images, one epoch (8 steps of 8 images) per run.
model_options = setup.model_options
print(setup.describe())
print(f"single-task epochs {schedule['single_epochs']}, cross-stitch epochs {schedule['epochs']}, "
      f"{schedule['optimizer']} lr {schedule['lr']:g}, units lr x{schedule['units_lr_mult']:g}; ablations drop "
      f"{ablations}; unit forms {variants}; sequential {sequential}")

# %% [markdown]
# ## 1 · The cross-stitch unit
#
# Take $T$ task networks. After stage $i$ each has a feature map $x_s \in \mathbb R^{C\times H\times W}$. A
# cross-stitch unit replaces them by linear mixtures — per channel $c$:
# $$\tilde x_t[c] = \sum_{s=1}^{T} \alpha_{ts}[c]\; x_s[c], \qquad t = 1..T,$$
# and network $t$ continues from $\tilde x_t$. With $\alpha = I$ the networks are independent (no sharing); with all
# rows equal they see the same features (hard sharing at that depth). Learning $\alpha$ lets training choose,
# stage by stage, anything in between. The gradient flows back the same way:
# $\partial \mathcal L / \partial x_s = \sum_t \alpha_{ts}\, \partial \mathcal L / \partial \tilde x_t$, so task
# $t$'s loss trains network $s$ in proportion to $\alpha_{ts}$.
#
# | form | α | parameters per unit | where it is from |
# |---|---|---|---|
# | `channelwise` (faithful) | $T\times T$ per channel | $T^2 C$ | Misra et al.; the survey code (Vandenhende et al.) |
# | `scalar` | one $T\times T$ matrix | $T^2$ | the paper's figures; many re-implementations |
# | `shared` | one mixture $\alpha_s$ for all targets | $T$ | the MTAN authors' SegNet baseline |
#
# The paper initialises $\alpha_{tt} = 0.9$ and spreads $0.1$ over the other tasks (each row sums to 1, so at the
# start every network mostly sees its own features), and trains α with a larger learning rate than the network.
#
# Written out, with explicit loops over target, source and channel so that the equation is visible:

# %%
class MyCrossStitch(nn.Module):
    """Cross-stitch unit, loop form. weight: channelwise [T, T, C], scalar [T, T], shared [T]."""

    def __init__(self, num_tasks: int, channels: int, mode: str = "channelwise", same: float = 0.9,
                 other: float = 0.1) -> None:
        super().__init__()
        self.num_tasks, self.mode = num_tasks, mode
        if mode == "shared":
            weight = torch.ones(num_tasks)  # a plain sum at the start, as in the public SegNet code
        else:
            alpha = torch.full((num_tasks, num_tasks), other / (num_tasks - 1))
            alpha.fill_diagonal_(same)  # 0.9 on the diagonal, 0.1 spread over the rest of each row
            weight = alpha if mode == "scalar" else alpha[:, :, None].repeat(1, 1, channels)
        self.weight = nn.Parameter(weight)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for t in range(self.num_tasks):  # target network t
            mixed = torch.zeros_like(xs[0])  # [B, C, H, W]
            for s in range(self.num_tasks):  # source network s
                if self.mode == "shared":
                    a = self.weight[s]  # the same mixture for every target
                elif self.mode == "scalar":
                    a = self.weight[t, s]
                else:
                    a = self.weight[t, s].view(1, -1, 1, 1)  # [1, C, 1, 1]: one weight per channel
                mixed = mixed + a * xs[s]
            out.append(mixed)
        return out


seed_everything(SEED)
xs = [torch.randn(2, 16, 8, 8) for _ in range(3)]
unit_errors = {}
for mode in CROSS_STITCH_MODES:
    library_unit = CrossStitchUnit(3, 16, mode=mode)
    with torch.no_grad():  # random weights, so the test does not rely on the symmetric initialisation
        library_unit.weight.normal_()
    ours = MyCrossStitch(3, 16, mode=mode)
    ours.load_state_dict(library_unit.state_dict())  # strict: same name and shape
    unit_errors[mode] = max(relative_error(a, b) for a, b in zip(ours(xs), library_unit(xs)))
print({m: f"{e:.1e}" for m, e in unit_errors.items()})

# %%
# NBVAL_CHECK_OUTPUT
init = CrossStitchUnit(3, 16).weight[:, :, 0]
print("initial alpha (every channel):\n", init.detach().numpy().round(3))
for mode, err in unit_errors.items():
    n = count_parameters(CrossStitchUnit(3, 16, mode=mode))["total"]
    print(f"{mode:12s} relative error < 1e-6: {err < 1e-6}   parameters (T=3, C=16): {n}")

# %% [markdown]
# ## 2 · A cross-stitch network over ResNets, for three kinds of task
#
# `build("resnet-cross-stitch", tasks)` (in `mtlkit/models/resnet_cross_stitch.py`) holds one timm ResNet per task
# (`branches`) and a unit after each of the four stages (`cross_stitch`); each task's head reads its own branch:
# * **segmentation** (trimap: background / pet / border): the course's DeepLabV3+ head — ASPP on the last features,
#   a decoder with the stride-4 features, bilinear to the input size;
# * **head box**, $[x_1, y_1, x_2, y_2]$ in pixels: a soft-argmax — a logit map $z$ over the last feature grid gives
#   the centre $\sum_p \mathrm{softmax}(z)_p\, p$ and the size the equally weighted $\sigma(\cdot)\cdot(W, H)$; its
#   loss is the DIoU loss $1 - \mathrm{IoU} + \rho^2(\text{centres}) / c^2$ ($c$ the diagonal of the enclosing box);
# * **cat / dog**: global average pooling and a linear layer (cross-entropy).
#
# The forward pass, written out over the library model's parts and checked against it:

# %%
def stitched_forward(model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The cross-stitch network's forward, step by step (no frozen source branches)."""
    enc = model.branches[model.tasks[0]]
    x = (images - enc.mean) / enc.std  # ImageNet normalisation inside the model; images are in [0, 1]
    xs = []
    for t in model.tasks:  # each task's own stem: conv 7x7/2, BN, ReLU, max-pool 3x3/2 -> [B, 64, H/4, W/4]
        body = model.branches[t].body
        xs.append(body.maxpool(body.act1(body.bn1(body.conv1(x)))))
    skips = None
    for i, stage in enumerate(("layer1", "layer2", "layer3", "layer4")):
        xs = [model.branches[t].body[stage](x_t) for t, x_t in zip(model.tasks, xs)]  # each network's stage
        xs = model.cross_stitch[i](xs)  # mix: x~_t = sum_s alpha_i[t, s] * x_s
        if i == 0:
            skips = xs  # the mixed stride-4 features feed the segmentation decoder
    return {t: model.heads[t](skip, x_t, images.shape[-2:]) for t, skip, x_t in zip(model.tasks, skips, xs)}


seed_everything(SEED)
demo = build("resnet-cross-stitch", task_channels, **model_options).eval()
with torch.no_grad():
    for unit in demo.cross_stitch:
        unit.weight.uniform_(-0.5, 1.0)  # away from the initialisation, so every mixing term matters
    images = torch.rand(2, 3, *splits["train"].image_size)
    expected, got = demo(images), stitched_forward(demo, images)
network_error = max(relative_error(got[t], expected[t]) for t in task_channels)

# %%
# NBVAL_CHECK_OUTPUT
print(f"relative error < 1e-6: {network_error < 1e-6}")
print("output shapes:", {t: tuple(v.shape) for t, v in got.items()})

# %% [markdown]
# ## 3 · Where the parameters live (full size)
#
# Full-size heads (ASPP and decoder 256 wide, box head 256), ResNet-18 branches, the three pet tasks. A cross-stitch
# network holds three complete single-task networks; the units add $T^2\sum_i C_i = 9\cdot(64+128+256+512) = 8640$
# parameters in the faithful form, a rounding error. The sequential variant holds the same three ResNets, but the
# two auxiliary ones are frozen and only the segmentation network and one row of each unit ($1\cdot 3 \cdot C_i$)
# are trained.

# %%
# NBVAL_CHECK_OUTPUT
full = {f"single-{t}": build("resnet-single", {t: c}) for t, c in task_channels.items()}
full.update({f"cross-stitch {m}": build("resnet-cross-stitch", task_channels, mode=m) for m in CROSS_STITCH_MODES})
full["sequential"] = build("resnet-cross-stitch", {"semseg": task_channels["semseg"]}, sources=("boxes", "binary"))
full_counts = {name: count_parameters(m) for name, m in full.items()}
for name, counts in full_counts.items():
    trainable = count_parameters(full[name], trainable_only=True)["total"]
    print(f"{name:26s} {counts['total']:>11,d}  units {counts.get('cross_stitch', 0):>5,d}  trainable {trainable:>11,d}")
singles_total = sum(full_counts[f"single-{t}"]["total"] for t in task_channels)
units_by_hand = 3 * 3 * sum(full["cross-stitch channelwise"].stage_channels)
print(f"three single-task networks {singles_total:,d} + units {units_by_hand:,d} = cross-stitch "
      f"{full_counts['cross-stitch channelwise']['total']:,d}: "
      f"{singles_total + units_by_hand == full_counts['cross-stitch channelwise']['total']}")
del full

# %% [markdown]
# ## 4 · Training
#
# The paper's recipe, in order:
# 1. train one single-task network per task (`resnet-single`; these are also the $\Delta_m$ baselines);
# 2. copy them into the branches of the cross-stitch network (`init_from_single`), units at 0.9 / 0.1;
# 3. train everything jointly on the sum of the three losses, the units with `UNITS_LR_MULT` times the network's
#    learning rate (the Trainer's `param_groups=[("cross_stitch", m)]`).
#
# The paper trains the units with about **100×** the network's learning rate under SGD; the kit uses **10× under
# Adam** in every preset, the paper preset included. Adam scales each parameter's step to about the learning rate
# whatever the size of its gradient, so the multiplier sets α's speed directly: 100× would let α cross its whole
# range within about a hundred steps and forget the single-task start, while 10× keeps the units clearly faster than
# the network. (An SGD step follows the gradient's size instead, and the three unit forms' α gradients differ by one
# to two orders of magnitude, so under SGD no single multiplier would suit them all.)
#
# A `CrossStitchRecorder` callback stores α after every epoch next to the run (`alphas.json`). `course.run`
# reuses a finished run in `OUT_DIR` with the same settings; delete the run's folder to retrain.

# %%
results = {f"single-{t}": course.run(setup, f"single-{t}", "resnet-single", t,
                                     train={"epochs": schedule["single_epochs"]}) for t in task_channels}


def from_single(model):  # step 2: each branch starts from its task's trained single-task network
    model.init_from_single({t: results[f"single-{t}"].model for t in model.branch_names})


stitched = {"cross-stitch": dict(tasks=list(task_channels))}  # name -> the run's tasks, unit form, frozen sources
stitched.update({f"cross-stitch without {d}": dict(tasks=[t for t in task_channels if t != d]) for d in ablations})
stitched.update({f"cross-stitch {m}": dict(tasks=list(task_channels), mode=m) for m in variants if m != "channelwise"})
if sequential:
    stitched["sequential"] = dict(tasks=["semseg"], sources=("boxes", "binary"))
for name, spec in stitched.items():  # step 3: the units at UNITS_LR_MULT x the network's learning rate
    results[name] = course.run(setup, name, "resnet-cross-stitch", spec.pop("tasks"), init=from_single,
                               callbacks=[CrossStitchRecorder()], **spec,
                               train={"param_groups": [("cross_stitch", schedule["units_lr_mult"])]})
models, metrics = {name: r.model for name, r in results.items()}, {name: r.metrics for name, r in results.items()}

# %%
# NBVAL_CHECK_OUTPUT
print(f"{len(metrics)} trainings, each on {len(splits['train'])} images:\n  " + "\n  ".join(metrics))

# %% [markdown]
# ## 5 · Results and $\Delta_m$
#
# Test metrics of each run's best epoch (selected on validation). $\Delta_m$ compares a model with the single-task
# networks on the tasks it predicts (mIoU, box IoU, accuracy; all higher-is-better):
# $\Delta_m = \frac{100\%}{T}\sum_t (M_{\mathrm{mt},t} - M_{\mathrm{st},t}) / M_{\mathrm{st},t}$.
# Careful when reading it: every cross-stitch run trained **longer** than the single-task networks it started from
# (their epochs plus its own), so part of any gain is simply more training; the fair comparison among the
# cross-stitch runs is with each other.

# %%
test = {name: m["test"] for name, m in metrics.items()}
single = {t: test[f"single-{t}"][t] for t in task_channels}
deltas = {}
for name, result in test.items():
    if not name.startswith("single-"):
        run_tasks = {t: tasks[t] for t in result}
        deltas[name] = delta_m_or_nan(result, {t: single[t] for t in run_tasks}, f"{name} Δm", tasks=run_tasks)
summary = pd.DataFrame({name: r.summary() for name, r in results.items()}).T
summary["delta_m"] = pd.Series(deltas)
columns = [c for c in ("semseg/miou", "boxes/mean_iou", "binary/accuracy", "delta_m", "parameters_M",
                       "train_seconds") if c in summary.columns]
print(summary[columns].round(2).to_string(na_rep="-"))

# %% [markdown]
# **What each auxiliary task contributes.** Each ablation drops one auxiliary task; the change of the
# remaining tasks' metrics with respect to the three-task network is what the dropped task gave them.

# %%
rows = []
for name in [n for n in test if n == "cross-stitch" or n.startswith("cross-stitch without") or n == "sequential"]:
    for t, values in test[name].items():
        metric = tasks[t].delta_metric
        rows.append({"run": name, "task": t,
                     "change vs single-task (%)": 100 * (values[metric] - single[t][metric]) / single[t][metric]})
contrib = pd.DataFrame(rows)
fig, ax = plt.subplots(figsize=(7.5, 2.8), dpi=72)
sns.barplot(data=contrib, x="task", y="change vs single-task (%)", hue="run", ax=ax)
ax.axhline(0, color="black", lw=0.8)
ax.legend(fontsize=7)
ax.set_title(f"relative change of each task's metric vs its single-task network ({PRESET})", fontsize=9)
plt.show()

# %% [markdown]
# ## 6 · What did the network choose to share? α over training
#
# Each panel is one unit's $T\times T$ matrix (row: the target network, column: the source; channel-wise units are
# averaged over channels), from the initialisation (top) to the last epoch (bottom). A row that stays near the
# identity means that network keeps to itself at that depth; mass moving off the diagonal means it takes features
# from the other tasks. After the smoke preset's single short epoch α has barely left its start (the table below
# gives the exact drift); the lesson and paper presets train long enough for the pattern to form.

# %%
def alpha_figure(run_name: str, max_rows: int = 4):
    record = load_alphas(out_dir / run_name)
    if record is None:
        print(f"{run_name}: no alphas.json (the run was trained without a CrossStitchRecorder)")
        return None
    entries = list(range(len(record["epochs"])))
    if len(entries) > max_rows:  # the first, the last and evenly spaced ones between
        entries = sorted(set(np.linspace(0, len(entries) - 1, max_rows).round().astype(int).tolist()))
    n_units = len(record["alphas"][0])
    fig, axes = plt.subplots(len(entries), n_units, figsize=(2.0 * n_units, 1.7 * len(entries)), dpi=70,
                             squeeze=False)
    for r, k in enumerate(entries):
        epoch = record["epochs"][k]
        for u in range(n_units):
            ax = axes[r, u]
            sns.heatmap(np.array(record["alphas"][k][u]), ax=ax, vmin=-0.2, vmax=1.0, cmap="rocket_r", cbar=False,
                        annot=True, fmt=".2f", annot_kws={"fontsize": 6}, square=True,
                        xticklabels=record["branches"] if r == len(entries) - 1 else False,
                        yticklabels=record["tasks"] if u == 0 else False)
            ax.tick_params(labelsize=6)
            if r == 0:
                ax.set_title(f"unit after layer{u + 1}", fontsize=8)
            if u == 0:
                ax.set_ylabel("init" if epoch < 0 else f"epoch {epoch + 1}", fontsize=8)
    fig.suptitle(f"α of '{run_name}' (rows: target, columns: source)", fontsize=9)
    plt.tight_layout()
    plt.show()
    return record


alpha_record = alpha_figure("cross-stitch")

# %%
def alpha_drift(record) -> pd.DataFrame:
    """Per unit: how far α moved from its start (max |Δ|) and the off-diagonal mass at the end (mean per row)."""
    rows = []
    for u, (a0, a1) in enumerate(zip(record["alphas"][0], record["alphas"][-1])):
        a0, a1 = np.array(a0), np.array(a1)
        off = a1.copy()
        for t in range(a1.shape[0]):
            off[t, t] = 0.0
        rows.append({"unit": f"layer{u + 1}", "max |α - α_init|": np.abs(a1 - a0).max(),
                     "off-diagonal mass per row": off.sum(axis=1).mean()})
    return pd.DataFrame(rows).set_index("unit")


if alpha_record is not None:
    print(alpha_drift(alpha_record).round(3).to_string())

# %% [markdown]
# ## 7 · Three forms of the unit, and transfer instead of joint training
#
# Same data, same start (the single-task networks), same schedule; only the unit differs. The channel-wise form
# can share some channels and keep others private; the scalar form must treat every channel of a stage alike; the
# shared form gives all networks one mixture (at initialisation a plain sum), so from the first unit on the three
# networks see identical features — hard sharing with learnt weights.
#
# The **sequential** variant trains only the segmentation network: the single-task box and cat/dog networks are
# frozen and their features are fed to it through one row of each unit. It needs no box or class labels while it
# trains, and it cannot hurt the auxiliary tasks — but they cannot adapt to help either.

# %%
variant_names = [n for n in ("cross-stitch", *(f"cross-stitch {m}" for m in variants if m != "channelwise"),
                             "sequential") if n in summary.index]
compare = summary.loc[variant_names, [c for c in columns if c != "train_seconds"]].copy()
compare.index = [{"cross-stitch": "channelwise (faithful)"}.get(n, n.replace("cross-stitch ", "")) for n in
                 variant_names]
trainable = {}
for n in variant_names:
    trainable[n] = sum(p.numel() for p in models[n].parameters() if p.requires_grad) / 1e6
compare["trainable_M"] = [trainable[n] for n in variant_names]
print(compare.round(2).to_string(na_rep="-"))
for n in variant_names:
    if n != "cross-stitch" and (out_dir / n / "alphas.json").exists():
        record = load_alphas(out_dir / n)
        print(f"{n}: α of the first unit at the end\n", np.array(record["alphas"][-1][0]).round(3))

# %% [markdown]
# **Predictions.** Test images with the ground-truth trimap and head box (green), the single-task networks'
# predictions and the cross-stitch network's (box in red); titles give the true and predicted species.

# %%
test_set = splits["test"]
batch = collate([test_set[i] for i in range(min(N_SHOW, len(test_set)))])
preds = {"cross-stitch": course.predict(models["cross-stitch"], batch["image"]),  # on the models' device
         "single-task": {t: course.predict(models[f"single-{t}"], batch["image"])[t] for t in task_channels}}
info = test_set.task_info
species = info["binary"]["class_names"]
gt_boxes = tasks["boxes"].target(batch)
n_cols = 2 + 2 * len(preds)
fig, axes = plt.subplots(len(batch["image"]), n_cols, figsize=(1.7 * n_cols, 1.9 * len(batch["image"])), dpi=70,
                         squeeze=False)


def draw_box(ax, box, colour):
    if torch.isfinite(box).all():
        x1, y1, x2, y2 = box.tolist()
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colour, lw=1.5))


for row in range(len(batch["image"])):
    image = batch["image"][row].permute(1, 2, 0).numpy()
    ax = axes[row, 0]
    ax.imshow(image)
    draw_box(ax, gt_boxes[row], "lime")
    ax.set_title(f"true: {species[int(batch['binary'][row])]}", fontsize=7)
    seg, kw = viz.label_to_rgb("semseg", batch["semseg"][row], info["semseg"])
    axes[row, 1].imshow(seg, **kw)
    axes[row, 1].set_title("true trimap", fontsize=7)
    col = 2
    for name, p in preds.items():
        seg, kw = viz.label_to_rgb("semseg", p["semseg"][row].argmax(0), info["semseg"])
        axes[row, col].imshow(seg, **kw)
        axes[row, col].set_title(f"{name}\ntrimap", fontsize=7)
        axes[row, col + 1].imshow(image)
        draw_box(axes[row, col + 1], gt_boxes[row], "lime")
        draw_box(axes[row, col + 1], p["boxes"][row], "red")
        axes[row, col + 1].set_title(f"{name}\n{species[int(p['binary'][row].argmax())]}", fontsize=7)
        col += 2
for ax in axes.flat:
    ax.set_axis_off()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 8 · Results so far, and the report's numbers
#
# This notebook's runs join the course table (every notebook's `metrics.json` of this preset). Below are this
# notebook's rows; the other notebooks' rows are only listed by name, since they use other data and tasks (their
# own notebooks, and notebook 10, show them). The Oxford-IIIT Pet numbers below are
# **one report's three-task cross-stitch model (test split), indicative only and not produced by this kit**; they
# compare with this notebook's `paper` preset (`oxpet-h5`: the course packaging of Oxford-IIIT Pet at 256 px with
# background/pet masks and a head box for every image; ImageNet ResNet-34 branches), not with the smoke preset's
# synthetic pets.

# %%
runs = {name: {**r.summary(), "train_images": len(splits["train"]),
               "epochs": schedule["single_epochs"] if name.startswith("single-") else schedule["epochs"]}
        for name, r in results.items()}
for name, d in deltas.items():
    runs[name]["delta_m"] = d
write_notebook_results(out_dir, "06_cross_stitch", PRESET, runs, extra={
    "parameters_full_size": {k: v["total"] for k, v in full_counts.items()},
    "unit_relative_errors": unit_errors, "network_relative_error": network_error,
    "reference_oxford_pet": PET_REFERENCE,
    "alphas_last": {n: load_alphas(out_dir / n)["alphas"][-1] for n in metrics
                    if not n.startswith("single-") and load_alphas(out_dir / n) is not None}})
table = print_course_table(out_dir, PRESET, ("semseg/miou", "boxes/mean_iou", "binary/accuracy", "delta_m",
                                             "parameters_M", "train_images", "epochs"), notebook="06_cross_stitch")
others = sorted(set(table.index.get_level_values("notebook")) - {"06_cross_stitch"})
print(f"other notebooks with {PRESET} results in the course table (not shown here): {', '.join(others) or 'none'}")

# %%
kit = summary.loc["cross-stitch", list(PET_REFERENCE)]
reference = pd.DataFrame({"REFERENCE: one report, Oxford-IIIT Pet (indicative)": pd.Series(PET_REFERENCE),
                          f"this kit, cross-stitch ({data_name}, {PRESET} preset)": kit})
print(reference.round(1).to_string())
print(f"wrote {OUT_DIR}/metrics.json")

# %% [markdown]
# **Take-aways.** A cross-stitch network costs $T$ networks — parameters and compute grow linearly with the number
# of tasks, the price of never forcing two tasks to share a layer. Its units are cheap to learn and easy to read: α
# shows where the tasks found common ground. The next notebooks keep one shared network and let each task *select*
# from it instead (attention, MTAN), which scales better with $T$.
