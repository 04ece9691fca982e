"""How a model holds up on degraded copies of an annotated set: noise, coarse grey levels, blur,
uneven illumination, gamma.

    python benchmarks/robustness.py IMAGES_DIR MASKS_DIR [--model nuclei-fluo-2d ...] [--only NAME ...]

Every image is turned grey, then degraded at its original resolution (the seed is fixed), and
segmented with the default settings (diameter auto). One Markdown row per degradation: AP@0.5 /
DSB score / count error for each model (same scores as ``accuracy.py``). New acquisitions of the
same kind of cells differ in exactly these ways, so a model that only scores well on clean
validation images will not generalise.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from accuracy import evaluate
from scipy import ndimage as ndi

from napari_cellunet.arrays import as_slices
from napari_cellunet.models import DEFAULT_MODEL, load_model
from napari_cellunet.segment import PredictOptions, segment
from napari_cellunet.training import load_folder_pairs

Degrade = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _span(g: np.ndarray) -> float:
    lo, hi = np.percentile(g, [1, 99.8])
    return float(hi - lo) or 1.0


def gaussian_noise(fraction: float) -> Degrade:
    """White noise with std = ``fraction`` of the image's 1st-99.8th percentile range."""
    return lambda g, rng: g + rng.normal(0, fraction * _span(g), g.shape).astype(np.float32)


def photon_noise(photons: float) -> Degrade:
    """Poisson noise: ``photons`` at the 99.8th percentile above the minimum, 2 background photons."""
    return lambda g, rng: rng.poisson(np.clip(g - g.min(), 0, None) / _span(g) * photons + 2).astype(np.float32)


DEGRADATIONS: dict[str, Degrade] = {
    "none": lambda g, rng: g,
    "16-bit, x20 + 3000 (must equal none)": lambda g, rng: (g * 20 + 3000).astype(np.uint16),
    "Gaussian noise, 5% of the range": gaussian_noise(0.05),
    "Gaussian noise, 15% of the range": gaussian_noise(0.15),
    "photon noise, 20 photons": photon_noise(20),
    "8-bit at 15% contrast (coarse grey levels)": lambda g, rng: np.round(g * 0.15 + 30).astype(np.uint8),
    "blur, sigma 1.5 px": lambda g, rng: ndi.gaussian_filter(g, 1.5),
    "illumination falling to 30% across the image":
        lambda g, rng: g * np.linspace(0.3, 1, g.shape[1], dtype=np.float32),
    "gamma 0.5": lambda g, rng: (g / max(float(g.max()), 1.0)) ** 0.5,
    "gamma 2": lambda g, rng: (g / max(float(g.max()), 1.0)) ** 2,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("images")
    ap.add_argument("masks")
    ap.add_argument("--model", action="append", help="model name or file (repeat to compare)")
    ap.add_argument("--only", action="append", help="run only these degradations (names as in the table)")
    args = ap.parse_args()
    pairs = [(n, as_slices(img).data[0].astype(np.float32), m)
             for n, img, m in load_folder_pairs(args.images, args.masks)]
    model_args = args.model or [DEFAULT_MODEL]
    models = [load_model(m) for m in model_args]
    opts = PredictOptions(diameter="auto")
    names = args.only or list(DEGRADATIONS)
    print(f"{len(pairs)} images from {Path(args.images)}; AP@0.5 / DSB score / count error\n")
    print("| degradation | " + " | ".join(model_args) + " |")
    print("|---|" + "---:|" * len(models))
    for name in names:
        rng = np.random.default_rng(0)
        degraded = [(n, DEGRADATIONS[name](img, rng), m) for n, img, m in pairs]
        cells = []
        for model in models:
            s = evaluate(degraded, lambda img, model=model: segment(model, img[None], opts).labels[0])
            cells.append(f"{s['ap50']:.3f} / {s['dsb']:.3f} / {100 * s['count_error']:.1f}%")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
