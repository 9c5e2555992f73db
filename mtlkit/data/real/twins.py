"""Format twins: small synthetic datasets written in a real dataset's exact on-disk format.

A twin renders the matching synthetic variant (:func:`mtlkit.data.synthetic.generate_sample`) and writes it with the
real format's conventions applied in reverse (-1 -> 255 or 0, depth -> disparity codes, classes -> trimaps, ...), so
the real loader can be tested without the real data. ``twin.json`` in the twin's root records how it was made.
"""
from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Callable

from mtlkit.data.real import broden, cityscapes, nyuv2, oxford_pet, pascal_mt

# id -> (synthetic variant, splits written, synthetic split each one is rendered from, writer)
TWINS: dict[str, tuple[str, dict[str, str], Callable]] = {
    "nyuv2": ("synthetic-nyu", {"train": "train", "val": "val"}, nyuv2.write_nyuv2_twin),
    "nyud-mt": ("synthetic-nyu", {"train": "train", "val": "val"}, nyuv2.write_nyudmt_twin),
    "cityscapes": ("synthetic-city", {"train": "train", "val": "val"}, cityscapes.write_cityscapes_twin),
    "miniscapes": ("synthetic-city", {"train": "train", "val": "val", "test": "test"},
                   cityscapes.write_miniscapes_twin),
    "oxford-pet": ("synthetic-pet", {"train": "train", "test": "test"}, oxford_pet.write_oxford_pet_twin),
    "oxpet-h5": ("synthetic-pet", {"train": "train", "val": "val", "test": "test"}, oxford_pet.write_oxpet_h5_twin),
    "pascal-mt": ("synthetic-pascal", {"train": "train", "val": "val"}, pascal_mt.write_pascal_mt_twin),
    "broden": ("synthetic-broden", {"train": "train", "val": "val"}, None),  # writer needs class names
}
UNIT_SIZES = {"synthetic-city": (32, 64)}


def twin_sources(dataset_id: str, n: int = 3, seed: int = 0, size: tuple[int, int] | None = None) -> dict[str, list]:
    """The compact synthetic samples a twin of ``dataset_id`` is written from: split -> list of n samples."""
    from mtlkit.data.synthetic import generate_sample

    if dataset_id not in TWINS:
        raise ValueError(f"no format twin for {dataset_id!r}; valid ids: {', '.join(TWINS)}")
    variant, splits, _ = TWINS[dataset_id]
    size = tuple(size) if size is not None else UNIT_SIZES.get(variant, (32, 32))
    return {split: [generate_sample(variant, syn_split, i, seed=seed, size=size) for i in range(n)]
            for split, syn_split in splits.items()}


# id -> layouts a twin can be written in (the first is the default); "official" = the raw release ``prepare`` converts
LAYOUTS: dict[str, tuple[str, ...]] = {"nyuv2": ("mtan", "official"), "nyud-mt": ("mtl-pytorch", "astmt"),
                                       "cityscapes": ("mtan", "official"), "broden": ("broden+", "netdissect")}


def write_twin(dataset_id: str, out: str | Path, n: int = 3, seed: int = 0,
               size: tuple[int, int] | None = None, layout: str | None = None) -> Path:
    """Write a twin of ``dataset_id`` into ``out`` (which must be empty or absent); returns ``out``.

    ``n`` items per split, rendered at ``size`` (default: the unit preset's, 32x32; 32x64 for Cityscapes-like).
    ``layout`` picks one of :data:`LAYOUTS` where a dataset has several: ``nyud-mt`` "mtl-pytorch" (default) or
    "astmt"; ``broden`` "broden+" (default) or "netdissect"; ``nyuv2``/``cityscapes`` "official" writes the raw
    release that ``mtlkit data prepare`` converts (``nyu_depth_v2_labeled.mat`` + splits + mapping; leftImg8bit +
    gtFine + disparity) instead of the loader's layout.
    Special cases of the formats: the MiniScapes twin's test split has no labels (withheld, as in the course);
    the Oxford-Pet twin writes no XML for the test split (as released) nor for images without a visible head.
    """
    from mtlkit.data.synthetic import get_variant

    if n < 1:
        raise ValueError(f"a twin needs n >= 1 items per split, got {n}")
    if dataset_id not in TWINS:
        raise ValueError(f"no format twin for {dataset_id!r}; valid ids: {', '.join(TWINS)}")
    layouts = LAYOUTS.get(dataset_id, ("default",))
    layout = layout or layouts[0]
    if layout not in layouts:
        raise ValueError(f"{dataset_id} twins come in the layouts {', '.join(layouts)}; got {layout!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"twin output folder {out} is not empty; pass an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    samples = twin_sources(dataset_id, n, seed, size)
    variant, splits, writer = TWINS[dataset_id]
    info: dict = {}
    if dataset_id == "broden":
        classes = {t: list(get_variant(variant).classes[t]) for t in broden.CATEGORIES}
        if layout == "netdissect":
            broden.write_broden_twin(out, samples, classes)
        else:
            from mtlkit.data.real.broden_plus import write_broden_plus_twin

            info["ids"] = write_broden_plus_twin(out, samples, classes)
    elif layout == "official":
        from mtlkit.data.real import prepare

        (prepare.write_nyuv2_raw_twin if dataset_id == "nyuv2" else prepare.write_cityscapes_raw_twin)(out, samples)
    elif dataset_id == "nyud-mt":
        writer(out, samples, layout=layout)
    else:
        writer(out, samples)
    if dataset_id == "miniscapes":  # a withheld test split: images only
        import shutil

        for folder in ("semseg", "depth"):
            shutil.rmtree(out / "test" / folder)
    h, w = samples[next(iter(samples))][0]["image"].shape[1:]
    (out / "twin.json").write_text(json.dumps({"dataset": dataset_id, "layout": layout, "variant": variant,
                                               "seed": seed, "n": n, "size": [h, w], "splits": splits, **info},
                                              indent=1))
    return out
