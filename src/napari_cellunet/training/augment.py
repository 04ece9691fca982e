"""Augmentations of training crops: geometry, intensity, synthetic structures, camera noise.

Every random range comes from :class:`~napari_cellunet.settings.AugmentConfig`.
Labels change only where objects are pasted (:func:`paste_objects`); all else
alters the image, so the network learns that e.g. halos are background and
textured or dim nuclei are still nuclei.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels

from ..inference import resize_spatial
from ..settings import AugmentConfig


def brightness_field(shape: tuple[int, ...], low: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field in [low, 1] (a coarse 4-per-axis grid, zoomed up)."""
    coarse = rng.uniform(low, 1.0, (1, 1) + (4,) * len(shape)).astype(np.float32)
    return resize_spatial(coarse, shape)[0, 0]


def smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to [0, 1]."""
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (n - n.min()) / max(float(n.max() - n.min()), 1e-6)


def add_halos(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator,
              cfg: AugmentConfig | None = None) -> np.ndarray:
    """Dim, textured rims around objects, like cytoplasm in a nuclear-marker image.

    The labels stay as they are, so the network learns that such rims are background.
    """
    cfg = cfg or AugmentConfig()
    fg = lab > 0
    if not fg.any():
        return img
    reach = float(rng.uniform(*cfg.halo_reach))
    dist = ndi.distance_transform_edt(~fg)
    ragged = reach * (0.5 + smooth_noise(lab.shape, 4.0, rng))
    rim = ndi.gaussian_filter(((dist > 0) & (dist < ragged)).astype(np.float32), 1.5)
    level = float(rng.uniform(*cfg.halo_level)) * float(np.median(img[:, fg]))
    texture = 0.5 + 0.5 * smooth_noise(lab.shape, 1.5, rng)
    return img + (level * rim * texture * ~fg)[None]


def random_spots(shape: tuple[int, ...], density: float, sigma: tuple[float, float],
                 rng: np.random.Generator) -> np.ndarray:
    """Blurred random points (``density`` per pixel, blur drawn from ``sigma``), peak scaled to 1."""
    spots = ndi.gaussian_filter((rng.random(shape) < density).astype(np.float32), float(rng.uniform(*sigma)))
    return spots / max(float(spots.max()), 1e-6)


def add_speckles(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator,
                 cfg: AugmentConfig | None = None) -> np.ndarray:
    """Dark spots (nucleoli-like) inside objects, so textured nuclei are not split."""
    cfg = cfg or AugmentConfig()
    fg = lab > 0
    if not fg.any():
        return img
    spots = random_spots(lab.shape, 0.004, (1.0, 2.5), rng)
    return img * (1 - float(rng.uniform(*cfg.speckle_depth)) * spots * fg)[None]


def add_texture(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator,
                cfg: AugmentConfig | None = None) -> np.ndarray:
    """Uneven chromatin inside objects: dark and bright blotches plus bright chromocentre spots.

    Textured nuclei (large nucleoli, bright heterochromatin, as in mouse stem
    cells) must stay one object each; the labels stay as they are.
    """
    cfg = cfg or AugmentConfig()
    fg = lab > 0
    if not fg.any():
        return img
    blotches = smooth_noise(lab.shape, float(rng.uniform(*cfg.texture_sigma)), rng)
    blotches = (blotches - blotches[fg].mean()) / max(float(blotches[fg].std()), 1e-6)
    factor = np.clip(1 + float(rng.uniform(*cfg.texture_amplitude)) * blotches, 0.1, 2.0)
    out = np.where(fg, img * factor, img)
    if rng.random() < 0.5:
        spots = random_spots(lab.shape, 0.003, (0.8, 1.8), rng)
        out = out + float(rng.uniform(*cfg.chromocentre_level)) * float(np.median(img[:, fg])) * spots * fg
    return out.astype(np.float32)


def _background_level(img: np.ndarray, fg: np.ndarray) -> float:
    return float(np.median(img[:, ~fg])) if (~fg).any() else 0.0


def dim_objects(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator,
                cfg: AugmentConfig | None = None) -> np.ndarray:
    """Scale half of the objects' brightness above their local background (``object_gain_range``, log-uniform).

    Teaches that a nucleus at 10-30% of its bright neighbours' intensity is still a nucleus. The
    background is each object's surroundings (a 4-px ring), and the factor reaches 3 px beyond
    its mask, smoothly, so the blurred rim is dimmed with it.
    """
    cfg = cfg or AugmentConfig()
    n = int(lab.max())
    if n == 0:
        return img
    gain = np.ones(n + 1, np.float32)
    chosen = rng.random(n) < 0.5
    gain[1:][chosen] = np.exp(rng.uniform(*np.log(cfg.object_gain_range), int(chosen.sum())))
    near = expand_labels(lab, 4)
    ring = np.where(lab > 0, 0, near)
    ids = np.arange(1, n + 1)
    grey = img.mean(0)
    local = np.nan_to_num(np.asarray(ndi.median(grey, ring, ids), np.float32), nan=_background_level(img, lab > 0))
    bg = ndi.gaussian_filter(np.r_[np.float32(0), local][expand_labels(lab, 3)], 1.0)
    factor = ndi.gaussian_filter(gain[expand_labels(lab, 3)], 1.0)
    return (img * factor[None] + bg[None] * (1 - factor[None])).astype(np.float32)


def paste_objects(img: np.ndarray, lab: np.ndarray, donor_img: np.ndarray, donor_lab: np.ndarray,
                  rng: np.random.Generator, cfg: AugmentConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Paste the objects of a donor crop that fall on the crop's background (they may touch its objects).

    The donor's intensities are matched to the crop's objects (median, × ``paste_contrast``) and carried one
    pixel beyond each pasted mask, so its blurred edge comes along; new objects get new ids.
    """
    cfg = cfg or AugmentConfig()
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
    contrast = float(rng.uniform(*cfg.paste_contrast))
    factor = ref / max(src, 1e-3) * contrast if fg.any() else contrast
    region = ndi.binary_dilation(pasted) & ~fg
    bg, donor_bg = _background_level(img, fg), _background_level(donor_img, donor_lab > 0)
    out = img.copy()
    out[:, region] = bg + (donor_img[:, region] - donor_bg) * factor
    lab = lab.copy()
    lab[pasted] = donor_lab[pasted] + int(lab.max())
    return out.astype(np.float32), lab


def defocus_objects(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator,
                    cfg: AugmentConfig | None = None) -> np.ndarray:
    """Blur a random half of the objects (and their surroundings) by ``defocus_sigma``; the rest stay sharp."""
    cfg = cfg or AugmentConfig()
    n = int(lab.max())
    if n == 0:
        return img
    sigma = float(rng.uniform(*cfg.defocus_sigma))
    chosen = np.r_[False, rng.random(n) < 0.5]
    region = ndi.gaussian_filter(ndi.binary_dilation(chosen[lab], iterations=int(2 * sigma)).astype(np.float32),
                                 sigma)
    blurred = ndi.gaussian_filter(img, [0] + [sigma] * lab.ndim)
    return (img * (1 - region) + blurred * region).astype(np.float32)


def add_noise(img: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Camera-like degradations of a normalised image: photon noise, Gaussian noise (white or
    grainy, as in an image zoomed up to the model's scale) and coarse grey levels."""
    if cfg.shot_noise_prob and rng.random() < cfg.shot_noise_prob:
        photons = float(np.exp(rng.uniform(*np.log(cfg.photon_range))))
        img = rng.poisson(np.clip(img, 0, None) * photons).astype(np.float32) / photons
    if cfg.noise_std and rng.random() < 0.5:
        noise = rng.normal(0, float(rng.uniform(0, cfg.noise_std)), img.shape).astype(np.float32)
        if cfg.noise_grain_prob and rng.random() < cfg.noise_grain_prob:
            std = noise.std()
            noise = ndi.gaussian_filter(noise, [0] + [float(rng.uniform(*cfg.grain_sigma))] * (img.ndim - 1))
            noise *= std / max(float(noise.std()), 1e-6)
        img = img + noise
    if cfg.quantize_prob and rng.random() < cfg.quantize_prob:
        levels = float(np.exp(rng.uniform(*np.log(cfg.grey_levels))))
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
        img = dim_objects(img, lab, rng, cfg)
    if cfg.defocus_prob and rng.random() < cfg.defocus_prob:
        img = defocus_objects(img, lab, rng, cfg)
    if cfg.halo_prob and rng.random() < cfg.halo_prob:
        img = add_halos(img, lab, rng, cfg)
    if cfg.speckle_prob and rng.random() < cfg.speckle_prob:
        img = add_speckles(img, lab, rng, cfg)
    if cfg.texture_prob and rng.random() < cfg.texture_prob:
        img = add_texture(img, lab, rng, cfg)
    if rng.random() < cfg.blur_prob:
        img = ndi.gaussian_filter(img, [0] + [float(rng.uniform(*cfg.blur_sigma))] * dims)
    if rng.random() < 0.8:
        g = float(np.exp(rng.uniform(*np.log(cfg.gamma_range))))
        img = np.clip(img, 0, None) ** g
    if rng.random() < 0.8:
        img = img * float(rng.uniform(*cfg.contrast_range)) + float(rng.uniform(*cfg.offset_range))
    img = add_noise(img, cfg, rng)
    if cfg.field_prob and rng.random() < cfg.field_prob:
        img = img * brightness_field(lab.shape, cfg.field_low, rng)
    if cfg.invert_prob and rng.random() < cfg.invert_prob:
        img = 1.0 - img
    return img.astype(np.float32), lab
