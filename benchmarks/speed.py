"""CPU/GPU speed of the bundled model: network-only and end-to-end MP/s per precision setting.

    python benchmarks/speed.py [--size 1024] [--model nuclei-fluo-2d] [--repeats 3]

Network-only rows time ``inference.predict`` on a normalised image at the
model's scale (fp32 contiguous, fp32 channels_last, bf16 autocast +
channels_last); the end-to-end row times ``segment.segment`` with the default
settings (automatic diameter, post-processing included) on a real nuclei image
tiled to ``size``x``size``. MP/s counts input pixels.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_cellunet._sample_data import load_sample_image
from napari_cellunet.inference import iter_predict, drive
from napari_cellunet.models import DEFAULT_MODEL, load_model
from napari_cellunet.segment import PredictOptions, normalize_for_model, segment


def test_image(size: int) -> np.ndarray:
    s = load_sample_image()
    reps = -(-size // s.shape[0])
    return np.tile(s, (reps, reps))[:size, :size]


def time_it(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    model = load_model(args.model)
    image = test_image(args.size)
    mp = image.size / 1e6
    x = normalize_for_model(model, image[None])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"image {image.shape}, model {model.name} (base {model.config.base_channels}, depth {model.config.depth})")
    rows = []
    for label, precision, cl in [("fp32", "fp32", False), ("fp32 channels_last", "fp32", True),
                                 ("bf16 autocast + channels_last", "bf16", True)]:
        def run():
            return net_only(model.net, x, precision, cl, args.device)
        t = time_it(run, args.repeats)
        rows.append((f"network only, {label}", t, mp / t))
    opts = PredictOptions(device=args.device)
    t = time_it(lambda: segment(model, image[None], opts), args.repeats)
    seg = segment(model, image[None], opts)
    rows.append((f"end to end (auto diameter -> {seg.diameter:.1f}px, {seg.counts[0]} objects)", t, mp / t))
    print("| setting | seconds | MP/s |\n|---|---:|---:|")
    for name, t, r in rows:
        print(f"| {name} | {t:.2f} | {r:.2f} |")


def net_only(net, x, precision: str, channels_last: bool, device: str):
    """One sliding-window pass at a fixed precision and memory layout."""
    return drive(iter_predict(net, x, precision=precision, device=device, channels_last=channels_last))


if __name__ == "__main__":
    main()
