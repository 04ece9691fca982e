"""Geometry: the image's units, per-axis resize weights, the global tile grid, block borders, the blocks.

Prediction in a block is exact because every block uses the global model-space
grid: the same resize weights as :func:`..inference.resize_spatial`
(:func:`resize_matrix`) and the same tile starts as :func:`..inference.iter_predict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse

from .. import zarrio
from ..arrays import check_axes
from ..inference import tile_grid
from ..models import CellModel
from ..segment import PredictOptions
from ..settings import InstanceParams
from ..stacks import resolve_mode
from ..zarrio import channel_view

BLOCK_VOXELS_3D = 2**25    # default 3D block (Z x Y x X incl. halo) about this big
HALO_DIAMETERS = 1.5       # post-processing halo: 1.5 object diameters...
MIN_HALO = 32              # ...and at least this many image px
MIN_BLOCK_TILE = 256       # tiles in blocks: a quarter block, at least this (see block_tile)


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

    def __init__(self, n: int, m: int, tile: int, overlap_px: int, multiple: int,
                 down_aa: bool, up_aa: bool, chunk: int, halo: int):
        self.n, self.m, self.halo = n, m, halo
        self.tile, starts = tile_grid(m, tile, overlap_px, multiple)  # as iter_predict
        self.starts = np.asarray(starts)
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


@dataclass
class _Image:
    """The source as the blocks see it (channel picked); each unit is one 2D image or one volume."""

    source: object
    axes: str
    scale: tuple | None           # physical pixel size per axis (without C), or None
    like: object                  # the ZarrImage it came from (output metadata), or None
    mode: str                     # "2d", "frames", "slices" or "3d"
    n_lead: int                   # leading axes that index units
    shape: tuple[int, ...]
    depth: int                    # Z slices per unit (1 unless mode "3d")
    units: list[tuple[int, ...]]
    z_ratio: float                # Z / X pixel size (mode "3d")


def _units(axes: str, mode: str) -> tuple[str, int]:
    """``(mode, number of leading axes that index units)``; each unit is one 2D image or one volume."""
    if len(axes) == 2:
        return "2d", 0
    mode = resolve_mode(axes, mode)
    return mode, len(axes) - (3 if mode == "3d" else 2)


def _open_image(source, axes: str | None, mode: str, scale, channel: int | None) -> _Image:
    """Unwrap a :class:`..zarrio.ZarrImage`, check the axes, pick the channel, list the units."""
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
    return _Image(source, axes, scale, like, mode, n_lead, shape, depth, units, z_ratio)


def _chunk_yx(chunk) -> tuple[int, int]:
    return (chunk, chunk) if isinstance(chunk, int) else tuple(int(c) for c in chunk)


def _axes_plan(model: CellModel, shape: tuple, used: float | None, opts: PredictOptions, chunk, halo: int):
    """The Y and X :class:`_Axis` (model sizes and antialiasing exactly as ``segment._predict_at``)."""
    factor = model.diameter / used if used else 1.0
    n = shape[-2:]
    m = tuple(max(8, int(round(s * factor))) for s in n) if abs(factor - 1) > 1e-3 else n
    down_aa, up_aa = any(a < b for a, b in zip(m, n)), any(a < b for a, b in zip(n, m))
    cy, cx = _chunk_yx(chunk)
    if min(cy, cx) < 16:
        raise ValueError(f"chunk must be at least 16 pixels per axis, got {chunk}")
    overlap_px = int(round(opts.overlap * opts.tile))
    return [_Axis(a, b, block_tile(opts, c), overlap_px, model.net.size_multiple, down_aa, up_aa, c, halo)
            for a, b, c in zip(n, m, (cy, cx))]


def block_tile(opts: PredictOptions, chunk: int) -> int:
    """Tile size in blocks of ``chunk`` px: at most a quarter block (256 px at least), so that few tiles
    straddle block borders and are predicted twice; the overlap stays ``opts.overlap * opts.tile`` px."""
    return min(opts.tile, max(MIN_BLOCK_TILE, chunk // 4))


@dataclass
class _Plan:
    """The blocks of one job and what the passes over them need."""

    img: _Image
    stats: list[tuple]            # per unit: (low, high, 1%) percentiles
    diameter: float | None        # used (image px), None: no rescaling
    params: InstanceParams
    halo: int                     # post-processing halo (image px)
    chunk: int | tuple            # block core / output chunk size (Y, X)
    ay: _Axis
    ax: _Axis
    by: list[_AxisBlock]
    bx: list[_AxisBlock]
    blocks: list[_Block]

    @property
    def grid(self) -> tuple[int, int, int]:
        return len(self.img.units), len(self.by), len(self.bx)


def _halo_px(halo: int | None, used: float | None) -> int:
    return int(halo if halo is not None else max(MIN_HALO, math.ceil(HALO_DIAMETERS * (used or 20.0))))


def _default_chunk(model: CellModel, opts: PredictOptions, used: float | None, depth: int, h: int) -> int:
    """1024 in 2D; 3D: ~``BLOCK_VOXELS_3D`` per block, but at least a tile step (else tiles are re-predicted)."""
    tile = min(opts.tile, MIN_BLOCK_TILE)  # the tile of a block not yet sized
    step = (tile - opts.overlap * opts.tile) * (used / model.diameter if used else 1.0)
    c = 1024 if depth == 1 else max(step, math.sqrt(BLOCK_VOXELS_3D / depth) - 2 * h)
    return max(256, min(1024, int(c) // 32 * 32))


def _make_plan(model: CellModel, img: _Image, stats: list[tuple], used: float | None, opts: PredictOptions,
               params: InstanceParams, chunk, halo: int | None) -> _Plan:
    """Halo, block size, the two axes and every block (units in order, then Y, then X)."""
    h = _halo_px(halo, used)
    if chunk is None:
        chunk = _default_chunk(model, opts, used, img.depth, h)
    ay, ax = _axes_plan(model, img.shape, used, opts, chunk, h)
    by, bx = [ay.block(k) for k in range(len(ay.bounds) - 1)], [ax.block(k) for k in range(len(ax.bounds) - 1)]
    cells = ((ui, u, yb, xb) for ui, u in enumerate(img.units) for yb in by for xb in bx)
    blocks = [_Block(i, u, yb, xb, img.depth, stats[ui][0], stats[ui][1], model.invert, used, params, opts,
                     img.z_ratio) for i, (ui, u, yb, xb) in enumerate(cells)]
    return _Plan(img, stats, used, params, h, chunk, ay, ax, by, bx, blocks)
