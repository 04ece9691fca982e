"""A 2D image or a stack -> labels and counts, with a leading axis treated by ``mode``.

Axes use the letters T (time), Z (depth), Q (unknown stack axis), Y, X; the
channel has been chosen and RGB converted before this point. Every 2D slice of
the stack goes through the network in one batched pass
(:func:`~napari_cellunet.segment.iter_segment`); the probabilities become labels in
:func:`~napari_cellunet.postprocess.postprocess`:

* ``slices`` / ``frames``: each YX slice gets its own labels (ids unique per slice),
* ``3d``: the YX probabilities of a z-stack are assembled into 3D objects, counted once.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .arrays import check_axes
from .inference import Progress
from .models import CellModel
from .postprocess import Labelled, postprocess, volume_labels
from .segment import Segmentation, Stopwatch, iter_segment
from .settings import InstanceParams, PredictOptions

__all__ = ["MODES", "StackResult", "default_mode", "iter_segment_stack", "relabel", "resolve_mode",
           "volume_labels"]

MODES = ("auto", "3d", "frames", "slices")


@dataclass
class StackResult(Labelled):
    """Labels and counts (:class:`~napari_cellunet.postprocess.Labelled`) plus the run's probabilities."""

    segmentation: Segmentation | None = None  # slice-wise probabilities (cached for re-labelling)


def default_mode(axes: str) -> str:
    """``3d`` when there is a Z axis, ``frames`` for T without Z, ``slices`` otherwise (2D: ``slices``)."""
    if "Z" in axes:
        return "3d"
    if "T" in axes:
        return "frames"
    return "slices"


def resolve_mode(axes: str, mode: str | None, model_dims: int = 2) -> str:
    """The mode a run uses (``auto`` resolved), checked against the axes and the model."""
    mode = default_mode(axes) if mode in (None, "auto") else mode
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "3d" and (len(axes) < 3 or axes[-3] not in "ZQ"):
        raise ValueError(f"3D mode needs a z axis just before YX (e.g. ZYX, TZYX), got axes {axes!r}")
    if model_dims == 3 and mode != "3d":
        raise ValueError(f"a 3D model needs a z-stack in 3d mode (axes ending in ZYX), got axes {axes!r}, "
                         f"mode {mode!r}")
    return mode


def iter_segment_stack(model: CellModel, data: np.ndarray, axes: str, mode: str = "auto",
                       scale: Sequence[float] | None = None, options: PredictOptions | None = None,
                       params: InstanceParams | None = None) -> Generator[Progress, None, StackResult]:
    """Segment a 2D image or a stack; yields progress, returns a :class:`StackResult`."""
    data = np.asarray(data)
    axes = check_axes(axes, data.shape)
    dims = model.config.dims
    mode = resolve_mode(axes, mode, dims)
    options = options or PredictOptions()
    if dims == 3:
        units = data.reshape((-1,) + data.shape[-3:])
    else:
        units = data.reshape((-1,) + data.shape[-2:])
        if mode == "3d" and len(axes) > 2:  # one z-stack = one intensity scale
            options = replace(options, normalize_group=data.shape[-3])
    seg = yield from iter_segment(model, units, options, params, slice_labels=False)
    return relabel(seg, data, axes, mode, scale, dims)


def relabel(seg: Segmentation, data: np.ndarray, axes: str, mode: str, scale: Sequence[float] | None = None,
            model_dims: int = 2, params: InstanceParams | None = None) -> StackResult:
    """Labels of a run from its (cached) probabilities, with ``params`` (default: the run's)."""
    params = params or seg.params
    seg = replace(seg, params=params, timings=Stopwatch({k: v for k, v in seg.timings.items()
                                                         if k != "post-processing"}))
    with seg.timings("post-processing"):
        out = postprocess(seg.probabilities, axes, mode, params, seg.diameter, shape=data.shape, scale=scale,
                          images=data, model_dims=model_dims)
    return StackResult(**vars(out), segmentation=seg)
