"""Source text that, run first in a subprocess, makes every Qt/napari import fail: for
tests that the headless parts never reach the GUI stack."""

import textwrap


def block_gui_imports(reason: str) -> str:
    """Python source blocking napari, Qt bindings and the GUI helpers (``BLOCKED``)."""
    return textwrap.dedent(f"""
        import importlib.abc, sys

        BLOCKED = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui",
                   "superqt", "vispy", "npe2", "app_model")

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked ({reason})")
                return None

        sys.meta_path.insert(0, Block())
    """)
