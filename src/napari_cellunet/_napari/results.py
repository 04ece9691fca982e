"""What a finished run shows: measured in the worker thread, put into layers on the GUI thread.

:func:`prepare` (worker) gives every object of a stack its own id, measures the
objects and counts them per frame/slice, so the GUI thread only hands arrays
and tables to napari (:class:`ResultLayers`): the ``<image> labels`` layer, a
counts dock for stacks and an optional centroid Points layer. A layer the user
made is never written to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..measure import count_rows, measure_stack
from ..postprocess import default_min_size, unique_ids
from ..settings import InstanceParams
from ..stacks import StackResult
from .counts_dock import counts_frame

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels


PYRAMID_ABOVE = 2048  # px per side: bigger results are shown as a multiscale layer (napari draws a level)
SMALL_LEVEL = 4096    # ...whose levels up to this size are made in the worker (lazy ones would be read there)


def pyramid(labels, lazy: bool = False) -> list:
    """Display levels of a big label image: itself, then every 2nd, 4th, ... pixel in Y and X.

    Small levels of a lazy (dask) image are computed here (call it in the worker), so drawing a
    zoomed-out view never reads the whole image on the GUI thread.
    """
    levels, factor = [labels], 2
    if max(labels.shape[-2:]) <= PYRAMID_ABOVE:
        return levels
    while max(labels.shape[-2:]) / factor >= 256:
        level = labels[..., ::factor, ::factor]
        if lazy and max(level.shape[-2:]) <= SMALL_LEVEL:
            level = np.asarray(level)
        levels.append(level)
        factor *= 2
    return levels


@dataclass
class Shown:
    """A result ready for display (computed off the GUI thread)."""

    result: StackResult
    labels: list            # display levels (one, or a pyramid: see :func:`pyramid`); ids unique in the stack
    table: pd.DataFrame     # one row per object ("index" = label, for napari's features)
    rows: list[dict]        # counts per frame/slice
    params: InstanceParams

    @property
    def counts(self) -> list[int]:
        return [r["count"] for r in self.rows]


def prepare(result: StackResult, images: np.ndarray, scale: tuple, params: InstanceParams) -> Shown:
    """Unique ids, measurements and counts of a result (slow for big images: run it in the worker)."""
    labels = unique_ids(result.labels, result.mode)
    table = measure_stack(labels, result.axes, result.mode, images, scale)
    table.insert(0, "index", table["label"])  # napari maps label values to feature rows by "index"
    rows = [{**r, "uncertainty": u, "check": c} for r, u, c in
            zip(count_rows(labels, result.axes, result.mode), result.uncertainty, result.check)]
    return Shown(result, pyramid(labels), table, rows, params)


def noun(model_name: str) -> str:
    name = model_name.lower()
    return "nuclei" if "nucle" in name else "cells" if "cell" in name else "objects"


def count_text(counts: list[int], noun: str, unit: str = "slice", volume: bool = False) -> str:
    if len(counts) == 1:
        return f"{counts[0]} {noun}" + (" (3D)" if volume else "")
    per = ", ".join(map(str, counts)) if len(counts) <= 8 else f"{min(counts)}–{max(counts)} per {unit}"
    return f"{sum(counts)} {noun} in {len(counts)} {unit}s ({per})"


def centroids(table: pd.DataFrame, axes: str, mode: str) -> np.ndarray:
    """Object centroids in the labels' data coordinates (frame/slice indices for leading axes)."""
    unit = "ZYX" if mode == "3d" else "YX"
    cols = ["frame" if a == "T" else "slice" for a in axes[: len(axes) - len(unit)]]
    cols += [f"centroid_{a.lower()}" for a in unit]
    return table[cols].to_numpy(dtype=float).reshape(-1, len(cols))


def layer_metadata(shown: Shown, source: str, model: str, options: dict, note: str) -> dict:
    """The Labels layer's metadata: how it was made (every setting) and its counts."""
    r, p = shown.result, shown.params
    dims = 3 if r.mode == "3d" else 2
    diameter = r.segmentation.diameter if r.segmentation is not None else None
    return {"made_by": "napari-cellunet", "source_layer": source, "model": model, "mode": r.mode, "axes": r.axes,
            "diameter": diameter, **options, **p.to_dict(),
            "min_size": p.min_size if p.min_size > 0 else default_min_size(diameter, dims),
            "counts": shown.counts, "count_axis": r.count_axis, "uncertainty": r.uncertainty, "check": r.check,
            "note": note}


class ResultLayers:
    """The layers and docks a widget made for each source image (never the user's own)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._labels: list[tuple[Any, Any]] = []  # (source image, Labels layer made for it)
        self._points: list[tuple[Any, Any]] = []  # (source image, centroid Points layer)
        self._docks: dict[str, Any] = {}           # source layer unique_id -> CountsDock

    def _find(self, pairs, image):
        for src, layer in pairs:
            if image is not None and src.unique_id == image.unique_id and layer in self._viewer.layers:
                return layer
        return None

    def labels(self, image) -> Labels | None:
        return self._find(self._labels, image)

    def points(self, image):
        return self._find(self._points, image)

    def dock(self, image):
        return None if image is None else self._docks.get(image.unique_id)

    def show_labels(self, src: Image, shown: Shown, scale, translate, metadata: dict) -> Labels:
        """Create (named ``<image> labels``, or with a number if taken) or update the result layer."""
        target = self.labels(src)
        multiscale = len(shown.labels) > 1
        if target is not None and bool(target.multiscale) != multiscale:  # napari cannot switch: make it anew
            self._viewer.layers.remove(target)
            target = None
        data = shown.labels if multiscale else shown.labels[0]
        if target is None:
            name = f"{src.name} labels"
            target = self._viewer.add_labels(data, name=name, scale=scale, translate=translate, features=shown.table,
                                             metadata=metadata, multiscale=multiscale,
                                             axis_labels=_axis_labels(src, len(scale)), units=_units(src, len(scale)))
            self._labels.append((src, target))
        else:  # each property set redraws: set only what changed
            if tuple(target.scale) != tuple(scale) or tuple(target.translate) != tuple(translate):
                target.scale, target.translate = scale, translate
            target.data, target.features, target.metadata = data, shown.table, metadata
        return target

    def show_counts(self, src: Image, counts: pd.DataFrame, title: str, noun: str) -> None:
        """Create (once per image) or update the counts dock: table, plot, CSV export."""
        from .counts_dock import CountsDock

        dock = self._docks.get(src.unique_id)
        if dock is None or dock.native.parent() is None:  # never made, or removed from the window
            dock = CountsDock(self._viewer)
            self._viewer.window.add_dock_widget(dock, name=f"{src.name} counts", area="right")
            self._docks[src.unique_id] = dock
        dock.set_counts(counts, title, noun)
        frame = dock.native.parent()
        if frame is not None and frame.isHidden():  # closed by the user: show it again
            frame.show()

    def show_points(self, src: Image, coords: np.ndarray, scale, translate, diameter: float | None) -> None:
        """Add or update the ``<image> centroids`` Points layer (one point per object)."""
        layer = self.points(src)
        if layer is None:
            layer = self._viewer.add_points(coords, name=f"{src.name} centroids", scale=scale, translate=translate,
                                            size=max(3.0, 0.35 * (diameter or 10)), face_color="yellow",
                                            border_color="black", symbol="disc")
            self._points.append((src, layer))
        else:
            layer.data = coords
            layer.scale, layer.translate = scale, translate


def _kept_axes(src, n: int) -> list[int]:
    """Which of the source layer's dimensions the result has (a channel axis is dropped)."""
    axes = str((src.metadata or {}).get("axes", "")).upper()
    if len(axes) == src.ndim and "C" in axes:
        return [i for i, a in enumerate(axes) if a != "C"]
    return list(range(src.ndim))[-n:]


def _axis_labels(src, n: int) -> tuple | None:
    labels = tuple(getattr(src, "axis_labels", ()) or ())
    keep = _kept_axes(src, n)
    return tuple(labels[i] for i in keep) if len(labels) == src.ndim and len(keep) == n else None


def _units(src, n: int) -> tuple | None:
    units = tuple(getattr(src, "units", ()) or ())
    keep = _kept_axes(src, n)
    return tuple(str(units[i]) for i in keep) if len(units) == src.ndim and len(keep) == n else None


def counts_table(shown: Shown) -> pd.DataFrame:
    return counts_frame(shown.rows, shown.table)
