"""Cross-stitch units (Misra et al. 2016) and the ResNet cross-stitch networks of notebook 06: initial values, mixing
math per mode, parameter counts, single-task weight loading, the units' learning-rate group, shapes, gradients."""
from __future__ import annotations

import pytest
import torch

from mtlkit.course.pet import PET_SCHEDULES, CrossStitchRecorder, load_alphas, pet_schedule, pet_tasks
from mtlkit.data import get_dataset
from mtlkit.models import build, count_parameters
from mtlkit.models.cross_stitch import CROSS_STITCH_MODES, CrossStitchUnit
from mtlkit.models.encoders import create_encoder
from mtlkit.models.resnet_cross_stitch import BoxHead
from mtlkit.train import Trainer


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


# ------------------------------------------------------------------------------------ one-directional units
def test_targets_unit_has_one_row_per_target_and_mixes_like_the_full_unit():
    full = CrossStitchUnit(3, channels=4, mode="channelwise")
    part = CrossStitchUnit(3, channels=4, mode="channelwise", targets=(0,))
    assert part.weight.shape == (1, 3, 4)  # T_out * T * C parameters
    assert count_parameters(part)["total"] == 1 * 3 * 4
    assert torch.equal(part.weight.detach(), full.weight.detach()[:1])
    with torch.no_grad():
        full.weight.normal_()
        part.weight.copy_(full.weight[:1])
    xs = _maps(3, channels=4)
    (y,) = part(xs)
    assert torch.allclose(y, full(xs)[0], atol=1e-6)
    scalar = CrossStitchUnit(3, channels=4, mode="scalar", targets=(2, 0))
    assert torch.allclose(scalar.weight.detach(), torch.tensor([[0.05, 0.05, 0.9], [0.9, 0.05, 0.05]]))
    assert len(CrossStitchUnit(3, 4, mode="shared", targets=(1,))(xs)) == 1


@pytest.mark.parametrize("targets", [(), (0, 0), (3,), (-1,)])
def test_bad_targets_raise(targets):
    with pytest.raises(ValueError, match="targets must be distinct branch indices"):
        CrossStitchUnit(3, 4, targets=targets)


def test_alpha_summarises_each_mode_as_target_by_source_matrix():
    cw = CrossStitchUnit(2, channels=3)
    with torch.no_grad():
        cw.weight.copy_(torch.arange(12.0).view(2, 2, 3))
    assert torch.allclose(cw.alpha(), torch.tensor([[1.0, 4.0], [7.0, 10.0]]))  # channel means
    shared = CrossStitchUnit(3, channels=3, mode="shared")
    with torch.no_grad():
        shared.weight.copy_(torch.tensor([0.2, 0.3, 0.5]))
    assert torch.allclose(shared.alpha(), torch.tensor([[0.2, 0.3, 0.5]] * 3))


# ------------------------------------------------------------------------ cross-stitch ResNets (pet tasks)

PET = {"semseg": 3, "boxes": 4, "binary": 2}
SMALL = dict(encoder="resnet18", aspp_channels=8, decoder_channels=8, skip_channels=4, box_channels=8)
RESNET18_STAGES = (64, 128, 256, 512)


def _images(b: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_forward_shapes_and_valid_boxes():
    model = build("resnet-cross-stitch", PET, **SMALL).eval()
    with torch.no_grad():
        out = model(_images(3, 48))
    assert {t: tuple(v.shape) for t, v in out.items()} == {"semseg": (3, 3, 48, 48), "boxes": (3, 4),
                                                           "binary": (3, 2)}
    boxes = out["boxes"]
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert model.tasks == ("semseg", "boxes", "binary") and len(model.cross_stitch) == 4


@pytest.mark.parametrize("mode,units", [("channelwise", 9 * sum(RESNET18_STAGES)), ("scalar", 4 * 9),
                                        ("shared", 4 * 3)])
def test_network_parameter_counts(mode, units):
    model = build("resnet-cross-stitch", PET, mode=mode, **SMALL)
    counts = count_parameters(model)
    assert counts["cross_stitch"] == units  # channelwise 8640 = 3*3*(64+128+256+512)
    resnet18 = count_parameters(create_encoder("resnet18"))["total"]
    assert resnet18 == 11_176_512
    for t in PET:
        assert counts[f"branches.{t}"] == resnet18
    c, b = 512, SMALL["box_channels"]
    assert counts["heads.binary"] == c * 2 + 2  # linear layer
    assert counts["heads.boxes"] == 9 * c * b + 2 * b + b * 3 + 3  # 3x3 conv + BN, 1x1 conv to 3 with bias
    single = {t: count_parameters(build("resnet-single", {t: k}, **SMALL))["total"] for t, k in PET.items()}
    assert counts["total"] == sum(single.values()) + units


def test_sequential_variant_trains_only_the_target_row():
    model = build("resnet-cross-stitch", {"semseg": 3}, sources=("boxes", "binary"), **SMALL)
    assert model.tasks == ("semseg",) and model.branch_names == ("semseg", "boxes", "binary")
    assert all(u.weight.shape == (1, 3, c) for u, c in zip(model.cross_stitch, RESNET18_STAGES))
    trainable = count_parameters(model, trainable_only=True)
    assert trainable["branches.boxes"] == trainable["branches.binary"] == 0
    assert trainable["cross_stitch"] == 3 * sum(RESNET18_STAGES)
    assert set(model.heads) == {"semseg"}
    model.train()
    assert model.branches["semseg"].training and not model.branches["boxes"].training  # frozen BN statistics


def _singles(seed0: int = 10) -> dict:
    singles = {}
    for i, (t, k) in enumerate(PET.items()):
        torch.manual_seed(seed0 + i)
        m = build("resnet-single", {t: k}, **SMALL)
        with torch.no_grad():  # non-trivial BN statistics too, so that buffers are checked as well
            for mod in m.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.running_mean.uniform_(-0.1, 0.1)
                    mod.running_var.uniform_(0.5, 1.5)
        singles[t] = m.eval()
    return singles


def test_init_from_single_copies_weights_and_identity_units_reproduce_the_single_networks():
    singles = _singles()
    torch.manual_seed(0)
    model = build("resnet-cross-stitch", PET, same=1.0, other=0.0, **SMALL)
    before = {k: v.clone() for k, v in model.cross_stitch.state_dict().items()}
    model.init_from_single(singles).eval()
    for t, single in singles.items():
        for key, value in single.branches[t].state_dict().items():
            assert torch.equal(model.branches[t].state_dict()[key], value), key
        for key, value in single.heads[t].state_dict().items():
            assert torch.equal(model.heads[t].state_dict()[key], value), key
    for key, value in model.cross_stitch.state_dict().items():
        assert torch.equal(value, before[key])  # units untouched
    images = _images(2, 32)
    with torch.no_grad():
        out = model(images)
        for t, single in singles.items():  # alpha = identity: each branch is its single-task network
            assert torch.allclose(out[t], single(images)[t], atol=1e-5)


def test_init_from_single_errors_name_the_problem():
    singles = _singles()
    model = build("resnet-cross-stitch", PET, **SMALL)
    with pytest.raises(ValueError, match=r"missing \['binary'\]"):
        model.init_from_single({t: singles[t] for t in ("semseg", "boxes")})
    with pytest.raises(ValueError, match="has no branch 'binary'"):
        model.init_from_single({**singles, "binary": singles["semseg"]})
    wide = build("resnet-single", {"binary": 2}, encoder="resnet34")
    with pytest.raises(ValueError, match="does not fit this network"):
        model.init_from_single({**singles, "binary": wide})


@pytest.mark.parametrize("mode", CROSS_STITCH_MODES)
def test_gradient_reaches_every_trainable_parameter(mode):
    model = build("resnet-cross-stitch", PET, mode=mode, **SMALL).train()
    _unzero_residual_norms(model)
    out = model(_images(2, 32))
    # A plain mean of xyxy is (cx + cy) / 2, blind to the width/height logits (they reached it only through
    # rounding, so the test depended on the RNG state left by earlier tests): weigh the four coordinates unequally.
    box_term = (out["boxes"] * torch.arange(1.0, 5.0)).mean() / 32
    (out["semseg"].square().mean() + box_term + out["binary"].square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def _unzero_residual_norms(model) -> None:
    """timm zero-initialises each residual block's last BN scale (``zero_init_last``), so at initialisation no
    gradient reaches the convs inside the blocks; give those scales a value so that every path is live."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bn2.weight", "bn3.weight")) and not p.abs().sum() > 0:
                p.fill_(0.5)


def test_sequential_gradients_stop_at_the_frozen_sources():
    model = build("resnet-cross-stitch", {"semseg": 3}, sources=("boxes", "binary"), **SMALL).train()
    _unzero_residual_norms(model)
    model(_images(2, 32))["semseg"].square().mean().backward()
    for name, p in model.named_parameters():
        if name.startswith(("branches.boxes", "branches.binary")):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_units_get_their_own_learning_rate_group(tmp_path):
    train = get_dataset("synthetic-pet", "train", preset="unit")
    model = build("resnet-cross-stitch", PET, **SMALL)
    units, network = model.cross_stitch_parameters(), model.network_parameters()
    assert len(units) == 4 and {id(p) for p in units}.isdisjoint(id(p) for p in network)
    assert len(units) + len(network) == len(list(model.parameters()))
    trainer = Trainer(model, train, tasks=pet_tasks(train.task_info), lr=1e-3,
                      param_groups=[("cross_stitch", 100.0)], out_dir=tmp_path, device="cpu", progress=False)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert {id(p) for p in groups["cross_stitch"]["params"]} == {id(p) for p in units}
    assert groups["cross_stitch"]["lr"] == pytest.approx(0.1) and groups["default"]["lr"] == pytest.approx(1e-3)


def test_box_head_soft_argmax_by_hand():
    head = BoxHead(3, 4)
    head.conv, head.predict = torch.nn.Identity(), torch.nn.Identity()  # read the 3 logit maps directly
    logits = torch.zeros(1, 3, 4, 4)
    logits[0, 0, 1, 2] = 60.0  # all the centre weight on cell (row 1, column 2)
    logits[0, 1] = 0.0  # sigmoid 0.5: half the image width
    logits[0, 2] = torch.logit(torch.tensor(0.25))  # a quarter of its height
    box = head(None, logits, (32, 64))[0]  # image 32 high, 64 wide: cells 16 x 8 pixels
    cx, cy, w, h = (2 + 0.5) * 16, (1 + 0.5) * 8, 32.0, 8.0
    assert torch.allclose(box, torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), atol=1e-4)


def test_resnet_cross_stitch_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown mode 'elementwise'"):
        build("resnet-cross-stitch", PET, mode="elementwise", **SMALL)
    with pytest.raises(ValueError, match="at least 2 branches"):
        build("resnet-cross-stitch", {"semseg": 3}, **SMALL)
    with pytest.raises(ValueError, match="exactly one task"):
        build("resnet-single", PET, **SMALL)
    with pytest.raises(ValueError, match="needs 4 channels"):
        build("resnet-cross-stitch", {"semseg": 3, "boxes": 2}, **SMALL)
    with pytest.raises(ValueError, match="sources must be distinct"):
        build("resnet-cross-stitch", {"semseg": 3}, sources=("semseg",), **SMALL)
    with pytest.raises(ValueError, match="unknown task 'pose'"):
        build("resnet-cross-stitch", {"semseg": 3, "pose": 2}, **SMALL)


@pytest.mark.parametrize("mode", CROSS_STITCH_MODES)
def test_both_cross_stitch_networks_take_the_unit_form_as_mode(mode):
    resnet = build("resnet-cross-stitch", PET, mode=mode, **SMALL)
    segnet = build("segnet-cross-stitch", {"semseg": 5, "depth": 1}, mode=mode, width_mult=0.125)
    for model in (resnet, segnet):
        assert model.mode == mode and {unit.mode for unit in model.cross_stitch} == {mode}


def test_segnet_cross_stitch_keeps_its_old_option_name_as_an_alias():
    tasks = {"semseg": 5, "depth": 1}
    with pytest.warns(DeprecationWarning, match="old name of mode"):
        old = build("segnet-cross-stitch", tasks, cross_stitch="scalar", width_mult=0.125)
    assert old.mode == "scalar" and old.cross_stitch[0].weight.shape == (2, 2)
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning):
        via_alias = build("segnet-cross-stitch", tasks, cross_stitch="shared", width_mult=0.125).state_dict()
    torch.manual_seed(0)
    via_mode = build("segnet-cross-stitch", tasks, mode="shared", width_mult=0.125).state_dict()
    assert via_alias.keys() == via_mode.keys() and all(via_alias[k].equal(via_mode[k]) for k in via_mode)
    with pytest.raises(ValueError, match="give the unit form once"):
        build("segnet-cross-stitch", tasks, mode="scalar", cross_stitch="shared", width_mult=0.125)
    with pytest.raises(ValueError, match="unknown mode 'full'"):
        build("segnet-cross-stitch", tasks, mode="full", width_mult=0.125)


def test_pet_schedules_train_the_full_comparison_in_every_preset():
    for preset, schedule in PET_SCHEDULES.items():
        assert tuple(schedule["ablations"]) == ("boxes", "binary"), preset
        assert tuple(schedule["variants"]) == CROSS_STITCH_MODES and schedule["sequential"] is True, preset
        # Adam everywhere, so the units' multiplier is 10x (not the paper's SGD 100x): see mtlkit.course.pet
        assert schedule["optimizer"] == "adam" and schedule["units_lr_mult"] == 10.0, preset
    smoke = pet_schedule("smoke")
    assert (smoke["train_images"], smoke["val_images"], smoke["epochs"], smoke["single_epochs"]) == (64, 16, 1, 1)
    paper = pet_schedule("paper")
    assert paper["data"] == "oxpet-h5" and paper["encoder"] == "resnet34" and paper["pretrained"] is True
    assert pet_schedule("smoke", ablations=("binary",))["ablations"] == ("binary",)


def test_recorder_writes_alphas_per_epoch(tmp_path):
    train = get_dataset("synthetic-pet", "train", preset="unit")
    model = build("resnet-cross-stitch", {"semseg": 3, "binary": 2}, **SMALL)
    init = [a.clone() for a in model.alphas()]
    tasks = pet_tasks(train.task_info)
    for epochs in (1, 2):  # the second Trainer resumes after epoch 0 and keeps its entries
        Trainer(model, train, tasks={t: tasks[t] for t in ("semseg", "binary")}, epochs=epochs, batch_size=4,
                lr=1e-3, param_groups=[("cross_stitch", 10.0)], callbacks=[CrossStitchRecorder()], out_dir=tmp_path,
                device="cpu", progress=False, train_metrics=False).fit()
    record = load_alphas(tmp_path)
    assert record["epochs"] == [-1, 0, 1] and record["branches"] == ["semseg", "binary"]
    assert len(record["alphas"]) == 3 and len(record["alphas"][0]) == 4
    assert torch.allclose(torch.tensor(record["alphas"][0][0]), init[0])
    assert not torch.allclose(torch.tensor(record["alphas"][-1][0]), init[0])  # the units learnt something
    assert load_alphas(tmp_path / "nothing-here") is None


def test_pet_helpers_check_their_inputs():
    assert pet_schedule("smoke", epochs=3)["epochs"] == 3 and PET_SCHEDULES["smoke"]["epochs"] == 1  # a copy
    with pytest.raises(ValueError, match="unknown keys \\['epoch'\\]"):
        pet_schedule("smoke", epoch=3)
    with pytest.raises(ValueError, match="unknown preset"):
        pet_schedule("huge")
    tasks = pet_tasks(get_dataset("synthetic-pet", "train", preset="unit").task_info)
    assert {t: task.out_channels for t, task in tasks.items()} == {"semseg": 3, "boxes": 4, "binary": 2}
    with pytest.raises(ValueError, match="does not label \\['boxes', 'binary'\\]"):
        pet_tasks({"semseg": {"num_classes": 3}})
