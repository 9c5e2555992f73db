"""PS1 (joint DeepLabV3+) hidden tests, run by ``mtlkit grade`` (parent side; never copied to students).

Each :class:`~mtlkit.grading.spec.Probe` runs its ``code`` in the child after the notebook (the student's solution
cells spliced into the instructor's notebook): it loads weights drawn here into the student's module and hands
plain arrays back; ``check`` recomputes the expected values here with mtlkit's own modules
(``mtlkit.models.blocks``) and the same weights, and compares. Hidden configurations differ from the
notebook's public checks (other channels, rates, sizes; batch of one in train mode).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from mtlkit.course import relative_error
from mtlkit.grading.hidden import HiddenSplit, score_predictions
from mtlkit.grading.spec import Probe
from mtlkit.grading.weights import emitted_state, load_state, random_state, structure_problem

TOLERANCE = 1e-7  # float64 on both sides: the same computation agrees to ~1e-15
# A solution must implement the module, not import the library's (checked in the parent on the solution source).
FORBID = (r"\bmtlkit\b", r"__import__", r"\bimportlib\b", r"sys\.modules", r"\bexec\s*\(", r"\beval\s*\(",
          r"\bglobals\s*\(", r"builtins", r"__subclasses__", r"__globals__", r"\bcheck_(aspp|decoder)\b")


# ------------------------------------------------------------------------------------------------ helpers
# The weights a module is checked with are drawn here (random_state) and loaded into the student's module in the
# child: weights the submission reported itself could be chosen to make the reference trivial (all zeros).
# What the child emits of its own module ("own") only names the parameters, for the feedback.
LOAD_WEIGHTS = "_m.load_state_dict({k: torch.from_numpy(v) for k, v in load_weights('weights').items()})"


def compare(outputs: Mapping, name: str, expected: torch.Tensor, what: str) -> tuple[bool, str]:
    if name not in outputs:
        return False, f"{what}: no output (your code raised an error before it; see the log)"
    got = torch.from_numpy(np.array(outputs[name]))
    if tuple(got.shape) != tuple(expected.shape):
        return False, f"{what}: output shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    error = relative_error(got, expected)
    return error < TOLERANCE, f"{what}: relative error {error:.1e}"


def module_check(outputs, inputs, reference, what, runs) -> tuple[float, str]:
    """Check the student's parameter names, load the grader's weights into ``reference`` and run it as ``runs``
    says: [(output name, mode, args), ...]; the fraction of outputs that match."""
    problem = structure_problem(reference, emitted_state(outputs, "own"), what)
    if problem:
        return 0.0, problem
    load_state(reference, inputs["weights"])
    passed, messages = 0, []
    for name, mode, args in runs:
        reference.train(mode == "train")
        with torch.no_grad():
            expected = reference(*args)
        ok, message = compare(outputs, name, expected, f"{name} ({mode} mode)" if name != mode else f"{mode} mode")
        passed += ok
        messages.append(message)
    return passed / len(runs), "; ".join(messages)


def t64(inputs: Mapping, name: str) -> torch.Tensor:
    return torch.from_numpy(np.array(inputs[name], dtype=np.float64))


# ------------------------------------------------------------------------------------------------ ASPP
ASPP_CONFIG = dict(in_channels=24, out_channels=8, rates=(2, 3, 5))


def aspp_inputs(rng: np.random.Generator) -> dict:
    from mtlkit.models.blocks import ASPP

    # batch of one in train mode: needs the GroupNorm branch
    return {"x": rng.standard_normal((1, 24, 6, 10)), "weights": random_state(ASPP(**ASPP_CONFIG), rng)}


ASPP_CODE = f"""
_m = ASPP(24, 8, rates=(2, 3, 5)).double()
emit_weights("own", _m)
{LOAD_WEIGHTS}
_x = torch.from_numpy(load_input("x")).double()
_m.eval()
with torch.no_grad():
    emit("eval", _m(_x))
_m.train()
with torch.no_grad():
    emit("train", _m(_x))
"""


def aspp_check(outputs, inputs):
    from mtlkit.models.blocks import ASPP

    x = t64(inputs, "x")
    return module_check(outputs, inputs, ASPP(**ASPP_CONFIG).double(), "your ASPP",
                        [("eval", "eval", (x,)), ("train", "train", (x,))])


# ------------------------------------------------------------------------------------------------ decoder
DECODER_CONFIG = dict(in_channels=10, skip_in_channels=6, out_channels=7, skip_channels=4, channels=12)


def decoder_inputs(rng: np.random.Generator) -> dict:
    from mtlkit.models.blocks import DeepLabV3PlusDecoder

    return {"x": rng.standard_normal((2, 10, 3, 4)), "skip": rng.standard_normal((2, 6, 11, 14)),
            "weights": random_state(DeepLabV3PlusDecoder(**DECODER_CONFIG), rng)}


DECODER_CODE = f"""
_m = DeepLabV3PlusDecoder(10, 6, 7, skip_channels=4, channels=12).double()
emit_weights("own", _m)
{LOAD_WEIGHTS}
_x, _s = (torch.from_numpy(load_input(n)).double() for n in ("x", "skip"))
_m.eval()
with torch.no_grad():
    emit("eval_sized", _m(_x, _s, size=(41, 53)))
    emit("eval", _m(_x, _s))
_m.train()
with torch.no_grad():
    emit("train_sized", _m(_x, _s, size=(41, 53)))
"""


def decoder_check(outputs, inputs):
    from mtlkit.models.blocks import DeepLabV3PlusDecoder

    x, skip = t64(inputs, "x"), t64(inputs, "skip")
    return module_check(outputs, inputs, DeepLabV3PlusDecoder(**DECODER_CONFIG).double(), "your decoder", [
        ("eval_sized", "eval", (x, skip, (41, 53))), ("eval", "eval", (x, skip)),
        ("train_sized", "train", (x, skip, (41, 53))),
    ])


# ------------------------------------------------------------------------------------------------ training
# mtlkit grade refuses to grade without the instructor's secret: the hidden split's seed derives from it and from
# this assignment's name (mtlkit.grading.hidden), so PS1's hidden images are not PS5's and cannot be regenerated
NEEDS_SECRET = True
# preset -> (measure, full-points threshold, half-points threshold); stated in the notebook's part 3
THRESHOLDS = {"unit": ("valid", None, None), "smoke": ("miou", 12.0, 8.0), "lesson": ("grader_score", 20.0, 10.0),
              "paper": ("grader_score", 55.0, 45.0)}
# at most 128 hidden test images (unit: 4, smoke: 64, lesson: 128 of 400)
SPLIT = HiddenSplit("PS1_joint", THRESHOLDS, images=128)


PREDICT_CODE = """
def _predict_all(images, batch_size=16):
    outs = [predict(torch.from_numpy(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return (torch.cat([torch.as_tensor(o["semseg"]) for o in outs]).long(),
            torch.cat([torch.as_tensor(o["depth"]) for o in outs]).float())
"""
VERIFIED_CODE = PREDICT_CODE + """
emit("reported", torch.tensor([float(REPORTED["miou"]), float(REPORTED["si_log_rmse"]),
                               float(REPORTED["grader_score"])], dtype=torch.float64))
_seg, _dep = _predict_all(load_input("images"))
emit("semseg", _seg)
emit("depth", _dep)
"""
HIDDEN_CODE = PREDICT_CODE + """
_seg, _dep = _predict_all(load_input("images"))
emit("semseg", _seg)
emit("depth", _dep)
"""


def verified_check(outputs, inputs):
    """1 point: REPORTED matches the parent's evaluation of predict() on the public test split."""
    if "reported" not in outputs or "semseg" not in outputs:
        return 0.0, "predict() or REPORTED failed before the test-split predictions came back (see the log)"
    try:
        scores = score_predictions(np.array(outputs["semseg"]), np.array(outputs["depth"]),
                                   SPLIT.labels_for(np.array(inputs["images"])))
    except ValueError as exc:
        return 0.0, str(exc)
    reported = np.array(outputs["reported"], dtype=np.float64).reshape(-1)
    ok = (abs(reported[0] - scores["miou"]) <= 0.5 and abs(reported[1] - scores["si_log_rmse"]) <= 0.5
          and abs(reported[2] - scores["grader_score"]) <= 1.0)
    return float(ok), (f"test split: measured mIoU {scores['miou']:.2f}, SI-log {scores['si_log_rmse']:.2f}, "
                       f"grader score {scores['grader_score']:.2f}; reported {np.round(reported, 2).tolist()}")


def hidden_check(outputs, inputs):
    """3 points by the preset's thresholds on the hidden split (the notebook's part 3 states them)."""
    if "semseg" not in outputs or "depth" not in outputs:
        return 0.0, "predict() failed on the hidden split (see the log)"
    try:
        scores = score_predictions(np.array(outputs["semseg"]), np.array(outputs["depth"]),
                                   SPLIT.labels_for(np.array(inputs["images"])))
    except ValueError as exc:
        return 0.0, str(exc)
    measure, full, half = THRESHOLDS[SPLIT.preset()]
    summary = (f"hidden split: mIoU {scores['miou']:.2f}, SI-log {scores['si_log_rmse']:.2f}, "
               f"grader score {scores['grader_score']:.2f}")
    if measure == "valid":
        return 1.0, summary + " (unit preset: valid predictions earn the points)"
    value = scores[measure]
    fraction = 1.0 if value >= full else 0.5 if value >= half else 0.0
    return fraction, f"{summary}; {measure} {value:.2f} (full points at {full}, half at {half})"


PROBES = [
    Probe("aspp_check", 4, ASPP_CODE, aspp_check, inputs=aspp_inputs, solution_ids=("aspp",), forbid=FORBID,
          description="ASPP on hidden channels, rates and input (eval and train mode, batch of one)"),
    Probe("decoder_check", 4, DECODER_CODE, decoder_check, inputs=decoder_inputs, solution_ids=("decoder",),
          forbid=FORBID, description="DeepLabV3+ decoder on hidden widths and sizes (eval and train mode)"),
    Probe("training.verified", 1, VERIFIED_CODE, verified_check, inputs=SPLIT.public_inputs,
          solution_ids=("hparams", "report"), timeout_s=120.0,
          description="REPORTED matches predict() on the test split"),
    Probe("training.hidden", 3, HIDDEN_CODE, hidden_check, inputs=SPLIT.hidden_inputs,
          solution_ids=("aspp", "decoder", "hparams"), timeout_s=120.0,
          description="the trained model on a hidden test split (thresholds in the notebook)"),
]
