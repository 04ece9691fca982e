"""Segment widget on stacks in a real viewer: z-stack -> one 3D Labels layer, time-lapse -> counts dock."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd
import pytest
from conftest import docked, fake_segmenter, layers_of, run_and_wait, set_and_relabel

pytestmark = pytest.mark.gui

TIMELAPSE_DIAMETER = 18  # px, given so the test skips the size estimate ("auto" on this sample: test_stacks.py)


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def segment_widget(viewer):
    from napari_cellunet._napari.segment_widget import SegmentWidget

    return docked(viewer, SegmentWidget)


def add_sample(viewer, make):
    (data, kwargs, _), = make()
    return viewer.add_image(data, **kwargs)


def counts_docks(viewer):
    return [name for name in viewer.window.dock_widgets if name.endswith(" counts")]


def test_zstack_gives_one_3d_labels_layer(viewer, qtbot):
    from napari_cellunet._napari.samples import sample_nuclei_3d

    image = add_sample(viewer, sample_nuclei_3d)
    w = segment_widget(viewer)
    assert w._image.value == image
    assert w._axes.value == "ZYX" and not w._channel.enabled
    run_and_wait(qtbot, w)
    [lab] = layers_of(viewer, "Labels")
    assert lab.data.shape == image.data.shape and lab.ndim == 3
    assert tuple(lab.scale) == pytest.approx(tuple(image.scale))
    n = lab.metadata["counts"][0]
    assert lab.metadata["mode"] == "3d" and lab.metadata["axes"] == "ZYX" and len(lab.metadata["counts"]) == 1
    assert 3 <= n <= 40, n
    assert len(np.unique(lab.data)) - 1 == n and len(lab.features) == n
    assert "centroid_z" in lab.features
    assert w.result.value == f"{n} nuclei (3D)"
    assert counts_docks(viewer) == [] and len(w.counts_table) == 1  # one volume: no per-frame dock

    w._add_points.value = True  # turned on after the run: points for the result shown
    pts = w.points_layer(image)
    assert pts is not None and pts.data.shape == (n, 3) and tuple(pts.scale) == pytest.approx(tuple(image.scale))


def test_timelapse_counts_table(viewer, qtbot, tmp_path):
    from napari_cellunet._napari.samples import sample_timelapse_2d

    truth = pd.read_csv(resources.files("napari_cellunet") / "data" / "timelapse_2d_counts.csv")["count"]
    image = add_sample(viewer, sample_timelapse_2d)
    w = segment_widget(viewer)
    assert w._axes.value == "TYX"
    w.setting("diameter").value = TIMELAPSE_DIAMETER
    w._add_points.value = True
    run_and_wait(qtbot, w)

    lab = w.result_layer(image)
    assert lab.data.shape == image.data.shape and lab.metadata["mode"] == "frames"
    table = w.counts_table
    assert list(table["frame"]) == list(range(12)) and "slice" not in table
    assert {"count", "mean_area_px"} <= set(table.columns)
    close = (abs(table["count"] - truth) <= 0.2 * truth).sum()
    assert close >= 9, f"counts {table['count'].tolist()} vs truth {truth.tolist()}"
    assert lab.metadata["counts"] == table["count"].tolist()
    assert len(np.unique(lab.data)) - 1 == table["count"].sum()  # ids unique across frames
    assert set(lab.features["frame"]) == set(range(12))

    pts = w.points_layer(image)
    assert pts is not None and pts.data.shape == (table["count"].sum(), 3)
    assert set(pts.data[:, 0].astype(int)) == set(range(12))  # frame index first

    assert counts_docks(viewer) == ["timelapse counts"]
    dock = w.counts_dock(image)
    assert dock.counts is table and dock._table.shape[0] == 12
    out = dock.export(tmp_path / "counts")
    assert out == tmp_path / "counts.csv" and len(pd.read_csv(out)) == 12

    set_and_relabel(qtbot, w, "seed_threshold", 0.9, 1)  # threshold change: from the cache, same dock, same layers
    assert w.relabel_count == 1 and w.counts_table is not table
    assert counts_docks(viewer) == ["timelapse counts"] and w.counts_dock(image) is dock
    assert dock.counts is w.counts_table
    assert len(pts.data) == w.counts_table["count"].sum()
    assert lab.metadata["merge_over_time"] is True
    rejoined = w.counts_table["count"].sum()
    set_and_relabel(qtbot, w, "merge_over_time", False, 2)  # keep one-frame splits apart: never fewer objects
    assert w.relabel_count == 2 and lab.metadata["merge_over_time"] is False
    assert w.counts_table["count"].sum() >= rejoined
    run_and_wait(qtbot, w)  # a re-run reuses dock, labels and points layers
    assert counts_docks(viewer) == ["timelapse counts"]
    assert len(layers_of(viewer, "Labels")) == 1 and len(layers_of(viewer, "Points")) == 1


def test_channel_selector_czyx(viewer, qtbot, monkeypatch):
    import napari_cellunet.stacks as stacks

    calls = []
    monkeypatch.setattr(stacks, "iter_segment", fake_segmenter(calls))
    data = np.zeros((2, 5, 96, 96), np.float32)
    data[1] = 7
    image = viewer.add_image(data, name="czyx", metadata={"axes": "CZYX"}, scale=(1, 0.5, 0.5, 0.5))
    w = segment_widget(viewer)
    assert w._axes.value == "CZYX" and w._channel.enabled and w._channel.max == 1
    w._channel.value = 1
    run_and_wait(qtbot, w)
    assert calls == [((5, 96, 96), [7.0])]  # channel 1, all 5 planes in one pass
    lab = w.result_layer(image)
    assert lab.data.shape == (5, 96, 96) and tuple(lab.scale) == (0.5, 0.5, 0.5)
    assert lab.metadata["mode"] == "3d" and lab.metadata["counts"] == [1]  # one 3D object, not 5
    assert "channel 1 of 2" in w.status.value


@pytest.mark.parametrize("shape, axes, message", [
    ((2, 2, 3, 64, 64), None, "unsupported axes"),  # 5D without metadata
    ((3, 4, 64, 64), "ABYX", "unsupported axes"),
    ((3, 4, 64, 64), "ZYX", "letters"),
    ((4, 64, 64), "YXZ", "unsupported axes"),
])
def test_bad_axes_give_message(viewer, shape, axes, message):
    viewer.add_image(np.ones(shape, np.float32), name="bad")
    w = segment_widget(viewer)
    if axes is not None:
        w._axes.value = axes
    assert w.run() is None
    assert message in w.status.value
    assert w.worker is None and len(viewer.layers) == 1


def test_axes_follow_the_selected_layer(viewer):
    tyx = viewer.add_image(np.ones((3, 64, 64)), name="t", axis_labels=("t", "y", "x"))
    plain = viewer.add_image(np.ones((2, 3, 64, 64)), name="plain")
    rgb = viewer.add_image(np.ones((64, 64, 3)), name="rgb", rgb=True)
    w = segment_widget(viewer)
    for layer, axes in ((tyx, "TYX"), (plain, "QQYX"), (rgb, "YX")):
        w._image.value = layer
        assert w._axes.value == axes
