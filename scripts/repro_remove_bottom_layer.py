"""Minimal reproduction of a napari 0.9.2 / PyQt6 / Xvfb crash (docs/known-issues.md); no plugin involved.

    xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/repro_remove_bottom_layer.py

Removes the bottom layer of a two-layer viewer, then at once shows a notification and adds a layer.
Seen to end the process with SIGSEGV inside vispy's draw on some machines (not on every run or
machine); "survived" is printed otherwise.
"""

import time

import napari
import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QApplication

viewer = napari.Viewer(show=True)
bottom = viewer.add_image(np.random.default_rng(0).random((512, 512)), name="bottom")
viewer.add_image(np.zeros((64, 64)), name="top")
app = QApplication.instance()
for _ in range(5):
    app.processEvents()
    time.sleep(0.05)
viewer.layers.remove(bottom)
show_error("bottom layer removed")
viewer.add_labels(np.zeros((64, 64), np.uint8))
viewer.window._qt_window.resize(1200, 800)
for _ in range(20):
    app.processEvents()
    time.sleep(0.05)
print("survived:", [layer.name for layer in viewer.layers])
viewer.close()
