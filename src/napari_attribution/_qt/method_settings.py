"""A settings form derived from an attribution method's config class.

Each field of the method's :class:`~napari_attribution.core.attribution.method_config.MethodConfig`
becomes an editor (spin box, check box, drop-down or text line) labelled and bounded by its
:func:`~napari_attribution.core.attribution.method_config.setting` metadata; advanced
fields sit under a collapsed "More settings". Fields of other types (e.g. Grad-CAM's layer)
stay API-only. Only values that differ from the defaults are passed on, so a run's
provenance shows what the user changed; the main (non-advanced) values are remembered
between sessions, the advanced ones start from the defaults every time.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._common import Settings

NONE_TEXT = "auto"       # an optional number left to the method
NO_CHOICE = "(none)"     # an optional choice switched off (None)
_INT_LIMIT = 2**31 - 1


def _editor(s) -> tuple[QWidget, Any]:
    """(editor widget, function returning its value) for one setting."""
    if s.kind == "bool":
        w = QCheckBox()
        w.setChecked(bool(s.default))
        return w, w.isChecked
    if s.kind == "choice" or (s.kind == "str" and s.choices):
        w = QComboBox()
        items = [str(c) for c in s.choices]
        w.addItems(items + ([NO_CHOICE] if s.optional else []))
        w.setCurrentText(NO_CHOICE if s.default is None else str(s.default))
        return w, lambda: None if w.currentText() == NO_CHOICE else w.currentText()
    if s.kind in ("int", "float"):
        integer = s.kind == "int"
        w = QSpinBox() if integer else QDoubleSpinBox()
        lo = s.minimum if s.minimum is not None else (0 if integer else -1e9)
        hi = s.maximum if s.maximum is not None else (_INT_LIMIT if integer else 1e9)
        if not integer:
            w.setDecimals(4)
            w.setSingleStep(max(abs(float(s.default or lo or 1)) / 10, 1e-4))
        # an optional number: one step below the minimum reads "auto" (None)
        step = 1 if integer else 10.0 ** -w.decimals()
        low = lo - step if s.optional else lo
        w.setRange(int(low) if integer else float(low), int(hi) if integer else float(hi))
        if s.optional:
            w.setSpecialValueText(NONE_TEXT)
        w.setValue(w.minimum() if s.default is None else s.default)

        def value() -> Any:
            v = w.value()
            return None if s.optional and v == w.minimum() else v
        return w, value
    w = QLineEdit(str(s.default))
    return w, w.text


class MethodSettings(QWidget):
    """The chosen method's settings; :meth:`params` gives the changed ones."""

    def __init__(self, settings_group: str = "method-settings",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.method: str | None = None
        self.editors: dict[str, tuple[QWidget, Any]] = {}
        self._defaults: dict[str, Any] = {}
        self._store = Settings(settings_group)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._body: QWidget | None = None

    def set_method(self, name: str) -> None:
        """Show the settings of the registered method ``name`` (none for 'auto')."""
        from superqt import QCollapsible

        from ..core.attribution.methods import registered_methods

        if name == self.method:
            return
        self.method = name
        if self._body is not None:
            self._layout.removeWidget(self._body)
            self._body.deleteLater()
        self.editors, self._defaults = {}, {}
        body = QWidget()
        lay = QVBoxLayout(body)
        lay.setContentsMargins(0, 0, 0, 0)
        basic, more = QFormLayout(), QFormLayout()
        spec = registered_methods().get(name)
        shown = [s for s in (spec.config.settings() if spec else []) if s.kind != "other"]
        for s in shown:
            w, get = _editor(s)
            if s.help:
                w.setToolTip(s.help)
            self.editors[s.name] = (w, get)
            self._defaults[s.name] = s.default
            if s.advanced:
                more.addRow(s.label, w)
            else:
                self._store.bind(f"{name}/{s.name}", w)
                basic.addRow(s.label, w)
        lay.addLayout(basic)
        if more.rowCount():
            box = QCollapsible("More settings")
            inner = QWidget()
            inner.setLayout(more)
            reset = QPushButton("Defaults")
            reset.setToolTip("Put every setting of this method back to its default")
            reset.clicked.connect(self.reset)
            more.addRow("", reset)
            box.addWidget(inner)
            lay.addWidget(box)
        self._body = body
        self._layout.addWidget(body)

    def reset(self) -> None:
        """Every editor back to the method's default."""
        name, self.method = self.method, None
        for key in list(self.editors):
            self._store.remove(f"{name}/{key}")
        self.set_method(name or "")

    def params(self) -> dict[str, Any]:
        """The settings that differ from the method's defaults."""
        out = {}
        for key, (_, get) in self.editors.items():
            value, default = get(), self._defaults[key]
            if isinstance(value, float) and isinstance(default, (int, float)):
                same = abs(value - default) < 1e-9   # spin boxes round to their decimals
            else:
                same = value == default
            if not same:
                out[key] = value
        return out

    def set_value(self, key: str, value: Any) -> None:
        """Set one editor (tests, scripts)."""
        w, _ = self.editors[key]
        if isinstance(w, QCheckBox):
            w.setChecked(bool(value))
        elif isinstance(w, QComboBox):
            w.setCurrentText(NO_CHOICE if value is None else str(value))
        elif isinstance(w, (QSpinBox, QDoubleSpinBox)):
            w.setValue(w.minimum() if value is None else value)
        else:
            w.setText(str(value))
