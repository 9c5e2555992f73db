"""Loss-weighting methods against their formulas (values computed by hand in the comments)."""
from __future__ import annotations

import math

import pytest
import torch

from mtlkit.weighting import DWA, Equal, GradNorm, PCGrad, Static, Uncertainty, make_weighting


def t(x: float) -> torch.Tensor:
    return torch.tensor(float(x), requires_grad=True)


def test_make_weighting_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="valid weightings: equal, static, uncertainty, dwa, gradnorm, pcgrad"):
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
