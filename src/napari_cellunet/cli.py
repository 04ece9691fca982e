"""``cellunet`` command line: segment, count, train, models, export, demo.

Every setting flag comes from :mod:`napari_cellunet.settings` and is checked
where it enters (argparse names the option and its range; exit code 2). Every
expected failure (missing file, unreadable image, unsupported shape, corrupt
model) ends with a one-line ``cellunet: error: ...`` and exit code 1; Ctrl-C
exits with 130 — never a traceback (``--verbose`` prints it, and every failure
goes to the log file, see :mod:`napari_cellunet.log`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from . import __version__

EXIT_ERROR, EXIT_CANCEL = 1, 130


class _Output:
    """Where a command reports: progress bars and messages on stderr (or nothing with --quiet),
    results on stdout (as JSON with --json)."""

    def __init__(self, args) -> None:
        self.quiet, self.json = bool(getattr(args, "quiet", False)), bool(getattr(args, "json", False))
        self._bar = None
        self._what = None

    def progress(self, p) -> None:
        """A tqdm bar (rate, ETA) per stage; silent with --quiet or when stderr is not a terminal."""
        from .inference import Progress

        if self.quiet or not isinstance(p, Progress) or not sys.stderr.isatty():
            return
        from tqdm import tqdm

        stage = p.message.split("  ")[0][:40]
        if self._bar is None or self._what != (stage, p.total):
            self.close()
            self._bar, self._what = tqdm(total=p.total, desc=stage, unit="step", leave=False, file=sys.stderr), \
                (stage, p.total)
        self._bar.update(max(0, p.done - self._bar.n))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def log(self, message: str) -> None:
        if not self.quiet:
            self.close()
            print(message, file=sys.stderr)

    def result(self, text: str, data: dict) -> None:
        self.close()
        print(json.dumps(data, default=str) if self.json else text)


# --------------------------------------------------------------------------- commands
def cmd_models(args) -> int:
    from .models import list_models, read_model_file

    if args.action == "add":
        from .export import import_bioimageio

        path = import_bioimageio(Path(args.package), name=args.name, overwrite=args.overwrite)
        print(f"added model {path.stem!r} ({path}); it is offered by `cellunet segment --model` and the widget")
        return 0
    entries = list_models()
    if not entries:
        print("no models found")
    for e in entries:
        try:
            meta = read_model_file(e.path).get("meta", {})
            scores = meta.get("val_scores_tuned_thresholds") or meta.get("val_scores_default_thresholds") or {}
            ap50 = scores.get("ap50")
            ap = f"  val AP@0.5 {ap50:.3f}" if ap50 else ""
            d = f"  diameter {meta['diameter']:.0f}px" if meta.get("diameter") else ""
            print(f"{e.name:<28} {e.source:<8}{d}{ap}  {e.path}")
        except Exception as err:  # a broken user file must not hide the others
            print(f"{e.name:<28} {e.source:<8} UNREADABLE ({err})")
    return 0


def cmd_segment(args) -> int:
    from .batch import BatchError, segment_files
    from .settings import InstanceParams, PredictOptions, from_args, given

    out = _Output(args)
    try:
        rows = segment_files([Path(p) for p in args.inputs], Path(args.output), model=args.model,
                             options=from_args(PredictOptions, args), thresholds=given(InstanceParams, args),
                             axes=args.axes, mode=args.mode, channel=args.channel, progress=out.progress,
                             log=out.log, client=args.scheduler or args.workers)
    except BatchError as err:
        out.close()
        print(f"cellunet: error: {err} (outputs of the other inputs are in {args.output})", file=sys.stderr)
        return EXIT_ERROR
    finally:
        out.close()
    total = sum(r["count"] for r in rows)
    out.result(f"{len(rows)} image(s), {total} objects; labels and counts.csv in {args.output}",
               {"images": len(rows), "objects": total, "output": str(args.output), "files": rows})
    return 0


def cmd_count(args) -> int:
    from .batch import count_files

    out = _Output(args)
    rows = count_files([Path(p) for p in args.inputs], Path(args.output), axes=args.axes, mode=args.mode, log=out.log)
    total = sum(r["count"] for r in rows)
    out.result(f"{len(rows)} count(s), {total} objects in all; counts.csv in {args.output}",
               {"counts": rows, "objects": total, "output": str(args.output)})
    return 0


CLASSIC_AUGMENT = {"field_prob": 0.0, "halo_prob": 0.0, "speckle_prob": 0.0, "texture_prob": 0.0}


def cmd_train(args) -> int:
    from .inference import drive
    from .models import load_model, save_user_model, user_model_path
    from .settings import AugmentConfig, TrainConfig, from_args
    from .training import TrainState, iter_train, load_folder_pairs

    if len(args.images) != len(args.masks):
        raise ValueError("give one --masks folder per --images folder")
    out = Path(args.out) if args.out else None
    if out is None:
        user_model_path(args.name)  # a bad or bundled name fails now, not after the training
    train = [p for i, m in zip(args.images, args.masks) for p in load_folder_pairs(i, m)]
    if args.val_images:
        val = load_folder_pairs(args.val_images, args.val_masks or args.val_images)
    else:
        n_val = max(1, len(train) // 10) if len(train) > 1 else 0
        val, train = train[:n_val], train[n_val:]
    init = load_model(args.init) if args.init else None
    augment = from_args(AugmentConfig, args, AugmentConfig(**(CLASSIC_AUGMENT if args.classic_augment else {})))
    cfg = from_args(TrainConfig, args, augment=augment)
    tmp_out = out or Path(f"{args.name}.safetensors")
    meta = {"name": args.name or tmp_out.stem, "description": args.description,
            "training_data": args.data_note or f"{', '.join(args.images)} ({len(train)} images)",
            "training_command": "cellunet " + shlex.join(args.argv), "license": args.license}
    print(f"training on {len(train)} images, validating on {len(val)}, for {cfg.minutes} min", file=sys.stderr)
    last = {"t": 0.0}

    def report(msg) -> None:
        if isinstance(msg, TrainState) and msg.val_ap50 is not None:
            print(f"step {msg.step}: loss {msg.loss:.3f}  val AP@0.5 {msg.val_ap50:.3f}  (best {msg.best_ap50:.3f})",
                  file=sys.stderr, flush=True)
        elif isinstance(msg, TrainState) and time.monotonic() - last["t"] > 30:
            last["t"] = time.monotonic()
            print(f"step {msg.step}: loss {msg.loss:.3f}", file=sys.stderr, flush=True)

    model = drive(iter_train([(i, m) for _, i, m in train], [(i, m) for _, i, m in val], tmp_out, cfg, init=init,
                             meta=meta, resume=args.resume), report)
    if out is None:
        path = save_user_model(args.name, model.net, model.meta)
        tmp_out.unlink(missing_ok=True)
    else:
        path = out
    scores = model.meta.get("val_scores_default_thresholds", {})
    print(f"saved {path}" + (f"  (val AP@0.5 {scores['ap50']:.3f})" if "ap50" in scores else ""))
    return 0


def cmd_export(args) -> int:
    from . import export
    from .models import load_model

    model = load_model(args.model)
    out = Path(args.output)
    if args.format == "bioimageio":
        path = export.export_bioimageio(model, out)
    elif args.format == "onnx":
        path = export.export_onnx(model, out / f"{model.name}.onnx" if out.suffix != ".onnx" else out)
        print(f"ONNX vs torch: max abs difference {export.check_onnx(model, path):.2e}", file=sys.stderr)
    else:
        path = export.export_torchscript(model, out / f"{model.name}.torchscript.pt" if out.suffix != ".pt" else out)
    print(f"exported {model.name} as {args.format}: {path}")
    return 0


def cmd_demo(args) -> int:
    from ._napari.samples import SAMPLE_PATH, SAMPLE_SOURCE
    from .batch import segment_files
    from .settings import PredictOptions

    out, report = Path(args.output), _Output(args)
    print(f"sample: {SAMPLE_PATH.name} ({SAMPLE_SOURCE})")
    try:
        rows = segment_files([SAMPLE_PATH], out, model=args.model, options=PredictOptions(device=args.device),
                             progress=report.progress)
    finally:
        report.close()
    r = rows[0]
    print(f"counted {r['count']} nuclei in {r['seconds']:.1f} s (diameter {r['diameter']} px)")
    print(f"labels: {out / r['labels']}")
    print(f"counts: {out / 'counts.csv'}")
    print(f"measurements: {out / r['measurements']}")
    return 0


# --------------------------------------------------------------------------- parser
def _channel(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a channel index (0, 1, ...), got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of workers (1, 2, ...), got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cellunet", description="Segment and count cells with a UNet "
                                "(napari-cellunet; not the unrelated PyPI package 'cellunet').")
    p.add_argument("--version", action="version", version=f"napari-cellunet {__version__}")
    p.add_argument("--verbose", action="store_true", help="print the log (and tracebacks of failures) to stderr")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_segment_parser, _count_parser, _train_parser, _models_parser, _export_parser, _demo_parser):
        add(sub)
    return p


def _segment_parser(sub) -> None:
    from .settings import InstanceParams, PredictOptions, add_arguments

    s = sub.add_parser("segment", help="segment TIFF images or folders; write labels and counts.csv")
    s.add_argument("inputs", nargs="+", help="TIFF files, .zarr / .ome.zarr stores, or folders of them")
    s.add_argument("-o", "--output", required=True, help="output folder (counts.csv there is merged by file)")
    s.add_argument("--model", default=None, help="model name or path (default: the bundled nuclei model)")
    add_arguments(s.add_argument_group("network"), PredictOptions)
    add_arguments(s.add_argument_group("post-processing (default: the model's)"), InstanceParams, keep_none=True,
                  none_means="the model's")
    s.add_argument("--axes", default=None,
                   help="axes of the input, e.g. YX, ZYX, TYX, TZYX, CZYX (default: from file metadata)")
    s.add_argument("--mode", default="auto", choices=["auto", "3d", "frames", "slices"],
                   help="leading axis: 3d = z-stack of 3D objects, frames = time, slices = independent "
                        "(auto: 3d if there is a Z axis, else frames/slices)")
    s.add_argument("--channel", type=_channel, default=None, help="channel to segment (default 0)")
    engine = s.add_argument_group("big images (segmented in blocks; .zarr inputs always)")
    engine.add_argument("--workers", type=_count, default=None,
                        help="run the blocks on a dask.distributed LocalCluster of this many workers")
    engine.add_argument("--scheduler", default=None,
                        help="run the blocks on an existing dask.distributed cluster (scheduler address)")
    _output_flags(s)
    s.set_defaults(func=cmd_segment)


def _output_flags(parser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-file messages")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")


def _count_parser(sub) -> None:
    c = sub.add_parser("count", help="count objects in existing label images or binary masks (per frame/slice)")
    c.add_argument("inputs", nargs="+", help="label TIFF files or folders")
    c.add_argument("-o", "--output", required=True, help="output folder for counts.csv (merged by file)")
    c.add_argument("--axes", default=None, help="axes of the labels, e.g. TZYX")
    c.add_argument("--mode", default="auto", choices=["auto", "3d", "frames", "slices"])
    _output_flags(c)
    c.set_defaults(func=cmd_count)


def _train_parser(sub) -> None:
    from .settings import AugmentConfig, TrainConfig, add_arguments

    t = sub.add_parser("train", help="train or fine-tune a model on image/label folders")
    t.add_argument("--images", required=True, action="append", help="image folder (repeat for more)")
    t.add_argument("--masks", required=True, action="append", help="mask folder, one per --images")
    t.add_argument("--val-images")
    t.add_argument("--val-masks")
    t.add_argument("--name", default="my-model", help="name in the user model folder")
    t.add_argument("--out", help="write the model file here instead of the user model folder")
    t.add_argument("--init", help="fine-tune from this model (name or path)")
    t.add_argument("--resume", action="store_true", help="continue from <out>.ckpt (written at each validation)")
    add_arguments(t.add_argument_group("training"), TrainConfig)
    add_arguments(t.add_argument_group("augmentation"), AugmentConfig, keep_none=True)
    t.add_argument("--classic-augment", action="store_true",
                   help="no brightness-field, halo, speckle or texture augmentation (as stage 1 of the bundled "
                        "model; explicit flags still apply)")
    t.add_argument("--description", default="")
    t.add_argument("--data-note", default="")
    t.add_argument("--license", default="")
    t.set_defaults(func=cmd_train)


def _models_parser(sub) -> None:
    m = sub.add_parser("models", help="list bundled and user models, or add a bioimage.io package")
    m.add_argument("action", nargs="?", choices=["list", "add"], default="list")
    m.add_argument("package", nargs="?", help="with add: a bioimage.io package (.zip or folder) exported by "
                                              "napari-cellunet")
    m.add_argument("--name", default=None, help="with add: the name to give the model")
    m.add_argument("--overwrite", action="store_true", help="with add: replace a user model of that name")
    m.set_defaults(func=cmd_models)


def _export_parser(sub) -> None:
    e = sub.add_parser("export", help="export a model for other tools (bioimage.io, ONNX, TorchScript)")
    e.add_argument("model", help="model name or path")
    e.add_argument("-o", "--output", required=True, help="output folder (or file for onnx/torchscript)")
    e.add_argument("--format", default="bioimageio", choices=["bioimageio", "onnx", "torchscript"])
    e.set_defaults(func=cmd_export)


def _demo_parser(sub) -> None:
    d = sub.add_parser("demo", help="segment the bundled sample image and print the count")
    d.add_argument("-o", "--output", default="cellunet-demo", help="output folder")
    d.add_argument("--model", default=None)
    d.add_argument("--device", default="auto")
    d.set_defaults(func=cmd_demo)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # also while the heavy libraries are still importing
        print("\ncellunet: cancelled", file=sys.stderr)
        return EXIT_CANCEL


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "models" and args.action == "add" and not args.package:
        print("cellunet: error: models add needs a package (.zip or folder)", file=sys.stderr)
        return 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from . import log
    from .inference import Cancelled
    from .models import ModelError

    if args.verbose:
        log.verbose()
    log.info("cellunet " + shlex.join(args.argv))
    try:
        return int(args.func(args) or 0)
    except Cancelled:
        print("cellunet: cancelled", file=sys.stderr)
        return EXIT_CANCEL
    except (ModelError, FileNotFoundError, ValueError, OSError, MemoryError) as err:
        message = log.failure(f"{args.command} failed", err)
        print(f"cellunet: error: {message.split(': ', 1)[1]}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
