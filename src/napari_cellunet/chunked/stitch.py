"""From block labels to final objects: edges between neighbouring blocks, the equivalence graph, the reduction.

Where two blocks overlap (less half a halo from either block's cut edge), ids
that mostly coincide are joined (``connected_components``); the final objects
are the unions of the joined core parts, ids 1..n per unit, numbered in block
order, with their per-object sums reduced into the measurements table.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from ..segment import default_min_size
from .plan import _Block, _Plan


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


def _stitch(plan: _Plan, store, n_core: list[int], node_stats: list) -> tuple[list[np.ndarray], object, list[int]]:
    """Per block: the lookup table block id -> final id; and the measurements table, counts per unit."""
    img, blocks = plan.img, plan.blocks
    offsets = np.concatenate([[0], np.cumsum(n_core)]).astype(np.int64)
    src, dst = _edges(blocks, plan.grid, store, n_core, offsets, img.shape[-2:], plan.halo // 2)
    final, table, counts = _reduce(blocks, n_core, offsets, node_stats, src, dst, img.units, plan.stats, img.axes,
                                   img.mode, img.n_lead, img.scale, plan.params, plan.diameter)
    luts = [np.concatenate([[0], final[offsets[i]:offsets[i + 1]]]).astype(np.uint32) for i in range(len(blocks))]
    return luts, table, counts
