"""Sharded, checksummed, atomically written sample caches.

A cache is one folder per (dataset, preset, seed, generator version, split): ``.npz`` shards of 64 samples and a
``manifest.json`` with each shard's sha256, plus a lock file so that several processes may build at once. Rendering
is slow, so every item is generated once; a shard is written to a temporary file and renamed into place (a crash never
leaves half a file) and a shard that fails its checksum is regenerated, which the deterministic generator makes exact.

This module only knows "a function ``generate(index) -> compact sample dict``"; what the samples mean is
:mod:`mtlkit.data.datasets`' business.

Format: docs/data.md#cache
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import warnings
import zipfile
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from mtlkit.atomic import atomic_write_bytes
from mtlkit.paths import ensure_writable

try:  # POSIX advisory locks; on other platforms builders are not serialised (single-process use only)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

FORMAT_VERSION = 1
SHARD_SIZE = 64
MANIFEST = "manifest.json"
LOCK = ".lock"
# Keys stored as one flat array + offsets because their first dimension differs between samples.
RAGGED_KEYS = frozenset({"boxes", "box_labels"})
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamp: identical samples -> identical bytes -> identical sha256

Generate = Callable[[int], dict]


class CacheWarning(UserWarning):
    """A cache file was damaged and is being rebuilt."""


class CacheError(RuntimeError):
    """The cache could not be built or read even after a rebuild."""


class ShardError(Exception):
    """Internal: a shard file is missing, truncated, corrupted or belongs to other parameters."""


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created if needed) for the duration of the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------- shard encode/decode
def _json_array(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode("utf-8"), dtype=np.uint8)


def _from_json_array(arr: np.ndarray) -> Any:
    return json.loads(arr.tobytes().decode("utf-8"))


def _jsonable(obj: Any) -> Any:
    """Meta values -> plain JSON types (numpy arrays and scalars included)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def normalize_meta(meta: dict) -> dict:
    """The meta dict exactly as it comes back from a shard (JSON round trip), so cached == on-the-fly."""
    return json.loads(json.dumps(_jsonable(meta), sort_keys=True))


def encode_samples(samples: Sequence[dict]) -> dict[str, np.ndarray]:
    """Stack compact samples into named arrays (the shard's contents).

    Fixed-shape arrays are stacked ``[n, ...]``; python/numpy scalars become ``[n]``; ragged arrays (boxes) are
    concatenated along dim 0 with ``<key>.offsets`` [n+1]; ``meta`` is one JSON document. ``__schema__`` records
    which key got which layout.
    """
    if not samples:
        raise ValueError("encode_samples needs at least one sample")
    keys = sorted(samples[0])
    for i, s in enumerate(samples):
        if sorted(s) != keys:
            raise CacheError(f"sample {i} has keys {sorted(s)} but sample 0 has {keys}; the generator must return "
                             f"the same keys for every item (fill unlabelled tasks with ignore values)")
    arrays: dict[str, np.ndarray] = {}
    schema: dict[str, str] = {}
    for key in keys:
        values = [s[key] for s in samples]
        if key == "meta":
            arrays["__meta__"] = _json_array([_jsonable(v) for v in values])
            schema[key] = "meta"
        elif all(np.isscalar(v) or (isinstance(v, np.ndarray) and v.ndim == 0) for v in values):
            arrays[key] = np.asarray(values)
            schema[key] = "scalar"
        else:
            values = [np.asarray(v) for v in values]
            if key in RAGGED_KEYS or len({v.shape for v in values}) > 1:
                arrays[key] = np.concatenate(values, axis=0)
                arrays[f"{key}.offsets"] = np.cumsum([0] + [len(v) for v in values]).astype(np.int64)
                schema[key] = "ragged"
            else:
                arrays[key] = np.stack(values)
                schema[key] = "stack"
    arrays["__schema__"] = _json_array(schema)
    return arrays


def decode_sample(arrays: dict[str, np.ndarray], i: int) -> dict:
    """Sample ``i`` (local to the shard) from :func:`encode_samples` output, as fresh copies (never views)."""
    schema = _from_json_array(arrays["__schema__"])
    out: dict[str, Any] = {}
    for key, layout in schema.items():
        if layout == "meta":
            out[key] = _from_json_array(arrays["__meta__"])[i]
        elif layout == "scalar":
            out[key] = arrays[key][i].item()
        elif layout == "ragged":
            off = arrays[f"{key}.offsets"]
            out[key] = arrays[key][off[i]:off[i + 1]].copy()
        else:
            out[key] = arrays[key][i].copy()
    return out


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A deflate-compressed ``.npz`` (what ``np.savez_compressed`` writes) with a fixed timestamp per member."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)
    return buf.getvalue()


def load_npz_bytes(data: bytes) -> dict[str, np.ndarray]:
    """Decode every member of an ``.npz`` held in memory (zip CRCs are checked while reading)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------------------------------------- the cache
@dataclass(frozen=True)
class ShardSpec:
    """One shard: samples ``[start, stop)`` in file ``shard-<index>.npz``."""

    index: int
    start: int
    stop: int

    @property
    def filename(self) -> str:
        return f"shard-{self.index:05d}.npz"


def shard_specs(count: int, shard_size: int) -> list[ShardSpec]:
    return [ShardSpec(k, start, min(start + shard_size, count))
            for k, start in enumerate(range(0, count, shard_size))]


def _build_shard(generate: Generate, directory: str, spec: ShardSpec, params: dict) -> dict:
    """Generate samples ``[spec.start, spec.stop)``, write the shard atomically, return its manifest entry.

    Top-level so that a process pool can run it.
    """
    samples = [generate(i) for i in range(spec.start, spec.stop)]
    arrays = encode_samples(samples)
    arrays["__info__"] = _json_array({"format": FORMAT_VERSION, "params": params,
                                      "start": spec.start, "stop": spec.stop})
    data = npz_bytes(arrays)
    atomic_write_bytes(Path(directory) / spec.filename, data)
    return {"file": spec.filename, "start": spec.start, "stop": spec.stop,
            "sha256": sha256_bytes(data), "bytes": len(data)}


class ShardedCache:
    """A lazily read, self-repairing cache of ``count`` samples produced by ``generate(index)``.

    Args:
        directory: folder of this cache (one split of one dataset configuration).
        generate: picklable function ``index -> compact sample dict`` (numpy arrays, python ints, a ``meta`` dict).
        count: number of samples.
        params: JSON-able description of what is cached (generator version, dataset, preset, seed, split, size);
            a manifest or shard written with other parameters is never reused.
        shard_size: samples per shard.
        keep: decoded shards kept in memory per process.
    """

    def __init__(self, directory: Path | str, generate: Generate, count: int, params: dict,
                 shard_size: int = SHARD_SIZE, keep: int = 2) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.directory = Path(directory)
        self.generate = generate
        self.count = int(count)
        self.params = json.loads(json.dumps(params, sort_keys=True))
        self.shard_size = int(shard_size)
        self.keep = int(keep)
        self.specs = shard_specs(self.count, self.shard_size)
        self._manifest: dict | None = None
        self._decoded: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()

    # -- pickling (DataLoader workers): decoded shards stay behind, each worker decodes its own
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_decoded"] = OrderedDict()
        return state

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    @property
    def lock_path(self) -> Path:
        return self.directory / LOCK

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"ShardedCache({str(self.directory)!r}, count={self.count}, shards={len(self.specs)})"

    # -- manifest
    def _expected_manifest_shape(self, m: dict) -> bool:
        shards = m.get("shards")
        return (m.get("format") == FORMAT_VERSION and m.get("params") == self.params
                and m.get("count") == self.count and m.get("shard_size") == self.shard_size
                and isinstance(shards, list) and len(shards) == len(self.specs)
                and all(isinstance(e, dict) and e.get("file") == s.filename and e.get("start") == s.start
                        and e.get("stop") == s.stop and isinstance(e.get("sha256"), str)
                        for e, s in zip(shards, self.specs)))

    def read_manifest(self, warn: bool = True) -> dict | None:
        """The manifest if present and valid for these parameters, else None (warning once if it is corrupt)."""
        try:
            text = self.manifest_path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            m = json.loads(text.decode("utf-8"))
            if not isinstance(m, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            if warn:
                warnings.warn(f"mtlkit cache: manifest {self.manifest_path} is corrupt ({exc}); rebuilding it",
                              CacheWarning, stacklevel=3)
            return None
        if not self._expected_manifest_shape(m):
            if warn:
                warnings.warn(f"mtlkit cache: manifest {self.manifest_path} does not match this cache's "
                              f"parameters or shard layout; rebuilding it", CacheWarning, stacklevel=3)
            return None
        return m

    def _write_manifest(self, entries: list[dict]) -> dict:
        m = {"format": FORMAT_VERSION, "params": self.params, "count": self.count,
             "shard_size": self.shard_size, "shards": entries}
        atomic_write_bytes(self.manifest_path, (json.dumps(m, indent=1, sort_keys=True) + "\n").encode("utf-8"))
        return m

    def is_complete(self) -> bool:
        """Cheap check (no hashing): a valid manifest and every shard file present."""
        m = self.read_manifest(warn=False)
        return m is not None and all((self.directory / e["file"]).is_file() for e in m["shards"])

    # -- reading and checking shard files
    def _read_shard_file(self, spec: ShardSpec, sha256: str | None) -> dict[str, np.ndarray]:
        """Decoded arrays of one shard; raises ShardError saying what is wrong with it."""
        path = self.directory / spec.filename
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ShardError("file is missing") from None
        if sha256 is not None and sha256_bytes(data) != sha256:
            raise ShardError(f"sha256 mismatch ({len(data)} bytes; truncated or corrupted)")
        try:
            arrays = load_npz_bytes(data)
            info = _from_json_array(arrays.pop("__info__"))
            if "__schema__" not in arrays:
                raise ValueError("no __schema__ member")
        except Exception as exc:  # zip/npy/json errors of every kind mean the same thing here
            raise ShardError(f"unreadable: {type(exc).__name__}: {exc}") from None
        expected = {"format": FORMAT_VERSION, "params": self.params, "start": spec.start, "stop": spec.stop}
        if info != expected:
            raise ShardError("written for other parameters")
        return arrays

    def _existing_entry(self, spec: ShardSpec) -> dict | None:
        """Manifest entry for a shard file left by an earlier (interrupted) build, if the file is intact."""
        path = self.directory / spec.filename
        if not path.is_file():
            return None
        try:
            self._read_shard_file(spec, None)
        except ShardError:
            return None
        data = path.read_bytes()
        return {"file": spec.filename, "start": spec.start, "stop": spec.stop,
                "sha256": sha256_bytes(data), "bytes": len(data)}

    def _entry_ok(self, entry: dict, check: bool) -> bool:
        path = self.directory / entry["file"]
        if not check:
            return path.is_file()
        try:
            ok = sha256_bytes(path.read_bytes()) == entry["sha256"]
        except FileNotFoundError:
            return False
        if not ok:
            warnings.warn(f"mtlkit cache: shard {path} is bad (sha256 mismatch); rebuilding it from the generator",
                          CacheWarning, stacklevel=4)
        return ok

    def _plan(self, check: bool = False) -> tuple[list[dict | None], list[ShardSpec]]:
        """Under the lock: manifest entries known good (or None) and the shards still to generate.

        ``check`` hashes every listed shard instead of trusting that a present file is intact.
        """
        m = self.read_manifest(warn=False)
        if m is not None:
            entries: list[dict | None] = [e if self._entry_ok(e, check) else None for e in m["shards"]]
        else:  # no trustworthy manifest: keep the shard files that decode and carry our parameters
            entries = [self._existing_entry(s) for s in self.specs]
        return entries, [s for s, e in zip(self.specs, entries) if e is None]

    # -- building
    def build(self, jobs: int = 1, progress: bool = False) -> Path:
        """Generate every missing shard and write the manifest; safe to call from several processes at once."""
        build_caches([self], jobs=jobs, progress=progress)
        return self.directory

    def open(self, jobs: int = 1, progress: bool = False) -> ShardedCache:
        """Use the cache as it is if complete, else build it (one warning line if the manifest was corrupt)."""
        m = self.read_manifest(warn=True)
        missing = [e["file"] for e in m["shards"] if not (self.directory / e["file"]).is_file()] if m else []
        if m is not None and not missing:
            self._manifest = m
            return self
        if missing:
            warnings.warn(f"mtlkit cache: {len(missing)} shard file(s) listed in {self.manifest_path} are missing "
                          f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); rebuilding them",
                          CacheWarning, stacklevel=2)
        self.build(jobs=jobs, progress=progress)
        return self

    def _rebuild_shard(self, spec: ShardSpec, reason: str) -> dict[str, np.ndarray]:
        reason = " ".join(reason.split())  # the report stays on one line whatever the decoder said
        warnings.warn(f"mtlkit cache: shard {self.directory / spec.filename} is bad ({reason}); rebuilding it "
                      f"from the generator", CacheWarning, stacklevel=4)
        ensure_writable(self.directory)
        with file_lock(self.lock_path):
            m = self.read_manifest(warn=False)
            if m is None:  # manifest went bad too: rebuild everything missing, then read again
                self._manifest = None
                build_caches([self], jobs=1, progress=False, _locked=True)
                m = self.read_manifest(warn=False)
                assert m is not None
            entry = m["shards"][spec.index]
            try:  # another process may have repaired it while we waited for the lock
                arrays = self._read_shard_file(spec, entry["sha256"])
            except ShardError:
                new = _build_shard(self.generate, str(self.directory), spec, self.params)
                if new != entry:  # same generator + zlib give the same bytes; otherwise record the new checksum
                    m["shards"][spec.index] = new
                    m = self._write_manifest(m["shards"])
                arrays = self._read_shard_file(spec, new["sha256"])
            self._manifest = m
        return arrays

    def _shard_arrays(self, k: int) -> dict[str, np.ndarray]:
        if k in self._decoded:
            self._decoded.move_to_end(k)
            return self._decoded[k]
        if self._manifest is None:
            self.open()
        assert self._manifest is not None
        spec = self.specs[k]
        try:
            arrays = self._read_shard_file(spec, self._manifest["shards"][k]["sha256"])
        except ShardError as exc:
            arrays = self._rebuild_shard(spec, str(exc))
        self._decoded[k] = arrays
        while len(self._decoded) > self.keep:
            self._decoded.popitem(last=False)
        return arrays

    def get(self, index: int) -> dict:
        """Compact sample ``index`` (numpy arrays / python ints / meta dict), read from its shard."""
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} out of range for a cache of {self.count} samples")
        k = index // self.shard_size
        return decode_sample(self._shard_arrays(k), index - self.specs[k].start)

    def verify(self) -> list[str]:
        """Check the manifest and every shard's checksum; returns one line per problem (empty = all good)."""
        m = self.read_manifest(warn=False)
        if m is None:
            state = "missing" if not self.manifest_path.exists() else "corrupt or for other parameters"
            return [f"{self.manifest_path}: manifest {state}"]
        problems = []
        for spec, entry in zip(self.specs, m["shards"]):
            try:
                self._read_shard_file(spec, entry["sha256"])
            except ShardError as exc:
                problems.append(f"{self.directory / spec.filename}: {exc}")
        return problems


def _in_notebook() -> bool:
    """True inside a Jupyter kernel, where tqdm.auto draws a widget although stderr is not a tty."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _progress_bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    interactive = sys.stderr is not None and sys.stderr.isatty()
    enabled = progress and total > 0 and (interactive or _in_notebook())
    return tqdm(total=total, desc=desc, unit="shard", disable=not enabled, leave=False)


def build_caches(caches: Sequence[ShardedCache], jobs: int = 1, progress: bool = False,
                 desc: str = "building cache", check: bool = False, _locked: bool = False) -> None:
    """Build several caches together, spreading their missing shards over ``jobs`` processes.

    ``check`` also verifies the checksum of every shard already built (and rebuilds the bad ones).

    Each cache's lock is held for the whole build (locks taken in path order, so two builders of overlapping sets
    cannot deadlock); a builder that waited finds the shards written by the other and generates nothing.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    with ExitStack() as stack:
        if not _locked:
            for cache in sorted(caches, key=lambda c: str(c.directory)):
                ensure_writable(cache.directory)
                stack.enter_context(file_lock(cache.lock_path))
        plans = [cache._plan(check) for cache in caches]
        work = [(ci, spec) for ci, (_, todo) in enumerate(plans) for spec in todo]
        with _progress_bar(len(work), desc, progress) as bar:
            if jobs == 1 or len(work) <= 1:
                for ci, spec in work:
                    c = caches[ci]
                    plans[ci][0][spec.index] = _build_shard(c.generate, str(c.directory), spec, c.params)
                    bar.update(1)
            else:
                with ProcessPoolExecutor(max_workers=min(jobs, len(work))) as pool:
                    futures = {pool.submit(_build_shard, caches[ci].generate, str(caches[ci].directory), spec,
                                           caches[ci].params): (ci, spec) for ci, spec in work}
                    try:
                        for fut in as_completed(futures):
                            ci, spec = futures[fut]
                            plans[ci][0][spec.index] = fut.result()
                            bar.update(1)
                    except BaseException:
                        for fut in futures:
                            fut.cancel()
                        raise
        for cache, (entries, todo) in zip(caches, plans):
            current = cache.read_manifest(warn=False)
            if todo or current is None or current["shards"] != entries:
                cache._manifest = cache._write_manifest(entries)  # type: ignore[arg-type]
            else:
                cache._manifest = current
