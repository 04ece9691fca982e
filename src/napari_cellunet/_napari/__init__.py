"""napari-facing code: dock widgets, counts dock, reader, writer and sample data (npe2 contributions).

Only the widgets import napari/magicgui; the reader, writer and samples are plain
functions, so ``napari_cellunet`` stays usable without napari.
"""
