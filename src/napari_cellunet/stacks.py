"""Stacks: how a leading axis is treated (z-stack of 3D objects, time, independent slices).

Axes use the letters T (time), Z (depth), Q (unknown stack axis), Y, X; the
channel has been chosen and RGB converted before this point. Every 2D slice of
the stack goes through the network in one batched pass; then, per mode:

* ``slices`` / ``frames``: each YX slice gets its own labels (ids unique per slice),
* ``3d``: the YX probabilities of a z-stack are stacked into a volume and split
  into 3D objects with 3D seeds (interior components split at distance-transform
  peaks, which also separates cells stacked in z) + watershed, so an object is
  counted once. When
  z is coarser than xy (``scale``), the probabilities are resampled to nearly
  isotropic voxels first, so seeds and watershed see the real shape.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .inference import Progress, resize_spatial
from .instances import (DISTANCE, InstanceParams, drop_dim_objects, merge_flickers, probabilities_to_labels,
                        remove_small)
from .models import CellModel
from .segment import PredictOptions, Segmentation, default_min_size, iter_segment

MODES = ("auto", "3d", "frames", "slices")


@dataclass
class StackResult:
    labels: np.ndarray          # same spatial/time shape as the input
    axes: str                   # axes of ``labels``
    mode: str                   # mode used
    counts: list[int]           # per frame (T), per slice (slices/frames), or [n] for one volume/image
    count_axis: str             # "frame", "slice", or "image"
    segmentation: Segmentation  # slice-wise probabilities etc. (probabilities cached for re-labelling)


def default_mode(axes: str) -> str:
    """``3d`` when there is a Z axis, ``frames`` for T without Z, ``slices`` otherwise (2D: ``slices``)."""
    if "Z" in axes:
        return "3d"
    if "T" in axes:
        return "frames"
    return "slices"


def check_axes(axes: str, shape: Sequence[int]) -> str:
    axes = axes.upper()
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes!r} do not match an array with {len(shape)} dimensions {tuple(shape)}")
    if not axes.endswith("YX"):
        raise ValueError(f"the last two axes must be YX, got {axes!r}")
    if len(set(axes)) != len(axes) or not set(axes) <= set("TZQYX"):
        raise ValueError(f"unsupported axes {axes!r}: use T, Z, Q (stack), Y, X (pick a channel first)")
    if len(axes) > 4:
        raise ValueError(f"at most two axes before YX are supported, got {axes!r}")
    return axes


POSTPROCESS_DIAMETER = 24.0  # large volumes are post-processed on a grid where objects are about this wide
MAX_FULLRES_VOXELS = 2**24  # above this, 3D post-processing runs on the coarser grid (bounded memory)


def _nearest_upsample(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    idx = [np.minimum(((np.arange(n) + 0.5) * m / n).astype(int), m - 1) for n, m in zip(shape, labels.shape)]
    return labels[np.ix_(*idx)]


def volume_labels(probs: np.ndarray, params: InstanceParams, diameter: float | None,
                  z_ratio: float = 1.0) -> np.ndarray:
    """3D instances from ``(Z, classes, Y, X)`` slice-wise probabilities.

    ``z_ratio`` = z step / xy pixel size. Seeds and watershed run on a grid with
    near-isotropic voxels; for volumes above ``MAX_FULLRES_VOXELS`` that grid is
    coarser, with objects about ``POSTPROCESS_DIAMETER`` wide (bounded memory and
    time), and the labels are sampled back to the image grid.
    """
    probs = probs[:, :DISTANCE]  # a 2D model's distance output is per slice: not a 3D distance
    z, n_classes, y, x = probs.shape
    fxy = 1.0
    if diameter and z * y * x > MAX_FULLRES_VOXELS:
        fxy = min(1.0, POSTPROCESS_DIAMETER / diameter)
    fz = z_ratio * fxy if (z_ratio > 1.5 or fxy < 1) else 1.0
    grid = (max(1, int(round(z * fz))), max(4, int(round(y * fxy))), max(4, int(round(x * fxy))))
    if grid != (z, y, x):
        vol = np.stack([resize_spatial(np.ascontiguousarray(probs[:, c])[None, None], grid)[0, 0]
                        for c in range(n_classes)])
    else:
        vol = np.moveaxis(probs, 0, 1)  # (classes, Z, Y, X)
    voxel_ratio = np.prod(grid) / (z * y * x)
    d_grid = (diameter or 10.0) * fxy
    # 3D objects: at least 10% of a typical nucleus volume (a 2D-style min size of a few px is noise here)
    min_size = max(int(params.min_size * voxel_ratio), default_min_size(d_grid, dims=3))
    labels = probabilities_to_labels(vol, replace(params, split_touching=True, min_size=min_size), d_grid)
    if grid != (z, y, x):
        labels = remove_small(_nearest_upsample(labels, (z, y, x)), 1)
    return labels


def iter_segment_stack(model: CellModel, data: np.ndarray, axes: str, mode: str = "auto",
                       scale: Sequence[float] | None = None, options: PredictOptions | None = None,
                       params: InstanceParams | None = None) -> Generator[Progress, None, StackResult]:
    """Segment a 2D image or a stack with a 2D model; yields progress, returns a :class:`StackResult`."""
    data = np.asarray(data)
    axes = check_axes(axes, data.shape)
    mode = default_mode(axes) if mode in (None, "auto") else mode
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "3d" and "Z" not in axes and "Q" not in axes:
        raise ValueError(f"3D mode needs a Z axis, got axes {axes!r}")
    if model.config.dims == 3:
        result = yield from _iter_segment_3d_model(model, data, axes, mode, options, params)
        return result
    lead = data.shape[:-2]
    flat = data.reshape((-1,) + data.shape[-2:])
    if mode == "3d" and len(axes) > 2:  # one z-stack = one intensity scale
        options = replace(options or PredictOptions(), normalize_group=data.shape[-3])
    seg = yield from iter_segment(model, flat, options, params, slice_labels=mode != "3d" or len(axes) == 2)
    return assemble(seg, axes, mode, lead, scale, images=data)


def _iter_segment_3d_model(model, data, axes, mode, options, params):
    """A 3D UNet segments each ZYX volume directly (its boundaries are 3D already)."""
    if len(axes) < 3 or axes[-3] not in "ZQ" or mode != "3d":
        raise ValueError(f"a 3D model needs a z-stack in 3d mode (axes ending in ZYX), got {axes!r}, mode {mode!r}")
    vols = data.reshape((-1,) + data.shape[-3:])
    seg = yield from iter_segment(model, vols, options, params)
    seg = replace(seg, labels=filter_dim_objects(seg.labels, vols, seg.params.min_brightness))
    labels = seg.labels.reshape(data.shape)
    return StackResult(labels, axes, "3d", seg.counts, "image" if len(axes) == 3 else "frame", seg)


def filter_dim_objects(labels: np.ndarray, images: np.ndarray | None, min_brightness: float) -> np.ndarray:
    """:func:`~napari_cellunet.instances.drop_dim_objects` on each ``(N, *spatial)`` unit (slice or volume)."""
    if images is None or min_brightness <= 0:
        return labels
    images = np.asarray(images).reshape(labels.shape)
    return np.stack([drop_dim_objects(lab, img, min_brightness) for lab, img in zip(labels, images)])


def assemble(seg: Segmentation, axes: str, mode: str, lead: tuple, scale=None,
             images: np.ndarray | None = None) -> StackResult:
    """Turn slice-wise results into labels for ``mode`` (also used to re-label cached probabilities).

    ``images`` (the segmented data, channel picked) enables ``params.min_brightness``.
    """
    spatial = seg.probabilities.shape[-2:]
    if seg.labels is not None and (mode != "3d" or len(axes) == 2):
        seg = replace(seg, labels=filter_dim_objects(seg.labels, images, seg.params.min_brightness))
    if len(axes) == 2:
        return StackResult(seg.labels[0], axes, "2d", seg.counts, "image", seg)
    if mode != "3d":
        labels = seg.labels.reshape(lead + spatial)
        if mode == "frames" and axes[0] == "T" and len(lead) == 1 and seg.params.merge_over_time:
            labels = merge_flickers(labels)
            seg = replace(seg, labels=labels)
        return StackResult(labels, axes, mode, seg.counts, "frame" if mode == "frames" else "slice", seg)
    zax = "Z" if "Z" in axes else "Q"
    z_index = axes.index(zax)
    z_ratio = 1.0
    if scale is not None and len(scale) == len(axes):
        z_ratio = float(scale[z_index]) / max(float(scale[-1]), 1e-12)
    probs = seg.probabilities.reshape(lead + seg.probabilities.shape[1:])
    if len(lead) == 1:  # ZYX
        labels = volume_labels(probs, seg.params, seg.diameter, z_ratio)
        labels = filter_dim_objects(labels[None], images, seg.params.min_brightness)[0]
        return StackResult(labels, axes, "3d", [int(labels.max())], "image", seg)
    # TZYX (or ZTYX): one volume per time point
    t_index = 1 - z_index
    probs = np.moveaxis(probs, t_index, 0)  # (T, Z, classes, Y, X)
    vols = [volume_labels(p, seg.params, seg.diameter, z_ratio) for p in probs]
    if images is not None and seg.params.min_brightness > 0:
        per_frame = np.moveaxis(np.asarray(images).reshape(lead + spatial), t_index, 0)
        vols = list(filter_dim_objects(np.stack(vols), per_frame, seg.params.min_brightness))
    n = max((int(v.max()) for v in vols), default=0)
    labels = np.moveaxis(np.stack(vols).astype(np.uint16 if n < 2**16 else np.uint32), 0, t_index)
    return StackResult(labels, axes, "3d", [int(v.max()) for v in vols], "frame", seg)


def _index_columns(axes: str, lead_index: tuple[int, ...]) -> dict:
    cols = {"frame": None, "slice": None}
    for a, i in zip(axes, lead_index):
        cols["frame" if a == "T" else "slice"] = int(i)
    return cols


def count_rows(labels: np.ndarray, axes: str, mode: str) -> list[dict]:
    """Counts as rows ``{frame, slice, count}``: per T (and per Z/Q slice unless 3D objects)."""
    labels = np.asarray(labels)
    axes = axes.upper()
    unit = axes[-3:] if mode == "3d" and len(axes) >= 3 and axes[-3] in "ZQ" else axes[-2:]
    lead = labels.shape[: labels.ndim - len(unit)]
    rows = []
    for idx in np.ndindex(*lead) if lead else [()]:
        block = labels[idx]
        ids = np.unique(block)
        rows.append({**_index_columns(axes, idx), "count": int((ids != 0).sum())})
    return rows


def measure_stack(labels: np.ndarray, axes: str, mode: str, intensity: np.ndarray | None = None,
                  scale: Sequence[float] | None = None):
    """Measurement table per object, with frame/slice columns for stacks (3D objects measured in 3D)."""
    import pandas as pd

    from .measure import measure

    labels = np.asarray(labels)
    axes = axes.upper()
    unit = 3 if mode == "3d" and len(axes) >= 3 and axes[-3] in "ZQ" else 2
    lead = labels.shape[: labels.ndim - unit]
    unit_scale = None if scale is None else tuple(scale)[-unit:]
    frames = []
    for idx in np.ndindex(*lead) if lead else [()]:
        df = measure(labels[idx], None if intensity is None else np.asarray(intensity)[idx], unit_scale)
        for k, v in reversed(list(_index_columns(axes, idx).items())):
            if v is not None:
                df.insert(0, k, v)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
