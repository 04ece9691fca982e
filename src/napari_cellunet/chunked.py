"""Segment images of any size block by block, with bounded memory, locally or on a dask cluster.

The in-memory pipeline (:mod:`.segment`) holds ~64 bytes per input pixel. Here:

1. Normalisation percentiles come ONCE per image (per frame / volume, as in
   memory) from a strided subsample (exact below ``SUBSAMPLE_PIXELS``); the
   diameter is estimated ONCE with :func:`.segment.iter_estimate_diameter` on a
   central crop (``ESTIMATION_CROP``) of the normalised image, as in memory.
2. Each axis is split into blocks. Prediction is *exact*: the model-space image
   uses the same resize weights as :func:`.inference.resize_spatial` (sparse
   matrices, :func:`resize_matrix`) and the same global tile grid as
   :func:`.inference.iter_predict`; a block predicts every global tile that
   touches its core + halo, so its probabilities equal the in-memory ones there.
   Block borders are placed (near multiples of ``chunk``) where few tiles are
   shared. The post-processing halo is 1.5 object diameters, at least
   ``MIN_HALO`` px (the network's receptive field needs no halo: every tile is whole).
3. Each block (core + halo) is post-processed (2D: ``labels_from_probabilities``;
   ``mode="3d"``: the whole Z in each block, ``stacks.volume_labels``). Objects
   with pixels in the core get block-local ids; where two blocks overlap (less
   half a halo from either block's cut edge), ids that mostly coincide (overlap
   > half the smaller of the two there) are joined in a label-equivalence graph
   (``connected_components``); the final objects are the unions of the joined
   core parts, ids 1..n per image (per frame), numbered in block order.
4. Per-object sums (area, coordinates, intensity) are taken per block core and
   reduced per final object; labels go to a zarr array output chunk by chunk.

Block labels wait in a temporary zarr store (compressed) between the passes.
Not done here (in-memory only): ``merge_over_time`` for time-lapses, 3D models.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse
from scipy.sparse import csgraph

from .arrays import check_axes
from .inference import Progress, blending_weights, drive, iter_predict, tile_starts
from .models import CellModel
from .segment import AUTO, PredictOptions, default_min_size, iter_estimate_diameter, labels_from_probabilities
from .settings import InstanceParams
from .stacks import resolve_mode, volume_labels
from .zarrio import channel_view, read_region, strided_sample

SUBSAMPLE_PIXELS = 2**22   # percentiles from at most this many pixels per image
ESTIMATION_CROP = 2048     # central crop (image px) for the diameter estimate (covers scales >= 1/8)
BLOCK_VOXELS_3D = 2**25    # default 3D block (Z x Y x X incl. halo) about this big
HALO_DIAMETERS = 1.5       # post-processing halo: 1.5 object diameters...
MIN_HALO = 32              # ...and at least this many image px


@dataclass
class ChunkedResult:
    labels: object              # zarr array (uint32), ids 1..n per image / frame / volume
    axes: str
    mode: str                   # "2d", "frames", "slices" or "3d"
    counts: list[int]           # one per unit (image, frame, slice or volume)
    count_axis: str             # "image", "frame" or "slice"
    measurements: object        # pandas DataFrame, one row per object
    diameter: float | None
    blocks: list[tuple[slice, ...]] = field(default_factory=list)  # block cores (spatial axes)
    normalization: list[tuple[float, float]] = field(default_factory=list)  # per unit (lo, hi)
    seconds: float = 0.0
    engine: str = "threads"


def resize_matrix(n_in: int, n_out: int, antialias: bool) -> sparse.csr_matrix:
    """The ``(n_out, n_in)`` weights ``F.interpolate(bilinear, align_corners=False)`` uses along one axis.

    Probed from torch itself with ``p`` comb signals (every p-th pixel), so it is
    exact for this torch version and costs O(p * n), not O(n^2).
    """
    if n_in == n_out:
        return sparse.identity(n_in, dtype=np.float32, format="csr")
    scale = n_in / n_out
    r = max(scale, 1.0)
    p = int(math.ceil(2 * r)) + 4
    combs = (np.arange(n_in)[None] % p == np.arange(p)[:, None]).astype(np.float32)
    out = F.interpolate(torch.from_numpy(combs).reshape(p, 1, 1, n_in), size=(1, n_out), mode="bilinear",
                        align_corners=False, antialias=antialias)[:, 0, 0].numpy()
    lo = np.floor((np.arange(n_out) + 0.5) * scale - r).astype(np.int64) - 1
    cols = lo[None] + (np.arange(p)[:, None] - lo[None]) % p
    ok = (cols >= 0) & (cols < n_in) & (out != 0)
    rows = np.broadcast_to(np.arange(n_out)[None], out.shape)
    return sparse.csr_matrix((out[ok], (rows[ok], cols[ok])), shape=(n_out, n_in), dtype=np.float32)


def _row_span(m: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    starts = m.indptr[:-1]
    return np.minimum.reduceat(m.indices, starts), np.maximum.reduceat(m.indices, starts)


@dataclass
class _AxisBlock:
    core: tuple[int, int]    # image px, owned by the block
    ext: tuple[int, int]     # core + halo: post-processed
    read: tuple[int, int]    # image px read to build the model-space region
    tiles: np.ndarray        # tile starts relative to the model-space region
    tile: int                # tile size (model px)
    down: sparse.csr_matrix  # (model region, read) weights
    up: sparse.csr_matrix    # (ext, model region) weights


class _Axis:
    """One spatial axis: global model size and tile grid, block borders, per-block ranges."""

    def __init__(self, n: int, m: int, tile: int, overlap: float, multiple: int,
                 down_aa: bool, up_aa: bool, chunk: int, halo: int):
        self.n, self.m, self.halo = n, m, halo
        self.tile = min(tile, m) if tile >= m else max(multiple, tile - tile % multiple)  # as iter_predict
        self.starts = np.asarray(tile_starts(m, self.tile, overlap))
        self.down, self.up = resize_matrix(n, m, down_aa), resize_matrix(m, n, up_aa)
        self.dmin, self.dmax = _row_span(self.down)
        self.umin, self.umax = _row_span(self.up)
        self.bounds = self._borders(chunk)

    def _shared(self, q: np.ndarray) -> np.ndarray:
        """Tiles both blocks must predict if their border is at image px ``q``."""
        lo, hi = self.umin[np.maximum(q - self.halo, 0)], self.umax[np.minimum(q + self.halo, self.n) - 1]
        return np.searchsorted(self.starts, hi, "right") - np.searchsorted(self.starts + self.tile, lo, "right")

    def _borders(self, chunk: int) -> list[int]:
        nb = max(1, int(round(self.n / chunk)))
        bounds = [0]
        for k in range(1, nb):
            target, w = int(round(k * self.n / nb)), max(1, chunk // 4)
            q = np.arange(max(bounds[-1] + 1, target - w), min(self.n - 1, target + w) + 1)
            bounds.append(int(q[np.lexsort((np.abs(q - target), self._shared(q)))[0]]))
        return bounds + [self.n]

    def block(self, k: int) -> _AxisBlock:
        c0, c1 = self.bounds[k], self.bounds[k + 1]
        e0, e1 = max(0, c0 - self.halo), min(self.n, c1 + self.halo)
        j0, j1 = self.umin[e0:e1].min(), self.umax[e0:e1].max()
        t = self.starts[(self.starts <= j1) & (self.starts + self.tile > j0)]
        r0, r1 = int(t[0]), int(t[-1]) + self.tile
        k0, k1 = int(self.dmin[r0:r1].min()), int(self.dmax[r0:r1].max()) + 1
        return _AxisBlock((c0, c1), (e0, e1), (k0, k1), t - r0, self.tile, self.down[r0:r1, k0:k1],
                          self.up[e0:e1, r0:r1])


@dataclass
class _Block:
    """Everything one block task needs (small; shipped to cluster workers)."""

    index: int
    unit: tuple[int, ...]        # index into the leading (non-spatial) axes
    y: _AxisBlock
    x: _AxisBlock
    depth: int                   # Z slices per block (1 in 2D)
    lo: float
    hi: float
    invert: bool
    diameter: float | None
    params: InstanceParams
    opts: PredictOptions
    z_ratio: float = 1.0
    raw: np.ndarray | None = None  # input region read by the client (sources workers cannot read)

    @property
    def read_index(self) -> tuple:
        zs = (slice(None),) if self.depth > 1 else ()
        return self.unit + zs + (slice(*self.y.read), slice(*self.x.read))


def _normalise(raw: np.ndarray, lo: float, hi: float, invert: bool) -> np.ndarray:
    """As ``inference.normalize_percentile`` with fixed percentiles (float64 arithmetic, float32 out)."""
    x = np.asarray(raw, dtype=np.float32)
    if not np.isfinite(x).all():
        x = np.where(np.isfinite(x), x, 0.0).astype(np.float32)
    x = ((x - np.float64(lo)) / np.maximum(np.float64(hi) - np.float64(lo), 1e-6)).astype(np.float32)
    return 1.0 - x if invert else x


def _resample(a: np.ndarray, my: sparse.csr_matrix, mx: sparse.csr_matrix) -> np.ndarray:
    """Apply ``my`` along axis -2 and ``mx`` along axis -1 of ``(k, Y, X)``."""
    k, y, x = a.shape
    t = (mx @ a.reshape(k * y, x).T).T.reshape(k, y, mx.shape[0])
    t = my @ np.ascontiguousarray(t.transpose(1, 0, 2)).reshape(y, -1)
    return np.ascontiguousarray(t.reshape(my.shape[0], k, mx.shape[0]).transpose(1, 0, 2), dtype=np.float32)


_local = threading.local()


def _thread_net(model: CellModel):
    """A private copy of the network per thread (``iter_predict`` moves/reformats it in place)."""
    nets = getattr(_local, "nets", None)
    if nets is None:
        nets = _local.nets = {}
    if id(model) not in nets:
        nets.clear()
        nets[id(model)] = copy.deepcopy(model.net)
    return nets[id(model)]


def _probabilities(b: _Block, net, x: np.ndarray, keep: int) -> np.ndarray:
    """``(Z, keep, ext_y, ext_x)`` image-scale probabilities of normalised ``(Z, read_y, read_x)`` slices.

    Per slice: resize to the model grid (the global weights, restricted to the
    block), predict the block's global tiles, blend them with ``iter_predict``'s
    Gaussian, resize back. Exactly the in-memory numbers over the block's ext.
    """
    o, ty, tx = b.opts, b.y.tile, b.x.tile
    wins = [(slice(a, a + ty), slice(c, c + tx)) for a in b.y.tiles for c in b.x.tiles]
    w = blending_weights((ty, tx))
    probs = np.empty((len(x), keep, b.y.up.shape[0], b.x.up.shape[0]), np.float32)
    for z, s in enumerate(x):
        mod = _resample(s[None], b.y.down, b.x.down)[0]
        tiles = np.stack([mod[win] for win in wins])[:, None]
        p = drive(iter_predict(net, tiles, tile=max(ty, tx), batch_size=o.batch_size, device=o.device,
                               precision=o.precision, tta=o.tta, backend=o.backend))  # one whole tile per image
        acc, norm = np.zeros((keep,) + mod.shape, np.float32), np.zeros(mod.shape, np.float32)
        for win, pi in zip(wins, p):
            acc[(slice(None),) + win] += pi[:keep] * w
            norm[win] += w
        probs[z] = _resample(acc / norm, b.y.up, b.x.up)
    return probs


def _number_and_sum(b: _Block, labels: np.ndarray, raw: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Renumber: core objects 1..n, halo-only n+1..; per core object: area, coordinate and intensity sums."""
    core = (Ellipsis, slice(b.y.core[0] - b.y.ext[0], b.y.core[1] - b.y.ext[0]),
            slice(b.x.core[0] - b.x.ext[0], b.x.core[1] - b.x.ext[0]))
    present = np.bincount(labels.ravel()) > 0
    in_core = np.bincount(labels[core].ravel(), minlength=len(present)) > 0
    present[0] = in_core[0] = False
    n = int(in_core.sum())
    lut = np.zeros(len(present), np.uint32)
    lut[in_core] = np.arange(1, n + 1)
    lut[present & ~in_core] = np.arange(n + 1, int(present.sum()) + 1)
    labels = lut[labels]
    lc, shape = labels[core].ravel().astype(np.int64), labels[core].shape
    origin = ((0,) if b.depth > 1 else ()) + (b.y.core[0], b.x.core[0])
    sums = [np.bincount(lc, minlength=n + 1).astype(np.float64)]
    for ax, (o0, size) in enumerate(zip(origin, shape)):
        coord = np.arange(o0, o0 + size, dtype=np.float64).reshape([-1 if i == ax else 1 for i in range(len(shape))])
        sums.append(np.bincount(lc, weights=np.broadcast_to(coord, shape).ravel(), minlength=n + 1))
    ry, rx = b.y.core[0] - b.y.read[0], b.x.core[0] - b.x.read[0]
    inten = np.asarray(raw[..., ry:ry + shape[-2], rx:rx + shape[-1]], dtype=np.float64)
    sums.append(np.bincount(lc, weights=np.nan_to_num(inten).ravel(), minlength=n + 1))
    return labels, n, np.stack(sums, axis=1)[1:]


def compute_block(b: _Block, model: CellModel, source) -> dict:
    """Predict and post-process one block (core + halo); returns its labels, core count and sums."""
    raw = b.raw if b.raw is not None else read_region(source, b.read_index)
    x = _normalise(raw, b.lo, b.hi, b.invert).reshape(-1, raw.shape[-2], raw.shape[-1])
    keep = 3 if b.depth > 1 else model.config.n_outputs  # volume_labels ignores a 2D distance output
    probs = _probabilities(b, _thread_net(model), x, keep)
    del x
    if b.depth > 1:
        labels = volume_labels(probs, b.params, b.diameter, b.z_ratio)
    else:
        labels = labels_from_probabilities(probs, b.params, b.diameter)[0]
    del probs
    labels, n, sums = _number_and_sum(b, labels, raw)
    return {"index": b.index, "labels": labels, "n": n, "stats": sums}


# --------------------------------------------------------------------------- engines
_WORKER_MODELS: dict[str, CellModel] = {}
_WORKER_LOCK = threading.Lock()


def model_payload(model: CellModel) -> dict:
    """What a cluster worker needs to rebuild ``model`` (config, metadata, weights as numpy)."""
    state = {k: v.detach().cpu().numpy() for k, v in model.net.state_dict().items()}
    return {"token": uuid.uuid4().hex, "name": model.name, "config": model.config.to_dict(),
            "meta": dict(model.meta), "state": state}


def worker_model(payload: dict) -> CellModel:
    """Build the model once per worker process (cached by the payload's token)."""
    from .unet import UNet, UNetConfig

    with _WORKER_LOCK:
        if payload["token"] not in _WORKER_MODELS:
            net = UNet(UNetConfig.from_dict(payload["config"]))
            net.load_state_dict({k: torch.from_numpy(v) for k, v in payload["state"].items()})
            _WORKER_MODELS.clear()
            _WORKER_MODELS[payload["token"]] = CellModel(payload["name"], net.eval(), payload["meta"])
        return _WORKER_MODELS[payload["token"]]


def _remote_block(b: _Block, payload: dict, source) -> dict:
    return compute_block(b, worker_model(payload), source)


class _Engine:
    """Runs block tasks: a local thread pool, or a ``distributed`` client (futures)."""

    def __init__(self, model: CellModel, source, client=None, workers: int | None = None):
        self.own, self.client, self.model, self.source = [], client, model, source
        if client is None:
            from concurrent.futures import ThreadPoolExecutor

            self.slots = max(1, workers or min(2, os.cpu_count() or 1))
            self.pool = ThreadPoolExecutor(self.slots, thread_name_prefix="cellunet-block")
            self.name = f"threads ({self.slots})"
            return
        from distributed import Client, LocalCluster

        if isinstance(client, int):
            import dask

            # distributed's default MALLOC_TRIM_THRESHOLD_=65536 makes every big numpy temporary fault its pages
            # in anew: blocks ran 2-3x slower than in threads. Blocks are bounded, so freed memory may stay.
            with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
                cluster = LocalCluster(n_workers=client, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
            self.own = [Client(cluster), cluster]
            self.client = self.own[0]
        elif isinstance(client, str):
            self.own = [Client(client)]
            self.client = self.own[0]
        nthreads = self.client.nthreads()
        self.slots = max(1, sum(nthreads.values()))
        self.name = f"distributed ({len(nthreads)} workers)"
        self.payload = self.client.scatter(model_payload(model), broadcast=True, hash=False)
        import zarr

        remote = isinstance(source, zarr.Array) and type(source.store).__name__ != "MemoryStore"
        self.remote_source = source if remote else None

    def submit(self, b: _Block):
        if self.client is None:
            return self.pool.submit(compute_block, b, self.model, self.source)
        if self.remote_source is None:  # the client reads what workers cannot reach
            b = replace(b, raw=read_region(self.source, b.read_index))
        return self.client.submit(_remote_block, b, self.payload, self.remote_source, pure=False)

    def wait_one(self, futures: set) -> set:
        if self.client is None:
            from concurrent.futures import FIRST_COMPLETED, wait
        else:
            from distributed import wait
            FIRST_COMPLETED = "FIRST_COMPLETED"
        return set(wait(futures, return_when=FIRST_COMPLETED).done)

    def close(self, futures=()) -> None:
        for f in futures:
            f.cancel()
        if self.client is None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        for obj in self.own:
            obj.close()


# --------------------------------------------------------------------------- driver
def _units(axes: str, mode: str) -> tuple[str, int]:
    """``(mode, number of leading axes that index units)``; each unit is one 2D image or one volume."""
    if len(axes) == 2:
        return "2d", 0
    mode = resolve_mode(axes, mode)
    return mode, len(axes) - (3 if mode == "3d" else 2)


def _subsample(source, unit: tuple, depth: int, shape: tuple) -> np.ndarray:
    """Strided float32 subsample of one unit (stride 1, i.e. exact percentiles, for small images)."""
    s = max(1, math.ceil(math.sqrt(depth * shape[-2] * shape[-1] / SUBSAMPLE_PIXELS)))
    a = strided_sample(source, unit + ((slice(None),) if depth > 1 else ()) + (slice(None, None, s),) * 2)
    a = np.asarray(a, dtype=np.float32)
    return np.where(np.isfinite(a), a, 0.0).astype(np.float32)


def _estimation_input(source, units, depth, shape, stats, invert) -> np.ndarray:
    """Normalised central crops of the (up to 3) slices ``segment._estimation_crops`` would pick."""
    n_slices = len(units) * depth
    pick = np.unique(np.linspace(0, n_slices - 1, min(3, n_slices)).round().astype(int))
    crops = []
    for i in pick:
        u, z = divmod(int(i), depth)
        sl = []
        for size in shape[-2:]:
            c = size if size <= ESTIMATION_CROP else ESTIMATION_CROP + (size - ESTIMATION_CROP) % 2
            sl.append(slice((size - c) // 2, (size - c) // 2 + c))
        raw = read_region(source, units[u] + ((z,) if depth > 1 else ()) + tuple(sl))
        crops.append(_normalise(raw, *stats[u][:2], invert))
    return np.stack(crops)[:, None]


def _diameter(model: CellModel, source, units, depth, shape, stats, opts, params):
    """Diameter used (image px) or None (no rescaling), estimated once like ``segment.iter_segment``."""
    trained, used = model.diameter, opts.diameter
    if isinstance(used, str) and used != AUTO:
        used = float(used)
    if used is not None and used != AUTO and used <= 0:
        used = AUTO
    if trained is None or used is None:
        return None
    if used != AUTO:
        return float(used)
    crops = _estimation_input(source, units, depth, shape, stats, model.invert)
    used = (yield from iter_estimate_diameter(model, crops, opts, params)) or trained
    yield Progress(0, 1, f"object diameter ~{used:.1f} px")
    return used


def _axes_plan(model: CellModel, shape: tuple, used: float | None, opts: PredictOptions, chunk, halo: int):
    """The Y and X :class:`_Axis` (model sizes and antialiasing exactly as ``segment._predict_at``)."""
    factor = model.diameter / used if used else 1.0
    n = shape[-2:]
    m = tuple(max(8, int(round(s * factor))) for s in n) if abs(factor - 1) > 1e-3 else n
    down_aa, up_aa = any(a < b for a, b in zip(m, n)), any(a < b for a, b in zip(n, m))
    cy, cx = (chunk, chunk) if isinstance(chunk, int) else tuple(int(c) for c in chunk)
    if min(cy, cx) < 16:
        raise ValueError(f"chunk must be at least 16 pixels per axis, got {chunk}")
    return [_Axis(a, b, opts.tile, opts.overlap, model.net.size_multiple, down_aa, up_aa, c, halo)
            for a, b, c in zip(n, m, (cy, cx))]


def iter_segment_chunked(model: CellModel, source, axes: str | None = None, *, out=None, mode: str = "auto",
                         chunk: int | Sequence[int] | None = None, options: PredictOptions | None = None,
                         params: InstanceParams | None = None, scale: Sequence[float] | None = None,
                         client=None, workers: int | None = None, halo: int | None = None,
                         channel: int | None = None, temp_dir: str | None = None,
                         ) -> Generator[Progress, None, ChunkedResult]:
    """Segment ``source`` (numpy, dask or zarr array, or a :class:`.zarrio.ZarrImage`) block by block.

    ``chunk``: block core / output chunk size in Y, X (default 1024; 3D: sized so a
    block holds ~``BLOCK_VOXELS_3D`` voxels, but at least one tile step). ``client``: ``None`` (local threads,
    ``workers`` of them), a ``distributed.Client``, a scheduler address, or an int N
    (a ``LocalCluster`` of N single-threaded workers). ``out``: ``None`` (in-memory
    zarr), a path (zarr; OME-Zarr when the source is an OME :class:`ZarrImage`), or
    a zarr array of the image's shape. ``halo``: post-processing halo in image px.
    Yields progress (per block: cancel between blocks); returns a :class:`ChunkedResult`.
    """
    from . import zarrio

    t_start = time.perf_counter()
    opts, params = options or PredictOptions(), params or model.instance_params
    if model.config.dims != 2:
        raise ValueError("chunked segmentation needs a 2D model (3D models: use stacks.iter_segment_stack)")
    like = source if isinstance(source, zarrio.ZarrImage) else None
    if like is not None:
        source, axes = like.data, axes or like.axes
        scale = scale if scale is not None else like.scale_for(axes)
    axes = check_axes(axes or ("YX" if len(source.shape) == 2 else ""), tuple(source.shape), "TZQCYX")
    if "C" in axes:
        scale = None if scale is None else tuple(s for s, a in zip(scale, axes) if a != "C")
        source, axes = channel_view(source, axes, channel)
    mode, n_lead = _units(axes, mode)
    shape = tuple(int(s) for s in source.shape)
    depth = shape[-3] if mode == "3d" else 1
    units = list(np.ndindex(*shape[:n_lead])) if n_lead else [()]
    z_ratio = 1.0
    if mode == "3d" and scale is not None and len(scale) == len(axes):
        z_ratio = float(scale[-3]) / max(float(scale[-1]), 1e-12)

    low, high = model.normalization
    stats = []
    for u in units:  # percentiles once per image (per volume in 3D), as normalize_for_model
        sub = _subsample(source, u, depth, shape)
        stats.append((*np.percentile(sub, [low, high]), float(np.percentile(sub, 1))))
    used = yield from _diameter(model, source, units, depth, shape, stats, opts, params)
    h = int(halo if halo is not None else max(MIN_HALO, math.ceil(HALO_DIAMETERS * (used or 20.0))))
    if chunk is None:  # 3D: ~BLOCK_VOXELS_3D per block, but at least a tile step (else tiles are re-predicted)
        step = opts.tile * (1 - opts.overlap) * (used / model.diameter if used else 1.0)
        c = 1024 if depth == 1 else max(step, math.sqrt(BLOCK_VOXELS_3D / depth) - 2 * h)
        chunk = max(256, min(1024, int(c) // 32 * 32))
    ay, ax = _axes_plan(model, shape, used, opts, chunk, h)
    by, bx = [ay.block(k) for k in range(len(ay.bounds) - 1)], [ax.block(k) for k in range(len(ax.bounds) - 1)]
    blocks = [_Block(i, u, yb, xb, depth, stats[ui][0], stats[ui][1], model.invert, used, params, opts, z_ratio)
              for i, (ui, u, yb, xb) in enumerate((ui, u, yb, xb) for ui, u in enumerate(units)
                                                  for yb in by for xb in bx)]

    cy, cx = (chunk, chunk) if isinstance(chunk, int) else tuple(int(c) for c in chunk)
    out_path = Path(out) if isinstance(out, (str, os.PathLike)) else None
    if out is None or out_path is not None:
        out_chunks = (1,) * n_lead + ((max(1, min(depth, 2**24 // (cy * cx))),) if depth > 1 else ()) + (cy, cx)
        out = zarrio.create_labels(out, shape, axes, out_chunks, like=like, scale=scale)
    if tuple(out.shape) != shape:
        raise ValueError(f"output array has shape {tuple(out.shape)}, the image {shape}")
    engine = store = None
    total = len(blocks) + len(units) * math.prod(math.ceil(s / c) for s, c in
                                                 zip(out.shape[n_lead:], out.chunks[n_lead:]))
    pending: dict = {}
    n_core, node_stats, finished = [0] * len(blocks), [None] * len(blocks), False
    try:
        store = zarrio.BlockStore(temp_dir)
        engine = _Engine(model, source, client, workers)
        todo, done = iter(blocks), 0
        yield Progress(0, total, f"{len(blocks)} blocks on {engine.name}")
        while True:
            while len(pending) < 2 * engine.slots and (b := next(todo, None)) is not None:
                pending[engine.submit(b)] = b
            if not pending:
                break
            for f in engine.wait_one(set(pending)):
                b, r = pending.pop(f), f.result()
                store.put(b.index, r["labels"], (b.y.ext[0], b.x.ext[0]))
                n_core[b.index], node_stats[b.index] = r["n"], r["stats"]
                done += 1
                yield Progress(done, total, f"block {done}/{len(blocks)}")
        offsets = np.concatenate([[0], np.cumsum(n_core)]).astype(np.int64)
        grid = (len(units), len(by), len(bx))
        src, dst = _edges(blocks, grid, store, n_core, offsets, shape[-2:], h // 2)
        final, table, counts = _reduce(blocks, n_core, offsets, node_stats, src, dst, units, stats, axes, mode,
                                       n_lead, scale, params, used)
        luts = [np.concatenate([[0], final[offsets[i]:offsets[i + 1]]]).astype(np.uint32)
                for i in range(len(blocks))]
        unit_at = {u: i for i, u in enumerate(units)}
        key_of = lambda unit, ky, kx: (unit_at[unit] * grid[1] + ky) * grid[2] + kx  # noqa: E731
        for k in zarrio.write_from_blocks(out, store, luts, ay.bounds, ax.bounds, key_of, n_lead):
            yield Progress(len(blocks) + k, total, "writing labels")
        finished = True
    finally:
        if engine is not None:
            engine.close(pending)
        if store is not None:
            store.close()
        if not finished and out_path is not None:  # cancelled or failed: no half-written labels left behind
            shutil.rmtree(out_path, ignore_errors=True)
    count_axis = "image" if n_lead == 0 else ("frame" if axes[0] == "T" else "slice")
    cores = [(slice(*yb.core), slice(*xb.core)) for yb in by for xb in bx]
    return ChunkedResult(out, axes, mode, counts, count_axis, table, used, cores,
                         [(float(s[0]), float(s[1])) for s in stats], time.perf_counter() - t_start, engine.name)


def _trusted(a: tuple[int, int], b: tuple[int, int], n: int, margin: int) -> tuple[int, int]:
    """Where both ext ranges have labels, minus ``margin`` from ext edges that are not image edges."""
    lo = max(a[0] + (margin if a[0] > 0 else 0), b[0] + (margin if b[0] > 0 else 0))
    hi = min(a[1] - (margin if a[1] < n else 0), b[1] - (margin if b[1] < n else 0))
    return lo, hi


def _edges(blocks: list[_Block], grid: tuple, store, n_core: list[int], offsets: np.ndarray,
           size: tuple[int, int], margin: int):
    """Equivalent ids of neighbouring blocks: pairs that mostly coincide where both blocks are trusted.

    Only the part of the overlap at least ``margin`` from either block's outer
    (cut) edge counts: objects cut there can be labelled differently (e.g. a cut
    piece merged into a neighbour), so they must not link two objects.
    """
    src, dst = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    at = np.arange(len(blocks)).reshape(grid)
    for u, ky, kx in np.ndindex(*grid):
        for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
            if not (0 <= ky + dy < grid[1] and 0 <= kx + dx < grid[2]):
                continue
            a, b = blocks[at[u, ky, kx]], blocks[at[u, ky + dy, kx + dx]]
            zy, zx = _trusted(a.y.ext, b.y.ext, size[0], margin), _trusted(a.x.ext, b.x.ext, size[1], margin)
            if zy[0] >= zy[1] or zx[0] >= zx[1]:
                continue
            la, lb = (store.get(blk.index, zy, zx).ravel().astype(np.int64) for blk in (a, b))
            na, nb = n_core[a.index], n_core[b.index]
            la[la > na], lb[lb > nb] = 0, 0  # halo-only objects belong to the other block
            size_a, size_b = np.bincount(la, minlength=na + 1), np.bincount(lb, minlength=nb + 1)
            both = (la > 0) & (lb > 0)
            pairs, n = np.unique(la[both] * (nb + 1) + lb[both], return_counts=True)
            ia, ib = pairs // (nb + 1), pairs % (nb + 1)
            same = n > 0.5 * np.minimum(size_a[ia], size_b[ib])
            src.append(offsets[a.index] + ia[same])
            dst.append(offsets[b.index] + ib[same])
    return np.concatenate(src), np.concatenate(dst)


def _reduce(blocks, n_core, offsets, node_stats, src, dst, units, stats, axes, mode, n_lead, scale, params,
            diameter):
    """Join equivalent ids, drop too small / dim objects, number 1..n per unit, build the table."""
    import pandas as pd

    total = int(offsets[-1])
    graph = sparse.coo_matrix((np.ones(len(src)), (src - 1, dst - 1)), shape=(total, total))
    _, comp = csgraph.connected_components(graph, directed=False)
    ncomp = int(comp.max()) + 1 if total else 0
    k = node_stats[0].shape[1] if blocks else 4
    cs = np.zeros((ncomp, k))
    np.add.at(cs, comp, np.concatenate(node_stats) if total else np.zeros((0, k)))
    cunit = np.zeros(ncomp, np.int64)
    per_unit = len(blocks) // len(units)
    cunit[comp] = np.repeat([b.index // per_unit for b in blocks], n_core)
    first = np.full(ncomp, total)
    np.minimum.at(first, comp, np.arange(total))
    dims = 3 if mode == "3d" else 2
    min_size = params.min_size if params.min_size > 0 else default_min_size(diameter, 2)
    if dims == 3:
        min_size = max(params.min_size, default_min_size(diameter, 3))
    area = cs[:, 0]
    keep = area >= max(1, min_size)
    final, counts, frames = np.zeros(ncomp, np.uint32), [], []
    px = float(np.prod(scale[-dims:])) if scale is not None else 1.0
    names = ["z", "y", "x"][-dims:]
    for ui, u in enumerate(units):
        sel = np.flatnonzero(keep & (cunit == ui))
        if params.min_brightness > 0 and len(sel):  # as instances.drop_dim_objects, from the sums
            means = cs[sel, -1] / area[sel] - stats[ui][2]
            sel = sel[means >= params.min_brightness * np.percentile(means, 90)]
        sel = sel[np.argsort(first[sel], kind="stable")]
        final[sel] = np.arange(1, len(sel) + 1)
        counts.append(len(sel))
        a = area[sel]
        df = pd.DataFrame({"label": np.arange(1, len(sel) + 1), "area_px": a.astype(np.int64), "area_phys": a * px})
        for i, name in enumerate(names):
            df[f"centroid_{name}"] = cs[sel, 1 + i] / a
        df["equivalent_diameter_px"] = (6 * a / np.pi) ** (1 / 3) if dims == 3 else np.sqrt(4 * a / np.pi)
        df["mean_intensity"] = cs[sel, -1] / a
        for name, i in reversed(list(zip(axes[:n_lead], u))):
            df.insert(0, "frame" if name == "T" else "slice", int(i))
        frames.append(df)
    return final[comp], pd.concat(frames, ignore_index=True), counts


def segment_chunked(model: CellModel, source, axes: str | None = None, *, progress=None, cancel=None,
                    **kwargs) -> ChunkedResult:
    """Blocking form of :func:`iter_segment_chunked` (``progress(Progress)``, ``cancel() -> bool``)."""
    return drive(iter_segment_chunked(model, source, axes, **kwargs), progress, cancel)
