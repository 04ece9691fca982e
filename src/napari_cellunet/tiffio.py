"""TIFF in and out with axes and physical pixel sizes (ImageJ hyperstacks, OME-TIFF, plain TIFF).

No napari here: the reader/writer plugins and the CLI build on these functions.
Axes use tifffile's letters (T time, Z depth, C channel, Y, X, S RGB samples);
other leading axes (I, Q, ...) become ``Q`` (a generic stack axis).
Large files are opened lazily as a dask array, one TIFF page per chunk.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LAZY_BYTES = 1 << 30  # files above 1 GiB open lazily
KNOWN_AXES = "TZCYXS"


@dataclass
class TiffImage:
    data: object                 # numpy or dask array
    axes: str                    # one letter per data axis, e.g. "TZCYX", "YXS"
    scale: dict[str, float] = field(default_factory=dict)  # physical size per spatial/time axis
    unit: str = "pixel"
    name: str = ""

    @property
    def rgb(self) -> bool:
        return self.axes.endswith("S") and self.data.shape[-1] in (3, 4)

    def scale_for(self, axes: str) -> tuple[float, ...]:
        return tuple(float(self.scale.get(a, 1.0)) for a in axes)


def _normalise_axes(axes: str) -> str:
    out = []
    for a in axes.upper():
        out.append(a if a in KNOWN_AXES else "Q")
    return "".join(out)


def _ome_scale(xml: str) -> tuple[dict[str, float], str]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}, "pixel"
    pixels = next((e for e in root.iter() if e.tag.endswith("Pixels")), None)
    if pixels is None:
        return {}, "pixel"
    scale = {}
    for axis in "XYZ":
        v = pixels.get(f"PhysicalSize{axis}")
        if v:
            scale[axis] = float(v)
    if pixels.get("TimeIncrement"):
        scale["T"] = float(pixels.get("TimeIncrement"))
    unit = pixels.get("PhysicalSizeXUnit", "µm" if scale else "pixel")
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
        scale["T"] = float(meta["finterval"])
    unit = meta.get("unit", "pixel" if not scale else "µm")
    if unit in ("micron", "um", "\\u00B5m"):
        unit = "µm"
    return scale, unit


def read_tiff(path: str | Path, lazy: bool | None = None) -> TiffImage:
    """Read a TIFF's first series with its axes and pixel sizes (lazy above 1 GiB)."""
    import tifffile

    path = Path(path)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = _normalise_axes(series.axes)
        if tif.is_ome and tif.ome_metadata:
            scale, unit = _ome_scale(tif.ome_metadata)
        elif tif.is_imagej:
            scale, unit = _resolution_scale(tif, tif.imagej_metadata or {})
        elif tif.is_shaped and tif.shaped_metadata:
            scale, unit = _resolution_scale(tif, dict(tif.shaped_metadata[0]))
        else:
            scale, unit = {}, "pixel"
        nbytes = int(np.prod(series.shape)) * np.dtype(series.dtype).itemsize
        if lazy is None:
            lazy = nbytes > LAZY_BYTES
        data = _lazy_series(path, series) if lazy else series.asarray()
    return TiffImage(data=data, axes=axes, scale=scale, unit=unit, name=path.stem)


def _lazy_series(path: Path, series):
    """A dask array reading one page per chunk (the file is reopened per read)."""
    import dask
    import dask.array as da
    import tifffile

    page_shape = tuple(series.pages[0].shape)
    n_pages = len(series.pages)

    def read_page(i):
        with tifffile.TiffFile(path) as t:
            return t.series[0].pages[i].asarray()

    pages = [da.from_delayed(dask.delayed(read_page)(i), page_shape, series.dtype) for i in range(n_pages)]
    return da.stack(pages).reshape(series.shape)


def write_tiff(path: str | Path, data: np.ndarray, axes: str, scale: dict[str, float] | None = None,
               unit: str = "µm") -> Path:
    """Write an ImageJ-compatible TIFF keeping axes and pixel sizes (zlib-compressed)."""
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
    imagej_ok = set(axes) <= set("TZCYXS") and data.dtype in (np.uint8, np.uint16, np.float32)
    if imagej_ok:
        tifffile.imwrite(path, data, imagej=True, metadata=meta, resolution=res, compression="zlib")
    else:  # e.g. uint32 labels: plain TIFF with the axes in the description
        tifffile.imwrite(path, data, metadata=meta, resolution=res, compression="zlib")
    return path
