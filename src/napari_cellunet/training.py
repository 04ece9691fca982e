"""Train a UNet on images + instance labels (3 classes: background, interior, boundary).

Images are rescaled so their objects have a canonical diameter (stored in the
model file), then random crops are augmented (scale, flips, 90° rotations,
gamma/contrast, smooth brightness fields, synthetic cytoplasm halos,
nucleoli speckles and chromatin texture, blur, noise) and fitted with
cross-entropy (gaps between touching objects weighted up) + soft Dice.
Validation segments whole val images exactly as inference does and scores
AP@0.5; the best model is saved. Like inference, training is a generator
yielding :class:`~napari_cellunet.inference.Progress`, so the widget and the CLI
share it. A seed makes runs reproducible (up to thread scheduling).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels, find_boundaries

from .arrays import to_grey
from .inference import Progress, normalize_percentile, resize_spatial, resolve_precision, select_device
from .instances import BACKGROUND, BOUNDARY, DISTANCE, INTERIOR, InstanceParams
from .metrics import dataset_scores
from .models import CellModel, save_model
from .segment import PredictOptions, iter_segment, labels_from_probabilities, median_diameter
from .unet import UNet, UNetConfig


# --------------------------------------------------------------------------- targets
def keep_largest_fragment(labels: np.ndarray) -> np.ndarray:
    """Drop stray fragments: each label keeps only its largest connected piece."""
    labels = np.asarray(labels)
    out = np.zeros_like(labels)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        mask = labels[sl] == i
        comp, n = ndi.label(mask)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            mask = comp == sizes.argmax()
        out[sl][mask] = i
    return out


def labels_to_targets(labels: np.ndarray, contact_band: int = 1) -> np.ndarray:
    """Instance labels -> class map (0 background, 1 interior, 2 boundary).

    Boundaries are each object's inner border, so two touching objects are
    separated by a two-pixel boundary band. ``contact_band > 1`` widens the
    boundary where objects touch: every object pixel with another object within
    ``contact_band`` pixels is boundary, so the interiors (the seeds) of touching
    objects lie further apart.
    """
    labels = np.asarray(labels)
    target = np.where(labels > 0, INTERIOR, BACKGROUND).astype(np.int64)
    target[find_boundaries(labels, mode="inner") & (labels > 0)] = BOUNDARY
    if contact_band > 1:
        target[touching_other(labels, contact_band) & (labels > 0)] = BOUNDARY
    return target


def distance_target(labels: np.ndarray) -> np.ndarray:
    """Each object's distance to its border (or to a touching object), scaled to 1 at its centre.

    The target of the optional distance output (``UNetConfig.distance``): one
    peak per object, also between touching objects the boundary class misses.
    Background is 0.
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, np.float32)
    n = int(labels.max())
    if n == 0:
        return out
    inside = (labels > 0) & ~touching_other(labels, 1)
    dist = ndi.distance_transform_edt(inside).astype(np.float32)
    peak = np.zeros(n + 1, np.float32)
    np.maximum.at(peak, labels.ravel(), dist.ravel())
    np.divide(dist, peak[labels], out=out, where=peak[labels] > 0)
    return out


def touching_other(labels: np.ndarray, reach: int) -> np.ndarray:
    """Pixels with two different objects within ``reach`` pixels (a (2·reach+1) window)."""
    size = 2 * reach + 1
    top = labels.max() + 1
    highest = ndi.maximum_filter(labels, size=size)
    lowest = ndi.minimum_filter(np.where(labels > 0, labels, top), size=size)
    return (lowest < top) & (highest != lowest)


def contact_weights(labels: np.ndarray, weight: float, reach: int = 3) -> np.ndarray:
    """Pixel weights that stress the thin gaps between touching objects.

    A cheap form of the UNet paper's border weights: every pixel that has two
    different objects within ``reach`` pixels (the gap and both objects' rims)
    weighs ``1 + weight``; all others weigh 1.
    """
    labels = np.asarray(labels)
    out = np.ones(labels.shape, np.float32)
    if weight <= 0 or labels.max() == 0:
        return out
    out[touching_other(labels, reach)] += weight
    return out


# --------------------------------------------------------------------------- data
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


# --------------------------------------------------------------------------- augmentation
@dataclass
class AugmentConfig:
    crop: int | tuple[int, ...] = 256  # one size for every axis, or one per axis (e.g. (32, 96, 96) for 3D)
    scale_range: tuple[float, float] = (0.6, 1.6)
    gamma_range: tuple[float, float] = (0.6, 1.6)
    noise_std: float = 0.05           # half of the crops get Gaussian noise of std up to this
    noise_grain_prob: float = 0.0     # share of that noise made spatially correlated (σ 0.5–1.5 px)
    shot_noise_prob: float = 0.0      # Poisson (photon) noise, 3–100 photons at intensity 1
    quantize_prob: float = 0.0        # round to 4–64 grey levels (dim, low-bit-depth images)
    blur_prob: float = 0.2
    invert_prob: float = 0.0
    field_prob: float = 0.3           # multiply by a smooth random brightness field (dim objects)
    field_low: float = 0.25           # darkest factor of that field
    halo_prob: float = 0.25           # add dim textured "cytoplasm" rims around objects (label: background)
    speckle_prob: float = 0.25        # dark spots (nucleoli) inside objects
    texture_prob: float = 0.3         # uneven chromatin inside objects: blotches and bright chromocentres
    object_gain_prob: float = 0.0     # dim some objects to 10-100% of their brightness (dim nuclei beside bright)
    paste_prob: float = 0.0           # paste objects of another image's crop into the gaps (denser, mixed scenes)
    defocus_prob: float = 0.0         # blur some objects only (sigma 1.5-3.5 px: out-of-focus nuclei)
    stretch: float = 0.0              # stretch crops along one axis by up to exp(±this) (elongated nuclei)


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


def brightness_field(shape: tuple[int, ...], low: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field in [low, 1] (a coarse 4-per-axis grid, zoomed up)."""
    coarse = rng.uniform(low, 1.0, (1, 1) + (4,) * len(shape)).astype(np.float32)
    return resize_spatial(coarse, shape)[0, 0]


def smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to [0, 1]."""
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (n - n.min()) / max(float(n.max() - n.min()), 1e-6)


def add_halos(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dim, textured rims around objects, like cytoplasm in a nuclear-marker image.

    The labels stay as they are, so the network learns that such rims are background.
    """
    fg = lab > 0
    if not fg.any():
        return img
    reach = float(rng.uniform(3, 12))
    dist = ndi.distance_transform_edt(~fg)
    ragged = reach * (0.5 + smooth_noise(lab.shape, 4.0, rng))
    rim = ndi.gaussian_filter(((dist > 0) & (dist < ragged)).astype(np.float32), 1.5)
    level = float(rng.uniform(0.1, 0.4)) * float(np.median(img[:, fg]))
    texture = 0.5 + 0.5 * smooth_noise(lab.shape, 1.5, rng)
    return img + (level * rim * texture * ~fg)[None]


def random_spots(shape: tuple[int, ...], density: float, sigma: tuple[float, float],
                 rng: np.random.Generator) -> np.ndarray:
    """Blurred random points (``density`` per pixel, blur drawn from ``sigma``), peak scaled to 1."""
    spots = ndi.gaussian_filter((rng.random(shape) < density).astype(np.float32), float(rng.uniform(*sigma)))
    return spots / max(float(spots.max()), 1e-6)


def add_speckles(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark spots (nucleoli-like) inside objects, so textured nuclei are not split."""
    fg = lab > 0
    if not fg.any():
        return img
    spots = random_spots(lab.shape, 0.004, (1.0, 2.5), rng)
    return img * (1 - float(rng.uniform(0.4, 0.8)) * spots * fg)[None]


def add_texture(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uneven chromatin inside objects: dark and bright blotches plus bright chromocentre spots.

    Textured nuclei (large nucleoli, bright heterochromatin, as in mouse stem
    cells) must stay one object each; the labels stay as they are.
    """
    fg = lab > 0
    if not fg.any():
        return img
    blotches = smooth_noise(lab.shape, float(rng.uniform(1.0, 3.0)), rng)
    blotches = (blotches - blotches[fg].mean()) / max(float(blotches[fg].std()), 1e-6)
    factor = np.clip(1 + float(rng.uniform(0.2, 0.5)) * blotches, 0.1, 2.0)
    out = np.where(fg, img * factor, img)
    if rng.random() < 0.5:
        spots = random_spots(lab.shape, 0.003, (0.8, 1.8), rng)
        out = out + float(rng.uniform(0.5, 1.5)) * float(np.median(img[:, fg])) * spots * fg
    return out.astype(np.float32)


def _background_level(img: np.ndarray, fg: np.ndarray) -> float:
    return float(np.median(img[:, ~fg])) if (~fg).any() else 0.0


def dim_objects(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale half of the objects' brightness above their local background by 0.1-1 (log-uniform).

    Teaches that a nucleus at 10-30% of its bright neighbours' intensity is still a nucleus. The
    background is each object's surroundings (a 4-px ring), and the factor reaches 3 px beyond
    its mask, smoothly, so the blurred rim is dimmed with it.
    """
    n = int(lab.max())
    if n == 0:
        return img
    gain = np.ones(n + 1, np.float32)
    chosen = rng.random(n) < 0.5
    gain[1:][chosen] = np.exp(rng.uniform(np.log(0.1), 0.0, int(chosen.sum())))
    near = expand_labels(lab, 4)
    ring = np.where(lab > 0, 0, near)
    ids = np.arange(1, n + 1)
    grey = img.mean(0)
    local = np.nan_to_num(np.asarray(ndi.median(grey, ring, ids), np.float32), nan=_background_level(img, lab > 0))
    bg = ndi.gaussian_filter(np.r_[np.float32(0), local][expand_labels(lab, 3)], 1.0)
    factor = ndi.gaussian_filter(gain[expand_labels(lab, 3)], 1.0)
    return (img * factor[None] + bg[None] * (1 - factor[None])).astype(np.float32)


def paste_objects(img: np.ndarray, lab: np.ndarray, donor_img: np.ndarray, donor_lab: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paste the objects of a donor crop that fall on the crop's background (they may touch its objects).

    The donor's intensities are matched to the crop's objects (median, ×0.5–1.5) and carried one
    pixel beyond each pasted mask, so its blurred edge comes along; new objects get new ids.
    """
    n_donor = int(donor_lab.max())
    if n_donor == 0:
        return img, lab
    fg = lab > 0
    overlap = np.bincount(donor_lab[fg].ravel(), minlength=n_donor + 1)
    keep = (overlap == 0) & (rng.random(n_donor + 1) < 0.7)
    keep[0] = False
    if not keep.any():
        return img, lab
    pasted = keep[donor_lab]
    ref = float(np.median(img[:, fg])) if fg.any() else 0.5
    src = float(np.median(donor_img[:, donor_lab > 0]))
    factor = ref / max(src, 1e-3) * float(rng.uniform(0.5, 1.5)) if fg.any() else float(rng.uniform(0.5, 1.5))
    region = ndi.binary_dilation(pasted) & ~fg
    bg, donor_bg = _background_level(img, fg), _background_level(donor_img, donor_lab > 0)
    out = img.copy()
    out[:, region] = bg + (donor_img[:, region] - donor_bg) * factor
    lab = lab.copy()
    lab[pasted] = donor_lab[pasted] + int(lab.max())
    return out.astype(np.float32), lab


def defocus_objects(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur a random half of the objects (and their surroundings) by σ 1.5–3.5 px; the rest stay sharp."""
    n = int(lab.max())
    if n == 0:
        return img
    sigma = float(rng.uniform(1.5, 3.5))
    chosen = np.r_[False, rng.random(n) < 0.5]
    region = ndi.gaussian_filter(ndi.binary_dilation(chosen[lab], iterations=int(2 * sigma)).astype(np.float32),
                                 sigma)
    blurred = ndi.gaussian_filter(img, [0] + [sigma] * lab.ndim)
    return (img * (1 - region) + blurred * region).astype(np.float32)


def add_noise(img: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Camera-like degradations of a normalised image: photon noise, Gaussian noise (white or
    grainy, as in an image zoomed up to the model's scale) and coarse grey levels."""
    if cfg.shot_noise_prob and rng.random() < cfg.shot_noise_prob:
        photons = float(np.exp(rng.uniform(np.log(3.0), np.log(100.0))))
        img = rng.poisson(np.clip(img, 0, None) * photons).astype(np.float32) / photons
    if cfg.noise_std and rng.random() < 0.5:
        noise = rng.normal(0, float(rng.uniform(0, cfg.noise_std)), img.shape).astype(np.float32)
        if cfg.noise_grain_prob and rng.random() < cfg.noise_grain_prob:
            std = noise.std()
            noise = ndi.gaussian_filter(noise, [0] + [float(rng.uniform(0.5, 1.5))] * (img.ndim - 1))
            noise *= std / max(float(noise.std()), 1e-6)
        img = img + noise
    if cfg.quantize_prob and rng.random() < cfg.quantize_prob:
        levels = float(np.exp(rng.uniform(np.log(4.0), np.log(64.0))))
        img = np.round(img * levels) / levels
    return img


def augment(img: np.ndarray, lab: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator):
    """Flips, 90° rotations, synthetic halos/speckles and intensity jitter (image only)."""
    dims = lab.ndim
    for ax in range(dims):
        if rng.random() < 0.5:
            img, lab = np.flip(img, ax + 1), np.flip(lab, ax)
    if rng.random() < 0.5:
        k = int(rng.integers(1, 4))
        img, lab = np.rot90(img, k, axes=(dims - 1, dims)), np.rot90(lab, k, axes=(dims - 2, dims - 1))
    img = np.ascontiguousarray(img, dtype=np.float32)
    lab = np.ascontiguousarray(lab)
    if cfg.object_gain_prob and rng.random() < cfg.object_gain_prob:
        img = dim_objects(img, lab, rng)
    if cfg.defocus_prob and rng.random() < cfg.defocus_prob:
        img = defocus_objects(img, lab, rng)
    if cfg.halo_prob and rng.random() < cfg.halo_prob:
        img = add_halos(img, lab, rng)
    if cfg.speckle_prob and rng.random() < cfg.speckle_prob:
        img = add_speckles(img, lab, rng)
    if cfg.texture_prob and rng.random() < cfg.texture_prob:
        img = add_texture(img, lab, rng)
    if rng.random() < cfg.blur_prob:
        img = ndi.gaussian_filter(img, [0] + [float(rng.uniform(0.5, 1.5))] * dims)
    if rng.random() < 0.8:
        g = float(np.exp(rng.uniform(*np.log(cfg.gamma_range))))
        img = np.clip(img, 0, None) ** g
    if rng.random() < 0.8:
        img = img * float(rng.uniform(0.7, 1.3)) + float(rng.uniform(-0.1, 0.1))
    img = add_noise(img, cfg, rng)
    if cfg.field_prob and rng.random() < cfg.field_prob:
        img = img * brightness_field(lab.shape, cfg.field_low, rng)
    if cfg.invert_prob and rng.random() < cfg.invert_prob:
        img = 1.0 - img
    return img.astype(np.float32), lab


def contact_share(labels: np.ndarray) -> float:
    """Share of object pixels with another object within 2 pixels (how crowded an image is)."""
    fg = labels > 0
    return float((touching_other(labels, 2) & fg).sum() / max(int(fg.sum()), 1))


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
            img, lab = paste_objects(img, lab, d_img, d_lab, rng)
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
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=cfg.workers,
                                         sampler=range(start, cfg.max_steps), pin_memory=pin, prefetch_factor=4)
    yield from loader


# --------------------------------------------------------------------------- loss
def loss_fn(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor,
            pixel_weights: torch.Tensor | None = None, distance: torch.Tensor | None = None) -> torch.Tensor:
    """Class- and pixel-weighted cross-entropy + soft Dice over interior and boundary.

    With a ``distance`` target, the output after the classes is its logit (binary cross-entropy).
    """
    logits = logits.float()
    extra = 0.0
    if distance is not None:
        k = len(class_weights)
        extra = F.binary_cross_entropy_with_logits(logits[:, k], distance.float())
        logits = logits[:, :k]
    if pixel_weights is None:
        ce = F.cross_entropy(logits, target, weight=class_weights)
    else:
        per_pixel = F.cross_entropy(logits, target, weight=class_weights, reduction="none")
        ce = (per_pixel * pixel_weights).sum() / (class_weights[target] * pixel_weights).sum()
    probs = torch.softmax(logits, 1)
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).float()
    dims = tuple(range(2, logits.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = 1 - (2 * inter + 1) / (denom + 1)
    return ce + dice[:, 1:].mean() + extra


# --------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    dims: int = 2                     # 2 = 2D UNet on images, 3 = 3D UNet on volumes
    diameter: float | None = 16.0     # canonical object diameter (px); None = no rescaling
    depth: int = 4
    base_channels: int = 16
    up_mode: str = "transpose"
    norm: str = "batch"
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    minutes: float = 25.0             # wall-clock budget (training stops at whichever comes first)
    max_steps: int = 1_000_000
    val_every: int = 200              # steps between validations
    class_weights: tuple[float, float, float] = (1.0, 1.0, 2.0)
    contact_weight: float = 4.0       # extra weight on gaps between touching objects (0 = off)
    contact_band: int = 1             # boundary width (px) where objects touch (1 = the inner border only)
    ema: float = 0.0                  # validate/save an exponential moving average of the weights (0 = off)
    dense_sampling: float = 0.0       # draw crowded images more often: weight 1 + this × share of touching pixels
    distance: bool = False            # add the distance output (a model without one gets a new head)
    invert: bool | None = None        # dark objects on light background; None = as the init model (else no)
    precision: str = "auto"           # bf16 autocast where supported
    device: str = "auto"
    workers: int = 0                  # loader processes preparing batches ahead (0 = in the training loop)
    tune: bool = True                 # grid-search post-processing thresholds on val at the end
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = asdict(self.augment)
        return json.loads(json.dumps(d))  # tuples -> lists (torch.load weights_only friendly)


@dataclass
class TrainState:
    step: int
    loss: float
    val_ap50: float | None = None
    best_ap50: float | None = None


def _val_scores(model: CellModel, val: Sequence[tuple[np.ndarray, np.ndarray]], opts: PredictOptions,
                params: InstanceParams):
    """Segment every val image as inference does (at its annotated diameter); return scores and probabilities."""
    cached, pairs = [], []
    for image, truth in val:
        # each val image is run at its annotated object size (when the model rescales), so model
        # selection measures segmentation, not the diameter estimate (benchmarks/accuracy.py scores "auto")
        d = median_diameter(truth) if model.diameter else None
        seg = yield from iter_segment(model, image[None], replace(opts, diameter=d), params)
        cached.append((seg.probabilities, seg.diameter))
        pairs.append((truth, seg.labels[0]))
    return dataset_scores(pairs), cached


def threshold_objective(scores: dict[str, float]) -> float:
    """What threshold tuning maximises: AP@0.5 + DSB score − count error (a counting tool needs all three)."""
    return scores["ap50"] + scores["dsb"] - scores["count_error"]


SEED_GRID = (0.4, 0.5, 0.6, 0.7)  # interior probability
DISTANCE_SEED_GRID = (0.4, 0.45, 0.5, 0.55, 0.6)  # distance output: a steep optimum near 0.5


def tune_thresholds(cached, truths, base: InstanceParams, prob_grid=(0.4, 0.5, 0.6, 0.7),
                    seed_grid=None) -> tuple[InstanceParams, dict[str, float]]:
    """Grid-search post-processing thresholds on cached val probabilities.

    The seed grid depends on whether the probabilities carry a distance output.
    Returns the parameters with the best :func:`threshold_objective` and their scores.
    """
    if seed_grid is None:
        seed_grid = DISTANCE_SEED_GRID if cached and cached[0][0].shape[1] > DISTANCE else SEED_GRID
    best, best_scores, best_value = base, {}, -np.inf
    for pt in prob_grid:
        for st in seed_grid:
            params = replace(base, prob_threshold=pt, seed_threshold=st)
            pairs = [(t, labels_from_probabilities(p, params, d)[0]) for (p, d), t in zip(cached, truths)]
            scores = dataset_scores(pairs)
            value = threshold_objective(scores)
            if value > best_value:
                best, best_scores, best_value = params, scores, value
    return best, best_scores


class WeightAverage:
    """Exponential moving average of a network's weights and buffers (validated and saved instead of them).

    The decay ramps up as ``(1 + step) / (10 + step)`` towards ``decay``, so short
    fine-tunes are not dominated by the starting weights.
    """

    def __init__(self, net: torch.nn.Module, decay: float, state: dict | None = None):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in (state or net.state_dict()).items()}

    def update(self, net: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in net.state_dict().items():
                if v.dtype.is_floating_point:
                    self.state[k].mul_(d).add_(v.detach(), alpha=1 - d)
                else:
                    self.state[k].copy_(v)


def _copy_net(net: UNet, distance: bool) -> UNet:
    """A copy of ``net``; with ``distance`` and none in ``net``, a fresh distance output is added."""
    out = UNet(replace(net.config, distance=distance))
    state = net.state_dict()
    if distance and not net.config.distance:  # the class rows of the head are copied, the distance row is new
        fresh = out.state_dict()
        state.update({key: torch.cat([state[key], fresh[key][net.config.n_classes:]])
                      for key in ("head.weight", "head.bias")})
    out.load_state_dict(state)
    return out


def iter_train(
    train_pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    val_pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    out_path: str | Path,
    config: TrainConfig | None = None,
    init: CellModel | None = None,
    meta: dict | None = None,
    resume: bool = False,
) -> Generator[Progress | TrainState, None, CellModel]:
    """Train, validating every ``val_every`` steps; the best model (val AP@0.5) is saved to ``out_path``.

    ``train_pairs``/``val_pairs`` are (image, instance labels) at native scale.
    ``init`` fine-tunes an existing model (its architecture and diameter win).
    Yields :class:`Progress` and :class:`TrainState`; returns the best model.
    An empty ``val_pairs`` saves the last model instead.
    A checkpoint (weights, best weights so far, optimizer, step, time used, RNG)
    is written to ``<out_path>.ckpt`` at every validation; ``out_path`` itself is
    only written at the end, so a cancelled run never leaves a half-trained model.
    ``resume=True`` continues from the checkpoint (a larger ``minutes`` extends a
    finished run).
    """
    cfg = config or TrainConfig()
    rng = np.random.default_rng(cfg.seed)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = select_device(cfg.device)
    if init is not None:
        net = _copy_net(init.net, distance=cfg.distance or init.config.distance)
        diameter = init.diameter
    else:
        net = UNet(UNetConfig(dims=cfg.dims, in_channels=1, n_classes=3, depth=cfg.depth,
                              base_channels=cfg.base_channels, up_mode=cfg.up_mode, norm=cfg.norm,
                              distance=cfg.distance))
        diameter = cfg.diameter
    dims = net.config.dims
    invert = bool(cfg.invert if cfg.invert is not None else (init.invert if init else False))
    if net.config.in_channels == 1:  # RGB val images are segmented as grey, like training images
        val_pairs = [(grey_if_rgb(i, lab.ndim), lab) for i, lab in val_pairs]

    yield Progress(0, len(train_pairs), "preparing training data")
    samples = []
    for i, (img, lab) in enumerate(train_pairs):
        s = make_sample(img, lab, diameter, invert=invert, grey=net.config.in_channels == 1)
        if s is not None:
            samples.append(s)
        yield Progress(i + 1, len(train_pairs), "preparing training data")
    if not samples:
        raise ValueError("no annotated objects in the training data")
    if net.config.in_channels != samples[0].image.shape[0]:
        raise ValueError(f"model expects {net.config.in_channels} channel(s), training images have "
                         f"{samples[0].image.shape[0]}")

    draw = sampling_weights(samples, cfg.dense_sampling)
    net.to(device).train()
    if device.type == "cpu":
        net = net.to(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = torch.tensor(cfg.class_weights, dtype=torch.float32, device=device)
    amp = resolve_precision(cfg.precision, device)
    base_meta = {
        "diameter": diameter,
        "normalization": {"low": 1.0, "high": 99.8},
        "invert": invert,
        "instance_params": (init.instance_params if init else InstanceParams()).to_dict(),
        "train_config": cfg.to_dict(),
        "n_train_images": len(samples),
        "n_val_images": len(val_pairs),
        "axes": "YX" if dims == 2 else "ZYX",
        **(meta or {}),
    }
    model = CellModel(name=Path(out_path).stem, net=net, meta=dict(base_meta))
    opts = PredictOptions(device=str(device), batch_size=8)
    best_ap, best_state, history = -1.0, None, []
    t0 = time.monotonic()
    budget = cfg.minutes * 60
    step, running = 0, None
    ckpt_path = Path(f"{out_path}.ckpt")
    ema_state = None
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        step, best_ap, history = int(ck["step"]), float(ck["best_ap"]), list(ck["history"])
        best_state = ck["best_state"] or None
        ema_state = ck.get("ema") or None
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        t0 -= float(ck["elapsed"])
        yield Progress(0, 1, f"resumed at step {step}")
    average = WeightAverage(net, cfg.ema, ema_state) if cfg.ema > 0 else None
    batches = batch_stream(samples, cfg, rng, draw, net.config.distance, step, pin=device.type == "cuda")
    while step < cfg.max_steps and time.monotonic() - t0 < budget:
        frac = min(1.0, (time.monotonic() - t0) / budget)
        for g in opt.param_groups:  # cosine decay over the time budget, short warm-up
            g["lr"] = cfg.lr * min(1.0, (step + 1) / 50) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))
        x, y, w, dt = next(batches)
        x, y, w = (t.to(device, non_blocking=True) for t in (x, y, w))
        dt = dt.to(device, non_blocking=True) if dt is not None else None
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
        with torch.autocast(device_type=device.type, dtype=amp, enabled=amp is not None):
            logits = net(x)
        loss = loss_fn(logits, y, weights, w, dt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if average is not None:
            average.update(net, step)
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        elapsed = time.monotonic() - t0
        yield Progress(int(elapsed), int(budget), f"step {step}  loss {running:.3f}")
        last = step >= cfg.max_steps or elapsed >= budget
        if val_pairs and (step % cfg.val_every == 0 or last):
            live = None
            if average is not None:  # validate (and keep) the averaged weights
                live = {k: v.detach().clone() for k, v in net.state_dict().items()}
                net.load_state_dict(average.state)
            net.eval()
            scores, _ = yield from _val_scores(model, val_pairs, opts,
                                               model.instance_params)
            net.train()
            history.append({"step": step, "minutes": round(elapsed / 60, 2), "loss": round(running, 4),
                            **{k: round(v, 4) for k, v in scores.items() if k != "images"}})
            if scores["ap50"] > best_ap:
                best_ap = scores["ap50"]
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            if live is not None:
                net.load_state_dict(live)
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": elapsed,
                        "best_ap": best_ap, "best_state": best_state or {}, "history": history,
                        "ema": average.state if average is not None else {},
                        "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, ckpt_path)
            yield TrainState(step, running, scores["ap50"], best_ap)
        else:
            yield TrainState(step, running, None, best_ap if best_ap >= 0 else None)
    batches.close()  # stops loader workers

    if best_state is not None:
        net.load_state_dict(best_state)
    elif average is not None:  # no validation ran: keep the averaged weights, as validation would have
        net.load_state_dict(average.state)
    net.eval()
    model.meta["history"] = history
    model.meta["steps"] = step
    model.meta["train_minutes"] = round((time.monotonic() - t0) / 60, 2)
    if val_pairs and cfg.tune:
        yield Progress(0, 1, "tuning thresholds on validation images")
        scores, cached = yield from _val_scores(model, val_pairs, opts,
                                                model.instance_params)
        params, tuned = tune_thresholds(cached, [t for _, t in val_pairs], model.instance_params)
        model.meta["instance_params"] = params.to_dict()
        model.meta["val_scores_default_thresholds"] = {k: round(float(v), 4) for k, v in scores.items()}
        model.meta["val_scores_tuned_thresholds"] = {k: round(float(v), 4) for k, v in tuned.items()}
    save_model(out_path, net, model.meta)
    model.path = Path(out_path)
    return model
