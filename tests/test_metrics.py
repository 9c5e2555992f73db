"""Metrics against hand-computed values, and their aggregation options shown to differ where they should."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtlkit import meters, metrics
from mtlkit.metrics import (
    BoxMeter, ClassificationMeter, DepthMeter, EdgeMeter, NormalsMeter, SaliencyMeter, SegmentationMeter,
    delta_m, grader_score, meter,
)
from mtlkit.tasks import make_task, tasks_for

NAN = float("nan")


def _logits(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B,H,W] labels -> [B,C,H,W] logits whose argmax is the label."""
    return F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()


# ---------------------------------------------------------------------------------------- segmentation
# Two 1x4 images, 3 classes. Image 0: gt [0, 0, 1, -1], pred [0, 1, 1, 2] (the 2 sits on the ignored pixel).
# Image 1: gt [1, 1, 1, 1], pred [1, 1, 0, 1].
# Accumulated confusion (rows gt, cols pred): [[1, 1, 0], [1, 4, 0], [0, 0, 0]]
#   IoU_0 = 1 / (2 + 2 - 1) = 1/3, IoU_1 = 4 / (5 + 5 - 4) = 2/3, class 2 absent (its only prediction is ignored)
#   mIoU = 50 % (absent excluded) or (1/3 + 2/3 + 0) / 3 = 33.33 % (absent as zero); pixel acc = 5 / 7
# Per image: image 0 IoU_0 = 1/2, IoU_1 = 1/2 -> 0.5; image 1 IoU_0 = 0/1, IoU_1 = 3/4 -> 0.375; mean 43.75 %
SEG_GT = torch.tensor([[[0, 0, 1, -1]], [[1, 1, 1, 1]]])
SEG_PRED = torch.tensor([[[0, 1, 1, 2]], [[1, 1, 0, 1]]])


def test_segmentation_confusion_and_miou_by_hand():
    m = SegmentationMeter(3)
    m.update(_logits(SEG_PRED, 3), SEG_GT)
    assert m.confusion.tolist() == [[1, 1, 0], [1, 4, 0], [0, 0, 0]]
    out = m.compute()
    assert out["miou"] == pytest.approx(50.0)
    assert out["pixel_acc"] == pytest.approx(100 * 5 / 7)
    iou = m.class_iou()
    assert iou[:2].tolist() == pytest.approx([1 / 3, 2 / 3]) and math.isnan(iou[2])


def test_segmentation_absent_zero_differs_from_exclude():
    m = SegmentationMeter(3, absent="zero")
    m.update(_logits(SEG_PRED, 3), SEG_GT)
    assert m.compute()["miou"] == pytest.approx(100 / 3)


def test_segmentation_per_image_legacy_differs_from_accumulated():
    legacy = SegmentationMeter(3, per_image=True)
    legacy.update(SEG_PRED, SEG_GT)  # label predictions are accepted too
    out = legacy.compute()
    assert out["miou"] == pytest.approx(43.75)
    assert out["pixel_acc"] == pytest.approx(100 * 5 / 7)  # pixel accuracy stays accumulated


@pytest.mark.parametrize("per_image", [False, True])
def test_segmentation_streaming_equals_one_update(per_image):
    gen = torch.Generator().manual_seed(0)
    gt = torch.randint(-1, 5, (6, 7, 9), generator=gen)
    logits = torch.randn(6, 5, 7, 9, generator=gen)
    whole, parts = SegmentationMeter(5, per_image=per_image), SegmentationMeter(5, per_image=per_image)
    whole.update(logits, gt)
    for i in range(0, 6, 2):
        parts.update(logits[i:i + 2], gt[i:i + 2])
    assert parts.compute() == pytest.approx(whole.compute())


def test_segmentation_ignores_ignored_pixels_and_empty_is_nan():
    m = SegmentationMeter(3)
    assert all(math.isnan(v) for v in m.compute().values())  # never updated
    m.update(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), -1))
    assert all(math.isnan(v) for v in m.compute().values())  # only ignored pixels
    assert int(m.confusion.sum()) == 0
    with pytest.raises(ValueError, match="expected 3"):
        m.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="exclude, zero"):
        SegmentationMeter(3, absent="nan")
    m.reset()
    m.update(SEG_PRED, SEG_GT)
    assert m.compute()["miou"] == pytest.approx(50.0)


# ------------------------------------------------------------------------------------------------ depth
def _depth(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def test_depth_pixel_weighted_vs_per_batch():
    # batch A: 3 valid pixels, each off by 1 m (g = 2); batch B: 1 valid pixel off by 3 m (g = 1)
    a_pred, a_gt = _depth([1, 1, 1, 1]), _depth([2, 2, 2, 0])
    b_pred, b_gt = _depth([4, 7, 7, 7]), _depth([1, 0, -1, NAN])
    pixel, per_batch = DepthMeter(), DepthMeter(mode="per_batch")
    for m in (pixel, per_batch):
        m.update(a_pred, a_gt)
        m.update(b_pred, b_gt)
    p, b = pixel.compute(), per_batch.compute()
    assert p["abs_err"] == pytest.approx((3 * 1 + 3) / 4)  # 1.5
    assert p["rel_err"] == pytest.approx((3 * 0.5 + 3) / 4)  # 1.125
    assert p["rmse"] == pytest.approx(math.sqrt((3 * 1 + 9) / 4))
    assert b["abs_err"] == pytest.approx((1 + 3) / 2)  # 2.0: MTAN's mean of batch means
    assert b["rel_err"] == pytest.approx((0.5 + 3) / 2)
    assert b["rmse"] == pytest.approx((1 + 3) / 2)


def test_depth_streaming_pixel_mode_equals_one_update():
    gen = torch.Generator().manual_seed(1)
    gt = torch.rand(4, 1, 5, 6, generator=gen) * 10 - 1  # ~10 % invalid (<= 0)
    pred = torch.rand(4, 1, 5, 6, generator=gen) * 10
    whole, parts = DepthMeter(), DepthMeter()
    whole.update(pred, gt)
    parts.update(pred[:1], gt[:1])
    parts.update(pred[1:], gt[1:])
    assert parts.compute() == pytest.approx(whole.compute())


def test_depth_delta_and_log_rmse_by_hand():
    m = DepthMeter()
    m.update(_depth([1.0, 1.3, 1.5, 1.9, 3.0, 0.5]), _depth([1, 1, 1, 1, 1, 1]))
    out = m.compute()
    # ratios max(p/g, g/p): 1, 1.3, 1.5, 1.9, 3, 2; thresholds 1.25, 1.5625, 1.953125
    assert out["delta1"] == pytest.approx(100 * 1 / 6)
    assert out["delta2"] == pytest.approx(100 * 3 / 6)
    assert out["delta3"] == pytest.approx(100 * 4 / 6)
    logs = [math.log(v) for v in (1.0, 1.3, 1.5, 1.9, 3.0, 0.5)]
    assert out["log_rmse"] == pytest.approx(math.sqrt(sum(v * v for v in logs) / 6), rel=1e-5)


def test_si_log_rmse_per_image_mean_and_scale_invariance():
    m = DepthMeter()
    # image 0: prediction = 2 x ground truth everywhere -> d constant -> 0 (scale invariant)
    # image 1: p = (1, 1), g = (1, 2): d = (0, ln 2) -> 100 * sqrt((ln2)^2/2 - (ln2/2)^2) = 100 * ln2 / 2
    pred = torch.tensor([[[[2.0, 4.0, 6.0, 8.0]]], [[[1.0, 1.0, 5.0, 5.0]]]])
    gt = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]], [[[1.0, 2.0, 0.0, 0.0]]]])
    m.update(pred, gt)
    assert m.compute()["si_log_rmse"] == pytest.approx((0 + 100 * math.log(2) / 2) / 2, rel=1e-6)


def test_depth_log_metrics_clamp_non_positive_predictions():
    m = DepthMeter()
    m.update(_depth([-1.0, 0.0]), _depth([0.01, 0.005]))  # both sides clamp to 0.01 m
    out = m.compute()
    assert out["log_rmse"] == pytest.approx(0.0, abs=1e-6) and out["delta1"] == pytest.approx(100.0)
    assert all(math.isfinite(v) for v in out.values())


def test_depth_empty_is_nan():
    m = DepthMeter()
    assert all(math.isnan(v) for v in m.compute().values())
    m.update(_depth([1.0, 2.0]), _depth([0.0, -3.0]))
    assert all(math.isnan(v) for v in m.compute().values())
    with pytest.raises(ValueError, match="pixel, per_batch"):
        DepthMeter(mode="image")


# ---------------------------------------------------------------------------------------------- normals
def _normals_at(angles_deg, length=2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions at the given angles from gt (1, 0, 0), in the xy-plane, NOT unit length: [1,3,1,N] each."""
    a = torch.deg2rad(torch.tensor(angles_deg, dtype=torch.float64))
    pred = length * torch.stack([a.cos(), a.sin(), torch.zeros_like(a)])
    gt = torch.stack([torch.ones_like(a), torch.zeros_like(a), torch.zeros_like(a)])
    return pred.float().view(1, 3, 1, -1), gt.float().view(1, 3, 1, -1)


def test_normals_angles_by_hand_with_invalid_pixel():
    pred, gt = _normals_at([0, 10, 20, 45, 90, 60])
    gt[..., 5] = 0  # invalid pixel (its 60 degrees must not count)
    m = NormalsMeter()
    m.update(pred, gt)
    out = m.compute()
    assert out["mean"] == pytest.approx((0 + 10 + 20 + 45 + 90) / 5, abs=1e-3)
    assert out["median"] == pytest.approx(20, abs=1e-3)
    assert out["within_11_25"] == pytest.approx(40.0)
    assert out["within_22_5"] == pytest.approx(60.0)
    assert out["within_30"] == pytest.approx(60.0)


def test_normals_true_global_median_not_mean_of_batch_medians():
    m = NormalsMeter()
    for angles in ([0, 10, 20], [30, 40, 50, 60, 70]):
        m.update(*_normals_at(angles))
    # batch medians 10 and 50 would average to 30; the 8 pixels' median is (30 + 40) / 2 = 35
    assert m.compute()["median"] == pytest.approx(35.0, abs=1e-3)


def test_normals_histogram_median_within_documented_bound():
    gen = torch.Generator().manual_seed(2)
    pred = torch.randn(2, 3, 8, 9, generator=gen)
    gt = F.normalize(torch.randn(2, 3, 8, 9, generator=gen), dim=1)
    exact, hist = NormalsMeter(), NormalsMeter(median="histogram")
    for m in (exact, hist):
        m.update(pred[:1], gt[:1])
        m.update(pred[1:], gt[1:])
    e, h = exact.compute(), hist.compute()
    assert abs(e["median"] - h["median"]) <= 0.005 + 1e-4
    assert h["mean"] == pytest.approx(e["mean"])
    angles, valid = NormalsMeter.angles(pred, gt)
    assert e["median"] == pytest.approx(float(angles[valid].double().median()) if valid.sum() % 2 else
                                        float(angles[valid].double().quantile(0.5)), abs=1e-4)


def test_normals_angles_equal_the_f_normalize_definition():
    # the meter writes the cosine out over the 3 channels (fast on a CPU); it must be F.normalize's cosine, zero-length
    # predictions (cos 0 -> 90 degrees) and lengths from 1e-6 to 1e6 included
    gen = torch.Generator().manual_seed(5)
    pred = torch.randn(3, 3, 16, 17, generator=gen) * torch.logspace(-6, 6, 17).view(1, 1, 1, 17)
    pred[0, :, 0, :4] = 0
    gt = F.normalize(torch.randn(3, 3, 16, 17, generator=gen), dim=1)
    angles, valid = NormalsMeter.angles(pred, gt)
    cos = (F.normalize(pred.double(), dim=1) * F.normalize(gt.double(), dim=1)).sum(dim=1)
    expected = torch.rad2deg(torch.acos(cos.clamp(-1, 1)))
    assert valid.all() and torch.allclose(angles.double(), expected, atol=2e-3)
    assert torch.equal(angles[0, 0, :4], torch.full((4,), 90.0))


def test_normals_per_batch_mean_of_batch_metrics_by_hand():
    """MTAN's convention: each metric on each batch alone, then the mean over batches (here != pooled)."""
    x, y = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])
    diag = torch.tensor([1.0, 1.0, 0]) / 2 ** 0.5

    def maps(vectors):  # [1, 3, 1, N]
        return torch.stack(vectors, dim=1).view(1, 3, 1, -1)

    zero = torch.zeros(3)
    # batch 1: angles 0, 90 (+ an invalid pixel) -> mean 45, median 45, within_30 50 %
    # batch 2: angles 45, 45, 0 -> mean 30, median 45, within_30 1/3
    b1 = (maps([x, x, x]), maps([x, y, zero]))
    b2 = (maps([x, x, x]), maps([diag, diag, x]))
    per_batch, pixel = NormalsMeter(mode="per_batch"), NormalsMeter()
    for m in (per_batch, pixel):
        for pred, target in (b1, b2):
            m.update(pred, target)
    pb, px = per_batch.compute(), pixel.compute()
    assert pb["mean"] == pytest.approx((45 + 30) / 2, abs=1e-4)
    assert pb["median"] == pytest.approx(45.0, abs=1e-4)
    assert pb["within_30"] == pytest.approx((50 + 100 / 3) / 2)
    assert pb["within_11_25"] == pytest.approx((50 + 100 / 3) / 2)
    # pooled over the 5 valid pixels: 0, 90, 45, 45, 0
    assert px["mean"] == pytest.approx(36.0, abs=1e-4) and px["median"] == pytest.approx(45.0, abs=1e-4)
    # a batch with no valid pixel does not count; the option reaches the meter through make_task
    per_batch.update(maps([x]), maps([zero]))
    assert per_batch.compute()["mean"] == pytest.approx(37.5, abs=1e-4)
    assert make_task("normals", normals_mode="per_batch").meter().mode == "per_batch"
    with pytest.raises(ValueError, match="pixel, per_batch"):
        NormalsMeter(mode="batch")


def test_normals_per_batch_even_median_is_the_middle_pair_mean():
    x = torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1)
    # angles 0, 10, 20, 90 degrees -> median (10 + 20) / 2 = 15
    angles = torch.deg2rad(torch.tensor([0.0, 10.0, 20.0, 90.0]))
    target = torch.stack([torch.cos(angles), torch.sin(angles), torch.zeros(4)]).view(1, 3, 1, 4)
    m = NormalsMeter(mode="per_batch")
    m.update(x.expand(1, 3, 1, 4), target)
    assert m.compute()["median"] == pytest.approx(15.0, abs=1e-4)


def test_segmentation_absent_class_as_zero_is_a_named_task_option():
    """DLAD's grader counts a class absent from the split as IoU 0: ``absent="zero"`` via the task options."""
    task = make_task("semseg", num_classes=3, absent="zero")
    m = task.meter()
    # classes 0 and 1 only, predicted perfectly: exclude -> 100 %, zero -> (1 + 1 + 0) / 3
    target = torch.tensor([[0, 1, 1]])
    m.update(target.clone(), target)
    assert m.compute()["miou"] == pytest.approx(200 / 3)
    plain = make_task("semseg", num_classes=3).meter()
    plain.update(target.clone(), target)
    assert plain.compute()["miou"] == pytest.approx(100.0)


def test_normals_empty_is_nan():
    m = NormalsMeter()
    m.update(torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    assert all(math.isnan(v) for v in m.compute().values())


# --------------------------------------------------------------------------------------------- saliency
def _map(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(len(values), 1, 1, -1)


def test_saliency_max_f_and_max_iou_by_hand():
    # probabilities, thresholds 0.5 and 0.75
    prob = _map([[0.9, 0.6, 0.3, 0.1], [0.8, 0.2, 0.7, 0.4]])
    gt = _map([[1, 0, 1, 0], [1, 1, -1, 0]])  # image 1's 0.7 sits on an ignored pixel
    m = SaliencyMeter(thresholds=[0.5, 0.75], from_logits=False)
    m.update(prob, gt)
    # t=0.5: img0 P=1/2 R=1/2 IoU=1/3; img1 P=1 R=1/2 IoU=1/2 -> P=3/4, R=1/2, F=0.6, mIoU=5/12
    # t=0.75: img0 P=1 R=1/2 IoU=1/2; img1 P=1 R=1/2 IoU=1/2 -> F=2/3, mIoU=1/2
    curves = m.curves()
    assert curves["f"].tolist() == pytest.approx([0.6, 2 / 3])
    assert curves["iou"].tolist() == pytest.approx([5 / 12, 0.5])
    out = m.compute()
    assert out["max_f"] == pytest.approx(100 * 2 / 3)
    assert out["max_iou"] == pytest.approx(50.0)


def test_saliency_conventions_for_empty_masks_and_logits():
    # gt empty, prediction empty: P = R = 0 (F = 0), IoU = 1
    m = SaliencyMeter(thresholds=[0.5], from_logits=False)
    m.update(_map([[0.1, 0.1]]), _map([[0, 0]]))
    assert m.compute() == pytest.approx({"max_f": 0.0, "max_iou": 100.0})
    # logits go through a sigmoid: logit ln 9 -> 0.9 > 0.85; logit 0 -> 0.5 < 0.85; a prob equal to t is negative
    m = SaliencyMeter(thresholds=[0.5, 0.85])
    m.update(_map([[math.log(9), 0.0]]), _map([[1, 0]]))
    assert m.curves()["precision"].tolist() == pytest.approx([1.0, 1.0])
    assert m.curves()["recall"].tolist() == pytest.approx([1.0, 1.0])


def test_saliency_skips_fully_ignored_images_and_streams():
    prob = _map([[0.9, 0.6, 0.3, 0.1], [0.8, 0.2, 0.7, 0.4], [0.9, 0.9, 0.9, 0.9]])
    gt = _map([[1, 0, 1, 0], [1, 1, -1, 0], [-1, -1, -1, -1]])
    whole, parts = SaliencyMeter(from_logits=False), SaliencyMeter(from_logits=False)
    whole.update(prob, gt)
    for i in range(3):
        parts.update(prob[i:i + 1], gt[i:i + 1])
    two = SaliencyMeter(from_logits=False)
    two.update(prob[:2], gt[:2])
    assert whole.compute() == pytest.approx(two.compute())
    assert parts.compute() == pytest.approx(whole.compute())
    empty = SaliencyMeter()
    empty.update(prob[2:], gt[2:])
    assert all(math.isnan(v) for v in empty.compute().values())


# ------------------------------------------------------------------------------------------------ edges
def _edge_image(points: dict[tuple[int, int], float], size: int = 5) -> torch.Tensor:
    img = torch.zeros(1, 1, size, size)
    for (y, x), v in points.items():
        img[0, 0, y, x] = v
    return img


def test_edge_tolerance_matches_nearby_pixels():
    gt = _edge_image({(2, 2): 1})
    prob = _edge_image({(2, 3): 0.9, (0, 0): 0.6})  # one pixel 1 px off, one 2 px off
    strict, tol1 = EdgeMeter(tolerance=0, thresholds=[0.5], from_logits=False), \
        EdgeMeter(tolerance=1, thresholds=[0.5], from_logits=False)
    for m in (strict, tol1):
        m.update(prob, gt)
    assert strict.compute()["ods_f"] == pytest.approx(0.0)  # no exact hit: P = R = 0
    # tolerance 1: P = 1/2 (the far pixel is a false positive), R = 1 -> F = 2/3
    assert tol1.compute()["ods_f"] == pytest.approx(100 * 2 / 3)
    tol1_two_thresholds = EdgeMeter(tolerance=1, thresholds=[0.5, 0.7], from_logits=False)
    tol1_two_thresholds.update(prob, gt)
    assert tol1_two_thresholds.compute()["ods_f"] == pytest.approx(100.0)  # t = 0.7 drops the false positive


def test_edge_ods_uses_one_threshold_for_the_dataset():
    # image A wants t=0.5 (its edge has prob 0.6); image B wants t=0.85 (noise at 0.8); per-image best would be 100
    a_gt, a_prob = _edge_image({(2, 2): 1}), _edge_image({(2, 2): 0.6})
    b_gt, b_prob = _edge_image({(2, 2): 1}), _edge_image({(2, 2): 0.9, (0, 0): 0.8})
    m = EdgeMeter(tolerance=0, thresholds=[0.5, 0.85], from_logits=False)
    m.update(a_prob, a_gt)
    m.update(b_prob, b_gt)
    # t=0.5: matched 2 of 3 predicted, 2 of 2 gt -> F = 0.8; t=0.85: P = 1, R = 1/2 -> F = 2/3
    assert m.curves()["f"].tolist() == pytest.approx([0.8, 2 / 3])
    assert m.compute()["ods_f"] == pytest.approx(80.0)
    together = EdgeMeter(tolerance=0, thresholds=[0.5, 0.85], from_logits=False)
    together.update(torch.cat([a_prob, b_prob]), torch.cat([a_gt, b_gt]))
    assert together.compute() == pytest.approx(m.compute())


def test_edge_ignored_pixels_and_default_tolerance():
    gt = _edge_image({(2, 2): 1, (4, 4): -1})
    prob = _edge_image({(2, 2): 0.9, (4, 4): 0.9})  # the prediction on the ignored pixel is not counted
    m = EdgeMeter(tolerance=0, thresholds=[0.5], from_logits=False)
    m.update(prob, gt)
    assert m.compute()["ods_f"] == pytest.approx(100.0)
    default = EdgeMeter()
    assert default.tolerance_for(64, 64) == 1  # round(0.0075 * 90.5) = 1
    assert default.tolerance_for(512, 512) == 5  # round(0.0075 * 724.1) = 5
    assert len(default.thresholds) == 99
    assert math.isnan(EdgeMeter().compute()["ods_f"])


# ------------------------------------------------------------------------------------- classes and boxes
def test_classification_accuracy_ignores_unlabelled():
    m = ClassificationMeter(num_classes=2)
    m.update(torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]]), torch.tensor([0, 0, -1]))
    assert m.compute()["accuracy"] == pytest.approx(50.0)
    m.update(torch.tensor([1, 1]), torch.tensor([1, -1]))  # label predictions work too
    assert m.compute()["accuracy"] == pytest.approx(100 * 2 / 3)
    with pytest.raises(ValueError, match="expected 2"):
        m.update(torch.zeros(1, 3), torch.tensor([0]))
    empty = ClassificationMeter()
    empty.update(torch.zeros(2, 3), torch.tensor([-1, -1]))
    assert math.isnan(empty.compute()["accuracy"])


def test_box_mean_iou_skips_images_without_box():
    m = BoxMeter()
    m.update(torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1]]), torch.tensor([[1.0, 1, 3, 3], [NAN] * 4]))
    m.update(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[0.0, 0, 2, 2]]))
    assert m.compute()["mean_iou"] == pytest.approx(100 * (1 / 7 + 1) / 2)


# ----------------------------------------------------------------------------------- device / factory
def test_meters_do_not_sync_with_the_host_during_update(monkeypatch):
    """Running state stays on the inputs' device: update() must not call item()/tolist()/cpu()/bool()."""
    gen = torch.Generator().manual_seed(3)
    cases = [
        (SegmentationMeter(4, per_image=True), torch.randn(2, 4, 6, 6, generator=gen), torch.randint(-1, 4, (2, 6, 6))),
        (DepthMeter(), torch.rand(2, 1, 6, 6), torch.rand(2, 1, 6, 6) - 0.1),
        (DepthMeter(mode="per_batch"), torch.rand(2, 1, 6, 6), torch.rand(2, 1, 6, 6)),
        (NormalsMeter(), torch.randn(2, 3, 6, 6), torch.randn(2, 3, 6, 6)),
        (NormalsMeter(median="histogram"), torch.randn(2, 3, 6, 6), torch.randn(2, 3, 6, 6)),
        (NormalsMeter(mode="per_batch"), torch.randn(2, 3, 6, 6), torch.randn(2, 3, 6, 6)),
        (SaliencyMeter(), torch.randn(2, 1, 6, 6), (torch.rand(2, 1, 6, 6) > 0.5).float()),
        (EdgeMeter(), torch.randn(2, 1, 6, 6), (torch.rand(2, 1, 6, 6) > 0.8).float()),
        (ClassificationMeter(), torch.randn(2, 3), torch.tensor([1, -1])),
        (BoxMeter(), torch.rand(2, 4), torch.rand(2, 4)),
    ]

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync inside update()")

    for m, pred, target in cases:
        m.update(pred, target)  # first update creates the state (may allocate); later ones must not sync
        with monkeypatch.context() as patch:
            for name in ("item", "tolist", "cpu", "__bool__", "__float__", "__int__"):
                patch.setattr(torch.Tensor, name, forbidden)
            m.update(pred, target)
        assert all(isinstance(v, float) for v in m.compute().values())


def test_meter_factory():
    assert isinstance(meter("semseg", num_classes=3, absent="zero"), SegmentationMeter)
    assert meter("binary").num_classes == 2
    assert isinstance(meter("edge", tolerance=2), EdgeMeter)
    with pytest.raises(ValueError, match="valid tasks: semseg"):
        meter("optical_flow")
    with pytest.raises(TypeError, match="SegmentationMeter"):
        meter("semseg", num_classes=3, tolerance=2)
    # every meter reports exactly its documented keys
    for task, cls in metrics.METER_CLASSES.items():
        assert set(cls.keys) <= set(metrics.METRIC_HIGHER_IS_BETTER), task


# ----------------------------------------------------------------------------------- grader score, Δm
def test_grader_score():
    assert grader_score(90.9, 12.1) == pytest.approx(78.8)  # 40.9 + 37.9 (docs/reference.md#grader-score check)
    assert grader_score(40.0, 60.0) == 0.0  # both terms clipped at zero
    assert grader_score(60.0, 55.0) == pytest.approx(10.0)


MULTI = {"semseg": {"miou": 44.0, "pixel_acc": 63.0}, "depth": {"abs_err": 0.5, "rel_err": 0.18}}
SINGLE = {"semseg": {"miou": 40.0, "pixel_acc": 60.0}, "depth": {"abs_err": 0.4, "rel_err": 0.2}}


def test_delta_m_kit_and_libmtl_by_hand():
    # kit: semseg miou +4/40 = +0.10; depth abs_err -(0.1/0.4) = -0.25 -> mean -0.075 -> -7.5 %
    assert delta_m(MULTI, SINGLE) == pytest.approx(-7.5)
    assert delta_m(MULTI, SINGLE, tasks=tasks_for({"semseg": {"num_classes": 13}, "depth": {}})) == pytest.approx(-7.5)
    # libmtl: semseg (0.10 + 3/60) / 2 = 0.075; depth (-0.25 + 0.02/0.2) / 2 = -0.075 -> 0 %
    assert delta_m(MULTI, SINGLE, form="libmtl") == pytest.approx(0.0, abs=1e-12)
    # a subset of tasks, and a metric override
    assert delta_m(MULTI, SINGLE, tasks=["semseg"]) == pytest.approx(10.0)
    assert delta_m(MULTI, SINGLE, tasks=["depth"], metrics={"depth": ["rel_err"]}) == pytest.approx(10.0)


def test_delta_m_survey_code_metric_set_by_hand():
    multi = {"semseg": {"miou": 44.0, "pixel_acc": 63.0}, "depth": {"abs_err": 0.5, "rmse": 0.6},
             "normals": {"mean": 18.0, "median": 15.0}, "saliency": {"max_f": 70.0, "max_iou": 55.0},
             "edge": {"ods_f": 66.0}, "parts": {"miou": 50.0, "pixel_acc": 80.0}}
    single = {"semseg": {"miou": 40.0, "pixel_acc": 60.0}, "depth": {"abs_err": 0.4, "rmse": 0.5},
              "normals": {"mean": 20.0, "median": 15.0}, "saliency": {"max_f": 70.0, "max_iou": 50.0},
              "edge": {"ods_f": 60.0}, "parts": {"miou": 50.0, "pixel_acc": 70.0}}
    # survey code: semseg mIoU +0.10, depth RMSE -(0.1/0.5) = -0.20, normals mean -(-2/20) = +0.10,
    # saliency mIoU (max over thresholds) +5/50 = +0.10, edge ODS-F +6/60 = +0.10, parts mIoU 0 -> +0.20 / 6
    assert delta_m(multi, single, form="survey") == pytest.approx(100 * 0.20 / 6)
    # the kit's set differs: depth abs error -0.25 and saliency max-F 0 -> (0.10 - 0.25 + 0.10 + 0 + 0.10 + 0) / 6
    assert delta_m(multi, single) == pytest.approx(100 * 0.05 / 6)
    assert metrics.SURVEY_METRICS == {"semseg": ("miou",), "parts": ("miou",), "depth": ("rmse",),
                                      "normals": ("mean",), "edge": ("ods_f",), "saliency": ("max_iou",)}
    assert metrics.KIT_METRICS["depth"] == ("abs_err",) and metrics.KIT_METRICS["saliency"] == ("max_f",)


def test_delta_m_errors_are_clear():
    with pytest.raises(ValueError, match="kit, survey, libmtl"):
        delta_m(MULTI, SINGLE, form="average")
    with pytest.raises(ValueError, match="survey code reports no metric for task 'boxes'.*form='kit'"):
        delta_m({"boxes": {"mean_iou": 2.0}}, {"boxes": {"mean_iou": 1.0}}, form="survey")
    with pytest.raises(ValueError, match="non-zero baseline"):
        delta_m({"semseg": {"miou": 1.0}}, {"semseg": {"miou": 0.0}})
    with pytest.raises(ValueError, match="missing"):
        delta_m({"depth": {"abs_err": 1.0}}, {"depth": {"abs_err": 2.0}}, form="libmtl")
    with pytest.raises(ValueError, match="both multi"):
        delta_m(MULTI, {"semseg": SINGLE["semseg"]})


def test_sync_free_counting_matches_bincount():
    # the accelerator path (scatter into fixed bins) must count exactly like torch.bincount; masked elements dropped
    index = torch.tensor([0, 3, 3, 1, 3, 0])
    assert meters._scatter_count(index, 5).tolist() == torch.bincount(index, minlength=5).tolist() == [2, 1, 0, 3, 0]
    mask = torch.tensor([True, True, False, True, True, False])
    assert meters._bincount(index, 4, mask).tolist() == [1, 1, 0, 2]
