"""What the Segment widget runs in its worker threads: a run, a big run block by block, a re-labelling.

Each job takes what :class:`Job` captured when *Run* was pressed and returns what the GUI thread
shows (:class:`~.results.Shown`, measured here, off the GUI thread) or a :class:`~.widget_parts.Failure`
message; tracebacks go to the log, never to the user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from napari.layers import Image

from .. import log
from ..arrays import InputError, check_axes, guess_axes
from ..inference import Progress
from ..models import CellModel
from ..settings import InstanceParams, PredictOptions
from ..stacks import StackResult, iter_segment_stack, relabel
from .results import Shown, prepare, pyramid
from .widget_parts import Failure, full_resolution

AXIS_LETTERS = {"t": "T", "time": "T", "z": "Z", "depth": "Z", "c": "C", "channel": "C", "y": "Y", "x": "X"}
LAYER_AXES = "TZQCYX"


def layer_axes(layer) -> str:
    """Axes of an image layer's dimensions (RGB excluded): metadata, axis labels, else ``Q…YX``."""
    ndim = layer.ndim
    shape = tuple(full_resolution(layer).shape[:ndim])
    candidates = [str((layer.metadata or {}).get("axes", "")).upper()]
    letters = [AXIS_LETTERS.get(str(a).strip().lower(), "") for a in getattr(layer, "axis_labels", ())]
    if len(letters) == ndim >= 2 and not letters[-2] and not letters[-1]:
        letters[-2:] = ["Y", "X"]
    candidates.append("".join(a or "Q" for a in letters))
    for axes in candidates:
        try:
            return check_axes(axes, shape, allowed=LAYER_AXES)
        except InputError:
            continue
    return guess_axes(shape)


@dataclass
class Job:
    """What one Run works on, captured when Run is pressed (plus its result)."""

    layer: Image
    key: tuple              # what the probabilities depend on (see SegmentWidget._key)
    data: np.ndarray        # channel picked / RGB converted; axes ``axes``; float32 once the worker ran
    axes: str               # among T, Z, Q, Y, X
    mode: str               # resolved mode (never "auto")
    scale: tuple            # layer scale / translate for ``axes``
    translate: tuple
    note: str
    model: CellModel
    options: PredictOptions
    params: InstanceParams
    chunked: tuple | None = None  # (axes with C, channel) when the run goes block by block
    shown: Shown | None = None  # the last result shown (its probabilities are the cache)


def segment_job(job: Job):
    """Worker: yields progress, returns what to show (or a :class:`Failure`)."""
    try:
        job.data = job.data.astype(np.float32, copy=False)  # here, not on the GUI thread (a 16 MP copy)
        result = yield from iter_segment_stack(job.model, job.data, job.axes, job.mode, job.scale, job.options,
                                               job.params)
        yield Progress(1, 1, "measuring")
        return prepare(result, job.data, job.scale, job.params)
    except Exception as err:  # shown as a message (traceback in the log), never as a traceback
        return Failure(log.failure("segmentation failed", err))


def chunked_job(job: Job, source, axes: str, channel: int | None):
    """Worker for big or lazy layers: block by block (bounded memory), never reading the layer whole."""
    from ..batch import DEFAULT_CHUNK, count_rows_of
    from ..chunked import iter_segment_chunked

    try:
        res = yield from iter_segment_chunked(job.model, source, axes, mode=job.mode,
                                              chunk=job.options.chunk or DEFAULT_CHUNK, options=job.options,
                                              params=job.params, scale=job.scale, channel=channel)
        import dask.array as da

        result = StackResult(da.from_zarr(res.labels), res.axes, res.mode, list(res.counts), res.count_axis)
        table = res.measurements.copy()
        table.insert(0, "index", table["label"])
        return Shown(result, pyramid(result.labels, lazy=True), table, count_rows_of(res), job.params)
    except Exception as err:
        return Failure(log.failure("segmentation failed", err))


def relabel_job(job: Job, params: InstanceParams):
    """Worker: labels for new thresholds from the cached probabilities (no network pass)."""
    try:
        result = relabel(job.shown.result.segmentation, job.data, job.axes, job.mode, job.scale,
                         job.model.config.dims, params)
        return prepare(result, job.data, job.scale, params)
    except Exception as err:
        return Failure(log.failure("re-labelling failed", err))
