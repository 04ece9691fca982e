"""The network alone on other runtimes: seconds per MP of 256-px tiles (batches of 4), same weights.

    python benchmarks/network_backends.py [--model nuclei-fluo-2d] [--repeats 5] [--threads 2]

Rows: torch eager (fp32, channels_last, bf16 autocast: the default), TorchScript frozen, torch.compile
(inductor; its compile time is printed), ONNX Runtime (fp32), and OpenVINO (fp32 and bf16) when
installed. Only a backend that beats the default here would be worth an optional dependency.
Also checks each one's output against torch fp32 (max abs difference of the probabilities).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from speed import cpu_name, test_image  # noqa: E402

from napari_cellunet.export import export_onnx, probability_net  # noqa: E402
from napari_cellunet.models import DEFAULT_MODEL, load_model  # noqa: E402
from napari_cellunet.segment import normalize_for_model  # noqa: E402

TILE, BATCH = 256, 4


def tiles(model) -> np.ndarray:
    x = normalize_for_model(model, test_image(1024, model.diameter)[None])[0, 0]
    return np.stack([x[i:i + TILE, j:j + TILE] for i in range(0, 1024, TILE) for j in range(0, 1024, TILE)])[:, None]


def timed(fn, batches, repeats):
    fn(batches[0])
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    net = probability_net(model).eval()
    x = tiles(model).astype(np.float32)
    batches = [x[i:i + BATCH] for i in range(0, len(x), BATCH)]
    mp = x.size / 1e6
    with torch.no_grad():
        reference = net(torch.from_numpy(batches[0])).numpy()
    cl = net.to(memory_format=torch.channels_last)
    backends = {}

    def torch_fn(module, dtype=None):
        def run(b):
            t = torch.from_numpy(b).contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                return module(t).float().numpy()
        return run

    backends["torch eager fp32"] = torch_fn(net)
    backends["torch eager fp32, channels_last"] = torch_fn(cl)
    backends["torch eager bf16 autocast, channels_last (default)"] = torch_fn(cl, torch.bfloat16)
    with torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(cl, torch.from_numpy(batches[0]).contiguous(
            memory_format=torch.channels_last)))
    backends["TorchScript frozen fp32, channels_last"] = torch_fn(frozen)
    try:
        t0 = time.perf_counter()
        compiled = torch.compile(cl)
        torch_fn(compiled, torch.bfloat16)(batches[0])
        print(f"torch.compile: {time.perf_counter() - t0:.1f} s to compile")
        backends["torch.compile (inductor) bf16, channels_last"] = torch_fn(compiled, torch.bfloat16)
    except Exception as err:  # no compiler on this machine
        print(f"torch.compile unavailable: {type(err).__name__}: {err}")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "m.onnx")
        try:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            backends["ONNX Runtime fp32"] = lambda b: session.run(None, {name: b})[0]
        except ImportError:
            print("onnxruntime not installed")
        try:
            import openvino as ov

            core = ov.Core()
            for precision in ("f32", "bf16"):
                compiled_ov = core.compile_model(str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                                        "INFERENCE_NUM_THREADS": args.threads})
                backends[f"OpenVINO {precision}"] = lambda b, c=compiled_ov: c(b)[0]
        except ImportError:
            print("openvino not installed (pip install openvino)")
        print(f"{cpu_name()}; torch {torch.__version__}, {args.threads} threads; {len(x)} tiles of {TILE}², "
              f"batches of {BATCH}\n")
        print("| backend | s per MP | MP/s | max abs diff vs torch fp32 |\n|---|---:|---:|---:|")
        for label, fn in backends.items():
            t = timed(fn, batches, args.repeats)
            diff = float(np.abs(np.asarray(fn(batches[0]), np.float32) - reference).max())
            print(f"| {label} | {t / mp:.3f} | {mp / t:.2f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
