"""Lookahead affinity on cases with a known answer, the grouping search on hand-made matrices, the callback."""
from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from mtlkit.affinity import (
    AffinityCallback,
    average_affinity,
    best_grouping,
    group_score,
    lookahead_affinity,
    rank_groupings,
    shared_parameter_names,
)


class LinearTwoTask(nn.Module):
    """image [B, 3] -> shared linear (+ BatchNorm, whose statistics must stay untouched) -> one scale per task."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(3, 1)
        self.norm = nn.BatchNorm1d(1, affine=False)
        self.heads = nn.ModuleDict({"a": nn.Linear(1, 1), "b": nn.Linear(1, 1)})
        with torch.no_grad():
            for head in self.heads.values():
                head.weight.fill_(1.0)
                head.bias.zero_()

    def forward(self, x):
        h = self.norm(self.trunk(x))
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}


def mse(preds, batch):
    return {t: ((preds[t] - batch[t]) ** 2).mean() for t in ("a", "b")}


def make_batch(sign_b: float):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(16, generator=gen)
    return {"image": x, "a": y, "b": sign_b * y}


def by_hand(model, batch, lr):
    """Independent: for each task i, a deep copy of the model takes one SGD step on L_i over the shared
    parameters (trunk), then both losses are measured again."""
    z = np.zeros((2, 2))
    base_model = copy.deepcopy(model)
    base = {t: v.item() for t, v in mse(base_model(batch["image"]), batch).items()}
    for i, t in enumerate(("a", "b")):
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.trunk.parameters(), lr=lr)
        mse(m(batch["image"]), batch)[t].backward()
        opt.step()
        with torch.no_grad():  # train mode: BatchNorm normalises with this batch's statistics
            after = mse(m(batch["image"]), batch)
        for j, s in enumerate(("a", "b")):
            z[i, j] = 1 - after[s].item() / base[s]
    return z


@pytest.mark.parametrize("sign_b", [1.0, -1.0])
def test_lookahead_affinity_identical_and_opposite_targets(sign_b):
    model = LinearTwoTask().train()
    batch = make_batch(sign_b)
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    py = random.getstate()
    z = lookahead_affinity(model, batch, ["a", "b"], lr=0.05, loss_fn=mse, shared=["trunk.weight", "trunk.bias"])
    assert z.shape == (2, 2) and z.dtype == torch.float64
    assert z.numpy() == pytest.approx(by_hand(model, batch, 0.05), abs=1e-6)
    if sign_b > 0:  # the same task twice: a step on either helps both exactly as much as itself
        assert z[0, 1] > 0 and z[1, 0] > 0
        assert z[0, 1].item() == pytest.approx(z[0, 0].item(), abs=1e-9)
    else:  # opposite targets: each task's step hurts the other
        assert z[0, 1] < 0 and z[1, 0] < 0
        assert z[0, 0] > 0 and z[1, 1] > 0
    # the model is untouched: parameters, BatchNorm statistics (and its counter), random states
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert torch.equal(rng, torch.get_rng_state()) and random.getstate() == py


def test_lookahead_affinity_checks_its_input():
    model = LinearTwoTask()
    batch = make_batch(1.0)
    with pytest.raises(ValueError, match="not parameters of"):
        lookahead_affinity(model, batch, ["a", "b"], lr=0.1, loss_fn=mse, shared=["neck.weight"])
    with pytest.raises(ValueError, match="lr must be"):
        lookahead_affinity(model, batch, ["a", "b"], lr=0.0, loss_fn=mse)
    with pytest.raises(ValueError, match="loss_fn"):
        lookahead_affinity(model, batch, ["a", "b"], lr=0.1)
    # the default shared parameters: names without a task component
    assert shared_parameter_names(model, ["a", "b"]) == ["trunk.weight", "trunk.bias"]


AFF = np.array([  # rows: stepped-on task, columns: measured task
    [0.5, 0.4, -0.1, -0.2],
    [0.3, 0.5, -0.3, 0.0],
    [-0.2, -0.1, 0.6, 0.2],
    [0.0, -0.4, 0.1, 0.4],
])
TASKS = ["a", "b", "c", "d"]


def test_best_grouping_on_a_hand_made_matrix():
    groups, score = best_grouping(AFF, TASKS, 2)
    # {a,b}: onto a = Z[b,a] = 0.3, onto b = Z[a,b] = 0.4; {c,d}: onto c = 0.1, onto d = 0.2 -> 1.0
    assert groups == [("a", "b"), ("c", "d")]
    assert score == pytest.approx(1.0)
    assert group_score(AFF, TASKS, groups) == pytest.approx(1.0)
    # all in one network: onto a = mean(0.3, -0.2, 0.0), b = mean(0.4, -0.1, -0.4), c = mean(-0.1, -0.3, 0.1),
    # d = mean(-0.2, 0.0, 0.2)
    expected_one = np.mean([0.3, -0.2, 0.0]) + np.mean([0.4, -0.1, -0.4]) + np.mean([-0.1, -0.3, 0.1]) + 0.0
    assert best_grouping(AFF, TASKS, 1) == ([("a", "b", "c", "d")], pytest.approx(expected_one))
    assert best_grouping(AFF, TASKS, 4) == ([("a",), ("b",), ("c",), ("d",)], 0.0)  # alone: no transfer
    ranked = rank_groupings(AFF, TASKS, 2)
    assert len(ranked) == 7  # Stirling S(4, 2)
    assert [s for s, _ in ranked] == sorted((s for s, _ in ranked), reverse=True)


def test_overlapping_groups_serve_each_task_from_its_best_group():
    # c helps a (0.9) but a hurts c (-0.5): with overlap, a sits with c (serving a) while c is served elsewhere
    z = np.array([[0.5, 0.0, -0.5], [0.0, 0.5, 0.1], [0.9, 0.1, 0.5]])
    groups, score = best_grouping(z, ["a", "b", "c"], 2, overlap=True)
    # onto a from {a,c}: 0.9; onto b, c from {b,c}: 0.1 and 0.1 -> 1.1. Partitions: {a,c}{b} = 0.9 - 0.5 = 0.4,
    # {b,c}{a} = 0.2, {a,b}{c} = 0
    assert groups == [("a", "c"), ("b", "c")]
    assert score == pytest.approx(1.1)
    assert best_grouping(z, ["a", "b", "c"], 2) == ([("a", "c"), ("b",)], pytest.approx(0.4))
    with pytest.raises(ValueError, match="n_groups must be between 1 and 3"):
        best_grouping(z, ["a", "b", "c"], 4)
    with pytest.raises(ValueError, match="every task needs a group"):
        group_score(z, ["a", "b", "c"], [("a", "b")])


def test_callback_records_affinity_without_changing_training(tmp_path):
    from mtlkit.data import get_dataset
    from mtlkit.models import build
    from mtlkit.train import Trainer, seed_everything

    train = get_dataset("synthetic-nyu", "train", preset="unit")

    def run(out, callbacks):
        seed_everything(0)
        model = build("tiny", {"semseg": 13, "depth": 1, "normals": 3}, width=4)
        trainer = Trainer(model, train, out_dir=out, epochs=2, batch_size=4, progress=False, callbacks=callbacks)
        return trainer, trainer.fit()

    trainer, with_cb = run(tmp_path / "cb", [AffinityCallback(every=3, lr=0.1, batch_size=4)])
    _, without = run(tmp_path / "plain", [])
    assert with_cb["epochs"][-1]["train_loss"] == without["epochs"][-1]["train_loss"]  # same trajectory
    records = trainer.history["affinity"]["records"]
    assert [r["step"] for r in records] == [3]  # 2 epochs x 2 steps: steps 1..4, measured at 3
    z = np.asarray(records[0]["matrix"])
    assert z.shape == (3, 3) and np.isfinite(z).all()
    assert (np.diag(z) > 0).all()  # a step on a task's own loss lowers it (small lr)
    on_disk = json.loads((tmp_path / "cb" / "affinity.json").read_text())
    assert on_disk["tasks"] == ["semseg", "depth", "normals"] and len(on_disk["records"]) == 1
    assert average_affinity(on_disk) == pytest.approx(z)
