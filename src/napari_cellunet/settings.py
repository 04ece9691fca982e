"""Every user-facing setting, declared once.

Each field of these dataclasses carries its label, allowed range, step, help
and group in ``field(metadata=...)`` (:func:`setting`). The CLI flags
(:func:`add_arguments`), the napari widget rows (``_napari.forms``) and the
layer/CSV metadata (``to_dict``) are all made from them, and ``__post_init__``
checks every value where it enters (:class:`SettingError` names the setting and
its allowed range). Adding a post-processing threshold = one field here + its use.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

AUTO = "auto"
GROUPS = ("network", "post-processing", "advanced")


class SettingError(ValueError):
    """A setting is out of its allowed range; ``str()`` names it, ``requirement`` says what is allowed."""

    def __init__(self, where: str, requirement: str) -> None:
        super().__init__(f"{where} {requirement}")
        self.requirement = requirement


@dataclass(frozen=True)
class Spec:
    """How a setting is shown, parsed and checked."""

    label: str
    help: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple | None = None
    group: str = "advanced"
    cli: bool = True          # a command-line flag
    widget: bool = True       # a widget row
    flag: str | None = None   # CLI flag when it is not --field-name
    zero: str | None = None   # what 0 means, e.g. "auto" or "off" (shown by widgets and help)


def setting(default: Any, label: str, help: str, **spec: Any) -> Any:
    """A dataclass field with its :class:`Spec` (``default_factory`` for lists and tuples is not needed)."""
    return field(default=default, metadata={"spec": Spec(label, help, **spec)})


def specs(cls) -> dict[str, Spec]:
    """``{field name: Spec}`` of a settings dataclass, in declaration order."""
    return {f.name: f.metadata["spec"] for f in fields(cls) if "spec" in f.metadata}


def default_of(cls, name: str) -> Any:
    f = next(f for f in fields(cls) if f.name == name)
    return f.default_factory() if f.default is MISSING else f.default


def _number(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() and abs(x) >= 1000 else f"{x:g}"


def _range_text(s: Spec) -> str:
    if s.choices:
        return "one of " + ", ".join(map(str, s.choices))
    return f"between {_number(s.low)} and {_number(s.high)}" + (f" (0 = {s.zero})" if s.zero else "")


def check_value(cls, name: str, value: Any) -> Any:
    """``value`` converted to the field's type and checked against its range; raises :class:`SettingError`."""
    s = specs(cls)[name]
    default = default_of(cls, name)
    where = f"{s.label} ({name})"
    if s.choices:
        if value not in s.choices:
            raise SettingError(where, f"must be {_range_text(s)}, got {value!r}")
        return value
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            raise SettingError(where, f"must be true or false, got {value!r}")
        return bool(value)
    if s.low is None:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingError(where, f"must be a number {_range_text(s)}, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or not s.low <= number <= s.high:
        raise SettingError(where, f"must be {_range_text(s)}, got {value!r}")
    if isinstance(default, int):
        if number != int(number):
            raise SettingError(where, f"must be a whole number {_range_text(s)}, got {value!r}")
        return int(number)
    return number


class Settings:
    """Mixin: checks every field on creation; dict round trip for model files and layer metadata."""

    def __post_init__(self) -> None:
        for name in specs(type(self)):
            object.__setattr__(self, name, check_value(type(self), name, getattr(self, name)))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples -> lists (model files take plain types)

    @classmethod
    def from_dict(cls, d: dict | None):
        """Known keys of ``d`` (others ignored, as model files from other versions may have them)."""
        d = d or {}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()
                      if k in {f.name for f in fields(cls)}})

    def replace(self, **changes):
        return replace(self, **changes)


# --------------------------------------------------------------------------- post-processing
@dataclass
class InstanceParams(Settings):
    """Probabilities -> labels thresholds (a model file stores its own defaults)."""

    prob_threshold: float = setting(
        0.5, "prob threshold", "foreground = 1 - p(background) above this; lower = bigger objects",
        low=0.01, high=0.99, step=0.05, group="post-processing")
    seed_threshold: float = setting(
        0.5, "seed threshold", "interior probability (or predicted distance to the border, for models with a "
        "distance output) that seeds an object; higher = fewer splits",
        low=0.01, high=0.99, step=0.05, group="post-processing")
    min_size: int = setting(
        10, "min size (px)", "drop objects smaller than this many pixels (voxels); 0 = auto, 10% of a typical object",
        low=0, high=10_000_000, step=5, zero="auto", group="post-processing")
    min_seed_size: int = setting(
        3, "min seed size (px)", "ignore seed components smaller than this", low=1, high=10_000, cli=False,
        widget=False)
    split_touching: bool = setting(
        True, "split touching", "split seed components at distance-transform peaks (needs a diameter)",
        cli=False, widget=False)
    min_brightness: float = setting(
        0.0, "min brightness", "drop objects dimmer than this share of the image's bright objects (cytoplasm, "
        "debris, e.g. 0.4); 0 = off", low=0.0, high=0.95, step=0.05, zero="off", group="post-processing")
    merge_fragments: float = setting(
        0.2, "merge fragments", "merge objects smaller than this share of a typical object into the neighbour "
        "they touch most (textured nuclei cut in pieces); 0 = off",
        low=0.0, high=0.95, step=0.05, zero="off", group="post-processing")
    min_confidence: float = setting(
        0.0, "min confidence", "drop objects whose interior probability never reaches this (objects at the image "
        "edge need only 0.5); 0 = off", low=0.0, high=0.99, step=0.05, zero="off", group="post-processing")
    merge_over_time: bool = setting(
        True, "re-join short splits (time-lapse)", "frames mode: re-join an object split in one or two frames "
        "only, when the frames before and after have one object there", group="post-processing")
    join_weak_borders: float = setting(
        0.65, "join weak borders", "2D, models with a distance output: join touching objects whose shared border "
        "has a mean boundary probability below this (a nucleus cut in two); higher = more joining; 0 = off",
        low=0.0, high=0.95, step=0.05, zero="off", group="post-processing")


# --------------------------------------------------------------------------- network
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "openvino")
MAX_DIAMETER = 2000.0


@dataclass
class PredictOptions(Settings):
    """How the network runs (not the post-processing)."""

    diameter: float | str | None = setting(
        AUTO, "diameter (px)", "typical object diameter in pixels, 'auto' (estimate it) or 'none' (use the "
        "image as is); 0 = auto", low=0.0, high=MAX_DIAMETER, step=1, zero="auto", group="network")
    tile: int = setting(1024, "tile size", "largest network input tile in pixels (tiles shrink to fit the image "
                        "evenly; 3D: at most 256); larger computes fewer overlaps but needs more memory",
                        low=32, high=4096, step=64)
    overlap: float = setting(0.0625, "tile overlap", "share of the tile size shared with a neighbouring tile "
                             "(0.0625 of 1024 = 64 px of context)", low=0.0, high=0.75, step=0.005)
    batch_size: int = setting(4, "batch size", "tiles per network call", low=1, high=1024, step=1)
    device: str = setting("auto", "device", "auto, cpu, cuda, mps (auto = the fastest there is)")
    precision: str = setting("auto", "precision", "arithmetic of the network (auto = bf16 where the CPU/GPU "
                             "has it)", choices=PRECISIONS)
    backend: str = setting("auto", "backend", "what runs the network: torch, or OpenVINO (CPU, optional install, "
                           "~1.7x faster here); auto = OpenVINO on the CPU when installed", choices=BACKENDS)
    tta: bool = setting(False, "test-time augmentation (flips, slower)", "average the network over flips")
    chunk: int = setting(0, "block size (px)", "segment in blocks of this many pixels per side, stitched (bounded "
                         "memory, same labels); 0 = only images over 32 MP or lazy ones, in 2048-px blocks",
                         low=0, high=65536, step=256, zero="auto")
    normalize_group: int = setting(1, "normalise together", "consecutive slices normalised together (a z-stack)",
                                   low=1, high=1_000_000, cli=False, widget=False)

    def __post_init__(self) -> None:
        d = self.diameter
        if isinstance(d, str):
            word = d.strip().lower()
            d = AUTO if word == AUTO else None if word == "none" else d
        if d is not None and d != AUTO:
            d = check_value(PredictOptions, "diameter", d)
            d = AUTO if d == 0 else d
        self.diameter = d
        for name in specs(PredictOptions):
            if name != "diameter":
                setattr(self, name, check_value(PredictOptions, name, getattr(self, name)))


# --------------------------------------------------------------------------- training
@dataclass
class AugmentConfig(Settings):
    """Random crops and augmentations of training batches (every range in one place)."""

    crop: int | tuple = setting(256, "crop size", "training crop size in pixels (one per axis for 3D)",
                                low=16, high=2048, widget=False)
    scale_range: tuple = setting((0.6, 1.6), "zoom", "random zoom of crops", cli=False, widget=False)
    gamma_range: tuple = setting((0.6, 1.6), "gamma", "random gamma (80% of crops)", cli=False, widget=False)
    contrast_range: tuple = setting((0.7, 1.3), "contrast", "random gain (80% of crops)", cli=False, widget=False)
    offset_range: tuple = setting((-0.1, 0.1), "offset", "random offset with that gain", cli=False, widget=False)
    noise_std: float = setting(0.05, "noise", "largest Gaussian noise std (normalised intensities) added to half "
                               "of the crops", low=0.0, high=1.0, widget=False)
    noise_grain_prob: float = setting(0.0, "grainy noise", "share of the noisy crops whose noise is spatially "
                                      "correlated (as in zoomed-up images)", low=0.0, high=1.0, widget=False)
    grain_sigma: tuple = setting((0.5, 1.5), "grain", "blur of grainy noise (px)", cli=False, widget=False)
    shot_noise_prob: float = setting(0.0, "photon noise", "share of crops given Poisson (photon) noise "
                                     "(low-light images)", low=0.0, high=1.0, widget=False)
    photon_range: tuple = setting((3.0, 100.0), "photons", "photons at intensity 1 (log-uniform)", cli=False,
                                  widget=False)
    quantize_prob: float = setting(0.0, "grey levels", "share of crops rounded to few grey levels (dim, "
                                   "low-bit-depth images)", low=0.0, high=1.0, widget=False)
    grey_levels: tuple = setting((4.0, 64.0), "levels", "grey levels of those crops (log-uniform)", cli=False,
                                 widget=False)
    blur_prob: float = setting(0.2, "blur", "share of crops blurred", low=0.0, high=1.0, widget=False)
    blur_sigma: tuple = setting((0.5, 1.5), "blur sigma", "their blur (px)", cli=False, widget=False)
    invert_prob: float = setting(0.0, "invert", "share of crops inverted (1 - x)", low=0.0, high=1.0, widget=False)
    field_prob: float = setting(0.3, "brightness field", "share of crops multiplied by a smooth brightness "
                                "field (dim objects)", low=0.0, high=1.0, widget=False)
    field_low: float = setting(0.25, "field low", "darkest factor of that field", low=0.0, high=1.0, cli=False,
                               widget=False)
    halo_prob: float = setting(0.25, "halos", "share of crops given dim textured 'cytoplasm' rims (labelled "
                               "background)", low=0.0, high=1.0, widget=False)
    halo_reach: tuple = setting((3.0, 12.0), "halo reach", "their width (px)", cli=False, widget=False)
    halo_level: tuple = setting((0.1, 0.4), "halo level", "their brightness (share of the objects')", cli=False,
                                widget=False)
    speckle_prob: float = setting(0.25, "speckles", "share of crops given dark nucleoli-like spots inside "
                                  "objects", low=0.0, high=1.0, widget=False)
    speckle_depth: tuple = setting((0.4, 0.8), "speckle depth", "how dark those spots are", cli=False,
                                   widget=False)
    texture_prob: float = setting(0.3, "texture", "share of crops given uneven chromatin inside objects "
                                  "(0 = off, as stage 2)", low=0.0, high=1.0, widget=False)
    texture_sigma: tuple = setting((1.0, 3.0), "texture sigma", "size of the chromatin blotches (px)", cli=False,
                                   widget=False)
    texture_amplitude: tuple = setting((0.2, 0.5), "texture amplitude", "their contrast", cli=False,
                                       widget=False)
    chromocentre_level: tuple = setting((0.5, 1.5), "chromocentres", "brightness of chromocentre spots (half of "
                                        "the textured crops)", cli=False, widget=False)
    object_gain_prob: float = setting(0.0, "dim objects", "share of crops whose objects are dimmed one by one "
                                      "(dim nuclei beside bright ones)", low=0.0, high=1.0, widget=False)
    object_gain_range: tuple = setting((0.1, 1.0), "object gain", "brightness factor of a dimmed object "
                                       "(log-uniform; half of the objects)", cli=False, widget=False)
    paste_prob: float = setting(0.0, "copy-paste", "share of crops given objects pasted from another crop "
                                "(denser, mixed scenes)", low=0.0, high=1.0, widget=False)
    paste_contrast: tuple = setting((0.5, 1.5), "paste contrast", "brightness of pasted objects relative to the "
                                    "crop's", cli=False, widget=False)
    defocus_prob: float = setting(0.0, "defocus", "share of crops where half of the objects are blurred (out "
                                  "of focus)", low=0.0, high=1.0, widget=False)
    defocus_sigma: tuple = setting((1.5, 3.5), "defocus sigma", "their blur (px)", cli=False, widget=False)
    stretch: float = setting(0.0, "stretch", "stretch half of the crops along one axis by up to exp(±this) "
                             "(elongated nuclei)", low=0.0, high=1.0, widget=False)

    def __post_init__(self) -> None:
        crop = self.crop
        sizes = [crop] if isinstance(crop, (int, float, str)) else list(crop)
        checked = [check_value(AugmentConfig, "crop", c) for c in sizes]
        self.crop = checked[0] if isinstance(crop, (int, float, str)) else tuple(checked)
        for name in specs(AugmentConfig):
            if name != "crop":
                setattr(self, name, check_value(AugmentConfig, name, getattr(self, name)))


@dataclass
class TrainConfig(Settings):
    """How a model is trained or fine-tuned."""

    dims: int = setting(2, "dimensions", "2 = 2D UNet on images, 3 = 3D UNet on volumes", low=2, high=3,
                        cli=False, widget=False)
    diameter: float | None = setting(16.0, "canonical diameter", "object diameter (px) images are rescaled to; "
                                     "0 = no rescaling", low=0.0, high=MAX_DIAMETER, zero="no rescaling",
                                     widget=False)
    depth: int = setting(4, "depth", "UNet levels", low=1, high=7, widget=False)
    base_channels: int = setting(16, "base channels", "channels of the first level", low=1, high=512,
                                 flag="--base", widget=False)
    up_mode: str = setting("transpose", "up-sampling", "transposed convolutions or interpolation",
                           choices=("transpose", "interpolate"), cli=False, widget=False)
    norm: str = setting("batch", "normalisation", "normalisation layers",
                        choices=("batch", "instance", "group", "none"), cli=False, widget=False)
    batch_size: int = setting(8, "batch size", "crops per step", low=1, high=4096, widget=False)
    lr: float = setting(2e-3, "learning rate", "peak learning rate (cosine decay over the time budget)",
                        low=1e-7, high=1.0, widget=False)
    weight_decay: float = setting(1e-4, "weight decay", "AdamW weight decay", low=0.0, high=1.0, cli=False,
                                  widget=False)
    minutes: float = setting(10.0, "time budget (min)", "wall-clock budget in minutes", low=0.05, high=100_000,
                             step=1)
    max_steps: int = setting(1_000_000, "max steps", "stop after this many steps", low=0, high=10**9,
                             widget=False)
    val_every: int = setting(200, "validate every", "steps between validations", low=1, high=10**9, widget=False)
    class_weights: tuple = setting((1.0, 1.0, 2.0), "class weights", "background, interior, boundary",
                                   cli=False, widget=False)
    contact_weight: float = setting(4.0, "contact weight", "extra loss weight on gaps between touching objects "
                                    "(0 = off)", low=0.0, high=1000.0, widget=False)
    contact_band: int = setting(1, "contact band", "boundary width (px) where objects touch, in the training "
                                "targets (1 = inner border)", low=1, high=20, widget=False)
    ema: float = setting(0.0, "weight average", "keep an exponential moving average of the weights with this "
                         "decay, e.g. 0.998 (0 = off)", low=0.0, high=0.99999, widget=False)
    dense_sampling: float = setting(0.0, "dense sampling", "draw crowded images more often: weight 1 + this × "
                                    "their share of touching-object pixels", low=0.0, high=1000.0, widget=False)
    distance: bool = setting(False, "distance output", "add a distance-to-border output (seeds for touching "
                             "objects come from it)", widget=False)
    invert: bool | None = setting(None, "invert", "dark objects on a light background (brightfield, H&E): "
                                  "train on the inverted image (default: as the start model)", widget=False)
    precision: str = setting("auto", "precision", "bf16 autocast where supported", choices=PRECISIONS,
                             cli=False, widget=False)
    device: str = setting("auto", "device", "auto, cpu, cuda, mps", widget=False)
    workers: int = setting(0, "loader workers", "processes preparing batches ahead (for a GPU; 0 = in the "
                           "training loop)", low=0, high=256, widget=False)
    tune: bool = setting(True, "tune thresholds", "grid-search the post-processing thresholds on the validation "
                         "images at the end (--no-tune keeps the start model's)", widget=False)
    seed: int = setting(0, "seed", "random seed", low=0, high=2**32 - 1, widget=False)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig.from_dict(self.augment)
        if self.invert not in (None, True, False):
            raise SettingError("invert (invert)", f"must be true, false or none, got {self.invert!r}")
        for name in specs(TrainConfig):
            if name not in ("invert", "diameter") or (name == "diameter" and self.diameter is not None):
                setattr(self, name, check_value(TrainConfig, name, getattr(self, name)))
        if not self.diameter:
            self.diameter = None


FINE_TUNE_IN_NAPARI = {"minutes": 5.0, "batch_size": 4, "val_every": 50, "lr": 5e-4}  # the Train widget's run


# --------------------------------------------------------------------------- command line
def _flag(name: str, s: Spec) -> str:
    return s.flag or "--" + name.replace("_", "-")


def _arg_type(cls, name: str):
    """argparse ``type``: the value checked where it enters ("argument --x: must be between ...")."""
    def parse(text: str):
        word = text.strip().lower()
        if name == "diameter" and word in (AUTO, "none"):
            return word
        try:
            return check_value(cls, name, float(text) if word not in ("nan", "inf", "-inf") else text)
        except ValueError as err:
            requirement = getattr(err, "requirement", f"must be a number {_range_text(specs(cls)[name])}")
            raise argparse.ArgumentTypeError(f"{requirement.split(', got ')[0]}, got {text!r}") from None
    return parse


def add_arguments(parser, cls, *, keep_none: bool = False, none_means: str | None = None,
                  names: Iterable[str] | None = None) -> None:
    """One flag per CLI setting of ``cls`` (into ``parser``, an argparse parser or group).

    ``keep_none``: every default is None (= keep the base object's value, see
    :func:`from_args`); the help then shows ``none_means`` (e.g. "the model's")
    or the dataclass default.
    """
    chosen = set(names) if names is not None else None
    for name, s in specs(cls).items():
        if not s.cli or (chosen is not None and name not in chosen):
            continue
        default = None if keep_none else default_of(cls, name)
        fallback = default_of(cls, name)
        shown = none_means if keep_none and none_means else ("none" if fallback is None else fallback)
        text = f"{s.help} (default: {shown})".replace("%", "%%")
        if isinstance(default_of(cls, name), bool) or name == "invert":
            parser.add_argument(_flag(name, s), dest=name, action=argparse.BooleanOptionalAction,
                                default=default, help=text)
        elif s.choices:
            parser.add_argument(_flag(name, s), dest=name, choices=s.choices, default=default, help=text)
        else:
            kind = "" if s.low is None else f"; {_range_text(s)}"
            parser.add_argument(_flag(name, s), dest=name, type=_arg_type(cls, name) if s.low is not None else str,
                                default=default, help=text.replace(" (default", kind + " (default", 1))


def given(cls, args: argparse.Namespace) -> dict[str, Any]:
    """The CLI settings of ``cls`` that ``args`` sets (not None)."""
    return {name: getattr(args, name) for name, s in specs(cls).items()
            if s.cli and getattr(args, name, None) is not None}


def from_args(cls, args: argparse.Namespace, base=None, **extra):
    """``base`` (or the defaults) with every CLI setting of ``cls`` that ``args`` gives (None = keep)."""
    return replace(base if base is not None else cls(), **given(cls, args), **extra)
