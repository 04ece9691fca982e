"""Import back: restore the napari-cellunet model a bioimage.io package (``.zip`` or folder) carries.

Only packages this plugin exported can be restored (they name the model file in
``config["napari-cellunet"]``); foreign ones raise a one-line :class:`..models.ModelError`.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from ..models import ModelError, list_models, load_model, save_user_model, user_model_path
from .bioimageio import CONFIG_KEY, RDF_NAMES, _sha256


def _read_package(source: Path) -> tuple[dict, bytes | None]:
    """(rdf, bytes of the napari-cellunet model file it names, or None); ModelError if unreadable."""
    import yaml

    if not source.exists():
        raise ModelError(f"{source}: no such file or folder")
    try:
        if source.is_dir():
            return _parse(source.name, lambda n: (source / n).read_bytes(),
                          [n for n in RDF_NAMES if (source / n).is_file()], yaml)
        with zipfile.ZipFile(source) as zf:  # the package at the root, or in one top folder
            rdfs = [n for n in zf.namelist() if PurePosixPath(n).name in RDF_NAMES and n.count("/") <= 1]
            return _parse(source.name, zf.read, sorted(rdfs, key=lambda n: n.count("/")), yaml)
    except ModelError:
        raise
    except zipfile.BadZipFile as err:
        raise ModelError(f"{source.name} is not a bioimage.io package (neither a zip file nor a folder)") from err
    except Exception as err:  # unreadable file, truncated zip member, odd YAML content, ...
        raise ModelError(f"{source.name}: could not read the package ({type(err).__name__}: {err})") from err


def _config(rdf: dict) -> dict:
    return rdf["config"] if isinstance(rdf.get("config"), dict) else {}


def _parse(label: str, read, rdf_names: list[str], yaml) -> tuple[dict, bytes | None]:
    if not rdf_names:
        raise ModelError(f"{label} is not a bioimage.io package (no {' or '.join(RDF_NAMES)} inside)")
    root = PurePosixPath(rdf_names[0]).parent
    try:
        rdf = yaml.safe_load(read(rdf_names[0]))
    except yaml.YAMLError as err:
        raise ModelError(f"{label}: its {PurePosixPath(rdf_names[0]).name} is not valid YAML") from err
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        raise ModelError(f"{label} is not a bioimage.io model package "
                         f"(type: {rdf.get('type') if isinstance(rdf, dict) else None!r})")
    ours = _config(rdf).get(CONFIG_KEY)
    if not isinstance(ours, dict) or not isinstance(ours.get("model_file"), str):
        return rdf, None
    rel = PurePosixPath(ours["model_file"])
    if rel.is_absolute() or ".." in rel.parts:
        raise ModelError(f"{label}: invalid model file name {ours['model_file']!r}")
    try:
        return rdf, read(str(root / rel))
    except (KeyError, FileNotFoundError) as err:
        raise ModelError(f"{label} is incomplete: its model file {rel} is missing") from err


def _describe_foreign(rdf: dict) -> str:
    """'architecture: ...; weights: ...' of a package made elsewhere."""
    weights = rdf.get("weights") if isinstance(rdf.get("weights"), dict) else {}
    state_dict = weights.get("pytorch_state_dict")
    arch = state_dict.get("architecture") if isinstance(state_dict, dict) else None
    if isinstance(arch, dict):  # spec 0.5: from a library (module.Callable) or a file (file.py:Callable)
        arch = (f"{arch['import_from']}.{arch.get('callable')}" if arch.get("import_from")
                else f"{arch.get('source')}:{arch.get('callable')}")
    bio_config = _config(rdf).get("bioimageio")
    arch = arch or (bio_config.get("architecture_type") if isinstance(bio_config, dict) else None)
    return f"architecture: {arch or 'not stated'}; weights: {', '.join(weights) or 'none'}"


def import_bioimageio(source: str | Path, name: str | None = None, *, overwrite: bool = False) -> Path:
    """Restore the napari-cellunet model of a package (``.zip`` or folder) this plugin exported.

    Saved as a user model called ``name`` (default: the model's own name); returns its path.
    An existing user model of that name is replaced only with ``overwrite=True``.
    Foreign packages and unreadable files raise :class:`ModelError` (one line).
    """
    source = Path(source).expanduser()
    rdf, data = _read_package(source)
    if data is None:
        raise ModelError(f"{source.name}: {rdf.get('name', '?')!r} is a bioimage.io model made elsewhere "
                         f"({_describe_foreign(rdf)}); napari-cellunet can only run packages it exported")
    ours = rdf["config"][CONFIG_KEY]
    if ours.get("sha256") and _sha256(data) != ours["sha256"]:
        raise ModelError(f"{source.name}: its model file {ours['model_file']} is corrupt (checksum mismatch)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / PurePosixPath(ours["model_file"]).name
        path.write_bytes(data)
        try:
            model = load_model(path)  # checks format, version and weights
        except ModelError as err:
            raise ModelError(f"{source.name}: {err}") from None
    try:
        stem = user_model_path(name or model.name or str(ours.get("name") or path.stem)).stem
    except ModelError as err:  # a bundled name, or an empty one
        raise ModelError(f"{source.name}: {err}") from None
    if not overwrite and any(e.name == stem for e in list_models()):
        raise ModelError(f"{source.name}: a model called {stem!r} already exists "
                         "(import it under another name, or overwrite it)")
    return save_user_model(stem, model.net, model.meta)
