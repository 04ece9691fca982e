"""The Train widget's *Export* section: a model as a bioimage.io package, ONNX or TorchScript, in a worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, Container, FileEdit, PushButton

from .. import log
from ..models import DEFAULT_MODEL, ModelError, load_model, model_names
from .forms import section
from .widget_parts import Failure, Messages, wrapping_label

FORMATS = {"bioimage.io package (.zip)": "bioimageio", "ONNX": "onnx", "TorchScript": "torchscript"}


def export_model(name: str, folder: Path, fmt: str) -> Path | Failure:
    """Worker: export model ``name`` into ``folder``; the written path, or a :class:`Failure`."""
    from .. import export

    try:
        model = load_model(name)
        folder.mkdir(parents=True, exist_ok=True)
        if fmt == "bioimageio":
            return export.export_bioimageio(model, folder)
        if fmt == "onnx":
            return export.export_onnx(model, folder / f"{model.name}.onnx")
        return export.export_torchscript(model, folder / f"{model.name}.torchscript.pt")
    except Exception as err:  # shown as a message (traceback in the log)
        return Failure(log.failure("export failed", err))


class ExportPanel(Container, Messages):
    """Choose a model, a folder and a format; *Export* writes it for Fiji/deepImageJ, ilastik, bioimage.io."""

    def __init__(self) -> None:
        super().__init__(labels=False)
        self._worker = None
        self._model = ComboBox(label="model", choices=lambda w: model_names(),
                               tooltip="a bundled model or one of yours (a model you just trained is chosen)")
        self._format = ComboBox(label="format", choices=list(FORMATS), value=next(iter(FORMATS)))
        self._folder = FileEdit(label="to folder", mode="d")
        self._export_btn = PushButton(text="Export")
        self.status = wrapping_label()
        _, form = section("export a model", [self._model, self._format, self._folder])
        self.extend([form, self._export_btn, self.status])
        if DEFAULT_MODEL in self._model.choices:
            self._model.value = DEFAULT_MODEL
        self._export_btn.changed.connect(lambda: self.export())

    def choose(self, name: str) -> None:
        self._model.reset_choices()
        if name in self._model.choices:
            self._model.value = name

    def export(self, folder: str | Path | None = None):
        """Export in a worker thread; returns the worker (None if it could not start)."""
        folder = Path(folder if folder is not None else self._folder.value)
        if self._worker is not None:
            self.status.value = "already exporting"
            return None
        if not self._model.value:
            return self._fail("Choose a model first.")
        if not str(folder) or str(folder) == ".":
            return self._fail("Choose a folder to export to.")
        try:
            load_model(self._model.value)
        except ModelError as err:
            return self._fail(str(err))
        from napari.qt.threading import thread_worker

        worker = thread_worker(export_model, start_thread=False)(self._model.value, folder,
                                                                 FORMATS[self._format.value])
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._export_btn.enabled = False
        self.status.value = f"exporting {self._model.value}…"
        worker.start()
        return worker

    def _on_returned(self, result: Any) -> None:
        if isinstance(result, Failure):
            self._fail(result.message)
        else:
            self.status.value = f"exported to {result}"

    def _on_finished(self) -> None:
        self._worker = None
        self._export_btn.enabled = True
