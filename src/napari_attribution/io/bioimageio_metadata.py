"""What a bioimage.io package says about itself: authors, citations, the environment file,
covers and sample images (used by ``io.bioimageio_export.export_bioimageio``).

Plain Python, numpy and matplotlib; nothing here imports ``bioimageio.spec``: the
entries are dictionaries that the exporter turns into the spec's classes.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.runtime.errors import InputError

#: the author written when none is given: bioimage.io requires one, and this name says
#: plainly that it is missing (the exporter also warns); replace it before uploading
MISSING_AUTHOR = "UNKNOWN AUTHOR (set one with --author or authors=)"

#: the papers of the methods every exported DCMIX model is built on (CITATION.cff)
METHOD_CITATIONS: tuple[dict[str, str], ...] = (
    {"text": "Siegismund, Wieser, Heyse, Steigele. Learning Channel Importance for High "
             "Content Imaging with Interpretable Deep Input Channel Mixing (DCMIX). "
             "GCPR 2023. arXiv:2308.16637",
     "doi": "10.48550/arXiv.2308.16637"},
    {"text": "Siegismund, Wieser, Heyse, Steigele. PCIM: Learning pixel attributions via "
             "pixel-wise channel isolation mixing in high content imaging. SLAS Discovery "
             "37, 100287 (2025)",
     "doi": "10.1016/j.slasd.2025.100287"},
)



@dataclass(frozen=True)
class PackageMetadata:
    """What an exported bioimage.io package says about itself (see ``export_bioimageio``;
    the CLI's ``--author``, ``--cite``, ``--license``... fill it)."""

    authors: Sequence[str | dict] = ()  #: "Name" or "Name;Affiliation" (or dicts)
    cite: Sequence[str | dict] = ()  #: "TEXT;DOI" or "TEXT;URL", before the method papers
    method_citations: bool = True  #: add the DCMIX and PCIM papers
    license: str = "BSD-3-Clause"  #: an SPDX id
    name: str | None = None  #: default "DCMIX classifier" and the class names
    description: str | None = None  #: default generated from the model
    tags: Sequence[str] = ()  #: added before :data:`DEFAULT_TAGS`
    documentation: str | Path | None = None  #: a Markdown file for the README


DEFAULT_TAGS = ("classification", "image-classification", "2d", "microscopy",
                "high-content-imaging", "dcmix", "channel-importance", "pytorch")

_DOI = re.compile(r"^10\.\d{4,9}/\S+$")


def parse_author(entry: str | dict) -> dict[str, str]:
    """``"Name"`` or ``"Name;Affiliation"`` (or a dict with ``name``, ``affiliation``,
    ``email``, ``orcid``, ``github_user``) -> an author entry."""
    if isinstance(entry, dict):
        out = {k: str(v).strip() for k, v in entry.items() if v not in (None, "")}
    else:
        name, _, affiliation = str(entry).partition(";")
        out = {"name": name.strip()}
        if affiliation.strip():
            out["affiliation"] = affiliation.strip()
    unknown = set(out) - {"name", "affiliation", "email", "orcid", "github_user"}
    if unknown:
        raise InputError(f"author {entry!r}: unknown field(s) {sorted(unknown)}")
    if not out.get("name"):
        raise InputError(f"author {entry!r} has no name (give NAME or NAME;AFFILIATION)")
    if "/" in out["name"] or "\\" in out["name"]:
        raise InputError(f"author name {out['name']!r}: bioimage.io names cannot contain "
                         "'/' or '\\'")
    return out


def parse_citation(entry: str | dict) -> dict[str, str]:
    """``"TEXT;DOI"`` or ``"TEXT;URL"`` (or a dict with ``text`` and ``doi``/``url``) -> a
    citation entry; bioimage.io needs a DOI or a URL for each."""
    if isinstance(entry, dict):
        text, ref = str(entry.get("text", "")), ""
        out = {k: str(entry[k]) for k in ("doi", "url") if entry.get(k)}
    else:
        text, _, ref = str(entry).rpartition(";") if ";" in str(entry) else (entry, "", "")
        out = {}
    text, ref = text.strip(), ref.strip()
    if ref:
        doi = re.sub(r"^(doi:|https?://(dx\.)?doi\.org/)", "", ref, flags=re.I)
        if _DOI.match(doi):
            out["doi"] = doi
        elif ref.startswith(("http://", "https://")):
            out["url"] = ref
        else:
            raise InputError(f"citation {entry!r}: {ref!r} is neither a DOI (10.xxxx/...) "
                             "nor an http(s) address")
    if not text or not out:
        raise InputError(f"citation {entry!r}: give TEXT;DOI or TEXT;URL (bioimage.io needs "
                         "a DOI or an address for each citation)")
    return {"text": text, **out}


def citations(extra: Iterable[str | dict] | None, method_papers: bool = True
              ) -> list[dict[str, str]]:
    """The user's citations first, then (unless ``method_papers=False``) DCMIX and PCIM;
    duplicates (same DOI or URL) kept once."""
    out = [parse_citation(c) for c in (extra or [])]
    if method_papers:
        out += [dict(c) for c in METHOD_CITATIONS]
    seen: set[str] = set()
    unique = []
    for c in out:
        key = (c.get("doi") or c.get("url") or c["text"]).lower()
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def environment_yaml(torch_version: str, napari_attribution_version: str) -> str:
    """A conda environment file for the ``pytorch_state_dict`` weights: python, pytorch,
    numpy and (pip) this package, whose ``build_dcmix`` the state dict's architecture
    names. The TorchScript (and ONNX) weights need only pytorch (onnxruntime)."""
    torch_version = torch_version.split("+")[0]
    major_minor = ".".join(torch_version.split(".")[:2])
    py = ".".join(platform.python_version_tuple()[:2])
    return ("name: napari-attribution-dcmix\n"
            "channels:\n  - conda-forge\n  - nodefaults\n"
            "dependencies:\n"
            f"  - python>={py}\n"
            f"  - pytorch>={major_minor}\n"
            "  - numpy\n"
            "  - pip\n"
            "  - pip:\n"
            f"      - napari-attribution>={napari_attribution_version}\n")


def example_input(n_channels: int, size: int, seed: int = 0) -> np.ndarray:
    """A deterministic (1, C, size, size) raw image of smooth blobs, a different pattern
    per channel (a stand-in when no real test image is given)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = np.empty((1, n_channels, size, size), np.float32)
    for c in range(n_channels):
        field = ndimage.gaussian_filter(rng.random((size, size)), sigma=max(size / 16, 1))
        field = (field - field.min()) / max(np.ptp(field), 1e-12)
        out[0, c] = 100.0 + 400.0 * field ** 2 + rng.normal(0, 5, (size, size))
    return out


def as_test_input(images: Any, n_channels: int) -> np.ndarray:
    """A user's test image -> (1, C, H, W) float32: an array, or a path to a ``.npy`` or
    an image file this package reads (channels first)."""
    if isinstance(images, (str, Path)):
        path = Path(images)
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            from .readers import read_array

            arr = read_array(path)
    else:
        arr = np.asarray(images)
    arr = np.asarray(arr, np.float32)
    if arr.ndim == 4:
        arr = arr[:1]
    elif arr.ndim == 3:
        arr = arr[None]
    else:
        raise InputError(f"the test image must be (C, H, W) or (N, C, H, W); got shape "
                         f"{arr.shape}")
    if arr.shape[1] != n_channels:
        raise InputError(f"the test image has {arr.shape[1]} channel(s); the model takes "
                         f"{n_channels}")
    if min(arr.shape[2:]) < 16:
        raise InputError(f"the test image is {arr.shape[2]}x{arr.shape[3]} px; the "
                         "package declares at least 16x16")
    if not np.isfinite(arr).all():
        raise InputError("the test image holds NaN or infinite values")
    return np.ascontiguousarray(arr)


_COLOURS = np.array([[0.2, 0.4, 1.0], [0.1, 1.0, 0.2], [1.0, 0.15, 0.15],
                     [1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 0.85, 0.0]], np.float32)


def composite(image: np.ndarray) -> np.ndarray:
    """(C, H, W) raw channels -> an (H, W, 3) RGB picture in [0, 1] (each channel
    stretched 1-99.8 % and given its own colour)."""
    rgb = np.zeros((*image.shape[1:], 3), np.float32)
    for c, ch in enumerate(image):
        lo, hi = np.percentile(ch, [1.0, 99.8])
        v = np.clip((ch - lo) / max(hi - lo, 1e-12), 0, 1)
        rgb += v[..., None] * _COLOURS[c % len(_COLOURS)]
    return np.clip(rgb / max(1.0, len(image) / 2), 0, 1)


def write_cover(path: Path, image: np.ndarray, channel_names: Sequence[str],
                class_names: Sequence[str], probabilities: np.ndarray,
                channel_weights: np.ndarray | None) -> Path:
    """A 2:1 PNG cover: the test image's channels (composite) and, beside it, the model's
    class probabilities on it and (DCMIX) the learned channel importance."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), dpi=100)
    ax = fig.add_axes((0.0, 0.0, 0.5, 1.0))
    ax.imshow(composite(image), interpolation="nearest")
    ax.set_axis_off()
    for c, name in enumerate(channel_names[:6]):
        ax.text(0.02, 0.97 - 0.07 * c, str(name)[:24], transform=ax.transAxes, va="top",
                color=tuple(_COLOURS[c % len(_COLOURS)]), fontsize=11, weight="bold",
                bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": "none"})
    rows = 2 if channel_weights is not None else 1
    bars = fig.add_axes((0.62, 0.58 if rows == 2 else 0.15, 0.35,
                         0.33 if rows == 2 else 0.7))
    k = min(len(class_names), 8)
    bars.barh(range(k), probabilities[:k], color="0.35")
    bars.set_yticks(range(k), [str(n)[:16] for n in class_names[:k]])
    bars.set_xlim(0, 1)
    bars.invert_yaxis()
    bars.set_title("class probability (test image)", fontsize=10)
    if channel_weights is not None:
        w = fig.add_axes((0.62, 0.1, 0.35, 0.33))
        n = min(len(channel_names), 8)
        w.barh(range(n), channel_weights[:n],
               color=[tuple(_COLOURS[c % len(_COLOURS)]) for c in range(n)])
        w.set_yticks(range(n), [str(c)[:16] for c in channel_names[:n]])
        w.set_xlim(0, max(1e-6, float(np.max(channel_weights[:n])) * 1.1))
        w.invert_yaxis()
        w.set_title("DCMIX channel importance", fontsize=10)
    fig.savefig(path, format="png")
    return path
