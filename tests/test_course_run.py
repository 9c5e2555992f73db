"""course.run / the family setups / course.predict / unlabelled splits / degenerate results (unit preset, tiny runs)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn as nn

from mtlkit import course
from mtlkit.course import Setup, labelled_splits, predict, run, subset
from mtlkit.train import Trainer

FAMILIES = {"deeplab": {}, "pet": {}, "nyu": {}, "broden": {}, "pascal": {}}


@pytest.fixture(scope="module")
def unit_setup(tmp_path_factory) -> Setup:
    # the tiny model: run() builds any registered model with the setup's tasks and the options passed
    setup = course.deeplab.setup("unit", device="cpu", out_dir=tmp_path_factory.mktemp("runs"))
    return dataclasses.replace(setup, model_options={"width": 4},
                               trainer_options={**setup.trainer_options, "batch_size": 4, "epochs": 1})


# ------------------------------------------------------------------------------------------------ the setups
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_setup_has_the_same_shape(family, tmp_path):
    setup = getattr(course, family).setup("unit", seed=1, device="cpu", out_dir=tmp_path / family,
                                          pretrained=False, max_steps=2)
    assert isinstance(setup, Setup) and setup.preset == "unit"
    assert set(setup.splits) == {"train", "val", "test"} and len(setup.splits["train"]) > 0
    assert set(setup.tasks) == set(setup.task_channels) == set(setup.splits["train"].task_info)
    assert all(setup.tasks[t].out_channels == c for t, c in setup.task_channels.items())
    assert setup.trainer_options["seed"] == 1 and setup.trainer_options["max_steps"] == 2
    assert setup.model_options.get("pretrained", False) is False  # PRETRAINED=False reaches the model options
    assert setup.out_dir.is_dir() and "tasks and output channels" in setup.describe()
    # without max_steps the Trainer never sees the argument (the Trainer before max_steps does not know it)
    plain = getattr(course, family).setup("unit", out_dir=tmp_path / family)
    assert "max_steps" not in plain.trainer_options


def test_pretrained_and_overrides_reach_the_schedule(tmp_path):
    setup = course.deeplab.setup("smoke", out_dir=tmp_path, pretrained=True, batch_size=None, lr=0.5)
    assert setup.model_options["pretrained"] is True and setup.schedule["pretrained"] is True
    assert setup.trainer_options["lr"] == 0.5
    assert setup.trainer_options["batch_size"] == course.deeplab_schedule("smoke")["batch_size"]
    for family in FAMILIES:  # a typo in a knob is an error, not the preset's schedule trained silently
        with pytest.raises(ValueError, match="unknown"):
            getattr(course, family).setup("unit", out_dir=tmp_path, not_a_key=1)


# ---------------------------------------------------------------------------------------------------- run()
def test_run_trains_then_loads_and_fingerprints_what_was_built(unit_setup, monkeypatch, capsys):
    first = run(unit_setup, "tiny", "tiny", progress=False)
    assert first.metrics["finished"] and first.dir == unit_setup.out_dir / "tiny"
    built = dict(first.metrics["config"]["built"])
    assert built.pop("depth_bias") > 0  # the depth head started at the training mean (its own test below)
    assert built == {"model": "tiny", "task_channels": {"semseg": 19, "depth": 1}, "options": {"width": 4}}
    # static weights from the setup (deeplab: 0.5 / 0.5)
    assert first.metrics["config"]["weighting_options"] == {"weights": {"semseg": 0.5, "depth": 0.5}}
    assert set(first.summary()) >= {"semseg/miou", "depth/si_log_rmse", "grader_score", "parameters_M"}

    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail("trained although the run had finished"))
    again = run(unit_setup, "tiny", "tiny", progress=False)
    assert "loaded the finished run" in capsys.readouterr().out
    assert again.test == first.test
    for a, b in zip(again.model.state_dict().values(), first.model.state_dict().values()):
        assert torch.equal(a, b)


def test_depth_heads_start_at_the_training_mean_depth(unit_setup):
    from mtlkit.course import start_depth_at_train_mean
    from mtlkit.models import build

    train = unit_setup.splits["train"]
    depths = [train[i]["depth"] for i in range(len(train))]
    expected = float(sum(d[d > 0].double().sum() for d in depths) / sum(int((d > 0).sum()) for d in depths))
    model = build("tiny", {"semseg": 19, "depth": 1}, width=4)
    for p in model.parameters():  # zero weights: the depth output is then exactly the bias
        nn.init.zeros_(p)
    value = start_depth_at_train_mean(model, unit_setup)
    assert value == pytest.approx(expected, rel=1e-3)
    out = model(torch.rand(2, 3, 32, 64))["depth"]
    torch.testing.assert_close(out, torch.full_like(out, value))
    assert any("mean depth" in note for note in unit_setup.notes)


def test_run_options_tasks_and_init_change_the_fingerprint(unit_setup):
    seen = []
    original = Trainer.__init__

    def spy(self, model, *args, **kwargs):
        seen.append((kwargs["config"]["fingerprint"], kwargs))
        original(self, model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "__init__", spy)
        mp.setattr(Trainer, "fit", lambda self: {"finished": False})
        run(unit_setup, "a", "tiny")
        run(unit_setup, "b", "tiny", width=8)  # another build option
        run(unit_setup, "c", "tiny", "depth", loss_weights={"depth": 1.0})  # another task set
        run(unit_setup, "d", "tiny", init=lambda m: [nn.init.zeros_(p) for p in m.parameters()])  # other weights
        run(unit_setup, "e", "tiny", weighting="uncertainty", train={"epochs": 2})
    keys = [k for k, _ in seen]
    assert len(set(keys)) == len(keys) == 5
    assert list(seen[2][1]["tasks"]) == ["depth"] and seen[2][1]["weighting_options"] == {"weights": {"depth": 1.0}}
    assert seen[4][1]["weighting"] == "uncertainty" and seen[4][1]["epochs"] == 2
    assert all("max_steps" not in kw for _, kw in seen)


def test_run_passes_max_steps_only_when_set(unit_setup):
    captured = {}

    def spy(self, model, *args, **kwargs):
        captured.update(kwargs)
        raise RuntimeError("stop")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "__init__", spy)
        dry = dataclasses.replace(unit_setup, trainer_options={**unit_setup.trainer_options, "max_steps": 3})
        with pytest.raises(RuntimeError, match="stop"):
            run(dry, "dry", "tiny")
        assert captured["max_steps"] == 3
        captured.clear()
        with pytest.raises(RuntimeError, match="stop"):
            run(dry, "dry", "tiny", train={"max_steps": None})
        assert "max_steps" not in captured


def test_run_refuses_unknown_tasks(unit_setup):
    with pytest.raises(ValueError, match="unknown or no tasks"):
        run(unit_setup, "x", "tiny", "normals")


# ------------------------------------------------------------------------------------------------ predict()
class DeviceSpy(nn.Module):
    """Parameters on ``device``; records the device of every tensor passed in, answers on the CPU."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(3, device=device))
        self.seen: list[torch.device] = []

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append(images.device)
        return {"semseg": torch.zeros(images.shape[0], 2, *images.shape[-2:]), "aux": (torch.ones(1),)}


def test_predict_sends_the_images_to_the_model_device():
    model = DeviceSpy("meta")  # a non-CPU device, as a GPU would be, without one
    out = predict(model.train(), torch.rand(2, 3, 8, 8))
    assert model.seen == [torch.device("meta")] and not model.training
    assert out["semseg"].device.type == "cpu" and out["aux"][0].device.type == "cpu"
    assert course.model_device(model).type == "meta"


def test_the_notebooks_pass_model_inputs_through_predict_or_the_model_device():
    """Post-training code of 01-09 must not call a trained model on CPU tensors (issue: GPU device mismatch)."""
    import re
    from pathlib import Path

    for path in sorted((Path(__file__).parent.parent / "notebooks").glob("0[1-9]_*.py")):
        text = path.read_text()
        after = text[text.index("course.run("):]  # everything after the first training call
        # a trained model called directly: models[...](x) / model(x) / trained(x) without .to(<its device>)
        calls = re.findall(r"\b(?:models\[[^\]]+\]|model|trained)(?:\.eval\(\))?\((?!\s*\))"
                           r"([^()\n]*(?:\([^()\n]*\))?[^()\n]*)\)", after)
        bad = [c for c in calls if c.strip() and ".to(" not in c and "image" in c.lower()]
        assert not bad, f"{path.name}: trained model called on CPU tensors {bad[:3]}: use course.predict"


# ------------------------------------------------------------------------------------------ unlabelled splits
class Withheld(torch.utils.data.Dataset):
    def __init__(self, n: int, labelled: tuple[str, ...], name: str = "fake") -> None:
        self.n, self.labelled, self.name = n, labelled, name
        self.task_info = {"semseg": {}, "depth": {}}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return {"image": torch.zeros(3, 4, 4)}


def test_an_unlabelled_test_split_is_replaced_by_the_validation_split_and_said():
    splits = {"train": Withheld(50, ("semseg", "depth")), "val": Withheld(8, ("semseg", "depth")),
              "test": Withheld(8, ())}
    out, notes = labelled_splits(splits)
    assert out["test"] is splits["val"]
    assert len(out["train"]) == 42 and len(out["val"]) == 8 and list(out["val"].indices) == list(range(42, 50))
    assert any("test split of fake has no labels" in n for n in notes)
    assert any("evaluated as the test split" in n for n in notes)
    # a labelled test split (or one that does not say) is left alone
    both = ("semseg", "depth")
    same, none = labelled_splits({"train": Withheld(50, both), "val": None, "test": Withheld(5, both)})
    assert none == [] and same["test"].n == 5


@pytest.mark.parametrize("n_train,held_out", [(4, 1), (2, 1), (1, 0)])
def test_a_tiny_training_split_still_holds_out_an_image_where_it_can(n_train, held_out):
    """A format twin has a handful of images: n // 5 would hold out none and leave an empty validation split."""
    both = ("semseg", "depth")
    splits = {"train": Withheld(n_train, both), "val": Withheld(3, both), "test": Withheld(3, ())}
    out, notes = labelled_splits(splits)
    assert out["test"] is splits["val"] and len(out["train"]) == n_train - held_out
    assert (out["val"] is None) if held_out == 0 else len(out["val"]) == held_out
    assert any("evaluated as the test split" in n for n in notes)


def test_a_partly_labelled_split_is_reported():
    splits = {"train": Withheld(10, ("semseg", "depth")), "val": Withheld(4, ("semseg",)),
              "test": Withheld(4, ("semseg", "depth"))}
    out, notes = labelled_splits(splits)
    assert out["test"] is splits["test"] and notes == [
        "the val split of fake has no labels for depth: its metrics for them would be NaN"]


# ------------------------------------------------------------------------------------------ degenerate results
def degenerate_metrics() -> dict:
    return {"test": {"semseg": {"miou": float("nan"), "pixel_acc": None}, "depth": {"si_log_rmse": 40.0}},
            "best": {"epoch": 0}, "epochs": [{"epoch": 0, "val": {"semseg": {"miou": 0.0}}}],
            "parameters": {"total": 1000}, "timings": {"train_seconds": [1.0]}}


def test_summaries_and_delta_m_report_nan_with_a_sentence(capsys):
    row = course.summarize(degenerate_metrics(), name="joint")
    assert math.isnan(row["semseg/miou"]) and math.isnan(row["semseg/pixel_acc"]) and math.isnan(row["grader_score"])
    assert "joint: semseg/miou, semseg/pixel_acc, grader_score = NaN" in capsys.readouterr().out
    assert course.summarize({}) == {"parameters_M": pytest.approx(float("nan"), nan_ok=True), "train_seconds": 0}

    zero = {"semseg": {"miou": 0.0}, "depth": {"abs_err": 1.0}}
    multi = {"semseg": {"miou": 10.0}, "depth": {"abs_err": 1.0}}
    assert math.isnan(course.delta_m_or_nan(multi, zero, "joint Δm"))
    nan_base = {"semseg": {"miou": float("nan")}, "depth": {"abs_err": 1.0}}
    assert math.isnan(course.delta_m_or_nan(multi, nan_base, "branched Δm"))
    assert math.isnan(course.delta_m_or_nan(multi, {"semseg": {"miou": 5.0}}, "no depth"))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all(line.split(":")[0] in ("joint Δm", "branched Δm", "no depth") for line in out)
    assert course.delta_m_or_nan(multi, {"semseg": {"miou": 5.0}, "depth": {"abs_err": 1.0}}) == pytest.approx(50.0)


def test_tables_survive_zero_baselines_and_nan_rows(tmp_path, capsys):
    course.write_notebook_results(tmp_path / "04_x", "04_x", "smoke", {
        "single-semseg": {"semseg/miou": 0.0}, "single-depth": {"depth/abs_err": float("nan")},
        "joint": {"semseg/miou": 12.0, "depth/abs_err": 1.0}})
    table = course.results_table(tmp_path, preset="smoke")
    changes = course.relative_to_single(table)
    assert changes.isna().all().all()
    assert "baseline's semseg/miou is 0" in capsys.readouterr().out
    assert len(course.course_table(tmp_path / "05_y", preset="smoke")) == 3
    shown = course.print_course_table(tmp_path / "05_y", "smoke", ("semseg/miou", "no/such"), notebook="04_x")
    assert len(shown) == 3 and "course results, smoke preset (notebook 04_x's rows)" in capsys.readouterr().out
    assert course.print_course_table(tmp_path / "05_y", "paper", ("semseg/miou",)).empty
    assert "no finished notebooks of the paper preset" in capsys.readouterr().out


def test_subset_keeps_the_labelled_attribute():
    part = subset(Withheld(6, ()), 3)
    assert part.labelled == () and course.labelled_tasks(part) == ()


def test_deeplab_setup_on_the_miniscapes_twin_scores_a_labelled_split(tmp_path, monkeypatch):
    """The MiniScapes twin withholds its test labels (as the course does): the setup says so and evaluates val."""
    from mtlkit.data.real.twins import write_twin

    write_twin("miniscapes", tmp_path / "prepared" / "miniscapes", n=6)
    monkeypatch.setenv("MTLKIT_DATA_DIR", str(tmp_path))
    setup = course.deeplab.setup("paper", device="cpu", out_dir=tmp_path / "runs", pretrained=False)
    assert course.labelled_tasks(setup.splits["test"]) == ("semseg", "depth")  # the course's val split
    assert len(setup.splits["test"]) == 6 and len(setup.splits["train"]) + len(setup.splits["val"]) == 6
    assert "evaluated as the test split" in setup.describe()
    sample = setup.splits["test"][0]
    assert (sample["semseg"] >= 0).any()  # labels present where the metrics are computed


def test_pascal_setup_on_the_pascal_mt_twin_holds_out_part_of_train(tmp_path, monkeypatch):
    """pascal-mt has train and val only: val is the test split and the last fifth of train (at least one image,
    500 on the real data) selects the epoch; a twin's 8 images must not ask for 500."""
    from mtlkit.data.real.twins import write_twin

    write_twin("pascal-mt", tmp_path / "prepared" / "pascal-mt", n=8)
    monkeypatch.setenv("MTLKIT_DATA_DIR", str(tmp_path))
    setup = course.pascal.setup("paper", device="cpu", out_dir=tmp_path / "runs", pretrained=False)
    assert (len(setup.splits["train"]), len(setup.splits["val"]), len(setup.splits["test"])) == (7, 1, 8)
