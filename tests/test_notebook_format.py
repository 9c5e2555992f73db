"""The goldens open clean: an open-and-save in JupyterLab + jupytext (no run) changes neither file of a pair."""
import json
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("jupyter_server")
pytest.importorskip("jupytext")

from mtlkit.notebook_format import kernelspec, main, normalise, saved_as_jupyterlab_would  # noqa: E402

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_open_and_save_changes_neither_file(notebook):
    saved = saved_as_jupyterlab_would(notebook)
    for name, data in saved.items():
        assert (notebook.parent / name).read_bytes() == data, (
            f"{name} changes when opened and saved in JupyterLab; run `python -m mtlkit.notebook_format {notebook}`")
    meta = json.loads(saved[notebook.name])["metadata"]
    assert meta["jupytext"]["formats"] == "ipynb,py:percent" and meta["kernelspec"] == kernelspec()


def test_one_jupytext_version_in_the_headers():
    versions = {re.search(r"jupytext_version: (\S+)", nb.with_suffix(".py").read_text()).group(1)
                for nb in NOTEBOOKS}
    assert len(versions) == 1, versions


def test_normalise_fixes_what_an_open_would_change_and_check_reports_it(tmp_path, capsys):
    source = NOTEBOOKS[0]
    for suffix in (".ipynb", ".py"):
        shutil.copy(source.with_suffix(suffix), tmp_path / (source.stem + suffix))
    nb = tmp_path / source.name
    data = json.loads(nb.read_text())
    del data["metadata"]["jupytext"]  # what the issue found: no formats, another display name, an older header
    data["metadata"]["kernelspec"]["display_name"] = "Python 3"
    nb.write_text(json.dumps(data, indent=1))
    py = nb.with_suffix(".py")
    py.write_text(re.sub(r"jupytext_version: \S+", "jupytext_version: 1.0.0", py.read_text()))
    assert main(["--check", str(tmp_path)]) == 1
    assert "would change" in capsys.readouterr().out
    assert set(normalise([tmp_path])) == {nb, py}
    assert normalise([tmp_path], check=True) == []
    assert json.loads(nb.read_text())["metadata"]["jupytext"]["formats"] == "ipynb,py:percent"
    assert json.loads(nb.read_text())["cells"] == json.loads(source.read_text())["cells"]  # only metadata moved


def test_a_lone_notebook_is_refused_with_the_reason(tmp_path):
    lone = tmp_path / "00_x.ipynb"
    lone.write_text("{}")
    assert main([str(lone)]) == 2
