"""The installed package's version, from its metadata (the core never imports the package root)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:  # the version is written once, in pyproject.toml
    __version__ = version("napari-attribution")
except PackageNotFoundError:  # pragma: no cover - running from a source tree, not installed
    __version__ = "0+unknown"
