"""What an assignment's parent-side grading spec (``assignments/source/<PS>/grading.py``) declares.

The grader never runs hidden tests inside the student's process. For every hidden test the spec gives a
:class:`Probe`: code that runs in the child *after* the student's notebook (it calls the student's functions on
inputs the parent wrote and hands back plain arrays with ``emit``), and a ``check`` that runs in the parent on those
arrays, with expected values from mtlkit's own implementation and the parent's weights.

A ``grading.py`` defines ``PROBES: list[Probe]`` and may define ``LEADERBOARD`` and ``NEEDS_SECRET = True``.
``Probe.code`` and the hidden inputs are visible to the student's code: they must hold nothing secret.
The child-side helpers, the weights rule and the secret: assignments/GRADING.md, "How the sandbox works";
writing a spec: assignments/README.md.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Probe", "CheckResult"]

# check(outputs, inputs) -> (fraction of the points earned in [0, 1], message shown to the student).
# ``outputs``: arrays the probe emitted (missing names mean the probe failed before emitting them);
# ``inputs``: the arrays Probe.inputs produced (so the check can recompute the reference on them).
CheckResult = tuple[float, str]


@dataclass(frozen=True)
class Probe:
    """One hidden test of an assignment.

    Attributes:
        grade_id: unique id within the assignment; the gradebook and feedback name the test by it.
        points: the points it is worth.
        code: Python source run in the child after the notebook's cells (student solutions spliced in).
        check: parent-side comparison, ``check(outputs, inputs) -> (fraction, message)``; messages must not
            reveal expected values beyond what the public checks already print.
        inputs: ``inputs(rng) -> {name: array or {key: array}}``, hidden inputs written for the child (``rng`` is
            seeded by the grader per assignment, so every student gets the same inputs); a mapping is a set of
            weights, read in the child with ``load_weights(name)``.
        solution_ids: grade ids of the solution cells this test exercises (for the feedback).
        forbid: source patterns (regular expressions) that must not appear in those solution cells, checked in the
            parent before anything runs (e.g. importing the library's reference ``ASPP`` in an "implement ASPP" task).
        timeout_s: wall-clock limit for this probe inside the child's overall limit.
        description: one line for the feedback.
    """

    grade_id: str
    points: float
    code: str
    check: Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], CheckResult]
    inputs: Callable[[np.random.Generator], dict[str, np.ndarray]] | None = None
    solution_ids: tuple[str, ...] = ()
    forbid: tuple[str, ...] = ()
    timeout_s: float = 60.0
    description: str = ""
    extra: dict = field(default_factory=dict)
