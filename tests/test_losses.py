"""Per-task losses against values worked out by hand (docs/reference.md#losses)."""
from __future__ import annotations

import math

import pytest
import torch

from mtlkit import losses

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


def _assert_zero_with_grad(loss: torch.Tensor, pred: torch.Tensor) -> None:
    """The nothing-valid contract: a finite 0 that backward() accepts and that sends zero gradient."""
    assert loss.dim() == 0 and loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert pred.grad is not None and torch.all(pred.grad == 0)


# ----------------------------------------------------------------------------------------------- labels
def test_cross_entropy_dense_hand_computed():
    # B=1, C=2, H=1, W=3; pixel 0 logits (0, 0), pixel 1 (ln3, 0), pixel 2 ignored
    logits = torch.tensor([[[[0.0, LN3, 5.0]], [[0.0, 0.0, -5.0]]]], requires_grad=True)
    target = torch.tensor([[[1, 0, -1]]])
    loss = losses.cross_entropy(logits, target)
    # pixel 0: softmax (1/2, 1/2) -> ln 2; pixel 1: p(class 0) = 3/4 -> ln(4/3); mean over 2 labelled pixels
    assert loss.item() == pytest.approx((LN2 + math.log(4 / 3)) / 2, rel=1e-6)
    loss.backward()
    # the ignored pixel receives no gradient; d/dz_1 at pixel 0 = (p1 - 1) / 2 = -1/4
    assert torch.all(logits.grad[..., 2] == 0)
    assert logits.grad[0, 1, 0, 0].item() == pytest.approx(-0.25)


def test_cross_entropy_image_level_and_weights():
    logits = torch.tensor([[LN3, 0.0], [LN3, 0.0], [9.0, -9.0]])
    target = torch.tensor([0, 1, -1])
    # image 0: ln(4/3); image 1: p(class 1) = 1/4 -> ln 4; image 2 unlabelled
    assert losses.cross_entropy(logits, target).item() == pytest.approx((math.log(4 / 3) + LN4) / 2, rel=1e-6)
    # class weights (1, 3): weighted mean (1 * ln(4/3) + 3 * ln 4) / (1 + 3)
    weighted = losses.cross_entropy(logits, target, weight=torch.tensor([1.0, 3.0]))
    assert weighted.item() == pytest.approx((math.log(4 / 3) + 3 * LN4) / 4, rel=1e-6)


def test_cross_entropy_all_ignored_is_zero_with_grad():
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    _assert_zero_with_grad(losses.cross_entropy(logits, torch.full((2, 3, 3), -1)), logits)


def test_cross_entropy_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="class dimension"):
        losses.cross_entropy(torch.zeros(1, 3, 4, 4), torch.zeros(1, 5, 5, dtype=torch.long))


# ------------------------------------------------------------------------------------------------ depth
def test_depth_l1_masks_invalid_pixels_and_their_gradient():
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]).view(1, 1, 1, 5).requires_grad_()
    target = torch.tensor([2.0, 0.0, 5.0, -1.0, float("nan")]).view(1, 1, 1, 5)
    loss = losses.depth_l1(pred, target)
    assert loss.item() == pytest.approx((1 + 2) / 2)  # valid pixels 0 and 2 only
    loss.backward()
    assert pred.grad.flatten().tolist() == pytest.approx([-0.5, 0.0, -0.5, 0.0, 0.0])


def test_depth_l1_all_invalid_is_zero_with_grad():
    pred = torch.rand(2, 1, 3, 3, requires_grad=True)
    _assert_zero_with_grad(losses.depth_l1(pred, torch.zeros(2, 1, 3, 3)), pred)


def test_depth_mse_normalised_dlad_statistics():
    pred = torch.tensor([10.0, 20.0]).view(1, 1, 1, 2)
    target = torch.tensor([13.0, 0.0]).view(1, 1, 1, 2)
    # ((10 - 27.07)/29.13 - (13 - 27.07)/29.13)^2 = 9 / 29.13^2 on the one valid pixel
    assert losses.depth_mse_normalised(pred, target).item() == pytest.approx(9 / 29.13**2, rel=1e-6)
    assert losses.depth_loss(pred, target, kind="mse").item() == pytest.approx(9 / 29.13**2, rel=1e-6)
    # custom statistics: both pixels off by 1 m with std 2 -> (1/2)^2
    pred2, target2 = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2), torch.tensor([2.0, 4.0]).view(1, 1, 1, 2)
    assert losses.depth_mse_normalised(pred2, target2, mean=5.0, std=2.0).item() == pytest.approx(0.25)


def test_depth_loss_unknown_kind_lists_choices():
    with pytest.raises(ValueError, match="l1, mse"):
        losses.depth_loss(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2), kind="huber")


# ---------------------------------------------------------------------------------------------- normals
def test_normals_cosine_hand_computed():
    # four pixels: same direction (pred not unit), orthogonal, invalid gt, 45 degrees
    pred = torch.tensor([[2.0, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 1]]).T.reshape(1, 3, 1, 4).requires_grad_()
    target = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 1]]).T.reshape(1, 3, 1, 4)
    loss = losses.normals_cosine(pred, target)
    assert loss.item() == pytest.approx((0 + 1 + (1 - 1 / math.sqrt(2))) / 3, rel=1e-6)
    loss.backward()
    assert torch.all(pred.grad[..., 2] == 0)  # invalid pixel sends no gradient


def test_normals_all_invalid_is_zero_with_grad():
    pred = torch.randn(1, 3, 2, 2, requires_grad=True)
    _assert_zero_with_grad(losses.normals_cosine(pred, torch.zeros(1, 3, 2, 2)), pred)


# --------------------------------------------------------------------------------------- edge / saliency
def test_balanced_bce_edge_fixed_weight():
    logits = torch.tensor([0.0, LN3, 7.0]).view(1, 1, 1, 3)
    target = torch.tensor([1.0, 0.0, -1.0]).view(1, 1, 1, 3)
    # positive pixel: 0.95 * -log(sigmoid 0) = 0.95 ln2; negative pixel: 0.05 * -log(1 - 3/4) = 0.05 ln4
    expected = (0.95 * LN2 + 0.05 * LN4) / 2
    got = losses.balanced_bce(logits, target, pos_weight=losses.EDGE_POS_WEIGHT)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_balanced_bce_saliency_batch_balanced():
    logits = torch.zeros(1, 1, 1, 5)
    target = torch.tensor([1.0, 0.0, 0.0, 0.0, -1.0]).view(1, 1, 1, 5)
    # 1 positive of 4 valid -> positive weight w = 3/4, negatives 1/4; every pixel's BCE is ln 2 at logit 0
    expected = (0.75 * LN2 + 3 * 0.25 * LN2) / 4
    assert losses.balanced_bce(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_balanced_bce_is_stable_and_masks_everything():
    logits = torch.tensor([100.0, -100.0]).view(1, 1, 1, 2)
    target = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    # confidently wrong: each pixel costs ~100 (softplus(100)), weighted 0.05 and 0.95
    assert losses.balanced_bce(logits, target, pos_weight=0.95).item() == pytest.approx((0.05 * 100 + 0.95 * 100) / 2)
    pred = torch.randn(2, 1, 3, 3, requires_grad=True)
    _assert_zero_with_grad(losses.balanced_bce(pred, torch.full((2, 1, 3, 3), -1.0)), pred)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        losses.balanced_bce(pred, torch.zeros(2, 1, 3, 3), pos_weight=1.5)


# ---------------------------------------------------------------------------------------------- boxes
def test_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 2, 2]])
    b = torch.tensor([[1.0, 1, 3, 3], [2, 0, 3, 1], [0, 0, 2, 2]])
    assert losses.box_iou(a, b).tolist() == pytest.approx([1 / 7, 0.0, 1.0])


def test_diou_loss_hand_computed():
    pred = torch.tensor([[0.0, 0, 2, 2]], requires_grad=True)
    target = torch.tensor([[1.0, 1, 3, 3]])
    # IoU = 1/7; centres (1,1) and (2,2): rho^2 = 2; enclosing box (0,0,3,3): c^2 = 18
    assert losses.diou_loss(pred, target).item() == pytest.approx(1 - 1 / 7 + 2 / 18, rel=1e-6)
    # identical boxes cost nothing
    assert losses.diou_loss(target, target).item() == pytest.approx(0.0, abs=1e-7)


def test_diou_loss_pulls_disjoint_boxes_and_skips_missing_boxes():
    pred = torch.tensor([[0.0, 0, 1, 1], [5.0, 5, 6, 6]], requires_grad=True)
    target = torch.tensor([[2.0, 0, 3, 1], [float("nan")] * 4])
    loss = losses.diou_loss(pred, target)
    # image 0: IoU 0, centres 2 px apart (rho^2 = 4), enclosing (0,0,3,1): c^2 = 10; image 1 has no box
    assert loss.item() == pytest.approx(1 + 4 / 10, rel=1e-6)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[0].abs().sum() > 0  # the centre term moves a box with IoU 0 (plain IoU loss would not)
    assert torch.all(pred.grad[1] == 0)


def test_diou_loss_no_boxes_is_zero_with_grad():
    pred = torch.rand(3, 4, requires_grad=True)
    _assert_zero_with_grad(losses.diou_loss(pred, torch.full((3, 4), float("nan"))), pred)
