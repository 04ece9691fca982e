"""One block task: read and normalise the block, predict its tiles, post-process, number and sum its objects.

:func:`compute_block` runs in a local thread or on a cluster worker; it gets a
:class:`.plan._Block` (small) and returns the block's labels (core objects 1..n,
halo-only objects n+1..), ``n`` and per-object sums (area, coordinates, intensity).
"""

from __future__ import annotations

import copy
import threading

import numpy as np
from scipy import sparse

from ..inference import blending_weights, drive, iter_predict
from ..models import CellModel
from ..segment import labels_from_probabilities
from ..stacks import volume_labels
from ..zarrio import read_region
from .plan import _Block

_local = threading.local()


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
