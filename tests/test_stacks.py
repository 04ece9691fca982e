from dataclasses import replace

import numpy as np
import pytest
import tifffile
from conftest import DATA

from napari_cellunet.inference import drive
from napari_cellunet.measure import count_rows, measure_stack
from napari_cellunet.metrics import iou_matrix
from napari_cellunet.postprocess import postprocess
from napari_cellunet.segment import Segmentation, normalize_for_model
from napari_cellunet.settings import InstanceParams
from napari_cellunet.stacks import default_mode, iter_segment_stack, volume_labels
from napari_cellunet.training import labels_to_targets


def assemble(seg, axes, mode, lead, images=None):
    """Labels of cached slice-wise probabilities (the widget's re-labelling path)."""
    shape = tuple(lead) + seg.probabilities.shape[-2:]
    return postprocess(seg.probabilities, axes, mode, seg.params, seg.diameter, shape=shape, images=images)


def test_default_modes():
    assert [default_mode(a) for a in ("YX", "ZYX", "TYX", "TZYX", "QYX")] == ["slices", "3d", "frames", "3d",
                                                                              "slices"]


def sphere_probs(z_ratio=1):
    """Two touching spheres as slice-wise (Z, 3, Y, X) one-hot probabilities."""
    zz, yy, xx = np.indices((24 // z_ratio, 40, 60))
    lab = np.zeros(zz.shape, np.int32)
    for i, cx in enumerate((20, 38), start=1):
        lab[((zz * z_ratio - 12) ** 2 + (yy - 20) ** 2 + (xx - cx) ** 2) <= 100] = i
    t = np.stack([labels_to_targets(s) for s in lab])  # boundaries drawn per slice, as a 2D model does
    return np.stack([(t == k) for k in range(3)], 1).astype(np.float32), lab


@pytest.mark.parametrize("z_ratio", [1, 3])
def test_volume_labels_counts_3d_objects_once(z_ratio):
    probs, truth = sphere_probs(z_ratio)
    labels = volume_labels(probs, InstanceParams(min_size=20), diameter=20, z_ratio=z_ratio)
    assert labels.shape == truth.shape and labels.max() == 2
    iou, _, _ = iou_matrix(truth, labels)
    assert (iou.max(1) > 0.6).all()
    # a 2D model's per-slice distance output is not used for 3D objects (a noisy one changes nothing)
    noise = np.random.default_rng(0).random((len(probs), 1, *probs.shape[2:]), dtype=np.float32)
    with_distance = volume_labels(np.concatenate([probs, noise], 1), InstanceParams(min_size=20), diameter=20,
                                  z_ratio=z_ratio)
    assert np.array_equal(with_distance, labels)


def test_count_rows_and_measure_stack():
    lab = np.zeros((2, 3, 10, 10), np.uint16)  # TZYX
    lab[0, 0:2, 1:4, 1:4] = 1
    lab[0, 2, 6:9, 6:9] = 2
    lab[1, 1, 1:3, 1:3] = 5
    rows = count_rows(lab, "TZYX", "3d")
    assert [(r["frame"], r["slice"], r["count"]) for r in rows] == [(0, None, 2), (1, None, 1)]
    rows = count_rows(lab, "TZYX", "slices")
    assert [r["count"] for r in rows] == [1, 1, 1, 0, 1, 0]
    table = measure_stack(lab, "TZYX", "3d", scale=(1, 2.0, 0.5, 0.5))
    assert list(table.frame) == [0, 0, 1] and table.area_phys[0] == pytest.approx(18 * 0.5)


def test_3d_stack_with_model(bundled_model):
    vol = tifffile.imread(DATA / "img3d.tif")
    mask = tifffile.imread(DATA / "mask3d.tif")
    res = drive(iter_segment_stack(bundled_model, vol, "ZYX", "auto", scale=(1, 1, 1)))
    assert res.mode == "3d" and res.labels.shape == vol.shape
    n_true = len(np.unique(mask)) - 1
    assert abs(res.counts[0] - n_true) <= 0.3 * n_true
    frames = drive(iter_segment_stack(bundled_model, vol, "TYX", "auto"))
    assert frames.mode == "frames" and len(frames.counts) == vol.shape[0]
    with pytest.raises(ValueError, match="axes"):
        drive(iter_segment_stack(bundled_model, vol, "YX"))


def test_timelapse_sample_auto_diameter_counts(bundled_model):
    """Auto diameter on the bundled time-lapse (small dense nuclei) must not lock onto merged clumps."""
    from napari_cellunet._napari.samples import SAMPLE_PATH

    movie = tifffile.imread(SAMPLE_PATH.parent / "timelapse_2d.tif")
    truth = np.loadtxt(SAMPLE_PATH.parent / "timelapse_2d_counts.csv", delimiter=",", skiprows=1)[:, 1]
    res = drive(iter_segment_stack(bundled_model, movie, "TYX"))
    assert res.mode == "frames" and 10 < res.segmentation.diameter < 25
    assert (np.abs(np.array(res.counts) - truth) <= 0.2 * truth).sum() >= 10


def test_zstack_normalised_as_one_volume(bundled_model):
    rng = np.random.default_rng(0)
    bright = rng.uniform(100, 1000, (32, 32)).astype(np.float32)
    slices = np.stack([bright, 0.2 * bright])
    per_slice = normalize_for_model(bundled_model, slices)
    joint = normalize_for_model(bundled_model, slices, group=2)
    assert np.allclose(per_slice[0], per_slice[1], atol=1e-4)       # each slice stretched on its own
    assert joint[1].max() < 0.35 * joint[0].max()                    # one scale for the stack


def test_out_of_focus_planes_of_a_zstack_stay_empty(bundled_model):
    """The cells3d sample's first ~18 planes hold only blur: no 3D nucleus should reach into them."""
    from napari_cellunet._napari.samples import SAMPLE_PATH
    vol = tifffile.imread(SAMPLE_PATH.parent / "nuclei_3d.tif").astype(np.float32)
    res = drive(iter_segment_stack(bundled_model, vol, "ZYX", "3d", scale=(0.29, 0.26, 0.26)))
    per_plane = (res.labels > 0).mean(axis=(1, 2))
    assert res.counts[0] >= 5
    assert per_plane[:12].max() < 0.01 and per_plane[30:45].min() > 0.1


@pytest.mark.parametrize("mode", ["frames", "3d"])
def test_min_brightness_drops_dim_objects_per_frame_and_volume(mode):
    probs, truth = sphere_probs()                      # two spheres, (Z, 3, Y, X)
    image = np.where(truth == 1, 200.0, np.where(truth == 2, 40.0, 10.0)).astype(np.float32)
    stack_probs = np.concatenate([probs, probs])      # TZYX with T=2, flattened to slices
    images = np.stack([image, image])
    seg = Segmentation(stack_probs, None, diameter=20,
                       params=InstanceParams(min_size=20, min_brightness=0.0))
    if mode == "frames":                               # each z-slice a frame: T*Z frames
        from napari_cellunet.segment import labels_from_probabilities
        seg.labels = labels_from_probabilities(stack_probs, seg.params, 20)
        axes, lead = "TYX", (len(stack_probs),)
    else:
        axes, lead = "TZYX", (2, len(probs))
    flat = images.reshape(lead + image.shape[-2:])
    both = assemble(seg, axes, mode, lead, images=flat)
    seg.params = InstanceParams(min_size=20, min_brightness=0.4)
    bright = assemble(seg, axes, mode, lead, images=flat)
    if mode == "3d":
        assert both.counts == [2, 2] and bright.counts == [1, 1]
    else:
        assert max(both.counts) == 2 and max(bright.counts) == 1
    t = np.stack([truth, truth]).reshape(bright.labels.shape)
    assert (both.labels[t == 2] > 0).mean() > 0.8 and (bright.labels[t == 2] > 0).mean() < 0.1
    assert (bright.labels[t == 1] > 0).mean() > 0.8


def test_frames_mode_rejoins_one_frame_splits_unless_switched_off():
    from napari_cellunet.segment import labels_from_probabilities

    whole = np.zeros((40, 60), np.int32)
    whole[10:30, 10:50] = 1
    split = whole.copy()
    split[:, 30:] *= 2                                          # frame 1: a false cut through the nucleus
    t = np.stack([labels_to_targets(f) for f in (whole, split, whole)])
    probs = np.stack([(t == k) for k in range(3)], 1).astype(np.float32)
    for merge, counts in ((True, [1, 1, 1]), (False, [1, 2, 1])):
        params = InstanceParams(min_size=20, split_touching=False, merge_fragments=0, merge_over_time=merge)
        seg = Segmentation(probs, labels_from_probabilities(probs, params, 20), diameter=20, params=params)
        res = assemble(seg, "TYX", "frames", (3,))
        assert res.counts == counts and [int(f.max()) for f in res.labels] == counts
    seg.params = replace(seg.params, merge_over_time=True)
    assert assemble(seg, "QYX", "slices", (3,)).counts == [1, 2, 1]   # only time-lapses are re-joined
