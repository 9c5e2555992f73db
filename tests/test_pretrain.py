"""The synthetic pretrained-encoder stand-in: cache written, reused and rebuilt when corrupt; weights that learned
something, load exactly into encoders and models; the ImageNet path offline; the CLI entry."""
from __future__ import annotations

import json

import pytest
import torch

from mtlkit import pretrain
from mtlkit.models import build, encoders
from mtlkit.models.encoders import PretrainedWeightsUnavailable, create_encoder
from mtlkit.pretrain import (CLASS_NAMES, PRETRAIN_DATA_SEED, PRETRAIN_PRESETS, load_pretrained_encoder,
                             pretrain_encoder, stand_in_data, stand_in_label, stand_in_path)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pretrain-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTLKIT_DATA_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def stand_in(data_dir):
    """The unit-preset ResNet-18 stand-in, trained once for the module (about 15 CPU seconds)."""
    return pretrain_encoder("resnet18", preset="unit", verbose=False)


def _sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _offline(monkeypatch):
    """timm.create_model as on a machine without internet: pretrained=True raises what the HF hub raises."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    real = encoders.timm.create_model

    def create_model(name, pretrained=False, **kwargs):
        if pretrained:
            raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub and we "
                                          "cannot find the requested files in the local cache.")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(encoders.timm, "create_model", create_model)


def test_cache_is_written_with_its_sidecar_and_reused(stand_in, data_dir, monkeypatch):
    path = data_dir / "cache" / "pretrained" / "resnet18-unit-seed0.safetensors"
    assert stand_in.built and stand_in.path == path == stand_in_path("resnet18", "unit", 0)
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["sha256"] == _sha256(path) and info["bytes"] == path.stat().st_size
    cfg = PRETRAIN_PRESETS["unit"]
    assert (info["encoder"], info["preset"], info["seed"]) == ("resnet18", "unit", 0)
    assert info["training"]["steps"] == cfg.steps and info["task"]["classes"] == list(CLASS_NAMES)
    assert info["task"]["train"] == {"split": "train", "images": cfg.train_images}
    assert info["task"]["heldout"] == {"split": "val", "images": cfg.heldout_images}
    # the stand-in's scenes come from a reserved generator seed, never one the lessons read (0, 1, 2, ...)
    assert info["task"]["data_seed"] == PRETRAIN_DATA_SEED > 1000
    assert str(PRETRAIN_DATA_SEED) in info["task"]["disjoint_from_lessons"]
    assert "NOT ImageNet" in info["what"] and info["versions"]["mtlkit"]
    assert not list(path.parent.glob(".*.tmp")), "atomic writes leave no temp files"

    def no_training(*args, **kwargs):
        raise AssertionError("a valid cache must not be trained again")

    monkeypatch.setattr(pretrain, "_train", no_training)
    again = pretrain_encoder("resnet18", preset="unit", verbose=False)
    assert not again.built and again.info == info
    assert again.encoder_state_dict().keys() == stand_in.encoder_state_dict().keys()


def test_weights_differ_from_a_fresh_init_and_load_exactly(stand_in):
    weights = stand_in.encoder_state_dict()
    fresh = create_encoder("resnet18", output_stride=32)
    assert set(weights) == set(fresh.state_dict())  # the encoder's tensors; the head is kept apart
    assert set(stand_in.head_state_dict()) == {"weight", "bias"}
    assert stand_in.head_state_dict()["weight"].shape == (len(CLASS_NAMES), 512)
    convs = [k for k, v in fresh.state_dict().items() if k.endswith("weight") and v.ndim == 4]
    changed = [k for k in convs if not torch.allclose(weights[k], fresh.state_dict()[k])]
    assert len(changed) == len(convs), f"untrained convolutions: {sorted(set(convs) - set(changed))}"
    assert weights["body.bn1.running_mean"].abs().sum() > 0  # BN statistics were learned too

    for output_stride in (32, 8):  # dilation changes no tensor shape: the stand-in fits every output stride
        target = create_encoder("resnet18", output_stride=output_stride)
        label = load_pretrained_encoder(target, source="synthetic", preset="unit", verbose=False)
        assert label.startswith("encoder initialised from the kit's synthetic stand-in (not ImageNet): resnet18")
        assert f"after {PRETRAIN_PRESETS['unit'].steps} steps" in label
        for key, value in target.state_dict().items():
            assert torch.equal(value, weights[key]), key


def test_a_downstream_deeplab_takes_the_stand_in(stand_in):
    torch.manual_seed(0)
    model = build("deeplab-joint", {"semseg": 19, "depth": 1}, encoder="resnet18", output_stride=16)
    decoder_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    label = load_pretrained_encoder(model, source="synthetic", preset="unit", verbose=False)
    assert "synthetic stand-in" in label
    weights = stand_in.encoder_state_dict()
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, weights[key]), key
    for key, value in model.state_dict().items():  # everything outside the encoder is left as it was
        if not key.startswith("encoder."):
            assert torch.equal(value, decoder_before[key]), key
    out = model.eval()(torch.rand(1, 3, 64, 64))
    assert out["semseg"].shape == (1, 19, 64, 64) and torch.isfinite(out["depth"]).all()


def test_heldout_accuracy_beats_chance(stand_in):
    """Recomputed here from the stored encoder + head on the held-out scenes (the generator's val split)."""
    cfg = PRETRAIN_PRESETS["unit"]
    images, labels = stand_in_data("val", cfg.heldout_images, cfg.image_size)
    encoder = create_encoder("resnet18", output_stride=32)
    encoder.load_state_dict(stand_in.encoder_state_dict())
    head = torch.nn.Linear(512, len(CLASS_NAMES))
    head.load_state_dict(stand_in.head_state_dict())
    with torch.no_grad():
        _, features = encoder.eval()(images.float() / 255)
        accuracy = (head(features.mean(dim=(2, 3))).argmax(1) == labels).float().mean().item()
    chance = torch.bincount(labels).max().item() / len(labels)  # always answering the most frequent class
    assert accuracy == pytest.approx(stand_in.info["accuracy"]["heldout"], abs=1e-6)
    assert chance == pytest.approx(stand_in.info["accuracy"]["chance"])
    assert accuracy > chance + 0.15, f"held-out accuracy {accuracy:.1%} vs chance {chance:.1%}"


def test_labels_are_the_layout_or_the_close_up_texture():
    assert stand_in_label({"meta": {"source": "ade", "layout": "street"}, "texture": -1}) == 4
    assert stand_in_label({"meta": {"source": "opensurfaces", "layout": "room"}, "texture": -1}) == 0
    assert CLASS_NAMES[stand_in_label({"meta": {"source": "dtd", "layout": "room"}, "texture": 2})] == \
        "texture: striped"
    with pytest.raises(ValueError, match="no texture label"):
        stand_in_label({"meta": {"source": "dtd", "layout": "room", "index": 3}, "texture": -1})


def test_a_corrupt_cache_file_is_rebuilt(stand_in, data_dir):
    path = stand_in.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the tensors
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"resnet18-unit-seed0.safetensors is unusable \(.*sha256.*\); rebuilding"):
        rebuilt = pretrain_encoder("resnet18", preset="unit", verbose=False)
    assert rebuilt.built
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["sha256"] == _sha256(path) != pretrain._sha256(bytes(data))
    target = create_encoder("resnet18")
    load_pretrained_encoder(target, source="synthetic", preset="unit", verbose=False)  # valid again, no warning

    class Rebuilding(Exception):
        pass

    def rebuilding(*args, **kwargs):
        raise Rebuilding

    sidecar = path.with_suffix(".json")
    good = sidecar.read_text()
    with pytest.MonkeyPatch.context() as mp:  # a broken or missing sidecar also means "rebuild" (not re-run here)
        mp.setattr(pretrain, "_train", rebuilding)
        sidecar.write_text("{ not json")
        with pytest.warns(UserWarning, match="is not valid JSON.*rebuilding"), pytest.raises(Rebuilding):
            pretrain_encoder("resnet18", preset="unit", verbose=False)
        sidecar.unlink()
        with pytest.warns(UserWarning, match=r"resnet18-unit-seed0.json is missing.*rebuilding"), \
                pytest.raises(Rebuilding):
            pretrain_encoder("resnet18", preset="unit", verbose=False)
        sidecar.write_text(good.replace('"steps": 30', '"steps": 31'))
        with pytest.warns(UserWarning, match=r"made with config=.*rebuilding"), pytest.raises(Rebuilding):
            pretrain_encoder("resnet18", preset="unit", verbose=False)
    sidecar.write_text(good)


def test_imagenet_offline_fails_with_one_clear_message(stand_in, monkeypatch):
    _offline(monkeypatch)
    target = create_encoder("resnet18")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(PretrainedWeightsUnavailable,
                       match=r"ImageNet weights for encoder 'resnet18' could not be fetched.*"
                             r"source='synthetic' is the kit's offline stand-in") as info:
        load_pretrained_encoder(target, source="imagenet")
    assert type(info.value.__cause__).__name__ == "LocalEntryNotFoundError"
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # nothing half-loaded
    # "auto" falls back to the stand-in and says so
    label = load_pretrained_encoder(target, source="auto", preset="unit", verbose=False)
    assert "synthetic stand-in (not ImageNet)" in label and "ImageNet weights could not be fetched" in label


def test_imagenet_weights_are_copied_when_timm_has_them(monkeypatch):
    real = encoders.timm.create_model

    def create_model(name, pretrained=False, **kwargs):  # "ImageNet" weights: a fixed, recognisable init
        if pretrained:
            torch.manual_seed(123)
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(encoders.timm, "create_model", create_model)
    torch.manual_seed(123)
    expected = create_encoder("resnet18", output_stride=32).state_dict()
    torch.manual_seed(0)
    target = create_encoder("resnet18", output_stride=8)
    label = load_pretrained_encoder(target, source="imagenet")
    assert label.startswith("encoder initialised from ImageNet weights (timm resnet18")
    for key, value in target.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="unknown pretraining preset 'paper'.*unit, smoke, lesson"):
        pretrain_encoder("resnet18", preset="paper")
    with pytest.raises(ValueError, match="unknown encoder 'vgg16'.*resnet18"):
        pretrain_encoder("vgg16", preset="unit")
    with pytest.raises(ValueError, match="unknown source 'hub'.*imagenet, synthetic, auto"):
        load_pretrained_encoder(create_encoder("resnet18"), source="hub")
    with pytest.raises(TypeError, match="ResNetEncoder or a model whose .encoder is one"):
        load_pretrained_encoder(torch.nn.Linear(2, 2), source="synthetic")
    assert stand_in_path("resnet50.tv_in1k", "unit", 1).name == "resnet50-unit-seed1.safetensors"


def test_main_reports_the_cached_stand_in(stand_in, capsys):
    assert pretrain.main(["--encoder", "resnet18", "--preset", "unit", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cached: encoder initialised from the kit's synthetic stand-in")
    assert str(stand_in.path) in out
