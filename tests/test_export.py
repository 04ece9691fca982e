"""Models that travel: ONNX / TorchScript / bioimage.io export and import back (napari_cellunet.export)."""

from __future__ import annotations

import importlib.util
import zipfile

import numpy as np
import pytest
import torch
import yaml
from conftest import disc_image
from scipy import ndimage as ndi

from napari_cellunet import export, models
from napari_cellunet.inference import _forward
from napari_cellunet.models import ModelError
from napari_cellunet.segment import normalize_for_model, segment
from napari_cellunet.unet import UNet, UNetConfig


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


needs_onnx = pytest.mark.skipif(not _installed("onnx", "onnxruntime"), reason="needs onnx and onnxruntime")
needs_bioimageio = pytest.mark.skipif(not _installed("onnx", "onnxruntime", "bioimageio.core"),
                                      reason="needs onnx, onnxruntime and bioimageio.core")

INSTANCE_PARAMS = {"prob_threshold": 0.4, "seed_threshold": 0.25, "min_size": 10, "min_seed_size": 3,
                   "split_touching": True, "min_brightness": 0.0, "merge_fragments": 0.2, "min_confidence": 0.4}
META = {"name": "tiny-export", "diameter": 16.0, "normalization": {"low": 1.0, "high": 99.8}, "invert": False,
        "instance_params": INSTANCE_PARAMS, "description": "tiny test UNet", "training_data": "three discs",
        "license": "BSD-3-Clause", "training_command": "60 Adam steps in tests/test_export.py",
        "val_scores_default_thresholds": {"ap50": 1.0, "count_error": 0.0}}


def _images():
    a, labels = disc_image(shape=(96, 96), centers=((30, 30), (30, 66), (66, 48)), radius=10)
    b, _ = disc_image(shape=(80, 112), centers=((40, 30), (40, 52), (40, 85)), radius=9, seed=3)
    return a, labels, b


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny UNet fitted in a few steps to three discs, so its labels are not empty."""
    torch.manual_seed(0)
    net = UNet(UNetConfig(depth=2, base_channels=4, distance=True))
    image, labels, _ = _images()
    x = torch.from_numpy(normalize_for_model(models.CellModel("t", net, META), image[None]))
    fg = labels > 0
    classes = torch.from_numpy(np.where(fg & ~ndi.binary_erosion(fg), 2, fg.astype(int)))[None]
    dist = torch.from_numpy(np.clip(ndi.distance_transform_edt(fg) / 10, 0, 1).astype(np.float32))[None, None]
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(60):
        out = net(x)
        loss = (torch.nn.functional.cross_entropy(out[:, :3], classes)
                + torch.nn.functional.binary_cross_entropy_with_logits(out[:, 3:], dist))
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = models.save_model(tmp_path_factory.mktemp("tiny") / f"tiny-export{models.SUFFIX}", net.eval(), META)
    return models.load_model(path)


@pytest.fixture(scope="module")
def package(tiny, tmp_path_factory):
    return export.export_bioimageio(tiny, tmp_path_factory.mktemp("pkg"))


def _torch_probs(model, x: np.ndarray) -> np.ndarray:
    return _forward(model.net, torch.from_numpy(x), None, [()]).numpy()


def _rezip(folder, path):
    with zipfile.ZipFile(path, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f.name)
    return path


# --------------------------------------------------------------------------- ONNX / TorchScript
@needs_onnx
def test_onnx_matches_torch_at_any_size(tiny, tmp_path):
    import onnx

    path = export.export_onnx(tiny, tmp_path / "tiny.onnx")
    assert export.check_onnx(tiny, path) <= 1e-4  # (1, 1, 128, 160)
    assert export.check_onnx(tiny, path, shape=(2, 1, 45, 70), seed=1) <= 1e-4  # not multiples of 2**depth
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 1, "y", "x"]


def test_torchscript_equals_torch(tiny, tmp_path):
    scripted = torch.jit.load(str(export.export_torchscript(tiny, tmp_path / "tiny.pt")))
    rng = np.random.default_rng(0)
    for shape in ((1, 1, 64, 64), (3, 1, 37, 50), (1, 1, 3, 2)):  # the last is padded by replication
        x = rng.random(shape, dtype=np.float32)
        with torch.no_grad():
            out = scripted(torch.from_numpy(x)).numpy()
        assert out.shape == (shape[0], 4, *shape[2:])
        np.testing.assert_allclose(out, _torch_probs(tiny, x), rtol=0, atol=1e-6)
        np.testing.assert_allclose(out[:, :3].sum(1), 1.0, atol=1e-5)


@needs_onnx
def test_3d_model_exports(tmp_path):
    torch.manual_seed(0)
    net = UNet(UNetConfig(dims=3, depth=1, base_channels=2, n_classes=3)).eval()
    path = export.export_onnx(net, tmp_path / "3d.onnx")
    for shape in ((1, 1, 8, 12, 10), (2, 1, 5, 7, 9)):
        assert export.check_onnx(net, path, shape=shape) <= 1e-4
    scripted = torch.jit.load(str(export.export_torchscript(net, tmp_path / "3d.pt")))
    x = np.random.default_rng(0).random((1, 1, 6, 9, 7), dtype=np.float32)
    with torch.no_grad():
        out = scripted(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, _forward(net, torch.from_numpy(x), None, [()]).numpy(), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- bioimage.io
@needs_bioimageio
def test_package_passes_bioimageio_test(package):
    summary = export.check_bioimageio(package)
    assert summary.status == "passed", summary.format()
    tested = " ".join(d.name for d in summary.details)
    for fmt in ("onnx", "torchscript", "pytorch_state_dict"):
        assert f"Reproduce test outputs from test inputs ({fmt})" in tested


@needs_bioimageio
def test_package_describes_the_model(package):
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        readme = zf.read(rdf["documentation"]["source"]).decode()
        cover = zf.read(rdf["covers"][0]["source"])
    assert {"weights.onnx", "weights_torchscript.pt", "weights_state_dict.pt", "test_input.npy"} <= names
    assert cover[:8] == b"\x89PNG\r\n\x1a\n"
    assert rdf["license"] == "BSD-3-Clause" and rdf["format_version"].startswith("0.5")
    (inp,), (out,) = rdf["inputs"], rdf["outputs"]
    assert [a.get("id", a["type"]) for a in inp["axes"]] == ["batch", "channel", "y", "x"]
    assert inp["axes"][2]["size"] == {"min": 4, "step": 4}  # 2**depth
    scale = next(p for p in inp["preprocessing"] if p["id"] == "scale_range")["kwargs"]
    assert (scale["min_percentile"], scale["max_percentile"], scale["axes"]) == (1.0, 99.8, ["y", "x"])
    assert out["axes"][1]["channel_names"] == ["background", "interior", "boundary", "distance"]
    ours = rdf["config"]["napari-cellunet"]
    assert ours["model_file"] in names and ours["instance_params"] == INSTANCE_PARAMS
    assert "## Validation" in readme and "three discs" in readme and "Not included" in readme


@needs_bioimageio
def test_inverted_model_declares_one_minus_x(tiny, tmp_path):
    inverted = models.CellModel("tiny-inverted", tiny.net, dict(tiny.meta, invert=True))
    folder = export.export_bioimageio(inverted, tmp_path, zip=False)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    steps = [p for p in rdf["inputs"][0]["preprocessing"] if p["id"] != "ensure_dtype"]
    assert [p["id"] for p in steps] == ["scale_range", "scale_linear"]
    assert steps[1]["kwargs"] == {"gain": -1.0, "offset": 1.0}
    raw, expected = np.load(folder / "test_input.npy"), np.load(folder / "test_output.npy")
    np.testing.assert_allclose(expected, _torch_probs(tiny, normalize_for_model(inverted, raw)), atol=1e-5)


@needs_bioimageio
def test_round_trip_restores_the_model(package, tiny, tmp_path):
    path = export.import_bioimageio(package)
    assert path.parent == models.user_dir() and path.stem == "tiny-export"
    restored = models.load_model("tiny-export")
    assert restored.meta == tiny.meta
    assert restored.instance_params == tiny.instance_params and restored.diameter == 16.0
    for k, v in tiny.net.state_dict().items():
        assert torch.equal(restored.net.state_dict()[k], v)
    a, _, b = _images()
    for image in (a, b):
        mine, theirs = segment(tiny, image[None]), segment(restored, image[None])
        assert mine.labels.max() > 0  # three discs; not asserted exactly (a 60-step fit)
        np.testing.assert_array_equal(theirs.labels, mine.labels)
    with pytest.raises(ModelError, match="already exists"):
        export.import_bioimageio(package)
    assert export.import_bioimageio(package, overwrite=True) == path
    # from an unpacked folder, under another name
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(package) as zf:
        zf.extractall(folder)
    again = export.import_bioimageio(folder, name="tiny copy")
    assert again.stem == "tiny-copy" and models.load_model("tiny-copy").meta["name"] == "tiny-copy"


@needs_bioimageio
def test_foreign_package_is_refused(package, tmp_path):
    folder = tmp_path / "foreign"
    with zipfile.ZipFile(package) as zf:
        zf.extractall(folder)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    del rdf["config"]["napari-cellunet"]
    rdf["name"] = "Someone's StarDist"
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    for source in (folder, _rezip(folder, tmp_path / "foreign.zip")):
        with pytest.raises(ModelError, match="can only run packages it exported") as err:
            export.import_bioimageio(source)
        msg = str(err.value)
        assert "Someone's StarDist" in msg and "pytorch_state_dict" in msg and "ProbabilityUNet" in msg
        assert "\n" not in msg


def test_unreadable_packages_give_model_errors(tmp_path):
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(np.random.default_rng(0).bytes(2000))
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("hello.txt", "not a package")
    bad_yaml = tmp_path / "bad"
    bad_yaml.mkdir()
    (bad_yaml / "rdf.yaml").write_text("type: model\nname: [unclosed\n")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "rdf.yaml").write_text("type: dataset\nname: some data\n")
    cases = {garbage: "not a bioimage.io package", empty: "no rdf.yaml", bad_yaml: "not valid YAML",
             dataset: "not a bioimage.io model package", tmp_path / "missing.zip": "no such file"}
    for source, message in cases.items():
        with pytest.raises(ModelError, match=message):
            export.import_bioimageio(source)


@needs_bioimageio
def test_tampered_package_gives_model_errors(package, tmp_path):
    folder = tmp_path / "tampered"
    with zipfile.ZipFile(package) as zf:
        zf.extractall(folder)
    model_file = folder / yaml.safe_load((folder / "rdf.yaml").read_text())["config"]["napari-cellunet"]["model_file"]
    model_file.write_bytes(model_file.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelError, match="corrupt"):
        export.import_bioimageio(folder)
    model_file.unlink()
    with pytest.raises(ModelError, match="missing"):
        export.import_bioimageio(folder)


# --------------------------------------------------------------------------- the bundled model
@pytest.mark.slow
@needs_bioimageio
def test_bundled_model_exports(bundled_model, tmp_path):
    onnx_path = export.export_onnx(bundled_model, tmp_path / "bundled.onnx")
    assert export.check_onnx(bundled_model, onnx_path) <= 1e-4
    pkg = export.export_bioimageio(bundled_model, tmp_path)
    assert pkg.name == "nuclei-fluo-2d.zip"
    summary = export.check_bioimageio(pkg)
    assert summary.status == "passed", summary.format()
    with pytest.raises(ModelError, match="bundled model name"):
        export.import_bioimageio(pkg)  # it is already installed under that name
    restored = models.load_model(export.import_bioimageio(pkg, name="nuclei-from-zoo"))
    assert restored.instance_params == bundled_model.instance_params
    assert {k: v for k, v in restored.meta.items() if k != "name"} == {
        k: v for k, v in bundled_model.meta.items() if k != "name"}
