"""Probabilities -> instance labels.

Seeds are the connected components of the thresholded *interior* probability
(boundaries between touching cells are predicted as a separate class, so
touching cells give separate seeds); components that still join several cells
are split at peaks of their distance transform. Seeds are grown back over the foreground
(1 - p_background) by a watershed, so each cell gets its full extent and touching
cells stay apart. Pieces much smaller than a typical object that touch a larger
one (a textured nucleus cut at its nucleoli) are merged into it. Models with a
distance output (distance to the object border, 1 at its centre) take their
seeds and watershed landscape from it instead, and in 2D their touching objects
are joined where the network sees no boundary between them
(:func:`join_weak_borders`). Works for 2D and 3D arrays alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix, csgraph
from skimage.segmentation import relabel_sequential, watershed

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
DISTANCE = 3  # optional output after the classes: distance to the object border, 1 at its centre


@dataclass
class InstanceParams:
    """Post-processing thresholds (defaults may be stored in a model file)."""

    prob_threshold: float = 0.5   # foreground = 1 - p_background above this
    seed_threshold: float = 0.5   # seeds = p_interior above this
    min_size: int = 10            # objects smaller than this (pixels/voxels) are dropped
    min_seed_size: int = 3        # seed components smaller than this are ignored
    split_touching: bool = True   # split seed components at distance-transform peaks (needs a diameter)
    min_brightness: float = 0.0   # drop objects dimmer than this share of the image's bright objects (0 = off)
    merge_fragments: float = 0.2  # merge objects below this share of a typical area into a neighbour (0 = off)
    min_confidence: float = 0.0   # drop objects whose interior probability never reaches this (0 = off)
    merge_over_time: bool = True  # time-lapses: re-join an object split in one or two frames only (merge_flickers)
    join_weak_borders: float = 0.65  # 2D, distance models: join touching objects with a weaker border (0 = off)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> InstanceParams:
        d = d or {}
        return cls(**{k: type(getattr(cls, k))(d[k]) for k in cls.__dataclass_fields__ if k in d})


def split_by_distance(pieces: np.ndarray, diameter: float) -> tuple[np.ndarray, np.ndarray]:
    """Split seed components at peaks of their (smoothed) distance transform.

    Touching cells whose interiors still touch form one component; its distance
    transform has one peak per cell, at least ~0.4 diameters apart. Components
    without a clear peak keep one seed. Returns (seeds, watershed landscape).
    Peaks are searched once over the whole image (a per-component search is
    several times slower on images with hundreds of nuclei; a peak suppressed by
    a neighbour's only means its component keeps one seed).
    """
    from skimage.feature import peak_local_max

    dist = ndi.gaussian_filter(ndi.distance_transform_edt(pieces > 0).astype(np.float32), 1.0,
                               output=np.float32)
    min_distance = max(2, int(round(0.4 * diameter)))
    peaks = peak_local_max(dist, min_distance=min_distance, exclude_border=False)
    if len(peaks):
        peaks = peaks[pieces[tuple(peaks.T)] > 0]
    seeds = np.zeros(pieces.shape, dtype=np.int32)
    seeds[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    has_peak = np.zeros(int(pieces.max()) + 1, dtype=bool)
    has_peak[pieces[tuple(peaks.T)]] = True
    orphans = ~has_peak[pieces] & (pieces > 0)
    seeds = np.where(orphans, pieces + len(peaks), seeds)
    return seeds, -dist


def typical_size(diameter: float, dims: int = 2) -> float:
    """Area (2D) or volume (3D) of a round object of ``diameter`` pixels."""
    return math.pi / 6 * diameter**3 if dims == 3 else math.pi / 4 * diameter**2


def _across_borders(labels: np.ndarray):
    """Per axis: ``(lo, hi, across)``, the slices of neighbouring pixels and where they lie in two objects."""
    for ax in range(labels.ndim):
        lo = tuple(slice(None, -1) if i == ax else slice(None) for i in range(labels.ndim))
        hi = tuple(slice(1, None) if i == ax else slice(None) for i in range(labels.ndim))
        a, b = labels[lo], labels[hi]
        yield lo, hi, (a != b) & (a > 0) & (b > 0)


def merge_fragments(labels: np.ndarray, max_size: float) -> np.ndarray:
    """Merge each object smaller than ``max_size`` into the larger neighbour it shares most border with.

    Works on 2D and 3D labels (face neighbours). Isolated small objects are kept
    (``min_size`` decides about them). Relabels 1..N.
    """
    labels = np.asarray(labels)
    n = int(labels.max())
    if n < 2:
        return labels
    size = np.bincount(labels.ravel(), minlength=n + 1)
    small = size < max_size
    small[0] = False
    if not small.any():
        return labels
    src, dst = [], []
    for lo, hi, across in _across_borders(labels):
        a, b = labels[lo][across].astype(np.int64), labels[hi][across].astype(np.int64)
        src += [a, b]
        dst += [b, a]
    src, dst = np.concatenate(src), np.concatenate(dst)
    keep = small[src] & (size[dst] > size[src])
    if not keep.any():
        return labels
    pairs, counts = np.unique(src[keep] * (n + 1) + dst[keep], return_counts=True)
    src, dst = pairs // (n + 1), pairs % (n + 1)
    order = np.lexsort((-counts, src))  # per fragment, the neighbour with the longest shared border first
    src, dst = src[order], dst[order]
    first = np.r_[True, src[1:] != src[:-1]]
    mapping = np.arange(n + 1)
    mapping[src[first]] = dst[first]
    while True:  # follow chains (targets are strictly larger, so no cycles)
        nxt = mapping[mapping]
        if np.array_equal(nxt, mapping):
            break
        mapping = nxt
    out, _, _ = relabel_sequential(mapping[labels])
    return out.astype(_label_dtype(int(out.max())), copy=False)


JOIN_MIN_SADDLE = 0.3  # join only where the distance stays this share of the lower peak across the border
JOIN_MAX_GROWTH = 1.5  # ...and the joined object is at most this many times the image's median object


def touching_pairs(labels: np.ndarray, boundary: np.ndarray,
                   height: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of touching objects, as ``(pairs (K, 2), saddle (K,), mean boundary (K,))``.

    Over the pixel pairs across their shared border: ``saddle`` is the highest
    ``height`` reached on both sides (how high it stays between the two),
    ``mean boundary`` the mean of ``boundary`` (the larger of the two sides).
    """
    n = int(labels.max())
    keys, saddles, borders = [], [], []
    for lo, hi, across in _across_borders(labels):
        if not across.any():
            continue
        x, y = labels[lo][across].astype(np.int64), labels[hi][across].astype(np.int64)
        keys.append(np.minimum(x, y) * (n + 1) + np.maximum(x, y))
        saddles.append(np.minimum(height[lo][across], height[hi][across]))
        borders.append(np.maximum(boundary[lo][across], boundary[hi][across]))
    if not keys:
        return np.zeros((0, 2), np.int64), np.zeros(0), np.zeros(0)
    pair_keys, index, length = np.unique(np.concatenate(keys), return_inverse=True, return_counts=True)
    saddle = np.full(len(pair_keys), -np.inf)
    np.maximum.at(saddle, index, np.concatenate(saddles))
    mean_boundary = np.bincount(index, weights=np.concatenate(borders)) / length
    return np.stack([pair_keys // (n + 1), pair_keys % (n + 1)], axis=1), saddle, mean_boundary


def join_weak_borders(labels: np.ndarray, boundary: np.ndarray, distance: np.ndarray,
                      max_boundary: float) -> np.ndarray:
    """Join touching objects that the network does not separate by a boundary.

    Two objects are joined when the mean ``boundary`` probability along their
    shared border is below ``max_boundary`` and the predicted ``distance`` (to
    the object border) stays above ``JOIN_MIN_SADDLE`` of the lower of their
    peaks across it: a textured nucleus cut at its nucleoli, not two nuclei
    pressed together (their contact is predicted as boundary and the distance
    dips to ~0 there). Weakest borders are joined first, and no joined object
    may exceed ``JOIN_MAX_GROWTH`` times the image's median object, so a dense
    clump never collapses into one. Relabels 1..N.
    """
    labels = np.asarray(labels)
    n = int(labels.max())
    if max_boundary <= 0 or n < 2:
        return labels
    pairs, saddle, mean_boundary = touching_pairs(labels, boundary, distance)
    weak = mean_boundary < max_boundary
    if not weak.any():
        return labels
    peak = np.zeros(n + 1, dtype=np.float32)
    np.maximum.at(peak, labels.ravel(), np.asarray(distance, dtype=np.float32).ravel())
    weak &= saddle >= JOIN_MIN_SADDLE * np.minimum(peak[pairs[:, 0]], peak[pairs[:, 1]])
    if not weak.any():
        return labels
    size = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
    limit = JOIN_MAX_GROWTH * float(np.median(size[1:][size[1:] > 0]))
    parent = np.arange(n + 1)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for k in np.flatnonzero(weak)[np.argsort(mean_boundary[weak], kind="stable")]:
        a, b = root(pairs[k, 0]), root(pairs[k, 1])
        if a != b and size[a] + size[b] <= limit:
            parent[a] = b
            size[b] += size[a]
    mapping = np.array([root(i) for i in range(n + 1)])
    if (mapping == np.arange(n + 1)).all():
        return labels
    out, _, _ = relabel_sequential(mapping[labels])
    return out.astype(labels.dtype, copy=False)


EDGE_CONFIDENCE = 0.5  # objects cut by the array border need only this much (or min_confidence if lower)


def drop_unconfident(labels: np.ndarray, interior: np.ndarray, min_confidence: float) -> np.ndarray:
    """Drop objects whose peak interior probability stays below ``min_confidence``.

    Objects touching the array border need only ``min(min_confidence,
    EDGE_CONFIDENCE)``: nuclei cut by the image edge are real, but the network
    sees only part of them and is less sure of their interior; slivers it is
    not sure of at all still go. Relabels 1..N.
    """
    labels = np.asarray(labels)
    n = int(labels.max())
    if min_confidence <= 0 or n == 0:
        return labels
    peak = np.zeros(n + 1, dtype=np.float32)
    np.maximum.at(peak, labels.ravel(), np.asarray(interior, dtype=np.float32).ravel())  # ~30x ndi.maximum
    needed = np.full(n + 1, min_confidence, dtype=np.float32)
    faces = [np.take(labels, i, axis=ax) for ax in range(labels.ndim) for i in (0, -1)]
    needed[np.unique(np.concatenate([f.ravel() for f in faces]))] = min(min_confidence, EDGE_CONFIDENCE)
    keep = peak >= needed
    keep[0] = True
    if keep.all():
        return labels
    out, _, _ = relabel_sequential(np.where(keep[labels], labels, 0))
    return out.astype(labels.dtype, copy=False)


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
        relabelled, _, _ = relabel_sequential(lowest[component][lab])
        out[t] = relabelled
    return out


def _label_dtype(n: int):
    return np.uint16 if n < 2**16 else np.uint32


def connected_components(mask: np.ndarray, min_size: int = 0) -> np.ndarray:
    """Plain connected components of a binary mask (face connectivity), small ones removed."""
    labels, n = ndi.label(np.asarray(mask, dtype=bool))
    if min_size > 0 and n:
        labels = remove_small(labels, min_size)
    return labels


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop labels smaller than ``min_size`` and relabel 1..N sequentially."""
    labels = np.asarray(labels)
    if labels.max() == 0:
        return labels.astype(np.uint16)
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if small.any():
        labels = np.where(small[labels], 0, labels)
    out, _, _ = relabel_sequential(labels)
    return out.astype(_label_dtype(int(out.max())), copy=False)


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
    seeded[np.unique(blobs[seeds > 0])] = True
    seeded[0] = True
    if not seeded.all():
        orphans = ~seeded[blobs]
        seeds = np.where(orphans, blobs + n, seeds)
    if seeds.max() == 0:
        return np.zeros(interior.shape, dtype=np.uint16)
    labels = watershed(landscape, seeds, mask=foreground)
    if diameter and p.merge_fragments > 0:
        # the share is of a typical area; in 3D the volume share of a piece of the same linear size
        share = p.merge_fragments ** (interior.ndim / 2)
        labels = merge_fragments(labels, share * typical_size(diameter, interior.ndim))
    labels = drop_unconfident(labels, interior, p.min_confidence)
    labels = remove_small(labels, p.min_size)
    if distance is not None and interior.ndim == 2:  # (3D: a 2D model's boundary is per slice, not across z)
        labels = join_weak_borders(labels, probs[BOUNDARY], distance, p.join_weak_borders)
    return labels


def drop_dim_objects(labels: np.ndarray, image: np.ndarray, min_brightness: float) -> np.ndarray:
    """Drop objects whose mean intensity is below ``min_brightness`` × that of the image's bright objects.

    Intensities are taken above the image's 1st percentile (its background); the
    reference is the 90th percentile of the objects' means. Meant for dim
    cytoplasm, debris or out-of-focus blobs next to bright nuclei. Relabels 1..N.
    """
    labels = np.asarray(labels)
    n = int(labels.max())
    if min_brightness <= 0 or n == 0:
        return labels
    image = np.asarray(image, dtype=np.float32)
    if image.shape != labels.shape:
        raise ValueError(f"image shape {image.shape} does not match labels {labels.shape}")
    finite = np.isfinite(image)
    background = float(np.percentile(image[finite], 1)) if finite.any() else 0.0
    means = np.asarray(ndi.mean(np.where(finite, image, background), labels, np.arange(1, n + 1))) - background
    reference = float(np.percentile(means, 90))
    keep = np.concatenate([[True], means >= min_brightness * reference])
    if keep.all():
        return labels
    out, _, _ = relabel_sequential(np.where(keep[labels], labels, 0))
    return out.astype(labels.dtype, copy=False)
