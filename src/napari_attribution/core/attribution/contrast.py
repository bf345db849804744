"""Contrastive targets: explain "class A rather than class B".

:class:`ContrastModel` turns a classifier into a two-class one whose logits are
``(0, z_A - z_B)``. Every method then explains class 1 of the wrapper, which is the
contrast: gradient methods differentiate ``z_A - z_B``, probability-based methods
(occlusion, RISE, the metrics) see ``softmax = p_A / (p_A + p_B)``, and PCIM's default
``lse_margin`` loss becomes exactly ``z_B - z_A`` (``ce`` becomes
``-log(p_A / (p_A + p_B))``). For a two-class model "A vs B" equals explaining A with
those losses; the contrast matters with three or more classes, or to explain the other
class on purpose (what in a negative image argues for positive).
"""

from __future__ import annotations

import torch

from ..runtime.errors import InputError

#: the wrapper's class index that carries the contrast (class 0 is the constant 0)
CONTRAST_TARGET = 1


class ContrastModel(torch.nn.Module):
    """Logits ``(0, z_target - z_contrast)`` of a frozen classifier ``model``."""

    def __init__(self, model: torch.nn.Module, target: int, contrast: int) -> None:
        super().__init__()
        self.model = model
        self.target = int(target)
        self.contrast = int(contrast)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        d = z[:, self.target] - z[:, self.contrast]
        return torch.stack([torch.zeros_like(d), d], 1)


def check_contrast(contrast: object, targets: object, n_classes: int) -> int:
    """The contrast class as an int; clear errors for bad values or a target equal to it
    (``targets``: the resolved target class of every image)."""
    import numpy as np

    if isinstance(contrast, bool) or not isinstance(contrast, (int, np.integer)):
        raise InputError(f"the contrast class must be one class index; got {contrast!r}")
    b = int(contrast)
    if not 0 <= b < n_classes:
        raise InputError(f"contrast class {b} is out of range: the model has {n_classes} "
                         f"classes (0..{n_classes - 1})")
    t = np.atleast_1d(np.asarray(targets))
    if t.size and (t == b).any():
        raise InputError(f"the target and the contrast are the same class ({b}); a "
                         "contrast needs two different classes")
    return b
