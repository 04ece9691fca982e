"""bioimage.io (spec 0.5) packages: the files (weights in three formats, test tensors, cover, card), the description.

The napari-cellunet model file travels as an attachment, named (with its
checksum) in ``config["napari-cellunet"]``, so :func:`.imports.import_bioimageio`
restores it exactly.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from .. import unet as unet_module
from ..models import FORMAT, FORMAT_VERSION, SUFFIX, CellModel, save_model
from ..unet import UNetConfig, count_parameters
from .card import LICENSE, _channel_names, _model_card
from .networks import (
    INPUT_ID,
    OUTPUT_ID,
    ProbabilityUNet,
    _as_model,
    _axis_ids,
    _cpu_net,
    _require,
    export_onnx,
    export_torchscript,
)

CONFIG_KEY = "napari-cellunet"  # our entry in a package's ``config``
ARCH_FILE = "cellunet_unet.py"
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
SAMPLE_DIR = Path(str(resources.files("napari_cellunet") / "data"))  # the bundled sample images
CROP = 256  # side of the 2D sample crop for test tensors and the cover (3D: 64)


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sample_crop(dims: int, m: int) -> np.ndarray:
    """A centre crop of the bundled sample (the 2D image, or the 3D stack), sides a multiple of ``m``."""
    import tifffile

    img = np.asarray(tifffile.imread(SAMPLE_DIR / ("nuclei_2d.tif" if dims == 2 else "nuclei_3d.tif")))
    side = CROP if dims == 2 else CROP // 4
    sizes = [max(m, min(side, s) // m * m) for s in img.shape]
    crop = img[tuple(slice(max(0, (s - c) // 2), max(0, (s - c) // 2) + c) for s, c in zip(img.shape, sizes))]
    return np.pad(crop, [(0, c - s) for s, c in zip(crop.shape, sizes)], mode="reflect")  # if the sample is small


def _cover(image: np.ndarray, probs: np.ndarray, path: Path) -> None:
    """PNG, 2:1: the normalised input | the input with the predicted foreground in green (3D: middle plane)."""
    import imageio.v3 as iio

    if image.ndim == 3:
        image, probs = image[len(image) // 2], probs[:, len(image) // 2]
    gray, fg = np.clip(image, 0, 1), np.clip(1.0 - probs[0], 0, 1)
    right = np.stack([0.6 * gray, 0.6 * gray + 0.4 * fg, 0.6 * gray], axis=-1)
    iio.imwrite(path, (np.concatenate([np.stack([gray] * 3, axis=-1), right], axis=1) * 255).astype(np.uint8))


def _write_package_files(model: CellModel, folder: Path, opset: int) -> dict[str, Path]:
    """Weights (3 formats), architecture, model file, test and sample tensors, cover, README."""
    import tifffile

    from ..segment import normalize_for_model

    net, cfg = _cpu_net(model), model.config
    files = {k: folder / v for k, v in {
        "state_dict": "weights_state_dict.pt", "torchscript": "weights_torchscript.pt", "onnx": "weights.onnx",
        "arch": ARCH_FILE, "model_file": _file_stem(model.name) + SUFFIX, "test_input": "test_input.npy",
        "test_output": "test_output.npy", "sample_input": "sample_input.tif", "sample_output": "sample_output.tif",
        "cover": "cover.png", "readme": "README.md"}.items()}
    torch.save(net.state_dict(), files["state_dict"])
    files["arch"].write_text(inspect.getsource(unet_module) + "\n\n# Added by napari_cellunet.export: the UNet "
                             "plus the output activations napari-cellunet's inference uses.\n"
                             + inspect.getsource(ProbabilityUNet))
    export_torchscript(net, files["torchscript"])
    export_onnx(net, files["onnx"], opset=opset)
    save_model(files["model_file"], net, model.meta)
    raw = np.repeat(_sample_crop(cfg.dims, 2**cfg.depth)[None, None].astype(np.float32), cfg.in_channels, axis=1)
    x = normalize_for_model(model, raw)
    with torch.no_grad():  # test outputs come from the TorchScript weights, as written
        probs = torch.jit.load(str(files["torchscript"]))(torch.from_numpy(x)).numpy()
    np.save(files["test_input"], raw)
    np.save(files["test_output"], probs)
    tifffile.imwrite(files["sample_input"], raw[0])  # the same, as (C, [Z,] Y, X) TIFFs for people
    tifffile.imwrite(files["sample_output"], probs[0])
    _cover(x[0, 0], probs[0], files["cover"])
    files["readme"].write_text(_model_card(model))
    return files


def _descr_name(name: str) -> str:
    """bioimage.io names: letters, digits and ``_+- ()``, 5-64 characters."""
    return re.sub(r"[^A-Za-z0-9_+\- ()]+", "-", f"napari-cellunet {name}").strip("- ")[:64]


def _tensors(bio, model: CellModel, files: dict[str, Path]):
    """The input (with its normalisation as preprocessing) and output tensor descriptions."""
    cfg = model.config
    m, (low, high) = 2**cfg.depth, model.normalization
    axes = [bio.AxisId(a) for a in _axis_ids(cfg.dims)]
    pre = [bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(axes=axes, min_percentile=low, max_percentile=high))]
    if model.invert:
        pre.append(bio.ScaleLinearDescr(kwargs=bio.ScaleLinearKwargs(gain=-1.0, offset=1.0)))
    channels = _channel_names(cfg)
    inp = bio.InputTensorDescr(
        id=bio.TensorId(INPUT_ID), description="raw image (percentile normalisation is the preprocessing)",
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[f"channel{i}" for i in range(cfg.in_channels)])]
        + [bio.SpaceInputAxis(id=a, size=bio.ParameterizedSize(min=m, step=m)) for a in axes],
        test_tensor=bio.FileDescr(source=files["test_input"]),
        sample_tensor=bio.FileDescr(source=files["sample_input"]), preprocessing=pre)
    out = bio.OutputTensorDescr(
        id=bio.TensorId(OUTPUT_ID), description=f"probabilities: {', '.join(channels)} (classes sum to 1"
        + "; distance to the object border, 0-1" * cfg.distance + ")",
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=channels)]
        + [bio.SpaceOutputAxis(id=a, size=bio.SizeReference(tensor_id=bio.TensorId(INPUT_ID), axis_id=a))
           for a in axes],
        data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        test_tensor=bio.FileDescr(source=files["test_output"]),
        sample_tensor=bio.FileDescr(source=files["sample_output"]))
    return inp, out


def _weights(bio, cfg: UNetConfig, files: dict[str, Path], opset: int):
    """State dict (with the architecture file), TorchScript and ONNX weights."""
    torch_version = bio.Version(torch.__version__.split("+")[0])
    return bio.WeightsDescr(
        pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=files["state_dict"], pytorch_version=torch_version, architecture=bio.ArchitectureFromFileDescr(
                source=files["arch"], callable="ProbabilityUNet", kwargs=cfg.to_dict())),
        torchscript=bio.TorchscriptWeightsDescr(source=files["torchscript"], pytorch_version=torch_version,
                                                parent="pytorch_state_dict"),
        onnx=bio.OnnxWeightsDescr(source=files["onnx"], opset_version=opset, parent="pytorch_state_dict"))


def _package_config(bio, model: CellModel, files: dict[str, Path]):
    """bioimage.io's own config (architecture, training) and ours (``CONFIG_KEY``: the model file, settings)."""
    cfg, meta = model.config, model.meta
    low, high = model.normalization
    ours = {"model_file": files["model_file"].name, "sha256": _sha256(files["model_file"].read_bytes()),
            "format": FORMAT, "format_version": FORMAT_VERSION, "name": model.name,
            "exported_by": f"napari-cellunet {__version__}", "diameter": model.diameter,
            "normalization": {"low": low, "high": high}, "invert": model.invert,
            "instance_params": json.loads(json.dumps(meta.get("instance_params") or {}, default=str))}
    train = meta.get("train_config") or {}
    return bio.Config(bioimageio=bio.BioimageioConfig(
        architecture_type=f"{cfg.dims}D UNet", model_parameter_count=count_parameters(model.net),
        architecture_description="UNet (Ronneberger et al. 2015) with padded convolutions; outputs the class "
                                 "softmax (background, interior, boundary)" + " and a distance sigmoid" * cfg.distance,
        task="semantic segmentation (instances: napari-cellunet's post-processing)",
        training=bio.TrainingDetails(
            training_batch_size=train.get("batch_size"), initial_learning_rate=train.get("lr"),
            training_duration=meta["train_minutes"] / 60 if "train_minutes" in meta else None)),
        **{CONFIG_KEY: ours})


def _citations(bio, meta: dict) -> list:
    cite = [bio.CiteEntry(text="Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical Image "
                               "Segmentation. MICCAI 2015", doi=bio.Doi("10.1007/978-3-319-24574-4_28"))]
    if re.search(r"DSB|BBBC038", str(meta.get("training_data", ""))):
        cite.append(bio.CiteEntry(text="Caicedo et al. Nucleus segmentation across imaging experiments: the 2018 Data "
                                       "Science Bowl. Nature Methods 2019", doi=bio.Doi("10.1038/s41592-019-0612-7")))
    return cite


def _describe(model: CellModel, files: dict[str, Path], opset: int):
    """The bioimage.io ModelDescr of a package whose files are in ``files``."""
    bio = _require("bioimageio.spec.model.v0_5", "bioimageio.spec")
    cfg, meta = model.config, model.meta
    inp, out = _tensors(bio, model, files)
    weights = _weights(bio, cfg, files, opset)
    config = _package_config(bio, model, files)
    # No URLs anywhere (git_repo, cite urls, linked training data, github users): checking them needs the network.
    return bio.ModelDescr(
        name=_descr_name(model.name), description=str(meta.get("description") or "A napari-cellunet UNet"),
        authors=[bio.Author(name="napari-cellunet developers")], cite=_citations(bio, meta),
        license=bio.LicenseId(LICENSE), documentation=bio.FileDescr(source=files["readme"]),
        covers=[bio.FileDescr(source=files["cover"])], attachments=[bio.FileDescr(source=files["model_file"])],
        inputs=[inp], outputs=[out], weights=weights,
        tags=["napari-cellunet", "unet", "segmentation", "instance-segmentation", f"{cfg.dims}d", "pytorch", "onnx"],
        config=config)


def export_bioimageio(model: CellModel | str | Path, out: str | Path, *, zip: bool = True, opset: int = 17) -> Path:
    """Write a bioimage.io (spec 0.5) package; returns the ``.zip`` (the folder when ``zip=False``).

    ``out`` is a folder (the package becomes ``out/<name>.zip`` or ``out/<name>/``) or a ``.zip`` path.
    """
    spec = _require("bioimageio.spec", "bioimageio.spec")
    model = _as_model(model)
    out = Path(out)
    target = out if out.suffix == ".zip" else out / (_file_stem(model.name) + (".zip" if zip else ""))
    with tempfile.TemporaryDirectory() as tmp:
        files = _write_package_files(model, Path(tmp), opset)
        descr = _describe(model, files, opset)
        target.parent.mkdir(parents=True, exist_ok=True)
        if zip:
            return Path(spec.save_bioimageio_package(descr, output_path=target))
        if target.exists():  # replace an earlier export, nothing else
            if any(target.iterdir()) and not any((target / n).is_file() for n in RDF_NAMES):
                raise FileExistsError(f"{target} exists and is not a bioimage.io package folder")
            shutil.rmtree(target)
        return Path(spec.save_bioimageio_package_as_folder(descr, output_path=target))


def check_bioimageio(package: str | Path, devices: list[str] | None = None):
    """bioimage.io's own test of a package (as ``bioimageio test``); returns its ValidationSummary.

    ``summary.status == "passed"`` when it passed; ``summary.format()`` tells why not.
    """
    core = _require("bioimageio.core", "bioimageio.core")
    return core.test_model(str(package), devices=devices)
