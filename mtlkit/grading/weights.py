"""Parent-side helpers for probes that test a student's module with weights the grader chooses.

A module's output can only be checked against the reference with the same weights. Weights the submission reports
(``emit_weights`` of its own module) are its word alone: a module that zeroes its layers, or overrides
``state_dict``, makes the reference output zeros, which it can match without implementing anything. So the probe's
``inputs`` draws the weights here (:func:`random_state`, from the reference module's names and shapes), the child
loads them into the student's module (``module.load_state_dict`` of ``load_weights(name)``, strict), and the check
loads the same weights into the reference (:func:`load_state`). What the child emits of its own module's state is
used for feedback on names and shapes only (:func:`structure_problem`).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["random_state", "load_state", "structure_problem", "emitted_state"]


def random_state(module, rng: np.random.Generator, keep: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Random float64 values for every floating entry of ``module.state_dict()`` (names and shapes as there).

    Weights with 2+ dims ~ N(0, 1/fan_in); 1-d ``weight`` (norm scales) ~ U(0.5, 1.5); 1-d biases ~ U(-0.5, 0.5);
    BatchNorm ``running_mean`` ~ U(-0.2, 0.2), ``running_var`` ~ U(0.5, 2). Non-floating entries
    (``num_batches_tracked``) and the keys in ``keep`` (e.g. given buffers) keep the module's own values.
    """
    keep = set(keep)
    out = {}
    for key, value in module.state_dict().items():
        array = value.detach().cpu().numpy()
        leaf = key.rsplit(".", 1)[-1]
        if key in keep or not np.issubdtype(array.dtype, np.floating):
            out[key] = np.array(array, order="C")  # (np.ascontiguousarray makes 0-d arrays 1-d)
        elif leaf == "running_var":
            out[key] = rng.uniform(0.5, 2.0, array.shape)
        elif leaf == "running_mean":
            out[key] = rng.uniform(-0.2, 0.2, array.shape)
        elif array.ndim >= 2:
            fan_in = max(1, array.size // max(1, array.shape[0]))
            out[key] = rng.standard_normal(array.shape) / np.sqrt(fan_in)
        elif leaf == "weight":
            out[key] = rng.uniform(0.5, 1.5, array.shape)
        else:
            out[key] = rng.uniform(-0.5, 0.5, array.shape)
    return out


def load_state(reference, weights: Mapping[str, np.ndarray]):
    """``reference`` with ``weights`` loaded (strict), each in the reference's own dtype; returns ``reference``."""
    import torch

    expected = reference.state_dict()
    reference.load_state_dict({k: torch.as_tensor(np.asarray(v)).to(expected[k].dtype) for k, v in weights.items()})
    return reference


def emitted_state(outputs: Mapping, name: str) -> dict[str, np.ndarray] | None:
    """The state the child emitted with ``emit_weights(name, ...)``, or None when none came back."""
    state = outputs.get(name)
    return dict(state) if isinstance(state, Mapping) and state else None


def structure_problem(reference, state: Mapping[str, np.ndarray] | None, what: str = "your module") -> str | None:
    """A message when the student's own state (names, shapes) differs from the reference's; None when it fits."""
    if state is None:
        return f"building {what} raised an error (see the log)"
    expected = reference.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        return (f"the parameters of {what} do not have the names the skeleton fixes: missing {missing[:6]}, "
                f"unexpected {unexpected[:6]} (keep the attribute names of the docstring)")
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(np.shape(state[k]))]
    if wrong:
        return f"parameter shapes differ from the specification: {[(k, tuple(np.shape(state[k]))) for k in wrong[:4]]}"
    return None
