"""Is napari still live while a huge dask layer is segmented? Event-loop gaps and Cancel latency.

    xvfb-run -a -s "-screen 0 1920x1080x24" python benchmarks/viewer_responsiveness.py [--size 16384] [--seconds 60]
    ... --size 4096 --numpy --seconds 120   # an in-memory layer, the whole run (result layer added at the end)

A ``size`` x ``size`` uint16 dask layer (the bundled sample mirror-tiled lazily, never held whole) is
shown in a real viewer and segmented with the Segment & count widget's defaults (blocks of
``--chunk``). A 20 ms Qt timer records every tick of the event loop for ``--seconds`` of the run, while
the canvas is panned and zoomed every 0.5 s as a user would; then Cancel is pressed and the time until
the worker has stopped is taken. Prints the longest and the 99th-percentile gap between ticks
(a gap > 200 ms is a visible freeze), the blocks done, and the Cancel latency. ``--stalls FILE``
appends every thread's traceback whenever the loop has not ticked for 250 ms (``faulthandler``,
which needs no GIL), to see who holds the GUI thread or the GIL.
"""

from __future__ import annotations

import argparse
import faulthandler
import time
from pathlib import Path

import dask.array as da
import napari
import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

from napari_cellunet._napari.samples import load_sample_image
from napari_cellunet._napari.segment_widget import SegmentWidget


def lazy_slide(size: int) -> da.Array:
    """The sample mirrored into a ``size`` x ``size`` dask array, one 1024² chunk at a time."""
    tile = load_sample_image().astype(np.uint16)
    tile = np.block([[tile, tile[:, ::-1]], [tile[::-1], tile[::-1, ::-1]]])
    reps = -(-size // min(tile.shape))
    return da.tile(da.from_array(tile, chunks=tile.shape), (reps, reps))[:size, :size].rechunk(1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--numpy", action="store_true", help="an in-memory numpy layer instead of dask")
    ap.add_argument("--stalls", type=Path, help="append all threads' tracebacks of each stall > 250 ms here")
    args = ap.parse_args()
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    data = lazy_slide(args.size)
    layer = viewer.add_image(data.compute() if args.numpy else data, name="slide", contrast_limits=(0, 220))
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    widget._image.value = layer
    if not args.numpy:
        widget.setting("chunk").value = args.chunk
    ticks = [time.perf_counter()]
    stalls = args.stalls.open("a") if args.stalls else None

    def tick():
        ticks.append(time.perf_counter())
        if stalls is not None:
            faulthandler.cancel_dump_traceback_later()
            faulthandler.dump_traceback_later(0.25, file=stalls)

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(20)
    t_start = time.perf_counter()
    worker = widget.run()
    if worker is None:
        raise SystemExit(f"run refused: {widget.status.value}")
    next_move, step = t_start, 0
    while time.perf_counter() - t_start < args.seconds and widget.worker is not None:
        app.processEvents()
        if time.perf_counter() >= next_move:  # pan and zoom like a user looking around
            step += 1
            viewer.camera.zoom = 0.05 * (1 + step % 4)
            viewer.camera.center = (args.size * (step % 5) / 5, args.size * (step % 3) / 3)
            next_move += 0.5
        time.sleep(0.005)
    status = widget.status.value
    t_cancel = time.perf_counter()
    widget.cancel()
    while widget.worker is not None and time.perf_counter() - t_cancel < 60:
        app.processEvents()
        time.sleep(0.005)
    cancel_s = time.perf_counter() - t_cancel
    timer.stop()
    faulthandler.cancel_dump_traceback_later()
    gaps = np.diff(ticks)
    kind = "numpy" if args.numpy else f"dask, chunk {args.chunk}"
    print(f"{args.size}² {kind} layer: {time.perf_counter() - t_start:.0f} s, "
          f"status before Cancel: {status!r}")
    print(f"event-loop gaps: max {gaps.max() * 1000:.0f} ms, 99th percentile {np.percentile(gaps, 99) * 1000:.0f} ms, "
          f"{int((gaps > 0.2).sum())} gaps > 200 ms of {len(gaps)} ticks; Cancel took {cancel_s:.2f} s; "
          f"layers after Cancel: {[lyr.name for lyr in viewer.layers]}")
    viewer.close()


if __name__ == "__main__":
    main()
