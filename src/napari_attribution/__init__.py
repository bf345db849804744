"""napari-attribution: why does a classifier of multichannel microscopy decide what it decides?

DCMIX answers "which channels matter", PCIM "which pixels matter". The scripting API
(``train``, ``channel_importance``, ``posthoc_importance``, ``retrain_check``,
``check_study_design``, ``explain``, ``save_bundle``, ``load_bundle``, ``load_model``
(any model -> ``Classifier``), ``export_program``, ``load_plate``, ``explain_plate``) is
imported lazily so that ``import napari_attribution`` stays cheap for napari's plugin
discovery.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .core.runtime.version import __version__

_LAZY = {
    "train": "api", "explain": "api", "channel_importance": "api", "save_bundle": "api",
    "sample_cells": "api", "sample_multi_snr": "api", "explain_plate": "api",
    "load_plate": "api",
    "posthoc_importance": "api", "retrain_check": "api", "check_study_design": "api",
    "load_bundle": "io.bundle", "load_model": "io.models", "export_program": "io.model_export",
    "Classifier": "core.models.classifier", "UnsafeModelError": "io.model_scan",
    "ImageSet": "core.data.dataset", "TrainConfig": "core.channels.training",
    "PCIMConfig": "core.attribution.pcim", "available_methods": "core.attribution.explain",
    "ExplainOptions": "core.attribution.options",
    "AttributionMethod": "core.attribution.methods", "register_method": "core.attribution.methods",
    "registered_methods": "core.attribution.methods",
    "MethodConfig": "core.attribution.method_config", "setting": "core.attribution.method_config",
    "SamplingConfig": "io.plate.config",
    "AttributionError": "core.runtime.errors", "InputError": "core.runtime.errors",
    "BundleError": "core.runtime.errors", "Cancelled": "core.runtime.errors",
    "OutputError": "core.runtime.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
