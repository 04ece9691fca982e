"""Counts and per-object measurement tables from instance labels (2D or 3D)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.measure import regionprops_table

COLUMNS = ["label", "area_px", "area_phys", "centroid_y", "centroid_x",
           "equivalent_diameter_px", "mean_intensity"]


def count_objects(labels: np.ndarray) -> int:
    """Number of distinct non-zero labels."""
    ids = np.unique(np.asarray(labels))
    return int((ids != 0).sum())


def measure(labels: np.ndarray, intensity: np.ndarray | None = None,
            scale: Sequence[float] | None = None) -> pd.DataFrame:
    """One row per object: label, size in pixels and physical units, centroid, diameter, intensity.

    ``scale`` is the physical size of a pixel per axis (napari layer ``scale``);
    ``area_phys`` is ``area_px * prod(scale)`` (a volume for 3D labels).
    Centroids are in pixel coordinates; for 3D labels ``centroid_z`` is added.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"measure expects 2D or 3D labels, got {labels.ndim}D")
    if not np.issubdtype(labels.dtype, np.integer):
        labels = labels.astype(np.int64)
    props = ["label", "area", "centroid", "equivalent_diameter_area"]
    if intensity is not None:
        intensity = np.asarray(intensity, dtype=np.float32)
        if intensity.shape != labels.shape:
            raise ValueError(f"intensity shape {intensity.shape} differs from labels {labels.shape}")
        props.append("intensity_mean")
    t = regionprops_table(labels, intensity_image=intensity, properties=props)
    px = np.prod(scale if scale is not None else [1.0] * labels.ndim)
    axes = ["z", "y", "x"][-labels.ndim:]
    df = pd.DataFrame({"label": t["label"].astype(np.int64), "area_px": t["area"].astype(np.int64)})
    df["area_phys"] = t["area"] * float(px)
    for i, ax in enumerate(axes):
        df[f"centroid_{ax}"] = t[f"centroid-{i}"]
    df["equivalent_diameter_px"] = t["equivalent_diameter_area"]
    df["mean_intensity"] = t["intensity_mean"] if intensity is not None else np.nan
    return df


def measure_slices(labels: np.ndarray, intensity: np.ndarray | None = None,
                   scale: Sequence[float] | None = None, axis_name: str = "slice") -> pd.DataFrame:
    """Measure each leading-axis slice of ``(N, Y, X)`` labels; adds an ``axis_name`` column."""
    frames = []
    for i, lab in enumerate(labels):
        df = measure(lab, None if intensity is None else intensity[i],
                     None if scale is None else scale[-2:])
        df.insert(0, axis_name, i)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[axis_name, *COLUMNS])


def counts_table(labels: np.ndarray, axis_name: str = "slice") -> pd.DataFrame:
    """Count per leading-axis slice of ``(N, ...)`` labels."""
    return pd.DataFrame({axis_name: np.arange(len(labels)), "count": [count_objects(l) for l in labels]})


def write_csv(table: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, float_format="%.4g")
    return path
