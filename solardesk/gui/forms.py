"""Forms generated from pydantic settings models (DESIGN.md §6.4).

Every field of a :class:`solardesk.config.Settings` model has a title, a description and
bounds; :class:`SettingsForm` turns them into labelled editors with tooltips and ranges:

========================  ============================================================
field type                editor
========================  ============================================================
``bool``                  check box
``int`` / ``float``       spin box bounded by ``ge``/``gt``/``le``/``lt``
``Literal`` / ``Enum``    combo box (a one-value ``Literal``, e.g. a schema version, is a
                          constant: no editor, and :meth:`SettingsForm.values` includes it)
``str`` / ``Path``        line edit (``Path``: with a Browse… button)
nested ``BaseModel``      a group box holding its own form
anything else             line edit holding JSON (``tuple[int, int, int] | None`` → ``1,2,3``)
========================  ============================================================

Optional fields (``X | None``) accept an empty editor as ``None``. Fields whose
``json_schema_extra`` says ``{"recompute": False}`` are read-time (changing them recomputes
nothing): their labels are in italics and their tooltips say so.
:meth:`SettingsForm.model` validates the values with the model itself, so the rules live in
one place.
"""

from __future__ import annotations

import enum
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from solardesk.config import parse

_INT_LIMIT = 2**31 - 1


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            return args[0], optional
        return annotation, optional
    return annotation, False


def _bounds(field: FieldInfo) -> tuple[float | None, float | None, bool, bool]:
    lo = hi = None
    lo_open = hi_open = False
    for m in field.metadata:
        if isinstance(m, at.Ge):
            lo = m.ge
        elif isinstance(m, at.Gt):
            lo, lo_open = m.gt, True
        elif isinstance(m, at.Le):
            hi = m.le
        elif isinstance(m, at.Lt):
            hi, hi_open = m.lt, True
        elif isinstance(m, at.Interval):
            if m.ge is not None:
                lo = m.ge
            if m.gt is not None:
                lo, lo_open = m.gt, True
            if m.le is not None:
                hi = m.le
            if m.lt is not None:
                hi, hi_open = m.lt, True
    return lo, hi, lo_open, hi_open


def is_read_time(field: FieldInfo) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get("recompute", True) is False


class _Editor:
    """Adapts one Qt widget to get/set a field value."""

    def __init__(self, widget: QWidget, get, set_, changed) -> None:
        self.widget = widget
        self.get = get
        self.set = set_
        self.changed = changed


class SettingsForm(QWidget):
    """A form for ``model`` (a pydantic ``BaseModel`` class); ``values()`` gives a dict."""

    changed = Signal()

    def __init__(
        self,
        model: type[BaseModel],
        values: dict[str, Any] | None = None,
        *,
        exclude: tuple[str, ...] = (),
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.model_cls = model
        self.editors: dict[str, _Editor] = {}
        self.labels: dict[str, QLabel] = {}
        self.layout_ = QFormLayout(self)
        self.layout_.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.layout_.setContentsMargins(0, 0, 0, 0)
        self.constants: dict[str, Any] = {}
        for name, field in model.model_fields.items():
            if name in exclude:
                continue
            args = typing.get_args(field.annotation)
            if typing.get_origin(field.annotation) is Literal and len(args) == 1:
                # A one-value Literal is a constant (a schema version): nothing to edit.
                self.constants[name] = args[0]
                continue
            editor = self._editor_for(name, field)
            self.editors[name] = editor
            title = field.title or name.replace("_", " ").capitalize()
            label = QLabel(title)
            if is_read_time(field):
                font = label.font()
                font.setItalic(True)
                label.setFont(font)
            tip = field.description or ""
            if is_read_time(field):
                tip += " (read-time: changing it recomputes nothing)"
            label.setToolTip(tip)
            editor.widget.setToolTip(tip)
            editor.widget.setObjectName(f"field_{name}")
            self.labels[name] = label
            if isinstance(editor.widget, QGroupBox):
                editor.widget.setTitle(title)
                self.layout_.addRow(editor.widget)
            else:
                self.layout_.addRow(label, editor.widget)
            editor.changed(self._emit_changed)
        self.error_label = QLabel()
        self.error_label.setObjectName("formError")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #ff6e6e;")
        self.error_label.hide()
        self.layout_.addRow(self.error_label)
        self.set_values(values or {})

    def _emit_changed(self, *_args: Any) -> None:
        self.changed.emit()

    # -- editors ------------------------------------------------------------------------------
    def _editor_for(self, name: str, field: FieldInfo) -> _Editor:
        annotation, optional = _unwrap_optional(field.annotation)
        origin = typing.get_origin(annotation)
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            box = QGroupBox()
            sub = SettingsForm(annotation, parent=box)
            lay = QFormLayout(box)
            lay.addRow(sub)
            return _Editor(
                box,
                lambda: sub.values(),
                lambda v: sub.set_values(v.model_dump() if isinstance(v, BaseModel) else v or {}),
                sub.changed.connect,
            )
        if annotation is bool:
            w = QCheckBox()
            return _Editor(w, w.isChecked, lambda v: w.setChecked(bool(v)), w.toggled.connect)
        if annotation in (int, float) and not optional:
            return self._number(annotation, field)
        if origin is Literal or (
            isinstance(annotation, type) and issubclass(annotation, enum.Enum)
        ):
            choices = (
                list(typing.get_args(annotation))
                if origin is Literal
                else [m.value for m in annotation]
            )
            w = QComboBox()
            for c in choices:
                w.addItem(str(c), c)

            def set_choice(v, w=w) -> None:
                v = v.value if isinstance(v, enum.Enum) else v
                i = w.findData(v)
                w.setCurrentIndex(max(i, 0))

            return _Editor(w, w.currentData, set_choice, w.currentIndexChanged.connect)
        if annotation in (str, Path):
            edit = QLineEdit()
            if optional:
                edit.setPlaceholderText("(none)")
            get = (lambda e=edit: e.text().strip() or None) if optional else edit.text
            if annotation is Path:
                holder = QWidget()
                row = QHBoxLayout(holder)
                row.setContentsMargins(0, 0, 0, 0)
                row.addWidget(edit, 1)
                browse = QPushButton("Browse…")
                row.addWidget(browse)

                def pick(_=False, e=edit) -> None:
                    path, _f = QFileDialog.getOpenFileName(self, "Choose a file", e.text())
                    if path:
                        e.setText(path)

                browse.clicked.connect(pick)
                return _Editor(
                    holder,
                    get,
                    lambda v, e=edit: e.setText("" if v is None else str(v)),
                    edit.textChanged.connect,
                )
            return _Editor(
                edit,
                get,
                lambda v, e=edit: e.setText("" if v is None else str(v)),
                edit.textChanged.connect,
            )
        # Fallback: text. Sequences as comma-separated items ("4, 3, 2" or "a.tif, b.tif"),
        # anything else as JSON; empty means None for optional fields, else the default.
        edit = QLineEdit()
        sequence = origin in (list, tuple, set, frozenset)
        args = typing.get_args(annotation)
        plain_items = sequence and all(a in (str, Path) for a in args if a is not Ellipsis)
        if optional:
            edit.setPlaceholderText("default")
        elif sequence:
            edit.setPlaceholderText("comma-separated")

        def get_text(e=edit) -> Any:
            text = e.text().strip()
            if not text:
                if optional:
                    return None
                return list(default) if isinstance(default, list | tuple | set) else default
            if sequence:
                if plain_items:
                    return [part.strip().strip('"') for part in text.split(",") if part.strip()]
                try:
                    return json.loads(f"[{text}]")
                except json.JSONDecodeError:
                    return [part.strip() for part in text.split(",")]
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text

        def set_text(v, e=edit) -> None:
            if v is None:
                e.setText("")
            elif isinstance(v, list | tuple | set | frozenset):
                e.setText(", ".join(str(x) if plain_items else json.dumps(x) for x in v))
            else:
                e.setText(json.dumps(v))

        return _Editor(edit, get_text, set_text, edit.textChanged.connect)

    def _number(self, kind: type, field: FieldInfo) -> _Editor:
        lo, hi, lo_open, hi_open = _bounds(field)
        if kind is int:
            w = QSpinBox()
            w.setRange(
                int(lo + (1 if lo_open else 0)) if lo is not None else -_INT_LIMIT,
                int(hi - (1 if hi_open else 0)) if hi is not None else _INT_LIMIT,
            )
            return _Editor(w, w.value, lambda v, w=w: w.setValue(int(v)), w.valueChanged.connect)
        w = QDoubleSpinBox()
        span = (hi - lo) if lo is not None and hi is not None else None
        decimals = 3 if span is not None and span <= 10 else 2
        w.setDecimals(decimals)
        eps = 10.0**-decimals
        w.setRange(
            (lo + (eps if lo_open else 0)) if lo is not None else -1e12,
            (hi - (eps if hi_open else 0)) if hi is not None else 1e12,
        )
        if span is not None and math.isfinite(span) and span > 0:
            w.setSingleStep(10 ** math.floor(math.log10(span / 20)) if span / 20 > 0 else eps)
        else:
            w.setSingleStep(0.1)
        return _Editor(w, w.value, lambda v, w=w: w.setValue(float(v)), w.valueChanged.connect)

    # -- values -------------------------------------------------------------------------------
    def defaults(self) -> dict[str, Any]:
        out = {}
        for name, field in self.model_cls.model_fields.items():
            if name in self.editors and not field.is_required():
                value = field.get_default(call_default_factory=True)
                out[name] = value.model_dump() if isinstance(value, BaseModel) else value
        return out

    def set_values(self, values: dict[str, Any]) -> None:
        merged = {**self.defaults(), **(values or {})}
        for name, editor in self.editors.items():
            if name in merged:
                editor.set(merged[name])
        self.error_label.hide()

    def values(self) -> dict[str, Any]:
        """The editors' values (not validated; see :meth:`model`)."""
        return {**self.constants, **{name: editor.get() for name, editor in self.editors.items()}}

    def model(self) -> BaseModel:
        """The values validated as the model; shows and raises ``ConfigError`` if invalid."""
        try:
            result = parse(self.model_cls, self.values(), self.model_cls.__name__)
        except Exception as e:
            self.error_label.setText(str(e))
            self.error_label.show()
            raise
        self.error_label.hide()
        return result

    def reset(self) -> None:
        self.set_values({})
