"""CPU speed of the peer segmenters (StarDist2D, cellpose 4) on the image ``benchmarks/speed.py`` uses.

    bash benchmarks/setup_peers.sh          # once: creates .venv-peers (TensorFlow, StarDist, cellpose)
    .venv-peers/bin/python benchmarks/peers.py --size 1024 --repeats 3 --threads 2 [--json OUT]
    .venv-peers/bin/python benchmarks/peers.py --image exact_array.npy --threads 2 --json OUT

Runs in the *peer* venv and never imports napari_cellunet: the test image is the bundled sample
``src/napari_cellunet/data/nuclei_2d.tif`` (read with tifffile, relative to this file) tiled to
``size`` x ``size`` exactly as ``speed.test_image`` does, or the 2D array in ``--image PATH.npy``.

What is timed (best-of-N wall time after one warm-up run; MP/s counts input pixels):

* ``stardist``: StarDist2D built from a Config2D identical to the ``2D_versatile_fluo`` model
  (n_rays 32, grid (2,2), U-Net depth 3 / 32 base filters / 128 features after the U-Net),
  with RANDOM weights (pretrained weights cannot be downloaded here; they have the same cost).
  End to end = csbdeep ``normalize(img, 1, 99.8)`` + ``predict_instances`` (network + NMS +
  label image), with the model's thresholds (prob 0.479, nms 0.3).
* ``cellpose-bf16`` (default) / ``cellpose-fp32`` (opt-in, ``--methods stardist,cellpose-bf16,cellpose-fp32``;
  on a CPU without native bf16 it may be the faster one): cellpose 4.2 ``CellposeModel`` (CPSAM, ViT-L; the
  only network cellpose 4.2 ships -- the old CNN (cyto3/nuclei, resnet_torch.CPnet) was removed
  in 4.0, so it cannot be timed with this version) with RANDOM weights, CPU, in cellpose's default
  bfloat16 and in float32. End to end = ``model.eval`` (normalisation, tiled network, flow
  dynamics, mask QC). ``diameter=30`` (= cellpose's reference diameter, i.e. rescale 1.0: the
  image is not resized; cellpose 4 has no size-estimation model, so no size pass runs either way).

Random weights and post-processing. A random network does not produce realistic maps: StarDist's
probability is ~0.5 everywhere and its ray lengths ~0.001 px, so every pixel would become a
candidate and survive NMS; cellpose's cell probability is > 0 on ~half of the image. So:

1. Calibration: a warm-up pass measures the random maps. If the number of StarDist candidates
   at the real threshold (or cellpose's foreground fraction) is off by more than 2x from what a
   trained model would produce on this image, the threshold is moved to the quantile that gives
   that realistic number (the table says so). "Realistic" is measured on a classical reference
   segmentation of the image (Otsu + distance-transform watershed; ~116 objects on the 512x512
   sample, whose ground truth has 125): for StarDist the grid pixels where the ideal
   ``edt_prob`` exceeds 0.479, for cellpose the foreground fraction.
2. Even calibrated, random maps give a degenerate object count (StarDist: every candidate is a
   tiny polygon that survives NMS; cellpose: random flows fail the flow-error QC). So each peer
   also gets a second row where the post-processing runs on *ideal* maps computed from the
   reference segmentation -- StarDist's training targets (``edt_prob`` and ``star_dist``) and
   cellpose's (5 x ``masks_to_flows`` and +-6 logits) -- i.e. what a perfect model would output:
   seconds = best (total - post-processing) of the real runs + best post-processing on the ideal
   maps. That row's object count is realistic; use it for the comparison.

Threads: each peer runs in its own subprocess with OMP/MKL/OpenBLAS/numexpr/numba thread
variables, TF intra-op = ``--threads`` and inter-op = 1, ``torch.set_num_threads`` and
``cv2.setNumThreads`` all set to ``--threads``; ``--pin-cpus`` additionally restricts the
process to the first ``--threads`` allowed CPUs (check SMT sibling numbering before using it).

JSON (``--json OUT``), schema "cellunet-peers/1":
    {"schema", "image": {shape, dtype, source, megapixels}, "threads", "repeats", "pinned_cpus",
     "cpu": {model, family, model_id, logical_cpus, flags}, "versions": {package: version},
     "reference": {objects, foreground_fraction, method},
     "results": [{"key", "method", "seconds", "mp_per_s", "objects", "derived", "runs_s",
                  "warmup_s", "net_s", "post_s", "settings": {...}, "notes"}],
     "errors": [{"key", "error"}]}
``seconds`` is the best run; ``runs_s`` all timed runs; ``net_s``/``post_s`` the split of the best
run (network+pre-processing / post-processing); ``derived`` is true for the ideal-map rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent / "src" / "napari_cellunet" / "data" / "nuclei_2d.tif"
SCHEMA = "cellunet-peers/1"
METHODS = ("stardist", "cellpose-bf16", "cellpose-fp32")
DEFAULT_METHODS = ("stardist", "cellpose-bf16")

# 2D_versatile_fluo (stardist-models v0.1): config.json / thresholds.json
VERSATILE_FLUO = dict(n_rays=32, grid=(2, 2), n_channel_in=1, backbone="unet", unet_n_depth=3,
                      unet_kernel_size=(3, 3), unet_n_filter_base=32, unet_n_conv_per_depth=2,
                      unet_pool=(2, 2), unet_activation="relu", unet_last_activation="relu",
                      unet_batch_norm=False, unet_dropout=0.0, net_conv_after_unet=128)
VERSATILE_THRESH = dict(prob=0.479071463157368, nms=0.3)
CALIBRATE_RATIO = 2.0  # recalibrate a random model's threshold when off by more than this factor

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
PACKAGES = ("numpy", "scipy", "scikit-image", "tifffile", "tensorflow-cpu", "tensorflow", "keras",
            "csbdeep", "stardist", "numba", "torch", "torchvision", "cellpose", "segment_anything",
            "opencv-python-headless", "fastremap")


# ----------------------------------------------------------------------------------------- image

def test_image(size: int) -> np.ndarray:
    """Same as benchmarks/speed.py: the bundled 512x512 sample tiled and cropped to size x size."""
    import tifffile

    s = tifffile.imread(SAMPLE)
    reps = -(-size // s.shape[0])
    return np.tile(s, (reps, reps))[:size, :size]


def load_image(args) -> tuple[np.ndarray, str]:
    if args.image:
        img = np.load(args.image)
        img = np.squeeze(img)
        if img.ndim != 2:
            raise SystemExit(f"--image must hold a 2D (YX) array, got shape {img.shape}")
        return img, str(args.image)
    return test_image(args.size), f"{SAMPLE.relative_to(HERE.parent)} tiled to {args.size}x{args.size}"


def reference_labels(img: np.ndarray) -> np.ndarray:
    """Classical nuclei segmentation used only to size a realistic post-processing workload."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    g = ndi.gaussian_filter(img.astype(np.float32), 1.0)
    fg = ndi.binary_fill_holes(g > threshold_otsu(g))
    cc, _ = ndi.label(fg)
    small = np.bincount(cc.ravel()) < 20
    small[0] = False
    fg &= ~small[cc]
    cc, _ = ndi.label(fg)
    d = ndi.distance_transform_edt(fg)
    peaks = peak_local_max(ndi.gaussian_filter(d, 1.0), min_distance=4, labels=cc, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-d, markers, mask=fg).astype(np.int32)


# ------------------------------------------------------------------------------------ machinery

def cpu_info() -> dict:
    info = {"model": platform.processor() or "unknown", "family": None, "model_id": None,
            "logical_cpus": os.cpu_count(), "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    first = text.split("\n\n")[0]
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    info["model"] = fields.get("model name", info["model"])
    info["family"] = fields.get("cpu family")
    info["model_id"] = fields.get("model")
    interesting = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16",
                   "amx_tile", "amx_int8")
    flags = set(fields.get("flags", "").split())
    info["flags"] = [f for f in interesting if f in flags]
    return info


def versions() -> dict:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[p] = metadata.version(p)
    return out


def thread_env(n: int) -> dict:
    env = dict(os.environ)
    for v in THREAD_VARS:
        env[v] = str(n)
    env["TF_NUM_INTEROP_THREADS"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONWARNINGS"] = "ignore"
    return env


def pin_cpus(n: int) -> list[int] | None:
    allowed = sorted(os.sched_getaffinity(0))
    cpus = allowed[:n]
    os.sched_setaffinity(0, cpus)
    return cpus


def timed(fn, repeats: int, split=None, warmup: bool = True) -> dict:
    """Warm-up once (unless the caller already did), then best of ``repeats``. ``split()`` returns
    the post-processing seconds of the run just made (recorded by a wrapper), so the best run can
    be split into net/post."""
    warm = None
    if warmup:
        t0 = time.perf_counter()
        fn()
        warm = time.perf_counter() - t0
    out = None
    runs, posts = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t0)
        posts.append(split() if split else None)
    i = int(np.argmin(runs))
    res = {"seconds": runs[i], "runs_s": runs, "warmup_s": warm, "out": out}
    if split:
        res["post_s"] = posts[i]
        res["net_s"] = runs[i] - posts[i]
        res["min_net_s"] = min(r - p for r, p in zip(runs, posts))
    return res


class Recorder:
    """Wraps a bound method on an instance and records the seconds of its last call."""

    def __init__(self, obj, name):
        self.fn = getattr(obj, name)
        self.last = 0.0
        setattr(obj, name, self)

    def __call__(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return self.fn(*a, **k)
        finally:
            self.last = time.perf_counter() - t0


def quantile_threshold(values: np.ndarray, keep: int) -> float:
    """Threshold t such that about ``keep`` values are > t."""
    v = np.sort(values.ravel())[::-1]
    keep = int(np.clip(keep, 1, v.size - 1))
    return float(v[keep])


# ------------------------------------------------------------------------------------- StarDist

def worker_stardist(img, ref, threads, repeats, seed) -> list[dict]:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras
    from csbdeep.utils import normalize
    from stardist import edt_prob, star_dist
    from stardist.models import Config2D, StarDist2D

    keras.utils.set_random_seed(seed)
    conf = Config2D(**VERSATILE_FLUO)
    model = StarDist2D(conf, name=None, basedir=None)
    model.thresholds = VERSATILE_THRESH
    prob_t, nms_t = VERSATILE_THRESH["prob"], VERSATILE_THRESH["nms"]
    gy, gx = conf.grid
    b = 2  # border that StarDist's NMS drops (grid pixels)

    # ideal maps = StarDist's own training targets for the reference segmentation
    prob_o = edt_prob(ref[::gy, ::gx]).astype(np.float32)
    dist_o = star_dist(ref, conf.n_rays, grid=conf.grid).astype(np.float32)
    target = int((prob_o[b:-b, b:-b] > prob_t).sum())

    def norm():
        return normalize(img, 1, 99.8, axis=(0, 1))

    # calibration pass on the random network (untimed)
    prob_r, _ = model.predict(norm(), show_tile_progress=False)
    cand_default = int((prob_r[b:-b, b:-b] > prob_t).sum())
    ratio = cand_default / max(target, 1)
    calibrated = not (1 / CALIBRATE_RATIO <= ratio <= CALIBRATE_RATIO)
    pt = quantile_threshold(prob_r[b:-b, b:-b], target) if calibrated else prob_t
    cand = int((prob_r[b:-b, b:-b] > pt).sum())

    post = Recorder(model, "_instances_from_prediction")

    def run():
        return model.predict_instances(norm(), prob_thresh=pt, nms_thresh=nms_t,
                                       show_tile_progress=False, verbose=False)

    r = timed(run, repeats, split=lambda: post.last)
    _, details = r.pop("out")
    objects = len(details["points"])
    settings = {"config": "2D_versatile_fluo (random weights)", "normalize": [1, 99.8],
                "prob_thresh": pt, "nms_thresh": nms_t, "calibrated": calibrated,
                "candidates_at_default_thresh": cand_default, "candidates": cand,
                "realistic_candidates": target, "n_tiles": None, "sparse": True}
    note = (f"random weights; prob_thresh moved {prob_t:.3f} -> {pt:.5f} so {cand} candidates "
            f"(default gave {cand_default}, a trained model ~{target})" if calibrated else
            f"random weights; default thresholds ({cand_default} candidates, trained ~{target})")
    note += "; random ray lengths ~0 px so nearly every candidate survives NMS"
    rows = [dict(key="stardist", method="StarDist2D (2D_versatile_fluo config, random weights): "
                 "normalize + predict_instances" + (" [prob_thresh calibrated]" if calibrated else ""),
                 objects=objects, derived=False, settings=settings, notes=note, **r)]

    # post-processing on the ideal maps (what a perfect 2D_versatile_fluo would output)
    ro = timed(lambda: model._instances_from_prediction(img.shape, prob_o, dist_o, prob_thresh=prob_t,
                                                       nms_thresh=nms_t), repeats)
    _, det_o = ro.pop("out")
    sec = r["min_net_s"] + ro["seconds"]
    rows.append(dict(key="stardist-ideal-post", method="StarDist2D: network (random weights) + "
                     "NMS/labels on ideal prob/dist maps", seconds=sec, objects=len(det_o["points"]),
                     derived=True, runs_s=None, warmup_s=None, net_s=r["min_net_s"], post_s=ro["seconds"],
                     post_runs_s=ro["runs_s"],
                     settings={"prob_thresh": prob_t, "nms_thresh": nms_t, "candidates": target},
                     notes="seconds = best network+normalize time of the real runs + best "
                           "_instances_from_prediction time on edt_prob/star_dist of the reference labels"))
    for row in rows:
        row.pop("min_net_s", None)
    return rows


# ------------------------------------------------------------------------------------- cellpose

def ensure_torchvision():
    """cellpose 4.2 imports torchvision at module level (transforms.py: training augmentation) and
    so does segment_anything (automatic mask generator, resize helpers); neither is used by
    CellposeModel construction or eval. PyPI's torchvision does not import beside the CPU torch,
    so when the real one is missing/broken, register stand-in modules whose functions raise."""
    try:
        import torchvision  # noqa: F401
        from torchvision.ops.boxes import batched_nms  # noqa: F401
        return "real"
    except Exception:  # noqa: BLE001 -- e.g. "operator torchvision::nms does not exist"
        pass
    import importlib.machinery
    import types

    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]

    def make(modname):
        mod = types.ModuleType(modname)
        mod.__spec__ = importlib.machinery.ModuleSpec(modname, None, is_package=True)
        mod.__path__ = []
        mod.__version__ = "0+stub"

        def __getattr__(attr):
            if attr.startswith("__"):
                raise AttributeError(attr)

            def unavailable(*a, **k):
                raise NotImplementedError(f"{modname}.{attr}: torchvision is not installed in the "
                                          "peer venv (stand-in module, see benchmarks/peers.py)")
            return unavailable
        mod.__getattr__ = __getattr__
        return mod

    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional",
             "torchvision.transforms._functional_tensor", "torchvision.ops", "torchvision.ops.boxes"]
    for n in names:
        sys.modules[n] = make(n)
    for n in names[1:]:
        parent, _, child = n.rpartition(".")
        setattr(sys.modules[parent], child, sys.modules[n])
    return "stub"


def worker_cellpose(img, ref, threads, repeats, seed, dtype: str, diameter: float) -> list[dict]:
    tv = ensure_torchvision()
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    import cv2

    cv2.setNumThreads(threads)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("cellpose").setLevel(logging.WARNING)
    from cellpose import dynamics, models, vit

    torch.manual_seed(seed)
    cpu = torch.device("cpu")
    bf16 = dtype == "bf16"
    # A checkpoint with random weights, so CellposeModel is built through its public constructor
    # without downloading cpsam: a fresh (randomly initialised) CPSAM's state dict, saved to a temp file.
    net = vit.CPSAM(dtype=torch.float32)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "random_cpsam.pt")
        torch.save({k: (v.to(torch.bfloat16) if bf16 and v.is_floating_point() else v)
                    for k, v in net.state_dict().items()}, path)
        del net
        model = models.CellposeModel(gpu=False, device=cpu, pretrained_model=path, use_bfloat16=bf16)

    fg_ref = float((ref > 0).mean())
    rescale = 30.0 / diameter
    niter = int(200 / rescale)
    post_rec = Recorder(model, "_compute_masks")
    state = {"ct": 0.0}

    def run():
        return model.eval(img, diameter=diameter, cellprob_threshold=state["ct"], flow_threshold=0.4,
                          batch_size=8)

    # warm-up + calibration pass at cellpose's default threshold (untimed)
    t0 = time.perf_counter()
    masks_d, flows_d, _ = run()
    calib_s = time.perf_counter() - t0
    cellprob = flows_d[2]
    fg_default = float((cellprob > 0.0).mean())
    obj_default = int(len(np.unique(masks_d)) - 1)
    ratio = fg_default / max(fg_ref, 1e-6)
    calibrated = not (1 / CALIBRATE_RATIO <= ratio <= CALIBRATE_RATIO)
    if calibrated:
        state["ct"] = quantile_threshold(cellprob, round(fg_ref * cellprob.size))
    fg_used = float((cellprob > state["ct"]).mean())

    # the calibration pass above was the warm-up
    r = timed(run, repeats, split=lambda: post_rec.last, warmup=False)
    r["warmup_s"] = calib_s
    masks = r.pop("out")[0]
    objects = int(len(np.unique(masks)) - 1)
    label = {"bf16": "bfloat16 (cellpose default)", "fp32": "float32"}[dtype]
    settings = {"model": "CPSAM (ViT-L, random weights)", "dtype": dtype, "diameter": diameter,
                "rescale": rescale, "niter": niter, "flow_threshold": 0.4,
                "cellprob_threshold": state["ct"], "calibrated": calibrated,
                "foreground_fraction_at_default": fg_default, "foreground_fraction": fg_used,
                "realistic_foreground_fraction": fg_ref, "objects_at_default": obj_default,
                "batch_size": 8, "tile": 256, "tile_overlap": 0.1, "augment": False,
                "torchvision": tv, "calibration_pass_s": calib_s}
    note = (f"random weights; cellprob_threshold moved 0 -> {state['ct']:.3f} so {fg_used:.1%} of pixels "
            f"run dynamics (default {fg_default:.1%}, realistic {fg_ref:.1%})" if calibrated else
            f"random weights; default cellprob_threshold ({fg_default:.1%} of pixels, realistic {fg_ref:.1%})")
    note += "; random flows fail the flow-error QC, so the object count is meaningless"
    rows = [dict(key=f"cellpose-{dtype}", method=f"cellpose {metadata.version('cellpose')} CPSAM {label}, "
                 f"random weights: eval(diameter={diameter:g})"
                 + (" [cellprob_threshold calibrated]" if calibrated else ""),
                 objects=objects, derived=False, settings=settings, notes=note, **r)]

    # dynamics + QC on ideal flows (cellpose's training targets for the reference labels)
    mu, _ = dynamics.masks_to_flows_gpu(ref.astype(int), device=cpu)
    dP_o = (5.0 * mu).astype(np.float32)[:, None]
    cp_o = np.where(ref > 0, 6.0, -6.0).astype(np.float32)[None]
    shape = (1, img.shape[0], img.shape[1], 3)
    ro = timed(lambda: model._compute_masks(shape, dP_o, cp_o, flow_threshold=0.4, cellprob_threshold=0.0,
                                            min_size=15, max_size_fraction=0.4, niter=niter), repeats)
    m_o = ro.pop("out")
    sec = r["min_net_s"] + ro["seconds"]
    rows.append(dict(key=f"cellpose-{dtype}-ideal-post", method=f"cellpose CPSAM {label}: network (random "
                     "weights) + dynamics/QC on ideal flows", seconds=sec, objects=int(len(np.unique(m_o)) - 1),
                     derived=True, runs_s=None, warmup_s=None, net_s=r["min_net_s"], post_s=ro["seconds"],
                     post_runs_s=ro["runs_s"], settings={"niter": niter, "flow_threshold": 0.4,
                                                        "cellprob_threshold": 0.0},
                     notes="seconds = best eval-minus-_compute_masks time of the real runs + best "
                           "_compute_masks time on 5*masks_to_flows / +-6 logits of the reference labels"))
    for row in rows:
        row.pop("min_net_s", None)
    return rows


# ----------------------------------------------------------------------------------------- main

def run_worker(args) -> None:
    if args.pin_cpus:
        pin_cpus(args.threads)
    img = np.load(args.image_npy)
    ref = np.load(args.ref_npy)
    if args.worker == "stardist":
        rows = worker_stardist(img, ref, args.threads, args.repeats, args.seed)
    elif args.worker.startswith("cellpose-"):
        rows = worker_cellpose(img, ref, args.threads, args.repeats, args.seed,
                               args.worker.split("-", 1)[1], args.cellpose_diameter)
    else:
        raise SystemExit(f"unknown worker {args.worker}")
    Path(args.result).write_text(json.dumps(rows))


def check_imports() -> None:
    """Used by setup_peers.sh: import both peers (as the workers do) and print versions."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import stardist.models  # noqa: F401
    import tensorflow  # noqa: F401
    tv = ensure_torchvision()
    import cellpose.models  # noqa: F401
    import torch

    print({**versions(), "torchvision_used": tv, "torch_cuda": torch.version.cuda})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--image", type=Path, help="2D .npy array to time instead of the tiled sample")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                    help=f"comma list from {','.join(METHODS)} (default: %(default)s)")
    ap.add_argument("--cellpose-diameter", type=float, default=30.0,
                    help="30 = no resize (cellpose rescales by 30/diameter)")
    ap.add_argument("--pin-cpus", action="store_true", help="also restrict each peer to --threads CPUs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--verbose", action="store_true", help="show the peers' own output")
    ap.add_argument("--check-imports", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--image-npy", help=argparse.SUPPRESS)
    ap.add_argument("--ref-npy", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.check_imports:
        return check_imports()
    if args.worker:
        return run_worker(args)

    if args.repeats < 1 or args.threads < 1:
        ap.error("--repeats and --threads must be >= 1")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    img, source = load_image(args)
    mp = img.size / 1e6
    ref = reference_labels(img)
    cpu = cpu_info()
    vers = versions()
    pinned = sorted(os.sched_getaffinity(0))[:args.threads] if args.pin_cpus else None
    report = {"schema": SCHEMA,
              "image": {"shape": list(img.shape), "dtype": str(img.dtype), "source": source, "megapixels": mp},
              "threads": args.threads, "repeats": args.repeats, "pinned_cpus": pinned, "cpu": cpu,
              "versions": vers,
              "reference": {"objects": int(ref.max()), "foreground_fraction": float((ref > 0).mean()),
                            "method": "gaussian(1) + Otsu + fill holes + distance-transform watershed"},
              "results": [], "errors": []}
    print(f"CPU: {cpu['model']} (family {cpu['family']}, model {cpu['model_id']}), {cpu['logical_cpus']} "
          f"logical CPUs, flags {' '.join(cpu['flags'])}; {args.threads} threads"
          + (f", pinned to CPUs {pinned}" if pinned else ""))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    print(f"image {img.shape} {img.dtype} ({source}); reference segmentation {int(ref.max())} objects, "
          f"{(ref > 0).mean():.1%} foreground", flush=True)

    with tempfile.TemporaryDirectory() as d:
        np.save(os.path.join(d, "img.npy"), img)
        np.save(os.path.join(d, "ref.npy"), ref)
        for m in methods:
            res = os.path.join(d, f"{m}.json")
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", m, "--image-npy",
                   os.path.join(d, "img.npy"), "--ref-npy", os.path.join(d, "ref.npy"), "--result", res,
                   "--threads", str(args.threads), "--repeats", str(args.repeats), "--seed", str(args.seed),
                   "--cellpose-diameter", str(args.cellpose_diameter)] + (["--pin-cpus"] if args.pin_cpus else [])
            t0 = time.perf_counter()
            p = subprocess.run(cmd, check=False, env=thread_env(args.threads), text=True,
                               stdout=None if args.verbose else subprocess.PIPE,
                               stderr=None if args.verbose else subprocess.STDOUT)
            if p.returncode != 0 or not os.path.exists(res):
                tail = (p.stdout or "")[-3000:]
                report["errors"].append({"key": m, "error": f"exit {p.returncode}: {tail}"})
                print(f"[{m}] FAILED (exit {p.returncode})\n{tail}", file=sys.stderr, flush=True)
                continue
            rows = json.loads(Path(res).read_text())
            for row in rows:
                row["mp_per_s"] = mp / row["seconds"]
            report["results"].extend(rows)
            print(f"[{m}] done in {time.perf_counter() - t0:.0f}s wall (incl. model build, warm-up)", flush=True)

    print("\n| method | seconds | MP/s | objects |\n|---|---:|---:|---:|")
    for row in report["results"]:
        print(f"| {row['method']} | {row['seconds']:.2f} | {row['mp_per_s']:.3f} | {row['objects']} |")
    print()
    for row in report["results"]:
        split = f"net {row['net_s']:.2f}s + post {row['post_s']:.2f}s" if row.get("post_s") is not None else ""
        print(f"- {row['key']}: {split}; {row['notes']}")
    for e in report["errors"]:
        print(f"- {e['key']}: ERROR {e['error'].splitlines()[-1] if e['error'] else ''}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=float))
        print(f"\nwrote {args.json}")
    if report["errors"] and not report["results"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
