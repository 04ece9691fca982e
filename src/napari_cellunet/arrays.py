"""Turn user arrays (layers, TIFF files) into what the model takes, with clear errors.

Accepted: 2D ``(Y, X)``, RGB/RGBA ``(Y, X, 3|4)`` (converted to grey), and a
stack of 2D slices ``(N, Y, X)`` segmented slice by slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_PIXELS = 2**31  # refuse silly sizes before allocating float copies
STACK_AXES = "TZQ"   # leading axes a run understands (time, depth, other)


class InputError(ValueError):
    """The array cannot be segmented as given (message says why)."""


def label_dtype(max_id: int) -> type:
    """The smallest unsigned type for label ids up to ``max_id`` (uint16, else uint32)."""
    return np.uint16 if max_id < 2**16 else np.uint32


def relabel(labels: np.ndarray, mapping: np.ndarray | None = None, keep: np.ndarray | None = None) -> np.ndarray:
    """Ids renumbered 1..n in their order (0 stays 0), after ``mapping`` (old id -> new id) and ``keep``
    (old id -> bool; dropped ids become 0).

    The same result as ``skimage.segmentation.relabel_sequential`` (of ``mapping[labels]`` with the dropped
    ids zeroed), in O(pixels + ids) without sorting; the smallest dtype that holds n.
    """
    labels = np.asarray(labels)
    n = int(labels.max(initial=0))
    ids = np.arange(n + 1) if mapping is None else np.asarray(mapping)
    if keep is not None:
        ids = np.where(keep, ids, 0)
    present = np.zeros(int(ids.max(initial=0)) + 1, bool)
    present[ids[np.bincount(labels.ravel(), minlength=n + 1) > 0]] = True
    present[0] = False
    new = np.cumsum(present)
    table = np.where(present, new, 0).astype(label_dtype(int(new[-1])))[ids]
    return table[labels]


def count_objects(labels: np.ndarray) -> int:
    """Number of distinct non-zero labels."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return 0
    if labels.dtype.kind in "ui" and labels.min() >= 0 and int(labels.max()) < 4 * labels.size + 1024:
        return int(np.count_nonzero(np.bincount(labels.ravel())[1:]))  # far faster than np.unique
    ids = np.unique(labels)
    return int((ids != 0).sum())


def check_axes(axes: str, shape: tuple, allowed: str = STACK_AXES + "YX", name: str = "image") -> str:
    """Axes letters for an array of ``shape``, upper-cased and checked; raises :class:`InputError`.

    One letter per dimension from ``allowed``, each at most once, ending in YX,
    with at most two stack axes (T, Z, Q) before YX.
    """
    axes = str(axes).strip().upper()
    shape = tuple(shape)
    if len(axes) != len(shape):
        raise InputError(f"{name}: axes {axes!r} have {len(axes)} letters, the data has {len(shape)} "
                         f"dimensions {shape}")
    if len(set(axes)) != len(axes) or not set(axes) <= set(allowed):
        raise InputError(f"{name}: unsupported axes {axes!r}: use {', '.join(allowed)} (T time, Z depth, "
                         "Q other stack, C channel, S RGB), each at most once")
    spatial = axes.replace("C", "").replace("S", "")
    if not spatial.endswith("YX") or ("S" in axes and not axes.endswith("S")):
        raise InputError(f"{name}: unsupported axes {axes!r}: the last two must be Y and X (only an RGB axis S "
                         "may follow)")
    if len(spatial) > 4:
        raise InputError(f"{name}: unsupported axes {axes!r} (shape {shape}): at most two stack axes before YX "
                         "(e.g. TZYX); pick a channel or give the axes")
    return axes


@dataclass
class Slices:
    data: np.ndarray         # (N, Y, X) float32 grey slices
    spatial_shape: tuple     # shape labels must have to match the input (no channel axis)
    note: str = ""           # what was done to the input, for the user


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """Luminance of an RGB(A) image (alpha ignored)."""
    rgb = np.asarray(rgb, dtype=np.float32)[..., :3]
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def as_slices(array, rgb: bool | None = None, name: str = "image") -> Slices:
    """Validate ``array`` and return grey ``(N, Y, X)`` slices.

    ``rgb=None`` guesses RGB from a trailing axis of 3 or 4 on a 3D array.
    """
    a = np.asarray(array)
    if a.dtype.kind not in "biuf":
        raise InputError(f"{name}: unsupported data type {a.dtype} (need numbers)")
    note = ""
    if rgb is None:
        rgb = a.ndim == 3 and a.shape[-1] in (3, 4) and a.shape[0] > 4
    if rgb:
        if a.shape[-1] not in (3, 4) or a.size == 0:
            raise InputError(f"{name}: RGB needs 3 or 4 channels last, got shape {a.shape}")
        a = to_grey(a)
        note = "RGB converted to grey (luminance)"
    if a.ndim not in (2, 3):
        raise InputError(f"{name}: unsupported shape {a.shape}; expected (Y, X), (Y, X, RGB) or (N, Y, X)")
    if a.ndim == 3 and not note:
        note = f"{a.shape[0]} slices segmented one by one"
    data = check_values(a[None] if a.ndim == 2 else a, name)
    return Slices(data=data, spatial_shape=tuple(a.shape), note=note)


def guess_axes(shape: tuple, rgb: bool = False) -> str:
    """Axes for an array without metadata: YX, (S), and Q for leading stack axes."""
    n = len(shape) - (1 if rgb else 0)
    if n < 2:
        raise InputError(f"need at least 2 spatial dimensions, got shape {shape}")
    return "Q" * (n - 2) + "YX" + ("S" if rgb else "")


def select_channel(array, axes: str, channel: int | None = None, name: str = "image"):
    """Drop the C axis (picking ``channel``) and convert RGB (S) to grey.

    Returns ``(data, axes, note)`` with axes among T, Z, Q, Y, X.
    """
    a = array
    axes = check_axes(axes, a.shape, allowed=STACK_AXES + "CYXS", name=name)
    notes = []
    if "C" in axes:
        c = axes.index("C")
        n = a.shape[c]
        ch = 0 if channel is None else int(channel)
        if not 0 <= ch < n:
            raise InputError(f"{name}: channel {ch} out of range (image has {n} channels)")
        a = np.take(a, ch, axis=c)
        axes = axes.replace("C", "")
        if n > 1:
            notes.append(f"channel {ch} of {n}")
    elif channel not in (None, 0):
        raise InputError(f"{name}: channel {channel} asked for, but the image has no channel axis (axes {axes!r})")
    if axes.endswith("S"):
        a = to_grey(np.asarray(a))
        axes = axes[:-1]
        notes.append("RGB converted to grey")
    return a, check_axes(axes, a.shape, name=name), ", ".join(notes)


def check_values(a: np.ndarray, name: str = "image", convert: bool = True) -> np.ndarray:
    """Reject empty, non-numeric, huge or all-NaN arrays; return float32 (``convert=False``: as given).

    ``convert=False`` checks without copying (the widget, on the GUI thread; its worker converts).
    """
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise InputError(f"{name}: unsupported data type {a.dtype} (need numbers)")
    if a.size == 0:
        raise InputError(f"{name} is empty (shape {a.shape})")
    if a.ndim < 2:
        raise InputError(f"{name}: need at least 2 dimensions (Y, X), got shape {a.shape}")
    if a.size > MAX_PIXELS:
        raise InputError(f"{name} is too large ({a.size:,} values); crop it or split it first")
    if min(a.shape[-2:]) < 4:
        raise InputError(f"{name}: image too small ({a.shape[-2]}x{a.shape[-1]} pixels)")
    if a.dtype.kind == "f" and not np.isfinite(a).any():  # integers are always finite
        raise InputError(f"{name} has no finite values (all NaN/inf)")
    return a.astype(np.float32, copy=False) if convert else a
