"""Every course notebook follows the notebook contract (docs/contracts.md#notebook); nbval runs them (pyproject)."""
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
KNOBS = ("PRESET", "DEVICE", "SEED", "DATA", "OUT_DIR")
TRAINING = [p for p in NOTEBOOKS if "01" <= p.name[:2] <= "09"]  # the notebooks that train models
TRAINING_KNOBS = ("PRETRAINED", "MAX_STEPS")  # ImageNet weights off for offline runs; a dry run of the paper path


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no NN_topic.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_contract(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    params = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    source = "".join(params[0]["source"])
    for knob in KNOBS:
        assert re.search(rf"^{knob}\s*=", source, re.M), f"parameters cell lacks {knob}"
    # PRESET defaults to smoke and is read from the environment, so nbval runs the smoke preset
    assert 'os.environ.get("MTLKIT_PRESET", "smoke")' in source

    code = [c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    assert all(c.get("execution_count") is not None for c in code), "commit the executed smoke golden"
    assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))
    checked = [c for c in code if "".join(c["source"]).lstrip().startswith("# NBVAL_CHECK_OUTPUT")]
    assert checked, "no cell is marked '# NBVAL_CHECK_OUTPUT' (as a comment nbval can see, not a jupytext title)"
    assert not any(c["metadata"].get("title") == "NBVAL_CHECK_OUTPUT" for c in code)

    pair = path.with_suffix(".py")
    assert pair.exists(), "missing jupytext py:percent pair"
    assert "format_name: percent" in pair.read_text()
    assert "OUT_DIR" in "".join("".join(c["source"]) for c in code[-3:]) or "metrics.json" in json.dumps(cells[-3:])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_pair_is_in_sync(path):
    jupytext = pytest.importorskip("jupytext")
    from_py = jupytext.read(path.with_suffix(".py"))
    from_nb = jupytext.read(path)
    code = lambda nb: [c.source.strip() for c in nb.cells if c.cell_type == "code"]  # noqa: E731
    assert code(from_py) == code(from_nb), "the .py and .ipynb differ: run `jupytext --sync` and re-execute"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_sees_every_parameter(path, caplog):
    """Every top-level assignment of the parameters cell is a papermill parameter (so `--grid KEY=...` accepts it).

    papermill silently drops a line it cannot parse (it only logs "Unable to parse line"), and `mtlkit reproduce`
    then refuses that knob as unknown.
    """
    papermill = pytest.importorskip("papermill")
    nb = json.loads(path.read_text())
    source = "".join(next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))["source"])
    assigned = re.findall(r"^([A-Za-z_]\w*)\s*(?::[^=]+)?=", source, re.M)
    with caplog.at_level("WARNING"):
        found = list(papermill.inspect_notebook(str(path)))
    assert not [r.getMessage() for r in caplog.records if "Unable to parse" in r.getMessage()]
    assert found == assigned


def _code(path) -> str:
    return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: p.stem)
def test_training_notebooks_set_up_and_train_through_the_course_api(path):
    """One setup call, one course.run call per model, no notebook-local training helper or hand-made fingerprint."""
    code = _code(path)
    params = "".join(next(c for c in json.loads(path.read_text())["cells"]
                          if "parameters" in c["metadata"].get("tags", []))["source"])
    for knob in TRAINING_KNOBS:
        assert re.search(rf"^{knob}\s*=\s*None\b", params, re.M), f"parameters cell lacks {knob} = None"
    setups = re.findall(r"\bcourse\.(\w+)\.setup\(", code)
    assert len(setups) == 1, f"one course.<family>.setup(...) call, found {setups}"
    assert "pretrained=PRETRAINED" in code and "max_steps=MAX_STEPS" in code
    assert "course.run(" in code
    for banned in ("train_or_load(", "describe=", "def train_run", "def run(", "def train_distill", "def train_single",
                   "def train_stitched", "trainer_kwargs", "Trainer("):
        assert banned not in code, f"{banned!r}: train through course.run"


def test_09_builds_its_check_input_at_a_fixed_size():
    """pascal-mt reports its image size as (None, None) (sizes vary per image): 09 must not build tensors from it."""
    (path,) = [p for p in NOTEBOOKS if p.name.startswith("09_")]
    assert "image_size" not in _code(path)
