"""Screenshots of the real napari window for the README (run under Xvfb on a headless machine).

    xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/screenshot.py [2d] [timelapse] [3d] [train] [lowlight]
                                                                         [menu] [bigdata]

Writes docs/screenshot_segment.png (Segment & count docked after a run on the
sample) and docs/screenshot_count.png (Count labels docked after counting the
result layer) for ``2d``; docs/screenshot_timelapse.png (time-lapse sample in
frames mode with its counts dock) for ``timelapse``; docs/screenshot_3d.png
(3D sample in 3d mode, 3D view) for ``3d``; docs/screenshot_train.png (Train widget after
a 30-second fine-tune) for ``train``; docs/screenshot_lowlight.png (a noisy copy of the sample,
segmented by the default and the low-light model) for ``lowlight``; docs/screenshot_menu.png (napari's
Layers > Segment menu, the whole screen) for ``menu``; docs/screenshot_bigdata.png (an 8192² dask layer
during its block-by-block run) for ``bigdata``. Without arguments: all of them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_cellunet._napari.count_widget import CountWidget
from napari_cellunet._napari.samples import load_sample_image, sample_nuclei_3d, sample_timelapse_2d
from napari_cellunet._napari.segment_widget import SegmentWidget

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


def run_segment(seg: SegmentWidget, app: QApplication) -> bool:
    """Press Run and wait for the result (False with a message on failure)."""
    if seg.run() is None:
        print(f"run failed: {seg.status.value}", file=sys.stderr)
        return False
    t0 = time.monotonic()
    while seg.worker is not None:
        if time.monotonic() - t0 > 600:
            print("segmentation did not finish in 10 minutes", file=sys.stderr)
            return False
        settle(app, 0.1)
    return True


def new_viewer() -> tuple[napari.Viewer, QApplication]:
    viewer = napari.Viewer(title="napari-cellunet", show=True)
    viewer.window._qt_window.resize(*SIZE)
    return viewer, QApplication.instance()


def add_sample(viewer: napari.Viewer, make):
    (data, kwargs, _), = make()
    return viewer.add_image(data, **kwargs)


def timelapse() -> int:
    viewer, app = new_viewer()
    image = add_sample(viewer, sample_timelapse_2d)
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment & count", area="right")
    seg._image.value = image
    seg._mode.value = "frames"
    seg.setting("diameter").value = 18  # given, as in the tests ("auto" estimates 14 px here; counts: docs/stacks.md)
    seg._add_points.value = True
    if not run_segment(seg, app):
        return 1
    print(f"timelapse: {seg.result.value} | counts {seg.counts_table['count'].tolist()}")
    labels = seg.result_layer(image)
    labels.opacity = 0.5
    seg.points_layer(image).size = 6
    viewer.dims.set_current_step(0, 6)
    viewer.window._qt_window.resize(*SIZE)
    settle(app, 0.5)
    viewer.reset_view()
    save(viewer, app, "screenshot_timelapse.png")
    viewer.close()
    return 0


def volume() -> int:
    viewer, app = new_viewer()
    image = add_sample(viewer, sample_nuclei_3d)
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment & count", area="right")
    seg._image.value = image
    seg._mode.value = "3d"
    if not run_segment(seg, app):
        return 1
    print(f"3d: {seg.result.value} | {seg.status.value}")
    labels = seg.result_layer(image)
    image.visible = False
    viewer.dims.ndisplay = 3
    viewer.layers.selection.active = labels
    viewer.window._qt_window.resize(*SIZE)
    settle(app, 0.5)
    viewer.reset_view()
    viewer.camera.angles = (-20, 35, 140)
    viewer.camera.zoom *= 0.85
    save(viewer, app, "screenshot_3d.png")
    viewer.close()
    return 0


def grab_screen(app: QApplication, name: str, window=None) -> Path:
    """The screen where ``window`` is, menus included (viewer.screenshot sees only the main window)."""
    settle(app, 0.5)
    path = DOCS / name
    g = window.frameGeometry() if window is not None else app.primaryScreen().geometry()
    app.primaryScreen().grabWindow(0, g.x(), g.y(), g.width(), g.height()).save(str(path))
    print(f"wrote {path}")
    return path


def menu() -> int:
    """napari's Layers > Segment menu with the plugin's command (and the image layer selected)."""
    viewer, app = new_viewer()
    viewer.window._qt_window.resize(1000, 640)
    image = viewer.add_image(load_sample_image(), name="nuclei", colormap="gray")
    viewer.layers.selection.active = image
    settle(app, 1.0)
    window = viewer.window._qt_window
    bar = window.menuBar()
    layers = next(a.menu() for a in bar.actions() if a.text().replace("&", "") == "Layers")
    pos = window.mapToGlobal(bar.actionGeometry(next(a for a in bar.actions() if a.menu() is layers)).bottomLeft())
    layers.popup(pos)
    settle(app, 0.5)
    segment = next(a for a in layers.actions() if a.text().replace("&", "").startswith("Segment"))
    layers.setActiveAction(segment)
    segment.menu().popup(layers.mapToGlobal(layers.actionGeometry(segment).topRight()))
    grab_screen(app, "screenshot_menu.png", window)
    segment.menu().close()
    layers.close()
    viewer.close()
    return 0


def bigdata() -> int:
    """A 8192² dask layer being segmented block by block: progress, the viewer still live."""
    import dask.array as da

    viewer, app = new_viewer()
    big = da.from_array(np.tile(load_sample_image(), (16, 16)), chunks=1024)
    image = viewer.add_image(big, name="slide (8192², dask)", colormap="gray", contrast_limits=(0, 220))
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment & count", area="right")
    seg._image.value = image
    seg.setting("diameter").value = 25
    if seg.run() is None:
        print(f"run failed: {seg.status.value}", file=sys.stderr)
        return 1
    while "block 4/" not in seg.status.value and seg.worker is not None:
        settle(app, 0.2)
    viewer.camera.zoom = 0.35
    save(viewer, app, "screenshot_bigdata.png")
    print(f"bigdata: {seg.status.value}")
    seg.cancel()
    while seg.worker is not None:
        settle(app, 0.2)
    viewer.close()
    return 0


def main() -> int:
    DOCS.mkdir(exist_ok=True)
    which = set(sys.argv[1:]) or {"2d", "timelapse", "3d", "train", "lowlight", "menu", "bigdata"}
    if "menu" in which:
        menu()
    if "bigdata" in which:
        bigdata()
    rc = 0
    if "2d" in which:
        rc |= flat()
    if "timelapse" in which:
        rc |= timelapse()
    if "3d" in which:
        rc |= volume()
    if "train" in which:
        rc |= train()
    if "lowlight" in which:
        rc |= lowlight()
    return rc


def lowlight() -> int:
    """The sample at 10 photons per nucleus, segmented by the default and the low-light model."""
    viewer, app = new_viewer()
    clean = load_sample_image().astype(np.float32)
    noisy = np.random.default_rng(0).poisson(clean / np.percentile(clean, 99.8) * 10 + 1).astype(np.float32)
    image = viewer.add_image(noisy, name="nuclei, 10 photons", colormap="gray")
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment & count", area="right")
    seg._image.value = image
    for model in ("nuclei-fluo-2d", "nuclei-fluo-2d-lowlight"):  # the second run updates the result layer
        seg._model.value = model
        if not run_segment(seg, app):
            return 1
        print(f"{model}: {seg.result.value} | {seg.status.value}")
    seg.result_layer(image).opacity = 0.6
    viewer.reset_view()
    save(viewer, app, "screenshot_lowlight.png")
    viewer.close()
    return 0


def train() -> int:
    """Train widget after a short fine-tune on the sample + its corrected labels (the test mask)."""
    import os
    import tempfile

    import tifffile

    from napari_cellunet._napari.train_widget import TrainWidget

    os.environ.setdefault("CELLUNET_MODEL_DIR", tempfile.mkdtemp())  # keep the user's model folder clean
    viewer, app = new_viewer()
    image = viewer.add_image(load_sample_image(), name="nuclei", colormap="gray")
    mask = tifffile.imread(Path(__file__).resolve().parents[1] / "tests" / "data" / "nuclei_2d_mask.tif")
    labels = viewer.add_labels(mask.astype("int32"), name="nuclei labels (corrected)", opacity=0.5)
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train (fine-tune)", area="right")
    w.add_pair(image, labels)
    w._name.value = "my-nuclei"
    w._minutes.value = 0.5
    if w.train() is None:
        print(f"train failed: {w.status.value}", file=sys.stderr)
        return 1
    while w.worker is not None:
        settle(app, 0.2)
    print(f"train: {w.result.value} | {w.status.value}")
    save(viewer, app, "screenshot_train.png")
    viewer.close()
    return 0


def flat() -> int:
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
