"""Chunked segmentation (napari_cellunet.chunked) and zarr I/O (napari_cellunet.zarrio).

Chunked results are compared with the in-memory pipeline on small images cut
into small blocks: objects must be identical (IoU >= 0.9), in particular those
crossing block borders (none cut or duplicated). Blocks predict on a grid of
256-px tiles (``plan.block_tile``), so the in-memory reference runs on the same
grid (``BLOCK_GRID``); another grid moves ~5% of the objects' outlines past IoU 0.9.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

import napari_cellunet
from napari_cellunet.chunked import iter_segment_chunked, resize_matrix, segment_chunked
from napari_cellunet.inference import Cancelled, Progress, drive, resize_spatial
from napari_cellunet.segment import PredictOptions, segment
from napari_cellunet.stacks import iter_segment_stack
from napari_cellunet.zarrio import create_labels, labels_path, read_zarr

DATA = Path(napari_cellunet.__file__).parent / "data"
BLOCK_GRID = PredictOptions(tile=256, overlap=0.25)  # the tiles of 1024-px blocks, 64 px shared


def mirror_tile(image: np.ndarray, shape: tuple) -> np.ndarray:
    idx = []
    for n, p in zip(shape, image.shape):
        i = np.arange(n) % (2 * p)
        idx.append(np.where(i < p, i, 2 * p - 1 - i))
    return image[np.ix_(*idx)]


def matched(ref: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per reference id (index = id): best IoU with any ``lab`` object, and that object's id."""
    ref, lab = ref.astype(np.int64).ravel(), lab.astype(np.int64).ravel()
    nl = int(lab.max()) + 1
    fg = (ref > 0) & (lab > 0)
    pairs, inter = np.unique(ref[fg] * nl + lab[fg], return_counts=True)
    a, b = pairs // nl, pairs % nl
    area_r, area_l = np.bincount(ref), np.bincount(lab, minlength=nl)
    iou = inter / (area_r[a] + area_l[b] - inter)
    best, partner = np.zeros(len(area_r)), np.zeros(len(area_r), np.int64)
    order = np.argsort(iou)  # the last write per id is its best
    best[a[order]], partner[a[order]] = iou[order], b[order]
    return best, partner


def crossing_ids(labels: np.ndarray, bounds_y: list[int], bounds_x: list[int]) -> np.ndarray:
    """Ids with pixels on both sides of an inner block border (along y or x)."""
    ids = []
    for axis, bounds in ((-2, bounds_y), (-1, bounds_x)):
        for b in bounds:
            before = np.take(labels, b - 1, axis=axis)
            after = np.take(labels, b, axis=axis)
            ids.append(np.intersect1d(before[before > 0], after[after > 0]))
    return np.unique(np.concatenate(ids)) if ids else np.zeros(0, np.int64)


def inner_bounds(blocks) -> tuple[list[int], list[int]]:
    ys = sorted({b[0].start for b in blocks} - {0})
    xs = sorted({b[1].start for b in blocks} - {0})
    return ys, xs


def check_identical(ref: np.ndarray, lab: np.ndarray, blocks, min_crossing: int) -> float:
    ids = np.flatnonzero(np.bincount(ref.ravel().astype(np.int64))[1:]) + 1
    best, partner = matched(ref, lab)
    share = float(np.mean(best[ids] >= 0.9))
    assert share >= 0.995, f"only {share:.1%} of {len(ids)} objects identical"
    cross = crossing_ids(ref, *inner_bounds(blocks))
    assert len(cross) >= min_crossing
    assert (best[cross] >= 0.9).all(), f"objects cut at block borders: {cross[best[cross] < 0.9]}"
    assert len(np.unique(partner[cross])) == len(cross)  # no two reference objects joined
    return share


@pytest.fixture(scope="module")
def model():
    from napari_cellunet.models import load_model

    return load_model("nuclei-fluo-2d")


@pytest.fixture(scope="module")
def sample():
    return tifffile.imread(DATA / "nuclei_2d.tif")


@pytest.fixture(scope="module")
def run2d(model, sample):
    image = mirror_tile(sample, (768, 640))
    ref = segment(model, image[None], BLOCK_GRID).labels[0]
    res = segment_chunked(model, image, "YX", chunk=256, options=BLOCK_GRID)
    return image, ref, res


def test_resize_matrix_is_torchs_resize():
    rng = np.random.default_rng(0)
    for shape, target in (((300, 211), (178, 125)), ((178, 125), (300, 211)), ((64, 50), (200, 160))):
        x = rng.random((1, 1, *shape)).astype(np.float32)
        aa = any(t < s for t, s in zip(target, shape))
        my, mx = resize_matrix(shape[0], target[0], aa), resize_matrix(shape[1], target[1], aa)
        got = my @ (mx @ x[0, 0].T).T
        np.testing.assert_allclose(got, resize_spatial(x, target)[0, 0], atol=1e-5)


def test_2d_matches_in_memory(run2d):
    image, ref, res = run2d
    lab = np.asarray(res.labels[...])
    assert lab.shape == image.shape and lab.dtype == np.uint32
    assert len(res.blocks) == 6 and res.mode == "2d" and res.count_axis == "image"
    check_identical(ref, lab, res.blocks, min_crossing=20)
    n = res.counts[0]
    assert abs(n - int(ref.max())) <= max(1, 0.005 * n)
    ids = np.unique(lab)
    assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, n + 1))  # ids 1..n, each once


def test_measurements_one_row_per_object(run2d):
    image, _, res = run2d
    lab = np.asarray(res.labels[...]).astype(np.int64)
    table = res.measurements
    assert list(table["label"]) == list(range(1, res.counts[0] + 1))
    area = np.bincount(lab.ravel())[1:]
    np.testing.assert_array_equal(table["area_px"], area)
    yy = np.bincount(lab.ravel(), weights=np.indices(lab.shape)[0].ravel())[1:] / area
    np.testing.assert_allclose(table["centroid_y"], yy)
    mean = np.bincount(lab.ravel(), weights=image.astype(float).ravel())[1:] / area
    np.testing.assert_allclose(table["mean_intensity"], mean)


def test_3d_matches_stack_mode(model):
    img = tifffile.imread(DATA / "nuclei_3d.tif")  # (60, 192, 192), cells3d nuclei
    scale = (0.29, 0.26, 0.26)
    ref = drive(iter_segment_stack(model, img, "ZYX", "3d", scale)).labels
    res = segment_chunked(model, img, "ZYX", mode="3d", chunk=96, scale=scale)
    lab = np.asarray(res.labels[...])
    assert len(res.blocks) == 4 and res.mode == "3d"
    check_identical(ref, lab, res.blocks, min_crossing=3)
    assert res.counts == [int(ref.max())]
    assert "centroid_z" in res.measurements and len(res.measurements) == res.counts[0]


def test_frames_from_dask_count_per_frame(model, sample):
    import dask.array as da

    frames = np.stack([sample[:384, :384], sample[128:, 128:][::-1]])
    ref = drive(iter_segment_stack(model, frames, "TYX", "frames")).labels
    res = segment_chunked(model, da.from_array(frames, chunks=(1, 128, 128)), "TYX", chunk=192)
    lab = np.asarray(res.labels[...])
    assert res.mode == "frames" and res.count_axis == "frame" and len(res.counts) == 2
    for t in range(2):
        check_identical(ref[t], lab[t], res.blocks, min_crossing=5)
        assert res.counts[t] == int(lab[t].max()) == int(ref[t].max())
    assert list(res.measurements.groupby("frame").size()) == res.counts


def _write_ome(path: Path, image: np.ndarray, fmt=None) -> None:
    from ome_zarr.writer import write_image

    group = zarr.open_group(str(path), mode="w", zarr_format=2 if fmt is not None else 3)
    write_image(image, group, axes="yx", scale_factors=[2], fmt=fmt, scale={"y": 0.5, "x": 0.5},
                axes_units={"y": "micrometer", "x": "micrometer"})


def test_ome_zarr_round_trip_keeps_scale(model, sample, tmp_path):
    src = tmp_path / "nuclei.ome.zarr"
    _write_ome(src, sample)
    img = read_zarr(src)
    assert img.ome and img.axes == "YX" and img.scale == {"Y": 0.5, "X": 0.5} and img.unit == "micrometer"
    assert isinstance(img.data, zarr.Array) and img.data.shape == sample.shape  # level 0, lazy
    out = labels_path(src, tmp_path)
    assert out.name == "nuclei_labels.zarr"
    res = segment_chunked(model, img, out=out, chunk=256)
    back = read_zarr(out)
    assert back.ome and back.axes == "YX" and back.scale == {"Y": 0.5, "X": 0.5} and back.unit == "micrometer"
    assert back.data.dtype == np.uint32
    np.testing.assert_array_equal(back.data[...], res.labels[...])
    assert res.counts[0] == int(back.data[...].max()) > 50
    np.testing.assert_allclose(res.measurements["area_phys"], res.measurements["area_px"] * 0.25)


def test_plain_zarr_in_plain_zarr_out_and_ngff04(tmp_path, sample):
    from ome_zarr.format import FormatV04

    arr = zarr.create_array(store=str(tmp_path / "plain.zarr"), shape=(2, 64, 64), chunks=(1, 32, 32),
                            dtype=np.uint16)
    img = read_zarr(tmp_path / "plain.zarr")
    assert not img.ome and img.axes == "QYX" and img.scale == {} and img.data.shape == arr.shape
    out = create_labels(tmp_path / "out.zarr", (2, 64, 64), "QYX", (1, 32, 32))
    assert isinstance(zarr.open(str(tmp_path / "out.zarr"), mode="r"), zarr.Array) and out.dtype == np.uint32
    assert read_zarr(tmp_path / "out.zarr").axes == "QYX"  # from dimension_names
    _write_ome(tmp_path / "v04.zarr", sample[:64, :64], fmt=FormatV04())
    v04 = read_zarr(tmp_path / "v04.zarr")
    assert v04.ome and v04.scale == {"Y": 0.5, "X": 0.5} and v04.data.shape == (64, 64)


def test_unreadable_stores_name_the_file(tmp_path):
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(ValueError, match="empty.zarr"):
        read_zarr(tmp_path / "empty.zarr")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt"):
        read_zarr(tmp_path / "notes.txt")
    g = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    g.create_array("a", shape=(8, 8), dtype=np.uint8)
    g.create_array("b", shape=(8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="two.zarr.*multiscales"):
        read_zarr(tmp_path / "two.zarr")
    g.attrs["multiscales"] = [{"datasets": [{"path": "missing"}]}]
    with pytest.raises(ValueError, match="two.zarr"):
        read_zarr(tmp_path / "two.zarr")


def test_cancel_stops_between_blocks(model, sample, tmp_path):
    seen: list[Progress] = []
    temp = tmp_path / "tmp"
    temp.mkdir()
    with pytest.raises(Cancelled):
        segment_chunked(model, sample, "YX", chunk=128, workers=1, options=None, temp_dir=str(temp),
                        out=tmp_path / "cancelled.zarr", progress=seen.append,
                        cancel=lambda: any(p.message.startswith("block") for p in seen))
    blocks = [p for p in seen if p.message.startswith("block")]
    assert len(blocks) == 1 and blocks[0].total > 16  # 16 blocks + writing steps; stopped after the first
    assert list(temp.iterdir()) == []  # temporary block store removed
    assert not (tmp_path / "cancelled.zarr").exists()  # no half-written output
    gen = iter_segment_chunked(model, sample, "YX", chunk=256, options=None)
    assert isinstance(next(gen), Progress)
    gen.close()


def test_local_cluster_equals_local_scheduler(model, sample, tmp_path):
    src = zarr.create_array(store=str(tmp_path / "in.zarr"), shape=sample.shape, chunks=(256, 256),
                            dtype=sample.dtype)
    src[...] = sample
    local = segment_chunked(model, src, "YX", chunk=256)
    t0 = time.perf_counter()
    dist = segment_chunked(model, src, "YX", chunk=256, client=2)
    assert dist.engine.startswith("distributed (2 workers)")
    np.testing.assert_array_equal(dist.labels[...], local.labels[...])
    assert dist.counts == local.counts
    assert dist.measurements.equals(local.measurements)
    print(f"2-worker LocalCluster run: {time.perf_counter() - t0:.1f} s")


@pytest.mark.slow
def test_4096_image_in_1024_blocks_matches_in_memory(model, sample):
    """The issue's acceptance case at full size: 4096² cut into 1024² blocks."""
    image = mirror_tile(sample, (4096, 4096))
    ref = segment(model, image[None], BLOCK_GRID).labels[0]
    res = segment_chunked(model, image, "YX", chunk=1024)  # default options: blocks tile as BLOCK_GRID
    assert len(res.blocks) == 16
    check_identical(ref, np.asarray(res.labels[...]), res.blocks, min_crossing=100)


@pytest.mark.slow
def test_cli_on_a_two_worker_cluster_writes_the_local_labels(sample, tmp_path):
    """`cellunet segment x.zarr --workers 2` (a LocalCluster) writes what the local scheduler writes."""
    import pandas as pd

    from napari_cellunet.cli import main

    src = zarr.create_array(store=str(tmp_path / "slide.zarr"), shape=(768, 640), chunks=(256, 256),
                            dtype=sample.dtype)
    src[...] = mirror_tile(sample, (768, 640))
    outs = {}
    for name, extra in (("local", []), ("cluster", ["--workers", "2"])):
        assert main(["segment", str(tmp_path / "slide.zarr"), "-o", str(tmp_path / name), "--chunk", "256",
                     "--quiet", *extra]) == 0
        outs[name] = (zarr.open_array(str(tmp_path / name / "slide_labels.zarr"), mode="r")[...],
                      pd.read_csv(tmp_path / name / "counts.csv")["count"].tolist())
    np.testing.assert_array_equal(outs["cluster"][0], outs["local"][0])
    assert outs["cluster"][1] == outs["local"][1] and outs["local"][1][0] > 100
