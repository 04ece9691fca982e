"""npe2 writers: a Labels layer to TIFF (axes and pixel sizes kept) or to a measurements CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .measure import measure, measure_slices, write_csv
from .tiffio import write_tiff

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
    dtype = np.uint16 if data.max(initial=0) < 2**16 else np.uint32
    write_tiff(path, data.astype(dtype), axes.replace("Q", "Z") if axes.count("Q") == 1 else axes, scale, unit)
    return [path]


def write_labels_csv(path: str, data, attributes: dict) -> list[str]:
    """The layer's measurement table (its ``features`` if present, else measured now)."""
    features = attributes.get("features")
    if isinstance(features, pd.DataFrame) and len(features):
        table = features
    else:
        data = np.asarray(data)
        scale = attributes.get("scale")
        table = measure(data, scale=scale) if data.ndim in (2, 3) else measure_slices(
            data.reshape((-1,) + data.shape[-2:]), scale=scale)
    write_csv(table, Path(path))
    return [path]
