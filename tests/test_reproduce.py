"""`mtlkit reproduce` on throwaway notebooks: per-run folders, skipping finished runs, failures recorded, kills redone."""
import json

import nbformat
import pytest

from mtlkit.cli import main
from mtlkit.reproduce import parse_grid


def _notebook(path, body):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('PRESET = "smoke"\nOUT_DIR = "."\nDEVICE = "auto"\nVALUE = 1')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


WRITE_METRICS = (
    "import json, pathlib\n"
    "pathlib.Path(OUT_DIR, 'metrics.json').write_text(json.dumps({'preset': PRESET, 'value': VALUE}))"
)


@pytest.fixture
def course(tmp_path):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    _notebook(nbdir / "00_ok.ipynb", WRITE_METRICS)
    _notebook(nbdir / "01_broken.ipynb", "raise ValueError('the model exploded')")
    return nbdir, tmp_path / "runs"


def test_runs_land_in_their_folders_and_failures_are_recorded(course, capsys):
    nbdir, out = course
    code = main(["reproduce", "--preset", "unit", "--notebook-dir", str(nbdir), "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 1  # something failed, and the command says which
    assert "FAILED 01_broken" in text and "ValueError" in text and "the model exploded" in text
    ok = out / "00_ok"
    assert json.loads((ok / "metrics.json").read_text()) == {"preset": "unit", "value": 1}
    assert (ok / "00_ok.ipynb").exists() and json.loads((ok / "run.json").read_text())["status"] == "ok"
    assert (out / "01_broken" / "error.txt").exists()

    # second invocation: the finished run is skipped (its folder untouched), the failed one is tried again
    stamp = (ok / "run.json").stat().st_mtime_ns
    main(["reproduce", "--preset", "unit", "--notebook-dir", str(nbdir), "--out", str(out)])
    assert "skipped" in capsys.readouterr().out
    assert (ok / "run.json").stat().st_mtime_ns == stamp


def test_a_run_killed_midway_is_redone(course, capsys):
    nbdir, out = course
    half = out / "00_ok"
    half.mkdir(parents=True)
    (half / "00_ok.partial.ipynb").write_text("{truncated")  # what a SIGKILL leaves behind: no run.json
    code = main(["reproduce", "--preset", "unit", "--notebooks", "00", "--notebook-dir", str(nbdir), "--out", str(out)])
    assert code == 0
    assert not (half / "00_ok.partial.ipynb").exists()
    assert json.loads((half / "run.json").read_text())["status"] == "ok"


def test_grid_is_a_cartesian_product_and_names_runs(course):
    assert parse_grid(["SEED=0,1", "W=equal,dwa"]) == [
        {"SEED": 0, "W": "equal"}, {"SEED": 0, "W": "dwa"}, {"SEED": 1, "W": "equal"}, {"SEED": 1, "W": "dwa"}]
    with pytest.raises(ValueError, match="KEY=v1,v2"):
        parse_grid(["SEED"])


def test_unknown_notebook_lists_the_available_ones(course, capsys):
    nbdir, out = course
    code = main(["reproduce", "--notebooks", "07", "--notebook-dir", str(nbdir), "--out", str(out)])
    assert code == 2 and "00_ok" in capsys.readouterr().err
