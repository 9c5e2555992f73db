"""resnet-mtan / resnet-shared: output contract, dilation, attention masks, gradient flow and parameter accounting
(attention modules per task per stage, task-shared refinement blocks, per-task ASPP heads)."""
import pytest
import torch

from mtlkit.models import build, count_parameters
from mtlkit.models.blocks import ASPP
from mtlkit.models.resnet_mtan import RefinementBlock
from mtlkit.models.segnet import attention_block

TASKS = {"semseg": 13, "depth": 1, "normals": 3}
SMALL = dict(encoder="resnet18", aspp_channels=32)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def mtan():
    torch.manual_seed(0)
    return build("resnet-mtan", TASKS, **SMALL)


@pytest.mark.parametrize("name", ["resnet-mtan", "resnet-shared"])
def test_output_contract(name):
    torch.manual_seed(0)
    model = build(name, TASKS, **SMALL).eval()
    assert model.tasks == tuple(TASKS) and model.output_stride == 8
    with torch.no_grad():
        out = model(torch.rand(2, 3, 48, 80))  # non-square: catches H/W mix-ups
    assert {t: tuple(v.shape) for t, v in out.items()} == {t: (2, c, 48, 80) for t, c in TASKS.items()}
    assert all(torch.isfinite(v).all() for v in out.values())


def test_masks_per_task_and_stage(mtan):
    mtan.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out, masks = mtan.forward_with_masks(images)
        again = mtan(images)
    assert set(masks) == set(TASKS)
    # stage 1 at stride 4, stage 2 at stride 8, dilated stages 3-4 stay at stride 8
    expected = [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 8, 8), (2, 512, 8, 8)]
    for t in TASKS:
        assert [tuple(m.shape) for m in masks[t]] == expected
        assert all(((m > 0) & (m < 1)).all() for m in masks[t])  # sigmoid soft masks
        torch.testing.assert_close(out[t], again[t])
    # the tasks' masks differ (separate attention modules), even from identical shared features
    assert not torch.allclose(masks["semseg"][0], masks["depth"][0])
    no_grad = mtan.attention_masks(images)
    assert not no_grad["depth"][3].requires_grad


def test_odd_input_sizes_pool_to_the_next_stage():
    model = build("resnet-mtan", {"depth": 1}, encoder="resnet18", aspp_channels=16, output_stride=32).eval()
    with torch.no_grad():
        out, masks = model.forward_with_masks(torch.rand(1, 3, 70, 90))
    assert out["depth"].shape == (1, 1, 70, 90)
    assert [tuple(m.shape[-2:]) for m in masks["depth"]] == [(18, 23), (9, 12), (5, 6), (3, 3)]


@pytest.mark.parametrize("name", ["resnet-mtan", "resnet-shared"])
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = build(name, TASKS, **SMALL).train()
    with torch.no_grad():  # timm zero-initialises each block's last BN scale: it blocks its convs at step 0 only
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(std=0.01)
    out = model(torch.rand(2, 3, 32, 32))
    sum(v.square().mean() for v in out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_each_task_trains_only_its_own_attention(mtan):
    mtan.train()
    out = mtan(torch.rand(2, 3, 32, 32))
    first_conv = mtan.encoder.body.conv1.weight
    for task in TASKS:
        own = list(mtan.attention[task].parameters())
        other = [p for t in TASKS if t != task for p in mtan.attention[t].parameters()]
        grads = torch.autograd.grad(out[task].square().mean(), [first_conv, *own, *other], retain_graph=True,
                                    allow_unused=True)
        assert grads[0].abs().sum() > 0, f"no gradient from {task} to the shared encoder"
        assert all(g is not None and g.abs().sum() > 0 for g in grads[1:1 + len(own)])
        assert all(g is None for g in grads[1 + len(own):]), f"{task} reaches another task's attention"


def _head_params(in_channels: int, aspp: int, out: int) -> int:
    return n_params(ASPP(in_channels, aspp)) + 9 * aspp * aspp + 2 * aspp + aspp * out + out


def _attention_params(cin: int, c: int) -> int:
    mid = c // 4
    return cin * mid + mid + 2 * mid + mid * c + c + 2 * c  # 1x1 conv (bias) + BN, twice


def _refine_params(cin: int, cout: int) -> int:
    m = cout // 4
    return cin * m + 9 * m * m + m * cout + cin * cout + 2 * (2 * m + 2 * cout)


@pytest.mark.parametrize("encoder, channels", [("resnet18", (64, 128, 256, 512)),
                                               ("resnet50", (256, 512, 1024, 2048))])
def test_parameter_accounting(encoder, channels):
    a = 32 if encoder == "resnet18" else 256
    mtan = build("resnet-mtan", TASKS, encoder=encoder, aspp_channels=a)
    shared = build("resnet-shared", TASKS, encoder=encoder, aspp_channels=a)
    assert mtan.stage_channels == channels
    counts, base = count_parameters(mtan), count_parameters(shared)
    assert counts["encoder"] == base["encoder"] == n_params(mtan.encoder)
    for t, k in TASKS.items():
        assert counts[f"heads.{t}"] == base[f"heads.{t}"] == _head_params(channels[3], a, k)
        # one attention module per stage for every task: C_0 input at stage 0, [shared, task] = 2 C_i after
        assert counts[f"attention.{t}"] == sum(_attention_params(c if i == 0 else 2 * c, c)
                                               for i, c in enumerate(channels))
    assert counts["refine"] == sum(_refine_params(channels[i], channels[i + 1]) for i in range(3))
    # MTAN = HPS + attention per task + task-shared refinement blocks, nothing else
    extra = sum(counts[f"attention.{t}"] for t in TASKS) + counts["refine"]
    assert counts["total"] == base["total"] + extra
    assert n_params(attention_block(channels[0], channels[0] // 4, channels[0])) == _attention_params(*channels[:1] * 2)
    assert n_params(RefinementBlock(channels[0], channels[1])) == _refine_params(channels[0], channels[1])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="dense"):
        build("resnet-mtan", {"scene": 10}, **SMALL)
    with pytest.raises(ValueError, match="unknown encoder"):
        build("resnet-shared", TASKS, encoder="vgg16")
    with pytest.raises(ValueError, match="output_stride"):
        build("resnet-mtan", TASKS, output_stride=4, **SMALL)
    model = build("resnet-mtan", {"depth": 1}, **SMALL)
    with pytest.raises(ValueError, match=r"images \[B, 3, H, W\]"):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="divisible by 4"):
        RefinementBlock(8, 10)


def test_aspp_dropout_follows_the_projection_in_training_only():
    """The authors' heads (survey, LibMTL, torchvision) drop out after the ASPP projection: p is an option, 0.5 by
    default in the ResNet heads; in eval mode the head is deterministic."""
    torch.manual_seed(0)
    aspp = ASPP(4, 8, rates=(1, 2, 3), dropout=0.25)
    x = torch.randn(2, 4, 16, 16)
    aspp.eval()
    projected = aspp.project(torch.cat([b(x) for b in aspp.branches], dim=1))  # [2, 8, 16, 16], >= 0 (ReLU)
    torch.testing.assert_close(aspp(x), projected)  # eval: no dropout
    aspp.train()
    projected = aspp.project(torch.cat([b(x) for b in aspp.branches], dim=1))  # train-mode BN statistics
    y = aspp(x)
    kept = y != 0
    # every element is either dropped or scaled by 1 / (1 - p)
    torch.testing.assert_close(y[kept], projected[kept] / 0.75)
    alive = projected > 0
    dropped = (~kept & alive).sum().item() / alive.sum().item()
    assert 0.2 < dropped < 0.3  # ~p of 4096 values
    assert isinstance(ASPP(4, 8, rates=(1, 2, 3)).dropout, torch.nn.Identity)  # 0: no dropout module at all
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        ASPP(4, 8, rates=(1, 2, 3), dropout=1.0)


@pytest.mark.parametrize("name", ["resnet-mtan", "resnet-shared"])
def test_heads_have_the_authors_dropout_and_the_rate_is_an_option(name):
    default = build(name, {"depth": 1}, **SMALL)
    assert default.heads["depth"].aspp.dropout.p == 0.5
    off = build(name, {"depth": 1}, aspp_dropout=0.0, **SMALL)
    assert isinstance(off.heads["depth"].aspp.dropout, torch.nn.Identity)
    assert build(name, {"depth": 1}, aspp_dropout=0.1, **SMALL).heads["depth"].aspp.dropout.p == 0.1
    assert count_parameters(default) == count_parameters(off)  # dropout has no parameters
    # eval mode: the dropout rate does not change the function
    off.load_state_dict(default.state_dict())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(default.eval()(x)["depth"], off.eval()(x)["depth"])


def test_authors_form_options_pooling_norm_and_align_corners():
    """aspp_pooling_norm="batch" and align_corners=True restore the authors' code; counts do not change."""
    kit = build("resnet-shared", {"depth": 1}, **SMALL)
    authors = build("resnet-shared", {"depth": 1}, aspp_pooling_norm="batch", align_corners=True, **SMALL)
    assert isinstance(kit.heads["depth"].aspp.branches[-1].norm, torch.nn.GroupNorm)
    assert isinstance(authors.heads["depth"].aspp.branches[-1].norm, torch.nn.BatchNorm2d)
    assert count_parameters(kit) == count_parameters(authors)
    authors.eval()
    feats = {}
    authors.heads["depth"].register_forward_hook(lambda m, i, o: feats.setdefault("head", o))
    with torch.no_grad():
        out = authors(torch.rand(1, 3, 32, 32))["depth"]
    expected = torch.nn.functional.interpolate(feats["head"], size=(32, 32), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="unknown ASPP pooling norm 'layer'"):
        build("resnet-shared", {"depth": 1}, aspp_pooling_norm="layer", **SMALL)
