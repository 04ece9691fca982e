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
    from napari_cellunet._sample_data import load_sample_image

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
