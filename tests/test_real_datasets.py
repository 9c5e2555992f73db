"""Real-dataset loaders on format twins: every twin is loaded through its real loader and compared, value by value,
with the synthetic scene it was rendered from (up to each format's quantisation, stated per test)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from mtlkit.data import collate, get_dataset, list_datasets
from mtlkit.data.datasets import to_contract
from mtlkit.data.real import CorruptFileError, DatasetLayoutError, DatasetNotFoundError
from mtlkit.data.real.twins import write_twin
from mtlkit.data.synthetic import CITY_19_TO_7, generate_sample
from mtlkit.data.transforms import Compose, RandomHorizontalFlip, RandomScaleCrop

N = 3
JPEG_MAX, JPEG_MEAN = 6 / 255, 1 / 255  # JPEG quality 100 without chroma subsampling
B_FX = 0.209313 * 2262.52  # Cityscapes baseline x focal length (m px)
REAL = ("nyuv2", "nyud-mt", "cityscapes", "miniscapes", "oxford-pet", "oxpet-h5", "pascal-mt", "broden")


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("twins")
    return {d: write_twin(d, base / d, n=N) for d in REAL}


def source(variant: str, split: str, i: int, size=(32, 32)) -> tuple[dict, dict]:
    """(compact, contract) synthetic sample a twin item was written from."""
    compact = generate_sample(variant, split, i, seed=0, size=size)
    return compact, to_contract(compact)


def assert_jpeg_close(loaded: torch.Tensor, expected: torch.Tensor) -> None:
    err = (loaded - expected).abs()
    assert err.max() <= JPEG_MAX and err.mean() <= JPEG_MEAN, (err.max(), err.mean())


def test_real_datasets_are_registered():
    assert set(REAL) <= set(list_datasets())


def test_nyuv2_twin_is_exact(twins):
    for split in ("train", "val"):
        ds = get_dataset("nyuv2", split, root=twins["nyuv2"])
        assert len(ds) == N and ds.task_info["semseg"]["num_classes"] == 13
        for i in range(N):
            _, c = source("synthetic-nyu", split, i)
            s = ds[i]
            for key in ("image", "semseg", "depth", "normals"):
                assert s[key].dtype == c[key].dtype and torch.equal(s[key], c[key]), key
            assert s["meta"]["tasks"] == ["semseg", "depth", "normals"] and s["meta"]["split"] == split


def test_nyud_mt_twin(twins):
    ds = get_dataset("nyud-mt", "val", root=twins["nyud-mt"])
    names = ds.task_info["semseg"]["class_names"]
    assert len(names) == 40
    renamed = {"furniture": "otherfurniture", "objects": "otherprop", "painting": "picture", "tv": "television"}
    from mtlkit.data.synthetic import NYU_13_CLASSES

    for i in range(N):
        compact, c = source("synthetic-nyu", "val", i)
        s = ds[i]
        assert_jpeg_close(s["image"], c["image"])
        sem = c["semseg"].numpy()
        got = s["semseg"].numpy()
        assert ((got == -1) == (sem == -1)).all()
        for k in np.unique(sem[sem >= 0]):  # same pixels, class renamed into the 40-class vocabulary
            want = renamed.get(NYU_13_CLASSES[k], NYU_13_CLASSES[k])
            assert {names[v] for v in np.unique(got[sem == k])} == {want}
        edge = np.zeros(sem.shape, bool)  # right or lower neighbour differs
        edge[:, :-1] |= sem[:, :-1] != sem[:, 1:]
        edge[:-1] |= sem[:-1] != sem[1:]
        assert torch.equal(s["edge"], torch.from_numpy(edge.astype(np.float32))[None])
        assert torch.equal(s["depth"], c["depth"]) and torch.equal(s["normals"], c["normals"])


@pytest.mark.parametrize("classes", [19, 7])
def test_cityscapes_twin(twins, classes):
    ds = get_dataset("cityscapes", "train", root=twins["cityscapes"], classes=classes)
    assert ds.task_info["semseg"]["num_classes"] == classes and ds.image_size == (32, 64)
    for i in range(N):
        _, c = source("synthetic-city", "train", i, (32, 64))
        s = ds[i]
        assert torch.equal(s["image"], c["image"])
        want = c["semseg"] if classes == 19 else torch.where(
            c["semseg"] >= 0, torch.from_numpy(CITY_19_TO_7.astype(np.int64))[c["semseg"].clamp(min=0)], -1)
        assert torch.equal(s["semseg"], want)
        d, got = c["depth"].double(), s["depth"].double()
        # 16-bit disparity code p = 256 B fx / d + 1: representable depths are >= 256 B fx / 65534 m
        representable = (d > 0) & (d >= 256 * B_FX / 65534)
        assert ((got > 0) == representable).all()
        disp = B_FX / d[representable]
        rel = ((got[representable] - d[representable]).abs() / d[representable])
        assert (rel <= (0.5 / 256) / (disp - 0.5 / 256) + 1e-5).all()  # rounding p to an integer
    raw = get_dataset("cityscapes", "train", root=twins["cityscapes"], depth="disparity")[0]["depth"]
    assert raw.min() >= 0 and raw.max() <= 1  # MTAN's stored scaled disparity, unchanged


def test_miniscapes_twin(twins):
    ds = get_dataset("miniscapes", "val", root=twins["miniscapes"])
    lo, hi = 1 / 300, 1 / 4
    for i in range(N):
        _, c = source("synthetic-city", "val", i, (32, 64))
        s = ds[i]
        assert_jpeg_close(s["image"], c["image"])
        assert torch.equal(s["semseg"], c["semseg"])  # 255 <-> -1
        d, got = c["depth"][0].double(), s["depth"][0].double()
        inside = (d > 4.05) & (d < 299)
        assert (got[inside] > 0).all() and (got[(d > 0) & (d < 3.95)] == 0).all() and (got[d <= 0] == 0).all()
        step = (hi - lo) / 254  # uint8 disparity code: rounding error <= half a step in 1/depth
        assert ((1 / got[inside] - 1 / d[inside]).abs() <= step / 2 + 1e-9).all()
    test = get_dataset("miniscapes", "test", root=twins["miniscapes"])[0]
    assert test["meta"]["tasks"] == [] and (test["semseg"] == -1).all() and (test["depth"] == 0).all()


def test_oxford_pet_twin(twins):
    ds = get_dataset("oxford-pet", "trainval", root=twins["oxford-pet"])
    breeds = ds.task_info["category"]["class_names"]
    for i in range(N):
        _, c = source("synthetic-pet", "train", i)
        s = ds[i]
        assert_jpeg_close(s["image"], c["image"])
        assert torch.equal(s["semseg"], c["semseg"])  # trimap 2/1/3 <-> background/pet/border
        assert torch.equal(s["boxes"], c["boxes"]) and torch.equal(s["box_labels"], c["box_labels"])
        assert int(s["binary"]) == int(c["binary"])
        assert breeds[int(s["category"])][0].isupper() == (int(s["binary"]) == 0)  # cat breeds are capitalised
        assert ("boxes" in s["meta"]["tasks"]) == (len(c["boxes"]) > 0)
    test = get_dataset("oxford-pet", "test", root=twins["oxford-pet"])
    assert all(len(x["boxes"]) == 0 and "boxes" not in x["meta"]["tasks"] for x in test)
    batch = collate([ds[0], ds[1]])
    assert isinstance(batch["boxes"], list) and batch["semseg"].shape == (2, 32, 32)


def test_oxpet_h5_twin(twins):
    ds = get_dataset("oxpet-h5", "test", root=twins["oxpet-h5"])
    for i in range(N):
        _, c = source("synthetic-pet", "test", i)
        s = ds[i]
        assert torch.equal(s["image"], c["image"])
        assert torch.equal(s["semseg"], (c["semseg"] != 0).long())  # pet or border = foreground
        assert torch.equal(s["binary"], c["binary"])
        if len(c["boxes"]):
            assert torch.equal(s["boxes"], c["boxes"][:1]) and s["box_labels"].tolist() == [int(c["binary"])]


def test_pascal_mt_twin(twins):
    from mtlkit.data.real.pascal_mt import ASTMT_NORMAL_CLASSES, CONTEXT_IDS_OF_VOC

    ds = get_dataset("pascal-mt", "train", root=twins["pascal-mt"], edges="kit", normal_classes="all")
    masked = get_dataset("pascal-mt", "train", root=twins["pascal-mt"], edges="kit")  # ASTMT's normal classes
    part_of = torch.tensor([0, 1, 2, 3, 5, 0])  # synthetic bg/head/torso/arm/leg/tail -> ASTMT 6-part ids
    seen_parts = False
    for i in range(N):
        _, c = source("synthetic-pascal", "train", i)
        s = ds[i]
        assert_jpeg_close(s["image"], c["image"])
        assert torch.equal(s["semseg"], c["semseg"]) and torch.equal(s["edge"], c["edge"])
        assert torch.equal(s["saliency"], c["saliency"])
        person = c["semseg"] == 15
        if person.any():
            seen_parts = True
            assert torch.equal(s["parts"], torch.where(person, part_of[c["parts"]], 0))
        else:
            assert (s["parts"] == -1).all() and "parts" not in s["meta"]["tasks"]
        valid = c["normals"].abs().sum(0) > 0
        assert torch.equal(s["normals"].abs().sum(0) > 0, valid)
        cos = (s["normals"] * c["normals"]).sum(0)[valid].clamp(-1, 1)
        assert torch.rad2deg(torch.acos(cos)).max() < 1.0  # 8-bit PNG normals: < 1 degree
        assert torch.allclose(s["normals"].norm(dim=0)[valid], torch.ones(()), atol=1e-5)
        sem = c["semseg"].numpy()
        label_map = np.where(sem >= 0, CONTEXT_IDS_OF_VOC[np.clip(sem, 0, 20)], 0)
        keep = torch.from_numpy(np.isin(label_map, ASTMT_NORMAL_CLASSES))  # background (0) is not among them
        assert torch.equal(masked[i]["normals"], torch.where(keep, s["normals"], torch.zeros(())))
    assert seen_parts, "twin should contain a person (pick another seed)"
    assert len(ASTMT_NORMAL_CLASSES) == 170 and 427 in ASTMT_NORMAL_CLASSES and 0 not in ASTMT_NORMAL_CLASSES


def test_pascal_laplacian_edges_by_hand():
    from mtlkit.data.real.pascal_mt import laplacian_edges

    lab = np.array([[1, 1, 1, 1], [1, 2, 2, 1], [1, 1, 1, 1]])
    # every pixel with a 4-neighbour of another label; reflect-101 border
    want = np.array([[0, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 0]], np.float32)
    assert (laplacian_edges(lab) == want).all()


def test_pascal_astmt_edges_are_thinned():
    from mtlkit.data.real.pascal_mt import astmt_edges, laplacian_edges, thin_edges

    square = np.zeros((7, 7), np.uint8)  # scikit-image's documented `thin` example (Guo-Hall)
    square[1:-1, 2:-2] = 1
    square[0, 1] = 1
    want = np.zeros((7, 7), np.float32)
    want[0, 1] = want[1, 2] = want[2, 3] = want[3, 3] = want[4, 3] = 1
    assert (thin_edges(square) == want).all()
    lab = np.zeros((12, 12), np.int64)
    lab[3:9, 2:10] = 5
    thick, thin = laplacian_edges(lab), astmt_edges(lab)
    assert (thin <= thick).all() and thin.sum() < thick.sum()  # a subset, two-pixel boundary -> one pixel
    assert (thin_edges(thin) == thin).all()  # idempotent


def test_nyud_mt_astmt_layout(tmp_path):
    """ASTMT's NYUD_MT (.mat labels and depth, JPEG normals, PNG edges) reads as the .npy copy does."""
    from mtlkit.data.real.nyuv2 import write_nyudmt_twin
    from mtlkit.data.real.twins import twin_sources

    samples = twin_sources("nyud-mt", n=2)
    write_nyudmt_twin(tmp_path / "npy", samples)
    write_nyudmt_twin(tmp_path / "astmt", samples, layout="astmt")
    for i in range(2):
        a = get_dataset("nyud-mt", "val", root=tmp_path / "astmt")[i]
        b = get_dataset("nyud-mt", "val", root=tmp_path / "npy")[i]
        for key in ("image", "semseg", "depth", "edge"):
            assert torch.equal(a[key], b[key]), key
        valid = b["normals"].abs().sum(0) > 0
        assert torch.equal(a["normals"].abs().sum(0) > 0, valid)
        cos = (a["normals"] * b["normals"]).sum(0)[valid].clamp(-1, 1)
        assert torch.rad2deg(torch.acos(cos)).max() < 3.0  # 8-bit JPEG normals


def test_label_maps_of_another_size_are_fitted(twins, tmp_path):
    from PIL import Image

    root = tmp_path / "nyud"
    shutil.copytree(twins["nyud-mt"], root)
    seg = root / "segmentation" / "val_0000.png"
    small = np.asarray(Image.open(seg))[::2, ::2]
    Image.fromarray(small).save(seg)  # half resolution: fitted back by nearest, as the reference loaders do
    s = get_dataset("nyud-mt", "val", root=root)[0]
    assert s["semseg"].shape == (32, 32)
    assert torch.equal(s["semseg"], torch.from_numpy(small.astype(np.int64) - 1).repeat_interleave(2, 0)
                       .repeat_interleave(2, 1))


def test_cityscapes_libmtl_label_folder(twins, tmp_path):
    root = tmp_path / "city"
    shutil.copytree(twins["cityscapes"], root)
    for split in ("train", "val"):
        shutil.rmtree(root / split / "label_19")
        (root / split / "label_7").rename(root / split / "label")
    a = get_dataset("cityscapes", "train", root=root, classes=7)[0]
    b = get_dataset("cityscapes", "train", root=twins["cityscapes"], classes=7)[0]
    assert torch.equal(a["semseg"], b["semseg"])
    with pytest.raises(DatasetLayoutError, match="label_19"):
        get_dataset("cityscapes", "train", root=root, classes=19)


def test_nyuv2_shortened_normals_are_renormalised(twins, tmp_path):
    root = tmp_path / "nyu"
    shutil.copytree(twins["nyuv2"], root)
    path = root / "train" / "normal" / "0.npy"
    n = np.load(path)
    np.save(path, (0.8 * n).astype(np.float32))  # what a bilinear resize does near creases
    s = get_dataset("nyuv2", "train", root=root)[0]
    ref = get_dataset("nyuv2", "train", root=twins["nyuv2"])[0]
    assert torch.allclose(s["normals"], ref["normals"], atol=1e-6)


def test_broden_twin(twins):
    ds = get_dataset("broden", "val", root=twins["broden"])
    for i in range(N):
        compact, c = source("synthetic-broden", "val", i)
        s = ds[i]
        assert_jpeg_close(s["image"], c["image"])
        for key in ("scene", "semseg", "parts", "material", "texture"):
            assert torch.equal(s[key], c[key]), key
        assert s["meta"]["tasks"] == [t for t in ds.tasks if t in compact["meta"]["tasks"]]
        assert s["meta"]["source"] == compact["meta"]["source"]
    assert ds.task_info["semseg"]["class_names"][0] == "sky"


def test_transforms_on_twins_match_the_source(twins):
    """Flip + scale-crop on a loaded twin item == the same seeded transforms on the synthetic source."""
    def tf(seed):
        g = torch.Generator().manual_seed(seed)
        return Compose([RandomHorizontalFlip(p=1.0, generator=g), RandomScaleCrop(24, (1.0, 1.5), generator=g)])

    for seed in range(3):
        s = get_dataset("nyuv2", "train", root=twins["nyuv2"], transform=tf(seed))[1]
        _, c = source("synthetic-nyu", "train", 1)
        c = tf(seed)(c)
        for key in ("image", "semseg", "depth", "normals"):
            assert torch.equal(s[key], c[key]), key
        p = get_dataset("oxford-pet", "trainval", root=twins["oxford-pet"], transform=tf(seed))[0]
        _, c = source("synthetic-pet", "train", 0)
        c = tf(seed)(c)
        assert torch.equal(p["semseg"], c["semseg"]) and torch.allclose(p["boxes"], c["boxes"])
        assert p["meta"]["hflip"] and p["image"].shape == (3, 24, 24)


def test_size_option_resizes_every_map(twins):
    s = get_dataset("pascal-mt", "val", root=twins["pascal-mt"], size=(16, 24))[0]
    assert s["image"].shape == (3, 16, 24) and s["semseg"].shape == (16, 24) and s["edge"].shape == (1, 16, 24)
    full = get_dataset("pascal-mt", "val", root=twins["pascal-mt"])[0]
    assert set(s["semseg"].unique().tolist()) <= set(full["semseg"].unique().tolist())  # nearest: no new labels


# ------------------------------------------------------------------------------------------------- bad input
def test_missing_root_names_dataset_and_command(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"nyuv2.*mtlkit data download nyuv2"):
        get_dataset("nyuv2", "train", root=tmp_path / "nope")
    with pytest.raises(DatasetNotFoundError, match="mtlkit data prepare cityscapes"):
        get_dataset("cityscapes", "train")  # default root under the (empty) test data dir


def test_bad_split_and_option_list_valid_choices(twins):
    with pytest.raises(ValueError, match="valid splits: train, val"):
        get_dataset("nyuv2", "test", root=twins["nyuv2"])
    with pytest.raises(ValueError, match="valid options: .*classes"):
        get_dataset("cityscapes", "train", root=twins["cityscapes"], clases=7)
    with pytest.raises(ValueError, match="7 or 19"):
        get_dataset("cityscapes", "train", root=twins["cityscapes"], classes=8)


def test_wrong_layout_names_missing_file(twins, tmp_path):
    root = tmp_path / "nyu"
    shutil.copytree(twins["nyuv2"], root)
    (root / "train" / "depth" / "2.npy").unlink()
    with pytest.raises(DatasetLayoutError, match=r"train/depth/2\.npy"):
        get_dataset("nyuv2", "train", root=root)
    shutil.rmtree(root / "val" / "normal")
    with pytest.raises(DatasetLayoutError, match=r"missing folder .*val/normal"):
        get_dataset("nyuv2", "val", root=root)


def test_corrupt_files_name_file_and_index(twins, tmp_path):
    root = tmp_path / "nyu"
    shutil.copytree(twins["nyuv2"], root)
    (root / "train" / "image" / "1.npy").write_bytes(b"not a numpy file")
    ds = get_dataset("nyuv2", "train", root=root)
    ds[0]
    with pytest.raises(CorruptFileError, match=r"image/1\.npy \(sample index 1\)"):
        ds[1]
    np.save(root / "train" / "label" / "2.npy", np.full((32, 32), 13, np.float32))
    with pytest.raises(CorruptFileError, match=r"label/2\.npy.*\[13\] outside 0\.\.12"):
        ds[2]
    pet = tmp_path / "pet"
    shutil.copytree(twins["oxford-pet"], pet)
    tri = next((pet / "annotations" / "trimaps").glob("*.png"))
    from PIL import Image

    Image.fromarray(np.full((32, 32), 5, np.uint8)).save(tri)
    ds = get_dataset("oxford-pet", "trainval", root=pet)
    bad = ds.ids.index(tri.stem) if tri.stem in ds.ids else None
    if bad is None:
        ds = get_dataset("oxford-pet", "test", root=pet)
        bad = ds.ids.index(tri.stem)
    with pytest.raises(CorruptFileError, match=rf"{tri.name}.*index {bad}.*1, 2 or 3"):
        ds[bad]
