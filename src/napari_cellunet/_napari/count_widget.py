"""napari dock widget: count and measure the objects of any Labels layer; export CSV.

Axes decide what is counted: per frame for T, per slice for Z/Q stacks in
``slices`` mode, 3D objects for a z-stack (``3d``, the default with a Z axis).
The measurement table is written to the layer's ``features`` (napari's own
features table shows it); the labels themselves are never changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, FileEdit, LineEdit, PushButton, Table
from napari.layers import Image, Labels

from ..arrays import InputError, check_axes, to_grey
from ..measure import as_instance_labels, count_rows, measure_stack
from ..stacks import MODES, resolve_mode
from .forms import section
from .jobs import layer_axes
from .results import count_text
from .widget_parts import LayerChoices, Messages, full_resolution, wrapping_label

if TYPE_CHECKING:
    import napari

MAX_TABLE_ROWS = 1000  # rows shown in the table (the CSV has all of them)


def _display(table: pd.DataFrame) -> dict:
    """Table widget data: row header = label id, all-NaN columns hidden, floats rounded."""
    shown = table.drop(columns=["label", "index"], errors="ignore").dropna(axis=1, how="all").round(2)
    return {"data": shown.astype(object).values.tolist(), "index": table["label"].tolist(),
            "columns": list(shown.columns)}


def labels_axes(layer) -> str:
    """Axes of a Labels layer: its metadata or axis labels; 3D without them is a z-stack (ZYX)."""
    axes = layer_axes(layer)
    return "ZYX" if axes == "QYX" else axes


class CountWidget(Container, LayerChoices, Messages):
    """Count and measure the objects of any Labels layer (segmented or painted by hand)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self._viewer = viewer
        self.table: pd.DataFrame | None = None  # last measurement table (all rows)
        self.counts: list[dict] = []            # last counts per frame/slice
        self._labels = ComboBox(label="labels", choices=lambda w: self._layers(Labels))
        self._axes = LineEdit(label="axes", tooltip="letters of the layer's axes, e.g. YX, ZYX, TYX, TZYX")
        self._mode = ComboBox(label="stack mode", choices=list(MODES), value="auto",
                              tooltip="3d = objects of a z-stack counted once, frames = per time point, "
                                      "slices = per 2D slice; auto = 3d with Z, frames with T, else slices")
        self._intensity = ComboBox(label="intensity", nullable=True, choices=lambda w: self._layers(Image),
                                   tooltip="optional image of the same shape, for mean intensity")
        self._count_btn = PushButton(text="Count")
        self.result = wrapping_label("–", big=True)
        self._table = Table()
        self._table.read_only = True
        self._table.min_height, self._table.min_width = 300, 380
        self._path = FileEdit(label="CSV file", mode="w", filter="*.csv", nullable=True)
        self._export_btn = PushButton(text="Export CSV")
        self.status = wrapping_label()
        _, form = section("labels", [self._labels, self._axes, self._mode, self._intensity])
        _, export = section("export", [self._path])
        self.extend([form, self._count_btn, self.result, self._table, export, self._export_btn, self.status])
        self._count_btn.changed.connect(lambda: self.count())
        self._export_btn.changed.connect(lambda: self.export())
        self._labels.changed.connect(self._on_labels_changed)
        self._intensity.changed.connect(self._forget)
        self._watch_layers(viewer)
        active = viewer.layers.selection.active
        if isinstance(active, Labels):
            self._labels.value = active
        self._on_labels_changed()

    def _on_labels_changed(self, *_: Any) -> None:
        layer = self._labels.value
        self._axes.value = "" if layer is None else labels_axes(layer)
        self._forget()

    def _forget(self, *_: Any) -> None:
        """Another layer was chosen: the table shown no longer applies."""
        self.table = None
        self._table.value = None
        self.result.value = "–"

    def _intensity_for(self, labels: np.ndarray) -> np.ndarray | None:
        image = self._intensity.value
        if image is None:
            return None
        intensity = np.asarray(full_resolution(image))
        intensity = to_grey(intensity) if image.rgb else intensity
        if intensity.shape != labels.shape:
            raise InputError(f"intensity layer {image.name!r} has shape {intensity.shape}, labels have "
                             f"{labels.shape}; choose a matching image or None")
        return intensity

    def count(self) -> int | None:
        """Count the selected Labels layer (per frame/slice, or 3D objects) and show its measurement table."""
        layer = self._labels.value
        if layer is None:
            self._fail("Choose a Labels layer first.")
            return None
        labels = np.asarray(full_resolution(layer))
        try:
            axes = check_axes(self._axes.value, labels.shape, name=layer.name)
            mode = resolve_mode(axes, self._mode.value)
            intensity = self._intensity_for(labels)
            labels = as_instance_labels(labels, axes, mode)
            table = measure_stack(labels, axes, mode, intensity, tuple(layer.scale))
        except (ValueError, TypeError) as err:
            self._fail(str(err) if layer.name in str(err) else f"{layer.name}: {err}")
            return None
        rows = count_rows(labels, axes, mode)
        counts = [r["count"] for r in rows]
        table.insert(0, "index", table["label"])
        layer.features = table  # napari's features table; the label data are not touched
        self.table, self.counts = table, rows
        self._table.value = _display(table.head(MAX_TABLE_ROWS))
        if hasattr(self._table.native, "resizeColumnsToContents"):
            self._table.native.resizeColumnsToContents()
        unit = "frame" if "T" in axes and mode != "slices" else "slice"
        self.result.value = count_text(counts, "objects", unit, volume=mode == "3d" and len(counts) == 1)
        more = f"; the table shows {MAX_TABLE_ROWS} rows, the CSV has all" if len(table) > MAX_TABLE_ROWS else ""
        self.status.value = f"{layer.name}: {sum(counts)} objects ({axes}, {mode}){more}"
        return sum(counts)

    def export(self, path: str | Path | None = None) -> Path | None:
        """Write the measurement table (counting first if needed) to ``path`` or the chosen file."""
        path = path if path is not None else self._path.value
        if not path or str(path) == ".":
            return self._fail("Choose a CSV file name first.")
        if self.table is None and self.count() is None:
            return None
        return self._write_table(self.table.drop(columns="index"), path)
