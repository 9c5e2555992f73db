"""The papers' and courses' numbers that every course family declares (``*_REFERENCE`` tables), in one table.

Kept apart from :mod:`mtlkit.course.results` because it reads every family module, which in turn build on
:mod:`mtlkit.course.common` (and common on results): results stays at the bottom of the package.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def reference_table():
    """The papers' and courses' numbers the kit knows (docs/reference.md, "Recipes"), as rows ``source, model, metric,
    value``.

    Collected from every ``*_REFERENCE`` dict (and the DeepLab ``REFERENCE_RESULTS``) of the ``mtlkit.course`` modules
    (``{model: {metric: value}}``, or a flat ``{metric: value}`` for one model). For display beside the kit's results,
    always labelled as references: they come from other datasets, resolutions and schedules.
    """
    import importlib
    import pkgutil

    import pandas as pd

    from mtlkit.course.deeplab import REFERENCE_RESULTS

    rows = [{"source": "mtlkit.course", "model": model, "metric": title, "value": float(value)}
            for title, models in REFERENCE_RESULTS.items() for model, value in models.items()]
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):  # the course package's family modules
        module = importlib.import_module(f"mtlkit.course.{info.name}")
        for attr in sorted(a for a in vars(module) if a.endswith("_REFERENCE")):
            table = getattr(module, attr)
            if not isinstance(table, Mapping):
                continue
            label = f"mtlkit.course.{info.name}.{attr}"
            for key, value in table.items():
                if isinstance(value, Mapping):  # {model: {metric: value}}
                    rows += [{"source": label, "model": key, "metric": m, "value": float(v)} for m, v in value.items()]
                else:  # {metric: value}: one model, named by the table
                    rows.append({"source": label, "model": attr.removesuffix("_REFERENCE").lower() + " (paper)",
                                 "metric": key, "value": float(value)})
    return pd.DataFrame(rows, columns=["source", "model", "metric", "value"])
