"""How sure the network was: a per-image (slice, frame, volume) signal a user can see beside the count.

``uncertainty`` is the mean class entropy (background / interior / boundary,
normalised to 0-1) over the pixels the network gives any real chance of being
an object (p(foreground) > 0.2). On val and shifted-val images it tracks the
per-image AP@0.5 (Spearman -0.51 for the bundled model; see docs/models.md):
above ``CHECK_ABOVE`` an image's count deserves a look (those images scored
AP@0.5 0.65 on average against 0.82 for the rest).
"""

from __future__ import annotations

import numpy as np

CHECK_ABOVE = 0.45
_FOREGROUND = 0.2


def uncertainty(probabilities: np.ndarray) -> float:
    """Mean normalised class entropy over the likely foreground of ``(outputs, *spatial)`` probabilities."""
    p = np.asarray(probabilities[:3], dtype=np.float32)
    likely = (1.0 - np.clip(p[0], 1e-6, 1.0)) > _FOREGROUND
    if not likely.any():
        return 0.0
    p = np.clip(p[:, likely], 1e-6, 1.0)  # the likely pixels only: entropy where it is averaged
    entropy = -(p * np.log(p)).sum(0)
    return float(entropy.mean() / np.log(3.0))


def per_unit(probabilities: np.ndarray, n_units: int) -> list[float]:
    """:func:`uncertainty` of each of ``n_units`` consecutive blocks of ``(N, outputs, *spatial)`` slices."""
    blocks = np.array_split(np.arange(len(probabilities)), n_units)
    return [round(float(np.mean([uncertainty(probabilities[i]) for i in b])), 4) for b in blocks]
