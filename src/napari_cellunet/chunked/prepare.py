"""Once per image, before the blocks: normalisation percentiles and the object diameter.

Percentiles come from a strided subsample (exact below ``SUBSAMPLE_PIXELS``); the
diameter is estimated with :func:`..segment.iter_estimate_diameter` on central
crops (``ESTIMATION_CROP``) of the normalised image, as in memory.
"""

from __future__ import annotations

import math

import numpy as np

from ..inference import Progress
from ..models import CellModel
from ..segment import AUTO, iter_estimate_diameter
from ..zarrio import read_region, strided_sample
from .compute import _normalise
from .plan import _Image

SUBSAMPLE_PIXELS = 2**22   # percentiles from at most this many pixels per image
ESTIMATION_CROP = 2048     # central crop (image px) for the diameter estimate (covers scales >= 1/8)


def _subsample(source, unit: tuple, depth: int, shape: tuple) -> np.ndarray:
    """Strided float32 subsample of one unit (stride 1, i.e. exact percentiles, for small images)."""
    s = max(1, math.ceil(math.sqrt(depth * shape[-2] * shape[-1] / SUBSAMPLE_PIXELS)))
    a = strided_sample(source, unit + ((slice(None),) if depth > 1 else ()) + (slice(None, None, s),) * 2)
    a = np.asarray(a, dtype=np.float32)
    return np.where(np.isfinite(a), a, 0.0).astype(np.float32)


def _percentiles(model: CellModel, img: _Image) -> list[tuple]:
    """``(low, high, 1%)`` percentiles once per image (per volume in 3D), as ``normalize_for_model``."""
    low, high = model.normalization
    stats = []
    for u in img.units:
        sub = _subsample(img.source, u, img.depth, img.shape)
        stats.append((*np.percentile(sub, [low, high]), float(np.percentile(sub, 1))))
    return stats


def _estimation_input(source, units, depth, shape, stats, invert) -> np.ndarray:
    """Normalised central crops of the (up to 3) slices ``segment._estimation_crops`` would pick."""
    n_slices = len(units) * depth
    pick = np.unique(np.linspace(0, n_slices - 1, min(3, n_slices)).round().astype(int))
    crops = []
    for i in pick:
        u, z = divmod(int(i), depth)
        sl = []
        for size in shape[-2:]:
            c = size if size <= ESTIMATION_CROP else ESTIMATION_CROP + (size - ESTIMATION_CROP) % 2
            sl.append(slice((size - c) // 2, (size - c) // 2 + c))
        raw = read_region(source, units[u] + ((z,) if depth > 1 else ()) + tuple(sl))
        crops.append(_normalise(raw, *stats[u][:2], invert))
    return np.stack(crops)[:, None]


def _diameter(model: CellModel, source, units, depth, shape, stats, opts, params):
    """Diameter used (image px) or None (no rescaling), estimated once like ``segment.iter_segment``."""
    trained, used = model.diameter, opts.diameter
    if isinstance(used, str) and used != AUTO:
        used = float(used)
    if used is not None and used != AUTO and used <= 0:
        used = AUTO
    if trained is None or used is None:
        return None
    if used != AUTO:
        return float(used)
    crops = _estimation_input(source, units, depth, shape, stats, model.invert)
    used = (yield from iter_estimate_diameter(model, crops, opts, params)) or trained
    yield Progress(0, 1, f"object diameter ~{used:.1f} px")
    return used
