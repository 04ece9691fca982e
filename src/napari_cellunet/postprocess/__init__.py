"""Probabilities -> instance labels: the one entry point, :func:`postprocess`.

The first run, re-labelling from cached probabilities (the widget), the CLI,
batch and chunked jobs all call :func:`postprocess`; it dispatches by mode:

* ``2d`` / ``slices`` / ``frames``: each YX slice gets its own labels
  (:func:`.seeds.labels_from_probabilities`; ids 1..n per slice); in
  ``frames`` mode splits lasting a frame or two are re-joined (:func:`.stacks.merge_flickers`),
* ``3d``: a 2D model's slice-wise probabilities are assembled into 3D objects
  (:func:`.stacks.volume_labels`); a 3D model's volumes are labelled directly,

then, with ``params.min_brightness``, objects dimmer than the image's bright ones are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..arrays import count_objects, label_dtype
from ..settings import InstanceParams
from .objects import drop_dim_objects, drop_unconfident, filter_dim_objects, join_weak_borders, merge_fragments
from .quality import CHECK_ABOVE, per_unit, uncertainty
from .seeds import (
    BACKGROUND,
    BOUNDARY,
    DISTANCE,
    INTERIOR,
    default_min_size,
    labels_from_probabilities,
    probabilities_to_labels,
    remove_small,
    typical_size,
)
from .stacks import merge_flickers, volume_labels

__all__ = ["BACKGROUND", "BOUNDARY", "DISTANCE", "INTERIOR", "Labelled", "default_min_size",
           "drop_dim_objects", "drop_unconfident", "filter_dim_objects", "join_weak_borders",
           "labels_from_probabilities",
           "merge_flickers", "merge_fragments", "postprocess", "probabilities_to_labels", "remove_small",
           "typical_size", "uncertainty", "unique_ids", "volume_labels"]


@dataclass
class Labelled:
    """Labels of one input (image, stack or time-lapse) and its counts."""

    labels: np.ndarray  # the input's shape (axes ``axes``); ids 1..n per slice/frame/volume
    axes: str           # among T, Z, Q, Y, X
    mode: str           # "2d", "3d", "frames" or "slices"
    counts: list[int]   # per frame/slice/volume, or [n] for one image or volume
    count_axis: str     # "image", "frame" or "slice"
    uncertainty: list[float] = field(default_factory=list)  # per count (quality.uncertainty; 0 = sure)

    @property
    def check(self) -> list[bool]:
        """Per count: whether the network was unsure enough that the count deserves a look."""
        return [u > CHECK_ABOVE for u in self.uncertainty]


def postprocess(probabilities: np.ndarray, axes: str, mode: str, params: InstanceParams,
                diameter: float | None, *, shape: Sequence[int], scale: Sequence[float] | None = None,
                images: np.ndarray | None = None, model_dims: int = 2) -> Labelled:
    """Labels from a run's ``(N, outputs, *spatial)`` probabilities (image scale), with an uncertainty per count.

    ``shape``/``axes`` are the segmented data's (channel picked), ``mode`` is
    resolved (never "auto"); ``N`` is the number of 2D slices (``model_dims=2``)
    or of volumes (a 3D model). ``scale`` (per axis) gives the z/xy voxel ratio
    for 3D assembly; ``images`` (the data) enables ``params.min_brightness``.
    """
    out = _labels(probabilities, axes, mode, params, diameter, shape, scale, images, model_dims)
    out.uncertainty = per_unit(probabilities, len(out.counts))
    return out


def _labels(probabilities, axes, mode, params, diameter, shape, scale, images, model_dims) -> Labelled:
    shape = tuple(shape)
    lead = shape[: len(shape) - (3 if model_dims == 3 else 2)]
    if model_dims == 3:
        labels = labels_from_probabilities(probabilities, params, diameter)
        labels = filter_dim_objects(labels, _units(images, labels.shape), params.min_brightness)
        return Labelled(labels.reshape(shape), axes, "3d", [count_objects(v) for v in labels],
                        "image" if not lead else "frame")
    if mode != "3d" or len(axes) == 2:
        labels = labels_from_probabilities(probabilities, params, diameter)
        labels = filter_dim_objects(labels, _units(images, labels.shape), params.min_brightness)
        counts = [count_objects(s) for s in labels]
        if len(axes) == 2:
            return Labelled(labels[0], axes, "2d", counts, "image")
        labels = labels.reshape(shape)
        if mode == "frames" and axes[0] == "T" and len(lead) == 1 and params.merge_over_time:
            labels = merge_flickers(labels)
            counts = [count_objects(s) for s in labels]
        return Labelled(labels, axes, mode, counts, "frame" if mode == "frames" else "slice")
    z_index = axes.index("Z" if "Z" in axes else "Q")
    z_ratio = 1.0
    if scale is not None and len(scale) == len(axes):
        z_ratio = float(scale[z_index]) / max(float(scale[-1]), 1e-12)
    probs = probabilities.reshape(lead + probabilities.shape[1:])
    if len(lead) == 1:  # ZYX
        labels = volume_labels(probs, params, diameter, z_ratio)
        labels = filter_dim_objects(labels[None], _units(images, (1, *labels.shape)), params.min_brightness)[0]
        return Labelled(labels, axes, "3d", [count_objects(labels)], "image")
    t_index = 1 - z_index  # TZYX (or ZTYX): one volume per time point
    vols = np.stack([volume_labels(p, params, diameter, z_ratio) for p in np.moveaxis(probs, t_index, 0)])
    if images is not None and params.min_brightness > 0:
        per_frame = np.moveaxis(np.asarray(images).reshape(shape), t_index, 0)
        vols = filter_dim_objects(vols, per_frame, params.min_brightness)
    labels = np.moveaxis(vols.astype(label_dtype(int(vols.max(initial=0)))), 0, t_index)
    return Labelled(labels, axes, "3d", [count_objects(v) for v in vols], "frame")


def _units(images: np.ndarray | None, shape: tuple) -> np.ndarray | None:
    """The images as ``(N, *spatial)`` units matching labels of ``shape`` (None stays None)."""
    return None if images is None else np.asarray(images).reshape(shape)


def unique_ids(labels: np.ndarray, mode: str) -> np.ndarray:
    """Give every object of a stack its own id (slices/frames/volumes come labelled 1..n each)."""
    unit = 3 if mode == "3d" else 2  # 3d: (T, Z, Y, X) volumes (Z is always just before YX here)
    if labels.ndim <= unit:
        return labels
    blocks = labels.reshape((-1,) + labels.shape[-unit:])
    maxima = [int(b.max()) for b in blocks]
    out = blocks.astype(label_dtype(sum(maxima)))
    for block, offset in zip(out, np.cumsum([0, *maxima[:-1]]).tolist()):
        block[block > 0] += offset
    return out.reshape(labels.shape)
