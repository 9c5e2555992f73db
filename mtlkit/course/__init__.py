"""The course notebooks' shared code: one module per notebook family, the setup / run / results helpers.

``course.<family>.setup(PRESET, ...)`` (``deeplab`` for 01-05, ``pet`` 06, ``nyu`` 07, ``broden`` 08, ``pascal`` 09)
returns a :class:`Setup`; ``course.run(setup, name, model, tasks, ...)`` trains (or loads) one model;
``course.predict(model, images)`` runs it wherever it lives; the results helpers (:mod:`mtlkit.course.results`)
build the summary rows, Δm and the course table.
"""
from mtlkit.course import broden, deeplab, nyu, pascal, pet
from mtlkit.course.common import (PRESETS, TRAINER_KEYS, Run, Setup, TaskSubset, check_preset, draw_row, first_images,
                                  fingerprint, labelled_splits, labelled_tasks, load_splits, make_setup,
                                  model_device, predict, relative_error, run, run_fingerprint,
                                  start_depth_at_train_mean, state_digest, subset, train_or_load)
from mtlkit.course.deeplab import DEEPLAB_SCHEDULES, REFERENCE_RESULTS, deeplab_schedule
from mtlkit.course.references import reference_table
from mtlkit.course.results import (course_table, delta_m_or_nan, find_results, print_course_table,
                                   relative_to_single, results_table, summarize, task_metric_columns,
                                   write_notebook_results)

__all__ = ["PRESETS", "TRAINER_KEYS", "Run", "Setup", "TaskSubset", "check_preset", "draw_row", "first_images",
           "fingerprint", "labelled_splits", "labelled_tasks", "load_splits", "make_setup", "model_device", "predict",
           "relative_error", "run", "run_fingerprint", "start_depth_at_train_mean", "state_digest", "subset",
           "train_or_load",
           "DEEPLAB_SCHEDULES", "REFERENCE_RESULTS", "deeplab_schedule", "course_table", "delta_m_or_nan",
           "find_results", "print_course_table", "reference_table", "relative_to_single", "results_table", "summarize",
           "task_metric_columns", "write_notebook_results", "broden", "deeplab", "nyu", "pascal", "pet"]
