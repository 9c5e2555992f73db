"""The SegNet family of the MTAN paper: parameter counts, output contract, cross-stitch units and branch loading."""
from __future__ import annotations

import pytest
import torch

from mtlkit.models import build, count_parameters
from mtlkit.models.cross_stitch import CrossStitchUnit

NYU = {"semseg": 13, "depth": 1, "normals": 3}
SINGLE = 24_981_069  # one-task SegNet, 13 classes (MTAN paper / docs/reference.md)
SMALL = 0.25  # width_mult of the fast forward tests


def _total(name: str, tasks: dict[str, int], **options) -> int:
    return count_parameters(build(name, tasks, **options))["total"]


def test_single_task_segnet_has_exactly_the_papers_parameter_count():
    counts = count_parameters(build("segnet-single", {"semseg": 13}))
    assert counts["total"] == SINGLE
    # the encoder is VGG-16's 13 convs (14,714,688 parameters) plus BatchNorm (2 x 4,224 channels)
    assert counts["encoder"] == 14_714_688 + 2 * (2 * 64 + 2 * 128 + 3 * 256 + 6 * 512)
    # head: 3x3 conv 64->64 with bias, then 1x1 conv 64->13
    assert counts["heads.semseg"] == (9 * 64 * 64 + 64) + (64 * 13 + 13)
    assert counts["total"] == counts["encoder"] + counts["decoder"] + counts["heads.semseg"]


@pytest.mark.parametrize(
    "name, options, ratio, digits",
    [
        ("segnet-stan", {}, 1.53, 2),
        ("segnet-split", {"variant": "standard"}, 1.003, 3),
        ("segnet-split", {"variant": "wide"}, 1.76, 2),
        ("segnet-split", {"variant": "deep"}, 2.03, 2),
        ("segnet-dense", {}, 4.95, 2),
        ("segnet-cross-stitch", {}, 3.00, 2),
        ("segnet-mtan", {}, 1.77, 2),
    ],
)
def test_parameter_ratios_match_the_mtan_paper(name, options, ratio, digits):
    tasks = {"semseg": 13} if name == "segnet-stan" else NYU
    assert round(_total(name, tasks, **options) / SINGLE, digits) == ratio


def test_mtan_has_44_23_million_parameters_and_per_task_attention():
    counts = count_parameters(build("segnet-mtan", NYU))
    assert round(counts["total"] / 1e6, 2) == 44.23
    # MTAN = Split-standard + shared attention convs + one attention set per task
    split = _total("segnet-split", NYU)
    att = [counts[f"attention.{t}"] for t in NYU]
    assert att[0] == att[1] == att[2] > 0
    assert counts["total"] == split + counts["attention_convs"] + sum(att)
    # STAN is the same network with one task: its extra parameters are one attention set + the shared convs
    stan = count_parameters(build("segnet-stan", {"semseg": 13}))
    assert stan["total"] == SINGLE + counts["attention_convs"] + att[0]


# 9 units; at width 0.25 the mixing points have 16+32+64+128+128+128+64+32+16 = 608 channels in all
@pytest.mark.parametrize("mode, n_units", [("channelwise", 3 * 3 * 608), ("scalar", 9 * 3 * 3), ("shared", 9 * 3)])
def test_every_cross_stitch_variant_is_three_segnets_plus_its_units(mode, n_units):
    counts = count_parameters(build("segnet-cross-stitch", NYU, mode=mode, width_mult=SMALL))
    singles = sum(_total("segnet-single", {t: c}, width_mult=SMALL) for t, c in NYU.items())
    assert counts["cross_stitch"] == n_units
    assert counts["total"] == singles + n_units


# --------------------------------------------------------------------------------------------- output contract
@pytest.mark.parametrize(
    "name, tasks, options",
    [
        ("segnet-single", {"semseg": 13}, {}),
        ("segnet-stan", {"normals": 3}, {}),
        ("segnet-split", NYU, {"variant": "standard"}),
        ("segnet-split", NYU, {"variant": "wide"}),
        ("segnet-split", NYU, {"variant": "deep"}),
        ("segnet-dense", NYU, {}),
        ("segnet-cross-stitch", NYU, {}),
        ("segnet-cross-stitch", NYU, {"mode": "scalar"}),
        ("segnet-cross-stitch", NYU, {"mode": "shared"}),
        ("segnet-mtan", NYU, {}),
    ],
)
def test_output_contract(name, tasks, options):
    torch.manual_seed(0)
    model = build(name, tasks, width_mult=SMALL, **options)
    assert model.tasks == tuple(tasks)
    out = model(torch.rand(1, 3, 32, 32))
    assert set(out) == set(tasks)
    for task, channels in tasks.items():
        assert out[task].shape == (1, channels, 32, 32)
        assert torch.isfinite(out[task]).all()
    if "normals" in out:
        torch.testing.assert_close(out["normals"].norm(dim=1), torch.ones(1, 32, 32))
    if "semseg" in out:  # logits, not MTAN's log-probabilities: exp does not sum to 1
        assert not torch.allclose(out["semseg"].exp().sum(dim=1), torch.ones(1, 32, 32), atol=1e-3)


@pytest.mark.parametrize("name", ["segnet-mtan", "segnet-dense", "segnet-cross-stitch"])
def test_sizes_not_divisible_by_32_come_back_at_input_resolution(name):
    out = build(name, {"semseg": 5, "depth": 1}, width_mult=SMALL)(torch.rand(1, 3, 36, 44))
    assert out["semseg"].shape == (1, 5, 36, 44) and out["depth"].shape == (1, 1, 36, 44)


@pytest.mark.parametrize("name, owned", [("segnet-mtan", "attention"), ("segnet-dense", "branches")])
def test_task_specific_parts_only_change_their_own_task(name, owned):
    torch.manual_seed(0)
    model = build(name, NYU, width_mult=SMALL).eval()
    x = torch.rand(1, 3, 32, 32)
    before = model(x)
    with torch.no_grad():
        for p in getattr(model, owned)["depth"].parameters():
            p.add_(0.5 * torch.randn_like(p))
    after = model(x)
    torch.testing.assert_close(after["semseg"], before["semseg"])
    torch.testing.assert_close(after["normals"], before["normals"])
    assert not torch.allclose(after["depth"], before["depth"])


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="exactly one task"):
        build("segnet-single", NYU)
    with pytest.raises(ValueError, match="valid variants: standard, wide, deep"):
        build("segnet-split", NYU, variant="tall")
    with pytest.raises(ValueError, match="dense tasks only.*'scene'"):
        build("segnet-mtan", {"semseg": 13, "scene": 10})
    with pytest.raises(ValueError, match="valid: channelwise, scalar, shared"):
        build("segnet-cross-stitch", NYU, mode="full")
    with pytest.raises(ValueError, match="at least 2 tasks"):
        build("segnet-cross-stitch", {"semseg": 13})
    with pytest.raises(ValueError, match="width_mult must be > 0"):
        build("segnet-split", NYU, width_mult=0)


# ------------------------------------------------------------------------------------------------ cross-stitch
def test_cross_stitch_units_start_at_0_9_same_task_and_spread_0_1():
    model = build("segnet-cross-stitch", NYU, width_mult=SMALL)
    channels = [16, 32, 64, 128, 128, 128, 64, 32, 16]  # after encoder stages 0..4, decoder stages 4..1
    assert [u.weight.shape for u in model.cross_stitch] == [(3, 3, c) for c in channels]
    expected = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    for unit in model.cross_stitch:
        torch.testing.assert_close(unit.weight.detach(), expected[:, :, None].expand_as(unit.weight))
    params = model.cross_stitch_parameters()
    assert len(params) == 9 and sum(p.numel() for p in params) == 3 * 3 * sum(channels)
    ids = {id(p) for p in params}
    assert not ids & {id(p) for p in model.network_parameters()}
    assert len(ids) + len(model.network_parameters()) == len(list(model.parameters()))

    two = CrossStitchUnit(2, 4)
    torch.testing.assert_close(two.weight[:, :, 0], torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    four = CrossStitchUnit(4, 1, mode="scalar")
    assert four.weight.shape == (4, 4)
    assert four.weight[0, 1].item() == pytest.approx(0.1 / 3) and four.weight.sum().item() == pytest.approx(4.0)
    shared = CrossStitchUnit(3, 8, mode="shared")
    assert shared.weight.shape == (3,) and torch.equal(shared.weight.detach(), torch.ones(3))


def test_cross_stitch_unit_mixes_as_hand_computed():
    a, b = torch.full((1, 2, 1, 1), 1.0), torch.full((1, 2, 1, 1), 10.0)
    a[:, 1], b[:, 1] = 2.0, 20.0
    unit = CrossStitchUnit(2, 2)  # channelwise
    with torch.no_grad():
        unit.weight.copy_(torch.tensor([[[0.9, 0.5], [0.1, 0.5]], [[0.2, 0.0], [0.8, 1.0]]]))  # [t, s, c]
    ya, yb = unit([a, b])
    torch.testing.assert_close(ya.flatten(), torch.tensor([0.9 * 1 + 0.1 * 10, 0.5 * 2 + 0.5 * 20]))
    torch.testing.assert_close(yb.flatten(), torch.tensor([0.2 * 1 + 0.8 * 10, 0.0 * 2 + 1.0 * 20]))
    ya, yb = CrossStitchUnit(2, 2, mode="scalar")([a, b])
    torch.testing.assert_close(ya.flatten(), torch.tensor([1.9, 3.8]))
    torch.testing.assert_close(yb.flatten(), torch.tensor([9.1, 18.2]))
    ya, yb = CrossStitchUnit(2, 2, mode="shared")([a, b])  # every target gets the same sum
    torch.testing.assert_close(ya.flatten(), torch.tensor([11.0, 22.0]))
    assert ya is yb


def test_branches_load_single_task_weights_exactly_and_reproduce_them():
    torch.manual_seed(0)
    singles = {t: build("segnet-single", {t: c}, width_mult=SMALL) for t, c in NYU.items()}
    x = torch.rand(2, 3, 32, 32)
    for s in singles.values():  # give BatchNorm non-trivial running statistics, which must be copied too
        s.train()(x)
    model = build("segnet-cross-stitch", NYU, width_mult=SMALL, same=1.0, other=0.0)
    model.load_single_task_branches({"semseg": singles["semseg"].state_dict(), "depth": singles["depth"],
                                     "normals": singles["normals"]})
    for task, single in singles.items():
        ref = single.state_dict()
        branch = model.branches[task].state_dict()
        assert set(branch) == {k for k in ref if not k.startswith("heads.")}
        for key, value in branch.items():
            assert torch.equal(value, ref[key]), key
        for key, value in model.heads[task].state_dict().items():
            assert torch.equal(value, ref[f"heads.{task}.{key}"]), key
    # with identity cross-stitch units the branches ARE the single-task networks
    model.eval()
    out = model(x)
    for task, single in singles.items():
        torch.testing.assert_close(out[task], single.eval()(x)[task])
    # with the paper's 0.9 / 0.1 units the tasks talk to each other
    mixed = build("segnet-cross-stitch", NYU, width_mult=SMALL)
    mixed.load_single_task_branches(singles)
    assert not torch.allclose(mixed.eval()(x)["depth"], out["depth"])


def test_loading_a_wrong_state_dict_is_refused():
    model = build("segnet-cross-stitch", {"semseg": 5, "depth": 1}, width_mult=SMALL)
    mtan = build("segnet-stan", {"semseg": 5}, width_mult=SMALL)
    with pytest.raises(ValueError, match="not a segnet-single model"):
        model.load_single_task_branches({"semseg": mtan.state_dict()})
    with pytest.raises(ValueError, match="no branch for task 'normals'"):
        model.load_single_task_branches({"normals": build("segnet-single", {"normals": 3}, width_mult=SMALL)})
