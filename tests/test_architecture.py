"""The package's layout holds: core subpackages import only downwards, no import circles,
and the core never imports Qt, napari or the package root (docs/architecture.md)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import napari_attribution

ROOT = Path(napari_attribution.__file__).parent
PKG = "napari_attribution"
# core subpackages, highest first: each may import only those after it
CORE_ORDER = ["evaluation", "attribution", "channels", "study", "models", "data", "runtime"]


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = [PKG, *path.relative_to(ROOT).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (type hints only, never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imports(mods) -> dict[str, set[str]]:
    """Every import of a package module that runs, at module level or inside functions."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, (path, is_pkg) in mods.items():
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    up = base[: len(base) - (node.level - 1)]
                    target = ".".join(up + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found = [f"{target}.{a.name}" for a in node.names
                         if f"{target}.{a.name}" in mods]
                graph[name].update(found or ([target] if target.startswith(PKG) else []))
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_core_subpackages_import_only_downwards():
    mods = _modules()
    graph = _imports(mods)
    bad = []
    for src, targets in graph.items():
        parts = src.split(".")
        if len(parts) < 2 or parts[1] != "core":
            continue
        for t in targets:
            if t == PKG or (t.startswith(PKG + ".") and t.split(".")[1] != "core"):
                bad.append(f"{src} imports {t} (outside the core)")
            if t.split(".")[0] in {"napari", "qtpy", "PyQt5", "PyQt6", "PySide6", "vispy"}:
                bad.append(f"{src} imports {t}")
            tp = t.split(".")
            if len(parts) > 3 and len(tp) > 3 and tp[:2] == [PKG, "core"]:
                a, b = CORE_ORDER.index(parts[2]), CORE_ORDER.index(tp[2])
                if b < a:
                    bad.append(f"{src} imports {t} (upwards: {parts[2]} -> {tp[2]})")
    assert not bad, "\n".join(bad)


def test_core_has_no_import_circles():
    graph = _imports(_modules())
    core = {k: {t for t in v if t.startswith(PKG + ".core")}
            for k, v in graph.items() if k.startswith(PKG + ".core")}
    assert _cycles(core) == []


def test_package_has_no_import_circles():
    """Not even through imports inside functions (``TYPE_CHECKING`` blocks aside)."""
    graph = _imports(_modules())
    inside = {k: {t for t in v if t.startswith(PKG + ".")} for k, v in graph.items()}
    assert _cycles(inside) == []


def test_every_core_subpackage_says_what_lives_there():
    for sub in CORE_ORDER:
        doc = ast.get_docstring(ast.parse((ROOT / "core" / sub / "__init__.py").read_text()))
        assert doc and len(doc) > 80, sub
    listed = {p.name for p in (ROOT / "core").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert listed == set(CORE_ORDER)
    assert not [p.name for p in (ROOT / "core").glob("*.py") if p.name != "__init__.py"]


#: modules that must run without Qt or napari (a headless install, scripts, batch workers):
#: the session is the widgets' model, the Qt side only renders it
QT_FREE = ["napari_attribution.session", "napari_attribution.api",
           "napari_attribution.layer_style"]
GUI_PACKAGES = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt",
                "magicgui", "vispy", "npe2", "app_model"}


def test_the_session_and_the_api_never_import_qt_or_napari():
    """Not even inside functions: the session's observers are the widgets, not the other
    way round (napari-animation's model / ``_qt`` split)."""
    mods = _modules()
    graph = _imports(mods)
    bad = []
    for name in QT_FREE:
        assert name in mods, name
        seen, todo = set(), [name]
        while todo:  # everything it reaches inside the package, transitively
            m = todo.pop()
            if m in seen:
                continue
            seen.add(m)
            for t in graph.get(m, ()):
                if t.split(".")[0] in GUI_PACKAGES or "._qt" in t:
                    bad.append(f"{name} reaches {t} (through {m})")
                elif t.startswith(PKG + ".") and t in mods:
                    todo.append(t)
    assert not bad, "\n".join(bad)
