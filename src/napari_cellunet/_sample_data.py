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
