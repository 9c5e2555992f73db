"""Plumbing of ``python -m benchmarks``: the section writer, the model table, a --quick pass. No timing asserts."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is a folder of the repo, not installed
from benchmarks import __main__ as bench_main  # noqa: E402
from benchmarks import bench_models, common  # noqa: E402

OTHER = "<!-- reproduce:begin -->\n## Smoke reproduction\nkept as is\n<!-- reproduce:end -->\n"


def test_write_section_replaces_its_own_section_and_keeps_the_others(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n" + OTHER)
    common.write_section("models", "## Models\nfirst", path)
    common.write_section("models", "## Models\nsecond", path)
    text = path.read_text()
    assert text.count("<!-- models:begin -->") == 1 and text.count("<!-- models:end -->") == 1
    assert "second" in text and "first" not in text
    assert OTHER.strip() in text
    common.write_section("reproduce", "## Smoke reproduction\nnew", path)  # replaced in place, order kept
    assert text.index("reproduce:begin") < text.index("models:begin")
    assert path.read_text().index("reproduce:begin") < path.read_text().index("models:begin")
    assert "kept as is" not in path.read_text()


def test_write_section_refuses_a_duplicated_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("<!-- data:begin -->\na\n<!-- data:end -->\n<!-- data:begin -->\nb\n<!-- data:end -->\n")
    with pytest.raises(ValueError, match="more than once"):
        common.write_section("data", "c", path)
    with pytest.raises(ValueError, match="section names"):
        common.write_section("bad name", "c", path)


def test_every_registered_model_has_a_benchmark_configuration():
    from mtlkit.models import count_parameters, list_models

    assert sorted(bench_models.CONFIGS) == list_models()
    for name in list_models():  # the smoke configuration builds
        small = count_parameters(bench_models.build_model(name, "smoke"))["total"]
        assert small > 0, name


def test_section_table_has_one_cell_per_column():
    s = common.Section("x", "X", "cmd", ["a", "b", "c"])
    s.add("name", 1.23456, float("nan"))
    s.notes.append("note")
    lines = s.render().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 3 and all(line.count("|") == 4 for line in table)
    assert table[-1] == "| name | 1.23 | n/a |"


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "RESULTS.md"
    path.write_text("# Benchmark results\n\n" + OTHER)
    assert bench_main.main(["all", "--quick", "--write", "--results", str(path), "--threads", "1"]) == 0
    return path


def test_quick_pass_writes_every_section_once(quick_results):
    first = quick_results.read_text()
    for name in ("synth", "models", "data", "trainer", "meters"):
        assert first.count(f"<!-- {name}:begin -->") == 1, name
    assert OTHER.strip() in first
    for needle in ("Load average", "Machine:", "torch", "Command: `python -m benchmarks all --quick --write"):
        assert needle in first


def test_quick_models_section_has_the_tiny_rows_and_says_why_cuda_is_missing(quick_results):
    import torch

    text = quick_results.read_text()
    models = text.split("<!-- models:begin -->")[1].split("<!-- models:end -->")[0]
    rows = [line for line in models.splitlines() if line.startswith("| tiny ")]
    assert len(rows) == 2  # fp32 with channels_last off and on
    assert {row.split(" | ")[3] for row in rows} == {"fp32", "fp32 +CL"}
    for row in rows:
        rate = float(row.split(" | ")[6])
        assert rate > 0
    if not torch.cuda.is_available():
        assert "CUDA: skipped (no GPU on this machine)" in models


def test_quick_trainer_and_meters_sections_report_ratios(quick_results):
    text = quick_results.read_text()
    trainer = text.split("<!-- trainer:begin -->")[1].split("<!-- trainer:end -->")[0]
    assert re.search(r"\| median \|.*[+-]\d+\.\d%", trainer)
    assert "last.pt" in trainer and "Target: Trainer fit() at most 5%" in trainer
    meters = text.split("<!-- meters:begin -->")[1].split("<!-- meters:end -->")[0]
    tasks = {line.split(" | ")[2] for line in meters.splitlines() if line.startswith("| synthetic-nyu")}
    assert tasks == {"semseg", "depth", "normals", "all"}


def test_quick_does_not_touch_results_without_write(tmp_path, capsys):
    path = tmp_path / "RESULTS.md"
    path.write_text(OTHER)
    assert bench_main.main(["meters", "--quick", "--results", str(path), "--threads", "1"]) == 0
    assert path.read_text() == OTHER
    assert "## Metric meters' share" in capsys.readouterr().out


def test_unknown_model_is_a_clear_error():
    with pytest.raises(SystemExit, match="unknown model"):
        bench_main.main(["models", "--models", "no-such-model", "--no-write"])
