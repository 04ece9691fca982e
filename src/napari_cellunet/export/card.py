"""The model card of a bioimage.io package (its README.md), written from the model's metadata."""

from __future__ import annotations

from .. import __version__
from ..models import CellModel
from ..unet import UNetConfig, count_parameters

LICENSE = "BSD-3-Clause"

CARD = """# {name} (napari-cellunet)

{description}

A {dims}D UNet (depth {depth}, {base} base channels, {norm} norm, {params:,} parameters), exported by
napari-cellunet {version}.

## Input and output

Input: {channels} channel(s); each image is normalised so its {low:g} and {high:g} percentiles map to 0 and 1
(the `scale_range` preprocessing){invert}. Spatial sizes: multiples of {multiple} px.{diameter}

Output: per-pixel probabilities, one channel each: {outputs}.

**Not included:** napari-cellunet's post-processing (seeds, watershed, merging, size filters), which turns the
probabilities into instance labels and counts. Add this package to napari-cellunet (`cellunet models add
PACKAGE.zip`) to get labels with the model's own thresholds: `{thresholds}`.

## Training

{training}

## Validation

{validation}

To validate on your own annotated images, segment them with napari-cellunet (`cellunet segment`)
and compare the labels with your masks (AP@0.5, count error).

## Licence

{license} (napari-cellunet's licence). Recorded with the model: {recorded_license}.
Please cite the U-Net paper and the training data.
"""


def _channel_names(cfg: UNetConfig) -> list[str]:
    names = ["background", "interior", "boundary"]
    names = names if cfg.n_classes == 3 else [f"class{i}" for i in range(cfg.n_classes)]
    return names + ["distance"] * cfg.distance


def _model_card(model: CellModel) -> str:
    """The package's documentation (README.md): the model card, from ``model.meta``."""
    meta, cfg = model.meta, model.config
    training = [f"- {label}: {meta[key]}" for key, label in (
        ("training_data", "Training data"), ("n_train_images", "Training images"), ("steps", "Steps"),
        ("train_minutes", "Minutes"), ("training_stages", "Stages"), ("training_note", "Note")) if key in meta]
    for key in ("training_command", "thresholds_command"):
        if key in meta:
            training += ["", f"{key.replace('_', ' ').capitalize()}:", "", "```bash", str(meta[key]), "```"]
    scores = {k.removeprefix("val_scores_").replace("_", " "): v for k, v in meta.items()
              if k.startswith("val_scores") and isinstance(v, dict)}
    metrics = sorted({m for s in scores.values() for m in s})
    validation = ("Scores on held-out validation images with napari-cellunet's post-processing (AP at IoU "
                  "0.5/0.75, F1 at 0.5, DSB score, relative count error):\n\n| | " + " | ".join(metrics)
                  + " |\n" + "|---" * (len(metrics) + 1) + "|\n"
                  + "\n".join(f"| {k} | " + " | ".join(str(s.get(m, "")) for m in metrics) + " |"
                              for k, s in scores.items())) if scores else "No validation scores were recorded."
    low, high = model.normalization
    diameter = (f"\n\n**Rescale images first so objects are about {model.diameter:g} px across**: the network was "
                "trained at that size (napari-cellunet rescales automatically, other tools do not)."
                if model.diameter else "")
    return CARD.format(
        name=model.name, description=meta.get("description", "A napari-cellunet UNet."), dims=cfg.dims,
        depth=cfg.depth, base=cfg.base_channels, norm=cfg.norm, params=count_parameters(model.net),
        version=__version__, channels=cfg.in_channels, low=low, high=high, multiple=2**cfg.depth,
        invert=", then inverted (1 - x)" if model.invert else "", diameter=diameter,
        outputs=", ".join(f"`{c}`" for c in _channel_names(cfg))
        + " (distance: each object's distance to its border, 1 at its centre)" * cfg.distance,
        thresholds=meta.get("instance_params", {}), training="\n".join(training) or "Not recorded.",
        validation=validation, license=LICENSE, recorded_license=meta.get("license", "none"))
