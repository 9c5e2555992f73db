"""Datasets and the sharded cache: sample contract, round trip, checksums, self-repair, atomicity, concurrency.

Most cache tests use a cheap fake generator (``fake_generate`` / ``FakeSynthetic``) so they stay fast; the contract
tests at the end run the real generator at preset ``unit``.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mtlkit import atomic as atomic_mod
from mtlkit.data import cache as cache_mod
from mtlkit.data import datasets as ds_mod
from mtlkit.data import build_cache, collate, get_dataset, list_datasets, synth_command, verify_cache
from mtlkit.data.cache import CacheWarning, ShardedCache, normalize_meta
from mtlkit.paths import DataDirError

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------- fakes
def fake_generate(index: int, size: tuple[int, int] = (6, 7)) -> dict:
    """A deterministic compact sample with every storage layout: stacked maps, scalars, ragged boxes, meta."""
    rng = np.random.default_rng(1000 + index)
    h, w = size
    k = index % 3  # 0, 1 or 2 boxes: exercises the ragged layout, including empty
    return {
        "image": rng.integers(0, 256, (3, h, w), dtype=np.uint8),
        "semseg": rng.integers(-1, 5, (h, w)).astype(np.int16),
        "depth": rng.random((1, h, w), dtype=np.float32) * 10,
        "edge": rng.integers(-1, 2, (1, h, w)).astype(np.int8),
        "scene": index % 4 - 1,
        "boxes": (rng.random((k, 4)) * w).astype(np.float32),
        "box_labels": np.arange(k, dtype=np.int64),
        "meta": {"dataset": "fake", "index": index, "tasks": ["semseg", "depth"], "intrinsics": np.eye(3)},
    }


class CountingGenerate:
    """``fake_generate`` that counts its calls (in-process builds only)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, index: int) -> dict:
        self.calls.append(index)
        return fake_generate(index)


PARAMS = {"dataset": "fake", "generator_version": 1, "preset": "unit", "seed": 0, "split": "train"}


def make_cache(directory: Path, generate=fake_generate, count: int = 10, shard_size: int = 4) -> ShardedCache:
    return ShardedCache(directory, generate, count, PARAMS, shard_size=shard_size)


def assert_compact_equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        if key == "meta":
            assert normalize_meta(a[key]) == normalize_meta(b[key])
        elif isinstance(a[key], np.ndarray):
            assert a[key].dtype == np.asarray(b[key]).dtype, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            assert a[key] == b[key], key


def cache_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, CacheWarning)]


@dataclass(frozen=True)
class FakeVariant:
    name: str
    tasks: tuple
    classes: dict
    sizes: dict = field(default_factory=lambda: {"unit": (8, 12), "smoke": (16, 16), "lesson": (16, 16),
                                                  "paper": (16, 16)})
    counts: dict = field(default_factory=lambda: {p: {"train": 6, "val": 3, "test": 2}
                                                  for p in ("unit", "smoke", "lesson", "paper")})
    sources: tuple = ()


class FakeSynthetic:
    """Stands in for ``mtlkit.data.synthetic`` (same API, trivial images)."""

    GENERATOR_VERSION = 99
    CITY_19_TO_7 = np.array([0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6], dtype=np.int16)
    CITY_7_CLASSES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
    VARIANTS = {
        "synthetic-nyu": FakeVariant("synthetic-nyu", ("semseg", "depth", "normals"),
                                     {"semseg": tuple(f"c{i}" for i in range(13))}),
        "synthetic-city": FakeVariant("synthetic-city", ("semseg", "depth"),
                                      {"semseg": tuple(f"c{i}" for i in range(19))}),
    }

    @classmethod
    def get_variant(cls, name: str) -> FakeVariant:
        return cls.VARIANTS[name]

    @classmethod
    def generate_sample(cls, name, split, index, seed=0, size=(8, 12)) -> dict:
        variant, (h, w) = cls.get_variant(name), size
        rng = np.random.default_rng([seed, index, {"train": 0, "val": 1, "test": 2}[split]])
        n = len(variant.classes["semseg"])
        sem = rng.integers(-1, n, (h, w)).astype(np.int16)
        normals = rng.normal(size=(3, h, w)).astype(np.float32)
        normals /= np.linalg.norm(normals, axis=0, keepdims=True)
        out = {"image": rng.integers(0, 256, (3, h, w), dtype=np.uint8), "semseg": sem,
               "depth": rng.random((1, h, w), dtype=np.float32) + 0.5, "normals": normals,
               "meta": {"dataset": variant.name, "split": split, "index": index, "tasks": list(variant.tasks)}}
        return {k: v for k, v in out.items() if k in variant.tasks or k in ("image", "meta")}


@pytest.fixture
def fake_synthetic(monkeypatch):
    monkeypatch.setattr(ds_mod, "_synthetic", lambda: FakeSynthetic)
    return FakeSynthetic


# ------------------------------------------------------------------------------------------- round trip
def test_cache_round_trip_layout_and_checksums(tmp_path):
    cache = make_cache(tmp_path / "c").open()
    files = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert files == [".lock", "manifest.json", "shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    for i in range(10):  # read back equal to on-the-fly generation, dtypes included
        assert_compact_equal(cache.get(i), fake_generate(i))
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["params"] == PARAMS and manifest["count"] == 10
    assert [(e["start"], e["stop"]) for e in manifest["shards"]] == [(0, 4), (4, 8), (8, 10)]
    for e in manifest["shards"]:
        data = (tmp_path / "c" / e["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == e["sha256"] and len(data) == e["bytes"]
    # A shard is a plain npz: stacked per key, boxes flat + offsets, readable without pickle.
    with np.load(tmp_path / "c" / "shard-00002.npz", allow_pickle=False) as z:
        assert z["image"].shape == (2, 3, 6, 7) and z["image"].dtype == np.uint8
        assert z["scene"].tolist() == [8 % 4 - 1, 9 % 4 - 1]
        assert z["boxes.offsets"].tolist() == [0, 8 % 3, 8 % 3 + 9 % 3]
    assert cache.verify() == []
    with pytest.raises(IndexError):
        cache.get(10)


def test_items_are_copies_not_views_of_the_cached_shard(tmp_path):
    cache = make_cache(tmp_path / "c").open()
    item = cache.get(1)
    item["image"][:] = 0
    np.testing.assert_array_equal(cache.get(1)["image"], fake_generate(1)["image"])


def test_same_samples_give_same_bytes(tmp_path):
    a = make_cache(tmp_path / "a").open()
    b = make_cache(tmp_path / "b").open()
    sha = lambda c: [e["sha256"] for e in json.loads(c.manifest_path.read_text())["shards"]]  # noqa: E731
    assert sha(a) == sha(b)


# --------------------------------------------------------------------------------------- damage and repair
@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_damaged_shard_is_reported_once_and_rebuilt_identical(tmp_path, damage):
    make_cache(tmp_path / "c").open()
    shard = tmp_path / "c" / "shard-00001.npz"
    original = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(original[: len(original) // 2])
    elif damage == "garbage":
        shard.write_bytes(np.random.default_rng(0).integers(0, 256, len(original), dtype=np.uint8).tobytes())
    else:
        shard.unlink()
    gen = CountingGenerate()
    cache = make_cache(tmp_path / "c", generate=gen)  # a fresh reader, as in a new process
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cache.open()
        items = [cache.get(i) for i in range(10)]
    messages = cache_warnings(record)
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "shard-00001.npz" in messages[0] and "rebuilding" in messages[0]
    assert ("missing" if damage == "delete" else "sha256 mismatch") in messages[0]
    assert sorted(gen.calls) == [4, 5, 6, 7]  # only the damaged shard was regenerated
    assert shard.read_bytes() == original
    for i, item in enumerate(items):
        assert_compact_equal(item, fake_generate(i))
    assert cache.verify() == []


@pytest.mark.parametrize("bad", ["{not json", '{"format": 1, "shards": []}', ""])
def test_corrupt_manifest_is_reported_once_and_rebuilt_from_intact_shards(tmp_path, bad):
    make_cache(tmp_path / "c").open()
    original = (tmp_path / "c" / "manifest.json").read_text()
    (tmp_path / "c" / "manifest.json").write_text(bad)
    gen = CountingGenerate()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cache = make_cache(tmp_path / "c", generate=gen).open()
    messages = cache_warnings(record)
    assert len(messages) == 1 and "manifest" in messages[0] and "rebuilding" in messages[0]
    assert gen.calls == []  # intact shards were verified and kept
    assert json.loads((tmp_path / "c" / "manifest.json").read_text()) == json.loads(original)
    assert_compact_equal(cache.get(9), fake_generate(9))


def test_verify_reports_a_bad_shard(tmp_path, fake_synthetic):
    build_cache("synthetic-nyu", "unit", seed=7, splits=("train",), progress=False)
    assert verify_cache("synthetic-nyu", "unit", seed=7, splits=("train",)) == []
    shard = get_dataset("synthetic-nyu", "train", preset="unit", seed=7).cache_path / "shard-00000.npz"
    shard.write_bytes(shard.read_bytes()[:-10])
    problems = verify_cache("synthetic-nyu", "unit", seed=7, splits=("train",))
    assert len(problems) == 1 and "shard-00000.npz" in problems[0] and "sha256" in problems[0]
    missing = verify_cache("synthetic-nyu", "unit", splits=("val",), seed=5)
    assert len(missing) == 1 and "manifest missing" in missing[0]
    with pytest.warns(CacheWarning, match="shard-00000.npz is bad"):  # build_cache checks and repairs
        build_cache("synthetic-nyu", "unit", seed=7, splits=("train",), progress=False)
    assert verify_cache("synthetic-nyu", "unit", seed=7, splits=("train",)) == []


# ----------------------------------------------------------------------------------------------- atomicity
def test_keyboard_interrupt_during_a_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """Ctrl-C after the bytes hit the temp file but before the rename: nothing half-written stays behind."""
    calls = {"n": 0}

    def interrupted_fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second shard's write
            raise KeyboardInterrupt

    monkeypatch.setattr(atomic_mod, "_fsync", interrupted_fsync)
    directory = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        make_cache(directory).open()
    assert sorted(p.name for p in directory.iterdir()) == [".lock", "shard-00000.npz"]  # no temp, no manifest
    monkeypatch.setattr(atomic_mod, "_fsync", os.fsync)
    gen = CountingGenerate()
    cache = make_cache(directory, generate=gen).open()  # resumes: the complete first shard is kept
    assert sorted(gen.calls) == list(range(4, 10))
    assert cache.verify() == []
    assert_compact_equal(cache.get(2), fake_generate(2))


def test_interrupted_manifest_write_keeps_the_old_manifest(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    cache_mod.atomic_write_bytes(path, b"old")

    def boom(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic_mod, "_fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        cache_mod.atomic_write_bytes(path, b"new content")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.json"]


_BUILDER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    import numpy as np
    from mtlkit.data.cache import ShardedCache

    directory, log, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

    def generate(index):
        with open(log, "a") as f:  # O_APPEND: one line per call, from either process
            f.write(f"{os.getpid()} {index}\\n")
        time.sleep(0.02)
        rng = np.random.default_rng(index)
        return {"image": rng.integers(0, 256, (3, 5, 5), dtype=np.uint8), "meta": {"index": index}}

    while not go.exists():
        time.sleep(0.01)
    cache = ShardedCache(directory, generate, 24, {"dataset": "race"}, shard_size=4).open()
    digest = [int(cache.get(i)["image"].sum()) for i in range(24)]
    print(json.dumps(digest))
""")


def test_two_processes_building_the_same_cache_at_once(tmp_path):
    script = tmp_path / "builder.py"
    script.write_text(_BUILDER)
    directory, log, go = tmp_path / "race", tmp_path / "calls.log", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, str(script), str(directory), str(log), str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    go.touch()  # release both builders together
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    calls = [line.split() for line in log.read_text().splitlines()]
    assert sorted(int(i) for _, i in calls) == list(range(24))  # every sample generated exactly once ...
    assert len({pid for pid, _ in calls}) == 1  # ... by one process; the other waited on the lock and reused it
    expected = [int(np.random.default_rng(i).integers(0, 256, (3, 5, 5), dtype=np.uint8).sum()) for i in range(24)]
    assert [json.loads(out) for out, _ in outs] == [expected, expected]
    cache = ShardedCache(directory, lambda i: None, 24, {"dataset": "race"}, shard_size=4)
    assert cache.verify() == []
    assert not list(directory.glob("*.tmp"))


# ---------------------------------------------------------------------------------------- errors and registry
def test_non_writable_data_dir_gives_the_fix(tmp_path, fake_synthetic):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data folder should be")  # unwritable even for root
    with pytest.raises(DataDirError, match="MTLKIT_DATA_DIR"):
        get_dataset("synthetic-nyu", "train", preset="unit", root=blocker / "data")


def test_unknown_name_preset_split_option_list_the_valid_ones(fake_synthetic):
    with pytest.raises(ValueError, match="unknown dataset 'synthetic-nuy'.*synthetic-nyu"):
        get_dataset("synthetic-nuy", "train")
    with pytest.raises(ValueError, match="unknown preset 'tiny'.*unit, smoke, lesson, paper"):
        get_dataset("synthetic-nyu", "train", preset="tiny")
    with pytest.raises(ValueError, match="unknown split 'valid'.*train, val, test"):
        get_dataset("synthetic-nyu", "valid", preset="unit")
    with pytest.raises(ValueError, match="unknown classes value 8.*19, 7"):
        get_dataset("synthetic-city", "train", preset="unit", classes=8)
    with pytest.raises(ValueError, match="no option 'classes'"):
        get_dataset("synthetic-nyu", "train", preset="unit", classes=7)
    assert {"synthetic-nyu", "synthetic-city", "synthetic-pet", "synthetic-pascal",
            "synthetic-broden"} <= set(list_datasets())


def test_register_dataset_adds_a_loader_and_refuses_duplicates(monkeypatch):
    monkeypatch.setattr(ds_mod, "DATASETS", dict(ds_mod.DATASETS))

    @ds_mod.register_dataset("toy-real")
    def _toy(split, preset, root, transform, seed, cache, **options):
        return [split, preset, options]

    assert ds_mod.get_dataset("toy-real", "val", preset="unit", size=3) == ["val", "unit", {"size": 3}]
    with pytest.raises(ValueError, match="registered twice"):
        ds_mod.register_dataset("toy-real")(_toy)


# ----------------------------------------------------------------------------------- dataset layer (fake gen)
def test_dataset_converts_to_the_contract_and_cache_matches_on_the_fly(fake_synthetic):
    cached = get_dataset("synthetic-nyu", "val", preset="unit", seed=3)
    live = get_dataset("synthetic-nyu", "val", preset="unit", seed=3, cache=False)
    assert cached.cache_path.parts[-6:] == ("synthetic", "synthetic-nyu", "unit", "seed3", "v99", "val")
    assert cached.cache_path.is_relative_to(Path(os.environ["MTLKIT_DATA_DIR"]))
    assert len(cached) == 3 and cached.image_size == (8, 12) and cached.tasks == ("semseg", "depth", "normals")
    assert cached.task_info["semseg"]["num_classes"] == 13 and cached.task_info["depth"] == {}
    for i in range(len(cached)):
        a, b = cached[i], live[i]
        raw = FakeSynthetic.generate_sample("synthetic-nyu", "val", i, seed=3, size=(8, 12))
        assert a["image"].dtype == torch.float32 and torch.equal(a["image"] * 255,
                                                                  torch.from_numpy(raw["image"]).float())
        assert a["semseg"].dtype == torch.int64 and torch.equal(a["semseg"], torch.from_numpy(raw["semseg"]).long())
        assert a["meta"]["index"] == i and a["meta"]["split"] == "val" and a["meta"]["dataset"] == "synthetic-nyu"
        for key in a:
            if key != "meta":
                assert torch.equal(a[key], b[key]), key
        assert a["meta"] == b["meta"]
    assert torch.equal(cached[-1]["image"], cached[2]["image"])


def test_city_classes_7_maps_on_read_from_the_same_cache(fake_synthetic):
    c19 = get_dataset("synthetic-city", "train", preset="unit")
    c7 = get_dataset("synthetic-city", "train", preset="unit", classes=7)
    assert c19.cache_path == c7.cache_path
    assert c7.task_info["semseg"] == {"num_classes": 7, "class_names": list(FakeSynthetic.CITY_7_CLASSES)}
    lut = torch.from_numpy(FakeSynthetic.CITY_19_TO_7).long()
    for i in range(len(c19)):
        s19, s7 = c19[i]["semseg"], c7[i]["semseg"]
        assert torch.equal(s7 == -1, s19 == -1) and (s19 == -1).any()
        assert torch.equal(s7[s19 >= 0], lut[s19[s19 >= 0]])
        assert c7[i]["meta"]["classes"] == 7


def test_dataloader_workers_give_the_same_items(fake_synthetic):
    ds = get_dataset("synthetic-nyu", "train", preset="unit")
    ds._cache._decoded.clear()  # workers must be able to load shards themselves
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate, shuffle=False)
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[2]) == 2
    clone = pickle.loads(pickle.dumps(ds))  # spawn-started workers receive the dataset pickled
    assert clone._cache._decoded == {} and torch.equal(clone[5]["depth"], batches[0][1]["depth"][1])
    for b0, b2 in zip(batches[0], batches[2]):
        for key in ("image", "semseg", "depth", "normals"):
            assert torch.equal(b0[key], b2[key])
        assert b0["meta"] == b2["meta"]


def test_build_cache_in_parallel_equals_serial(tmp_path, fake_synthetic, capsys):
    serial = build_cache("synthetic-nyu", "unit", seed=1, jobs=1, progress=False, root=tmp_path / "a")
    parallel = build_cache("synthetic-nyu", "unit", seed=1, jobs=2, progress=False, root=tmp_path / "b")
    assert [p.name for p in serial] == ["train", "val", "test"]
    for a, b in zip(serial, parallel):
        assert json.loads((a / "manifest.json").read_text()) == json.loads((b / "manifest.json").read_text())
    synth_command(["synthetic-city"], preset="unit", seed=2, jobs=1)
    out = capsys.readouterr().out
    assert "synthetic-city" in out and "seed2" in out and "train 6" in out


def test_collate_stacks_tensors_and_keeps_lists():
    def sample(k: int) -> dict:
        return {"image": torch.full((3, 2, 2), float(k)), "binary": torch.tensor(k),
                "boxes": torch.zeros(k, 4), "box_labels": torch.zeros(k, dtype=torch.int64), "meta": {"index": k}}

    batch = collate([sample(0), sample(2)])
    assert batch["image"].shape == (2, 3, 2, 2) and batch["image"][1, 0, 0, 0] == 2
    assert batch["binary"].tolist() == [0, 2] and batch["binary"].dtype == torch.int64
    assert [b.shape[0] for b in batch["boxes"]] == [0, 2] and len(batch["box_labels"]) == 2
    assert batch["meta"] == [{"index": 0}, {"index": 2}]
    with pytest.raises(ValueError, match="shapes differ"):
        collate([sample(0), {**sample(1), "image": torch.zeros(3, 4, 4)}])
    with pytest.raises(ValueError, match="keys"):
        collate([sample(0), {"image": torch.zeros(3, 2, 2)}])


# --------------------------------------------------------------------------------- the real generator, unit
SYNTHETIC = ("synthetic-nyu", "synthetic-city", "synthetic-pet", "synthetic-pascal", "synthetic-broden")


@pytest.fixture(scope="module")
def synthetic():
    return pytest.importorskip("mtlkit.data.synthetic", reason="mtlkit.data.synthetic (the generator) is missing")


def check_contract(item: dict, ds) -> None:
    """Keys, dtypes, shapes and value ranges of the sample contract (docs/contracts.md#sample)."""
    h, w = ds.image_size
    expected = {"image", "meta", *ds.tasks} | ({"box_labels"} if "boxes" in ds.tasks else set())
    assert set(item) == expected
    img = item["image"]
    assert img.shape == (3, h, w) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    labelled = set(item["meta"]["tasks"])
    assert labelled <= set(ds.tasks) and item["meta"]["dataset"] == ds.name
    for task in ds.tasks:
        x = item[task]
        n = ds.task_info[task].get("num_classes")
        if task in ("semseg", "parts", "material"):
            assert x.shape == (h, w) and x.dtype == torch.int64 and x.min() >= -1 and x.max() < n
            ignored = bool((x == -1).all())
        elif task == "depth":
            assert x.shape == (1, h, w) and x.dtype == torch.float32 and torch.isfinite(x).all()
            ignored = bool((x <= 0).all())
        elif task == "normals":
            assert x.shape == (3, h, w) and x.dtype == torch.float32
            norms = x.norm(dim=0)
            assert torch.all(((norms - 1).abs() < 1e-3) | (norms == 0))
            ignored = bool((norms == 0).all())
        elif task in ("edge", "saliency"):
            assert x.shape == (1, h, w) and x.dtype == torch.float32
            assert set(x.unique().tolist()) <= {-1.0, 0.0, 1.0}
            ignored = bool((x == -1).all())
        elif task in ("scene", "texture", "binary", "category"):
            assert x.shape == () and x.dtype == torch.int64 and -1 <= int(x) and (n is None or int(x) < n)
            ignored = int(x) == -1
        elif task == "boxes":
            assert x.dtype == torch.float32 and x.ndim == 2 and x.shape[1] == 4
            assert item["box_labels"].dtype == torch.int64 and item["box_labels"].shape == (x.shape[0],)
            assert torch.all(x[:, 2] > x[:, 0]) and torch.all(x[:, 3] > x[:, 1])
            assert torch.all(x[:, 0::2] >= 0) and torch.all(x[:, 0::2] <= w) and torch.all(x[:, 1::2] <= h)
            ignored = x.shape[0] == 0
        else:
            raise AssertionError(f"task {task!r} is not in the sample contract")
        if task not in labelled:  # multi-source data: unlabelled tasks are present and all-ignore
            assert ignored, f"{task} is not labelled for this item but holds values"


@pytest.mark.parametrize("name", SYNTHETIC)
def test_real_generator_items_follow_the_contract_and_the_cache_is_exact(synthetic, name):
    ds = get_dataset(name, "val", preset="unit")
    live = get_dataset(name, "val", preset="unit", cache=False)
    assert len(ds) == len(live) > 0 and ds.preset == "unit" and ds.seed == 0
    for task in ds.tasks:
        info = ds.task_info[task]
        assert info == {} or (info["num_classes"] == len(info["class_names"]) > 0)
    for i in range(min(len(ds), 3)):
        item = ds[i]
        check_contract(item, ds)
        other = live[i]
        for key in item:
            if key == "meta":
                assert item[key] == other[key]
            else:
                assert torch.equal(item[key], other[key]), key
    batch = collate([ds[i] for i in range(min(len(ds), 2))])
    assert batch["image"].shape[1:] == (3, *ds.image_size)


def test_real_city_classes_7_mapping(synthetic):
    c19 = get_dataset("synthetic-city", "val", preset="unit")
    c7 = get_dataset("synthetic-city", "val", preset="unit", classes=7)
    lut = torch.from_numpy(np.asarray(synthetic.CITY_19_TO_7)).long()
    assert lut.shape == (19,) and c7.task_info["semseg"]["num_classes"] == len(synthetic.CITY_7_CLASSES) == 7
    s19, s7 = c19[0]["semseg"], c7[0]["semseg"]
    assert torch.equal(s7 == -1, s19 == -1)
    assert torch.equal(s7[s19 >= 0], lut[s19[s19 >= 0]]) and s7.max() < 7


def test_transform_is_applied_to_contract_samples(fake_synthetic):
    from mtlkit.data.transforms import RandomHorizontalFlip

    plain = get_dataset("synthetic-nyu", "test", preset="unit")
    flipped = get_dataset("synthetic-nyu", "test", preset="unit", transform=RandomHorizontalFlip(p=1.0))
    a, b = plain[1], flipped[1]
    assert torch.equal(b["semseg"], a["semseg"].flip(-1)) and torch.equal(b["normals"][0], -a["normals"][0].flip(-1))
    assert b["meta"]["hflip"] is True and b["meta"]["index"] == 1
