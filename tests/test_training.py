from dataclasses import replace

import numpy as np
import pytest
from conftest import disc_image

from napari_cellunet.arrays import to_grey
from napari_cellunet.inference import drive, iter_predict
from napari_cellunet.models import load_model
from napari_cellunet.segment import normalize_for_model
from napari_cellunet.settings import InstanceParams
from napari_cellunet.training import (
    AugmentConfig,
    TrainConfig,
    TrainState,
    WeightAverage,
    add_halos,
    add_noise,
    add_speckles,
    add_texture,
    augment,
    batch_stream,
    brightness_field,
    contact_weights,
    distance_target,
    iter_train,
    keep_largest_fragment,
    labels_to_targets,
    make_batch,
    make_sample,
    sampling_weights,
    tune_thresholds,
)


def test_targets_separate_touching_objects():
    _, labels = disc_image(centers=((48, 38), (48, 58)), radius=11)
    t = labels_to_targets(labels)
    assert set(np.unique(t)) == {0, 1, 2}
    # the contact line between the two discs is boundary, not interior
    contact = (labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] > 0) & (labels[:, :-1] > 0)
    ys, xs = np.nonzero(contact)
    assert (t[ys, xs] == 2).all() and (t[ys, xs + 1] == 2).all()
    # interior of each disc splits into two components
    from scipy import ndimage as ndi

    assert ndi.label(t == 1)[1] == 2


def test_contact_band_widens_boundary_only_where_objects_touch():
    lab = np.zeros((30, 50), np.int32)
    lab[5:25, 5:20] = 1
    lab[5:25, 20:35] = 2    # touches object 1 along x = 19 | 20
    lab[5:25, 40:48] = 3    # alone
    thin, wide = labels_to_targets(lab), labels_to_targets(lab, contact_band=2)
    assert (thin[15, 18:22] == [1, 2, 2, 1]).all()
    assert (wide[15, 17:23] == [1, 2, 2, 2, 2, 1]).all()          # two pixels each side of the contact
    assert (wide[:, :18] == thin[:, :18]).all() and (wide[:, 22:] == thin[:, 22:]).all()  # elsewhere unchanged


def test_keep_largest_fragment():
    lab = np.zeros((20, 20), np.int32)
    lab[2:10, 2:10] = 1
    lab[15, 15] = 1  # stray fragment
    out = keep_largest_fragment(lab)
    assert out[15, 15] == 0 and (out[2:10, 2:10] == 1).all()


def test_sample_rescaled_to_canonical_diameter_and_batches():
    img, lab = disc_image(shape=(120, 120), centers=((40, 40), (80, 80)), radius=16)
    s = make_sample(img, lab, diameter=16.0)
    d = 2 * np.sqrt((s.labels == 1).sum() / np.pi)
    assert abs(d - 16) < 2 and s.image.shape == (1, *s.labels.shape)
    rng = np.random.default_rng(0)
    x, y, w, d = make_batch([s], 3, AugmentConfig(crop=48), rng)
    assert tuple(x.shape) == (3, 1, 48, 48) and tuple(y.shape) == (3, 48, 48) and w.shape == y.shape
    assert d is None  # distance targets only when asked for
    a, b = augment(s.image, s.labels, AugmentConfig(), np.random.default_rng(1))
    assert a.shape == s.image.shape and b.shape == s.labels.shape


def test_add_noise_models_photon_noise_grain_and_grey_levels():
    ramp = np.tile(np.linspace(0, 1, 128, dtype=np.float32), (1, 128, 1))   # (1, 128, 128)
    rng = np.random.default_rng(0)
    assert np.array_equal(add_noise(ramp, AugmentConfig(noise_std=0), rng), ramp)
    # photon noise: unbiased, and stronger where the image is bright
    shot = add_noise(ramp, AugmentConfig(noise_std=0, shot_noise_prob=1), rng) - ramp
    assert abs(shot.mean()) < 0.02 and shot[..., 96:].std() > 1.5 * shot[..., 8:40].std()
    # grainy Gaussian noise is correlated between neighbours; white noise is not
    flat = np.zeros((1, 128, 128), np.float32)

    def neighbour_corr(cfg):
        while True:  # noise is added to half of the calls
            n = add_noise(flat, cfg, rng)[0]
            if n.any():
                return np.corrcoef(n[:, 1:].ravel(), n[:, :-1].ravel())[0, 1]

    assert neighbour_corr(AugmentConfig(noise_std=0.2, noise_grain_prob=1)) > 0.3
    assert abs(neighbour_corr(AugmentConfig(noise_std=0.2))) < 0.1
    # coarse grey levels: at most 65 distinct values on a 128-level ramp
    q = add_noise(ramp, AugmentConfig(noise_std=0, quantize_prob=1), rng)
    assert len(np.unique(q)) <= 65 and np.abs(q - ramp).max() <= 0.5 / 4 + 1e-6


def test_tiny_training_run_saves_loadable_model(tmp_path):
    pairs = [disc_image(shape=(96, 96), centers=((30 + 5 * i, 30), (60, 60 - 3 * i)), radius=10, seed=i)
             for i in range(4)]
    cfg = TrainConfig(depth=2, base_channels=4, batch_size=2, max_steps=4, val_every=2, minutes=5,
                      augment=AugmentConfig(crop=64), seed=3)
    states = []
    drive(iter_train(pairs[:3], pairs[3:], tmp_path / "tiny.pt", cfg), states.append)
    vals = [s for s in states if isinstance(s, TrainState) and s.val_ap50 is not None]
    assert [s.step for s in vals] == [2, 4]
    loaded = load_model(tmp_path / "tiny.pt")
    assert loaded.meta["steps"] == 4 and len(loaded.meta["history"]) == 2
    assert loaded.diameter == 16.0 and loaded.config.base_channels == 4
    # fine-tuning starts from the given weights and keeps its diameter
    tuned = drive(iter_train(pairs[:3], [], tmp_path / "ft.pt", TrainConfig(max_steps=1, batch_size=2,
                                                                            augment=AugmentConfig(crop=64)),
                             init=loaded))
    assert tuned.config == loaded.config and load_model(tmp_path / "ft.pt").diameter == 16.0


def test_distance_target_peaks_once_per_object_also_where_objects_touch():
    _, lab = disc_image(centers=((48, 38), (48, 58)), radius=11)  # two overlapping (touching) discs
    t = distance_target(lab)
    assert t[lab == 0].max() == 0 and t.min() >= 0 and t.max() == 1
    for i, cx in ((1, 38), (2, 58)):
        assert t[lab == i].max() == 1 and t[48, cx] > 0.8  # 1 near each centre
    assert t[48, 48] < 0.2  # low on the line where they touch
    assert not distance_target(np.zeros((8, 8), int)).any()


def test_distance_training_adds_an_output_and_keeps_the_class_outputs(tmp_path):
    pairs = [disc_image(shape=(96, 96), centers=((30 + 5 * i, 30), (60, 60 - 3 * i)), radius=10, seed=i)
             for i in range(3)]
    cfg = TrainConfig(depth=2, base_channels=4, batch_size=2, max_steps=2, minutes=5, precision="fp32",
                      augment=AugmentConfig(crop=64), seed=3)
    plain = drive(iter_train(pairs[:2], [], tmp_path / "plain.pt", cfg))
    s = make_sample(*pairs[0], diameter=16.0)
    _, y, _, d = make_batch([s], 2, AugmentConfig(crop=48), np.random.default_rng(0), distance=True)
    assert d.shape == y.shape and float(d.max()) == 1.0 and not d[y == 0].any()
    # fine-tuning with distance=True: a new output; before any step the class outputs are the init's
    cfg0 = TrainConfig(max_steps=0, distance=True, augment=AugmentConfig(crop=64))
    grown = drive(iter_train(pairs[:2], [], tmp_path / "grown.pt", cfg0, init=plain))
    assert grown.config.distance and grown.config.n_outputs == 4
    x = normalize_for_model(plain, pairs[2][0][None])
    p_plain = drive(iter_predict(plain.net, x, precision="fp32"))
    p_grown = drive(iter_predict(grown.net, x, precision="fp32"))
    assert p_grown.shape == (1, 4, 96, 96) and np.allclose(p_grown[:, :3], p_plain, atol=1e-5)
    assert p_grown[:, 3].min() >= 0 and p_grown[:, 3].max() <= 1
    trained = drive(iter_train(pairs[:2], pairs[2:], tmp_path / "d.pt", replace(cfg, distance=True)))
    assert load_model(tmp_path / "d.pt").config.distance and trained.meta["history"]


def test_training_is_reproducible(tmp_path):
    pairs = [disc_image(seed=i) for i in range(2)]
    cfg = TrainConfig(depth=2, base_channels=4, batch_size=2, max_steps=2, minutes=5, precision="fp32",
                      augment=AugmentConfig(crop=64), seed=7)
    a = drive(iter_train(pairs, [], tmp_path / "a.pt", cfg))
    b = drive(iter_train(pairs, [], tmp_path / "b.pt", cfg))
    for (k, va), vb in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert np.allclose(va.numpy(), vb.numpy(), atol=1e-5), k


def test_loader_workers_give_the_same_batches_however_many_and_from_any_step(tmp_path):
    samples = [make_sample(*disc_image(seed=i), diameter=16.0) for i in range(3)]
    cfg = TrainConfig(batch_size=2, max_steps=10, workers=1, seed=5, augment=AugmentConfig(crop=32))

    def first(n, workers, start=0):
        stream = batch_stream(samples, replace(cfg, workers=workers), None, None, True, start)
        out = [next(stream) for _ in range(n)]
        stream.close()
        return out

    one, two, later = first(3, 1), first(3, 2), first(1, 2, start=2)
    for a, b in zip(one + one[2:], two + later):
        assert all(np.array_equal(u.numpy(), v.numpy()) for u, v in zip(a, b))
    assert not np.array_equal(one[0][0].numpy(), one[1][0].numpy())  # each step its own batch
    pairs = [disc_image(seed=i) for i in range(2)]
    train = replace(cfg, depth=2, base_channels=4, max_steps=2, minutes=5, precision="fp32",
                    augment=AugmentConfig(crop=64))
    a = drive(iter_train(pairs, [], tmp_path / "a.pt", train))
    b = drive(iter_train(pairs, [], tmp_path / "b.pt", replace(train, workers=2)))
    for (k, va), vb in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert np.allclose(va.numpy(), vb.numpy(), atol=1e-5), k


def test_averaged_training_without_validation_saves_the_average(tmp_path):
    pairs = [disc_image(seed=i) for i in range(2)]
    cfg = TrainConfig(depth=2, base_channels=4, batch_size=2, max_steps=3, minutes=5, precision="fp32",
                      augment=AugmentConfig(crop=64), seed=7)
    live = drive(iter_train(pairs, [], tmp_path / "a.pt", cfg))
    cfg.ema = 0.99
    averaged = drive(iter_train(pairs, [], tmp_path / "b.pt", cfg))  # same steps, the average is kept
    k = next(k for k, v in live.net.state_dict().items() if v.is_floating_point())
    assert not np.allclose(live.net.state_dict()[k].numpy(), averaged.net.state_dict()[k].numpy(), atol=1e-6)


def test_tune_thresholds_picks_best():
    _, labels = disc_image(centers=((48, 38), (48, 58)), radius=11)
    t = labels_to_targets(labels)
    p = np.stack([(t == 0), (t == 1) * 0.45, (t == 2) + (t == 1) * 0.55]).astype(np.float32)[None]
    best, scores = tune_thresholds([(p, 22.0)], [labels], InstanceParams(min_size=5))
    # only a low seed threshold finds the cells
    assert scores["ap50"] == 1.0 and scores["count_error"] == 0 and best.seed_threshold < 0.45
    # with a distance output the seed grid is the distance one: here only 0.45 separates the two hills
    yy, xx = np.indices(labels.shape)
    hills = np.minimum(0.47, np.maximum(*[1 - np.hypot(yy - 48, xx - cx) / 17.2 for cx in (38, 58)])) * (labels > 0)
    blob = (labels > 0).astype(np.float32)
    p = np.stack([1 - blob, blob, 0 * blob, hills]).astype(np.float32)[None]
    base = InstanceParams(min_size=5, merge_fragments=0, split_touching=False)
    best, scores = tune_thresholds([(p, 22.0)], [labels], base)
    assert scores["ap50"] == 1.0 and best.seed_threshold == 0.45


def test_tiny_3d_unet_trains_and_segments_a_volume(tmp_path):
    import tifffile
    from conftest import DATA

    from napari_cellunet.stacks import iter_segment_stack

    vol = tifffile.imread(DATA / "img3d.tif")
    mask = tifffile.imread(DATA / "mask3d.tif")
    cfg = TrainConfig(dims=3, depth=2, base_channels=4, batch_size=1, max_steps=2, minutes=5, diameter=None,
                      augment=AugmentConfig(crop=(16, 32, 32)))
    drive(iter_train([(vol, mask)], [(vol, mask)], tmp_path / "m3d.pt", cfg))
    loaded = load_model(tmp_path / "m3d.pt")
    assert loaded.config.dims == 3 and loaded.meta["axes"] == "ZYX"
    res = drive(iter_segment_stack(loaded, vol, "ZYX", "3d"))
    assert res.labels.shape == vol.shape and res.mode == "3d"
    with pytest.raises(ValueError, match="3D model"):
        drive(iter_segment_stack(loaded, vol, "TYX", "frames"))


def test_resume_continues_from_checkpoint(tmp_path):
    pairs = [disc_image(seed=i) for i in range(3)]
    cfg = TrainConfig(depth=2, base_channels=4, batch_size=2, max_steps=2, val_every=2, minutes=5,
                      augment=AugmentConfig(crop=64))
    drive(iter_train(pairs[:2], pairs[2:], tmp_path / "r.pt", cfg))
    assert (tmp_path / "r.pt.ckpt").exists()
    cfg.max_steps = 4
    states = []
    model = drive(iter_train(pairs[:2], pairs[2:], tmp_path / "r.pt", cfg, resume=True), states.append)
    steps = [s.step for s in states if isinstance(s, TrainState)]
    assert steps == [3, 4] and model.meta["steps"] == 4 and len(model.meta["history"]) == 2


def test_weight_average_follows_weights_slowly_and_copies_counters():
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    avg = WeightAverage(net, 0.9)
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net[1].num_batches_tracked += 5
    avg.update(net, step=1000)  # ramp is over: decay 0.9
    assert torch.allclose(avg.state["0.weight"], start + 0.1)
    assert int(avg.state["1.num_batches_tracked"]) == 5
    avg.update(net, step=0)  # first step: decay (1 + 0) / 10 = 0.1, so it jumps most of the way
    assert torch.allclose(avg.state["0.weight"], start + 0.1 * 0.1 + 0.9)


def test_averaged_training_saves_the_average_and_resumes_it(tmp_path):
    import torch

    pairs = [disc_image(seed=i) for i in range(3)]
    cfg = TrainConfig(depth=2, base_channels=4, batch_size=2, max_steps=4, val_every=2, minutes=5, ema=0.9,
                      augment=AugmentConfig(crop=64))
    drive(iter_train(pairs[:2], pairs[2:], tmp_path / "a.pt", cfg))
    ck = torch.load(tmp_path / "a.pt.ckpt", weights_only=True)
    k = next(k for k, v in ck["net"].items() if v.is_floating_point())
    assert not torch.equal(ck["ema"][k], ck["net"][k])              # the average lags the live weights
    assert not torch.equal(ck["best_state"][k], ck["net"][k])       # what is kept is an average too
    cfg.max_steps = 6
    model = drive(iter_train(pairs[:2], pairs[2:], tmp_path / "a.pt", cfg, resume=True))
    assert model.meta["steps"] == 6 and model.meta["train_config"]["ema"] == 0.9


def test_dense_sampling_draws_crowded_images_more_often():
    from napari_cellunet.training import Sample

    apart = np.zeros((40, 60), np.int32)
    apart[5:15, 5:15], apart[25:35, 40:50] = 1, 2
    crowded = np.zeros((40, 60), np.int32)
    crowded[5:35, 5:20], crowded[5:35, 20:35], crowded[5:35, 35:50] = 1, 2, 3   # three touching objects
    samples = [Sample(np.zeros((1, 40, 60), np.float32), lab) for lab in (apart, crowded)]
    assert sampling_weights(samples, 0.0) is None
    w = sampling_weights(samples, 20.0)
    assert w.sum() == pytest.approx(1.0) and w[1] > 2 * w[0]
    _, y, _, _ = make_batch(samples, 64, AugmentConfig(crop=32, scale_range=(1, 1)), np.random.default_rng(0),
                         weights=w)
    boundary_share = (y == 2).float().mean((1, 2))  # crops of the crowded image carry much more boundary
    assert (boundary_share > 0.07).sum() > 44   # ~82% of draws (uniform: ~50%)


def test_contact_weights_mark_only_gaps_between_touching_objects():
    lab = np.zeros((40, 60), np.int32)
    lab[10:30, 5:20] = 1
    lab[10:30, 22:37] = 2   # 2-px gap to object 1
    lab[10:30, 50:58] = 3   # far from the others
    w = contact_weights(lab, 4.0)
    assert w[20, 20] == 5.0 and w[20, 19] == 5.0 and w[20, 22] == 5.0 and w[20, 18] == 1.0  # gap + rims
    assert w[20, 10] == 1.0 and w[20, 45] == 1.0 and w[20, 54] == 1.0 and w[0, 0] == 1.0
    assert (contact_weights(lab, 0.0) == 1).all()


def test_brightness_field_is_smooth_and_bounded():
    f = brightness_field((64, 64), 0.25, np.random.default_rng(0))
    assert f.shape == (64, 64) and f.min() >= 0.25 - 1e-6 and f.max() <= 1 + 1e-6
    assert np.abs(np.diff(f, axis=0)).max() < 0.1 and f.std() > 0.01


def test_halos_only_outside_and_speckles_and_texture_only_inside_objects():
    img, lab = disc_image(shape=(64, 64), centers=((32, 32),), radius=10)
    img = img.astype(np.float32)[None] / img.max()
    rng = np.random.default_rng(0)
    halo = add_halos(img, lab, rng)
    diff = halo - img
    assert np.allclose(diff[0][lab > 0], 0) and diff[0][lab == 0].max() > 0.02
    assert diff[0, 0, 0] < 1e-3  # far from the object: untouched
    spk = add_speckles(img, lab, np.random.default_rng(1))
    d2 = img - spk
    assert np.allclose(d2[0][lab == 0], 0) and d2.max() > 0.05
    tex = add_texture(img, lab, np.random.default_rng(2))
    assert np.allclose(tex[0][lab == 0], img[0][lab == 0])
    inside = tex[0][lab > 0]
    assert inside.std() > 2 * img[0][lab > 0].std() + 0.05 and inside.min() > 0


def test_inverted_rgb_training_for_dark_objects(tmp_path):
    """Brightfield/H&E style: dark RGB nuclei on a light background train a grey, inverted model."""
    def dark_rgb(seed):
        img, lab = disc_image(shape=(96, 96), seed=seed)
        return np.repeat((255 - img)[..., None], 3, axis=-1), lab

    img, lab = dark_rgb(0)
    s = make_sample(img, lab, None, invert=True, grey=True)
    assert s.image.shape == (1, 96, 96) and s.image[0][lab > 0].mean() > s.image[0][lab == 0].mean() + 0.5
    pairs = [dark_rgb(i) for i in range(3)]
    cfg = TrainConfig(depth=2, base_channels=4, batch_size=2, max_steps=2, val_every=2, minutes=5,
                      augment=AugmentConfig(crop=64), invert=True)
    drive(iter_train(pairs[:2], pairs[2:], tmp_path / "bf.pt", cfg))
    model = load_model(tmp_path / "bf.pt")
    assert model.invert and model.config.in_channels == 1
    x = normalize_for_model(model, np.stack([to_grey(img)]))
    assert x[0, 0][lab > 0].mean() > x[0, 0][lab == 0].mean() + 0.5   # inference inverts as training did
    # fine-tuning an inverted model keeps it inverted unless told otherwise
    tuned = drive(iter_train(pairs[:2], [], tmp_path / "ft.pt", TrainConfig(max_steps=1, batch_size=2,
                                                                            augment=AugmentConfig(crop=64)),
                             init=model))
    assert tuned.invert
