"""Re-tune a model's default post-processing thresholds on validation images (no training).

    python scripts/retune_thresholds.py MODEL.pt VAL_IMAGES VAL_MASKS

Runs the network once per val image (at its annotated diameter, as training's
validation does), grid-searches prob/seed thresholds with the current
post-processing, and writes them into the model file's metadata together with
the val scores. Used after the post-processing changed, so the bundled model's
defaults match the code that ships with it.
"""

from __future__ import annotations

import shlex
import sys

from napari_cellunet.inference import drive
from napari_cellunet.models import load_model, save_model
from napari_cellunet.segment import PredictOptions
from napari_cellunet.training import _val_scores, load_folder_pairs, tune_thresholds


def main() -> None:
    path, images, masks = sys.argv[1:4]
    model = load_model(path)
    val = [(img, mask) for _, img, mask in load_folder_pairs(images, masks)]
    base = model.instance_params
    base.min_size = 10  # pixels; on val a fixed 10 px beat "auto" (10% of a typical area): count error 8% vs 10%
    _, cached = drive(_val_scores(model, val, PredictOptions(), base))
    params, ap = tune_thresholds(cached, [t for _, t in val], base)
    model.meta["instance_params"] = params.to_dict()
    model.meta["val_ap50_tuned_thresholds"] = round(ap, 4)
    model.meta["thresholds_command"] = "python " + shlex.join(sys.argv)
    save_model(path, model.net, model.meta)
    print(f"thresholds {params.to_dict()}  val AP@0.5 {ap:.3f}")


if __name__ == "__main__":
    main()
