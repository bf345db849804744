"""The command line's progress display: tqdm on a terminal, one line per message elsewhere."""

from __future__ import annotations

import io

from napari_attribution.cli.progress_bar import run_with_bar
from napari_attribution.core.runtime.progress import Progress


def _work():
    for i in range(4):
        yield Progress(i + 1, 4, "step a" if i < 2 else "step b")
    return "done"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_logs_one_line_per_message_when_not_a_terminal(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    assert run_with_bar(_work()) == "done"
    assert err.getvalue().splitlines() == [" 25.0%  step a", " 75.0%  step b"]


def test_terminal_bar_reaches_the_end_and_quiet_prints_nothing(monkeypatch):
    err = _Tty()
    monkeypatch.setattr("sys.stderr", err)
    assert run_with_bar(_work()) == "done"
    assert "100%" in err.getvalue() and "step b" in err.getvalue()
    err2 = _Tty()
    monkeypatch.setattr("sys.stderr", err2)
    assert run_with_bar(_work(), quiet=True) == "done"
    assert err2.getvalue() == ""
