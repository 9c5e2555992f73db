"""Cross-stitch units (Misra et al. 2016): initial values, mixing math per mode, parameter counts, errors, gradients."""
from __future__ import annotations

import pytest
import torch

from mtlkit.models import count_parameters
from mtlkit.models.cross_stitch import CROSS_STITCH_MODES, CrossStitchUnit


def _maps(num_tasks: int, channels: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, channels, 4, 5, generator=g) for _ in range(num_tasks)]


@pytest.mark.parametrize("num_tasks", [2, 3, 4])
def test_faithful_init_is_point_nine_same_and_point_one_spread(num_tasks):
    unit = CrossStitchUnit(num_tasks, channels=5, mode="channelwise")
    w = unit.weight.detach()
    assert w.shape == (num_tasks, num_tasks, 5)
    eye = torch.eye(num_tasks, dtype=torch.bool)
    assert torch.allclose(w[eye], torch.full_like(w[eye], 0.9))
    assert torch.allclose(w[~eye], torch.full_like(w[~eye], 0.1 / (num_tasks - 1)))
    assert torch.allclose(w.sum(dim=1), torch.ones(num_tasks, 5))  # each target's mixture sums to 1


def test_custom_same_other_and_shared_init():
    scalar = CrossStitchUnit(3, 4, mode="scalar", same=0.5, other=0.5).weight.detach()
    assert torch.allclose(scalar, torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]]))
    shared = CrossStitchUnit(3, 4, mode="shared", shared_init=0.7).weight.detach()
    assert torch.allclose(shared, torch.full((3,), 0.7))


@pytest.mark.parametrize("num_tasks,channels", [(2, 8), (3, 16)])
def test_parameter_counts(num_tasks, channels):
    # channelwise T*T*C, scalar T*T, shared T
    expected = {"channelwise": num_tasks * num_tasks * channels, "scalar": num_tasks**2, "shared": num_tasks}
    for mode in CROSS_STITCH_MODES:
        assert count_parameters(CrossStitchUnit(num_tasks, channels, mode=mode))["total"] == expected[mode]


def test_channelwise_mixing_matches_hand_computation():
    torch.manual_seed(1)
    unit = CrossStitchUnit(3, channels=3, mode="channelwise")
    with torch.no_grad():
        unit.weight.copy_(torch.rand(3, 3, 3))
    xs = _maps(3)
    ys = unit(xs)
    for t in range(3):
        for c in range(3):
            hand = sum(unit.weight[t, s, c] * xs[s][:, c] for s in range(3))
            assert torch.allclose(ys[t][:, c], hand, atol=1e-6)


def test_scalar_mixing_matches_hand_computation():
    unit = CrossStitchUnit(2, channels=3, mode="scalar")
    with torch.no_grad():
        unit.weight.copy_(torch.tensor([[0.3, -1.2], [2.0, 0.4]]))
    x0, x1 = _maps(2)
    y0, y1 = unit([x0, x1])
    assert torch.allclose(y0, 0.3 * x0 - 1.2 * x1, atol=1e-6)
    assert torch.allclose(y1, 2.0 * x0 + 0.4 * x1, atol=1e-6)


def test_shared_mixing_gives_every_branch_the_same_mixture():
    unit = CrossStitchUnit(3, channels=3, mode="shared")
    with torch.no_grad():
        unit.weight.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x0, x1, x2 = _maps(3)
    ys = unit([x0, x1, x2])
    hand = 0.5 * x0 - 1.0 * x1 + 2.0 * x2
    assert len(ys) == 3
    for y in ys:
        assert torch.allclose(y, hand, atol=1e-6)


def test_default_init_keeps_branches_mostly_their_own():
    # at 0.9/0.1 with identical inputs the output equals the input (the mixture sums to 1)
    unit = CrossStitchUnit(2, channels=3)
    x = _maps(1)[0]
    y0, y1 = unit([x, x])
    assert torch.allclose(y0, x, atol=1e-6) and torch.allclose(y1, x, atol=1e-6)


@pytest.mark.parametrize("mode", CROSS_STITCH_MODES)
def test_gradient_reaches_weights_and_every_input(mode):
    unit = CrossStitchUnit(3, channels=3, mode=mode)
    xs = [x.requires_grad_() for x in _maps(3)]
    sum((y * (i + 1)).sum() for i, y in enumerate(unit(xs))).backward()
    assert unit.weight.grad is not None and unit.weight.grad.abs().sum() > 0
    for x in xs:
        assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown cross-stitch mode"):
        CrossStitchUnit(2, 4, mode="elementwise")
    with pytest.raises(ValueError, match="at least 2 task branches"):
        CrossStitchUnit(1, 4)
    with pytest.raises(ValueError, match="expects 3 feature maps, got 2"):
        CrossStitchUnit(3, 3)(_maps(2))
