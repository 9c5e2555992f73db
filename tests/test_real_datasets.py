"""Real-dataset loaders on format twins: every twin is loaded through its real loader and compared, value by value,
with the synthetic scene it was rendered from (up to each format's quantisation, stated per builder), both as read
and after the same seeded flip + scale-crop is applied to the loaded item and to the expected one."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from mtlkit.data import collate, get_dataset, list_datasets
from mtlkit.data.datasets import to_contract
from mtlkit.data.real import CorruptFileError, DatasetLayoutError, DatasetNotFoundError
from mtlkit.data.real.twins import LAYOUTS, write_twin
from mtlkit.data.synthetic import BRODEN_PARTS, CITY_19_TO_7, NYU_13_CLASSES, generate_sample, get_variant
from mtlkit.data.transforms import Compose, RandomHorizontalFlip, RandomScaleCrop

N = 3
JPEG_MAX, JPEG_MEAN = 6 / 255, 1 / 255  # JPEG quality 100 without chroma subsampling
B_FX = 0.209313 * 2262.52  # Cityscapes baseline x focal length (m px)
REAL = ("nyuv2", "nyud-mt", "cityscapes", "miniscapes", "oxford-pet", "oxpet-h5", "pascal-mt", "broden")
# (dataset id, twin layout, split, loader options)
CASES = [("nyuv2", None, "train", {}), ("nyuv2", None, "val", {}),
         ("nyud-mt", "mtl-pytorch", "train", {}), ("nyud-mt", "astmt", "val", {}),
         ("cityscapes", None, "train", {"classes": 19}), ("cityscapes", None, "val", {"classes": 7}),
         ("miniscapes", None, "train", {}), ("miniscapes", None, "test", {}),
         ("oxford-pet", None, "trainval", {}), ("oxford-pet", None, "test", {}),
         ("oxford-pet", None, "val", {"val_every": 2}), ("oxford-pet", None, "train", {"val_every": 2}),
         ("oxpet-h5", None, "train", {}), ("oxpet-h5", None, "test", {}),
         ("pascal-mt", None, "train", {"edges": "kit", "normal_classes": "all"}),
         ("pascal-mt", None, "val", {"edges": "kit", "normal_classes": "all"}),
         ("broden", "broden+", "train", {}), ("broden", "broden+", "val", {}),
         ("broden", "netdissect", "train", {}), ("broden", "netdissect", "val", {})]
TWIN_LAYOUTS = sorted({(d, layout) for d, layout, _, _ in CASES}, key=str)


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict:
    """(id, layout) -> twin root; plain ids -> the default layout's root."""
    base = tmp_path_factory.mktemp("twins")
    roots = {(d, layout): write_twin(d, base / f"{d}-{layout}", n=N, layout=layout) for d, layout in TWIN_LAYOUTS}
    roots.update({d: roots.get((d, None)) or roots[(d, LAYOUTS[d][0])] for d in REAL})
    return roots


def source(variant: str, split: str, i: int, size=(32, 32)) -> tuple[dict, dict]:
    """(compact, contract) synthetic sample a twin item was written from."""
    compact = generate_sample(variant, split, i, seed=0, size=size)
    return compact, to_contract(compact)


def assert_jpeg_close(loaded: torch.Tensor, expected: torch.Tensor) -> None:
    err = (loaded - expected).abs()
    assert err.max() <= JPEG_MAX and err.mean() <= JPEG_MEAN, (err.max(), err.mean())


def kit_edges(sem: torch.Tensor) -> torch.Tensor:
    """The synthetic scenes' edge rule: the right or lower neighbour has another label."""
    e = torch.zeros(sem.shape, dtype=torch.bool)
    e[:, :-1] |= sem[:, :-1] != sem[:, 1:]
    e[:-1] |= sem[:-1] != sem[1:]
    return e.float()[None]


def label(values, dtype=torch.int64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values), dtype=dtype)


# --------------------------------------------------------------------------- expected contract per format
# Each builder returns, per item: (loader index, expected sample, tolerance per key, expected meta["tasks"]).
# Tolerances: "exact" (torch.equal), ("jpeg",) (|error| <= 6/255), ("angle", deg) (same valid pixels, angle below),
# ("close", rtol) (allclose, for depth re-derived from the format's quantisation independently of the loader).
def expect_nyuv2(ds, twin, split):
    for i in range(N):
        _, c = source("synthetic-nyu", split, i)
        keys = ("image", "semseg", "depth", "normals")
        yield i, {k: c[k] for k in keys}, dict.fromkeys(keys, "exact"), ["semseg", "depth", "normals"]


def expect_nyud_mt(ds, twin, split):
    names40 = ds.task_info["semseg"]["class_names"]
    renamed = {"furniture": "otherfurniture", "objects": "otherprop", "painting": "picture", "tv": "television"}
    lut = torch.tensor([names40.index(renamed.get(n, n)) for n in NYU_13_CLASSES])  # same scene, NYU-40 vocabulary
    astmt = json.loads((twin / "twin.json").read_text())["layout"] == "astmt"
    for i in range(N):
        _, c = source("synthetic-nyu", split, i)
        exp = {"image": c["image"], "semseg": torch.where(c["semseg"] >= 0, lut[c["semseg"].clamp(min=0)], -1),
               "depth": c["depth"], "normals": c["normals"], "edge": kit_edges(c["semseg"])}
        tol = {"image": ("jpeg",), "semseg": "exact", "depth": "exact", "edge": "exact",
               "normals": ("angle", 3.0) if astmt else "exact"}  # ASTMT: 8-bit JPEG normals
        yield i, exp, tol, ["semseg", "depth", "normals", "edge"]


def city_depth(d: torch.Tensor) -> torch.Tensor:
    """Metres after the official 16-bit disparity code p = round(256 B fx / d + 1) (0 invalid, p <= 65535)."""
    d = d.double()
    p = torch.where(d > 0, torch.round(256 * B_FX / d.clamp(min=1e-9) + 1), torch.zeros(()))
    valid = (d > 0) & (p > 1) & (p <= 65535)
    return torch.where(valid, B_FX / ((p - 1) / 256).clamp(min=1e-9), torch.zeros(())).float()


def mini_depth(d: torch.Tensor) -> torch.Tensor:
    """Metres after the DLAD uint8 code: x = round(1 + 254 (1/d - 1/300) / (1/4 - 1/300)), valid 1..255."""
    lo, hi = 1 / 300, 1 / 4
    d = d.double()
    x = torch.round(1 + 254 * (1 / d.clamp(min=1e-9) - lo) / (hi - lo))
    valid = (d > 0) & (x >= 1) & (x <= 255)
    return torch.where(valid, 1 / (lo + (hi - lo) * (x - 1) / 254), torch.zeros((), dtype=torch.float64)).float()


def expect_cityscapes(ds, twin, split):
    lut = torch.from_numpy(CITY_19_TO_7.astype(np.int64))
    for i in range(N):
        _, c = source("synthetic-city", split, i, (32, 64))
        sem = c["semseg"] if ds.classes == 19 else torch.where(c["semseg"] >= 0, lut[c["semseg"].clamp(min=0)], -1)
        yield (i, {"image": c["image"], "semseg": sem, "depth": city_depth(c["depth"])},
               {"image": "exact", "semseg": "exact", "depth": ("close", 1e-5)}, ["semseg", "depth"])


def expect_miniscapes(ds, twin, split):
    for i in range(N):
        _, c = source("synthetic-city", split, i, (32, 64))
        if split == "test":  # withheld labels: ignore-filled, no tasks
            exp = {"image": c["image"], "semseg": torch.full_like(c["semseg"], -1),
                   "depth": torch.zeros_like(c["depth"])}
            yield i, exp, {"image": ("jpeg",), "semseg": "exact", "depth": "exact"}, []
        else:
            yield (i, {"image": c["image"], "semseg": c["semseg"], "depth": mini_depth(c["depth"])},
                   {"image": ("jpeg",), "semseg": "exact", "depth": ("close", 1e-5)}, ["semseg", "depth"])


def expect_oxford_pet(ds, twin, split):
    from mtlkit.data.real.oxford_pet import twin_breed

    every = 2 if split in ("train", "val") else None
    picks = [k for k in range(N) if every is None or (k % every == every - 1) == (split == "val")]
    for index, k in enumerate(picks):
        _, c = source("synthetic-pet", "test" if split == "test" else "train", k)
        boxes = c["boxes"] if split != "test" else torch.zeros((0, 4))  # the test split has no XMLs
        exp = {"image": c["image"], "semseg": c["semseg"], "boxes": boxes,
               "box_labels": c["box_labels"][: len(boxes)], "binary": c["binary"],
               "category": torch.tensor(twin_breed(int(c["binary"]), k))}
        tol = {"image": ("jpeg",), "semseg": "exact", "boxes": "exact", "box_labels": "exact", "binary": "exact",
               "category": "exact"}
        yield index, exp, tol, ["semseg"] + (["boxes"] if len(boxes) else []) + ["binary", "category"]


def expect_oxpet_h5(ds, twin, split):
    for i in range(N):
        _, c = source("synthetic-pet", split, i)
        has = len(c["boxes"]) > 0
        exp = {"image": c["image"], "semseg": (c["semseg"] != 0).long(),  # pet or border = foreground
               "boxes": c["boxes"][:1], "box_labels": c["binary"].reshape(1)[: int(has)], "binary": c["binary"]}
        yield i, exp, dict.fromkeys(exp, "exact"), ["semseg"] + (["boxes"] if has else []) + ["binary"]


def expect_pascal_mt(ds, twin, split):
    part_of = torch.tensor([0, 1, 2, 3, 5, 0])  # synthetic bg/head/torso/arm/leg/tail -> ASTMT 6-part ids
    for i in range(N):
        _, c = source("synthetic-pascal", split, i)
        person = c["semseg"] == 15
        parts = torch.where(person, part_of[c["parts"]], 0) if person.any() else torch.full_like(c["parts"], -1)
        exp = {"image": c["image"], "edge": c["edge"], "semseg": c["semseg"], "parts": parts,
               "normals": c["normals"], "saliency": c["saliency"]}
        tol = {"image": ("jpeg",), "edge": "exact", "semseg": "exact", "parts": "exact",
               "normals": ("angle", 1.0), "saliency": "exact"}  # 8-bit PNG normals
        yield i, exp, tol, ["edge", "semseg"] + (["parts"] if person.any() else []) + ["normals", "saliency"]


def broden_plus_parts(sem: torch.Tensor, par: torch.Tensor, objects: list, part_classes: list) -> torch.Tensor:
    """unifiedparsing's rule, restated on the synthetic labels: an object's parts count only inside its mask and only
    when one of its parts is there; (object, part) classes by name, pixels of the object without a part "none"."""
    out = torch.full(sem.shape, -1, dtype=torch.int64)
    for o in sem.unique().tolist():
        if o < 0 or not any(n.startswith(objects[o] + " ") for n in part_classes):
            continue
        mask = sem == o
        words = {BRODEN_PARTS[p].split(" ", 1)[1] for p in par[mask].unique().tolist() if p > 0}
        none_present = not bool(mask.all()) or bool((par[mask] == 0).any())
        if len(words) + none_present <= 1:
            continue
        named = {p: part_classes.index(f"{objects[o]} {BRODEN_PARTS[p].split(' ', 1)[1]}") if p > 0 else 0
                 for p in par[mask].unique().tolist()}
        out[mask] = torch.tensor([named[p] for p in par[mask].tolist()], dtype=torch.int64)
    return out


def expect_broden(ds, twin, split):
    info = json.loads((twin / "twin.json").read_text())
    v = get_variant("synthetic-broden")
    names = {t: list(v.classes[t]) for t in v.classes}
    for k in range(N):
        compact, c = source("synthetic-broden", split, k)
        tasks = [t for t in ds.tasks if t in compact["meta"]["tasks"]]
        tol = {"image": ("jpeg",), "scene": "exact", "semseg": "exact", "parts": "exact", "material": "exact",
               "texture": "exact"}
        if info["layout"] == "netdissect":  # the category codes are the synthetic classes
            yield k, {key: c[key] for key in tol}, tol, tasks
            continue
        got = {t: ds.task_info[t]["class_names"] for t in ("scene", "semseg", "material", "texture", "parts")}

        def by_name(task, x):
            lut = torch.tensor([got[task].index(n) for n in names[task]])
            return torch.where(x >= 0, lut[x.clamp(min=0)], -1)

        parts = broden_plus_parts(c["semseg"], c["parts"], names["semseg"], got["parts"]) \
            if "parts" in tasks else torch.full_like(c["parts"], -1)
        exp = {"image": c["image"], "scene": by_name("scene", c["scene"]), "semseg": by_name("semseg", c["semseg"]),
               "parts": parts, "material": by_name("material", c["material"]),
               "texture": by_name("texture", c["texture"])}
        if not (parts >= 0).any():
            tasks = [t for t in tasks if t != "parts"]
        yield ds.ids.index(info["ids"][split][k]), exp, tol, tasks


EXPECT = {"nyuv2": expect_nyuv2, "nyud-mt": expect_nyud_mt, "cityscapes": expect_cityscapes,
          "miniscapes": expect_miniscapes, "oxford-pet": expect_oxford_pet, "oxpet-h5": expect_oxpet_h5,
          "pascal-mt": expect_pascal_mt, "broden": expect_broden}


def check(loaded: dict, exp: dict, tol: dict, where: str) -> None:
    assert set(loaded) - {"meta"} == set(exp), (where, sorted(loaded), sorted(exp))  # every key compared
    for key, want in exp.items():
        got, spec = loaded[key], tol[key]
        assert got.dtype == want.dtype and got.shape == want.shape, (where, key, got.dtype, want.dtype, got.shape,
                                                                     want.shape)
        if spec == "exact":
            assert torch.equal(got, want), (where, key)
        elif spec[0] == "jpeg":
            assert (got - want).abs().max() <= JPEG_MAX, (where, key, float((got - want).abs().max()))
        elif spec[0] == "close":
            assert torch.allclose(got, want, rtol=spec[1], atol=1e-6), (where, key)
        elif spec[0] == "angle":
            valid = want.abs().sum(0) > 0
            assert torch.equal(got.abs().sum(0) > 0, valid), (where, key)
            cos = (got * want).sum(0)[valid].clamp(-1, 1)
            assert torch.rad2deg(torch.acos(cos)).max() < spec[1], (where, key)
            assert torch.allclose(got.norm(dim=0)[valid], torch.ones(()), atol=1e-5), (where, key)


def seeded_flip_crop(seed: int, crop: tuple[int, int]) -> Compose:
    g = torch.Generator().manual_seed(seed)
    return Compose([RandomHorizontalFlip(p=1.0, generator=g), RandomScaleCrop(crop, (1.0, 1.5), generator=g)])


def test_real_datasets_are_registered():
    assert set(REAL) <= set(list_datasets())


def test_every_format_has_a_twin_case():
    assert {d for d, _, _, _ in CASES} == set(REAL)


@pytest.mark.parametrize("dataset_id,layout,split,options", CASES,
                         ids=[f"{d}-{layout or 'default'}-{s}-{'-'.join(map(str, o.values())) or 'plain'}"
                              for d, layout, s, o in CASES])
def test_twin_matches_its_source(twins, dataset_id, layout, split, options):
    """Every key of every item equals the synthetic source (up to the format's quantisation), as read and after the
    same seeded horizontal flip + scale-crop applied to the loaded item and to the expected one (boxes included)."""
    twin = twins[(dataset_id, layout)]
    ds = get_dataset(dataset_id, split, root=twin, **options)
    items = list(EXPECT[dataset_id](ds, twin, split))
    assert len(ds) == len(items) > 0
    for index, exp, tol, tasks in items:
        where = f"{dataset_id} {split} item {index}"
        s = ds[index]
        check(s, exp, tol, where)
        assert s["meta"]["tasks"] == tasks and s["meta"]["split"] == split and s["meta"]["index"] == index, where
        for key in ("image", "semseg"):  # the JPEG error is small on average too
            if key in tol and tol[key] == ("jpeg",):
                assert_jpeg_close(s[key], exp[key])
        h, w = exp["image"].shape[-2:]
        for seed in range(2):
            tf = seeded_flip_crop(seed, (h * 3 // 4, w * 3 // 4))
            moved = get_dataset(dataset_id, split, root=twin, transform=tf, **options)[index]
            want = seeded_flip_crop(seed, (h * 3 // 4, w * 3 // 4))(exp)
            check({k: v for k, v in moved.items() if k != "meta"}, want, tol, f"{where} seed {seed}")
            assert moved["meta"]["hflip"] and moved["image"].shape[-2:] == (h * 3 // 4, w * 3 // 4)


def test_oxford_pet_batches_with_boxes_as_lists(twins):
    ds = get_dataset("oxford-pet", "trainval", root=twins["oxford-pet"])
    breeds = ds.task_info["category"]["class_names"]
    assert all(breeds[int(x["category"])][0].isupper() == (int(x["binary"]) == 0) for x in ds)  # cats capitalised
    batch = collate([ds[0], ds[1]])
    assert isinstance(batch["boxes"], list) and batch["semseg"].shape == (2, 32, 32)
    assert any(len(x["boxes"]) for x in ds), "the twin should hold a head box (pick another seed)"


def test_cityscapes_disparity_mode_returns_the_stored_values(twins):
    raw = get_dataset("cityscapes", "train", root=twins["cityscapes"], depth="disparity")[0]["depth"]
    stored = np.load(twins["cityscapes"] / "train" / "depth" / "0.npy")[..., 0]
    assert torch.equal(raw[0], torch.from_numpy(stored)) and raw.max() <= 1  # MTAN's scaled disparity, unchanged


def test_pascal_normals_only_on_astmt_classes(twins):
    from mtlkit.data.real.pascal_mt import ASTMT_NORMAL_CLASSES, CONTEXT_IDS_OF_VOC

    every = get_dataset("pascal-mt", "train", root=twins["pascal-mt"], edges="kit", normal_classes="all")
    masked = get_dataset("pascal-mt", "train", root=twins["pascal-mt"], edges="kit")  # ASTMT's normal classes
    for i in range(N):
        sem = every[i]["semseg"].numpy()
        label_map = np.where(sem >= 0, CONTEXT_IDS_OF_VOC[np.clip(sem, 0, 20)], 0)
        keep = torch.from_numpy(np.isin(label_map, ASTMT_NORMAL_CLASSES))  # background (0) is not among them
        assert torch.equal(masked[i]["normals"], torch.where(keep, every[i]["normals"], torch.zeros(())))
    assert len(ASTMT_NORMAL_CLASSES) == 170 and 427 in ASTMT_NORMAL_CLASSES and 0 not in ASTMT_NORMAL_CLASSES
    assert any("parts" in x["meta"]["tasks"] for x in every), "twin should contain a person (pick another seed)"


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


PART2IND = """function pimap = part2ind()
pimap = cell(3, 1);
for ii = 1:3
    pimap{ii} = containers.Map('KeyType','char','ValueType','int32');
end

% [aeroplane]
pimap{1}('body')        = 1;
pimap{1}('lwing')       = 3;                % left wing
pimap{1}('rwing')       = 4;                % right wing
for ii = 1:2
    pimap{1}(sprintf('engine_%d', ii)) = 10+ii; % multiple engines
end

% [bus]
pimap{2}('frontside')   = 1;
pimap{2}('fwheel')      = 2;
for ii = 1:2
    pimap{2}(sprintf('door_%d',ii)) = 10 + ii;
end

% [car]
keySet = keys(pimap{2});
valueSet = values(pimap{2});
pimap{3} = containers.Map(keySet, valueSet);         % car has the same parts as bus
remove(pimap{3}, {'door_2'});

% [chair]
% only has silhouette mask
"""


def test_part2ind_codes_by_hand():
    """PASCAL part codes as unifiedparsing numbers them: sorted (object, short name), one code per normalised name."""
    from mtlkit.data.real.broden_plus import parse_part2ind, pascal_part_codes

    raw = parse_part2ind(PART2IND)
    assert raw[(1, "lwing")] == ("aeroplane", "left wing") and raw[(1, "engine_2")] == ("aeroplane", "engine")
    assert raw[(3, "door_2")] == ("car", "door")  # copied from bus; remove() is ignored, as the reference does
    assert raw[(4, "silhouette")] == ("chair", "silhouette")
    key, names = pascal_part_codes(raw)
    # sorted keys: (1 body) (1 engine_1) (1 engine_2) (1 lwing) (1 rwing) (2 door_1) (2 door_2) (2 frontside) ...
    assert names == ["-", "body", "engine", "wing", "door", "", "wheel", "silhouette"]  # "front side" -> ""
    assert key[(1, "body")] == 1 and key[(1, "engine_2")] == 2 and key[(1, "rwing")] == 3
    assert key[(2, "frontside")] == 5 and key[(2, "fwheel")] == 6 and key[(3, "door_1")] == 4
    assert key[(4, "silhouette")] == 7
    with pytest.raises(CorruptFileError, match="line 2: unrecognised line"):
        parse_part2ind("% [x]\npimap{1}['head'] = 1;\n", "p.m")


def test_broden_plus_parts_rule_by_hand(twins):
    """Parts count inside an owner's mask when one of its listed parts is there; elsewhere -1; unlisted -> none."""
    ds = get_dataset("broden", "val", root=twins["broden"])
    reader = ds.reader
    objects = ds.task_info["semseg"]["class_names"]
    parts = ds.task_info["parts"]["class_names"]
    part_vocab = [r.split(",")[1] for r in (twins["broden"] / "meta_file" / "part.csv").read_text().split()[1:]]
    table, sky, bed = objects.index("table") + 1, objects.index("sky") + 1, objects.index("bed") + 1
    top, leg, frame = part_vocab.index("top"), part_vocab.index("leg"), part_vocab.index("frame")
    obj = np.array([[table, table, table, sky], [table, table, bed, bed]])
    part = np.array([[top, leg, 0, top], [frame, top, 0, 0]])  # frame is not a table part; the bed has none
    want = [[parts.index("table top"), parts.index("table leg"), 0, -1],
            [0, parts.index("table top"), -1, -1]]
    assert reader.parts(obj, part).tolist() == want
    assert (reader.parts(obj, None) == -1).all()  # no part annotation at all
    assert ds.task_info["parts"]["owners"][parts.index("table leg")] == (objects.index("table"),)


def test_broden_label_assignment_tables(tmp_path):
    from mtlkit.data.real.broden_plus import read_label_assignment

    path = tmp_path / "label_assignment.csv"
    path.write_text("dataset,category,raw_label,raw_name,broden_label,broden_name\n"
                    "ade20k,object,5,a,2,x\nade20k,object,9,b,0,-\nade20k,scene,0,,-1,z\nade20k,scene,3,c-s,7,c\n")
    luts = read_label_assignment(path)
    assert luts[("ade20k", "object")].tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 0, 0]  # unlisted raw labels: none
    assert luts[("ade20k", "scene")].tolist() == [-1, -1, -1, 7]  # an unassigned scene is -1, not class 0


def test_broden_sources_layouts_and_bad_records(twins, tmp_path):
    only_os = get_dataset("broden", "train", root=twins["broden"], sources=["os"])
    assert len(only_os) >= 1 and all(x["meta"]["source"] == "os" and x["meta"]["tasks"] == ["material"]
                                     for x in only_os)
    with pytest.raises(ValueError, match="subset of ade20k, pascal, os, dtd"):
        get_dataset("broden", "train", root=twins["broden"], sources=["opensurfaces"])
    with pytest.raises(ValueError, match="layout must be one of"):
        get_dataset("broden", "train", root=twins["broden"], layout="plus")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="meta_file.*index.csv"):
        get_dataset("broden", "train", root=tmp_path / "empty")
    root = tmp_path / "b"
    shutil.copytree(twins["broden"], root)
    lst = root / "meta_file" / "broden_os_train.json"
    lst.write_text(lst.read_text() + '{"dataset": "os", "file_index": 99, "width": 32, "height": 32}\n')
    with pytest.raises(CorruptFileError, match=r"broden_os_train\.json line \d+: os file_index 99 outside"):
        get_dataset("broden", "train", root=root)
    (root / "meta_file" / "label_assignment.csv").unlink()
    with pytest.raises(DatasetLayoutError, match="missing file label_assignment.csv"):
        get_dataset("broden", "val", root=root)


def test_broden_corrupt_files_name_file_and_index(twins, tmp_path):
    from PIL import Image

    root = tmp_path / "b"
    shutil.copytree(twins["broden"], root)
    ds = get_dataset("broden", "val", root=root)
    ade = next(i for i, x in enumerate(ds.ids) if x.startswith("ade20k/"))
    seg = ds.reader.readers["ade20k"].files(int(ds.ids[ade].split("/")[1]))["object"]
    Image.fromarray(np.full((32, 32, 3), 250, np.uint8)).save(seg)  # class 25 * 256 + 250, beyond every raw label
    with pytest.raises(CorruptFileError, match=rf"{seg.name} \(sample index {ade}\): ade20k object labels \[6650\]"):
        ds[ade]
    pascal = next(i for i, x in enumerate(ds.ids) if x.startswith("pascal/"))
    mat = ds.reader.readers["pascal"].files(int(ds.ids[pascal].split("/")[1]))["part"]
    mat.write_bytes(mat.read_bytes()[:60])
    with pytest.raises(CorruptFileError, match=rf"{mat.name} \(sample index {pascal}\)"):
        ds[pascal]


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


def test_empty_split_lists_are_errors(twins, tmp_path):
    for dataset_id, rel in (("nyud-mt", "gt_sets/val.txt"), ("pascal-mt", "ImageSets/Context/val.txt"),
                            ("oxford-pet", "annotations/test.txt")):
        root = tmp_path / dataset_id
        shutil.copytree(twins[dataset_id], root)
        (root / rel).write_text("\n" if dataset_id != "oxford-pet" else "#Image CLASS-ID SPECIES BREED ID\n")
        split = "test" if dataset_id == "oxford-pet" else "val"
        with pytest.raises(DatasetLayoutError, match=rf"{rel}.*(is empty|no items)"):
            get_dataset(dataset_id, split, root=root)


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
