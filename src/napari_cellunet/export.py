"""Models that travel: export to ONNX, TorchScript and bioimage.io packages; import packages back.

Every export is the network plus the output activations inference uses
(:class:`ProbabilityUNet`): softmax over the class logits (background, interior,
boundary) and a sigmoid on the optional distance output. Input: ``(N, C, [Z,] Y, X)``
float32, already normalised; any batch size and any spatial size of at least
``2**depth`` (padded to a multiple of ``2**depth`` inside the graph, then cropped back).
Post-processing (instance labels, counts) is not exported.

A bioimage.io package also carries the napari-cellunet model file, named in
``config["napari-cellunet"]``, so :func:`import_bioimageio` restores it exactly.
ONNX needs ``onnx`` + ``onnxruntime``, packages ``bioimageio.spec`` (+ ``bioimageio.core``
to test them); each is imported only when used.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import json
import re
import shutil
import tempfile
import warnings
import zipfile
from importlib import resources
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from . import unet as unet_module
from .models import (FORMAT, FORMAT_VERSION, SUFFIX, CellModel, ModelError, list_models, load_model, save_model,
                     save_user_model, user_model_path)
from .unet import UNet, UNetConfig, count_parameters

CONFIG_KEY = "napari-cellunet"  # our entry in a package's ``config``
INPUT_ID, OUTPUT_ID = "input", "probabilities"
LICENSE = "BSD-3-Clause"
ARCH_FILE = "cellunet_unet.py"
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
SAMPLE_DIR = Path(str(resources.files("napari_cellunet") / "data"))  # the bundled sample images
CROP = 256  # side of the 2D sample crop for test tensors and the cover (3D: 64)


class ProbabilityUNet(nn.Module):
    """A napari-cellunet UNet whose output is what inference uses: class softmax [+ distance sigmoid].

    ``ProbabilityUNet(**unet_config_fields)``; its state dict is the UNet's. Written so that
    ``torch.jit.script`` and ONNX tracing both keep the batch and spatial sizes dynamic.
    """

    def __init__(self, **config) -> None:
        super().__init__()
        net = UNet(UNetConfig.from_dict(config))
        self.down, self.pool, self.up, self.head = net.down, net.pool, net.up, net.head
        self.n_classes = net.config.n_classes
        self.multiple = net.size_multiple
        self.dims = net.config.dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        m = self.multiple
        pad: list[int] = []
        small = False
        for i in range(self.dims):  # pad at the end of each spatial axis, as UNet.forward does
            s = spatial[self.dims - 1 - i]
            p = (m - s % m) % m
            small = small or p >= s
            pad += [0, p]
        x = F.pad(x, pad, mode="replicate" if small else "reflect")
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            x = block(x, skips.pop())
        x = self.head(x)
        for i in range(self.dims):
            x = x.narrow(2 + i, 0, spatial[i])
        p = torch.softmax(x[:, : self.n_classes], dim=1)
        if x.shape[1] > self.n_classes:
            p = torch.cat([p, torch.sigmoid(x[:, self.n_classes:])], dim=1)
        return p


# --------------------------------------------------------------------------- helpers
def _require(module: str, pip_name: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"this export needs {pip_name}: pip install {pip_name}") from err


def _as_model(model: CellModel | UNet | str | Path) -> CellModel:
    if isinstance(model, CellModel):
        return model
    if isinstance(model, UNet):
        return CellModel(name="cellunet-model", net=model)
    return load_model(model)


def _cpu_net(model: CellModel | UNet | str | Path) -> UNet:
    """A CPU fp32 eval copy (the caller's network is never moved or changed)."""
    net = copy.deepcopy(_as_model(model).net).float().cpu().eval()
    return net.to(memory_format=torch.contiguous_format)


def probability_net(model: CellModel | UNet | str | Path) -> ProbabilityUNet:
    """The network wrapped with its output activations (CPU, fp32, eval mode)."""
    net = _cpu_net(model)
    wrapped = ProbabilityUNet(**net.config.to_dict())
    wrapped.load_state_dict(net.state_dict())
    return wrapped.eval()


def _axis_ids(dims: int) -> str:
    return "zyx"[3 - dims:]


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- ONNX / TorchScript
def export_onnx(model: CellModel | UNet | str | Path, path: str | Path, opset: int = 17) -> Path:
    """Write the wrapped network as ONNX (``input`` -> ``probabilities``; dynamic batch and spatial axes)."""
    onnx = _require("onnx", "onnx")
    net = probability_net(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = {0: "batch", **{2 + i: a for i, a in enumerate(_axis_ids(net.dims))}}
    example = torch.rand(1, net.down[0][0].in_channels, *(2 * net.multiple,) * net.dims)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notices and "legacy exporter" deprecation
        # The TorchScript-based exporter records the size arithmetic, so padding stays dynamic; the
        # torch.export-based one (dynamo=True) would need onnxscript and symbolic-shape guards.
        torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_ID], output_names=[OUTPUT_ID],
                          dynamic_axes={INPUT_ID: names, OUTPUT_ID: names})
    onnx.checker.check_model(str(path))
    return path


def check_onnx(model: CellModel | UNet | str | Path, path: str | Path, shape: tuple[int, ...] = (1, 1, 128, 160),
               seed: int = 0) -> float:
    """Max abs difference between onnxruntime on ``path`` and napari-cellunet's torch inference, random input."""
    ort = _require("onnxruntime", "onnxruntime")
    from .inference import _forward

    net = _cpu_net(model)
    shape = (shape[0], net.config.in_channels, *shape[2:])
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    ref = _forward(net, torch.from_numpy(x), None, [()]).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    if out.shape != ref.shape:
        raise ValueError(f"ONNX output shape {out.shape} != torch output shape {ref.shape}")
    return float(np.abs(out - ref).max())


def export_torchscript(model: CellModel | UNet | str | Path, path: str | Path) -> Path:
    """Write the wrapped network as TorchScript (scripted: any size; ``torch.jit.load`` reads it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(probability_net(model)).save(str(path))
    return path


# --------------------------------------------------------------------------- bioimage.io export
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

    from .segment import normalize_for_model

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


def _describe(model: CellModel, files: dict[str, Path], opset: int):
    """The bioimage.io ModelDescr of a package whose files are in ``files``."""
    bio = _require("bioimageio.spec.model.v0_5", "bioimageio.spec")
    cfg, meta = model.config, model.meta
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
    torch_version = bio.Version(torch.__version__.split("+")[0])
    weights = bio.WeightsDescr(
        pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=files["state_dict"], pytorch_version=torch_version, architecture=bio.ArchitectureFromFileDescr(
                source=files["arch"], callable="ProbabilityUNet", kwargs=cfg.to_dict())),
        torchscript=bio.TorchscriptWeightsDescr(source=files["torchscript"], pytorch_version=torch_version,
                                                parent="pytorch_state_dict"),
        onnx=bio.OnnxWeightsDescr(source=files["onnx"], opset_version=opset, parent="pytorch_state_dict"))
    ours = {"model_file": files["model_file"].name, "sha256": _sha256(files["model_file"].read_bytes()),
            "format": FORMAT, "format_version": FORMAT_VERSION, "name": model.name,
            "exported_by": f"napari-cellunet {__version__}", "diameter": model.diameter,
            "normalization": {"low": low, "high": high}, "invert": model.invert,
            "instance_params": json.loads(json.dumps(meta.get("instance_params") or {}, default=str))}
    train = meta.get("train_config") or {}
    config = bio.Config(bioimageio=bio.BioimageioConfig(
        architecture_type=f"{cfg.dims}D UNet", model_parameter_count=count_parameters(model.net),
        architecture_description="UNet (Ronneberger et al. 2015) with padded convolutions; outputs the class "
                                 "softmax (background, interior, boundary)" + " and a distance sigmoid" * cfg.distance,
        task="semantic segmentation (instances: napari-cellunet's post-processing)",
        training=bio.TrainingDetails(
            training_batch_size=train.get("batch_size"), initial_learning_rate=train.get("lr"),
            training_duration=meta["train_minutes"] / 60 if "train_minutes" in meta else None)),
        **{CONFIG_KEY: ours})
    cite = [bio.CiteEntry(text="Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical Image "
                               "Segmentation. MICCAI 2015", doi=bio.Doi("10.1007/978-3-319-24574-4_28"))]
    if re.search(r"DSB|BBBC038", str(meta.get("training_data", ""))):
        cite.append(bio.CiteEntry(text="Caicedo et al. Nucleus segmentation across imaging experiments: the 2018 Data "
                                       "Science Bowl. Nature Methods 2019", doi=bio.Doi("10.1038/s41592-019-0612-7")))
    # No URLs anywhere (git_repo, cite urls, linked training data, github users): checking them needs the network.
    return bio.ModelDescr(
        name=_descr_name(model.name), description=str(meta.get("description") or "A napari-cellunet UNet"),
        authors=[bio.Author(name="napari-cellunet developers")], cite=cite, license=bio.LicenseId(LICENSE),
        documentation=bio.FileDescr(source=files["readme"]), covers=[bio.FileDescr(source=files["cover"])],
        attachments=[bio.FileDescr(source=files["model_file"])], inputs=[inp], outputs=[out], weights=weights,
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


# --------------------------------------------------------------------------- bioimage.io import
def _read_package(source: Path) -> tuple[dict, bytes | None]:
    """(rdf, bytes of the napari-cellunet model file it names, or None); ModelError if unreadable."""
    import yaml

    if not source.exists():
        raise ModelError(f"{source}: no such file or folder")
    try:
        if source.is_dir():
            return _parse(source.name, lambda n: (source / n).read_bytes(),
                          [n for n in RDF_NAMES if (source / n).is_file()], yaml)
        with zipfile.ZipFile(source) as zf:  # the package at the root, or in one top folder
            rdfs = [n for n in zf.namelist() if PurePosixPath(n).name in RDF_NAMES and n.count("/") <= 1]
            return _parse(source.name, zf.read, sorted(rdfs, key=lambda n: n.count("/")), yaml)
    except ModelError:
        raise
    except zipfile.BadZipFile as err:
        raise ModelError(f"{source.name} is not a bioimage.io package (neither a zip file nor a folder)") from err
    except Exception as err:  # unreadable file, truncated zip member, odd YAML content, ...
        raise ModelError(f"{source.name}: could not read the package ({type(err).__name__}: {err})") from err


def _config(rdf: dict) -> dict:
    return rdf["config"] if isinstance(rdf.get("config"), dict) else {}


def _parse(label: str, read, rdf_names: list[str], yaml) -> tuple[dict, bytes | None]:
    if not rdf_names:
        raise ModelError(f"{label} is not a bioimage.io package (no {' or '.join(RDF_NAMES)} inside)")
    root = PurePosixPath(rdf_names[0]).parent
    try:
        rdf = yaml.safe_load(read(rdf_names[0]))
    except yaml.YAMLError as err:
        raise ModelError(f"{label}: its {PurePosixPath(rdf_names[0]).name} is not valid YAML") from err
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        raise ModelError(f"{label} is not a bioimage.io model package "
                         f"(type: {rdf.get('type') if isinstance(rdf, dict) else None!r})")
    ours = _config(rdf).get(CONFIG_KEY)
    if not isinstance(ours, dict) or not isinstance(ours.get("model_file"), str):
        return rdf, None
    rel = PurePosixPath(ours["model_file"])
    if rel.is_absolute() or ".." in rel.parts:
        raise ModelError(f"{label}: invalid model file name {ours['model_file']!r}")
    try:
        return rdf, read(str(root / rel))
    except (KeyError, FileNotFoundError) as err:
        raise ModelError(f"{label} is incomplete: its model file {rel} is missing") from err


def _describe_foreign(rdf: dict) -> str:
    """'architecture: ...; weights: ...' of a package made elsewhere."""
    weights = rdf.get("weights") if isinstance(rdf.get("weights"), dict) else {}
    state_dict = weights.get("pytorch_state_dict")
    arch = state_dict.get("architecture") if isinstance(state_dict, dict) else None
    if isinstance(arch, dict):  # spec 0.5: from a library (module.Callable) or a file (file.py:Callable)
        arch = (f"{arch['import_from']}.{arch.get('callable')}" if arch.get("import_from")
                else f"{arch.get('source')}:{arch.get('callable')}")
    bio_config = _config(rdf).get("bioimageio")
    arch = arch or (bio_config.get("architecture_type") if isinstance(bio_config, dict) else None)
    return f"architecture: {arch or 'not stated'}; weights: {', '.join(weights) or 'none'}"


def import_bioimageio(source: str | Path, name: str | None = None, *, overwrite: bool = False) -> Path:
    """Restore the napari-cellunet model of a package (``.zip`` or folder) this plugin exported.

    Saved as a user model called ``name`` (default: the model's own name); returns its path.
    An existing user model of that name is replaced only with ``overwrite=True``.
    Foreign packages and unreadable files raise :class:`ModelError` (one line).
    """
    source = Path(source).expanduser()
    rdf, data = _read_package(source)
    if data is None:
        raise ModelError(f"{source.name}: {rdf.get('name', '?')!r} is a bioimage.io model made elsewhere "
                         f"({_describe_foreign(rdf)}); napari-cellunet can only run packages it exported")
    ours = rdf["config"][CONFIG_KEY]
    if ours.get("sha256") and _sha256(data) != ours["sha256"]:
        raise ModelError(f"{source.name}: its model file {ours['model_file']} is corrupt (checksum mismatch)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / PurePosixPath(ours["model_file"]).name
        path.write_bytes(data)
        try:
            model = load_model(path)  # checks format, version and weights
        except ModelError as err:
            raise ModelError(f"{source.name}: {err}") from None
    try:
        stem = user_model_path(name or model.name or str(ours.get("name") or path.stem)).stem
    except ModelError as err:  # a bundled name, or an empty one
        raise ModelError(f"{source.name}: {err}") from None
    if not overwrite and any(e.name == stem for e in list_models()):
        raise ModelError(f"{source.name}: a model called {stem!r} already exists "
                         "(import it under another name, or overwrite it)")
    return save_user_model(stem, model.net, model.meta)
