"""Synthetic dataset variants rendered by the numpy ray caster, and the per-item sample generator.

Each variant (``synthetic-nyu``, ``-city``, ``-pet``, ``-pascal``, ``-broden``) mimics one real dataset's tasks and
class lists, so the course runs with nothing downloaded. Every label of an item comes from one hit buffer
(``raycast.HitBuffer``) through lookup tables from primitive id to class / instance / part / material, so depth,
normals, edges, parts, materials, saliency, boxes and the scene class agree exactly.

An item depends only on (``GENERATOR_VERSION``, dataset, seed, split, index) through ``scene_rng``, and its 3-D
scene not on the resolution; raise ``GENERATOR_VERSION`` whenever what the generator draws changes.

Label definitions: docs/data.md#labels
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from . import raycast
from .scenes import (CREATURE_KINDS, KINDS, LAYOUTS, MATERIALS, PARTS, SPECIES, TEXTURES, MATERIAL_STYLE, Frame,
                     Scene, SceneBuilder, add_creature, build_layout, place_in_view, shade)

GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")

NYU_13_CLASSES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "painting", "sofa", "table",
                  "tv", "wall", "window")
CITY_19_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                   "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                   "bicycle")
CITY_7_CLASSES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
CITY_19_TO_7 = np.array([0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6], np.int16)
PET_CLASSES = ("background", "pet", "border")
PASCAL_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                  "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
                  "tvmonitor")
PASCAL_PARTS = ("background", "head", "torso", "arm", "leg", "tail")
BRODEN_OBJECTS = ("sky",) + tuple(k for k in KINDS if k != "surface")
# Broden-like parts are per owning object: (object group, part)
BRODEN_PART_PAIRS = (("creature", "head"), ("creature", "torso"), ("creature", "arm"), ("creature", "leg"),
                     ("creature", "tail"), ("table", "top"), ("table", "leg"), ("chair", "seat"), ("chair", "back"),
                     ("chair", "leg"), ("sofa", "seat"), ("sofa", "back"), ("sofa", "arm"), ("bed", "frame"),
                     ("bed", "mattress"), ("bench", "seat"), ("bench", "back"), ("bench", "leg"), ("car", "body"),
                     ("car", "cabin"), ("car", "wheel"), ("tree", "trunk"), ("tree", "crown"), ("lamp", "base"),
                     ("lamp", "shade"), ("plant", "pot"), ("plant", "crown"))
BRODEN_PARTS = ("none",) + tuple(f"{o} {p}" for o, p in BRODEN_PART_PAIRS)

_NYU_MAP = {"wall": "wall", "floor": "floor", "ceiling": "ceiling", "window": "window", "door": "furniture",
            "painting": "painting", "bed": "bed", "sofa": "sofa", "chair": "chair", "table": "table",
            "cabinet": "furniture", "shelf": "furniture", "bench": "furniture", "books": "books", "tv": "tv"}
_CITY_MAP = {"road": "road", "path": "road", "sidewalk": "sidewalk", "building": "building", "wall": "wall",
             "fence": "fence", "pole": "pole", "traffic light": "traffic light", "traffic sign": "traffic sign",
             "tree": "vegetation", "plant": "vegetation", "terrain": "terrain", "ground": "terrain", "hill": "terrain",
             "person": "person", "rider": "rider", "car": "car", "truck": "truck", "bus": "bus", "train": "train",
             "motorcycle": "motorcycle", "bicycle": "bicycle"}
_PASCAL_MAP = {"bicycle": "bicycle", "bottle": "bottle", "bus": "bus", "car": "car", "cat": "cat", "chair": "chair",
               "table": "diningtable", "dog": "dog", "motorcycle": "motorbike", "person": "person", "rider": "person",
               "plant": "pottedplant", "sofa": "sofa", "train": "train", "tv": "tvmonitor"}
_VEHICLES = ("car", "truck", "bus", "train", "bicycle", "motorcycle")

SIZES = {"unit": (32, 32), "smoke": (64, 64), "lesson": (128, 128), "paper": (288, 384)}
CITY_SIZES = {"unit": (32, 64), "smoke": (64, 128), "lesson": (128, 256), "paper": (256, 512)}
COUNTS = {"unit": {"train": 8, "val": 4, "test": 4}, "smoke": {"train": 192, "val": 64, "test": 64},
          "lesson": {"train": 2000, "val": 400, "test": 400}, "paper": {"train": 795, "val": 654, "test": 654}}
IGNORE = -1


@dataclass(frozen=True)
class Variant:
    """A synthetic dataset: its tasks (in sample-key order), class names, sizes and counts per preset, layouts,
    and sources (dict source -> tasks it labels; ``{"default": tasks}`` for single-source data)."""

    name: str
    tasks: tuple[str, ...]
    classes: dict[str, tuple[str, ...]]
    sizes: dict[str, tuple[int, int]]
    counts: dict[str, dict[str, int]]
    layouts: tuple[str, ...]
    sources: dict[str, tuple[str, ...]]
    far: float | None = None  # depth limit in metres (None: the layout's own)
    creatures: tuple[int, int] = (0, 0)  # min/max extra creatures placed in view
    species: tuple[str, ...] = ("cat", "dog")
    street_clutter: float = 0.6  # range of street objects (1 = full Cityscapes-like streets)
    extras: dict = field(default_factory=dict)

    def task_info(self) -> dict[str, dict]:
        """task -> {"num_classes", "class_names"} for classification-like tasks, {} for the others."""
        out = {}
        for t in self.tasks:
            names = self.classes.get(t)
            out[t] = {"num_classes": len(names), "class_names": list(names)} if names else {}
        return out


def _variant(name, tasks, classes, layouts, sources=None, sizes=SIZES, **kw) -> Variant:
    return Variant(name, tuple(tasks), classes, sizes, COUNTS, tuple(layouts), sources or {"default": tuple(tasks)},
                   **kw)


VARIANTS: dict[str, Variant] = {
    "synthetic-nyu": _variant("synthetic-nyu", ("semseg", "depth", "normals"), {"semseg": NYU_13_CLASSES},
                              ("room", "corridor", "tabletop"), far=10.0),
    "synthetic-city": _variant("synthetic-city", ("semseg", "depth"), {"semseg": CITY_19_CLASSES}, ("street",),
                               sizes=CITY_SIZES, far=80.0, street_clutter=1.0),
    "synthetic-pet": _variant("synthetic-pet", ("semseg", "boxes", "binary"),
                              {"semseg": PET_CLASSES, "binary": SPECIES, "boxes": SPECIES}, LAYOUTS),
    "synthetic-pascal": _variant("synthetic-pascal", ("edge", "semseg", "parts", "normals", "saliency"),
                                 {"semseg": PASCAL_CLASSES, "parts": PASCAL_PARTS}, LAYOUTS, creatures=(1, 2),
                                 species=("person", "person", "cat", "dog")),
    "synthetic-broden": _variant(
        "synthetic-broden", ("scene", "semseg", "parts", "material", "texture"),
        {"scene": LAYOUTS, "semseg": BRODEN_OBJECTS, "parts": BRODEN_PARTS, "material": MATERIALS,
         "texture": TEXTURES}, LAYOUTS,
        sources={"ade": ("scene", "semseg", "parts"), "opensurfaces": ("material",), "dtd": ("texture",),
                 "pascal_parts": ("semseg", "parts")},
        creatures=(0, 2), species=("person", "cat", "dog")),
}


def get_variant(name: str) -> Variant:
    """The variant called ``name`` (ValueError listing the valid names otherwise)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown synthetic dataset {name!r}; valid names: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def scene_rng(variant: str, split: str, index: int, seed: int = 0) -> np.random.Generator:
    """The random generator of one item: a function of (GENERATOR_VERSION, variant, seed, split, index) only."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0 (got index={index}, seed={seed})")
    key = [GENERATOR_VERSION, zlib.crc32(variant.encode()), int(seed), SPLITS.index(split), int(index)]
    return np.random.default_rng(np.random.SeedSequence(key))


# ---------------------------------------------------------------- scenes


def _aim_at(cam: raycast.Camera, frame: Frame, height: float, b: SceneBuilder) -> None:
    """Pitch (and slightly yaw) the camera so that the point ``height`` above ``frame`` is near the image centre."""
    dx, dz = frame.o[0] - cam.position[0], frame.o[2] - cam.position[2]
    dist = math.hypot(dx, dz)
    cam.yaw = math.atan2(dx, dz) + b.u(-0.12, 0.12)
    cam.pitch = math.atan2(cam.position[1] - frame.o[1] - height, dist) + b.u(-0.08, 0.08)


def _creature_spot(b: SceneBuilder, layout: str, cam: raycast.Camera, opts: dict, near: bool,
                   portrait: float = 0.0) -> Frame:
    """Where a creature stands: on the table for tabletop scenes, else on the ground ahead of the camera.

    ``portrait`` > 0 puts it at ``portrait`` x U(0.8, 1.4) metres (a close pet photo) instead of the layout's range.
    """
    if layout == "tabletop":
        tf, tw, td = opts["table"]
        return Frame(*tf.at(b.u(-tw * 0.4, tw * 0.4), opts["table_top"], b.u(-td * 0.3, td * 0.3)), b.u(0, 6.28))
    lo, hi = {"room": (1.2, 2.2), "corridor": (1.5, 4.0), "outdoor": (2.0, 5.0), "street": (3.0, 6.0)}[layout]
    if not near:
        hi *= 1.6
    if portrait:
        lo, hi = 0.8 * portrait, 1.4 * portrait
    dist = b.u(lo, hi)
    f = place_in_view(b, cam, dist, b.u(-0.15, 0.15) * dist, 0.0)
    if "extent" in opts:  # keep inside the room
        w, d, _ = opts["extent"]
        x = min(max(f.o[0], -w / 2 + 0.5), w / 2 - 0.5)
        z = min(max(f.o[2], 0.5), d - 0.5)
        f = Frame(x, f.o[1], z, f.yaw)
    return f


def make_scene(variant: str, rng: np.random.Generator) -> Scene:
    """Draw a 3-D scene of ``variant`` from ``rng`` (layout uniform over the variant's layouts)."""
    v = get_variant(variant)
    b = SceneBuilder(rng)
    b.clutter = v.street_clutter
    layout = b.choice(v.layouts)
    sources = list(v.sources)
    source = b.choice(sources) if len(sources) > 1 else sources[0]
    cam, light, opts = build_layout(layout, b)
    extras = {"source": source, "layout": layout, "texture": IGNORE, "species": IGNORE, "pet": 0}
    if v.name == "synthetic-pet":
        species = b.choice(SPECIES)
        scale = 1.7 if species == "dog" else 1.0
        f = _creature_spot(b, layout, cam, opts, near=True, portrait=scale)
        extras["pet"] = add_creature(b, f, species)
        extras["species"] = SPECIES.index(species)
        cam.fov_deg = b.u(35.0, 50.0)  # a pet photo: a longer lens so that the pet fills much of the frame
        if layout == "tabletop":  # look at the pet on the table from a bit further away
            cam.position = (cam.position[0], cam.position[1] + 0.3, cam.position[2] - 0.4)
        _aim_at(cam, f, 0.2 * scale, b)
    else:
        lo, hi = v.creatures
        n = b.integers(lo, hi + 1) if hi > 0 else 0
        for i in range(n):
            f = _creature_spot(b, layout, cam, opts, near=i == 0)
            add_creature(b, f, b.choice(v.species))
            if i == 0 and v.name == "synthetic-pascal" and b.chance(0.6) and layout != "tabletop":
                _aim_at(cam, f, 0.4, b)
    if source == "dtd":  # close-up of one textured surface filling the view (nothing else is rendered)
        b.rows.clear()
        b.instances.clear()
        tex = b.choice(TEXTURES)
        mats = [m for m, style in MATERIAL_STYLE.items() if tex in style[3]]
        surf = b.surface(b.choice(mats), tex)
        dist = b.u(0.5, 1.0)
        span = 2 * dist * math.tan(math.radians(cam.fov_deg) / 2)
        surf.scale = b.u(3.0, 8.0) / span
        rot = cam.rotation()
        c = np.asarray(cam.position) + rot[:, 2] * dist
        tilt = b.u(-0.3, 0.3)
        u_axis = rot[:, 0] * math.cos(tilt) + rot[:, 2] * math.sin(tilt)
        b.quad("surface", tuple(c), u_axis, rot[:, 1], span * 2, span * 2, surf, instance=b.instance("surface"))
        extras["texture"] = TEXTURES.index(tex)
    far = v.far if v.far is not None else opts.get("far", 20.0)
    return b.build(layout, cam, light, far=far, ambient=opts.get("ambient", 0.3), fog=opts.get("fog", 0.0),
                   extras=extras)


def render(scene: Scene, height: int, width: int, shading: bool = True) -> raycast.HitBuffer:
    """Ray-cast ``scene`` at ``height`` x ``width``: the hit buffer, ``rgb`` filled in (unless ``shading=False``)."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    hit = raycast.cast(scene.prims, scene.camera, height, width, scene.light_dir if shading else None, far=scene.far)
    if shading:
        hit.rgb = shade(scene, hit)
    return hit


# ---------------------------------------------------------------- labels


def edges_from_labels(labels: np.ndarray) -> np.ndarray:
    """1 where the right or lower 4-neighbour has a different label, else 0: int8 [H,W]."""
    e = np.zeros(labels.shape, bool)
    e[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    e[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return e.astype(np.int8)


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation with a (2r+1)^2 square (clipped at the image border)."""
    out = mask.copy()
    for _ in range(r):
        grown = out.copy()
        grown[1:, :] |= out[:-1, :]
        grown[:-1, :] |= out[1:, :]
        out = grown
        grown = out.copy()
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def trimap(pet: np.ndarray) -> np.ndarray:
    """Pet mask [H,W] bool -> 0 background / 1 pet / 2 border (pixels whose neighbourhood mixes pet and non-pet)."""
    r = max(1, min(pet.shape) // 64)
    border = _dilate(pet, r) & _dilate(~pet, r)
    out = pet.astype(np.int16)
    out[border] = 2
    return out


def head_boxes(scene: Scene, prim_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tight xyxy boxes [K,4] of the visible head part of every cat/dog, with species labels [K]."""
    boxes, labels = [], []
    head = PARTS.index("head")
    for inst in scene.instances:
        if inst.species not in SPECIES:
            continue
        prims = np.flatnonzero((scene.instance == inst.id) & (scene.part == head))
        rows, cols = np.nonzero(np.isin(prim_id, prims))
        if len(rows) == 0:
            continue
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        labels.append(SPECIES.index(inst.species))
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


def _kind_lut(names: dict[str, str], classes: tuple[str, ...], default: int) -> np.ndarray:
    return np.array([classes.index(names[k]) if k in names else default for k in KINDS], np.int16)


_LUTS = {
    "synthetic-nyu": _kind_lut(_NYU_MAP, NYU_13_CLASSES, NYU_13_CLASSES.index("objects")),
    "synthetic-city": _kind_lut(_CITY_MAP, CITY_19_CLASSES, IGNORE),
    "synthetic-pascal": _kind_lut(_PASCAL_MAP, PASCAL_CLASSES, 0),
    "synthetic-broden": np.array([BRODEN_OBJECTS.index(k) if k in BRODEN_OBJECTS else IGNORE for k in KINDS], np.int16),
}
_SKY = {"synthetic-nyu": NYU_13_CLASSES.index("objects"), "synthetic-city": CITY_19_CLASSES.index("sky"),
        "synthetic-pascal": 0, "synthetic-broden": BRODEN_OBJECTS.index("sky")}
_CREATURE_KIND = np.array([k in CREATURE_KINDS for k in KINDS])
_PASCAL_PART_LUT = np.array([PASCAL_PARTS.index(p) if p in PASCAL_PARTS else 0 for p in PARTS], np.int16)


def _part_group(kind: str) -> str:
    if kind in CREATURE_KINDS:
        return "creature"
    return "car" if kind in ("car", "truck", "bus", "train") else kind


_BRODEN_PART_LUT = np.array([[BRODEN_PART_PAIRS.index((_part_group(k), p)) + 1
                              if (_part_group(k), p) in BRODEN_PART_PAIRS else 0 for p in PARTS] for k in KINDS],
                            np.int16)  # [kind, part]


def _per_pixel(values: np.ndarray, prim_id: np.ndarray, miss) -> np.ndarray:
    """Look up per-primitive ``values`` [P] at every pixel; ``miss`` where nothing is hit."""
    ext = np.append(values, np.asarray(miss, values.dtype))
    return ext[prim_id]  # prim_id -1 picks the appended miss value


def _labels(v: Variant, scene: Scene, hit: raycast.HitBuffer, labelled: tuple[str, ...]) -> dict:
    pid = hit.prim_id
    h, w = pid.shape
    out: dict = {}
    for task in v.tasks:
        if task == "boxes":
            out["boxes"], out["box_labels"] = head_boxes(scene, pid)
            continue
        if task not in labelled:  # multi-source data: present, filled with ignore values
            out[task] = (np.full((h, w), IGNORE, np.int16) if task in ("semseg", "parts", "material") else IGNORE)
            continue
        if task == "semseg":
            if v.name == "synthetic-pet":
                out[task] = trimap(_per_pixel(scene.instance == scene.extras["pet"], pid, False))
            else:
                out[task] = _per_pixel(_LUTS[v.name][scene.kind], pid, _SKY[v.name])
        elif task == "depth":
            out[task] = hit.depth[None].astype(np.float32)
        elif task == "normals":
            out[task] = np.ascontiguousarray(hit.normal_cam.transpose(2, 0, 1), np.float32)
        elif task == "edge":
            sem = _per_pixel(_LUTS[v.name][scene.kind], pid, _SKY[v.name])
            out[task] = edges_from_labels(sem)[None]
        elif task == "saliency":
            salient = np.array([False] + [i.salient for i in scene.instances])[scene.instance]
            out[task] = _per_pixel(salient, pid, False).astype(np.int8)[None]
        elif task == "parts":
            if v.name == "synthetic-broden":
                table = _BRODEN_PART_LUT[scene.kind, scene.part]
            else:
                table = np.where(_CREATURE_KIND[scene.kind], _PASCAL_PART_LUT[scene.part], 0).astype(np.int16)
            out[task] = _per_pixel(table, pid, 0)
        elif task == "material":
            out[task] = _per_pixel(scene.material, pid, IGNORE)
        elif task == "scene":
            out[task] = LAYOUTS.index(scene.layout)
        elif task == "texture":
            out[task] = int(scene.extras["texture"])
        elif task == "binary":
            out[task] = int(scene.extras["species"])
        else:  # pragma: no cover - VARIANTS only name the tasks above
            raise ValueError(f"no label rule for task {task!r}")
    return out


def generate_sample(variant: str, split: str, index: int, seed: int = 0, size: tuple[int, int] | None = None,
                    noise: float = 0.01) -> dict:
    """One item in the sample contract's layout with compact dtypes (labels: docs/data.md#labels).

    ``image`` uint8 [3,H,W]; semseg/parts/material int16 [H,W]; depth float32 [1,H,W]; normals float32 [3,H,W];
    edge/saliency int8 [1,H,W]; scene/texture/binary python int; boxes float32 [K,4] + box_labels int64 [K];
    ``meta`` dict(dataset, split, index, tasks, source, layout, intrinsics [fx, fy, cx, cy]). ``size`` defaults to the
    variant's smoke size. RGB gets Gaussian sensor noise (std ``noise``) drawn from the item's own generator.
    """
    v = get_variant(variant)
    height, width = size if size is not None else v.sizes["smoke"]
    rng = scene_rng(variant, split, index, seed)
    scene = make_scene(variant, rng)
    hit = render(scene, int(height), int(width))
    source = scene.extras["source"]
    labelled = v.sources[source]
    rgb = hit.rgb
    if noise > 0:
        noise_rng = np.random.default_rng(rng.integers(2 ** 63))
        rgb = rgb + noise_rng.standard_normal(rgb.shape, np.float32) * np.float32(noise)
    image = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8).transpose(2, 0, 1)
    sample = {"image": np.ascontiguousarray(image)}
    sample.update(_labels(v, scene, hit, labelled))
    sample["meta"] = {"dataset": variant, "split": split, "index": int(index), "tasks": list(labelled),
                      "source": source, "layout": scene.layout, "intrinsics": [float(x) for x in hit.intrinsics]}
    return sample
