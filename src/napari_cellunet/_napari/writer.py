"""npe2 writers: a Labels layer to TIFF (axes and pixel sizes kept) or to a measurements CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..arrays import label_dtype
from ..measure import measure_stack, write_csv
from ..stacks import default_mode
from ..tiffio import write_tiff

DEFAULT_AXES = {2: "YX", 3: "ZYX", 4: "TZYX"}


def _axes(data: np.ndarray, attributes: dict) -> str:
    axes = (attributes.get("metadata") or {}).get("axes")
    if axes and len(axes) == data.ndim:
        return axes
    labels = attributes.get("axis_labels")
    if labels and all(len(a) == 1 and a.upper() in "TZQYX" for a in labels):
        return "".join(a.upper() for a in labels)
    return DEFAULT_AXES.get(data.ndim, "Q" * (data.ndim - 2) + "YX")


def write_labels_tiff(path: str, data, attributes: dict) -> list[str]:
    data = np.asarray(data)
    axes = _axes(data, attributes)
    scale = dict(zip(axes, attributes.get("scale") or [1.0] * data.ndim))
    scale = {a: float(s) for a, s in scale.items() if a in "TZYX"}
    unit = (attributes.get("metadata") or {}).get("unit", "pixel")
    data = data.astype(label_dtype(int(data.max(initial=0))))
    write_tiff(path, data, axes.replace("Q", "Z") if axes.count("Q") == 1 else axes, scale, unit)
    return [path]


def write_labels_csv(path: str, data, attributes: dict) -> list[str]:
    """The layer's measurement table (its ``features`` if present, else measured now, per frame/slice)."""
    features = attributes.get("features")
    if isinstance(features, pd.DataFrame) and len(features):
        table = features.drop(columns="index", errors="ignore")
    else:
        data = np.asarray(data)
        axes = _axes(data, attributes)
        table = measure_stack(data, axes, default_mode(axes), scale=attributes.get("scale"))
    write_csv(table, Path(path))
    return [path]
