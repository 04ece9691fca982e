"""Screenshots of the real napari window for the README (run under Xvfb on a headless machine).

    xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/screenshot.py

Writes docs/screenshot_segment.png (Segment & count docked after a run on the
sample) and docs/screenshot_count.png (Count labels docked after counting the
result layer).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_cellunet._sample_data import load_sample_image
from napari_cellunet._widget import CountWidget, SegmentWidget

DOCS = Path(__file__).resolve().parents[1] / "docs"
SIZE = (1600, 1000)


def settle(app: QApplication, seconds: float = 0.5) -> None:
    """Process events for a while so docks, canvas and notifications are drawn."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def save(viewer: napari.Viewer, app: QApplication, name: str) -> Path:
    settle(app, 1.0)
    path = DOCS / name
    viewer.screenshot(str(path), canvas_only=False)
    print(f"wrote {path}")
    return path


def main() -> int:
    DOCS.mkdir(exist_ok=True)
    viewer = napari.Viewer(title="napari-cellunet", show=True)
    app = QApplication.instance()
    viewer.window._qt_window.resize(*SIZE)
    image = viewer.add_image(load_sample_image(), name="nuclei", colormap="gray")

    seg = SegmentWidget(viewer)
    seg_dock = viewer.window.add_dock_widget(seg, name="Segment & count", area="right")
    seg._image.value = image
    if seg.run() is None:
        print(f"run failed: {seg.status.value}", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    while seg.worker is not None:
        if time.monotonic() - t0 > 600:
            print("segmentation did not finish in 10 minutes", file=sys.stderr)
            return 1
        settle(app, 0.1)
    labels = seg.result_layer(image)
    if labels is None:
        print(f"no result: {seg.status.value}", file=sys.stderr)
        return 1
    print(f"segment: {seg.result.value} | {seg.status.value}")
    labels.opacity = 0.6
    viewer.layers.selection.active = labels
    viewer.reset_view()
    save(viewer, app, "screenshot_segment.png")

    viewer.window.remove_dock_widget(seg_dock)
    count = CountWidget(viewer)
    viewer.window.add_dock_widget(count, name="Count labels", area="right")
    count._labels.value = labels
    count._intensity.value = image
    n = count.count()
    print(f"count: {n} | {count.status.value}")
    viewer.window._qt_window.resize(*SIZE)
    viewer.reset_view()
    save(viewer, app, "screenshot_count.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
