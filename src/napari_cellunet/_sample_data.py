"""Sample data for napari's File > Open Sample menu (and ``cellunet demo``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SAMPLE_PATH = Path(str(resources.files("napari_cellunet") / "data" / "nuclei_2d.tif"))
SAMPLE_SOURCE = "StarDist test image (BSD-3) from the DSB2018 nuclei set (CC0)"
SAMPLE_COUNT = 125  # annotated nuclei in the ground truth


def load_sample_image():
    import tifffile

    return tifffile.imread(SAMPLE_PATH)


def sample_nuclei_2d():
    """npe2 sample_data contribution: a 2D fluorescence nuclei image."""
    return [(load_sample_image(), {"name": "nuclei", "colormap": "gray"}, "image")]


def _read_sample(name: str):
    from .tiffio import read_tiff

    return read_tiff(SAMPLE_PATH.parent / name)


def sample_nuclei_3d():
    """npe2 sample_data: a 3D nuclei z-stack (cells3d crop) with its voxel size."""
    img = _read_sample("nuclei_3d.tif")
    return [(img.data, {"name": "nuclei 3d", "scale": img.scale_for("ZYX"), "axis_labels": ("z", "y", "x"),
                        "metadata": {"axes": "ZYX", "unit": img.unit}, "colormap": "gray"}, "image")]


def sample_timelapse_2d():
    """npe2 sample_data: a 2D nuclei time-lapse (TYX)."""
    img = _read_sample("timelapse_2d.tif")
    return [(img.data, {"name": "timelapse", "axis_labels": ("t", "y", "x"),
                        "metadata": {"axes": "TYX"}, "colormap": "gray"}, "image")]
