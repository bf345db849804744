"""PNG figures of images with their attribution overlays (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.runtime.errors import InputError


def _stretch(a: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    lo, hi = np.percentile(a, [low, high])
    return np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)


def _overlay_rgba(m: np.ndarray, cmap: str, alpha: float) -> np.ndarray:
    """Positive evidence only, coloured by ``cmap`` and opaque in proportion to it."""
    from matplotlib import colormaps

    v = np.maximum(m, 0)
    top = np.percentile(v, 99.5)
    v = np.clip(v / top, 0, 1) if top > 0 else np.zeros_like(v)
    rgba = colormaps[cmap](v)
    rgba[..., 3] = alpha * v
    return rgba


@dataclass(frozen=True)
class OverlayStyle:
    """How :func:`save_overlay_figure` draws."""

    #: channel shown under the map (None: the mean of all channels)
    overlay_channel: int | None = None
    #: matplotlib colormap of the map
    cmap: str = "inferno"
    #: opacity of the strongest evidence
    alpha: float = 0.85
    #: resolution of the PNG
    dpi: int = 100


def save_overlay_figure(
    path: str | Path,
    images: np.ndarray,
    maps: np.ndarray,
    channel_names: Sequence[str] | None = None,
    *,
    titles: Sequence[str] | None = None,
    masks: np.ndarray | None = None,
    style: OverlayStyle | None = None,
    overwrite: bool = True,
    **style_options: Any,
) -> Path:
    """Save a grid: one row per image, one column per channel, then the attribution
    map over the image. ``images`` (N, C, H, W) or (C, H, W); ``maps`` (N, H, W) or
    (H, W); the map's positive part is drawn, transparent at zero (so log-weight maps
    show only amplified pixels). ``masks`` (N, H, W) are outlined on the overlay;
    ``titles`` label the rows. ``style`` (:class:`OverlayStyle`) and keyword overrides
    of its fields (``overlay_channel``, ``cmap``, ``alpha``, ``dpi``) set the drawing.
    Returns the path; written atomically, an existing file refused unless ``overwrite``.
    """
    known = [f.name for f in fields(OverlayStyle)]
    unknown = sorted(set(style_options) - set(known))
    if unknown:
        raise InputError(f"unknown figure option(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(known)}")
    st = replace(style or OverlayStyle(), **style_options)
    overlay_channel, cmap, alpha = st.overlay_channel, st.cmap, st.alpha
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    imgs = np.asarray(images, np.float32)
    mps = np.asarray(maps, np.float32)
    if imgs.ndim == 3:
        imgs, mps = imgs[None], mps[None]
        masks = None if masks is None else np.asarray(masks)[None]
    if mps.ndim == 4:
        mps = mps.sum(1)
    if imgs.ndim != 4 or mps.shape != (imgs.shape[0], *imgs.shape[2:]):
        raise InputError(f"images {imgs.shape} and maps {mps.shape} do not match: need "
                         "(N, C, H, W) and (N, H, W)")
    n, c = imgs.shape[:2]
    names = list(channel_names) if channel_names is not None else [f"ch{i}" for i in range(c)]
    if len(names) != c:
        raise InputError(f"{len(names)} channel names for {c} channels")
    fig = Figure(figsize=(2.2 * (c + 1), 2.2 * n + 0.3), dpi=st.dpi)
    axes = fig.subplots(n, c + 1, squeeze=False)
    for i in range(n):
        for ch in range(c):
            ax = axes[i, ch]
            ax.imshow(_stretch(imgs[i, ch]), cmap="gray")
            if i == 0:
                ax.set_title(names[ch], fontsize=9)
        under = imgs[i].mean(0) if overlay_channel is None else imgs[i, overlay_channel]
        ax = axes[i, c]
        ax.imshow(_stretch(under), cmap="gray")
        ax.imshow(_overlay_rgba(mps[i], cmap, alpha))
        if masks is not None:
            ax.contour(np.asarray(masks[i]).astype(float), levels=[0.5], colors="cyan",
                       linewidths=0.6)
        if i == 0:
            ax.set_title("attribution", fontsize=9)
        if titles is not None:
            axes[i, 0].set_ylabel(str(titles[i]), fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    from .atomic import atomic_write

    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), overwrite,
                        "figure")
