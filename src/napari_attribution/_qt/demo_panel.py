"""Dock the widgets pre-loaded with a trained bundle (for ``napari-attribution demo``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import session_for
from .attribution_widget import AttributionWidget
from .export_widget import ExportWidget
from .importance_widget import ImportanceWidget
from .point_widget import PointExplainWidget
from .train_widget import TrainWidget


def add_demo_panels(viewer, bundle, images: np.ndarray | None = None) -> dict[str, Any]:
    """Dock Train, Channel importance, Pixel attribution, Point and explain and Export
    (tabbed in one area) with ``bundle`` loaded.

    ``images`` (N, C, H, W) are the demo's images, already shown one layer per channel
    named like ``bundle.channel_names``; the widgets tick those layers. Returns the widgets.
    """
    widgets = {
        "train": TrainWidget(viewer),
        "importance": ImportanceWidget(viewer),
        "attribution": AttributionWidget(viewer),
        "point": PointExplainWidget(viewer),
        "export": ExportWidget(viewer),
    }
    titles = {"train": "Train (napari-attribution)",
              "importance": "Channel importance",
              "attribution": "Pixel attribution",
              "point": "Point and explain",
              "export": "Export"}
    docks = {k: viewer.window.add_dock_widget(w, name=titles[k], area="right",
                                              tabify=True)
             for k, w in widgets.items()}
    for w in (widgets["train"], widgets["importance"], widgets["attribution"],
              widgets["point"]):
        w.picker.refresh()
        w.picker.select_for_model(list(bundle.channel_names))
    session = session_for(viewer)
    if images is not None and not any("labels" in ly.metadata for ly in viewer.layers):
        session.class_names = [str(c) for c in bundle.class_names]  # Train shows them
    session.set_model(bundle)
    docks["importance"].raise_()
    return widgets
