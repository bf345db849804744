"""Command line: ``napari-attribution <command> ...``.

Each command lives in a module ``cmd_<name>.py`` of this package exposing
``register(subparsers)``, which adds its parser and sets ``func`` to a function
taking the parsed arguments and returning an exit code. Modules are found
automatically, so adding a command never edits this file.

Exit codes: 0 done, 1 the work failed (a sentence on stderr says why), 2 the command
line is wrong (bad or contradicting options), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ..core.runtime.errors import AttributionError, UsageError

EXIT_ERROR = 1   # the work could not be done: a missing file, a bad image, a model refused
EXIT_USAGE = 2   # the command line itself is wrong (argparse uses 2 too)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="napari-attribution",
        description="Channel importance (DCMIX) and pixel attribution (PCIM) for "
                    "multichannel microscopy classifiers.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"{__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"usage error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except AttributionError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:  # a file problem no reader or writer turned into a sentence
        where = f" {err.filename}:" if getattr(err, "filename", None) else ""
        print(f"error:{where} {err.strerror or err}"
              + (f" ([Errno {err.errno}])" if err.errno else ""), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
