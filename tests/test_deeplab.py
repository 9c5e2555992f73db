"""DeepLabV3+ family: output contract, output stride / dilation flags, ASPP at batch size 1, parameter counts
against docs/reference.md, offline pretrained weights, and gradient flow."""
import pytest
import torch
import torch.nn.functional as F

import mtlkit.models.encoders as encoders
from mtlkit.models import build, count_parameters
from mtlkit.models.blocks import ASPP, SelfAttentionGate
from mtlkit.models.encoders import PretrainedWeightsUnavailable, resolve_output_stride

TASKS = {"semseg": 5, "depth": 1, "normals": 3}
FAMILY = ("deeplab-joint", "deeplab-branched", "deeplab-distill")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build(name, TASKS, encoder="resnet18", output_stride=16) for name in FAMILY}


def _shape_tree(out):
    return {k: _shape_tree(v) if isinstance(v, dict) else tuple(v.shape) for k, v in out.items()}


@pytest.mark.parametrize("name", FAMILY)
def test_output_contract(models, name):
    model = models[name].eval()
    assert model.tasks == tuple(TASKS)
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 96))  # non-square: catches H/W mix-ups
    expected = {t: (2, c, 64, 96) for t, c in TASKS.items()}
    if name == "deeplab-distill":  # deep supervision: initial predictions, dict of dicts (stage -> task)
        expected["aux"] = {"initial": dict(expected)}
    assert _shape_tree(out) == expected
    assert all(torch.isfinite(v).all() for k, v in out.items() if k != "aux")


def test_joint_splits_one_classifier_in_task_order(models):
    model = models["deeplab-joint"].eval()
    assert model.decoder.classifier.out_channels == 5 + 1 + 3
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = model(images)
        skip, feats = model.encoder(images)
        full = F.interpolate(model.decoder.classifier(model.decoder.features(model.aspp(feats), skip)),
                             size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(torch.cat([out["semseg"], out["depth"], out["normals"]], dim=1), full)


def test_single_is_joint_with_one_task():
    model = build("deeplab-single", {"depth": 1}, encoder="resnet18")
    assert model.tasks == ("depth",) and model.decoder.classifier.out_channels == 1
    with pytest.raises(ValueError, match="exactly one task"):
        build("deeplab-single", {"semseg": 5, "depth": 1}, encoder="resnet18")


@pytest.mark.parametrize("output_stride, flags, rates", [
    (32, (False, False, False), (3, 6, 9)),
    (16, (False, False, True), (6, 12, 18)),
    (8, (False, True, True), (12, 24, 36)),
])
def test_output_stride_changes_the_feature_map(output_stride, flags, rates):
    by_stride = build("deeplab-joint", {"semseg": 3}, encoder="resnet18", output_stride=output_stride)
    by_flags = build("deeplab-joint", {"semseg": 3}, encoder="resnet18", dilation=flags)
    for model in (by_stride, by_flags):
        assert model.output_stride == output_stride
        assert model.aspp.rates == rates  # DeepLab's rates scale with 1 / output stride
        with torch.no_grad():
            skip, feats = model.eval().encoder(torch.rand(1, 3, 64, 64))
        assert skip.shape == (1, 64, 16, 16)  # the DeepLabV3+ skip is always at stride 4
        assert feats.shape == (1, 512, 64 // output_stride, 64 // output_stride)


def test_default_output_stride_is_16_and_rates_are_configurable():
    model = build("deeplab-joint", {"semseg": 3}, encoder="resnet18", aspp_rates=(1, 2, 3))
    assert model.output_stride == 16 and model.aspp.rates == (1, 2, 3)
    assert resolve_output_stride() == 16


@pytest.mark.parametrize("flags", [(True, False, False), (False, True, False), (True, True, True), (False, True)])
def test_invalid_dilation_flags_are_rejected(flags):
    with pytest.raises(ValueError, match=r"unsupported dilation flags.*\(False, False, True\) -> output stride 16"):
        resolve_output_stride(dilation=flags)


def test_invalid_output_stride_and_contradictions_are_rejected():
    with pytest.raises(ValueError, match="output_stride must be 32, 16 or 8"):
        build("deeplab-joint", {"semseg": 3}, encoder="resnet18", output_stride=4)
    with pytest.raises(ValueError, match="contradicts dilation"):
        resolve_output_stride(8, (False, False, True))
    assert resolve_output_stride(16, (False, False, True)) == 16


def test_bad_tasks_and_encoders_get_clear_errors():
    with pytest.raises(ValueError, match="dense .*'scene' is an image-level task"):
        build("deeplab-joint", {"semseg": 3, "scene": 4}, encoder="resnet18")
    with pytest.raises(ValueError, match="unknown task 'sematic'"):
        build("deeplab-branched", {"sematic": 3}, encoder="resnet18")
    with pytest.raises(ValueError, match="valid encoders: resnet18, resnet34, resnet50"):
        build("deeplab-joint", {"semseg": 3}, encoder="vgg16")
    with pytest.raises(ValueError, match="at least two tasks"):
        build("deeplab-distill", {"semseg": 3}, encoder="resnet18")


def test_batch_size_one_in_train_mode():
    # OS 32 at 64 px: a 2x2 map; ASPP's image pooling sees one 1x1 value per channel, where BatchNorm would fail
    model = build("deeplab-distill", {"semseg": 3, "depth": 1}, encoder="resnet18", output_stride=32)
    model.train()
    out = model(torch.rand(1, 3, 64, 64))
    assert out["semseg"].shape == (1, 3, 64, 64) and torch.isfinite(out["depth"]).all()


def test_aspp_image_pooling_at_batch_one():
    aspp = ASPP(16, 8, rates=(1, 2, 3)).train()
    pooling = aspp.branches[-1]
    x = torch.rand(1, 16, 3, 5)
    y = pooling(x)
    assert y.shape == (1, 8, 3, 5)
    assert torch.equal(y, y[:, :, :1, :1].expand_as(y))  # image-level: the same vector at every position
    assert aspp(x).shape == (1, 8, 3, 5)


def test_aspp_parameter_count_by_hand():
    # four conv branches + pooling 1x1 (no bias) + six norms (scale, shift) + 1x1 projection from 5 * C_out
    c_in, c = 512, 256
    expected = c_in * c * (1 + 3 * 9 + 1) + 5 * c * c + 6 * 2 * c
    assert sum(p.numel() for p in ASPP(c_in, c).parameters()) == expected == 4_131_840


def test_self_attention_gate_formula():
    torch.manual_seed(0)
    gate = SelfAttentionGate(4, 3)
    x = torch.randn(2, 4, 5, 5)
    # zero-initialised gate: sigmoid(0) = 1/2 everywhere
    torch.testing.assert_close(gate(x), 0.5 * F.conv2d(x, gate.message.weight, padding=1))
    torch.nn.init.normal_(gate.gate.weight)
    expected = F.conv2d(x, gate.message.weight, padding=1) * torch.sigmoid(F.conv2d(x, gate.gate.weight, padding=1))
    torch.testing.assert_close(gate(x), expected)


# docs/reference.md: ResNet-34, 19 classes + depth
REFERENCE_COUNTS = {"deeplab-joint": 26.72e6, "deeplab-branched": 32.14e6, "deeplab-distill": 36.87e6}


@pytest.mark.parametrize("name", list(REFERENCE_COUNTS))
def test_parameter_counts_match_reference(name):
    model = build(name, {"semseg": 19, "depth": 1}, encoder="resnet34")  # no forward: counts only
    counts = count_parameters(model)
    assert counts["total"] == pytest.approx(REFERENCE_COUNTS[name], rel=0.02)
    assert counts["encoder"] == 21_284_672  # timm resnet34 without its classifier
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    if name == "deeplab-joint":
        assert set(counts) == {"encoder", "aspp", "decoder", "total"}
    else:
        per_task = {"aspp", "decoders"} | ({"distill", "final"} if name == "deeplab-distill" else set())
        assert set(counts) == {"encoder", "total"} | {f"{p}.{t}" for p in per_task for t in ("semseg", "depth")}
    if name == "deeplab-distill":
        # one SA gate (two 3x3 256->256 convs, no bias) per ordered task pair
        assert counts["distill.semseg"] == counts["distill.depth"] == 2 * 9 * 256 * 256


def test_pretrained_offline_gives_a_clear_error(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError
    from requests.exceptions import ConnectionError as RequestsConnectionError

    real = encoders.timm.create_model
    calls = []

    def offline(name, pretrained=False, **kwargs):
        calls.append(pretrained)
        if pretrained:
            raise error
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(encoders.timm, "create_model", offline)
    for error in (LocalEntryNotFoundError("cannot find the requested files in the local cache"),
                  RequestsConnectionError("Name or service not known")):
        with pytest.raises(PretrainedWeightsUnavailable, match=r"could not download ImageNet weights.*"
                                                               r"pretrained=False.*cache") as info:
            build("deeplab-joint", {"semseg": 3}, encoder="resnet18", pretrained=True)
        assert info.value.__cause__ is error
    # pretrained=False never asks for weights; unrelated errors are not disguised as download problems
    build("deeplab-joint", {"semseg": 3}, encoder="resnet18")
    assert calls == [True, True, False]
    error = KeyError("bad pretrained_cfg")
    with pytest.raises(KeyError):
        build("deeplab-joint", {"semseg": 3}, encoder="resnet18", pretrained=True)


@pytest.mark.parametrize("name", FAMILY)
def test_gradient_reaches_the_encoder_from_every_task(models, name):
    model = models[name].train()
    out = model(torch.rand(2, 3, 64, 64))
    first_conv = model.encoder.body.conv1.weight
    for task in TASKS:
        targets = [out[task]] + ([out["aux"]["initial"][task]] if "aux" in out else [])
        for pred in targets:
            (grad,) = torch.autograd.grad(pred.square().mean(), first_conv, retain_graph=True)
            assert grad.abs().sum() > 0, f"{name}: no gradient from {task} to the encoder"
    if name != "deeplab-joint":
        # branching separates the tasks' decoders; distillation connects them again through the SA gates
        other = model.decoders["depth"].fuse[0][0].weight
        (grad,) = torch.autograd.grad(out["semseg"].square().mean(), other, retain_graph=True, allow_unused=True)
        crosses = grad is not None and grad.abs().sum() > 0
        assert crosses == (name == "deeplab-distill")


@pytest.mark.parametrize("name", FAMILY + ("deeplab-single",))
def test_gradients_reach_every_parameter(name):
    tasks = {"semseg": 5} if name == "deeplab-single" else TASKS
    torch.manual_seed(0)
    model = build(name, tasks, encoder="resnet18", output_stride=16).train()
    with torch.no_grad():  # zero-initialised gates block the gradient of their partner conv at step 0 only
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(std=0.01)
    out = model(torch.rand(2, 3, 64, 64))
    preds = [out[t] for t in tasks] + [v for stage in out.get("aux", {}).values() for v in stage.values()]
    sum(p.square().mean() for p in preds).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not dead, f"{name}: no gradient reaches {dead[:5]}"


@pytest.mark.parametrize("train", [True, False])
def test_distillation_returns_initial_predictions_in_train_and_eval(train):
    model = build("deeplab-distill", TASKS, encoder="resnet18").train(train)
    with torch.set_grad_enabled(train):
        out = model(torch.rand(2, 3, 64, 64))
    assert set(out["aux"]["initial"]) == set(TASKS)
    assert all(out["aux"]["initial"][t].shape == out[t].shape for t in TASKS)


def test_dlad_aspp_has_no_dropout_and_batchnorm_pooling_is_an_option():
    """The DLAD template's ASPP (the course's authors) has no dropout; its pooling branch uses BatchNorm, which the
    kit replaces by GroupNorm (trains at batch size 1) unless aspp_pooling_norm="batch"."""
    kit = build("deeplab-joint", {"depth": 1}, encoder="resnet18", aspp_channels=16, decoder_channels=16)
    assert isinstance(kit.aspp.dropout, torch.nn.Identity)
    assert isinstance(kit.aspp.branches[-1].norm, torch.nn.GroupNorm)
    dlad = build("deeplab-joint", {"depth": 1}, encoder="resnet18", aspp_channels=16, decoder_channels=16,
                 aspp_pooling_norm="batch")
    assert isinstance(dlad.aspp.branches[-1].norm, torch.nn.BatchNorm2d)
    assert count_parameters(dlad) == count_parameters(kit)
    dlad.train()(torch.rand(2, 3, 32, 32))  # BatchNorm over the pooled 1x1 map needs >= 2 images in training
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        dlad.train()(torch.rand(1, 3, 32, 32))
    kit.train()(torch.rand(1, 3, 32, 32))  # GroupNorm: batch size 1 trains
