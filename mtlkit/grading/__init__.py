"""Assignments: release the student version and grade submissions in a sandbox (see assignments/GRADING.md).

Modules: :mod:`~mtlkit.grading.spec` (what an assignment's grading.py declares), :mod:`~mtlkit.grading.cells`
(nbgrader cells: parse, stub, splice), :mod:`~mtlkit.grading.release`, :mod:`~mtlkit.grading.sandbox` (the child's
limits and isolation), :mod:`~mtlkit.grading.child` (runs inside it), :mod:`~mtlkit.grading.grade` and
:mod:`~mtlkit.grading.feedback` (gradebook and per-student feedback), :mod:`~mtlkit.grading.hidden` (the hidden
test splits of PS1 and PS5, one per assignment from the instructor's secret).
"""
