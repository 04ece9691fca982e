import pickle

import numpy as np
import pytest
import torch

from napari_cellunet import models
from napari_cellunet.models import (
    DEFAULT_MODEL,
    ModelError,
    load_model,
    model_names,
    read_model_file,
    save_model,
    save_user_model,
)
from napari_cellunet.unet import UNet, UNetConfig


def small_net():
    torch.manual_seed(1)
    return UNet(UNetConfig(depth=2, base_channels=4)).eval()


def test_roundtrip_same_outputs(tmp_path):
    net = small_net()
    path = save_model(tmp_path / "m.pt", net, {"diameter": 17.0, "instance_params": {"seed_threshold": 0.6}})
    m = load_model(path)
    x = torch.rand(1, 1, 40, 40)
    assert torch.allclose(net(x), m.net(x))
    assert m.diameter == 17.0 and m.instance_params.seed_threshold == 0.6
    assert m.config == net.config


def test_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelError, match="not a readable"):
        load_model(bad)
    # a pickle that would run code on load is refused by weights_only loading
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": "napari-cellunet/model", "x": Evil()}))
    with pytest.raises(ModelError):
        load_model(evil)
    assert not marker.exists()
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": small_net().state_dict()}, foreign)
    with pytest.raises(ModelError, match="not a napari-cellunet model"):
        load_model(foreign)
    truncated = tmp_path / "trunc.pt"
    good = save_model(tmp_path / "good.pt", small_net())
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ModelError):
        load_model(truncated)
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing.pt")


def test_mismatched_weights(tmp_path):
    path = save_model(tmp_path / "m.pt", small_net())
    payload = read_model_file(path)
    payload["config"]["base_channels"] = 8
    torch.save(payload, path)
    with pytest.raises(ModelError, match="do not match"):
        load_model(path)


def test_bundled_and_user_models():
    assert DEFAULT_MODEL in model_names()
    m = load_model(DEFAULT_MODEL)
    assert m.diameter and m.meta.get("training_command", "").startswith("cellunet train")
    path = save_user_model("my cells", small_net(), {"diameter": 12})
    assert path.parent == models.user_dir() and "my-cells" in model_names()
    assert load_model("my-cells").meta["name"] == "my-cells"
    with pytest.raises(ModelError, match="bundled"):
        save_user_model(DEFAULT_MODEL, small_net())


def test_lowlight_model_holds_up_in_photon_noise_where_the_default_does_not(sample, sample_mask):
    """The bundled low-light model: about as good on the clean sample, far better at 10 photons per nucleus."""
    from napari_cellunet.metrics import dataset_scores
    from napari_cellunet.segment import PredictOptions, median_diameter, segment

    opts = PredictOptions(diameter=median_diameter(sample_mask))   # the size estimate is tested elsewhere
    # the sample and its flips, pooled: on one image AP@0.5 swings by ±0.04 with where the tiles and the
    # edge padding fall (0.80-0.88 over the four flips, for either model)
    clean = [(sample[::a, ::b].astype(np.float32), sample_mask[::a, ::b]) for a in (1, -1) for b in (1, -1)]
    crop, truth = sample[:256, :256].astype(np.float32), sample_mask[:256, :256]
    noisy = [(np.random.default_rng(seed).poisson(crop / np.percentile(crop, 99.8) * 10 + 1).astype(np.float32), truth)
             for seed in range(3)]

    def ap50(model, pairs):
        return dataset_scores((t, segment(model, im[None], opts).labels[0]) for im, t in pairs)["ap50"]

    assert "nuclei-fluo-2d-lowlight" in model_names()
    lowlight, default = load_model("nuclei-fluo-2d-lowlight"), load_model(DEFAULT_MODEL)
    assert ap50(lowlight, clean) > ap50(default, clean) - 0.03
    assert ap50(lowlight, noisy) > ap50(default, noisy) + 0.1
