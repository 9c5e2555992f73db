"""PS2 (branched model, task distillation) hidden tests for ``mtlkit grade`` (parent side; never copied to students).

The child builds the student's modules on hidden tasks and widths, loads weights drawn here into them (the
submission's own weights could be chosen to make the reference trivial), feeds them hidden encoder features and
emits their outputs; here the library's ``deeplab-branched`` / ``deeplab-distill`` and
``mtlkit.models.blocks.SelfAttentionGate`` get the same weights and features, and the outputs are compared. What
the child emits of its own modules' state only names their parameters, for the feedback.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn as nn

from mtlkit.course import relative_error
from mtlkit.grading.spec import Probe
from mtlkit.grading.weights import emitted_state, load_state, random_state, structure_problem

TOLERANCE = 1e-7  # float64 on both sides
FORBID = (r"\bmtlkit\b", r"DeepLabV3Plus(Branched|Distill)", r"deeplab-(branched|distill|joint)", r"\bbuild\s*\(",
          r"__import__", r"\bimportlib\b", r"sys\.modules", r"\bexec\s*\(", r"\beval\s*\(", r"\bglobals\s*\(",
          r"builtins", r"__subclasses__", r"__globals__", r"\bcheck_\w+\s*\(")
TASKS = {"depth": 1, "normals": 3, "semseg": 7}  # other tasks, order and classes than the public checks
WIDTHS = dict(aspp_channels=8, skip_channels=4, decoder_channels=10)
IMAGE = (2, 3, 48, 64)  # resnet18: skip [2, 64, 12, 16], features [2, 512, 3, 4] at output stride 16


class FixedEncoder(nn.Module):
    """Returns the given (skip, features) whatever the images (the notebook's FixedEncoder, parent side)."""

    def __init__(self, skip: torch.Tensor, features: torch.Tensor) -> None:
        super().__init__()
        self.skip, self.features = skip, features

    def forward(self, images: torch.Tensor):
        return self.skip, self.features


def heads_of(model: nn.Module) -> nn.ModuleDict:
    """Everything of a DeepLab model but its encoder (the part the student writes)."""
    return nn.ModuleDict({k: v for k, v in model.named_children() if k != "encoder"})


LOAD_WEIGHTS = "{k: torch.from_numpy(v) for k, v in load_weights('weights').items()}"


def compare_all(outputs: Mapping, expected: Mapping[str, torch.Tensor]) -> tuple[float, str]:
    if not any(name in outputs for name in expected):
        return 0.0, "no results came back (your code raised an error; see the log)"
    passed, messages = 0, []
    for name, value in expected.items():
        if name not in outputs:
            messages.append(f"{name}: missing (raised an error)")
            continue
        got = torch.from_numpy(np.array(outputs[name]))
        if tuple(got.shape) != tuple(value.shape):
            messages.append(f"{name}: shape {tuple(got.shape)}, expected {tuple(value.shape)}")
            continue
        error = relative_error(got, value)
        passed += error < TOLERANCE
        messages.append(f"{name}: relative error {error:.1e}")
    return passed / len(expected), "; ".join(messages)


def model_inputs(name: str):
    """Hidden encoder features, and weights for the heads of ``name`` (the library's model on the hidden config)."""
    def inputs(rng: np.random.Generator) -> dict:
        from mtlkit.models import build

        b, _, h, w = IMAGE
        return {"skip": rng.standard_normal((b, 64, h // 4, w // 4)),
                "features": rng.standard_normal((b, 512, h // 16, w // 16)),
                "weights": random_state(heads_of(build(name, TASKS, encoder="resnet18", **WIDTHS)), rng)}
    return inputs


BRANCHED_INPUTS, DISTILL_INPUTS = model_inputs("deeplab-branched"), model_inputs("deeplab-distill")


def _model_code(cls: str) -> str:
    return f"""
torch.manual_seed(21)
_tasks = {TASKS!r}
_m = {cls}(_tasks, encoder="resnet18", **{WIDTHS!r})
emit("params", torch.tensor(sum(p.numel() for p in _m.parameters()), dtype=torch.int64))
_m.encoder = FixedEncoder(*(torch.from_numpy(load_input(n)).double() for n in ("skip", "features")))
_m.double().eval()
_heads = nn.ModuleDict({{k: v for k, v in _m.named_children() if k != "encoder"}})
emit_weights("own", _heads)
_heads.load_state_dict({LOAD_WEIGHTS})
with torch.no_grad():
    _out = _m(torch.zeros({IMAGE!r}, dtype=torch.float64))
for _t in _tasks:
    emit(_t, _out[_t])
    if isinstance(_out.get("aux"), dict):
        emit("initial_" + _t, _out["aux"]["initial"][_t])
"""


def _reference(name: str, outputs: Mapping, inputs: Mapping) -> tuple[nn.Module | None, str]:
    from mtlkit.models import build

    reference = build(name, TASKS, encoder="resnet18", **WIDTHS)
    problem = structure_problem(heads_of(reference), emitted_state(outputs, "own"), "your model")
    if problem:
        return None, problem
    skip, features = (torch.from_numpy(np.array(inputs[n], dtype=np.float64)) for n in ("skip", "features"))
    reference.encoder = FixedEncoder(skip, features)
    load_state(heads_of(reference.double().eval()), inputs["weights"])  # float64 weights into a float64 model
    return reference, ""


def params_check(name: str):
    def check(outputs, inputs):
        from mtlkit.models import build, count_parameters

        if "params" not in outputs:
            return 0.0, "building your model raised an error (see the log)"
        expected = count_parameters(build(name, TASKS, encoder="resnet18", **WIDTHS))["total"]
        got = int(np.array(outputs["params"]).reshape(-1)[0])
        return float(got == expected), f"parameters on the hidden configuration: {got:,}" + (
            "" if got == expected else " (differs from the specification)")
    return check


def outputs_check(name: str):
    def check(outputs, inputs):
        reference, problem = _reference(name, outputs, inputs)
        if reference is None:
            return 0.0, problem
        with torch.no_grad():
            out = reference(torch.zeros(IMAGE, dtype=torch.float64))
        final, message = compare_all(outputs, {t: out[t] for t in TASKS})
        if "aux" not in out:
            return float(final == 1.0), message
        # distillation: the final predictions are worth two thirds, the initial (deep supervision) ones a third
        initial, initial_message = compare_all(outputs, {f"initial_{t}": v for t, v in out["aux"]["initial"].items()})
        return (2 * float(final == 1.0) + float(initial == 1.0)) / 3, f"{message}; {initial_message}"
    return check


# ------------------------------------------------------------------------------------------------ gates
GATE_TASKS = ("depth", "normals", "semseg")
GATE_SHAPE = (1, 5, 7, 4)


def _gates(gate_class) -> nn.ModuleDict:
    return nn.ModuleDict({t: nn.ModuleDict({s: gate_class(5, 5) for s in GATE_TASKS if s != t}) for t in GATE_TASKS})


def gate_inputs(rng: np.random.Generator) -> dict:
    from mtlkit.models.blocks import SelfAttentionGate

    return {**{t: rng.standard_normal(GATE_SHAPE) for t in GATE_TASKS},
            "weights": random_state(_gates(SelfAttentionGate), rng)}  # non-zero gates, so the gating matters


GATE_CODE = f"""
torch.manual_seed(22)
emit_weights("fresh", SelfAttentionGate(5, 7))
_tasks = {GATE_TASKS!r}
_g = nn.ModuleDict({{t: nn.ModuleDict({{s: SelfAttentionGate(5, 5) for s in _tasks if s != t}})
                   for t in _tasks}}).double()
emit_weights("own", _g)
_g.load_state_dict({LOAD_WEIGHTS})
with torch.no_grad():
    _o = distill_features({{t: torch.from_numpy(load_input(t)).double() for t in _tasks}}, _g)
for _t in _tasks:
    emit(_t, _o[_t])
"""


def gate_init_check(outputs, inputs):
    fresh = emitted_state(outputs, "fresh")
    if fresh is None:
        return 0.0, "SelfAttentionGate(5, 7) raised an error (see the log)"
    if set(fresh) != {"message.weight", "gate.weight"}:
        return 0.0, f"a gate's parameters are {sorted(fresh)}; expected message.weight and gate.weight (no biases)"
    if any(tuple(np.shape(v)) != (7, 5, 3, 3) for v in fresh.values()):
        return 0.0, "the gate's convs must be 3x3 from in_channels to out_channels"
    if np.count_nonzero(fresh["gate.weight"]) or not np.count_nonzero(fresh["message.weight"]):
        return 0.0, "at initialisation the gate's conv must be zero and the message conv random"
    return 1.0, "gate initialisation as specified"


def gate_outputs_check(outputs, inputs):
    from mtlkit.models.blocks import SelfAttentionGate

    reference = _gates(SelfAttentionGate).double()
    problem = structure_problem(reference, emitted_state(outputs, "own"), "your gates")
    if problem:
        return 0.0, problem
    load_state(reference, inputs["weights"])
    f = {t: torch.from_numpy(np.array(inputs[t], dtype=np.float64)) for t in GATE_TASKS}
    with torch.no_grad():
        expected = {t: f[t] + sum(reference[t][s](f[s]) for s in GATE_TASKS if s != t) for t in GATE_TASKS}
    return compare_all(outputs, expected)


PROBES = [
    Probe("branched_check.params", 1, _model_code("BranchedDeepLab"), params_check("deeplab-branched"),
          inputs=BRANCHED_INPUTS, solution_ids=("branched",), forbid=FORBID,
          description="branched model: parameter count on hidden tasks and widths"),
    Probe("branched_check.outputs", 3, _model_code("BranchedDeepLab"), outputs_check("deeplab-branched"),
          inputs=BRANCHED_INPUTS, solution_ids=("branched",), forbid=FORBID,
          description="branched model: every task's output on hidden features"),
    Probe("gate_check.init", 1, GATE_CODE, gate_init_check, inputs=gate_inputs, solution_ids=("gate",), forbid=FORBID,
          description="self-attention gate: parameters and initialisation"),
    Probe("gate_check.distill", 3, GATE_CODE, gate_outputs_check, inputs=gate_inputs, solution_ids=("gate",),
          forbid=FORBID, description="distilled features with three tasks on hidden inputs"),
    Probe("distill_check.params", 1, _model_code("DistillDeepLab"), params_check("deeplab-distill"),
          inputs=DISTILL_INPUTS, solution_ids=("branched", "gate", "distill"), forbid=FORBID,
          description="distillation model: parameter count on hidden tasks and widths"),
    Probe("distill_check.outputs", 3, _model_code("DistillDeepLab"), outputs_check("deeplab-distill"),
          inputs=DISTILL_INPUTS, solution_ids=("branched", "gate", "distill"), forbid=FORBID,
          description="distillation model: final and initial predictions on hidden features"),
]
