"""Probabilities -> instance labels, one 2D slice or 3D volume at a time.

Seeds are the connected components of the thresholded *interior* probability
(boundaries between touching cells are predicted as a separate class, so
touching cells give separate seeds); components that still join several cells
are split at peaks of their distance transform. Seeds are grown back over the
foreground (1 - p_background) by a watershed, so each cell gets its full extent
and touching cells stay apart. Models with a distance output (distance to the
object border, 1 at its centre) take their seeds and watershed landscape from
it instead. The object-level steps after the watershed (merging fragments,
dropping unsure objects, joining weak borders) are in :mod:`.objects`.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from ..arrays import label_dtype, relabel
from ..settings import InstanceParams
from .objects import drop_unconfident, join_weak_borders, merge_fragments

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
DISTANCE = 3  # optional output after the classes: distance to the object border, 1 at its centre


EDT_STRIP, EDT_MARGIN = 512, 64  # rows per strip of a big 2D image, rows of context on either side


def distance_transform(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each foreground pixel to the background (float32).

    ``edt`` (an optional dependency, ~12x faster) and ``scipy.ndimage`` give identical values.
    ``edt`` holds the GIL for its whole call (0.6 s on 16 MP: a viewer frozen that long), so a big
    2D mask goes in strips with ``EDT_MARGIN`` rows of context: a distance up to the margin has its
    nearest background inside the strip, so it is exact; a larger one means the whole image again.
    """
    try:
        import edt
    except ImportError:
        return ndi.distance_transform_edt(mask).astype(np.float32)
    mask = np.ascontiguousarray(mask)
    if mask.ndim != 2 or mask.shape[0] <= 2 * EDT_STRIP:
        return edt.edt(mask, parallel=1).astype(np.float32, copy=False)
    out = np.empty(mask.shape, dtype=np.float32)
    for y0 in range(0, mask.shape[0], EDT_STRIP):
        y1 = min(mask.shape[0], y0 + EDT_STRIP)
        a, b = max(0, y0 - EDT_MARGIN), min(mask.shape[0], y1 + EDT_MARGIN)
        out[y0:y1] = edt.edt(mask[a:b], parallel=1)[y0 - a:y1 - a]
        if out[y0:y1].max() > EDT_MARGIN:  # may reach past the strip's context
            return edt.edt(mask, parallel=1).astype(np.float32, copy=False)
    return out


def distance_peaks(image: np.ndarray, min_distance: int) -> np.ndarray:
    """``skimage.feature.peak_local_max(image, min_distance=..., exclude_border=False)``, same result, faster.

    A pixel is a peak where it is the maximum of its (2 min_distance + 1) window and above
    the image minimum; peaks are ordered brightest first. skimage then drops peaks closer
    than ``min_distance`` (Chebyshev) to a brighter kept one, with a KD-tree query per peak.
    Two peaks that close lie in each other's window, so they can only be ties (plateaus):
    that pass is run on the tied peaks alone, in the same order.
    """
    from scipy.spatial import cKDTree

    size = 2 * min_distance + 1
    inner = image  # the window maximum over all axes but the first...
    for ax in range(1, image.ndim):
        inner = ndi.maximum_filter1d(inner, size, axis=ax, mode="nearest")
    # ...which a peak equals (a necessary condition); along the first axis, only those candidates are checked
    coord = np.transpose(np.nonzero((image == inner) & (image > image.min())))
    if len(coord):
        value = image[tuple(coord.T)]
        rows = np.clip(coord[:, :1] + np.arange(-min_distance, min_distance + 1), 0, image.shape[0] - 1)
        window_max = inner[(rows, *[c[:, None] for c in coord[:, 1:].T])].max(axis=1)
        coord = coord[value == window_max]
    coord = coord[np.argsort(-image[tuple(coord.T)], kind="stable")]
    if min_distance <= 1 or len(coord) < 2:
        return coord
    reach = min_distance - 1  # integer coordinates: Chebyshev distance < min_distance
    pairs = cKDTree(coord).query_pairs(reach, p=np.inf, output_type="ndarray")
    if not len(pairs):
        return coord
    tied = np.unique(pairs)  # ascending = brightest first
    rejected = np.zeros(len(tied), dtype=bool)
    for i, near in enumerate(cKDTree(coord[tied]).query_ball_point(coord[tied], reach, p=np.inf)):
        if not rejected[i]:
            rejected[[j for j in near if j != i]] = True
    keep = np.ones(len(coord), dtype=bool)
    keep[tied[rejected]] = False
    return coord[keep]


def split_by_distance(pieces: np.ndarray, diameter: float) -> tuple[np.ndarray, np.ndarray]:
    """Split seed components at peaks of their (smoothed) distance transform.

    Touching cells whose interiors still touch form one component; its distance
    transform has one peak per cell, at least ~0.4 diameters apart. Components
    without a clear peak keep one seed. Returns (seeds, watershed landscape).
    Peaks are searched once over the whole image (a per-component search is
    several times slower on images with hundreds of nuclei; a peak suppressed by
    a neighbour's only means its component keeps one seed).
    """
    dist = ndi.gaussian_filter(distance_transform(pieces > 0), 1.0, output=np.float32)
    min_distance = max(2, int(round(0.4 * diameter)))
    peaks = distance_peaks(dist, min_distance)
    if len(peaks):
        peaks = peaks[pieces[tuple(peaks.T)] > 0]
    seeds = np.zeros(pieces.shape, dtype=np.int32)
    seeds[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    has_peak = np.zeros(int(pieces.max()) + 1, dtype=bool)
    has_peak[pieces[tuple(peaks.T)]] = True
    orphans = ~has_peak[pieces] & (pieces > 0)
    seeds = np.where(orphans, pieces + len(peaks), seeds)
    return seeds, -dist


def watershed_by_regions(landscape: np.ndarray, markers: np.ndarray, regions: np.ndarray, n_regions: int,
                         tile: int = 256) -> np.ndarray:
    """``watershed(landscape, markers, mask=regions > 0)`` (2D), the same labels, flooded region by region.

    ``regions`` are the 4-connected components of the mask (``ndi.label``), which never
    touch, so each floods on its own, in the same order as in one flood of the whole image
    (skimage orders its heap by value, then push order; only marker pixels with exactly equal
    values have no defined order, there or here). A region holding one marker id is that
    marker's everywhere (most nuclei): it needs no flood. The others are flooded in groups
    (by the ``tile`` cell their box starts in) on the group's bounding box: one heap over a
    whole big image is superlinear (3 s of 16 MP).
    """
    if regions.ndim != 2 or n_regions < 2:
        return watershed(landscape, markers, mask=regions > 0)
    flat, base = markers.ravel(), int(markers.max()) + 1
    seeded = np.flatnonzero(flat)
    region_of, marker_of = np.divmod(np.unique(regions.ravel()[seeded].astype(np.int64) * base + flat[seeded]), base)
    n_markers = np.bincount(region_of, minlength=n_regions + 1)
    single = np.zeros(n_regions + 1, dtype=markers.dtype)
    one = n_markers == 1
    single[region_of[one[region_of]]] = marker_of[one[region_of]]
    out = single[regions]
    several = np.flatnonzero(n_markers > 1)
    if not len(several):
        return out
    boxes = ndi.find_objects(regions)
    box_array = np.array([(boxes[r - 1][0].start, boxes[r - 1][1].start, boxes[r - 1][0].stop, boxes[r - 1][1].stop)
                          for r in several])
    lo, hi = box_array[:, :2], box_array[:, 2:]
    group = lo[:, 0] // tile * (-(-regions.shape[1] // tile)) + lo[:, 1] // tile
    group_of = np.full(n_regions + 1, -1)
    group_of[several] = group
    order = np.argsort(group, kind="stable")
    cuts = np.flatnonzero(np.diff(group[order])) + 1
    for members in np.split(order, cuts):
        (y0, x0), (y1, x1) = lo[members].min(0), hi[members].max(0)
        box = (slice(y0, y1), slice(x0, x1))
        inside = group_of[regions[box]] == group[members[0]]
        flooded = watershed(landscape[box], np.where(inside, markers[box], 0), mask=inside)
        out[box][inside] = flooded[inside]
    return out


def typical_size(diameter: float, dims: int = 2) -> float:
    """Area (2D) or volume (3D) of a round object of ``diameter`` pixels."""
    return math.pi / 6 * diameter**3 if dims == 3 else math.pi / 4 * diameter**2


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop labels smaller than ``min_size`` and relabel 1..N sequentially."""
    labels = np.asarray(labels)
    if labels.max() == 0:
        return labels.astype(np.uint16)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    if keep[1:].all() and sizes[1:].all():  # ids already 1..N, nothing to drop
        return labels.astype(label_dtype(len(sizes) - 1), copy=False)
    return relabel(labels, keep=keep)


def probabilities_to_labels(probs: np.ndarray, params: InstanceParams | None = None,
                            diameter: float | None = None) -> np.ndarray:
    """Instance labels from ``(3, *spatial)`` probabilities (background, interior, boundary) [+ distance].

    Seeds are connected components of the interior; with ``diameter`` (pixels)
    and ``params.split_touching`` they are further split at distance-transform
    peaks (:func:`split_by_distance`). With a predicted distance (a fourth
    channel), seeds come from it instead of the interior (split the same way),
    and it is the watershed landscape: it dips between touching cells even where
    no boundary is predicted. Foreground blobs without a seed count as one
    object each. Seeds grow over the foreground by watershed; then, with
    ``diameter``, fragments are merged (:func:`merge_fragments`), and objects the
    network is unsure of are dropped (:func:`drop_unconfident`).
    """
    p = params or InstanceParams()
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim < 3 or probs.shape[0] < 2:
        raise ValueError(f"expected (classes, *spatial) probabilities, got shape {probs.shape}")
    interior = probs[INTERIOR]
    distance = probs[DISTANCE] if probs.shape[0] > DISTANCE else None
    foreground = (1.0 - probs[BACKGROUND]) > p.prob_threshold
    seed_map = interior if distance is None else distance
    seeds, n = ndi.label((seed_map > p.seed_threshold) & foreground)
    if n and p.min_seed_size > 1:
        seeds = remove_small(seeds, p.min_seed_size).astype(np.int32)
        n = int(seeds.max())
    landscape = -seed_map
    if n and diameter and p.split_touching:
        seeds, transform_landscape = split_by_distance(seeds, diameter)
        if distance is None:
            landscape = transform_landscape
        n = int(seeds.max())
    # Foreground blobs that contain no seed still count as one object each.
    blobs, n_blobs = ndi.label(foreground)
    seeded = np.zeros(n_blobs + 1, dtype=bool)
    seeded[blobs[seeds > 0]] = True
    seeded[0] = True
    if not seeded.all():
        orphans = ~seeded[blobs]
        seeds = np.where(orphans, blobs + n, seeds)
    if seeds.max() == 0:
        return np.zeros(interior.shape, dtype=np.uint16)
    labels = watershed_by_regions(landscape, seeds, blobs, n_blobs)
    if diameter and p.merge_fragments > 0:
        # the share is of a typical area; in 3D the volume share of a piece of the same linear size
        share = p.merge_fragments ** (interior.ndim / 2)
        labels = merge_fragments(labels, share * typical_size(diameter, interior.ndim))
    labels = drop_unconfident(labels, interior, p.min_confidence)
    labels = remove_small(labels, p.min_size)
    if distance is not None and interior.ndim == 2:  # (3D: a 2D model's boundary is per slice, not across z)
        labels = join_weak_borders(labels, probs[BOUNDARY], distance, p.join_weak_borders)
    return labels


def default_min_size(diameter: float | None, dims: int = 2) -> int:
    """Objects below 10% of a typical object's area (or volume) are dropped."""
    if not diameter:
        return 10
    return max(4, int(0.1 * typical_size(diameter, dims)))


SLICE_THREADS = min(4, os.cpu_count() or 1)  # slices post-processed at once (a block in a dask job is one slice)


def labels_from_probabilities(probs: np.ndarray, params: InstanceParams,
                              diameter: float | None = None) -> np.ndarray:
    """Per-slice instance labels from ``(N, classes, *spatial)`` probabilities (slices in parallel threads).

    ``params.min_size <= 0`` means: derive it from ``diameter``.
    """
    dims = probs.ndim - 2
    if params.min_size <= 0:
        params = replace(params, min_size=default_min_size(diameter, dims))
    workers = min(len(probs), SLICE_THREADS)
    if workers > 1:  # slices are independent; ~1.35x on 2 cores (edt and parts of scipy hold the GIL)
        with ThreadPoolExecutor(workers) as pool:
            out = list(pool.map(lambda p: probabilities_to_labels(p, params, diameter), probs))
    else:
        out = [probabilities_to_labels(p, params, diameter) for p in probs]
    n = max((int(o.max()) for o in out), default=0)
    dtype = np.uint16 if n < 2**16 else np.uint32
    return np.stack(out).astype(dtype) if out else np.zeros((0,), dtype)
