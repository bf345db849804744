"""ROAD: Remove And Debias (Rong et al., ICML 2022) noisy linear imputation.

Removed pixels are not set to a constant (which leaks the removal pattern to the model:
a black square is itself evidence) but imputed from their neighbours: every removed
pixel equals the weighted mean of its 8 neighbours (direct neighbours weight 1/6,
diagonal ones 1/12), which is one sparse linear system per image and removal mask,
solved for all channels at once. Small Gaussian noise is added to the imputed values
so that the model cannot detect the imputation by its exact linearity.

This perturbation is independent of PCIM's training games (fade to zero / to a blur),
so scores computed with it are not scored on the method's own perturbation.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import spsolve

from ..runtime.errors import InputError

_OFFSETS = [(-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
            (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12), (1, 1, 1 / 12)]


def noisy_linear_impute(image: np.ndarray, removed: np.ndarray, noise: float = 0.01,
                        seed: int = 0) -> np.ndarray:
    """``image`` (C, H, W) with the pixels where ``removed`` (H, W) is True imputed.

    ``noise`` is the standard deviation of the added Gaussian noise as a fraction of each
    channel's 1-99 percentile range. Pixels without any kept pixel in their connected
    region of removed pixels fall back to the channel mean of the kept pixels.
    """
    x = np.asarray(image, np.float64)
    removed = np.asarray(removed, bool)
    if x.ndim != 3 or removed.shape != x.shape[1:]:
        raise InputError(f"ROAD needs a (C, H, W) image and an (H, W) mask; got {x.shape} "
                         f"and {removed.shape}")
    c, h, w = x.shape
    out = x.copy()
    n_rm = int(removed.sum())
    if n_rm == 0:
        return out.astype(np.float32)
    if n_rm == h * w:
        out[:] = x.mean(axis=(1, 2), keepdims=True)
        return out.astype(np.float32)
    index = -np.ones((h, w), np.int64)
    index[removed] = np.arange(n_rm)
    ys, xs = np.nonzero(removed)
    rows, cols, vals = [], [], []
    diag = np.zeros(n_rm)
    rhs = np.zeros((n_rm, c))
    for dy, dx, wt in _OFFSETS:
        ny, nx = ys + dy, xs + dx
        ok = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        i, ny, nx = np.nonzero(ok)[0], ny[ok], nx[ok]
        diag[i] += wt
        nb_removed = removed[ny, nx]
        rows.append(i[nb_removed])
        cols.append(index[ny[nb_removed], nx[nb_removed]])
        vals.append(np.full(int(nb_removed.sum()), -wt))
        kept = ~nb_removed
        np.add.at(rhs, i[kept], wt * x[:, ny[kept], nx[kept]].T)
    a = sparse.csr_matrix((np.concatenate(vals + [diag]),
                           (np.concatenate(rows + [np.arange(n_rm)]),
                            np.concatenate(cols + [np.arange(n_rm)]))), shape=(n_rm, n_rm))
    # Regions of removed pixels that touch no kept pixel make the system singular:
    # tie them weakly to the channel mean of the kept pixels.
    mean = x[:, ~removed].mean(axis=1)
    eps = 1e-6
    a = a + eps * sparse.identity(n_rm, format="csr")
    rhs = rhs + eps * mean[None, :]
    sol = spsolve(a.tocsc(), rhs)
    sol = sol.reshape(n_rm, c)
    lo, hi = np.percentile(x.reshape(c, -1), [1, 99], axis=1)
    rng = np.random.default_rng(seed)
    sol = sol + rng.normal(size=sol.shape) * (noise * np.maximum(hi - lo, 1e-12))[None, :]
    out[:, ys, xs] = sol.T
    return out.astype(np.float32)
