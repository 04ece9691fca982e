"""Turn user arrays (layers, TIFF files) into what the model takes, with clear errors.

Accepted: 2D ``(Y, X)``, RGB/RGBA ``(Y, X, 3|4)`` (converted to grey), and a
stack of 2D slices ``(N, Y, X)`` segmented slice by slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_PIXELS = 2**31  # refuse silly sizes before allocating float copies


class InputError(ValueError):
    """The array cannot be segmented as given (message says why)."""


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
    if a.size == 0:
        raise InputError(f"{name} is empty (shape {a.shape})")
    if a.size > MAX_PIXELS:
        raise InputError(f"{name} is too large ({a.size:,} values); crop it or split it first")
    note = ""
    if rgb is None:
        rgb = a.ndim == 3 and a.shape[-1] in (3, 4) and a.shape[0] > 4
    if rgb:
        if a.shape[-1] not in (3, 4):
            raise InputError(f"{name}: RGB needs 3 or 4 channels last, got shape {a.shape}")
        a = to_grey(a)
        note = "RGB converted to grey (luminance)"
    if a.ndim == 2:
        data = a[None]
    elif a.ndim == 3:
        data = a
        note = note or f"{a.shape[0]} slices segmented one by one"
    else:
        raise InputError(f"{name}: unsupported shape {a.shape}; expected (Y, X), (Y, X, RGB) or (N, Y, X)")
    if min(data.shape[1:]) < 4:
        raise InputError(f"{name}: image too small ({data.shape[1]}x{data.shape[2]} pixels)")
    data = data.astype(np.float32, copy=False)
    if not np.isfinite(data).any():
        raise InputError(f"{name} has no finite values (all NaN/inf)")
    return Slices(data=data, spatial_shape=tuple(a.shape), note=note)
