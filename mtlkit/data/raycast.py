"""A small vectorised ray caster in numpy: pinhole camera, quads, oriented boxes and ellipsoids.

It renders the synthetic scenes: one hit buffer per image (ray ``t``, primitive id, normal, hit point) from which
every label is looked up. Camera frame as OpenCV (``x`` right, ``y`` down, ``z`` forward); rays have camera-frame
``z = 1``, so a hit's ``t`` is its z-depth. The field of view spans the longer image side, so the 3-D scene does not
depend on the resolution. Intersection runs in screen tiles against the primitives that overlap them, to keep numpy
call counts small.

Conventions and design: docs/data.md#ray-caster
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

QUAD, BOX, ELLIPSOID = 0, 1, 2
PRIM_TYPES = ("quad", "box", "ellipsoid")
_INF = np.float32(np.inf)
_AXES = np.arange(3, dtype=np.int8)[None, :]
_CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float32)  # [8,3]


def vec_mat(v: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``v @ m`` for [K,3] x [3,3] (or [3]) without BLAS (whose threading makes tiny inner dimensions slow)."""
    return np.einsum("kj,j...->k...", v, m)


def norm3(v: np.ndarray) -> np.ndarray:
    """Row norms of [K,3], keepdims."""
    return np.sqrt(np.einsum("ki,ki->k", v, v))[:, None]


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> tuple:
    """Local->world rotation (3x3 nested tuples): roll about local z, then pitch about x, then yaw about world y.

    Plain Python floats: scenes build many of these and small numpy arrays cost more than the arithmetic.
    """
    cy, sy = math.cos(yaw), math.sin(yaw)
    if pitch == 0.0 and roll == 0.0:
        return ((cy, 0.0, sy), (0.0, 1.0, 0.0), (-sy, 0.0, cy))
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    # Ry @ Rx @ Rz written out
    return ((cy * cr + sy * sp * sr, -cy * sr + sy * sp * cr, sy * cp),
            (cp * sr, cp * cr, -sp),
            (-sy * cr + cy * sp * sr, sy * sr + cy * sp * cr, cy * cp))


@dataclass
class Camera:
    """Pinhole camera at ``position`` (world, metres) looking along yaw (about y; 0 = +z) and pitch (>0 = down)."""

    position: tuple[float, float, float]
    yaw: float = 0.0
    pitch: float = 0.0
    fov_deg: float = 60.0  # spans the longer image side

    def rotation(self) -> np.ndarray:
        """Camera->world rotation [3,3] float32; columns are the camera's right, down and forward axes."""
        cy, sy, cp, sp = math.cos(self.yaw), math.sin(self.yaw), math.cos(self.pitch), math.sin(self.pitch)
        # forward = (sy cp, -sp, cy cp), right = (cy, 0, -sy), down = right x forward
        return np.array([[cy, -sy * sp, sy * cp],
                         [0.0, -cp, -sp],
                         [-sy, -cy * sp, cy * cp]], np.float32)

    def intrinsics(self, height: int, width: int) -> tuple[float, float, float, float]:
        """``(fx, fy, cx, cy)`` in pixels, OpenCV convention (pixel centres on integer coordinates)."""
        f = 0.5 * max(height, width) / math.tan(math.radians(self.fov_deg) / 2)
        return f, f, width / 2 - 0.5, height / 2 - 0.5

    def ray_dirs(self, height: int, width: int) -> np.ndarray:
        """World ray directions [H*W, 3] float32 (row-major pixels), camera-frame z component = 1."""
        fx, fy, cx, cy = self.intrinsics(height, width)
        x = ((np.arange(width) - cx) / fx).astype(np.float32)
        y = ((np.arange(height) - cy) / fy).astype(np.float32)
        d_cam = np.empty((height, width, 3), np.float32)
        d_cam[..., 0] = x[None, :]
        d_cam[..., 1] = y[:, None]
        d_cam[..., 2] = 1.0
        return vec_mat(d_cam.reshape(-1, 3), self.rotation().T.astype(np.float32))


@dataclass
class Primitives:
    """Geometry of P primitives sorted by type (quads, then boxes, then ellipsoids).

    ``center`` [P,3], ``rot`` [P,3,3] (local->world), ``half`` [P,3] (quad: half extents, z = 1 by convention),
    ``ptype`` [P] int8, ``casts`` [P] bool (casts shadows; enclosure surfaces do not). Derived: ``m`` [P,3,3]
    world -> scaled local (``v @ m[p]``), ``mt`` the same as [3,P,3], ``c_local`` [3,P] centres in scaled local
    coordinates, ``radius`` [P] bounding spheres.
    """

    center: np.ndarray
    rot: np.ndarray
    half: np.ndarray
    ptype: np.ndarray
    casts: np.ndarray

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, np.float32).reshape(-1, 3)
        self.rot = np.asarray(self.rot, np.float32).reshape(-1, 3, 3)
        self.half = np.asarray(self.half, np.float32).reshape(-1, 3)
        self.ptype = np.asarray(self.ptype, np.int8).reshape(-1)
        self.casts = np.asarray(self.casts, bool).reshape(-1)
        if np.any(np.diff(self.ptype) < 0):
            raise ValueError("primitives must be sorted by type (quads, boxes, ellipsoids); sort them by ptype")
        if np.any(self.half <= 0):
            raise ValueError("primitive half sizes must be > 0 (use half z = 1 for quads)")
        # world vector v -> scaled local coordinates: v @ M[p]  (M = R / half, column-wise)
        self.m = (self.rot / self.half[:, None, :]).astype(np.float32)  # [P,3,3]
        self.mt = np.ascontiguousarray(self.m.transpose(2, 0, 1))  # [3,P,3]: axis i, primitive p, world j
        self.c_local = np.einsum("pj,pji->ip", self.center, self.m).astype(np.float32)  # [3,P]
        # bounding-sphere radius (culling)
        self.radius = np.linalg.norm(np.where(self.ptype[:, None] == QUAD, self.half * [1, 1, 0], self.half), axis=1)

    def __len__(self) -> int:
        return len(self.ptype)


def _closest(ol: np.ndarray, dl: np.ndarray, ptype: int, t_min: float) -> np.ndarray:
    """Ray parameter of the first hit, ``inf`` on a miss: [P,K] from scaled local origins/dirs [3,P,K or 1]."""
    ox, oy, oz = ol
    dx, dy, dz = dl
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if ptype == QUAD:
            t = np.divide(-oz, dz)
            x = np.abs(t * dx + ox)
            y = np.abs(t * dy + oy)
            hit = (x <= 1.0) & (y <= 1.0) & (t > t_min)
            return np.where(hit, t, _INF)
        if ptype == BOX:  # slabs of the cube [-1, 1]^3: entry = max over axes of the near slab, exit = min of far
            tnear = tfar = None
            for o, d in ((ox, dx), (oy, dy), (oz, dz)):
                t1 = np.divide(-1.0 - o, d)
                t2 = np.divide(1.0 - o, d)
                # fmin/fmax skip the NaN (0 / 0) of a ray that grazes a slab plane while parallel to it
                lo, hi = np.fmin(t1, t2), np.fmax(t1, t2, out=t2)
                if tnear is None:
                    tnear, tfar = lo, hi
                else:
                    np.fmax(tnear, lo, out=tnear)
                    np.fmin(tfar, hi, out=tfar)
            hit = tnear <= tfar
            hit &= tnear > t_min
            return np.where(hit, tnear, _INF)
        # ellipsoid: |o + t d|^2 = 1
        a = dx * dx + dy * dy + dz * dz
        b = dx * ox + dy * oy + dz * oz
        c = ox * ox + oy * oy + oz * oz - 1.0
        disc = b * b - a * c
        t = (-b - np.sqrt(disc)) / a
        return np.where(t > t_min, t, _INF)  # nan (miss) compares False


def _to_local(mt: np.ndarray, v: np.ndarray, p: int) -> np.ndarray:
    """World vectors -> scaled local frames of p primitives: [3] -> [3,P,1]; [3,K] (transposed) -> [3,P,K]."""
    if v.ndim == 1:
        return np.einsum("ij,j->i", mt, v).reshape(3, p, 1)
    return np.einsum("ij,jk->ik", mt, v).reshape(3, p, -1)  # einsum: BLAS threads are slow for inner dim 3


def _local(prims: Primitives, sel: np.ndarray, origins: np.ndarray, dirs: np.ndarray):
    """Scaled local origins and directions [3,P,K] (or [3,P,1] for a shared origin / shared direction).

    ``origins`` and ``dirs`` are [3] (shared by all rays) or transposed [3,K].
    """
    p = len(sel)
    mt = prims.mt[:, sel].reshape(3 * p, 3)  # rows (i, p): world -> scaled local axis i of primitive p
    ol = _to_local(mt, origins, p) - prims.c_local[:, sel][..., None]  # centre in scaled local coordinates
    return ol, _to_local(mt, dirs, p)


def trace(prims: Primitives, origins: np.ndarray, dirs: np.ndarray, sel: np.ndarray,
          t_min: float = 1e-4, any_hit: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Closest hit of rays against the primitives ``sel`` (indices, sorted).

    origins: [3] shared or [K,3]; dirs: [K,3] or [3] shared (shadow rays towards a directional light; then K comes
    from the origins). Returns ``t`` [K] float32 (inf = miss) and ``pid`` [K] int32 (-1 = miss). With ``any_hit``
    only ``t`` is meaningful (finite where something is hit).
    """
    k = dirs.shape[0] if dirs.ndim == 2 else origins.shape[0]
    best_t = np.full(k, _INF, np.float32)
    best_id = np.full(k, -1, np.int32)
    if len(sel) == 0 or k == 0:
        return best_t, best_id
    types = prims.ptype[sel]
    dirs_t = np.ascontiguousarray(dirs.T) if dirs.ndim == 2 else np.asarray(dirs, np.float32)
    if origins.ndim == 2:
        origins = np.ascontiguousarray(origins.T)
    ol_all, dl_all = _local(prims, sel, origins, dirs_t)  # all types at once: fewer numpy calls
    for ptype in (QUAD, BOX, ELLIPSOID):
        lo, hi = np.searchsorted(types, ptype), np.searchsorted(types, ptype, "right")
        if lo == hi:
            continue
        ids = sel[lo:hi]
        ol, dl = ol_all[:, lo:hi], dl_all[:, lo:hi]
        t = _closest(ol, dl, ptype, t_min)  # [P,K]
        if any_hit:
            np.minimum(best_t, t.min(axis=0), out=best_t)
            continue
        if len(ids) == 1:
            tt, arg = t[0], np.zeros(k, np.intp)
        else:
            arg = t.argmin(axis=0)
            tt = t.min(axis=0)
        better = tt < best_t
        best_t = np.where(better, tt, best_t)
        best_id = np.where(better, ids[arg], best_id)
    return best_t, best_id


def _tiles(height: int, width: int, tile: int) -> list[tuple[int, int, int, int]]:
    return [(r, min(r + tile, height), c, min(c + tile, width))
            for r in range(0, height, tile) for c in range(0, width, tile)]


def screen_rects(prims: Primitives, cam: Camera, height: int, width: int) -> np.ndarray:
    """Conservative pixel rect ``[P,4]`` (row0, row1, col0, col1, end-exclusive) of each primitive."""
    fx, fy, cx, cy = cam.intrinsics(height, width)
    rc = vec_mat(prims.center - np.asarray(cam.position, np.float32), cam.rotation())  # camera frame
    r = prims.radius * 1.001 + 1e-3
    rects = np.empty((len(prims), 4), np.float64)
    rects[:] = (0, height, 0, width)
    front = rc[:, 2] - r > 1e-3  # whole sphere in front of the camera: the tangent cones are finite
    if front.any():
        x, y, z, rr = (a.astype(np.float64) for a in (rc[front, 0], rc[front, 1], rc[front, 2], r[front]))
        out = []
        for lat, f, c in ((y, fy, cy), (x, fx, cx)):
            ang = np.arctan2(lat, z)
            half = np.arcsin(np.clip(rr / np.hypot(lat, z), 0, 1))
            out += [np.tan(ang - half) * f + c, np.tan(ang + half) * f + c]
        rects[front] = np.stack([np.floor(out[0]), np.ceil(out[1]) + 1, np.floor(out[2]), np.ceil(out[3]) + 1], 1)
    # Tighter: the projected corners of the oriented bounding box (exact hull for a convex box in front of the
    # camera; ellipsoids lie inside theirs). Both rects are conservative, so their intersection is too.
    half = np.where(prims.ptype[:, None] == QUAD, prims.half * np.float32([1, 1, 0]), prims.half)
    corners = prims.center[:, None, :] + np.einsum("pij,pcj->pci", prims.rot, _CORNERS * half[:, None, :])
    cc = np.einsum("pcj,ji->pci", corners - np.asarray(cam.position, np.float32), cam.rotation())  # [P,8,3]
    ok = (cc[..., 2] > 1e-3).all(axis=1)
    if ok.any():
        z = cc[ok, :, 2].astype(np.float64)
        u = cc[ok, :, 0] / z * fx + cx
        v = cc[ok, :, 1] / z * fy + cy
        box = np.stack([np.floor(v.min(1)), np.ceil(v.max(1)) + 1, np.floor(u.min(1)), np.ceil(u.max(1)) + 1], 1)
        sub = rects[ok]
        sub[:, [0, 2]] = np.maximum(sub[:, [0, 2]], box[:, [0, 2]])
        sub[:, [1, 3]] = np.minimum(sub[:, [1, 3]], box[:, [1, 3]])
        rects[ok] = sub
    return rects


@dataclass
class HitBuffer:
    """Per-pixel hit record, arrays [H,W,...]; every label is derived from it.

    ``t``/``depth`` z-depth in metres (``t`` inf and ``depth`` 0 on a miss or beyond ``far``); ``prim_id`` int32
    (-1 = miss); ``normal_world``/``normal_cam`` unit normals facing the camera (zeros on a miss); ``point`` world
    hit point; ``local`` unscaled local hit point of the primitive; ``face`` the local axis (0..2) of the surface normal
    (texture mapping); ``lit`` light visibility in [0,1] (0 in shadow or facing away); ``rgb`` float32 [H,W,3] in [0,1].
    """

    t: np.ndarray
    depth: np.ndarray
    prim_id: np.ndarray
    normal_world: np.ndarray
    normal_cam: np.ndarray
    point: np.ndarray
    local: np.ndarray
    face: np.ndarray
    lit: np.ndarray
    intrinsics: tuple[float, float, float, float]
    ray_dir: np.ndarray | None = None
    rgb: np.ndarray | None = None

    @property
    def hit(self) -> np.ndarray:
        return self.prim_id >= 0


@functools.lru_cache(maxsize=16)
def tile_order(height: int, width: int, tile: int) -> tuple[np.ndarray, np.ndarray, list, np.ndarray]:
    """Pixel indices in tile-major order [N], tile start offsets [T+1] in that order, the tiles' rects, and the
    tile id of every pixel [N] (row-major). Cached: read-only."""
    tiles = _tiles(height, width, tile)
    pix = np.arange(height * width).reshape(height, width)
    order = np.concatenate([pix[r0:r1, c0:c1].ravel() for r0, r1, c0, c1 in tiles])
    starts = np.cumsum([0] + [(r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in tiles])
    tile_id = ((np.arange(height) // tile)[:, None] * (-(-width // tile)) + (np.arange(width) // tile)[None, :])
    return order, starts, tiles, tile_id.ravel()


def cast(prims: Primitives, cam: Camera, height: int, width: int, light_dir: np.ndarray | None = None,
         far: float = np.inf, tile: int = 32, shadow_tile: int = 32) -> HitBuffer:
    """Primary rays (+ shadow rays towards ``light_dir``, a unit vector pointing at the light) for an image.

    Works in screen tiles of ``tile`` x ``tile`` pixels (tile-major pixel order internally): each tile is tested
    only against primitives whose projected bounds overlap it. Shadow rays (only for pixels facing the light) are
    grouped by ``shadow_tile`` tiles and culled in light space. ``depth`` is 0 beyond ``far`` metres.
    """
    n = height * width
    if len(prims) == 0:  # nothing to hit: an all-miss buffer
        hw = (height, width)
        zeros3 = np.zeros(hw + (3,), np.float32)
        return HitBuffer(t=np.full(hw, _INF, np.float32), depth=np.zeros(hw, np.float32),
                         prim_id=np.full(hw, -1, np.int32), normal_world=zeros3, normal_cam=zeros3.copy(),
                         point=zeros3.copy(), local=zeros3.copy(), face=np.full(hw, 2, np.int8),
                         lit=np.zeros(hw, np.float32), intrinsics=cam.intrinsics(height, width),
                         ray_dir=cam.ray_dirs(height, width).reshape(hw + (3,)))
    order, starts, tiles, _ = tile_order(height, width, tile)
    dirs = cam.ray_dirs(height, width)  # row-major
    dirs_tm = dirs[order]  # tile-major
    origin = np.asarray(cam.position, np.float32)
    rects = screen_rects(prims, cam, height, width)
    t_tm = np.empty(n, np.float32)
    pid_tm = np.empty(n, np.int32)
    for (r0, r1, c0, c1), s0, s1 in zip(tiles, starts[:-1], starts[1:]):
        sel = np.flatnonzero((rects[:, 0] < r1) & (rects[:, 1] > r0) & (rects[:, 2] < c1) & (rects[:, 3] > c0))
        t_tm[s0:s1], pid_tm[s0:s1] = trace(prims, origin, dirs_tm[s0:s1], sel)
    t = np.empty(n, np.float32)
    pid = np.empty(n, np.int32)
    t[order], pid[order] = t_tm, pid_tm

    # Dense over all pixels (misses use primitive 0 and are zeroed at the end): fewer gathers than masking.
    hit = pid >= 0
    safe = np.where(hit, pid, 0)
    p = origin + np.where(hit, t, 0)[:, None] * dirs
    m = prims.m[safe]  # [n,3,3] world -> scaled local
    ls = np.einsum("kj,kji->ki", p - prims.center[safe], m)  # scaled local hit point
    ptype = prims.ptype[safe]
    face = np.where(ptype == QUAD, 2, np.abs(ls).argmax(axis=1)).astype(np.int8)  # box: the face's axis
    nl = (face[:, None] == _AXES).astype(np.float32)
    nl = np.where((ptype == ELLIPSOID)[:, None], ls, nl)  # ellipsoid: gradient of |ls|^2 (mapped by m below)
    # the world normal is R @ (nl / half) = m @ nl for every type (one-hot nl: a face normal, scale irrelevant)
    nw = np.einsum("kji,ki->kj", m, nl)
    nw /= norm3(nw)
    nw *= np.where(np.einsum("ki,ki->k", nw, dirs) > 0, -1.0, 1.0).astype(np.float32)[:, None]  # face the camera
    nw[~hit] = 0.0
    local = ls * prims.half[safe]

    lit = np.zeros(n, np.float32)
    if light_dir is not None and hit.any():
        light_dir = np.asarray(light_dir, np.float32)
        ndl = vec_mat(nw, light_dir)
        cand = np.flatnonzero(ndl > 0)  # lit side (misses have nw = 0)
        # group shadow rays by screen tile so that each group is compact in space (culling works)
        _, _, stiles, stile_id = tile_order(height, width, shadow_tile)
        cand = cand[np.argsort(stile_id[cand], kind="stable")]
        bounds = np.searchsorted(stile_id[cand], np.arange(len(stiles) + 1))
        origins = p[cand] + nw[cand] * (1e-3 + 1e-3 * t[cand, None])
        lit[cand] = shadow_visible(prims, origins, light_dir, bounds) * ndl[cand]

    depth = np.where(hit & (t <= far), t, 0).astype(np.float32)
    t = np.where(hit, t, _INF)
    normal_cam = vec_mat(nw, cam.rotation().astype(np.float32))
    p[~hit] = 0.0
    local[~hit] = 0.0
    hw = (height, width)
    return HitBuffer(
        t=t.reshape(hw), depth=depth.reshape(hw), prim_id=pid.reshape(hw),
        normal_world=nw.reshape(hw + (3,)), normal_cam=normal_cam.reshape(hw + (3,)),
        point=p.reshape(hw + (3,)), local=local.reshape(hw + (3,)), face=face.reshape(hw),
        lit=lit.reshape(hw), intrinsics=cam.intrinsics(height, width), ray_dir=dirs.reshape(hw + (3,)))


def shadow_visible(prims: Primitives, origins: np.ndarray, light_dir: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """1.0 where the ray ``origin + s * light_dir`` (s > 0) is unblocked by shadow-casting primitives, else 0.0.

    ``origins`` [K,3] come in groups ``bounds`` (offsets, spatially compact groups such as screen tiles); a group
    only tests casters whose bounding sphere overlaps the group's origins swept along the light (checked in the
    light's frame: the footprint perpendicular to the light, and not entirely behind the origins).
    """
    casters = np.flatnonzero(prims.casts)
    out = np.ones(len(origins), np.float32)
    if len(casters) == 0 or len(origins) == 0:
        return out
    helper = np.array([1, 0, 0] if abs(light_dir[0]) < 0.9 else [0, 1, 0], np.float32)
    e1 = np.cross(light_dir, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(light_dir, e1)
    basis = np.stack([e1, e2, light_dir], axis=1).astype(np.float32)  # [3,3] world -> light frame
    pc = prims.center[casters] @ basis  # [C,3]
    rad = prims.radius[casters] + 1e-3
    po = vec_mat(origins, basis)  # [K,3]
    for s0, s1 in zip(bounds[:-1], bounds[1:]):
        if s1 <= s0:
            continue
        q = po[s0:s1]
        lo, hi = q.min(axis=0), q.max(axis=0)
        keep = ((pc[:, 0] + rad > lo[0]) & (pc[:, 0] - rad < hi[0]) & (pc[:, 1] + rad > lo[1])
                & (pc[:, 1] - rad < hi[1]) & (pc[:, 2] + rad > lo[2]))
        sel = casters[keep]
        if len(sel) == 0:
            continue
        t, _ = trace(prims, origins[s0:s1], light_dir, sel, t_min=0.0, any_hit=True)
        out[s0:s1] = np.isinf(t)
    return out
