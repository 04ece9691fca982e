"""Bad input never gives a traceback or loses work: the CLI and the library, case by case.

Each case checks the exit code, that the one-line message names the problem, and that earlier
outputs survive. The library is also fuzzed (hypothesis): random shapes, dtypes and values raise
nothing but the project's own errors.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_cellunet.arrays import InputError, check_values, select_channel
from napari_cellunet.cli import main
from napari_cellunet.settings import SettingError


@pytest.fixture
def image_file(tmp_path, sample):
    path = tmp_path / "in" / "nuclei.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, sample[:128, :128])
    return path


def run_cli(args, capsys):
    """(exit code, stderr) of ``cellunet ARGS``; SystemExit from argparse counts as its code."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


# --------------------------------------------------------------------------- option values
@pytest.mark.parametrize("flag, value", [
    ("--diameter", "-5"), ("--diameter", "inf"), ("--diameter", "1e9"), ("--diameter", "nan"), ("--diameter", "abc"),
    ("--tile", "0"), ("--tile", "-64"), ("--prob-threshold", "1.5"), ("--seed-threshold", "-1"),
    ("--min-size", "2.5"), ("--merge-fragments", "7"), ("--channel", "-1"), ("--channel", "x"),
    ("--overlap", "0.99"), ("--batch-size", "0"),
])
def test_bad_option_values_name_the_option(tmp_path, image_file, capsys, flag, value):
    code, err = run_cli(["segment", image_file, "-o", tmp_path / "out", flag, value], capsys)
    assert code == 2 and flag in err and "must be" in err
    assert not (tmp_path / "out").exists()  # nothing written for a refused command


@pytest.mark.parametrize("minutes", ["-1", "0"])
def test_train_refuses_no_time_budget(tmp_path, capsys, minutes):
    code, err = run_cli(["train", "--images", tmp_path, "--masks", tmp_path, "--minutes", minutes], capsys)
    assert code == 2 and "--minutes" in err


def test_channel_on_a_one_channel_image(tmp_path, image_file, capsys):
    code, err = run_cli(["segment", image_file, "-o", tmp_path / "out", "--channel", "7", "-q"], capsys)
    assert code == 1 and "channel 7" in err and "no channel axis" in err


@pytest.mark.parametrize("make, message", [
    (lambda p: tifffile.imwrite(p, np.zeros((0, 64), np.uint8)), "empty"),
    (lambda p: tifffile.imwrite(p, np.zeros((1, 1), np.uint8)), "too small"),
    (lambda p: tifffile.imwrite(p, np.zeros((2, 2, 2, 2, 8, 8), np.uint8)), "unsupported axes"),
    (lambda p: tifffile.imwrite(p, np.full((32, 32), np.nan, np.float32)), "no finite values"),
    (lambda p: tifffile.imwrite(p, np.zeros((32, 32), np.complex64)), "data type"),
    (lambda p: p.write_text("not a tiff"), "not a readable TIFF"),
    (lambda p: p.write_bytes(b"II*\x00" + os.urandom(200)), "not a readable TIFF"),
])
def test_bad_files_give_one_line(tmp_path, capsys, make, message):
    bad = tmp_path / "bad.tif"
    make(bad)
    code, err = run_cli(["segment", bad, "-o", tmp_path / "out", "-q"], capsys)
    assert code == 1 and message in err and "bad.tif" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("dtype", [bool, np.float16, np.int16, np.uint32, np.float64])
def test_odd_dtypes_segment(tmp_path, capsys, sample, dtype):
    img = sample[:96, :96].astype(np.float64)
    img = (img > img.mean()) if dtype is bool else (img - (3000 if dtype is np.int16 else 0)).astype(dtype)
    tifffile.imwrite(tmp_path / "odd.tif", img)
    code, err = run_cli(["segment", tmp_path / "odd.tif", "-o", tmp_path / "out", "-q", "--diameter", "16"], capsys)
    assert code == 0, err
    assert pd.read_csv(tmp_path / "out" / "counts.csv")["count"][0] > 0


# --------------------------------------------------------------------------- work is never lost
def test_duplicate_names_get_distinct_outputs(tmp_path, sample, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "img.tif", sample[:96, :96])
    tifffile.imwrite(tmp_path / "a" / "img.tiff", sample[96:192, :96])
    code, err = run_cli(["segment", tmp_path / "a", tmp_path / "b", "-o", tmp_path / "out", "-q",
                         "--diameter", "16"], capsys)
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "out").glob("*_labels.tif"))
    assert written == ["img-2_labels.tif", "img-3_labels.tif", "img_labels.tif"]
    counts = pd.read_csv(tmp_path / "out" / "counts.csv")
    assert sorted(counts.file) == ["a/img.tif", "b/img.tif", "img.tiff"]


def test_output_into_the_input_folder_does_not_reread_results(tmp_path, image_file, capsys):
    folder = image_file.parent
    for _ in range(2):
        code, err = run_cli(["segment", folder, "-o", folder, "-q", "--diameter", "16"], capsys)
        assert code == 0, err
    counts = pd.read_csv(folder / "counts.csv")
    assert counts.file.tolist() == ["nuclei.tif"]  # not nuclei_labels.tif, and one row, not two
    assert sorted(p.name for p in folder.glob("*.tif")) == ["nuclei.tif", "nuclei_labels.tif"]


def test_second_run_merges_counts_and_failed_run_keeps_them(tmp_path, sample, capsys):
    out = tmp_path / "out"
    for name, crop in (("one.tif", sample[:96, :96]), ("two.tif", sample[96:192, :96])):
        tifffile.imwrite(tmp_path / name, crop)
        assert run_cli(["segment", tmp_path / name, "-o", out, "-q", "--diameter", "16"], capsys)[0] == 0
    counts = pd.read_csv(out / "counts.csv")
    assert sorted(counts.file) == ["one.tif", "two.tif"]  # the second run kept the first one's row
    (tmp_path / "broken.tif").write_text("junk")
    code, err = run_cli(["segment", tmp_path / "broken.tif", "-o", out, "-q"], capsys)
    assert code == 1 and "broken.tif" in err
    pd.testing.assert_frame_equal(pd.read_csv(out / "counts.csv"), counts)  # an all-failed run changes nothing


def test_interrupted_write_leaves_no_truncated_result(tmp_path, image_file, monkeypatch):
    import napari_cellunet.tiffio as tiffio

    real = tifffile.imwrite

    def dies_half_way(path, data, **kwargs):
        real(path, data[: len(data) // 2], **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(tifffile, "imwrite", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        tiffio.write_tiff(tmp_path / "x_labels.tif", np.ones((8, 8), np.uint16), "YX")
    assert list(tmp_path.glob("*x_labels*")) == []


def test_read_only_output_folder(tmp_path, image_file, capsys):
    if os.geteuid() == 0:
        out = tmp_path / "a_file"  # root writes anywhere: a path under a file is the unwritable case
        out.write_text("")
        out = out / "sub"
    else:
        out = tmp_path / "ro"
        out.mkdir(mode=0o500)
    code, err = run_cli(["segment", image_file, "-o", out, "-q"], capsys)
    assert code == 1 and "error" in err


def test_mismatched_model_file_is_one_line(tmp_path, capsys, image_file):
    import json

    from safetensors.torch import save_file

    from napari_cellunet.models import FORMAT, load_model
    from napari_cellunet.unet import UNet, UNetConfig

    model = load_model("nuclei-fluo-2d")
    small = UNet(UNetConfig(depth=2, base_channels=4)).state_dict()  # weights of another architecture
    path = tmp_path / "wrong.safetensors"
    save_file(small, path, metadata={"format": FORMAT, "format_version": "2",
                                     "config": json.dumps(model.config.to_dict()), "meta": json.dumps(model.meta)})
    code, err = run_cli(["segment", image_file, "-o", tmp_path / "out", "--model", path], capsys)
    assert code == 1 and "do not match" in err and len(err.strip().splitlines()) == 1 and len(err) < 400


def test_count_takes_a_binary_mask(tmp_path, capsys):
    mask = np.zeros((40, 40), bool)
    mask[2:8, 2:8] = mask[20:30, 20:30] = True
    tifffile.imwrite(tmp_path / "mask.tif", mask)
    assert run_cli(["count", tmp_path / "mask.tif", "-o", tmp_path], capsys)[0] == 0
    assert pd.read_csv(tmp_path / "counts.csv")["count"].tolist() == [2]


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.3, None])
def test_sigint_exits_130_without_traceback(tmp_path, sample, delay):
    """Ctrl-C while the CLI imports (``delay``) or mid-run (once it has started working): exit 130, one line."""
    big = np.tile(sample, (4, 4))
    tifffile.imwrite(tmp_path / "big.tif", big)
    proc = subprocess.Popen([sys.executable, "-m", "napari_cellunet", "segment", str(tmp_path / "big.tif"), "-o",
                             str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CELLUNET_LOG_DIR": str(tmp_path / "logs")})
    if delay is None:  # wait until the run has started (its log says so)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (tmp_path / "logs" / "cellunet.log").exists():
            time.sleep(0.1)
        time.sleep(1.0)
    else:
        time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and "cancelled" in err, (proc.returncode, err[-2000:])
    assert not list((tmp_path / "out").glob("*_labels.tif")) if (tmp_path / "out").exists() else True


# --------------------------------------------------------------------------- the library API
@pytest.mark.parametrize("array, message", [
    (np.zeros((1, 0, 0)), "empty"), (np.zeros((8, 8), np.complex64), "data type"), (np.zeros(16), "2 dimensions"),
    (np.full((8, 8), np.inf), "no finite"), (np.array([["a", "b"], ["c", "d"]]), "data type"),
])
def test_api_refuses_bad_arrays(bundled_model, array, message):
    from napari_cellunet.segment import segment

    with pytest.raises(InputError, match=message):
        segment(bundled_model, array)


def test_api_refuses_negative_diameter():
    from napari_cellunet.segment import PredictOptions

    with pytest.raises(SettingError, match="diameter"):
        PredictOptions(diameter=-3)


DTYPES = st.sampled_from([np.uint8, np.uint16, np.int16, np.int32, np.float16, np.float32, np.float64, bool,
                          np.complex64])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.lists(st.integers(0, 6), min_size=0, max_size=6), dtype=DTYPES,
       fill=st.sampled_from([0.0, 1.0, -5.0, np.nan, np.inf, 1e30]), axes=st.text("TZQCYXSAB", max_size=6))
def test_fuzz_input_checks_raise_only_our_errors(shape, dtype, fill, axes):
    """Random shapes, dtypes, values and axes strings: only InputError comes out (or a valid result)."""
    with np.errstate(all="ignore"):
        a = np.full(shape, fill).astype(dtype) if dtype is not np.complex64 else np.zeros(shape, dtype)
    try:
        data, used, _ = select_channel(a, axes or "YX", None, name="fuzz")
        out = check_values(data, "fuzz")
    except InputError:
        return
    assert out.dtype == np.float32 and used.endswith("YX")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(4, 40), w=st.integers(4, 40), n_classes=st.sampled_from([3, 4]), seed=st.integers(0, 10**6),
       prob=st.floats(0.01, 0.99), seed_t=st.floats(0.01, 0.99), diameter=st.one_of(st.none(), st.floats(1, 200)))
def test_fuzz_postprocessing_always_gives_labels(h, w, n_classes, seed, prob, seed_t, diameter):
    """Any probability map and thresholds: labels of the right shape, ids 1..n, never an exception."""
    from napari_cellunet.postprocess import probabilities_to_labels
    from napari_cellunet.settings import InstanceParams

    rng = np.random.default_rng(seed)
    probs = rng.random((n_classes, h, w)).astype(np.float32)
    probs[:3] /= probs[:3].sum(0, keepdims=True)
    labels = probabilities_to_labels(probs, InstanceParams(prob_threshold=prob, seed_threshold=seed_t,
                                                           min_confidence=0.5), diameter)
    assert labels.shape == (h, w)
    ids = np.unique(labels[labels > 0])
    assert list(ids) == list(range(1, len(ids) + 1))
