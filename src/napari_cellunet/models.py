"""Model files: architecture + metadata + weights in one file, loaded safely.

A model file is a `safetensors <https://github.com/huggingface/safetensors>`_
file: the weights as raw tensors and, in its header, JSON text::

    {"format": "napari-cellunet/model", "format_version": "2",
     "config": "{UNetConfig fields}", "meta": "{...}"}

Reading it parses JSON and copies tensors, nothing else, so a model file can
never run code, whatever the torch version. Files of format 1 (a ``torch.save``
of the same dict, written by napari-cellunet 0.1) are still read, with
``torch.load(weights_only=True)`` on torch >= 2.10 (the package's floor; the
known bypasses of that loader were fixed in 2.6 and 2.10).

``meta`` holds what inference needs beside the weights (object diameter the
model was trained at, normalisation percentiles, default thresholds) and what a
person needs to trust it (training data, command, scores).

Models are found by name in the package's bundled folder and in the user model
folder (``$CELLUNET_MODEL_DIR`` or the platform's user data dir), or by path.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from .settings import InstanceParams, SettingError
from .unet import UNet, UNetConfig

FORMAT = "napari-cellunet/model"
FORMAT_VERSION = 2
SUFFIX = ".safetensors"
LEGACY_SUFFIX = ".pt"  # format 1 (torch.save), still read
DEFAULT_MODEL = "nuclei-fluo-2d"


class ModelError(Exception):
    """A model could not be found or read (missing, corrupt or foreign file)."""


@dataclass
class CellModel:
    """A loaded network with its metadata."""

    name: str
    net: UNet
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def config(self) -> UNetConfig:
        return self.net.config

    @property
    def diameter(self) -> float | None:
        """Typical object diameter (pixels) the model was trained at, if known."""
        d = self.meta.get("diameter")
        return float(d) if d else None

    @property
    def normalization(self) -> tuple[float, float]:
        n = self.meta.get("normalization", {})
        return float(n.get("low", 1.0)), float(n.get("high", 99.8))

    @property
    def invert(self) -> bool:
        """Dark objects on a light background: the normalised image is inverted (1 - x)."""
        return bool(self.meta.get("invert", False))

    @property
    def instance_params(self) -> InstanceParams:
        return InstanceParams.from_dict(self.meta.get("instance_params"))


# --------------------------------------------------------------------------- folders
def bundled_dir() -> Path:
    return Path(str(resources.files("napari_cellunet") / "models"))


def user_dir() -> Path:
    env = os.environ.get("CELLUNET_MODEL_DIR")
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-cellunet")) / "models"


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.")
    if not cleaned:
        raise ModelError(f"invalid model name {name!r}")
    return cleaned


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    source: str  # "bundled" or "user"


def list_models() -> list[ModelEntry]:
    """Bundled models first, then the user's (a user model never shadows a bundled one)."""
    entries: list[ModelEntry] = []
    seen: set[str] = set()
    for source, folder in (("bundled", bundled_dir()), ("user", user_dir())):
        if not folder.is_dir():
            continue
        for p in sorted([*folder.glob(f"*{SUFFIX}"), *folder.glob(f"*{LEGACY_SUFFIX}")]):
            if p.stem not in seen:
                seen.add(p.stem)
                entries.append(ModelEntry(p.stem, p, source))
    return entries


def model_names() -> list[str]:
    return [e.name for e in list_models()]


def resolve(name_or_path: str | os.PathLike) -> Path:
    """Path of a model given by name (bundled or user) or by file path."""
    s = str(name_or_path)
    for e in list_models():
        if e.name == s:
            return e.path
    p = Path(s).expanduser()
    if p.is_file():
        return p
    known = ", ".join(model_names()) or "none"
    raise ModelError(f"model {s!r} not found (known models: {known}; or give a path to a {SUFFIX} file)")


# --------------------------------------------------------------------------- save / load
def _plain(value):
    """numpy scalars and tuples in metadata -> JSON types."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    raise TypeError(f"model metadata must be JSON data, got {type(value).__name__}")


def save_model(path: str | os.PathLike, net: UNet, meta: dict | None = None) -> Path:
    """Write ``net`` and ``meta`` to ``path`` as a safetensors model file (fp32 CPU weights).

    Written to a temporary name and renamed, so an interrupted save never leaves a half-written model.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
              "config": json.dumps(net.config.to_dict()), "meta": json.dumps(dict(meta or {}), default=_plain)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, tmp, metadata=header)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600; a model file is as readable as any other file
    os.replace(tmp, path)
    return path


def user_model_path(name: str) -> Path:
    """Where a user model called ``name`` is stored (refuses bundled names and empty names)."""
    safe = _safe_name(name)
    if any((bundled_dir() / f"{safe}{suffix}").exists() for suffix in (SUFFIX, LEGACY_SUFFIX)):
        raise ModelError(f"{safe!r} is a bundled model name; choose another name")
    return user_dir() / f"{safe}{SUFFIX}"


def save_user_model(name: str, net: UNet, meta: dict | None = None) -> Path:
    """Save into the user model folder under ``name`` (refuses bundled names)."""
    path = user_model_path(name)
    path = save_model(path, net, dict(meta or {}, name=path.stem))
    notify_models_changed()
    return path


_listeners: list = []


def on_models_changed(callback) -> None:
    """Call ``callback()`` whenever a user model is saved (bound methods are held weakly)."""
    import weakref

    ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else (lambda: callback)
    _listeners.append(ref)


def notify_models_changed() -> None:
    for ref in list(_listeners):
        cb = ref()
        if cb is None:
            _listeners.remove(ref)
        else:
            cb()


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _read_safetensors(raw: bytes) -> dict:
    """Parse a safetensors file from memory (not memory-mapped: a truncated file is an error, not a crash)."""
    from safetensors.torch import load

    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size]).get("__metadata__") or {}
    return {"format": header.get("format"), "format_version": header.get("format_version", 0),
            "config": json.loads(header.get("config", "null")), "meta": json.loads(header.get("meta", "{}")),
            "state_dict": load(raw)}


def _read_legacy(path: Path) -> dict:
    if tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2]) < (2, 10):
        raise ModelError(f"{path.name} is an old-format model file; reading it safely needs torch >= 2.10 "
                         f"(this is {torch.__version__})")
    return torch.load(path, map_location="cpu", weights_only=True)


def read_model_file(path: str | os.PathLike) -> dict:
    """A model file's ``{format, format_version, config, meta, state_dict}`` (no network built).

    Raises :class:`ModelError` for missing, corrupt, foreign or too new files.
    """
    path = Path(path)
    try:
        if _is_safetensors(path):
            payload = _read_safetensors(path.read_bytes())
        else:
            payload = _read_legacy(path)
    except FileNotFoundError as err:
        raise ModelError(f"model file not found: {path}") from err
    except ModelError:
        raise
    except Exception as err:  # corrupt zip or header, foreign pickle, truncated file, ...
        raise ModelError(f"{path.name} is not a readable napari-cellunet model "
                         f"(corrupt or foreign file: {type(err).__name__})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path.name} is not a napari-cellunet model file")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelError(f"{path.name} needs a newer napari-cellunet (format version "
                         f"{payload.get('format_version')})")
    return payload


QUOTED = r'"[^"]+"'


def _mismatch(err: Exception) -> str:
    """One line for a state-dict mismatch (torch's message lists every key)."""
    text = str(err)
    parts = []
    for label, key in (("missing", "Missing key(s) in state_dict:"),
                       ("unexpected", "Unexpected key(s) in state_dict:")):
        if key in text:
            listed = text.split(key, 1)[1].split("\n", 1)[0]
            parts.append(f"{len(re.findall(QUOTED, listed))} {label}")
    sizes = re.findall(r"size mismatch for ([^:]+): copying a param with shape (\S+) from checkpoint, "
                       r"the shape in current model is (\S+)", text)
    if sizes:
        name, got, want = sizes[0]
        parts.append(f"{len(sizes)} of another shape, e.g. {name}: {got[:-1]} in the file, {want[:-1]} expected")
    return ("weights: " + "; ".join(parts)) if parts else text.strip().splitlines()[0][:160]


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL) -> CellModel:
    """Load a model by name or path; raises :class:`ModelError` with a clear one-line message."""
    path = resolve(name_or_path)
    payload = read_model_file(path)
    try:
        config = UNetConfig.from_dict(payload["config"])
    except (TypeError, ValueError, KeyError) as err:
        raise ModelError(f"{path.name}: invalid architecture in the file ({err})") from err
    net = UNet(config)
    try:
        net.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise ModelError(f"{path.name}: the weights do not match the stored architecture ({_mismatch(err)})") from None
    net.eval()
    meta = dict(payload.get("meta") or {})
    try:
        InstanceParams.from_dict(meta.get("instance_params"))
    except (SettingError, TypeError) as err:
        raise ModelError(f"{path.name}: invalid post-processing defaults in the file ({err})") from None
    return CellModel(name=meta.get("name", path.stem), net=net, meta=meta, path=path)
