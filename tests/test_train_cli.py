"""``mtlkit train``: bad model options and a bad ``--out`` end in one ``mtlkit: error:`` line that names the flag
and the fix, before any data is built or any epoch runs; a good command trains and records what it was given."""
from __future__ import annotations

import json
import time

import pytest

from mtlkit.cli import main as mtlkit_main
from mtlkit.train_cli import check_out_dir, main, model_option_keys

UNIT = ["--data", "synthetic-nyu", "--preset", "unit", "--model", "tiny", "--epochs", "1", "--batch-size", "4",
        "--no-progress"]


def _error_line(capsys, argv) -> str:
    code = mtlkit_main(["train", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("mtlkit: error: "), err  # one line, no traceback
    return err[0]


@pytest.mark.parametrize("option,expect", [
    ("width=abc", "--model-opt width='abc': model tiny expects an integer (default 8); valid keys: width=8"),
    ("widht=8", "--model-opt widht: model tiny has no option 'widht'; valid keys: width=8"),
])
def test_bad_model_option_is_one_line_with_the_valid_keys(tmp_path, capsys, option, expect):
    out = tmp_path / "run"
    line = _error_line(capsys, [*UNIT, "--model-opt", option, "--out", str(out)])
    assert line == f"mtlkit: error: {expect}"
    assert not (out / "metrics.json").exists()


def test_out_under_a_file_fails_before_training(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("not a folder")
    t0 = time.perf_counter()
    line = _error_line(capsys, [*UNIT, "--out", str(tmp_path / "file.txt" / "run")])
    assert "file.txt is a file, not a folder; choose another --out" in line
    assert time.perf_counter() - t0 < 60  # generous: the point is that no epoch ran (it fails before the data)
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_out_dir(tmp_path / "file.txt")
    assert check_out_dir(tmp_path / "new" / "run").is_dir()


def test_bad_trainer_option_names_the_option(tmp_path, capsys):
    line = _error_line(capsys, [*UNIT, "--max-steps", "0", "--out", str(tmp_path / "run")])
    assert line == "mtlkit: error: max_steps=0: must be None or an integer >= 1"


def test_model_option_keys_follow_the_builder_to_the_class():
    assert list(model_option_keys("tiny")) == ["width"]
    keys = model_option_keys("deeplab-joint")  # builder(**options) -> DeepLabV3PlusJoint(...) -> its base class
    assert keys is not None and {"encoder", "output_stride", "aspp", "skip"} <= set(keys)
    assert model_option_keys("no-such-model") is None


def test_max_steps_from_the_command_line_records_a_capped_run(tmp_path, capsys):
    out = tmp_path / "dry"
    assert main([*UNIT, "--model-opt", "width=4", "--max-steps", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "capped at 1 steps per pass" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["max_steps"] == 1 and metrics["capped"]["cut"]
    assert metrics["config"]["model_options"] == {"width": 4}
    # the same command again says that the run was already finished, and trains nothing
    assert main([*UNIT, "--model-opt", "width=4", "--max-steps", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "already finished its 1 epoch(s)" in err and "--no-resume trains afresh" in err
    assert json.loads((out / "metrics.json").read_text())["epochs"] == metrics["epochs"]
