import numpy as np
import pytest

from napari_cellunet.metrics import dataset_scores, match


def test_perfect_and_shifted():
    t = np.zeros((20, 20), int)
    t[2:8, 2:8] = 1
    t[10:18, 10:18] = 2
    p = np.where(t == 1, 5, np.where(t == 2, 3, 0))  # relabelled, same objects
    assert match(t, p)[0].ap == 1.0
    shifted = np.where(t == 2, 3, 0)
    shifted[2:8, 5:11] = 5  # object 1 moved 3 px: IoU 18/54 = 0.33
    c = match(t, shifted, (0.5,))[0]
    assert (c.tp, c.fp, c.fn) == (1, 1, 1)
    assert c.ap == pytest.approx(1 / 3) and c.f1 == pytest.approx(0.5)


def test_one_to_one_and_empty():
    t = np.zeros((10, 10), int)
    t[:, :5] = 1
    p = np.ones((10, 10), int)  # one prediction covering two truths -> at most one match
    t[:, 5:] = 2
    c = match(t, p, (0.5,))[0]
    assert (c.tp, c.fp, c.fn) == (1, 0, 1)  # IoU 0.5 with each truth, but only one may match
    assert match(np.zeros((4, 4), int), np.zeros((4, 4), int))[0].ap == 1.0


def test_dataset_scores():
    t = np.zeros((20, 20), int)
    t[2:8, 2:8] = 1
    s = dataset_scores([(t, t), (t, np.zeros_like(t))])
    assert s["ap50"] == pytest.approx(0.5) and s["dsb"] == pytest.approx(0.5)
    assert s["count_error"] == pytest.approx(0.5) and s["images"] == 2
