"""The Trainer under ``torchrun --nproc_per_node=2`` on CPU (gloo): one metrics.json, ranks stay in sync, the
validation metrics gathered across ranks equal a single-process evaluation of the same weights, and a max_steps run
stops every rank after the same step."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)

SCRIPT = textwrap.dedent("""
    import hashlib, json, os, sys
    import torch
    from mtlkit.data import get_dataset
    from mtlkit.models.tiny import TinyMTLNet  # not build(): the registry would import every family (timm)
    from mtlkit.train import Trainer, seed_everything

    root = sys.argv[1]
    rank = int(os.environ["RANK"])

    def checksum(module):
        h = hashlib.sha256()
        for name, t in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def on_epoch_end(trainer, epoch, record):
        # parameters and the weighting's state, before fit() reloads the best checkpoint on every rank
        with open(os.path.join(out, f"rank{rank}-epoch{epoch}.json"), "w") as fh:
            json.dump({"params": checksum(trainer.model), "weighting": checksum(trainer.weighting),
                       "dist": [trainer.dist.rank, trainer.dist.world_size]}, fh)

    data = [get_dataset("synthetic-nyu", s, preset="unit") for s in ("train", "val", "test")]
    # a plain loss weighting with learnable weights (DDP's gradient path) and a gradient method (its own path)
    for run in sys.argv[2:]:
        out = os.path.join(root, run)
        seed_everything(rank)  # different initial weights per rank: DDP must broadcast rank 0's
        model = TinyMTLNet({"semseg": 13, "depth": 1, "normals": 3}, width=4)
        weighting, max_steps = ("equal", 1) if run == "capped" else (run, None)
        Trainer(model, *data, out_dir=out, epochs=2, batch_size=2, weighting=weighting, lr=1e-2, seed=0,
                max_steps=max_steps, progress=False, callbacks=[on_epoch_end]).fit()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
""")


def _checksum_files(out):
    return sorted(p for p in os.listdir(out) if p.startswith("rank"))


WEIGHTINGS = ("uncertainty", "pcgrad")
RUNS = (*WEIGHTINGS, "capped")  # capped: max_steps=1, every rank stops after the same step


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """One torchrun launch (2 processes) training one run per weighting and a capped one; returns the root folder."""
    from mtlkit.data import get_dataset

    for s in ("train", "val", "test"):  # build the data cache here so that the two ranks do not race to write it
        get_dataset("synthetic-nyu", s, preset="unit")
    root = tmp_path_factory.mktemp("ddp")
    script = root / "ddp_child.py"
    script.write_text(SCRIPT)
    for run in RUNS:
        (root / run).mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(root),
         *RUNS],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_torchrun_two_processes(ddp_runs, tmp_path, weighting):
    from mtlkit.data import get_dataset
    from mtlkit.models import build
    from mtlkit.train import Trainer

    data = {s: get_dataset("synthetic-nyu", s, preset="unit") for s in ("train", "val", "test")}
    out = ddp_runs / weighting

    assert sorted(p.name for p in out.glob("*.json")) == ["metrics.json"] + _checksum_files(out)
    files = _checksum_files(out)
    assert files == ["rank0-epoch0.json", "rank0-epoch1.json", "rank1-epoch0.json", "rank1-epoch1.json"]
    for epoch in (0, 1):
        r0 = json.loads((out / f"rank0-epoch{epoch}.json").read_text())
        r1 = json.loads((out / f"rank1-epoch{epoch}.json").read_text())
        assert r0["dist"] == [0, 2] and r1["dist"] == [1, 2]
        assert r0["params"] == r1["params"], f"ranks diverged after epoch {epoch}"
        assert r0["weighting"] == r1["weighting"]
    r0_epochs = [json.loads((out / f"rank0-epoch{e}.json").read_text())["params"] for e in (0, 1)]
    assert r0_epochs[0] != r0_epochs[1]  # it did train

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"] and metrics["config"]["world_size"] == 2
    assert len(metrics["epochs"]) == 2 and metrics["test"] is not None
    # each rank trained on half of the data, the losses are averaged over both
    steps_per_rank = math.ceil(math.ceil(len(data["train"]) / 2) / 2)
    assert len(metrics["step_weights"]["values"]) == 2 * steps_per_rank

    # the gathered validation metrics equal a single-process evaluation of the checkpointed weights
    ckpt = torch.load(out / "last.pt", weights_only=True)
    model = build("tiny", {"semseg": 13, "depth": 1, "normals": 3}, width=4)
    model.load_state_dict(ckpt["model"])
    single = Trainer(model, data["train"], out_dir=tmp_path / "single", batch_size=2, progress=False)
    got = single.evaluate(data["val"])
    want = metrics["epochs"][-1]["val"]
    for task in want:
        assert got[task] == pytest.approx(want[task], rel=1e-4, abs=1e-5)


def test_torchrun_max_steps_stops_every_rank_together(ddp_runs):
    from mtlkit.data import get_dataset

    out = ddp_runs / "capped"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"] and len(metrics["step_weights"]["values"]) == 2  # 2 epochs x 1 step
    n_train, n_val = (len(get_dataset("synthetic-nyu", s, preset="unit")) for s in ("train", "val"))
    assert metrics["capped"]["full_steps"]["train"] == math.ceil(math.ceil(n_train / 2) / 2)  # per rank
    assert metrics["capped"]["full_steps"]["val"] == math.ceil(math.ceil(n_val / 2) / 2)
    assert metrics["capped"]["run_steps"] == {"train": 1, "val": 1, "test": 1}
    for epoch in (0, 1):
        r0, r1 = (json.loads((out / f"rank{r}-epoch{epoch}.json").read_text()) for r in (0, 1))
        assert r0["params"] == r1["params"]
