"""The training loop: loss, weight averaging, checkpoints, validation and the final threshold tuning.

Training is a generator yielding :class:`~napari_cellunet.inference.Progress`
and :class:`TrainState`, so the widget and the CLI share it. A seed makes runs
reproducible (up to thread scheduling). Checkpoints make a run resumable.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..inference import Progress, resolve_precision, select_device
from ..models import CellModel, save_model
from ..settings import InstanceParams, PredictOptions, TrainConfig
from ..unet import UNet, UNetConfig
from .data import batch_stream, grey_if_rgb, make_sample, sampling_weights
from .tuning import tune_thresholds, val_scores


def loss_fn(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor,
            pixel_weights: torch.Tensor | None = None, distance: torch.Tensor | None = None) -> torch.Tensor:
    """Class- and pixel-weighted cross-entropy + soft Dice over interior and boundary.

    With a ``distance`` target, the output after the classes is its logit (binary cross-entropy).
    """
    logits = logits.float()
    extra = 0.0
    if distance is not None:
        k = len(class_weights)
        extra = F.binary_cross_entropy_with_logits(logits[:, k], distance.float())
        logits = logits[:, :k]
    if pixel_weights is None:
        ce = F.cross_entropy(logits, target, weight=class_weights)
    else:
        per_pixel = F.cross_entropy(logits, target, weight=class_weights, reduction="none")
        ce = (per_pixel * pixel_weights).sum() / (class_weights[target] * pixel_weights).sum()
    probs = torch.softmax(logits, 1)
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).float()
    dims = tuple(range(2, logits.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = 1 - (2 * inter + 1) / (denom + 1)
    return ce + dice[:, 1:].mean() + extra


@dataclass
class TrainState:
    """Progress of a run: the step, the running loss, and validation AP@0.5 when it was measured."""

    step: int
    loss: float
    val_ap50: float | None = None
    best_ap50: float | None = None


class WeightAverage:
    """Exponential moving average of a network's weights and buffers (validated and saved instead of them).

    The decay ramps up as ``(1 + step) / (10 + step)`` towards ``decay``, so short
    fine-tunes are not dominated by the starting weights.
    """

    def __init__(self, net: torch.nn.Module, decay: float, state: dict | None = None):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in (state or net.state_dict()).items()}

    def update(self, net: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in net.state_dict().items():
                if v.dtype.is_floating_point:
                    self.state[k].mul_(d).add_(v.detach(), alpha=1 - d)
                else:
                    self.state[k].copy_(v)


def _copy_net(net: UNet, distance: bool) -> UNet:
    """A copy of ``net``; with ``distance`` and none in ``net``, a fresh distance output is added."""
    out = UNet(replace(net.config, distance=distance))
    state = net.state_dict()
    if distance and not net.config.distance:  # the class rows of the head are copied, the distance row is new
        fresh = out.state_dict()
        state.update({key: torch.cat([state[key], fresh[key][net.config.n_classes:]])
                      for key in ("head.weight", "head.bias")})
    out.load_state_dict(state)
    return out


def _start_net(cfg: TrainConfig, init: CellModel | None) -> tuple[UNet, float | None]:
    """The network to train and its canonical diameter: a copy of ``init``'s, or a new one from ``cfg``."""
    if init is not None:
        return _copy_net(init.net, distance=cfg.distance or init.config.distance), init.diameter
    net = UNet(UNetConfig(dims=cfg.dims, in_channels=1, n_classes=3, depth=cfg.depth,
                          base_channels=cfg.base_channels, up_mode=cfg.up_mode, norm=cfg.norm,
                          distance=cfg.distance))
    return net, cfg.diameter


def _samples(pairs, diameter, invert: bool, channels: int):
    """Training samples (normalised, at the canonical size); yields progress, returns them."""
    yield Progress(0, len(pairs), "preparing training data")
    samples = []
    for i, (img, lab) in enumerate(pairs):
        s = make_sample(img, lab, diameter, invert=invert, grey=channels == 1)
        if s is not None:
            samples.append(s)
        yield Progress(i + 1, len(pairs), "preparing training data")
    if not samples:
        raise ValueError("no annotated objects in the training data")
    if channels != samples[0].image.shape[0]:
        raise ValueError(f"model expects {channels} channel(s), training images have {samples[0].image.shape[0]}")
    return samples


@dataclass
class _Run:
    """What a run carries from step to step (and what its checkpoint holds)."""

    step: int = 0
    elapsed: float = 0.0
    best_ap: float = -1.0
    best_state: dict | None = None
    history: list | None = None
    ema: dict | None = None

    def save(self, path: Path, net, opt, rng, average) -> None:
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": self.step, "elapsed": self.elapsed,
                    "best_ap": self.best_ap, "best_state": self.best_state or {}, "history": self.history,
                    "ema": average.state if average is not None else {},
                    "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, path)

    @classmethod
    def load(cls, path: Path, net, opt, rng, device) -> _Run:
        ck = torch.load(path, map_location=device, weights_only=True)
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        return cls(int(ck["step"]), float(ck["elapsed"]), float(ck["best_ap"]), ck["best_state"] or None,
                   list(ck["history"]), ck.get("ema") or None)


def _validate(model: CellModel, net, val_pairs, opts, run: _Run, average, running: float):
    """Score the (averaged) weights on val; keep them when they are the best so far. Returns the scores."""
    live = None
    if average is not None:  # validate (and keep) the averaged weights
        live = {k: v.detach().clone() for k, v in net.state_dict().items()}
        net.load_state_dict(average.state)
    net.eval()
    scores, _ = yield from val_scores(model, val_pairs, opts, model.instance_params)
    net.train()
    run.history.append({"step": run.step, "minutes": round(run.elapsed / 60, 2), "loss": round(running, 4),
                        **{k: round(v, 4) for k, v in scores.items() if k != "images"}})
    if scores["ap50"] > run.best_ap:
        run.best_ap = scores["ap50"]
        run.best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    if live is not None:
        net.load_state_dict(live)
    return scores


def _step(net, opt, batch, weights, device, layout, amp):
    """One optimiser step on a ``(images, targets, pixel weights, distance targets)`` batch; returns the loss."""
    x, y, w, dt = (None if t is None else t.to(device, non_blocking=True) for t in batch)
    if layout is not None:
        x = x.contiguous(memory_format=layout)
    with torch.autocast(device_type=device.type, dtype=amp, enabled=amp is not None):
        logits = net(x)
    loss = loss_fn(logits, y, weights, w, dt)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def _set_lr(opt, cfg: TrainConfig, step: int, frac: float) -> None:
    """Cosine decay over the time budget after a short warm-up."""
    for g in opt.param_groups:
        g["lr"] = cfg.lr * min(1.0, (step + 1) / 50) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))


def iter_train(
    train_pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    val_pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    out_path: str | Path,
    config: TrainConfig | None = None,
    init: CellModel | None = None,
    meta: dict | None = None,
    resume: bool = False,
) -> Generator[Progress | TrainState, None, CellModel]:
    """Train, validating every ``val_every`` steps; the best model (val AP@0.5) is saved to ``out_path``.

    ``train_pairs``/``val_pairs`` are (image, instance labels) at native scale.
    ``init`` fine-tunes an existing model (its architecture and diameter win).
    Yields :class:`Progress` and :class:`TrainState`; returns the best model.
    An empty ``val_pairs`` saves the last model instead. A checkpoint is written
    to ``<out_path>.ckpt`` at every validation; ``out_path`` itself only at the
    end, so a cancelled run never leaves a half-trained model. ``resume=True``
    continues from the checkpoint (a larger ``minutes`` extends a finished run).
    """
    cfg = config or TrainConfig()
    rng = np.random.default_rng(cfg.seed)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = select_device(cfg.device)
    net, diameter = _start_net(cfg, init)
    dims, channels = net.config.dims, net.config.in_channels
    invert = bool(cfg.invert if cfg.invert is not None else (init.invert if init else False))
    if channels == 1:  # RGB val images are segmented as grey, like training images
        val_pairs = [(grey_if_rgb(i, lab.ndim), lab) for i, lab in val_pairs]
    samples = yield from _samples(train_pairs, diameter, invert, channels)
    layout = torch.channels_last if dims == 2 else torch.channels_last_3d
    net.to(device).train()
    if device.type == "cpu":
        net = net.to(memory_format=layout)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = torch.tensor(cfg.class_weights, dtype=torch.float32, device=device)
    amp = resolve_precision(cfg.precision, device)
    model = CellModel(name=Path(out_path).stem, net=net, meta={
        "diameter": diameter, "normalization": {"low": 1.0, "high": 99.8}, "invert": invert,
        "instance_params": (init.instance_params if init else InstanceParams()).to_dict(),
        "train_config": cfg.to_dict(),
        "n_train_images": len(samples), "n_val_images": len(val_pairs), "axes": "YX" if dims == 2 else "ZYX",
        **(meta or {})})
    opts = PredictOptions(device=str(device), batch_size=8, backend="torch")  # the weights change: no export
    ckpt_path = Path(f"{out_path}.ckpt")
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    run = _Run(history=[])
    if resume and ckpt_path.exists():
        run = _Run.load(ckpt_path, net, opt, rng, device)
        yield Progress(0, 1, f"resumed at step {run.step}")
    average = WeightAverage(net, cfg.ema, run.ema) if cfg.ema > 0 else None
    batches = batch_stream(samples, cfg, rng, sampling_weights(samples, cfg.dense_sampling), net.config.distance,
                           run.step, pin=device.type == "cuda")
    t0, budget, running = time.monotonic() - run.elapsed, cfg.minutes * 60, None
    while run.step < cfg.max_steps and time.monotonic() - t0 < budget:
        _set_lr(opt, cfg, run.step, min(1.0, (time.monotonic() - t0) / budget))
        loss = _step(net, opt, next(batches), weights, device, layout if device.type == "cpu" else None, amp)
        run.step += 1
        if average is not None:
            average.update(net, run.step)
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        run.elapsed = time.monotonic() - t0
        yield Progress(int(run.elapsed), int(budget), f"step {run.step}  loss {running:.3f}")
        last = run.step >= cfg.max_steps or run.elapsed >= budget
        if val_pairs and (run.step % cfg.val_every == 0 or last):
            scores = yield from _validate(model, net, val_pairs, opts, run, average, running)
            run.save(ckpt_path, net, opt, rng, average)
            yield TrainState(run.step, running, scores["ap50"], run.best_ap)
        else:
            yield TrainState(run.step, running, None, run.best_ap if run.best_ap >= 0 else None)
    batches.close()  # stops loader workers
    return (yield from _finish(model, net, run, average, val_pairs, opts, cfg, out_path, t0))


def _finish(model: CellModel, net, run: _Run, average, val_pairs, opts, cfg: TrainConfig, out_path, t0):
    """Keep the best (or averaged) weights, tune thresholds on val, save the model file."""
    if run.best_state is not None:
        net.load_state_dict(run.best_state)
    elif average is not None:  # no validation ran: keep the averaged weights, as validation would have
        net.load_state_dict(average.state)
    net.eval()
    model.meta.update(history=run.history, steps=run.step, train_minutes=round((time.monotonic() - t0) / 60, 2))
    if val_pairs and cfg.tune:
        yield Progress(0, 1, "tuning thresholds on validation images")
        scores, cached = yield from val_scores(model, val_pairs, opts, model.instance_params)
        params, tuned = tune_thresholds(cached, [t for _, t in val_pairs], model.instance_params)
        model.meta["instance_params"] = params.to_dict()
        model.meta["val_scores_default_thresholds"] = {k: round(float(v), 4) for k, v in scores.items()}
        model.meta["val_scores_tuned_thresholds"] = {k: round(float(v), 4) for k, v in tuned.items()}
    save_model(out_path, net, model.meta)
    model.path = Path(out_path)
    return model
