"""Multi-task loss weighting: one small ``nn.Module`` per method, built by name with ``make_weighting``.

Every method maps per-task losses ``{task: scalar}`` to one scalar (``forward``; absent tasks do not contribute),
reports its effective weights (``weights()``) and may update once per epoch (``epoch_end``). Learnable weights are
``nn.Parameter``s and all training state lives in parameters or buffers, so ``state_dict()`` resumes exactly.

Gradient methods (GradNorm, PCGrad, MGDA, CAGrad, IMTL-G, Nash-MTL) set ``owns_backward = True`` and implement
``backward(losses, shared_params)``, which fills ``.grad`` of every parameter itself; ``forward`` still returns
the weighted loss for logging.

Interface: docs/contracts.md#weighting. Formulas, options, sources: docs/weightings.md
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn as nn

__all__ = [
    "Weighting", "Equal", "Static", "Uncertainty", "DWA", "GradNorm", "PCGrad",
    "GradientCombination", "MGDA", "CAGrad", "IMTLG", "NashMTL", "WEIGHTINGS", "make_weighting",
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


# ----------------------------------------------------------------------------------- combination methods
# MGDA, CAGrad, IMTL-G and Nash-MTL all update the shared parameters with a combination sum_k a_k g_k of the task
# gradients g_k, and each finds its coefficients a from the K x K Gram matrix M = G G^T alone (M_ij = g_i . g_j).
# The solvers below work on M in float64 numpy: K is small, so they cost nothing next to the K backward passes.

def _min_norm_pair(xx: float, xy: float, yy: float) -> float:
    """Weight g on x minimising ||g x + (1 - g) y||^2 over g in [0, 1] (the exact two-point solution)."""
    denom = xx - 2.0 * xy + yy  # ||x - y||^2
    if denom <= 1e-12 * max(xx, yy, 1e-300):  # x == y: every point of the segment is the same vector
        return 0.5
    return float(min(max((yy - xy) / denom, 0.0), 1.0))


def min_norm_coefficients(gram, max_iter: int = 1000, tol: float = 1e-12):
    """Min-norm point of the convex hull of the task gradients: argmin_{a in simplex} a^T M a.

    Two tasks: the exact solution. More: Frank-Wolfe with exact line search (Sener & Koltun 2018, Algorithm 2)
    plus away steps, which converge linearly where plain Frank-Wolfe zig-zags (an optimum on a face of the
    simplex); stopped when the duality gap a^T M a - min_t (M a)_t is below ``tol`` times the largest diagonal.
    """
    import numpy as np

    m = np.asarray(gram, dtype=np.float64)
    k = m.shape[0]
    if k == 1:
        return np.ones(1)
    if k == 2:
        g = _min_norm_pair(m[0, 0], m[0, 1], m[1, 1])
        return np.array([g, 1.0 - g])
    scale = max(float(np.max(np.diag(m))), 1e-300)
    a = np.full(k, 1.0 / k)
    for _ in range(max_iter):
        ma = m @ a
        aa = float(a @ ma)
        s = int(np.argmin(ma))  # toward vertex s
        active = np.flatnonzero(a > 0)
        v = int(active[np.argmax(ma[active])])  # away from vertex v
        if aa - ma[s] <= tol * scale:
            break
        if aa - ma[s] >= ma[v] - aa:
            d, gamma_max = -a.copy(), 1.0
            d[s] += 1.0
        else:
            d, gamma_max = a.copy(), (a[v] / (1.0 - a[v]) if a[v] < 1.0 else 0.0)
            d[v] -= 1.0
        curv = float(d @ m @ d)
        gamma = gamma_max if curv <= 0 else min(max(-float(d @ ma) / curv, 0.0), gamma_max)
        a = np.clip(a + gamma * d, 0.0, None)
        a /= a.sum()
    return a


def _cagrad_pair(m, p, phi: float) -> float:
    """w_1 minimising F(w_1) = w_1 p_1 + (1 - w_1) p_2 + phi ||g_2 + w_1 (g_1 - g_2)|| on [0, 1] (exactly).

    With D = ||g_1 - g_2||^2, e = (g_1 - g_2) . g_2, u = w_1 + e / D and h = ||g_2||^2 - e^2 / D (the squared
    distance from 0 to the line through g_1, g_2): F'(w_1) = (p_1 - p_2) + phi D u / sqrt(D u^2 + h), zero at
    u = r sqrt(h / (D (D - r^2))) with r = (p_2 - p_1) / phi when r^2 < D; else F is monotone. F is convex, so
    clipping to [0, 1] gives the constrained minimiser.
    """
    d = m[0, 0] - 2.0 * m[0, 1] + m[1, 1]
    if d <= 1e-12 * max(m[0, 0], m[1, 1], 1e-300):  # g_1 = g_2: F is constant
        return 0.5
    e = m[0, 1] - m[1, 1]
    h = max(m[1, 1] - e * e / d, 0.0)
    r = (p[1] - p[0]) / phi
    if r * r >= d:
        return 1.0 if r > 0 else 0.0
    u = r * math.sqrt(h / (d * (d - r * r)))
    return float(min(max(u - e / d, 0.0), 1.0))


def cagrad_coefficients(gram, c: float = 0.5, rescale: int = 1):
    """CAGrad's update as coefficients on the task gradients (Liu et al. 2021).

    With g0 = mean gradient, the dual min_{w in simplex} w^T M b + c ||g0|| sqrt(w^T M w) (b = 1/K) is solved
    with SLSQP; the update d = g0 + (c ||g0|| / ||g_w||) g_w is sum_k (b_k + lambda w_k) g_k, divided by
    1 + c^2 (``rescale=1``, the authors' choice), 1 + c (``rescale=2``) or not at all (``rescale=0``).
    Two tasks: the dual's exact minimiser (:func:`_cagrad_pair`), no solver.
    """
    import numpy as np
    from scipy.optimize import minimize

    m = np.asarray(gram, dtype=np.float64)
    k = m.shape[0]
    b = np.full(k, 1.0 / k)
    scale = float(np.trace(m)) / k
    div = {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]
    if scale <= 0 or c == 0:
        return b / div
    ms = m / scale  # the minimiser is invariant to scaling M; SLSQP's tolerances are absolute
    phi = c * math.sqrt(max(float(b @ ms @ b), 0.0))  # c ||g0||
    if phi == 0.0:  # g0 = 0: the ball around g0 is a point
        return b / div

    def objective(w):
        mw = ms @ w
        nw = math.sqrt(max(float(w @ mw), 1e-16))
        return float(w @ ms @ b) + phi * nw, ms @ b + phi * mw / nw

    if k == 2:
        w = np.array([_cagrad_pair(ms, ms @ b, phi)])
        w = np.array([w[0], 1.0 - w[0]])
    else:
        res = minimize(objective, b, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * k,
                       constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0,
                                     "jac": lambda w: np.ones_like(w)},),
                       options={"ftol": 1e-12, "maxiter": 200})
        w = res.x
    w = np.clip(w, 0.0, None)
    w = w / w.sum()
    gw = math.sqrt(max(float(w @ ms @ w), 0.0))
    lam = phi / gw if gw > 1e-12 else 0.0
    return (b + lam * w) / div


def imtlg_coefficients(gram):
    """IMTL-G (Liu et al. 2021): a with sum a = 1 such that sum_k a_k g_k has the same projection on every unit
    task gradient u_t = g_t / ||g_t||, i.e. (sum_s a_s g_s) . (u_1 - u_t) = 0 for t = 2..K. Solved by least
    squares for the a closest to uniform, which is the paper's closed form a_{2:K} = g_1 U^T (D U^T)^-1 whenever
    that inverse exists, and stays defined (a = 1/K) when it does not (equal or parallel gradients).
    """
    import numpy as np

    m = np.asarray(gram, dtype=np.float64)
    k = m.shape[0]
    norms = np.sqrt(np.clip(np.diag(m), 1e-300, None))
    q = m / norms[:, None]  # q[t, s] = u_t . g_s
    b = np.full(k, 1.0 / k)
    system = np.vstack([q[:1] - q[1:], np.ones((1, k))])  # [K, K]: equal projections, then sum a = 1
    rhs = -system @ b
    rhs[-1] = 0.0  # unknown: a - b, so the minimum-norm solution is the a nearest to uniform
    return b + np.linalg.lstsq(system, rhs, rcond=None)[0]


def nash_coefficients(gram, ridge: float = 1e-8, max_iter: int = 100):
    """Nash-MTL's bargaining coefficients (Navon et al. 2022): a > 0 with (M a)_k = 1 / a_k.

    That equation is the stationarity condition of the strictly convex f(a) = a^T M a / 2 - sum_k log a_k, so a is
    its minimiser, found by damped Newton steps. It is solved on the cosine matrix C = D^-1/2 M D^-1/2
    (D = diag M; then a_k = c_k / sqrt(M_kk)), so that gradients of very different sizes stay well conditioned,
    plus ``ridge`` so that f stays bounded when no direction improves every task (opposite gradients): there a is
    large but symmetric and the update cancels. A task with a zero gradient gets a_k = 0. Two tasks have a closed
    form: d = (u_1 + u_2) / sqrt(1 + cos(g_1, g_2)), the bisector of the unit gradients, of length sqrt(2).
    """
    import numpy as np

    m = np.asarray(gram, dtype=np.float64)
    k = m.shape[0]
    norms = np.sqrt(np.clip(np.diag(m), 0.0, None))
    live = norms > 1e-12 * max(float(norms.max()), 1e-300)
    out = np.zeros(k)
    if not live.any():
        return out
    n = norms[live]
    cos = m[np.ix_(live, live)] / np.outer(n, n) + ridge * np.eye(int(live.sum()))

    if len(n) == 2:  # C = [[1 + r, c], [c, 1 + r]]: by symmetry a_1 = a_2 = 1 / sqrt(1 + r + c), d on the bisector
        out[live] = 1.0 / math.sqrt(max(cos[0, 0] + cos[0, 1], 1e-300)) / n
        return out

    def f(a):
        return 0.5 * float(a @ cos @ a) - float(np.log(a).sum())

    a = np.full(len(n), 1.0 / math.sqrt(len(n)))  # exact when the gradients are orthogonal
    for _ in range(max_iter):
        grad = cos @ a - 1.0 / a
        if np.max(np.abs(grad * a)) < 1e-10:  # relative residual of (C a)_k a_k = 1
            break
        step = np.linalg.solve(cos + np.diag(1.0 / a ** 2), grad)
        t = 1.0
        while np.any(a - t * step <= 0):  # stay in a > 0
            t *= 0.5
        f0 = f(a)
        slack = 1e-13 * abs(f0)  # near the optimum f changes below rounding: full Newton steps are then right
        while t > 1e-10 and f(a - t * step) > f0 - 1e-4 * t * float(grad @ step) + slack:
            t *= 0.5
        a = a - t * step
    out[live] = a / n
    return out


class GradientCombination(Weighting):
    """Base of the methods whose shared update is a combination sum_k a_k g_k of the task gradients.

    Subclasses implement :meth:`coefficients` (K x K Gram matrix -> a). The gradients g_k are taken on the
    shared parameters, or, with ``representation`` (the dotted name of a submodule whose output every task reads,
    e.g. ``"decoder"``) and :meth:`bind`, on that output (MGDA-UB's cheaper upper bound: one backward per task
    through the heads only); the shared parameters then get the gradient of sum_k a_k L_k. Task-specific
    parameters get their own task's plain gradient (as PCGrad here, and MGDA's Algorithm 2).
    :meth:`weights` reports the last step's a (0 for a task absent from that step).
    """

    owns_backward = True

    def __init__(self, tasks: Sequence[str], representation: str | None = None) -> None:
        super().__init__(tasks)
        self.representation = representation
        self.register_buffer("coeffs", torch.full((len(self.tasks),), 1.0 / len(self.tasks)))
        self._captured: torch.Tensor | None = None
        self._hook = None

    def coefficients(self, gram, losses):
        """a [K] (numpy float64) from the Gram matrix [K, K] of the task gradients and the loss values [K]."""
        raise NotImplementedError

    def combine(self, grads: torch.Tensor, losses: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Task gradients [K, P] -> (shared update [P], coefficients a [K]); used by backward and the notebooks."""
        import numpy as np

        g64 = grads.detach().double()
        gram = (g64 @ g64.T).cpu().numpy()
        values = np.ones(grads.shape[0]) if losses is None else np.asarray(losses, dtype=np.float64)
        a = torch.as_tensor(np.asarray(self.coefficients(gram, values), dtype=np.float64), device=grads.device)
        return self.postprocess((a @ g64).to(grads.dtype)), a

    def postprocess(self, update: torch.Tensor) -> torch.Tensor:
        """Last touch on the shared update [P] (Nash-MTL's optional norm clip)."""
        return update

    def task_weights(self) -> dict[str, torch.Tensor]:
        return {t: self.coeffs[i] for i, t in enumerate(self.tasks)}

    def bind(self, model: nn.Module) -> GradientCombination:
        """Capture the output of ``model.<representation>`` at every training forward (needed before training)."""
        if self.representation is None:
            raise ValueError(f"{type(self).__name__} has no representation= to bind; it uses the shared parameters")
        try:
            module = model.get_submodule(self.representation)
        except AttributeError:
            names = [n for n, _ in model.named_children()]
            raise ValueError(f"{type(model).__name__} has no submodule {self.representation!r}; its children are "
                             f"{names} (dotted paths reach deeper ones)") from None
        if self._hook is not None:
            self._hook.remove()

        def keep(_module, _inputs, output):
            if torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad:
                self._captured = output

        self._hook = module.register_forward_hook(keep)
        return self

    def _task_grads(self, losses: Mapping[str, torch.Tensor], names: list[str],
                    params: list[torch.Tensor]) -> torch.Tensor:
        if self.representation is None:
            return torch.stack([_flat_grads(losses[t], params) for t in names])  # [k, P]
        z = self._captured
        if z is None:
            raise RuntimeError(f"{type(self).__name__}(representation={self.representation!r}) has seen no forward "
                               "output: call weighting.bind(model) before training, then pass the weighting "
                               "object to the Trainer")
        rows = []
        for t in names:
            (g,) = torch.autograd.grad(losses[t], z, retain_graph=True, allow_unused=True)
            if g is None:
                raise ValueError(f"task {t!r}'s loss does not depend on the output of {self.representation!r}; "
                                 "pick a module whose output every task reads")
            rows.append(g.reshape(-1))
        return torch.stack(rows)  # [k, numel(z)]

    def backward(self, losses: Mapping[str, torch.Tensor], shared_params: Iterable[torch.Tensor]) -> None:
        self._check(losses)
        params = _split_params(shared_params)
        names = list(losses)
        before = [None if p.grad is None else p.grad.detach().clone() for p in params]
        grads = self._task_grads(losses, names, params)
        values = [float(losses[t].detach()) for t in names]
        update, a = self.combine(grads, values)
        if self.representation is not None:  # the update on the parameters is the gradient of sum_k a_k L_k
            weighted = sum(float(a[j]) * losses[t] for j, t in enumerate(names))
            update = self.postprocess(_flat_grads(weighted, params))
        self._captured = None
        sum(losses[t] for t in names).backward()  # task-specific parameters: their plain gradient
        _assign_flat(update, params, before)
        coeffs = torch.zeros_like(self.coeffs)
        for j, t in enumerate(names):
            coeffs[self.tasks.index(t)] = float(a[j])
        self.coeffs.copy_(coeffs)

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, representation={self.representation!r}"


class MGDA(GradientCombination):
    """MGDA (Sener & Koltun, NeurIPS 2018): the min-norm point of the convex hull of the task gradients.

    a = argmin_{a in simplex} ||sum_k a_k g_k||^2 (exact for two tasks, Frank-Wolfe beyond). The result is a
    common descent direction whenever one exists, and 0 at a Pareto-stationary point. With ``representation``
    (see :class:`GradientCombination`) this is MGDA-UB. ``normalize`` rescales each g_k before solving
    (``"l2"``: by ||g_k||, ``"loss"``: by L_k, ``"loss+"``: by L_k ||g_k||, ``"none"``), as the authors' code
    offers; the update still combines the raw gradients with the a found.
    """

    NORMALIZE = ("none", "l2", "loss", "loss+")

    def __init__(self, tasks: Sequence[str], representation: str | None = None, normalize: str = "none") -> None:
        super().__init__(tasks, representation)
        if normalize not in self.NORMALIZE:
            raise ValueError(f"unknown MGDA normalize {normalize!r}; valid: {', '.join(self.NORMALIZE)}")
        self.normalize = normalize

    def coefficients(self, gram, losses):
        import numpy as np

        norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
        n = {"none": np.ones_like(norms), "l2": norms, "loss": np.asarray(losses),
             "loss+": np.asarray(losses) * norms}[self.normalize]
        n = np.clip(n, 1e-12, None)
        return min_norm_coefficients(gram / np.outer(n, n))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, normalize={self.normalize!r}"


class CAGrad(GradientCombination):
    """Conflict-Averse Gradient descent (Liu et al., NeurIPS 2021).

    The update d maximises the worst task's improvement min_k g_k . d within the ball ||d - g0|| <= c ||g0||
    around the mean gradient g0; c = 0 is plain gradient descent on the mean loss, large c approaches MGDA.
    See :func:`cagrad_coefficients` for the dual solved (scipy SLSQP over the simplex) and ``rescale``.
    """

    def __init__(self, tasks: Sequence[str], c: float = 0.5, rescale: int = 1,
                 representation: str | None = None) -> None:
        super().__init__(tasks, representation)
        if not (math.isfinite(c) and c >= 0):
            raise ValueError(f"CAGrad c must be finite and >= 0, got {c}")
        if rescale not in (0, 1, 2):
            raise ValueError(f"CAGrad rescale must be 0 (none), 1 (/(1+c^2)) or 2 (/(1+c)), got {rescale}")
        self.c, self.rescale = float(c), int(rescale)

    def coefficients(self, gram, losses):
        return cagrad_coefficients(gram, self.c, self.rescale)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, c={self.c}, rescale={self.rescale}"


class IMTLG(GradientCombination):
    """IMTL-G, the gradient half of Impartial Multi-Task Learning (Liu et al., ICLR 2021).

    The combined gradient g = sum_k a_k g_k (sum a = 1) has equal projections g . u_k on every unit task
    gradient, so no task is favoured by its gradient's size; closed form, see :func:`imtlg_coefficients`.
    The paper computes it on the shared representation (``representation``); the default uses the parameters.
    """

    def coefficients(self, gram, losses):
        return imtlg_coefficients(gram)


class NashMTL(GradientCombination):
    """Nash-MTL (Navon et al., ICML 2022): the Nash bargaining solution between the tasks.

    d = sum_k a_k g_k with a > 0 solving (G G^T a)_k = 1 / a_k, so g_k . d = 1 / a_k for every task and
    ||d||^2 = K. Solved by Newton's method on a convex function (:func:`nash_coefficients`), no convex-programming
    package needed (the authors use cvxpy). ``max_norm`` clips the update's norm (None: no clipping).
    """

    def __init__(self, tasks: Sequence[str], max_norm: float | None = None,
                 representation: str | None = None) -> None:
        super().__init__(tasks, representation)
        if max_norm is not None and not max_norm > 0:
            raise ValueError(f"NashMTL max_norm must be > 0 or None, got {max_norm}")
        self.max_norm = None if max_norm is None else float(max_norm)

    def coefficients(self, gram, losses):
        return nash_coefficients(gram)

    def postprocess(self, update: torch.Tensor) -> torch.Tensor:
        if self.max_norm is None:
            return update
        norm = float(update.norm())
        return update * (self.max_norm / norm) if norm > self.max_norm else update

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_norm={self.max_norm}"


WEIGHTINGS: dict[str, type[Weighting]] = {
    "equal": Equal,
    "static": Static,
    "uncertainty": Uncertainty,
    "dwa": DWA,
    "gradnorm": GradNorm,
    "pcgrad": PCGrad,
    "mgda": MGDA,
    "cagrad": CAGrad,
    "imtlg": IMTLG,
    "nashmtl": NashMTL,
}


def make_weighting(name: str, tasks: Sequence[str], **kw) -> Weighting:
    """Build weighting ``name`` (one of :data:`WEIGHTINGS`) for ``tasks``; ``kw`` go to its constructor.

    Example: ``make_weighting("static", ["semseg", "depth"], weights={"semseg": 0.5, "depth": 0.5})``.
    """
    key = str(name).lower()
    if key not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; valid weightings: {', '.join(WEIGHTINGS)}")
    return WEIGHTINGS[key](tasks, **kw)
