"""Instance matching scores (StarDist / DSB2018 conventions).

Objects are matched one-to-one by the Hungarian algorithm on IoU; a pair counts
as a true positive when its IoU reaches the threshold.
AP = TP / (TP + FP + FN), F1 = 2TP / (2TP + FP + FN).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix


@dataclass
class MatchCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: MatchCounts) -> MatchCounts:
        return MatchCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def ap(self) -> float:
        d = self.tp + self.fp + self.fn
        return self.tp / d if d else 1.0

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else 1.0

    @property
    def precision(self) -> float:
        d = self.tp + self.fp
        return self.tp / d if d else 1.0

    @property
    def recall(self) -> float:
        d = self.tp + self.fn
        return self.tp / d if d else 1.0


def iou_matrix(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU between every true and predicted object (rows: truth ids, cols: pred ids)."""
    t = np.asarray(truth).ravel()
    p = np.asarray(pred).ravel()
    if t.shape != p.shape:
        raise ValueError(f"shape mismatch: truth {np.shape(truth)} vs prediction {np.shape(pred)}")
    t_ids, t_inv = np.unique(t, return_inverse=True)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    inter = coo_matrix((np.ones_like(t_inv, dtype=np.int64), (t_inv, p_inv)),
                       shape=(len(t_ids), len(p_ids))).toarray()
    t_area = inter.sum(1, keepdims=True)
    p_area = inter.sum(0, keepdims=True)
    union = t_area + p_area - inter
    iou = inter / np.maximum(union, 1)
    keep_t = t_ids != 0
    keep_p = p_ids != 0
    return iou[np.ix_(keep_t, keep_p)], t_ids[keep_t], p_ids[keep_p]


def match(truth: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = (0.5,)) -> list[MatchCounts]:
    """TP/FP/FN per IoU threshold after one-to-one Hungarian matching on IoU."""
    iou, t_ids, p_ids = iou_matrix(truth, pred)
    n_t, n_p = len(t_ids), len(p_ids)
    if n_t == 0 or n_p == 0:
        return [MatchCounts(0, n_p, n_t) for _ in thresholds]
    rows, cols = linear_sum_assignment(-iou)
    matched = iou[rows, cols]
    out = []
    for th in thresholds:
        tp = int((matched >= th).sum())
        out.append(MatchCounts(tp, n_p - tp, n_t - tp))
    return out


DSB_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2))


def dataset_scores(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Scores over many (truth, prediction) pairs.

    ``ap50``/``f1_50``/``ap75`` pool TP/FP/FN over the whole set (StarDist's
    ``by_image=False``); ``dsb`` is the mean over images of the AP averaged over
    IoU 0.5:0.05:0.95; ``count_error`` is mean |n_pred - n_true| / n_true.
    """
    pooled = [MatchCounts() for _ in DSB_THRESHOLDS]
    dsb, count_err, n_images = [], [], 0
    for truth, pred in pairs:
        counts = match(truth, pred, DSB_THRESHOLDS)
        pooled = [a + b for a, b in zip(pooled, counts)]
        dsb.append(float(np.mean([c.ap for c in counts])))
        n_true = len(np.unique(truth)) - (1 if (np.asarray(truth) == 0).any() else 0)
        n_pred = len(np.unique(pred)) - (1 if (np.asarray(pred) == 0).any() else 0)
        count_err.append(abs(n_pred - n_true) / max(n_true, 1))
        n_images += 1
    i50, i75 = DSB_THRESHOLDS.index(0.5), DSB_THRESHOLDS.index(0.75)
    return {
        "ap50": pooled[i50].ap,
        "f1_50": pooled[i50].f1,
        "ap75": pooled[i75].ap,
        "dsb": float(np.mean(dsb)) if dsb else float("nan"),
        "count_error": float(np.mean(count_err)) if count_err else float("nan"),
        "images": n_images,
    }
