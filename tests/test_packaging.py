"""The plugin manifest and the bundled model/sample ship in the wheel; npe2 accepts the manifest."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_npe2_validate_installed_manifest():
    npe2 = shutil.which("npe2", path=str(Path(sys.executable).parent))
    out = subprocess.run([npe2 or "npe2", "validate", "napari-cellunet"], capture_output=True, text=True,
                         encoding="utf-8", errors="replace")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in (out.stdout + out.stderr).lower()


@pytest.mark.slow
def test_wheel_contains_manifest_model_and_sample(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    wheel = next(tmp_path.glob("napari_cellunet-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        manifest = z.read("napari_cellunet/napari.yaml").decode()
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "napari-cellunet.segment_widget" in manifest  # the file itself, not a dangling link
    assert "napari_cellunet/models/nuclei-fluo-2d.safetensors" in names
    assert "napari_cellunet/data/nuclei_2d.tif" in names
    assert "napari.manifest" in entry_points and "cellunet = napari_cellunet.cli:main" in entry_points
