"""Validation scores and post-processing threshold tuning on cached validation probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..metrics import dataset_scores
from ..models import CellModel
from ..postprocess import DISTANCE, labels_from_probabilities
from ..segment import iter_segment, median_diameter
from ..settings import InstanceParams, PredictOptions


def val_scores(model: CellModel, val: Sequence[tuple[np.ndarray, np.ndarray]], opts: PredictOptions,
                params: InstanceParams):
    """Segment every val image as inference does (at its annotated diameter); return scores and probabilities."""
    cached, pairs = [], []
    for image, truth in val:
        # each val image is run at its annotated object size (when the model rescales), so model
        # selection measures segmentation, not the diameter estimate (benchmarks/accuracy.py scores "auto")
        d = median_diameter(truth) if model.diameter else None
        seg = yield from iter_segment(model, image[None], replace(opts, diameter=d), params)
        cached.append((seg.probabilities, seg.diameter))
        pairs.append((truth, seg.labels[0]))
    return dataset_scores(pairs), cached


def threshold_objective(scores: dict[str, float]) -> float:
    """What threshold tuning maximises: AP@0.5 + DSB score − count error (a counting tool needs all three)."""
    return scores["ap50"] + scores["dsb"] - scores["count_error"]


SEED_GRID = (0.4, 0.5, 0.6, 0.7)  # interior probability
DISTANCE_SEED_GRID = (0.4, 0.45, 0.5, 0.55, 0.6)  # distance output: a steep optimum near 0.5


def tune_thresholds(cached, truths, base: InstanceParams, prob_grid=(0.4, 0.5, 0.6, 0.7),
                    seed_grid=None) -> tuple[InstanceParams, dict[str, float]]:
    """Grid-search post-processing thresholds on cached val probabilities.

    The seed grid depends on whether the probabilities carry a distance output.
    Returns the parameters with the best :func:`threshold_objective` and their scores.
    """
    if seed_grid is None:
        seed_grid = DISTANCE_SEED_GRID if cached and cached[0][0].shape[1] > DISTANCE else SEED_GRID
    best, best_scores, best_value = base, {}, -np.inf
    for pt in prob_grid:
        for st in seed_grid:
            params = replace(base, prob_threshold=pt, seed_threshold=st)
            pairs = [(t, labels_from_probabilities(p, params, d)[0]) for (p, d), t in zip(cached, truths)]
            scores = dataset_scores(pairs)
            value = threshold_objective(scores)
            if value > best_value:
                best, best_scores, best_value = params, scores, value
    return best, best_scores
