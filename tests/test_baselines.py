"""Trivial predictors on hand-computed examples, ignore/invalid pixels and unlabelled images included."""
from __future__ import annotations

import math

import pytest
import torch

from mtlkit.baselines import (BEATS, beats_trivial, evaluate_trivial, fit_trivial, format_checks,
                              trivial_metrics)
from mtlkit.tasks import TASKS, TRIVIAL_PREDICTORS, make_task

NAN = float("nan")


def meta(*labelled: list[str]) -> list[dict]:
    return [{"tasks": list(t)} for t in labelled]


def test_every_row_names_a_trivial_predictor_with_thresholds():
    for name, spec in TASKS.items():
        assert spec.trivial in TRIVIAL_PREDICTORS, name
        assert spec.trivial in BEATS, name


def test_majority_class_at_every_pixel():
    task = {"semseg": make_task("semseg", num_classes=3)}
    # image 0: classes 0 x1, 1 x2, 2 x1 (two ignored pixels); image 1 is all class 0 but does not label semseg
    train = [{"semseg": torch.tensor([[[0, 1, 1], [-1, -1, 2]], [[0, 0, 0], [0, 0, 0]]]),
              "meta": meta(["semseg"], [])}]
    fitted = fit_trivial(task, train)
    assert int(fitted["semseg"].value) == 1
    # test: gt 1,1,0,2 and one ignored pixel, all predicted 1: IoU_1 = 2/4, IoU_0 = IoU_2 = 0; accuracy 2/4
    test = [{"semseg": torch.tensor([[[1, 1, 0, 2, -1]]])}]
    m = evaluate_trivial(fitted, test)["semseg"]
    assert m["miou"] == pytest.approx(100 * (0.5 + 0 + 0) / 3)
    assert m["pixel_acc"] == pytest.approx(50.0)


def test_majority_ties_go_to_the_lowest_class():
    task = {"scene": make_task("scene", num_classes=4)}
    fitted = fit_trivial(task, [{"scene": torch.tensor([3, 2, 2, 3, -1])}])
    assert int(fitted["scene"].value) == 2


def test_majority_image_label():
    task = {"binary": make_task("binary")}
    # labels 0, 1, 1 and an unlabelled image (-1); the last image is 0 but its meta says it does not label binary
    train = [{"binary": torch.tensor([0, 1, 1, -1, 0]), "meta": meta(*[["binary"]] * 4, [])}]
    fitted = fit_trivial(task, train)
    assert int(fitted["binary"].value) == 1
    assert evaluate_trivial(fitted, [{"binary": torch.tensor([1, 0, 0, 1, -1])}])["binary"] == {"accuracy": 50.0}


def test_train_mean_depth_over_valid_pixels():
    task = {"depth": make_task("depth")}
    # valid 2, 4, 6 (0 and NaN are invalid) -> 4 m; the second image (100 m) does not label depth
    train = [{"depth": torch.tensor([[[[2.0, 4.0, 0.0, 6.0, NAN]]], [[[100.0, 100.0, 100.0, 100.0, 100.0]]]]),
              "meta": meta(["depth"], [])}]
    fitted = fit_trivial(task, train)
    assert float(fitted["depth"].value) == pytest.approx(4.0)
    m = evaluate_trivial(fitted, [{"depth": torch.tensor([[[[3.0, 5.0, 0.0]]]])}])["depth"]
    assert m["abs_err"] == pytest.approx(1.0)  # |4-3|, |4-5|; the 0 is invalid
    assert m["rmse"] == pytest.approx(1.0)
    assert m["rel_err"] == pytest.approx((1 / 3 + 1 / 5) / 2)


def test_mean_normal_renormalised():
    task = {"normals": make_task("normals")}
    # pixels (2,0,0) -> unit (1,0,0), (0,1,0), and an invalid all-zero pixel: mean (1/2, 1/2, 0) -> (1, 1, 0)/sqrt2
    train = [{"normals": torch.tensor([[[[2.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]]]])}]
    fitted = fit_trivial(task, train)
    torch.testing.assert_close(fitted["normals"].value.float(), torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2))
    # test pixels (1,0,0): 45 degrees, (0,0,1): 90 degrees, all-zero: invalid
    test = [{"normals": torch.tensor([[[[1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]]])}]
    m = evaluate_trivial(fitted, test)["normals"]
    assert m["mean"] == pytest.approx(67.5, abs=1e-4)
    assert m["within_30"] == 0.0


def test_mean_training_box():
    task = {"boxes": make_task("boxes")}
    # first boxes (0,0,2,2) and (2,2,6,6) (the second box of image 1 is not its first); image 2 has none
    train = [{"boxes": [torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[2.0, 2.0, 6.0, 6.0], [0, 0, 50, 50]]),
                        torch.zeros(0, 4)]}]
    fitted = fit_trivial(task, train)
    torch.testing.assert_close(fitted["boxes"].value.float(), torch.tensor([1.0, 1.0, 4.0, 4.0]))
    # test: the same box (IoU 1) and (1,1,4,7): intersection 9, union 18 -> 0.5; an image without a box is skipped
    test = [{"boxes": [torch.tensor([[1.0, 1.0, 4.0, 4.0]]), torch.tensor([[1.0, 1.0, 4.0, 7.0]]), torch.zeros(0, 4)]}]
    assert evaluate_trivial(fitted, test)["boxes"]["mean_iou"] == pytest.approx(75.0)


def test_best_constant_saliency_is_between_the_thresholds():
    task = {"saliency": make_task("saliency", thresholds=[0.25, 0.5, 0.75])}
    # image 0: one salient pixel of 4 (one ignored pixel); image 1: nothing salient
    maps = torch.tensor([[[[1.0, 0.0, 0.0, 0.0, -1.0]]], [[[0.0, 0.0, 0.0, 0.0, 0.0]]]])
    fitted = fit_trivial(task, [{"saliency": maps}])
    p = float(fitted["saliency"].value)
    assert 0.25 < p < 0.75  # everything salient at t < p, nothing at t > p: the best of both
    m = evaluate_trivial(fitted, [{"saliency": maps}])["saliency"]
    # t < p: P = (1/4 + 0)/2, R = (1 + 0)/2 -> F = 2 PR/(P+R) = 0.2; mean IoU (1/4 + 0)/2
    # t > p: P = R = 0 -> F = 0; IoU (0 + 1)/2 (image 1: both empty)
    assert m["max_f"] == pytest.approx(20.0)
    assert m["max_iou"] == pytest.approx(50.0)


def test_best_constant_edge_predicts_every_pixel():
    task = {"edge": make_task("edge", tolerance=0)}
    train = [{"edge": torch.tensor([[[[1.0, 0.0, 0.0, -1.0]]]])}]
    fitted = fit_trivial(task, train)
    # every valid pixel an edge: P = 1/3 (the ignored pixel is no prediction), R = 1 -> F = 0.5
    assert evaluate_trivial(fitted, train)["edge"]["ods_f"] == pytest.approx(50.0)


def test_trivial_metrics_reads_a_dataset_and_returns_the_trainers_shape():
    class Tiny(torch.utils.data.Dataset):
        def __init__(self, labels):
            self.labels = labels

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return {"image": torch.zeros(3, 1, 2), "semseg": torch.tensor([self.labels[i]]),
                    "depth": torch.full((1, 1, 2), float(i + 1)), "meta": {"tasks": ["semseg", "depth"]}}

    tasks = {"semseg": make_task("semseg", num_classes=2), "depth": make_task("depth")}
    train, test = Tiny([[1, 1], [1, 0], [0, -1]]), Tiny([[0, 0]])
    out = trivial_metrics(tasks, train, test, batch_size=2)
    assert set(out) == {"semseg", "depth"}
    assert set(out["semseg"]) == set(tasks["semseg"].metric_keys)
    assert out["semseg"]["pixel_acc"] == 0.0  # majority class 1 (3 of 5 labelled pixels), test all 0
    assert out["depth"]["abs_err"] == pytest.approx(1.0)  # train mean (1+1+2+2+3+3)/6 = 2 m, test depth 1 m


def test_fit_without_valid_targets_is_a_clear_error():
    with pytest.raises(ValueError, match="no valid 'depth' target"):
        fit_trivial({"depth": make_task("depth")}, [{"depth": torch.zeros(1, 1, 2, 2)}])


def test_beats_trivial_thresholds():
    tasks = {"semseg": make_task("semseg", num_classes=3), "depth": make_task("depth"),
             "normals": make_task("normals"), "binary": make_task("binary"), "boxes": make_task("boxes"),
             "edge": make_task("edge"), "saliency": make_task("saliency")}
    trivial = {"semseg": {"miou": 10.0, "pixel_acc": 50.0}, "depth": {"abs_err": 1.0}, "normals": {"mean": 40.0},
               "binary": {"accuracy": 55.0}, "boxes": {"mean_iou": 30.0}, "edge": {"ods_f": 40.0},
               "saliency": {"max_f": 20.0}}
    model = {"semseg": {"miou": 30.0, "pixel_acc": 64.9}, "depth": {"abs_err": 0.5}, "normals": {"mean": 31.0},
             "binary": {"accuracy": 70.0}, "boxes": {"mean_iou": 45.0}, "edge": {"ods_f": 54.0},
             "saliency": {"max_f": NAN}}
    checks = {(c.task, c.metric): c for c in beats_trivial(model, trivial, tasks)}
    expected = {("semseg", "miou"): (30.0, True), ("semseg", "pixel_acc"): (65.0, False),
                ("depth", "abs_err"): (0.5, True), ("normals", "mean"): (30.0, False),
                ("binary", "accuracy"): (70.0, True),  # chance 50 + 20, not the trivial 55
                ("boxes", "mean_iou"): (45.0, True), ("edge", "ods_f"): (55.0, False),
                ("saliency", "max_f"): (35.0, False)}  # NaN never passes
    assert set(checks) == set(expected)
    for key, (needed, passed) in expected.items():
        assert checks[key].needed == pytest.approx(needed), key
        assert checks[key].passed is passed, key
    text = format_checks(checks.values())
    assert "FAIL  semseg/pixel_acc: model 64.900 >= 65.000 needed (trivial 50.000" in text
    assert "PASS  depth/abs_err: model 0.500 <= 0.500 needed" in text
    assert all(c.attainable for c in checks.values())
    high = beats_trivial({"semseg": {"miou": 60.0, "pixel_acc": 99.0}}, {"semseg": {"miou": 5.0, "pixel_acc": 90.0}},
                         {"semseg": tasks["semseg"]})
    assert [(c.metric, c.passed, c.attainable) for c in high] == [("miou", True, True), ("pixel_acc", False, False)]
    assert "unattainable: the bar is above 100 %" in str(high[1])
    with pytest.raises(ValueError, match="no trivial metrics for task 'depth'"):
        beats_trivial({"depth": {"abs_err": 0.1}}, {}, {"depth": tasks["depth"]})
