"""Commands for napari's *Layers > Segment* and *Layers > Measure* menus: act on the selected layer.

Each opens (or reuses) the plugin's dock widget with the active layer chosen and
starts it, so the menu and the dock share one code path.
"""

from __future__ import annotations

import napari
from napari.layers import Image, Labels
from napari.utils.notifications import show_info

PLUGIN = "napari-cellunet"


def segment_active_layer(viewer: napari.viewer.Viewer):
    """Segment & count the selected image layer (returns the Segment widget; its run is in a worker)."""
    layer = viewer.layers.selection.active
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment & count")
    if not isinstance(layer, Image):
        show_info("CellUNet: select an image layer to segment")
        return widget
    widget._image.value = layer
    widget.run()
    return widget


def count_active_layer(viewer: napari.viewer.Viewer):
    """Count and measure the selected Labels layer (returns the Count widget)."""
    layer = viewer.layers.selection.active
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Count labels")
    if not isinstance(layer, Labels):
        show_info("CellUNet: select a Labels layer to count")
        return widget
    widget._labels.value = layer
    widget.count()
    return widget
