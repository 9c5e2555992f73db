"""Procedural 3-D scenes: layouts (room, corridor, outdoor, tabletop, street), objects, creatures, surfaces, shading.

A scene is built in a generic vocabulary (``KINDS`` for objects, ``PARTS`` for object parts, ``MATERIALS``,
``TEXTURES``); each dataset variant maps that vocabulary to its own class lists (see ``synthetic.py``). Every
primitive carries its kind, instance, part, material and procedural texture, so all labels come from one hit buffer
through lookup tables indexed by primitive id.

Objects use a local frame whose +z is the object's "front" and +y is up; ``yaw`` turns +z towards world +x.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .raycast import BOX, ELLIPSOID, QUAD, Camera, HitBuffer, Primitives, norm3, rotation

LAYOUTS = ("room", "corridor", "outdoor", "tabletop", "street")
KINDS = (
    "wall", "floor", "ceiling", "window", "door", "painting", "bed", "pillow", "sofa", "chair", "table", "cabinet",
    "shelf", "books", "tv", "lamp", "bottle", "cup", "vase", "ball", "box", "plant", "bench",
    "ground", "path", "terrain", "tree", "rock", "fence", "hill",
    "road", "sidewalk", "building", "pole", "traffic light", "traffic sign", "car", "truck", "bus", "train",
    "bicycle", "motorcycle", "person", "rider", "cat", "dog", "surface",
)
CREATURE_KINDS = ("cat", "dog", "person", "rider")
PARTS = ("none", "head", "torso", "arm", "leg", "tail", "top", "seat", "back", "frame", "mattress", "body", "cabin",
         "wheel", "trunk", "crown", "base", "shade", "pot")
MATERIALS = ("wood", "metal", "fabric", "plastic", "stone", "ceramic", "fur", "foliage", "paper", "glass")
TEXTURES = ("plain", "checkered", "striped", "dotted", "marbled", "grid")
SPECIES = ("cat", "dog")

# material -> (specular strength, shininess, palette of base colours, textures it is drawn with)
MATERIAL_STYLE: dict[str, tuple[float, float, tuple, tuple]] = {
    "wood": (0.12, 12.0, ((0.55, 0.36, 0.2), (0.7, 0.5, 0.3), (0.4, 0.25, 0.15), (0.8, 0.65, 0.45)),
             ("striped", "marbled", "plain")),
    "metal": (0.9, 60.0, ((0.6, 0.62, 0.65), (0.35, 0.36, 0.4), (0.7, 0.6, 0.4), (0.2, 0.3, 0.5)),
              ("plain", "striped", "grid")),
    "fabric": (0.02, 4.0, ((0.7, 0.2, 0.2), (0.2, 0.3, 0.7), (0.3, 0.6, 0.3), (0.8, 0.75, 0.6), (0.4, 0.4, 0.45)),
               ("plain", "checkered", "striped", "dotted")),
    "plastic": (0.5, 40.0, ((0.9, 0.2, 0.2), (0.2, 0.5, 0.9), (0.95, 0.8, 0.1), (0.1, 0.7, 0.4), (0.9, 0.9, 0.9)),
                ("plain", "dotted")),
    "stone": (0.08, 8.0, ((0.55, 0.55, 0.52), (0.7, 0.65, 0.55), (0.4, 0.4, 0.42), (0.75, 0.72, 0.7)),
              ("marbled", "plain", "grid")),
    "ceramic": (0.6, 90.0, ((0.92, 0.92, 0.9), (0.8, 0.85, 0.9), (0.9, 0.8, 0.7), (0.6, 0.75, 0.7)),
                ("plain", "checkered", "dotted", "grid")),
    "fur": (0.03, 3.0, ((0.55, 0.35, 0.15), (0.2, 0.18, 0.16), (0.85, 0.8, 0.75), (0.85, 0.5, 0.2), (0.5, 0.5, 0.5)),
            ("plain", "striped", "dotted", "marbled")),
    "foliage": (0.05, 6.0, ((0.25, 0.5, 0.2), (0.35, 0.6, 0.25), (0.2, 0.4, 0.15), (0.45, 0.55, 0.2)),
                ("marbled", "dotted")),
    "paper": (0.04, 5.0, ((0.95, 0.93, 0.88), (0.85, 0.8, 0.7), (0.7, 0.8, 0.85), (0.9, 0.85, 0.75)),
              ("plain", "striped", "grid", "checkered")),
    "glass": (1.0, 150.0, ((0.25, 0.35, 0.45), (0.15, 0.2, 0.25), (0.35, 0.45, 0.5)), ("plain",)),
}
_KIND_ID = {k: i for i, k in enumerate(KINDS)}
_PART_ID = {p: i for i, p in enumerate(PARTS)}
_MAT_ID = {m: i for i, m in enumerate(MATERIALS)}
_TEX_ID = {t: i for i, t in enumerate(TEXTURES)}


@dataclass
class Surface:
    """Appearance of a surface: material, procedural texture (class, frequency per metre, two colours)."""

    material: str
    texture: str
    scale: float
    color1: tuple[float, float, float]
    color2: tuple[float, float, float]


@dataclass
class Instance:
    """One object instance (id >= 1): its kind, whether it is salient, and the species of a creature."""

    id: int
    kind: str
    salient: bool = False
    species: str | None = None


@dataclass
class Scene:
    """A 3-D scene: camera, light, primitives (sorted by type) and per-primitive label/appearance tables [P]."""

    layout: str
    camera: Camera
    light_dir: np.ndarray
    prims: Primitives
    kind: np.ndarray
    part: np.ndarray
    material: np.ndarray
    texture: np.ndarray
    tex_scale: np.ndarray
    color1: np.ndarray
    color2: np.ndarray
    instance: np.ndarray
    instances: list[Instance]
    far: float = 20.0
    ambient: float = 0.3
    sky_top: tuple = (0.35, 0.55, 0.85)
    sky_horizon: tuple = (0.85, 0.9, 0.95)
    fog: float = 0.0  # 1 / fog distance in metres (0 = no fog)
    extras: dict = field(default_factory=dict)


class SceneBuilder:
    """Collects primitives with their labels; ``build`` sorts them by type and packs the arrays."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.rows: list[tuple] = []
        self.instances: list[Instance] = []
        self._pool: list[float] = []
        self._next = 0
        self.clutter = 1.0  # street layouts place kerb objects and vehicles up to clutter x their full range

    # -- random helpers: python floats drawn from ``rng`` in blocks (one numpy call per 256 draws, not one each) --
    def random(self) -> float:
        """U[0, 1)."""
        if self._next == len(self._pool):
            self._pool = self.rng.random(256).tolist()
            self._next = 0
        self._next += 1
        return self._pool[self._next - 1]

    def u(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.random()

    def integers(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi)."""
        return lo + min(int(self.random() * (hi - lo)), hi - lo - 1)

    def choice(self, seq):
        return seq[self.integers(0, len(seq))]

    def chance(self, p: float) -> bool:
        return self.random() < p

    def permutation(self, n: int) -> list[int]:
        items = list(range(n))
        for i in range(n - 1, 0, -1):  # Fisher-Yates
            j = self.integers(0, i + 1)
            items[i], items[j] = items[j], items[i]
        return items

    def surface(self, material: str, texture: str | None = None) -> Surface:
        """A random appearance for ``material`` (texture drawn from the material's textures unless given)."""
        _, _, palette, textures = MATERIAL_STYLE[material]
        base = self.choice(palette)
        jit = (self.u(-0.08, 0.08), self.u(-0.08, 0.08), self.u(-0.08, 0.08))
        c1 = tuple(float(min(max(b + j, 0.02), 0.98)) for b, j in zip(base, jit))
        tex = texture or self.choice(textures)
        if tex in ("checkered", "grid", "dotted") and self.chance(0.5):
            c2 = tuple(float(c) for c in self.choice(palette))
        else:
            k = self.u(0.35, 0.7)
            c2 = tuple(c * k for c in c1)
        return Surface(material, tex, self.u(3.0, 9.0), c1, c2)

    def instance(self, kind: str, salient: bool = False, species: str | None = None) -> int:
        inst = Instance(len(self.instances) + 1, kind, salient, species)
        self.instances.append(inst)
        return inst.id

    def add(self, ptype: int, kind: str, center, half, rot: np.ndarray, surf: Surface, *, part: str = "none",
            instance: int = 0, casts: bool = True) -> None:
        self.rows.append((ptype, _KIND_ID[kind], tuple(center), tuple(half), rot, surf, _PART_ID[part], instance,
                          casts))

    def box(self, kind, center, half, surf, yaw=0.0, pitch=0.0, roll=0.0, **kw) -> None:
        self.add(BOX, kind, center, half, rotation(yaw, pitch, roll), surf, **kw)

    def ellipsoid(self, kind, center, radii, surf, yaw=0.0, pitch=0.0, roll=0.0, **kw) -> None:
        self.add(ELLIPSOID, kind, center, radii, rotation(yaw, pitch, roll), surf, **kw)

    def quad(self, kind, center, u_axis, v_axis, hu, hv, surf, **kw) -> None:
        """Rectangle spanned by unit axes ``u_axis``, ``v_axis`` (orthogonal) with half extents ``hu``, ``hv``."""
        u, v = [float(x) for x in u_axis], [float(x) for x in v_axis]
        n = (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])
        rot = tuple((u[i], v[i], n[i]) for i in range(3))  # columns u, v, n
        kw.setdefault("casts", False)
        self.add(QUAD, kind, center, (hu, hv, 1.0), rot, surf, **kw)

    def build(self, layout: str, camera: Camera, light_dir, **kw) -> Scene:
        rows = sorted(self.rows, key=lambda r: r[0])  # stable: keeps insertion order within a type
        n = len(rows)
        surfs = [r[5] for r in rows]
        light = np.asarray(light_dir, np.float32)
        prims = Primitives(center=[r[2] for r in rows], rot=[r[4] for r in rows] if n else np.zeros((0, 3, 3)),
                           half=[r[3] for r in rows], ptype=[r[0] for r in rows], casts=[r[8] for r in rows])
        return Scene(
            layout=layout, camera=camera, light_dir=light / np.linalg.norm(light), prims=prims,
            kind=np.array([r[1] for r in rows], np.int16), part=np.array([r[6] for r in rows], np.int16),
            material=np.array([_MAT_ID[s.material] for s in surfs], np.int16),
            texture=np.array([_TEX_ID[s.texture] for s in surfs], np.int16),
            tex_scale=np.array([s.scale for s in surfs], np.float32),
            color1=np.array([s.color1 for s in surfs], np.float32).reshape(-1, 3),
            color2=np.array([s.color2 for s in surfs], np.float32).reshape(-1, 3),
            instance=np.array([r[7] for r in rows], np.int32), instances=list(self.instances), **kw)


class Frame:
    """A local object frame on the ground: ``at(x, y, z)`` maps local offsets (x right, y up, z front) to world."""

    def __init__(self, x: float, y: float, z: float, yaw: float) -> None:
        self.o = (x, y, z)
        self.yaw = yaw
        self.c, self.s = math.cos(yaw), math.sin(yaw)

    def at(self, x: float, y: float, z: float) -> tuple[float, float, float]:
        return (self.o[0] + self.c * x + self.s * z, self.o[1] + y, self.o[2] - self.s * x + self.c * z)


# ---------------------------------------------------------------- objects


def add_table(b: SceneBuilder, f: Frame, w: float, d: float, h: float, surf: Surface) -> float:
    """Table with top and four legs; returns the height of the top surface."""
    inst = b.instance("table")
    t = 0.025
    b.box("table", f.at(0, h - t, 0), (w / 2, t, d / 2), surf, f.yaw, part="top", instance=inst)
    for sx in (-1, 1):
        for sz in (-1, 1):
            b.box("table", f.at(sx * (w / 2 - 0.05), (h - 2 * t) / 2, sz * (d / 2 - 0.05)), (0.025, (h - 2 * t) / 2,
                  0.025), surf, f.yaw, part="leg", instance=inst)
    return h


def add_chair(b: SceneBuilder, f: Frame, surf: Surface) -> None:
    inst = b.instance("chair")
    s, h = 0.22, 0.45
    b.box("chair", f.at(0, h, 0), (s, 0.025, s), surf, f.yaw, part="seat", instance=inst)
    b.box("chair", f.at(0, h + 0.25, -s + 0.02), (s, 0.22, 0.02), surf, f.yaw, part="back", instance=inst)
    for sx in (-1, 1):
        for sz in (-1, 1):
            b.box("chair", f.at(sx * (s - 0.03), h / 2, sz * (s - 0.03)), (0.02, h / 2, 0.02), surf, f.yaw,
                  part="leg", instance=inst)


def add_bed(b: SceneBuilder, f: Frame) -> None:
    inst = b.instance("bed")
    w, length = b.u(0.7, 1.0), b.u(0.95, 1.1)
    b.box("bed", f.at(0, 0.15, length), (w, 0.15, length), b.surface("wood"), f.yaw, part="frame", instance=inst)
    b.box("bed", f.at(0, 0.38, length), (w - 0.03, 0.09, length - 0.03), b.surface("fabric"), f.yaw,
          part="mattress", instance=inst)
    b.box("bed", f.at(0, 0.55, 0.04), (w, 0.55, 0.04), b.surface("wood"), f.yaw, part="frame", instance=inst)
    pil = b.surface("fabric")
    for sx in ((-0.4, 0.4) if w > 0.8 else (0.0,)):
        b.ellipsoid("pillow", f.at(sx, 0.52, 0.35), (0.28, 0.07, 0.16), pil, f.yaw, instance=b.instance("pillow"))


def add_sofa(b: SceneBuilder, f: Frame) -> None:
    inst = b.instance("sofa")
    surf = b.surface("fabric")
    w = b.u(0.8, 1.2)
    b.box("sofa", f.at(0, 0.22, 0.45), (w, 0.22, 0.4), surf, f.yaw, part="seat", instance=inst)
    b.box("sofa", f.at(0, 0.45, 0.1), (w, 0.45, 0.1), surf, f.yaw, part="back", instance=inst)
    for sx in (-1, 1):
        b.box("sofa", f.at(sx * (w + 0.08), 0.32, 0.45), (0.08, 0.32, 0.42), surf, f.yaw, part="arm", instance=inst)


def add_cabinet(b: SceneBuilder, f: Frame, with_tv: bool) -> None:
    w, h = b.u(0.4, 0.9), b.u(0.5, 1.1)
    b.box("cabinet", f.at(0, h / 2, 0.25), (w, h / 2, 0.25), b.surface(b.choice(("wood", "wood", "plastic"))),
          f.yaw, instance=b.instance("cabinet"))
    if with_tv:
        tw = b.u(0.35, 0.6)
        b.box("tv", f.at(0, h + 0.32 * tw * 2 / 2 + 0.02, 0.25), (tw, 0.3 * tw, 0.03), b.surface("glass"), f.yaw,
              instance=b.instance("tv"))
    elif b.chance(0.7):
        add_small_object(b, f.at(b.u(-w + 0.1, w - 0.1), h, 0.25))


def add_shelf(b: SceneBuilder, f: Frame) -> None:
    w, h = b.u(0.4, 0.7), b.u(1.2, 2.0)
    b.box("shelf", f.at(0, h / 2, 0.17), (w, h / 2, 0.17), b.surface("wood"), f.yaw, instance=b.instance("shelf"))
    x = -w + 0.05
    while x < w - 0.1:
        bw = b.u(0.03, 0.07)
        bh = b.u(0.1, 0.15)
        b.box("books", f.at(x + bw, h * 0.55 + bh, 0.36), (bw, bh, 0.03), b.surface("paper"), f.yaw,
              instance=b.instance("books"))
        x += 2 * bw + 0.01


def add_small_object(b: SceneBuilder, p: tuple[float, float, float]) -> None:
    """A cup, bottle, vase, ball, box, books or plant standing at point ``p`` (its base)."""
    x, y, z = p
    kind = b.choice(("cup", "bottle", "vase", "ball", "box", "books", "plant"))
    inst = b.instance(kind)
    if kind == "cup":
        r = b.u(0.04, 0.06)
        b.ellipsoid(kind, (x, y + r * 1.2, z), (r, r * 1.2, r), b.surface(b.choice(("ceramic", "plastic"))),
                    instance=inst)
    elif kind == "bottle":
        r = b.u(0.035, 0.05)
        b.ellipsoid(kind, (x, y + 0.13, z), (r, 0.13, r), b.surface(b.choice(("glass", "plastic"))), instance=inst)
    elif kind == "vase":
        r = b.u(0.06, 0.1)
        b.ellipsoid(kind, (x, y + 2 * r, z), (r, 2 * r, r), b.surface("ceramic"), instance=inst)
    elif kind == "ball":
        r = b.u(0.05, 0.12)
        b.ellipsoid(kind, (x, y + r, z), (r, r, r), b.surface(b.choice(("plastic", "fabric"))), instance=inst)
    elif kind == "box":
        s = b.u(0.05, 0.12)
        b.box(kind, (x, y + s, z), (s * b.u(0.8, 1.5), s, s), b.surface(b.choice(("paper", "wood", "plastic"))),
              yaw=b.u(0, math.pi), instance=inst)
    elif kind == "books":
        s = b.u(0.1, 0.15)
        b.box(kind, (x, y + 0.03, z), (s, 0.03, s * 0.75), b.surface("paper"), yaw=b.u(0, math.pi), instance=inst)
    else:  # plant: pot and crown
        r = b.u(0.06, 0.1)
        b.box(kind, (x, y + r, z), (r, r, r), b.surface("ceramic"), part="pot", instance=inst)
        b.ellipsoid(kind, (x, y + 2 * r + 1.3 * r, z), (1.5 * r, 1.5 * r, 1.5 * r), b.surface("foliage"),
                    part="crown", instance=inst)


def add_lamp(b: SceneBuilder, f: Frame) -> None:
    inst = b.instance("lamp")
    h = b.u(1.2, 1.6)
    b.box("lamp", f.at(0, h / 2, 0), (0.02, h / 2, 0.02), b.surface("metal"), f.yaw, part="base", instance=inst)
    b.ellipsoid("lamp", f.at(0, h, 0), (0.18, 0.14, 0.18), b.surface("fabric", "plain"), part="shade", instance=inst)


def add_tree(b: SceneBuilder, x: float, z: float, y: float = 0.0, scale: float = 1.0) -> None:
    inst = b.instance("tree")
    h = b.u(2.0, 4.0) * scale
    b.box("tree", (x, y + h / 2, z), (0.12 * scale, h / 2, 0.12 * scale), b.surface("wood", "striped"),
          yaw=b.u(0, 1.5), part="trunk", instance=inst)
    r = b.u(1.0, 1.8) * scale
    b.ellipsoid("tree", (x, y + h + 0.6 * r, z), (r, r * b.u(0.9, 1.3), r), b.surface("foliage"), yaw=b.u(0, 3),
                part="crown", instance=inst)


def add_bench(b: SceneBuilder, f: Frame) -> None:
    inst = b.instance("bench")
    surf = b.surface("wood")
    w = b.u(0.6, 1.0)
    b.box("bench", f.at(0, 0.45, 0), (w, 0.03, 0.2), surf, f.yaw, part="seat", instance=inst)
    b.box("bench", f.at(0, 0.7, -0.18), (w, 0.15, 0.02), surf, f.yaw, part="back", instance=inst)
    leg = b.surface("metal")
    for sx in (-1, 1):
        b.box("bench", f.at(sx * (w - 0.08), 0.21, 0), (0.03, 0.21, 0.18), leg, f.yaw, part="leg", instance=inst)


def add_fence(b: SceneBuilder, x0: float, z0: float, x1: float, z1: float, h: float) -> None:
    """A fence panel from (x0, z0) to (x1, z1): one thin box whose grid/striped texture draws the slats."""
    surf = b.surface(b.choice(("wood", "metal")), b.choice(("grid", "striped")))
    length = math.hypot(x1 - x0, z1 - z0)
    yaw = math.atan2(x1 - x0, z1 - z0)
    b.box("fence", ((x0 + x1) / 2, h / 2, (z0 + z1) / 2), (0.03, h / 2, length / 2), surf, yaw=yaw,
          instance=b.instance("fence"))


def add_creature(b: SceneBuilder, f: Frame, species: str, salient: bool = True, kind: str | None = None) -> int:
    """A cat, dog or person standing in frame ``f``; parts head (incl. ears/snout), torso, arm, leg, tail."""
    kind = kind or species
    inst = b.instance(kind, salient=salient, species=species)
    if species == "person":
        s = b.u(0.85, 1.05)
        skin = b.surface("plastic", "plain")
        shirt, pants = b.surface("fabric"), b.surface("fabric")
        for sx in (-1, 1):
            b.box(kind, f.at(sx * 0.1 * s, 0.42 * s, 0), (0.075 * s, 0.42 * s, 0.08 * s), pants, f.yaw, part="leg",
                  instance=inst)
            b.box(kind, f.at(sx * 0.27 * s, 1.13 * s, 0), (0.05 * s, 0.3 * s, 0.05 * s), shirt, f.yaw,
                  roll=sx * 0.1, part="arm", instance=inst)
        b.ellipsoid(kind, f.at(0, 1.15 * s, 0), (0.21 * s, 0.34 * s, 0.13 * s), shirt, f.yaw, part="torso",
                    instance=inst)
        b.ellipsoid(kind, f.at(0, 1.62 * s, 0.01), (0.1 * s, 0.125 * s, 0.11 * s), skin, f.yaw, part="head",
                    instance=inst)
        return inst
    dog = species == "dog"
    s = b.u(0.85, 1.15) * (1.7 if dog else 1.0)
    fur = b.surface("fur")
    leg_h = (0.2 if dog else 0.14) * s
    tr = (0.09 * s, 0.09 * s, 0.2 * s)  # torso radii
    ty = leg_h + tr[1] * 0.8
    b.ellipsoid(kind, f.at(0, ty, 0), tr, fur, f.yaw, part="torso", instance=inst)
    for sx in (-1, 1):
        for sz in (-1, 1):
            b.box(kind, f.at(sx * 0.05 * s, leg_h / 2 + 0.01, sz * 0.13 * s), (0.022 * s, leg_h / 2 + 0.01,
                  0.022 * s), fur, f.yaw, part="leg", instance=inst)
    hr = (0.075 if dog else 0.08) * s
    hy, hz = ty + tr[1] + 0.4 * hr, tr[2] + 0.3 * hr
    b.ellipsoid(kind, f.at(0, hy, hz), (hr, hr, hr), fur, f.yaw, part="head", instance=inst)
    if dog:  # long snout, floppy ears hanging at the sides
        b.ellipsoid(kind, f.at(0, hy - 0.3 * hr, hz + 1.1 * hr), (0.45 * hr, 0.4 * hr, 0.8 * hr), fur, f.yaw,
                    part="head", instance=inst)
        for sx in (-1, 1):
            b.ellipsoid(kind, f.at(sx * 0.95 * hr, hy - 0.35 * hr, hz), (0.18 * hr, 0.75 * hr, 0.45 * hr), fur,
                        f.yaw, part="head", instance=inst)
        b.ellipsoid(kind, f.at(0, ty + 0.5 * tr[1], -tr[2] - 0.3 * hr), (0.15 * hr, 0.15 * hr, 0.8 * hr), fur,
                    f.yaw, pitch=0.6, part="tail", instance=inst)
    else:  # small snout, pointed upright ears, long raised tail
        b.ellipsoid(kind, f.at(0, hy - 0.3 * hr, hz + 0.85 * hr), (0.35 * hr, 0.25 * hr, 0.3 * hr), fur, f.yaw,
                    part="head", instance=inst)
        for sx in (-1, 1):
            b.ellipsoid(kind, f.at(sx * 0.5 * hr, hy + 0.95 * hr, hz), (0.22 * hr, 0.5 * hr, 0.1 * hr), fur, f.yaw,
                        roll=-sx * 0.25, part="head", instance=inst)
        b.ellipsoid(kind, f.at(0, ty + 1.4 * tr[1], -tr[2] - 0.1 * s), (0.1 * hr, 1.4 * hr, 0.1 * hr), fur, f.yaw,
                    pitch=-0.35, part="tail", instance=inst)
    return inst


VEHICLE_REACH = {"car": 2.2, "truck": 5.2, "bus": 5.6, "train": 9.1, "bicycle": 0.9, "motorcycle": 0.9}  # max |z|


def add_vehicle(b: SceneBuilder, f: Frame, kind: str) -> None:
    """car / truck / bus / train (body, cabin, wheels) or bicycle / motorcycle (frame, wheels)."""
    inst = b.instance(kind)
    paint = b.surface(b.choice(("metal", "plastic")), "plain")
    tyre = Surface("plastic", "plain", 1.0, (0.05, 0.05, 0.05), (0.05, 0.05, 0.05))
    if kind in ("bicycle", "motorcycle"):
        r = 0.33 if kind == "bicycle" else 0.32
        for sz in (-1, 1):
            b.ellipsoid(kind, f.at(0, r, sz * 0.55), (0.03, r, r), tyre, f.yaw, part="wheel", instance=inst)
        hb = (0.03, 0.18, 0.5) if kind == "bicycle" else (0.18, 0.22, 0.55)
        b.box(kind, f.at(0, r + hb[1] + 0.05, 0), hb, paint, f.yaw, part="frame", instance=inst)
        return
    w, h, length, cab = {"car": (0.9, 0.45, 2.1, 0.35), "truck": (1.2, 1.1, 3.5, 0.0),
                         "bus": (1.25, 1.4, 5.5, 0.0), "train": (1.4, 1.7, 9.0, 0.0)}[kind]
    w *= b.u(0.95, 1.05)
    r = 0.33 if kind == "car" else 0.5
    b.box(kind, f.at(0, r * 0.8 + h, 0), (w, h, length), paint, f.yaw, part="body", instance=inst)
    if cab:
        b.box(kind, f.at(0, r * 0.8 + 2 * h + cab, -0.2), (w * 0.85, cab, length * 0.5), b.surface("glass"), f.yaw,
              part="cabin", instance=inst)
    elif kind == "truck":
        b.box(kind, f.at(0, r * 0.8 + h * 0.7, length + 0.8), (w, h * 0.7, 0.8), b.surface("metal", "plain"), f.yaw,
              part="cabin", instance=inst)
    for a in ((-0.7, 0.7) if kind == "car" else (-0.75, 0.75)):  # one axle ellipsoid shows a wheel on each side
        b.ellipsoid(kind, f.at(0, r, a * length), (w + 0.02, r, r), tyre, f.yaw, part="wheel", instance=inst)


def add_room_box(b: SceneBuilder, w: float, d: float, h: float, walls: Surface, floor: Surface,
                 ceiling: Surface) -> None:
    """Closed room x in [-w/2, w/2], y in [0, h], z in [0, d] seen from inside (enclosure: casts no shadows)."""
    m = 1.002  # a little overlap closes the corners against rounding
    ex, ey, ez = (1, 0, 0), (0, 1, 0), (0, 0, 1)
    b.quad("floor", (0, 0, d / 2), ex, ez, w / 2 * m, d / 2 * m, floor)
    b.quad("ceiling", (0, h, d / 2), ex, ez, w / 2 * m, d / 2 * m, ceiling)
    b.quad("wall", (0, h / 2, d), ex, ey, w / 2 * m, h / 2 * m, walls)
    b.quad("wall", (0, h / 2, 0), ex, ey, w / 2 * m, h / 2 * m, walls)
    b.quad("wall", (-w / 2, h / 2, d / 2), ez, ey, d / 2 * m, h / 2 * m, walls)
    b.quad("wall", (w / 2, h / 2, d / 2), ez, ey, d / 2 * m, h / 2 * m, walls)


def wall_frames(w: float, d: float) -> list[tuple[Frame, float]]:
    """Frames at the back, left and right walls (local +z into the room) with the usable half length of each."""
    return [(Frame(0, 0, d, math.pi), w / 2), (Frame(-w / 2, 0, d / 2, math.pi / 2), d / 2),
            (Frame(w / 2, 0, d / 2, -math.pi / 2), d / 2)]


def add_wall_decor(b: SceneBuilder, f: Frame, half_len: float, h: float) -> None:
    """A painting, window or door on the wall of frame ``f`` (its local x runs along the wall)."""
    what = b.choice(("painting", "painting", "window", "door"))
    x = b.u(-half_len * 0.6, half_len * 0.6)
    if what == "painting":
        pw, ph = b.u(0.25, 0.6), b.u(0.2, 0.45)
        b.box("painting", f.at(x, b.u(1.3, 1.8), 0.015), (pw, ph, 0.015), b.surface("paper"), f.yaw,
              instance=b.instance("painting"))
    elif what == "window":
        ww, wh = b.u(0.4, 0.8), b.u(0.4, 0.7)
        p = f.at(x, b.u(1.2, 1.6), 0.005)
        u = (math.cos(f.yaw), 0.0, -math.sin(f.yaw))
        b.quad("window", p, u, (0, 1, 0), ww, wh, b.surface("glass"), instance=b.instance("window"))
    else:
        b.box("door", f.at(x, 1.0, 0.02), (0.45, 1.0, 0.02), b.surface("wood"), f.yaw, instance=b.instance("door"))


def indoor_light(b: SceneBuilder) -> tuple[float, float, float]:
    el, az = b.u(0.6, 1.2), b.u(0, 2 * math.pi)
    return (math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az))


def indoor_surfaces(b: SceneBuilder) -> tuple[Surface, Surface, Surface]:
    walls = b.surface(b.choice(("paper", "stone", "ceramic")), b.choice(("plain", "plain", "striped", "grid")))
    floor = b.surface(b.choice(("wood", "stone", "ceramic", "fabric")))
    ceiling = b.surface("paper", "plain")
    return walls, floor, ceiling


# ---------------------------------------------------------------- layouts


def layout_room(b: SceneBuilder) -> tuple[Camera, tuple, dict]:
    w, d, h = b.u(3.5, 6.0), b.u(4.0, 7.0), b.u(2.5, 3.0)
    add_room_box(b, w, d, h, *indoor_surfaces(b))
    walls = wall_frames(w, d)
    for f, half in walls:
        if b.chance(0.7):
            add_wall_decor(b, f, half, h)
    back, left, right = walls
    slots = [(back[0], -w / 4), (back[0], w / 4), (left[0], 0.2), (right[0], 0.2), (left[0], d / 4),
             (right[0], d / 4)]
    order = b.permutation(len(slots))
    items = ["bed", "sofa", "cabinet_tv", "shelf", "cabinet", "lamp", "plant"]
    for k in order[: b.integers(2, 5)]:
        f, x = slots[k]
        lf = Frame(*f.at(x, 0, 0), f.yaw)
        item = b.choice(items)
        if item == "bed":
            add_bed(b, lf)
        elif item == "sofa":
            add_sofa(b, lf)
        elif item in ("cabinet_tv", "cabinet"):
            add_cabinet(b, lf, item == "cabinet_tv")
        elif item == "shelf":
            add_shelf(b, lf)
        elif item == "lamp":
            add_lamp(b, Frame(*lf.at(0, 0, 0.3), 0))
        else:
            add_small_object(b, lf.at(0, 0, 0.3))
    if b.chance(0.7):  # dining set in the middle
        tf = Frame(b.u(-w / 6, w / 6), 0, d * b.u(0.5, 0.65), b.u(-0.3, 0.3))
        tw, td = b.u(0.45, 0.7), b.u(0.35, 0.5)
        top = add_table(b, tf, 2 * tw, 2 * td, b.u(0.7, 0.78), b.surface(b.choice(("wood", "wood", "stone"))))
        surf = b.surface(b.choice(("wood", "plastic", "metal")))
        for side in b.permutation(4)[: b.integers(0, 5)]:
            yaw = tf.yaw + side * math.pi / 2
            off = (td + 0.25) if side % 2 == 0 else (tw + 0.25)
            cf = Frame(*tf.at(-off * math.sin(side * math.pi / 2), 0, -off * math.cos(side * math.pi / 2)), yaw)
            add_chair(b, cf, surf)
        for _ in range(b.integers(0, 4)):
            add_small_object(b, tf.at(b.u(-tw + 0.1, tw - 0.1), top, b.u(-td + 0.1, td - 0.1)))
    cam = Camera((b.u(-w / 4, w / 4), b.u(1.2, 1.6), b.u(0.2, 0.6)), b.u(-0.35, 0.35), b.u(0.15, 0.45),
                 b.u(58, 66))
    return cam, indoor_light(b), dict(far=10.0, ambient=0.35, extent=(w, d, h))


def layout_corridor(b: SceneBuilder) -> tuple[Camera, tuple, dict]:
    w, d, h = b.u(1.8, 3.0), b.u(12.0, 25.0), b.u(2.5, 3.0)
    add_room_box(b, w, d, h, *indoor_surfaces(b))
    door = b.surface("wood")
    z = b.u(1.5, 3.0)
    while z < d - 1.0:
        side = b.choice((-1, 1))
        f = Frame(side * w / 2, 0, z, -side * math.pi / 2)
        what = b.choice(("door", "door", "painting", "window", "cabinet", "plant", "bench"))
        if what == "door":
            b.box("door", f.at(0, 1.0, 0.02), (0.45, 1.0, 0.02), door, f.yaw, instance=b.instance("door"))
        elif what in ("painting", "window"):
            add_wall_decor(b, f, 0.5, h)
        elif what == "cabinet":
            add_cabinet(b, f, False)
        elif what == "bench":
            add_bench(b, Frame(*f.at(0, 0, 0.25), f.yaw))
        else:
            add_small_object(b, f.at(0, 0, 0.25))
        z += b.u(1.5, 4.0)
    lamp = b.surface("ceramic", "plain")
    for z in np.arange(2.0, d, b.u(2.5, 4.0)):
        b.box("lamp", (0, h - 0.03, float(z)), (0.3, 0.03, 0.12), lamp, instance=b.instance("lamp"), casts=False)
    cam = Camera((b.u(-w / 5, w / 5), b.u(1.3, 1.7), b.u(0.2, 0.5)), b.u(-0.15, 0.15), b.u(0.0, 0.2), b.u(58, 66))
    return cam, indoor_light(b), dict(far=30.0, ambient=0.35, extent=(w, d, h))


def layout_tabletop(b: SceneBuilder) -> tuple[Camera, tuple, dict]:
    w, d, h = b.u(4.0, 6.0), b.u(4.0, 6.0), b.u(2.5, 3.0)
    add_room_box(b, w, d, h, *indoor_surfaces(b))
    walls = wall_frames(w, d)
    for f, half in walls[:1]:
        add_wall_decor(b, f, half, h)
    tw, td = b.u(0.6, 0.9), b.u(0.4, 0.6)
    tz = b.u(1.4, 2.0)
    tf = Frame(0, 0, tz, b.u(-0.2, 0.2))
    top = add_table(b, tf, 2 * tw, 2 * td, b.u(0.72, 0.78), b.surface(b.choice(("wood", "stone", "ceramic"))))
    n = b.integers(3, 8)
    for _ in range(n):
        add_small_object(b, tf.at(b.u(-tw + 0.12, tw - 0.12), top, b.u(-td + 0.1, td - 0.1)))
    if b.chance(0.5):
        add_chair(b, Frame(*tf.at(b.u(-0.3, 0.3), 0, td + 0.3), tf.yaw + math.pi), b.surface("wood"))
    dist = b.u(0.8, 1.3)
    pitch = b.u(0.55, 0.95)
    cam = Camera((b.u(-0.2, 0.2), top + dist * math.sin(pitch), tz - dist * math.cos(pitch)), b.u(-0.2, 0.2), pitch,
                 b.u(55, 65))
    return cam, indoor_light(b), dict(far=10.0, ambient=0.35, table_top=top, table=(tf, tw, td),
                                      extent=(w, d, h))


def outdoor_light(b: SceneBuilder) -> tuple[float, float, float]:
    el, az = b.u(0.45, 1.1), b.u(0, 2 * math.pi)
    return (math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az))


def layout_outdoor(b: SceneBuilder) -> tuple[Camera, tuple, dict]:
    ex, ez = (1, 0, 0), (0, 0, 1)
    b.quad("ground", (0, 0, 100), ex, ez, 200, 200, b.surface("foliage"))
    if b.chance(0.6):
        px = b.u(-3, 3)
        b.quad("path", (px, 0.01, 60), ex, ez, b.u(0.6, 1.5), 60, b.surface("stone"))
    for _ in range(b.integers(2, 7)):
        add_tree(b, b.u(-15, 15), b.u(4, 40))
    for _ in range(b.integers(0, 5)):
        r = b.u(0.2, 0.8)
        b.ellipsoid("rock", (b.u(-8, 8), r * 0.5, b.u(2, 20)), (r, r * b.u(0.5, 0.9), r * b.u(0.7, 1.2)),
                    b.surface("stone"), yaw=b.u(0, 3), instance=b.instance("rock"))
    if b.chance(0.5):
        add_bench(b, Frame(b.u(-4, 4), 0, b.u(3, 9), b.u(-0.8, 0.8) + math.pi))
    if b.chance(0.5):
        z = b.u(5, 15)
        add_fence(b, -b.u(4, 12), z, b.u(4, 12), z + b.u(-2, 2), b.u(0.8, 1.2))
    for _ in range(b.integers(1, 4)):
        r = b.u(20, 60)
        b.ellipsoid("hill", (b.u(-120, 120), -r * 0.4, b.u(120, 180)), (r * b.u(1.5, 3), r, r), b.surface("foliage"),
                    instance=b.instance("hill"), casts=False)
    cam = Camera((b.u(-1, 1), b.u(1.0, 1.8), 0.0), b.u(-0.3, 0.3), b.u(0.02, 0.25), b.u(55, 70))
    return cam, outdoor_light(b), dict(far=80.0, ambient=0.3, fog=1 / 150)


def layout_street(b: SceneBuilder) -> tuple[Camera, tuple, dict]:
    ex, ez = (1, 0, 0), (0, 0, 1)
    wr = b.u(4.0, 7.0)  # road half width
    ws = b.u(2.0, 4.0)  # sidewalk width
    length = 100.0
    b.quad("road", (0, 0, length / 2 - 10), ex, ez, wr, length / 2 + 10, b.surface("stone", "plain"))
    walk = b.surface("stone", b.choice(("grid", "plain")))
    for side in (-1, 1):
        b.box("sidewalk", (side * (wr + ws / 2), 0.075, length / 2 - 10), (ws / 2, 0.075, length / 2 + 10), walk)
        xb = wr + ws  # building line
        terrain = b.chance(0.4)
        if terrain:
            tw = b.u(1.0, 3.0)
            b.quad("terrain", (side * (xb + tw / 2), 0.01, length / 2 - 10), ex, ez, tw / 2, length / 2 + 10,
                   b.surface("foliage"))
            xb += tw
        z = -10.0
        while z < length:
            bl = b.u(8, 25)
            bh = b.u(6, 30)
            what = b.choice(("building",) * 6 + ("wall", "fence", "vegetation"))
            if what == "building":
                b.box("building", (side * (xb + 6), bh / 2, z + bl / 2), (6, bh / 2, bl / 2 - 0.2),
                      b.surface(b.choice(("stone", "stone", "ceramic", "glass", "metal")), b.choice(("grid", "plain"))),
                      instance=b.instance("building"))
            elif what == "wall":
                b.box("wall", (side * (xb + 0.2), 1.0, z + bl / 2), (0.2, 1.0, bl / 2), b.surface("stone"),
                      instance=b.instance("wall"))
                b.box("building", (side * (xb + 14), bh / 2, z + bl / 2), (6, bh / 2, bl / 2), b.surface("stone"),
                      instance=b.instance("building"))
            elif what == "fence":
                add_fence(b, side * (xb + 0.1), z, side * (xb + 0.1), z + bl, b.u(1.0, 1.8))
                b.box("building", (side * (xb + 14), bh / 2, z + bl / 2), (6, bh / 2, bl / 2), b.surface("stone"),
                      instance=b.instance("building"))
            else:
                b.box("tree", (side * (xb + 1.5), 1.0, z + bl / 2), (1.5, 1.0, bl / 2 - 0.3), b.surface("foliage"),
                      instance=b.instance("tree"))
                add_tree(b, side * (xb + 3), z + bl / 2, scale=b.u(1.2, 2.0))
            z += bl
        # poles, signs and traffic lights on the kerb; trees and people on the sidewalk
        z = b.u(2, 12)
        while z < 50 * b.clutter:
            x = side * (wr + 0.3)
            ph = b.u(3.0, 6.0)
            b.box("pole", (x, ph / 2 + 0.15, z), (0.05, ph / 2, 0.05), b.surface("metal", "plain"),
                  instance=b.instance("pole"))
            top = b.choice(("none", "sign", "light"))
            if top == "sign":
                b.box("traffic sign", (x, ph - 0.2, z - 0.06), (0.3, 0.3, 0.02),
                      b.surface("metal", b.choice(("plain", "striped"))), instance=b.instance("traffic sign"))
            elif top == "light":
                b.box("traffic light", (x - side * 0.1, ph - 0.1, z - 0.1), (0.15, 0.4, 0.12),
                      b.surface("plastic", "dotted"), instance=b.instance("traffic light"))
            z += b.u(10, 25)
        z = b.u(3, 15)
        while z < 45 * b.clutter:
            if b.chance(0.5):
                add_tree(b, side * (wr + ws * 0.6), z, 0.15)
            else:
                add_creature(b, Frame(side * (wr + ws * b.u(0.3, 0.8)), 0.15, z, b.choice((0.0, math.pi))), "person",
                             salient=True)
            z += b.u(6, 18)
    # vehicles: parked at the kerbs and driving in the lanes, all ahead of the camera (z = -2)
    z = b.u(0.5, 8)
    while z < 60 * b.clutter:
        lane = b.choice((-1, 1))
        kind = b.choice(("car",) * 8 + ("truck", "bus", "bicycle", "motorcycle", "train"))
        x = lane * b.u(wr * 0.35, wr * 0.75) if kind != "train" else 0.0
        yaw = (0.0 if lane > 0 else math.pi) + b.u(-0.05, 0.05)
        reach = VEHICLE_REACH[kind]
        add_vehicle(b, Frame(x, 0, z + reach, yaw), kind)
        if kind in ("bicycle", "motorcycle"):  # rider sitting on it
            add_creature(b, Frame(x, 0.35, z + reach - 0.1, yaw), "person", kind="rider")
        z += 2 * reach + b.u(4, 15)
    cam = Camera((b.u(-wr * 0.5, wr * 0.5), b.u(1.3, 1.7), -2.0), b.u(-0.1, 0.1), b.u(0.0, 0.1), b.u(55, 65))
    return cam, outdoor_light(b), dict(far=80.0, ambient=0.3, fog=1 / 200)


LAYOUT_BUILDERS = {"room": layout_room, "corridor": layout_corridor, "outdoor": layout_outdoor,
                   "tabletop": layout_tabletop, "street": layout_street}


def place_in_view(b: SceneBuilder, cam: Camera, dist: float, lateral: float, ground: float = 0.0) -> Frame:
    """A ground frame ``dist`` metres ahead of the camera (horizontally), ``lateral`` to the right, random yaw."""
    fx, fz = math.sin(cam.yaw), math.cos(cam.yaw)
    x = cam.position[0] + fx * dist + fz * lateral
    z = cam.position[2] + fz * dist - fx * lateral
    return Frame(x, ground, z, b.u(0, 2 * math.pi))


def build_layout(layout: str, b: SceneBuilder) -> tuple[Camera, tuple, dict]:
    """Run one layout builder (ValueError on an unknown layout)."""
    if layout not in LAYOUT_BUILDERS:
        raise ValueError(f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    return LAYOUT_BUILDERS[layout](b)


# ---------------------------------------------------------------- shading


def texture_pattern(tex: np.ndarray, u: np.ndarray, v: np.ndarray, present=None) -> np.ndarray:
    """Procedural pattern value in [0,1] per pixel: texture class ``tex`` [K], surface coordinates ``u``, ``v`` [K]
    (already multiplied by the texture frequency). ``present``: the texture classes that can occur (others skipped)."""
    m = np.zeros(len(tex), np.float32)
    present = range(len(TEXTURES)) if present is None else present
    for k in present:
        name = TEXTURES[k]
        if name == "plain":
            continue
        sel = tex == k
        us, vs = u[sel], v[sel]
        if name == "checkered":
            m[sel] = (np.floor(us) + np.floor(vs)) % 2
        elif name == "striped":
            m[sel] = np.floor(us + 0.35 * vs) % 2
        elif name == "dotted":
            du, dv = us - np.floor(us) - 0.5, vs - np.floor(vs) - 0.5
            m[sel] = (du * du + dv * dv) < 0.09
        elif name == "grid":
            m[sel] = np.minimum(us - np.floor(us), vs - np.floor(vs)) < 0.12
        else:  # marbled: warped sines
            warp = 2.2 * np.sin(0.9 * vs + 0.7 * np.sin(1.7 * us))
            m[sel] = 0.5 + 0.5 * np.sin(1.3 * us + warp + 0.8 * np.sin(2.3 * vs))
    return m


def shade(scene: Scene, hit: HitBuffer) -> np.ndarray:
    """RGB float32 [H,W,3] in [0,1]: textured albedo, hemisphere ambient, Lambert with cast shadows, Blinn-Phong
    specular (material-dependent), distance fog outdoors, a sky gradient where nothing is hit.

    Computed densely over all pixels (misses borrow primitive 0 and are replaced by the sky): cheaper than masking.
    """
    h, w = hit.prim_id.shape
    pid = hit.prim_id.reshape(-1)
    hitm = pid >= 0
    dirs = hit.ray_dir.reshape(-1, 3)
    view = dirs / -norm3(dirs)
    top, hor = np.asarray(scene.sky_top, np.float32), np.asarray(scene.sky_horizon, np.float32)
    sky = hor + (top - hor) * np.sqrt(np.clip(-view[:, 1:2], 0, 1))
    if len(scene.kind) == 0 or not hitm.any():
        return sky.reshape(h, w, 3)
    ids = np.where(hitm, pid, 0)
    local = hit.local.reshape(-1, 3)
    face = hit.face.reshape(-1)
    # surface coordinates: the two local axes other than the normal's axis, plus a per-primitive offset
    x, y, z = local[:, 0], local[:, 1], local[:, 2]
    f0, f1 = face == 0, face == 1
    off = ids.astype(np.float32) * np.float32(0.37)
    scale = scene.tex_scale[ids]
    u = (np.where(f0, y, np.where(f1, z, x)) + off) * scale
    v = (np.where(f0, z, np.where(f1, x, y)) + off) * scale
    pat = texture_pattern(scene.texture[ids], u, v, np.unique(scene.texture))[:, None]
    c1 = scene.color1[ids]
    albedo = c1 + (scene.color2[ids] - c1) * pat
    n = hit.normal_world.reshape(-1, 3)
    lit = hit.lit.reshape(-1)
    mat = scene.material[ids]
    half = view + scene.light_dir
    half /= norm3(half)
    ndh = np.clip(np.einsum("ki,ki->k", n, half), 0, 1)
    spec = np.where(lit > 0, _SPEC[mat] * ndh ** _SHIN[mat], 0)
    shading = scene.ambient * (0.75 + 0.25 * n[:, 1]) + 0.8 * lit
    col = albedo * shading[:, None] + 0.6 * spec[:, None]
    if scene.fog > 0:
        fog = np.exp(-np.where(hitm, hit.t.reshape(-1), 0) * scene.fog)[:, None]
        col = col * fog + sky * (1 - fog)
    rgb = np.where(hitm[:, None], col, sky)
    return np.clip(rgb, 0, 1).astype(np.float32).reshape(h, w, 3)


_SPEC = np.array([MATERIAL_STYLE[m][0] for m in MATERIALS], np.float32)
_SHIN = np.array([MATERIAL_STYLE[m][1] for m in MATERIALS], np.float32)
