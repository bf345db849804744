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
        self.target = state[1]
        self.training = state[2]
        t = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8)
        t.fill_(66)
        self.weight = (state[0] + t[:1].float().sum() * 0).detach()  # used: kept


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


# --- issue 22: files that carried code past the old scan --------------------------------

def plain_pt2(path: Path) -> Path:
    """What ``torch.export.save`` writes for a plain model (graph JSON, raw tensors and a
    tensor constant): must load without trust."""
    program = torch.export.export(_WithConstant(), (torch.zeros(1, 2, 16, 16),))
    torch.export.save(program, str(path))
    return path


class _WithConstant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3)) + torch.tensor([0.5, -0.5])


def _rewrite_pt2(src: Path, dst: Path, edit=None, add: dict[str, bytes] | None = None
                 ) -> Path:
    """A copy of the ``.pt2`` ``src`` with members edited (``edit(name, bytes) -> bytes``,
    name relative to the archive's top folder) and members added (relative names)."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for item in zin.infolist():
            data = zin.read(item.filename)
            if edit is not None:
                data = edit(item.filename[len(root) + 1:], data)
            zout.writestr(item.filename, data)
        for name, data in (add or {}).items():
            zout.writestr(f"{root}/{name}", data)
    return dst


def export_nested_opaque(path: Path, marker: Path) -> Path:
    """A ``.pt2`` whose constants config names a pickled object under a nested name
    (``opaque_obj_0/x``): ``torch.export.load`` reads it with plain ``pickle.loads``."""
    plain = plain_pt2(path.with_name(path.stem + "_plain.pt2"))

    def edit(name: str, data: bytes) -> bytes:
        if name == "data/constants/model_constants_config.json":
            cfg = json.loads(data)
            cfg["config"]["evil"] = {"path_name": "opaque_obj_0/x", "is_param": False,
                                     "use_pickle": True, "tensor_meta": None}
            data = json.dumps(cfg).encode()
        return data

    return _rewrite_pt2(plain, path, edit,
                        {"data/constants/opaque_obj_0/x": pickle.dumps(_Exec(marker))})


def export_numbered_pickled_weight(path: Path, marker: Path) -> Path:
    """A ``.pt2`` whose weight file has an allowed name (``weight_0``) but is a pickle,
    flagged ``use_pickle`` in the weights config (torch would unpickle it fully)."""
    import io

    plain = plain_pt2(path.with_name(path.stem + "_plain.pt2"))
    buf = io.BytesIO()
    torch.save(_Exec(marker), buf)

    def edit(name: str, data: bytes) -> bytes:
        if name == "data/weights/model_weights_config.json":
            cfg = json.loads(data)
            first = next(iter(cfg["config"]))
            cfg["config"][first]["use_pickle"] = True
            cfg["config"][first]["path_name"] = "weight_0"
            data = json.dumps(cfg).encode()
        elif name == "data/weights/weight_0":
            data = buf.getvalue()
        return data

    return _rewrite_pt2(plain, path, edit)


def export_aotinductor(path: Path) -> Path:
    """A ``.pt2`` carrying an AOTInductor library (any bytes): ``torch.export.load``
    would extract it to an ``aotinductor_*`` temp folder and dlopen it."""
    plain = plain_pt2(path.with_name(path.stem + "_plain.pt2"))
    return _rewrite_pt2(plain, path, add={
        "data/aotinductor/model/model.wrapper.so": b"\x7fELF" + bytes(60),
        "data/aotinductor/model/model.wrapper.cpp": b"// not a real library\n"})


def export_dotdot(path: Path, name: str = "escaped.txt") -> Path:
    """A ``.pt2`` with a member whose name climbs out of any extraction folder."""
    plain = plain_pt2(path.with_name(path.stem + "_plain.pt2"))
    return _rewrite_pt2(plain, path, add={
        f"data/aotinductor/model/../../../../../{name}": b"pwned"})


def export_sym_expr(path: Path, marker: Path) -> Path:
    """A ``.pt2`` (dynamic sizes) whose symbolic-size text is Python: torch evaluates it
    with ``sympy.sympify`` while loading."""
    plain = path.with_name(path.stem + "_plain.pt2")
    side = torch.export.Dim.AUTO
    program = torch.export.export(_Plain(), (torch.zeros(2, 2, 16, 16),),
                                  dynamic_shapes=({2: side, 3: side},), strict=False)
    torch.export.save(program, str(plain))
    payload = f"__import__('pathlib').Path({str(marker)!r}).write_text('pwned') and 3"

    def edit(name: str, data: bytes) -> bytes:
        if name == "models/model.json":
            text = data.decode()
            start = text.index('"expr_str": "') + len('"expr_str": "')
            end = text.index('"', start)
            data = (text[:start] + payload.replace('"', '\\"') + text[end:]).encode()
        return data

    return _rewrite_pt2(plain, path, edit)


def export_guard_code(path: Path, marker: Path) -> Path:
    """A ``.pt2`` whose guard code (Python source torch compiles into the module's input
    check) writes ``marker``."""
    plain = plain_pt2(path.with_name(path.stem + "_plain.pt2"))
    guard = f"__import__('pathlib').Path({str(marker)!r}).write_text('pwned') > 0"

    def edit(name: str, data: bytes) -> bytes:
        if name == "models/model.json":
            graph = json.loads(data)
            graph["guards_code"] = [guard]
            data = json.dumps(graph).encode()
        return data

    return _rewrite_pt2(plain, path, edit)


class HookedNet(nn.Module):
    """A plain network; the hooks attached by :func:`torchscript_hooks` do the harm."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.conv = nn.Conv2d(2, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


def _pre_hook(self: HookedNet, inputs: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
    t = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8)
    t.fill_(67)
    return (inputs[0] + t[:1].float().sum() * 0,)  # used: not optimised away


def _post_hook(self: HookedNet, inputs: tuple[torch.Tensor], out: torch.Tensor
               ) -> torch.Tensor:
    t = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8)
    t.fill_(68)
    return out + t[:1].float().sum() * 0


def torchscript_hooks(path: Path, target: Path) -> Path:
    """TorchScript whose forward pre-hook and forward hook overwrite ``target``."""
    net = HookedNet(str(target))
    net.register_forward_pre_hook(_pre_hook)
    net.register_forward_hook(_post_hook)
    torch.jit.save(torch.jit.script(net), str(path))
    return path


def torchscript_setstate_continued(path: Path, target: Path) -> Path:
    """:func:`torchscript_setstate` with ``def \\`` + newline + ``__setstate__`` in the
    archive's code (a line continuation that hid the method from the old regex)."""
    import zipfile

    plain = torchscript_setstate(path.with_name(path.stem + "_plain.pt"), target)
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if "/code/" in item.filename and item.filename.endswith(".py"):
                data = data.replace(b"def __setstate__", b"def \\\n      __setstate__")
            zout.writestr(item, data)
    return path


def zip_bomb(path: Path, names: tuple[str, ...], size: int = 1 << 30,
             small: dict[str, str] | None = None) -> Path:
    """A valid zip of about 1 MB whose ``names`` each expand to ``size`` zero bytes
    (deflate blocks written directly: seconds instead of compressing 1 GiB), plus
    ``small`` stored text members."""
    import struct
    import zlib

    chunk = bytes(1 << 20)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    data = block * (size >> 20) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    crc = 0
    for _ in range(size >> 20):
        crc = zlib.crc32(chunk, crc)
    members = [(n, 8, crc, data, size) for n in names]
    members += [(n, 0, zlib.crc32(t.encode()), t.encode(), len(t.encode()))
                for n, t in (small or {}).items()]
    central = b""
    with open(path, "wb") as f:
        for name, method, c, body, n in members:
            raw, off = name.encode(), f.tell()
            f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, c,
                                len(body), n, len(raw), 0) + raw + body)
            central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0,
                                   0x21, c, len(body), n, len(raw), 0, 0, 0, 0, 0, off) + raw
        start = f.tell()
        f.write(central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members),
                                      len(members), len(central), start, 0))
    return path


def bioimageio_architecture(src_zip: Path, dst: Path, import_from: str, callable_: str,
                            kwargs: dict) -> Path:
    """The exported package ``src_zip`` unpacked into ``dst`` with its architecture
    replaced by ``import_from``.``callable_``(**kwargs)."""
    import zipfile

    import yaml

    with zipfile.ZipFile(src_zip) as z:
        z.extractall(dst)
    rdf = yaml.safe_load((dst / "rdf.yaml").read_text())
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    arch.update({"import_from": import_from, "callable": callable_, "kwargs": kwargs})
    (dst / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return dst


def bioimageio_url_weights(src_zip: Path, dst: Path, url: str) -> Path:
    """The exported package with its weights given as ``url`` (same sha256)."""
    import zipfile

    import yaml

    with zipfile.ZipFile(src_zip) as z:
        z.extractall(dst)
    rdf = yaml.safe_load((dst / "rdf.yaml").read_text())
    rdf["weights"]["pytorch_state_dict"]["source"] = url
    (dst / "weights.pt").unlink()
    (dst / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return dst
