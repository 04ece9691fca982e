"""The Train widget fine-tunes on image + Labels layer pairs and the new model appears at once."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def test_train_widget_fine_tunes_and_saves(viewer, qtbot, sample, sample_mask):
    from napari_cellunet._napari.segment_widget import SegmentWidget
    from napari_cellunet._napari.train_widget import TrainWidget
    from napari_cellunet.models import load_model, model_names

    img = viewer.add_image(sample[:256, :256], name="crop")
    lab = viewer.add_labels(sample_mask[:256, :256].astype(np.int32), name="corrected")
    empty = viewer.add_labels(np.zeros((256, 256), np.int32), name="empty")
    stack = viewer.add_image(np.stack([sample[:128, :128]] * 3), name="stack")
    stack_lab = np.zeros((3, 128, 128), np.int32)
    stack_lab[1] = sample_mask[:128, :128]
    stack_labels = viewer.add_labels(stack_lab, name="stack labels")
    seg = SegmentWidget(viewer)
    w = TrainWidget(viewer)

    assert not w.add_pair(img, empty) and "no labelled objects" in w.status.value
    assert not w.add_pair(stack, lab) and "do not match" in w.status.value
    assert w.add_pair(img, lab) and w.add_pair(stack, stack_labels)  # stack: only slice 1 is used
    w._name.value = "my-nuclei"
    w._minutes.value = 0.1
    assert w._objects.value == "as the start model"
    worker = w.train()
    assert worker is not None, w.status.value
    qtbot.waitUntil(lambda: w.worker is None, timeout=180_000)
    assert "saved model 'my-nuclei'" in w.status.value
    assert "my-nuclei" in model_names() and "my-nuclei" in seg._model.choices
    model = load_model("my-nuclei")
    assert model.meta["training_command"].startswith("napari Train widget: 1 train / 1 val")
    assert model.diameter == load_model("nuclei-fluo-2d").diameter and not model.invert
    assert "step" in w.result.value
    # dark objects on a light background: the new model inverts its input
    w._objects.value = "dark on light (brightfield, H&E)"
    w._name.value = "my-brightfield"
    w._minutes.value = 0.05
    assert w.train() is not None, w.status.value
    qtbot.waitUntil(lambda: w.worker is None, timeout=180_000)
    assert load_model("my-brightfield").invert


def test_train_widget_refuses_bundled_name_and_cancels(viewer, qtbot, sample, sample_mask):
    from napari_cellunet._napari.train_widget import TrainWidget
    from napari_cellunet.models import model_names

    img = viewer.add_image(sample[:256, :256], name="crop")
    lab = viewer.add_labels(sample_mask[:256, :256].astype(np.int32), name="corrected")
    w = TrainWidget(viewer)
    assert w.add_pair(img, lab)
    w._name.value = "nuclei-fluo-2d"
    assert w.train() is None and "bundled" in w.status.value
    w._name.value = "cancel-me"
    w._minutes.value = 10
    worker = w.train()
    assert worker is not None
    w.cancel()
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    assert "cancel" in w.status.value and "cancel-me" not in model_names()


def test_export_panel_writes_a_package_that_imports_back(viewer, qtbot, tmp_path):
    pytest.importorskip("bioimageio.spec")
    from napari_cellunet._napari.train_widget import TrainWidget
    from napari_cellunet.export import import_bioimageio
    from napari_cellunet.models import load_model

    w = TrainWidget(viewer)
    assert w.exporter.export(tmp_path / "out") is not None
    qtbot.waitUntil(lambda: w.exporter._worker is None, timeout=300_000)
    [package] = list((tmp_path / "out").glob("*.zip"))
    assert "exported to" in w.exporter.status.value and package.stat().st_size > 1_000_000
    path = import_bioimageio(package, name="shared-copy")
    assert load_model(path).meta["instance_params"] == load_model("nuclei-fluo-2d").meta["instance_params"]


def test_layers_menu_commands_run_on_the_selected_layer(viewer, qtbot, sample):
    from napari._app_model import get_app_model

    from napari_cellunet._napari.count_widget import CountWidget
    from napari_cellunet._napari.segment_widget import SegmentWidget

    image = viewer.add_image(sample[:192, :192], name="crop")
    viewer.layers.selection.active = image
    app = get_app_model()
    segment = app.commands.execute_command("napari-cellunet.segment_active_layer").result()
    assert isinstance(segment, SegmentWidget) and segment._image.value is image
    qtbot.waitUntil(lambda: segment.worker is None, timeout=300_000)
    labels = segment.result_layer(image)
    assert labels is not None and labels.metadata["counts"][0] > 0
    viewer.layers.selection.active = labels
    count = app.commands.execute_command("napari-cellunet.count_active_layer").result()
    assert isinstance(count, CountWidget) and count._labels.value.unique_id == labels.unique_id
    assert count.table is not None and len(count.table) == labels.metadata["counts"][0]
    menus = {m.command.id for menu in ("napari/layers/segment", "napari/layers/measure")
             for m in app.menus.get_menu(menu)}
    assert {"napari-cellunet.segment_active_layer", "napari-cellunet.count_active_layer"} <= menus
