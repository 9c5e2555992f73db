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
# # 09 · Task Switching Networks: one decoder for every task
#
# **Learning goals.** After this notebook you can
# 1. explain how a Task Switching Network (TSN; Sun et al., ICCV 2021) solves $T$ dense tasks with **one** encoder,
#    **one** decoder and **one** output layer, told which task to solve by a task code;
# 2. write out the conditioning: task code $z_t$ → mapping network → embedding $w_t$ → AdaIN
#    (instance norm, then a per-channel scale and shift computed from $w_t$) in every decoder convolution;
# 3. show that its parameter count does not grow with the number of tasks (18.26 M for PASCAL-Context's five tasks,
#    against 88.65 M for five single-task U-Nets) and plot it against the alternatives;
# 4. compare TSN with single-task networks and a multi-decoder baseline on five PASCAL-like tasks (edge, semseg,
#    human parts, normals, saliency) with per-task metrics and $\Delta_m$, and compare orthogonal with Gaussian
#    task codes.
#
# Notebooks 04–05 gave every task its own decoder (branched) or its own decoder plus distillation: the decoder
# parameters grow linearly with the tasks. TSN goes the other way: everything is shared and the *input* to the
# decoder's normalisation layers is what changes between tasks. The network performs one task at a time, switching
# between them.

# %% tags=["parameters"]
import os

PRESET = os.environ.get("MTLKIT_PRESET", "smoke")  # unit | smoke | lesson | paper
DEVICE = "auto"
SEED = 0
DATA = "auto"  # "auto": the preset's dataset (synthetic-pascal; the paper preset uses the real pascal-mt data)
OUT_DIR = "../runs/notebooks/09_task_switching"
EPOCHS = None  # None: the preset's schedule (smoke 1 epoch, lesson 10, paper 50)
TRAIN_IMAGES = None  # None: the preset's choice (smoke: the first 96 of the 192 training images; others: all)
VAL_IMAGES = None  # None: the preset's choice (smoke: the first 32 of the 64 validation images; others: all)
CODE = "orthogonal"  # the main TSN's task code: "orthogonal" (block one-hot) or "gaussian"
CODE_DIM = 100  # d: 5 tasks x 20 ones, as in the paper
TASK_SCHEDULE = None  # None: the preset's ("iteration" on CPU, "epoch" in the paper preset)
SINGLE_TASK = None  # None: the preset's baselines (smoke, lesson, paper: all five tasks)
CODE_GRID = None  # None: the preset's extra TSNs [(code, dim), ...] (smoke: gaussian 100 and orthogonal 10; lesson/paper: four)
PRETRAINED = None  # ImageNet initialisation of the encoder; None -> the preset's (paper: True, needs the HF hub)
MAX_STEPS = None  # a dry run: stop each training epoch and evaluation after this many batches (None: whole epochs)
N_SHOW = 2  # test images in the prediction figure

# %%
import copy
import math
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
from mtlkit.course.pascal import PASCAL_TASK_CHANNELS, TSN_REFERENCE
from mtlkit.data import collate
from mtlkit.models import build, count_parameters
from mtlkit.models.tsn import AdaINConv, task_codes
from mtlkit.train import seed_everything

sns.set_theme(style="whitegrid", context="notebook")

# schedule, data (pascal-mt: held-out training images select the epoch, val is the test split), the five tasks,
# model options, TSN's loss weights and Trainer options: one call
setup = course.pascal.setup(PRESET, data=DATA, seed=SEED, device=DEVICE, out_dir=OUT_DIR, pretrained=PRETRAINED,
                            max_steps=MAX_STEPS, epochs=EPOCHS, train_images=TRAIN_IMAGES, val_images=VAL_IMAGES,
                            task_schedule=TASK_SCHEDULE, single_task=SINGLE_TASK, code_grid=CODE_GRID)
out_dir = setup.out_dir  # OUT_DIR, created
schedule, splits, model_options = setup.schedule, setup.splits, setup.model_options
tasks, task_channels = setup.tasks, setup.task_channels  # edge, semseg, parts, normals, saliency
single_task = [t for t in schedule["single_task"] if t in task_channels]
code_grid = [tuple(c) for c in schedule["code_grid"] if tuple(c) != (CODE, CODE_DIM)]

# What the preset decides (the smoke preset is tiny: 64 px, 96 training images, one epoch, a narrow decoder):
print(setup.describe().split("\nmodel options")[0])  # data, splits, tasks (and a note on any unlabelled split)
print(f"model: {model_options['encoder']} (ImageNet: {model_options['pretrained']}), decoder widths "
      f"{model_options['decoder_channels']}; main TSN codes: {CODE}, d = {CODE_DIM}")
print(f"schedule: {schedule['epochs']} epoch(s), batch {schedule['batch_size']}, {schedule['optimizer']} "
      f"lr {schedule['lr']} (encoder multiplier: {schedule['param_groups'] or 1}), tasks switched per "
      f"{schedule['task_schedule']}")
print(f"single-task baselines: {single_task}; other tasks: not run in {PRESET}" if len(single_task) < len(tasks)
      else f"single-task baselines: all {len(single_task)} tasks")
print(f"extra TSNs (code, d): {code_grid or 'none'}")

# %% [markdown]
# ## 1 · The idea: switch the task, not the network
#
# An encoder $f_\theta$ (ResNet-18, not conditioned) computes features once. A single U-Net decoder $g_\phi$ and a
# single 1×1 output convolution $W$ produce **the prediction of the task it is told to solve**:
# $$\hat y_t = P_t\, W\, g_\phi\big(f_\theta(x);\ w_t\big), \qquad w_t = m_\psi(z_t),$$
# where $P_t \in \mathbb R^{C_t \times C}$ averages the $C$ shared output channels down to task $t$'s $C_t$ (below).
#
# * **Task code** $z_t \in \mathbb R^d$: orthogonal block one-hot (task $t$ has ones on dimensions
#   $[tk, (t+1)k)$, $k = d / T$: five tasks × 20 ones = 100-d) or Gaussian ($z_t \sim \mathcal N(0, I_d)$, fixed).
#   The codes are constants (buffers), not learned.
# * **Mapping network** $m_\psi$ (StyleGAN's): PixelNorm $z \mapsto z / \sqrt{\tfrac1d\sum_i z_i^2 + 10^{-8}}$, then
#   8 × [equalised-lr linear $d \to d$, LeakyReLU(0.2)]. An *equalised-lr* linear layer stores $W \sim \mathcal N(0,1)$
#   and uses $\sqrt{2/d_{in}}\,W$ in the forward pass, so that Adam's updates act alike on every layer.
# * **AdaIN convolution**: every decoder convolution is followed by an instance norm without its own affine and a
#   task-dependent affine from the embedding, then LeakyReLU:
#   $$h = \mathrm{conv}(x),\qquad \mathrm{AdaIN}(h, w_t)_c = \gamma_c(w_t)\,\frac{h_c - \mu_c(h)}{\sigma_c(h)} +
#     \beta_c(w_t),\qquad (\gamma(w), \beta(w)) = A w + b,$$
#   with $\mu_c, \sigma_c$ over the spatial positions of channel $c$ and $A$ an equalised-lr linear $d \to 2C$
#   (biases start at $\gamma = 1, \beta = 0$). The task decides the statistics of every feature map in the decoder.
# * **Shared output layer**: one 1×1 convolution to $C = \max_t C_t$ channels (21 for PASCAL-Context). Task $t$
#   average-pools them into $C_t$ consecutive groups, as the authors' code does (`readout="pool"`, the default).
#   On PASCAL-Context semseg keeps all 21, parts averages groups of 3 (7 channels), normals groups of 7, edge and
#   saliency the mean of all 21. `readout="slice"` (task $t$ reads the first $C_t$ channels) is the simpler
#   alternative; both have the same parameters.
#
# Adding a task adds a code (a constant) and nothing else, so the **parameter count is constant in $T$**. The price:
# one decoder pass per task (the encoder's features are reused), and tasks compete for the decoder's capacity.

# %% [markdown]
# ## 2 · The key module, written out
#
# Below: the task codes, the mapping network and the AdaIN convolution from scratch (plain tensor operations).
# To check them against the library we take the library's `tsn`, replace **its** mapping network and **every** decoder
# convolution by these modules (loading the library's weights into them strictly: every name and shape must match)
# and compare the whole network's outputs for every task.

# %%
def make_task_codes(num_tasks: int, dim: int, kind: str, seed: int = 0) -> torch.Tensor:
    """[T, d] task codes: block one-hot (d // T ones per task) or i.i.d. N(0, 1) with a fixed seed."""
    if kind == "gaussian":
        return torch.randn(num_tasks, dim, generator=torch.Generator().manual_seed(seed))
    k = dim // num_tasks
    return torch.stack([(torch.arange(dim) // k == t).float() for t in range(num_tasks)])


class EqualisedLinear(nn.Module):
    """y = x (sqrt(2 / d_in) W)^T + b with W ~ N(0, 1): [B, d_in] -> [B, d_out]."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (math.sqrt(2 / self.weight.shape[1]) * self.weight).T + self.bias


class PixelNormalise(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [B, d]: unit root-mean-square per code
        return z / torch.sqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)


def mapping_network(dim: int, layers: int = 8) -> nn.Sequential:
    """z [B, d] -> w [B, d]: PixelNorm, then layers x [equalised linear d -> d, LeakyReLU(0.2)]."""
    blocks = [PixelNormalise()]
    for _ in range(layers):
        blocks += [EqualisedLinear(dim, dim), nn.LeakyReLU(0.2)]
    return nn.Sequential(*blocks)


class AdaINConvolution(nn.Module):
    """conv -> instance norm (no affine) -> gamma(w) * . + beta(w) -> LeakyReLU(0.01).

    Shapes: x [B, C_in, H, W], w [1 or B, d] -> [B, C_out, H, W].
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2)
        self.style = EqualisedLinear(dim, 2 * c_out)  # w -> (gamma, beta)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)  # [B, C, H, W]
        mu = h.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]: statistics per image and channel
        sigma = torch.sqrt(h.var(dim=(2, 3), keepdim=True, unbiased=False) + 1e-5)
        gamma, beta = self.style(w).chunk(2, dim=1)  # [1 or B, C] each: the task's style
        return F.leaky_relu(gamma[:, :, None, None] * (h - mu) / sigma + beta[:, :, None, None], 0.01)


def rebuild_with_our_modules(library_tsn: nn.Module) -> nn.Module:
    """A copy of a library TSN whose mapping network and AdaIN convs are the modules above (same weights)."""
    ours = copy.deepcopy(library_tsn)
    dim, layers = library_tsn.codes.shape[1], len(library_tsn.mapping) // 2
    ours.mapping = mapping_network(dim, layers)
    ours.mapping.load_state_dict(library_tsn.mapping.state_dict())  # strict
    for parent in (ours.decoder.laterals, ours.decoder.ups, ours.decoder):
        for name, module in list(parent.named_children()):
            if isinstance(module, AdaINConv):
                conv = module.conv
                mine = AdaINConvolution(conv.in_channels, conv.out_channels, conv.kernel_size[0], dim)
                mine.load_state_dict(module.state_dict())  # strict: conv.weight/bias, style.weight/bias
                setattr(parent, name, mine)
    return ours


seed_everything(SEED)
library_tsn = build("tsn", task_channels, code=CODE, code_dim=CODE_DIM, **model_options).eval()
ours = rebuild_with_our_modules(library_tsn).eval()
ours.load_state_dict(library_tsn.state_dict())  # strict: the two networks have the same parameter names
# in float64: an instance norm divides by small standard deviations, so float32 rounding of two equivalent
# orderings of the same arithmetic grows through ten of them; float64 shows that the computation is the same.
# A fixed 64x64 input: the data's size may vary per image (pascal-mt reports (None, None)), and the rounding grows
# with the number of pixels each norm averages, so the tolerance below holds at one resolution.
x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
with torch.no_grad():
    expected, got = copy.deepcopy(library_tsn).double()(x), copy.deepcopy(ours).double()(x)
tsn_error = max(relative_error(got[t], expected[t]) for t in task_channels)
code_error = relative_error(make_task_codes(len(task_channels), CODE_DIM, CODE), library_tsn.codes)
replaced = sum(isinstance(m, AdaINConvolution) for m in ours.modules())
print(f"{replaced} AdaIN convolutions replaced; relative errors: outputs {tsn_error:.1e}, codes {code_error:.1e}")

# %%
# NBVAL_CHECK_OUTPUT
assert tsn_error < 1e-8 and code_error == 0
print(f"outputs match (relative error < 1e-8): {tsn_error < 1e-8}; codes identical: {code_error == 0}")
print("output shapes:", {t: tuple(v.shape) for t, v in got.items()})

# %% [markdown]
# Switching really is just the code: the same image, the same weights, five different embeddings — five different
# outputs of the one shared output convolution (here untrained). Every task reads the *same* shared channels of that
# convolution, only averaged differently (channel 0 of semseg is shared channel 0; of parts and normals, the mean
# of the first few shared channels; edge and saliency are the mean of all of them), so a channel's meaning must come
# from the decoder's task-dependent features.

# %%
with torch.no_grad():
    outputs = {t: library_tsn(x[:1].float(), task=t)[t][0, 0] for t in task_channels}  # each task's channel 0 [H, W]
channel0 = torch.stack(list(outputs.values())).flatten(1)
print("correlation of output channel 0 between tasks (untrained network):")
print(pd.DataFrame(torch.corrcoef(channel0).numpy(), index=list(outputs), columns=list(outputs)).round(2))

# %% [markdown]
# ## 3 · Parameters against the number of tasks (full size)
#
# The paper's models: ResNet-18, the U-Net decoder with widths 512/256/256/128/64, d = 100, PASCAL-Context's
# channels (edge 1, semseg 21, parts 7, normals 3, saliency 1). TSN is built for the first $k$ of the five tasks,
# $k = 1..5$, with its output convolution sized for 21 channels (the largest task it may ever be asked to solve).
# The alternatives: $k$ single-task U-Nets (an encoder and a decoder each) and the multi-decoder U-Net (one encoder,
# $k$ decoders), whose counts come from the five-task model's components.

# %%
# NBVAL_CHECK_OUTPUT
paper_tasks = list(PASCAL_TASK_CHANNELS)
tsn_counts = [count_parameters(build("tsn", {t: PASCAL_TASK_CHANNELS[t] for t in paper_tasks[:k]},
                                     out_channels=21))["total"] for k in range(1, 6)]
multi = count_parameters(build("unet", PASCAL_TASK_CHANNELS))  # encoder, decoders.<task>, heads.<task>
per_task = [multi[f"decoders.{t}"] + multi[f"heads.{t}"] for t in paper_tasks]
multi_counts = [multi["encoder"] + sum(per_task[:k]) for k in range(1, 6)]
single_counts = [k * multi["encoder"] + sum(per_task[:k]) for k in range(1, 6)]
assert multi_counts[-1] == multi["total"]
print("TSN for 1..5 tasks:", ", ".join(f"{n:,d}" for n in tsn_counts))
print(f"constant in the number of tasks: {len(set(tsn_counts)) == 1}")
print(f"five tasks: TSN {tsn_counts[-1]:,d} ({tsn_counts[-1] / 1e6:.2f} M; paper 18.26 M), five single-task U-Nets "
      f"{single_counts[-1]:,d} ({single_counts[-1] / 1e6:.2f} M; paper 88.65 M), multi-decoder "
      f"{multi_counts[-1]:,d} ({multi_counts[-1] / 1e6:.2f} M)")
tsn_full = count_parameters(build("tsn", PASCAL_TASK_CHANNELS))
print({k: f"{v:,d}" for k, v in tsn_full.items()})

# %%
counts = pd.DataFrame({"tasks": list(range(1, 6)) * 3,
                       "parameters (M)": np.array(tsn_counts + multi_counts + single_counts) / 1e6,
                       "model": ["TSN"] * 5 + ["multi-decoder U-Net"] * 5 + ["single-task U-Nets"] * 5})
fig, ax = plt.subplots(figsize=(5.5, 3), dpi=75)
sns.lineplot(data=counts, x="tasks", y="parameters (M)", hue="model", marker="o", ax=ax)
ax.set(xticks=range(1, 6), title="ResNet-18 U-Nets, PASCAL-Context channels")
plt.tight_layout()
plt.show()

# %% [markdown]
# Each single-task U-Net costs 17.7 M (11.2 M of them the encoder); the multi-decoder model shares the encoder but
# still pays 6.5 M per task for its decoder. TSN's decoder (7.0 M, its AdaIN style layers included) and mapping
# network (80,800 parameters, $8(d^2 + d)$) are paid once.
#
# ## 4 · Task codes: orthogonal or Gaussian, and their dimension
#
# What the decoder sees of a task is its embedding $w_t = m_\psi(z_t)$. Orthogonal codes are exactly
# uncorrelated; Gaussian codes are only nearly so, the more the larger $d$ is (their cosine similarities have a
# standard deviation of about $1/\sqrt d$). The mapping network (here at initialisation) then correlates all of
# them: the 8 LeakyReLU layers push every input towards a common direction, and training has to pull the
# embeddings apart again.

# %%
def cosines(v: torch.Tensor) -> np.ndarray:
    v = F.normalize(v, dim=1)
    return (v @ v.T).numpy()


from mtlkit.models.tsn import MappingNetwork  # noqa: E402  (the library's, for the figure)

fig, axes = plt.subplots(2, 4, figsize=(10, 4.8), dpi=70)
for col, (kind, dim) in enumerate([("orthogonal", 100), ("gaussian", 100), ("orthogonal", 10), ("gaussian", 10)]):
    torch.manual_seed(SEED)
    z = task_codes(len(task_channels), dim, kind)
    with torch.no_grad():
        w = MappingNetwork(dim)(z)
    for row, (what, v) in enumerate((("code z", z), ("embedding w (init)", w))):
        sns.heatmap(cosines(v), vmin=-1, vmax=1, cmap="vlag", annot=True, fmt=".1f", cbar=False, square=True,
                    annot_kws={"fontsize": 6}, ax=axes[row, col],
                    xticklabels=list(task_channels) if row else False, yticklabels=list(task_channels) if not col
                    else False)
        axes[row, col].set_title(f"{what}: {kind}, d={dim}", fontsize=8)
        axes[row, col].tick_params(labelsize=6)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5 · Training
#
# Task switching in the Trainer: `task_schedule="epoch"` trains task $t = e \bmod T$ in epoch $e$ (the paper),
# `"iteration"` task $s \bmod T$ at step $s$; evaluation runs every task. The loss of the active task is weighted
# with the paper's weights (edge 50, normals 10, saliency 5, parts 2, semseg 1; the same weights for every model).
# Compared on the same images and steps:
#
# * **TSN** (the codes of the first cell) and, for the code comparison, the extra TSNs of `CODE_GRID`;
# * the **multi-decoder U-Net** (one encoder, five plain U-Net decoders; all five losses at every step);
# * **single-task U-Nets**, the $\Delta_m$ baselines, for the tasks in `SINGLE_TASK`.
#
# Note what the schedule means for TSN: with switching, each task gets $1/T$ of the steps, while every decoder of the
# multi-decoder model learns at every step. `course.run` reuses a finished run in `OUT_DIR` with the same settings;
# delete the run's folder to retrain.

# %%
all_tasks = list(task_channels)
tsn_runs = {"tsn": (CODE, CODE_DIM), **{f"tsn-{kind}-{dim}": (kind, dim) for kind, dim in code_grid}}
switching = {"task_schedule": schedule["task_schedule"]}  # TSN trains one task per step (or epoch)
results = {name: course.run(setup, name, "tsn", all_tasks, code=kind, code_dim=dim, train=switching)
           for name, (kind, dim) in tsn_runs.items()}
results["multi-decoder"] = course.run(setup, "multi-decoder", "unet", all_tasks)
results.update({f"single-{t}": course.run(setup, f"single-{t}", "unet", t) for t in single_task})
models, metrics = {name: r.model for name, r in results.items()}, {name: r.metrics for name, r in results.items()}

# %%
# NBVAL_CHECK_OUTPUT
print(f"{len(metrics)} trainings, each on {len(splits['train'])} images: {', '.join(metrics)}")
print(f"single-task baselines (the tasks Δm covers): {', '.join(single_task)}")

# %% [markdown]
# ## 6 · Evaluation
#
# Each run's best epoch was selected on the validation split and evaluated once on the test split. Per task, the
# metric that represents it in $\Delta_m$: edge ODS F (%), semseg and parts mIoU (%), normals mean angle (°, lower
# is better), saliency max F (%).

# %%
test = {name: m["test"] for name, m in metrics.items()}
main_metric = {t: f"{t}/{tasks[t].delta_metric}" for t in task_channels}
summary = pd.DataFrame({name: r.summary() for name, r in results.items()}).T
columns = [c for c in list(main_metric.values()) + ["parameters_M", "train_seconds"] if c in summary.columns]
print(summary[columns].round(2).to_string(na_rep="-"))

# %%
single = {t: test[f"single-{t}"][t] for t in single_task}
deltas = {}
if single:
    for name in [*tsn_runs, "multi-decoder"]:
        deltas[name] = delta_m_or_nan(test[name], single, f"{name} Δm", tasks={t: tasks[t] for t in single})
    print(f"Δm over the tasks with a single-task baseline ({', '.join(single)}"
          + (f"; not over {', '.join(t for t in task_channels if t not in single)}, which have no baseline in "
             f"the {PRESET} preset)" if len(single) < len(task_channels) else ")"))
    for name in [n for n in metrics if n in deltas]:
        per = ", ".join(f"{t} {test[name][t][tasks[t].delta_metric]:.1f} (single {single[t][tasks[t].delta_metric]:.1f})"
                        for t in single)
        print(f"  {name:22s} Δm = {deltas[name]:+6.1f}%: {per}")
else:
    print("no single-task baselines (SINGLE_TASK = ()): Δm needs them")

# %% [markdown]
# How to read this: in the smoke preset every model sees 12 steps of 8 images, and with switching per iteration each
# TSN task gets only 2 or 3 of them, so the numbers say that the pipeline runs, not which design is better (the
# lesson and paper presets train for 10 and 50 epochs). Δm divides by the single-task metric, so a task whose
# baseline is still near zero (semseg mIoU after one smoke epoch) swings it by tens of percent either way. What the
# full runs show, and the paper reports: TSN within about a point of the single-task networks on every task, at a
# fifth of their parameters.
#
# **Parameters versus quality.** The models actually trained here (the preset's widths), Δm against their size; the
# single-task models together count $k$ encoders and decoders.

# %%
points = [{"model": n, "parameters (M)": summary.loc[n, "parameters_M"], "Δm (%)": d} for n, d in deltas.items()]
if single:
    points.append({"model": f"{len(single)} single-task", "Δm (%)": 0.0,
                   "parameters (M)": sum(summary.loc[f"single-{t}", "parameters_M"] for t in single)})
if points:
    fig, ax = plt.subplots(figsize=(5.5, 3), dpi=75)
    sns.scatterplot(data=pd.DataFrame(points), x="parameters (M)", y="Δm (%)", hue="model", s=80, ax=ax)
    ax.axhline(0, color="gray", lw=0.8, ls="--")
    ax.set_title(f"Δm over {', '.join(single)} vs parameters ({PRESET})", fontsize=9)
    ax.legend(fontsize=7)
    plt.tight_layout()
    plt.show()

# %% [markdown]
# **One network, five tasks.** Test images, the ground truth and TSN's prediction for every task — the same
# weights, switched by the task code only.

# %%
test_set = splits["test"]
batch = collate([test_set[i] for i in range(min(N_SHOW, len(test_set)))])
pred = course.predict(models["tsn"], batch["image"])  # task=None: every task, one encoder pass
info = test_set.task_info


def show(task: str, value: torch.Tensor, is_prediction: bool):
    if is_prediction and task in ("semseg", "parts"):
        value = value.argmax(0)
    elif is_prediction and task in ("edge", "saliency"):
        value = torch.sigmoid(value)
    elif is_prediction and task == "normals":
        value = F.normalize(value, dim=0)
    return viz.label_to_rgb(task, value, info.get(task))


fig, axes = plt.subplots(2 * len(batch["image"]), len(task_channels) + 1,
                         figsize=(1.6 * (len(task_channels) + 1), 3.3 * len(batch["image"])), dpi=70, squeeze=False)
for i in range(len(batch["image"])):
    axes[2 * i, 0].imshow(batch["image"][i].permute(1, 2, 0).numpy())
    axes[2 * i + 1, 0].set_visible(False)
    for j, task in enumerate(task_channels, start=1):
        for row, (value, is_pred) in enumerate(((batch[task][i], False), (pred[task][i], True))):
            img, kw = show(task, value, is_pred)
            axes[2 * i + row, j].imshow(img, **kw)
            if i == 0:
                axes[row, j].set_title(f"{task}\n{'TSN' if is_pred else 'ground truth'}", fontsize=7)
    for ax in axes[2 * i:2 * i + 2].flat:
        ax.set_axis_off()
plt.tight_layout()
plt.show()

# %% [markdown]
# **Orthogonal or Gaussian codes, and the code dimension.** The TSNs of the code grid, per task. The smoke preset
# trains orthogonal and Gaussian codes at d = 100 and orthogonal codes at d = 10 (one epoch says little); the lesson
# and paper presets add Gaussian codes at d = 10 and orthogonal codes at d = 500 (`CODE_GRID` trains them here too).

# %%
code_rows = [{"run": n, "code": k, "d": d, **{main_metric[t]: test[n][t][tasks[t].delta_metric] for t in task_channels},
              "Δm (%)": deltas.get(n, np.nan)} for n, (k, d) in tsn_runs.items()]
print(pd.DataFrame(code_rows).set_index("run").round(2).to_string())
with torch.no_grad():
    trained = {n: torch.cat([models[n].embedding(t) for t in task_channels]).cpu() for n in tsn_runs}
fig, axes = plt.subplots(1, len(trained), figsize=(2.6 * len(trained), 2.6), dpi=70, squeeze=False)
for ax, (n, w) in zip(axes[0], trained.items()):
    sns.heatmap(cosines(w), vmin=-1, vmax=1, cmap="vlag", annot=True, fmt=".1f", cbar=False, square=True,
                annot_kws={"fontsize": 6}, xticklabels=list(task_channels), yticklabels=list(task_channels), ax=ax)
    ax.set_title(f"{n}: trained embeddings", fontsize=8)
    ax.tick_params(labelsize=6)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 7 · The paper's numbers
#
# Sun et al. report on PASCAL-Context (ResNet-18, ImageNet, 512 px) a TSN within a point of the single-task networks
# on every task at a fifth of their parameters. These are **references, not results of this kit**; they sit beside
# the kit's numbers only in the paper preset (`pascal-mt`, the real data). The synthetic presets' images, classes
# (here 21 synthetic classes and 6 parts) and schedules differ, so their numbers are not comparable with the paper's.

# %%
reference = pd.DataFrame(TSN_REFERENCE).T
if PRESET == "paper":
    kit = {f"{n} (kit, paper preset)": {main_metric[t]: test[n][t][tasks[t].delta_metric] for t in test[n]
                                        if t in main_metric} for n in ("tsn", "multi-decoder")}
    kit["single-task (kit, paper preset)"] = {main_metric[t]: single[t][tasks[t].delta_metric] for t in single}
    reference = pd.concat([reference, pd.DataFrame(kit).T])
    print("paper references and this kit's paper-preset results:")
else:
    print(f"REFERENCES (Sun et al. 2021, PASCAL-Context; not produced here; this run is the {PRESET} preset):")
print(reference[list(main_metric.values())].round(1).to_string(na_rep="-"))

# %% [markdown]
# ## 8 · Results so far
#
# This notebook's runs join the course table (every earlier notebook's `metrics.json` of the same preset).

# %%
runs = {name: {**r.summary(), "train_images": len(splits["train"]), "epochs": schedule["epochs"]}
        for name, r in results.items()}
for name, d in deltas.items():
    runs[name]["delta_m"] = d
write_notebook_results(out_dir, "09_task_switching", PRESET, runs,
                       extra={"parameters_full_size": {"tsn_by_tasks": tsn_counts, "multi_decoder_by_tasks":
                                                       multi_counts, "single_task_by_tasks": single_counts},
                              "delta_m_tasks": list(single), "tsn_relative_error": tsn_error,
                              "references": TSN_REFERENCE})
print_course_table(out_dir, PRESET, [*main_metric.values(), "delta_m", "parameters_M"], notebook="09_task_switching")
print(f"wrote {OUT_DIR}/metrics.json")
