"""Counts dock of the Segment widget: per-frame/slice counts table, count plot, CSV export.

Only built inside a viewer (imports matplotlib's Qt canvas), so Qt is available.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from magicgui.widgets import Container, FileEdit, Label, PushButton, Table

from .widget_parts import Messages


def counts_frame(rows: list[dict], measurements: pd.DataFrame) -> pd.DataFrame:
    """Counts per frame/slice (from ``stacks.count_rows``) with the mean object area of each."""
    counts = pd.DataFrame(rows).dropna(axis=1, how="all")
    keys = [c for c in ("frame", "slice") if c in counts]
    for c in keys:
        counts[c] = counts[c].astype(int)
    if keys and len(measurements):
        means = (measurements.groupby(keys)[["area_px", "area_phys"]].mean()
                 .rename(columns={"area_px": "mean_area_px", "area_phys": "mean_area_phys"}).reset_index())
        counts = counts.merge(means, on=keys, how="left")
    else:  # one image or volume
        counts["mean_area_px"] = measurements["area_px"].mean() if len(measurements) else np.nan
        counts["mean_area_phys"] = measurements["area_phys"].mean() if len(measurements) else np.nan
    return counts


def theme_colours(viewer=None) -> dict[str, str]:
    """Background, foreground and accent colours of the viewer's napari theme (light or dark)."""
    try:
        from napari.utils.theme import get_theme

        name = viewer.theme if viewer is not None else "dark"
        theme = get_theme(name)
        return {"background": theme.background.as_hex(), "foreground": theme.text.as_hex(), "accent": "tab:orange"}
    except Exception:  # an older/newer napari without these theme fields: matplotlib's defaults
        return {"background": "white", "foreground": "black", "accent": "tab:orange"}


class CountsDock(Container, Messages):
    """Table + plot of counts per frame (or slice) of one segmented image, with CSV export."""

    def __init__(self, viewer=None) -> None:
        super().__init__(labels=False)
        self._viewer = viewer
        self.counts: pd.DataFrame | None = None
        self.title = Label(value="–")
        self._plot_box = Container(labels=False)
        self._plot_box.margins = (0, 0, 0, 0)
        self._table = Table()
        self._table.read_only = True
        self._table.min_height, self._table.min_width = 110, 320
        self._path = FileEdit(label="CSV file", mode="w", filter="*.csv", nullable=True)
        self._export_btn = PushButton(text="Export counts CSV")
        self.status = Label(value="")
        form = Container(widgets=[self._path], labels=True)
        form.margins = (0, 0, 0, 0)
        self.extend([self.title, self._plot_box, self._table, form, self._export_btn, self.status])
        self._export_btn.changed.connect(lambda: self.export())

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.2), tight_layout=True)
        self._ax = self.figure.add_subplot()
        self._canvas = FigureCanvasQTAgg(self.figure)
        self._canvas.setMinimumHeight(150)
        self._plot_box.native.layout().addWidget(self._canvas)
        if viewer is not None:
            viewer.events.theme.connect(self._replot)

    def _replot(self, *_) -> None:
        if self.counts is not None:
            self.set_counts(self.counts, self.title.value, self._noun)

    def set_counts(self, counts: pd.DataFrame, title: str, noun: str = "objects") -> None:
        """Show ``counts`` (columns frame and/or slice, count, mean areas) and plot count vs frame/slice."""
        self.counts, self._noun = counts, noun
        self.title.value = title
        shown = counts.round(2)
        self._table.value = {"data": shown.astype(object).values.tolist(), "index": list(range(len(shown))),
                             "columns": list(shown.columns)}
        if hasattr(self._table.native, "resizeColumnsToContents"):
            self._table.native.resizeColumnsToContents()
        x = "frame" if "frame" in counts else "slice"
        per = counts.groupby(x)["count"].sum() if x in counts else counts["count"]
        colours = theme_colours(self._viewer)
        ax = self._ax
        ax.clear()
        self.figure.set_facecolor(colours["background"])
        ax.set_facecolor(colours["background"])
        ax.plot(per.index, per.values, "o-", color=colours["accent"])
        ax.set_xlabel(x, color=colours["foreground"])
        summed = "frame" in counts and "slice" in counts
        ax.set_ylabel(f"{noun} (sum over slices)" if summed else noun, color=colours["foreground"])
        ax.tick_params(colors=colours["foreground"])
        for spine in ax.spines.values():
            spine.set_color(colours["foreground"])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3, color=colours["foreground"])
        self._canvas.draw_idle()

    def export(self, path: str | Path | None = None) -> Path | None:
        """Write the counts table to ``path`` (or the chosen file); returns the path written."""
        path = path if path is not None else self._path.value
        if self.counts is None:
            return self._fail("Nothing to export yet.")
        return self._write_table(self.counts, path)
