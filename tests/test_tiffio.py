import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_cellunet._napari.reader import get_reader
from napari_cellunet._napari.writer import write_labels_csv, write_labels_tiff
from napari_cellunet.tiffio import read_tiff, write_tiff


def test_imagej_hyperstack_roundtrip_and_lazy(tmp_path):
    a = np.random.default_rng(0).integers(0, 500, (3, 4, 2, 24, 30)).astype(np.uint16)
    write_tiff(tmp_path / "h.tif", a, "TZCYX", {"X": 0.26, "Y": 0.26, "Z": 0.29, "T": 5.0})
    img = read_tiff(tmp_path / "h.tif")
    assert img.axes == "TZCYX" and img.unit == "µm" and np.array_equal(img.data, a)
    assert img.scale_for("TZYX") == pytest.approx((5.0, 0.29, 0.26, 0.26))
    lazy = read_tiff(tmp_path / "h.tif", lazy=True)
    assert type(lazy.data).__module__.startswith("dask") and np.array_equal(np.asarray(lazy.data), a)


def test_ome_tiff_pixel_sizes(tmp_path):
    a = np.zeros((5, 16, 16), np.uint8)
    tifffile.imwrite(tmp_path / "o.ome.tif", a, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0})
    img = read_tiff(tmp_path / "o.ome.tif")
    assert img.axes == "ZYX" and img.scale_for("ZYX") == pytest.approx((2.0, 0.5, 0.5))


def test_reader_layers(tmp_path):
    a = np.zeros((2, 3, 20, 20), np.uint16)  # CZYX -> two image layers via channel_axis
    write_tiff(tmp_path / "c.tif", a, "CZYX" if False else "ZCYX", {"X": 1.0, "Y": 1.0, "Z": 3.0})
    assert get_reader(str(tmp_path / "x.png")) is None
    layers = get_reader(str(tmp_path / "c.tif"))(str(tmp_path / "c.tif"))
    (data, kw, kind), = layers
    assert kind == "image" and kw["channel_axis"] == 1 and kw["scale"] == pytest.approx((3.0, 1.0, 1.0))
    assert kw["axis_labels"] == ("z", "y", "x") and len(kw["name"]) == 3
    lab = np.zeros((4, 10, 10), np.uint16)
    write_tiff(tmp_path / "cells_labels.tif", lab, "TYX", {})
    (_, kw, kind), = get_reader(str(tmp_path / "cells_labels.tif"))(str(tmp_path / "cells_labels.tif"))
    assert kind == "labels" and kw["axis_labels"] == ("t", "y", "x")


def test_writers_keep_scale_and_measure(tmp_path):
    lab = np.zeros((3, 20, 20), np.uint32)
    lab[1, 2:6, 2:6] = 70000
    lab[2, 10:15, 10:15] = 2
    attrs = {"scale": (2.0, 0.5, 0.5), "metadata": {"axes": "ZYX", "unit": "µm"}}
    write_labels_tiff(str(tmp_path / "l.tif"), lab, attrs)
    back = read_tiff(tmp_path / "l.tif")
    assert back.axes == "ZYX" and back.scale_for("ZYX") == pytest.approx((2.0, 0.5, 0.5))
    assert back.data.max() == 70000
    write_labels_csv(str(tmp_path / "l.csv"), lab, attrs)
    table = pd.read_csv(tmp_path / "l.csv")
    assert len(table) == 2 and table.area_phys.max() == pytest.approx(25 * 0.5)


def test_ome_units_are_converted_and_labels_stay_grey(tmp_path):
    a = np.zeros((4, 16, 16), np.uint8)
    tifffile.imwrite(tmp_path / "u.ome.tif", a, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.5,
                               "PhysicalSizeYUnit": "µm", "PhysicalSizeZ": 2000.0, "PhysicalSizeZUnit": "nm"})
    img = read_tiff(tmp_path / "u.ome.tif")
    assert img.scale_for("ZYX") == pytest.approx((2.0, 0.5, 0.5)) and img.unit == "µm"  # nm -> µm: 4x, not 4000x
    assert img.units_for("ZYX") == ("µm", "µm", "µm")
    (data, kw, _), = get_reader(str(tmp_path / "u.ome.tif"))(str(tmp_path / "u.ome.tif"))
    assert kw["units"] == ("µm", "µm", "µm") and kw["scale"] == pytest.approx((2.0, 0.5, 0.5))
    labels = np.zeros((3, 20, 20), np.uint32)  # 3 planes: must stay 3 grey planes, not one RGB page
    labels[1, 3:6, 3:6] = 9
    write_tiff(tmp_path / "z_labels.tif", labels, "ZYX", {"Z": 1.0, "X": 0.5, "Y": 0.5})
    back = read_tiff(tmp_path / "z_labels.tif")
    assert back.axes == "ZYX" and back.data.shape == (3, 20, 20) and back.data[1, 4, 4] == 9


def test_every_series_is_offered(tmp_path):
    with tifffile.TiffWriter(tmp_path / "multi.ome.tif", ome=True) as tif:
        tif.write(np.zeros((16, 16), np.uint16), metadata={"axes": "YX"})
        tif.write(np.ones((3, 8, 8), np.uint16), metadata={"axes": "ZYX"})
    layers = get_reader(str(tmp_path / "multi.ome.tif"))(str(tmp_path / "multi.ome.tif"))
    assert [d.shape for d, _, _ in layers] == [(16, 16), (3, 8, 8)]
    assert layers[1][1]["name"] == "multi [series 1]" and layers[1][1]["metadata"]["series"] == 1
    with pytest.raises(ValueError, match="series 5"):
        read_tiff(tmp_path / "multi.ome.tif", series=5)
