import numpy as np
import pandas as pd

from napari_cellunet.measure import COLUMNS, count_objects, count_rows, measure, measure_stack, write_csv


def two_squares():
    lab = np.zeros((30, 40), np.uint16)
    lab[2:6, 3:7] = 4      # 16 px
    lab[10:20, 20:30] = 9  # 100 px
    return lab


def test_count_and_table_columns():
    lab = two_squares()
    img = np.where(lab == 4, 10.0, np.where(lab == 9, 50.0, 0.0))
    df = measure(lab, img, scale=(0.5, 0.5))
    assert count_objects(lab) == 2 and len(df) == 2
    assert list(df.columns) == COLUMNS
    row = df.set_index("label").loc[9]
    assert row.area_px == 100 and np.isclose(row.area_phys, 25.0)
    assert np.isclose(row.centroid_y, 14.5) and np.isclose(row.centroid_x, 24.5)
    assert np.isclose(row.mean_intensity, 50.0)
    assert np.isclose(row.equivalent_diameter_px, np.sqrt(400 / np.pi))


def test_3d_and_slices(tmp_path):
    vol = np.zeros((5, 10, 10), np.uint8)
    vol[1:4, 2:5, 2:5] = 1
    df = measure(vol)
    assert len(df) == 1 and df.area_px[0] == 27 and "centroid_z" in df
    stack = np.stack([two_squares(), np.zeros((30, 40), np.uint16)])
    per = measure_stack(stack, "TYX", "frames")
    assert list(per.frame) == [0, 0]
    assert [r["count"] for r in count_rows(stack, "TYX", "frames")] == [2, 0]
    path = write_csv(per, tmp_path / "m.csv")
    assert len(pd.read_csv(path)) == 2


def test_empty_labels():
    df = measure(np.zeros((8, 8), np.int32))
    assert len(df) == 0 and count_objects(np.zeros((8, 8))) == 0


def test_table_equals_skimage_regionprops():
    """The one-pass table gives regionprops_table's values (2D and 3D, gaps in the ids, intensity)."""
    from skimage.measure import label, regionprops_table

    rng = np.random.default_rng(3)
    for shape in ((120, 90), (12, 40, 30)):
        lab = label(rng.random(shape) > 0.6).astype(np.int32)
        lab[lab % 7 == 3] = 0  # ids with no pixel left
        img = rng.random(shape).astype(np.float32) * 100
        df = measure(lab, img, scale=(2.0,) * len(shape))
        ref = regionprops_table(lab, img, properties=["label", "area", "centroid", "equivalent_diameter_area",
                                                      "intensity_mean"])
        np.testing.assert_array_equal(df.label, ref["label"])
        np.testing.assert_array_equal(df.area_px, ref["area"])
        np.testing.assert_allclose(df.area_phys, ref["area"] * 2.0 ** len(shape))
        for i, ax in enumerate("zyx"[-len(shape):]):
            np.testing.assert_allclose(df[f"centroid_{ax}"], ref[f"centroid-{i}"], rtol=1e-10)
        np.testing.assert_allclose(df.equivalent_diameter_px, ref["equivalent_diameter_area"], rtol=1e-10)
        np.testing.assert_allclose(df.mean_intensity, ref["intensity_mean"], rtol=1e-5)
