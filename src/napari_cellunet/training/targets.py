"""Training targets from instance labels: classes, distance to the border, contact weights."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from ..postprocess import BACKGROUND, BOUNDARY, INTERIOR


def keep_largest_fragment(labels: np.ndarray) -> np.ndarray:
    """Drop stray fragments: each label keeps only its largest connected piece."""
    labels = np.asarray(labels)
    out = np.zeros_like(labels)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        mask = labels[sl] == i
        comp, n = ndi.label(mask)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            mask = comp == sizes.argmax()
        out[sl][mask] = i
    return out


def labels_to_targets(labels: np.ndarray, contact_band: int = 1) -> np.ndarray:
    """Instance labels -> class map (0 background, 1 interior, 2 boundary).

    Boundaries are each object's inner border, so two touching objects are
    separated by a two-pixel boundary band. ``contact_band > 1`` widens the
    boundary where objects touch: every object pixel with another object within
    ``contact_band`` pixels is boundary, so the interiors (the seeds) of touching
    objects lie further apart.
    """
    labels = np.asarray(labels)
    target = np.where(labels > 0, INTERIOR, BACKGROUND).astype(np.int64)
    target[find_boundaries(labels, mode="inner") & (labels > 0)] = BOUNDARY
    if contact_band > 1:
        target[touching_other(labels, contact_band) & (labels > 0)] = BOUNDARY
    return target


def distance_target(labels: np.ndarray) -> np.ndarray:
    """Each object's distance to its border (or to a touching object), scaled to 1 at its centre.

    The target of the optional distance output (``UNetConfig.distance``): one
    peak per object, also between touching objects the boundary class misses.
    Background is 0.
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, np.float32)
    n = int(labels.max())
    if n == 0:
        return out
    inside = (labels > 0) & ~touching_other(labels, 1)
    dist = ndi.distance_transform_edt(inside).astype(np.float32)
    peak = np.zeros(n + 1, np.float32)
    np.maximum.at(peak, labels.ravel(), dist.ravel())
    np.divide(dist, peak[labels], out=out, where=peak[labels] > 0)
    return out


def touching_other(labels: np.ndarray, reach: int) -> np.ndarray:
    """Pixels with two different objects within ``reach`` pixels (a (2·reach+1) window)."""
    size = 2 * reach + 1
    top = labels.max() + 1
    highest = ndi.maximum_filter(labels, size=size)
    lowest = ndi.minimum_filter(np.where(labels > 0, labels, top), size=size)
    return (lowest < top) & (highest != lowest)


def contact_weights(labels: np.ndarray, weight: float, reach: int = 3) -> np.ndarray:
    """Pixel weights that stress the thin gaps between touching objects.

    A cheap form of the UNet paper's border weights: every pixel that has two
    different objects within ``reach`` pixels (the gap and both objects' rims)
    weighs ``1 + weight``; all others weigh 1.
    """
    labels = np.asarray(labels)
    out = np.ones(labels.shape, np.float32)
    if weight <= 0 or labels.max() == 0:
        return out
    out[touching_other(labels, reach)] += weight
    return out


def contact_share(labels: np.ndarray) -> float:
    """Share of object pixels with another object within 2 pixels (how crowded an image is)."""
    fg = labels > 0
    return float((touching_other(labels, 2) & fg).sum() / max(int(fg.sum()), 1))
