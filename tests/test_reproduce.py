"""`mtlkit reproduce` on throwaway notebooks: run folders, resumption, failures, grids, executors, results tables."""
import json

import nbformat
import pandas as pd
import pytest

from mtlkit.cli import main
from mtlkit.reproduce import parse_grid

# A notebook that reports a joint model and a single-task depth baseline, whose numbers depend on its parameters:
# joint abs_err = 1 + SEED, single-depth abs_err = 2 (so survey Δm = -(1 + SEED - 2) / 2 = (1 - SEED) / 2 * 100 %).
WRITE_METRICS = """
import json, pathlib
rows = {"joint": {"depth/abs_err": 1.0 + SEED, "parameters_M": 2.0}, "single-depth": {"depth/abs_err": 2.0}}
import os; pathlib.Path(OUT_DIR, "threads.txt").write_text(os.environ.get("OMP_NUM_THREADS", "unset"))
pathlib.Path(OUT_DIR, "metrics.json").write_text(json.dumps({"notebook": "00_ok", "preset": PRESET, "runs": rows}))
"""


def _notebook(path, body):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('PRESET = "smoke"\nOUT_DIR = "."\nDEVICE = "auto"\nSEED = 0')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def course(tmp_path):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    _notebook(nbdir / "00_ok.ipynb", WRITE_METRICS)
    _notebook(nbdir / "01_broken.ipynb", "raise ValueError('the model exploded')")
    return nbdir, tmp_path / "runs"


def reproduce(course, *extra):
    nbdir, out = course
    return main(["reproduce", "--preset", "unit", "--notebook-dir", str(nbdir), "--out", str(out), *extra])


def test_runs_land_in_folders_failures_are_recorded_and_results_tabled(course, capsys):
    nbdir, out = course
    assert reproduce(course) == 1  # something failed, and the command says which
    text = capsys.readouterr().out
    assert "FAILED 01_broken" in text and "ValueError" in text and "the model exploded" in text
    ok = out / "00_ok"
    assert (ok / "00_ok.ipynb").exists() and json.loads((ok / "run.json").read_text())["status"] == "ok"
    assert (out / "01_broken" / "error.txt").exists() and (out / "01_broken" / "01_broken.failed.ipynb").exists()

    table = pd.read_csv(out / "results.csv")
    joint = table[table["model"] == "joint"].iloc[0]
    assert joint["depth/abs_err"] == 1.0 and joint["parameters_M"] == 2.0
    assert joint["delta_m"] == pytest.approx(50.0)  # -(1 - 2) / 2 = +50 %: lower error is better
    assert pd.isna(table[table["model"] == "single-depth"].iloc[0]["delta_m"])
    assert (table[table["notebook"] == "01_broken"]["status"] == "failed").all()
    assert "| notebook |" in (out / "results.md").read_text()
    summary = next(line.split() for line in text.splitlines() if line.split()[:2] == ["00_ok", "joint"])
    assert summary[2:4] == ["50", "2"]  # the printed summary: Δm and parameters of the joint row


def test_second_invocation_skips_recorded_runs_and_retry_failed_reruns_only_failures(course, capsys):
    nbdir, out = course
    reproduce(course)
    stamp = (out / "00_ok" / "run.json").stat().st_mtime_ns
    assert reproduce(course) == 1  # the failure is still reported, nothing re-executed
    text = capsys.readouterr().out
    assert "0 to execute" in text and "--retry-failed" in text
    assert (out / "00_ok" / "run.json").stat().st_mtime_ns == stamp

    _notebook(nbdir / "01_broken.ipynb", "x = 1  # fixed")
    assert reproduce(course, "--retry-failed") == 0
    assert json.loads((out / "01_broken" / "run.json").read_text())["status"] == "ok"
    assert (out / "00_ok" / "run.json").stat().st_mtime_ns == stamp


def test_a_run_killed_midway_is_redone(course):
    nbdir, out = course
    half = out / "00_ok"
    half.mkdir(parents=True)
    (half / "00_ok.partial.ipynb").write_text("{truncated")  # what a SIGKILL leaves behind: no run.json
    assert reproduce(course, "--notebooks", "00") == 0
    assert not (half / "00_ok.partial.ipynb").exists()
    assert json.loads((half / "run.json").read_text())["status"] == "ok"


def test_seed_grid_in_parallel_gives_mean_and_std(course, monkeypatch):
    nbdir, out = course
    monkeypatch.setenv("OMP_NUM_THREADS", "0")  # records the original, so the value reproduce sets is undone
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert reproduce(course, "--notebooks", "00", "--grid", "SEED=0,1", "--jobs", "2") == 0
    assert (out / "00_ok__SEED=1" / "threads.txt").read_text() == "2"  # 4 cores shared by 2 kernels
    assert (out / "00_ok__SEED=0" / "metrics.json").exists() and (out / "00_ok__SEED=1" / "metrics.json").exists()
    by_seed = (out / "results_by_seed.md").read_text()
    joint = next(line for line in by_seed.splitlines() if "| joint |" in line)
    assert "1.5 ± 0.5" in joint  # abs_err 1 and 2 over the two seeds


def test_slurm_executor_falls_back_to_local_processes_through_submitit(course, capsys):
    nbdir, out = course
    assert reproduce(course, "--notebooks", "00", "--executor", "slurm") == 0
    assert "local executor" in capsys.readouterr().out
    assert json.loads((out / "00_ok" / "run.json").read_text())["status"] == "ok"
    assert any((out / "slurm").iterdir())  # submitit's job folders


def test_bad_grids_are_refused_before_anything_runs(course, capsys):
    nbdir, out = course
    assert reproduce(course, "--grid", "LR=0.1,0.01") == 2
    assert "no notebook has a parameter 'LR'" in capsys.readouterr().err
    assert reproduce(course, "--notebooks", "00", "--grid", "SEED=0,1,2", "--max-runs", "2") == 2
    assert "--yes" in capsys.readouterr().err
    assert reproduce(course, "--grid", "OUT_DIR=x") == 2
    assert not (out / "00_ok").exists()
    with pytest.raises(ValueError, match="KEY=v1,v2"):
        parse_grid(["SEED"])
    assert parse_grid(["SEED=0,1", "W=equal,dwa"]) == [
        {"SEED": 0, "W": "equal"}, {"SEED": 0, "W": "dwa"}, {"SEED": 1, "W": "equal"}, {"SEED": 1, "W": "dwa"}]


def test_results_folder_of_another_version_is_refused(course, capsys):
    nbdir, out = course
    out.mkdir(parents=True)
    (out / "reproduce.json").write_text(json.dumps({"mtlkit": "0.0.1", "preset": "unit"}))
    assert reproduce(course, "--notebooks", "00") == 2
    assert "written by mtlkit 0.0.1" in capsys.readouterr().err


def test_unknown_notebook_lists_the_available_ones(course, capsys):
    assert reproduce(course, "--notebooks", "07") == 2
    assert "00_ok" in capsys.readouterr().err


# A comparison notebook (like 10_comparison): it has a RESULTS_DIR parameter and counts the metrics.json it can see.
READ_RESULTS = """
import json, pathlib
seen = sorted(p.parent.name for p in pathlib.Path(OUT_DIR).parent.glob("*/metrics.json"))
pathlib.Path(OUT_DIR, "seen.json").write_text(json.dumps(seen))
"""


def test_a_results_reader_runs_once_after_every_grid_run(course):
    nbdir, out = course
    nb = nbformat.read(nbdir / "00_ok.ipynb", as_version=4)
    nb.cells[0].source += "\nRESULTS_DIR = None"
    nb.cells[1].source = READ_RESULTS
    nbformat.write(nb, nbdir / "02_compare.ipynb")
    # --jobs 2 would start the reader beside the grid runs if it were not held back until they finish
    assert reproduce(course, "--notebooks", "00", "02", "--grid", "SEED=0,1", "--jobs", "2") == 0
    assert not list(out.glob("02_compare__*"))  # no grid parameters: SEED means nothing to it
    assert json.loads((out / "02_compare" / "seen.json").read_text()) == ["00_ok__SEED=0", "00_ok__SEED=1"]
    assert (pd.read_csv(out / "results.csv")["status"] == "ok").all()


def test_delta_m_uses_each_runs_own_single_task_baselines(course):
    nbdir, out = course
    # another notebook on "another dataset": single-depth 4, joint 2 -> +50 % against its own baseline (pooling
    # both notebooks' baselines, mean 3, would give +33 % here and 0 % for 00_ok)
    _notebook(nbdir / "02_other.ipynb", WRITE_METRICS.replace("1.0 + SEED", "2.0").replace(
        '"depth/abs_err": 2.0}}', '"depth/abs_err": 4.0}}'))
    assert reproduce(course, "--notebooks", "00", "02") == 0
    table = pd.read_csv(out / "results.csv").set_index(["notebook", "model"])
    assert table.loc[("00_ok", "joint"), "delta_m"] == pytest.approx(50.0)
    assert table.loc[("02_other", "joint"), "delta_m"] == pytest.approx(50.0)


def test_sigkill_of_the_whole_command_then_rerun_redoes_the_run(course, tmp_path):
    """The real thing: SIGKILL `mtlkit reproduce` (its whole process group, kernel included) mid-run, run again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    nbdir, out = course
    block, started = tmp_path / "block", tmp_path / "started"
    block.touch()
    _notebook(nbdir / "02_slow.ipynb", f"""
import pathlib, time
if pathlib.Path({str(block)!r}).exists():  # the first invocation hangs here until it is killed
    pathlib.Path({str(started)!r}).touch()
    time.sleep(120)
{WRITE_METRICS}""")
    cmd = [sys.executable, "-m", "mtlkit.cli", "reproduce", "--preset", "unit", "--notebook-dir", str(nbdir),
           "--out", str(out), "--notebooks", "02"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert proc.poll() is None, "reproduce ended before the notebook started"
            assert time.monotonic() < deadline, "the notebook never started"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    run_dir = out / "02_slow"
    assert not (run_dir / "run.json").exists() or json.loads((run_dir / "run.json").read_text())["status"] != "ok"
    block.unlink()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((run_dir / "run.json").read_text())["status"] == "ok"
    assert json.loads((run_dir / "metrics.json").read_text())["runs"]["joint"]["depth/abs_err"] == 1.0
    assert not list(run_dir.glob("*.partial.ipynb"))


def _with_parameter(nbdir, name, extra, body=WRITE_METRICS):
    _notebook(nbdir / name, body)
    nb = nbformat.read(nbdir / name, as_version=4)
    nb.cells[0].source += "\n" + extra
    nbformat.write(nb, nbdir / name)


def test_a_grid_key_of_only_some_notebooks_applies_where_present_and_is_listed_where_not(course, capsys):
    nbdir, out = course
    _with_parameter(nbdir, "02_pretrained.ipynb", "PRETRAINED = True", WRITE_METRICS + """
pathlib.Path(OUT_DIR, "pretrained.txt").write_text(repr(PRETRAINED))""")
    assert reproduce(course, "--notebooks", "00", "02", "--grid", "PRETRAINED=False,True") == 0
    text = capsys.readouterr().out
    assert "00_ok: has no parameter PRETRAINED; runs without it" in text
    assert (out / "00_ok" / "run.json").exists() and not list(out.glob("00_ok__*"))  # one run, not one per value
    assert (out / "02_pretrained__PRETRAINED=False" / "pretrained.txt").read_text() == "'False'"


def test_notebook_output_streams_into_the_log_whose_path_is_printed_at_the_start(course, capsys):
    nbdir, out = course
    _notebook(nbdir / "02_talks.ipynb", """
import os, pathlib, time
print("run joint: epoch 1/2", flush=True)
log = pathlib.Path(OUT_DIR, "log.txt")
time.sleep(0.5)
pathlib.Path(OUT_DIR, "seen.txt").write_text(log.read_text())  # what the log held while the kernel still ran
print("progress mode:", os.environ.get("MTLKIT_PROGRESS"))
""")
    assert reproduce(course, "--notebooks", "02") == 0
    text = capsys.readouterr().out
    assert f"started 02_talks; live log: {out / '02_talks' / 'log.txt'}" in text
    assert text.index("live log") < text.index("ok     02_talks")  # printed when the run starts, not at the end
    assert "run joint: epoch 1/2" in (out / "02_talks" / "seen.txt").read_text()
    assert "progress mode: lines" in (out / "02_talks" / "log.txt").read_text()
    assert reproduce(course, "--notebooks", "02") == 0
    assert "02_talks: already finished, not rerun" in capsys.readouterr().out


def test_last_log_line_is_the_latest_progress_state(tmp_path):
    from mtlkit.reproduce import last_log_line

    log = tmp_path / "log.txt"
    assert last_log_line(log) == ""  # not there yet
    log.write_text("setting up\nrun joint: 10%|#  | 1/10\rrun joint: 20%|## | 2/10\n\n")
    assert last_log_line(log) == "run joint: 20%|## | 2/10"


def test_dry_run_caps_the_steps_where_it_can_and_reports_data_weights_and_cost(course, capsys):
    nbdir, out = course
    _with_parameter(nbdir, "01_broken.ipynb", 'PRETRAINED = False\nDATA = "auto"', "x = 1")
    _with_parameter(nbdir, "02_capped.ipynb", "MAX_STEPS = None", """
import json, pathlib
pathlib.Path(OUT_DIR, "metrics.json").write_text(json.dumps({"notebook": "02_capped", "preset": PRESET, "runs": {},
    "data": "miniscapes (twin)", "weights": "random init", "seconds_per_step": 0.5, "full_steps": 36 * MAX_STEPS}))
""")
    dry = out.parent / "dry"
    assert main(["reproduce", "--preset", "unit", "--notebooks-dir", str(nbdir), "--out", str(dry),
                 "--notebooks", "00", "01", "02", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "00_ok: has no parameter MAX_STEPS; runs without it" in text
    assert (dry / "02_capped__MAX_STEPS=2" / "run.json").exists()
    report = text[text.index("dry run (MAX_STEPS=2)"):]
    assert "data: miniscapes (twin)" in report and "weights: random init" in report
    assert "full run: 36 s (72 steps × 0.5 s" in report  # 36 * MAX_STEPS steps at 0.5 s
    assert "00_ok\n    data: not reported\n" in report and "unknown" in report
    assert 'data: not reported (parameter DATA="auto")' in report  # what 01 would load, from its parameters
    assert "weights: not reported (parameter PRETRAINED=False)" in report


def test_outside_a_checkout_it_says_where_it_looked_and_how_to_point_at_the_notebooks(monkeypatch, capsys):
    monkeypatch.setattr("mtlkit.paths.notebooks_dir", lambda: None)
    assert main(["reproduce", "--preset", "unit"]) == 2
    err = capsys.readouterr().err
    assert "no course notebooks found" in err and "--notebooks-dir" in err and len(err.strip().splitlines()) == 1


def test_presets_are_defined_once_and_everyone_uses_that_tuple():
    from mtlkit import course, data, presets, reproduce

    assert presets.PRESETS == ("unit", "smoke", "lesson", "paper")
    assert reproduce.PRESETS is presets.PRESETS and data.PRESETS is presets.PRESETS
    assert course.PRESETS is presets.PRESETS


def test_an_interrupted_kernel_is_not_recorded_as_failed_and_is_redone(course, capsys):
    nbdir, out = course
    _notebook(nbdir / "02_stopped.ipynb", "raise KeyboardInterrupt  # what Ctrl-C does to the running kernel")
    assert reproduce(course, "--notebooks", "02") == 130
    assert "INTERRUPTED 02_stopped" in capsys.readouterr().out
    assert not (out / "02_stopped" / "run.json").exists()  # nothing recorded: the next invocation redoes it
    _notebook(nbdir / "02_stopped.ipynb", WRITE_METRICS)
    assert reproduce(course, "--notebooks", "02") == 0
    assert json.loads((out / "02_stopped" / "run.json").read_text())["status"] == "ok"
