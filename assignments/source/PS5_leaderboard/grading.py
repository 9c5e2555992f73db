"""PS5 (leaderboard) hidden test, run by ``mtlkit grade`` (parent side; never copied to students).

The parent writes the images of a hidden synthetic-city test split (generated from the instructor's secret,
``MTLKIT_GRADING_SECRET`` / ``mtlkit grade --secret-seed``, never cached on disk), the child runs the student's
``predict`` on them and emits the predictions, and the parent scores them against labels that never enter the
sandbox with the grader score (``mtlkit.metrics.grader_score``).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import numpy as np
import torch

from mtlkit.grading.spec import Probe

SECRET_ENV = "MTLKIT_GRADING_SECRET"
# mtlkit grade refuses to grade without the secret: the fallback seed below follows from the assignment name and
# mtlkit's public code, so a submission could regenerate the hidden split (labels included) in the sandbox
NEEDS_SECRET = True
HIDDEN_IMAGES = 128  # at most this many hidden test images (unit: 4, smoke: 64, lesson: 128 of 400)
_HIDDEN_LABELS: dict[str, dict[str, np.ndarray]] = {}  # digest of the hidden images -> labels (parent only)
# preset -> (measure, floor (0 points), target (all points)); stated in the notebook
THRESHOLDS = {"unit": ("valid", None, None), "smoke": ("miou", 5.0, 20.0), "lesson": ("grader_score", 5.0, 30.0),
              "paper": ("grader_score", 40.5, 70.0)}


def _preset() -> str:
    preset = os.environ.get("MTLKIT_PRESET", "smoke")
    if preset not in THRESHOLDS:
        raise ValueError(f"MTLKIT_PRESET={preset!r}; valid presets: {', '.join(THRESHOLDS)}")
    return preset


def _digest(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes()).hexdigest()


def _collect(dataset, limit: int | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from mtlkit.data import collate

    batch = collate([dataset[i] for i in range(min(len(dataset), limit or len(dataset)))])
    return batch["image"].numpy(), {"semseg": batch["semseg"].numpy(), "depth": batch["depth"].numpy()}


def _public_split(preset: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The test split the notebook evaluates on (the preset's dataset, seed 0)."""
    from mtlkit.course import deeplab_schedule, load_splits

    schedule = deeplab_schedule(preset)
    return _collect(load_splits(schedule["data"], schedule["data_preset"], seed=0)["test"])


def _hidden_split(seed: int, preset: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A synthetic-city test split generated with ``seed`` (never cached on disk, so the child cannot find it).

    The paper preset trains on real MiniScapes images, which no seed can regenerate: there the real test split
    stands in for the hidden one.
    """
    from mtlkit.data import get_dataset

    if preset == "paper":
        return _public_split(preset)
    return _collect(get_dataset("synthetic-city", "test", preset=preset, seed=seed, cache=False), HIDDEN_IMAGES)


def _secret_seed() -> int | None:
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        return None
    return int(hashlib.sha256(f"mtlkit-hidden-split:{secret}".encode()).hexdigest()[:8], 16)


def hidden_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A hidden split's images (the instructor's secret seed); its labels stay in the parent."""
    preset = _preset()
    seed = _secret_seed()
    if seed is None:  # no instructor secret: a seed from the grader's generator (fixed per assignment)
        seed = int(rng.integers(1_000_000, 2**31 - 1))
    images, labels = _hidden_split(seed, preset)
    _HIDDEN_LABELS[_digest(images)] = labels
    return {"images": images}


def _labels_for(images: np.ndarray) -> dict[str, np.ndarray]:
    key = _digest(images)
    if key not in _HIDDEN_LABELS and _secret_seed() is not None:  # another process wrote the inputs: regenerate
        for regenerated, labels in (_hidden_split(_secret_seed(), _preset()), _public_split(_preset())):
            _HIDDEN_LABELS[_digest(regenerated)] = labels
    if key not in _HIDDEN_LABELS:
        raise RuntimeError(f"the hidden labels of these images are not in this process; set {SECRET_ENV} (or pass "
                           "--secret-seed) so the parent can regenerate them")
    return _HIDDEN_LABELS[key]


def score_predictions(semseg: np.ndarray, depth: np.ndarray, labels: Mapping[str, np.ndarray]) -> dict[str, float]:
    """mIoU, SI-log and grader score of predicted labels/depth against ``labels`` with the registry's meters."""
    from mtlkit.metrics import grader_score
    from mtlkit.tasks import make_task

    n, h, w = labels["semseg"].shape
    if semseg.shape != (n, h, w) or depth.shape != (n, 1, h, w):
        raise ValueError(f"predictions have shapes semseg {semseg.shape}, depth {depth.shape}; expected semseg "
                         f"{(n, h, w)} (class labels) and depth {(n, 1, h, w)} (metres)")
    if semseg.size and (semseg.min() < 0 or semseg.max() >= 19):
        raise ValueError(f"semseg labels must lie in [0, 19); got values from {semseg.min()} to {semseg.max()}")
    if not np.isfinite(depth).all():
        raise ValueError("the depth predictions contain NaN or infinite values")
    seg = make_task("semseg", num_classes=19).meter()
    dep = make_task("depth").meter()
    seg.update(torch.from_numpy(semseg.astype(np.int64)), torch.from_numpy(labels["semseg"]))
    dep.update(torch.from_numpy(depth.astype(np.float32)), torch.from_numpy(labels["depth"]))
    scores = {"miou": seg.compute()["miou"], "si_log_rmse": dep.compute()["si_log_rmse"]}
    scores["grader_score"] = grader_score(scores["miou"], scores["si_log_rmse"])
    return scores


PREDICT_CODE = """
def _labels(semseg):
    semseg = torch.as_tensor(semseg)
    return (semseg.argmax(1) if semseg.ndim == 4 else semseg).long()  # logits [B, 19, H, W] -> labels [B, H, W]

def _predict_all(images, batch_size=16):
    outs = [predict(torch.from_numpy(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return (torch.cat([_labels(o["semseg"]) for o in outs]),
            torch.cat([torch.as_tensor(o["depth"]).detach().float().cpu() for o in outs]))
"""
HIDDEN_CODE = PREDICT_CODE + """
_images = load_input("images")
_seg, _dep = _predict_all(_images)
emit("semseg", _seg)
emit("depth", _dep)
"""


def _hidden_scores(outputs, inputs) -> dict[str, float]:
    if "semseg" not in outputs or "depth" not in outputs:
        raise ValueError("predict() failed on the hidden split (see the log)")
    return score_predictions(np.array(outputs["semseg"]), np.array(outputs["depth"]),
                             _labels_for(np.array(inputs["images"])))


def LEADERBOARD(outputs, inputs) -> dict[str, float]:
    """The leaderboard row of one submission: hidden-split mIoU, SI-log, grader score, and the tie-breaker
    ``raw`` = mIoU - SI-log (ranks submissions whose grader scores both clip to 0). Raises ValueError when the
    predictions are missing or malformed."""
    scores = _hidden_scores(outputs, inputs)
    scores["raw"] = scores["miou"] - scores["si_log_rmse"]
    return scores


def format_check(outputs, inputs):
    """2 points: predictions of the right shapes and values for every hidden image."""
    try:
        _hidden_scores(outputs, inputs)
    except ValueError as exc:
        return 0.0, str(exc)
    return 1.0, f"valid predictions for {len(np.array(inputs['images']))} hidden images"


def score_check(outputs, inputs):
    """8 points, linear between the preset's floor and target (the notebook's table)."""
    try:
        scores = LEADERBOARD(outputs, inputs)
    except ValueError as exc:
        return 0.0, str(exc)
    measure, floor, target = THRESHOLDS[_preset()]
    summary = (f"hidden split: mIoU {scores['miou']:.2f}, SI-log {scores['si_log_rmse']:.2f}, "
               f"grader score {scores['grader_score']:.2f}")
    if measure == "valid":
        return 1.0, summary + " (unit preset: valid predictions earn the points)"
    fraction = float(np.clip((scores[measure] - floor) / (target - floor), 0.0, 1.0))
    return fraction, f"{summary}; {measure} {scores[measure]:.2f} (floor {floor}, target {target})"


PROBES = [
    Probe("leaderboard.format", 2, HIDDEN_CODE, format_check, inputs=hidden_inputs, solution_ids=("predict",),
          timeout_s=180.0, description="predictions on the hidden test split have the contract's format"),
    Probe("leaderboard.score", 8, HIDDEN_CODE, score_check, inputs=hidden_inputs, solution_ids=("model", "predict"),
          timeout_s=180.0, description="score on the hidden test split (floor and target in the notebook)"),
]
