"""CPU/GPU speed, end to end and per stage, beside Otsu + watershed and (optionally) StarDist and cellpose.

    python benchmarks/speed.py [--sizes 1024 4096] [--nuclei 16 10 30] [--repeats 3] [--peers] [--device cpu]
    bash benchmarks/setup_peers.sh   # once, for --peers: a separate venv with StarDist 0.9.2 and cellpose 4.2

Test images are real nuclei: the bundled sample rescaled so its nuclei are ``--nuclei`` px across
(16 = the model's trained size, "native"; 10 and 30 make the pipeline up- or down-scale), then tiled
to ``size`` x ``size``. Rows: end to end with ``diameter auto`` (the defaults) and with the diameter
given, split into stages (normalise, size estimate, resize, network, post-processing, measurement
table: what ``cellunet segment`` does for one image), the network alone, and the classical
Otsu + watershed of ``benchmarks/accuracy.py`` timed in the same run; ``--peers`` adds StarDist2D and
cellpose (random weights: the same arithmetic as trained ones; see ``benchmarks/peers.py``) on the
same array, in their own venv. MP/s counts input pixels; best of ``--repeats`` after a warm-up. The
CPU is printed: absolute numbers are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import otsu_watershed  # noqa: E402

from napari_cellunet._napari.samples import load_sample_image  # noqa: E402
from napari_cellunet.inference import drive, iter_predict, resolve_backend, select_device  # noqa: E402
from napari_cellunet.measure import measure_stack  # noqa: E402
from napari_cellunet.models import DEFAULT_MODEL, load_model  # noqa: E402
from napari_cellunet.segment import PredictOptions, median_diameter, normalize_for_model  # noqa: E402
from napari_cellunet.stacks import iter_segment_stack  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("normalise", "size estimate", "resize", "network", "post-processing", "table")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def test_image(size: int, nuclei: float | None = None) -> np.ndarray:
    """The sample with nuclei ``nuclei`` px across (None: as is, ~27 px), tiled to ``size`` x ``size``."""
    from skimage.transform import rescale

    s = load_sample_image().astype(np.float32)
    if nuclei:
        import tifffile

        truth = tifffile.imread(ROOT / "tests" / "data" / "nuclei_2d_mask.tif")
        s = rescale(s, nuclei / median_diameter(truth), preserve_range=True, anti_aliasing=True).astype(np.float32)
    reps = -(-size // min(s.shape))
    return np.tile(s, (reps, reps))[:size, :size]


def best_of(fn, repeats: int):
    """(best seconds, result of the best run) after one warm-up."""
    fn()
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t0
        if dt < best:
            best, out = dt, result
    return best, out


def end_to_end(model, image, opts):
    """One image as ``cellunet segment`` does it (labels and uncertainty by ``postprocess``, the measurement
    table); returns (result, stage seconds)."""
    res = drive(iter_segment_stack(model, image, "YX", options=opts))
    t0 = time.perf_counter()
    measure_stack(res.labels, "YX", res.mode, image)
    stages = dict(res.segmentation.timings, table=time.perf_counter() - t0)
    return res, stages


def peers(image: np.ndarray, repeats: int, threads: int) -> list[dict]:
    python = ROOT / ".venv-peers" / "bin" / "python"
    if not python.exists():
        print(f"(no peer venv at {python}: run `bash benchmarks/setup_peers.sh` for --peers)")
        return []
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "image.npy", image)
        out = Path(tmp) / "peers.json"
        subprocess.run([str(python), str(ROOT / "benchmarks" / "peers.py"), "--image", str(Path(tmp) / "image.npy"),
                        "--repeats", str(repeats), "--threads", str(threads), "--json", str(out)], check=True)
        return json.loads(out.read_text())["results"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--nuclei", type=float, nargs="+", default=[16, 10, 30], help="nucleus diameters (px)")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peers", action="store_true", help="also StarDist2D and cellpose (needs .venv-peers)")
    ap.add_argument("--json", type=Path, help="write all rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    backend = resolve_backend("auto", select_device(args.device))
    print(f"{cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
          f"model {model.name} (base {model.config.base_channels}, depth {model.config.depth}, "
          f"trained at {model.diameter:.0f} px)\n")
    print("| image | method | s | MP/s | x Otsu | objects | " + " | ".join(STAGES) + " |")
    print("|---|---|---:|---:|---:|---:|" + "---:|" * len(STAGES))
    rows = []
    for size in args.sizes:
        for nuclei in args.nuclei if size <= 1024 else args.nuclei[:1]:
            image = test_image(size, nuclei)
            mp, what = image.size / 1e6, f"{size}², {nuclei:g}-px nuclei"
            t_otsu, otsu = best_of(lambda image=image: otsu_watershed(image), args.repeats)
            found = [("Otsu + watershed (scikit-image)", t_otsu, int(otsu.max()), {})]
            for label, diameter in (("napari-cellunet, diameter auto (defaults)", "auto"),
                                    ("napari-cellunet, diameter given", nuclei)):
                opts = PredictOptions(diameter=diameter, device=args.device)
                t, (seg, stages) = best_of(lambda opts=opts, image=image: end_to_end(model, image, opts), args.repeats)
                found.append((label, t, seg.counts[0], stages))
            x = normalize_for_model(model, image[None])
            t_net, _ = best_of(lambda x=x: drive(iter_predict(model.net, x, device=args.device, backend="auto")),
                               args.repeats)
            found.append((f"network alone at native scale ({backend}, default tiles)", t_net, None, {}))
            if args.peers:
                for r in peers(image, args.repeats, args.threads):
                    found.append((r["method"], r["seconds"], r["objects"], {}))
            for label, t, n, stages in found:
                cells = [f"{stages[s] / mp:.3f}" if s in stages else "" for s in STAGES]
                found_n = "" if n is None else n
                print(f"| {what} | {label} | {t:.2f} | {mp / t:.2f} | {t_otsu / t:.2f} | {found_n} | "
                      + " | ".join(cells) + " |", flush=True)
                rows.append({"image": what, "method": label, "seconds": t, "mp_per_s": mp / t, "objects": n,
                             "stages_s_per_mp": {s: v / mp for s, v in stages.items()}})
    print("\nStage columns are seconds per MP of the best end-to-end run; x Otsu = Otsu's time / the row's time.")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
