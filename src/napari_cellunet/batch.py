"""Segment image files in batch (used by ``cellunet segment`` and ``cellunet demo``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .arrays import InputError, as_slices
from .inference import ProgressCallback
from .instances import InstanceParams
from .measure import measure_slices, write_csv
from .models import DEFAULT_MODEL, CellModel, load_model
from .segment import PredictOptions, segment

TIFF_SUFFIXES = (".tif", ".tiff")


class BatchError(Exception):
    """Some inputs could not be processed (message lists them)."""


def expand_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Files as given, folders expanded to their TIFF files (sorted); missing paths raise."""
    files: list[Path] = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in TIFF_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no TIFF files in folder {p}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return files


def read_image(path: Path) -> np.ndarray:
    """Read a TIFF (or any format scikit-image reads) with a one-line error on failure."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            return tifffile.imread(path)
        from skimage.io import imread

        return imread(path)
    except Exception as err:
        raise InputError(f"{path.name}: not a readable image ({type(err).__name__})") from err


def instance_params(model: CellModel, prob_threshold=None, seed_threshold=None, min_size=None) -> InstanceParams:
    """The model's default thresholds with any user overrides applied."""
    p = model.instance_params
    if prob_threshold is not None:
        p.prob_threshold = float(prob_threshold)
    if seed_threshold is not None:
        p.seed_threshold = float(seed_threshold)
    if min_size is not None:
        p.min_size = int(min_size)
    return p


def segment_files(inputs: Sequence[Path], outdir: Path, model: str | CellModel | None = None,
                  diameter: float | str | None = "auto", device: str = "auto", tile: int = 256,
                  tta: bool = False, prob_threshold=None, seed_threshold=None, min_size=None,
                  progress: ProgressCallback | None = None,
                  log: Callable[[str], None] | None = None) -> list[dict]:
    """Segment every input; write ``<stem>_labels.tif``, ``<stem>_measurements.csv`` and ``counts.csv``.

    Returns one row per input file. Files that fail are reported through ``log``
    and skipped; if any failed, :class:`BatchError` is raised after the others
    are written (so one bad file never loses the rest of a batch).
    """
    import tifffile

    files = expand_inputs(inputs)
    cm = model if isinstance(model, CellModel) else load_model(model or DEFAULT_MODEL)
    params = instance_params(cm, prob_threshold, seed_threshold, min_size)
    opts = PredictOptions(diameter=diameter, tile=tile, device=device, tta=tta)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rows, count_rows, failures = [], [], []
    for f in files:
        t0 = time.perf_counter()
        try:
            raw = read_image(f)
            slices = as_slices(raw, name=f.name)
        except InputError as err:
            failures.append(str(err))
            if log:
                log(f"skipped {err}")
            continue
        seg = segment(cm, slices.data, opts, params, progress=progress)
        labels = seg.labels.reshape(slices.spatial_shape)
        labels_name = f"{f.stem}_labels.tif"
        tifffile.imwrite(outdir / labels_name, labels, compression="zlib")
        table = measure_slices(seg.labels, slices.data)
        meas_name = f"{f.stem}_measurements.csv"
        write_csv(table, outdir / meas_name)
        seconds = time.perf_counter() - t0
        diam = round(seg.diameter, 1) if seg.diameter else None
        for i, c in enumerate(seg.counts):
            count_rows.append({"file": f.name, "slice": i, "count": c, "diameter_px": diam,
                               "seconds": round(seconds, 2)})
        rows.append({"file": f.name, "count": int(sum(seg.counts)), "labels": labels_name,
                     "measurements": meas_name, "diameter": diam, "seconds": seconds,
                     "note": slices.note})
        if log:
            log(f"{f.name}: {sum(seg.counts)} objects ({seconds:.1f} s)")
    write_csv(pd.DataFrame(count_rows, columns=["file", "slice", "count", "diameter_px", "seconds"]),
              outdir / "counts.csv")
    if failures:
        raise BatchError(f"{len(failures)} of {len(files)} input(s) failed: " + "; ".join(failures))
    return rows
