"""Generalisation benchmark: val, shifted-val (held-out acquisition groups) and degraded copies, side by side.

    python benchmarks/shifted_val.py --model nuclei-fluo-2d [--model other.safetensors ...]
                                     [--precision auto [--precision bf16 ...]] [--robustness] [--diameter auto]
                                     [--limit N]

*val* is ``dsb2018_fluo/val`` (same experiments as train: flattering). *shifted-val* is every image of
the acquisition groups that ``benchmarks/acquisition_groups.py`` holds out (93 images; rare
acquisitions, 512x640, small tightly clustered nuclei) — a model trained with
``acquisition_groups.py --link``'s ``train`` folder has never seen them, so this is the number recipes
are chosen on. (The bundled models were trained on all groups: their shifted-val is not held out.)
``--robustness`` adds shifted-val under the degradations of ``benchmarks/robustness.py`` (the mean over
them and the worst). Every cell is AP@0.5 / DSB score / count error at ``diameter auto``, the defaults a
new user gets; per-group AP@0.5 follows.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import evaluate  # noqa: E402
from acquisition_groups import DEFAULT_DATA, read_groups, split_of  # noqa: E402
from robustness import DEGRADATIONS  # noqa: E402

from napari_cellunet.arrays import as_slices  # noqa: E402
from napari_cellunet.metrics import dataset_scores  # noqa: E402
from napari_cellunet.models import load_model  # noqa: E402
from napari_cellunet.segment import PredictOptions, segment  # noqa: E402
from napari_cellunet.settings import PRECISIONS  # noqa: E402

ROBUSTNESS = ("photon noise, 20 photons", "Gaussian noise, 15% of the range", "blur, sigma 1.5 px",
              "8-bit at 15% contrast (coarse grey levels)", "gamma 2", "illumination falling to 30% across the image")


def load_split(data: Path, part: str, limit: int = 0) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """(id, grey float32 image, mask, group) of one part: "val" (dsb2018 val) or "shifted"."""
    rows = [r for r in read_groups() if (r["split"] == "val" if part == "val" else split_of(r) == "shifted")]
    rows = rows[:limit] if limit else rows
    out = []
    for r in rows:
        img = tifffile.imread(data / r["split"] / "images" / f"{r['id']}.tif")
        mask = tifffile.imread(data / r["split"] / "masks" / f"{r['id']}.tif")
        out.append((r["id"], as_slices(img).data[0], mask, r["group"]))
    return out


def cell(s: dict) -> str:
    return f"{s['ap50']:.3f} / {s['dsb']:.3f} / {100 * s['count_error']:.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", help="model name or file (repeat to compare)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--diameter", default="auto")
    ap.add_argument("--robustness", action="store_true", help="also shifted-val under degradations")
    ap.add_argument("--limit", type=int, default=0, help="first N images of each part (quick checks)")
    ap.add_argument("--precision", action="append", choices=PRECISIONS,
                    help="network arithmetic (repeat to compare, e.g. bf16 against fp32); default auto")
    args = ap.parse_args()
    parts = {p: load_split(args.data, p, args.limit) for p in ("val", "shifted")}
    groups = sorted({g for *_, g in parts["shifted"]})
    print(f"val {len(parts['val'])} images, shifted-val {len(parts['shifted'])} images; AP@0.5 / DSB / count error "
          f"at diameter {args.diameter}\n")
    header = ["model", "val", "shifted-val"] + (["robustness mean", "worst"] if args.robustness else [])
    print("| " + " | ".join(header + [f"{g} AP@0.5" for g in groups]) + " | s |")
    print("|---|" + "---:|" * (len(header) - 1 + len(groups) + 1))
    for name, precision in itertools.product(args.model or ["nuclei-fluo-2d"], args.precision or ["auto"]):
        model = load_model(name)
        opts = PredictOptions(diameter=args.diameter, precision=precision)
        t0 = time.perf_counter()

        def run(img, model=model, opts=opts):
            return segment(model, img[None], opts).labels[0]

        val = evaluate([(i, img, m) for i, img, m, _ in parts["val"]], run)
        predicted = {i: run(img) for i, img, _, _ in parts["shifted"]}
        shifted = dataset_scores((m, predicted[i]) for i, _, m, _ in parts["shifted"])
        per_group = [dataset_scores((m, predicted[i]) for i, _, m, g in parts["shifted"] if g == group)["ap50"]
                     for group in groups]
        cells = [model.name + ("" if precision == "auto" else f" ({precision})"), cell(val), cell(shifted)]
        if args.robustness:
            degraded = []
            for d in ROBUSTNESS:
                rng = np.random.default_rng(0)
                pairs = [(i, DEGRADATIONS[d](img, rng), m) for i, img, m, _ in parts["shifted"]]
                degraded.append(evaluate(pairs, run))
            mean = {k: float(np.mean([s[k] for s in degraded])) for k in ("ap50", "dsb", "count_error")}
            cells += [cell(mean), f"{min(s['ap50'] for s in degraded):.3f}"]
        print("| " + " | ".join(cells + [f"{a:.3f}" for a in per_group]) + f" | {time.perf_counter() - t0:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
