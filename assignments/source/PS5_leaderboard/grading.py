"""PS5 (leaderboard) hidden test, run by ``mtlkit grade`` (parent side; never copied to students).

The parent writes the images of a hidden synthetic-city test split (generated from the instructor's secret,
``MTLKIT_GRADING_SECRET`` / ``mtlkit grade --secret-seed`` and this assignment's name by
:mod:`mtlkit.grading.hidden`, never cached on disk), the child runs the student's
``predict`` on them and emits the predictions, and the parent scores them against labels that never enter the
sandbox with the grader score (``mtlkit.metrics.grader_score``).
"""
from __future__ import annotations

import numpy as np

from mtlkit.grading.hidden import HiddenSplit, score_predictions
from mtlkit.grading.spec import Probe

# mtlkit grade refuses to grade without the instructor's secret: the hidden split's seed derives from it and from
# this assignment's name (mtlkit.grading.hidden), so the leaderboard's images are not PS1's hidden ones
NEEDS_SECRET = True
# preset -> (measure, floor (0 points), target (all points)); stated in the notebook
THRESHOLDS = {"unit": ("valid", None, None), "smoke": ("miou", 5.0, 20.0), "lesson": ("grader_score", 5.0, 30.0),
              "paper": ("grader_score", 40.5, 70.0)}
# at most 128 hidden test images (unit: 4, smoke: 64, lesson: 128 of 400)
SPLIT = HiddenSplit("PS5_leaderboard", THRESHOLDS, images=128)


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
                             SPLIT.labels_for(np.array(inputs["images"])))


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
    measure, floor, target = THRESHOLDS[SPLIT.preset()]
    summary = (f"hidden split: mIoU {scores['miou']:.2f}, SI-log {scores['si_log_rmse']:.2f}, "
               f"grader score {scores['grader_score']:.2f}")
    if measure == "valid":
        return 1.0, summary + " (unit preset: valid predictions earn the points)"
    fraction = float(np.clip((scores[measure] - floor) / (target - floor), 0.0, 1.0))
    return fraction, f"{summary}; {measure} {scores[measure]:.2f} (floor {floor}, target {target})"


PROBES = [
    Probe("leaderboard.format", 2, HIDDEN_CODE, format_check, inputs=SPLIT.hidden_inputs,
          solution_ids=("predict",),
          timeout_s=180.0, description="predictions on the hidden test split have the contract's format"),
    Probe("leaderboard.score", 8, HIDDEN_CODE, score_check, inputs=SPLIT.hidden_inputs,
          solution_ids=("model", "predict"),
          timeout_s=180.0, description="score on the hidden test split (floor and target in the notebook)"),
]
