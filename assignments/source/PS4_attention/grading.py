"""PS4 (ULSAM, AdaIN, task switching) hidden tests, run by ``mtlkit grade`` (parent side; never copied to students).

The child builds the student's modules on hidden configurations, emits their weights and outputs on hidden inputs;
here ``mtlkit.models.ulsam.ULSAM`` and ``mtlkit.models.tsn`` (AdaINConv, MappingNetwork, task_codes) get the same
weights and inputs, and the outputs are compared.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn as nn

from mtlkit.course import relative_error
from mtlkit.grading.spec import Probe

TOLERANCE = 1e-7  # float64 on both sides
SCALED_TOLERANCE = 1e-6  # AdaIN: the library's instance-norm statistics are float32
FORBID = (r"\bmtlkit\b", r"\bInstanceNorm\b", r"TaskSwitchingNet", r"UNetDecoder", r"__import__", r"\bimportlib\b",
          r"sys\.modules", r"\bexec\s*\(", r"\beval\s*\(", r"\bglobals\s*\(", r"builtins", r"__subclasses__",
          r"__globals__", r"\bcheck_\w+\s*\(", r"reference_switching")


def weights_of(outputs: Mapping, name: str) -> dict[str, torch.Tensor]:
    """The state_dict emitted with ``emit_weights(name, ...)`` (a mapping, or flat ``name.<key>`` arrays)."""
    if isinstance(outputs.get(name), Mapping):
        flat = dict(outputs[name])
    else:
        flat = {k[len(name) + 1:]: v for k, v in outputs.items() if k.startswith(name + ".")}
    if not flat:
        raise KeyError(name)
    return {k: torch.from_numpy(np.array(v)) for k, v in flat.items()}


def load_into(reference: nn.Module, outputs: Mapping, name: str) -> str | None:
    """Strict load of the emitted weights ``name``; a message naming the problem, or None."""
    try:
        state = weights_of(outputs, name)
    except KeyError:
        return "no weights came back (building your module raised an error; see the log)"
    expected = reference.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        return (f"parameter names differ from the skeleton's: missing {missing[:6]}, unexpected {unexpected[:6]} "
                "(keep the attribute names of the docstring)")
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if wrong:
        return f"parameter shapes differ: {[(k, tuple(state[k].shape)) for k in wrong[:4]]}"
    reference.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
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


def ulsam_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((2, 24, 5, 9))}


ULSAM_CODE = """
torch.manual_seed(41)
_m = randomize_norms(ULSAM(24, 6).double(), seed=9)
emit("params", torch.tensor(sum(p.numel() for p in _m.parameters())))
emit_weights("ulsam", _m)
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
    problem = load_into(reference, outputs, "ulsam")
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


def adain_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for name, (c_in, c_out, k, d, shape, rows) in ADAIN_CASES.items():
        out[f"x_{name}"], out[f"w_{name}"] = rng.standard_normal(shape), rng.standard_normal((rows, d))
    return out


ADAIN_CODE = f"""
torch.manual_seed(42)
emit_weights("fresh", AdaINConv(4, 3, 3, 5))
for _name, (_ci, _co, _k, _d, _shape, _rows) in {ADAIN_CASES!r}.items():
    _m = AdaINConv(_ci, _co, _k, _d).double()
    with torch.no_grad():
        _m.style.bias.normal_()
    emit_weights("m_" + _name, _m)
    with torch.no_grad():
        emit("y_" + _name, _m(torch.from_numpy(load_input("x_" + _name)), torch.from_numpy(load_input("w_" + _name))))
"""


def adain_init_check(outputs, inputs):
    try:
        fresh = weights_of(outputs, "fresh")
    except KeyError:
        return 0.0, "AdaINConv(4, 3, 3, 5) raised an error (see the log)"
    if "style.bias" not in fresh:
        return 0.0, f"AdaINConv's parameters are {sorted(fresh)}; expected conv.* and style.*"
    ok = torch.equal(fresh["style.bias"].double(), torch.tensor([1.0, 1, 1, 0, 0, 0], dtype=torch.float64))
    if ok:
        return 1.0, "style bias initialised to gamma = 1, beta = 0"
    return 0.0, "the style bias must start at gamma = 1 (first C entries) and beta = 0 (last C entries)"


def adain_outputs_check(outputs, inputs):
    from mtlkit.models.tsn import AdaINConv

    expected, problems = {}, []
    for name, (c_in, c_out, k, d, _, _) in ADAIN_CASES.items():
        reference = AdaINConv(c_in, c_out, k, d).double()
        problem = load_into(reference, outputs, f"m_{name}")
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


def switching_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((2, 5, 6, 5))}


SWITCHING_CODE = f"""
torch.manual_seed(43)
_m = TaskSwitchingDecoder({SWITCH_TASKS!r}, **{SWITCH_CONFIG!r}).double()
with torch.no_grad():
    for _b in _m.blocks:
        _b.style.bias.normal_()
emit_weights("switching", _m)
emit("params", torch.tensor(sum(p.numel() for p in _m.parameters())))
emit("params_two_tasks", torch.tensor(sum(p.numel() for p in TaskSwitchingDecoder({{"semseg": 6, "depth": 1}},
                                                                                  **{SWITCH_CONFIG!r}).parameters())))
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
    problem = load_into(reference, outputs, "switching")
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
