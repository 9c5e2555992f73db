"""Task Switching Networks: codes, mapping network, AdaIN convs, parameter counts vs the paper, Trainer switching."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtlkit.models import build, count_parameters
from mtlkit.models.tsn import AdaINConv, EqualLinear, PixelNorm, task_codes

# PASCAL-Context's five tasks with the paper's channels (21 classes, 7 human parts)
PASCAL = {"semseg": 21, "parts": 7, "edge": 1, "normals": 3, "saliency": 1}
NARROW = (16, 8, 8, 8, 8)
RESNET18 = 11_176_512  # timm/torchvision ResNet-18 without avgpool/fc


def conv(cin, cout, k):
    return cin * cout * k * k + cout


def decoder_parameters(d: int | None, widths=(512, 256, 256, 128, 64), enc=(64, 64, 128, 256, 512)) -> int:
    """The U-Net decoder from the layer list: conv (bias) + either an AdaIN style layer d -> 2C or an affine IN."""
    def block(cin, cout, k):
        return conv(cin, cout, k) + ((d * 2 * cout + 2 * cout) if d is not None else 2 * cout)

    w3, w2, w1, w0, wf = widths
    laterals = sum(block(c, c, 1) for c in enc)
    ups = block(enc[4] + enc[3], w3, 3) + block(w3 + enc[2], w2, 3) + block(w2 + enc[1], w1, 3) \
        + block(w1 + enc[0], w0, 3)
    return laterals + ups + block(w0, wf, 3)


def test_tsn_parameters_match_the_paper():
    model = build("tsn", PASCAL)  # orthogonal codes, d = 5 x 20 = 100
    counts = count_parameters(model)
    d = 100
    assert counts["encoder"] == RESNET18
    assert counts["mapping"] == 8 * (d * d + d)
    assert counts["decoder"] == decoder_parameters(d)
    assert counts["head"] == 64 * 21 + 21          # shared 1x1 conv to max(channels) = 21
    assert counts["total"] == 18_258_805
    assert abs(counts["total"] / 18.26e6 - 1) < 0.002  # the paper's 18.26 M


def test_five_single_task_unets_match_the_paper():
    totals = {t: count_parameters(build("unet", {t: c}))["total"] for t, c in PASCAL.items()}
    for t, c in PASCAL.items():
        assert totals[t] == RESNET18 + decoder_parameters(None) + 64 * c + c
    assert sum(totals.values()) == 88_645_345
    assert abs(sum(totals.values()) / 88.65e6 - 1) < 0.002  # the paper's 88.65 M
    # the multi-decoder baseline shares the encoder: five decoders, one encoder
    multi = count_parameters(build("unet", PASCAL))["total"]
    assert multi == sum(totals.values()) - 4 * RESNET18


def test_tsn_parameters_do_not_grow_with_the_number_of_tasks():
    names = list(PASCAL)
    counts = []
    for k in range(1, 6):
        tasks = {t: PASCAL[t] for t in names[:k]}          # every set contains semseg: max channels stays 21
        counts.append(count_parameters(build("tsn", tasks, decoder_channels=NARROW))["total"])
    assert len(set(counts)) == 1, counts
    # an explicit output width keeps it constant for any task set
    assert count_parameters(build("tsn", {"edge": 1}, decoder_channels=NARROW, out_channels=21))["total"] == counts[0]


def test_task_codes():
    z = task_codes(5, 100)
    assert z.shape == (5, 100)
    torch.testing.assert_close(z @ z.T, 20 * torch.eye(5))   # 20 ones each, disjoint blocks
    assert z[1, 20:40].eq(1).all() and z[1, :20].eq(0).all()
    g = task_codes(3, 64, "gaussian", seed=3)
    torch.testing.assert_close(g, task_codes(3, 64, "gaussian", seed=3))
    assert not torch.equal(g, task_codes(3, 64, "gaussian", seed=4))
    with pytest.raises(ValueError, match="valid choices: orthogonal, gaussian"):
        task_codes(2, 10, "uniform")
    with pytest.raises(ValueError, match="num_tasks <= dim"):
        task_codes(5, 4)


def test_pixel_norm_and_equalised_linear():
    x = torch.randn(4, 10) * 7
    y = PixelNorm()(x)
    torch.testing.assert_close(y.pow(2).mean(dim=1), torch.ones(4), rtol=1e-5, atol=1e-5)
    lin = EqualLinear(10, 3)
    torch.testing.assert_close(lin(x), F.linear(x, lin.weight * math.sqrt(2 / 10), lin.bias))
    assert lin.bias.eq(0).all()


def test_adain_conv_normalises_then_applies_the_task_style():
    torch.manual_seed(0)
    block = AdaINConv(3, 4, kernel_size=3, embed_dim=6)
    x = torch.randn(2, 3, 8, 8)
    w = torch.randn(1, 6)
    # at initialisation the style weights still act; zero them to read off gamma = 1, beta = 0 (the bias init)
    with torch.no_grad():
        block.style.weight.zero_()
    out = block(x, w)
    h = block.conv(x)
    normed = (h - h.mean(dim=(2, 3), keepdim=True)) / torch.sqrt(h.var(dim=(2, 3), keepdim=True, unbiased=False) + 1e-5)
    torch.testing.assert_close(out, F.leaky_relu(normed, 0.01))
    # with gamma = 2, beta = 0.5: pre-activation channel means are beta, standard deviations gamma
    with torch.no_grad():
        block.style.bias[:4] = 2.0
        block.style.bias[4:] = 0.5
        block.act = torch.nn.Identity()
    pre = block(x, w)
    torch.testing.assert_close(pre.mean(dim=(2, 3)), torch.full((2, 4), 0.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(pre.std(dim=(2, 3), unbiased=False), torch.full((2, 4), 2.0), atol=1e-3, rtol=0)


def test_tsn_forward_contract_and_switching():
    torch.manual_seed(0)
    model = build("tsn", PASCAL, decoder_channels=NARROW).eval()
    assert model.tasks == tuple(PASCAL)
    x = torch.rand(2, 3, 40, 36)
    with torch.no_grad():
        one = model(x, task="parts")
        every = model(x)
    assert set(one) == {"parts"} and one["parts"].shape == (2, 7, 40, 36)
    assert {t: v.shape[1] for t, v in every.items()} == PASCAL
    torch.testing.assert_close(one["parts"], every["parts"])
    # the same shared output conv, but a different task code gives a different prediction
    assert not torch.allclose(every["semseg"][:, :7], every["parts"])
    gaussian = build("tsn", {"semseg": 3, "edge": 1}, code="gaussian", code_dim=16, decoder_channels=NARROW)
    assert gaussian.codes.shape == (2, 16)


def test_tsn_bad_input_lists_valid_choices():
    model = build("tsn", {"semseg": 3, "edge": 1}, decoder_channels=NARROW)
    with pytest.raises(ValueError, match="valid tasks: semseg, edge"):
        model(torch.rand(1, 3, 32, 32), task="depth")
    with pytest.raises(ValueError, match="dense .* only; 'scene'.*Valid tasks: .*normals"):
        build("tsn", {"semseg": 3, "scene": 5})
    with pytest.raises(ValueError, match="valid choices: orthogonal, gaussian"):
        build("tsn", {"semseg": 3}, code="binary")
    with pytest.raises(ValueError, match="dense .* only"):
        build("unet", {"boxes": 4})


@pytest.mark.parametrize("schedule", ["epoch", "iteration"])
def test_trainer_switches_tasks(tmp_path, schedule):
    from mtlkit.data import get_dataset
    from mtlkit.tasks import tasks_for
    from mtlkit.train import Trainer

    train = get_dataset("synthetic-pascal", "train", preset="unit")   # 8 images
    tasks = {n: t.out_channels for n, t in tasks_for(train.task_info).items()}
    torch.manual_seed(0)
    model = build("tsn", tasks, decoder_channels=NARROW)
    model.encoder.requires_grad_(False)  # speed: the switching happens in the decoder (the paper's encoder lr is 1e-6)
    val = torch.utils.data.Subset(get_dataset("synthetic-pascal", "val", preset="unit"), [0, 1])
    trainer = Trainer(model, train, val, out_dir=tmp_path, epochs=1, batch_size=4, progress=False,
                      task_schedule=schedule, train_metrics=False)
    metrics = trainer.fit()
    losses = metrics["epochs"][0]["train_loss"]
    names = list(tasks)
    # epoch 0 trains task 0 only; per iteration, steps 0 and 1 train tasks 0 and 1 (2 batches of 4 images)
    trained = names[:1] if schedule == "epoch" else names[:2]
    assert [t for t in names if losses[t] is not None] == trained
    assert all(math.isfinite(losses[t]) for t in trained)
    assert set(metrics["epochs"][0]["val"]) == set(tasks)   # evaluation runs every task
    assert metrics["parameters"]["total"] == count_parameters(model)["total"]


def test_instance_norm_matches_torch_and_keeps_the_dtype():
    from mtlkit.models.tsn import InstanceNorm

    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    y = InstanceNorm(3)(x)
    assert y.dtype == torch.float64  # float64 checks (notebook 09) must not be rounded through float32
    torch.testing.assert_close(y, F.instance_norm(x, eps=1e-5), rtol=1e-12, atol=1e-12)
    assert InstanceNorm(3)(torch.randn(2, 3, 1, 1)).eq(0).all()  # C5 of a 32-px image: 0, not an error


def test_notebook_09_schedules_and_references():
    from mtlkit.course.pascal import PASCAL_TASK_CHANNELS, TSN_REFERENCE, pascal_splits, tsn_schedule
    from mtlkit.tasks import TASK_SPECS

    assert PASCAL_TASK_CHANNELS == PASCAL
    smoke = tsn_schedule("smoke", epochs=2)
    assert smoke["epochs"] == 2 and smoke["data"] == "synthetic-pascal" and smoke["task_schedule"] == "iteration"
    paper = tsn_schedule("paper")
    assert paper["param_groups"] == [("encoder", 0.01)] and paper["lr"] == 1e-4 and paper["pretrained"]
    assert paper["task_schedule"] == "epoch" and paper["decoder_channels"] == (512, 256, 256, 128, 64)
    with pytest.raises(ValueError, match="unknown schedule key.*'epoch'.*valid keys"):
        tsn_schedule("smoke", epoch=3)
    with pytest.raises(ValueError, match="valid presets"):
        tsn_schedule("fast")
    # the references use the metric that represents each task in Δm, so they sit beside the kit's columns
    for row in TSN_REFERENCE.values():
        assert set(row) == {f"{t}/{TASK_SPECS[t].delta_metric}" for t in PASCAL}
    splits = pascal_splits(tsn_schedule("unit", train_images=3))
    assert len(splits["train"]) == 3 and splits["train"].task_info.keys() == PASCAL.keys()
    assert len(splits["val"]) == 4 and len(splits["test"]) == 4
    splits = pascal_splits(tsn_schedule("unit", val_images=2))  # the first images; the test split stays whole
    assert len(splits["val"]) == 2 and len(splits["test"]) == 4
    assert splits["val"][1]["image"].equal(pascal_splits(tsn_schedule("unit"))["val"][1]["image"])
    # smoke: Δm over all five tasks; Gaussian codes at the d of the notebook's main TSN (orthogonal, d = 100) and
    # orthogonal codes at another d
    smoke = tsn_schedule("smoke")
    assert set(smoke["single_task"]) == set(PASCAL) and (smoke["train_images"], smoke["val_images"]) == (96, 32)
    assert set(smoke["code_grid"]) == {("gaussian", 100), ("orthogonal", 10)}
    for preset in ("lesson", "paper"):  # they compare more codes (and dimensions) than smoke, with every baseline
        assert set(smoke["code_grid"]) < set(tsn_schedule(preset)["code_grid"])
        assert set(tsn_schedule(preset)["single_task"]) == set(PASCAL)


def test_channel_pooling_groups_consecutive_channels_like_the_authors():
    """The authors' test.py reads task t as adaptive average pooling of the 21 shared channels down to C_t."""
    from mtlkit.models.tsn import channel_pool_matrix

    def groups(n: int, size: int) -> torch.Tensor:  # n consecutive groups of `size` channels, each averaged
        return torch.kron(torch.eye(n, dtype=torch.float64), torch.full((1, size), 1 / size, dtype=torch.float64))

    assert torch.equal(channel_pool_matrix(21, 7), groups(7, 3))   # parts
    assert torch.equal(channel_pool_matrix(21, 3), groups(3, 7))   # normals
    assert torch.equal(channel_pool_matrix(21, 1), torch.full((1, 21), 1 / 21, dtype=torch.float64))
    assert torch.equal(channel_pool_matrix(21, 21), torch.eye(21, dtype=torch.float64))
    # hand-made shared output: channel c is the constant c, so parts read 1, 4, 7, ..., 19 and edge reads 10
    shared = torch.arange(21.0).view(1, 21, 1, 1).expand(2, 21, 3, 5)
    model = build("tsn", PASCAL, decoder_channels=NARROW)
    assert model.readout == "pool"
    torch.testing.assert_close(model.read_task(shared, "parts")[0, :, 0, 0], torch.arange(1.0, 21.0, 3.0))
    torch.testing.assert_close(model.read_task(shared, "normals")[0, :, 0, 0], torch.tensor([3.0, 10.0, 17.0]))
    torch.testing.assert_close(model.read_task(shared, "edge"), torch.full((2, 1, 3, 5), 10.0))
    torch.testing.assert_close(model.read_task(shared, "semseg"), shared)
    # uneven bins are adaptive pooling's (overlapping) ones, as torch computes them
    x = torch.randn(2, 6, 3, 5)
    for c in (1, 4, 5):
        expected = F.adaptive_avg_pool3d(x.unsqueeze(1), (c, 3, 5)).squeeze(1)
        torch.testing.assert_close(torch.einsum("tc,bchw->bthw", channel_pool_matrix(6, c).float(), x), expected)
    with pytest.raises(ValueError, match="1 <= out_channels <= in_channels"):
        channel_pool_matrix(3, 4)


def test_tsn_readout_pool_is_the_default_and_slice_an_option():
    torch.manual_seed(0)
    pool = build("tsn", PASCAL, decoder_channels=NARROW).eval()
    sliced = build("tsn", PASCAL, decoder_channels=NARROW, readout="slice").eval()
    sliced.load_state_dict(pool.state_dict())  # same parameters: the read-out has none
    assert count_parameters(pool) == count_parameters(sliced)
    captured = []
    pool.head.register_forward_hook(lambda m, i, o: captured.append(o))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        out_pool, out_slice = pool(x, task="parts"), sliced(x, task="parts")
    shared = captured[0]  # [1, 21, 32, 32]
    expected = F.adaptive_avg_pool3d(shared.unsqueeze(1), (7, 32, 32)).squeeze(1)
    torch.testing.assert_close(out_pool["parts"], expected)
    torch.testing.assert_close(out_slice["parts"], shared[:, :7])
    assert pool.output_layer("parts").channels == slice(None)      # pooling reads every shared channel
    assert sliced.output_layer("parts").channels == slice(0, 7)
    with pytest.raises(ValueError, match="unknown TSN readout 'first'; valid: pool, slice"):
        build("tsn", PASCAL, decoder_channels=NARROW, readout="first")


def test_align_corners_is_an_option_of_the_u_net_decoder():
    kit = build("unet", {"edge": 1}, decoder_channels=NARROW)
    authors = build("unet", {"edge": 1}, decoder_channels=NARROW, align_corners=True)
    authors.load_state_dict(kit.state_dict())
    assert kit.decoders["edge"].align_corners is False and authors.decoders["edge"].align_corners is True
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(kit.eval()(x)["edge"], authors.eval()(x)["edge"])
