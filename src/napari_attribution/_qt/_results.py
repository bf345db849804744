"""Result layers: short stable names, one layer per (method, target, images, channel)
that a rerun replaces, one colour scale per run with a colour bar, and the provenance
text shown for a selected result layer."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from qtpy.QtWidgets import QWidget

KIND = "napari_attribution"
EVIDENCE_CMAP = "napari-attribution evidence"
SIGNED_CMAP = "napari-attribution signed"


def evidence_colormap():
    """Inferno whose lower half is nearly transparent: over the image (translucent
    blending) weak evidence leaves the cells visible, strong evidence glows. Opacity grows
    with the square of the value (0.02 at 15 %, 0.22 at half the range, 0.9 at the top):
    a map with a little evidence everywhere no longer tints the whole image."""
    from matplotlib import colormaps
    from napari.utils.colormaps import Colormap

    t = np.linspace(0, 1, 64)
    rgba = colormaps["inferno"](t)
    rgba[:, 3] = 0.9 * t**2
    return Colormap(colors=rgba, name=EVIDENCE_CMAP, display_name="evidence (inferno)")


def _signed_rgba(t: np.ndarray) -> np.ndarray:
    """Blue (below 0) - transparent (0) - red (above 0) for ``t`` in [0, 1] (0.5 is 0):
    opacity grows with the square of the distance from the centre, as in the evidence
    colormap, so values near 0 leave the cells visible."""
    from matplotlib import colormaps

    rgba = colormaps["RdBu_r"](t)
    rgba[:, 3] = 0.9 * (2 * np.abs(t - 0.5)) ** 2
    return rgba


def signed_colormap():
    """Diverging colormap for signed maps, centred on 0 (with :func:`symmetric_limits`
    contrast): red where the map counts for the target (or for A in "A rather than
    B"), blue where it counts against it (for B), transparent near 0."""
    from napari.utils.colormaps import Colormap

    return Colormap(colors=_signed_rgba(np.linspace(0, 1, 65)), name=SIGNED_CMAP,
                    display_name="signed (blue-red)")


def legend_text(signed: bool, target: str, contrast: str | None = None) -> str:
    """What the colours of a map mean, in one line under the colour bar."""
    if contrast is not None:
        return f"red: evidence for {target} rather than {contrast}; blue: for {contrast}"
    if signed:
        return f"red: raises P({target}); blue: lowers it; clear: no effect"
    return f"bright: evidence for {target}; dark or clear: none"


def run_contrast(maps: list[np.ndarray], top: float = 99.0) -> tuple[float, float]:
    """One contrast range for every map of a run: from 0 to the ``top`` percentile of the
    positive values (a weak map then looks weak beside a strong one)."""
    vals = [np.asarray(m, np.float64).ravel() for m in maps]
    flat = np.concatenate(vals) if vals else np.zeros(1)
    flat = flat[np.isfinite(flat) & (flat > 0)]
    if flat.size > 1_000_000:
        flat = flat[:: flat.size // 1_000_000 + 1]
    hi = float(np.percentile(flat, top)) if flat.size else 1.0
    return 0.0, max(hi, 1e-6)


def result_name(method: str, target: str, images: str, channel: str | None = None) -> str:
    """``PCIM · nuclear · image 3`` (`` · DNA`` for a per-channel map)."""
    label = method.upper() if method in ("pcim", "rise") else method.replace("_", " ")
    parts = [label, target, images] + ([channel] if channel else [])
    return " · ".join(parts)


def result_key(meta: dict) -> tuple:
    info = meta.get(KIND, {})
    return (info.get("kind"), info.get("key"))


def _differs(a, b) -> bool:
    """Two numeric sequences differ (in length or in a value)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return a.shape != b.shape or not np.allclose(a, b, rtol=1e-12, atol=0.0)


def put_result_layer(viewer, data: np.ndarray, name: str, key: str, meta: dict,
                     contrast: tuple[float, float], placement: dict,
                     signed: bool = False) -> Any:
    """Add the result layer, or replace the data of the one a previous run with the same
    key made (a rerun does not pile layers up). ``signed``: a diverging colormap around
    0 (give symmetric ``contrast``), else the evidence colormap."""
    meta = {KIND: {**meta.get(KIND, {}), "kind": "attribution", "key": key,
                   "signed": bool(signed)}}
    cmap = signed_colormap() if signed else evidence_colormap()
    for layer in list(viewer.layers):
        if result_key(layer.metadata) == ("attribution", key):
            # only what changed: each setter makes napari recompute extents, redraw
            # the layer list or the canvas (on the GUI thread, after every run)
            layer.data = data
            layer.metadata = meta
            for attr in ("scale", "translate"):
                if _differs(getattr(layer, attr), placement[attr]):
                    setattr(layer, attr, placement[attr])
            if layer.colormap.name != cmap.name:
                layer.colormap = cmap
            if _differs(layer.contrast_limits, contrast):
                layer.contrast_limits = contrast
            if layer.name != name:
                layer.name = name
            return layer
    layer = viewer.add_image(data, name=name, metadata=meta, colormap=cmap,
                             blending="translucent", opacity=0.8, contrast_limits=contrast,
                             **placement)
    return layer


class ColourBar(QWidget):
    """The run's colour scale under the widget's buttons: the evidence colormap from 0
    to the top of the shared contrast range, or the signed one from -m to +m, with a
    line saying what the colours mean (drawn by Qt: no napari overlay to build)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.range: tuple[float, float] | None = None
        self.title = ""
        self.signed = False
        self.legend = ""
        self.setMinimumHeight(52)
        self.setVisible(False)

    def set_range(self, lo: float, hi: float, title: str, signed: bool = False,
                  legend: str = "") -> None:
        self.range = (float(lo), float(hi))
        self.title = title
        self.signed = bool(signed)
        self.legend = legend
        self.setToolTip(legend)
        self.setVisible(True)
        self.update()

    def clear(self) -> None:
        """Hide the bar (no result shown)."""
        self.range = None
        self.setVisible(False)

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        from matplotlib import colormaps
        from qtpy.QtCore import QRectF, Qt
        from qtpy.QtGui import QColor, QLinearGradient, QPainter

        if self.range is None:
            return
        p = QPainter(self)
        w, h = self.width(), self.height()
        grad = QLinearGradient(0, 0, w - 12, 0)
        ts = np.linspace(0, 1, 17)
        if self.signed:   # the layer's colours with its opacity ramp (signed_colormap)
            rgba = _signed_rgba(ts)
            rgba[:, 3] = 0.15 + 0.85 * rgba[:, 3] / 0.9
        else:             # (evidence_colormap)
            rgba = colormaps["inferno"](ts)
            rgba[:, 3] = 0.15 + 0.85 * ts ** 2
        for t, (r, g, b, a) in zip(ts, rgba, strict=True):
            grad.setColorAt(float(t), QColor.fromRgbF(r, g, b, a))
        p.fillRect(QRectF(6, 2, w - 12, 12), grad)
        p.setPen(QColor("#d0d0d0"))
        lo, hi = self.range
        row = QRectF(6, 16, w - 12, 16)
        p.drawText(row, Qt.AlignmentFlag.AlignLeft, f"{lo:.3g}")
        p.drawText(row, Qt.AlignmentFlag.AlignHCenter, self.title)
        p.drawText(row, Qt.AlignmentFlag.AlignRight, f"{hi:+.3g}" if self.signed
                   else f"{hi:.3g}")
        if self.legend:
            text = p.fontMetrics().elidedText(self.legend, Qt.TextElideMode.ElideRight,
                                              int(w - 12))
            p.drawText(QRectF(6, 32, w - 12, h - 32), Qt.AlignmentFlag.AlignHCenter, text)
        p.end()


def provenance_text(layer) -> str:
    """What made a result layer, as readable lines (empty for other layers)."""
    md = getattr(layer, "metadata", {}) or {}
    prov = md.get(KIND, {}).get("provenance")
    if prov is None and isinstance(md.get("attribution"), dict):  # reopened file
        prov = md["attribution"].get("provenance")
    if not prov:
        return ""
    keys = ("method", "target_names", "probability", "channel_names", "source_layers",
            "slice_index", "scale", "model", "model_kind", "model_sha256", "time",
            "version")
    lines = [f"layer: {layer.name}"]
    for k in keys:
        if k in prov and prov[k] is not None:
            v = prov[k]
            if k == "model_sha256":
                v = str(v)[:16] + "…"
            elif k == "target_names" and isinstance(v, list) and len(set(v)) == 1:
                v = v[0]
            lines.append(f"{k.replace('_', ' ')}: {v if isinstance(v, str) else json.dumps(v)}")
    params = prov.get("params")
    if params:
        lines.append("parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()
                                                if v is not None))
    return "\n".join(lines)
