"""The Trainer: determinism, exact resume after SIGKILL, checkpoint failures, NaN stop, validation of inputs and
options (TrainConfig), train_step as the Trainer's step, learning rates, logged weights, best-epoch selection,
progress reports and capped (max_steps) runs (unit preset, tiny model)."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from mtlkit.checkpoint import load_checkpoint
from mtlkit.data import get_dataset
from mtlkit.models import build
from mtlkit.progress import progress_mode
from mtlkit.train import (
    Callback,
    CheckpointMismatchError,
    NonFiniteLossError,
    TrainConfig,
    TrainConfigError,
    Trainer,
    seed_everything,
    train_step,
)
from mtlkit.train_cli import main, train_single_task
from mtlkit.weighting import make_weighting

TASKS = {"semseg": 13, "depth": 1, "normals": 3}


def nyu(split: str):
    return get_dataset("synthetic-nyu", split, preset="unit")


def tiny(width: int = 4, tasks=TASKS) -> nn.Module:
    seed_everything(0)
    return build("tiny", tasks, width=width)


def make(out_dir, model=None, val=True, test=True, **kw) -> Trainer:
    kw.setdefault("epochs", 2)
    kw.setdefault("batch_size", 4)
    kw.setdefault("progress", False)
    return Trainer(model if model is not None else tiny(), nyu("train"), nyu("val") if val else None,
                   nyu("test") if test else None, out_dir=out_dir, **kw)


def without_timings(metrics: dict) -> dict:
    m = json.loads(json.dumps(metrics))
    m.pop("timings")
    m["config"].pop("out_dir")
    return m


# ---------------------------------------------------------------------------------------- determinism/resume
def test_two_runs_are_identical(tmp_path):
    a = make(tmp_path / "a").fit()
    b = make(tmp_path / "b").fit()
    assert without_timings(a) == without_timings(b)
    on_disk = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert without_timings(on_disk) == without_timings(a)
    assert a["finished"] and a["test"] is not None
    assert {"python", "torch", "mtlkit"} <= set(a["versions"])
    assert a["parameters"]["total"] == sum(p.numel() for p in tiny().parameters())
    assert len(a["timings"]["epoch_seconds"]) == 2
    # every checkpoint loads with weights_only=True
    for name in ("last.pt", "prev.pt", "best.pt"):
        assert "model" in load_checkpoint(tmp_path / "a" / name)


CHILD = textwrap.dedent("""
    import os, signal, sys
    from mtlkit.data import get_dataset
    from mtlkit.models.tiny import TinyMTLNet  # not build(): the registry would import every family (timm)
    from mtlkit.train import Trainer, seed_everything

    out, kill_after = sys.argv[1], int(sys.argv[2])

    def killer(trainer, epoch, record):
        if epoch == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    seed_everything(0)
    model = TinyMTLNet({"semseg": 13, "depth": 1, "normals": 3}, width=4)
    data = [get_dataset("synthetic-nyu", s, preset="unit") for s in ("train", "val", "test")]
    Trainer(model, *data, out_dir=out, epochs=4, batch_size=4, weighting="dwa", scheduler="poly", lr=3e-3,
            progress=False, callbacks=[killer]).fit()
""")


def _child(script: Path, out: Path, kill_after: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(out), str(kill_after)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    nyu("train"), nyu("val"), nyu("test")  # build the data cache before two processes read it
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    full_proc = _child(script, tmp_path / "full", -1)
    killed_proc = _child(script, tmp_path / "resumed", 1)  # dies right after the 2nd epoch's checkpoint
    code, err = _wait(full_proc)
    assert code == 0, err
    code, err = _wait(killed_proc)
    assert code == -signal.SIGKILL, err
    partial = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert not partial["finished"] and len(partial["epochs"]) == 2
    code, err = _wait(_child(script, tmp_path / "resumed", -1))
    assert code == 0, err
    assert "resuming" in err and "epoch 3/4" in err
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert len(b["epochs"]) == 4 and b["finished"]
    assert without_timings(a) == without_timings(b)
    # DWA's weights changed in epochs 2 and 3 (so the resumed run restored the weighting state, not just the model)
    assert b["epochs"][3]["weights"] != {"semseg": 1.0, "depth": 1.0, "normals": 1.0}


def test_corrupt_last_checkpoint_falls_back_to_prev(tmp_path, capsys):
    first = make(tmp_path / "run").fit()
    last = tmp_path / "run" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])  # truncated, as after a crash of the disk rather than of us
    capsys.readouterr()
    second = make(tmp_path / "run", epochs=2).fit()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "is corrupt" in line]
    assert len(lines) == 1 and "prev.pt" in lines[0] and "last.pt" in lines[0]
    assert "resuming" in err and "epoch 2/2" in err  # prev.pt holds epoch 1 of 2, so epoch 2 is trained again
    # re-training epoch 2 from prev.pt reproduces it exactly
    assert without_timings(second) == without_timings(first)


def test_keep_last_false_leaves_best_and_metrics_and_a_crash_at_the_end_resumes_exactly(tmp_path):
    whole = make(tmp_path / "whole", epochs=3).fit()
    run = tmp_path / "run"
    saved = []

    class Broken(torch.utils.data.Dataset):  # the test split fails: the process dies after the last epoch
        def __len__(self):
            return 4

        def __getitem__(self, i):
            saved.append(sorted(p.name for p in run.glob("*.pt")))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny(), nyu("train"), nyu("val"), Broken(), out_dir=run, epochs=3, batch_size=4, progress=False,
                keep_last=False).fit()
    # the final epoch wrote no last.pt: what is there is epoch 2's (epoch 1's as prev.pt), and best.pt
    assert saved[0] == ["best.pt", "last.pt", "prev.pt"]
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    resumed = make(run, epochs=3, keep_last=False)
    metrics = resumed.fit()
    assert resumed.start_epoch == 2  # only the final epoch was trained again
    assert without_timings(metrics) == without_timings(whole)
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == ["best.pt", "metrics.json"]


def test_checkpoint_of_another_model_fails_before_training(tmp_path):
    make(tmp_path / "run", epochs=1).fit()
    before = (tmp_path / "run" / "last.pt").read_bytes()
    started = []

    class Spy(Callback):
        def on_epoch_start(self, trainer, epoch):
            started.append(epoch)

    trainer = make(tmp_path / "run", model=tiny(width=8), epochs=2, callbacks=[Spy()])
    with pytest.raises(CheckpointMismatchError, match=r"another model.*shape mismatch encoder\.0\.0\.weight"):
        trainer.fit()
    assert started == []
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    # ... and the message says how to get out of it
    with pytest.raises(CheckpointMismatchError, match="resume=False"):
        make(tmp_path / "run", model=tiny(width=8)).fit()


class NaNAt(nn.Module):
    """Wraps a model; makes one task's prediction NaN from training forward number ``at`` on."""

    def __init__(self, inner: nn.Module, task: str, at: int) -> None:
        super().__init__()
        self.inner, self.task, self.at, self.calls = inner, task, at, 0
        self.tasks = inner.tasks

    def forward(self, images):
        out = self.inner(images)
        if self.training:
            self.calls += 1
            if self.calls > self.at:
                out[self.task] = out[self.task] * float("nan")
        return out


def test_non_finite_loss_names_task_and_step_and_keeps_last_checkpoint(tmp_path):
    steps_per_epoch = math.ceil(len(nyu("train")) / 4)
    model = NaNAt(tiny(), "depth", at=steps_per_epoch + 1)  # the 2nd step of the 2nd epoch
    snapshot = {}

    def remember(trainer, epoch, record):
        snapshot["last"] = (tmp_path / "run" / "last.pt").read_bytes()

    trainer = make(tmp_path / "run", model=model, epochs=3, callbacks=[remember])
    with pytest.raises(NonFiniteLossError, match=r"epoch 1 step 1 .*task\(s\) depth:") as info:
        trainer.fit()
    assert "semseg" not in str(info.value).split("task(s)")[1].split(":")[0]
    assert "untouched" in str(info.value)
    assert (tmp_path / "run" / "last.pt").read_bytes() == snapshot["last"]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 0
    assert not (tmp_path / "run" / "prev.pt").exists()
    assert not json.loads((tmp_path / "run" / "metrics.json").read_text())["finished"]


# ------------------------------------------------------------------------------------------- input checks
def test_model_outputs_must_match_the_tasks(tmp_path):
    with pytest.raises(ValueError, match=r"semseg: model gives \(2, 5, 32, 32\), the task needs \(2, 13, 32, 32\)"):
        make(tmp_path, model=tiny(tasks={"semseg": 5, "depth": 1, "normals": 3}))
    with pytest.raises(ValueError, match=r"no output for task 'normals'"):
        make(tmp_path, model=tiny(tasks={"semseg": 13, "depth": 1}), tasks=["semseg", "depth", "normals"])
    with pytest.raises(ValueError, match=r"\['edge'\] have no labels in dataset synthetic-nyu"):
        make(tmp_path, tasks=["semseg", "edge"])
    # by default the tasks are the dataset's tasks the model predicts
    assert make(tmp_path, model=tiny(tasks={"depth": 1})).task_names == ("depth",)


def test_bad_options_name_the_choices(tmp_path):
    with pytest.raises(ValueError, match="valid optimizers: adam, adamw, sgd"):
        make(tmp_path, optimizer="rmsprop")
    with pytest.raises(ValueError, match="valid schedulers"):
        make(tmp_path, scheduler="linear")
    with pytest.raises(ValueError, match="valid weightings"):
        make(tmp_path, weighting="magic")
    with pytest.raises(ValueError, match="matches no parameter"):
        make(tmp_path, param_groups=[("cross_stitch", 100.0)])


# -------------------------------------------------------------------------------------- learning rates
def test_param_group_learning_rates_are_applied(tmp_path):
    n = len(nyu("train"))
    trainer = make(tmp_path, optimizer="sgd", momentum=0.0, lr=0.01, batch_size=n, epochs=1, val=False, test=False,
                   param_groups=[("heads", 10.0)])
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["heads"]["lr"] == pytest.approx(0.1) and groups["default"]["lr"] == pytest.approx(0.01)
    heads = {id(p) for p in trainer.model.heads.parameters()}
    assert {id(p) for p in groups["heads"]["params"]} == heads
    assert not heads & {id(p) for p in groups["default"]["params"]}
    head_w, enc_w = trainer.model.heads["depth"].weight, trainer.model.encoder[0][0].weight
    before = head_w.detach().clone(), enc_w.detach().clone()
    trainer.fit()  # one SGD step (one batch): delta = -lr_group * grad
    assert torch.allclose(before[0] - head_w.detach(), 0.1 * head_w.grad, atol=1e-7)
    assert torch.allclose(before[1] - enc_w.detach(), 0.01 * enc_w.grad, atol=1e-8)
    assert head_w.grad.abs().sum() > 0


@pytest.mark.parametrize("name,kw,formula", [
    ("poly", {"power": 0.9}, lambda e, E: (1 - e / E) ** 0.9),
    ("step", {"step_size": 2, "gamma": 0.5}, lambda e, E: 0.5 ** (e // 2)),
    ("cosine", {}, lambda e, E: (1 + math.cos(math.pi * e / E)) / 2),
])
def test_scheduler_learning_rates_follow_their_formula(tmp_path, name, kw, formula):
    epochs, lr = 5, 0.02
    trainer = make(tmp_path, epochs=epochs, lr=lr, scheduler=name, param_groups=[("heads", 100.0)], **kw)
    for e in range(epochs):
        got = [g["lr"] for g in trainer.optimizer.param_groups]
        assert got == pytest.approx([100 * lr * formula(e, epochs), lr * formula(e, epochs)], rel=1e-9, abs=1e-15)
        trainer.optimizer.step()  # no gradients: a no-op that keeps the scheduler's call order check quiet
        trainer.scheduler.step()


def test_poly_lr_and_weights_are_logged_in_metrics_json(tmp_path):
    m = make(tmp_path, epochs=3, lr=0.01, scheduler="poly", weighting="dwa").fit()
    for e, rec in enumerate(m["epochs"]):
        assert rec["lr"] == pytest.approx({"default": 0.01 * (1 - e / 3) ** 0.9})
    # DWA: epochs 0, 1 use 1; epoch 2 uses K softmax((L(1) / L(0)) / 2) of the logged training losses
    tasks = list(TASKS)
    assert m["epochs"][0]["weights"] == m["epochs"][1]["weights"] == {t: 1.0 for t in tasks}
    l0, l1 = m["epochs"][0]["train_loss"], m["epochs"][1]["train_loss"]
    e = {t: math.exp(l1[t] / l0[t] / 2) for t in tasks}
    want = {t: 3 * e[t] / sum(e.values()) for t in tasks}
    assert m["epochs"][2]["weights"] == pytest.approx(want, rel=1e-6)
    steps = math.ceil(len(nyu("train")) / 4)
    rows = m["step_weights"]["values"]
    assert m["step_weights"]["tasks"] == tasks and len(rows) == 3 * steps
    assert rows[-1] == pytest.approx([want[t] for t in tasks], rel=1e-5)


def test_uncertainty_log_variances_are_trained_and_logged(tmp_path):
    trainer = make(tmp_path, epochs=1, weighting="uncertainty", lr=0.01, val=False, test=False)
    assert any(g["name"] == "weighting" for g in trainer.optimizer.param_groups)
    m = trainer.fit()
    s = trainer.weighting.log_vars.detach()
    assert not torch.allclose(s, torch.full_like(s, -0.5))
    assert m["epochs"][0]["weights"] == pytest.approx({t: 0.5 * math.exp(-v) for t, v in zip(TASKS, s.tolist())})
    first = m["step_weights"]["values"][0]
    assert first != m["step_weights"]["values"][-1]


# -------------------------------------------------------------------------------------- selection
class ScriptedEval(Trainer):
    """Validation peaks at epoch 1, test would peak at epoch 2: the best epoch must be 1."""

    val_curve = [10.0, 30.0, 20.0]
    test_curve = [10.0, 20.0, 90.0]

    def _evaluate(self, dataset, desc="eval"):
        self.calls = getattr(self, "calls", []) + [(desc, len(self.history["epochs"]))]
        e = min(len(self.history["epochs"]), 2)
        curve = self.val_curve if desc == "val" else self.test_curve
        miou = curve[e]
        return {"semseg": {"miou": miou}, "depth": {"abs_err": 1.0}, "normals": {"mean": 30.0}}, {}


def test_best_epoch_is_chosen_on_validation_never_on_test(tmp_path):
    weights = {}

    def remember(trainer, epoch, record):
        weights[epoch] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    trainer = ScriptedEval(tiny(), nyu("train"), nyu("val"), nyu("test"), out_dir=tmp_path, epochs=3, batch_size=4,
                           progress=False, callbacks=[remember])
    m = trainer.fit()
    # score = mean over tasks of the relative change vs epoch 0: epoch 1 = (30-10)/10/3 = +66.7 %, epoch 2 = +33.3 %
    assert [r["score"] for r in m["epochs"]] == pytest.approx([0.0, 200 / 3, 100 / 3])
    assert m["best"]["epoch"] == 1 and m["best"]["selected_on"] == "val"
    assert [d for d, _ in trainer.calls].count("test") == 1  # test evaluated once, at the end
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    final = trainer.model.state_dict()
    assert all(torch.equal(final[k], weights[1][k]) for k in final)  # test ran on the best epoch's weights
    assert not all(torch.equal(final[k], weights[2][k]) for k in final)


# -------------------------------------------------------------------------------------- task switching
class Conditioned(nn.Module):
    """A fake task-conditioned model: ``model(images, task=name)`` -> {name: prediction}; records its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks = ("semseg", "depth")
        self.body = nn.Conv2d(3, 4, 3, padding=1)
        self.embed = nn.Embedding(2, 4)
        self.out = nn.ModuleDict({"semseg": nn.Conv2d(4, 13, 1), "depth": nn.Conv2d(4, 1, 1)})
        self.seen: list[tuple[bool, str]] = []

    def forward(self, images, task):
        self.seen.append((self.training, task))
        h = self.body(images) * self.embed.weight[self.tasks.index(task)][None, :, None, None]
        return {task: self.out[task](torch.relu(h))}


@pytest.mark.parametrize("schedule", ["epoch", "iteration"])
def test_task_schedule_switches_tasks(tmp_path, schedule):
    torch.manual_seed(0)
    model = Conditioned()
    trainer = make(tmp_path, model=model, tasks=["semseg", "depth"], task_schedule=schedule, epochs=2, test=False)
    model.seen.clear()
    m = trainer.fit()
    trained = [t for training, t in model.seen if training]
    steps = math.ceil(len(nyu("train")) / 4)
    if schedule == "epoch":
        assert trained == ["semseg"] * steps + ["depth"] * steps
        assert m["epochs"][0]["train_loss"]["depth"] is None and m["epochs"][1]["train_loss"]["semseg"] is None
    else:
        assert trained == [("semseg", "depth")[i % 2] for i in range(2 * steps)]
    evaluated = [t for training, t in model.seen if not training]
    assert evaluated.count("semseg") == evaluated.count("depth") > 0
    assert set(m["epochs"][1]["val"]) == {"semseg", "depth"}


# -------------------------------------------------------------------------------------- one-call helpers
def test_single_task_baseline_and_cli(tmp_path):
    m = train_single_task("synthetic-nyu", "depth", model="tiny", preset="unit", epochs=1, batch_size=4,
                          model_options={"width": 4}, out_dir=tmp_path / "st", progress=False)
    assert list(m["test"]) == ["depth"] and m["config"]["tasks"] == ["depth"]
    assert m["config"]["model"] == "tiny"
    assert main(["--data", "synthetic-nyu", "--preset", "unit", "--model", "tiny", "--model-opt", "width=4",
                 "--tasks", "semseg,depth", "--epochs", "1", "--batch-size", "4", "--weighting", "static",
                 "--weighting-opt", "weights={semseg: 0.5, depth: 0.5}", "--out", str(tmp_path / "cli"),
                 "--no-progress"]) == 0
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert cli["config"]["tasks"] == ["semseg", "depth"]
    assert cli["epochs"][0]["weights"] == {"semseg": 0.5, "depth": 0.5}


# -------------------------------------------------------------------------------------- TrainConfig
@pytest.mark.parametrize("options,message", [
    ({"epochs": 0}, "epochs=0: must be an integer >= 1"),
    ({"batch_size": 2.5}, "batch_size=2.5: must be an integer >= 1"),
    ({"lr": -1e-3}, "lr=-0.001: must be a finite number > 0"),
    ({"lr": float("nan")}, "lr=nan: must be a finite number > 0"),
    ({"momentum": 1.5}, r"momentum=1.5: must be in \[0, 1\)"),
    ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'; valid optimizers: adam, adamw, sgd"),
    ({"task_schedule": "step"}, "unknown task_schedule 'step'; valid values: None, epoch, iteration"),
    ({"device": "gpu"}, "device='gpu': valid devices are auto, cpu, cuda, cuda:N, mps"),
    ({"progress": "fancy"}, "progress='fancy': valid values are .* auto, bars, text, lines, off"),
    ({"max_steps": 0}, "max_steps=0: must be None or an integer >= 1"),
    ({"resume": "no"}, "resume='no': must be True or False"),
    ({"grad_clip": 0}, "grad_clip=0: must be None or a finite number > 0"),
    ({"epoch": 3}, "unknown Trainer option 'epoch' \\(did you mean 'epochs'\\?\\); valid options: out_dir, epochs"),
])
def test_train_config_names_the_bad_option_and_the_valid_values(tmp_path, options, message):
    with pytest.raises(TrainConfigError, match=message):
        TrainConfig.from_options(**options)
    with pytest.raises(ValueError, match=message):  # the keyword form goes through the same checks
        Trainer(tiny(), nyu("train"), out_dir=tmp_path, **options)


def test_config_and_keyword_forms_are_the_same_run(tmp_path):
    config = TrainConfig(out_dir=tmp_path / "a", epochs=1, batch_size=4, lr=3e-3, weighting="dwa", progress=False)
    a = Trainer(tiny(), nyu("train"), nyu("val"), config=config).fit()
    b = make(tmp_path / "b", epochs=1, lr=3e-3, weighting="dwa", test=False).fit()
    assert without_timings(a) == without_timings(b)
    # keywords next to a config replace its values; a dict config is the older spelling of extra=
    t = Trainer(tiny(), nyu("train"), config=config, epochs=3, out_dir=tmp_path / "c")
    assert t.config.epochs == 3 and config.epochs == 1 and t.run_config["lr"] == 3e-3
    old = Trainer(tiny(), nyu("train"), out_dir=tmp_path / "d", config={"model": "tiny"}, progress=False)
    assert old.config.extra == {"model": "tiny"} and old.run_config["model"] == "tiny"
    # callbacks read the options as attributes, as before TrainConfig held them; anything else is an AttributeError
    assert (t.epochs, t.batch_size, t.task_schedule) == (3, 4, None)
    with pytest.raises(AttributeError, match="no attribute 'not_an_option'"):
        _ = t.not_an_option


# -------------------------------------------------------------------------------------- train_step
@pytest.mark.parametrize("weighting", ["equal", "pcgrad"])
def test_train_step_in_a_plain_loop_is_the_trainers_training(tmp_path, weighting):
    """A loop of train_step over the Trainer's batches ends with bit-identical weights: train_step is the step."""
    trainer = make(tmp_path, epochs=1, val=False, test=False, weighting=weighting, train_metrics=False)
    loader = trainer._loader(nyu("train"), epoch=0)  # the Trainer's shuffled batches of epoch 0
    trainer.fit()
    model = tiny()
    tasks = {t: trainer.tasks[t] for t in TASKS}
    method = make_weighting(weighting, list(TASKS))
    shared = [p for n, p in model.named_parameters() if not n.startswith("heads")]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    model.train()
    for batch in loader:
        preds, losses, total = train_step(model, batch, tasks, method, optimizer, shared=shared)
        assert set(losses) == set(TASKS) and total.shape == () and not total.requires_grad
        assert preds["semseg"].shape == (len(batch["image"]), 13, *batch["image"].shape[-2:])
    want = trainer.model.state_dict()
    assert all(torch.equal(want[k], v) for k, v in model.state_dict().items())


# -------------------------------------------------------------------------------------- progress
def test_progress_is_one_line_per_epoch_when_stderr_is_not_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MTLKIT_PROGRESS", raising=False)
    make(tmp_path / "run", epochs=2, test=False, progress=None).fit()  # under capsys stderr is not a tty
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "run: training 2 epoch(s)"
    pattern = r"run: epoch {}/2: train loss \d+\.\d{{4}}, val score [+-]\d+\.\d\d%, elapsed 0:00:\d\d, ETA 0:00:\d\d$"
    assert re.match(pattern.format(1), lines[1]) and re.match(pattern.format(2), lines[2])
    assert lines[1].split("val score ")[1].startswith("+0.00%")  # epoch 1 is the reference of the score
    assert lines[2].endswith("ETA 0:00:00") and len(lines) == 3
    monkeypatch.setenv("MTLKIT_PROGRESS", "off")
    make(tmp_path / "quiet", epochs=1, val=False, test=False, progress=None).fit()
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("MTLKIT_PROGRESS", "widgets")
    with pytest.raises(ValueError, match="MTLKIT_PROGRESS='widgets': valid values are auto, bars, text, lines, off"):
        make(tmp_path / "bad", epochs=1, progress=None)


def test_progress_mode_rules(monkeypatch):
    import mtlkit.progress as progress

    monkeypatch.delenv("MTLKIT_PROGRESS", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("VSCODE_PID", raising=False)
    assert progress_mode(False) == "off" and progress_mode("text") == "text"
    assert progress_mode(None) == progress_mode(True) == "lines"  # not a terminal, not a notebook
    monkeypatch.setattr(progress, "_stderr_is_terminal", lambda: True)
    assert progress_mode(None) == "bars"
    monkeypatch.setattr(progress, "_notebook_kernel", lambda: True)
    assert progress_mode(None) == "text"  # a kernel nobody watches (papermill, nbval): text, never widgets
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/01.ipynb")  # JupyterLab started the kernel
    assert progress_mode(None) == "bars"
    monkeypatch.setenv("MTLKIT_PROGRESS", "lines")
    assert progress_mode(None) == progress_mode(True) == "lines" and progress_mode(False) == "off"


def test_an_interrupt_leaves_the_progress_on_its_own_line(tmp_path, capsys):
    def stop(trainer, epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make(tmp_path, epochs=3, val=False, test=False, progress="text", callbacks=[stop]).fit()
    err = capsys.readouterr().err
    assert "training:  33%" in err and err.endswith("\n")  # the bar was closed: the next message starts a line


# -------------------------------------------------------------------------------------- max_steps
class CountForwards(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.tasks, self.calls = inner, inner.tasks, {True: 0, False: 0}

    def forward(self, images):
        self.calls[self.training] += 1
        return self.inner(images)


def test_max_steps_caps_training_and_evaluation_and_projects_the_full_cost(tmp_path):
    model = CountForwards(tiny())
    m = make(tmp_path, model=model, epochs=2, batch_size=1, max_steps=2).fit()
    full = {s: len(nyu(s)) for s in ("train", "val", "test")}  # batches of one image
    assert min(full.values()) > 2  # the cap does cut every pass
    assert model.calls[True] == 2 * 2  # 2 epochs x 2 steps
    assert model.calls[False] == 1 + 2 * 2 + 2  # the output check, 2 validations and the test, 2 steps each
    assert m["capped"] == {"max_steps": 2, "cut": True, "full_steps": full, "run_steps": {s: 2 for s in full}}
    assert m["config"]["max_steps"] == 2 and len(m["step_weights"]["values"]) == 4
    t = m["timings"]
    assert t["train_steps"] == [2, 2]
    assert t["seconds_per_train_step"] == pytest.approx(sum(t["train_seconds"]) / 4)
    per_eval = sum(t["eval_seconds"]) / 4
    want = 2 * (full["train"] * t["seconds_per_train_step"] + full["val"] * per_eval) + full["test"] * per_eval
    assert t["projected_full_seconds"] == pytest.approx(want)
    # an uncapped run records no cap
    assert "capped" not in make(tmp_path / "full", epochs=1, val=False, test=False).fit()
