"""The session: what the dock widgets of one viewer share, as an evented model (no Qt).

As in napari-animation (``Animation`` apart from its ``_qt`` side), the state lives here
and the widgets only render it and forward the user's actions: the training data and
the layers it came from, the class labels being collected, the current model, the
training history and the last results. Every field is a psygnal signal on
``session.events`` (``session.events.model.connect(cb)``; ``cb`` gets the new value and,
if it takes two arguments, the old one; ``session.events.all`` relays every change).
Assigning a field emits; mutating a list or dict in place does not, so assign a new one.

psygnal holds bound methods weakly: a session never keeps a closed viewer's widgets
alive. Neither Qt nor napari is imported here, so scripts and tests drive a session
headless (``Session()``; :func:`session_for` gives a viewer's).
"""

from __future__ import annotations

import logging
import operator
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from psygnal import EmitLoopError, SignalGroupDescriptor, SignalInstance

if TYPE_CHECKING:
    import numpy as np

    from .core.data.dataset import ImageSet
    from .core.models.classifier import Classifier

#: the results of one model: cleared when the model changes (a report must not pair a
#: new model with an old model's maps)
RESULT_FIELDS = ("attribution", "curves", "probabilities", "findings", "point")

_FIELDS = ("model", "train_result", "importance", "data", "source_layers", "labels",
           "labels_key", "class_names", "history", *RESULT_FIELDS)


@dataclass(eq=False)
class Session:
    """What the widgets of one viewer share; every field emits on ``events`` when set.

    Fields compare by identity (a new array or list always emits, the same object never),
    so arrays and results need no equality of their own.
    """

    events: ClassVar[SignalGroupDescriptor] = SignalGroupDescriptor(
        equality_operators=dict.fromkeys(_FIELDS, operator.is_))

    # -- the model ---------------------------------------------------------------------
    #: the current model as a ``Classifier`` (whatever it was loaded from), or None
    model: Classifier | None = None
    #: the ``TrainResult`` when the model was trained in this session (saving, report)
    train_result: Any = None
    #: the current model's channel importance (``ChannelImportance``), or None
    importance: Any = None
    # -- the data ----------------------------------------------------------------------
    #: the labelled images the model was trained on here (``ImageSet``)
    data: ImageSet | None = None
    #: the names of the image layers ``data`` came from
    source_layers: list[str] = field(default_factory=list)
    #: class labels collected in the Train widget: image index -> class index ...
    labels: dict[int, int] = field(default_factory=dict)
    #: ... for the layers (names) and stack shape in this key
    labels_key: tuple | None = None
    #: the class names the labels index
    class_names: list[str] = field(default_factory=list)
    #: per-epoch records of the running (or last) training
    history: list[dict] = field(default_factory=list)
    # -- the last results of the current model ----------------------------------------
    #: the last Explain run's ``AttributionResult``
    attribution: Any = None
    #: its deletion / insertion curves (mode -> (N, steps) array), empty without
    curves: dict[str, Any] = field(default_factory=dict)
    #: the last prediction's class probabilities (N, classes)
    probabilities: np.ndarray | None = None
    #: the last prediction's findings about its input (``channel-map-suspect``)
    findings: list = field(default_factory=list)
    #: the last point-and-explain result (``ObjectResults`` of the clicked cell)
    point: Any = None

    # -- verbs ---------------------------------------------------------------------------

    def set_model(self, model: Any, train_result: Any = None) -> Classifier | None:
        """Make ``model`` current: a ``Classifier`` or anything ``load_model`` takes (a
        ``TrainResult``, ``ModelBundle``, module). Observers see it as a ``Classifier``;
        the training result, history and importance follow it and the old model's
        results are cleared. A failing observer (a widget whose Qt side is gone) is
        logged, not raised: the model is set either way."""
        from .io.models import load_model

        clf = None if model is None else load_model(model)
        values: dict[str, Any] = {
            "train_result": train_result,
            "history": list(getattr(train_result, "history", None) or []),
            **_cleared(),
            "importance": None if clf is None else getattr(clf, "importance", None),
            "model": clf}  # last: its observers read the fields above
        for name, value in values.items():
            try:
                setattr(self, name, value)
            except EmitLoopError as err:  # the value is set; the next fields still are
                logging.getLogger(__name__).warning("a widget failed to show the %s: %s",
                                                    name.replace("_", " "), err)
        return clf

    def clear_results(self) -> None:
        """Forget the last results (each cleared field emits)."""
        for name, value in _cleared().items():
            setattr(self, name, value)

    def set_attribution(self, result: Any, curves: dict | None = None) -> None:
        """Record an Explain run: ``curves`` first, so that an observer of
        ``attribution`` finds the run's curves beside it."""
        self.curves = dict(curves or {})
        self.attribution = result

    def set_prediction(self, probabilities: Any, findings: list | None = None) -> None:
        """Record a prediction (findings first, probabilities last)."""
        self.findings = list(findings or [])
        self.probabilities = probabilities

    def set_labels(self, labels: dict[int, int], key: tuple | None = None) -> None:
        """Class labels (image index -> class index) for the layers in ``key``."""
        self.labels_key = key
        self.labels = dict(labels)

    # -- compatibility -------------------------------------------------------------------

    @property
    def bundle(self) -> Classifier | None:
        """The current model (the name this field had before it was ``model``)."""
        return self.model

    @property
    def model_changed(self) -> SignalInstance:
        """``events.model`` (the signal's name before the session became evented)."""
        return self.events.model


def _cleared() -> dict[str, Any]:
    """The result fields' empty values."""
    return {name: {} if name == "curves" else [] if name == "findings" else None
            for name in RESULT_FIELDS}


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_for(viewer: Any) -> Session:
    """The session shared by every widget docked in ``viewer`` (held while the viewer
    lives; a new viewer gets a new one)."""
    s = _SESSIONS.get(viewer)
    if s is None:
        s = _SESSIONS[viewer] = Session()
    return s
