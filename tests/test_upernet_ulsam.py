"""ULSAM (exact module, 5C + 3g parameters) and UPerNet with its context head and the course's ULSAM variants."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtlkit.models import build, count_parameters
from mtlkit.models.ulsam import ULSAM, ulsam_parameters
from mtlkit.models.upernet import ULSAM_VARIANTS, UPERNET_LOSS_WEIGHTS, broden_part_owners

BRODEN = {"scene": 5, "semseg": 47, "parts": 28, "material": 10, "texture": 6}
R18 = (64, 128, 256, 512)  # C2..C5 of ResNet-18


# ------------------------------------------------------------------------------------------------------- ULSAM
@pytest.mark.parametrize("channels,groups", [(4, 1), (8, 2), (16, 4), (32, 8), (64, 32), (512, 4)])
def test_ulsam_has_5c_plus_3g_parameters(channels, groups):
    c = channels // groups
    per_group = (c + c        # depthwise 1x1 conv: one weight and one bias per channel
                 + 2 * c      # BN over the group's channels: scale and shift
                 + c + 1      # pointwise 1x1 conv c -> 1: c weights, one bias
                 + 2)         # BN over the single map
    module = ULSAM(channels, groups)
    n = sum(p.numel() for p in module.parameters())
    assert n == groups * per_group == 5 * channels + 3 * groups == ulsam_parameters(channels, groups)


def _subspace_reference(x, m: ULSAM, k: int) -> torch.Tensor:
    """Group k of ULSAM written out layer by layer (eval-mode BN) from the module's own parameters."""
    c = m.channels // m.groups
    sl = slice(k * c, (k + 1) * c)
    xk = x[:, sl]
    bn1, bn2 = m.bn_depthwise, m.bn_pointwise
    a = F.conv2d(xk, m.depthwise.weight[sl], m.depthwise.bias[sl], groups=c)
    a = F.batch_norm(a, bn1.running_mean[sl], bn1.running_var[sl], bn1.weight[sl], bn1.bias[sl], False, 0.0, bn1.eps)
    a = F.max_pool2d(F.relu(a), 3, 1, 1)
    a = F.conv2d(a, m.pointwise.weight[k:k + 1], m.pointwise.bias[k:k + 1])
    a = F.batch_norm(a, bn2.running_mean[k:k + 1], bn2.running_var[k:k + 1], bn2.weight[k:k + 1],
                     bn2.bias[k:k + 1], False, 0.0, bn2.eps)
    a = F.relu(a)
    b, _, h, w = a.shape
    attn = torch.softmax(a.reshape(b, 1, h * w), dim=-1).reshape(b, 1, h, w)
    return xk * attn + xk


def test_ulsam_matches_the_per_group_definition():
    torch.manual_seed(0)
    m = ULSAM(12, groups=3).eval()
    with torch.no_grad():  # non-trivial statistics and affine parameters, so that every slice matters
        for p in m.parameters():
            p.copy_(torch.randn_like(p))
        for bn in (m.bn_depthwise, m.bn_pointwise):
            bn.running_mean.copy_(torch.randn_like(bn.running_mean))
            bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
    x = torch.randn(2, 12, 5, 7)
    expected = torch.cat([_subspace_reference(x, m, k) for k in range(3)], dim=1)
    torch.testing.assert_close(m(x), expected)


def test_ulsam_attention_is_a_distribution_over_positions_and_the_output_is_residual():
    torch.manual_seed(1)
    m = ULSAM(8, groups=4)
    x = torch.randn(3, 8, 6, 5)
    out = m(x)
    attn = m.last_attention
    assert attn.shape == (3, 4, 6, 5)
    assert (attn >= 0).all()
    torch.testing.assert_close(attn.sum(dim=(2, 3)), torch.ones(3, 4))
    # out = x * A + x with group k's map broadcast over its 2 channels
    expanded = attn.repeat_interleave(2, dim=1)
    torch.testing.assert_close(out, x * expanded + x)
    # attention in (0, 1] means |out| lies between |x| and 2|x|
    assert (out.abs() >= x.abs() - 1e-6).all() and (out.abs() <= 2 * x.abs() + 1e-6).all()


def test_ulsam_uses_pytorch_bn_momentum_and_leaves_the_default_device_alone():
    m = ULSAM(8, groups=2)
    assert m.bn_depthwise.momentum == 0.1 and m.bn_pointwise.momentum == 0.1
    assert torch.empty(1).device.type == "cpu"
    assert torch.get_default_dtype() == torch.float32


def test_ulsam_rejects_groups_that_do_not_divide_channels():
    with pytest.raises(ValueError, match="divisible by groups"):
        ULSAM(10, groups=4)
    with pytest.raises(ValueError, match=r"expects \[B, 8, H, W\]"):
        ULSAM(8, 2)(torch.randn(1, 4, 3, 3))


# ----------------------------------------------------------------------------------------------------- UPerNet
def conv(cin, cout, k, bias=False, bn=True):
    return cin * cout * k * k + (cout if bias else 0) + (2 * cout if bn else 0)


def upernet_parameters(tasks, f, b, context_head=False, image_tasks=("scene", "texture")):
    """UPerNet decoder + heads on ResNet-18, from the layer list of the module docstring."""
    c2, c3, c4, c5 = R18
    ppm = 4 * conv(c5, b, 1) + conv(c5 + 4 * b, f, 3)
    fpn = sum(conv(c, f, 1) for c in (c2, c3, c4)) + 3 * conv(f, f, 3)
    fusion = conv(4 * f, f, 3)
    heads = {}
    for t, n in tasks.items():
        cin = 2 * f if (t == "material" and context_head) else f
        heads[t] = conv(cin, f, 3) + conv(f, n, 1, bias=True, bn=False)
    return ppm, fpn, fusion, heads


@pytest.mark.parametrize("context_head", [False, True])
def test_upernet_parameters_follow_the_layer_list(context_head):
    f, b = 16, 8
    model = build("upernet", BRODEN, encoder="resnet18", fpn_channels=f, ppm_channels=b, context_head=context_head)
    counts = count_parameters(model)
    ppm, fpn, fusion, heads = upernet_parameters(BRODEN, f, b, context_head)
    assert counts["ppm"] == ppm and counts["fpn"] == fpn and counts["fusion"] == fusion
    for t in BRODEN:
        assert counts[f"heads.{t}"] == heads[t]
    assert counts["encoder"] == 11_176_512  # timm ResNet-18 without its classifier
    assert counts["total"] == 11_176_512 + ppm + fpn + fusion + sum(heads.values())


def test_ulsam_variants_parameters_outputs_and_attention_maps():
    f, b, g = 16, 8, 4
    base = count_parameters(build("upernet", BRODEN, encoder="resnet18", fpn_channels=f, ppm_channels=b))["total"]
    u = 5 * f + 3 * g
    expected = {
        "fused": u,                                                 # one ULSAM on the fused map
        "pairs": 2 * u + conv(2 * f, f, 3) - conv(4 * f, f, 3),     # two ULSAMs, fusion from 2 maps instead of 4
        "adjacent": 3 * u + conv(3 * f, f, 3) - conv(4 * f, f, 3),  # three ULSAMs, fusion from 3 maps
    }
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 40)
    for n_maps, variant in enumerate(ULSAM_VARIANTS, start=1):
        model = build("upernet", BRODEN, encoder="resnet18", fpn_channels=f, ppm_channels=b, ulsam=variant,
                      ulsam_groups=g, context_head=True)
        assert count_parameters(model)["total"] - base - (conv(2 * f, f, 3) - conv(f, f, 3)) == expected[variant]
        out = model(x)
        assert model.tasks == tuple(BRODEN) and set(out) == set(BRODEN)
        for t in ("semseg", "parts", "material"):
            assert out[t].shape == (2, BRODEN[t], 32, 40)
        assert out["scene"].shape == (2, 5) and out["texture"].shape == (2, 6)
        maps = model.attention_maps()
        assert len(maps) == n_maps, variant
        # the first map always lives at 1/4 of the input (P2 + ... or the fused map) and is a distribution
        assert maps[0].shape == (2, g, 8, 10)
        torch.testing.assert_close(maps[0].sum(dim=(2, 3)), torch.ones(2, g))
    assert build("upernet", BRODEN, encoder="resnet18", fpn_channels=f, ppm_channels=b).attention_maps() == []


def test_context_head_feeds_object_features_into_material():
    torch.manual_seed(0)
    model = build("upernet", {"semseg": 5, "material": 4}, encoder="resnet18", fpn_channels=8, ppm_channels=4,
                  context_head=True).eval()
    x = torch.rand(2, 3, 32, 32)
    base = model(x)["material"]
    with torch.no_grad():  # changing only the object head's pre-classifier conv must change material
        model.heads["semseg"].features[0].weight.add_(0.5)
    assert not torch.allclose(model(x)["material"], base)
    plain = build("upernet", {"semseg": 5, "material": 4}, encoder="resnet18", fpn_channels=8, ppm_channels=4).eval()
    y = plain(x)["material"]
    with torch.no_grad():
        plain.heads["semseg"].features[0].weight.add_(0.5)
    torch.testing.assert_close(plain(x)["material"], y)


def test_part_logits_are_gated_by_the_owning_object():
    from mtlkit.data.synthetic import BRODEN_OBJECTS, BRODEN_PARTS

    owners = broden_part_owners(BRODEN_OBJECTS, BRODEN_PARTS)
    assert owners[0] == ()  # "none" has no owner
    creature = BRODEN_PARTS.index("creature head")
    assert {BRODEN_OBJECTS[o] for o in owners[creature]} == {"cat", "dog", "person", "rider"}
    assert [BRODEN_OBJECTS[o] for o in owners[BRODEN_PARTS.index("table leg")]] == ["table"]

    tasks = {"semseg": len(BRODEN_OBJECTS), "parts": len(BRODEN_PARTS)}
    torch.manual_seed(0)
    gated = build("upernet", tasks, encoder="resnet18", fpn_channels=8, ppm_channels=4, part_owners=owners).eval()
    plain = build("upernet", tasks, encoder="resnet18", fpn_channels=8, ppm_channels=4).eval()
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if k != "part_owners"})
    quarter = {}
    gated.heads["semseg"].classifier.register_forward_hook(lambda m, i, o: quarter.setdefault("obj", o))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        diff = gated(x)["parts"] - plain(x)["parts"]
    probs = torch.softmax(quarter["obj"], dim=1)[0]                        # [O, 8, 8]
    owner_prob = torch.stack([probs[list(o)].sum(0) if o else torch.ones_like(probs[0]) for o in owners])
    expected = F.interpolate(owner_prob.clamp_min(1e-4).log()[None], size=(32, 32), mode="bilinear",
                             align_corners=False)
    torch.testing.assert_close(diff, expected, atol=1e-5, rtol=1e-5)
    assert diff[0, 0].abs().max() < 1e-5         # "none" is never gated
    assert (diff[0, 1:] < 0).all()               # owned parts are scaled by p(owner) < 1


def test_upernet_bad_input_lists_valid_choices():
    with pytest.raises(ValueError, match=r"valid choices: None, 'fused', 'pairs', 'adjacent'"):
        build("upernet", BRODEN, encoder="resnet18", ulsam="everywhere")
    with pytest.raises(ValueError, match="Valid tasks: .*semseg"):
        build("upernet", {"semseg": 3, "boxes": 4}, encoder="resnet18")
    with pytest.raises(ValueError, match="both 'semseg' and 'material'"):
        build("upernet", {"material": 3}, encoder="resnet18", context_head=True)
    with pytest.raises(ValueError, match="divisible by ulsam_groups"):
        build("upernet", {"semseg": 3}, encoder="resnet18", fpn_channels=10, ulsam="fused", ulsam_groups=4)
    with pytest.raises(ValueError, match="valid encoders"):
        build("upernet", {"semseg": 3}, encoder="vgg16")


def test_one_trainer_epoch_on_multi_source_broden(tmp_path):
    """Each batch labels only some tasks: unlabelled tasks give a zero loss (still in the graph) and no gradient."""
    from mtlkit.data import collate, get_dataset
    from mtlkit.tasks import tasks_for
    from mtlkit.train import Trainer

    train = get_dataset("synthetic-broden", "train", preset="unit")
    tasks = {n: t.out_channels for n, t in tasks_for(train.task_info).items()}
    torch.manual_seed(0)
    model = build("upernet", tasks, encoder="resnet18", fpn_channels=16, ppm_channels=8, ulsam="fused",
                  context_head=True)

    # a batch of "opensurfaces" images labels only material
    material_only = [i for i in range(len(train)) if train[i]["meta"]["tasks"] == ["material"]][:2]
    assert len(material_only) == 2
    batch = collate([train[i] for i in material_only])
    task_objs = tasks_for(train.task_info)
    preds = model(batch["image"])
    losses = {n: t.loss(preds[n], batch) for n, t in task_objs.items()}
    for n in ("scene", "semseg", "parts", "texture"):
        assert float(losses[n].detach()) == 0.0 and losses[n].grad_fn is not None
    assert float(losses["material"].detach()) > 0
    sum(losses.values()).backward()
    assert model.heads["scene"].classifier.weight.grad.abs().max() == 0
    assert model.heads["texture"].classifier.weight.grad.abs().max() == 0
    assert model.heads["material"].classifier.weight.grad.abs().max() > 0

    model.encoder.requires_grad_(False)  # speed: the per-source masking happens in the heads' losses
    val = torch.utils.data.Subset(get_dataset("synthetic-broden", "val", preset="unit"), [0, 1, 2, 3])
    trainer = Trainer(model, train, val, out_dir=tmp_path,
                      epochs=1, batch_size=4, progress=False, weighting="static",
                      weighting_options={"weights": UPERNET_LOSS_WEIGHTS})
    metrics = trainer.fit()
    record = metrics["epochs"][0]
    assert set(record["train_loss"]) == set(tasks) | {"total"}
    assert all(math.isfinite(v) for v in record["train_loss"].values() if v is not None)
    assert set(record["val"]) == set(tasks)
    assert 0.0 <= record["val"]["semseg"]["miou"] <= 1.0


def test_ppm_pools_adaptively_on_average_and_trains_at_batch_size_one():
    model = build("upernet", {"scene": 5, "semseg": 3}, encoder="resnet18", fpn_channels=8, ppm_channels=4)
    pools = model.ppm.pools
    assert all(isinstance(p, torch.nn.AdaptiveAvgPool2d) for p in pools)
    assert [p.output_size for p in pools] == [1, 2, 3, 6]
    # the s = 1 branch is the global mean of C5, broadcast back over the map
    c5 = torch.randn(2, 512, 3, 4)
    torch.testing.assert_close(pools[0](c5), c5.mean(dim=(2, 3), keepdim=True))
    out = model.train()(torch.rand(1, 3, 64, 64))  # BN after upsampling: a 1x1 pooled map still trains at B = 1
    assert out["scene"].shape == (1, 5) and out["semseg"].shape == (1, 3, 64, 64)


def test_float64_forward_stays_float64_with_part_gating():
    """Notebook 08 compares two networks in float64; the owner gate must not round through float32."""
    from mtlkit.data.synthetic import BRODEN_OBJECTS, BRODEN_PARTS

    tasks = {"semseg": len(BRODEN_OBJECTS), "parts": len(BRODEN_PARTS)}
    owners = broden_part_owners(BRODEN_OBJECTS, BRODEN_PARTS)
    torch.manual_seed(0)
    model = build("upernet", tasks, encoder="resnet18", fpn_channels=8, ppm_channels=4,
                  part_owners=owners).eval().double()
    quarter = {}
    for task in tasks:
        model.heads[task].classifier.register_forward_hook(lambda m, i, o, t=task: quarter.__setitem__(t, o))
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32, dtype=torch.float64))
    assert out["parts"].dtype == torch.float64 and out["semseg"].dtype == torch.float64
    probs = torch.softmax(quarter["semseg"], dim=1)[0]                     # float64 [O, 8, 8]
    owner_prob = torch.stack([probs[list(o)].sum(0) if o else torch.ones_like(probs[0]) for o in owners])
    expected = F.interpolate((quarter["parts"][0] + owner_prob.clamp_min(1e-4).log())[None], size=(32, 32),
                             mode="bilinear", align_corners=False)
    torch.testing.assert_close(out["parts"], expected, rtol=1e-12, atol=1e-12)


def test_notebook_08_schedules_references_and_splits():
    from mtlkit.course_broden import UPERNET_REFERENCE, broden_splits, part_owners_for, upernet_schedule

    smoke = upernet_schedule("smoke", epochs=2)
    assert smoke["epochs"] == 2 and smoke["data"] == "synthetic-broden" and smoke["encoder"] == "resnet18"
    assert smoke["fpn_channels"] % smoke["ulsam_groups"] == 0
    paper = upernet_schedule("paper")  # UPerNet's recipe (unifiedparsing train.py): SGD 0.02, poly 0.9, wd 1e-4
    assert (paper["optimizer"], paper["lr"], paper["scheduler"], paper["weight_decay"]) == ("sgd", 0.02, "poly", 1e-4)
    assert paper["encoder"] == "resnet50" and paper["pretrained"] and paper["fpn_channels"] == 512
    assert paper["data"] == "broden"
    with pytest.raises(ValueError, match="unknown schedule key.*'epoch'.*valid keys"):
        upernet_schedule("smoke", epoch=3)
    with pytest.raises(ValueError, match="valid presets"):
        upernet_schedule("fast")
    # REFERENCE.md's UPerNet-50 ADE20K numbers, under the kit's metric names
    assert UPERNET_REFERENCE == {"UPerNet-50, ADE20K (paper)": {"semseg/miou": 40.44, "semseg/pixel_acc": 79.80}}

    splits = broden_splits(upernet_schedule("unit", train_images=3))
    assert len(splits["train"]) == 3 and set(splits["train"].task_info) == set(BRODEN)
    owners = part_owners_for(splits["train"].task_info)
    assert owners is not None and len(owners) == BRODEN["parts"] and owners[0] == ()
    # part names that do not say their owner: no gating rather than an error
    assert part_owners_for({"semseg": {"class_names": ["a", "b"]}, "parts": {"class_names": ["x y"]}}) is None
    assert part_owners_for({"semseg": {"class_names": ["a"]}}) is None
