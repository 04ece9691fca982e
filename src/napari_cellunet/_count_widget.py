"""napari dock widget: count and measure the objects of any Labels layer; export CSV."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, FileEdit, PushButton, Table
from napari.layers import Image, Labels

from ._widget_parts import LayerChoices, Messages, layer_data, sub_form, wrapping_label
from .arrays import to_grey
from .measure import count_objects, measure

if TYPE_CHECKING:
    import napari

MAX_TABLE_ROWS = 1000  # rows shown in the table (the CSV has all of them)


def _display(table: pd.DataFrame) -> dict:
    """Table widget data: row header = label id, all-NaN columns hidden, floats rounded."""
    shown = table.drop(columns="label").dropna(axis=1, how="all").round(2)
    return {"data": shown.astype(object).values.tolist(), "index": table["label"].tolist(),
            "columns": list(shown.columns)}



class CountWidget(Container, LayerChoices, Messages):
    """Count and measure the objects of any Labels layer (segmented or painted by hand)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self._viewer = viewer
        self.table: pd.DataFrame | None = None  # last measurement table (all rows)
        self._labels = ComboBox(label="labels", choices=lambda w: self._layers(Labels))
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
        self.extend([sub_form(self._labels, self._intensity), self._count_btn, self.result, self._table,
                     sub_form(self._path), self._export_btn, self.status])
        self._count_btn.changed.connect(lambda: self.count())
        self._export_btn.changed.connect(lambda: self.export())
        self._labels.changed.connect(self._forget)
        self._intensity.changed.connect(self._forget)
        self._watch_layers(viewer)

    def _forget(self, *_: Any) -> None:
        """Another layer was chosen: the table shown no longer applies."""
        self.table = None
        self._table.value = None
        self.result.value = "–"

    def count(self) -> int | None:
        """Count the selected Labels layer (2D or 3D objects) and show its measurement table."""
        layer = self._labels.value
        if layer is None:
            self._fail("Choose a Labels layer first.")
            return None
        labels = np.asarray(layer_data(layer))
        if labels.ndim not in (2, 3):
            self._fail(f"{layer.name}: counting works on 2D or 3D labels, got shape {labels.shape}")
            return None
        intensity, image = None, self._intensity.value
        if image is not None:
            intensity = np.asarray(layer_data(image))
            intensity = to_grey(intensity) if image.rgb else intensity
            if intensity.shape != labels.shape:
                self._fail(f"intensity layer {image.name!r} has shape {intensity.shape}, labels "
                           f"{layer.name!r} have {labels.shape}; choose a matching image or None")
                return None
        try:
            table = measure(labels, intensity, tuple(layer.scale)[-labels.ndim:])
        except (ValueError, TypeError) as err:
            self._fail(f"{layer.name}: cannot measure ({err})")
            return None
        n = count_objects(labels)
        self.table = table
        self._table.value = _display(table.head(MAX_TABLE_ROWS))
        if hasattr(self._table.native, "resizeColumnsToContents"):
            self._table.native.resizeColumnsToContents()
        self.result.value = f"{n} objects" + (" (3D)" if labels.ndim == 3 else "")
        more = f"; the table shows {MAX_TABLE_ROWS} rows, the CSV has all" if len(table) > MAX_TABLE_ROWS else ""
        self.status.value = f"{layer.name}: {n} objects{more}"
        return n

    def export(self, path: str | Path | None = None) -> Path | None:
        """Write the measurement table (counting first if needed) to ``path`` or the chosen file."""
        path = path if path is not None else self._path.value
        if not path or str(path) == ".":
            return self._fail("Choose a CSV file name first.")
        if self.table is None and self.count() is None:
            return None
        return self._write_table(self.table, path)
