"""Arguments every model-taking command shares: the model file, trust, normalisation."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io.models import NORMALIZE_CHOICES

MODEL_HELP = ("model: bundle (.safetensors), exported program (.pt2), TorchScript file "
              "(legacy) or bioimage.io package (folder with rdf.yaml, or .zip)")


def add_trust_argument(p: argparse.ArgumentParser, downloads: bool = True) -> None:
    p.add_argument("--trust-model", action="store_true",
                   help="load a model file that can run code when loaded (TorchScript; "
                        ".pt2 archives with pickles or native libraries; bioimage.io "
                        "packages whose architecture is not this package's own): only for "
                        "files from a source you trust. Without it, only bundles, plain "
                        ".pt2 programs (graph + tensors, as export-model writes) and "
                        "bioimage.io state dicts of this package's architecture load")
    if downloads:
        p.add_argument("--allow-download", action="store_true",
                       help="fetch bioimage.io weights given as a URL (nothing is "
                            "downloaded otherwise)")


def add_model_arguments(p: argparse.ArgumentParser, name: str = "model") -> None:
    """The positional model argument, ``--trust-model`` and ``--normalize``."""
    p.add_argument(name, type=Path, help=MODEL_HELP)
    add_trust_argument(p)
    p.add_argument("--normalize", choices=NORMALIZE_CHOICES, default=None,
                   help="preprocessing for models that record none (default: none): "
                        "percentiles of each image given (per_field / per_crop; per_image is "
                        "the old name); bundles and bioimage.io packages use their own")


def load_from_args(args: argparse.Namespace, name: str = "model"):
    """The :class:`Classifier` named on the command line."""
    from ..io.models import load_model

    return load_model(getattr(args, name), trust=args.trust_model,
                      normalize=getattr(args, "normalize", None),
                      allow_download=getattr(args, "allow_download", False))
