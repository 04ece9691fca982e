"""napari dock widget: segment & count an image layer (2D, z-stacks, time-lapses).

Thin over the library: the settings rows come from :mod:`napari_cellunet.settings`
(:class:`~.forms.SettingsForm`), a run is :func:`~napari_cellunet.stacks.iter_segment_stack`
in a worker thread, re-labelling after a threshold change is
:func:`~napari_cellunet.stacks.relabel` on the cached probabilities, also in a
worker, and the result is measured there too (:func:`~.results.prepare`), so the
viewer never waits. Qt itself is only imported (through napari's
``thread_worker`` and the counts dock) when a run starts.
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, LineEdit, PushButton, SpinBox
from napari.layers import Image
from napari.utils import progress

from .. import log
from ..arrays import InputError, check_axes, check_values, select_channel
from ..batch import CHUNK_ABOVE
from ..inference import Progress, available_devices
from ..models import DEFAULT_MODEL, CellModel, ModelError, load_model, model_names, on_models_changed, resolve
from ..settings import InstanceParams, PredictOptions, SettingError
from ..stacks import MODES, resolve_mode
from .forms import SettingsForm, section
from .jobs import LAYER_AXES, Job, chunked_job, layer_axes, relabel_job, segment_job
from .results import ResultLayers, Shown, centroids, count_text, counts_table, layer_metadata, noun
from .widget_parts import Failure, LayerChoices, WorkerControls, full_resolution, wrapping_label

__all__ = ["SegmentWidget", "layer_axes"]

if TYPE_CHECKING:
    import napari

def _warm_up_line_patterns() -> None:
    """vispy builds its line-dash patterns (~0.2 s, cached per process) when the first Labels layer is drawn;
    build them when the dock opens instead of when the first result appears (an event-loop gap)."""
    try:
        from vispy.visuals.line.dash_atlas import DashAtlas

        DashAtlas()
    except Exception:  # another vispy: nothing to warm up
        pass


class SegmentWidget(Container, LayerChoices, WorkerControls):
    """Segment an image layer with a UNet model, count the objects, add a Labels layer."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self._viewer = viewer
        self._models: dict[str, tuple[tuple, CellModel]] = {}
        self._worker = None
        self._relabel_worker = None
        self._relabel_again = False
        self._pbar: progress | None = None
        self._cache: Job | None = None  # last finished run, with its probabilities
        self._updating = False
        self.relabel_count = 0  # post-processing-only updates shown (no network pass)
        self.counts_table = None  # counts per frame/slice of the last result shown
        self.layers = ResultLayers(viewer)

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
        self.predict_form = SettingsForm(PredictOptions, choices={"device": ["auto", *available_devices()]})
        self.params_form = SettingsForm(InstanceParams)
        self._restore_btn = PushButton(text="Restore model defaults")
        self._add_points = CheckBox(text="add centroid points", value=False,
                                    tooltip="a Points layer at the object centroids, to check counts by eye")
        self._start_btn = self._run_btn = PushButton(text="Run")
        self._cancel_btn = PushButton(text="Cancel", enabled=False)
        buttons = Container(widgets=[self._run_btn, self._cancel_btn], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.result = wrapping_label("–", big=True)
        self.status = wrapping_label()
        _, inputs = section("input", [self._image, self._axes, self._mode, self._channel, self._model,
                                      *self.predict_form.group("network")])
        _, post = section("post-processing", self.params_form.group("post-processing"))
        toggle, advanced = section("advanced settings", self.predict_form.group("advanced"), collapsed=True)
        self.extend([inputs, post, self._restore_btn, toggle, advanced, self._add_points, buttons, self.result,
                     self.status])

        if DEFAULT_MODEL in self._model.choices:
            self._model.value = DEFAULT_MODEL
        self._model.changed.connect(self._on_model_changed)
        self._restore_btn.changed.connect(self._on_model_changed)
        self.params_form.connect(self._on_params_changed)
        self._image.changed.connect(self._on_image_changed)
        self._axes.changed.connect(self._on_axes_changed)
        self._add_points.changed.connect(self._on_points_toggled)
        self._run_btn.changed.connect(lambda: self.run())
        self._cancel_btn.changed.connect(self.cancel)
        self._watch_layers(viewer)
        self._select_active(viewer)
        on_models_changed(self.refresh_models)  # a model saved by the Train widget shows up at once
        self._on_model_changed()
        self._on_image_changed()
        _warm_up_line_patterns()


    # ------------------------------------------------------------------ settings
    @property
    def worker(self):
        """The running segmentation or re-labelling worker, or None."""
        return self._worker or self._relabel_worker

    def setting(self, name: str):
        """The widget row of a setting (a threshold or a network option), by its field name."""
        return (self.params_form.widgets | self.predict_form.widgets)[name]

    def refresh_models(self) -> None:
        """Re-read the bundled and user model folders (also done whenever layers change)."""
        with contextlib.suppress(RuntimeError):  # the dock was closed and its Qt widgets deleted: nothing to do
            self._model.reset_choices()

    def _select_active(self, viewer) -> None:
        """Preselect the active image layer (also when another image becomes active)."""
        def follow(*_: Any) -> None:
            active = viewer.layers.selection.active
            if isinstance(active, Image) and self._worker is None and active in self._image.choices:
                self._image.value = active

        follow()
        viewer.layers.selection.events.active.connect(follow)

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
        """Take the threshold defaults from the selected model ("Restore model defaults" does the same)."""
        try:
            model = self._load(self._model.value)
        except (ModelError, OSError) as err:
            self.status.value = str(err)
            return
        self._updating = True
        try:
            self.params_form.show(model.instance_params)
        finally:
            self._updating = False
        trained = f"trained at {model.diameter:.0f} px diameter" if model.diameter else "no training diameter"
        self.predict_form["diameter"].tooltip = f"typical object diameter in pixels; 0 = auto ({model.name}: {trained})"
        self.status.value = f"model {model.name} ({trained})"
        self._on_params_changed()

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
        n = int(full_resolution(layer).shape[axes.index("C")]) if ok else 1
        self._channel.max = max(n - 1, 0)
        self._channel.enabled = ok

    def params(self) -> InstanceParams:
        """Post-processing parameters as set in the widget (the model's for those without a row)."""
        try:
            base = self._load(self._model.value).instance_params
        except (ModelError, OSError):
            base = InstanceParams()
        return self.params_form.build(base)

    def _key(self, layer) -> tuple:
        """What cached probabilities depend on (not the thresholds)."""
        uid = None if layer is None else layer.unique_id  # not id(): npe2 hands out layer proxies
        return (uid, self._model.value, *self.predict_form.values().values(), self._axes.value.strip().upper(),
                self._mode.value, int(self._channel.value))

    def _job(self, layer, model: CellModel) -> Job:
        """Capture what a run segments: channel picked, RGB converted, axes checked (InputError if not).

        Big or lazy (dask, zarr, multiscale) layers are not read here: ``data`` stays lazy and the run
        goes block by block in the worker.
        """
        name = layer.name
        source = full_resolution(layer)
        axes = check_axes(self._axes.value, source.shape[:layer.ndim], allowed=LAYER_AXES, name=name)
        channel = int(self._channel.value) if "C" in axes else None
        try:
            options, params = self.predict_form.build(), self.params()
        except SettingError as err:
            raise InputError(f"{name}: {err}") from None
        big = self._is_big(source, options)
        if big and layer.rgb:
            raise InputError(f"{name}: RGB layers this big are not supported; convert to grey first")
        if big:
            data, used, note = source, axes.replace("C", ""), "big image: segmented in blocks"
        else:
            data, used, note = select_channel(source, axes + ("S" if layer.rgb else ""), channel, name)
        try:
            mode = resolve_mode(used, self._mode.value, model.config.dims)
        except ValueError as err:
            raise InputError(f"{name}: {err}") from None
        if not big:
            data = check_values(np.asarray(data), name, convert=False)  # no 4-byte copy on the GUI thread
        keep = [i for i, a in enumerate(axes) if a != "C"]
        scale = tuple(float(layer.scale[i]) for i in keep)
        translate = tuple(float(layer.translate[i]) for i in keep)
        return Job(layer, self._key(layer), data, used, mode, scale, translate, note, model, options, params,
                    chunked=(axes, channel) if big else None)

    @staticmethod
    def _is_big(source, options: PredictOptions) -> bool:
        return bool(options.chunk) or not isinstance(source, np.ndarray) or source.size > CHUNK_ABOVE

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
            job = self._job(layer, self._load(self._model.value))
        except (InputError, ModelError, OSError) as err:
            self._fail(str(err))
            return None
        from napari.qt.threading import thread_worker

        if job.chunked is not None:
            worker = thread_worker(chunked_job, start_thread=False)(job, job.data, *job.chunked)
        else:
            worker = thread_worker(segment_job, start_thread=False)(job)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda shown: self._on_returned(job, shown))
        worker.errored.connect(lambda err: self._fail(log.failure("segmentation failed", err)))
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
        counted = p.total <= 1 or re.search(r"\d+/\d+", p.message)  # "block 3/16" says it already
        self.status.value = p.message if counted else f"{p.message} {p.done}/{p.total}"
        pbar = self._pbar  # napari's bar processes events: `finished` may run while it updates
        if pbar is not None:
            if pbar.total != p.total:
                pbar.reset(total=p.total)
            pbar.update(p.done - pbar.n)

    def _on_returned(self, job: Job, shown) -> None:
        if isinstance(shown, Failure):
            self._fail(shown.message)
            return
        if job.layer not in self._viewer.layers:
            # status line only: a notification right after the bottom layer was removed can crash
            # napari 0.9's canvas (docs/known-issues.md)
            self.status.value = f"image layer {job.layer.name!r} was removed during the run; result discarded"
            return
        job.shown = shown
        self._cache = job
        self._show(job, shown)
        if self._key(job.layer) == job.key and self.params() != job.params:  # thresholds changed mid-run
            self._relabel_again = True  # once the worker has finished (_on_finished)

    def _on_finished(self) -> None:
        super()._on_finished()
        if self._relabel_again and self._relabel_worker is None:
            self._relabel_again = False
            self.relabel()

    # ------------------------------------------------------------------ cache / results
    def _on_params_changed(self, *_: Any) -> None:
        if not self._updating:
            self.relabel()

    def _cache_applies(self) -> bool:
        job = self._cache
        if job is not None and job.chunked is not None and self._key(self._image.value) == job.key:
            self.status.value = "big images keep no probabilities: the new thresholds apply at the next Run"
            return False
        return (job is not None and self._worker is None and job.layer in self._viewer.layers
                and self._key(self._image.value) == job.key)

    def relabel(self) -> bool:
        """Re-run only post-processing on the cached probabilities, in a worker; False when no cache applies."""
        if not self._cache_applies():
            return False
        if self._relabel_worker is not None:  # one at a time: the latest thresholds run next
            self._relabel_again = True
            return True
        try:
            params = self.params()
        except SettingError as err:
            self._fail(str(err))
            return False
        from napari.qt.threading import thread_worker

        job = self._cache
        worker = thread_worker(relabel_job, start_thread=False)(job, params)
        worker.returned.connect(lambda shown: self._on_relabelled(job, shown))
        worker.errored.connect(lambda err: self._fail(log.failure("re-labelling failed", err)))
        worker.finished.connect(self._on_relabel_finished)
        self._relabel_worker = worker
        self.status.value = "re-labelling…"
        worker.start()
        return True

    def _on_relabelled(self, job: Job, shown) -> None:
        if isinstance(shown, Failure):
            self._fail(shown.message)
        elif job is self._cache and job.layer in self._viewer.layers:
            job.shown = shown
            self.relabel_count += 1
            self._show(job, shown)

    def _on_relabel_finished(self) -> None:
        self._relabel_worker = None
        if self._relabel_again:
            self._relabel_again = False
            self.relabel()

    def _show(self, job: Job, shown: Shown) -> None:
        """Put a result into the widget's layer for ``job.layer`` (+ counts dock, points). GUI thread."""
        src, r = job.layer, shown.result
        options = {k: v for k, v in job.options.to_dict().items() if k != "diameter"}
        meta = layer_metadata(shown, src.name, job.model.name, options, job.note)
        target = self.layers.show_labels(src, shown, job.scale, job.translate, meta)
        what, unit = noun(job.model.name), "frame" if r.count_axis == "frame" else "slice"
        counts = shown.counts
        self.counts_table = counts_table(shown)
        if len(counts) > 1:
            total = int(self.counts_table["count"].sum())
            self.layers.show_counts(src, self.counts_table, f"{src.name}: {what} per {unit} ({total} in all)", what)
        if self._add_points.value:
            self._show_points(job)
        diameter = r.segmentation.diameter if r.segmentation is not None else None
        diam = f", diameter {diameter:.1f} px" if diameter else ""
        self.result.value = count_text(counts, what, unit, volume=r.mode == "3d" and len(counts) == 1)
        unsure = [i for i, c in enumerate(r.check) if c]
        if unsure:
            where = "" if len(counts) == 1 else f" in {len(unsure)} of {len(counts)} {unit}s"
            self.result.value += f" — check{where}: the network was unsure (uncertainty {max(r.uncertainty):.2f})"
        self.status.value = (f"{src.name}: {sum(counts)} objects{diam} ({r.axes}, {r.mode}) → layer {target.name!r}"
                             + (f"; {job.note}" if job.note else ""))

    def _on_points_toggled(self, *_: Any) -> None:
        job = self._cache
        if self._add_points.value and job is not None and job.shown is not None and job.layer in self._viewer.layers:
            self._show_points(job)

    def _show_points(self, job: Job) -> None:
        r = job.shown.result
        diameter = r.segmentation.diameter if r.segmentation is not None else None
        self.layers.show_points(job.layer, centroids(job.shown.table, r.axes, r.mode), job.scale, job.translate,
                                diameter)

    def counts_dock(self, image):
        """The counts dock made for ``image`` (a stack), if any."""
        return self.layers.dock(image)

    def points_layer(self, image):
        """The centroid Points layer this widget made for ``image`` (if still in the viewer)."""
        return self.layers.points(image)

    def result_layer(self, image):
        """The Labels layer this widget made for ``image`` (if still in the viewer)."""
        return self.layers.labels(image)
