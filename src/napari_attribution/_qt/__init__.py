"""napari dock widgets (Qt side only: no maths here, everything calls core/io).

Widgets: :class:`TrainWidget`, :class:`ImportanceWidget`, :class:`AttributionWidget`,
:class:`ExportWidget`, :class:`PointExplainWidget`. Long work runs in napari thread workers
(see ``_runner``).
"""

from .attribution_widget import AttributionWidget
from .export_widget import ExportWidget
from .importance_widget import ImportanceWidget
from .point_widget import PointExplainWidget
from .train_widget import TrainWidget

__all__ = ["AttributionWidget", "ExportWidget", "ImportanceWidget", "PointExplainWidget",
           "TrainWidget"]
