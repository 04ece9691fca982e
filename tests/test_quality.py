"""The per-image uncertainty: 0 when the network is sure, higher on an image it handles worse."""

import numpy as np

from napari_cellunet.inference import drive
from napari_cellunet.postprocess.quality import CHECK_ABOVE, per_unit, uncertainty
from napari_cellunet.segment import PredictOptions, segment
from napari_cellunet.stacks import iter_segment_stack


def test_uncertainty_bounds():
    sure = np.zeros((3, 20, 20), np.float32)
    sure[1, 5:15, 5:15] = 1
    sure[0] = 1 - sure[1]
    assert uncertainty(sure) < 0.01
    unsure = np.full((3, 20, 20), 1 / 3, np.float32)
    assert uncertainty(unsure) > 0.99
    assert uncertainty(np.stack([np.ones((8, 8)), np.zeros((8, 8)), np.zeros((8, 8))])) == 0.0  # no foreground
    assert per_unit(np.stack([sure, unsure]), 2) == [round(uncertainty(sure), 4), round(uncertainty(unsure), 4)]


def test_noise_raises_uncertainty_and_the_flag(bundled_model, sample):
    clean = segment(bundled_model, sample[None], PredictOptions(diameter=25))
    rng = np.random.default_rng(0)
    photons = rng.poisson(np.clip(sample - sample.min(), 0, None) / np.percentile(sample, 99.8) * 3 + 1)
    noisy = drive(iter_segment_stack(bundled_model, photons.astype(np.float32), "YX",
                                     options=PredictOptions(diameter=25)))
    u_clean = uncertainty(clean.probabilities[0])
    assert u_clean < CHECK_ABOVE < noisy.uncertainty[0], (u_clean, noisy.uncertainty)
    assert noisy.check == [True]
