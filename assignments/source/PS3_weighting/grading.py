"""PS3 (loss weighting, cross-stitch) hidden tests, run by ``mtlkit grade`` (parent side; never copied to students).

The child calls the student's functions on hidden losses, loss histories and features and emits the results; here
``mtlkit.weighting.Uncertainty`` / ``DWA`` and ``mtlkit.models.cross_stitch.CrossStitchUnit`` recompute them.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from mtlkit.course import relative_error
from mtlkit.grading.spec import Probe

FORBID = (r"\bmtlkit\b", r"\bUncertainty\s*\(", r"\bDWA\s*\(", r"make_weighting", r"__import__", r"\bimportlib\b",
          r"sys\.modules", r"\bexec\s*\(", r"\beval\s*\(", r"\bglobals\s*\(", r"builtins", r"__subclasses__",
          r"__globals__", r"\bcheck_\w+\s*\(")


def _compare(outputs: Mapping, expected: Mapping[str, torch.Tensor], tolerance: float) -> tuple[float, str]:
    if not any(name in outputs for name in expected):
        return 0.0, "no results came back (your code raised an error; see the log)"
    passed, messages = 0, []
    for name, value in expected.items():
        if name not in outputs:
            messages.append(f"{name}: missing (raised an error)")
            continue
        got = torch.from_numpy(np.array(outputs[name], dtype=np.float64))
        if tuple(got.shape) != tuple(value.shape):
            messages.append(f"{name}: shape {tuple(got.shape)}, expected {tuple(value.shape)}")
            continue
        error = relative_error(got, value) if value.numel() else 0.0
        passed += error < tolerance
        messages.append(f"{name}: relative error {error:.1e}")
    return passed / len(expected), "; ".join(messages)


# ------------------------------------------------------------------------------------------------ uncertainty
def uncertainty_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"losses_a": rng.uniform(0.01, 8.0, 5), "log_vars_a": rng.uniform(-2.5, 2.5, 5),
            "losses_b": rng.uniform(0.1, 2.0, 2), "log_vars_b": rng.uniform(-1.0, 1.0, 2)}


UNCERTAINTY_CODE = """
for _case in ("a", "b"):
    _l = torch.tensor(load_input("losses_" + _case), dtype=torch.float64, requires_grad=True)
    _s = torch.tensor(load_input("log_vars_" + _case), dtype=torch.float64, requires_grad=True)
    _v = uncertainty_loss(_l, _s)
    _v.backward()
    emit("value_" + _case, _v.detach().reshape(()))
    emit("grad_losses_" + _case, _l.grad)
    emit("grad_log_vars_" + _case, _s.grad)
"""


def uncertainty_check(outputs, inputs):
    from mtlkit.weighting import Uncertainty

    expected = {}
    for case in ("a", "b"):
        losses = torch.tensor(np.array(inputs[f"losses_{case}"]), dtype=torch.float64, requires_grad=True)
        tasks = [f"t{k}" for k in range(len(losses))]
        reference = Uncertainty(tasks).double()
        with torch.no_grad():
            reference.log_vars.copy_(torch.from_numpy(np.array(inputs[f"log_vars_{case}"])))
        value = reference({t: losses[k] for k, t in enumerate(tasks)})
        value.backward()
        expected.update({f"value_{case}": value.detach(), f"grad_losses_{case}": losses.grad,
                         f"grad_log_vars_{case}": reference.log_vars.grad})
    return _compare(outputs, expected, 1e-10)


# ------------------------------------------------------------------------------------------------ DWA
DWA_CASES = {"e0": (0, 2.0), "e1": (1, 2.0), "e2": (2, 0.7), "e6": (6, 5.0)}  # name -> (epochs, temperature)


def dwa_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    # decreasing-ish loss curves of 3 tasks on different scales
    scales = np.array([3.0, 0.4, 1.5])
    return {name: scales * np.cumprod(rng.uniform(0.6, 1.1, (epochs, 3)), axis=0)
            for name, (epochs, _) in DWA_CASES.items()}


DWA_CODE = f"""
for _name, (_epochs, _temperature) in {DWA_CASES!r}.items():
    emit(_name, dwa_weights(torch.from_numpy(load_input(_name)).reshape(_epochs, 3), _temperature))
"""


def dwa_check(outputs, inputs):
    from mtlkit.weighting import DWA

    expected = {}
    for name, (epochs, temperature) in DWA_CASES.items():
        reference = DWA(["a", "b", "c"], temperature=temperature)
        for row in np.array(inputs[name]).reshape(epochs, 3):
            reference.epoch_end(dict(zip("abc", map(float, row))))
        expected[name] = reference.lambdas.clone()
    # the all-ones cases (fewer than two epochs) count as one part together, each real update as one part
    parts = [{k: expected[k] for k in ("e0", "e1")}, {"e2": expected["e2"]}, {"e6": expected["e6"]}]
    results = [_compare(outputs, part, 1e-6) for part in parts]
    return sum(float(f == 1.0) for f, _ in results) / len(parts), "; ".join(m for _, m in results)


# ------------------------------------------------------------------------------------------------ cross-stitch
def cross_stitch_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"alpha": rng.standard_normal((3, 3, 6)), "x": rng.standard_normal((3, 2, 6, 4, 5))}


CROSS_STITCH_CODE = """
emit("init", CrossStitchUnit(4, 3).weight.detach())
emit("init_custom", CrossStitchUnit(3, 2, same=0.6, other=0.3).weight.detach())
_u = CrossStitchUnit(3, 6).double()
with torch.no_grad():
    _u.weight.copy_(torch.from_numpy(load_input("alpha")))
_x = torch.from_numpy(load_input("x"))
with torch.no_grad():
    _y = _u([_x[0], _x[1], _x[2]])
emit("y", torch.stack(list(_y)))
"""


def cross_stitch_init_check(outputs, inputs):
    from mtlkit.models.cross_stitch import CrossStitchUnit

    expected = {"init": CrossStitchUnit(4, 3).weight.detach().double(),
                "init_custom": CrossStitchUnit(3, 2, same=0.6, other=0.3).weight.detach().double()}
    fraction, message = _compare(outputs, expected, 1e-6)
    return float(fraction == 1.0), message


def cross_stitch_outputs_check(outputs, inputs):
    from mtlkit.models.cross_stitch import CrossStitchUnit

    reference = CrossStitchUnit(3, 6).double()
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(np.array(inputs["alpha"])))
        x = torch.from_numpy(np.array(inputs["x"]))
        expected = torch.stack(reference([x[0], x[1], x[2]]))
    return _compare(outputs, {"y": expected}, 1e-7)


PROBES = [
    Probe("uncertainty_check", 3, UNCERTAINTY_CODE, uncertainty_check, inputs=uncertainty_inputs,
          solution_ids=("uncertainty",), forbid=FORBID,
          description="uncertainty loss and its gradients on hidden losses and log-variances"),
    Probe("dwa_check", 3, DWA_CODE, dwa_check, inputs=dwa_inputs, solution_ids=("dwa",), forbid=FORBID,
          description="DWA weights after 0, 1, 2 and 6 epochs of hidden loss histories, several temperatures"),
    Probe("cross_stitch_check.init", 1, CROSS_STITCH_CODE, cross_stitch_init_check, inputs=cross_stitch_inputs,
          solution_ids=("cross_stitch",), forbid=FORBID, description="cross-stitch initialisation (T=4 and custom)"),
    Probe("cross_stitch_check.outputs", 3, CROSS_STITCH_CODE, cross_stitch_outputs_check, inputs=cross_stitch_inputs,
          solution_ids=("cross_stitch",), forbid=FORBID, description="cross-stitch mixing of three hidden branches"),
]
