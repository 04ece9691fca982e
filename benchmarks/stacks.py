"""Stack targets on ../shared/data: time-lapse counts, 3D nuclei, counting a TZYX label image, memory.

    python benchmarks/stacks.py [--data ../shared/data] [--skip-memory]

Prints one line per target with the measured numbers and PASS/FAIL.
The memory check runs a 60x1024x1024 z-stack (the cells3d nuclei tiled 4x4) in
a subprocess (diameter given as 45 px, the cells3d nuclei size) and reads its peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from napari_cellunet.inference import drive
from napari_cellunet.measure import count_rows
from napari_cellunet.metrics import iou_matrix
from napari_cellunet.models import DEFAULT_MODEL, load_model
from napari_cellunet.stacks import iter_segment_stack


def report(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)


def timelapse(data: Path, model) -> None:
    movie = tifffile.imread(data / "ctc_timelapse_2d" / "timelapse.tif")
    truth = pd.read_csv(data / "ctc_timelapse_2d" / "counts_per_frame.csv")
    t0 = time.perf_counter()
    res = drive(iter_segment_stack(model, movie.astype(np.float32), "TYX", "frames"))
    dt = time.perf_counter() - t0
    col = "count" if "count" in truth else truth.columns[-1]
    diff = np.abs(np.array(res.counts) - truth[col].to_numpy())
    within = int((diff <= 1).sum())
    report("ctc_timelapse_2d per-frame counts", within >= 27,
           f"{within}/30 frames within ±1 (max |diff| {diff.max()}), {dt:.1f} s, "
           f"diameter {res.segmentation.diameter:.1f} px; predicted {res.counts}")


def nuclei3d(data: Path, model) -> None:
    vol = tifffile.imread(data / "cells3d_nuclei_3d" / "nuclei.tif")
    truth = tifffile.imread(data / "cells3d_nuclei_3d" / "nuclei_labels.tif")
    t0 = time.perf_counter()
    res = drive(iter_segment_stack(model, vol.astype(np.float32), "ZYX", "3d", scale=(0.29, 0.26, 0.26)))
    dt = time.perf_counter() - t0
    iou, t_ids, _ = iou_matrix(truth, res.labels)
    matched = int((iou.max(1) >= 0.5).sum())
    n = res.counts[0]
    report("cells3d_nuclei_3d 3D nuclei", 18 <= n <= 30 and matched >= 15,
           f"{n} nuclei (want 18-30), {matched}/{len(t_ids)} labelled nuclei matched at IoU>=0.5, {dt:.1f} s, "
           f"diameter {res.segmentation.diameter:.1f} px")


def tgmm(data: Path) -> None:
    t0 = time.perf_counter()
    labels = tifffile.imread(data / "tgmm_mini_3dt" / "tgmm_mini.tif")
    rows = count_rows(labels, "TZYX", "3d")
    dt = time.perf_counter() - t0
    truth = pd.read_csv(data / "tgmm_mini_3dt" / "counts_per_frame.csv")
    col = "count" if "count" in truth else truth.columns[-1]
    got = np.array([r["count"] for r in rows])
    equal = int((got == truth[col].to_numpy()).sum())
    report("tgmm_mini_3dt per-frame label counts", equal == len(truth) and dt < 10,
           f"{equal}/{len(truth)} frames equal, {dt:.2f} s (read + count)")


MEMORY_SNIPPET = """
import json, resource, sys, time, numpy as np, tifffile
from napari_cellunet.inference import drive
from napari_cellunet.models import load_model
from napari_cellunet.segment import PredictOptions
from napari_cellunet.stacks import iter_segment_stack
vol = np.tile(tifffile.imread(sys.argv[1]), (1, 4, 4))
model = load_model(sys.argv[2])
t0 = time.perf_counter()
opts = PredictOptions(diameter=float(sys.argv[3]))
res = drive(iter_segment_stack(model, vol, "ZYX", "3d", scale=(0.29, 0.26, 0.26), options=opts))
print(json.dumps({"seconds": time.perf_counter() - t0, "count": res.counts[0], "shape": list(vol.shape),
                  "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def memory(data: Path, model_name: str) -> None:
    out = subprocess.run([sys.executable, "-c", MEMORY_SNIPPET, str(data / "cells3d_nuclei_3d" / "nuclei.tif"),
                          model_name, "45"], capture_output=True, text=True)
    if out.returncode:
        report("60x1024x1024 3D run", False, out.stderr.strip().splitlines()[-1])
        return
    r = json.loads(out.stdout.strip().splitlines()[-1])
    report("60x1024x1024 3D run peak memory", r["peak_gb"] < 4,
           f"peak RSS {r['peak_gb']:.2f} GB, {r['seconds']:.0f} s, {r['count']} nuclei, shape {r['shape']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    data = Path(args.data)
    model = load_model(args.model)
    tgmm(data)
    timelapse(data, model)
    nuclei3d(data, model)
    if not args.skip_memory:
        memory(data, args.model)


if __name__ == "__main__":
    main()
