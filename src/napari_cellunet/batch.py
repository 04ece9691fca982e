"""Segment or count image files in batch (``cellunet segment``, ``cellunet count``, ``cellunet demo``).

Work is never lost: every output is written under a temporary name and renamed
when complete; two inputs with the same name get distinct outputs (``img``,
``img-2``, ...); files this tool wrote (its labels TIFFs) are never taken for
inputs; and ``counts.csv`` is merged by file: a run replaces the rows of the
files it processed and keeps the others (a failed file keeps its old rows).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .arrays import InputError, check_values, guess_axes, select_channel
from .inference import ProgressCallback, drive
from .measure import as_instance_labels, count_rows, index_columns, measure_stack, write_csv
from .models import DEFAULT_MODEL, CellModel, load_model
from .settings import PredictOptions
from .stacks import default_mode, iter_segment_stack
from .tiffio import TIFF_SUFFIXES, read_tiff, write_tiff
from .zarrio import is_zarr

CHUNK_ABOVE = 2**25   # pixels: bigger inputs are segmented in blocks (bounded memory)
DEFAULT_CHUNK = 2048  # block size then, unless --chunk says otherwise

SOFTWARE = "napari-cellunet"  # the TIFF Software tag of our outputs (so a folder's own results are skipped)
COUNT_COLUMNS = ["file", "frame", "slice", "count", "uncertainty", "check", "diameter_px", "seconds"]


class BatchError(Exception):
    """Some inputs could not be processed (message lists them)."""


def _is_our_output(path: Path) -> bool:
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            software = tif.pages[0].tags.get("Software")
            return software is not None and str(software.value).startswith(SOFTWARE)
    except Exception:
        return False


def _is_input(f: Path) -> bool:
    if is_zarr(f):
        return not f.name.endswith("_labels.zarr")
    return f.suffix.lower() in TIFF_SUFFIXES and not _is_our_output(f)


def expand_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Files (and .zarr stores) as given, folders expanded to their TIFFs and .zarr stores (sorted, without
    this tool's outputs)."""
    files: list[Path] = []
    for p in inputs:
        p = Path(p)
        if p.is_dir() and not is_zarr(p):
            found = sorted(f for f in p.iterdir() if _is_input(f))
            if not found:
                raise FileNotFoundError(f"no TIFF files in folder {p} (other than napari-cellunet's own outputs)")
            files += found
        elif p.is_file() or is_zarr(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    unique = list(dict.fromkeys(f.resolve() for f in files))
    return [Path(f) for f in unique]


def output_stems(files: Sequence[Path]) -> list[str]:
    """One output stem per input: its file stem, with -2, -3, ... where stems repeat (img.tif, img.tiff)."""
    stems, seen = [], {}
    for f in files:
        stem = f.stem[:-4] if f.stem.lower().endswith(".ome") else f.stem
        n = seen.get(stem.lower(), 0) + 1
        seen[stem.lower()] = n
        stems.append(stem if n == 1 else f"{stem}-{n}")
    return stems


def display_names(files: Sequence[Path]) -> list[str]:
    """The ``file`` column of counts.csv: the file name, with its folder where two inputs share a name."""
    names = [f.name for f in files]
    return [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name for f in files]


def read_image(path: Path) -> np.ndarray:
    """Read a non-TIFF image (any format scikit-image reads) with a one-line error on failure."""
    try:
        from skimage.io import imread

        return imread(path)
    except Exception as err:
        raise InputError(f"{path.name}: not a readable image ({type(err).__name__})") from err


@dataclass
class Loaded:
    data: Any            # numpy array (axes among TZQYX); integer ids for label images
    axes: str
    scale: tuple         # physical size per axis
    unit: str
    note: str            # what was done to the input (channel picked, RGB converted)


def load_input(path: Path, axes: str | None = None, channel: int | None = None, as_float: bool = True) -> Loaded:
    """Read a file's data with its axes, pixel sizes and unit (validated; images as float32)."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            img = read_tiff(path)
        except Exception as err:
            raise InputError(f"{path.name}: not a readable TIFF ({type(err).__name__}: {err})") from err
        data, file_axes, scale, unit = img.data, img.axes, img.scale, img.unit
    else:
        data = read_image(path)
        rgb = data.ndim == 3 and data.shape[-1] in (3, 4)
        file_axes, scale, unit = guess_axes(data.shape, rgb), {}, "pixel"
    if 0 in tuple(data.shape):  # before the axes: an empty page's axes say nothing
        raise InputError(f"{path.name} is empty (shape {tuple(data.shape)})")
    if axes:
        file_axes = axes.upper()
    data, used_axes, note = select_channel(np.asarray(data), file_axes, channel, name=path.name)
    if as_float:
        data = check_values(data, name=path.name)
    return Loaded(data, used_axes, tuple(float(scale.get(a, 1.0)) for a in used_axes), unit, note)


def merge_counts(path: Path, rows: list[dict], done: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """``counts.csv`` with the rows of the files in ``done`` replaced by ``rows`` (other files' rows kept)."""
    new = pd.DataFrame(rows, columns=list(columns))
    if path.exists():
        try:
            old = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise InputError(f"{path} exists but is not a counts table ({type(err).__name__}); move it away") from None
        if "file" in old:
            old = old[~old["file"].astype(str).isin(list(done))]
            new = pd.concat([old, new], ignore_index=True) if len(old) else new
    return new


def _write_counts(outdir: Path, rows: list[dict], done: Sequence[str], columns: Sequence[str]) -> None:
    if done:
        path = outdir / "counts.csv"
        write_csv(merge_counts(path, rows, done, columns), path)


def segment_files(inputs: Sequence[Path], outdir: Path, model: str | CellModel | None = None,
                  options: PredictOptions | None = None, thresholds: dict | None = None,
                  axes: str | None = None, mode: str = "auto", channel: int | None = None,
                  progress: ProgressCallback | None = None, log: Callable[[str], None] | None = None,
                  client=None) -> list[dict]:
    """Segment every input; write ``<stem>_labels.tif``, ``<stem>_measurements.csv`` and ``counts.csv``.

    Zarr inputs, inputs over ``CHUNK_ABOVE`` pixels, and any input when ``options.chunk``
    or a dask ``client`` (a ``distributed.Client``, a scheduler address or a number of
    local workers) is given are segmented block by block (:mod:`.chunked`) into
    ``<stem>_labels.zarr`` (OME-Zarr when the input is), with the same labels.

    ``thresholds`` overrides the model's post-processing defaults (field name ->
    value). 2D images, z-stacks, time-lapses and TZYX stacks (``mode``: auto,
    3d, frames, slices). Returns one row per segmented file. Files that fail
    are reported through ``log`` and skipped; if any failed, :class:`BatchError`
    is raised after the others are written (one bad file never loses the rest).
    """
    files = expand_inputs(inputs)
    cm = model if isinstance(model, CellModel) else load_model(model or DEFAULT_MODEL)
    params = replace(cm.instance_params, **(thresholds or {}))
    opts = options or PredictOptions()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rows, counts, failures = [], [], []
    for f, stem, name in zip(files, output_stems(files), display_names(files)):
        try:
            if _chunked(f, opts, client):
                row = _segment_chunked(cm, f, outdir, stem, name, opts, params, axes, mode, channel, client,
                                       progress, counts)
            else:
                row = _segment_in_memory(cm, f, outdir, stem, name, opts, params, axes, mode, channel, progress,
                                         counts)
        except (InputError, ValueError, MemoryError) as err:
            failures.append(str(err) if f.name in str(err) else f"{f.name}: {err}")
            if log:
                log(f"skipped {failures[-1]}")
            continue
        rows.append(row)
        if log:
            unsure = " — CHECK: the network was unsure here" if row["check"] else ""
            log(f"{f.name}: {row['count']} objects, axes {row['axes']}, mode {row['mode']} ({row['seconds']:.1f} s)"
                f"{unsure}" + (f"; {row['note']}" if row["note"] else "") + f" -> {row['labels']}")
    _write_counts(outdir, counts, [r["file"] for r in rows], COUNT_COLUMNS)
    if failures:
        raise BatchError(f"{len(failures)} of {len(files)} input(s) failed: " + "; ".join(failures))
    return rows


def _segment_in_memory(model, f: Path, outdir: Path, stem: str, name: str, opts, params, axes, mode, channel,
                       progress, counts: list) -> dict:
    """One input as a whole -> ``<stem>_labels.tif``, measurements CSV, rows of ``counts``."""
    t0 = time.perf_counter()
    item = load_input(f, axes, channel)
    result = drive(iter_segment_stack(model, item.data, item.axes, mode, item.scale, opts, params), progress)
    labels_name, meas_name = f"{stem}_labels.tif", f"{stem}_measurements.csv"
    write_tiff(outdir / labels_name, result.labels, item.axes, dict(zip(item.axes, item.scale)), item.unit,
               software=SOFTWARE)
    write_csv(measure_stack(result.labels, item.axes, result.mode, item.data, item.scale), outdir / meas_name)
    seconds = time.perf_counter() - t0
    diam = round(result.segmentation.diameter, 1) if result.segmentation.diameter else None
    per = count_rows(result.labels, item.axes, result.mode)
    counts += [{"file": name, **r, "uncertainty": u, "check": c, "diameter_px": diam, "seconds": round(seconds, 2)}
               for r, u, c in zip(per, result.uncertainty, result.check)]
    return {"file": name, "path": str(f), "count": sum(r["count"] for r in per),
            "uncertainty": max(result.uncertainty), "check": any(result.check), "labels": labels_name,
            "measurements": meas_name, "diameter": diam, "seconds": round(seconds, 3), "axes": item.axes,
            "mode": result.mode, "note": item.note}


def _lazy_source(path: Path, axes: str | None):
    """(lazy array or ZarrImage, axes, scale per axis) of a big input, without reading its pixels."""
    from .zarrio import read_zarr

    if is_zarr(path):
        img = read_zarr(path)
        return img, (axes or img.axes).upper(), img.scale_for((axes or img.axes).upper())
    img = read_tiff(path, lazy=True)
    used = (axes or img.axes).upper()
    if used.endswith("S"):
        raise InputError(f"{path.name}: RGB images are segmented in memory only; convert to grey first")
    return img.data, used, img.scale_for(used)


def _chunked(path: Path, opts: PredictOptions, client) -> bool:
    if is_zarr(path) or opts.chunk or client is not None:
        return True
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return int(np.prod(tif.series[0].shape)) > CHUNK_ABOVE
    except Exception:
        return False  # load_input reports what is wrong with the file


def _segment_chunked(model, f: Path, outdir: Path, stem: str, name: str, opts, params, axes, mode, channel, client,
                     progress, counts: list) -> dict:
    """One big input block by block -> ``<stem>_labels.zarr``, measurements CSV, rows of ``counts``."""
    from .chunked import iter_segment_chunked

    t0 = time.perf_counter()
    source, used, scale = _lazy_source(f, axes)
    out = outdir / f"{stem}_labels.zarr"
    res = drive(iter_segment_chunked(model, source, used, out=out, mode=mode, chunk=opts.chunk or DEFAULT_CHUNK,
                                     options=opts, params=params, scale=scale, client=client, channel=channel),
                progress)
    meas_name = f"{stem}_measurements.csv"
    write_csv(res.measurements, outdir / meas_name)
    seconds = time.perf_counter() - t0
    diam = round(res.diameter, 1) if res.diameter else None
    per = count_rows_of(res)
    counts += [{"file": name, **r, "uncertainty": None, "check": None, "diameter_px": diam,
                "seconds": round(seconds, 2)} for r in per]
    return {"file": name, "path": str(f), "count": sum(res.counts), "uncertainty": None, "check": None,
            "labels": out.name, "measurements": meas_name, "diameter": diam, "seconds": round(seconds, 3),
            "axes": res.axes, "mode": res.mode, "note": f"{len(res.blocks)} blocks ({res.engine})"}


def count_rows_of(res) -> list[dict]:
    """counts.csv rows (frame / slice / count) of a chunked result."""
    n_lead = len(res.axes) - (3 if res.mode == "3d" else 2)
    lead = np.ndindex(*(int(s) for s in res.labels.shape[:n_lead])) if n_lead else [()]
    return [{**index_columns(res.axes, idx), "count": int(n)} for idx, n in zip(lead, res.counts)]


def count_files(inputs: Sequence[Path], outdir: Path, axes: str | None = None, mode: str = "auto",
                log: Callable[[str], None] | None = None) -> list[dict]:
    """Count objects in existing label images (distinct ids, or components of a binary mask) -> ``counts.csv``."""
    files = expand_inputs(inputs)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for f, name in zip(files, display_names(files)):
        item = load_input(f, axes, as_float=False)
        m = default_mode(item.axes) if mode in (None, "auto") else mode
        try:
            labels = as_instance_labels(item.data, item.axes, m)
        except ValueError as err:
            raise InputError(f"{f.name}: {err}") from None
        per = count_rows(labels, item.axes, m)
        rows += [{"file": name, **r} for r in per]
        if log:
            log(f"{f.name}: axes {item.axes}, mode {m}, {len(per)} count(s)")
    _write_counts(outdir, rows, display_names(files), ["file", "frame", "slice", "count"])
    return rows
