"""The model registry and parameter counting (the contract every model family follows)."""
import pytest
import torch

from mtlkit.models import build, count_parameters, list_models


def test_unknown_model_lists_valid_ones():
    with pytest.raises(ValueError, match="valid models: .*tiny"):
        build("no-such-model", {"semseg": 3})


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="unknown task 'sematic'"):
        build("tiny", {"sematic": 3})


def test_tiny_model_follows_the_output_contract():
    tasks = {"semseg": 5, "depth": 1, "normals": 3, "scene": 4, "boxes": 4}
    model = build("tiny", tasks, width=4)
    assert model.tasks == tuple(tasks)
    out = model(torch.rand(2, 3, 32, 48))
    assert set(out) == set(tasks)
    assert out["semseg"].shape == (2, 5, 32, 48)
    assert out["depth"].shape == (2, 1, 32, 48)
    assert out["normals"].shape == (2, 3, 32, 48)
    assert out["scene"].shape == (2, 4)
    boxes = out["boxes"]
    assert boxes.shape == (2, 4)
    # boxes are xyxy pixels inside the image with x2 >= x1, y2 >= y1
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert boxes[:, 0::2].min() >= -24 and boxes[:, 0::2].max() <= 48 + 24


def test_count_parameters_per_component_adds_up():
    model = build("tiny", {"semseg": 5, "depth": 1}, width=4)
    counts = count_parameters(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    # a 1x1 conv head from 4 channels to 5 classes: 4*5 weights + 5 biases
    assert counts["heads.semseg"] == 4 * 5 + 5
    assert counts["heads.depth"] == 4 * 1 + 1
    assert "tiny" in list_models()


def test_encoder_weight_tag_selects_torchvisions_weights():
    """timm's default ResNet weights are its own recipe (a1_in1k); the authors' code loads torchvision's, which the
    tag "tv_in1k" selects (docs/fidelity.md). Same architecture, same parameter count."""
    plain = build("resnet-shared", {"depth": 1}, encoder="resnet18", aspp_channels=16)
    tv = build("resnet-shared", {"depth": 1}, encoder="resnet18.tv_in1k", aspp_channels=16)
    assert plain.encoder.body.pretrained_cfg["tag"] == "a1_in1k" and tv.encoder.body.pretrained_cfg["tag"] == "tv_in1k"
    assert count_parameters(plain) == count_parameters(tv)
    with pytest.raises(ValueError, match="unknown encoder 'resnet18.v2'.*weight tag: a1_in1k, tv_in1k"):
        build("upernet", {"semseg": 3}, encoder="resnet18.v2")
