"""Accuracy of a model on a folder of images + instance masks, beside a classical baseline.

    python benchmarks/accuracy.py IMAGES_DIR MASKS_DIR [--model nuclei-fluo-2d] [--diameter auto]
                                  [--tta] [--no-baseline] [--limit N]

Reports pooled AP@0.5, F1@0.5, AP@0.75 (one-to-one Hungarian matching on IoU),
the DSB2018 score (mean per-image AP over IoU 0.5:0.05:0.95), count error
(mean |n_pred - n_true| / n_true) and images/s, for the model and for Otsu +
distance-transform watershed (scikit-image), as a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.segmentation import watershed

from napari_cellunet.arrays import as_slices
from napari_cellunet.metrics import dataset_scores
from napari_cellunet.models import DEFAULT_MODEL, load_model
from napari_cellunet.segment import PredictOptions, segment
from napari_cellunet.training import load_folder_pairs


def rescale_pair(image: np.ndarray, mask: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Zoom a 2D image (linear) and its instance mask (nearest) by ``factor``."""
    zoom = (factor, factor) + (1,) * (image.ndim - 2)
    img = ndi.zoom(image.astype(np.float32), zoom, order=1, grid_mode=True, mode="nearest")
    lab = ndi.zoom(mask, (factor, factor), order=0, grid_mode=True, mode="nearest")
    return img, lab


def otsu_watershed(image: np.ndarray, min_distance: int = 4) -> np.ndarray:
    """Classical baseline: smoothed Otsu foreground split by distance-transform watershed."""
    img = gaussian(as_slices(image).data[0], sigma=1, preserve_range=True)
    fg = img > threshold_otsu(img)
    if fg.mean() > 0.5:  # dark objects on a light background
        fg = ~fg
    dist = ndi.distance_transform_edt(fg)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=ndi.label(fg)[0], exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=fg)


def evaluate(pairs, predict) -> dict:
    t0 = time.perf_counter()
    preds = [predict(img) for _, img, _ in pairs]
    dt = time.perf_counter() - t0
    scores = dataset_scores((m, p) for (_, _, m), p in zip(pairs, preds))
    scores["images_per_s"] = len(pairs) / dt
    scores["mp_per_s"] = sum(img.shape[0] * img.shape[1] for _, img, _ in pairs) / 1e6 / dt
    return scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("images")
    ap.add_argument("masks")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--diameter", default="auto")
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "openvino"])
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--rescale", type=float, default=1.0,
                    help="zoom images (linear) and masks (nearest) first: a scale-robustness check")
    args = ap.parse_args()
    pairs = load_folder_pairs(args.images, args.masks)
    if args.limit:
        pairs = pairs[: args.limit]
    if args.rescale != 1:
        pairs = [(n, *rescale_pair(img, mask, args.rescale)) for n, img, mask in pairs]
    model = load_model(args.model)
    opts = PredictOptions(diameter=args.diameter, tta=args.tta, precision=args.precision, backend=args.backend)

    def run_model(img):
        return segment(model, as_slices(img).data, opts).labels[0]

    name = f"{model.name} (diameter {args.diameter}, {args.precision}, {args.backend}{', TTA' if args.tta else ''})"
    results = {name: evaluate(pairs, run_model)}
    if not args.no_baseline:
        results["Otsu + distance watershed (scikit-image)"] = evaluate(pairs, otsu_watershed)
    print(f"{len(pairs)} images from {Path(args.images)}" + (f", rescaled x{args.rescale}" if args.rescale != 1 else "")
          + "\n")
    print("| method | AP@0.5 | F1@0.5 | AP@0.75 | DSB score | count error | images/s | MP/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, s in results.items():
        print(f"| {name} | {s['ap50']:.3f} | {s['f1_50']:.3f} | {s['ap75']:.3f} | {s['dsb']:.3f} | "
              f"{100 * s['count_error']:.1f}% | {s['images_per_s']:.2f} | {s['mp_per_s']:.2f} |")


if __name__ == "__main__":
    main()
