"""Zarr in and out: OME-Zarr (NGFF 0.4/0.5) and plain zarr arrays, read lazily; labels written chunk by chunk.

* :func:`read_zarr` opens level 0 (or ``level``) of an OME-Zarr multiscale image
  with its axes, pixel sizes and units, or a plain zarr array (axes from its
  ``dimension_names``, else ``[Q…]YX``). Nothing is loaded until indexed.
* :func:`create_labels` makes the uint32 output: OME-Zarr (the NGFF version
  ome-zarr writes by default, one resolution level, ``image-label`` metadata) with
  the input's scale and units when the input was OME, plain zarr otherwise.
* :func:`read_region`, :func:`strided_sample`, :func:`channel_view`: lazy reads of
  numpy, zarr and dask arrays alike.
* :class:`BlockStore` keeps block labels in a temporary compressed store for
  :mod:`.chunked`; :func:`write_from_blocks` assembles the output chunk by chunk.

Unreadable or foreign stores raise ``ValueError`` with a one-line message naming the file.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

AXIS_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
UNIT_NAMES = {"µm": "micrometer", "um": "micrometer", "micron": "micrometer", "μm": "micrometer",
              "nm": "nanometer", "mm": "millimeter", "s": "second", "ms": "millisecond"}


@dataclass
class ZarrImage:
    data: zarr.Array                 # level 0 (lazy)
    axes: str                        # one letter per axis among T C Z Q Y X
    scale: dict[str, float] = field(default_factory=dict)  # physical size per axis (OME only)
    units: dict[str, str] = field(default_factory=dict)
    ome: bool = False
    path: Path | None = None

    @property
    def unit(self) -> str:
        return self.units.get("X", "pixel")

    def scale_for(self, axes: str) -> tuple[float, ...]:
        return tuple(float(self.scale.get(a, 1.0)) for a in axes)


def is_zarr(path: str | Path) -> bool:
    p = Path(path)
    return p.suffix.lower() == ".zarr" or any((p / f).exists() for f in ("zarr.json", ".zgroup", ".zarray"))


def labels_path(path: str | Path, outdir: str | Path | None = None) -> Path:
    """``<stem>_labels.zarr`` next to ``path`` (or in ``outdir``); ``x.ome.zarr`` -> ``x_labels.zarr``."""
    p = Path(path)
    stem = p.name
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return Path(outdir or p.parent) / f"{stem}_labels.zarr"


def _letters(names: Sequence[str], name: str) -> str:
    axes = "".join(n.upper() if n.upper() in "TCZYX" and len(n) == 1 else "Q" for n in names)
    if len(set(axes)) != len(axes):
        raise ValueError(f"{name}: unsupported axes {list(names)} (repeated or several unknown axes)")
    return axes


def _plain(arr: zarr.Array, p: Path) -> ZarrImage:
    names = getattr(arr.metadata, "dimension_names", None)
    if names and all(names):
        axes = _letters(names, p.name)
    else:
        axes = "Q" * (arr.ndim - 2) + "YX"
    if arr.ndim < 2:
        raise ValueError(f"{p.name}: a zarr array needs at least 2 dimensions, got shape {arr.shape}")
    return ZarrImage(arr, axes, {}, {}, False, p)


def _scale_of(transforms: list | None, n: int) -> list[float]:
    scale = [1.0] * n
    for t in transforms or []:
        if t.get("type") == "scale":
            scale = [a * float(b) for a, b in zip(scale, t["scale"])]
    return scale


def read_zarr(path: str | Path, level: int = 0) -> ZarrImage:
    """Open an OME-Zarr image (resolution ``level``) or a plain zarr array, lazily."""
    p = Path(path)
    try:
        node = zarr.open(store=str(p), mode="r")
    except Exception as err:
        raise ValueError(f"{p.name}: not a readable zarr store ({type(err).__name__})") from err
    if isinstance(node, zarr.Array):
        return _plain(node, p)
    attrs = dict(node.attrs)
    meta = attrs.get("ome", attrs)
    multiscales = meta.get("multiscales") if isinstance(meta, dict) else None
    if not multiscales:
        arrays = list(node.array_keys())
        if len(arrays) == 1:
            return _plain(node[arrays[0]], p)
        raise ValueError(f"{p.name}: a zarr group without OME-Zarr multiscales metadata "
                         f"({len(arrays)} arrays; open one of them or give an OME-Zarr image)")
    try:
        ms = multiscales[0]
        ds = ms["datasets"][level]
        arr = node[ds["path"]]
        names = [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", [])] or list("tczyx"[-arr.ndim:])
        axes = _letters(names, p.name)
        scale = _scale_of(ds.get("coordinateTransformations"), arr.ndim)
        scale = [a * b for a, b in zip(scale, _scale_of(ms.get("coordinateTransformations"), arr.ndim))]
        units = {a: d["unit"] for a, d in zip(axes, ms.get("axes", [])) if isinstance(d, dict) and d.get("unit")}
    except (KeyError, IndexError, TypeError, AttributeError) as err:
        raise ValueError(f"{p.name}: malformed OME-Zarr metadata ({type(err).__name__}: {err})") from err
    if len(axes) != arr.ndim:
        raise ValueError(f"{p.name}: OME axes {names} do not match the array's shape {arr.shape}")
    return ZarrImage(arr, axes, dict(zip(axes, scale)), units, True, p)


def create_labels(out, shape: Sequence[int], axes: str, chunks: Sequence[int], *, like: ZarrImage | None = None,
                  scale: Sequence[float] | None = None, unit: str | None = None,
                  ome: bool | None = None) -> zarr.Array:
    """An empty uint32 labels array: in memory (``out=None``), or at path ``out`` (replaced if present).

    OME-Zarr when ``ome`` (default: when ``like`` is an OME image), with
    ``scale``/``like``'s pixel sizes and units; plain zarr otherwise.
    """
    shape, chunks = tuple(int(s) for s in shape), tuple(int(c) for c in chunks)
    kw = {"shape": shape, "chunks": chunks, "dtype": np.uint32, "fill_value": 0}
    if out is None:
        return zarr.create_array(store=zarr.storage.MemoryStore(), **kw)
    path = Path(out)
    ome = (like is not None and like.ome) if ome is None else ome
    if not ome:
        return zarr.create_array(store=str(path), overwrite=True, dimension_names=[a.lower() for a in axes],
                                 attributes={"axes": axes}, **kw)
    from ome_zarr.format import CurrentFormat
    from ome_zarr.writer import add_metadata, write_multiscales_metadata

    if scale is None:
        scale = like.scale_for(axes) if like is not None else (1.0,) * len(axes)
    units = dict(like.units) if like is not None else {}
    if unit and unit != "pixel":
        units.update({a: UNIT_NAMES.get(unit, unit) for a in axes if a in "ZYX"})
    group = zarr.open_group(str(path), mode="w")
    arr = group.create_array("s0", **kw)
    ax = [{"name": a.lower(), **({"type": AXIS_TYPES[a]} if a in AXIS_TYPES else {}),
           **({"unit": UNIT_NAMES.get(units[a], units[a])} if a in units else {})} for a in axes]
    fmt = CurrentFormat()
    write_multiscales_metadata(group, [{"path": "s0", "coordinateTransformations": [
        {"type": "scale", "scale": [float(s) for s in scale]}]}], fmt=fmt, axes=ax, name="labels")
    add_metadata(group, {"image-label": {"version": fmt.version}}, fmt=fmt)
    return arr


def read_region(source, index: tuple) -> np.ndarray:
    """``source[index]`` as numpy (numpy, zarr, dask or any array-like; dask computed synchronously)."""
    a = source[index]
    return np.asarray(a.compute(scheduler="synchronous") if hasattr(a, "compute") else a)


def _as_dask(source):
    import dask.array as da

    return source if hasattr(source, "dask") else da.from_array(source, chunks=getattr(source, "chunks", "auto"))


def strided_sample(source, index: tuple) -> np.ndarray:
    """``source[index]`` for strided ``index``, read chunk by chunk (dask threads) unless ``source`` is numpy."""
    if isinstance(source, np.ndarray):
        return source[index]
    return np.asarray(_as_dask(source)[index].compute(scheduler="threads"))


def channel_view(source, axes: str, channel: int | None) -> tuple[object, str]:
    """A lazy (dask) view of channel ``channel`` (default 0) and the axes without C."""
    c = axes.index("C")
    ch = 0 if channel is None else int(channel)
    if not 0 <= ch < source.shape[c]:
        raise ValueError(f"channel {ch} out of range (the image has {source.shape[c]} channels)")
    return _as_dask(source)[(slice(None),) * c + (ch,)], axes.replace("C", "")


class BlockStore:
    """Temporary compressed store of block label arrays, addressed in image coordinates."""

    def __init__(self, temp_dir: str | Path | None = None):
        self.path = tempfile.mkdtemp(prefix="cellunet-blocks-", dir=temp_dir)
        self.group = zarr.open_group(self.path, mode="w")
        self.arrays: dict[int, tuple[zarr.Array, tuple[int, int]]] = {}

    def put(self, key: int, labels: np.ndarray, origin: tuple[int, int]) -> None:
        """Store ``(…, Y, X)`` labels whose [0, 0] pixel is at image ``origin`` (y, x)."""
        chunks = labels.shape[:-2] + tuple(min(256, s) for s in labels.shape[-2:])
        arr = self.group.create_array(f"b{key}", shape=labels.shape, dtype=labels.dtype, chunks=chunks,
                                      fill_value=0)
        arr[...] = labels
        self.arrays[key] = (arr, origin)

    def get(self, key: int, ys: tuple[int, int], xs: tuple[int, int], zs: slice | None = None) -> np.ndarray:
        arr, (y0, x0) = self.arrays[key]
        idx = (slice(ys[0] - y0, ys[1] - y0), slice(xs[0] - x0, xs[1] - x0))
        return arr[((zs if zs is not None else slice(None)),) * (arr.ndim - 2) + idx]

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def write_from_blocks(out: zarr.Array, store: BlockStore, luts: list[np.ndarray], ybounds: Sequence[int],
                      xbounds: Sequence[int], key_of: Callable[[tuple, int, int], int],
                      n_lead: int) -> Generator[int, None, None]:
    """Write ``out`` chunk by chunk from the block cores (``ybounds``/``xbounds``), ids mapped by ``luts[key]``."""
    yb, xb = np.asarray(ybounds), np.asarray(xbounds)
    inner = out.shape[n_lead:]
    steps = [range(0, s, c) for s, c in zip(inner, out.chunks[n_lead:])]
    k = 0
    for unit in itertools.product(*[range(s) for s in out.shape[:n_lead]]):
        for start in itertools.product(*steps):
            region = tuple(slice(a, min(a + c, s)) for a, c, s in zip(start, out.chunks[n_lead:], inner))
            ys, xs = region[-2], region[-1]
            buf = np.zeros([r.stop - r.start for r in region], np.uint32)
            for ky in range(np.searchsorted(yb, ys.start, "right") - 1, np.searchsorted(yb, ys.stop - 1, "right")):
                for kx in range(np.searchsorted(xb, xs.start, "right") - 1,
                                np.searchsorted(xb, xs.stop - 1, "right")):
                    key = key_of(unit, ky, kx)
                    y0, y1 = max(ys.start, yb[ky]), min(ys.stop, yb[ky + 1])
                    x0, x1 = max(xs.start, xb[kx]), min(xs.stop, xb[kx + 1])
                    piece = store.get(key, (y0, y1), (x0, x1), region[0] if len(region) == 3 else None)
                    buf[..., y0 - ys.start:y1 - ys.start, x0 - xs.start:x1 - xs.start] = luts[key][piece]
            out[unit + region] = buf
            k += 1
            yield k
