"""Model files: architecture + metadata + weights in one file, loaded safely.

A model file is a ``torch.save`` of a plain dict (strings, numbers, lists, dicts
and tensors only), read back with ``torch.load(weights_only=True)`` so no
arbitrary code can run from a downloaded file::

    {"format": "napari-cellunet/model", "format_version": 1,
     "config": {UNetConfig fields}, "meta": {...}, "state_dict": {...}}

``meta`` holds what inference needs beside the weights (object diameter the
model was trained at, normalisation percentiles, default thresholds) and what a
person needs to trust it (training data, command, scores).

Models are found by name in the package's bundled folder and in the user model
folder (``$CELLUNET_MODEL_DIR`` or the platform's user data dir), or by path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from .instances import InstanceParams
from .unet import UNet, UNetConfig

FORMAT = "napari-cellunet/model"
FORMAT_VERSION = 1
SUFFIX = ".pt"
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
        for p in sorted(folder.glob(f"*{SUFFIX}")):
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
def save_model(path: str | os.PathLike, net: UNet, meta: dict | None = None) -> Path:
    """Write ``net`` and ``meta`` to ``path`` (weights stored as fp32 CPU tensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": net.config.to_dict(),
        "meta": dict(meta or {}),
        "state_dict": state,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # never leave a half-written model behind
    return path


def user_model_path(name: str) -> Path:
    """Where a user model called ``name`` is stored (refuses bundled names and empty names)."""
    safe = _safe_name(name)
    if (bundled_dir() / f"{safe}{SUFFIX}").exists():
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


def read_model_file(path: str | os.PathLike) -> dict:
    """Load and validate a model file's payload without building the network."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise ModelError(f"model file not found: {path}") from err
    except Exception as err:  # corrupt zip, foreign pickle, truncated file, ...
        raise ModelError(f"{path.name} is not a readable napari-cellunet model "
                         f"(corrupt or foreign file: {type(err).__name__})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path.name} is not a napari-cellunet model file")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelError(f"{path.name} needs a newer napari-cellunet (format version "
                         f"{payload.get('format_version')})")
    return payload


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL) -> CellModel:
    """Load a model by name or path; raises :class:`ModelError` with a clear message."""
    path = resolve(name_or_path)
    payload = read_model_file(path)
    try:
        config = UNetConfig.from_dict(payload["config"])
        net = UNet(config)
        net.load_state_dict(payload["state_dict"])
    except Exception as err:
        raise ModelError(f"{path.name}: weights do not match the stored architecture ({err})") from err
    net.eval()
    meta = dict(payload.get("meta", {}))
    return CellModel(name=meta.get("name", path.stem), net=net, meta=meta, path=path)
