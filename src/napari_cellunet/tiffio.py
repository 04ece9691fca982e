"""TIFF in and out with axes, physical pixel sizes and units (ImageJ hyperstacks, OME-TIFF, plain TIFF).

No napari here: the reader/writer plugins and the CLI build on these functions.
Axes use tifffile's letters (T time, Z depth, C channel, Y, X, S RGB samples);
other leading axes (I, Q, ...) become ``Q`` (a generic stack axis). Spatial
sizes are converted to one unit (µm when the file names a length unit, so Z in
nm beside XY in µm gives the right anisotropy); time to seconds. Large files are
opened lazily (``tifffile``'s zarr store + dask, chunked by page), and every
series of a file can be read (``series``).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")
LAZY_BYTES = 1 << 30  # files above 1 GiB open lazily
KNOWN_AXES = "TZCYXS"
MICROMETRES = {"nm": 1e-3, "nanometer": 1e-3, "µm": 1.0, "um": 1.0, "micron": 1.0, "micrometer": 1.0,
               "\\u00B5m": 1.0, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "m": 1e6, "meter": 1e6,
               "Å": 1e-4, "angstrom": 1e-4, "pm": 1e-6}
SECONDS = {"s": 1.0, "sec": 1.0, "second": 1.0, "ms": 1e-3, "millisecond": 1e-3, "min": 60.0, "minute": 60.0,
           "h": 3600.0, "hour": 3600.0, "µs": 1e-6, "us": 1e-6}


@dataclass
class TiffImage:
    data: object                 # numpy or dask array
    axes: str                    # one letter per data axis, e.g. "TZCYX", "YXS"
    scale: dict[str, float] = field(default_factory=dict)  # physical size per spatial/time axis
    unit: str = "pixel"          # unit of the spatial sizes ("µm" when the file gives a length unit)
    name: str = ""
    series: int = 0              # which series of the file
    n_series: int = 1            # how many the file has

    @property
    def rgb(self) -> bool:
        return self.axes.endswith("S") and self.data.shape[-1] in (3, 4)

    def scale_for(self, axes: str) -> tuple[float, ...]:
        return tuple(float(self.scale.get(a, 1.0)) for a in axes)

    def units_for(self, axes: str) -> tuple[str, ...]:
        """napari ``units`` per axis: the spatial unit, seconds for T, pixels where the file says nothing."""
        return tuple(("s" if "T" in self.scale else "pixel") if a == "T" else
                     (self.unit if a in self.scale else "pixel") for a in axes)


def _normalise_axes(axes: str) -> str:
    return "".join(a if a in KNOWN_AXES else "Q" for a in axes.upper())


def _length_factor(unit: str | None) -> float | None:
    """µm per ``unit`` (None when the unit is unknown or a pixel)."""
    return MICROMETRES.get(str(unit).strip()) if unit else None


def _ome_scale(xml: str, series: int = 0) -> tuple[dict[str, float], str]:
    """Pixel sizes of one OME image in µm (each axis's own PhysicalSize*Unit) and seconds."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}, "pixel"
    all_pixels = [e for e in root.iter() if e.tag.endswith("Pixels")]
    if not all_pixels:
        return {}, "pixel"
    pixels = all_pixels[min(series, len(all_pixels) - 1)]
    scale, unit = {}, "pixel"
    for axis in "XYZ":
        v = pixels.get(f"PhysicalSize{axis}")
        if v:
            factor = _length_factor(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
            scale[axis] = float(v) * (factor or 1.0)
            unit = "µm" if factor else str(pixels.get(f"PhysicalSize{axis}Unit"))
    if pixels.get("TimeIncrement"):
        scale["T"] = float(pixels.get("TimeIncrement")) * SECONDS.get(pixels.get("TimeIncrementUnit", "s"), 1.0)
    return scale, unit


def _resolution_scale(tif, meta: dict) -> tuple[dict[str, float], str]:
    """Pixel sizes from the resolution tags plus ImageJ-style ``spacing``/``finterval``/``unit``."""
    page = tif.pages[0]
    scale: dict[str, float] = {}
    for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
        t = page.tags.get(tag)
        if t is not None:
            num, den = t.value
            if num and den and num / den not in (0, 1, 72):  # 1 and 72 dpi mean "no calibration"
                scale[axis] = den / num
    if meta.get("spacing"):
        scale["Z"] = float(meta["spacing"])
    if meta.get("finterval"):
        scale["T"] = float(meta["finterval"]) * SECONDS.get(str(meta.get("tunit", "s")), 1.0)
    unit = str(meta.get("unit", "pixel" if not scale else "µm"))
    factor = _length_factor(unit)
    if factor:
        scale = {a: v * factor if a in "XYZ" else v for a, v in scale.items()}
        unit = "µm"
    return scale, unit


def read_tiff(path: str | Path, lazy: bool | None = None, series: int = 0) -> TiffImage:
    """Read one series of a TIFF with its axes and pixel sizes (lazy above 1 GiB)."""
    import tifffile

    path = Path(path)
    with tifffile.TiffFile(path) as tif:
        n_series = len(tif.series)
        if not 0 <= series < n_series:
            raise ValueError(f"{path.name} has {n_series} series; series {series} does not exist")
        s = tif.series[series]
        axes = _normalise_axes(s.axes)
        if tif.is_ome and tif.ome_metadata:
            scale, unit = _ome_scale(tif.ome_metadata, series)
        elif tif.is_imagej:
            scale, unit = _resolution_scale(tif, tif.imagej_metadata or {})
        elif tif.is_shaped and tif.shaped_metadata:
            scale, unit = _resolution_scale(tif, dict(tif.shaped_metadata[0]))
        else:
            scale, unit = {}, "pixel"
        nbytes = int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize
        if lazy is None:
            lazy = nbytes > LAZY_BYTES
        data = _lazy_series(path, series) if lazy else s.asarray()
    name = path.stem[:-4] if path.stem.lower().endswith(".ome") else path.stem
    name += f" [series {series}]" if n_series > 1 and series else ""
    return TiffImage(data=data, axes=axes, scale=scale, unit=unit, name=name, series=series, n_series=n_series)


def _lazy_series(path: Path, series: int):
    """A dask array over tifffile's zarr store of one series (chunks = pages; the file stays closed)."""
    import dask.array as da
    import tifffile
    import zarr

    store = tifffile.imread(path, aszarr=True, series=series)
    array = zarr.open(store, mode="r")
    if isinstance(array, zarr.Group):  # a pyramid: level 0
        array = array[sorted(array.array_keys())[0]]
    return da.from_zarr(array)


def write_tiff(path: str | Path, data: np.ndarray, axes: str, scale: dict[str, float] | None = None,
               unit: str = "µm", software: str | None = None) -> Path:
    """Write an ImageJ-compatible TIFF keeping axes and pixel sizes (zlib-compressed, grey: never RGB).

    Written to a temporary name in the same folder and renamed, so an interrupted
    write never leaves a truncated file under the final name.
    """
    import tifffile

    path = Path(path)
    data = np.asarray(data)
    scale = scale or {}
    axes = axes.upper()
    if len(axes) != data.ndim:
        raise ValueError(f"axes {axes!r} do not match data with {data.ndim} dimensions")
    meta: dict = {"axes": axes}
    if "Z" in scale:
        meta["spacing"] = scale["Z"]
    if "T" in scale:
        meta["finterval"] = scale["T"]
    if scale:
        meta["unit"] = "um" if unit in ("µm", "um", "micron") else unit
    res = None
    if "X" in scale and "Y" in scale:
        res = (1.0 / scale["X"], 1.0 / scale["Y"])
    imagej = set(axes) <= set("TZCYXS") and data.dtype in (np.uint8, np.uint16, np.float32)
    photometric = "rgb" if axes.endswith("S") else "minisblack"
    tmp = path.with_name(f".{path.name}.partial")
    try:  # uint32 labels and other axes: a plain TIFF with the axes in the description
        tifffile.imwrite(tmp, data, imagej=imagej, metadata=meta, resolution=res, compression="zlib",
                         photometric=photometric, software=software)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
