"""Add an int8 OpenVINO network to a model file (post-training quantization with NNCF; no training).

    pip install nncf      # only for this script; inference needs just OpenVINO
    python scripts/quantize_model.py MODEL.safetensors TRAIN_IMAGES TRAIN_MASKS [--crops 96] [--seed 0]

Calibration crops come from the model's *training* images (never val or held-out ones): each image
normalised as inference does and resized so its nuclei (median diameter of its mask) have the model's
trained size, at three scales (x0.5, x1, x2: the size estimate runs the network at several scales),
one random 256² crop each. The first convolution (1 input channel, < 1% of the arithmetic) and the
1x1 head stay in floating point. The IR is stored in the model file with the hash of the weights it
was made from (``models.INT8_XML``/``INT8_BIN``, ``meta["int8"]``), so inference uses it only for
exactly those weights; ``precision auto`` then picks it on OpenVINO. Check the result with
``benchmarks/shifted_val.py --precision int8 --precision bf16 --robustness`` before shipping it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np


def calibration_crops(model, images: str, masks: str, n: int, seed: int, noisy: bool = True) -> list[np.ndarray]:
    from napari_cellunet.arrays import as_slices
    from napari_cellunet.inference import resize_spatial
    from napari_cellunet.segment import median_diameter, normalize_for_model
    from napari_cellunet.training import load_folder_pairs

    rng = np.random.default_rng(seed)
    pairs = load_folder_pairs(images, masks)
    picks = rng.choice(len(pairs), size=min(len(pairs), -(-n // 3)), replace=False)
    crops = []
    for i in picks:
        _, img, mask = pairs[i]
        d = median_diameter(mask[None]) or model.diameter
        x = normalize_for_model(model, as_slices(img).data[:1])
        for zoom in (0.5, 1.0, 2.0):
            f = zoom * model.diameter / d
            y = resize_spatial(x, [max(32, int(round(s * f))) for s in x.shape[2:]])
            h, w = (min(256, s) for s in y.shape[2:])
            y0, x0 = rng.integers(0, y.shape[2] - h + 1), rng.integers(0, y.shape[3] - w + 1)
            crop = y[:, :, y0:y0 + h, x0:x0 + w]
            if noisy and rng.random() < 0.5:  # noisy images reach activations clean ones do not
                crop = crop + rng.normal(0, rng.uniform(0.02, 0.15), crop.shape)
            crops.append(np.ascontiguousarray(crop, dtype=np.float32))
    return crops[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("images")
    ap.add_argument("masks")
    ap.add_argument("--crops", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write here instead of over MODEL")
    ap.add_argument("--clean", action="store_true", help="no noisy calibration crops")
    ap.add_argument("--float-full-res", action="store_true", help="full-resolution convolutions stay floating point")
    ap.add_argument("--ranges", default="MEAN_MINMAX", help="NNCF activation range estimator (MINMAX: the extremes seen)")
    args = ap.parse_args()

    import nncf
    import openvino as ov

    from napari_cellunet.export import export_onnx
    from napari_cellunet.inference import _weights_hash
    from napari_cellunet.models import INT8_BIN, INT8_XML, load_model, save_model

    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    advanced = AdvancedQuantizationParameters(
        activations_range_estimator_params=getattr(RangeEstimatorParametersSet, args.ranges))
    model = load_model(args.model)
    crops = calibration_crops(model, args.images, args.masks, args.crops, args.seed, not args.clean)
    with tempfile.TemporaryDirectory() as tmp:
        graph = ov.Core().read_model(str(export_onnx(model.net.cpu().eval(), Path(tmp) / "net.onnx")))
        convs = [op.get_friendly_name() for op in graph.get_ordered_ops() if op.get_type_name() == "Convolution"]
        if args.float_full_res:  # the first and last double convs (full resolution) and the head
            last = f"/up.{model.config.depth - 1}/"
            convs = [c for c in convs if c.startswith(("/down.0/", last, "/head/"))]
        quantized = nncf.quantize(graph, nncf.Dataset(crops), subset_size=len(crops),
                                  preset=nncf.QuantizationPreset.MIXED, advanced_parameters=advanced,
                                  ignored_scope=nncf.IgnoredScope(names=convs if args.float_full_res else [convs[0], convs[-1]]))
        ov.save_model(quantized, Path(tmp) / "int8.xml", compress_to_fp16=False)
        xml, weights = (Path(tmp) / "int8.xml").read_bytes(), (Path(tmp) / "int8.bin").read_bytes()
    model.meta["int8"] = {
        "weights": _weights_hash(model.net),
        "calibration": f"{len(crops)} random 256² crops of {Path(args.images)} at x0.5/x1/x2 the trained size",
        "tool": f"nncf {nncf.__version__}, openvino {ov.__version__}; first conv and head in floating point",
        "command": "python " + shlex.join(sys.argv),
    }
    out = save_model(args.out or model.path, model.net, model.meta, {INT8_XML: xml, INT8_BIN: weights})
    print(f"{out}: int8 network added ({len(xml) + len(weights):,} bytes, {len(crops)} calibration crops)")


if __name__ == "__main__":
    main()
