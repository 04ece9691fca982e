"""napari widgets, driven through their methods (the Run button path: a real thread_worker)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, WAIT_MS, docked, fake_segmenter, layers_of, run_and_wait, set_and_relabel

from napari_cellunet.settings import InstanceParams, PredictOptions

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def labels_layers(viewer):
    return layers_of(viewer, "Labels")


# --------------------------------------------------------------------------- SegmentWidget
def test_segment_sample_counts_nuclei(viewer, qtbot, sample):
    from napari_cellunet._napari.samples import SAMPLE_COUNT
    from napari_cellunet._napari.segment_widget import SegmentWidget
    from napari_cellunet.models import DEFAULT_MODEL, load_model

    image = viewer.add_image(sample.copy(), name="nuclei", scale=(0.5, 0.5), translate=(10, 20))
    w = docked(viewer, SegmentWidget)
    assert w._image.value == image
    assert w._model.value == DEFAULT_MODEL
    defaults = load_model(DEFAULT_MODEL).instance_params
    assert w.params().prob_threshold == pytest.approx(defaults.prob_threshold)
    assert w.params().seed_threshold == pytest.approx(defaults.seed_threshold)

    run_and_wait(qtbot, w)
    lab = viewer.layers["nuclei labels"]
    n = int(lab.metadata["counts"][0])
    assert abs(n - SAMPLE_COUNT) <= 0.1 * SAMPLE_COUNT, f"{n} nuclei found, expected about {SAMPLE_COUNT}"
    assert lab.data.shape == sample.shape
    assert len(np.unique(lab.data)) - 1 == n
    assert tuple(lab.scale) == (0.5, 0.5) and tuple(lab.translate) == (10, 20)
    assert len(lab.features) == n
    assert lab.features["area_phys"].iloc[0] == pytest.approx(lab.features["area_px"].iloc[0] * 0.25)
    assert lab.features["mean_intensity"].notna().all()
    assert lab.metadata["source_layer"] == "nuclei" and lab.metadata["model"] == DEFAULT_MODEL
    assert lab.metadata["diameter"] > 0
    assert w.result.value == f"{n} nuclei"
    np.testing.assert_array_equal(image.data, sample)
    assert not w._cancel_btn.enabled and w._run_btn.enabled


def test_threshold_change_relabels_from_cache(viewer, qtbot, sample, monkeypatch):
    import napari_cellunet._napari.segment_widget as widget_module
    import napari_cellunet.stacks as stacks

    viewer.add_image(sample, name="nuclei")
    w = docked(viewer, widget_module.SegmentWidget)
    run_and_wait(qtbot, w)
    lab = viewer.layers["nuclei labels"]
    before = lab.data.copy()
    n_before = lab.metadata["counts"][0]

    def no_network(*args, **kwargs):
        raise AssertionError("the network must not run again for a threshold change")

    monkeypatch.setattr(stacks, "iter_segment", no_network)
    set_and_relabel(qtbot, w, "seed_threshold", 0.85, 1)  # stricter seeds: fewer splits
    assert w.relabel_count == 1
    assert w.worker is None
    assert viewer.layers["nuclei labels"] is lab and len(labels_layers(viewer)) == 1
    assert lab.metadata["seed_threshold"] == pytest.approx(0.85)
    assert not np.array_equal(lab.data, before)
    n_seed = lab.metadata["counts"][0]
    assert w.result.value == f"{n_seed} nuclei" and len(lab.features) == n_seed

    big = int(lab.features["area_px"].median()) + 1
    set_and_relabel(qtbot, w, "min_size", big, 2)  # drops the smaller half
    assert w.relabel_count == 2
    n_big = lab.metadata["counts"][0]
    assert 0 < n_big < min(n_before, n_seed)
    assert lab.features["area_px"].min() >= big

    dimmest = lab.features["mean_intensity"].min()
    set_and_relabel(qtbot, w, "min_brightness", 0.8, 3)  # only objects nearly as bright as the bright ones stay
    assert w.relabel_count == 3
    n_bright = lab.metadata["counts"][0]
    assert 0 < n_bright < n_big and lab.metadata["min_brightness"] == pytest.approx(0.8)
    assert lab.features["mean_intensity"].min() > dimmest

    set_and_relabel(qtbot, w, "merge_fragments", 0.0, 4)  # merging off: re-labelled from the cache, never fewer
    assert w.relabel_count == 4 and lab.metadata["merge_fragments"] == 0
    assert lab.metadata["counts"][0] >= n_bright
    n_merge_off = lab.metadata["counts"][0]

    set_and_relabel(qtbot, w, "min_confidence", 0.99, 5)  # unsure objects dropped: never more objects
    assert w.relabel_count == 5 and lab.metadata["min_confidence"] == pytest.approx(0.99)
    assert lab.metadata["counts"][0] <= n_merge_off
    n_conf = lab.metadata["counts"][0]

    set_and_relabel(qtbot, w, "join_weak_borders", 0.95, 6)  # join even half-seen borders: never more objects
    assert w.relabel_count == 6 and lab.metadata["join_weak_borders"] == pytest.approx(0.95)
    assert lab.metadata["counts"][0] <= n_conf

    w.setting("tile").value = 128  # probabilities depend on the tile: the cache no longer applies
    w.setting("prob_threshold").value = 0.3
    assert w.worker is None and w.relabel_count == 6


def test_cancel_leaves_layers_unchanged(viewer, qtbot, sample):
    from napari_cellunet._napari.segment_widget import SegmentWidget

    big = np.tile(sample, (4, 4))
    image = viewer.add_image(big, name="big")
    user = viewer.add_labels(np.zeros(big.shape, np.uint8), name="big labels")
    w = docked(viewer, SegmentWidget)
    worker = w.run()
    assert w._cancel_btn.enabled and not w._run_btn.enabled
    qtbot.waitUntil(lambda: "predicting" in w.status.value, timeout=WAIT_MS)
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        w.cancel()
    assert w.status.value == "cancelled"
    assert [lyr.name for lyr in viewer.layers] == ["big", "big labels"]
    assert viewer.layers["big labels"] is user and not user.data.any()
    np.testing.assert_array_equal(image.data, big)
    assert w._run_btn.enabled and not w._cancel_btn.enabled
    assert w.relabel() is False  # nothing cached from a cancelled run


@pytest.mark.parametrize("data, message", [
    (np.zeros((2, 3, 64, 64), np.float32), "unsupported axes"),
    (np.zeros((2, 2, 2, 2, 8, 8), np.float32), "unsupported axes"),
    (np.full((64, 64), np.nan, np.float32), "no finite values"),
    (np.full((64, 64), np.inf, np.float32), "no finite values"),
    (np.zeros((2, 2), np.float32), "too small"),
    (np.zeros((3, 1, 64), np.float32), "too small"),
])
def test_bad_input_gives_message(viewer, qtbot, data, message):
    from napari_cellunet._napari.segment_widget import SegmentWidget

    viewer.add_image(data, name="bad")
    w = docked(viewer, SegmentWidget)
    assert w.run() is None
    assert message in w.status.value
    assert w.worker is None and len(viewer.layers) == 1


def test_worker_error_is_a_message(viewer, qtbot, monkeypatch):
    import napari_cellunet._napari.segment_widget as widget_module
    import napari_cellunet.stacks as stacks

    def broken(model, data, options=None, params=None, slice_labels=True):
        yield from ()
        raise RuntimeError("out of memory")

    monkeypatch.setattr(stacks, "iter_segment", broken)
    viewer.add_image(np.ones((64, 64), np.float32), name="img")
    w = docked(viewer, widget_module.SegmentWidget)
    run_and_wait(qtbot, w)
    assert w.status.value == "segmentation failed: out of memory"
    assert len(viewer.layers) == 1 and w._run_btn.enabled


def test_rgb_image_is_converted(viewer, qtbot, sample):
    from napari_cellunet._napari.segment_widget import SegmentWidget

    crop = sample[:192, :192].astype(np.float32)
    rgb = np.stack([crop, crop * 0.5, crop * 0.2], axis=-1) / crop.max()
    image = viewer.add_image(rgb, name="rgb", rgb=True, scale=(2, 2))
    w = docked(viewer, SegmentWidget)
    run_and_wait(qtbot, w)
    lab = viewer.layers["rgb labels"]
    assert lab.data.shape == (192, 192)
    assert tuple(lab.scale) == (2, 2)
    assert lab.metadata["counts"][0] > 5
    assert "grey" in w.status.value
    assert image.data.shape == (192, 192, 3)


def test_stack_gets_per_slice_counts(viewer, qtbot, sample, monkeypatch):
    import napari_cellunet._napari.segment_widget as widget_module
    import napari_cellunet.stacks as stacks

    calls = []
    monkeypatch.setattr(stacks, "iter_segment", fake_segmenter(calls))
    stack = np.stack([sample[:128, :128], sample[128:256, :128], sample[:128, 128:256]])
    viewer.add_image(stack, name="stack", scale=(3, 0.5, 0.5))
    w = docked(viewer, widget_module.SegmentWidget)
    run_and_wait(qtbot, w)
    lab = viewer.layers["stack labels"]
    assert [c[0] for c in calls] == [(3, 128, 128)]
    assert lab.data.shape == stack.shape and tuple(lab.scale) == (3, 0.5, 0.5)
    assert lab.metadata["counts"] == [1, 1, 1]
    assert sorted(np.unique(lab.data)) == [0, 1, 2, 3]  # every object of the stack has its own id
    assert list(lab.features["slice"]) == [0, 1, 2]
    assert w.result.value == "3 nuclei in 3 slices (1, 1, 1)"


def test_result_goes_to_source_layer(viewer, qtbot, sample):
    from napari_cellunet._napari.segment_widget import SegmentWidget

    nuclei = viewer.add_image(sample, name="nuclei")
    other = viewer.add_image(sample[:64, :64], name="other")
    w = docked(viewer, SegmentWidget)
    w._image.value = nuclei
    worker = w.run()
    w._image.value = other  # switched while the worker runs
    assert w.worker is worker
    qtbot.waitUntil(lambda: w.worker is None, timeout=WAIT_MS)
    assert [lyr.name for lyr in labels_layers(viewer)] == ["nuclei labels"]
    lab = viewer.layers["nuclei labels"]
    assert lab.data.shape == sample.shape and lab.metadata["source_layer"] == "nuclei"
    assert w.result_layer(nuclei) == lab and w.result_layer(other) is None
    assert w.relabel() is False  # the cache belongs to "nuclei", not the selected "other"


def test_user_layer_is_not_overwritten(viewer, qtbot, sample, monkeypatch):
    import napari_cellunet._napari.segment_widget as widget_module
    import napari_cellunet.stacks as stacks

    calls = []
    monkeypatch.setattr(stacks, "iter_segment", fake_segmenter(calls))
    image = viewer.add_image(sample, name="nuclei")
    painted = np.zeros(sample.shape, np.uint8)
    painted[100:120, 100:120] = 7
    user = viewer.add_labels(painted.copy(), name="nuclei labels")
    w = docked(viewer, widget_module.SegmentWidget)
    w._image.value = image
    run_and_wait(qtbot, w)
    ours = w.result_layer(image)
    assert ours is not None and ours != user and ours.name != "nuclei labels"
    np.testing.assert_array_equal(user.data, painted)
    assert ours.metadata["counts"] == [1]

    run_and_wait(qtbot, w)  # a second run updates the widget's own layer, no third layer
    assert len(calls) == 2
    assert len(labels_layers(viewer)) == 2 and w.result_layer(image) == ours
    np.testing.assert_array_equal(user.data, painted)


# --------------------------------------------------------------------------- CountWidget
def test_count_painted_labels_and_export(viewer, tmp_path):
    from napari_cellunet._napari.count_widget import CountWidget

    yy, xx = np.indices((100, 120))
    painted = np.zeros((100, 120), np.int32)
    painted[(yy - 30) ** 2 + (xx - 30) ** 2 <= 10**2] = 1
    painted[(yy - 60) ** 2 + (xx - 80) ** 2 <= 8**2] = 2
    painted[70:90, 10:30] = 5
    image = viewer.add_image(np.where(painted > 0, 100.0, 0.0), name="img")
    layer = viewer.add_labels(painted.copy(), name="painted", scale=(2, 2))
    w = docked(viewer, CountWidget)
    w._labels.value = layer
    assert w.count() == 3
    assert w.result.value == "3 objects"
    assert w.table["area_px"].tolist() == [int((painted == k).sum()) for k in (1, 2, 5)]
    assert w.table["area_phys"].tolist() == [4 * a for a in w.table["area_px"]]
    assert w._table.shape[0] == 3
    np.testing.assert_array_equal(layer.data, painted)  # the user's layer is not modified

    w._intensity.value = image
    w.count()
    assert w.table["mean_intensity"].tolist() == [100.0] * 3

    assert w.export() is None and "CSV file" in w.status.value  # no path chosen yet
    w._path.value = tmp_path / "counts"
    out = w.export()
    assert out == tmp_path / "counts.csv"
    csv = pd.read_csv(out)
    assert len(csv) == 3 and list(csv["label"]) == [1, 2, 5]
    (tmp_path / "a_file").write_text("")
    assert w.export(tmp_path / "a_file" / "counts") is None and "could not write" in w.status.value

    w._intensity.value = viewer.add_image(np.zeros((10, 10)), name="small")
    assert w.count() is None and "shape" in w.status.value


def test_count_3d_labels(viewer):
    import tifffile

    from napari_cellunet._napari.count_widget import CountWidget

    mask = tifffile.imread(DATA / "mask3d.tif")
    layer = viewer.add_labels(mask, name="mask3d")
    w = docked(viewer, CountWidget)
    w._labels.value = layer
    assert w.count() == 51
    assert len(w.table) == 51 and "centroid_z" in w.table
    assert w.result.value == "51 objects (3D)"


def test_settings_rows_come_from_the_fields(viewer):
    """Every widget-visible setting has a row with its declared range; the model's defaults are restored."""
    from napari_cellunet._napari.segment_widget import SegmentWidget
    from napari_cellunet.settings import specs

    w = docked(viewer, SegmentWidget)
    for cls in (InstanceParams, PredictOptions):
        for name, spec in specs(cls).items():
            if spec.widget:
                row = w.setting(name)
                assert row.label == spec.label or getattr(row, "text", "") == spec.label
                if spec.low is not None:
                    assert (row.min, row.max) == pytest.approx((spec.low, spec.high))
    model_default = w.params().seed_threshold
    w.setting("seed_threshold").value = 0.9
    assert w.params().seed_threshold == pytest.approx(0.9)
    w._restore_btn.changed.emit(True)
    assert w.params().seed_threshold == pytest.approx(model_default)


def test_count_labels_per_frame_writes_features(viewer):
    from napari_cellunet._napari.count_widget import CountWidget

    frames = np.zeros((3, 40, 40), np.int32)  # 2 cells in each of 3 frames
    frames[:, 5:10, 5:10], frames[:, 20:30, 20:30] = 1, 2
    layer = viewer.add_labels(frames, name="tracked", axis_labels=("t", "y", "x"))
    viewer.layers.selection.active = layer
    w = docked(viewer, CountWidget)
    assert w._labels.value is layer and w._axes.value == "TYX"  # the active layer, its axes
    assert w.count() == 6
    assert w.result.value == "6 objects in 3 frames (2, 2, 2)"
    assert list(layer.features["frame"]) == [0, 0, 1, 1, 2, 2] and "area_px" in layer.features
    np.testing.assert_array_equal(layer.data, frames)  # the labels are not touched
    w._axes.value = "ZYX"
    assert w.count() == 2 and w.result.value == "2 objects (3D)"


def test_worker_errors_are_logged_with_traceback(viewer, qtbot, monkeypatch, tmp_path):
    import napari_cellunet.stacks as stacks
    from napari_cellunet._napari.segment_widget import SegmentWidget
    from napari_cellunet.log import log_path

    def broken(model, data, options=None, params=None, slice_labels=True):
        yield from ()
        raise RuntimeError("something deep broke")

    monkeypatch.setattr(stacks, "iter_segment", broken)
    viewer.add_image(np.ones((64, 64), np.float32), name="img")
    w = docked(viewer, SegmentWidget)
    run_and_wait(qtbot, w)
    assert w.status.value == "segmentation failed: something deep broke"
    text = log_path().read_text()
    assert "Traceback" in text and "something deep broke" in text and "broken" in text


def test_active_image_is_preselected_and_plot_follows_the_theme(viewer, qtbot, monkeypatch):
    import napari_cellunet.stacks as stacks
    from napari_cellunet._napari.counts_dock import theme_colours
    from napari_cellunet._napari.segment_widget import SegmentWidget

    monkeypatch.setattr(stacks, "iter_segment", fake_segmenter([]))
    viewer.add_image(np.zeros((64, 64), np.float32), name="first")
    movie = viewer.add_image(np.ones((3, 96, 96), np.float32), name="movie", axis_labels=("t", "y", "x"))
    viewer.layers.selection.active = movie
    w = docked(viewer, SegmentWidget)
    assert w._image.value is movie and w._axes.value == "TYX"
    run_and_wait(qtbot, w)
    dock = w.counts_dock(movie)
    from matplotlib.colors import to_hex

    assert to_hex(dock.figure.get_facecolor()) == to_hex(theme_colours(viewer)["background"])
    viewer.theme = "light"
    assert to_hex(dock.figure.get_facecolor()) == to_hex(theme_colours(viewer)["background"])
    assert theme_colours(viewer)["background"] != theme_colours(None)["background"]


def test_source_removed_mid_run_discards_the_result_quietly(viewer, qtbot, sample):
    """The bottom (source) layer removed while the worker runs: a status line, no notification, no layer."""
    from napari_cellunet._napari.segment_widget import SegmentWidget

    source = viewer.add_image(np.tile(sample, (2, 2)), name="nuclei")
    viewer.add_image(np.zeros((64, 64)), name="top")
    w = docked(viewer, SegmentWidget)
    w._image.value = source
    w.run()
    qtbot.waitUntil(lambda: "predicting" in w.status.value, timeout=WAIT_MS)
    viewer.layers.remove(source)
    qtbot.waitUntil(lambda: w.worker is None, timeout=WAIT_MS)
    viewer.window._qt_window.resize(1100, 700)  # a redraw after the removal must not crash
    qtbot.wait(200)
    assert "was removed during the run" in w.status.value
    assert [lyr.name for lyr in viewer.layers] == ["top"] and w._run_btn.enabled
    assert w.relabel() is False


def test_run_pressed_twice_starts_one_worker(viewer, qtbot, sample):
    from napari_cellunet._napari.segment_widget import SegmentWidget

    viewer.add_image(sample, name="nuclei")
    w = docked(viewer, SegmentWidget)
    first = w.run()
    assert first is not None and w.run() is None and w.status.value == "already running"
    qtbot.waitUntil(lambda: w.worker is None, timeout=WAIT_MS)
    assert len(layers_of(viewer, "Labels")) == 1


@pytest.mark.parametrize("dtype", [bool, np.float16, np.int16, np.uint32])
def test_odd_layer_dtypes_segment(viewer, qtbot, sample, dtype):
    from napari_cellunet._napari.segment_widget import SegmentWidget

    crop = sample[:128, :128].astype(np.float64)
    data = (crop > crop.mean()) if dtype is bool else (crop - (3000 if dtype is np.int16 else 0)).astype(dtype)
    viewer.add_image(data, name="odd")
    w = docked(viewer, SegmentWidget)
    w.setting("diameter").value = 25
    run_and_wait(qtbot, w)
    assert w.result_layer(viewer.layers["odd"]).metadata["counts"][0] > 0, w.status.value
