"""Big and lazy layers in the viewer: segmented block by block in the worker, the viewer stays responsive."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from conftest import WAIT_MS, docked, run_and_wait

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


class LoopWatch:
    """The longest gap between ticks of a 20 ms Qt timer: how long the event loop was blocked."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.ticks = [time.perf_counter()]
        self.timer = QTimer()
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.timer.start(20)

    def stop(self) -> float:
        self.timer.stop()
        return float(np.diff(self.ticks).max()) if len(self.ticks) > 1 else 0.0


def big_lazy(sample, reps=4):
    import dask.array as da

    return da.from_array(np.tile(sample, (reps, reps)), chunks=512)


def test_lazy_layer_is_segmented_in_blocks_with_the_loop_free(viewer, qtbot, sample):
    from napari_cellunet._napari.segment_widget import SegmentWidget
    from napari_cellunet.models import load_model
    from napari_cellunet.segment import PredictOptions, segment

    lazy = big_lazy(sample)  # 2048², as dask: the GUI thread must never read it whole
    layer = viewer.add_image(lazy, name="big")
    w = docked(viewer, SegmentWidget)
    w.setting("diameter").value = 25
    w.setting("chunk").value = 1024
    watch = LoopWatch()
    run_and_wait(qtbot, w)
    gap = watch.stop()
    lab = w.result_layer(layer)
    assert type(lab.data).__module__.startswith("dask")  # shown lazily, from the block-wise zarr result
    assert lab.metadata["mode"] == "2d" and "blocks" in lab.metadata["note"]
    # the blocks' 256-px tile grid (chunked.plan.block_tile), in memory
    whole = segment(load_model(), np.asarray(lazy)[None], PredictOptions(diameter=25, tile=256, overlap=0.25))
    assert abs(lab.metadata["counts"][0] - whole.counts[0]) <= 0.005 * whole.counts[0] + 1
    assert len(lab.features) == lab.metadata["counts"][0]
    assert gap < 1.0, f"the event loop was blocked for {gap:.2f} s"  # see docs/performance.md (quiet machine)
    w.setting("seed_threshold").value = 0.8  # no probabilities kept for big images: say so, do not freeze
    assert "next Run" in w.status.value and w.worker is None


def test_cancel_a_big_run_within_two_seconds(viewer, qtbot, sample):
    from napari_cellunet._napari.segment_widget import SegmentWidget

    layer = viewer.add_image(big_lazy(sample, reps=8), name="bigger")  # 4096²
    w = docked(viewer, SegmentWidget)
    w.setting("chunk").value = 512
    worker = w.run()
    # "block 3/64": one count (the worker's), not the progress total appended again
    qtbot.waitUntil(lambda: re.fullmatch(r"block \d+/\d+", w.status.value) is not None, timeout=WAIT_MS)
    t0 = time.perf_counter()
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        w.cancel()
    assert time.perf_counter() - t0 < 2.0 and w.status.value == "cancelled"
    assert [lyr.name for lyr in viewer.layers] == [layer.name]
