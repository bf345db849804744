"""Hostile model files for the safety tests: each would leave a trace if it ran.

Every builder writes a file under a test's tmp folder; ``marker`` is the path a payload
would create, ``target`` a file whose bytes a payload would overwrite.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from torch import nn


class _Exec:
    """Unpickling this runs Python code that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def pickle_payload(path: Path, marker: Path) -> Path:
    """A plain pickle whose loading writes ``marker``."""
    path.write_bytes(pickle.dumps({"state_dict": _Exec(marker)}))
    return path


def torch_save_payload(path: Path, marker: Path) -> Path:
    """A ``torch.save`` zip archive whose unpickling writes ``marker``."""
    torch.save({"model": _Exec(marker)}, str(path))
    return path


class FromFile(nn.Module):
    """A classifier whose forward maps ``target`` into memory and overwrites it."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.conv = nn.Conv2d(2, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8)
        t.fill_(65)
        return self.head(self.conv(x).mean((2, 3))) + t[:1].float() * 0


def torchscript_from_file(path: Path, target: Path) -> Path:
    torch.jit.save(torch.jit.script(FromFile(str(target))), str(path))
    return path


class SetState(nn.Module):
    """A TorchScript module whose ``__setstate__`` (run while loading) writes a file."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.weight = nn.Parameter(torch.ones(2, 2, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, self.weight).mean((2, 3))

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.weight, self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.weight = state[0]
        self.target = state[1]
        self.training = state[2]
        t = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8)
        t.fill_(66)


def torchscript_setstate(path: Path, target: Path) -> Path:
    torch.jit.save(torch.jit.script(SetState(str(target))), str(path))
    return path


_OP_MARKER: list[str] = []


def _register_touch_op() -> None:
    if hasattr(torch.ops, "na_hostile") and hasattr(torch.ops.na_hostile, "touch"):
        return

    @torch.library.custom_op("na_hostile::touch", mutates_args=())
    def touch(x: torch.Tensor) -> torch.Tensor:
        Path(_OP_MARKER[-1]).write_text("pwned")
        return x.clone()

    @touch.register_fake
    def _(x):
        return torch.empty_like(x)


class CustomOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.na_hostile.touch(self.conv(x)).mean((2, 3))


def export_custom_op(path: Path, marker: Path) -> Path:
    """A ``.pt2`` program calling a custom operator that writes ``marker`` when run."""
    _OP_MARKER.append(str(marker))
    _register_touch_op()
    program = torch.export.export(CustomOp(), (torch.zeros(1, 2, 16, 16),))
    torch.export.save(program, str(path))
    return path


def export_pickled_weight(path: Path, marker: Path) -> Path:
    """A valid ``.pt2`` whose first weight is replaced by a pickle that writes ``marker``
    (``torch.export.load`` would unpickle it with full pickle)."""
    import io
    import zipfile

    program = torch.export.export(_Plain(), (torch.zeros(1, 2, 16, 16),))
    plain = path.with_name("plain.pt2")
    torch.export.save(program, str(plain))
    buf = io.BytesIO()
    torch.save(_Exec(marker), buf)
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("model_weights_config.json"):
                cfg = json.loads(data)
                first = next(iter(cfg["config"]))
                cfg["config"][first]["use_pickle"] = True
                cfg["config"][first]["path_name"] = "weight_evil"
                data = json.dumps(cfg).encode()
            zout.writestr(item, data)
        prefix = next(n for n in zin.namelist() if "/data/weights/" in n).rsplit("/", 1)[0]
        zout.writestr(f"{prefix}/weight_evil", buf.getvalue())
    return path


class _Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))
