"""Building blocks shared by the dock widgets: sub-forms, wrapping labels, layer combos, Cancel."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from magicgui.widgets import Label
from napari.utils.notifications import show_error, show_info

from .. import log
from ..measure import write_csv

if TYPE_CHECKING:
    import napari


def full_resolution(layer) -> Any:
    """Full-resolution data of a (possibly multiscale) layer."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def wrapping_label(value: str = "", big: bool = False) -> Label:
    """A full-width label whose long messages wrap instead of widening the dock."""
    label = Label(value=value)
    native = label.native
    try:  # plain method calls on the Qt backend widget (no Qt import needed)
        native.setWordWrap(True)
        policy = native.sizePolicy()
        policy.setHorizontalPolicy(type(policy.horizontalPolicy()).Expanding)
        native.setSizePolicy(policy)
        native.setStyleSheet("font-size: 16px; font-weight: bold; padding: 4px 0px;" if big
                             else "qproperty-alignment: 'AlignLeft | AlignVCenter';")
    except AttributeError:  # another magicgui backend
        pass
    return label


@dataclass
class Failure:
    message: str


class LayerChoices:
    """Keep the layer combos of a widget in sync with ``viewer.layers`` (add, remove, move, rename)."""

    def _watch_layers(self, viewer: napari.viewer.Viewer) -> None:
        ev = viewer.layers.events
        for emitter in (ev.inserted, ev.removed, ev.moved, ev.reordered):
            emitter.connect(self._on_layers_changed)
        for layer in viewer.layers:
            layer.events.name.connect(self._on_layers_changed)

    def _on_layers_changed(self, event=None) -> None:
        kind, layer = getattr(event, "type", None), getattr(event, "value", None)
        if kind == "inserted" and layer is not None:
            layer.events.name.connect(self._on_layers_changed)
        elif kind == "removed" and layer is not None:
            layer.events.name.disconnect(self._on_layers_changed)
        self.reset_choices()

    def _layers(self, kind: type) -> list[tuple[str, Any]]:
        return [(lyr.name, lyr) for lyr in self._viewer.layers if isinstance(lyr, kind)]


class Messages:
    """Failure messages: in the widget's status line and as a napari notification (never a traceback).

    Subclasses set ``status`` (a label).
    """

    def _fail(self, message: str) -> None:
        self.status.value = message
        log.warning(message)
        show_error(message)

    def _write_table(self, table: pd.DataFrame, path: str | Path | None) -> Path | None:
        """Write ``table`` as CSV to ``path`` (".csv" added if missing); the outcome goes to the status line."""
        if not path or str(path) == ".":
            return self._fail("Choose a CSV file name first.")
        path = Path(path)
        if path.suffix.lower() != ".csv":
            path = path.with_name(path.name + ".csv")
        try:
            out = write_csv(table, path)
        except OSError as err:
            return self._fail(f"could not write {path}: {err}")
        self.status.value = f"wrote {len(table)} rows to {out}"
        show_info(self.status.value)
        return out


class WorkerControls(Messages):
    """Cancel and clean-up for widgets that run a worker.

    Subclasses set ``status``, ``_start_btn``, ``_cancel_btn``, ``_worker`` and ``_pbar``.
    """

    def cancel(self, *_: Any) -> None:
        """Stop the running worker at its next step; layers stay as they were."""
        if self._worker is not None:
            self._worker.quit()
            self._cancel_btn.enabled = False
            self.status.value = "cancelling…"

    def _on_finished(self) -> None:
        self._worker = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self._start_btn.enabled, self._cancel_btn.enabled = True, False
