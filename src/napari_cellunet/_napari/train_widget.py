"""napari dock widget: fine-tune a model on image + Labels layer pairs (human in the loop).

Segment, correct the labels with napari's paint/erase/fill tools, add the
(image, labels) pair here, fine-tune for a few minutes, and the new model is
offered by the Segment widget at once. Stacks use only their annotated slices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, LineEdit, PushButton
from napari.layers import Image, Labels
from napari.utils import progress
from napari.utils.notifications import show_info

from .. import log
from ..arrays import InputError, as_slices
from ..inference import Progress
from ..models import (
    DEFAULT_MODEL,
    CellModel,
    ModelError,
    load_model,
    model_names,
    notify_models_changed,
    user_model_path,
)
from ..settings import FINE_TUNE_IN_NAPARI, AugmentConfig, TrainConfig
from ..training import TrainState, iter_train
from .export_panel import ExportPanel
from .forms import SettingsForm, section
from .widget_parts import Failure, LayerChoices, WorkerControls, full_resolution, wrapping_label

if TYPE_CHECKING:
    import napari

SAME_AS_START = "as the start model"
OBJECT_CONTRAST = {SAME_AS_START: None, "bright on dark (fluorescence)": False,
                   "dark on light (brightfield, H&E)": True}


def annotated_slices(image_layer: Image, labels_layer: Labels) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, labels) 2D pairs from two layers; slices without any label are skipped."""
    slices = as_slices(full_resolution(image_layer), rgb=image_layer.rgb, name=image_layer.name)
    labels = np.asarray(full_resolution(labels_layer))
    if labels.shape != slices.spatial_shape:
        raise InputError(f"labels {labels_layer.name!r} {labels.shape} do not match image "
                         f"{image_layer.name!r} {slices.spatial_shape}")
    labels = labels.reshape(slices.data.shape)
    return [(img, lab.astype(np.int32)) for img, lab in zip(slices.data, labels) if lab.any()]


def split_pairs(pairs: list, val_share: float, seed: int = 0) -> tuple[list, list]:
    """Hold out a share of the pairs for validation (none when fewer than 2 pairs)."""
    if len(pairs) < 2 or val_share <= 0:
        return list(pairs), []
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = max(1, int(round(val_share * len(pairs))))
    return [pairs[i] for i in order[n_val:]], [pairs[i] for i in order[:n_val]]


def _train_job(train, val, out_path, cfg: TrainConfig, init: CellModel, meta: dict):
    try:
        return (yield from iter_train(train, val, out_path, cfg, init=init, meta=meta))
    except Exception as err:  # shown as a message (traceback in the log), never as a traceback
        return Failure(log.failure("training failed", err))


class TrainWidget(Container, LayerChoices, WorkerControls):
    """Fine-tune a model on (image, Labels) layer pairs and save it in the user model folder."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self._viewer = viewer
        self._pairs: list[tuple[Image, Labels]] = []
        self._worker = None
        self._pbar: progress | None = None
        self.last_model: CellModel | None = None

        self._image = ComboBox(label="image", choices=lambda w: self._layers(Image))
        self._labels = ComboBox(label="labels", choices=lambda w: self._layers(Labels))
        self._add_btn = PushButton(text="Add pair")
        self._clear_btn = PushButton(text="Clear pairs")
        pair_buttons = Container(widgets=[self._add_btn, self._clear_btn], layout="horizontal", labels=False)
        pair_buttons.margins = (0, 0, 0, 0)
        self.pairs_text = wrapping_label("no training pairs yet")
        self._init = ComboBox(label="start from", choices=lambda w: model_names(),
                              tooltip="model to fine-tune (its size and diameter are kept)")
        self._objects = ComboBox(label="objects", choices=list(OBJECT_CONTRAST), value=SAME_AS_START,
                                 tooltip="bright objects (fluorescence) or dark objects on a light background "
                                         "(brightfield, H&E: the model sees the inverted image)")
        self._name = LineEdit(label="new model name", value="my-model")
        self.train_form = SettingsForm(TrainConfig, values=FINE_TUNE_IN_NAPARI)
        self._minutes = self.train_form["minutes"]
        self._val_share = FloatSpinBox(label="validation share", value=0.2, min=0.0, max=0.5, step=0.05,
                                       tooltip="share of the annotated slices held out to score the model")
        self._start_btn = self._train_btn = PushButton(text="Train")
        self._cancel_btn = PushButton(text="Cancel", enabled=False)
        buttons = Container(widgets=[self._train_btn, self._cancel_btn], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.result = wrapping_label("–", big=True)
        self.status = wrapping_label()
        _, pair = section("training pair", [self._image, self._labels])
        _, run = section("fine-tune", [self._init, self._objects, self._name, *self.train_form.widgets.values(),
                                       self._val_share])
        self.exporter = ExportPanel()
        self.extend([pair, pair_buttons, self.pairs_text, run, buttons, self.result, self.status, self.exporter])
        if DEFAULT_MODEL in self._init.choices:
            self._init.value = DEFAULT_MODEL
        self._add_btn.changed.connect(lambda: self.add_pair())
        self._clear_btn.changed.connect(self.clear_pairs)
        self._train_btn.changed.connect(lambda: self.train())
        self._cancel_btn.changed.connect(self.cancel)
        self._watch_layers(viewer)

    @property
    def worker(self):
        return self._worker

    # ------------------------------------------------------------------ pairs
    def add_pair(self, image: Image | None = None, labels: Labels | None = None) -> bool:
        image = image or self._image.value
        labels = labels or self._labels.value
        if image is None or labels is None:
            self._fail("Choose an image layer and a Labels layer.")
            return False
        try:
            n = len(annotated_slices(image, labels))
        except InputError as err:
            self._fail(str(err))
            return False
        if n == 0:
            self._fail(f"{labels.name!r} has no labelled objects yet: paint some first.")
            return False
        self._pairs.append((image, labels))
        self._show_pairs()
        return True

    def clear_pairs(self, *_: Any) -> None:
        self._pairs.clear()
        self._show_pairs()

    def _show_pairs(self) -> None:
        self.pairs_text.value = ("; ".join(f"{i.name} + {lab.name}" for i, lab in self._pairs)
                                 or "no training pairs yet")

    # ------------------------------------------------------------------ train / cancel
    def train(self):
        """Fine-tune in a worker thread; returns the worker (None if it could not start)."""
        if self._worker is not None:
            self.status.value = "already training"
            return None
        if not self._pairs:
            self._fail("Add at least one image + labels pair first.")
            return None
        try:
            out_path = user_model_path(self._name.value)
            init = load_model(self._init.value)
            pairs = [p for img, lab in self._pairs if img in self._viewer.layers and lab in self._viewer.layers
                     for p in annotated_slices(img, lab)]
        except (InputError, ModelError, OSError) as err:
            self._fail(str(err))
            return None
        if not pairs:
            self._fail("The layers of the training pairs were removed.")
            return None
        train, val = split_pairs(pairs, float(self._val_share.value))
        crop = int(min(256, max(64, min(min(i.shape) for i, _ in train) // 16 * 16)))
        cfg = self.train_form.build(TrainConfig(**FINE_TUNE_IN_NAPARI, augment=AugmentConfig(crop=crop),
                                              invert=OBJECT_CONTRAST[self._objects.value]))
        meta = {"name": out_path.stem, "description": f"fine-tuned from {init.name} in napari",
                "training_data": ", ".join(f"{i.name} + {lab.name}" for i, lab in self._pairs),
                "training_command": f"napari Train widget: {len(train)} train / {len(val)} val slices, "
                                    f"{cfg.minutes} min from {init.name}"}
        from napari.qt.threading import thread_worker

        worker = thread_worker(_train_job, start_thread=False)(train, val, out_path, cfg, init, meta)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(lambda err: self._fail(log.failure("training failed", err)))
        worker.aborted.connect(lambda: setattr(self.status, "value", "cancelled: no model saved"))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._pbar = progress(total=int(cfg.minutes * 60), desc=f"CellUNet: training {out_path.stem}")
        self._train_btn.enabled, self._cancel_btn.enabled = False, True
        self.status.value = f"training on {len(train)} slice(s), validating on {len(val)}…"
        worker.start()
        return worker

    def _on_progress(self, msg) -> None:
        if isinstance(msg, TrainState):
            text = f"step {msg.step} · loss {msg.loss:.3f}"
            if msg.best_ap50 is not None:
                text += f" · best val AP@0.5 {msg.best_ap50:.3f}"
            self.result.value = text
        elif isinstance(msg, Progress):
            self.status.value = msg.message
            pbar = self._pbar
            if pbar is not None and msg.message.startswith("step"):
                pbar.update(max(0, min(msg.done, pbar.total) - pbar.n))

    def _on_returned(self, result) -> None:
        if isinstance(result, Failure):
            self._fail(result.message)
            return
        self.last_model = result
        if result.path is not None:
            result.path.with_name(result.path.name + ".ckpt").unlink(missing_ok=True)
        notify_models_changed()
        self.exporter.choose(result.name)
        scores = result.meta.get("val_scores_default_thresholds") or {}
        score = f", val AP@0.5 {scores['ap50']:.3f}" if "ap50" in scores else ""
        self.status.value = f"saved model {result.name!r}{score} — pick it in Segment & count"
        show_info(self.status.value)
