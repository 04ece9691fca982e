"""Segment image files in batch (used by ``cellunet segment`` and ``cellunet demo``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .arrays import InputError, check_values, guess_axes, select_channel
from .inference import ProgressCallback, drive
from .instances import InstanceParams
from .measure import write_csv
from .models import DEFAULT_MODEL, CellModel, load_model
from .segment import PredictOptions
from .stacks import count_rows, default_mode, iter_segment_stack, measure_stack
from .tiffio import read_tiff, write_tiff

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


def instance_params(model: CellModel, **overrides) -> InstanceParams:
    """The model's default post-processing parameters with the user's overrides (``None`` = keep)."""
    p = model.instance_params
    for name, value in overrides.items():
        if value is not None:
            setattr(p, name, type(getattr(p, name))(value))
    return p


def load_input(path: Path, axes: str | None = None, channel: int | None = None, as_float: bool = True):
    """Read a file; return ``(data, axes, scale per axis, unit, note)`` (axes among TZQYX).

    ``as_float`` validates values and converts to float32 (images); label images keep their ids.
    """
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            img = read_tiff(path)
        except Exception as err:
            raise InputError(f"{path.name}: not a readable TIFF ({type(err).__name__})") from err
        data, file_axes, scale, unit = np.asarray(img.data), img.axes, img.scale, img.unit
    else:
        data = read_image(path)
        rgb = data.ndim == 3 and data.shape[-1] in (3, 4)
        file_axes, scale, unit = guess_axes(data.shape, rgb), {}, "pixel"
    if axes:
        if len(axes) != data.ndim:
            raise InputError(f"{path.name}: --axes {axes!r} has {len(axes)} letters, image has "
                             f"{data.ndim} dimensions {data.shape}")
        file_axes = axes.upper()
    data, used_axes, note = select_channel(data, file_axes, channel, name=path.name)
    if as_float:
        data = check_values(data, name=path.name)
    elif not np.issubdtype(data.dtype, np.integer):
        raise InputError(f"{path.name}: a label image needs integer ids, got {data.dtype}")
    return data, used_axes, tuple(float(scale.get(a, 1.0)) for a in used_axes), unit, note


def segment_files(inputs: Sequence[Path], outdir: Path, model: str | CellModel | None = None,
                  diameter: float | str | None = "auto", device: str = "auto", tile: int = 256,
                  tta: bool = False, prob_threshold=None, seed_threshold=None, min_size=None,
                  min_brightness=None, merge_fragments=None, join_weak_borders=None, min_confidence=None,
                  merge_over_time: bool | None = None, axes: str | None = None, mode: str = "auto",
                  channel: int | None = None,
                  progress: ProgressCallback | None = None,
                  log: Callable[[str], None] | None = None) -> list[dict]:
    """Segment every input; write ``<stem>_labels.tif``, ``<stem>_measurements.csv`` and ``counts.csv``.

    2D images, z-stacks, time-lapses and TZYX stacks (``mode``: auto, 3d, frames,
    slices; see :mod:`napari_cellunet.stacks`). Returns one row per input file.
    Files that fail are reported through ``log`` and skipped; if any failed,
    :class:`BatchError` is raised after the others are written (one bad file
    never loses the rest of a batch).
    """
    files = expand_inputs(inputs)
    cm = model if isinstance(model, CellModel) else load_model(model or DEFAULT_MODEL)
    params = instance_params(cm, prob_threshold=prob_threshold, seed_threshold=seed_threshold, min_size=min_size,
                             min_brightness=min_brightness, merge_fragments=merge_fragments,
                             join_weak_borders=join_weak_borders, min_confidence=min_confidence,
                             merge_over_time=merge_over_time)
    opts = PredictOptions(diameter=diameter, tile=tile, device=device, tta=tta)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rows, count_rows_all, failures = [], [], []
    for f in files:
        t0 = time.perf_counter()
        try:
            data, ax, scale, unit, note = load_input(f, axes, channel)
            result = drive(iter_segment_stack(cm, data, ax, mode, scale, opts, params), progress)
        except (InputError, ValueError) as err:
            msg = str(err) if f.name in str(err) else f"{f.name}: {err}"
            failures.append(msg)
            if log:
                log(f"skipped {msg}")
            continue
        labels_name = f"{f.stem}_labels.tif"
        write_tiff(outdir / labels_name, result.labels, ax, dict(zip(ax, scale)), unit)
        meas_name = f"{f.stem}_measurements.csv"
        write_csv(measure_stack(result.labels, ax, result.mode, data, scale), outdir / meas_name)
        seconds = time.perf_counter() - t0
        diam = round(result.segmentation.diameter, 1) if result.segmentation.diameter else None
        per = count_rows(result.labels, ax, result.mode)
        for r in per:
            count_rows_all.append({"file": f.name, **r, "diameter_px": diam, "seconds": round(seconds, 2)})
        total = sum(r["count"] for r in per)
        rows.append({"file": f.name, "count": total, "labels": labels_name, "measurements": meas_name,
                     "diameter": diam, "seconds": seconds, "axes": ax, "mode": result.mode, "note": note})
        if log:
            log(f"{f.name}: {total} objects, axes {ax}, mode {result.mode} ({seconds:.1f} s)"
                + (f"; {note}" if note else ""))
    write_csv(pd.DataFrame(count_rows_all, columns=["file", "frame", "slice", "count", "diameter_px", "seconds"]),
              outdir / "counts.csv")
    if failures:
        raise BatchError(f"{len(failures)} of {len(files)} input(s) failed: " + "; ".join(failures))
    return rows


def count_files(inputs: Sequence[Path], outdir: Path, axes: str | None = None, mode: str = "auto",
                log: Callable[[str], None] | None = None) -> list[dict]:
    """Count objects in existing label images (distinct ids per image/frame/slice) -> ``counts.csv``."""
    files = expand_inputs(inputs)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for f in files:
        labels, ax, scale, unit, _ = load_input(f, axes, as_float=False)
        m = default_mode(ax) if mode in (None, "auto") else mode
        per = count_rows(labels, ax, m)
        rows += [{"file": f.name, **r} for r in per]
        if log:
            log(f"{f.name}: axes {ax}, mode {m}, {len(per)} count(s)")
    write_csv(pd.DataFrame(rows, columns=["file", "frame", "slice", "count"]), outdir / "counts.csv")
    return rows
