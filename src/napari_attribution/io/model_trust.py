"""What loads without ``trust``: allow-lists of formats and archive members, checked
before any model file is opened by torch.

Trust is decided by what a file *is*, never by scanning its code:

* napari-attribution bundles (``.safetensors``): tensors and JSON, no code;
* ``.pt2`` archives holding only the members :func:`check_pt2` allows (the graph as
  JSON, raw tensor data, version and metadata files: what ``export-model`` writes and
  what ``torch.export.save`` writes for a plain model). They are loaded from an in-memory
  copy (:func:`untrusted_pt2_copy`) that keeps only those members, never hands a pickle
  to torch and leaves out the graph's Python guard code;
* bioimage.io packages with state-dict weights for an architecture of this package named
  exactly (``io.bioimageio``).

Everything else that can carry code (TorchScript, ``.pt2`` archives with pickles, native
libraries or other members, architectures from elsewhere) needs ``trust=True`` /
``--trust-model``. Every zip is checked against :data:`LIMITS` before it is extracted.
The operator scan of ``io.model_scan`` still runs on what loads: defence in depth, not
the guarantee.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .model_scan import UnsafeModelError

TRUST_HINT = ("pass --trust-model (trust=True in Python, 'Trust this model file' in "
              "napari) only if you trust its source")


def refuse(source: Any, what: str) -> UnsafeModelError:
    """The one-line refusal: ``<file> <what>; pass --trust-model ... source``."""
    return UnsafeModelError(f"{source} {what}; {TRUST_HINT}")


# --- archive limits --------------------------------------------------------------------

@dataclass(frozen=True)
class ArchiveLimits:
    """Checked on the zip's central directory before any member is extracted."""

    #: members in one archive
    max_members: int = 10_000
    #: sum of the members' uncompressed sizes (bytes)
    max_total: int = 2 << 30
    #: uncompressed / compressed size of a member larger than ``ratio_floor`` bytes
    max_ratio: float = 100.0
    ratio_floor: int = 1 << 20


LIMITS = ArchiveLimits()


def check_zip_limits(source: str | Path | BinaryIO, name: Any = None,
                     limits: ArchiveLimits = LIMITS) -> None:
    """Refuse a zip (path or open binary file) whose declared contents exceed ``limits``
    (member count, total size, compression ratio), and one whose member names leave
    the archive (absolute, ``..``, backslashes). Reads only the central directory."""
    from ..core.runtime.errors import BundleError

    name = name if name is not None else source
    try:
        with zipfile.ZipFile(source) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise BundleError(f"{name} is not a readable zip archive: {err}") from None
    if len(infos) > limits.max_members:
        raise UnsafeModelError(f"{name} was not opened: it holds {len(infos)} files "
                               f"(at most {limits.max_members} are read)")
    total = 0
    for info in infos:
        total += info.file_size
        if info.file_size > limits.ratio_floor and \
                info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise UnsafeModelError(
                f"{name} was not opened: {info.filename!r} expands "
                f"{info.file_size / max(info.compress_size, 1):.0f}x (a zip bomb? at most "
                f"{limits.max_ratio:.0f}x is read for files over "
                f"{limits.ratio_floor >> 20} MiB)")
        if not _safe_member(info.filename):
            raise UnsafeModelError(f"{name} was not opened: the member name "
                                   f"{info.filename!r} points outside the archive")
    if total > limits.max_total:
        raise UnsafeModelError(f"{name} was not opened: its files expand to "
                               f"{total / 2**30:.1f} GiB (at most "
                               f"{limits.max_total / 2**30:.0f} GiB are read)")


def _safe_member(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and "\\" not in name and \
        "\x00" not in name and ":" not in parts[0] and \
        all(p not in ("..", ".") for p in parts) and "" not in parts[:-1]


# --- .pt2: member allow-list -----------------------------------------------------------

#: every member a .pt2 may hold to load without trust: the path under the archive's one
#: top folder, matched whole. ``data/sample_inputs/model.pt`` (a pickle of the example
#: inputs torch.export.save always writes) is allowed to be present but is never read:
#: the in-memory copy handed to torch replaces it with nothing.
PT2_MEMBERS = (
    r"archive_format", r"archive_version", r"byteorder", r"\.data/version",
    r"\.data/serialization_id", r"models/model\.json",
    r"data/weights/model_weights_config\.json", r"data/weights/weight_[0-9]{1,6}",
    r"data/constants/model_constants_config\.json", r"data/constants/tensor_[0-9]{1,6}",
    r"data/sample_inputs/model\.pt", r"extra/napari_attribution\.json",
)
_PT2_RE = [re.compile(p) for p in PT2_MEMBERS]
_ROOT_RE = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9_.\-]{1,128}")
_SAMPLE_INPUTS = "data/sample_inputs/model.pt"
_PAYLOAD = {"data/weights/model_weights_config.json": ("data/weights/", "weight_"),
            "data/constants/model_constants_config.json": ("data/constants/", "tensor_")}


#: largest JSON member of an untrusted .pt2 (the graph of a ResNet-18 is under 1 MiB)
MAX_PT2_JSON = 64 << 20


def pt2_members(path: str | Path) -> tuple[str, list[str]]:
    """The archive's top folder and its member paths under it (limits checked; JSON
    members at most :data:`MAX_PT2_JSON` bytes)."""
    check_zip_limits(path)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        for info in z.infolist():
            if info.filename.endswith(".json") and info.file_size > MAX_PT2_JSON:
                raise refuse(path, f"holds {info.filename!r} of {info.file_size >> 20} MiB "
                                   f"(at most {MAX_PT2_JSON >> 20} MiB of graph text is read "
                                   "untrusted)")
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        return "", names
    root = roots.pop()
    return root, [n[len(root) + 1:] for n in names]


def check_pt2(path: str | Path) -> str:
    """Refuse (with the trust hint) a ``.pt2`` holding anything but allowed members;
    returns the archive's top folder."""
    root, rel = pt2_members(path)
    if not root or not _ROOT_RE.fullmatch(root):
        raise refuse(path, "is not a plain torch.export archive (its files are not under "
                           "one top folder), so it may carry code")
    for name in rel:
        if not any(p.fullmatch(name) for p in _PT2_RE):
            why = ("a compiled native library (AOTInductor), which runs when loaded"
                   if name.startswith("data/aotinductor/") else
                   "a pickled Python object, which can run code when loaded"
                   if "/constants/" in f"/{name}" or name.endswith((".pt", ".pkl")) else
                   "a file that is not plain tensor data, the graph or metadata")
            raise refuse(path, f"holds {name!r}: {why}")
    if len(set(rel)) != len(rel):
        raise refuse(path, "holds two files under one name (which one torch reads is not "
                           "defined)")
    if "models/model.json" not in rel:
        raise refuse(path, "holds no exported graph (models/model.json)")
    return root


def untrusted_pt2_copy(path: str | Path) -> io.BytesIO:
    """An in-memory ``.pt2`` that torch can load without unpickling, compiling or
    dlopening anything: only allow-listed members (:func:`check_pt2`), every weight and
    constant raw tensor bytes (no ``use_pickle``), the sample-input pickle left empty,
    every string of the graph an identifier, a symbolic-size expression
    (:func:`check_sym_expr`) or a tree spec, and no guard code or node metadata."""
    root = check_pt2(path)
    buf = io.BytesIO()
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zout:
        rel = {n[len(root) + 1:] for n in zin.namelist()}
        for info in zin.infolist():
            name = info.filename[len(root) + 1:]
            if name == _SAMPLE_INPUTS:
                data = b""
            else:
                data = zin.read(info)
            if name in _PAYLOAD:
                _check_payload_config(path, name, data, rel)
            elif name == "models/model.json":
                data = _sanitised_graph(path, data)
            zout.writestr(info.filename, data)
    buf.seek(0)
    return buf


def _json(path, name: str, data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise refuse(path, f"holds an unreadable {name} ({type(err).__name__})") from None


def _check_payload_config(path, name: str, data: bytes, members: set[str]) -> None:
    folder, prefix = _PAYLOAD[name]
    cfg = _json(path, name, data)
    entries = cfg.get("config") if isinstance(cfg, dict) else None
    if not isinstance(entries, dict):
        raise refuse(path, f"holds a malformed {name}")
    for key, entry in entries.items():
        if not _IDENT_PATH.fullmatch(key) or any(a.startswith("__") for a in key.split(".")):
            raise refuse(path, f"names a tensor {key[:60]!r}, which is not a plain "
                               "attribute path")
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False or \
                not isinstance(entry.get("tensor_meta"), dict):
            raise refuse(path, f"stores {key!r} as a pickled Python object, which can run "
                               "code when loaded")
        file = entry.get("path_name")
        if not isinstance(file, str) or not re.fullmatch(prefix + r"[0-9]{1,6}", file) \
                or folder + file not in members:
            raise refuse(path, f"points {key!r} at {file!r}, which is not a tensor file "
                               "of the archive")


_IDENT_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}(\.[A-Za-z0-9_]{1,200}){0,20}")
_VERSION = re.compile(r"[0-9A-Za-z.+\-]{1,40}")
_ARG_KEYS = {"as_string", "as_strings"}
_TREE_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict",
               "collections.OrderedDict", "collections.namedtuple",
               "collections.defaultdict"}


def _sanitised_graph(path, data: bytes) -> bytes:
    graph = _json(path, "graph", data)
    if not isinstance(graph, dict):
        raise refuse(path, "holds a malformed graph")
    graph["guards_code"] = []  # Python source compiled by torch: input-shape asserts only
    _check_graph_node(path, graph, None, 0)
    return json.dumps(graph).encode()


def _check_graph_node(path, node: Any, key: str | None, depth: int) -> None:
    if depth > 64:
        raise refuse(path, "holds a graph nested too deeply")
    if isinstance(node, dict):
        if isinstance(node.get("metadata"), dict):
            node["metadata"] = {}  # stack traces and module paths: text, not needed
        for k, v in node.items():
            if not isinstance(k, str) or not (_IDENT_PATH.fullmatch(k) or
                                              (key == "range_constraints")):
                raise refuse(path, f"holds an unexpected graph key {str(k)[:40]!r}")
            if key == "range_constraints" and not re.fullmatch(r"[a-z]{1,4}[0-9]{1,9}", k):
                raise refuse(path, f"holds an unexpected symbol name {k[:40]!r}")
            _check_graph_node(path, v, k, depth + 1)
    elif isinstance(node, list):
        for v in node:
            _check_graph_node(path, v, key, depth + 1)
    elif isinstance(node, str):
        ok = (check_sym_expr(node) if key == "expr_str" else
              _check_tree_spec(node) if key in ("in_spec", "out_spec") else
              bool(_VERSION.fullmatch(node)) if key == "torch_version" else
              # operator arguments (an einsum equation, a padding mode): passed to the
              # operator as values, written into generated code only through repr()
              (len(node) < 4096 and node.isprintable()) if key in _ARG_KEYS else
              node == "" or bool(_IDENT_PATH.fullmatch(node)))
        if not ok:
            raise refuse(path, f"holds graph text that is not a name or a size expression "
                               f"({key}: {node[:60]!r}), which torch would evaluate as "
                               "Python")


def _check_tree_spec(text: str) -> bool:
    try:
        spec = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return False

    def ok(x: Any, depth: int = 0) -> bool:
        if depth > 64:
            return False
        if isinstance(x, dict):
            if "type" in x and x["type"] not in _TREE_TYPES:
                return False
            return all(ok(v, depth + 1) for v in x.values())
        if isinstance(x, list):
            return all(ok(v, depth + 1) for v in x)
        return x is None or isinstance(x, (int, float, bool)) or \
            (isinstance(x, str) and len(x) < 4096)

    return ok(spec)


# --- symbolic size expressions ---------------------------------------------------------

#: sympy constructors and torch's integer functions a size expression may call (sympy
#: evaluates the text as Python: only these names, integers, symbol names and keyword
#: flags can appear). No powers or shifts: ``Pow(9, 10**9)`` would never finish.
SYM_FUNCTIONS = frozenset("""
Symbol Integer Float Rational Add Mul Max Min Eq Ne Lt Le Gt Ge StrictLessThan StrictGreaterThan
LessThan GreaterThan Unequality Equality And Or Not FloorDiv Mod PythonMod CleanDiv
CeilDiv CeilToInt FloorToInt IntTrueDiv TruncToInt RoundToInt ModularIndexing Where
Identity ToFloat FloatTrueDiv TruncToFloat
""".split())
SYM_FLAGS = frozenset({"positive", "integer", "nonnegative", "real", "finite",
                       "negative", "nonpositive", "nonzero", "zero", "even", "odd"})
_SYM_TOKEN = re.compile(r"\s*(?:(?P<int>-?[0-9]{1,19})|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|"
                        r"(?P<str>'(?:[a-z]{1,4}[0-9]{1,9}|-?[0-9]{1,19}(?:\.[0-9]{1,19})?"
                        r"(?:e-?[0-9]{1,3})?)')|(?P<punct>[(),=]))")


def check_sym_expr(text: str) -> bool:
    """Whether ``text`` is a symbolic-size expression of the form torch writes
    (``Add(Symbol('s0', positive=True, integer=True), Integer(-2))``), parsed with a
    strict grammar: calls of :data:`SYM_FUNCTIONS`, integers, quoted symbol names,
    ``flag=True|False`` keywords."""
    if len(text) > 4000:
        return False
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _SYM_TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip() == "":
                break
            return False
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    try:
        end = _sym_expr(tokens, 0, 0)
    except (IndexError, ValueError, RecursionError):
        return False
    return end == len(tokens)


def _sym_expr(toks: list[tuple[str, str]], i: int, depth: int) -> int:
    if depth > 50:
        raise ValueError("too deep")
    kind, val = toks[i]
    if kind == "int" or (kind == "name" and val in ("True", "False")):
        return i + 1
    if kind != "name" or val not in SYM_FUNCTIONS or toks[i + 1] != ("punct", "("):
        raise ValueError(val)
    i += 2
    if toks[i] == ("punct", ")"):
        return i + 1
    while True:
        kind, val = toks[i]
        if kind == "str":
            i += 1
        elif kind == "name" and val in SYM_FLAGS and toks[i + 1] == ("punct", "="):
            if toks[i + 2] not in (("name", "True"), ("name", "False")):
                raise ValueError(val)
            i += 3
        elif (kind, val) == ("name", "precision") and toks[i + 1] == ("punct", "=") and \
                toks[i + 2][0] == "int" and 0 < int(toks[i + 2][1]) <= 1024:
            i += 3
        else:
            i = _sym_expr(toks, i, depth + 1)
        if toks[i] == ("punct", ")"):
            return i + 1
        if toks[i] != ("punct", ","):
            raise ValueError(toks[i][1])
        i += 1
