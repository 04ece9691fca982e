"""Counts and per-object measurement tables from instance labels (2D or 3D)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .arrays import count_objects

COLUMNS = ["label", "area_px", "area_phys", "centroid_y", "centroid_x",
           "equivalent_diameter_px", "mean_intensity"]


def measure(labels: np.ndarray, intensity: np.ndarray | None = None,
            scale: Sequence[float] | None = None) -> pd.DataFrame:
    """One row per object: label, size in pixels and physical units, centroid, diameter, intensity.

    ``scale`` is the physical size of a pixel per axis (napari layer ``scale``);
    ``area_phys`` is ``area_px * prod(scale)`` (a volume for 3D labels).
    Centroids are in pixel coordinates; for 3D labels ``centroid_z`` is added.
    The values are ``skimage.measure.regionprops_table``'s (area, centroid,
    equivalent_diameter_area, intensity_mean), summed per label over the
    foreground pixels in one pass (~10x faster on images with thousands of objects).
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"measure expects 2D or 3D labels, got {labels.ndim}D")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        labels = labels.astype(np.int64)
    if intensity is not None:
        intensity = np.asarray(intensity, dtype=np.float32)
        if intensity.shape != labels.shape:
            raise ValueError(f"intensity shape {intensity.shape} differs from labels {labels.shape}")
    flat = labels.ravel()
    where = np.flatnonzero(flat > 0)
    ids = flat[where].astype(np.int64)
    n = int(ids.max(initial=0)) + 1
    area = np.bincount(ids, minlength=n)
    present = np.flatnonzero(area)  # ids > 0 only: area[0] counts no pixel
    area_px = area[present]
    df = pd.DataFrame({"label": present.astype(np.int64), "area_px": area_px.astype(np.int64)})
    px = np.prod(scale if scale is not None else [1.0] * labels.ndim)
    df["area_phys"] = area_px * float(px)
    for ax, coord in zip(["z", "y", "x"][-labels.ndim:], np.unravel_index(where, labels.shape)):
        df[f"centroid_{ax}"] = np.bincount(ids, weights=coord, minlength=n)[present] / area_px
    if labels.ndim == 2:
        df["equivalent_diameter_px"] = np.sqrt(4 * area_px / np.pi)
    else:
        df["equivalent_diameter_px"] = np.cbrt(6 * area_px / np.pi)
    if intensity is not None:
        df["mean_intensity"] = np.bincount(ids, weights=intensity.ravel()[where], minlength=n)[present] / area_px
    else:
        df["mean_intensity"] = np.nan
    return df


def _unit_dims(axes: str, mode: str) -> int:
    """Spatial dimensions of one counted unit: 3 for 3D objects in a z-stack, else 2."""
    return 3 if mode == "3d" and len(axes) >= 3 and axes[-3] in "ZQ" else 2


def index_columns(axes: str, lead_index: tuple[int, ...]) -> dict:
    cols = {"frame": None, "slice": None}
    for a, i in zip(axes, lead_index):
        cols["frame" if a == "T" else "slice"] = int(i)
    return cols


def as_instance_labels(labels: np.ndarray, axes: str, mode: str) -> np.ndarray:
    """Integer instance labels: a binary mask (bool) becomes its connected components per counted unit."""
    labels = np.asarray(labels)
    if labels.dtype != bool:
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be whole numbers or a binary mask, got {labels.dtype}")
        return labels
    from scipy import ndimage as ndi

    unit = _unit_dims(axes.upper(), mode)
    units = labels.reshape((-1,) + labels.shape[labels.ndim - unit:])
    out = np.stack([ndi.label(u)[0] for u in units]) if len(units) else np.zeros(units.shape, np.int32)
    return out.reshape(labels.shape)


def count_rows(labels: np.ndarray, axes: str, mode: str) -> list[dict]:
    """Counts as rows ``{frame, slice, count}``: per T (and per Z/Q slice unless 3D objects)."""
    labels = np.asarray(labels)
    axes = axes.upper()
    lead = labels.shape[: labels.ndim - _unit_dims(axes, mode)]
    return [{**index_columns(axes, idx), "count": count_objects(labels[idx])}
            for idx in (np.ndindex(*lead) if lead else [()])]


def measure_stack(labels: np.ndarray, axes: str, mode: str, intensity: np.ndarray | None = None,
                  scale: Sequence[float] | None = None) -> pd.DataFrame:
    """Measurement table per object, with frame/slice columns for stacks (3D objects measured in 3D)."""
    labels = np.asarray(labels)
    axes = axes.upper()
    unit = _unit_dims(axes, mode)
    lead = labels.shape[: labels.ndim - unit]
    unit_scale = None if scale is None else tuple(scale)[-unit:]
    frames = []
    for idx in np.ndindex(*lead) if lead else [()]:
        df = measure(labels[idx], None if intensity is None else np.asarray(intensity)[idx], unit_scale)
        for k, v in reversed(list(index_columns(axes, idx).items())):
            if v is not None:
                df.insert(0, k, v)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def write_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """Write ``table`` to ``path`` (via a temporary file: an interrupted write never truncates it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        table.to_csv(tmp, index=False, float_format="%.4g")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
