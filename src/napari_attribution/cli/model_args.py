"""Arguments every model-taking command shares: the model file, trust, normalisation."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io.models import NORMALIZE_CHOICES

MODEL_HELP = ("model: bundle (.safetensors), exported program (.pt2), TorchScript file "
              "(legacy) or bioimage.io package (folder with rdf.yaml, or .zip)")


def add_trust_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-model", action="store_true",
                   help="run a TorchScript/exported model even if it uses operators "
                        "outside the pure-tensor allowlist (they may read or write files: "
                        "only for models from a source you trust)")


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
                      normalize=getattr(args, "normalize", None))
