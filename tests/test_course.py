"""mtlkit.course: train-or-load (load, retrain on change or corruption, resume), the summary row and grader score,
the growing course table, subsets, relative error and presets (unit preset, tiny model)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from mtlkit import course
from mtlkit.course import (
    REFERENCE_RESULTS,
    course_table,
    deeplab_schedule,
    load_splits,
    relative_error,
    subset,
    summarize,
    train_or_load,
    write_notebook_results,
)
from mtlkit.models import build
from mtlkit.train import Callback, Trainer, seed_everything

TASKS = {"semseg": 19, "depth": 1}
FAST = dict(epochs=1, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def splits():
    return load_splits("synthetic-city", "unit")


def tiny() -> torch.nn.Module:
    seed_everything(0)
    return build("tiny", TASKS, width=4)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def forbid_training(monkeypatch) -> None:
    def boom(self):
        raise AssertionError("train_or_load trained although a finished run with the same fingerprint exists")

    monkeypatch.setattr(Trainer, "fit", boom)


# ---------------------------------------------------------------------------------------------- train_or_load
def test_second_call_loads_identical_weights_without_training(tmp_path, splits, monkeypatch, capsys):
    trained = tiny()
    first = train_or_load("run", trained, splits, tmp_path, built={"model": "tiny"}, **FAST)
    assert first["finished"] and (tmp_path / "run" / "best.pt").exists()

    forbid_training(monkeypatch)
    fresh = tiny()
    fresh.load_state_dict({k: torch.zeros_like(v) for k, v in fresh.state_dict().items()})
    second = train_or_load("run", fresh, splits, tmp_path, built={"model": "tiny"}, **FAST)
    assert "loaded the finished run" in capsys.readouterr().out
    assert second == json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert second["test"] == first["test"]
    assert same_weights(fresh, trained)  # trained holds the best epoch's weights after fit()
    # progress/device/resume do not change what is computed: still loaded, not retrained
    train_or_load("run", tiny(), splits, tmp_path, built={"model": "tiny"}, **{**FAST, "progress": True})


def test_changed_description_or_schedule_retrains_from_scratch(tmp_path, splits):
    base = train_or_load("run", tiny(), splits, tmp_path, built={"model": "tiny", "width": 4}, **FAST)
    calls = []
    original_fit = Trainer.fit

    def counting_fit(self):
        calls.append(self.start_epoch)
        out = original_fit(self)
        calls.append(self.start_epoch)  # 0 after fit: nothing was resumed from the old run's last.pt
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "fit", counting_fit)
        other = train_or_load("run", tiny(), splits, tmp_path, built={"model": "tiny", "width": 5}, **FAST)
        assert calls == [0, 0]
        assert other["config"]["fingerprint"] != base["config"]["fingerprint"]
        assert len(other["epochs"]) == 1
        # another schedule (lr) is another run too
        train_or_load("run", tiny(), splits, tmp_path, built={"model": "tiny", "width": 5},
                      **{**FAST, "lr": 1e-2})
        assert calls == [0, 0, 0, 0]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["config"]["lr"] == 1e-2 and saved["finished"]


def test_subset_of_the_training_set_is_another_run(tmp_path, splits, monkeypatch):
    full = train_or_load("run", tiny(), splits, tmp_path, **FAST)
    small = {**splits, "train": subset(splits["train"], 4)}
    part = train_or_load("run", tiny(), small, tmp_path, **FAST)
    assert part["config"]["fingerprint"] != full["config"]["fingerprint"]
    assert part["data"]["train"] == {"name": "synthetic-city", "size": 4, "split": "train"}
    # the same size but other images must not be mistaken for the first subset
    other = {**splits, "train": subset(splits["train"], [4, 5, 6, 7])}
    moved = train_or_load("run", tiny(), other, tmp_path, **FAST)
    assert moved["config"]["fingerprint"] != part["config"]["fingerprint"]


@pytest.mark.parametrize("damage", ["garbage", "list", "truncated_best"])
def test_corrupt_run_folder_retrains(tmp_path, splits, damage):
    first = train_or_load("run", tiny(), splits, tmp_path, **FAST)
    run = tmp_path / "run"
    if damage == "garbage":
        (run / "metrics.json").write_text('{"finished": true, "config": {"finger')
    elif damage == "list":
        (run / "metrics.json").write_text("[1, 2, 3]")
    else:
        (run / "best.pt").write_bytes((run / "best.pt").read_bytes()[:100])
    calls = []
    original_fit = Trainer.fit
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "fit", lambda self: calls.append(1) or original_fit(self))
        again = train_or_load("run", tiny(), splits, tmp_path, **FAST)
    assert calls == [1]
    assert again["finished"] and again["config"]["fingerprint"] == first["config"]["fingerprint"]
    assert json.loads((run / "metrics.json").read_text())["finished"] is True
    assert again["test"] == first["test"]  # retrained from scratch with the same seed: the same numbers


def test_unfinished_run_with_the_same_fingerprint_resumes(tmp_path, splits):
    two = dict(FAST, epochs=2)
    whole = train_or_load("whole", tiny(), splits, tmp_path, **two)

    class Crash(Callback):
        def on_epoch_end(self, trainer, epoch, record):
            raise KeyboardInterrupt  # the kernel is interrupted after the first epoch was checkpointed

    with pytest.raises(KeyboardInterrupt):
        train_or_load("part", tiny(), splits, tmp_path, callbacks=[Crash()], **two)
    assert json.loads((tmp_path / "part" / "metrics.json").read_text())["finished"] is False
    starts = []
    original_fit = Trainer.fit
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "fit", lambda self: starts.append(self) or original_fit(self))
        resumed = train_or_load("part", tiny(), splits, tmp_path, **two)
    assert starts[0].start_epoch == 1  # continued at epoch 2, not restarted
    assert resumed["test"] == whole["test"]


# ---------------------------------------------------------------------------------------------------- summarize
def fake_metrics(miou: float, si_log: float, best: int = 1) -> dict:
    return {
        "test": {"semseg": {"miou": miou, "pixel_acc": 90.0}, "depth": {"si_log_rmse": si_log, "abs_err": 2.5}},
        "best": {"epoch": best},
        "epochs": [{"epoch": 0, "val": {"semseg": {"miou": 10.0}, "depth": {"si_log_rmse": 80.0}}},
                   {"epoch": 1, "val": {"semseg": {"miou": 60.0}, "depth": {"si_log_rmse": 45.0}}}],
        "parameters": {"encoder": 1_000_000, "total": 2_500_000},
        "timings": {"train_seconds": [1.5, 2.0, 0.5]},
    }


def test_summarize_computes_the_grader_score_by_formula():
    row = summarize(fake_metrics(90.9, 12.1))  # docs/reference.md#grader-score's check: 40.9 + 37.9
    assert row["grader_score"] == pytest.approx(78.8)
    assert row["semseg/miou"] == 90.9 and row["depth/abs_err"] == 2.5 and row["semseg/pixel_acc"] == 90.0
    assert row["parameters_M"] == pytest.approx(2.5)
    assert row["train_seconds"] == pytest.approx(4.0)
    # both terms are clipped at 0: a weak model scores 0, never negative
    assert summarize(fake_metrics(30.0, 70.0))["grader_score"] == 0.0
    assert summarize(fake_metrics(55.0, 70.0))["grader_score"] == pytest.approx(5.0)


def test_summarize_val_reads_the_best_epoch():
    row = summarize(fake_metrics(90.9, 12.1, best=1), split="val")
    assert row["semseg/miou"] == 60.0 and row["grader_score"] == pytest.approx(10.0 + 5.0)
    row0 = summarize(fake_metrics(90.9, 12.1, best=0), split="val")
    assert row0["semseg/miou"] == 10.0 and row0["grader_score"] == 0.0


def test_summarize_without_both_tasks_has_no_grader_score():
    metrics = {"test": {"semseg": {"miou": 70.0}}}
    row = summarize(metrics)
    assert "grader_score" not in row and row["semseg/miou"] == 70.0
    assert math.isnan(row["parameters_M"]) and row["train_seconds"] == 0


# ------------------------------------------------------------------------------------------------ course_table
def test_course_table_reads_siblings_and_filters_by_preset(tmp_path):
    root = tmp_path / "notebooks"
    write_notebook_results(root / "01_joint", "01_joint", "smoke", {"joint": {"grader_score": 3.0, "x": 1.0}})
    write_notebook_results(root / "02_branched", "02_branched", "smoke",
                           {"branched": {"grader_score": 4.0}, "single": {"grader_score": 2.0}})
    write_notebook_results(root / "03_other_preset", "03_other", "lesson", {"big": {"grader_score": 9.0}})
    (root / "04_broken").mkdir()
    (root / "04_broken" / "metrics.json").write_text("{not json")
    (root / "00_no_runs").mkdir()
    (root / "00_no_runs" / "metrics.json").write_text(json.dumps({"notebook": "00", "preset": "smoke"}))

    smoke = course_table(root / "05_me", preset="smoke")  # OUT_DIR need not exist yet
    assert list(smoke.index) == [("01_joint", "joint"), ("02_branched", "branched"), ("02_branched", "single")]
    assert smoke.loc[("02_branched", "branched"), "grader_score"] == 4.0
    assert math.isnan(smoke.loc[("02_branched", "single"), "x"])
    everything = course_table(root / "01_joint")
    assert len(everything) == 4 and ("03_other", "big") in everything.index
    assert course_table(root / "01_joint", preset="paper").empty


# ---------------------------------------------------------------------------------------------- small helpers
def test_relative_error_on_hand_values():
    assert relative_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])) == 0.0
    # elementwise |x-y| / (|x|+|y|): 0.1/2.1 and 1/3 -> the max is 1/3
    assert relative_error(torch.tensor([1.0, 1.0]), torch.tensor([1.1, 2.0])) == pytest.approx(1 / 3)
    assert relative_error(torch.tensor([1.0]), torch.tensor([-1.0])) == pytest.approx(1.0)
    assert relative_error(torch.zeros(3), torch.zeros(3)) == 0.0  # the 1e-8 floor: no 0/0
    assert relative_error(torch.tensor([0.0]), torch.tensor([1e-9])) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same shape"):
        relative_error(torch.zeros(2, 3), torch.zeros(3))


def test_subset_keeps_the_dataset_attributes(splits):
    train = splits["train"]
    part = subset(train, 3)
    assert len(part) == 3 and part.tasks == train.tasks and part.task_info == train.task_info
    assert part.name == "synthetic-city" and part.image_size == train.image_size
    assert torch.equal(part[2]["image"], train[2]["image"])
    picked = subset(train, [5, 1])
    assert torch.equal(picked[0]["semseg"], train[5]["semseg"])
    with pytest.raises(ValueError, match="between 1 and 8"):
        subset(train, 9)
    with pytest.raises(ValueError, match="out-of-range"):
        subset(train, [0, 8])


@pytest.mark.parametrize("preset", ["smoke!", "Smoke", "full", ""])
def test_unknown_preset_is_a_value_error_listing_the_presets(preset):
    with pytest.raises(ValueError, match="unit, smoke, lesson, paper"):
        deeplab_schedule(preset)
    with pytest.raises(ValueError, match="unknown preset"):
        course.check_preset(preset)


def test_schedules_follow_the_course_recipe():
    paper = deeplab_schedule("paper")
    # DLAD: SGD 0.01 momentum 0.9, wd 1e-4, poly(0.9), 16 epochs, batch 4, weights 0.5/0.5, ResNet-34 + ImageNet
    assert (paper["optimizer"], paper["lr"], paper["momentum"], paper["weight_decay"]) == ("sgd", 0.01, 0.9, 1e-4)
    assert (paper["scheduler"], paper["power"], paper["epochs"], paper["batch_size"]) == ("poly", 0.9, 16, 4)
    assert paper["encoder"] == "resnet34" and paper["pretrained"] is True
    assert paper["loss_weights"] == {"semseg": 0.5, "depth": 0.5}
    smoke = deeplab_schedule("smoke", epochs=1)
    assert smoke["epochs"] == 1 and deeplab_schedule("smoke")["epochs"] == 3  # overrides never leak
    assert REFERENCE_RESULTS["DLAD course: parameters with ResNet-34, 19 classes + depth (millions)"]["joint"] == 26.72



def test_deeplab_setup_applies_the_study_schedule_and_the_overrides(tmp_path):
    # smoke: notebook 01 trains on the first 96 images for 3 epochs; the studies of 02-05 on 64 for 2; val 32
    full = course.deeplab.setup("smoke", study=False, out_dir=tmp_path)
    study = course.deeplab.setup("smoke", out_dir=tmp_path)
    assert (len(full.splits["train"]), full.trainer_options["epochs"]) == (96, 3)
    assert (len(study.splits["train"]), study.trainer_options["epochs"]) == (64, 2)
    assert len(study.splits["val"]) == 32 and len(study.splits["test"]) == 64  # test: the whole split
    assert study.splits["train"][5]["image"].equal(load_splits("synthetic-city", "smoke")["train"][5]["image"])
    assert study.task_channels == TASKS and study.loss_weights == {"semseg": 0.5, "depth": 0.5}
    assert study.model_options == {"encoder": "resnet18", "aspp_channels": 64, "decoder_channels": 64,
                                   "skip_channels": 24, "pretrained": False}
    assert "momentum" not in study.trainer_options and study.trainer_options["optimizer"] == "adam"
    mine = course.deeplab.setup("smoke", seed=3, device="cpu", epochs=1, train_images=16, optimizer="sgd",
                                lr=None, out_dir=tmp_path)  # None keeps the preset's value
    assert (len(mine.splits["train"]), mine.trainer_options["epochs"]) == (16, 1)
    assert mine.trainer_options["lr"] == deeplab_schedule("smoke")["lr"] and mine.trainer_options["seed"] == 3
    assert mine.trainer_options["device"] == "cpu" and mine.schedule["optimizer"] == "sgd"
    # unit: no study schedule and no subsets
    unit = course.deeplab.setup("unit", out_dir=tmp_path)
    assert len(unit.splits["train"]) == len(load_splits("synthetic-city", "unit")["train"])
    assert unit.trainer_options["epochs"] == deeplab_schedule("unit")["epochs"]
    # the trainer options are accepted by the Trainer as they are
    seed_everything(0)
    Trainer(build("tiny", unit.task_channels, width=4), unit.splits["train"], out_dir=tmp_path,
            progress=False, **unit.trainer_options)


# ---------------------------------------------------------------------------------------------- the comparison (10)
def _two_notebook_runs(root):
    # 01: joint semseg 55 vs 50 (+10 %), depth 1.5 vs 2.0 (+25 %, lower is better): Δm = +17.5 %
    write_notebook_results(root / "01_a", "01_a", "smoke", {
        "single-semseg": {"semseg/miou": 50.0, "parameters_M": 1.0}, "single-depth": {"depth/abs_err": 2.0},
        "joint": {"semseg/miou": 55.0, "depth/abs_err": 1.5, "parameters_M": 1.2, "note": "text is dropped"}})
    # 02 has its own baselines (another schedule): branched -5 % semseg, -10 % depth; no baseline for normals
    write_notebook_results(root / "02_b__SEED=1", "02_b", "smoke", {
        "single-semseg": {"semseg/miou": 40.0}, "single-depth": {"depth/abs_err": 1.0},
        "branched": {"semseg/miou": 38.0, "depth/abs_err": 1.1, "normals/mean": 30.0}})
    write_notebook_results(root / "03_lesson", "03_c", "lesson", {"joint": {"semseg/miou": 99.0}})
    (root / "04_broken").mkdir()
    (root / "04_broken" / "metrics.json").write_text("{not json")


def test_results_table_reads_both_layouts_one_row_per_model(tmp_path):
    _two_notebook_runs(tmp_path)
    table = course.results_table(tmp_path, preset="smoke")
    assert list(zip(table["folder"], table["model"])) == [
        ("01_a", "single-semseg"), ("01_a", "single-depth"), ("01_a", "joint"),
        ("02_b__SEED=1", "single-semseg"), ("02_b__SEED=1", "single-depth"), ("02_b__SEED=1", "branched")]
    assert set(table["notebook"]) == {"01_a", "02_b"} and "note" not in table
    assert len(course.results_table(tmp_path)) == 7  # no preset filter: the lesson run too
    assert course.results_table(tmp_path / "missing").empty


def test_find_results_takes_the_first_folder_with_runs(tmp_path):
    _two_notebook_runs(tmp_path / "notebooks")
    (tmp_path / "smoke").mkdir()  # exists but holds no runs: skipped
    source, table = course.find_results(None, tmp_path / "smoke", tmp_path / "notebooks", preset="smoke")
    assert source == tmp_path / "notebooks" and len(table) == 6
    source, table = course.find_results(tmp_path / "smoke", preset="smoke")
    assert source is None and table.empty and "model" in table


def test_relative_to_single_is_the_per_task_term_of_delta_m_within_each_folder(tmp_path):
    from mtlkit.metrics import delta_m

    _two_notebook_runs(tmp_path)
    table = course.results_table(tmp_path, preset="smoke")
    changes = course.relative_to_single(table)
    assert list(changes.columns) == ["semseg", "depth", "normals"]
    joint, branched = table.index[table["model"] == "joint"][0], table.index[table["model"] == "branched"][0]
    assert changes.loc[joint, ["semseg", "depth"]].tolist() == pytest.approx([10.0, 25.0])
    assert changes.loc[branched, ["semseg", "depth"]].tolist() == pytest.approx([-5.0, -10.0])
    assert math.isnan(changes.loc[branched, "normals"])  # no single-normals run in its folder
    assert changes[table["model"].str.startswith("single-")].isna().all().all()
    expected = delta_m({"semseg": {"miou": 55.0}, "depth": {"abs_err": 1.5}},
                       {"semseg": {"miou": 50.0}, "depth": {"abs_err": 2.0}})
    assert changes.loc[joint].mean() == pytest.approx(expected) == pytest.approx(17.5)


def test_reference_table_collects_every_course_module_labelled_by_source():
    refs = course.reference_table()
    assert list(refs.columns) == ["source", "model", "metric", "value"]
    ours = refs[refs["source"] == "mtlkit.course"]
    assert len(ours) == sum(len(v) for v in REFERENCE_RESULTS.values())
    assert ours.set_index("model").loc["best staff solution", "value"] == 78.8
    import importlib
    import pkgutil

    found = 0
    for info in pkgutil.iter_modules(course.__path__):  # every *_REFERENCE of a course module is included
        module = importlib.import_module(f"mtlkit.course.{info.name}")
        for attr in (a for a in vars(module) if a.endswith("_REFERENCE")):
            assert (refs["source"] == f"mtlkit.course.{info.name}.{attr}").any(), attr
            found += 1
    assert found >= 5  # pet, nyu (three), broden, pascal


def test_deeplab_paper_preset_scores_miou_with_dlads_absent_class_convention():
    from mtlkit.course.deeplab import deeplab_tasks

    info = {"semseg": {"num_classes": 19}, "depth": {}}
    assert deeplab_tasks(info, deeplab_schedule("paper"))["semseg"].meter().absent == "zero"  # DLAD's grader
    assert deeplab_tasks(info, deeplab_schedule("smoke"))["semseg"].meter().absent == "exclude"  # the kit's default


def test_a_changed_meter_option_is_another_run_in_the_fingerprint(tmp_path):
    from mtlkit.course.common import run_fingerprint
    from mtlkit.course.deeplab import deeplab_tasks

    info = {"semseg": {"num_classes": 19}, "depth": {}}
    model = build("tiny", {"semseg": 19, "depth": 1}, width=4)
    keys = {preset: run_fingerprint(model, {}, {"model": "tiny"},
                                    tasks=deeplab_tasks(info, deeplab_schedule(preset)))
            for preset in ("smoke", "paper")}
    assert keys["smoke"] != keys["paper"]
