"""``cellunet`` command line: segment, train, models, demo.

Every expected failure (missing file, unreadable image, unsupported shape,
corrupt model, Ctrl-C) ends with a one-line message and a non-zero exit code,
never a traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from . import __version__

EXIT_USAGE, EXIT_INPUT, EXIT_CANCEL = 2, 1, 130


class CLIError(Exception):
    """An expected failure: printed as one line, exit code 1."""


def _progress_printer(prefix: str = ""):
    """A progress callback drawing a one-line bar on stderr (silent when stderr is not a terminal)."""
    state = {"last": 0.0}
    if not sys.stderr.isatty():
        return lambda p: None

    def show(p) -> None:
        from .inference import Progress

        if not isinstance(p, Progress):
            return
        now = time.monotonic()
        if now - state["last"] < 0.2 and p.done < p.total:
            return
        state["last"] = now
        frac = p.done / p.total if p.total else 1.0
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\r{prefix}[{bar:<30}] {p.done}/{p.total} {p.message[:40]:<40}")
        sys.stderr.flush()

    return show


def _end_progress() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r" + " " * 100 + "\r")
        sys.stderr.flush()


# --------------------------------------------------------------------------- commands
def cmd_models(args) -> int:
    from .models import list_models, read_model_file

    entries = list_models()
    if not entries:
        print("no models found")
        return 0
    for e in entries:
        try:
            meta = read_model_file(e.path).get("meta", {})
            tuned = meta.get("val_scores_tuned_thresholds") or meta.get("val_scores_default_thresholds") or {}
            ap50 = tuned.get("ap50") or meta.get("val_ap50_tuned_thresholds")
            ap = f"  val AP@0.5 {ap50:.3f}" if ap50 else ""
            d = f"  diameter {meta['diameter']:.0f}px" if meta.get("diameter") else ""
            print(f"{e.name:<28} {e.source:<8}{d}{ap}  {e.path}")
        except Exception as err:  # a broken user file must not hide the others
            print(f"{e.name:<28} {e.source:<8} UNREADABLE ({err})")
    return 0


def cmd_segment(args) -> int:
    from .batch import BatchError, segment_files

    inputs = [Path(p) for p in args.inputs]
    progress = None if args.quiet else _progress_printer()
    try:
        rows = segment_files(
            inputs, Path(args.output), model=args.model, diameter=args.diameter, device=args.device,
            tile=args.tile, tta=args.tta, prob_threshold=args.prob_threshold,
            seed_threshold=args.seed_threshold, min_size=args.min_size, min_brightness=args.min_brightness,
            merge_fragments=args.merge_fragments, join_weak_borders=args.join_weak_borders,
            min_confidence=args.min_confidence,
            merge_over_time=False if args.no_merge_over_time else None, axes=args.axes,
            mode=args.mode, channel=args.channel, progress=progress,
            log=None if args.quiet else _log)
    except BatchError as err:
        if progress is not None:
            _end_progress()
        print(f"cellunet: error: {err} (outputs of the other inputs are in {args.output})", file=sys.stderr)
        return EXIT_INPUT
    finally:
        if progress is not None:
            _end_progress()
    total = sum(r["count"] for r in rows)
    print(f"{len(rows)} image(s), {total} objects; labels and counts.csv in {args.output}")
    return 0


def _log(msg: str) -> None:
    _end_progress()
    print(msg, file=sys.stderr)


def cmd_count(args) -> int:
    from .batch import count_files

    rows = count_files([Path(p) for p in args.inputs], Path(args.output), axes=args.axes, mode=args.mode,
                       log=_log)
    total = sum(r["count"] for r in rows)
    print(f"{len(rows)} count(s), {total} objects in all; counts.csv in {args.output}")
    return 0


CLASSIC_AUGMENT = {"field_prob": 0.0, "halo_prob": 0.0, "speckle_prob": 0.0, "texture_prob": 0.0}


def cmd_train(args) -> int:
    from .inference import drive
    from .models import load_model, save_user_model
    from .training import AugmentConfig, TrainConfig, TrainState, iter_train, load_folder_pairs

    if len(args.images) != len(args.masks):
        raise ValueError("give one --masks folder per --images folder")
    train = [p for i, m in zip(args.images, args.masks) for p in load_folder_pairs(i, m)]
    if args.val_images:
        val = load_folder_pairs(args.val_images, args.val_masks or args.val_images)
    else:
        n_val = max(1, len(train) // 10) if len(train) > 1 else 0
        val, train = train[:n_val], train[n_val:]
    init = load_model(args.init) if args.init else None
    augment = {} if args.texture_prob is None else {"texture_prob": args.texture_prob}
    augment.update(CLASSIC_AUGMENT if args.classic_augment else {})
    augment.update(noise_std=args.noise_std, noise_grain_prob=args.noise_grain_prob,
                   shot_noise_prob=args.shot_noise_prob, quantize_prob=args.quantize_prob,
                   object_gain_prob=args.object_gain_prob, paste_prob=args.paste_prob,
                   defocus_prob=args.defocus_prob, stretch=args.stretch)
    cfg = TrainConfig(minutes=args.minutes, max_steps=args.max_steps, seed=args.seed, batch_size=args.batch_size,
                      base_channels=args.base, depth=args.depth, val_every=args.val_every,
                      diameter=args.diameter or None, lr=args.lr, device=args.device,
                      contact_weight=args.contact_weight, contact_band=args.contact_band, ema=args.ema,
                      dense_sampling=args.dense_sampling, distance=args.distance,
                      workers=args.workers, tune=not args.no_tune,
                      invert=True if args.invert else None,
                      augment=AugmentConfig(crop=args.crop, invert_prob=args.invert_prob, **augment))
    out = Path(args.out) if args.out else None
    tmp_out = out or Path(f"{args.name}.pt")
    meta = {
        "name": args.name or tmp_out.stem,
        "description": args.description,
        "training_data": args.data_note or f"{', '.join(args.images)} ({len(train)} images)",
        "training_command": "cellunet " + shlex.join(args.argv),
        "license": args.license,
    }
    print(f"training on {len(train)} images, validating on {len(val)}, for {args.minutes} min",
          file=sys.stderr)
    last = {"t": 0.0}

    def report(msg):
        if isinstance(msg, TrainState) and msg.val_ap50 is not None:
            print(f"step {msg.step}: loss {msg.loss:.3f}  val AP@0.5 {msg.val_ap50:.3f}  "
                  f"(best {msg.best_ap50:.3f})", file=sys.stderr, flush=True)
        elif isinstance(msg, TrainState) and time.monotonic() - last["t"] > 30:
            last["t"] = time.monotonic()
            print(f"step {msg.step}: loss {msg.loss:.3f}", file=sys.stderr, flush=True)

    model = drive(iter_train([(i, m) for _, i, m in train], [(i, m) for _, i, m in val], tmp_out,
                             cfg, init=init, meta=meta, resume=args.resume), report)
    if out is None:
        path = save_user_model(args.name, model.net, model.meta)
        tmp_out.unlink(missing_ok=True)
    else:
        path = out
    scores = model.meta.get("val_scores_default_thresholds", {})
    print(f"saved {path}" + (f"  (val AP@0.5 {scores['ap50']:.3f})" if "ap50" in scores else ""))
    return 0


def cmd_demo(args) -> int:
    from ._sample_data import SAMPLE_PATH, SAMPLE_SOURCE
    from .batch import segment_files

    out = Path(args.output)
    print(f"sample: {SAMPLE_PATH.name} ({SAMPLE_SOURCE})")
    progress = _progress_printer()
    try:
        rows = segment_files([SAMPLE_PATH], out, model=args.model, device=args.device,
                             progress=progress)
    finally:
        _end_progress()
    r = rows[0]
    print(f"counted {r['count']} nuclei in {r['seconds']:.1f} s (diameter {r['diameter']} px)")
    print(f"labels: {out / r['labels']}")
    print(f"counts: {out / 'counts.csv'}")
    print(f"measurements: {out / r['measurements']}")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cellunet", description="Segment and count cells with a UNet.")
    p.add_argument("--version", action="version", version=f"napari-cellunet {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("segment", help="segment TIFF images or folders; write labels and counts.csv")
    s.add_argument("inputs", nargs="+", help="TIFF files or folders of TIFF files")
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument("--model", default=None, help="model name or path (default: bundled nuclei model)")
    s.add_argument("--diameter", default="auto", help="object diameter in pixels, or 'auto' (default)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    s.add_argument("--tile", type=int, default=256, help="tile size in pixels (memory bound)")
    s.add_argument("--tta", action="store_true", help="flip test-time augmentation (slower)")
    s.add_argument("--prob-threshold", type=float, default=None)
    s.add_argument("--seed-threshold", type=float, default=None,
                   help="interior probability (or distance output, 0-1) for seeds; higher = fewer splits")
    s.add_argument("--min-size", type=int, default=None, help="minimum object size in pixels (0 = auto)")
    s.add_argument("--min-brightness", type=float, default=None,
                   help="drop objects dimmer than this share of the image's bright objects, e.g. 0.4 for "
                        "cytoplasm halos around nuclei (0 = off)")
    s.add_argument("--merge-fragments", type=float, default=None,
                   help="merge objects smaller than this share of a typical object into the neighbour they "
                        "touch most (default 0.2; 0 = off)")
    s.add_argument("--join-weak-borders", type=float, default=None,
                   help="2D, models with a distance output: join touching objects whose shared border has a "
                        "mean boundary probability below this (a nucleus cut in two; default 0.65, higher = "
                        "more joining; 0 = off)")
    s.add_argument("--min-confidence", type=float, default=None,
                   help="drop objects whose interior probability never reaches this; objects at the image "
                        "edge need only 0.5 (default: the model's, 0.9 for nuclei-fluo-2d; 0 = off)")
    s.add_argument("--no-merge-over-time", action="store_true",
                   help="frames mode: keep objects split in one or two frames only apart (by default they are "
                        "re-joined when the frames before and after have one object there)")
    s.add_argument("--axes", default=None,
                   help="axes of the input, e.g. YX, ZYX, TYX, TZYX, CZYX (default: from file metadata)")
    s.add_argument("--mode", default="auto", choices=["auto", "3d", "frames", "slices"],
                   help="leading axis: 3d = z-stack of 3D objects, frames = time, slices = independent "
                        "(auto: 3d if there is a Z axis, else frames/slices)")
    s.add_argument("--channel", type=int, default=None, help="channel to segment (default 0)")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_segment)

    c = sub.add_parser("count", help="count objects in existing label images (per frame/slice)")
    c.add_argument("inputs", nargs="+", help="label TIFF files or folders")
    c.add_argument("-o", "--output", required=True, help="output folder for counts.csv")
    c.add_argument("--axes", default=None, help="axes of the labels, e.g. TZYX")
    c.add_argument("--mode", default="auto", choices=["auto", "3d", "frames", "slices"])
    c.set_defaults(func=cmd_count)

    t = sub.add_parser("train", help="train or fine-tune a model on image/label folders")
    t.add_argument("--images", required=True, action="append", help="image folder (repeat for more)")
    t.add_argument("--masks", required=True, action="append", help="mask folder, one per --images")
    t.add_argument("--val-images")
    t.add_argument("--val-masks")
    t.add_argument("--name", default="my-model", help="name in the user model folder")
    t.add_argument("--out", help="write the model file here instead of the user model folder")
    t.add_argument("--init", help="fine-tune from this model (name or path)")
    t.add_argument("--minutes", type=float, default=10.0)
    t.add_argument("--max-steps", type=int, default=1_000_000, help="stop after this many steps")
    t.add_argument("--diameter", type=float, default=16.0, help="canonical object diameter (0 = no rescaling)")
    t.add_argument("--base", type=int, default=16)
    t.add_argument("--depth", type=int, default=4)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--crop", type=int, default=256)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--val-every", type=int, default=200)
    t.add_argument("--invert-prob", type=float, default=0.0)
    t.add_argument("--invert", action="store_true",
                   help="dark objects on a light background (brightfield, H&E): train on the inverted image")
    t.add_argument("--classic-augment", action="store_true",
                   help="no brightness-field, halo, speckle or texture augmentation "
                        "(as stage 1 of the bundled model)")
    t.add_argument("--texture-prob", type=float,
                   help="share of crops given synthetic chromatin texture inside objects "
                        "(default 0.3; 0 = off, as stage 2)")
    t.add_argument("--noise-std", type=float, default=0.05,
                   help="largest Gaussian noise std (normalised intensities) added to half of the crops")
    t.add_argument("--noise-grain-prob", type=float, default=0.0,
                   help="share of the noisy crops whose noise is spatially correlated (as in zoomed-up images)")
    t.add_argument("--shot-noise-prob", type=float, default=0.0,
                   help="share of crops given Poisson (photon) noise at 3-100 photons (low-light images)")
    t.add_argument("--quantize-prob", type=float, default=0.0,
                   help="share of crops rounded to 4-64 grey levels (dim, low-bit-depth images)")
    t.add_argument("--object-gain-prob", type=float, default=0.0,
                   help="share of crops whose objects are dimmed one by one to 10-100%% (dim beside bright)")
    t.add_argument("--paste-prob", type=float, default=0.0,
                   help="share of crops given objects pasted from another crop (denser, mixed scenes)")
    t.add_argument("--defocus-prob", type=float, default=0.0,
                   help="share of crops where half of the objects are blurred (out of focus)")
    t.add_argument("--stretch", type=float, default=0.0,
                   help="stretch half of the crops along one axis by up to exp(+-this) (elongated nuclei)")
    t.add_argument("--contact-weight", type=float, default=4.0,
                   help="extra loss weight on gaps between touching objects (0 = off)")
    t.add_argument("--contact-band", type=int, default=1,
                   help="boundary width (px) where objects touch, in the training targets (1 = inner border)")
    t.add_argument("--ema", type=float, default=0.0,
                   help="keep an exponential moving average of the weights with this decay, e.g. 0.998 (0 = off)")
    t.add_argument("--dense-sampling", type=float, default=0.0,
                   help="draw crowded images more often: weight 1 + this x their share of touching-object pixels")
    t.add_argument("--distance", action="store_true",
                   help="add a distance-to-border output (seeds for touching objects come from it)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue from <out>.ckpt (written at each validation)")
    t.add_argument("--device", default="auto")
    t.add_argument("--workers", type=int, default=0,
                   help="processes preparing batches ahead (for a GPU; 0 = in the training loop)")
    t.add_argument("--no-tune", action="store_true",
                   help="keep the start model's thresholds (skip the grid search on val at the end)")
    t.add_argument("--description", default="")
    t.add_argument("--data-note", default="")
    t.add_argument("--license", default="")
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("models", help="list bundled and user models")
    m.set_defaults(func=cmd_models)

    d = sub.add_parser("demo", help="segment the bundled sample image and print the count")
    d.add_argument("-o", "--output", default="cellunet-demo", help="output folder")
    d.add_argument("--model", default=None)
    d.add_argument("--device", default="auto")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    from .inference import Cancelled
    from .models import ModelError

    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\ncellunet: cancelled", file=sys.stderr)
        return EXIT_CANCEL
    except Cancelled:
        print("cellunet: cancelled", file=sys.stderr)
        return EXIT_CANCEL
    except (CLIError, ModelError, FileNotFoundError, ValueError, OSError, MemoryError) as err:
        print(f"cellunet: error: {err}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
