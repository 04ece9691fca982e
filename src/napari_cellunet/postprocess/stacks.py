"""Stacks of probabilities -> labels: 3D objects from slice-wise probabilities, and time-lapse flicker.

A z-stack's YX probabilities are stacked into a volume and split into 3D
objects with 3D seeds (interior components split at distance-transform peaks,
which also separates cells stacked in z) + watershed, so an object is counted
once. When z is coarser than xy, the probabilities are resampled to nearly
isotropic voxels first, so seeds and watershed see the real shape. In a
time-lapse, an object split in one or two frames only is re-joined.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from scipy.sparse import coo_matrix, csgraph

from ..arrays import relabel
from ..inference import resize_spatial
from ..settings import InstanceParams
from .seeds import DISTANCE, default_min_size, probabilities_to_labels, remove_small

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


def _mostly_inside(labels: np.ndarray, other: np.ndarray) -> np.ndarray:
    """For each id of ``labels``: the id of ``other`` covering over half of it (0 if none)."""
    n, m = int(labels.max()), int(other.max()) + 1
    out = np.zeros(n + 1, dtype=np.int64)
    fg = labels > 0
    a = labels[fg].astype(np.int64)
    pairs, overlap = np.unique(a * m + other[fg], return_counts=True)
    ids, cover = pairs // m, pairs % m
    major = (cover > 0) & (2 * overlap > np.bincount(a, minlength=n + 1)[ids])
    out[ids[major]] = cover[major]
    return out


FLICKER_FRAMES = 2  # merge_flickers: a split lasting up to this many frames is undone


def merge_flickers(frames: np.ndarray, max_frames: int = FLICKER_FRAMES) -> np.ndarray:
    """Re-join objects that are split in one or a few frames of a time-lapse only.

    Objects of frame ``t`` that lie mostly inside one and the same object of a
    frame shortly before (``t-1`` … ``t-max_frames``) *and* of one shortly after
    become one object: a split that lasts a frame or two is a segmentation
    flicker (a textured nucleus cut at its nucleoli), not a division, whose
    daughters stay apart in the frames after. Compares against the frames as
    given (no cascading); the first and last frames are unchanged. ``frames`` is
    ``(T, *spatial)``; relabels each frame 1..N.
    """
    frames = np.asarray(frames)
    out = frames.copy()
    for t in range(1, len(frames) - 1):
        lab = frames[t]
        n = int(lab.max())
        if n < 2:
            continue
        hosts = {f: _mostly_inside(lab, frames[f])
                 for f in range(max(0, t - max_frames), min(len(frames), t + 1 + max_frames)) if f != t}
        src, dst = [], []  # each object joined to the first object of its (host before, host after) group
        for b in (f for f in hosts if f < t):
            for a in (f for f in hosts if f > t):
                key = np.where((hosts[b] > 0) & (hosts[a] > 0), hosts[b] * (int(frames[a].max()) + 1) + hosts[a], -1)
                key[0] = -1
                ids = np.flatnonzero(key >= 0)
                _, first, group = np.unique(key[ids], return_index=True, return_inverse=True)
                src.append(ids)
                dst.append(ids[first[group]])
        src, dst = np.concatenate(src), np.concatenate(dst)
        if not (src != dst).any():
            continue
        graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n + 1, n + 1))
        _, component = csgraph.connected_components(graph, directed=False)
        lowest = np.full(component.max() + 1, n + 1)
        np.minimum.at(lowest, component, np.arange(n + 1))  # each joined group takes its lowest id
        out[t] = relabel(lab, lowest[component])
    return out
