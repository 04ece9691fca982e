"""Peak memory and time of chunked segmentation (``napari_cellunet.chunked``) on big zarr images.

    python benchmarks/scale.py [--sizes 4096,8192,16384,3d] [--engines local,cluster] [--workdir DIR]

Inputs are uint16 zarr arrays synthesised by mirror-tiling the bundled samples
(2D: ``nuclei_2d.tif`` to N x N; ``3d``: ``nuclei_3d.tif`` to 200 x 2048 x 2048),
written chunk by chunk (never held in memory). Each case runs in a fresh
subprocess; the parent samples the summed RSS of that process and all its
children (cluster workers included) with psutil every 0.1 s. ``local`` is the
default thread engine, ``cluster`` a 2-worker ``distributed.LocalCluster``, ``memory``
the in-memory pipeline (``stacks.iter_segment_stack``) for reference at small sizes.

Columns: seconds, input megapixels per second, peak RSS (all processes), RSS
above an idle process that imported the package and loaded the model
(``idle``; one per process: the cluster has 3), and what one block's input and
output need (block core: uint16 input + uint32 labels) for comparison. The
in-memory pipeline needs ~64 bytes per input pixel (e.g. 17 GB at 16384^2).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "src" / "napari_cellunet" / "data"
CHUNK = 1024


def mirror_index(n: int, period: int) -> np.ndarray:
    i = np.arange(n) % (2 * period)
    return np.where(i < period, i, 2 * period - 1 - i)


def make_input(path: Path, case: str) -> tuple[str, tuple]:
    """Write the synthetic input zarr for ``case`` (``"4096"``, ``"3d"`` or ``"3d50"``) chunk by chunk."""
    import tifffile
    import zarr

    if case.startswith("3d"):  # "3d" is 200 planes; "3d50" 50 planes of 2048 x 2048
        depth = int(case[2:] or 200)
        src, shape, chunks, axes = tifffile.imread(DATA / "nuclei_3d.tif"), (depth, 2048, 2048), (16, 512, 512), "ZYX"
    else:
        n = int(case)
        src, shape, chunks, axes = tifffile.imread(DATA / "nuclei_2d.tif"), (n, n), (CHUNK, CHUNK), "YX"
    if (path / "zarr.json").exists():
        return axes, shape
    arr = zarr.create_array(store=str(path), shape=shape, chunks=chunks, dtype=np.uint16, overwrite=True)
    idx = [mirror_index(s, p) for s, p in zip(shape, src.shape)]
    for start in np.ndindex(*[-(-s // c) for s, c in zip(shape, chunks)]):
        sl = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(start, chunks, shape))
        arr[sl] = src[np.ix_(*[ix[s] for ix, s in zip(idx, sl)])].astype(np.uint16)
    return axes, shape


def run_case(inp: str, out: str, axes: str, engine: str) -> None:
    """Child process: segment ``inp`` into ``out``; print one JSON line."""
    import resource

    import zarr

    from napari_cellunet.chunked import segment_chunked
    from napari_cellunet.models import load_model

    model = load_model("nuclei-fluo-2d")
    idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if engine == "idle":
        print(json.dumps({"idle_gb": idle}))
        return
    src = zarr.open_array(inp, mode="r")
    t0 = time.perf_counter()
    if engine == "memory":  # the in-memory pipeline, for reference (small sizes only)
        from napari_cellunet.inference import drive
        from napari_cellunet.stacks import iter_segment_stack

        res = drive(iter_segment_stack(model, src[...], axes))
        print(json.dumps({"seconds": time.perf_counter() - t0, "count": int(sum(res.counts)), "blocks": 1,
                          "block_px": int(np.prod(src.shape[-2:])), "diameter": res.segmentation.diameter}))
        return
    res = segment_chunked(model, src, axes, out=out, client=2 if engine == "cluster" else None)
    sec = time.perf_counter() - t0
    blk = res.blocks[0]
    print(json.dumps({"seconds": sec, "count": int(sum(res.counts)), "blocks": len(res.blocks),
                      "block_px": (blk[0].stop - blk[0].start) * (blk[1].stop - blk[1].start),
                      "diameter": res.diameter, "self_maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                      / 2**20}))


def measure(cmd: list[str]) -> tuple[dict, float]:
    """Run ``cmd``; return its JSON output and the peak summed RSS (GB) of its process tree."""
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)])
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.1)
    out = proc.stdout.read().strip().splitlines()
    if proc.returncode or not out:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode})")
    return json.loads(out[-1]), peak / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="4096,8192,16384,3d", help="comma list of N (2D N x N), 3d, 3dZ (Z planes)")
    ap.add_argument("--engines", default="local,cluster", help="comma list of local, cluster, memory")
    ap.add_argument("--workdir", default=None, help="where inputs/outputs go (default: a temp dir)")
    ap.add_argument("--_case", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._case:
        run_case(*args._case)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cellunet-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    idle, _ = measure(me + ["--_case", "-", "-", "YX", "idle"])
    rows = []
    for case in args.sizes.split(","):
        inp = work / f"input_{case}.zarr"
        axes, shape = make_input(inp, case)
        px = float(np.prod(shape))
        for engine in args.engines.split(","):
            out = work / f"labels_{case}_{engine}.zarr"
            r, peak = measure(me + ["--_case", str(inp), str(out), axes, engine])
            depth = shape[0] if len(shape) == 3 else 1
            block = r["block_px"] * depth * (2 + 4) / 2**20  # one block core: uint16 in + uint32 out
            n_proc = 3 if engine == "cluster" else 1
            rows.append((("x".join(map(str, shape))), engine, r["seconds"], px / 1e6 / r["seconds"], peak,
                         peak - n_proc * idle["idle_gb"], block, r["count"], r["blocks"]))
            print(f"# done {case} {engine}: {r}", file=sys.stderr, flush=True)
    print(f"\nidle process (package + model): {idle['idle_gb']:.2f} GB; workdir {work}\n")
    print("| size | engine | seconds | MP/s | peak RSS GB | above idle GB | core in+out MB | objects | blocks |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, eng, sec, mps, peak, above, block, n, nb in rows:
        print(f"| {size} | {eng} | {sec:.1f} | {mps:.2f} | {peak:.2f} | {above:.2f} | {block:.0f} | {n} | {nb} |")


if __name__ == "__main__":
    main()
