"""The session model (``napari_attribution.session``): evented, Qt-free, weakly observed."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

from qt_blocker import block_gui_imports

SRC = Path(__file__).resolve().parents[1] / "src"

SCRIPT = block_gui_imports("no Qt here") + textwrap.dedent("""
    import numpy as np
    import torch

    from napari_attribution.core.attribution.explain import AttributionResult
    from napari_attribution.session import Session

    s = Session()
    got = []
    s.events.model.connect(lambda new, old: got.append(("model", new, old)))
    s.events.attribution.connect(lambda new: got.append(("attribution", new, s.curves)))
    s.events.all.connect(lambda info: got.append(("any", info.signal.name)))
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3))
    clf = s.set_model(net)
    assert type(clf).__name__ == "Classifier" and s.model is clf and s.bundle is clf
    assert ("model", clf, None) in got, got
    assert clf.n_channels == 2 and clf.n_classes == 3
    x = np.zeros((1, 3, 8, 8), np.float32)
    res = AttributionResult(maps=x[:, 0], targets=np.array([1]),
                            probabilities=np.full((1, 3), 1 / 3), method="saliency")
    curves = {"deletion": np.ones((1, 5))}
    got.clear()
    s.set_attribution(res, curves)
    assert got[-1] == ("any", "attribution") and got[-2][:2] == ("attribution", res)
    assert got[-2][2] is s.curves and set(s.curves) == {"deletion"}  # curves came first
    got.clear()
    s.set_prediction(np.array([[0.2, 0.5, 0.3]]), ["f"])
    assert [g[1] for g in got] == ["findings", "probabilities"], got
    got.clear()
    s.set_model(None)          # a model change forgets the old model's results
    assert s.attribution is None and s.curves == {} and s.probabilities is None
    assert ("model", None, clf) in got and ("any", "attribution") in got
    s.labels = {0: 1}          # assigning emits ...
    before = len(got)
    s.labels[1] = 0            # ... mutating in place does not
    assert len(got) == before
    bad = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    assert not bad, bad
    print("SESSION-OK")
""")


def test_session_works_without_qt():
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=300, env={"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1",
                                           "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "SESSION-OK" in res.stdout


class _View:
    """Stands in for a widget: observes the session through a bound method."""

    def __init__(self, session) -> None:
        self.seen: list = []
        session.events.model.connect(self.show)

    def show(self, model) -> None:
        self.seen.append(model)


def test_session_holds_observers_weakly():
    from napari_attribution.session import Session

    s = Session()
    view = _View(s)
    s.model = "a"   # any object: fields compare by identity, nothing is loaded here
    assert view.seen == ["a"]
    ref = weakref.ref(view)
    del view
    gc.collect()
    assert ref() is None  # the session did not keep the closed view alive
    s.model = "b"         # and emitting to it afterwards is harmless


def test_session_for_is_one_per_viewer_and_dies_with_it():
    from napari_attribution.session import _SESSIONS, Session, session_for

    class Viewer:
        pass

    a, b = Viewer(), Viewer()
    assert session_for(a) is session_for(a) is not session_for(b)
    assert isinstance(session_for(a), Session)
    ref = weakref.ref(session_for(a))
    n = len(_SESSIONS)
    del a
    gc.collect()
    assert ref() is None and len(_SESSIONS) == n - 1
