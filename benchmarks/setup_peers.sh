#!/usr/bin/env bash
# Create the "peer" virtualenv used by benchmarks/peers.py (StarDist2D + cellpose, CPU only).
#
#     bash benchmarks/setup_peers.sh            # -> ./.venv-peers (repo root)
#     PEERS_VENV=/some/dir bash benchmarks/setup_peers.sh
#     PYTHON=python3.11 bash benchmarks/setup_peers.sh   # interpreter for the venv (default python3.11)
#
# Then:
#     .venv-peers/bin/python benchmarks/peers.py --size 1024 --repeats 3 --threads 2 [--json OUT]
#
# The peers live in their own venv because TensorFlow, StarDist and cellpose are far too heavy
# (and too version-picky) for the plugin's own environment. Nothing in here imports napari_cellunet.
#
# Idempotent: re-running re-uses the venv, and returns at once when the stamp file written after a
# successful install matches the pins below and the imports still work.
#
# Notes on the pins (all CPU-only, Python 3.11, Linux x86_64):
#   * stardist 0.9.2 + csbdeep 0.8.2 support Keras 3, so the current tensorflow-cpu (2.21, which
#     pulls keras 3) works; no tf_keras / TF_USE_LEGACY_KERAS needed.
#   * torch==2.13.0 is pinned in the SAME pip command as the rest: unpinned, torch resolves to the
#     multi-GB CUDA build; for this pin the small "+cpu" wheel is served.
#   * cellpose 4.2.1.1 declares a dependency on torchvision, but PyPI's torchvision (a CUDA build)
#     does not import next to the CPU torch. torchvision is only *used* by cellpose's training
#     augmentation (transforms.random_rotate_and_resize) and by segment_anything's automatic mask
#     generator / resize helpers -- never by CellposeModel construction or .eval(). So cellpose is
#     installed with --no-deps (its other requirements are listed explicitly below, minus
#     torchvision), and peers.py registers a tiny stand-in "torchvision" module (any call into it
#     raises) when the real one cannot be imported. `pip check` will therefore report
#     "cellpose 4.2.1.1 requires torchvision, which is not installed" -- expected.
#   * No pretrained weights are downloaded (none can be, here): peers.py builds both networks with
#     random weights.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="${PEERS_VENV:-$root/.venv-peers}"
python="${PYTHON:-python3.11}"

# Everything except cellpose itself goes through ONE resolver run (torch pinned here, see above).
# Versions below are the set this was tested with (pip resolves the rest, e.g. TF's own deps).
main_reqs=(
  "stardist==0.9.2"
  "csbdeep==0.8.2"
  "tensorflow-cpu==2.21.0"
  "keras==3.15.1"
  "torch==2.13.0"
  "numpy==2.4.6"
  "tifffile==2026.3.3"
  "scipy==1.17.1"
  "scikit-image==0.26.0"
  "numba==0.68.1"
  # cellpose 4.2.1.1's own requirements, minus torchvision:
  "natsort==8.4.0" "tqdm==4.70.1" "opencv-python-headless==5.0.0.93" "fastremap==1.21.0"
  "imagecodecs==2026.3.6" "roifile==2026.2.10" "fill-voids==2.1.2" "segment_anything==1.0"
)
nodeps_reqs=("cellpose==4.2.1.1")

stamp="$venv/.peers-stamp"
want="$(printf '%s\n' "${main_reqs[@]}" --no-deps "${nodeps_reqs[@]}")"

import_check() {
  "$venv/bin/python" "$here/peers.py" --check-imports
}

if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$want" ]] && import_check >/dev/null 2>&1; then
  echo "peers venv up to date: $venv"
  exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
  echo "creating venv $venv with $python"
  "$python" -m venv "$venv"
fi

"$venv/bin/python" -m pip install "${main_reqs[@]}"
"$venv/bin/python" -m pip install --no-deps "${nodeps_reqs[@]}"

import_check
printf '%s\n' "$want" >"$stamp"
echo "peers venv ready: $venv"
