"""``mtlkit data download`` and ``mtlkit data verify``: fetch what can be fetched, print the rest as steps; check.

Downloads go to ``<data dir>/raw/<id>/<file>`` through a ``.part`` file renamed when complete (an interrupted
download never looks finished) and are checked against the registry's md5/sha256 when it has them.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from collections.abc import Callable, Iterable

import numpy as np

from mtlkit.data.real.base import DatasetNotFoundError, raw_root, resolve_root
from mtlkit.data.real.registry import LOADERS, get_entry

Fetcher = Callable[[str, Path], None]


class DownloadError(RuntimeError):
    """A source could not be fetched (offline, link gone) or its checksum does not match."""


def urllib_fetch(url: str, target: Path, timeout: float = 30.0) -> None:
    """Stream ``url`` to ``target`` (the default fetcher)."""
    from urllib.request import urlopen

    with urlopen(url, timeout=timeout) as response, open(target, "wb") as f:  # noqa: S310 - registry URLs only
        shutil.copyfileobj(response, f, length=1 << 20)


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_hashes(path: Path, source: dict) -> list[str]:
    """Problems with ``path`` against the source's md5/sha256 (empty when they match or none are recorded)."""
    problems = []
    for algo in ("sha256", "md5"):
        want = source.get(algo)
        if want:
            got = file_digest(path, algo)
            if got != want:
                problems.append(f"{path}: {algo} is {got}, the registry expects {want} (incomplete or changed "
                                f"download: delete it and download again)")
    return problems


def manual_steps(dataset_id: str, source: dict, raw: Path) -> str:
    steps = source.get("steps") or f"Download {source.get('url')} by hand and save it as {raw / source['file']}."
    return f"[{dataset_id}] {source.get('name', 'source')}: " + steps.format(raw=raw)


def download(dataset_id: str, raw: str | Path | None = None, fetch: Fetcher | None = None,
             include_optional: bool = False, say: Callable[[str], None] = print) -> list[Path]:
    """Fetch the dataset's fetchable sources into ``raw`` (default ``<data dir>/raw/<id>``); print manual steps.

    Returns the files now present. Raises :class:`DownloadError` naming the URL, the reason and where to put the
    file by hand when a fetch fails or a checksum does not match.
    """
    entry = get_entry(dataset_id)
    raw = Path(raw) if raw is not None else raw_root(dataset_id)
    raw.mkdir(parents=True, exist_ok=True)
    fetch = fetch or urllib_fetch
    done: list[Path] = []
    if entry.get("registration"):
        say(f"[{dataset_id}] needs registration / accepting a licence ({entry.get('licence')}): "
            f"see {entry.get('homepage')}")
    for source in entry.get("sources", []):
        if source.get("optional") and not include_optional:
            say(f"(optional alternative) {manual_steps(dataset_id, source, raw)}" if source.get("manual") else
                f"(optional alternative) [{dataset_id}] {source.get('name')}: {source.get('url')} -- fetch it with "
                f"`mtlkit data download {dataset_id} --all`")
            continue
        if source.get("manual") or not source.get("url") or not source.get("file"):
            say(manual_steps(dataset_id, source, raw))
            continue
        target = raw / source["file"]
        if target.is_file() and not check_hashes(target, source):
            say(f"[{dataset_id}] {target} already present")
            done.append(target)
            continue
        part = target.with_name(target.name + ".part")
        say(f"[{dataset_id}] fetching {source['url']} -> {target}")
        try:
            fetch(source["url"], part)
        except Exception as exc:
            part.unlink(missing_ok=True)
            hint = f" {source['steps'].format(raw=raw)}" if source.get("steps") else ""
            raise DownloadError(f"could not fetch {source['url']} for {dataset_id} ({exc}). Check the connection, or "
                                f"download it by hand and save it as {target}.{hint}") from None
        problems = check_hashes(part, source)
        if problems:
            part.unlink(missing_ok=True)
            raise DownloadError("; ".join(problems))
        os.replace(part, target)
        done.append(target)
    return done


# ----------------------------------------------------------------------------------------------------- verify
def _check_sample(ds, index: int, where: str) -> list[str]:
    """Contract checks of one item: dtypes, shapes, value ranges."""
    problems = []
    try:
        s = ds[index]
    except Exception as exc:  # the loader's own message names the file
        return [f"{where}: {exc}"]
    img = s["image"]
    h, w = img.shape[-2:]
    if str(img.dtype) != "torch.float32" or img.shape[0] != 3 or img.min() < 0 or img.max() > 1:
        problems.append(f"{where}: image must be float32 [3,H,W] in [0,1], got {img.dtype} {tuple(img.shape)}")
    for task in ds.tasks:
        x = s.get(task)
        if x is None:
            problems.append(f"{where}: task {task!r} missing from the sample")
            continue
        if task in ("semseg", "parts", "material"):
            n = ds.task_info[task]["num_classes"]
            if tuple(x.shape) != (h, w) or str(x.dtype) != "torch.int64":
                problems.append(f"{where}: {task} must be int64 [{h},{w}], got {x.dtype} {tuple(x.shape)}")
            elif ((x < -1) | (x >= n)).any():
                problems.append(f"{where}: {task} values outside -1..{n - 1}")
        elif task == "depth":
            if tuple(x.shape) != (1, h, w) or not bool(x.isfinite().all()):
                problems.append(f"{where}: depth must be finite float32 [1,{h},{w}]")
        elif task == "normals":
            norm = x.norm(dim=0)
            valid = norm > 0
            if tuple(x.shape) != (3, h, w) or (valid.any() and float((norm[valid] - 1).abs().max()) > 1e-3):
                problems.append(f"{where}: normals must be unit vectors (or all-zero) [3,{h},{w}]")
        elif task in ("edge", "saliency"):
            if tuple(x.shape) != (1, h, w) or not bool(((x == 0) | (x == 1) | (x == -1)).all()):
                problems.append(f"{where}: {task} must be [1,{h},{w}] with values 0, 1 (or -1 ignore)")
        elif task == "boxes":
            b = x.reshape(-1, 4)
            if len(b) and ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]) | (b[:, 0] < 0) | (b[:, 1] < 0)
                           | (b[:, 2] > w) | (b[:, 3] > h)).any():
                problems.append(f"{where}: boxes must be xyxy inside the {w}x{h} image with positive area: "
                                f"{b.tolist()}")
        else:
            n = ds.task_info[task]["num_classes"]
            if x.dim() != 0 or not -1 <= int(x) < n:
                problems.append(f"{where}: {task} must be a 0-d label in -1..{n - 1}, got {x.tolist()}")
    return problems


def verify(dataset_id: str, root: str | Path | None = None, raw: str | Path | None = None, samples: int = 4,
           splits: Iterable[str] | None = None, expect_counts: bool | None = None) -> list[str]:
    """Everything wrong with a dataset copy, as sentences (empty list = OK).

    Checks the raw archives' md5/sha256 where the registry records them and the files are present, each split's
    item count against the registry (``expect_counts``; default: only for the default root, since twins and
    subsets are smaller), the native image size, and ``samples`` evenly spaced items per split against the contract.
    """
    entry = get_entry(dataset_id)
    problems: list[str] = []
    raw_dir = Path(raw) if raw is not None else raw_root(dataset_id)
    for source in entry.get("sources", []):
        f = source.get("file")
        if f and (raw_dir / f).is_file():
            problems += check_hashes(raw_dir / f, source)
    cls = LOADERS[dataset_id]
    try:
        resolve_root(dataset_id, root)
    except DatasetNotFoundError as exc:  # one sentence, not one per split
        return problems + [str(exc)]
    if expect_counts is None:
        expect_counts = root is None
    counts = entry.get("splits") or {}
    for split in splits or tuple(counts) or cls.SPLITS:
        try:
            ds = cls(split, root=root)
        except Exception as exc:
            problems.append(f"{dataset_id} {split}: {exc}")
            continue
        want = counts.get(split)
        if expect_counts and want is not None and len(ds) != want:
            problems.append(f"{dataset_id} {split}: {len(ds)} items, the release has {want} (incomplete copy?)")
        size = entry.get("image_size")
        picks = np.unique(np.linspace(0, len(ds) - 1, num=max(1, min(samples, len(ds)))).round().astype(int))
        for i in picks:
            where = f"{dataset_id} {split} item {i} ({ds.ids[i] if ds.ids else i})"
            found = _check_sample(ds, int(i), where)
            problems += found
            if not found and size and expect_counts:
                hw = list(ds[int(i)]["image"].shape[-2:])
                sizes = [list(x) for x in size] if isinstance(size[0], list) else [list(size)]
                if hw not in sizes:
                    problems.append(f"{where}: image is {hw[0]}x{hw[1]}, the release is "
                                    + " or ".join(f"{a}x{b}" for a, b in sizes))
    return problems

