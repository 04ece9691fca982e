import math

import numpy as np
import pytest
import torch

from napari_cellunet.inference import (
    Cancelled,
    Progress,
    blending_weights,
    normalize_percentile,
    predict,
    select_device,
    tile_grid,
)
from napari_cellunet.metrics import match
from napari_cellunet.segment import labels_from_probabilities, normalize_for_model


def test_normalize_percentile_robust():
    x = np.arange(1000, dtype=np.float32).reshape(10, 100)
    y = normalize_percentile(x)
    assert np.isclose(np.percentile(y, 1), 0, atol=1e-3) and np.isclose(np.percentile(y, 99.8), 1, atol=1e-3)
    x[0, 0] = np.nan
    assert np.isfinite(normalize_percentile(x)).all()
    assert (normalize_percentile(np.full((5, 5), 7.0)) == 0).all()


def test_tile_grid_covers_with_the_overlap_and_fewest_tiles():
    for size, tile, overlap in [(100, 32, 8), (257, 256, 64), (64, 64, 16), (10, 64, 16), (1024, 1024, 64),
                                (4096, 1024, 64), (1000, 256, 64), (300, 128, 0)]:
        length, starts = tile_grid(size, tile, overlap, multiple=16 if tile >= 64 else 1)
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s:s + length] = True
        assert covered.all() and starts[0] == 0 and starts[-1] + length == size
        assert length <= max(tile, 1) and (length == size or length % (16 if tile >= 64 else 1) == 0)
        if len(starts) > 1:
            assert min(b - a for a, b in zip(starts, starts[1:])) <= length - overlap  # neighbours share >= overlap
            assert len(starts) == math.ceil((size - overlap) / (tile - overlap))  # no more tiles than needed
    assert tile_grid(1024, 1024, 64, 16) == (1024, [0])  # a 1024² image is one tile, not 25 of 256²
    assert tile_grid(1024, 256, 64, 16) == (256, [0, 192, 384, 576, 768])  # the classic grid
    w = blending_weights((32, 32))
    assert w.shape == (32, 32) and w.min() > 0 and w[16, 16] == w.max()


def test_tiled_equals_untiled(bundled_model, sample):
    img = normalize_for_model(bundled_model, sample[None, :256, :256])
    whole = predict(bundled_model.net, img, tile=512, precision="fp32")
    tiled = predict(bundled_model.net, img, tile=128, overlap=0.25, batch_size=8, precision="fp32")
    assert whole.shape == tiled.shape == (1, bundled_model.config.n_outputs, 256, 256)
    diff = np.abs(whole - tiled)
    # 128-px tiles at native scale hold only a few nuclei of context: small seams in the
    # probabilities are expected (stage 3: 99th percentile 0.08, stage 4: 0.10); the labels must agree
    assert diff.mean() < 0.01 and np.percentile(diff, 99) < 0.15
    np.testing.assert_allclose(whole[:, :3].sum(1), 1, atol=1e-4)  # class probabilities
    assert whole[:, 3:].min() >= 0 and whole[:, 3:].max() <= 1  # the distance output, if any
    params = bundled_model.instance_params
    a = labels_from_probabilities(whole, params, bundled_model.diameter)[0]
    b = labels_from_probabilities(tiled, params, bundled_model.diameter)[0]
    assert match(a, b)[0].ap >= 0.9


def test_bf16_close_to_fp32(bundled_model, sample):
    img = normalize_for_model(bundled_model, sample[None, :128, :128])
    a = predict(bundled_model.net, img, tile=128, precision="fp32")
    b = predict(bundled_model.net, img, tile=128, precision="bf16")
    assert np.abs(a - b).mean() < 0.01


def test_openvino_matches_torch_and_follows_changed_weights(bundled_model, sample):
    """The default CPU backend gives torch's probabilities, also after the weights change in place
    (a fine-tune in the same process must not keep running the old compiled network)."""
    pytest.importorskip("openvino")
    import copy

    net = copy.deepcopy(bundled_model.net)
    img = normalize_for_model(bundled_model, sample[None, :128, :128])

    def both():
        return [predict(net, img, tile=128, precision="fp32", backend=b) for b in ("torch", "openvino")]

    before_torch, before_openvino = both()
    assert np.abs(before_torch - before_openvino).max() < 1e-3
    with torch.no_grad():
        net.head.bias.add_(2.0)
    after_torch, after_openvino = both()
    assert np.abs(after_torch - before_torch).max() > 0.05
    assert np.abs(after_torch - after_openvino).max() < 1e-3


def test_tta_and_progress_and_cancel(bundled_model, sample):
    img = normalize_for_model(bundled_model, sample[None, :200, :200])
    seen: list[Progress] = []
    out = predict(bundled_model.net, img, tile=64, tta=True, progress=seen.append)
    assert out.shape == (1, bundled_model.config.n_outputs, 200, 200)
    assert seen[0].done == 0 and seen[-1].done == seen[-1].total > 1
    calls = []
    with pytest.raises(Cancelled):
        predict(bundled_model.net, img, tile=64, cancel=lambda: calls.append(1) or len(calls) > 1)
    assert len(calls) == 2  # stopped right after the first tile batch


def test_channel_and_shape_errors(bundled_model):
    with pytest.raises(ValueError, match="channel"):
        predict(bundled_model.net, np.zeros((1, 2, 32, 32), np.float32))
    with pytest.raises(ValueError, match="expected"):
        predict(bundled_model.net, np.zeros((32, 32), np.float32))


def test_device_selection():
    assert select_device("auto").type in ("cpu", "cuda", "mps")
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError):
        select_device("tpu")
