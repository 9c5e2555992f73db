"""Multi-task loss weighting: one small ``nn.Module`` per method.

Every method maps per-task losses ``{task: scalar}`` to one scalar (``forward``), reports its current effective
weights (``weights()``, for logging and plots) and may update once per epoch from the epoch-averaged training
losses (``epoch_end``). Learnable weights (Uncertainty's log-variances) are ``nn.Parameter``s: the Trainer puts
them in the optimiser. All state that changes during training lives in parameters or buffers, so
``state_dict()`` is everything a checkpoint needs to resume exactly.

Gradient methods (GradNorm, PCGrad) set ``owns_backward = True`` and implement
``backward(losses, shared_params)``, which fills ``.grad`` of every parameter itself; ``forward`` still returns
the weighted loss for logging.

Methods may be called with a subset of their tasks (task-switching models train one task per step); absent
tasks simply do not contribute.

=========== ===========================================================================================
name        formula
=========== ===========================================================================================
equal       L = sum_k L_k
static      L = sum_k c_k L_k with fixed c_k (e.g. DLAD's 0.5/0.5, TSN's normals 10, edges 50, ...)
uncertainty L = sum_k L_k / (2 exp(s_k)) + s_k / 2, s_k = log sigma_k^2 learnable, s_k(0) = -0.5
dwa         lambda_k = K exp(w_k / T) / sum_i exp(w_i / T), w_k = Lbar_k(t-1) / Lbar_k(t-2), T = 2;
            lambda = 1 for the first two epochs
gradnorm    learnable w_k (sum w = K); w moves so that ||grad_W w_k L_k|| -> mean_G * r_k^alpha
pcgrad      per-task gradients on shared parameters; a gradient conflicting with another task's
            (negative dot product) is projected onto that gradient's normal plane, then summed
=========== ===========================================================================================
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn as nn

__all__ = [
    "Weighting", "Equal", "Static", "Uncertainty", "DWA", "GradNorm", "PCGrad",
    "WEIGHTINGS", "make_weighting",
]


class Weighting(nn.Module):
    """Base class: equal weights over ``tasks``; subclasses override :meth:`task_weights`."""

    owns_backward: bool = False

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        tasks = tuple(str(t) for t in tasks)
        if not tasks:
            raise ValueError("a weighting needs at least one task, e.g. make_weighting('equal', ['semseg', 'depth'])")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"duplicate task names in {tasks}")
        self.tasks = tasks

    # -- the interface -------------------------------------------------------------------------------------------
    def task_weights(self) -> dict[str, torch.Tensor]:
        """Current weight of each task as a (possibly differentiable) 0-d tensor."""
        return {t: torch.ones(()) for t in self.tasks}

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of ``losses`` ({task: 0-d tensor}) -> 0-d tensor."""
        self._check(losses)
        w = self.task_weights()
        return sum(w[t].to(loss.device, loss.dtype) * loss for t, loss in losses.items())

    def weights(self) -> dict[str, float]:
        """Current effective weights (the factor multiplying each task's loss), for logging."""
        return {t: float(v.detach()) for t, v in self.task_weights().items()}

    def epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        """Called once per epoch with the epoch-averaged training loss of each task."""

    def backward(self, losses: Mapping[str, torch.Tensor], shared_params: Iterable[torch.Tensor]) -> None:
        """Fill ``.grad`` of the model's parameters (plain backward of the weighted sum here)."""
        self(losses).backward()

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}"

    def _check(self, losses: Mapping[str, torch.Tensor]) -> None:
        unknown = [t for t in losses if t not in self.tasks]
        if unknown:
            raise ValueError(f"{type(self).__name__} got losses for {unknown}, it weights only {list(self.tasks)}")
        if not losses:
            raise ValueError("no losses to weight (empty dict)")


class Equal(Weighting):
    """L = sum_k L_k."""


class Static(Weighting):
    """Fixed weights: L = sum_k c_k L_k.

    Args:
        tasks: task names.
        weights: {task: c_k} (tasks left out get 1.0) or a sequence in the order of ``tasks``.
    """

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | Sequence[float] | None = None) -> None:
        super().__init__(tasks)
        if weights is None:
            weights = {}
        if not isinstance(weights, Mapping):
            weights = list(weights)
            if len(weights) != len(self.tasks):
                raise ValueError(f"Static got {len(weights)} weights for {len(self.tasks)} tasks {list(self.tasks)}")
            weights = dict(zip(self.tasks, weights))
        unknown = [t for t in weights if t not in self.tasks]
        if unknown:
            raise ValueError(f"Static weights name unknown tasks {unknown}; tasks are {list(self.tasks)}")
        values = [float(weights.get(t, 1.0)) for t in self.tasks]
        if any(not math.isfinite(v) or v < 0 for v in values):
            raise ValueError(f"Static weights must be finite and >= 0, got {dict(zip(self.tasks, values))}")
        self.register_buffer("static_weights", torch.tensor(values, dtype=torch.float64))

    def task_weights(self) -> dict[str, torch.Tensor]:
        return {t: self.static_weights[i].float() for i, t in enumerate(self.tasks)}


class Uncertainty(Weighting):
    """Homoscedastic uncertainty weighting (Kendall et al. 2018, in MTAN's form).

    L = sum_k L_k / (2 exp(s_k)) + s_k / 2, with s_k = log sigma_k^2 learnable (``log_vars``, init ``-0.5``).
    The effective weight reported by :meth:`weights` is 1 / (2 exp(s_k)).
    """

    def __init__(self, tasks: Sequence[str], init: float = -0.5) -> None:
        super().__init__(tasks)
        self.log_vars = nn.Parameter(torch.full((len(self.tasks),), float(init)))  # [K]

    def task_weights(self) -> dict[str, torch.Tensor]:
        return {t: 0.5 * torch.exp(-self.log_vars[i]) for i, t in enumerate(self.tasks)}

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self._check(losses)
        total = 0.0
        for t, loss in losses.items():
            s = self.log_vars[self.tasks.index(t)].to(loss.device)
            total = total + loss / (2 * torch.exp(s)) + s / 2
        return total


class DWA(Weighting):
    """Dynamic Weight Average (Liu et al., MTAN, CVPR 2019).

    For epoch t >= 2: w_k = Lbar_k(t-1) / Lbar_k(t-2) (epoch-averaged training losses) and
    lambda_k = K exp(w_k / T) / sum_i exp(w_i / T); lambda_k = 1 for epochs 0 and 1.
    :meth:`epoch_end` must be called once per epoch with that epoch's averaged losses.
    """

    def __init__(self, tasks: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(tasks)
        if temperature <= 0:
            raise ValueError(f"DWA temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        k = len(self.tasks)
        # Lbar(t-1) and Lbar(t-2) of the epochs seen so far, and how many epochs have ended.
        self.register_buffer("last_losses", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("prev_losses", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("lambdas", torch.ones(k, dtype=torch.float64))

    def task_weights(self) -> dict[str, torch.Tensor]:
        return {t: self.lambdas[i].float() for i, t in enumerate(self.tasks)}

    def epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        missing = [t for t in self.tasks if t not in epoch_losses]
        if missing:
            raise ValueError(f"DWA.epoch_end needs the averaged loss of every task; missing {missing}")
        current = torch.tensor([float(epoch_losses[t]) for t in self.tasks], dtype=torch.float64)
        self.prev_losses.copy_(self.last_losses)
        self.last_losses.copy_(current)
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:  # the next epoch (index epochs_seen) uses the last two epochs' losses
            w = self.last_losses / self.prev_losses.clamp_min(1e-12)
            self.lambdas.copy_(len(self.tasks) * torch.softmax(w / self.temperature, dim=0))

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, temperature={self.temperature}"


def _flat_grads(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """d loss / d params, flattened to [P] (zeros for parameters the loss does not reach)."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def _assign_flat(flat: torch.Tensor, params: Sequence[torch.Tensor], before: list[torch.Tensor | None]) -> None:
    """``p.grad = before + flat[slice of p]`` for every parameter (``before``: grads present before backward)."""
    offset = 0
    for p, old in zip(params, before):
        n = p.numel()
        g = flat[offset:offset + n].view_as(p).to(p.dtype)
        p.grad = g.clone() if old is None else old + g
        offset += n


def _split_params(shared_params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    params = [p for p in shared_params if p.requires_grad]
    if not params:
        raise ValueError("gradient weighting methods need the model's shared parameters (none require grad)")
    return params


class GradNorm(Weighting):
    """GradNorm (Chen et al., ICML 2018).

    Learnable weights w_k (init 1). Each step, with G_k = ||grad_W (w_k L_k)|| over the shared parameters W,
    r_k = (L_k / L_k(0)) / mean_i (L_i / L_i(0)) and target_k = mean(G) * r_k^alpha (held constant),
    the weights take one Adam step on L_grad = sum_k |G_k - target_k| and are renormalised to sum to K.
    A task whose loss falls more slowly (larger r_k) gets a larger target and so a larger weight.
    The model's gradient is that of sum_k w_k L_k with the weights of this step (before their update).

    Args:
        tasks: task names.
        alpha: restoring-force strength (paper: 0.12 to 3; 1.5 for NYUv2).
        lr: learning rate of the weights' own Adam update.
    """

    owns_backward = True

    def __init__(self, tasks: Sequence[str], alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__(tasks)
        self.alpha = float(alpha)
        self.lr = float(lr)
        k = len(self.tasks)
        # The weights are updated here, not by the Trainer's optimiser, so they are a buffer.
        self.register_buffer("loss_weights", torch.ones(k))
        self.register_buffer("initial_losses", torch.full((k,), float("nan"), dtype=torch.float64))
        # Adam moments of the weights' own update (buffers so that checkpoints resume exactly).
        self.register_buffer("exp_avg", torch.zeros(k))
        self.register_buffer("exp_avg_sq", torch.zeros(k))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def task_weights(self) -> dict[str, torch.Tensor]:
        return {t: self.loss_weights[i] for i, t in enumerate(self.tasks)}

    def backward(self, losses: Mapping[str, torch.Tensor], shared_params: Iterable[torch.Tensor]) -> None:
        self._check(losses)
        params = _split_params(shared_params)
        names = list(losses)
        dev = self.loss_weights.device
        idx = torch.tensor([self.tasks.index(t) for t in names], device=dev)
        values = torch.stack([losses[t].detach().double().to(dev) for t in names])  # [k]
        first = torch.isnan(self.initial_losses[idx])
        if first.any():  # L_k(0): the first loss seen for each task
            self.initial_losses[idx[first]] = values[first]

        w = self.loss_weights.detach()[idx].clone().requires_grad_(True)  # [k]
        norms = torch.stack([_flat_grads(losses[t], params).norm() for t in names]).detach().to(dev)  # ||grad L_k||
        g = w * norms.to(w.dtype)  # G_k = ||grad (w_k L_k)|| = w_k ||grad L_k||  (w_k >= 0)
        ratio = values / self.initial_losses[idx].clamp_min(1e-12)
        r = ratio / ratio.mean()
        target = (g.detach().mean() * r.to(w.dtype) ** self.alpha).detach()
        grad_w = torch.autograd.grad((g - target).abs().sum(), w)[0]  # = sign(G_k - target_k) ||grad L_k||

        # Model gradients with this step's weights.
        sum(w.detach()[j].to(losses[t].device) * losses[t] for j, t in enumerate(names)).backward()

        # One Adam step on the weights, then renormalise to sum to K (the number of tasks).
        full_grad = torch.zeros_like(self.loss_weights)
        full_grad[idx] = grad_w
        self.steps += 1
        b1, b2, eps = 0.9, 0.999, 1e-8
        self.exp_avg.mul_(b1).add_((1 - b1) * full_grad)
        self.exp_avg_sq.mul_(b2).add_((1 - b2) * full_grad ** 2)
        step = int(self.steps)
        m_hat = self.exp_avg / (1 - b1 ** step)
        v_hat = self.exp_avg_sq / (1 - b2 ** step)
        new = (self.loss_weights - self.lr * m_hat / (v_hat.sqrt() + eps)).clamp_min(1e-4)
        self.loss_weights.copy_(new * len(self.tasks) / new.sum())

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, alpha={self.alpha}, lr={self.lr}"


class PCGrad(Weighting):
    """Projecting Conflicting Gradients (Yu et al., NeurIPS 2020), over the shared parameters.

    For each task i and each other task j (in random order, from the global torch RNG so that runs are
    reproducible): if g_i . g_j < 0, g_i <- g_i - (g_i . g_j) / ||g_j||^2 g_j (g_j: task j's original gradient).
    Shared parameters get the sum of the projected gradients; task-specific parameters get the plain sum of
    the task gradients (each is reached by its own task only). Weights are 1.
    """

    owns_backward = True

    def __init__(self, tasks: Sequence[str], shuffle: bool = True) -> None:
        super().__init__(tasks)
        self.shuffle = bool(shuffle)

    @staticmethod
    def project(grads: torch.Tensor, order: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        """Project conflicting gradients. grads [K,P] -> projected [K,P] (``order[i]``: the j's for task i)."""
        k = grads.shape[0]
        out = grads.clone()
        for i in range(k):
            others = order[i] if order is not None else [j for j in range(k) if j != i]
            for j in others:
                dot = torch.dot(out[i], grads[j])
                if dot < 0:
                    out[i] = out[i] - dot / grads[j].pow(2).sum().clamp_min(1e-20) * grads[j]
        return out

    def backward(self, losses: Mapping[str, torch.Tensor], shared_params: Iterable[torch.Tensor]) -> None:
        self._check(losses)
        params = _split_params(shared_params)
        names = list(losses)
        before = [None if p.grad is None else p.grad.detach().clone() for p in params]
        grads = torch.stack([_flat_grads(losses[t], params) for t in names])  # [k, P]
        order = None
        if self.shuffle:
            order = [[j for j in torch.randperm(len(names)).tolist() if j != i] for i in range(len(names))]
        projected = self.project(grads, order).sum(0)  # [P]
        # Plain sum everywhere (fills the task-specific parameters), then replace the shared parameters' part.
        sum(losses[t] for t in names).backward()
        _assign_flat(projected, params, before)

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, shuffle={self.shuffle}"


WEIGHTINGS: dict[str, type[Weighting]] = {
    "equal": Equal,
    "static": Static,
    "uncertainty": Uncertainty,
    "dwa": DWA,
    "gradnorm": GradNorm,
    "pcgrad": PCGrad,
}


def make_weighting(name: str, tasks: Sequence[str], **kw) -> Weighting:
    """Build weighting ``name`` (one of :data:`WEIGHTINGS`) for ``tasks``; ``kw`` go to its constructor.

    Example: ``make_weighting("static", ["semseg", "depth"], weights={"semseg": 0.5, "depth": 0.5})``.
    """
    key = str(name).lower()
    if key not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; valid weightings: {', '.join(WEIGHTINGS)}")
    return WEIGHTINGS[key](tasks, **kw)
