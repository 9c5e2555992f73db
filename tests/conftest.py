"""Shared test set-up: a temporary MTLKIT_DATA_DIR for every session, and the ``notebooks`` / ``slow`` markers.

Markers are given here by node id, so test files stay unmarked and one list says what `make test-fast` skips
(``-m "not notebooks and not slow"``). A test is slow when it takes more than a few seconds on a quiet 2-core CPU:
it trains, starts subprocesses (torchrun, papermill, the grading sandbox) or grades real assignments. The list was
measured with ``python -m pytest tests/test_x.py --durations=0`` file by file; re-measure when adding heavy tests.
"""
from __future__ import annotations

import pytest

#: Node-id prefixes of slow tests (a prefix without "[...]" covers every parametrisation).
SLOW: tuple[str, ...] = (
    # resume after SIGKILL and the two-identical-runs check train several epochs each
    "tests/test_trainer.py::test_resume_after_sigkill_matches_uninterrupted_run",
    "tests/test_trainer.py::test_two_runs_are_identical",
    # torchrun with two processes (a module fixture trains under DDP)
    "tests/test_ddp.py::",
    # papermill runs of real notebooks, SIGKILL and the submitit executor
    "tests/test_reproduce.py::test_sigkill_of_the_whole_command_then_rerun_redoes_the_run",
    "tests/test_reproduce.py::test_runs_land_in_folders_failures_are_recorded_and_results_tabled",
    "tests/test_reproduce.py::test_slurm_executor_falls_back_to_local_processes_through_submitit",
    "tests/test_reproduce.py::test_second_invocation_skips_recorded_runs_and_retry_failed_reruns_only_failures",
    # the doctor trains two steps in a subprocess; data synth + show renders scenes and a PNG
    "tests/test_cli.py::test_doctor_trains_two_steps_and_says_ok",
    "tests/test_cli.py::test_data_synth_and_show_write_a_cache_and_a_png",
    # the benchmarks' quick pass (a module fixture runs every benchmark once) and a build of every model
    "tests/test_benchmarks.py::test_quick_",
    "tests/test_benchmarks.py::test_every_registered_model_has_a_benchmark_configuration",
    # two processes race to build the same cache; the cross-stitch recorder trains a network for two epochs
    "tests/test_data_cache.py::test_two_processes_building_the_same_cache_at_once",
    "tests/test_cross_stitch.py::test_recorder_writes_alphas_per_epoch",
    # the first set-up synthesises the smoke scenes of a whole dataset; train-or-load trains, then loads
    "tests/test_course.py::test_deeplab_setup_applies_the_study_schedule_and_the_overrides",
    "tests/test_course.py::test_second_call_loads_identical_weights_without_training",
    # sandboxed grading of the real assignments and the attack corpus (one child process per submission)
    "tests/test_grading.py::test_real_assignments_instructor_solutions_get_full_marks",
    "tests/test_grading.py::test_real_assignments_are_consistent",
    "tests/test_grading.py::test_feedback_reveals_no_hidden_tests",  # these three share the graded corpus fixture
    "tests/test_grading.py::test_gradebook_has_nbgrader_columns",
    "tests/test_grading.py::test_sandbox_mode_is_recorded",
    "tests/test_grading.py::test_forged_weights_earn_nothing_on_the_shipped_assignments",
    "tests/test_grading.py::test_attack_is_graded_as_it_should",
    "tests/test_grading.py::test_leaderboard_grades_submitted_weights_without_training",
    "tests/test_grading.py::test_slurm_executor_through_submitit_locally",
    "tests/test_grading.py::test_nothing_a_submission_writes_to_tmp_stays",  # the graded corpus fixture (~45 s)
    "tests/test_grading.py::test_gradebook_cells_never_start_a_formula",
    "tests/test_grading.py::test_written_answers_are_reported_for_manual_grading",
    # one fresh interpreter per module (~15 s); the stand-in pretraining tests train the encoder several times
    "tests/test_imports.py::test_every_module_imports_alone_in_a_fresh_interpreter",
    "tests/test_pretrain.py::",
)


def _is_notebook_item(item: pytest.Item) -> bool:
    """nbval's cells of notebooks/NN_topic.ipynb (the re-execution of a golden)."""
    return item.nodeid.split("::", 1)[0].endswith(".ipynb")


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m deselection sees the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _is_notebook_item(item):
            item.add_marker(pytest.mark.notebooks)
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def mtlkit_data_dir(tmp_path_factory: pytest.TempPathFactory):
    """Point ``MTLKIT_DATA_DIR`` at a session-wide temp folder (caches built once are shared by all tests)."""
    path = tmp_path_factory.mktemp("mtlkit-data")
    patch = pytest.MonkeyPatch()
    patch.setenv("MTLKIT_DATA_DIR", str(path))
    yield path
    patch.undo()
