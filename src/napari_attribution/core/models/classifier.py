"""One model object for every face: :class:`Classifier`.

Whatever the user hands in (a DCMIX bundle, a TorchScript or ``torch.export`` file, a
bioimage.io package, an in-memory module or a training result), the loader
(``io.models.load_model``) returns a ``Classifier``: the module, how raw images are
prepared for it, channel and class names, input size, where it came from and the file's
content hash. Faces never branch on the model's format: they call ``prepare``,
``predict_proba``, ``resolve_targets``, ``explain`` and ``provenance``.

The user's module is never mutated: :func:`frozen` sets evaluation mode, device and
gradient flags for the duration of a computation and restores them afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..runtime.errors import BundleError, InputError

PREDICTED = "predicted"


@contextmanager
def frozen(model: torch.nn.Module, device: torch.device | str | None = None
           ) -> Iterator[torch.nn.Module]:
    """``model`` in evaluation mode without parameter gradients (on ``device``), restored
    to its own mode, device and ``requires_grad`` flags on exit.

    Modules from ``torch.export`` refuse ``.eval()``; their mode was fixed when they were
    exported, so only the ``training`` attributes are set (they are not read by them).
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    first = next(iter(model.parameters()), None)
    if first is None:
        first = next(iter(model.buffers()), None)
    home = None if first is None else first.device
    moved = False
    try:
        for m, _ in modes:
            m.training = False  # what .eval() does, without the exported module's refusal
        for p, _ in grads:
            p.requires_grad_(False)
        if device is not None and home is not None and torch.device(device) != home:
            model.to(device)
            moved = True
        yield model
    finally:
        if moved:
            model.to(home)
        for m, mode in modes:
            m.training = mode
        for p, flag in grads:
            p.requires_grad_(flag)


def _n_classes_of(module: torch.nn.Module) -> int | None:
    """The last 2-D weight's rows (a linear head), when the module has one."""
    last = None
    for p in module.parameters():
        if p.ndim == 2:
            last = p
    return None if last is None else int(last.shape[0])


def infer_channels(module: torch.nn.Module) -> int | None:
    """Input channels of a module: a (wrapped) DCMIX model's ``config.n_channels`` or
    mixing logits (K, C), else the first convolution's input channels."""
    for m in module.modules():
        n = getattr(getattr(m, "config", None), "n_channels", None)
        if isinstance(n, int):
            return n
    params = dict(module.named_parameters())
    for name, p in params.items():  # a DCMIX model as TorchScript / exported: (K, C)
        if name.endswith("mixing.logits") and p.ndim == 2:
            return int(p.shape[1])
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d) and m.groups == 1:
            return int(m.in_channels)
    for p in params.values():  # TorchScript / exported: the first 4-D (conv) weight
        if p.ndim == 4:
            return int(p.shape[1])
    return None


@dataclass
class Classifier:
    """A classifier of (N, C, H, W) images and everything needed to use and cite it.

    ``preprocess`` maps raw images to what ``module`` expects (a bundle's recorded
    normalisation, a bioimage.io package's declared preprocessing, or nothing);
    ``normalization`` describes it for provenance. ``kind`` is the format it came
    from (``bundle``, ``torchscript``, ``export``, ``bioimageio``, ``module``,
    ``train_result``); ``sha256`` is the hash of the file it was read from.
    """

    module: torch.nn.Module
    kind: str
    channel_names: list[str]
    class_names: list[str]
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None
    normalization: dict | str | None = None
    input_size: int | None = None
    path: Path | None = None
    sha256: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    importance: Any = None
    bundle: Any = None
    normalizer: Any = None
    trusted: bool = False
    operators: list[str] = field(default_factory=list)

    @property
    def model(self) -> torch.nn.Module:
        """The torch module (the name bundles use)."""
        return self.module

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def source(self) -> str:
        """Where the model came from, for messages: its file or ``kind``."""
        return str(self.path) if self.path else f"an in-memory {self.kind}"

    # -- inputs ------------------------------------------------------------------------

    def check_channels(self, n_channels: int, what: str = "the images") -> None:
        """Raise :class:`BundleError` when ``n_channels`` differs from the model's."""
        if n_channels != self.n_channels:
            raise BundleError(
                f"{what} have {n_channels} channel(s) but the model "
                f"{'in ' + str(self.path) + ' ' if self.path else ''}expects "
                f"{self.n_channels} ({', '.join(self.channel_names)})")

    def prepare(self, images) -> np.ndarray:
        """Raw (N, C, H, W) or (C, H, W) images as the module expects them (float32).

        An ImageSet or plate ``FieldCrops`` whose crops were already normalised the
        bundle's way is used as it is (see ``core.normalization.prepare_inputs``).
        """
        arr = np.asarray(getattr(images, "images", images))
        if arr.ndim not in (3, 4):
            raise InputError(f"images must be (C, H, W) or (N, C, H, W); got shape "
                             f"{arr.shape}")
        self.check_channels(arr.shape[-3])
        if self.bundle is not None:
            src = images if hasattr(images, "images") else arr
            return np.asarray(self.bundle.prepare(src), np.float32)
        out = arr if self.preprocess is None else self.preprocess(arr)
        return np.asarray(out, np.float32)

    # -- outputs -----------------------------------------------------------------------

    @torch.no_grad()
    def predict_logits(self, images: np.ndarray, batch_size: int = 64,
                       device: str | torch.device = "cpu") -> np.ndarray:
        """Class logits (N, n_classes) for raw images; non-finite outputs are an error."""
        from ..runtime.devices import resolve_device
        from ..runtime.validation import check_images

        x = self.prepare(images)
        x = check_images(x[None] if x.ndim == 3 else x, self.n_channels)
        dev = resolve_device(device)
        with frozen(self.module, dev) as net:
            out = [net(torch.from_numpy(x[i:i + batch_size]).to(dev)).float().cpu()
                   for i in range(0, x.shape[0], batch_size)]
        logits = torch.cat(out).numpy()
        check_outputs(logits, self)
        return logits

    def predict_proba(self, images: np.ndarray, batch_size: int = 64,
                      device: str | torch.device = "cpu") -> np.ndarray:
        """Class probabilities (N, n_classes) for raw images."""
        logits = torch.from_numpy(self.predict_logits(images, batch_size, device))
        return torch.softmax(logits, 1).numpy()

    def resolve_targets(self, targets: int | str | Sequence[int | str] | None
                        ) -> int | list[int] | None:
        """Class indices from indices, class names, numeric strings or ``"predicted"``
        (None = the predicted class of each image)."""
        if targets is None:
            return None
        if isinstance(targets, (str, int, np.integer)):
            return self._one_target(targets)
        return [self._one_target(t) for t in targets]

    def _one_target(self, t: int | str | np.integer) -> int | None:
        if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
            idx = int(t)
        elif isinstance(t, str):
            s = t.strip()
            if s.lower() == PREDICTED or s.lower().startswith(PREDICTED + " ("):
                return None
            if s in self.class_names:
                return self.class_names.index(s)
            if s.lstrip("-").isdigit():
                idx = int(s)
            else:
                raise InputError(f"unknown target class {t!r}; give an index or one of "
                                 f"{self.class_names}")
        else:
            raise InputError(f"a target class must be an index or a class name; got "
                             f"{type(t).__name__}")
        if not 0 <= idx < self.n_classes:
            raise InputError(f"target class {idx} is out of range: the model has "
                             f"{self.n_classes} classes (0..{self.n_classes - 1})")
        return idx

    # -- work --------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The model's part of every provenance record (JSON-ready)."""
        return {
            "model": None if self.path is None else str(self.path),
            "model_kind": self.kind,
            "model_sha256": self.sha256,
            "model_trusted": bool(self.trusted),
            "channel_names": list(self.channel_names),
            "class_names": list(self.class_names),
            "normalization": self.normalization,
            "input_size": self.input_size,
        }


def check_outputs(values: np.ndarray, clf: Classifier | None = None,
                  what: str = "outputs") -> None:
    """Refuse non-finite model outputs: they come from corrupt weights or unsuitable
    inputs and would otherwise be written as if they were results."""
    arr = np.asarray(values)
    if arr.size and not np.isfinite(arr).all():
        src = f" ({clf.source})" if clf is not None else ""
        raise BundleError(f"the model{src} produced non-finite {what} (NaN or inf): its "
                          "weights may be corrupt, or the images hold extreme values")


def default_names(prefix: str, n: int) -> list[str]:
    return [f"{prefix} {i}" for i in range(n)]
