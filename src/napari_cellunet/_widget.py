"""napari dock widgets: segment & count an image layer; count any Labels layer.

Built from magicgui widgets; Qt itself is only imported (through napari's
``thread_worker``) when a run starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label,
                              PushButton, SpinBox, Table)
from napari.layers import Image, Labels
from napari.utils import progress
from napari.utils.notifications import show_error, show_info

from .arrays import InputError, Slices, as_slices, to_grey
from .inference import Progress, available_devices
from .instances import InstanceParams
from .measure import count_objects, measure, measure_slices, write_csv
from .models import DEFAULT_MODEL, CellModel, ModelError, load_model, model_names, on_models_changed, resolve
from .segment import PredictOptions, default_min_size, iter_segment, labels_from_probabilities

if TYPE_CHECKING:
    import napari

MAX_TABLE_ROWS = 1000  # rows shown in the CountWidget table (the CSV has all of them)


# --------------------------------------------------------------------------- helpers
def _layer_data(layer) -> Any:
    """Full-resolution data of a (possibly multiscale) layer."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def _form(*widgets) -> Container:
    """A labelled sub-form (the outer container is unlabelled so results span its width)."""
    form = Container(widgets=list(widgets), labels=True)
    form.margins = (0, 0, 0, 0)
    return form


def _text(value: str = "", big: bool = False) -> Label:
    """A full-width label whose long messages wrap instead of widening the dock."""
    label = Label(value=value)
    native = label.native
    try:  # plain method calls on the Qt backend widget (no Qt import needed)
        native.setWordWrap(True)
        policy = native.sizePolicy()
        policy.setHorizontalPolicy(type(policy.horizontalPolicy()).Expanding)
        native.setSizePolicy(policy)
        native.setStyleSheet("font-size: 16px; font-weight: bold; padding: 4px 0px;" if big
                             else "qproperty-alignment: 'AlignLeft | AlignVCenter';")
    except AttributeError:  # another magicgui backend
        pass
    return label


def _noun(model_name: str) -> str:
    name = model_name.lower()
    return "nuclei" if "nucle" in name else "cells" if "cell" in name else "objects"


def _stack_ids(labels: np.ndarray) -> np.ndarray:
    """Give every object of an ``(N, Y, X)`` stack its own id (slices come labelled 1..n each)."""
    maxima = [int(lab.max()) for lab in labels]
    out = labels.astype(np.uint16 if sum(maxima) < 2**16 else np.uint32)
    for lab, offset in zip(out, np.cumsum([0, *maxima[:-1]]).tolist()):
        lab[lab > 0] += offset
    return out


def _count_text(counts: list[int], noun: str) -> str:
    if len(counts) == 1:
        return f"{counts[0]} {noun}"
    per = ", ".join(map(str, counts)) if len(counts) <= 8 else f"{min(counts)}–{max(counts)} per slice"
    return f"{sum(counts)} {noun} in {len(counts)} slices ({per})"


def _display(table: pd.DataFrame) -> dict:
    """Table widget data: row header = label id, all-NaN columns hidden, floats rounded."""
    shown = table.drop(columns="label").dropna(axis=1, how="all").round(2)
    return {"data": shown.astype(object).values.tolist(), "index": table["label"].tolist(),
            "columns": list(shown.columns)}


@dataclass
class _Failure:
    message: str


def _segment_job(model: CellModel, data: np.ndarray, opts: PredictOptions, params: InstanceParams):
    """Worker generator: yields progress, returns the Segmentation (or a :class:`_Failure`)."""
    try:
        return (yield from iter_segment(model, data, opts, params))
    except Exception as err:  # shown as a message, never as a traceback
        return _Failure(f"segmentation failed: {str(err) or type(err).__name__}")


@dataclass
class _Job:
    """What one Run works on, captured when Run is pressed (plus its result)."""

    layer: Image
    name: str
    key: tuple
    slices: Slices
    model: CellModel
    params: InstanceParams
    probabilities: np.ndarray | None = None
    diameter: float | None = None


class _LayerChoices:
    """Keep the layer combos of a widget in sync with ``viewer.layers`` (add, remove, move, rename)."""

    def _watch_layers(self, viewer: napari.viewer.Viewer) -> None:
        ev = viewer.layers.events
        for emitter in (ev.inserted, ev.removed, ev.moved, ev.reordered):
            emitter.connect(self._on_layers_changed)
        for layer in viewer.layers:
            layer.events.name.connect(self._on_layers_changed)

    def _on_layers_changed(self, event=None) -> None:
        kind, layer = getattr(event, "type", None), getattr(event, "value", None)
        if kind == "inserted" and layer is not None:
            layer.events.name.connect(self._on_layers_changed)
        elif kind == "removed" and layer is not None:
            layer.events.name.disconnect(self._on_layers_changed)
        self.reset_choices()

    def _layers(self, kind: type) -> list[tuple[str, Any]]:
        return [(lyr.name, lyr) for lyr in self._viewer.layers if isinstance(lyr, kind)]


# --------------------------------------------------------------------------- segment
class SegmentWidget(Container, _LayerChoices):
    """Segment an image layer with a UNet model, count the objects, add a Labels layer."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self._viewer = viewer
        self._models: dict[str, tuple[tuple, CellModel]] = {}
        self._min_seed_size = InstanceParams().min_seed_size
        self._results: list[tuple[Image, Labels]] = []  # (source image, Labels layer made for it)
        self._worker = None
        self._pbar: progress | None = None
        self._cache: _Job | None = None  # last finished run, with its probabilities
        self._updating = False
        self.relabel_count = 0  # post-processing-only updates (no network pass)

        self._image = ComboBox(label="image", choices=lambda w: self._layers(Image))
        self._model = ComboBox(label="model", choices=lambda w: model_names(),
                               tooltip="bundled models and models in the user model folder")
        self._diameter = FloatSpinBox(label="diameter (px)", value=0, min=0, max=2000, step=1,
                                      tooltip="typical object diameter in pixels; 0 = estimate (auto)")
        self._prob = FloatSpinBox(label="prob threshold", value=0.5, min=0.05, max=0.95, step=0.05,
                                  tooltip="foreground probability threshold (lower = bigger objects)")
        self._seed = FloatSpinBox(label="seed threshold", value=0.5, min=0.05, max=0.95, step=0.05,
                                  tooltip="interior probability for seeds (higher = fewer splits)")
        self._min_size = SpinBox(label="min size (px)", value=0, min=0, max=10_000_000, step=5,
                                 tooltip="drop smaller objects; 0 = auto (10% of a typical object)")
        self._tile = SpinBox(label="tile size", value=256, min=64, max=2048, step=64,
                             tooltip="network input tile; larger is faster but needs more memory")
        self._device = ComboBox(label="device", choices=["auto", *available_devices()], value="auto")
        self._tta = CheckBox(text="test-time augmentation (flips, slower)", value=False)
        for w in (self._diameter, self._min_size):  # 0 reads "auto" (Qt backend)
            if hasattr(w.native, "setSpecialValueText"):
                w.native.setSpecialValueText("auto")
        self._run_btn = PushButton(text="Run")
        self._cancel_btn = PushButton(text="Cancel", enabled=False)
        buttons = Container(widgets=[self._run_btn, self._cancel_btn], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.result = _text("–", big=True)
        self.status = _text()
        self.extend([_form(self._image, self._model, self._diameter, self._prob, self._seed,
                           self._min_size, self._tile, self._device),
                     self._tta, buttons, self.result, self.status])

        if DEFAULT_MODEL in self._model.choices:
            self._model.value = DEFAULT_MODEL
        self._model.changed.connect(self._on_model_changed)
        for w in (self._prob, self._seed, self._min_size):
            w.changed.connect(self._on_params_changed)
        self._run_btn.changed.connect(lambda: self.run())
        self._cancel_btn.changed.connect(self.cancel)
        self._watch_layers(viewer)
        on_models_changed(self.refresh_models)  # a model saved by the Train widget shows up at once
        self._on_model_changed()

    # ------------------------------------------------------------------ settings
    @property
    def worker(self):
        """The running worker, or None."""
        return self._worker

    def refresh_models(self) -> None:
        """Re-read the bundled and user model folders (also done whenever layers change)."""
        self._model.reset_choices()

    def _load(self, name: str | None) -> CellModel:
        """Load a model by name (cached; reloaded when its file changes)."""
        if not name:
            raise ModelError("no model found; train one with `cellunet train` or reinstall the plugin")
        path = resolve(name)
        stamp = (str(path), path.stat().st_mtime_ns)
        if self._models.get(name, (None,))[0] != stamp:
            self._models[name] = (stamp, load_model(path))
        return self._models[name][1]

    def _on_model_changed(self, *_: Any) -> None:
        """Take the threshold defaults from the selected model."""
        try:
            model = self._load(self._model.value)
        except (ModelError, OSError) as err:
            self.status.value = str(err)
            return
        p = model.instance_params
        self._min_seed_size = p.min_seed_size
        self._updating = True
        try:
            self._prob.value, self._seed.value = p.prob_threshold, p.seed_threshold
            self._min_size.value = p.min_size
        finally:
            self._updating = False
        trained = f"trained at {model.diameter:.0f} px diameter" if model.diameter else "no training diameter"
        self._diameter.tooltip = f"typical object diameter in pixels; 0 = auto ({model.name}: {trained})"
        self.status.value = f"model {model.name} ({trained})"

    def params(self) -> InstanceParams:
        """Post-processing parameters as set in the widget."""
        return InstanceParams(prob_threshold=float(self._prob.value), seed_threshold=float(self._seed.value),
                              min_size=int(self._min_size.value), min_seed_size=self._min_seed_size)

    def _options(self) -> PredictOptions:
        d = float(self._diameter.value)
        return PredictOptions(diameter=d if d > 0 else "auto", tile=int(self._tile.value),
                              device=str(self._device.value), tta=bool(self._tta.value))

    def _key(self, layer) -> tuple:
        """What cached probabilities depend on (not the thresholds)."""
        uid = None if layer is None else layer.unique_id  # not id(): npe2 hands out layer proxies
        return (uid, self._model.value, float(self._diameter.value), int(self._tile.value), bool(self._tta.value))

    def _fail(self, message: str) -> None:
        self.status.value = message
        show_error(message)

    # ------------------------------------------------------------------ run / cancel
    def run(self):
        """Segment the selected image in a worker thread; returns the worker (None if not started)."""
        if self._worker is not None:
            self.status.value = "already running"
            return None
        layer = self._image.value
        if layer is None:
            self._fail("Choose an image layer first.")
            return None
        try:
            slices = as_slices(_layer_data(layer), rgb=layer.rgb, name=layer.name)
            model = self._load(self._model.value)
        except (InputError, ModelError, OSError) as err:
            self._fail(str(err))
            return None
        from napari.qt.threading import thread_worker

        job = _Job(layer, layer.name, self._key(layer), slices, model, self.params())
        worker = thread_worker(_segment_job, start_thread=False)(model, slices.data, self._options(), job.params)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda result: self._on_returned(job, result))
        worker.errored.connect(lambda err: self._fail(f"segmentation failed: {err}"))
        worker.aborted.connect(lambda: setattr(self.status, "value", "cancelled"))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._pbar = progress(total=0, desc=f"CellUNet: {layer.name}")
        self._run_btn.enabled, self._cancel_btn.enabled = False, True
        self.status.value = f"segmenting {layer.name}…" + (f" ({slices.note})" if slices.note else "")
        worker.start()
        return worker

    def cancel(self, *_: Any) -> None:
        """Stop the running segmentation at the next tile batch; layers stay as they were."""
        if self._worker is not None:
            self._worker.quit()
            self._cancel_btn.enabled = False
            self.status.value = "cancelling…"

    def _on_progress(self, p: Progress) -> None:
        self.status.value = f"{p.message} {p.done}/{p.total}" if p.total > 1 else p.message
        pbar = self._pbar  # napari's bar processes events: `finished` may run while it updates
        if pbar is not None:
            if pbar.total != p.total:
                pbar.reset(total=p.total)
            pbar.update(p.done - pbar.n)

    def _on_finished(self) -> None:
        self._worker = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self._run_btn.enabled, self._cancel_btn.enabled = True, False

    def _on_returned(self, job: _Job, result) -> None:
        if isinstance(result, _Failure):
            self._fail(result.message)
            return
        if job.layer not in self._viewer.layers:
            self._fail(f"image layer {job.name!r} was removed during the run; result discarded")
            return
        job.probabilities, job.diameter = result.probabilities, result.diameter
        self._cache = job
        labels, params = result.labels, job.params
        if self._key(job.layer) == job.key and self.params() != params:  # thresholds changed mid-run
            params = self.params()
            labels = labels_from_probabilities(job.probabilities, params, job.diameter)
        self._show(job, labels, params)

    # ------------------------------------------------------------------ cache / results
    def _on_params_changed(self, *_: Any) -> None:
        if not self._updating:
            self.relabel()

    def relabel(self) -> bool:
        """Re-run only post-processing on the cached probabilities; False when no cache applies."""
        job = self._cache
        if (job is None or self._worker is not None or job.layer not in self._viewer.layers
                or self._key(self._image.value) != job.key):
            return False
        params = self.params()
        labels = labels_from_probabilities(job.probabilities, params, job.diameter)
        self.relabel_count += 1
        self._show(job, labels, params)
        return True

    def _show(self, job: _Job, labels: np.ndarray, params: InstanceParams) -> None:
        """Put ``(N, Y, X)`` labels into the widget's result layer for ``job.layer``."""
        src, slices = job.layer, job.slices
        counts = [count_objects(lab) for lab in labels]
        data = (_stack_ids(labels) if len(labels) > 1 else labels).reshape(slices.spatial_shape)
        scale, translate = tuple(src.scale)[-data.ndim:], tuple(src.translate)[-data.ndim:]
        if data.ndim == 2:
            table = measure(data, slices.data[0], scale)
        else:
            table = measure_slices(data, slices.data, scale)
        table.insert(0, "index", table["label"])  # napari maps label values to feature rows by "index"
        metadata = {
            "made_by": "napari-cellunet", "source_layer": src.name, "model": job.model.name,
            "diameter": job.diameter, "prob_threshold": params.prob_threshold,
            "seed_threshold": params.seed_threshold, "min_seed_size": params.min_seed_size,
            "min_size": params.min_size if params.min_size > 0 else default_min_size(job.diameter),
            "tile": job.key[3], "tta": job.key[4], "counts": counts, "note": slices.note,
        }
        target = self.result_layer(src)
        if target is None:
            target = self._viewer.add_labels(data, name=f"{src.name} labels", scale=scale, translate=translate,
                                             features=table, metadata=metadata)
            self._results.append((src, target))
        else:
            target.data, target.features, target.metadata = data, table, metadata
            target.scale, target.translate = scale, translate
        diam = f", diameter {job.diameter:.1f} px" if job.diameter else ""
        self.result.value = _count_text(counts, _noun(job.model.name))
        self.status.value = (f"{src.name}: {sum(counts)} objects{diam} → layer {target.name!r}"
                             + (f"; {slices.note}" if slices.note else ""))

    def result_layer(self, image) -> Labels | None:
        """The Labels layer this widget made for ``image`` (if still in the viewer)."""
        for src, lab in self._results:
            if image is not None and src.unique_id == image.unique_id and lab in self._viewer.layers:
                return lab
        return None


# --------------------------------------------------------------------------- count
class CountWidget(Container, _LayerChoices):
    """Count and measure the objects of any Labels layer (segmented or painted by hand)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self._viewer = viewer
        self.table: pd.DataFrame | None = None  # last measurement table (all rows)
        self._labels = ComboBox(label="labels", choices=lambda w: self._layers(Labels))
        self._intensity = ComboBox(label="intensity", nullable=True, choices=lambda w: self._layers(Image),
                                   tooltip="optional image of the same shape, for mean intensity")
        self._count_btn = PushButton(text="Count")
        self.result = _text("–", big=True)
        self._table = Table()
        self._table.read_only = True
        self._table.min_height, self._table.min_width = 300, 380
        self._path = FileEdit(label="CSV file", mode="w", filter="*.csv", nullable=True)
        self._export_btn = PushButton(text="Export CSV")
        self.status = _text()
        self.extend([_form(self._labels, self._intensity), self._count_btn, self.result, self._table,
                     _form(self._path), self._export_btn, self.status])
        self._count_btn.changed.connect(lambda: self.count())
        self._export_btn.changed.connect(lambda: self.export())
        self._labels.changed.connect(self._forget)
        self._intensity.changed.connect(self._forget)
        self._watch_layers(viewer)

    def _fail(self, message: str) -> None:
        self.status.value = message
        show_error(message)

    def _forget(self, *_: Any) -> None:
        """Another layer was chosen: the table shown no longer applies."""
        self.table = None
        self._table.value = None
        self.result.value = "–"

    def count(self) -> int | None:
        """Count the selected Labels layer (2D or 3D objects) and show its measurement table."""
        layer = self._labels.value
        if layer is None:
            self._fail("Choose a Labels layer first.")
            return None
        labels = np.asarray(_layer_data(layer))
        if labels.ndim not in (2, 3):
            self._fail(f"{layer.name}: counting works on 2D or 3D labels, got shape {labels.shape}")
            return None
        intensity, image = None, self._intensity.value
        if image is not None:
            intensity = np.asarray(_layer_data(image))
            intensity = to_grey(intensity) if image.rgb else intensity
            if intensity.shape != labels.shape:
                self._fail(f"intensity layer {image.name!r} has shape {intensity.shape}, labels "
                           f"{layer.name!r} have {labels.shape}; choose a matching image or None")
                return None
        try:
            table = measure(labels, intensity, tuple(layer.scale)[-labels.ndim:])
        except (ValueError, TypeError) as err:
            self._fail(f"{layer.name}: cannot measure ({err})")
            return None
        n = count_objects(labels)
        self.table = table
        self._table.value = _display(table.head(MAX_TABLE_ROWS))
        if hasattr(self._table.native, "resizeColumnsToContents"):
            self._table.native.resizeColumnsToContents()
        self.result.value = f"{n} objects" + (" (3D)" if labels.ndim == 3 else "")
        more = f"; the table shows {MAX_TABLE_ROWS} rows, the CSV has all" if len(table) > MAX_TABLE_ROWS else ""
        self.status.value = f"{layer.name}: {n} objects{more}"
        return n

    def export(self, path: str | Path | None = None) -> Path | None:
        """Write the measurement table (counting first if needed) to ``path`` or the chosen file."""
        path = path if path is not None else self._path.value
        if not path or str(path) == ".":
            self._fail("Choose a CSV file name first.")
            return None
        if self.table is None and self.count() is None:
            return None
        path = Path(path)
        if path.suffix.lower() != ".csv":
            path = path.with_name(path.name + ".csv")
        try:
            out = write_csv(self.table, path)
        except OSError as err:
            self._fail(f"could not write {path}: {err}")
            return None
        self.status.value = f"wrote {len(self.table)} rows to {out}"
        show_info(self.status.value)
        return out
