"""napari-cellunet: segment and count cells with a UNet, in napari or from the command line."""

__version__ = "0.2.0"
