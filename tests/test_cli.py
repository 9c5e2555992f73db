"""The `mtlkit` command as a user meets it."""
import subprocess
import sys

import pytest

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


# ------------------------------------------------------------------ where things are: one rule, from anywhere
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture
def installed_as_wheel(tmp_path, monkeypatch):
    """mtlkit as a wheel install sees it: the package's parent folder is not a checkout; an empty user cache."""
    monkeypatch.setattr("mtlkit.paths._PACKAGE_PARENT", tmp_path / "site-packages")
    monkeypatch.delenv("MTLKIT_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path


def test_data_dir_is_the_env_var_else_the_checkout_else_the_user_cache(installed_as_wheel, monkeypatch):
    from mtlkit import paths

    elsewhere = installed_as_wheel / "somewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert paths.data_dir() == installed_as_wheel / "xdg" / "mtlkit"  # outside any checkout
    assert paths.notebooks_dir() is None and paths.assignments_source_dir() is None
    monkeypatch.chdir(REPO / "notebooks")  # a notebook's kernel: the checkout's data/, not notebooks/data
    assert paths.data_dir() == REPO / "data" and paths.notebooks_dir() == REPO / "notebooks"
    monkeypatch.chdir(REPO)
    assert paths.data_dir() == REPO / "data"
    monkeypatch.setenv("MTLKIT_DATA_DIR", str(elsewhere))
    assert paths.data_dir() == elsewhere


def test_the_editable_checkout_decides_wherever_the_command_runs(tmp_path, monkeypatch):
    from mtlkit import paths

    monkeypatch.delenv("MTLKIT_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert paths.checkout_root() == REPO and paths.data_dir() == REPO / "data"


def test_doctor_creates_nothing_in_a_random_folder(installed_as_wheel, monkeypatch, capsys):
    cwd = installed_as_wheel / "random"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert not any(cwd.iterdir())  # no ./data
    assert not (installed_as_wheel / "xdg").exists()  # the user cache is created on first real use, not here
    assert f"data dir       {installed_as_wheel / 'xdg' / 'mtlkit'}" in out and "created on first use" in out
    assert "--notebooks-dir" in out and "registry" in out


def test_assignments_outside_a_checkout_say_how_to_point_at_them(installed_as_wheel, monkeypatch, capsys):
    monkeypatch.chdir(installed_as_wheel)
    assert main(["assignments", "list"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not inside an mtlkit checkout" in err and "--source DIR" in err and len(err.splitlines()) == 1
    assert main(["assignments", "list", "--source", str(REPO / "assignments" / "source")]) == 0
    assert "PS1" in capsys.readouterr().out


def test_data_list_reads_the_registry_shipped_in_the_package(installed_as_wheel, monkeypatch, capsys):
    monkeypatch.chdir(installed_as_wheel)
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "oxford-pet" in out and str(installed_as_wheel / "xdg" / "mtlkit") in out


# ------------------------------------------------------------------ the command itself
def test_bare_commands_print_usage_and_fail(capsys):
    for argv in ([], ["data"], ["assignments"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "usage:" in err and "a command is required" in err


def test_version_and_python_dash_m(capsys):
    from mtlkit import __version__

    with pytest.raises(SystemExit) as exc:
        main(["-V"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"mtlkit {__version__}"
    result = subprocess.run([sys.executable, "-m", "mtlkit", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"mtlkit {__version__}"


def test_help_imports_no_torch():
    code = "import sys; from mtlkit.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n" \
           "assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for sub in (["reproduce", "--help"], ["data", "list", "--help"], ["doctor", "--help"]):
        result = subprocess.run([sys.executable, "-c", code.replace("['--help']", repr(sub))], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, (sub, result.stderr)


def test_reproduce_help_says_where_notebooks_come_from(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--notebooks-dir DIR" in out and "checkout" in out and "--dry-run" in out
