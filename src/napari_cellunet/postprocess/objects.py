"""Object-level post-processing steps on instance labels (2D or 3D).

Merging fragments into the object they touch, joining objects the network sees
no boundary between, dropping objects the network is unsure of or that are too
dim. Each step takes labels (and the probabilities or image it needs) and
returns labels numbered 1..N.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..arrays import relabel


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
    return relabel(labels, mapping)


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
    peak = np.zeros(n + 1, dtype=np.float32)  # the objects' highest distance, for those in weak pairs
    involved = np.zeros(n + 1, dtype=bool)
    involved[pairs[weak].ravel()] = True
    flat = labels.ravel()
    pick = involved[flat]
    np.maximum.at(peak, flat[pick], np.asarray(distance, dtype=np.float32).ravel()[pick])
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
    return relabel(labels, mapping).astype(labels.dtype, copy=False)


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
    interior = np.asarray(interior, dtype=np.float32)
    # "peak >= level" is "some pixel >= level": one comparison and a gather, no per-object maximum
    keep = np.zeros(n + 1, dtype=bool)
    keep[labels[interior >= np.float32(min_confidence)]] = True
    edge_level = np.float32(min(min_confidence, EDGE_CONFIDENCE))
    if edge_level < np.float32(min_confidence):
        faces = [np.take(labels, i, axis=ax) for ax in range(labels.ndim) for i in (0, -1)]
        on_edge = np.zeros(n + 1, dtype=bool)
        on_edge[np.concatenate([f.ravel() for f in faces])] = True
        sure = labels[interior >= edge_level]
        keep[sure[on_edge[sure]]] = True
    keep[0] = True
    if keep.all():
        return labels
    return relabel(labels, keep=keep).astype(labels.dtype, copy=False)


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
    return relabel(labels, keep=keep).astype(labels.dtype, copy=False)


def filter_dim_objects(labels: np.ndarray, images: np.ndarray | None, min_brightness: float) -> np.ndarray:
    """:func:`drop_dim_objects` on each ``(N, *spatial)`` unit (slice or volume)."""
    if images is None or min_brightness <= 0:
        return labels
    images = np.asarray(images).reshape(labels.shape)
    return np.stack([drop_dim_objects(lab, img, min_brightness) for lab, img in zip(labels, images)])
