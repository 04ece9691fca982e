"""Training data: annotated images normalised and rescaled to the canonical size, random crops, batches.

Batch ``n`` of a run depends only on the seed and ``n`` when loader workers
make them, so any number of workers gives the same batches.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from ..arrays import to_grey
from ..inference import normalize_percentile, resize_spatial
from ..segment import median_diameter
from ..settings import AugmentConfig, TrainConfig
from .augment import augment, paste_objects
from .targets import contact_share, contact_weights, distance_target, keep_largest_fragment, labels_to_targets


@dataclass
class Sample:
    image: np.ndarray   # (C, *spatial) float32, normalised, at canonical scale
    labels: np.ndarray  # (*spatial) int32, at canonical scale
    name: str = ""


def rescale_pair(image: np.ndarray, labels: np.ndarray,
                 scale: float | Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Rescale a ``(C, *spatial)`` image (linear) and its labels (nearest) by ``scale`` (one, or one per axis)."""
    scales = (scale,) * labels.ndim if np.isscalar(scale) else tuple(scale)
    if all(abs(f - 1) < 1e-3 for f in scales):
        return image, labels
    shape = tuple(max(8, int(round(s * f))) for s, f in zip(labels.shape, scales))
    img = resize_spatial(image[None], shape)[0]
    zoom = [n / o for n, o in zip(shape, labels.shape)]
    lab = ndi.zoom(labels, zoom, order=0, mode="nearest", grid_mode=True)
    return img, lab


def grey_if_rgb(image: np.ndarray, spatial_ndim: int) -> np.ndarray:
    """Luminance of an image with a trailing RGB(A) axis; other images unchanged."""
    if image.ndim == spatial_ndim + 1 and image.shape[-1] in (3, 4):
        return to_grey(image)
    return image


def make_sample(image: np.ndarray, labels: np.ndarray, diameter: float | None,
                name: str = "", norm: tuple[float, float] = (1.0, 99.8), invert: bool = False,
                grey: bool = False) -> Sample | None:
    """Normalise, clean and rescale one annotated image to the canonical ``diameter``.

    ``grey`` turns a trailing RGB(A) axis into luminance (for one-channel models),
    ``invert`` maps dark objects on a light background to bright ones (1 - x).
    """
    labels = keep_largest_fragment(np.asarray(labels).astype(np.int32))
    img = np.asarray(image)
    if grey:
        img = grey_if_rgb(img, labels.ndim)
    img = img[None] if img.ndim == labels.ndim else np.moveaxis(img, -1, 0)
    img = normalize_percentile(img, *norm, axis=tuple(range(1, img.ndim)))
    if invert:
        img = 1.0 - img
    scale = 1.0
    if diameter:
        d = median_diameter(labels)
        if d is None:
            return None
        scale = float(np.clip(diameter / d, 0.25, 4.0))
    img, labels = rescale_pair(img, labels, scale)
    return Sample(img.astype(np.float32), labels.astype(np.int32), name)


def load_folder_pairs(images_dir: str | Path, masks_dir: str | Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Read ``images_dir/<id>.tif`` with ``masks_dir/<id>.tif`` (same file names)."""
    import tifffile

    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    pairs = []
    for p in sorted(images_dir.glob("*.tif*")):
        m = masks_dir / p.name
        if not m.exists():
            continue
        pairs.append((p.stem, tifffile.imread(p), tifffile.imread(m)))
    if not pairs:
        raise FileNotFoundError(f"no image/mask pairs with matching names in {images_dir} and {masks_dir}")
    return pairs


def random_crop(sample: Sample, crop: int | Sequence[int], scale: float | Sequence[float],
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A ``crop``-sized window of ``sample`` zoomed by ``scale`` (one, or one per axis; zero-padded if small)."""
    dims = sample.labels.ndim
    crop = (crop,) * dims if isinstance(crop, int) else tuple(crop)
    scales = (scale,) * dims if np.isscalar(scale) else tuple(scale)
    src = [max(1, int(round(c / f))) for c, f in zip(crop, scales)]
    shape = sample.labels.shape
    starts = []
    for s, c in zip(shape, src):
        starts.append(int(rng.integers(0, s - c + 1)) if s > c else 0)
    sl = tuple(slice(a, a + c) for a, c in zip(starts, src))
    img, lab = sample.image[(slice(None), *sl)], sample.labels[sl]
    img, lab = rescale_pair(img, lab, [c / s for c, s in zip(crop, src)] if len(set(scales)) > 1 else scale)
    # pad or trim to exactly `crop`
    pad = [(0, max(0, c - s)) for c, s in zip(crop, lab.shape)]
    window = tuple(slice(0, c) for c in crop)
    img = np.pad(img, [(0, 0)] + pad)[(slice(None), *window)]
    lab = np.pad(lab, pad)[window]
    return img, lab


def sampling_weights(samples: Sequence[Sample], dense: float) -> np.ndarray | None:
    """Probabilities of drawing each sample: ``1 + dense × contact share``, normalised (None = uniform)."""
    if dense <= 0:
        return None
    w = 1.0 + dense * np.array([contact_share(s.labels) for s in samples])
    return w / w.sum()


def make_batch(samples: Sequence[Sample], batch_size: int, cfg: AugmentConfig,
               rng: np.random.Generator, contact_weight: float = 0.0, contact_band: int = 1,
               weights: np.ndarray | None = None, distance: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Images, class targets, pixel weights (:func:`contact_weights`) and distance targets of random crops.

    ``weights`` are the probabilities of drawing each sample (default: uniform).
    Distance targets (:func:`distance_target`) only with ``distance``, else None.
    """
    xs, ys, ws, ds = [], [], [], []
    for _ in range(batch_size):
        i = int(rng.integers(len(samples))) if weights is None else int(rng.choice(len(samples), p=weights))
        s = samples[i]
        scale = float(np.exp(rng.uniform(*np.log(cfg.scale_range))))
        if cfg.stretch and rng.random() < 0.5:  # elongated objects: one axis zoomed more than the other
            f, axis = float(np.exp(rng.uniform(-cfg.stretch, cfg.stretch))), int(rng.integers(s.labels.ndim))
            scale = tuple(scale * (f if ax == axis else 1.0) for ax in range(s.labels.ndim))
        img, lab = random_crop(s, cfg.crop, scale, rng)
        if cfg.paste_prob and rng.random() < cfg.paste_prob:
            donor = samples[int(rng.integers(len(samples)))]
            d_img, d_lab = random_crop(donor, cfg.crop, float(np.exp(rng.uniform(*np.log(cfg.scale_range)))), rng)
            img, lab = paste_objects(img, lab, d_img, d_lab, rng, cfg)
        img, lab = augment(img, lab, cfg, rng)
        xs.append(img)
        ys.append(labels_to_targets(lab, contact_band))
        ws.append(contact_weights(lab, contact_weight))
        if distance:
            ds.append(distance_target(lab))
    return (torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)), torch.from_numpy(np.stack(ws)),
            torch.from_numpy(np.stack(ds)) if distance else None)


class _BatchDataset(torch.utils.data.Dataset):
    """Training batches of a config: ``draw(rng)``, or item ``n`` = the batch of step ``n`` (loader workers)."""

    def __init__(self, samples, cfg: TrainConfig, weights: np.ndarray | None, distance: bool):
        self.samples, self.cfg, self.weights, self.distance = samples, cfg, weights, distance

    def draw(self, rng: np.random.Generator):
        cfg = self.cfg
        return make_batch(self.samples, cfg.batch_size, cfg.augment, rng, cfg.contact_weight,
                          cfg.contact_band, self.weights, self.distance)

    def __getitem__(self, step: int):
        return self.draw(np.random.default_rng([self.cfg.seed, step]))


def batch_stream(samples: Sequence[Sample], cfg: TrainConfig, rng: np.random.Generator,
                 weights: np.ndarray | None, distance: bool, start: int, pin: bool = False):
    """Endless training batches from step ``start`` on.

    With ``cfg.workers`` = 0 they are drawn in this process from ``rng``; with
    more, loader worker processes prepare them ahead (batch ``n`` depends only on
    ``cfg.seed`` and ``n``, however many workers), which keeps a GPU busy.
    """
    batches = _BatchDataset(samples, cfg, weights, distance)
    if cfg.workers <= 0:
        while True:
            yield batches.draw(rng)
    # spawned, not forked: a fork of a process with running threads (napari, OpenVINO, OpenMP) can
    # inherit a held lock and hang (seen in the test suite)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=cfg.workers,
                                         sampler=range(start, cfg.max_steps), pin_memory=pin, prefetch_factor=4,
                                         multiprocessing_context="spawn", persistent_workers=False)
    with _sigchld_restored():
        yield from loader


@contextlib.contextmanager
def _sigchld_restored():
    """Put back the process's SIGCHLD handler when the loader's workers are gone.

    torch's loader installs a process-wide SIGCHLD handler once and leaves it; every
    later child exit (a subprocess, a virtual display) then runs it, and after a run
    with workers this crashed the host process (seen as a segfault in the test suite).
    """
    from torch.utils.data._utils import signal_handling

    main = threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGCHLD")
    before = signal.getsignal(signal.SIGCHLD) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGCHLD, before if before is not None else signal.SIG_DFL)
            signal_handling._SIGCHLD_handler_set = False  # a later loader installs its own again
