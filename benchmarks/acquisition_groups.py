"""Group DSB2018 fluorescence images by acquisition, and hold out whole groups (shifted validation).

    python benchmarks/acquisition_groups.py [--data ../shared/data/dsb2018_fluo]    # rewrites groups.csv
    python benchmarks/acquisition_groups.py --link OUT_DIR   # OUT_DIR/{train,val,shifted}/{images,masks}

``dsb2018_fluo/val`` is every 10th image of the same experiments as ``train``, so it flatters a model.
Images of one acquisition share their shape, so groups are first the image shapes; the large 256x256
group (334 images from several experiments) is split by k-means (k=4, standardised features) on what
differs between acquisitions: median nucleus diameter, foreground share, background level, brightest
value (bit depth / saturation), how dim the dim nuclei are next to the bright ones (10th / 90th
percentile of nucleus means) and texture (intensity CV inside nuclei). Shapes with fewer than 10
images form one group, "rare".

Held out as **shifted-val** (``SHIFTED``): the rare acquisitions (603x1272 embryo-like clusters,
tissue-like 256x320 / 260x347 crops, one 1040x1388), 512x640 (dim, noisy, textured) and the 256x256
cluster of small, tightly clustered nuclei with dim ones beside bright ones: 93 images, 17%; the
acquisition types that the held-out test's failures look like.
``--link`` writes symlinks for training without them: ``train`` = train images of the other groups,
``val`` = val images of the other groups (checkpoint selection), ``shifted`` = every image of the
held-out groups (never trained on, never used for checkpoint selection).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi
from scipy.cluster.vq import kmeans2

HERE = Path(__file__).parent
GROUPS_CSV = HERE / "acquisition_groups.csv"
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "dsb2018_fluo"
BIG_SHAPE = (256, 256)
K = 4
RARE_BELOW = 10
SHIFTED = ("rare", "512x640", "256x256-small-clustered")
CLUSTER_NAMES = {  # named after their mean features (see ``describe``), not their k-means index
    "small-clustered": lambda f: f["diameter"] < 11.5 and f["dim_ratio"] < 0.45,
    "dense-large": lambda f: f["diameter"] >= 17,
    "bright-background": lambda f: f["background"] >= 8,
    "sparse-dim": lambda f: True,
}


def image_features(image: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Per-image statistics that differ between acquisitions."""
    image = np.asarray(image, dtype=np.float32)
    fg = mask > 0
    ids = np.unique(mask[fg])
    areas = np.bincount(mask.ravel())[1:]
    areas = areas[areas > 0]
    means = np.asarray(ndi.mean(image, mask, ids)) if len(ids) else np.zeros(1)
    return {
        "diameter": float(np.sqrt(4 * np.median(areas) / np.pi)) if len(areas) else 0.0,
        "fg_share": float(fg.mean()),
        "background": float(np.median(image[~fg])) if (~fg).any() else 0.0,
        "max": float(image.max()),
        "dim_ratio": float(np.percentile(means, 10) / max(float(np.percentile(means, 90)), 1e-3)),
        "texture": float(image[fg].std() / max(float(image[fg].mean()), 1e-3)) if fg.any() else 0.0,
    }


def _vector(f: dict) -> list[float]:
    return [np.log(max(f["diameter"], 1)), np.log(max(f["fg_share"], 1e-4)), np.log1p(f["background"]),
            np.log(max(f["max"], 1)), f["dim_ratio"], f["texture"]]


def compute_groups(data: Path) -> list[dict]:
    """One row per image: id, split, shape, group, features."""
    rows = []
    with open(data / "index.csv") as f:
        index = list(csv.DictReader(f))
    for r in index:
        split = r["suggested_split"]
        img = tifffile.imread(data / split / "images" / f"{r['id']}.tif")
        mask = tifffile.imread(data / split / "masks" / f"{r['id']}.tif")
        rows.append({"id": r["id"], "split": split, "shape": f"{img.shape[0]}x{img.shape[1]}",
                     **image_features(img, mask)})
    shapes = {s: sum(x["shape"] == s for x in rows) for s in {x["shape"] for x in rows}}
    big = f"{BIG_SHAPE[0]}x{BIG_SHAPE[1]}"
    members = [x for x in rows if x["shape"] == big]
    feats = np.array([_vector(x) for x in members])
    z = (feats - feats.mean(0)) / feats.std(0)
    _, assign = kmeans2(z, K, seed=1, minit="++")
    names: dict[int, str] = {}
    for k in range(K):
        mean = {key: float(np.mean([x[key] for x, a in zip(members, assign) if a == k])) for key in members[0]
                if key not in ("id", "split", "shape")}
        names[k] = next(n for n, rule in CLUSTER_NAMES.items() if rule(mean) and n not in names.values())
    for x, a in zip(members, assign):
        x["group"] = f"{big}-{names[int(a)]}"
    for x in rows:
        x.setdefault("group", x["shape"] if shapes[x["shape"]] >= RARE_BELOW else "rare")
    return rows


def read_groups(path: Path = GROUPS_CSV) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def split_of(row: dict) -> str:
    """``train``, ``val`` (same-distribution, for checkpoint selection) or ``shifted`` (held out)."""
    return "shifted" if row["group"] in SHIFTED else row["split"]


def link_split(rows: list[dict], data: Path, out: Path) -> dict[str, int]:
    """Symlink every image/mask into ``out/<split_of>/{images,masks}``."""
    counts: dict[str, int] = {}
    for r in rows:
        part = split_of(r)
        for kind in ("images", "masks"):
            d = out / part / kind
            d.mkdir(parents=True, exist_ok=True)
            link = d / f"{r['id']}.tif"
            if not link.exists():
                link.symlink_to((data / r["split"] / kind / f"{r['id']}.tif").resolve())
        counts[part] = counts.get(part, 0) + 1
    return counts


def describe(rows: list[dict]) -> str:
    """Markdown table: one row per group with its size and mean features."""
    lines = ["| group | images (train/val) | held out | diameter px | fg share | background | max | "
             "dim/bright | texture |", "|---|---:|:-:|---:|---:|---:|---:|---:|---:|"]
    for g in sorted({r["group"] for r in rows}):
        m = [r for r in rows if r["group"] == g]
        mean = {k: np.mean([float(r[k]) for r in m]) for k in ("diameter", "fg_share", "background", "max",
                                                                "dim_ratio", "texture")}
        n_val = sum(r["split"] == "val" for r in m)
        lines.append(f"| {g} | {len(m)} ({len(m) - n_val}/{n_val}) | {'yes' if g in SHIFTED else ''} | "
                     f"{mean['diameter']:.1f} | {mean['fg_share']:.3f} | {mean['background']:.1f} | "
                     f"{mean['max']:.0f} | {mean['dim_ratio']:.2f} | {mean['texture']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--link", type=Path, help="write the split as symlinks into this folder")
    args = ap.parse_args()
    if args.link:
        counts = link_split(read_groups(), args.data, args.link)
        print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), f"images linked into {args.link}")
        return
    rows = compute_groups(args.data)
    keys = ["id", "split", "shape", "group", "diameter", "fg_share", "background", "max", "dim_ratio", "texture"]
    with open(GROUPS_CSV, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.4g}" if isinstance(r[k], float) else r[k]) for k in keys})
    print(describe(rows))
    n_shift = sum(split_of(r) == "shifted" for r in rows)
    print(f"\nshifted-val: {n_shift} of {len(rows)} images ({100 * n_shift / len(rows):.0f}%); wrote {GROUPS_CSV}")


if __name__ == "__main__":
    main()
