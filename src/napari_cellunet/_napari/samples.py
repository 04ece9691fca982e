"""Sample data for napari's File > Open Sample menu (and ``cellunet demo``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SAMPLE_DIR = Path(str(resources.files("napari_cellunet") / "data"))
SAMPLE_PATH = SAMPLE_DIR / "nuclei_2d.tif"
SAMPLE_SOURCE = "StarDist test image (BSD-3) from the DSB2018 nuclei set (CC0)"
SAMPLE_COUNT = 125  # annotated nuclei in the ground truth


def load_sample_image():
    import tifffile

    return tifffile.imread(SAMPLE_PATH)


def sample_nuclei_2d():
    """npe2 sample_data contribution: a 2D fluorescence nuclei image."""
    return [(load_sample_image(), {"name": "nuclei", "colormap": "gray"}, "image")]


def _sample(file: str, name: str, axes: str) -> list[tuple]:
    from ..tiffio import read_tiff

    img = read_tiff(SAMPLE_DIR / file)
    return [(img.data, {"name": name, "scale": img.scale_for(axes), "units": img.units_for(axes),
                        "axis_labels": tuple(axes.lower()), "metadata": {"axes": axes, "unit": img.unit},
                        "colormap": "gray"}, "image")]


def sample_nuclei_3d():
    """npe2 sample_data: a 3D nuclei z-stack (cells3d crop) with its voxel size."""
    return _sample("nuclei_3d.tif", "nuclei 3d", "ZYX")


def sample_timelapse_2d():
    """npe2 sample_data: a 2D nuclei time-lapse (TYX)."""
    return _sample("timelapse_2d.tif", "timelapse", "TYX")
