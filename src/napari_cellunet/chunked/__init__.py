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

import math
import os
import shutil
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import zarrio
from ..inference import Progress, drive
from ..models import CellModel
from ..segment import PredictOptions
from ..settings import InstanceParams
from .compute import compute_block
from .engines import _Engine, model_payload, worker_model
from .plan import (
    BLOCK_VOXELS_3D,
    HALO_DIAMETERS,
    MIN_HALO,
    _Block,
    _chunk_yx,
    _make_plan,
    _open_image,
    _Plan,
    resize_matrix,
)
from .prepare import ESTIMATION_CROP, SUBSAMPLE_PIXELS, _diameter, _percentiles
from .stitch import _stitch

__all__ = ["BLOCK_VOXELS_3D", "ESTIMATION_CROP", "HALO_DIAMETERS", "MIN_HALO", "SUBSAMPLE_PIXELS", "ChunkedResult",
           "compute_block", "iter_segment_chunked", "model_payload", "resize_matrix", "segment_chunked",
           "worker_model"]


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
    t_start = time.perf_counter()
    opts, params = options or PredictOptions(), params or model.instance_params
    if model.config.dims != 2:
        raise ValueError("chunked segmentation needs a 2D model (3D models: use stacks.iter_segment_stack)")
    img = _open_image(source, axes, mode, scale, channel)
    stats = _percentiles(model, img)
    used = yield from _diameter(model, img.source, img.units, img.depth, img.shape, stats, opts, params)
    plan = _make_plan(model, img, stats, used, opts, params, chunk, halo)
    out, out_path = _open_output(out, plan)
    table, counts, engine = yield from _run(model, plan, out, out_path, client, workers, temp_dir)
    count_axis = "image" if img.n_lead == 0 else ("frame" if img.axes[0] == "T" else "slice")
    cores = [(slice(*yb.core), slice(*xb.core)) for yb in plan.by for xb in plan.bx]
    return ChunkedResult(out, img.axes, img.mode, counts, count_axis, table, used, cores,
                         [(float(s[0]), float(s[1])) for s in stats], time.perf_counter() - t_start, engine)


def _open_output(out, plan: _Plan):
    """``(labels array, its path or None)``: a new zarr array (in memory or at ``out``) or the caller's."""
    img = plan.img
    cy, cx = _chunk_yx(plan.chunk)
    out_path = Path(out) if isinstance(out, (str, os.PathLike)) else None
    if out is None or out_path is not None:
        zs = (max(1, min(img.depth, 2**24 // (cy * cx))),) if img.depth > 1 else ()
        out = zarrio.create_labels(out, img.shape, img.axes, (1,) * img.n_lead + zs + (cy, cx), like=img.like,
                                   scale=img.scale)
    if tuple(out.shape) != img.shape:
        raise ValueError(f"output array has shape {tuple(out.shape)}, the image {img.shape}")
    return out, out_path


def _run(model: CellModel, plan: _Plan, out, out_path: Path | None, client, workers: int | None,
         temp_dir: str | None):
    """Predict every block, stitch, write the labels; returns ``(table, counts, engine name)``.

    Block labels wait in a temporary :class:`..zarrio.BlockStore`. Cancelled or
    failed: the engine and store are closed, and no half-written labels are left at ``out_path``.
    """
    n_lead, blocks = plan.img.n_lead, plan.blocks
    total = len(blocks) + len(plan.img.units) * math.prod(math.ceil(s / c) for s, c in
                                                          zip(out.shape[n_lead:], out.chunks[n_lead:]))
    engine = store = None
    pending: dict = {}
    finished = False
    try:
        store = zarrio.BlockStore(temp_dir)
        engine = _Engine(model, plan.img.source, client, workers)
        yield Progress(0, total, f"{len(blocks)} blocks on {engine.name}")
        n_core, node_stats = yield from _predict_blocks(engine, blocks, store, pending, total)
        luts, table, counts = _stitch(plan, store, n_core, node_stats)
        grid = plan.grid
        unit_at = {u: i for i, u in enumerate(plan.img.units)}
        key_of = lambda unit, ky, kx: (unit_at[unit] * grid[1] + ky) * grid[2] + kx  # noqa: E731
        for k in zarrio.write_from_blocks(out, store, luts, plan.ay.bounds, plan.ax.bounds, key_of, n_lead):
            yield Progress(len(blocks) + k, total, "writing labels")
        finished = True
    finally:
        if engine is not None:
            engine.close(pending)
        if store is not None:
            store.close()
        if not finished and out_path is not None:  # cancelled or failed: no half-written labels left behind
            shutil.rmtree(out_path, ignore_errors=True)
    return table, counts, engine.name


def _predict_blocks(engine: _Engine, blocks: list[_Block], store, pending: dict, total: int):
    """Run the blocks (at most two per engine slot in flight, in ``pending``); their labels go to ``store``.

    Yields progress per finished block; returns ``(n_core, node_stats)``: per block,
    its number of core objects and their sums.
    """
    n_core, node_stats = [0] * len(blocks), [None] * len(blocks)
    todo, done = iter(blocks), 0
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
    return n_core, node_stats


def segment_chunked(model: CellModel, source, axes: str | None = None, *, progress=None, cancel=None,
                    **kwargs) -> ChunkedResult:
    """Blocking form of :func:`iter_segment_chunked` (``progress(Progress)``, ``cancel() -> bool``)."""
    return drive(iter_segment_chunked(model, source, axes, **kwargs), progress, cancel)
