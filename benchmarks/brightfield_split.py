"""Make the brightfield fine-tuning split used in docs/human-in-the-loop.md.

    python benchmarks/brightfield_split.py [--data ../shared/data] [--out bf]

The 16 grey brightfield images of ``dsb2018_other`` (``modality == bf_gray`` in
its ``index.csv``), in the order of that file: the first 10 go to
``OUT/train``, the last 6 to ``OUT/test`` (``images/`` + ``masks/``, copied).
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default="bf")
    ap.add_argument("--n-train", type=int, default=10)
    args = ap.parse_args()
    root = Path(args.data) / "dsb2018_other"
    with open(root / "index.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["modality"] == "bf_gray"]
    out = Path(args.out)
    for i, row in enumerate(rows):
        part = "train" if i < args.n_train else "test"
        for kind in ("images", "masks"):
            src = root / row["suggested_split"] / kind / f"{row['id']}.tif"
            dst = out / part / kind / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    print(f"{min(len(rows), args.n_train)} train / {max(0, len(rows) - args.n_train)} test images in {out}")


if __name__ == "__main__":
    main()
