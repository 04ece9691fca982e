"""npe2 reader: TIFF (ImageJ hyperstack, OME-TIFF, plain) -> napari layers with scale, units and axes.

Every series of a file becomes a layer (a multi-series file says so in the layer
names); integer files named like labels (``*label*``, ``*mask*``, ``*seg*``)
open as Labels. Big files open lazily.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..tiffio import TIFF_SUFFIXES, TiffImage, read_tiff
from ..zarrio import is_zarr, read_zarr

LABEL_HINTS = ("label", "mask", "seg")


def get_reader(path):
    """Return a reader for TIFF files and zarr / OME-Zarr stores (a path or a list of paths), else None."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(str(p).lower().endswith(TIFF_SUFFIXES) or is_zarr(p) for p in paths):
        return None
    return read_layers


def read_layers(path) -> list[tuple]:
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    out = []
    for p in paths:
        if is_zarr(p):
            out += zarr_layer(p)
            continue
        first = read_tiff(p)
        out += layer_tuples(first, source=str(p))
        for series in range(1, first.n_series):
            out += layer_tuples(read_tiff(p, series=series), source=str(p))
    return out


def layer_tuples(img: TiffImage, source: str = "") -> list[tuple]:
    """LayerData tuples: channels split via ``channel_axis``; integer '*label*/*mask*' files as Labels."""
    axes, data, rgb = img.axes, img.data, img.rgb
    layer_axes = axes.replace("C", "").replace("S", "")
    kwargs: dict = {
        "name": img.name,
        "scale": img.scale_for(layer_axes),
        "units": img.units_for(layer_axes),
        "axis_labels": tuple(a.lower() for a in layer_axes),
        "metadata": {"axes": layer_axes, "unit": img.unit, "source": source, "series": img.series},
    }
    is_labels = (np.issubdtype(data.dtype, np.integer) and not rgb
                 and any(h in img.name.lower() for h in LABEL_HINTS))
    if is_labels:
        if "C" in axes:
            data = np.take(np.asarray(data), 0, axis=axes.index("C"))
        return [(data, kwargs, "labels")]
    if "C" in axes and not rgb:
        c = axes.index("C")
        n = data.shape[c]
        kwargs["channel_axis"] = c
        kwargs["name"] = [f"{img.name} [ch{i}]" for i in range(n)]
        kwargs["metadata"] = [dict(kwargs["metadata"], channel=i) for i in range(n)]
    elif rgb:
        kwargs["rgb"] = True
    return [(data, kwargs, "image")]


def zarr_layer(path) -> list[tuple]:
    """One lazy layer of a zarr array or OME-Zarr image (every resolution level: napari shows any, the
    plugin processes level 0); never read whole."""
    import dask.array as da

    img = read_zarr(path)
    levels = [da.from_zarr(img.data)]
    if img.ome:
        level = 1
        while True:
            try:
                levels.append(da.from_zarr(read_zarr(path, level=level).data))
            except (ValueError, IndexError, KeyError):
                break
            level += 1
    axes = img.axes.replace("C", "")
    name = Path(path).name.split(".")[0]
    kwargs = {"name": name, "scale": img.scale_for(axes), "axis_labels": tuple(a.lower() for a in axes),
              "units": tuple(img.units.get(a, "pixel") for a in axes),
              "metadata": {"axes": axes, "unit": img.unit, "source": str(path)}, "multiscale": len(levels) > 1}
    data = levels if len(levels) > 1 else levels[0]
    kind = "labels" if np.issubdtype(img.data.dtype, np.integer) and any(h in name.lower() for h in LABEL_HINTS) \
        else "image"
    if "C" in img.axes and kind == "image":
        kwargs["channel_axis"] = img.axes.index("C")
        kwargs["name"] = [f"{name} [ch{i}]" for i in range(img.data.shape[img.axes.index("C")])]
    return [(data, kwargs, kind)]
