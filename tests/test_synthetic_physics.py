"""Physics and contract tests of the synthetic scene generator (ray caster, layouts, variants)."""
from __future__ import annotations

import numpy as np
import pytest

from mtlkit.data import raycast, synthetic
from mtlkit.data.scenes import CREATURE_KINDS, KINDS, LAYOUTS, PARTS, SPECIES

VARIANTS = tuple(synthetic.VARIANTS)


def _scene_and_hit(variant: str, index: int, size: tuple[int, int], split: str = "train", seed: int = 0):
    scene = synthetic.make_scene(variant, synthetic.scene_rng(variant, split, index, seed))
    return scene, synthetic.render(scene, *size)


# ---------------------------------------------------------------- geometry


def test_single_plane_depth_and_normal_hand_computed():
    """A camera 2 m above a floor looking straight down sees depth 2 everywhere and normal (0, 0, -1)."""
    floor = raycast.Primitives(center=[(0, 0, 0)], rot=[raycast.rotation(pitch=np.pi / 2)], half=[(50, 50, 1)],
                               ptype=[raycast.QUAD], casts=[False])
    cam = raycast.Camera((0.0, 2.0, 0.0), yaw=0.0, pitch=np.pi / 2, fov_deg=60)
    hit = raycast.cast(floor, cam, 8, 8)
    np.testing.assert_allclose(hit.depth, 2.0, rtol=1e-5)
    np.testing.assert_allclose(hit.normal_cam, np.broadcast_to([0, 0, -1], (8, 8, 3)), atol=1e-5)
    fx, fy, cx, cy = hit.intrinsics
    assert fx == pytest.approx(4 / np.tan(np.radians(30))) and (cx, cy) == (3.5, 3.5)
    # pixel (row 0, col 7) back-projects to camera-frame (x, y) = 2 * ((7 - cx) / fx, (0 - cy) / fy); looking
    # straight down with yaw 0, camera x is world +x and camera y (image down) is world -z
    p = hit.point[0, 7]
    np.testing.assert_allclose(p, [2 * (7 - cx) / fx, 0.0, -2 * (0 - cy) / fy], atol=1e-5)


def test_sphere_and_box_hits_hand_computed():
    """Unit sphere at z = 5 and a box face at z = 3 seen from the origin along +z: centre-ray depths 4 and 3."""
    prims = raycast.Primitives(center=[(0, 0, 3.5), (0, 0, 5)], rot=[raycast.rotation(), raycast.rotation()],
                               half=[(0.1, 0.1, 0.5), (1, 1, 1)], ptype=[raycast.BOX, raycast.ELLIPSOID],
                               casts=[True, True])
    cam = raycast.Camera((0.0, 0.0, 0.0), fov_deg=40)
    hit = raycast.cast(prims, cam, 9, 9)
    assert hit.prim_id[4, 4] == 0 and hit.depth[4, 4] == pytest.approx(3.0, abs=1e-5)
    np.testing.assert_allclose(hit.normal_cam[4, 4], [0, 0, -1], atol=1e-5)
    assert hit.prim_id[4, 2] == 1  # off the thin box, on the sphere
    d = hit.ray_dir[4, 2]
    # closest root of |t d - c|^2 = 1
    c = np.array([0, 0, 5.0])
    a, b, cc = d @ d, -2 * d @ c, c @ c - 1
    t = (-b - np.sqrt(b * b - 4 * a * cc)) / (2 * a)
    assert hit.depth[4, 2] == pytest.approx(t, rel=1e-5)
    n = (t * d - c) / np.linalg.norm(t * d - c)
    np.testing.assert_allclose(hit.normal_world[4, 2], n, atol=1e-5)
    assert hit.prim_id[0, 0] == -1 and hit.depth[0, 0] == 0 and not hit.normal_cam[0, 0].any()


def test_empty_scene_is_all_sky():
    prims = raycast.Primitives(np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3)), [], [])
    hit = raycast.cast(prims, raycast.Camera((0.0, 1.0, 0.0)), 4, 6, np.array([0, 1, 0], np.float32))
    assert hit.prim_id.shape == (4, 6) and np.all(hit.prim_id == -1) and np.all(hit.depth == 0)
    with pytest.raises(ValueError, match="sorted by type"):
        raycast.Primitives(np.zeros((2, 3)), np.stack([np.eye(3)] * 2), np.ones((2, 3)), [raycast.BOX, raycast.QUAD],
                           [True, True])


def test_shadow_of_box_on_floor():
    """A box above a lit floor shades exactly the floor points whose ray towards the light hits the box."""
    prims = raycast.Primitives(center=[(0, 0, 3), (0, 0.5, 3)], rot=[raycast.rotation(pitch=np.pi / 2),
                               raycast.rotation()], half=[(5, 5, 1), (0.3, 0.3, 0.3)],
                               ptype=[raycast.QUAD, raycast.BOX], casts=[False, True])
    cam = raycast.Camera((0.0, 2.0, 0.0), pitch=0.6, fov_deg=60)
    light = np.array([0.3, 1.0, 0.2], np.float32)
    light /= np.linalg.norm(light)
    hit = raycast.cast(prims, cam, 32, 32, light)
    floor = hit.prim_id == 0
    p = hit.point[floor]
    # analytic: floor point p is shadowed iff the ray p + s L (s > 0) passes through the axis-aligned box
    lo, hi = np.array([-0.3, 0.2, 2.7]), np.array([0.3, 0.8, 3.3])
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (lo - p) / light, (hi - p) / light
    tn, tf = np.minimum(t1, t2).max(1), np.maximum(t1, t2).min(1)
    blocked = (tn <= tf) & (tf > 0)
    lit = hit.lit[floor] > 0
    assert blocked.sum() > 10  # the shadow is in view
    assert np.mean(lit == ~blocked) > 0.99


def test_tile_culling_matches_brute_force():
    """Screen-tile culling (projected bounds) never drops a primitive: same hits as testing every ray/primitive."""
    for variant in VARIANTS:
        for index in range(3):
            scene = synthetic.make_scene(variant, synthetic.scene_rng(variant, "train", index, 0))
            h, w = synthetic.get_variant(variant).sizes["unit"]
            hit = raycast.cast(scene.prims, scene.camera, h, w, tile=8)
            dirs = scene.camera.ray_dirs(h, w)
            t, pid = raycast.trace(scene.prims, np.asarray(scene.camera.position, np.float32), dirs,
                                   np.arange(len(scene.prims)))
            np.testing.assert_array_equal(hit.prim_id.ravel(), pid)


def test_camera_never_inside_a_solid():
    for variant in VARIANTS:
        for index in range(40):
            scene = synthetic.make_scene(variant, synthetic.scene_rng(variant, "train", index, 0))
            p = scene.prims
            local = np.einsum("pj,pji->pi", np.asarray(scene.camera.position, np.float32) - p.center, p.m)
            inside_box = (p.ptype == raycast.BOX) & (np.abs(local).max(1) < 1)
            inside_ell = (p.ptype == raycast.ELLIPSOID) & ((local ** 2).sum(1) < 1)
            assert not (inside_box | inside_ell).any(), (variant, index, scene.layout)


@pytest.mark.parametrize("variant", ["synthetic-nyu", "synthetic-pascal"])
def test_normals_agree_with_depth_on_planar_interiors(variant):
    """Normals from back-projected depth (cross product of central differences) match the rendered normals."""
    angles = []
    for index in range(6):
        scene, hit = _scene_and_hit(variant, index, (64, 64))
        sample = synthetic.generate_sample(variant, "train", index, size=(64, 64))
        fx, fy, cx, cy = sample["meta"]["intrinsics"]
        h, w = hit.depth.shape
        z = hit.depth
        jj, ii = np.meshgrid(np.arange(w), np.arange(h))
        pts = np.stack([z * (jj - cx) / fx, z * (ii - cy) / fy, z], -1)
        du = pts[1:-1, 2:] - pts[1:-1, :-2]
        dv = pts[2:, 1:-1] - pts[:-2, 1:-1]
        n = np.cross(du, dv)
        n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-12
        n *= -np.sign(np.sum(n * pts[1:-1, 1:-1], -1, keepdims=True))  # face the camera
        # planar interior: the 3x3 neighbourhood is one planar primitive (quad or one box face), depth valid
        pid, face = hit.prim_id, hit.face
        planar = np.isin(pid, np.flatnonzero(scene.prims.ptype != raycast.ELLIPSOID)) & (z > 0)
        ok = planar[1:-1, 1:-1].copy()
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                sl = (slice(1 + di, h - 1 + di), slice(1 + dj, w - 1 + dj))
                ok &= planar[sl] & (pid[sl] == pid[1:-1, 1:-1]) & (face[sl] == face[1:-1, 1:-1])
        normals = sample["normals"].transpose(1, 2, 0)[1:-1, 1:-1]
        cos = np.clip(np.sum(n[ok] * normals[ok], -1), -1, 1)
        angles.append(np.degrees(np.arccos(cos)))
    angles = np.concatenate(angles)
    assert len(angles) > 1000
    assert np.median(angles) < 5.0
    assert np.mean(angles < 10) > 0.9


def test_normals_face_the_camera_and_are_unit():
    for variant in ("synthetic-nyu", "synthetic-pascal"):
        for index in range(3):
            _, hit = _scene_and_hit(variant, index, (32, 32))
            fx, fy, cx, cy = hit.intrinsics
            jj, ii = np.meshgrid(np.arange(32), np.arange(32))
            ray = np.stack([(jj - cx) / fx, (ii - cy) / fy, np.ones_like(jj, float)], -1)
            n = hit.normal_cam[hit.hit]
            assert np.all(np.sum(n * ray[hit.hit], -1) < 0)
            np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-4)


# ---------------------------------------------------------------- labels


def test_edges_hand_computed():
    labels = np.array([[0, 0, 1],
                       [0, 0, 1],
                       [2, 2, 2]])
    expected = np.array([[0, 1, 0],
                         [1, 1, 1],
                         [0, 0, 0]], np.int8)
    np.testing.assert_array_equal(synthetic.edges_from_labels(labels), expected)


def test_edges_are_exactly_the_semantic_boundaries():
    for index in range(6):
        s = synthetic.generate_sample("synthetic-pascal", "train", index, size=(48, 48))
        sem = s["semseg"]
        h, w = sem.shape
        expected = np.zeros((h, w), np.int8)
        for i in range(h):
            for j in range(w):
                right = j + 1 < w and sem[i, j] != sem[i, j + 1]
                down = i + 1 < h and sem[i, j] != sem[i + 1, j]
                expected[i, j] = right or down
        np.testing.assert_array_equal(s["edge"][0], expected)


def test_boxes_contain_every_head_pixel_and_are_tight():
    seen = 0
    for index in range(12):
        s = synthetic.generate_sample("synthetic-pet", "train", index, size=(64, 64))
        scene, hit = _scene_and_hit("synthetic-pet", index, (64, 64))
        pet = scene.instances[scene.extras["pet"] - 1]
        assert pet.species in SPECIES and s["binary"] == SPECIES.index(pet.species)
        head_prims = np.flatnonzero((scene.instance == pet.id) & (scene.part == PARTS.index("head")))
        rows, cols = np.nonzero(np.isin(hit.prim_id, head_prims))
        if len(rows) == 0:
            assert s["boxes"].shape == (0, 4)
            continue
        seen += 1
        assert s["boxes"].shape == (1, 4) and s["box_labels"].tolist() == [SPECIES.index(pet.species)]
        x1, y1, x2, y2 = s["boxes"][0]
        assert np.all((cols >= x1) & (cols + 1 <= x2) & (rows >= y1) & (rows + 1 <= y2))
        assert (x1, y1, x2, y2) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        # the head box lies on the pet: every head pixel is labelled pet or border in the trimap
        assert np.all(s["semseg"][rows, cols] >= 1)
    assert seen >= 8


def test_pet_trimap_border_band():
    pet = np.zeros((8, 8), bool)
    pet[2:6, 2:6] = True
    tri = synthetic.trimap(pet)
    # radius 1: the border is the 1-pixel ring on each side of the silhouette outline
    expected = np.zeros((8, 8), np.int16)
    expected[1:7, 1:7] = 2
    expected[3:5, 3:5] = 1
    np.testing.assert_array_equal(tri, expected)


def test_saliency_inside_instances():
    salient_pixels = 0
    for index in range(8):
        s = synthetic.generate_sample("synthetic-pascal", "train", index, size=(48, 48))
        scene, hit = _scene_and_hit("synthetic-pascal", index, (48, 48))
        inst = np.where(hit.hit, scene.instance[hit.prim_id], 0)
        kinds = np.where(hit.hit, scene.kind[hit.prim_id], -1)
        sal = s["saliency"][0] == 1
        salient_pixels += sal.sum()
        assert np.all(inst[sal] > 0)
        assert np.all(np.isin(kinds[sal], [KINDS.index(k) for k in CREATURE_KINDS]))
        # parts live on creatures only (pascal), and every creature pixel has a part
        creature = np.isin(kinds, [KINDS.index(k) for k in CREATURE_KINDS])
        assert np.all((s["parts"] > 0) == creature)
    assert salient_pixels > 100


def test_material_and_depth_invalid_only_on_sky():
    for index in range(6):
        scene, hit = _scene_and_hit("synthetic-broden", index, (32, 32))
        s = synthetic.generate_sample("synthetic-broden", "train", index, size=(32, 32))
        if "material" in s["meta"]["tasks"]:
            np.testing.assert_array_equal(s["material"] == -1, ~hit.hit)
    far = synthetic.get_variant("synthetic-nyu").far
    for index in range(8):
        scene, hit = _scene_and_hit("synthetic-nyu", index, (32, 32))
        s = synthetic.generate_sample("synthetic-nyu", "train", index, size=(32, 32))
        assert hit.hit.all()  # closed rooms: every ray hits something
        # depth is invalid (0) exactly beyond the far limit (long corridors), the z-depth elsewhere
        np.testing.assert_array_equal(s["depth"][0] == 0, hit.t > far)
        np.testing.assert_array_equal(s["depth"][0][hit.t <= far], hit.t[hit.t <= far])


def test_scene_classes_balanced():
    counts = np.zeros(len(LAYOUTS), int)
    for seed in range(1000):
        scene = synthetic.make_scene("synthetic-broden", np.random.default_rng(seed))
        counts[LAYOUTS.index(scene.layout)] += 1
    assert np.all(np.abs(counts - 200) <= 40), counts


def _majority_agreement(lo: np.ndarray, hi: np.ndarray) -> float:
    """Fraction of low-res pixels whose label is a most frequent label of the matching 2x2 high-res block."""
    h, w = lo.shape
    blocks = hi.reshape(h, 2, w, 2).transpose(0, 2, 1, 3).reshape(h, w, 4)
    counts = (blocks == lo[..., None]).sum(-1)
    best = np.max([(blocks == blocks[..., k:k + 1]).sum(-1) for k in range(4)], axis=0)
    return float(np.mean(counts == best))


@pytest.mark.parametrize("variant", ["synthetic-nyu", "synthetic-city", "synthetic-pascal"])
def test_twice_resolution_agrees_with_semseg(variant):
    h, w = synthetic.get_variant(variant).sizes["smoke"]
    for index in range(3):
        lo = synthetic.generate_sample(variant, "val", index, size=(h, w))
        hi = synthetic.generate_sample(variant, "val", index, size=(2 * h, 2 * w))
        assert _majority_agreement(lo["semseg"], hi["semseg"]) >= 0.95
        assert hi["meta"]["intrinsics"][0] == pytest.approx(2 * lo["meta"]["intrinsics"][0])


# ---------------------------------------------------------------- determinism


def test_determinism_and_keys():
    a = synthetic.generate_sample("synthetic-pascal", "train", 3, seed=1, size=(32, 32))
    b = synthetic.generate_sample("synthetic-pascal", "train", 3, seed=1, size=(32, 32))
    for k in a:
        if k == "meta":
            assert a[k] == b[k]
        else:
            assert a[k].tobytes() == b[k].tobytes() and a[k].dtype == b[k].dtype
    for other in (dict(split="train", index=4, seed=1), dict(split="train", index=3, seed=2),
                  dict(split="val", index=3, seed=1)):
        c = synthetic.generate_sample("synthetic-pascal", size=(32, 32), **other)
        assert c["image"].tobytes() != a["image"].tobytes()


def test_scene_does_not_depend_on_size():
    for variant in VARIANTS:
        s1 = synthetic.make_scene(variant, synthetic.scene_rng(variant, "test", 5, 0))
        s2 = synthetic.make_scene(variant, synthetic.scene_rng(variant, "test", 5, 0))
        np.testing.assert_array_equal(s1.prims.center, s2.prims.center)
        np.testing.assert_array_equal(s1.kind, s2.kind)
        small = synthetic.generate_sample(variant, "test", 5, size=(16, 16))
        big = synthetic.generate_sample(variant, "test", 5, size=(48, 48))
        assert (small["meta"]["layout"], small["meta"]["source"]) == (big["meta"]["layout"], big["meta"]["source"])
        for key in ("scene", "texture", "binary"):
            if key in small:
                assert small[key] == big[key]


def test_scene_rng_key_and_errors():
    x = synthetic.scene_rng("synthetic-nyu", "train", 0, 0).random(4)
    assert np.array_equal(x, synthetic.scene_rng("synthetic-nyu", "train", 0, 0).random(4))
    assert not np.array_equal(x, synthetic.scene_rng("synthetic-city", "train", 0, 0).random(4))
    with pytest.raises(ValueError, match="valid splits"):
        synthetic.scene_rng("synthetic-nyu", "training", 0)
    with pytest.raises(ValueError, match="synthetic-nyu"):
        synthetic.get_variant("synthetic-imagenet")
    with pytest.raises(ValueError, match="valid names"):
        synthetic.generate_sample("nyu", "train", 0)


# ---------------------------------------------------------------- contract


_DENSE_INT = ("semseg", "parts", "material")


def _check_sample(v: synthetic.Variant, s: dict, size: tuple[int, int]) -> None:
    h, w = size
    expected = {"image", "meta", *v.tasks} | ({"box_labels"} if "boxes" in v.tasks else set())
    assert set(s) == expected
    assert s["image"].dtype == np.uint8 and s["image"].shape == (3, h, w)
    meta = s["meta"]
    assert meta["dataset"] == v.name and meta["source"] in v.sources and meta["layout"] in v.layouts
    assert meta["tasks"] == list(v.sources[meta["source"]])
    assert len(meta["intrinsics"]) == 4
    for task in v.tasks:
        x = s[task]
        labelled = task in meta["tasks"]
        if task in _DENSE_INT:
            assert x.dtype == np.int16 and x.shape == (h, w)
            n = len(v.classes[task])
            if not labelled:
                assert np.all(x == -1)
            elif task == "material":
                assert x.min() >= -1 and x.max() < n
            else:
                assert x.min() >= 0 and x.max() < n  # semseg/parts: every pixel labelled (sky is a class)
        elif task == "depth":
            assert x.dtype == np.float32 and x.shape == (1, h, w) and np.all(np.isfinite(x)) and x.min() >= 0
        elif task == "normals":
            assert x.dtype == np.float32 and x.shape == (3, h, w)
            norm = np.linalg.norm(x, axis=0)
            assert np.all((np.abs(norm - 1) < 1e-4) | (norm == 0))
        elif task in ("edge", "saliency"):
            assert x.dtype == np.int8 and x.shape == (1, h, w) and set(np.unique(x)) <= {0, 1}
        elif task in ("scene", "texture", "binary"):
            assert isinstance(x, int)
            assert (0 <= x < len(v.classes[task])) if labelled else x == -1
        elif task == "boxes":
            assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 4
            assert s["box_labels"].dtype == np.int64 and s["box_labels"].shape == (len(x),)
            assert np.all((x[:, 0] < x[:, 2]) & (x[:, 1] < x[:, 3])) and np.all(x >= 0)
            assert np.all(x[:, 2] <= w) and np.all(x[:, 3] <= h)
            assert set(s["box_labels"].tolist()) <= {0, 1}


@pytest.mark.parametrize("variant", VARIANTS)
def test_sample_contract_unit_preset(variant):
    v = synthetic.get_variant(variant)
    size = v.sizes["unit"]
    assert v.counts["unit"] == {"train": 8, "val": 4, "test": 4}
    sources = set()
    for index in range(v.counts["unit"]["train"] if len(v.sources) == 1 else 24):
        s = synthetic.generate_sample(variant, "train", index, size=size)
        _check_sample(v, s, size)
        sources.add(s["meta"]["source"])
    assert sources == set(v.sources)  # every broden source occurs


def test_variant_tables():
    assert synthetic.get_variant("synthetic-city").sizes == {"unit": (32, 64), "smoke": (64, 128),
                                                             "lesson": (128, 256), "paper": (256, 512)}
    assert synthetic.get_variant("synthetic-nyu").sizes["paper"] == (288, 384)
    assert synthetic.get_variant("synthetic-nyu").counts["paper"] == {"train": 795, "val": 654, "test": 654}
    assert len(synthetic.NYU_13_CLASSES) == 13 and len(synthetic.CITY_19_CLASSES) == 19
    assert synthetic.CITY_19_TO_7.dtype == np.int16 and synthetic.CITY_19_TO_7.shape == (19,)
    names = synthetic.CITY_19_CLASSES
    to7 = {names[i]: synthetic.CITY_7_CLASSES[c] for i, c in enumerate(synthetic.CITY_19_TO_7)}
    assert to7["road"] == "flat" and to7["sky"] == "sky" and to7["rider"] == "human" and to7["bicycle"] == "vehicle"
    assert to7["vegetation"] == "nature" and to7["pole"] == "object" and to7["fence"] == "construction"
    assert synthetic.get_variant("synthetic-broden").classes["scene"] == LAYOUTS
