"""Loss-weighting methods against their formulas (values computed by hand in the comments)."""
from __future__ import annotations

import math

import pytest
import torch

from mtlkit.weighting import (
    DWA,
    IMTLG,
    MGDA,
    CAGrad,
    Equal,
    GradNorm,
    NashMTL,
    PCGrad,
    Static,
    Uncertainty,
    make_weighting,
)

ORTH, OPP, EQUAL, MULT = [[1, 0], [0, 1]], [[1, 0], [-1, 0]], [[1, 1], [1, 1]], [[1, 0], [3, 0]]  # g_1, g_2


def t(x: float) -> torch.Tensor:
    return torch.tensor(float(x), requires_grad=True)


def test_make_weighting_unknown_name_lists_choices():
    names = "equal, static, uncertainty, dwa, gradnorm, pcgrad, mgda, cagrad, imtlg, nashmtl"
    with pytest.raises(ValueError, match=f"valid weightings: {names}"):
        make_weighting("nope", ["semseg"])
    assert isinstance(make_weighting("DWA", ["a", "b"]), DWA)


def test_equal_and_static():
    losses = {"a": t(2.0), "b": t(0.5)}
    assert Equal(["a", "b"])(losses).item() == pytest.approx(2.5)
    st = Static(["a", "b"], {"a": 0.5, "b": 0.5})
    total = st(losses)
    assert total.item() == pytest.approx(1.25)
    total.backward()
    assert losses["a"].grad.item() == pytest.approx(0.5)
    assert st.weights() == {"a": 0.5, "b": 0.5}
    assert Static(["a", "b"], [10.0, 2.0]).weights() == {"a": 10.0, "b": 2.0}
    # a subset of the tasks (task switching) weights only those present
    assert st({"b": t(4.0)}).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="unknown tasks"):
        Static(["a"], {"c": 1.0})
    with pytest.raises(ValueError, match="weights only"):
        Equal(["a"])({"z": t(1.0)})


def test_uncertainty_value_and_gradients_by_hand():
    u = Uncertainty(["a", "b"])
    assert u.log_vars.detach().tolist() == [-0.5, -0.5]
    la, lb = t(2.0), t(0.5)
    total = u({"a": la, "b": lb})
    # sum L/(2 e^s) + s/2 with s = -0.5: (2 + 0.5) * e^0.5 / 2 - 0.5 = 1.5609015884
    assert total.item() == pytest.approx(1.5609015884, abs=1e-7)
    total.backward()
    # dL/ds_k = -L_k / (2 e^s) + 1/2: a: -e^0.5 + 0.5 = -1.1487212707; b: -0.25 e^0.5 + 0.5 = 0.0878196823
    assert u.log_vars.grad.tolist() == pytest.approx([-1.1487212707, 0.0878196823], abs=1e-7)
    # dL/dL_k = 1 / (2 e^s) = e^0.5 / 2 = 0.8243606354 (also the logged weight)
    assert la.grad.item() == pytest.approx(0.8243606354, abs=1e-7)
    assert u.weights()["b"] == pytest.approx(0.8243606354, abs=1e-7)
    assert [n for n, _ in u.named_parameters()] == ["log_vars"]


def test_dwa_scripted_history():
    dwa = DWA(["a", "b"])
    history = [{"a": 1.0, "b": 2.0}, {"a": 0.5, "b": 1.8}, {"a": 0.4, "b": 0.9}, {"a": 0.38, "b": 0.9}]
    # lambda_k = 2 exp(w_k/2) / sum exp(w_i/2); w from the two previous epochs:
    # epoch 2: w = (0.5/1.0, 1.8/2.0) = (0.5, 0.9): 2 e^0.25 / (e^0.25 + e^0.45) = 0.9003320054
    # epoch 3: w = (0.4/0.5, 0.9/1.8) = (0.8, 0.5) -> 1.0748596907, 0.9251403093
    # epoch 4: w = (0.38/0.4, 0.9/0.9) = (0.95, 1.0) -> 0.9875006510, 1.0124993490
    expected = [(1.0, 1.0), (1.0, 1.0), (0.9003320054, 1.0996679946), (1.0748596907, 0.9251403093),
                (0.9875006510, 1.0124993490)]
    seen = []
    for epoch in range(5):
        w = dwa.weights()
        seen.append((w["a"], w["b"]))
        assert w["a"] + w["b"] == pytest.approx(2.0)
        total = dwa({"a": t(1.0), "b": t(3.0)})
        assert total.item() == pytest.approx(w["a"] + 3 * w["b"], rel=1e-6)
        if epoch < len(history):
            dwa.epoch_end(history[epoch])
    for got, want in zip(seen, expected):
        assert got == pytest.approx(want, abs=1e-7)
    # the state round-trips through state_dict (what checkpoints hold)
    other = DWA(["a", "b"])
    other.load_state_dict(dwa.state_dict())
    assert other.weights() == dwa.weights()
    with pytest.raises(ValueError, match="missing"):
        dwa.epoch_end({"a": 1.0})


def _linear_losses(theta: torch.Tensor, grads: list[list[float]], offsets: list[float]) -> list[torch.Tensor]:
    """L_k = g_k . theta + c_k: gradient g_k, value chosen by c_k."""
    return [torch.dot(torch.tensor(g, dtype=torch.float32), theta) + c for g, c in zip(grads, offsets)]


def test_pcgrad_projects_conflicting_gradients():
    theta = torch.zeros(2, requires_grad=True)  # shared
    head = torch.zeros(1, requires_grad=True)   # task-specific, task a only
    la, lb = _linear_losses(theta, [[1.0, 0.0], [-1.0, 1.0]], [0.0, 0.0])
    la = la + 3.0 * head.sum()
    pc = PCGrad(["a", "b"])
    assert pc.owns_backward
    pc.backward({"a": la, "b": lb}, [theta])
    # g1.g2 = -1 < 0: g1' = g1 - (-1)/2 g2 = (0.5, 0.5); g2' = g2 - (-1)/1 g1 = (0, 1); sum (0.5, 1.5)
    assert theta.grad.tolist() == pytest.approx([0.5, 1.5])
    assert head.grad.tolist() == pytest.approx([3.0])  # plain gradient of its own task
    # the projected gradients are orthogonal to the other task's original gradient
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    proj = PCGrad.project(g)
    assert torch.dot(proj[0], g[1]).item() == pytest.approx(0.0)
    assert torch.dot(proj[1], g[0]).item() == pytest.approx(0.0)


def test_pcgrad_leaves_agreeing_gradients_alone():
    theta = torch.zeros(2, requires_grad=True)
    la, lb = _linear_losses(theta, [[1.0, 0.0], [1.0, 1.0]], [0.0, 0.0])
    PCGrad(["a", "b"], shuffle=False).backward({"a": la, "b": lb}, [theta])
    assert theta.grad.tolist() == pytest.approx([2.0, 1.0])


def test_gradnorm_scripted_steps():
    theta = torch.ones(2, requires_grad=True)
    gn = GradNorm(["a", "b"], alpha=1.5, lr=0.025)
    # step 1 records L(0) = (1, 1); r = (1, 1) so G = target and the weights do not move
    gn.backward(dict(zip("ab", _linear_losses(theta, [[1, 0], [0, 1]], [0.0, 0.0]))), [theta])
    assert theta.grad.tolist() == pytest.approx([1.0, 1.0])
    assert gn.weights() == pytest.approx({"a": 1.0, "b": 1.0})
    theta.grad = None
    # step 2: task a halved its loss, b did not: r = (2/3, 4/3), targets 0.544 / 1.540, G = (1, 1)
    # dL_grad/dw = (+1, -1); Adam (m_hat = 0.1/0.19, v_hat = 0.001/0.001999) moves w by -/+ 0.025 * 0.7441379
    gn.backward(dict(zip("ab", _linear_losses(theta, [[1, 0], [0, 1]], [-0.5, 0.0]))), [theta])
    assert theta.grad.tolist() == pytest.approx([1.0, 1.0])  # this step's weights (1, 1), before the update
    step = 0.025 * (0.1 / 0.19) / math.sqrt(0.001 / 0.001999)
    w = gn.weights()
    assert w["a"] == pytest.approx(1 - step, abs=1e-6)
    assert w["b"] == pytest.approx(1 + step, abs=1e-6)
    assert sum(w.values()) == pytest.approx(2.0)


def test_gradnorm_moves_weight_to_the_slower_task_and_keeps_sum():
    torch.manual_seed(0)
    # two quadratic tasks on a shared vector; task b is 20x worse conditioned so it trains more slowly
    theta = torch.tensor([3.0, 3.0], requires_grad=True)
    gn = GradNorm(["a", "b"], alpha=1.5, lr=0.05)
    opt = torch.optim.SGD([theta], lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        losses = {"a": (theta[0] - 1.0) ** 2, "b": 0.05 * (theta[1] - 1.0) ** 2}
        gn.backward(losses, [theta])
        opt.step()
        assert sum(gn.weights().values()) == pytest.approx(2.0, abs=1e-5)
    w = gn.weights()
    assert w["b"] > 1.2 > 1.0 > w["a"] > 0


@pytest.mark.parametrize("grads, update", [
    (ORTH, [1.0, 1.0]), ([[1, 0], [0, 2]], [1.0, 2.0]), (OPP, [0.0, 0.0]), (EQUAL, [2.0, 2.0]), (MULT, [4.0, 0.0]),
])
def test_pcgrad_two_task_cases_by_hand(grads, update):
    # no conflict (dot >= 0): the plain sum; exactly opposite: each projection removes everything
    assert PCGrad.project(torch.tensor(grads, dtype=torch.float64)).sum(0).tolist() == pytest.approx(update)


def test_pcgrad_cancels_opposite_gradients():
    # g1 = (1, 0), g2 = (-2, 0): g1' = g1 - (g1.g2 / |g2|^2) g2 = (1,0) - (-2/4)(-2,0) = 0; g2' = g2 + 2 g1 = 0
    proj = PCGrad.project(torch.tensor([[1.0, 0.0], [-2.0, 0.0]]))
    assert proj.abs().max().item() == pytest.approx(0.0)
    # only the conflicting component goes: g1 = (1, 1), g2 = (-1, 0) -> g1' = (0, 1), g2' = (-1,0) - (-1/2)(1,1)
    proj = PCGrad.project(torch.tensor([[1.0, 1.0], [-1.0, 0.0]]))
    assert proj.tolist() == [pytest.approx([0.0, 1.0]), pytest.approx([-0.5, 0.5])]


# ------------------------------------------------------------------------- MGDA, CAGrad, IMTL-G, Nash-MTL
def combine(cls, grads, **kw):
    """Run method ``cls`` on task gradients ``grads`` (list of vectors) -> (update, coefficients) as lists."""
    g = torch.tensor(grads, dtype=torch.float64)
    update, a = cls([f"t{i}" for i in range(len(grads))], **kw).combine(g)
    return update.tolist(), a.tolist()


@pytest.mark.parametrize("grads, update, coeffs", [
    (ORTH, [0.5, 0.5], [0.5, 0.5]),            # the midpoint of the segment is the closest point to 0
    (OPP, [0.0, 0.0], [0.5, 0.5]),             # 0 lies on the segment: Pareto-stationary, no update
    (EQUAL, [1.0, 1.0], [0.5, 0.5]),           # the segment is one point
    (MULT, [1.0, 0.0], [1.0, 0.0]),            # the shorter gradient is the min-norm point
    ([[1, 0], [0, 2]], [0.8, 0.4], [0.8, 0.2]),  # a1 = (g2 - g1).g2 / |g1 - g2|^2 = 4 / 5
])
def test_mgda_two_task_cases_by_hand(grads, update, coeffs):
    got_update, got_coeffs = combine(MGDA, grads)
    assert got_update == pytest.approx(update, abs=1e-9)
    assert got_coeffs == pytest.approx(coeffs, abs=1e-9)


def test_mgda_many_tasks_matches_a_grid_search_over_the_simplex():
    torch.manual_seed(0)
    g = torch.randn(3, 6, dtype=torch.float64)
    g[2] = -0.6 * g[0] + 0.3 * g[1] + 0.1 * torch.randn(6, dtype=torch.float64)  # conflict: the hull nears 0
    update, a = MGDA(["a", "b", "c"]).combine(g)
    # independent: the smallest ||sum a_k g_k|| over a 1/400 grid of the simplex
    n = 400
    grid = torch.tensor([[i / n, j / n, (n - i - j) / n] for i in range(n + 1) for j in range(n + 1 - i)],
                        dtype=torch.float64)
    best = (grid @ g).norm(dim=1).min().item()
    assert sum(a.tolist()) == pytest.approx(1.0) and min(a.tolist()) >= 0
    assert best - 2e-3 <= update.norm().item() <= best + 1e-12
    # optimality: every task with a_k > 0 sees the same g_k . d = ||d||^2, the others at least that
    dots = (g @ update).tolist()
    sq = update.pow(2).sum().item()
    for ak, dk in zip(a.tolist(), dots):
        assert dk >= sq - 1e-6
        if ak > 1e-6:
            assert dk == pytest.approx(sq, abs=1e-6)


@pytest.mark.parametrize("normalize", ["l2", "loss", "loss+"])
def test_mgda_normalisation_solves_on_rescaled_gradients(normalize):
    # g1 = (1, 0), g2 = (0, 2), losses (1, 4). l2: unit gradients -> a = (1/2, 1/2);
    # loss: (1, 0), (0, 1/2) -> a1 = 0.25 / 1.25 = 0.2; loss+: (1, 0), (0, 1/4) -> a1 = 0.0625 / 1.0625
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    update, a = MGDA(["a", "b"], normalize=normalize).combine(g, [1.0, 4.0])
    a1 = {"l2": 0.5, "loss": 0.2, "loss+": 0.0625 / 1.0625}[normalize]
    assert a.tolist() == pytest.approx([a1, 1 - a1])
    assert update.tolist() == pytest.approx([a1, 2 * (1 - a1)])  # raw gradients, combined with a
    with pytest.raises(ValueError, match="valid: none, l2, loss, loss\\+"):
        MGDA(["a"], normalize="max")


def test_cagrad_with_c_zero_is_the_mean_gradient():
    torch.manual_seed(1)
    g = torch.randn(4, 7, dtype=torch.float64)
    update, a = CAGrad(list("abcd"), c=0.0).combine(g)
    assert update.tolist() == pytest.approx(g.mean(0).tolist())
    assert a.tolist() == pytest.approx([0.25] * 4)


@pytest.mark.parametrize("grads, update", [
    (ORTH, [0.6, 0.6]),    # w = (1/2, 1/2) by symmetry, lambda = c |g0| / |g_w| = c: (1 + c) g0 / (1 + c^2)
    (OPP, [0.0, 0.0]),     # g0 = 0: the ball around g0 is a point
    (EQUAL, [1.2, 1.2]),   # g_w = g0 = g: (1 + c) g / (1 + c^2)
    (MULT, [2.4, 0.0]),    # g0 = (2,0), g_w = (1,0) (the smaller): (g0 + c |g0| (1,0)) / 1.25 = 3 / 1.25
])
def test_cagrad_two_task_cases_by_hand(grads, update):
    assert combine(CAGrad, grads, c=0.5)[0] == pytest.approx(update, abs=1e-6)


@pytest.mark.parametrize("seed, k", [(0, 2), (1, 2), (2, 3), (3, 3)])
def test_cagrad_solves_its_primal_problem(seed, k):
    # independent: max_d min_k g_k . d over the circle ||d - g0|| = c ||g0|| (2-D), by a fine angle grid
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(k, 2, dtype=torch.float64, generator=gen)
    c = 0.5
    update, _ = CAGrad(list("abc")[:k], c=c, rescale=0).combine(g)
    g0 = g.mean(0)
    phi = torch.linspace(0, 2 * math.pi, 200_001, dtype=torch.float64)
    circle = g0 + c * g0.norm() * torch.stack([phi.cos(), phi.sin()], 1)  # [N, 2]
    worst = (circle @ g.T).min(1).values
    best = circle[worst.argmax()]
    assert update.tolist() == pytest.approx(best.tolist(), abs=2e-4)
    assert (update - g0).norm().item() <= c * g0.norm().item() * (1 + 1e-6)  # inside the ball
    assert (g @ update).min().item() >= worst.max().item() - 1e-6  # and at least as good as the grid's best
    rescaled, _ = CAGrad(list("abc")[:k], c=c).combine(g)  # default rescale=1 divides by 1 + c^2
    assert rescaled.tolist() == pytest.approx((update / (1 + c * c)).tolist(), abs=1e-9)


@pytest.mark.parametrize("grads, update, coeffs", [
    ([[1, 0], [0, 2]], [2 / 3, 2 / 3], [2 / 3, 1 / 3]),   # d . u1 = a1 = d . u2 = 2 a2, a1 + a2 = 1
    ([[1, 0], [-2, 0]], [0.0, 0.0], [2 / 3, 1 / 3]),      # u2 = -u1: d . u1 = -d . u1 -> d = 0
    (EQUAL, [1.0, 1.0], [0.5, 0.5]),                      # degenerate (any a works): the uniform one
    (MULT, [2.0, 0.0], [0.5, 0.5]),                       # degenerate (u1 = u2): the uniform one
])
def test_imtlg_two_task_cases_by_hand(grads, update, coeffs):
    got_update, got_coeffs = combine(IMTLG, grads)
    assert got_update == pytest.approx(update, abs=1e-9)
    assert got_coeffs == pytest.approx(coeffs, abs=1e-9)


def test_imtlg_matches_the_papers_closed_form():
    torch.manual_seed(2)
    g = torch.randn(4, 9, dtype=torch.float64)
    g[1] *= 5.0  # one large gradient must not dominate
    update, a = IMTLG(list("abcd")).combine(g)
    # the paper: D = rows g_1 - g_t, U = rows u_1 - u_t (t >= 2), a_{2:K} = g_1 U^T (D U^T)^-1, a_1 = 1 - sum
    u = g / g.norm(dim=1, keepdim=True)
    d_mat, u_mat = g[:1] - g[1:], u[:1] - u[1:]
    tail = g[:1] @ u_mat.T @ torch.linalg.inv(d_mat @ u_mat.T)
    expected = torch.cat([1 - tail.sum(1), tail[0]])
    assert a.tolist() == pytest.approx(expected.tolist(), abs=1e-9)
    projections = (u @ update).tolist()
    assert projections == pytest.approx([projections[0]] * 4, abs=1e-9)


@pytest.mark.parametrize("grads, update, coeffs", [
    (ORTH, [1.0, 1.0], [1.0, 1.0]),                        # M = I: a_k^2 = 1
    ([[1, 0], [0, 2]], [1.0, 1.0], [1.0, 0.5]),            # a1 = 1/a1, 4 a2 = 1/a2: every g_k . d = 1/a_k
    (EQUAL, [1.0, 1.0], [0.5, 0.5]),                       # 2 a |g|^2 = 1/a -> a = 1/2, d = sqrt(2) g/|g|
    (MULT, [math.sqrt(2), 0.0], [1 / math.sqrt(2), 1 / (3 * math.sqrt(2))]),  # a1 = 3 a2, 18 a2^2 = 1
])
def test_nash_mtl_two_task_cases_by_hand(grads, update, coeffs):
    got_update, got_coeffs = combine(NashMTL, grads)
    assert got_update == pytest.approx(update, abs=1e-7)
    assert got_coeffs == pytest.approx(coeffs, abs=1e-7)


def test_nash_mtl_opposite_gradients_give_no_update():
    # no direction improves both tasks: the bargaining has no solution; the update cancels to 0
    update, a = combine(NashMTL, OPP)
    assert update == pytest.approx([0.0, 0.0], abs=1e-6)
    assert a[0] == pytest.approx(a[1], rel=1e-9)


def test_nash_mtl_three_tasks_by_hand():
    # orthogonal g_k: M diagonal, a_k = 1 / |g_k| and d = sum_k u_k (Newton's method, not the two-task formula)
    g = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 0.5]], dtype=torch.float64)
    update, a = NashMTL(list("abc")).combine(g)
    assert a.tolist() == pytest.approx([1.0, 0.5, 2.0], abs=1e-8)
    assert update.tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-8)
    # tasks a and c opposite, b orthogonal to both: a and c cancel, task b alone moves (g_b . d = 1 / a_b = 2)
    g = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [-1.0, 0, 0]], dtype=torch.float64)
    update, a = NashMTL(list("abc")).combine(g)
    assert update.tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-6)
    assert a[1].item() == pytest.approx(0.5, abs=1e-6)


def test_nash_mtl_matches_a_least_squares_root_and_clips():
    from scipy.optimize import least_squares

    torch.manual_seed(3)
    g = torch.randn(3, 8, dtype=torch.float64) * torch.tensor([[0.01], [1.0], [30.0]], dtype=torch.float64)
    update, a = NashMTL(list("abc")).combine(g)
    # independent: the root of (M a)_k - 1/a_k in log-coordinates (a > 0), by scipy least squares
    m = (g @ g.T).numpy()
    start = (-(g.norm(dim=1) * math.sqrt(3)).log()).tolist()  # a_k = 1 / (sqrt(K) ||g_k||)
    root = least_squares(lambda s: (m @ (math.e ** s)) * (math.e ** s) - 1.0, x0=start, xtol=1e-14,
                         ftol=1e-14, gtol=1e-14)
    assert root.cost < 1e-20
    assert a.tolist() == pytest.approx((math.e ** root.x).tolist(), rel=1e-5)
    assert ((g @ update) * a).tolist() == pytest.approx([1.0] * 3, abs=1e-6)  # g_k . d = 1 / a_k (ridge 1e-8)
    assert update.pow(2).sum().item() == pytest.approx(3.0, abs=1e-6)       # ||d||^2 = K
    clipped, _ = NashMTL(list("abc"), max_norm=1.0).combine(g)
    assert clipped.norm().item() == pytest.approx(1.0)
    assert clipped.tolist() == pytest.approx((update / math.sqrt(3)).tolist())


@pytest.mark.parametrize("cls", [MGDA, CAGrad, IMTLG, NashMTL])
def test_combination_backward_fills_shared_and_task_gradients(cls):
    theta = torch.zeros(2, requires_grad=True)  # shared
    head = torch.zeros(1, requires_grad=True)   # task a only
    la, lb = _linear_losses(theta, [[1.0, 0.0], [-1.0, 1.0]], [1.0, 2.0])
    la = la + 3.0 * head.sum()
    method = cls(["a", "b", "c"])
    assert method.owns_backward
    method.backward({"a": la, "b": lb}, [theta])  # task c absent this step
    expected, coeffs = method.combine(torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64))
    assert theta.grad.tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert head.grad.tolist() == pytest.approx([3.0])  # its task's plain gradient
    w = method.weights()
    assert [w["a"], w["b"]] == pytest.approx(coeffs.tolist(), abs=1e-6) and w["c"] == 0.0
    # the logged weights live in a buffer, so a checkpoint restores them
    other = cls(["a", "b", "c"])
    other.load_state_dict(method.state_dict())
    assert other.weights() == w


class TwoHeads(torch.nn.Module):
    """x -> shared linear -> z -> one linear head per task (for the representation variant)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Linear(3, 4)
        self.heads = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 1), "b": torch.nn.Linear(4, 1)})

    def forward(self, x):
        z = self.trunk(x)
        return {t: h(z).squeeze(-1) for t, h in self.heads.items()}


def test_mgda_ub_uses_the_representation_gradients():
    model = TwoHeads()
    x, y = torch.randn(5, 3), torch.randn(5)
    # independent: gradients w.r.t. z = trunk(x), recomputed by hand, and the two-task min-norm formula
    z = model.trunk(x).detach().requires_grad_(True)
    g1, g2 = [torch.autograd.grad(((model.heads[t](z).squeeze(-1) - s * y) ** 2).mean(), z)[0].reshape(-1)
              for t, s in (("a", 1.0), ("b", -1.0))]
    a1 = ((g2 - g1) @ g2 / (g1 - g2).pow(2).sum()).clamp(0, 1).item()
    assert 0.05 < a1 < 0.95  # a genuine mixture, not a vertex
    mgda = MGDA(["a", "b"], representation="trunk").bind(model)
    out = model(x)
    losses = {"a": ((out["a"] - y) ** 2).mean(), "b": ((out["b"] + y) ** 2).mean()}
    mgda.backward(losses, list(model.trunk.parameters()))
    assert mgda.weights()["a"] == pytest.approx(a1, abs=1e-6)
    # the trunk gets d(a1 La + a2 Lb)/d trunk; the heads their own plain gradient
    model.zero_grad()
    out = model(x)
    (a1 * ((out["a"] - y) ** 2).mean() + (1 - a1) * ((out["b"] + y) ** 2).mean()).backward()
    want = model.trunk.weight.grad.clone()
    head_a = model.heads["a"].weight.grad.clone()
    model.zero_grad()
    out = model(x)
    mgda.backward({"a": ((out["a"] - y) ** 2).mean(), "b": ((out["b"] + y) ** 2).mean()},
                  list(model.trunk.parameters()))
    assert torch.allclose(model.trunk.weight.grad, want, atol=1e-6)
    assert torch.allclose(model.heads["a"].weight.grad, head_a / a1, atol=1e-6)  # plain, not a-weighted
    with pytest.raises(RuntimeError, match="bind"):
        unbound = MGDA(["a", "b"], representation="trunk")
        out = model(x)
        unbound.backward({t: o.pow(2).mean() for t, o in out.items()}, list(model.trunk.parameters()))
    with pytest.raises(ValueError, match="no submodule 'neck'"):
        MGDA(["a", "b"], representation="neck").bind(model)


@pytest.mark.parametrize("name", ["pcgrad", "mgda", "cagrad", "imtlg", "nashmtl"])
def test_gradient_methods_train_a_tiny_model_through_the_trainer(tmp_path, name):
    from mtlkit.data import get_dataset
    from mtlkit.models import build
    from mtlkit.train import Trainer, seed_everything

    seed_everything(0)
    model = build("tiny", {"semseg": 13, "depth": 1, "normals": 3}, width=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train = get_dataset("synthetic-nyu", "train", preset="unit")
    trainer = Trainer(model, train, out_dir=tmp_path, epochs=1, batch_size=4, weighting=name, progress=False,
                      train_metrics=False)
    metrics = trainer.fit()
    assert metrics["config"]["weighting"] == name
    steps = metrics["step_weights"]["values"]
    assert len(steps) == 2 and all(math.isfinite(v) for row in steps for v in row)
    if name != "pcgrad":  # the logged weights are this step's coefficients, not the initial 1/K
        assert steps[-1] != [pytest.approx(1 / 3)] * 3
    assert math.isfinite(metrics["epochs"][0]["train_loss"]["total"])
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("encoder") for n in moved) and any(n.startswith("heads") for n in moved)


def test_mgda_ub_trains_through_the_trainer_on_the_decoder_output(tmp_path):
    from mtlkit.data import get_dataset
    from mtlkit.models import build
    from mtlkit.train import Trainer, seed_everything

    seed_everything(0)
    model = build("tiny", {"semseg": 13, "depth": 1, "normals": 3}, width=4)
    train = get_dataset("synthetic-nyu", "train", preset="unit")
    by_name = Trainer(model, train, out_dir=tmp_path / "name", epochs=1, batch_size=4, progress=False,
                      weighting="mgda", weighting_options={"representation": "decoder"}, train_metrics=False)
    named = by_name.fit()["step_weights"]["values"][-1]  # by name the Trainer binds it to its model
    assert sum(named) == pytest.approx(1.0, abs=1e-5) and min(named) >= 0
    unbound = MGDA(["semseg", "depth", "normals"], representation="decoder")
    with pytest.raises(RuntimeError, match="bind"):  # used outside the Trainer unbound: the error says what to do
        unbound.backward({t: model(torch.rand(2, 3, 32, 32))[t].mean() for t in ("semseg", "depth", "normals")},
                         list(model.parameters()))
    mgda = MGDA(["semseg", "depth", "normals"], representation="decoder").bind(model)
    metrics = Trainer(model, train, out_dir=tmp_path / "ub", epochs=1, batch_size=4, progress=False,
                      weighting=mgda, train_metrics=False).fit()
    last = metrics["step_weights"]["values"][-1]
    assert sum(last) == pytest.approx(1.0, abs=1e-5) and min(last) >= 0  # a point of the simplex
    assert mgda._captured is None  # the representation is released after each step
