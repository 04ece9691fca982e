"""Image -> probabilities -> labels: the pipeline shared by the widget, CLI and batch jobs.

Images are rescaled so objects have the diameter the model was trained at
(``model.diameter``), predicted tile by tile, and the probabilities are resized
back, so labels always have the input's shape. ``diameter="auto"`` estimates the
object size from a first pass (median equivalent diameter of the detected
objects) and re-runs at the corrected scale when it is off by more than 15%.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, field, replace

import numpy as np

from .inference import Progress, drive, iter_predict, normalize_percentile, resize_spatial
from .instances import InstanceParams, probabilities_to_labels, remove_small
from .models import CellModel

AUTO = "auto"
MAX_AUTO_PASSES = 3
AUTO_TOLERANCE = 1.15  # re-run when the scale is off by more than this factor


@dataclass
class PredictOptions:
    """How to run the network (not the post-processing)."""

    diameter: float | str | None = AUTO  # pixels, "auto", or None (= use the image as is)
    tile: int = 256
    overlap: float = 0.25
    batch_size: int = 4
    device: str = "auto"
    precision: str = "auto"
    tta: bool = False


@dataclass
class Segmentation:
    """Result of one run over ``N`` slices (a 2D image has ``N == 1``)."""

    probabilities: np.ndarray  # (N, n_classes, *spatial), float32, image scale
    labels: np.ndarray         # (N, *spatial)
    diameter: float | None     # object diameter used (pixels), None if not rescaled
    params: InstanceParams = field(default_factory=InstanceParams)

    @property
    def counts(self) -> list[int]:
        return [int(len(np.unique(lab)) - (1 if (lab == 0).any() else 0)) for lab in self.labels]


def median_diameter(labels: np.ndarray) -> float | None:
    """Median equivalent diameter (pixels) over all objects in ``labels`` (any N-D)."""
    areas = []
    for lab in np.asarray(labels).reshape((-1,) + labels.shape[-2:]):
        a = np.bincount(lab.ravel())[1:]
        areas.append(a[a > 0])
    areas = np.concatenate(areas) if areas else np.zeros(0)
    if areas.size == 0:
        return None
    return float(np.sqrt(4 * np.median(areas) / np.pi))


def default_min_size(diameter: float | None, dims: int = 2) -> int:
    """Objects below 10% of a typical object's area (or volume) are dropped."""
    if not diameter:
        return 10
    if dims == 3:
        return max(4, int(0.1 * math.pi / 6 * diameter**3))
    return max(4, int(0.1 * math.pi / 4 * diameter**2))


def labels_from_probabilities(probs: np.ndarray, params: InstanceParams,
                              diameter: float | None = None) -> np.ndarray:
    """Per-slice instance labels from ``(N, classes, *spatial)`` probabilities.

    ``params.min_size <= 0`` means: derive it from ``diameter``.
    """
    dims = probs.ndim - 2
    if params.min_size <= 0:
        params = replace(params, min_size=default_min_size(diameter, dims))
    out = [probabilities_to_labels(p, params) for p in probs]
    n = max((int(o.max()) for o in out), default=0)
    dtype = np.uint16 if n < 2**16 else np.uint32
    return np.stack(out).astype(dtype) if out else np.zeros((0,), dtype)


def _predict_at(model: CellModel, images: np.ndarray, scale: float, opts: PredictOptions):
    """Predict normalised ``(N, C, *spatial)`` images after rescaling by ``scale``."""
    spatial = images.shape[2:]
    if abs(scale - 1) > 1e-3:
        target = tuple(max(8, int(round(s * scale))) for s in spatial)
        images = resize_spatial(images, target)
    probs = yield from iter_predict(
        model.net, images, tile=opts.tile, overlap=opts.overlap, batch_size=opts.batch_size,
        device=opts.device, precision=opts.precision, tta=opts.tta)
    return resize_spatial(probs, spatial)


def normalize_for_model(model: CellModel, images: np.ndarray) -> np.ndarray:
    """``(N, *spatial)`` or ``(N, C, *spatial)`` raw slices -> normalised float32 ``(N, C, *spatial)``.

    Each slice (and channel) is normalised on its own percentiles.
    """
    images = np.asarray(images)
    dims = model.config.dims
    if images.ndim == dims + 1:
        images = images[:, None]
    if images.ndim != dims + 2:
        raise ValueError(f"expected (N, [C,] {'Z, ' if dims == 3 else ''}Y, X) slices, got shape {images.shape}")
    low, high = model.normalization
    axes = tuple(range(2, images.ndim))
    return normalize_percentile(images, low, high, axis=axes)


def iter_segment(model: CellModel, images: np.ndarray, options: PredictOptions | None = None,
                 params: InstanceParams | None = None) -> Generator[Progress, None, Segmentation]:
    """Segment ``(N, *spatial)`` slices (or ``(N, C, *spatial)``); yields progress, returns a :class:`Segmentation`."""
    opts = options or PredictOptions()
    params = params or model.instance_params
    x = normalize_for_model(model, images)
    trained = model.diameter
    diameter = opts.diameter
    if isinstance(diameter, str) and diameter != AUTO:
        diameter = float(diameter)
    if diameter is not None and diameter != AUTO and diameter <= 0:
        diameter = AUTO

    if trained is None or diameter is None:
        probs = yield from _predict_at(model, x, 1.0, opts)
        used = None
    elif diameter != AUTO:
        probs = yield from _predict_at(model, x, trained / float(diameter), opts)
        used = float(diameter)
    else:
        used, scale = trained, 1.0
        for _ in range(MAX_AUTO_PASSES):
            probs = yield from _predict_at(model, x, scale, opts)
            est = median_diameter(labels_from_probabilities(probs, params, used))
            if est is None:
                break
            used = est
            new_scale = float(np.clip(trained / est, 0.1, 8.0))
            if max(new_scale / scale, scale / new_scale) <= AUTO_TOLERANCE:
                break
            scale = new_scale
            yield Progress(0, 1, f"estimated diameter {est:.1f} px; re-running at scale {scale:.2f}")
    labels = labels_from_probabilities(probs, params, used)
    return Segmentation(probabilities=probs, labels=labels, diameter=used, params=params)


def segment(model: CellModel, images: np.ndarray, options: PredictOptions | None = None,
            params: InstanceParams | None = None, progress=None, cancel=None) -> Segmentation:
    """Blocking form of :func:`iter_segment`."""
    return drive(iter_segment(model, images, options, params), progress, cancel)


def relabel_min_size(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Re-apply a minimum size per slice (used when only ``min_size`` changes)."""
    return np.stack([remove_small(lab, min_size) for lab in labels])
