"""A loaded model's study findings, as the widgets and the report show them: one short
line with the verdict's severity (details in its tooltip), the same findings as the
CLI's ``train``/``channels`` print."""

from __future__ import annotations

import html
from typing import Any

#: the line's colour per verdict (napari's dark theme)
COLOURS = {"alarm": "#ff6b6b", "caution": "#ffb060", "note": "#9fd3ff", "ok": "#8fd18f"}


def model_findings(session: Any) -> list:
    """The study findings of the session's model: a training result's, else those stored
    in the loaded bundle (``ModelBundle.findings``), else none (e.g. a TorchScript file
    with no study)."""
    source = getattr(session, "train_result", None)
    found = list(getattr(source, "findings", None) or [])
    bundle = getattr(session, "bundle", None)
    if not found and bundle is not None:
        for obj in (bundle, getattr(bundle, "bundle", None)):
            found = list(getattr(obj, "findings", None) or [])
            if found:
                break
    return found


def has_study(session: Any) -> bool:
    """Whether the model carries a recorded study (a training result, or a DCMIX bundle
    with its checks): only then does "no findings" mean "OK"."""
    if getattr(session, "train_result", None) is not None:
        return True
    bundle = getattr(session, "bundle", None)
    wrapped = getattr(bundle, "bundle", None)
    return wrapped is not None and hasattr(wrapped, "checks")


def findings_line(session: Any) -> tuple[str, str]:
    """(rich text line, plain tooltip) for the widgets: ``study verdict: CAUTION — 2
    warnings, 1 note (hover for details)``; empty for a model without a recorded study."""
    from ..core.study.findings import VERDICT_TEXT, split, summary_lines, verdict

    if getattr(session, "bundle", None) is None or not has_study(session):
        return "", ""
    found = model_findings(session)
    v = verdict(found)
    warnings, notes = split(found)
    counts = ", ".join(f"{n} {w}{'s' if n != 1 else ''}" for n, w in
                       ((len(warnings), "warning"), (len(notes), "note")) if n)
    head = VERDICT_TEXT[v].split(":")[0].split(" (")[0]
    first = warnings[0] if warnings else (notes[0] if notes else None)
    detail = f" — {html.escape(first.code)}" if first is not None else ""
    text = (f"study findings: <b style='color:{COLOURS[v]}'>{html.escape(head)}</b>"
            + (f" ({counts}{detail})" if counts else "") + " <small>(hover for details)</small>")
    return text, "\n".join(summary_lines(found))


def findings_label() -> Any:
    """A hidden word-wrapped label for :func:`show_findings`."""
    from qtpy.QtWidgets import QLabel

    label = QLabel("")
    label.setWordWrap(True)
    label.setVisible(False)
    return label


def show_findings(label: Any, session: Any) -> None:
    """Put the session model's :func:`findings_line` on ``label`` (hidden when empty)."""
    text, tip = findings_line(session)
    label.setText(text)
    label.setToolTip(tip)
    label.setVisible(bool(text))
