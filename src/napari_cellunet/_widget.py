"""napari dock widget: segment & count an image layer (2D, z-stacks, time-lapses).

Built from magicgui widgets; Qt itself is only imported (through napari's
``thread_worker`` and the counts dock) when a run starts. Stacks (ZYX, TYX,
TZYX, with a channel axis or RGB) go through :mod:`napari_cellunet.stacks`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.utils import progress

from ._widget_parts import Failure, LayerChoices, WorkerControls, layer_data, sub_form, wrapping_label
from .arrays import InputError, check_values, guess_axes, select_channel
from .inference import Progress, available_devices
from .instances import InstanceParams
from .models import DEFAULT_MODEL, CellModel, ModelError, load_model, model_names, on_models_changed, resolve
from .segment import PredictOptions, default_min_size, labels_from_probabilities
from ._counts_dock import counts_frame
from .stacks import (MODES, StackResult, assemble, check_axes, count_rows, default_mode, filter_dim_objects,
                     iter_segment_stack, measure_stack)

if TYPE_CHECKING:
    import napari


# --------------------------------------------------------------------------- helpers
def _noun(model_name: str) -> str:
    name = model_name.lower()
    return "nuclei" if "nucle" in name else "cells" if "cell" in name else "objects"


AXIS_LETTERS = {"t": "T", "time": "T", "z": "Z", "depth": "Z", "c": "C", "channel": "C", "y": "Y", "x": "X"}


def _valid_axes(axes: str) -> bool:
    return (len(axes) >= 2 and axes.endswith("YX") and set(axes) <= set("TZQCYX")
            and len(set(axes)) == len(axes))


def layer_axes(layer) -> str:
    """Axes of an image layer's dimensions (RGB excluded): metadata, axis labels, else ``Q…YX``."""
    ndim = layer.ndim
    meta = str((layer.metadata or {}).get("axes", "")).upper()
    if len(meta) == ndim and _valid_axes(meta):
        return meta
    letters = [AXIS_LETTERS.get(str(a).strip().lower(), "") for a in getattr(layer, "axis_labels", ())]
    if len(letters) == ndim:
        if ndim >= 2 and not letters[-2] and not letters[-1]:
            letters[-2:] = ["Y", "X"]
        axes = "".join(a or "Q" for a in letters)
        if _valid_axes(axes):
            return axes
    return guess_axes(tuple(layer.data.shape[:ndim]) if not getattr(layer, "multiscale", False)
                      else tuple(layer.data[0].shape[:ndim]))


def _unique_ids(labels: np.ndarray, mode: str) -> np.ndarray:
    """Give every object of a stack its own id (slices/frames/volumes come labelled 1..n each)."""
    unit = 3 if mode == "3d" else 2  # 3d: (T, Z, Y, X) volumes (Z is always just before YX here)
    if labels.ndim <= unit:
        return labels
    blocks = labels.reshape((-1,) + labels.shape[-unit:])
    maxima = [int(b.max()) for b in blocks]
    out = blocks.astype(np.uint16 if sum(maxima) < 2**16 else np.uint32)
    for block, offset in zip(out, np.cumsum([0, *maxima[:-1]]).tolist()):
        block[block > 0] += offset
    return out.reshape(labels.shape)


def _count_text(counts: list[int], noun: str, unit: str = "slice", volume: bool = False) -> str:
    if len(counts) == 1:
        return f"{counts[0]} {noun}" + (" (3D)" if volume else "")
    per = ", ".join(map(str, counts)) if len(counts) <= 8 else f"{min(counts)}–{max(counts)} per {unit}"
    return f"{sum(counts)} {noun} in {len(counts)} {unit}s ({per})"


def _centroids(table: pd.DataFrame, axes: str, mode: str) -> np.ndarray:
    """Object centroids in the labels' data coordinates (frame/slice indices for leading axes)."""
    unit = "ZYX" if mode == "3d" else "YX"
    cols = ["frame" if a == "T" else "slice" for a in axes[: len(axes) - len(unit)]]
    cols += [f"centroid_{a.lower()}" for a in unit]
    return table[cols].to_numpy(dtype=float).reshape(-1, len(cols))


def _segment_job(model: CellModel, data: np.ndarray, axes: str, mode: str, scale: tuple,
                 opts: PredictOptions, params: InstanceParams):
    """Worker generator: yields progress, returns the StackResult (or a :class:`Failure`)."""
    try:
        return (yield from iter_segment_stack(model, data, axes, mode, scale, opts, params))
    except Exception as err:  # shown as a message, never as a traceback
        return Failure(f"segmentation failed: {str(err) or type(err).__name__}")


@dataclass
class _Job:
    """What one Run works on, captured when Run is pressed (plus its result)."""

    layer: Image
    name: str
    key: tuple
    data: np.ndarray        # float32, channel picked / RGB converted; axes ``axes``
    axes: str               # among T, Z, Q, Y, X
    mode: str               # requested mode (resolved: never "auto")
    scale: tuple            # layer scale / translate for ``axes``
    translate: tuple
    note: str
    model: CellModel
    params: InstanceParams
    result: StackResult | None = None

    def relabel(self, params: InstanceParams) -> StackResult:
        """Labels for new thresholds from the cached probabilities (no network pass)."""
        seg = self.result.segmentation
        if self.model.config.dims == 3:
            labels = labels_from_probabilities(seg.probabilities, params, seg.diameter)
            labels = filter_dim_objects(labels, self.data.reshape((-1,) + labels.shape[1:]), params.min_brightness)
            seg = replace(seg, labels=labels, params=params)
            return replace(self.result, labels=labels.reshape(self.data.shape), counts=seg.counts,
                           segmentation=seg)
        if self.mode == "3d" and len(self.axes) > 2:  # volumes are rebuilt from the probabilities
            seg = replace(seg, params=params)
        else:
            seg = replace(seg, labels=labels_from_probabilities(seg.probabilities, params, seg.diameter),
                          params=params)
        return assemble(seg, self.axes, self.mode, self.data.shape[:-2], self.scale, images=self.data)


# --------------------------------------------------------------------------- segment
class SegmentWidget(Container, LayerChoices, WorkerControls):
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
        self.counts_table: pd.DataFrame | None = None  # counts per frame/slice of the last result shown
        self._shown: tuple | None = None  # (job, measurements, axes, mode) of the last result shown
        self._docks: dict[str, Any] = {}  # source layer unique_id -> CountsDock
        self._points: list[tuple[Image, Any]] = []  # (source image, centroid Points layer)

        self._image = ComboBox(label="image", choices=lambda w: self._layers(Image))
        self._axes = LineEdit(label="axes", tooltip="letters of the layer's axes: T (time), Z (depth), Q (other "
                              "stack), C (channel), Y, X, e.g. ZYX, TYX, TZYX, CZYX; RGB is handled by itself")
        self._mode = ComboBox(label="stack mode", choices=list(MODES), value="auto",
                              tooltip="leading axis: 3d = z-stack of 3D objects, frames = time (count per frame), "
                                      "slices = independent 2D slices; auto = 3d with Z, frames with T, else slices")
        self._channel = SpinBox(label="channel", value=0, min=0, max=0, enabled=False,
                                tooltip="channel to segment (axes with C)")
        self._model = ComboBox(label="model", choices=lambda w: model_names(),
                               tooltip="bundled models and models in the user model folder")
        self._diameter = FloatSpinBox(label="diameter (px)", value=0, min=0, max=2000, step=1,
                                      tooltip="typical object diameter in pixels; 0 = estimate (auto)")
        self._prob = FloatSpinBox(label="prob threshold", value=0.5, min=0.05, max=0.95, step=0.05,
                                  tooltip="foreground probability threshold (lower = bigger objects)")
        self._seed = FloatSpinBox(label="seed threshold", value=0.5, min=0.05, max=0.95, step=0.05,
                                  tooltip="interior probability for seeds, or distance to the border for models with a "
                                          "distance output (higher = fewer splits)")
        self._min_size = SpinBox(label="min size (px)", value=0, min=0, max=10_000_000, step=5,
                                 tooltip="drop smaller objects; 0 = auto (10% of a typical object)")
        self._min_bright = FloatSpinBox(label="min brightness", value=0.0, min=0.0, max=0.9, step=0.05,
                                        tooltip="drop objects dimmer than this share of the bright objects "
                                                "(cytoplasm, debris); 0 = off")
        self._merge = FloatSpinBox(label="merge fragments", value=0.2, min=0.0, max=0.9, step=0.05,
                                   tooltip="merge pieces smaller than this share of a typical object into the "
                                           "object they touch (textured nuclei cut in pieces); 0 = off")
        self._join = FloatSpinBox(label="join weak borders", value=0.65, min=0.0, max=0.95, step=0.05,
                                  tooltip="join touching objects whose shared border the network scores below "
                                          "this boundary probability (a nucleus cut in two; 2D, models with a "
                                          "distance output); higher = more joining, 0 = off")
        self._min_conf = FloatSpinBox(label="min confidence", value=0.0, min=0.0, max=0.99, step=0.05,
                                      tooltip="drop objects whose interior probability never reaches this "
                                              "(unsure detections; objects at the image edge need only 0.5); "
                                              "0 = off")
        self._tile = SpinBox(label="tile size", value=256, min=64, max=2048, step=64,
                             tooltip="network input tile; larger is faster but needs more memory")
        self._device = ComboBox(label="device", choices=["auto", *available_devices()], value="auto")
        self._tta = CheckBox(text="test-time augmentation (flips, slower)", value=False)
        self._merge_time = CheckBox(text="re-join short splits (time-lapse)", value=True,
                                    tooltip="frames mode: objects split in one or two frames only, one object "
                                            "in the frames before and after, are joined (segmentation flicker)")
        self._add_points = CheckBox(text="add centroid points", value=False,
                                    tooltip="a Points layer at the object centroids, to check counts by eye")
        for w in (self._diameter, self._min_size):  # 0 reads "auto" (Qt backend)
            if hasattr(w.native, "setSpecialValueText"):
                w.native.setSpecialValueText("auto")
        self._start_btn = self._run_btn = PushButton(text="Run")
        self._cancel_btn = PushButton(text="Cancel", enabled=False)
        buttons = Container(widgets=[self._run_btn, self._cancel_btn], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.result = wrapping_label("–", big=True)
        self.status = wrapping_label()
        self.extend([sub_form(self._image, self._axes, self._mode, self._channel, self._model, self._diameter,
                           self._prob, self._seed, self._min_size, self._min_bright, self._merge, self._join,
                           self._min_conf, self._tile, self._device),
                     self._tta, self._merge_time, self._add_points, buttons, self.result, self.status])

        if DEFAULT_MODEL in self._model.choices:
            self._model.value = DEFAULT_MODEL
        self._model.changed.connect(self._on_model_changed)
        for w in (self._prob, self._seed, self._min_size, self._min_bright, self._merge, self._join,
                  self._min_conf, self._merge_time):
            w.changed.connect(self._on_params_changed)
        self._image.changed.connect(self._on_image_changed)
        self._axes.changed.connect(self._on_axes_changed)
        self._add_points.changed.connect(self._on_points_toggled)
        self._run_btn.changed.connect(lambda: self.run())
        self._cancel_btn.changed.connect(self.cancel)
        self._watch_layers(viewer)
        on_models_changed(self.refresh_models)  # a model saved by the Train widget shows up at once
        self._on_model_changed()
        self._on_image_changed()

    # ------------------------------------------------------------------ settings
    @property
    def worker(self):
        """The running worker, or None."""
        return self._worker

    def refresh_models(self) -> None:
        """Re-read the bundled and user model folders (also done whenever layers change)."""
        try:
            self._model.reset_choices()
        except RuntimeError:  # the dock was closed and its Qt widgets deleted: nothing to refresh
            pass

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
            self._min_bright.value = p.min_brightness
            self._merge.value = p.merge_fragments
            self._join.value = p.join_weak_borders
            self._min_conf.value = p.min_confidence
            self._merge_time.value = p.merge_over_time
        finally:
            self._updating = False
        trained = f"trained at {model.diameter:.0f} px diameter" if model.diameter else "no training diameter"
        self._diameter.tooltip = f"typical object diameter in pixels; 0 = auto ({model.name}: {trained})"
        self.status.value = f"model {model.name} ({trained})"

    def _on_image_changed(self, *_: Any) -> None:
        """Fill the axes from the newly selected layer (metadata, axis labels, or a guess)."""
        layer = self._image.value
        try:
            self._axes.value = "" if layer is None else layer_axes(layer)
        except InputError:
            self._axes.value = ""
        self._on_axes_changed()

    def _on_axes_changed(self, *_: Any) -> None:
        """The channel selector only applies when the axes have a C."""
        axes, layer = self._axes.value.strip().upper(), self._image.value
        ok = layer is not None and "C" in axes and len(axes) == layer.ndim
        n = int(layer_data(layer).shape[axes.index("C")]) if ok else 1
        self._channel.max = max(n - 1, 0)
        self._channel.enabled = ok

    def params(self) -> InstanceParams:
        """Post-processing parameters as set in the widget."""
        return InstanceParams(prob_threshold=float(self._prob.value), seed_threshold=float(self._seed.value),
                              min_size=int(self._min_size.value), min_seed_size=self._min_seed_size,
                              min_brightness=float(self._min_bright.value),
                              merge_fragments=float(self._merge.value),
                              join_weak_borders=float(self._join.value),
                              min_confidence=float(self._min_conf.value),
                              merge_over_time=bool(self._merge_time.value))

    def _options(self) -> PredictOptions:
        d = float(self._diameter.value)
        return PredictOptions(diameter=d if d > 0 else "auto", tile=int(self._tile.value),
                              device=str(self._device.value), tta=bool(self._tta.value))

    def _key(self, layer) -> tuple:
        """What cached probabilities depend on (not the thresholds)."""
        uid = None if layer is None else layer.unique_id  # not id(): npe2 hands out layer proxies
        return (uid, self._model.value, float(self._diameter.value), int(self._tile.value), bool(self._tta.value),
                self._axes.value.strip().upper(), self._mode.value, int(self._channel.value))

    def _job(self, layer, model: CellModel) -> _Job:
        """Capture what a run segments: channel picked, RGB converted, axes checked (InputError if not)."""
        name = layer.name
        axes = self._axes.value.strip().upper()
        shape = tuple(layer_data(layer).shape)
        if len(axes) != layer.ndim:
            raise InputError(f"{name}: axes {axes!r} have {len(axes)} letters, the layer has {layer.ndim} "
                             f"dimensions {shape[:layer.ndim]}")
        if not _valid_axes(axes):
            raise InputError(f"{name}: unsupported axes {axes!r}: use T, Z, Q (stack), C (channel), Y, X, "
                             "each at most once, ending in YX")
        channel = int(self._channel.value) if "C" in axes else None
        data, used, note = select_channel(layer_data(layer), axes + ("S" if layer.rgb else ""), channel, name)
        try:
            used = check_axes(used, data.shape)
        except ValueError as err:
            raise InputError(f"{name}: {err}") from None
        mode = default_mode(used) if self._mode.value == "auto" else self._mode.value
        if mode == "3d" and (len(used) < 3 or used[-3] not in "ZQ"):
            raise InputError(f"{name}: 3d mode needs a z axis just before YX (e.g. ZYX, TZYX), axes {used!r}")
        if model.config.dims == 3 and mode != "3d":
            raise InputError(f"{name}: model {model.name} is 3D: it needs a z-stack (axes ending in ZYX) in 3d mode")
        data = check_values(data, name)
        keep = [i for i, a in enumerate(axes) if a != "C"]
        scale = tuple(float(layer.scale[i]) for i in keep)
        translate = tuple(float(layer.translate[i]) for i in keep)
        return _Job(layer, name, self._key(layer), data, used, mode, scale, translate, note, model, self.params())

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
            model = self._load(self._model.value)
            job = self._job(layer, model)
        except (InputError, ModelError, OSError) as err:
            self._fail(str(err))
            return None
        from napari.qt.threading import thread_worker

        worker = thread_worker(_segment_job, start_thread=False)(model, job.data, job.axes, job.mode, job.scale,
                                                                 self._options(), job.params)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda result: self._on_returned(job, result))
        worker.errored.connect(lambda err: self._fail(f"segmentation failed: {err}"))
        worker.aborted.connect(lambda: setattr(self.status, "value", "cancelled"))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._pbar = progress(total=0, desc=f"CellUNet: {layer.name}")
        self._run_btn.enabled, self._cancel_btn.enabled = False, True
        what = f"{job.axes}, {job.mode}" + (f", {job.note}" if job.note else "")
        self.status.value = f"segmenting {layer.name} ({what})…"
        worker.start()
        return worker

    def _on_progress(self, p: Progress) -> None:
        self.status.value = f"{p.message} {p.done}/{p.total}" if p.total > 1 else p.message
        pbar = self._pbar  # napari's bar processes events: `finished` may run while it updates
        if pbar is not None:
            if pbar.total != p.total:
                pbar.reset(total=p.total)
            pbar.update(p.done - pbar.n)

    def _on_returned(self, job: _Job, result) -> None:
        if isinstance(result, Failure):
            self._fail(result.message)
            return
        if job.layer not in self._viewer.layers:
            self._fail(f"image layer {job.name!r} was removed during the run; result discarded")
            return
        job.result = result
        self._cache = job
        params = job.params
        if self._key(job.layer) == job.key and self.params() != params:  # thresholds changed mid-run
            params = self.params()
            result = job.relabel(params)
        self._show(job, result, params)

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
        result = job.relabel(params)
        self.relabel_count += 1
        self._show(job, result, params)
        return True

    def _show(self, job: _Job, result: StackResult, params: InstanceParams) -> None:
        """Put a stack result into the widget's result layer for ``job.layer`` (+ counts dock, points)."""
        src, axes, mode = job.layer, result.axes, result.mode
        data = _unique_ids(result.labels, mode)  # every object of a stack has its own id
        table = measure_stack(data, axes, mode, job.data, job.scale)
        table.insert(0, "index", table["label"])  # napari maps label values to feature rows by "index"
        rows = count_rows(data, axes, mode)
        counts = [r["count"] for r in rows]
        diameter = result.segmentation.diameter
        dims = 3 if mode == "3d" else 2
        metadata = {
            "made_by": "napari-cellunet", "source_layer": src.name, "model": job.model.name,
            "mode": mode, "axes": axes, "diameter": diameter, "prob_threshold": params.prob_threshold,
            "seed_threshold": params.seed_threshold, "min_seed_size": params.min_seed_size,
            "min_size": params.min_size if params.min_size > 0 else default_min_size(diameter, dims),
            "min_brightness": params.min_brightness, "merge_fragments": params.merge_fragments,
            "join_weak_borders": params.join_weak_borders,
            "min_confidence": params.min_confidence, "merge_over_time": params.merge_over_time,
            "tile": job.key[3], "tta": job.key[4], "counts": counts, "count_axis": result.count_axis,
            "note": job.note,
        }
        target = self.result_layer(src)
        if target is None:
            target = self._viewer.add_labels(data, name=f"{src.name} labels", scale=job.scale,
                                             translate=job.translate, features=table, metadata=metadata)
            self._results.append((src, target))
        else:
            target.data, target.features, target.metadata = data, table, metadata
            target.scale, target.translate = job.scale, job.translate
        noun, unit = _noun(job.model.name), "frame" if result.count_axis == "frame" else "slice"
        self.counts_table = counts_frame(rows, table)
        self._shown = (job, table, axes, mode)
        if len(rows) > 1:
            self._show_counts(src, self.counts_table, noun, unit)
        if self._add_points.value:
            self._show_points(job, table, axes, mode)
        diam = f", diameter {diameter:.1f} px" if diameter else ""
        self.result.value = _count_text(counts, noun, unit, volume=mode == "3d" and len(counts) == 1)
        self.status.value = (f"{src.name}: {sum(counts)} objects{diam} ({axes}, {mode}) → layer {target.name!r}"
                             + (f"; {job.note}" if job.note else ""))

    def _show_counts(self, src, counts: pd.DataFrame, noun: str, unit: str) -> None:
        """Create (once per image) or update the counts dock: table, plot, CSV export."""
        from ._counts_dock import CountsDock

        dock = self._docks.get(src.unique_id)
        if dock is None or dock.native.parent() is None:  # never made, or removed from the window
            dock = CountsDock()
            self._viewer.window.add_dock_widget(dock, name=f"{src.name} counts", area="right")
            self._docks[src.unique_id] = dock
        dock.set_counts(counts, f"{src.name}: {noun} per {unit} ({int(counts['count'].sum())} in all)", noun)
        frame = dock.native.parent()
        if frame is not None and frame.isHidden():  # closed by the user: show it again
            frame.show()

    def counts_dock(self, image):
        """The counts dock made for ``image`` (a stack), if any."""
        return None if image is None else self._docks.get(image.unique_id)

    def _on_points_toggled(self, *_: Any) -> None:
        shown = getattr(self, "_shown", None)
        if self._add_points.value and shown is not None and shown[0].layer in self._viewer.layers:
            self._show_points(*shown)

    def _show_points(self, job: _Job, table: pd.DataFrame, axes: str, mode: str) -> None:
        """Add or update the ``{image} centroids`` Points layer (one point per object)."""
        src = job.layer
        coords = _centroids(table, axes, mode)
        layer = self.points_layer(src)
        if layer is None:
            diameter = job.result.segmentation.diameter if job.result is not None else None
            layer = self._viewer.add_points(coords, name=f"{src.name} centroids", scale=job.scale,
                                            translate=job.translate, size=max(3.0, 0.35 * (diameter or 10)),
                                            face_color="yellow", border_color="black", symbol="disc")
            self._points.append((src, layer))
        else:
            layer.data = coords
            layer.scale, layer.translate = job.scale, job.translate

    def points_layer(self, image):
        """The centroid Points layer this widget made for ``image`` (if still in the viewer)."""
        for src, pts in self._points:
            if image is not None and src.unique_id == image.unique_id and pts in self._viewer.layers:
                return pts
        return None

    def result_layer(self, image) -> Labels | None:
        """The Labels layer this widget made for ``image`` (if still in the viewer)."""
        for src, lab in self._results:
            if image is not None and src.unique_id == image.unique_id and lab in self._viewer.layers:
                return lab
        return None
