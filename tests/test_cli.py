"""The `mtlkit` command as a user meets it."""
import subprocess
import sys

from mtlkit.cli import main


def test_help_lists_the_commands(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for command in ("doctor", "data", "train", "reproduce"):
        assert command in out


def test_console_script_is_installed():
    exe = __import__("shutil").which("mtlkit") or str(__import__("pathlib").Path(sys.executable).parent / "mtlkit")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "doctor" in result.stdout


def test_doctor_trains_two_steps_and_says_ok(capsys):
    code = main(["doctor"])
    out = capsys.readouterr().out
    assert code == 0, out
    for label in ("python", "torch", "torchvision", "timm", "CUDA", "threads", "data dir", "training"):
        assert label in out
    assert out.strip().endswith("OK")


def test_doctor_reports_an_unwritable_data_dir(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # a data dir below a file cannot be created, even by root
    monkeypatch.setenv("MTLKIT_DATA_DIR", str(blocker / "data"))
    code = main(["doctor"])
    out = capsys.readouterr().out
    assert code == 1
    assert "not writable" in out and "MTLKIT_DATA_DIR" in out


def test_unknown_dataset_is_a_clear_one_line_error(capsys):
    code = main(["data", "show", "synthetic-nope", "--preset", "unit"])
    err = capsys.readouterr().err
    assert code == 2
    assert "synthetic-nyu" in err  # the valid names are listed


def test_data_synth_and_show_write_a_cache_and_a_png(tmp_path, capsys):
    assert main(["data", "synth", "synthetic-pet", "--preset", "unit", "--jobs", "1"]) == 0
    assert "synthetic-pet" in capsys.readouterr().out
    out = tmp_path / "grid.png"
    assert main(["data", "show", "synthetic-pet", "--preset", "unit", "--n", "2", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width = matplotlib.image.imread(out).shape[:2]
    assert height > 100 and width > 100  # two rows of image + labels, not an empty canvas
