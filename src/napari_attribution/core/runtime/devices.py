"""Choosing the torch device: ``auto``, ``cuda``, ``cuda:N``, ``mps`` or ``cpu``."""

from __future__ import annotations

import torch

from .errors import InputError


def available_devices() -> list[str]:
    """Devices that exist on this machine, best first (always ends with ``cpu``)."""
    names: list[str] = []
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    names.append("cpu")
    return names


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn a user's device choice into a ``torch.device``, with a clear error if absent."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for, but no CUDA GPU is available here; "
                             f"choose one of {available_devices()}")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r} does not exist; choose one of "
                             f"{available_devices()}")
        return dev
    if name == "mps":
        if "mps" not in available_devices():
            raise InputError(f"device 'mps' asked for, but it is not available; choose one of "
                             f"{available_devices()}")
        return torch.device("mps")
    raise InputError(f"unknown device {device!r}; use 'auto' or one of {available_devices()}")
