"""The Train widget fine-tunes on image + Labels layer pairs and the new model appears at once."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def test_train_widget_fine_tunes_and_saves(viewer, qtbot, sample, sample_mask):
    from napari_cellunet._napari.train_widget import TrainWidget
    from napari_cellunet._napari.segment_widget import SegmentWidget
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
