"""Widget rows generated from the settings dataclasses (:mod:`napari_cellunet.settings`).

A :class:`SettingsForm` makes one magicgui widget per setting with its label,
range, step and help, reads the values back into the dataclass, and can be
reset to a model's defaults. A new setting shows up here without a line of
widget code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, SpinBox, Widget

from ..settings import AUTO, default_of, specs


def _decimals(step: float | None) -> int:
    return 2 if not step or step >= 0.01 else 4


def setting_widget(cls, name: str, value: Any = None, choices: Sequence | None = None) -> Widget:
    """One widget for setting ``name`` of ``cls`` (CheckBox, ComboBox, SpinBox, FloatSpinBox or LineEdit)."""
    s = specs(cls)[name]
    default = default_of(cls, name)
    value = default if value is None else value
    common = {"label": s.label, "tooltip": s.help}
    if isinstance(default, bool):
        return CheckBox(text=s.label, value=bool(value), tooltip=s.help)
    if choices is not None or s.choices:
        options = list(choices if choices is not None else s.choices)
        return ComboBox(choices=options, value=value if value in options else options[0], **common)
    if s.low is not None:
        number = 0 if value in (AUTO, None) else value
        if isinstance(default, int):
            w = SpinBox(value=int(number), min=int(s.low), max=int(s.high), step=int(s.step or 1), **common)
        else:
            w = FloatSpinBox(value=float(number), min=float(s.low), max=float(s.high), step=s.step or 0.1, **common)
            if hasattr(w.native, "setDecimals"):
                w.native.setDecimals(_decimals(s.step))
        if s.zero and hasattr(w.native, "setSpecialValueText"):  # 0 reads "auto" / "off" (Qt backend)
            w.native.setSpecialValueText(s.zero)
        return w
    return LineEdit(value=str(value), **common)


class SettingsForm:
    """The widget rows of one settings dataclass (only the fields whose spec has ``widget=True``)."""

    def __init__(self, cls, names: Iterable[str] | None = None, choices: dict[str, Sequence] | None = None,
                 values: dict[str, Any] | None = None) -> None:
        self.cls = cls
        chosen = None if names is None else list(names)
        choices, values = choices or {}, values or {}
        self.widgets: dict[str, Widget] = {
            name: setting_widget(cls, name, values.get(name), choices.get(name))
            for name, s in specs(cls).items() if s.widget and (chosen is None or name in chosen)}

    def __getitem__(self, name: str) -> Widget:
        return self.widgets[name]

    def group(self, group: str) -> list[Widget]:
        """The widgets of one spec group ("network", "post-processing", "advanced"), in declaration order."""
        s = specs(self.cls)
        return [w for name, w in self.widgets.items() if s[name].group == group]

    def values(self) -> dict[str, Any]:
        return {name: w.value for name, w in self.widgets.items()}

    def build(self, base=None):
        """``base`` (or the defaults) with the widgets' values; raises SettingError for a bad value."""
        return replace(base if base is not None else self.cls(), **self.values())

    def show(self, settings) -> None:
        """Set every widget from a settings object (e.g. a model's default thresholds)."""
        for name, w in self.widgets.items():
            value = getattr(settings, name)
            w.value = 0 if value in (AUTO, None) and not isinstance(w, (CheckBox, ComboBox, LineEdit)) else value

    def connect(self, callback: Callable) -> None:
        for w in self.widgets.values():
            w.changed.connect(callback)


def section(title: str, widgets: list[Widget], collapsed: bool = False) -> tuple[CheckBox | None, Container]:
    """A labelled sub-form; with ``collapsed`` a check box shows or hides it (returned first)."""
    form = Container(widgets=widgets, labels=True)
    form.margins = (0, 0, 0, 0)
    if not collapsed:
        form.label = title
        return None, form
    toggle = CheckBox(text=f"show {title}", value=False)
    form.visible = False
    toggle.changed.connect(lambda on: setattr(form, "visible", bool(on)))
    return toggle, form
