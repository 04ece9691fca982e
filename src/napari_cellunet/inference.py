"""Run a UNet over images of any size: normalisation, sliding windows, blending.

The compute is a generator (``iter_predict``) that yields :class:`Progress`
messages and *returns* the probabilities, so a GUI worker can forward progress
and stop between tiles, while scripts use :func:`predict` with a callback.
Memory is bounded by the tile batch; only the output probability map grows
with the image.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import threading
import weakref
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .settings import BACKENDS, PRECISIONS, PredictOptions  # declared once, with the settings
from .unet import UNet


@dataclass(frozen=True)
class Progress:
    """One progress message: ``done`` of ``total`` steps."""

    done: int
    total: int
    message: str = ""


class Cancelled(Exception):
    """Raised when the user cancels a running computation."""


ProgressCallback = Callable[[Progress], None]
CancelCheck = Callable[[], bool]


# --------------------------------------------------------------------------- devices
def available_devices() -> list[str]:
    """Devices this machine can run on, best first (always ends with ``cpu``)."""
    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices + ["cpu"]


def select_device(name: str | None = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; otherwise the named device (validated)."""
    if name in (None, "", "auto"):
        return torch.device(available_devices()[0])
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}; choose from {['auto', *available_devices()]}") from err
    if device.type not in available_devices():
        raise ValueError(f"device {name!r} is not available here; choose from {['auto', *available_devices()]}")
    return device


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX-512 BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover - depends on the torch build
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device`` (``None`` = plain fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


# --------------------------------------------------------------------------- normalisation
def normalize_percentile(image: np.ndarray, low: float = 1.0, high: float = 99.8,
                         axis: tuple[int, ...] | None = None) -> np.ndarray:
    """Map the ``low``/``high`` percentiles to 0/1 (float32). NaN/inf become 0.

    A constant image maps to zeros rather than dividing by zero.
    """
    x = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        x = np.where(finite, x, 0.0).astype(np.float32)
    lo, hi = np.percentile(x, [low, high], axis=axis, keepdims=axis is not None)
    scale = np.maximum(hi - lo, 1e-6)
    return ((x - lo) / scale).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- tiling
MAX_TILE_3D = 256  # 3D tiles are at most this many voxels per axis (a 1024-voxel cube would not fit in memory)
MAX_BATCH_PIXELS = 2**21  # tiles per network call are cut so that one call holds at most this many pixels


def tile_grid(size: int, tile: int, overlap_px: int, multiple: int = 1) -> tuple[int, list[int]]:
    """``(tile length, starts)`` of the fewest windows covering ``[0, size)`` with ``overlap_px`` shared.

    The windows are balanced: the tile shrinks to what that many windows need
    (a multiple of ``multiple``), so a 1024-px axis is one 1024-px tile, not
    five 256-px ones. With ``tile=256, overlap_px=64`` a 1024-px axis gets the
    classic grid (starts every 192 px).
    """
    if tile >= size:
        return size, [0]
    tile = max(multiple, tile - tile % multiple)
    overlap_px = min(max(0, int(overlap_px)), tile - 1)
    n = math.ceil((size - overlap_px) / (tile - overlap_px))
    balanced = -(-math.ceil((size + (n - 1) * overlap_px) / n) // multiple) * multiple
    length = min(tile, max(multiple, balanced))
    starts = np.linspace(0, size - length, n).round().astype(int)
    return length, sorted(set(starts.tolist()))


def blending_weights(shape: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Separable Gaussian window (nnU-Net style), never exactly zero at the border."""
    w = np.ones((), dtype=np.float32)
    for s in shape:
        x = np.arange(s, dtype=np.float32) - (s - 1) / 2
        g = np.exp(-0.5 * (x / max(s * sigma_scale * 2, 1e-3)) ** 2)
        w = np.multiply.outer(w, g / g.max())
    return np.maximum(w, 1e-3).astype(np.float32)


def _flip_variants(dims: int, tta: bool) -> list[tuple[int, ...]]:
    if not tta:
        return [()]
    axes = [a + 2 for a in range(dims)]
    return [c for r in range(dims + 1) for c in itertools.combinations(axes, r)]


@torch.no_grad()
def _forward(net: UNet, batch: torch.Tensor, autocast_dtype: torch.dtype | None,
             flips: list[tuple[int, ...]]) -> torch.Tensor:
    """Class probabilities (softmax) [+ distance, sigmoid] of ``batch``, averaged over flip variants."""
    device = batch.device
    k = net.config.n_classes
    out = None
    for f in flips:
        x = torch.flip(batch, f) if f else batch
        if autocast_dtype is not None:
            with torch.autocast(device_type=device.type, dtype=autocast_dtype):
                logits = net(x)
        else:
            logits = net(x)
        logits = logits.float()
        p = torch.softmax(logits[:, :k], dim=1)
        if logits.shape[1] > k:
            p = torch.cat([p, torch.sigmoid(logits[:, k:])], dim=1)
        p = torch.flip(p, f) if f else p
        out = p if out is None else out + p
    return out / len(flips)


# --------------------------------------------------------------------------- OpenVINO (optional)
_OPENVINO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # net -> (weights version, precision, compiled)
_OPENVINO_LOCK = threading.Lock()  # torch's ONNX export is not thread-safe (block workers share a process)


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: OpenVINO on the CPU when it is installed (~1.7x torch here), else torch."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "openvino" if device.type == "cpu" and openvino_available() else "torch"
    if backend == "openvino" and not openvino_available():
        raise ValueError("backend 'openvino' needs OpenVINO: pip install openvino (or napari-cellunet[fast])")
    return backend


def _weights_version(net: UNet) -> tuple:
    """Changes whenever a weight or buffer is written in place (read directly: 4x faster than ``state_dict()``)."""
    return tuple(t._version for t in net.parameters()) + tuple(t._version for t in net.buffers())


def _weights_hash(net: UNet) -> str:
    import hashlib

    h = hashlib.sha1(json.dumps(net.config.to_dict(), sort_keys=True).encode())
    for value in net.state_dict().values():
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def _openvino_cache() -> Path | None:
    """Where exported networks and OpenVINO's compiled blobs are kept between runs (None: nowhere)."""
    try:
        from platformdirs import user_cache_dir

        folder = Path(os.environ.get("CELLUNET_CACHE_DIR") or user_cache_dir("napari-cellunet")) / "openvino"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except OSError:
        return None


def openvino_forward(net: UNet, precision: str = "auto"):
    """``run(batch) -> probabilities`` for numpy ``(B, C, *spatial)`` float32 batches, with OpenVINO on the CPU.

    The network (with the softmax/sigmoid of inference) is exported to ONNX once per weights (kept in
    the user cache folder, like OpenVINO's compiled blobs, so later runs start at once); ``auto``
    precision lets OpenVINO choose (bf16 where the CPU has it).
    """
    version = _weights_version(net)
    with _OPENVINO_LOCK:
        return _openvino_compiled(net, version, precision)


def _openvino_compiled(net: UNet, version: tuple, precision: str):
    import tempfile

    import openvino as ov

    from .export import export_onnx

    cached = _OPENVINO.get(net)
    if cached is None or cached[:2] != (version, precision):
        config = {} if precision == "auto" else {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else
                                                 "bf16" if precision == "bf16" else "f16"}
        config["INFERENCE_NUM_THREADS"] = torch.get_num_threads()
        core, folder = ov.Core(), _openvino_cache()
        with tempfile.TemporaryDirectory() as tmp:
            path = (folder or Path(tmp)) / f"{_weights_hash(net)}.onnx"
            if not path.exists():
                export_onnx(net.cpu().eval(), Path(tmp) / "net.onnx")
                os.replace(Path(tmp) / "net.onnx", path)  # complete files only, also in the cache
            if folder is not None:
                core.set_property({"CACHE_DIR": str(folder)})
            compiled = core.compile_model(str(path), "CPU", config)
        _OPENVINO[net] = cached = (version, precision, compiled)
    compiled = cached[2]
    return lambda batch: compiled(np.ascontiguousarray(batch, dtype=np.float32))[0]


def _on_device(net: UNet, dev: torch.device, channels_last: bool):
    """The network in eval mode on ``dev`` (channels-last on the CPU, as oneDNN prefers) and its layout."""
    net = net.to(dev).eval()
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # tiles have one shape: let cuDNN pick its fastest kernels
    if dev.type != "cpu":
        return net, None
    layout = (torch.channels_last if net.config.dims == 2 else torch.channels_last_3d) if channels_last \
        else torch.contiguous_format
    return net.to(memory_format=layout), layout


def _flip_average(run, batch: np.ndarray, flips: list[tuple[int, ...]]) -> np.ndarray:
    """``run(batch)`` averaged over flip variants (each flipped back), for numpy backends."""
    return sum(np.flip(run(np.ascontiguousarray(np.flip(batch, f))), f) if f else run(batch)
               for f in flips) / len(flips)


def tile_plan(spatial: Sequence[int], tile: int | Sequence[int], overlap: float, multiple: int):
    """``(tile shape, blending weights, windows)`` of the sliding windows covering ``spatial``.

    ``overlap`` is a share of the requested ``tile``; that many pixels are shared
    between neighbours (:func:`tile_grid`). 3D tiles are capped at ``MAX_TILE_3D``.
    """
    tiles = (tile,) * len(spatial) if isinstance(tile, int) else tuple(tile)
    overlaps = [int(round(overlap * t)) for t in tiles]
    if len(spatial) == 3:
        tiles = tuple(min(t, MAX_TILE_3D) for t in tiles)
    grids = [tile_grid(s, t, v, multiple) for s, t, v in zip(spatial, tiles, overlaps)]
    tiles = tuple(g[0] for g in grids)
    windows = [tuple(slice(a, a + t) for a, t in zip(st, tiles)) for st in itertools.product(*(g[1] for g in grids))]
    return tiles, blending_weights(tiles), windows


def iter_predict(
    net: UNet,
    images: np.ndarray,
    *,
    tile: int | Sequence[int] = PredictOptions.tile,
    overlap: float = PredictOptions.overlap,
    batch_size: int = 4,
    device: str | torch.device | None = "auto",
    precision: str = "auto",
    tta: bool = False,
    channels_last: bool = True,
    backend: str = "torch",
) -> Generator[Progress, None, np.ndarray]:
    """Sliding-window prediction over a batch of normalised images.

    ``images`` has shape ``(N, C, *spatial)`` (``len(spatial) == net.config.dims``)
    and is already normalised. Yields :class:`Progress` after every tile batch and
    returns probabilities of shape ``(N, n_outputs, *spatial)`` (float32): classes [+ distance].
    Tiles from all N images share batches, so stacks of small slices stay fast.
    ``channels_last`` (CPU only) uses the memory layout oneDNN convolutions prefer;
    ``backend`` "openvino" (or "auto" with OpenVINO installed, on the CPU) runs the tiles there.
    """
    cfg = net.config
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != cfg.dims + 2:
        raise ValueError(f"expected (N, C, {'Z, ' if cfg.dims == 3 else ''}Y, X) input, got shape {images.shape}")
    if images.shape[1] != cfg.in_channels:
        raise ValueError(f"model expects {cfg.in_channels} channel(s), image has {images.shape[1]}")
    dev = device if isinstance(device, torch.device) else select_device(device)
    autocast_dtype = resolve_precision(precision, dev)
    run_openvino = openvino_forward(net, precision) if resolve_backend(backend, dev) == "openvino" else None
    if run_openvino is None:
        net, memory_format = _on_device(net, dev, channels_last)
    n, spatial = images.shape[0], images.shape[2:]
    tiles, weights, windows = tile_plan(spatial, tile, overlap, net.size_multiple)
    batch_size = max(1, min(batch_size, MAX_BATCH_PIXELS // math.prod(tiles)))
    jobs = [(i, w) for i in range(n) for w in windows]
    out = np.zeros((n, cfg.n_outputs, *spatial), dtype=np.float32)
    norm = np.zeros(spatial, dtype=np.float32)
    for w in windows:
        norm[w] += weights
    flips = _flip_variants(cfg.dims, tta)
    weights_t = torch.from_numpy(weights).to(dev)

    total = len(jobs)
    yield Progress(0, total, "predicting")
    for b in range(0, total, batch_size):
        chunk = jobs[b:b + batch_size]
        batch = np.stack([images[(i, slice(None), *w)] for i, w in chunk])
        if run_openvino is not None:
            probs = _flip_average(run_openvino, batch, flips) * weights
        else:
            batch = torch.from_numpy(batch).to(dev)
            if memory_format is not None:
                batch = batch.contiguous(memory_format=memory_format)
            probs = (_forward(net, batch, autocast_dtype, flips) * weights_t).cpu().numpy()
        for (i, w), p in zip(chunk, probs):
            out[(i, slice(None), *w)] += p
        yield Progress(min(b + batch_size, total), total, "predicting")
    out /= norm
    return out


def drive(gen: Generator[Progress, None, object], progress: ProgressCallback | None = None,
          cancel: CancelCheck | None = None):
    """Run a progress generator to completion; call ``progress`` per message.

    Raises :class:`Cancelled` when ``cancel()`` turns true between steps.
    """
    try:
        while True:
            msg = next(gen)
            if progress is not None:
                progress(msg)
            if cancel is not None and cancel():
                gen.close()
                raise Cancelled("cancelled by the user")
    except StopIteration as stop:
        return stop.value


def predict(net: UNet, images: np.ndarray, progress: ProgressCallback | None = None,
            cancel: CancelCheck | None = None, **kwargs) -> np.ndarray:
    """Blocking form of :func:`iter_predict`."""
    return drive(iter_predict(net, images, **kwargs), progress, cancel)


def resize_spatial(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Linear resize of the trailing spatial axes of ``(N, C, *spatial)`` to ``shape``.

    Downscaling is antialiased (2D) so small objects are not aliased away.
    """
    if tuple(array.shape[2:]) == tuple(shape):
        return array
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    antialias = mode == "bilinear" and any(s < a for s, a in zip(shape, array.shape[2:]))
    return F.interpolate(t, size=tuple(shape), mode=mode, align_corners=False,
                         antialias=antialias).numpy()
