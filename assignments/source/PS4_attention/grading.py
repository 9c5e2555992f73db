"""PS4 (ULSAM, AdaIN, task switching) hidden tests, run by ``mtlkit grade`` (parent side; never copied to students).

The child builds the student's modules on hidden configurations, loads weights drawn here into them (the
submission's own weights could be chosen to make the reference trivial) and emits their outputs on hidden inputs;
here ``mtlkit.models.ulsam.ULSAM`` and ``mtlkit.models.tsn`` (AdaINConv, MappingNetwork, task_codes) get the same
weights and inputs, and the outputs are compared. What the child emits of its own modules' state only names their
parameters (and shows the style layer's initialisation), for the feedback.
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
SCALED_TOLERANCE = 1e-6  # AdaIN: the library's instance-norm statistics are float32
FORBID = (r"\bmtlkit\b", r"\bInstanceNorm\b", r"TaskSwitchingNet", r"UNetDecoder", r"__import__", r"\bimportlib\b",
          r"sys\.modules", r"\bexec\s*\(", r"\beval\s*\(", r"\bglobals\s*\(", r"builtins", r"__subclasses__",
          r"__globals__", r"\bcheck_\w+\s*\(", r"reference_switching")


LOAD_WEIGHTS = "{k: torch.from_numpy(v) for k, v in load_weights(%r).items()}"


def load_checked(reference: nn.Module, outputs: Mapping, inputs: Mapping, own: str, weights: str,
                 what: str) -> str | None:
    """The student's own parameter names (``own``) against ``reference``'s, then the grader's ``weights`` loaded
    into ``reference``; a message naming the problem, or None."""
    problem = structure_problem(reference, emitted_state(outputs, own), what)
    if problem:
        return problem
    load_state(reference, inputs[weights])
    return None


def scaled_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """max |x - y| / max |y| (the notebook's): the library's instance norm has float32 statistics."""
    return float((x - y).abs().max() / y.abs().max().clamp_min(1e-12))


def compare_all(outputs: Mapping, expected: Mapping[str, torch.Tensor], scaled: bool = False) -> tuple[float, str]:
    missing = [n for n in expected if n not in outputs]
    if len(missing) == len(expected):
        return 0.0, "no outputs came back (your code raised an error; see the log)"
    passed, messages = 0, [f"{n}: missing (raised an error)" for n in missing]
    for name, value in expected.items():
        if name in missing:
            continue
        got = torch.from_numpy(np.array(outputs[name]))
        if tuple(got.shape) != tuple(value.shape):
            messages.append(f"{name}: shape {tuple(got.shape)}, expected {tuple(value.shape)}")
            continue
        if scaled:
            error = scaled_error(got, value)
            passed += error < SCALED_TOLERANCE
            messages.append(f"{name}: scaled error {error:.1e}")
        else:
            error = relative_error(got, value)
            passed += error < TOLERANCE
            messages.append(f"{name}: relative error {error:.1e}")
    return passed / len(expected), "; ".join(messages)


def t64(inputs: Mapping, name: str) -> torch.Tensor:
    return torch.from_numpy(np.array(inputs[name], dtype=np.float64))


# ------------------------------------------------------------------------------------------------ ULSAM
ULSAM_CONFIG = (24, 6)  # channels, groups


def ulsam_inputs(rng: np.random.Generator) -> dict:
    from mtlkit.models.ulsam import ULSAM

    return {"x": rng.standard_normal((2, 24, 5, 9)), "weights": random_state(ULSAM(*ULSAM_CONFIG), rng)}


ULSAM_CODE = f"""
_m = ULSAM(24, 6).double()
emit("params", torch.tensor(sum(p.numel() for p in _m.parameters())))
emit_weights("own", _m)
_m.load_state_dict({LOAD_WEIGHTS % "weights"})
_x = torch.from_numpy(load_input("x"))
with torch.no_grad():
    _m.eval()
    emit("eval", _m(_x))
    emit("attention", _m.attention(_x))
    _m.train()
    emit("train", _m(_x))
"""


def ulsam_check(outputs, inputs):
    from mtlkit.models.ulsam import ULSAM, ulsam_parameters

    if "params" not in outputs:
        return 0.0, "ULSAM(24, 6) raised an error (see the log)"
    count = int(np.array(outputs["params"]).reshape(-1)[0])
    if count != ulsam_parameters(*ULSAM_CONFIG):
        # (the expected count itself is not shown: feedback never holds expected values)
        return 0.0, f"ULSAM(24, 6) has {count} parameters, not the 5C + 3g the specification asks for"
    reference = ULSAM(*ULSAM_CONFIG).double()
    problem = load_checked(reference, outputs, inputs, "own", "weights", "your ULSAM")
    if problem:
        return 0.0, problem
    x = t64(inputs, "x")
    with torch.no_grad():
        reference.eval()
        expected = {"eval": reference(x), "attention": reference.attention(x)}
        reference.train()
        expected["train"] = reference(x)
    return compare_all(outputs, expected)


# ------------------------------------------------------------------------------------------------ AdaIN
ADAIN_CASES = {"a": (5, 7, 3, 9, (2, 5, 6, 4), 2), "b": (3, 4, 1, 6, (3, 3, 1, 1), 1)}  # c_in, c_out, k, d, x, w rows


def adain_inputs(rng: np.random.Generator) -> dict:
    from mtlkit.models.tsn import AdaINConv

    out = {}
    for name, (c_in, c_out, k, d, shape, rows) in ADAIN_CASES.items():
        out[f"x_{name}"], out[f"w_{name}"] = rng.standard_normal(shape), rng.standard_normal((rows, d))
        weights = random_state(AdaINConv(c_in, c_out, k, d), rng)
        weights["style.bias"] = rng.standard_normal(2 * c_out)  # a trained-looking style layer
        out[f"weights_{name}"] = weights
    return out


ADAIN_CODE = f"""
torch.manual_seed(42)
emit_weights("fresh", AdaINConv(4, 3, 3, 5))
for _name, (_ci, _co, _k, _d, _shape, _rows) in {ADAIN_CASES!r}.items():
    _m = AdaINConv(_ci, _co, _k, _d).double()
    emit_weights("own_" + _name, _m)
    _m.load_state_dict({{k: torch.from_numpy(v) for k, v in load_weights("weights_" + _name).items()}})
    with torch.no_grad():
        emit("y_" + _name, _m(torch.from_numpy(load_input("x_" + _name)), torch.from_numpy(load_input("w_" + _name))))
"""


def adain_init_check(outputs, inputs):
    fresh = emitted_state(outputs, "fresh")
    if fresh is None:
        return 0.0, "AdaINConv(4, 3, 3, 5) raised an error (see the log)"
    if "style.bias" not in fresh:
        return 0.0, f"AdaINConv's parameters are {sorted(fresh)}; expected conv.* and style.*"
    ok = np.array_equal(np.asarray(fresh["style.bias"], dtype=np.float64), [1.0, 1, 1, 0, 0, 0])
    if ok:
        return 1.0, "style bias initialised to gamma = 1, beta = 0"
    return 0.0, "the style bias must start at gamma = 1 (first C entries) and beta = 0 (last C entries)"


def adain_outputs_check(outputs, inputs):
    from mtlkit.models.tsn import AdaINConv

    expected, problems = {}, []
    for name, (c_in, c_out, k, d, _, _) in ADAIN_CASES.items():
        reference = AdaINConv(c_in, c_out, k, d).double()
        problem = load_checked(reference, outputs, inputs, f"own_{name}", f"weights_{name}", "your AdaINConv")
        if problem:
            problems.append(problem)
            continue
        with torch.no_grad():
            expected[f"y_{name}"] = reference(t64(inputs, f"x_{name}"), t64(inputs, f"w_{name}"))
    if problems:
        return 0.0, problems[0]
    return compare_all(outputs, expected, scaled=True)


# ------------------------------------------------------------------------------------------------ switching
SWITCH_TASKS = {"depth": 1, "normals": 3, "semseg": 6, "edge": 1}
SWITCH_CONFIG = dict(in_channels=5, widths=(6, 4, 7), code_dim=12, mapping_layers=3)


def switching_inputs(rng: np.random.Generator) -> dict:
    weights = random_state(_ReferenceSwitching(SWITCH_TASKS, **SWITCH_CONFIG), rng, keep=("codes",))  # codes: given
    for key in weights:
        if key.endswith("style.bias"):
            weights[key] = rng.standard_normal(weights[key].shape)  # trained-looking styles, so tasks really differ
    return {"x": rng.standard_normal((2, 5, 6, 5)), "weights": weights}


SWITCHING_CODE = f"""
torch.manual_seed(43)
_m = TaskSwitchingDecoder({SWITCH_TASKS!r}, **{SWITCH_CONFIG!r}).double()
emit("params", torch.tensor(sum(p.numel() for p in _m.parameters())))
emit("params_two_tasks", torch.tensor(sum(p.numel() for p in TaskSwitchingDecoder({{"semseg": 6, "depth": 1}},
                                                                                  **{SWITCH_CONFIG!r}).parameters())))
emit_weights("own", _m)
_m.load_state_dict({LOAD_WEIGHTS % "weights"})
_x = torch.from_numpy(load_input("x"))
with torch.no_grad():
    for _t in {tuple(SWITCH_TASKS)!r}:
        emit(_t, _m(_x, _t))
"""


class _ReferenceSwitching(nn.Module):
    """The task-switching decoder composed from the library's AdaINConv, MappingNetwork and task_codes."""

    def __init__(self, tasks, in_channels, widths, code_dim, mapping_layers):
        super().__init__()
        from mtlkit.models.tsn import AdaINConv, MappingNetwork, task_codes

        self.tasks = dict(tasks)
        self.register_buffer("codes", task_codes(len(tasks), code_dim))
        self.mapping = MappingNetwork(code_dim, mapping_layers)
        chans = (in_channels, *widths)
        self.blocks = nn.ModuleList([AdaINConv(a, b, 3, code_dim) for a, b in zip(chans[:-1], chans[1:])])
        self.head = nn.Conv2d(widths[-1], max(tasks.values()), 1)

    def forward(self, x, task):
        i = list(self.tasks).index(task)
        w = self.mapping(self.codes[i:i + 1])
        for block in self.blocks:
            x = block(x, w)
        return self.head(x)[:, : self.tasks[task]]


def switching_check(outputs, inputs):
    reference = _ReferenceSwitching(SWITCH_TASKS, **SWITCH_CONFIG).double()
    problem = load_checked(reference, outputs, inputs, "own", "weights", "your decoder")
    if problem:
        return 0.0, problem
    x = t64(inputs, "x")
    with torch.no_grad():
        expected = {t: reference(x, t) for t in SWITCH_TASKS}
    return compare_all(outputs, expected, scaled=True)


def switching_params_check(outputs, inputs):
    if "params" not in outputs or "params_two_tasks" not in outputs:
        return 0.0, "building the decoder raised an error (see the log)"
    n = sum(p.numel() for p in _ReferenceSwitching(SWITCH_TASKS, **SWITCH_CONFIG).parameters())
    got, two = (int(np.array(outputs[k]).reshape(-1)[0]) for k in ("params", "params_two_tasks"))
    ok = got == n == two
    return float(ok), f"parameters with 4 tasks: {got:,}, with 2 tasks: {two:,}" + (
        "" if ok else " (expected the specified count, independent of the number of tasks)")


PROBES = [
    Probe("ulsam_check", 4, ULSAM_CODE, ulsam_check, inputs=ulsam_inputs, solution_ids=("ulsam",), forbid=FORBID,
          description="ULSAM on hidden channels/groups: parameters, attention maps, eval and train outputs"),
    Probe("adain_check.init", 1, ADAIN_CODE, adain_init_check, inputs=adain_inputs, solution_ids=("adain",),
          forbid=FORBID, description="AdaINConv's style bias initialisation"),
    Probe("adain_check.outputs", 3, ADAIN_CODE, adain_outputs_check, inputs=adain_inputs, solution_ids=("adain",),
          forbid=FORBID, description="AdaINConv on hidden inputs and embeddings (incl. a 1x1 map)"),
    Probe("switching_check.params", 1, SWITCHING_CODE, switching_params_check, inputs=switching_inputs,
          solution_ids=("adain", "switching"), forbid=FORBID,
          description="task-switching decoder: parameter count independent of the number of tasks"),
    Probe("switching_check.outputs", 3, SWITCHING_CODE, switching_check, inputs=switching_inputs,
          solution_ids=("adain", "switching"), forbid=FORBID,
          description="task-switching decoder: every task's output on a hidden input"),
]
