import numpy as np
import pytest

import napari_cellunet.segment as segment_module
from napari_cellunet.inference import drive, resize_spatial
from napari_cellunet.segment import PredictOptions, median_diameter, segment


@pytest.mark.parametrize("zoom", [0.4, 1.0, 3.0])
def test_auto_diameter_follows_the_magnification(bundled_model, sample, sample_mask, zoom):
    """~11-px, ~27-px and ~80-px nuclei: "auto" finds their size, so the counts stay the same."""
    image = sample.astype(np.float32)
    if zoom != 1.0:
        shape = tuple(int(round(s * zoom)) for s in image.shape)
        image = resize_spatial(image[None, None], shape)[0, 0]
    truth = zoom * median_diameter(sample_mask)
    result = segment(bundled_model, image[None], PredictOptions(diameter="auto"))
    assert abs(result.diameter / truth - 1) < 0.15
    n_true = len(np.unique(sample_mask)) - 1
    assert abs(result.counts[0] - n_true) <= 0.15 * n_true


def test_estimate_refines_only_objects_far_from_the_trained_size(bundled_model, sample, monkeypatch):
    """A last pass at the implied scale only when the accepted scale saw objects off the trained size."""
    scales = []
    predict = segment_module._predict_at

    def counting(model, images, scale, opts, resize_back=True):
        scales.append(scale)
        return (yield from predict(model, images, scale, opts, resize_back))

    monkeypatch.setattr(segment_module, "_predict_at", counting)
    x = segment_module.normalize_for_model(bundled_model, sample[None].astype(np.float32))
    est = drive(segment_module.iter_estimate_diameter(bundled_model, x, PredictOptions(),
                                                      bundled_model.instance_params))
    assert set(scales) <= set(segment_module.ESTIMATION_SCALES)  # ~27-px nuclei, seen at 13.5 px at 1/2: no refinement
    monkeypatch.setattr(segment_module, "REFINE_BEYOND", 1.0)
    scales.clear()
    assert drive(segment_module.iter_estimate_diameter(bundled_model, x, PredictOptions(),
                                                       bundled_model.instance_params)) > 0
    assert scales[-1] == pytest.approx(bundled_model.diameter / est)  # always refined


def test_scale_accepted_rejects_coarse_objects_the_next_scale_does_not_confirm():
    from napari_cellunet.segment import scale_accepted

    # a fine-tuned brightfield model on ~22-px nuclei (measured): at 1/8 scale texture reads as ~100-px
    # "objects", at 1/4 they measure 29 px; 1/2 and 1 agree on ~24 px
    brightfield = [(0.125, 98.9, 23), (0.25, 28.9, 45), (0.5, 25.0, 36), (1.0, 22.6, 21), (2.0, 13.3, 8)]
    accepted = [i for i in range(3) if scale_accepted(i, brightfield, 16.0)]
    assert accepted == [2]  # 1/8: plausible size and object counts, but 1/4 disagrees; 1/4: 7 px, too small
    # ~100-px nuclei: 1/4 scale (25 px) measures them a little smaller, still the same objects
    big = [(0.125, 100.0, 20), (0.25, 80.0, 26), (0.5, 30.0, 90)]
    assert scale_accepted(0, big, 16.0)
    # clumps of small nuclei at 1/8: the scale after next finds > 8x as many objects
    clumps = [(0.125, 110.0, 10), (0.25, 90.0, 15), (0.5, 12.0, 95)]
    assert not scale_accepted(0, clumps, 16.0)
    assert not scale_accepted(0, [(0.5, None, 0)], 16.0)
