"""The expected time of a run, shown before it starts: the method's passes (per image or
tile, ``core.attribution.cost.method_passes``) times the seconds one forward and
backward pass of the loaded model takes on the chosen device, measured once by a tiny
probe in a worker and cached per model hash, device and input size."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QLabel

#: the probe never runs on a larger side than this (px): larger inputs are timed on a
#: smaller one and scaled by area (a probe must stay tiny beside the run it predicts)
PROBE_MAX = 256


def model_key(bundle: Any) -> str:
    """The cache key of a model: its file's hash, else the module's identity."""
    sha = getattr(bundle, "sha256", None)
    return str(sha) if sha else f"id{id(getattr(bundle, 'model', bundle))}"


class CostHint(QLabel):
    """``expected time here: about 12 s (8 passes x 4 tiles x 0.37 s)``; measures the
    pass time in a worker the first time a model, device and input size are seen."""

    def __init__(self) -> None:
        super().__init__("")
        self.setWordWrap(True)
        self.setToolTip("Expected time of the chosen method for the current input on this "
                        "machine: its forward and backward passes (per image or tile) "
                        "times the time of one pass of this model, measured once")
        self._request: tuple | None = None
        self._probing: tuple | None = None
        self._worker: Any = None
        self._failed: set[tuple] = set()
        self.seconds: float | None = None   # the last estimate shown

    def clear_estimate(self) -> None:
        self._request = None
        self.seconds = None
        self.setText("")

    def estimate(self, bundle: Any, device: str, shape: tuple[int, int, int],
                 passes: int, units: int, what: str = "images") -> None:
        """Show the expected time of ``passes`` passes for each of ``units`` inputs of
        ``shape`` (C, H, W at the model's scale) on ``device``; an input with a side over
        :data:`PROBE_MAX` is timed at that side and scaled by its area."""
        from ..core.attribution.cost import cached_pass_seconds
        from ..core.runtime.devices import resolve_device

        try:
            dev = str(resolve_device(device))
        except Exception:
            self.clear_estimate()
            return
        c, h, w = (int(s) for s in shape)
        area = 1.0
        if max(h, w) > PROBE_MAX:
            f = PROBE_MAX / max(h, w)
            ph, pw = max(16, round(h * f)), max(16, round(w * f))
            area, h, w = (h * w) / (ph * pw), ph, pw
        probe = (model_key(bundle), dev, (c, h, w))
        self._request = (probe, int(passes), max(1, int(units)), what, bundle, area)
        t = cached_pass_seconds(probe[2], probe[1], probe[0])
        if t is not None:
            self._show(t)
            return
        if probe in self._failed:
            self.setText("")
            return
        self.setText("expected time: measuring this model once…")
        if self._probing is None:
            self._probe(bundle, probe)

    def _probe(self, bundle: Any, probe: tuple) -> None:
        from napari.qt.threading import create_worker

        from ..core.attribution.cost import pass_seconds

        key, dev, shape = probe
        self._probing = probe
        worker = create_worker(pass_seconds, bundle.model, shape, dev, key,
                               _start_thread=False, _ignore_errors=True)
        worker.finished.connect(lambda: self._probed(probe))
        self._worker = worker
        worker.start()

    def _probed(self, ran: tuple) -> None:
        from ..core.attribution.cost import cached_pass_seconds

        self._probing, self._worker = None, None
        if cached_pass_seconds(ran[2], ran[1], ran[0]) is None:
            self._failed.add(ran)   # a model that fails on a blank input: no estimate
        req = self._request
        if req is None:
            return
        probe, bundle = req[0], req[4]
        t = cached_pass_seconds(probe[2], probe[1], probe[0])
        try:
            if t is not None:
                self._show(t)
            elif probe in self._failed:
                self.setText("")
            else:
                self._probe(bundle, probe)   # asked for another input meanwhile
        except RuntimeError:   # the label is gone (viewer closed)
            pass

    def _show(self, t: float) -> None:
        from ..core.attribution.cost import describe_seconds

        assert self._request is not None
        _, passes, units, what, _, area = self._request
        t = t * area   # one pass at the input's full size
        total = t * passes * units
        self.seconds = total
        per = f"{t * 1000:.0f} ms" if t < 1 else f"{t:.1f} s"
        many = f" x {units} {what}" if units > 1 else ""
        self.setText(f"expected time here: <b>{describe_seconds(total)}</b> "
                     f"<small>({passes} passes{many} x {per})</small>")
