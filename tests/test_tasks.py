"""Task registry: construction, targets (incl. unlabelled images of multi-source batches), losses and meters."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mtlkit import metrics
from mtlkit.tasks import TASK_KINDS, TASK_SPECS, Task, make_task, tasks_for

LN3, LN4 = math.log(3), math.log(4)


def test_registry_covers_every_task_kind():
    assert set(TASK_SPECS) == set(TASK_KINDS)
    assert TASK_KINDS["semseg"] == "dense" and TASK_KINDS["scene"] == "image" and TASK_KINDS["boxes"] == "box"
    for name, spec in TASK_SPECS.items():
        assert spec.kind == TASK_KINDS[name]
        assert spec.delta_metric in metrics.METER_CLASSES[name].keys, name
        assert metrics.METRIC_HIGHER_IS_BETTER[spec.delta_metric] == spec.higher_is_better, name


@pytest.mark.parametrize(
    "name, info, channels, delta, higher",
    [
        ("semseg", {"num_classes": 13}, 13, "miou", True),
        ("parts", {"num_classes": 7}, 7, "miou", True),
        ("material", {"num_classes": 5}, 5, "miou", True),
        ("depth", {}, 1, "abs_err", False),
        ("normals", {}, 3, "mean", False),
        ("edge", {}, 1, "ods_f", True),
        ("saliency", {}, 1, "max_f", True),
        ("scene", {"num_classes": 4}, 4, "accuracy", True),
        ("texture", {"num_classes": 6}, 6, "accuracy", True),
        ("binary", {}, 2, "accuracy", True),
        ("category", {"num_classes": 37}, 37, "accuracy", True),
        ("boxes", {}, 4, "mean_iou", True),
    ],
)
def test_make_task_fields(name, info, channels, delta, higher):
    task = make_task(name, **info)
    assert (task.name, task.kind, task.out_channels) == (name, TASK_KINDS[name], channels)
    assert (task.delta_metric, task.higher_is_better) == (delta, higher)
    assert task.num_classes == (channels if name in ("semseg", "parts", "material", "scene", "texture", "binary",
                                                     "category") else None)
    assert set(task.meter().compute()) == set(task.metric_keys)


def test_make_task_errors_are_clear():
    with pytest.raises(ValueError, match="valid tasks: semseg.*boxes"):
        make_task("flow")
    with pytest.raises(ValueError, match="needs num_classes"):
        make_task("semseg")
    with pytest.raises(ValueError, match="positive integer"):
        make_task("scene", num_classes=0)
    with pytest.raises(ValueError, match="2 class_names"):
        make_task("semseg", num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="regression task"):
        make_task("depth", num_classes=3)
    with pytest.raises(ValueError, match="l1, mse"):
        make_task("depth", depth_loss="huber")
    with pytest.raises(ValueError, match="pixel, per_batch"):
        make_task("depth", depth_mode="median")
    with pytest.raises(ValueError, match="exclude, zero"):
        make_task("semseg", num_classes=3, absent="ignore")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_task("edge", pos_weight=2.0)


def test_make_task_options_and_extras():
    seg = make_task("semseg", class_names=["wall", "floor"], absent="zero", per_image=True, owner="object")
    assert seg.num_classes == 2 and seg.class_names == ("wall", "floor")
    assert seg.info == {"owner": "object"}
    m = seg.meter()
    assert (m.absent, m.per_image, m.class_names) == ("zero", True, ["wall", "floor"])
    assert make_task("depth", depth_mode="per_batch").meter().mode == "per_batch"
    assert make_task("normals", median="histogram").meter().median == "histogram"
    assert make_task("edge", tolerance=3).meter().tolerance == 3
    assert make_task("edge").loss_options == {"pos_weight": 0.95}
    assert make_task("saliency").loss_options == {"pos_weight": None}
    with pytest.raises(dataclasses.FrozenInstanceError):
        seg.num_classes = 5  # type: ignore[misc]
    assert make_task("semseg", num_classes=2) == make_task("semseg", num_classes=2)
    assert hash(make_task("depth")) == hash(make_task("depth"))


def test_tasks_for_keeps_order_and_accepts_a_dataset():
    info = {"semseg": {"num_classes": 13, "class_names": [str(i) for i in range(13)]}, "depth": {}, "normals": {}}
    tasks = tasks_for(info)
    assert list(tasks) == ["semseg", "depth", "normals"]
    assert all(isinstance(t, Task) for t in tasks.values())

    class FakeDataset:
        task_info = info

    assert tasks_for(FakeDataset()) == tasks
    with pytest.raises(TypeError, match="task_info"):
        tasks_for(["semseg"])


# ------------------------------------------------------------------------------------ targets and losses
def _broden_like_batch() -> dict:
    """Two images; image 1 comes from a source that does not label semseg/scene/edge (meta says so) although its
    tensors hold (misleading) values, so only the meta masking can keep them out."""
    return {
        "semseg": torch.tensor([[[0]], [[1]]]),
        "scene": torch.tensor([1, 0]),
        "edge": torch.tensor([[[[1.0]]], [[[0.0]]]]),
        "depth": torch.tensor([[[[2.0]]], [[[4.0]]]]),
        "boxes": [torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8]]), torch.zeros(0, 4)],
        "meta": [{"tasks": ["semseg", "scene", "edge", "depth", "boxes"]}, {"tasks": ["depth", "boxes"]}],
    }


def test_targets_mask_images_whose_task_is_unlabelled():
    batch = _broden_like_batch()
    assert make_task("semseg", num_classes=2).target(batch).tolist() == [[[0]], [[-1]]]
    assert make_task("scene", num_classes=2).target(batch).tolist() == [1, -1]
    assert make_task("edge").target(batch).flatten().tolist() == [1.0, -1.0]
    assert make_task("depth").target(batch).flatten().tolist() == [2.0, 4.0]  # labelled by both
    boxes = make_task("boxes").target(batch)
    assert boxes[0].tolist() == [1.0, 2, 3, 4]  # the FIRST box of the image
    assert torch.isnan(boxes[1]).all()  # no box
    no_meta = {k: v for k, v in batch.items() if k != "meta"}
    assert make_task("semseg", num_classes=2).target(no_meta).tolist() == [[[0]], [[1]]]


def test_task_loss_ignores_unlabelled_images():
    batch = _broden_like_batch()
    seg = make_task("semseg", num_classes=2)
    logits = torch.tensor([LN3, 0.0]).view(1, 2, 1, 1).repeat(2, 1, 1, 1).requires_grad_()
    # image 0: target 0, p = 3/4 -> ln(4/3); image 1 (target 1 -> ln 4) is unlabelled by meta
    loss = seg.loss(logits, batch)
    assert loss.item() == pytest.approx(math.log(4 / 3), rel=1e-6)
    loss.backward()
    assert torch.all(logits.grad[1] == 0)
    scene = make_task("scene", num_classes=2)
    assert scene.loss(torch.tensor([[0.0, LN3], [LN3, 0.0]]), batch).item() == pytest.approx(math.log(4 / 3))


def test_task_loss_with_nothing_labelled_is_zero_with_grad():
    batch = _broden_like_batch()
    batch["meta"] = [{"tasks": ["depth"]}, {"tasks": ["depth"]}]
    for task, pred in [
        (make_task("semseg", num_classes=2), torch.randn(2, 2, 1, 1, requires_grad=True)),
        (make_task("scene", num_classes=2), torch.randn(2, 2, requires_grad=True)),
        (make_task("edge"), torch.randn(2, 1, 1, 1, requires_grad=True)),
        (make_task("boxes"), torch.rand(2, 4, requires_grad=True)),
    ]:
        loss = task.loss(pred, batch)
        assert loss.item() == 0.0 and loss.grad_fn is not None, task.name
        loss.backward()
        assert torch.all(pred.grad == 0), task.name


def test_task_loss_routes_options():
    batch = {"depth": torch.tensor([[[[13.0, 0.0]]]]), "edge": torch.tensor([[[[1.0, 0.0]]]]),
             "saliency": torch.tensor([[[[1.0, 0.0]]]])}
    pred = torch.tensor([[[[10.0, 3.0]]]])
    assert make_task("depth").loss(pred, batch).item() == pytest.approx(3.0)  # L1 on the valid pixel
    assert make_task("depth", depth_loss="mse").loss(pred, batch).item() == pytest.approx(9 / 29.13**2, rel=1e-6)
    assert make_task("depth", depth_loss="mse", depth_std=3.0).loss(pred, batch).item() == pytest.approx(1.0)
    logits = torch.zeros(1, 1, 1, 2)  # every pixel's BCE is ln 2
    ln2 = math.log(2)
    assert make_task("edge").loss(logits, batch).item() == pytest.approx((0.95 + 0.05) * ln2 / 2)
    # saliency: 1 positive of 2 -> w = 1/2 for both classes
    assert make_task("saliency").loss(logits, batch).item() == pytest.approx(ln2 / 2)


def test_task_loss_input_errors():
    seg = make_task("semseg", num_classes=3)
    with pytest.raises(ValueError, match="3 channels"):
        seg.loss(torch.zeros(1, 4, 2, 2), {"semseg": torch.zeros(1, 2, 2, dtype=torch.long)})
    with pytest.raises(KeyError, match="tasks_for"):
        seg.loss(torch.zeros(1, 3, 2, 2), {"depth": torch.zeros(1, 1, 2, 2)})
    with pytest.raises(TypeError, match="outputs\\[task.name\\]"):
        seg.loss({"semseg": torch.zeros(1, 3, 2, 2)}, {"semseg": torch.zeros(1, 2, 2, dtype=torch.long)})


def test_task_meter_consumes_task_target():
    batch = _broden_like_batch()
    seg = make_task("semseg", num_classes=2)
    m = seg.meter()
    m.update(torch.tensor([[[0]], [[0]]]), seg.target(batch))  # image 1's wrong label is masked out by meta
    assert m.compute()["pixel_acc"] == pytest.approx(100.0)
    boxes = make_task("boxes")
    bm = boxes.meter()
    bm.update(torch.tensor([[1.0, 2, 3, 4], [0, 0, 1, 1]]), boxes.target(batch))
    assert bm.compute()["mean_iou"] == pytest.approx(100.0)


# ------------------------------------------------------------------------- against the synthetic datasets
@pytest.mark.parametrize("dataset", ["synthetic-nyu", "synthetic-broden"])
def test_tasks_for_synthetic_dataset_end_to_end(dataset):
    pytest.importorskip("mtlkit.data.synthetic", reason="synthetic scenes not built yet")
    from mtlkit.data import collate, get_dataset

    ds = get_dataset(dataset, "train", preset="unit")
    tasks = tasks_for(ds.task_info)
    assert tuple(tasks) == tuple(ds.tasks)
    batch = collate([ds[i] for i in range(min(len(ds), 3))])
    b, (h, w) = batch["image"].shape[0], batch["image"].shape[-2:]
    shapes = {"dense": lambda t: (b, t.out_channels, h, w), "image": lambda t: (b, t.out_channels),
              "box": lambda t: (b, 4)}
    for name, task in tasks.items():
        pred = torch.randn(shapes[task.kind](task), requires_grad=True)
        if task.kind == "box":
            pred = (pred.detach().abs() * 8).requires_grad_()
        loss = task.loss(pred, batch)
        assert torch.isfinite(loss), name
        loss.backward()
        m = task.meter()
        m.update(pred.detach(), task.target(batch))
        assert set(m.compute()) == set(task.metric_keys), name


# ------------------------------------------------------------------------------------------ one row per task
def test_every_row_is_complete_and_consistent():
    from mtlkit import losses
    from mtlkit.tasks import TARGETS, TASKS, TRIVIAL_PREDICTORS

    assert TASK_SPECS is TASKS and TASK_KINDS == {n: s.kind for n, s in TASKS.items()}
    for name, spec in TASKS.items():
        assert spec.kind in ("dense", "image", "box") and spec.target in TARGETS, name
        assert callable(spec.loss) and spec.loss.__module__ == losses.__name__, name
        assert issubclass(spec.meter, metrics.Meter) and spec.delta_metric in spec.meter.keys, name
        assert set(spec.survey_metrics) <= set(spec.meter.keys) and set(spec.libmtl_metrics) <= set(spec.meter.keys)
        assert spec.trivial in TRIVIAL_PREDICTORS and spec.title, name
        assert spec.is_label == (spec.target == "labels"), name
        for option, (where, _) in spec.options.items():
            assert where in ("loss", "meter"), (name, option)
    assert math.isnan(TASKS["boxes"].fill) and TASKS["depth"].fill == 0.0 and TASKS["edge"].fill == -1.0


def test_adding_a_task_is_one_row(monkeypatch):
    """A new row is all make_task, targets, the loss and the meter need (here a made-up per-pixel 'albedo' task)."""
    from mtlkit import losses, meters
    from mtlkit.tasks import TASKS, TaskSpec

    row = TaskSpec("dense", "depth", losses.depth_loss, meters.DepthMeter, "rmse", False, fill=0.0,
                   trivial="mean_depth", title="albedo", out_channels=1, loss_defaults={"kind": "l1"},
                   options={"albedo_mode": ("meter", "mode")})
    monkeypatch.setitem(TASKS, "albedo", row)
    task = make_task("albedo", albedo_mode="per_batch")
    assert (task.kind, task.out_channels, task.meter().mode) == ("dense", 1, "per_batch")
    batch = {"albedo": torch.tensor([[[[2.0, 4.0]]], [[[6.0, 8.0]]]]), "meta": [{"tasks": ["albedo"]}, {"tasks": []}]}
    assert task.target(batch).tolist() == [[[[2.0, 4.0]]], [[[0.0, 0.0]]]]  # the row's fill for image 1
    pred = torch.tensor([[[[3.0, 4.0]]], [[[0.0, 0.0]]]], requires_grad=True)
    assert task.loss(pred, batch).item() == pytest.approx(0.5)  # |3-2|, |4-4| over the labelled image
    m = task.meter()
    m.update(pred.detach(), task.target(batch))
    assert m.compute()["rmse"] == pytest.approx(math.sqrt(0.5))


def test_owner_parts_task_lives_in_the_task_layer():
    from mtlkit import losses
    from mtlkit.tasks import OwnerPartsTask

    semseg, parts = make_task("semseg", num_classes=3), make_task("parts", num_classes=4)
    owners = ((), (1,), (1,), (2,))
    task = OwnerPartsTask(**{f.name: getattr(parts, f.name) for f in dataclasses.fields(parts)},
                          objects=semseg, part_owners=owners)
    gen = torch.Generator().manual_seed(0)
    batch = {"semseg": torch.tensor([[[0, 1, 1, 2]]]), "parts": torch.tensor([[[0, 1, 2, 3]]]),
             "meta": [{"tasks": ["semseg", "parts"]}]}
    logits = torch.randn(1, 4, 1, 4, generator=gen, requires_grad=True)
    expected = losses.owner_part_loss(logits, batch["parts"], batch["semseg"], losses.part_allowed(owners, 3))
    assert task.loss(logits, batch).item() == pytest.approx(expected.item())
    assert expected.item() > 0 and task.metric_keys == parts.metric_keys
    with pytest.raises(ValueError, match="needs objects"):
        OwnerPartsTask(**{f.name: getattr(parts, f.name) for f in dataclasses.fields(parts)}, part_owners=owners)
    with pytest.raises(ValueError, match="3 entries for 4 part classes"):
        OwnerPartsTask(**{f.name: getattr(parts, f.name) for f in dataclasses.fields(parts)}, objects=semseg,
                       part_owners=owners[:3])


def test_part_loss_by_hand():
    """One pixel of object 1, which owns parts 1 and 2: the softmax runs over parts {0 (unowned), 1, 2} only."""
    from mtlkit import losses

    allowed = losses.part_allowed(((), (1,), (1,), (2,)), 3)
    assert allowed.tolist() == [[True, False, False, False], [True, True, True, False], [True, False, False, True]]
    logits = torch.tensor([0.0, math.log(2.0), 0.0, 5.0]).view(1, 4, 1, 1)
    loss = losses.owner_part_loss(logits, torch.tensor([[[1]]]), torch.tensor([[[1]]]), allowed)
    assert float(loss) == pytest.approx(-math.log(2 / 4))  # part 3 (logit 5) is masked out


def test_box_task_keeps_its_box_label_classes_as_info():
    """A pet dataset's task_info["boxes"] names the boxes' classes (cat/dog); the box head still outputs 4 values."""
    task = make_task("boxes", num_classes=2, class_names=["cat", "dog"])
    assert (task.out_channels, task.num_classes) == (4, None)
    assert task.info == {"num_classes": 2, "class_names": ["cat", "dog"]}
    assert tasks_for({"binary": {"num_classes": 2}, "boxes": {"num_classes": 2}})["boxes"].out_channels == 4
