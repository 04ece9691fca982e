from dataclasses import replace

import numpy as np
import pytest
from conftest import disc_image
from scipy import ndimage as ndi

from napari_cellunet.postprocess import (
    BOUNDARY,
    INTERIOR,
    drop_unconfident,
    join_weak_borders,
    merge_flickers,
    merge_fragments,
    probabilities_to_labels,
    remove_small,
)
from napari_cellunet.settings import InstanceParams
from napari_cellunet.training import labels_to_targets


def probs_from_labels(labels):
    """Idealised network output: one-hot of the 3-class targets."""
    t = labels_to_targets(labels)
    return np.stack([(t == k).astype(np.float32) for k in range(3)])


def test_two_touching_discs_give_two_labels():
    _, labels = disc_image(centers=((48, 38), (48, 58)), radius=11)  # overlapping discs: touching cells
    assert len(np.unique(labels)) == 3
    out = probabilities_to_labels(probs_from_labels(labels), InstanceParams(min_size=5))
    assert out.max() == 2
    # each predicted object covers most of one true object
    for i in (1, 2):
        ids, counts = np.unique(out[labels == i], return_counts=True)
        assert counts.max() / counts.sum() > 0.9


def test_predicted_distance_gives_the_seeds_where_there_is_one():
    # a peanut of two overlapping discs with no boundary between them: one interior component
    yy, xx = np.indices((96, 96))
    discs = [((yy - 48) ** 2 + (xx - cx) ** 2 <= 11**2) for cx in (40, 56)]
    blob = discs[0] | discs[1]
    p = np.stack([~blob, blob, np.zeros_like(blob)]).astype(np.float32)
    split = InstanceParams(min_size=5, merge_fragments=0, seed_threshold=0.5)
    whole = replace(split, split_touching=False)
    assert probabilities_to_labels(p, whole, diameter=22).max() == 1
    assert probabilities_to_labels(p, split, diameter=22).max() == 2  # its distance transform has two peaks

    def with_distance(hills):
        return np.concatenate([p, (hills * blob)[None]])

    # distance seeds: one hill is one object, two hills are two (no splitting needed)
    one_hill = np.clip(1 - np.hypot(yy - 48, xx - 48) / 30, 0, 1)
    assert probabilities_to_labels(with_distance(one_hill), whole, diameter=22).max() == 1
    two_hills = np.maximum(*[np.clip(1 - np.hypot(yy - 48, xx - cx) / 8, 0, 1) for cx in (40, 56)])
    out = probabilities_to_labels(with_distance(two_hills), whole, diameter=22)
    assert out.max() == 2 and out[48, 40] != out[48, 56]
    assert abs(int((out == out[48, 40]).sum()) - int((out == out[48, 56]).sum())) < 10  # split in the middle
    # hills joined above the seed threshold give one seed component, split like interior seeds
    broad = np.maximum(*[np.clip(1 - np.hypot(yy - 48, xx - cx) / 30, 0, 1) for cx in (40, 56)])
    assert probabilities_to_labels(with_distance(broad), whole, diameter=22).max() == 1
    assert probabilities_to_labels(with_distance(broad), split, diameter=22).max() == 2


def test_one_disc_gives_one_label():
    _, labels = disc_image(centers=((48, 48),), radius=14)
    out = probabilities_to_labels(probs_from_labels(labels), InstanceParams(min_size=5))
    assert out.max() == 1
    assert abs(int((out > 0).sum()) - int((labels > 0).sum())) < 0.05 * (labels > 0).sum()


def test_touching_cells_merge_without_boundary_class():
    """Control: with interior only (no boundary prediction) the two cells merge into one seed."""
    _, labels = disc_image(centers=((48, 38), (48, 58)), radius=11)
    p = np.stack([(labels == 0), (labels > 0), np.zeros_like(labels)]).astype(np.float32)
    assert probabilities_to_labels(p).max() == 1


def test_seedless_foreground_still_counted_and_min_size():
    p = np.zeros((3, 40, 40), np.float32)
    p[0] = 1
    p[:, 5:15, 5:15] = [[[0.1]], [[0.3]], [[0.6]]]  # foreground but interior below seed threshold
    p[:, 25:27, 25:27] = [[[0.0]], [[1.0]], [[0.0]]]  # tiny object
    out = probabilities_to_labels(p, InstanceParams(min_size=10))
    assert out.max() == 1 and (out[5:15, 5:15] == 1).all()
    assert probabilities_to_labels(p, InstanceParams(min_size=1, min_seed_size=1)).max() == 2


def test_empty_and_3d():
    assert probabilities_to_labels(np.stack([np.ones((8, 8)), np.zeros((8, 8)), np.zeros((8, 8))])).max() == 0
    vol = np.zeros((12, 20, 20), np.int32)
    vol[2:6, 2:8, 2:8] = 1
    vol[6:10, 10:18, 10:18] = 2
    out = probabilities_to_labels(probs_from_labels(vol), InstanceParams(min_size=5))
    assert out.shape == vol.shape and out.max() == 2


def test_remove_small():
    m = np.zeros((20, 20), bool)
    m[1:4, 1:4] = True
    m[10:18, 10:18] = True
    assert remove_small(ndi.label(m)[0], 1).max() == 2
    assert remove_small(ndi.label(m)[0], 10).max() == 1
    lab = np.zeros((10, 10), np.int32)
    lab[0, 0] = 7
    lab[5:9, 5:9] = 3
    out = remove_small(lab, 2)
    assert sorted(np.unique(out)) == [0, 1] and out[6, 6] == 1


def test_drop_dim_objects_keeps_bright_and_drops_dim_rims():
    from napari_cellunet.postprocess import drop_dim_objects
    lab = np.zeros((60, 90), np.uint16)
    img = np.full(lab.shape, 10.0, np.float32)
    for i, x in enumerate((5, 25, 45, 65), start=1):
        lab[20:35, x:x + 15] = i
        img[20:35, x:x + 15] = 200.0
    lab[45:55, 10:20] = 5
    img[45:55, 10:20] = 50.0                      # dim: (50-10)/(200-10) = 0.21 of the bright ones
    assert drop_dim_objects(lab, img, 0.0) is lab
    assert drop_dim_objects(lab, img, 0.1).max() == 5
    out = drop_dim_objects(lab, img, 0.3)
    assert out.max() == 4 and (out[45:55, 10:20] == 0).all() and out.dtype == lab.dtype
    with pytest.raises(ValueError, match="shape"):
        drop_dim_objects(lab, img[:10], 0.3)


def test_merge_fragments_joins_a_cut_off_piece_but_not_touching_cells():
    _, cells = disc_image(centers=((48, 30), (48, 52)), radius=11)  # two touching cells
    cut = cells.copy()
    cut[(cells == 2) & (np.indices(cells.shape)[1] > 58)] = 3  # a sliver cut off cell 2
    cut[5:8, 5:8] = 4                                            # an isolated speck
    typical = np.pi / 4 * 22**2
    out = merge_fragments(cut, 0.2 * typical)
    assert out.max() == 3                                        # sliver merged, speck kept
    assert len(np.unique(out[cells == 2])) == 1                  # cell 2 whole again
    assert out[cells == 1][0] != out[cells == 2][0]              # the two cells stay apart
    assert out[6, 6] > 0
    assert merge_fragments(cut, 1.0).max() == 4                  # nothing below 1 px: unchanged


def test_merge_fragments_in_probabilities_to_labels_and_3d():
    _, cell = disc_image(centers=((48, 48),), radius=14)
    p = probs_from_labels(cell)
    p[:, 30:66, 56:58] = [[[0.0]], [[0.0]], [[1.0]]]  # a false inner boundary cuts off a piece
    assert probabilities_to_labels(p, InstanceParams(min_size=5, split_touching=False)).max() == 2  # no diameter
    assert probabilities_to_labels(p, InstanceParams(min_size=5, split_touching=False), diameter=28).max() == 1
    assert probabilities_to_labels(p, InstanceParams(min_size=5, split_touching=False, merge_fragments=0),
                                   diameter=28).max() == 2
    vol = np.zeros((10, 20, 20), np.int32)
    vol[2:8, 2:12, 2:12] = 1
    vol[2:8, 12:14, 2:12] = 2  # a thin slab touching object 1
    assert merge_fragments(vol, 0.5 * vol.size).max() == 1


def test_drop_unconfident_keeps_sure_and_fairly_sure_edge_objects():
    lab = np.zeros((40, 40), np.int32)
    lab[5:12, 5:12] = 1     # sure
    lab[20:27, 20:27] = 2   # unsure
    lab[30:40, 0:6] = 3     # unsure, but cut by the image edge: fairly sure is enough
    lab[0:3, 30:34] = 4     # an edge sliver the network is not sure of at all
    interior = np.zeros(lab.shape, np.float32)
    interior[lab == 1] = 0.95
    interior[lab == 2] = 0.6
    interior[lab == 3] = 0.6
    interior[lab == 4] = 0.3
    out = drop_unconfident(lab, interior, 0.9)
    assert out.max() == 2 and out[8, 8] > 0 and out[23, 23] == 0 and out[35, 2] > 0 and out[1, 31] == 0
    assert drop_unconfident(lab, interior, 0.25).max() == 4   # a low threshold applies to edge objects as is
    assert np.array_equal(drop_unconfident(lab, interior, 0.0), lab)
    p = probs_from_labels(lab)
    p[INTERIOR][lab == 2] = 0.7  # foreground, but its interior never reaches 0.9
    p[BOUNDARY][lab == 2] = 0.3
    p[INTERIOR][lab == 4], p[BOUNDARY][lab == 4] = 0.3, 0.7  # an edge sliver the network doubts
    assert probabilities_to_labels(p, InstanceParams(min_size=5, seed_threshold=0.5)).max() == 4
    assert probabilities_to_labels(p, InstanceParams(min_size=5, seed_threshold=0.5, min_confidence=0.9)).max() == 2


def test_merge_flickers_rejoins_short_splits_but_not_divisions():
    whole = np.zeros((30, 40), np.int32)
    whole[5:25, 5:35] = 1
    split = whole.copy()
    split[:, 20:] *= 2                      # the same nucleus cut in two halves
    moved = np.roll(whole, 2, axis=1)        # it moves a little between frames
    flicker = np.stack([whole, split, moved, moved])
    out = merge_flickers(flicker)
    assert [int(f.max()) for f in out] == [1, 1, 1, 1]
    assert (out[1] > 0).sum() == (split > 0).sum()                  # same pixels, one id
    division = np.stack([whole, split, split, np.roll(split, 1, axis=0)])
    assert [int(f.max()) for f in merge_flickers(division)] == [1, 2, 2, 2]   # daughters stay apart
    two_frames = np.stack([whole, split, split, moved, moved])
    assert [int(f.max()) for f in merge_flickers(two_frames)] == [1, 1, 1, 1, 1]
    assert [int(f.max()) for f in merge_flickers(two_frames, max_frames=1)] == [1, 2, 2, 1, 1]
    lasting = np.stack([whole, split, split, split, split, whole])
    assert [int(f.max()) for f in merge_flickers(lasting)] == [1, 2, 2, 2, 2, 1]  # four frames: kept apart
    edge = np.stack([split, whole, whole])
    assert int(merge_flickers(edge)[0].max()) == 2                  # first and last frames as they are
    alone = np.stack([np.zeros_like(whole), split, np.zeros_like(whole)])
    assert int(merge_flickers(alone)[1].max()) == 2                 # nothing there before/after: kept


def _scene(middle: str):
    """Three round nuclei and either one nucleus cut in two halves or two pressed-together nuclei.

    Returns labels (the cut or contact gives ids 4 and 5) and an idealised distance output.
    """
    from scipy import ndimage as ndi

    yy, xx = np.indices((64, 200))
    labels = np.zeros((64, 200), np.int32)
    for i, cx in enumerate((20, 150, 180), start=1):
        labels[(yy - 32) ** 2 + (xx - cx) ** 2 <= 13**2] = i
    if middle == "cut":
        nucleus = ((yy - 32) / 12.0) ** 2 + ((xx - 88) / 20.0) ** 2 <= 1
        labels[nucleus & (xx < 88)], labels[nucleus & (xx >= 88)] = 4, 5
        objects = [labels > 0]  # the distance belongs to the whole nucleus
    else:
        labels[((yy - 32) ** 2 + (xx - 76) ** 2 <= 12**2) & (xx < 88)] = 4
        labels[((yy - 32) ** 2 + (xx - 100) ** 2 <= 12**2) & (xx >= 88)] = 5
        objects = [labels == i for i in range(1, 6)]
    distance = np.zeros(labels.shape, np.float32)
    for grouped in objects:
        pieces, n = ndi.label(grouped)
        for k in range(1, n + 1):
            d = ndi.distance_transform_edt(pieces == k)
            distance = np.maximum(distance, d / d.max())
    return labels, distance


def test_join_weak_borders_rejoins_a_cut_nucleus_but_not_pressed_nuclei():
    no_boundary = np.zeros((64, 200), np.float32)
    cut, distance = _scene("cut")
    assert join_weak_borders(cut, no_boundary, distance, 0.7).max() == 4          # the halves are one again
    assert join_weak_borders(cut, no_boundary, distance, 0).max() == 5            # 0 = off
    ridge = no_boundary.copy()
    ridge[:, 86:90] = 0.9                                                          # the network sees a boundary
    assert join_weak_borders(cut, ridge, distance, 0.7).max() == 5
    pressed, distance = _scene("pressed")                                          # distance dips to ~0 between
    assert join_weak_borders(pressed, no_boundary, distance, 0.7).max() == 5
    halves_only = np.where(cut > 3, cut - 3, 0)   # nothing else in the image: joined would be 2x the median object
    assert join_weak_borders(halves_only, no_boundary, distance, 0.7).max() == 2


def test_probabilities_to_labels_joins_a_nucleus_cut_by_its_distance_output():
    cut, distance = _scene("cut")
    fg = (cut > 0).astype(np.float32)
    dip = np.abs(np.arange(200) - 88) < 3                                          # a nucleolus: the distance dips
    distance[:, dip] *= 0.5                                                        # below the seed threshold
    p = np.stack([1 - fg, fg, np.zeros_like(fg), distance])
    params = InstanceParams(min_size=5, seed_threshold=0.6, merge_fragments=0)
    assert probabilities_to_labels(p, replace(params, join_weak_borders=0), diameter=26).max() == 5
    assert probabilities_to_labels(p, params, diameter=26).max() == 4


@pytest.mark.parametrize("seed", range(6))
def test_distance_peaks_equal_skimage_including_plateaus(seed):
    """The fast peak search returns exactly skimage's peaks, in its order, also with ties and flat areas."""
    from skimage.feature import peak_local_max

    from napari_cellunet.postprocess.seeds import distance_peaks

    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.random((160, 190)), 2 + seed % 3)
    levels = [None, 40, 12][seed % 3]  # quantised: many equal neighbours (plateaus)
    if levels:
        field = np.round(field * levels / field.max()).astype(np.float32)
    field[:20, :30] = field.min()  # a flat region at the minimum
    for min_distance in (1, 2, 3, 6, 11):
        ours = distance_peaks(field, min_distance)
        theirs = peak_local_max(field, min_distance=min_distance, exclude_border=False)
        np.testing.assert_array_equal(ours, theirs)
    assert len(distance_peaks(np.ones((20, 20), np.float32), 3)) == 0
    volume = np.round(ndi.gaussian_filter(rng.random((30, 40, 50)), 2) * 200).astype(np.float32)  # 3D, with ties
    for min_distance in (1, 3, 5):
        np.testing.assert_array_equal(distance_peaks(volume, min_distance),
                                      peak_local_max(volume, min_distance=min_distance, exclude_border=False))


@pytest.mark.parametrize("seed", range(4))
def test_watershed_by_regions_equals_one_watershed(seed):
    """Flooding region groups on their boxes gives exactly the labels of one flood over the image."""
    from skimage.segmentation import watershed

    from napari_cellunet.postprocess.seeds import watershed_by_regions

    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.random((300, 260)), 3)
    mask = field > np.quantile(field, 0.45)
    regions, n = ndi.label(mask)
    # continuous values: skimage leaves the order of marker pixels with exactly equal values open
    landscape = ndi.gaussian_filter(rng.random(mask.shape), 1).astype(np.float32)
    markers = np.zeros(mask.shape, np.int32)
    points = rng.integers(0, mask.shape, size=(400, 2))
    markers[tuple(points.T)] = np.arange(1, 401)
    markers[~mask] = 0
    ours = watershed_by_regions(landscape, markers, regions, n, tile=16)  # many groups
    theirs = watershed(landscape, markers, mask=mask)
    assert n > 20 and ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)


def test_distance_transform_in_strips_is_exact():
    """Big masks go through edt in strips (the GIL is let go between them): the same values as one call."""
    edt = pytest.importorskip("edt")
    from napari_cellunet.postprocess.seeds import distance_transform

    rng = np.random.default_rng(0)
    small = ndi.gaussian_filter(rng.random((1500, 700)), 4) > 0.5  # nuclei-sized blobs
    big = np.zeros((1500, 700), bool)
    big[100:1400, 50:650] = True  # one blob far wider than a strip's context: the whole-image fallback
    for mask in (small, big, small | big):
        np.testing.assert_array_equal(distance_transform(mask), edt.edt(mask, parallel=1).astype(np.float32))
        np.testing.assert_allclose(distance_transform(mask), ndi.distance_transform_edt(mask), atol=1e-4)


def test_slices_post_processed_in_parallel_equal_one_by_one(monkeypatch):
    """Several slices go through a thread pool; each gets exactly the labels it gets alone."""
    from napari_cellunet.postprocess import labels_from_probabilities, seeds

    rng = np.random.default_rng(3)
    stack = []
    for _ in range(5):
        centers = [tuple(c) for c in rng.integers(15, 105, size=(6, 2))]
        stack.append(probs_from_labels(disc_image(shape=(120, 120), centers=centers, radius=9)[1]))
    stack = np.stack(stack)
    params = InstanceParams(min_size=5)
    monkeypatch.setattr(seeds, "SLICE_THREADS", 3)
    together = labels_from_probabilities(stack, params, 18)
    alone = [labels_from_probabilities(p[None], params, 18)[0] for p in stack]
    assert together.max() > 3
    for a, b in zip(together, alone):
        np.testing.assert_array_equal(a, b)
