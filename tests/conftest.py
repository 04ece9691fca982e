"""Shared fixtures: user models go to a temporary folder; the bundled model is loaded once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _user_model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLUNET_MODEL_DIR", str(tmp_path / "user-models"))


@pytest.fixture(scope="session")
def bundled_model():
    from napari_cellunet.models import DEFAULT_MODEL, load_model

    return load_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def sample():
    from napari_cellunet._napari.samples import load_sample_image

    return load_sample_image()


@pytest.fixture(scope="session")
def sample_mask():
    import tifffile

    return tifffile.imread(DATA / "nuclei_2d_mask.tif")


def disc_image(shape=(96, 96), centers=((48, 38), (48, 60)), radius=11, value=200.0, noise=3.0, seed=0):
    """Bright discs on a dark background (plus noise) and their instance labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centers, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i
    image = np.where(labels > 0, value, 10.0) + rng.normal(0, noise, shape)
    return image.astype(np.float32), labels


@pytest.fixture(autouse=True)
def _log_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLUNET_LOG_DIR", str(tmp_path / "logs"))


# --------------------------------------------------------------------------- napari helpers (gui tests)
WAIT_MS = 180_000
WIDGET_TITLES = {"SegmentWidget": "Segment & count", "CountWidget": "Count labels", "TrainWidget": "Train (fine-tune)"}


def docked(viewer, cls):
    """Dock a widget the way napari does from the Plugins menu (npe2 injects a viewer proxy)."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-cellunet", WIDGET_TITLES[cls.__name__])
    assert isinstance(widget, cls)
    return widget


def run_and_wait(qtbot, widget):
    """Press Run and wait until the worker (and any re-labelling) has finished."""
    worker = widget.run()
    assert worker is not None, widget.status.value
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    return worker


def set_and_relabel(qtbot, widget, name: str, value, count: int) -> None:
    """Change a threshold and wait for the re-labelling from the cache (the ``count``-th) to be shown."""
    widget.setting(name).value = value
    qtbot.waitUntil(lambda: widget.relabel_count >= count and widget.worker is None, timeout=WAIT_MS)


def layers_of(viewer, kind: str):
    return [lyr for lyr in viewer.layers if lyr.__class__.__name__ == kind]


def fake_segmenter(calls):
    """Stand-in for iter_segment: no network; a disc at (40, 40) in every slice. Records (shape, values)."""
    from napari_cellunet.inference import Progress
    from napari_cellunet.segment import Segmentation, labels_from_probabilities

    def fake(model, data, options=None, params=None, slice_labels=True):
        calls.append((data.shape, np.unique(data).tolist()[:4]))
        yield Progress(0, 1, "predicting")
        probs = np.zeros((len(data), 3, *data.shape[1:]), np.float32)
        yy, xx = np.indices(data.shape[1:])
        disc = (yy - 40) ** 2 + (xx - 40) ** 2 < 15**2
        probs[:, 1], probs[:, 0] = disc, ~disc
        return Segmentation(probs, labels_from_probabilities(probs, params, 20.0), 20.0, params)

    return fake


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """One OpenVINO cache for the session (exports are reused, as between a user's runs)."""
    monkeypatch.setenv("CELLUNET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
