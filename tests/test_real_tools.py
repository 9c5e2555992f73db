"""Registry, download (offline, fake fetcher), verify, prepare (archives and the official raw formats) and the CLI."""
from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlkit.cli import main
from mtlkit.data import get_dataset
from mtlkit.data.datasets import to_contract
from mtlkit.data.real import CorruptFileError, download as dl
from mtlkit.data.real.prepare import (extract, normals_from_depth, prepare, write_cityscapes_raw_twin,
                                      write_nyuv2_raw_twin)
from mtlkit.data.real.registry import LOADERS, load_registry
from mtlkit.data.real.twins import twin_sources, write_twin
from mtlkit.data.synthetic import CITY_19_TO_7, generate_sample


def test_registry_describes_every_loader():
    reg = load_registry()
    assert set(reg) == set(LOADERS)
    for dataset_id, e in reg.items():
        for key in ("title", "tasks", "splits", "size", "licence", "registration", "sources", "twin"):
            assert key in e, (dataset_id, key)
        assert tuple(e["tasks"]) == LOADERS[dataset_id].TASKS, dataset_id
        for s in e["sources"]:
            assert s.get("manual") or s.get("url"), (dataset_id, s)
    assert reg["nyuv2"]["splits"] == {"train": 795, "val": 654}
    assert reg["cityscapes"]["splits"] == {"train": 2975, "val": 500}
    assert reg["pascal-mt"]["splits"] == {"train": 4998, "val": 5105}
    assert reg["cityscapes"]["registration"] is True


def test_download_with_fake_fetcher_checks_md5(tmp_path, monkeypatch):
    payload = b"fake archive bytes"
    entry = load_registry()["oxford-pet"]
    calls = []

    def fetch(url, target):
        calls.append(url)
        Path(target).write_bytes(payload)

    with pytest.raises(dl.DownloadError, match="md5 is .* the registry expects 5c4f3ee8"):
        dl.download("oxford-pet", raw=tmp_path, fetch=fetch, say=lambda m: None)
    assert not list(tmp_path.glob("*.part")) and not (tmp_path / "images.tar.gz").exists()  # nothing half-written
    digest = hashlib.md5(payload).hexdigest()
    patched = {**entry, "sources": [{**s, "md5": digest} for s in entry["sources"]]}
    monkeypatch.setattr(dl, "get_entry", lambda _id: patched)
    files = dl.download("oxford-pet", raw=tmp_path, fetch=fetch, say=lambda m: None)
    assert [f.name for f in files] == ["images.tar.gz", "annotations.tar.gz"]
    assert calls[-2:] == [s["url"] for s in entry["sources"]]
    problems = dl.verify("oxford-pet", root=tmp_path / "none", raw=tmp_path)  # hashes match; no copy: one sentence
    assert len(problems) == 1 and problems[0].startswith("dataset 'oxford-pet' not found")


def test_download_offline_fails_clearly(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(dl.DownloadError) as exc:
        dl.download("pascal-mt", raw=tmp_path, say=lambda m: None)
    msg = str(exc.value)
    assert "https://data.vision.ee.ethz.ch" in msg and str(tmp_path / "PASCAL_MT.tgz") in msg
    assert "name resolution" in msg and not (tmp_path / "PASCAL_MT.tgz.part").exists()


def test_manual_sources_print_steps_with_paths(tmp_path):
    lines = []
    files = dl.download("cityscapes", raw=tmp_path, fetch=lambda u, t: pytest.fail("nothing to fetch"),
                        say=lines.append)
    text = "\n".join(lines)
    assert files == [] and "registration" in text and str(tmp_path / "cityscapes.zip") in text
    assert "leftImg8bit_trainvaltest.zip" in text  # the official alternative is listed with its steps


def test_verify_twin_ok_and_reports_problems(tmp_path):
    root = write_twin("nyud-mt", tmp_path / "nyud", n=2)
    assert dl.verify("nyud-mt", root=root) == []
    problems = dl.verify("nyud-mt", root=root, expect_counts=True)
    assert any("2 items, the release has 795" in p for p in problems)
    np.save(root / "normals" / "val_0001.npy", np.full((32, 32, 3), 2.0, np.float32))
    problems = dl.verify("nyud-mt", root=root, splits=["val"])
    assert len(problems) == 1 and "val_0001.npy (sample index 1)" in problems[0] and "unit" in problems[0]


def _tar(src: Path, archive: Path, names: list[str]) -> None:
    with tarfile.open(archive, "w:gz") as t:
        for n in names:
            t.add(src / n, arcname=n)


def test_prepare_unpacks_archives(tmp_path):
    twin = write_twin("oxford-pet", tmp_path / "twin", n=2)
    raw = tmp_path / "raw"
    raw.mkdir()
    _tar(twin, raw / "images.tar.gz", ["images"])
    _tar(twin, raw / "annotations.tar.gz", ["annotations"])
    out = prepare("oxford-pet", raw=raw, out=tmp_path / "prepared", say=lambda m: None)
    a = get_dataset("oxford-pet", "trainval", root=out)[1]
    b = get_dataset("oxford-pet", "trainval", root=twin)[1]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])
    with pytest.raises(ValueError, match="already prepared"):
        prepare("oxford-pet", raw=raw, out=out, say=lambda m: None)


def test_extract_refuses_paths_outside(tmp_path):
    evil = tmp_path / "evil.tar"
    (tmp_path / "x.txt").write_text("x")
    with tarfile.open(evil, "w") as t:
        t.add(tmp_path / "x.txt", arcname="../../escaped.txt")
    with pytest.raises(CorruptFileError, match="outside"):
        extract(evil, tmp_path / "dest")
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_prepare_cityscapes_from_official_raw_twin(tmp_path):
    samples = twin_sources("cityscapes", n=2)
    write_cityscapes_raw_twin(tmp_path / "raw", samples)
    out = prepare("cityscapes", raw=tmp_path / "raw", out=tmp_path / "prep", size=None, say=lambda m: None)
    twin = write_twin("cityscapes", tmp_path / "twin", n=2)  # the MTAN-format twin of the same scenes
    for classes in (19, 7):
        for split in ("train", "val"):
            a = get_dataset("cityscapes", split, root=out, classes=classes)
            b = get_dataset("cityscapes", split, root=twin, classes=classes)
            for i in range(2):
                for key in ("image", "semseg", "depth"):
                    assert torch.equal(a[i][key], b[i][key]), (classes, split, i, key)
    c = to_contract(samples["train"][0])
    sem = get_dataset("cityscapes", "train", root=out, classes=7)[0]["semseg"]
    lut = torch.from_numpy(CITY_19_TO_7.astype(np.int64))
    assert torch.equal(sem, torch.where(c["semseg"] >= 0, lut[c["semseg"].clamp(min=0)], -1))


def test_prepare_nyuv2_from_labelled_mat_twin(tmp_path):
    samples = twin_sources("nyuv2", n=2)
    write_nyuv2_raw_twin(tmp_path / "raw", samples)
    intr = tuple(samples["train"][0]["meta"]["intrinsics"])
    out = prepare("nyuv2", raw=tmp_path / "raw", out=tmp_path / "prep", size=None, intrinsics=intr,
                  say=lambda m: None)
    for split in ("train", "val"):
        ds = get_dataset("nyuv2", split, root=out)
        for i in range(2):
            c, s = to_contract(samples[split][i]), ds[i]
            for key in ("image", "semseg", "depth"):
                assert torch.equal(s[key], c[key]), key
            valid = (s["normals"].abs().sum(0) > 0) & (c["normals"].abs().sum(0) > 0)
            assert valid.float().mean() > 0.3
            cos = (s["normals"] * c["normals"]).sum(0)[valid].clamp(-1, 1)
            assert torch.rad2deg(torch.acos(cos)).median() < 5.0  # depth-derived normals agree on smooth surfaces
    resized = prepare("nyuv2", raw=tmp_path / "raw", out=tmp_path / "prep2", size=(16, 24), intrinsics=intr,
                      say=lambda m: None)
    s = get_dataset("nyuv2", "train", root=resized)[0]
    assert s["image"].shape == (3, 16, 24) and s["normals"].shape == (3, 16, 24)


def test_prepare_nyuv2_chains_the_40_and_13_class_mappings(tmp_path):
    """classMapping40.mat (894 -> 40) then class13Mapping.mat (40 -> 13) give the same labels as one 894 -> 13 table."""
    import scipy.io as sio

    samples = twin_sources("nyuv2", n=2)
    write_nyuv2_raw_twin(tmp_path / "raw", samples)
    raw = tmp_path / "raw"
    (raw / "mapping13.txt").rename(tmp_path / "mapping13.txt")
    to40 = np.array([k + 20 if k <= 13 else 0 for k in range(1, 895)], np.float64)[None]  # label k -> class k + 20
    to13 = np.array([j - 20 if 21 <= j <= 33 else 0 for j in range(1, 41)], np.float64)[None]
    sio.savemat(str(raw / "classMapping40.mat"), {"mapClass": to40, "className": np.array(["a"] * 40, dtype=object)})
    sio.savemat(str(raw / "class13Mapping.mat"),
                {"classMapping13": {"labelIds": to13, "className": np.array(["b"] * 13, dtype=object)}})
    intr = tuple(samples["train"][0]["meta"]["intrinsics"])
    chained = prepare("nyuv2", raw=raw, out=tmp_path / "chained", size=None, intrinsics=intr, say=lambda m: None)
    single = prepare("nyuv2", raw=raw, out=tmp_path / "single", size=None, intrinsics=intr, say=lambda m: None,
                     mapping=tmp_path / "mapping13.txt")
    for split in ("train", "val"):
        a, b = get_dataset("nyuv2", split, root=chained), get_dataset("nyuv2", split, root=single)
        for i in range(2):
            assert torch.equal(a[i]["semseg"], b[i]["semseg"])
    (raw / "classMapping40.mat").unlink()
    with pytest.raises(Exception, match="needs .*classMapping40.mat"):
        prepare("nyuv2", raw=raw, out=tmp_path / "alone", size=None, say=lambda m: None)
    bad = tmp_path / "bad.txt"
    bad.write_text(" ".join(["1"] * 40))
    with pytest.raises(CorruptFileError, match="needs 894 entries"):
        prepare("nyuv2", raw=raw, out=tmp_path / "bad", size=None, say=lambda m: None, mapping=bad)


def test_normals_from_depth_of_a_plane():
    fx = fy = 50.0
    cx, cy = 15.5, 11.5
    v, u = np.mgrid[0:24, 0:32].astype(np.float64)
    # plane z = 2 + 0.5 x: depth along each pixel ray solves z = 2 + 0.5 (u - cx) z / fx
    z = 2.0 / (1 - 0.5 * (u - cx) / fx)
    n = normals_from_depth(z, (fx, fy, cx, cy))
    want = np.array([0.5, 0.0, -1.0]) / np.linalg.norm([0.5, 0.0, -1.0])  # facing the camera
    inner = n[1:-1, 1:-1]
    assert np.allclose(inner, want, atol=1e-6) and (n[0] == 0).all() and (n[:, -1] == 0).all()


def test_cli_twin_verify_list_download(tmp_path, capsys, monkeypatch):
    out = tmp_path / "twin"
    assert main(["data", "twin", "broden", "--out", str(out), "--n", "2"]) == 0
    assert json.loads((out / "twin.json").read_text())["variant"] == "synthetic-broden"
    assert main(["data", "verify", "broden", "--root", str(out)]) == 0
    assert "broden: OK" in capsys.readouterr().out
    assert main(["data", "twin", "broden", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["data", "list"]) == 0
    text = capsys.readouterr().out
    assert "synthetic-nyu" in text and "oxford-pet" in text and "CC BY-SA 4.0" in text and "missing" in text

    def offline(url, target):
        raise OSError("network is unreachable")

    monkeypatch.setattr(dl, "urllib_fetch", offline)
    assert main(["data", "download", "oxford-pet", "--raw", str(tmp_path / "raw")]) == 2
    err = capsys.readouterr().err
    assert "could not fetch https://www.robots.ox.ac.uk" in err and "images.tar.gz" in err
    assert main(["data", "prepare", "nyud-mt", "--raw", str(tmp_path / "nothing")]) == 2
    assert "mtlkit data download nyud-mt" in capsys.readouterr().err


def test_twin_sources_are_the_synthetic_scenes():
    s = twin_sources("miniscapes", n=1)["test"][0]
    ref = generate_sample("synthetic-city", "test", 0, seed=0, size=(32, 64))
    assert np.array_equal(s["image"], ref["image"]) and np.array_equal(s["depth"], ref["depth"])


# one file of each twin broken in a way verify must report, naming that file
BREAK = {"nyuv2": ("truncate", "train/depth/1.npy"), "nyud-mt": ("delete", "normals/val_0001.npy"),
         "cityscapes": ("truncate", "val/label_19/2.npy"), "miniscapes": ("truncate", "train/semseg/1.png"),
         "oxford-pet": ("truncate", "annotations/trimaps/*_train1.png"), "oxpet-h5": ("truncate", "val/masks.h5"),
         "pascal-mt": ("delete", "sal_distill/2008_val002.png"),
         "broden": ("truncate", "broden_dataset/ade20k/ADE20K_2016_07_26/images/*/*/*/*_seg.png")}


@pytest.mark.parametrize("dataset_id", sorted(BREAK))
def test_cli_twin_verify_and_break_every_dataset(dataset_id, tmp_path, capsys):
    out = tmp_path / "twin"
    assert main(["data", "twin", dataset_id, "--out", str(out)]) == 0
    assert f"mtlkit data verify {dataset_id} --root {out}" in capsys.readouterr().out
    assert main(["data", "verify", dataset_id, "--root", str(out)]) == 0
    assert f"{dataset_id}: OK" in capsys.readouterr().out
    how, pattern = BREAK[dataset_id]
    target = sorted(out.glob(pattern))[0]
    if how == "delete":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    assert main(["data", "verify", dataset_id, "--root", str(out)]) == 1
    text = capsys.readouterr().out
    assert f"PROBLEM: {dataset_id}" in text and str(target) in text and "problem(s)" in text, text


@pytest.mark.parametrize("dataset_id", ["nyuv2", "cityscapes"])
def test_cli_official_twin_prepare_verify(dataset_id, tmp_path, capsys):
    """The researcher's path for the official raw data: twin --layout official -> prepare -> verify -> load."""
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    assert main(["data", "twin", dataset_id, "--out", str(raw), "--layout", "official", "--n", "2"]) == 0
    assert f"mtlkit data prepare {dataset_id} --raw {raw}" in capsys.readouterr().out
    size = ["--size", "32", "32"] if dataset_id == "nyuv2" else ["--size", "32", "64"]
    assert main(["data", "prepare", dataset_id, "--raw", str(raw), "--out", str(out)] + size) == 0
    assert f"mtlkit data verify {dataset_id} --root {out}" in capsys.readouterr().out
    assert main(["data", "verify", dataset_id, "--root", str(out)]) == 0
    ref = write_twin(dataset_id, tmp_path / "ref", n=2)  # the loader-format twin of the same scenes
    a, b = get_dataset(dataset_id, "val", root=out)[1], get_dataset(dataset_id, "val", root=ref)[1]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["semseg"], b["semseg"])
    assert main(["data", "twin", dataset_id, "--out", str(tmp_path / "x"), "--layout", "astmt"]) == 2
    assert "layouts" in capsys.readouterr().err


def test_prepare_broden_plus_from_a_clone(tmp_path):
    """A clone of unifiedparsing after download_Broden+.sh: only meta_file/ and broden_dataset/ are copied."""
    twin = write_twin("broden", tmp_path / "twin", n=2)
    clone = tmp_path / "raw" / "unifiedparsing"
    shutil.copytree(twin, clone)
    (clone / "models").mkdir()
    (clone / "models" / "models.py").write_text("# code, not data\n")
    out = prepare("broden", raw=tmp_path / "raw", out=tmp_path / "prepared", say=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == ["broden_dataset", "meta_file"]
    for split in ("train", "val"):
        a, b = get_dataset("broden", split, root=out), get_dataset("broden", split, root=twin)
        assert a.ids == b.ids and all(torch.equal(a[i]["semseg"], b[i]["semseg"]) for i in range(len(a)))
    shutil.rmtree(clone / "meta_file")
    with pytest.raises(Exception, match="missing folder .*meta_file"):
        prepare("broden", raw=tmp_path / "raw", out=tmp_path / "prepared2", say=lambda m: None)


def test_download_broden_prints_the_assembly_steps(tmp_path):
    lines = []
    files = dl.download("broden", raw=tmp_path, fetch=lambda u, t: pytest.fail("Broden+ is assembled by hand"),
                        say=lines.append)
    text = "\n".join(lines)
    assert files == [] and "download_Broden+.sh" in text and str(tmp_path) in text and "broden1_224.zip" in text


def test_verify_reports_a_changed_archive(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "annotations.tar.gz").write_bytes(b"truncated download")
    root = write_twin("oxford-pet", tmp_path / "twin", n=2)
    problems = dl.verify("oxford-pet", root=root, raw=raw)
    assert len(problems) == 1 and "annotations.tar.gz: md5 is" in problems[0]
    assert "expects 95a8c909" in problems[0] and "download again" in problems[0]
    assert main(["data", "verify", "oxford-pet", "--root", str(root), "--raw", str(raw)]) == 1
    assert "PROBLEM:" in capsys.readouterr().out
