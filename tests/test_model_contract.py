"""The model contract (docs/models.md), checked for every registered model with its smoke configuration.

Each model is built from ``smoke_config(name)`` (the small widths that live with its registration) and fed tiny
images (32 x 48, deliberately not square): output keys are the tasks (auxiliary outputs only under "aux"), dense
outputs are [B, C, H, W] at the input resolution, image-level ones [B, C], boxes [B, 4], all float32; one backward
pass reaches every trainable parameter; ``count_parameters`` adds up; ``set_output_bias`` moves exactly the task's
output where the read-out after the output layer is linear.
"""
import pytest
import torch

from mtlkit.models import build, count_parameters, list_models, output_layer, set_output_bias, smoke_config
from mtlkit.tasks import TASK_KINDS

MODELS = list_models()
B, H, W = 2, 32, 48


def _build(name: str) -> torch.nn.Module:
    tasks, options = smoke_config(name)
    torch.manual_seed(0)
    return build(name, tasks, **options)


def _expected_shape(task: str, channels: int) -> tuple[int, ...]:
    kind = TASK_KINDS[task]
    return (B, channels, H, W) if kind == "dense" else (B, 4) if kind == "box" else (B, channels)


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for v in out.values() for t in _tensors(v)]


def _linear_readout(name: str, task: str) -> bool:
    """Whether the task's output is an affine function of its output layer (so a bias change passes through as is):
    boxes go through sigmoid/soft-argmax, SegNet's normals through an L2 normalisation."""
    return task != "boxes" and not (task == "normals" and name.startswith("segnet"))


def test_every_model_has_a_smoke_configuration():
    assert len(MODELS) >= 18
    for name in MODELS:
        tasks, options = smoke_config(name)
        assert tasks and all(t in TASK_KINDS for t in tasks), name
    with pytest.raises(ValueError, match="valid models"):
        smoke_config("no-such-model")


@pytest.mark.parametrize("name", MODELS)
def test_output_contract_backward_and_parameter_counts(name):
    tasks, _ = smoke_config(name)
    model = _build(name).train()
    assert tuple(model.tasks) == tuple(tasks)
    out = model(torch.rand(B, 3, H, W))
    assert set(out) - {"aux"} == set(tasks), f"{name}: keys {sorted(out)}"
    for task, channels in tasks.items():
        assert tuple(out[task].shape) == _expected_shape(task, channels), (name, task, out[task].shape)
        assert out[task].dtype == torch.float32, (name, task)
    for stage, preds in out.get("aux", {}).items():  # aux: {stage: {task: prediction}}, same shapes as the task
        assert set(preds) <= set(tasks), (name, stage)
        for task, pred in preds.items():
            assert tuple(pred.shape) == _expected_shape(task, tasks[task]) and pred.dtype == torch.float32
    loss = sum(t.square().mean() for t in _tensors(out))
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"{name}: no gradient reaches {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for _, p in trainable), name
    counts = count_parameters(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total"), name
    assert counts["total"] < 50e6, name  # the smoke configuration is small enough to train on a CPU


@pytest.mark.parametrize("name", MODELS)
def test_output_bias_moves_exactly_its_task(name):
    tasks, _ = smoke_config(name)
    model = _build(name).double().eval()  # eval: dropout off, BatchNorm on running statistics; float64: exact sums
    x = torch.rand(1, 3, H, W, dtype=torch.float64)
    for task in tasks:
        layer, channels = output_layer(model, task)
        assert isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)) and layer.bias is not None, (name, task)
        assert layer.bias[channels].numel() >= 1, (name, task)
        with torch.no_grad():
            set_output_bias(model, task, 0.0)
            before = model(x)
            assert torch.all(layer.bias[channels] == 0)
            set_output_bias(model, task, 2.5)
            after = model(x)
        assert torch.all(layer.bias[channels] == 2.5)
        if _linear_readout(name, task):
            torch.testing.assert_close(after[task] - before[task], torch.full_like(before[task], 2.5),
                                       rtol=0, atol=1e-9, msg=f"{name}: {task}")
        else:
            assert not torch.equal(after[task], before[task]), (name, task)
        for aux in before.get("aux", {}).values():  # deep supervision's head starts at the same value
            if task in aux:
                delta = after["aux"]["initial"][task] - aux[task]
                torch.testing.assert_close(delta, torch.full_like(delta, 2.5), rtol=0, atol=1e-9)
        if name != "tsn":  # TSN's output conv is shared: its channels feed every task (see TaskSwitchingNet)
            for other in tasks:
                if other != task:
                    torch.testing.assert_close(after[other], before[other], rtol=0, atol=0,
                                               msg=f"{name}: {task}'s bias changed {other}")


def test_output_bias_takes_one_value_per_channel_and_refuses_unknown_tasks():
    tasks, options = smoke_config("resnet-shared")
    model = build("resnet-shared", tasks, **options)
    set_output_bias(model, "normals", torch.tensor([0.0, 0.0, -1.0]))
    assert model.heads["normals"].classifier.bias.tolist() == [0.0, 0.0, -1.0]
    with pytest.raises(ValueError, match="unknown task 'edge'.*valid tasks: semseg, depth, normals"):
        set_output_bias(model, "edge", 1.0)
    with pytest.raises(ValueError, match="3 values"):
        set_output_bias(model, "normals", torch.zeros(2))
