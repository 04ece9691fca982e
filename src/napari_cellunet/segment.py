"""Image -> probabilities -> labels: the pipeline shared by the widget, CLI and batch jobs.

Images are rescaled so objects have the diameter the model was trained at
(``model.diameter``), predicted tile by tile, and the probabilities are resized
back, so labels always have the input's shape. ``diameter="auto"`` estimates the
object size first (median equivalent diameter of the detected
objects at the scale where they look most like the training objects; see
:func:`iter_estimate_diameter`), then runs the full image once at that scale.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .arrays import check_values, count_objects
from .inference import Progress, drive, iter_predict, normalize_percentile, resize_spatial
from .models import CellModel
from .postprocess import default_min_size, labels_from_probabilities  # noqa: F401 (default_min_size: re-export)
from .settings import AUTO, InstanceParams, PredictOptions

__all__ = ["AUTO", "PredictOptions", "Segmentation", "iter_estimate_diameter", "iter_segment",
           "labels_from_probabilities", "median_diameter", "normalize_for_model", "segment"]

ESTIMATION_SCALES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)  # model px per image px tried by "auto"
ESTIMATION_CROP = 256  # model pixels per side of the crop used to estimate the diameter (one 256-px tile)
ESTIMATION_TOLERANCE = 1.5  # accept a scale whose objects are within this factor of the trained size
# ...unless the next finer scale finds more than 2x as many objects, or the one after more than 8x
# (clumps of small nuclei: at 1/8 scale they can look like single textured nuclei, at 1/4 still partly)
MERGE_RATIOS = (2.0, 8.0)
FINER_AGREES = 2.0  # ...or the next finer scale measures a size off by more than this factor
REFINE_BEYOND = 1.3  # a last pass at the implied scale only when the objects were off the trained size by more


class Stopwatch(dict):
    """Seconds per stage (``with clock("network"): ...``), added up over repeated stages."""

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[stage] = self.get(stage, 0.0) + time.perf_counter() - t0


@dataclass
class Segmentation:
    """Result of one run over ``N`` slices (a 2D image has ``N == 1``)."""

    probabilities: np.ndarray  # (N, n_classes, *spatial), float32, image scale
    labels: np.ndarray | None  # (N, *spatial); None when not asked for (3D assembly makes its own)
    diameter: float | None     # object diameter used (pixels), None if not rescaled
    params: InstanceParams = field(default_factory=InstanceParams)
    timings: Stopwatch = field(default_factory=Stopwatch)  # seconds per stage of the run

    @property
    def counts(self) -> list[int]:
        return [] if self.labels is None else [count_objects(lab) for lab in self.labels]


def median_diameter(labels: np.ndarray) -> float | None:
    """Area-weighted median equivalent diameter (pixels) of the objects in ``labels`` (any N-D).

    Weighting by area means "the size of the object a typical foreground pixel
    belongs to", so a few small fragments or specks do not drag the estimate down.
    Objects are measured per 2D slice.
    """
    areas = []
    for lab in np.asarray(labels).reshape((-1,) + labels.shape[-2:]):
        a = np.bincount(lab.ravel())[1:]
        areas.append(a[a > 0])
    areas = np.sort(np.concatenate(areas)) if areas else np.zeros(0)
    if areas.size == 0:
        return None
    cum = np.cumsum(areas)
    median_area = areas[np.searchsorted(cum, cum[-1] / 2)]
    return float(np.sqrt(4 * median_area / np.pi))


def _predict_at(model: CellModel, images: np.ndarray, scale: float, opts: PredictOptions,
                resize_back: bool = True, clock: Stopwatch | None = None):
    """Predict normalised ``(N, C, *spatial)`` images after rescaling by ``scale``."""
    clock = clock if clock is not None else Stopwatch()
    spatial = images.shape[2:]
    if abs(scale - 1) > 1e-3:
        target = tuple(max(8, int(round(s * scale))) for s in spatial)
        with clock("resize"):
            images = resize_spatial(images, target)
    with clock("network"):
        probs = yield from iter_predict(
            model.net, images, tile=opts.tile, overlap=opts.overlap, batch_size=opts.batch_size,
            device=opts.device, precision=opts.precision, tta=opts.tta, backend=opts.backend)
    if not resize_back:
        return probs
    with clock("resize"):
        return resize_spatial(probs, spatial)


def _estimation_crops(x: np.ndarray, scale: float, size: int) -> np.ndarray:
    """Up to 3 evenly spaced slices, centre-cropped to ``size`` model pixels at ``scale``."""
    idx = np.unique(np.linspace(0, len(x) - 1, min(3, len(x))).round().astype(int))
    crop = [min(s, int(np.ceil(size / scale))) for s in x.shape[2:]]
    start = [(s - c) // 2 for s, c in zip(x.shape[2:], crop)]
    return x[(idx, slice(None), *[slice(a, a + c) for a, c in zip(start, crop)])]


Measurement = tuple[float, float | None, int]  # (scale, estimated diameter in image px, objects found)


def _off_trained(scale: float, est: float, trained: float) -> float:
    """Log factor between the objects' size as seen at ``scale`` and the trained size."""
    return abs(math.log(est * scale / trained))


def scale_accepted(i: int, measured: list[Measurement], trained: float) -> bool:
    """Whether the size measured at ``measured[i]`` (scales coarsest first) can be trusted.

    Its objects must have about the trained diameter at that scale, and the next
    finer scales must not find far more objects (``MERGE_RATIOS``: its "objects"
    were clumps of small nuclei) nor measure a size off by more than
    ``FINER_AGREES`` (real objects measure the same at the next scale; texture or
    clumps seen as objects at a coarse scale do not).
    """
    scale, est, n = measured[i]
    if est is None or _off_trained(scale, est, trained) > math.log(ESTIMATION_TOLERANCE):
        return False
    finer = measured[i + 1:i + 1 + len(MERGE_RATIOS)]
    if finer and finer[0][1] is not None and abs(math.log(finer[0][1] / est)) > math.log(FINER_AGREES):
        return False
    return all(n * r >= m[2] for r, m in zip(MERGE_RATIOS, finer))


def iter_estimate_diameter(model: CellModel, x: np.ndarray, opts: PredictOptions,
                           params: InstanceParams) -> Generator[Progress, None, float | None]:
    """Typical object diameter (image pixels) of normalised ``(N, C, *spatial)`` slices.

    The network runs on a central crop at several scales, coarsest first. Objects
    much larger than the training size get fragmented (they look small) and much
    smaller ones are missed or merged, so the *coarsest* scale whose measurement
    :func:`scale_accepted` wins (else the scale whose objects came closest to the
    trained size). Only when that scale saw the objects more than
    ``REFINE_BEYOND`` off the trained size does a last pass at the implied scale
    refine the estimate. Returns ``None`` when nothing is found.
    """
    trained = model.diameter

    def measure_at(scale):
        crops = _estimation_crops(x, scale, ESTIMATION_CROP)
        if min(crops.shape[2:]) * scale < 24:
            return None, 0
        probs = yield from _predict_at(model, crops, scale, opts, resize_back=False)
        labels = labels_from_probabilities(probs, params, trained)
        d = median_diameter(labels)
        return (None if d is None else d / scale), int(sum(int(lab.max()) for lab in labels))

    measured: list[Measurement] = []
    chosen = None
    for scale in ESTIMATION_SCALES:
        est, n = yield from measure_at(scale)
        measured.append((scale, est, n))
        i = len(measured) - 1 - len(MERGE_RATIOS)
        if i >= 0 and scale_accepted(i, measured, trained):
            chosen = measured[i]
            break
    else:  # the finest scales, checked against the finer scales there are
        for i in range(max(0, len(measured) - len(MERGE_RATIOS)), len(measured)):
            if scale_accepted(i, measured, trained):
                chosen = measured[i]
                break
    if chosen is None:
        found = [m for m in measured if m[1] is not None]
        if not found:
            return None
        chosen = min(found, key=lambda m: _off_trained(m[0], m[1], trained))
    scale, est, _ = chosen
    if _off_trained(scale, est, trained) <= math.log(REFINE_BEYOND):
        return est
    refined, _ = yield from measure_at(trained / est)
    return refined or est


def normalize_for_model(model: CellModel, images: np.ndarray, group: int = 1) -> np.ndarray:
    """``(N, *spatial)`` or ``(N, C, *spatial)`` raw slices -> normalised float32 ``(N, C, *spatial)``.

    Each slice (and channel) is normalised on its own percentiles, or each run of
    ``group`` consecutive slices on shared ones (the slices of one z-stack, so
    out-of-focus planes stay dim instead of being stretched to full contrast).
    Models of dark objects on a light background (``model.invert``) get ``1 - x``.
    """
    images = np.asarray(images)
    dims = model.config.dims
    if images.ndim == dims + 1:
        images = images[:, None]
    if images.ndim != dims + 2:
        raise ValueError(f"expected (N, [C,] {'Z, ' if dims == 3 else ''}Y, X) slices, got shape {images.shape}")
    low, high = model.normalization
    if group > 1 and len(images) % group == 0 and len(images) > 1:
        grouped = images.reshape((len(images) // group, group) + images.shape[1:])
        axes = (1,) + tuple(range(3, grouped.ndim))
        x = normalize_percentile(grouped, low, high, axis=axes).reshape(images.shape)
    else:
        x = normalize_percentile(images, low, high, axis=tuple(range(2, images.ndim)))
    return 1.0 - x if model.invert else x


def iter_segment(model: CellModel, images: np.ndarray, options: PredictOptions | None = None,
                 params: InstanceParams | None = None,
                 slice_labels: bool = True) -> Generator[Progress, None, Segmentation]:
    """Segment ``(N, *spatial)`` slices (or ``(N, C, *spatial)``); yields progress, returns a :class:`Segmentation`.

    ``slice_labels=False`` skips the per-slice post-processing (callers that build
    3D objects from the probabilities do their own).
    """
    opts = options or PredictOptions()
    params = params or model.instance_params
    clock = Stopwatch()
    with clock("normalise"):
        x = normalize_for_model(model, check_values(images, "images"), opts.normalize_group)
    trained = model.diameter
    diameter = opts.diameter  # "auto", None or pixels (PredictOptions checked it)
    if trained is None or diameter is None:
        probs = yield from _predict_at(model, x, 1.0, opts, clock=clock)
        used = None
    elif diameter != AUTO:
        probs = yield from _predict_at(model, x, trained / float(diameter), opts, clock=clock)
        used = float(diameter)
    else:
        with clock("size estimate"):
            est = yield from iter_estimate_diameter(model, x, opts, params)
        used = est or trained
        yield Progress(0, 1, f"object diameter ~{used:.1f} px")
        probs = yield from _predict_at(model, x, trained / used, opts, clock=clock)
    labels = None
    if slice_labels:
        with clock("post-processing"):
            labels = labels_from_probabilities(probs, params, used)
    return Segmentation(probabilities=probs, labels=labels, diameter=used, params=params, timings=clock)


def segment(model: CellModel, images: np.ndarray, options: PredictOptions | None = None,
            params: InstanceParams | None = None, progress=None, cancel=None) -> Segmentation:
    """Blocking form of :func:`iter_segment`."""
    return drive(iter_segment(model, images, options, params), progress, cancel)
