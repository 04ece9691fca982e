"""Turn stained-tissue / brightfield nuclei images into nuclear-stain-like grey images for training.

    python scripts/stain_to_fluorescence.py ../shared/data/dsb2018_other OUT_DIR

RGB (H&E-like) images become their haematoxylin channel (``skimage.color.rgb2hed``, nuclei bright);
grey brightfield images are inverted (dark nuclei become bright). Masks are copied unchanged.
``OUT_DIR/{train,val}/{images,masks}`` then trains like ``dsb2018_fluo`` (dense tissue sections the
fluorescence set lacks). The data stay outside the repository (CC0, but large).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import tifffile
from skimage.color import rgb2hed


def as_nuclear_stain(image: np.ndarray) -> np.ndarray:
    """uint16 grey image with bright nuclei from an RGB stained or a grey brightfield image."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] >= 3:
        h = rgb2hed(image[..., :3])[..., 0]
    else:
        h = -image.astype(np.float32)
    lo, hi = np.percentile(h, [0.5, 99.9])
    return (np.clip((h - lo) / max(hi - lo, 1e-6), 0, 1) * 4000).astype(np.uint16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    n = 0
    for split in ("train", "val"):
        for img_path in sorted((args.source / split / "images").glob("*.tif")):
            for kind in ("images", "masks"):
                (args.out / split / kind).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(args.out / split / "images" / img_path.name,
                             as_nuclear_stain(tifffile.imread(img_path)), compression="zlib")
            shutil.copy(args.source / split / "masks" / img_path.name, args.out / split / "masks" / img_path.name)
            n += 1
    print(f"{n} images written to {args.out}")


if __name__ == "__main__":
    main()
