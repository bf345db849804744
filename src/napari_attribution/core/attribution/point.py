"""Point and explain: one object of a field (or every object) at the model's training scale.

A click on a cell becomes a crop centred on it, cut from the field shrunk the way the
training fields were (``ModelScale.downsample``) and as large as the model's input: the
model sees the cell as it saw its training crops. The crop is predicted, explained with
a few PCIM steps, checked for localised evidence (:mod:`.evidence`) and given one
evidence number per channel; the map is placed back on the field by a layer
scale/translate (:func:`placement`), so it sits exactly on the cell.

Per-channel evidence (``channel_evidence``):

* ``"occlusion"`` (default): how much the target probability drops when the channel is
  replaced by its mean over the crop (C + 1 forward passes, no gradients), and from the
  same passes how much the target's log-odds drop (``channel_log_odds``, nats);
* ``"pcim"``: the map is optimised per channel and each channel's share of the positive
  evidence is reported (the shown map is their sum).

Scope (``scope``): ``"cell"`` (default wherever a label image names the object) asks
"why this cell?": PCIM may change only the object's cell (its label grown by one object
diameter without crossing neighbours, :func:`cell_regions`), channel occlusion replaces a
channel inside the cell only, and the evidence check deletes pixels of the cell against
the same mask moved elsewhere in the cell (``EvidenceConfig.within_null``, calibrated by
benchmarks/evidence_within.py). The whole crop's channel occlusion is reported beside
it (``crop_channel_evidence``, C + 1 more forward passes): one cell moves a prediction
its neighbours share only a little, so the cell's numbers are small even for the
channel that decides. Their log-odds drops do separate the channels: on two BBBC013
fields (405 cells) the cells' GFP drop had a median of 3.1 nats where their probability
drop had a median of 0.000 (docs/benchmarks.md, "Point and explain"). ``"crop"`` asks
"what in this crop made the model say so" (the model's input holds several cells). A
click without an object under it (or without a label image) is explained with the crop
scope, and the result says so (``params["scope_note"]``). The class probabilities are
always the crop's: the model's prediction for its input, the same in both scopes.

Normalisation follows the model: ``per_field`` (plate models) and ``per_dataset`` models
prepare the whole field once and cut crops from it; ``per_crop`` models prepare each
crop. Everything is a generator of :class:`Progress` (closing it cancels). Pure
numpy/torch.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..models.classifier import frozen
from ..models.inference import ModelScale, shrink
from ..runtime.devices import resolve_device
from ..runtime.errors import InputError
from ..runtime.progress import Progress
from .evidence import target_scores

CHANNEL_EVIDENCE = ("occlusion", "pcim")
SCOPES = ("cell", "crop")
#: the scope when a label image names the clicked object (see the module docstring)
DEFAULT_SCOPE = "cell"
#: PCIM steps per click: a few steps already rank the pixels (see docs/user_guide.md)
POINT_STEPS = 4
#: crop side at training scale when the model does not record its input size
DEFAULT_CROP = 64
#: torch threads for one click: a 48 px crop gains nothing from parallel convolutions,
#: and beside other busy processes a second thread costs dearly (2 shared cores under
#: load 10: 0.33 s per click with one thread, 2.5 s with two)
POINT_THREADS = 1


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (None: unchanged), restored afterwards.

    The setting is process-wide: keep it to short work such as one click."""
    old = torch.get_num_threads()
    change = n is not None and int(n) > 0 and int(n) != old
    if change:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(old)


@dataclass
class PreparedField:
    """One field at the model's training scale, ready to cut crops from.

    ``x`` (C, h, w): the field shrunk ``factor`` times and prepared for the model, or only
    shrunk when ``per_crop`` (each crop is prepared on its own). ``crop``: crop side at
    training scale. ``shape``: the field's (H, W) before shrinking.
    """

    x: np.ndarray
    factor: int
    crop: int
    shape: tuple[int, int]
    per_crop: bool = False

    def origin(self, centre: Sequence[float]) -> tuple[int, int]:
        """Top-left (y0, x0) at training scale of the crop centred on ``centre`` (y, x) in
        field pixels; crops near an edge are shifted inside, as training crops are."""
        f, s = self.factor, self.crop
        h, w = self.x.shape[-2:]
        cy, cx = ((float(c) - (f - 1) / 2) / f for c in centre)  # shrunk pixel centres
        y0 = int(np.clip(round(cy) - s // 2, 0, h - s))
        x0 = int(np.clip(round(cx) - s // 2, 0, w - s))
        return y0, x0

    def box(self, origin: tuple[int, int]) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1) of a crop in field pixels (what the model saw)."""
        y0, x0 = origin[0] * self.factor, origin[1] * self.factor
        side = self.crop * self.factor
        return y0, x0, y0 + side, x0 + side


def prepare_field(clf: Any, image: np.ndarray, scale: ModelScale | None = None,
                  crop: int | None = None, layer_downsample: int = 1) -> PreparedField:
    """A raw field (C, H, W) at ``clf``'s training scale (``scale``: from its provenance
    when None). ``crop``: the crop side at training scale (default: the model's input
    size, else ``DEFAULT_CROP``). ``layer_downsample``: how much the field is already
    shrunk (a shrunk layer)."""
    arr = np.asarray(image)
    if arr.ndim != 3:
        raise InputError(f"a field must be (C, H, W); got shape {arr.shape}")
    clf.check_channels(arr.shape[0], "the field")
    if scale is None:
        scale = ModelScale.from_provenance(getattr(clf, "provenance", None))
        size = getattr(clf, "input_size", None)
        if scale.input_size is None and size:
            scale = ModelScale(scale.downsample, int(size))
    factor = scale.factor_for(layer_downsample)
    side = int(crop or scale.input_size or DEFAULT_CROP)
    small = shrink(arr[None], factor)[0]
    if min(small.shape[-2:]) < side:
        raise InputError(f"the field is {arr.shape[-2]}x{arr.shape[-1]} px, "
                         f"{small.shape[-2]}x{small.shape[-1]} at the model's training "
                         f"scale (shrunk {factor}x): smaller than its {side} px input")
    norm = getattr(clf, "normalizer", None)
    per_crop = getattr(norm, "mode", None) == "per_crop"
    x = small if per_crop else clf.prepare(small[None])[0]
    return PreparedField(x=np.ascontiguousarray(x, np.float32), factor=factor, crop=side,
                         shape=(int(arr.shape[-2]), int(arr.shape[-1])), per_crop=per_crop)


@dataclass
class FieldNuclei:
    """The built-in nuclei segmentation of one field (:func:`segment_field`).

    ``labels`` (H, W) int32, field pixels; ``channel``/``channel_name``: the channel
    segmented; ``named``: its name is a nuclear stain (False: no channel is, the last one
    was taken as a guess); ``diameter``: the nucleus diameter (field pixels) the
    segmentation was sized for (None: its defaults); ``seconds``: its cost."""

    labels: np.ndarray
    channel: int
    channel_name: str
    named: bool
    diameter: float | None
    seconds: float = 0.0

    @property
    def method(self) -> str:
        """How the objects were made (a Labels layer's ``segmentation`` metadata)."""
        return f"built-in Otsu + watershed on {self.channel_name}"

    @property
    def objects(self) -> int:
        return int(len(np.unique(self.labels)) - (1 if (self.labels == 0).any() else 0))


def segment_field(image: np.ndarray, channel_names: Sequence[str],
                  scale: ModelScale | None = None, layer_downsample: int = 1
                  ) -> FieldNuclei:
    """The nuclei of a raw field (C, H, W): built-in Otsu + watershed
    (:func:`...data.segmentation.segment_nuclei`) on the channel named like a DNA /
    nuclear stain (:func:`...data.segmentation.choose_nuclei_channel`; none: the last),
    sized so that a nucleus is ``TARGET_NUCLEUS_PX`` across at the model's training
    scale (``scale.downsample``; ``layer_downsample``: how much the field is already
    shrunk). The objects of point and explain's cell scope and of the object table when
    no label image is given."""
    from ..data.segmentation import (
        TARGET_NUCLEUS_PX,
        choose_nuclei_channel,
        segment_nuclei,
    )

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[0] != len(channel_names):
        raise InputError(f"a field must be (C, H, W) with one plane per channel "
                         f"({len(channel_names)}); got shape {arr.shape}")
    t0 = time.perf_counter()
    k, how = choose_nuclei_channel(list(channel_names))
    down = scale.downsample if scale is not None else 1
    diameter = TARGET_NUCLEUS_PX * down / max(int(layer_downsample), 1)
    size = diameter if diameter > 8 else None
    labels = segment_nuclei(arr[k], diameter=size)
    return FieldNuclei(labels=labels, channel=k, channel_name=str(channel_names[k]),
                       named=how == "named", diameter=size,
                       seconds=time.perf_counter() - t0)


def placement(scale: Sequence[float], translate: Sequence[float], factor: int,
              origin: tuple[int, int]) -> dict:
    """``scale``/``translate`` for a map of a crop (training-scale pixels) over a layer
    with ``scale``/``translate`` (its last two axes are the field's pixels): each map
    pixel covers ``factor`` x ``factor`` field pixels and sits centred on their block,
    the crop's top-left block at ``origin`` (training scale)."""
    sc = [float(s) for s in scale]
    tr = [float(t) for t in translate]
    for ax, o in zip((-2, -1), origin, strict=True):
        tr[ax] = tr[ax] + (o * factor + (factor - 1) / 2) * sc[ax]
        sc[ax] = sc[ax] * factor
    return {"scale": sc, "translate": tr}


def inside_share(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of each map's positive evidence inside its object: ``maps`` (N, h, w) at
    training scale, ``masks`` (N, h, w) the fraction of each map pixel inside the object
    (:func:`mask_fraction`). NaN for a map without positive evidence."""
    m = np.clip(np.asarray(maps, np.float64), 0, None)
    total = m.sum(axis=(-2, -1))
    inside = (m * np.asarray(masks, np.float64)).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1), np.nan)


def mask_fraction(mask: np.ndarray, factor: int) -> np.ndarray:
    """A field-pixel mask as the fraction of each training-scale pixel it covers."""
    return shrink(np.asarray(mask, np.float32), factor)


@dataclass
class ObjectResults:
    """Prediction and explanation of N objects of one field.

    ``maps`` (N, s, s) at training scale; ``origins`` (N, 2) crop top-left at training
    scale; ``centres`` (N, 2) in field pixels; ``channel_evidence`` (N, C);
    ``evidence_state`` 'localised' / 'none' per object (None when not checked);
    ``inside`` the share of positive evidence inside the object (NaN without a mask);
    ``crop_channel_evidence`` (N, C): the whole crop's channel occlusion beside a cell's
    own (cell scope with occlusion), else None. ``channel_log_odds`` (N, C): with
    occlusion, the scope's channel occlusion as a drop of the target's log-odds (nats;
    it still ranks the channels where the probability is saturated), else None.
    ``params["scope"]``: ``"cell"`` or ``"crop"``, the one used.
    """

    labels: np.ndarray
    centres: np.ndarray
    origins: np.ndarray
    maps: np.ndarray
    probabilities: np.ndarray
    targets: np.ndarray
    channel_evidence: np.ndarray
    channel_names: list[str]
    class_names: list[str]
    channel_method: str
    evidence_state: list[str | None]
    evidence_gain: np.ndarray
    inside: np.ndarray
    factor: int
    crop: int
    seconds: float = 0.0
    params: dict = field(default_factory=dict)
    crop_channel_evidence: np.ndarray | None = None
    channel_log_odds: np.ndarray | None = None

    @property
    def scope(self) -> str:
        """``"cell"`` or ``"crop"``: where the map and the channel evidence come from."""
        return str(self.params.get("scope", "crop"))

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self) -> list[dict[str, Any]]:
        """One row per object: label, centre, predicted class and probabilities (the
        crop's), evidence state and gain, per-channel evidence (``channel_*``: the
        scope's; ``log_odds_*``: the same as a drop of the target's log-odds, with
        occlusion; ``crop_channel_*``: the whole crop's, when computed) and the share
        inside the object."""
        out = []
        for i in range(len(self)):
            row: dict[str, Any] = {
                "label": int(self.labels[i]), "y": round(float(self.centres[i, 0]), 2),
                "x": round(float(self.centres[i, 1]), 2),
                "predicted": self.class_names[int(self.probabilities[i].argmax())],
                "target": self.class_names[int(self.targets[i])],
                "probability": round(float(self.probabilities[i, self.targets[i]]), 6)}
            for k, name in enumerate(self.class_names):
                row[f"p_{name}"] = round(float(self.probabilities[i, k]), 6)
            row["evidence"] = self.evidence_state[i] or ""
            row["evidence_gain"] = round(float(self.evidence_gain[i]), 6)
            for c, name in enumerate(self.channel_names):
                row[f"channel_{name}"] = round(float(self.channel_evidence[i, c]), 6)
            if self.channel_log_odds is not None:
                for c, name in enumerate(self.channel_names):
                    row[f"log_odds_{name}"] = round(float(self.channel_log_odds[i, c]), 6)
            if self.crop_channel_evidence is not None:
                for c, name in enumerate(self.channel_names):
                    row[f"crop_channel_{name}"] = round(
                        float(self.crop_channel_evidence[i, c]), 6)
            row["inside_share"] = round(float(self.inside[i]), 6)
            out.append(row)
        return out

    def provenance(self) -> dict[str, Any]:
        """How the table was made (JSON-ready)."""
        out = {"method": "pcim", "channel_evidence": self.channel_method,
               "channel_evidence_means": CHANNEL_MEANING[self.channel_method]
               + ("; only the cell's pixels change" if self.scope == "cell" else ""),
               "probabilities_of": "the crop around each object (the model's input)"}
        if self.channel_log_odds is not None:
            out["log_odds_means"] = CHANNEL_MEANING["log_odds"] + (
                "; only the cell's pixels change" if self.scope == "cell" else "")
        if self.crop_channel_evidence is not None:
            out["crop_channel_evidence_means"] = CHANNEL_MEANING["occlusion"] + \
                ", over the whole crop"
        return {**out,
                "factor": self.factor, "crop": self.crop, "seconds": round(self.seconds, 3),
                "objects": len(self), **self.params}


CHANNEL_MEANING = {
    "occlusion": "drop of the target probability when the channel is replaced by its "
                 "mean over the crop",
    "pcim": "the channel's share of the positive PCIM evidence (per-channel maps)",
    "log_odds": "drop of the target's log-odds (nats) when the channel is replaced by "
                "its mean over the crop",
}


def _crops(prep: PreparedField, origins: np.ndarray, clf: Any) -> np.ndarray:
    s = prep.crop
    crops = np.stack([prep.x[:, y:y + s, x:x + s] for y, x in origins]).astype(np.float32)
    if prep.per_crop:
        crops = np.asarray(clf.prepare(crops), np.float32)
    return np.ascontiguousarray(crops)


def channel_occlusion(model: torch.nn.Module, x: np.ndarray, targets: np.ndarray,
                      device: str | torch.device = "cpu", batch_size: int = 64
                      ) -> np.ndarray:
    """(N, C): the drop of each image's target probability when one channel is replaced
    by its mean over the image (``model`` frozen, on ``device``; ``x`` prepared)."""
    return occlusion_drops(model, x, targets, device, batch_size)[0]


def occlusion_drops(model: torch.nn.Module, x: np.ndarray, targets: np.ndarray,
                    device: str | torch.device = "cpu", batch_size: int = 64
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) twice, from the same C + 1 forward passes per image: the drop of the
    target probability and the drop of the target's log-odds (nats: the target logit
    minus the log-sum-exp of the others, :func:`.evidence.target_scores`) when one
    channel is replaced by its mean over the image. Where the model is saturated (one
    cell of a crop whose neighbours keep P near 1) the probability hardly moves while
    the log-odds still do."""
    xt = torch.as_tensor(np.asarray(x, np.float32), device=device)
    n, c = xt.shape[:2]
    drop_p = np.zeros((n, c), np.float32)
    drop_lo = np.zeros((n, c), np.float32)
    per = max(1, batch_size // (c + 1))
    with torch.no_grad():
        for i0 in range(0, n, per):
            xi = xt[i0:i0 + per]
            b = xi.shape[0]
            var = xi[:, None].repeat(1, c + 1, 1, 1, 1)
            mean = xi.mean(dim=(2, 3))
            for k in range(c):
                var[:, k + 1, k] = mean[:, k, None, None]
            z = model(var.reshape(-1, *xi.shape[1:])).float()
            t = torch.as_tensor(targets[i0:i0 + b], device=device).long()
            lo, pt = (v.view(b, c + 1) for v in target_scores(z, t.repeat_interleave(c + 1)))
            drop_p[i0:i0 + b] = (pt[:, :1] - pt[:, 1:]).cpu().numpy()
            drop_lo[i0:i0 + b] = (lo[:, :1] - lo[:, 1:]).cpu().numpy()
    return drop_p, drop_lo


@dataclass(frozen=True)
class PointOptions:
    """How :func:`explain_objects` explains each object (shared by a click and the
    whole-field table).

    ``steps``: PCIM steps; ``channel_evidence``: ``"occlusion"`` or ``"pcim"`` (see the
    module docstring); ``crop_channels``: with regions (cell scope) and occlusion, also
    the whole crop's channel occlusion; ``evidence``: run the evidence check;
    ``device``, ``batch_size``:
    as :func:`.explain.explain`; ``threads``: torch threads meanwhile
    (:func:`torch_threads`; None = unchanged). ``pcim``: more PCIM settings (e.g.
    ``{"lr": 0.3}``), checked by PCIM's settings class.
    """

    steps: int = POINT_STEPS
    channel_evidence: str = "occlusion"
    crop_channels: bool = True
    evidence: bool = True
    device: str = "cpu"
    batch_size: int = 32
    threads: int | None = None
    pcim: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.channel_evidence not in CHANNEL_EVIDENCE:
            raise InputError(f"unknown channel evidence {self.channel_evidence!r}; choose "
                             f"one of {CHANNEL_EVIDENCE}")
        if int(self.steps) < 1:
            raise InputError(f"point and explain needs at least one PCIM step; got "
                             f"{self.steps}")

    @classmethod
    def build(cls, options: PointOptions | None = None, **overrides: Any) -> PointOptions:
        """``options`` (default: the defaults) with ``overrides``: keywords naming a field
        replace it, every other keyword is a PCIM setting (added to ``pcim``)."""
        import dataclasses

        base = options if options is not None else cls()
        over = dict(overrides)
        pcim = {**base.pcim, **over.pop("pcim", {})}
        names = {f.name for f in dataclasses.fields(cls)}
        mine = {k: over.pop(k) for k in list(over) if k in names}
        return dataclasses.replace(base, **mine, pcim={**pcim, **over})


def explain_objects(clf: Any, prep: PreparedField, centres: np.ndarray,
                    labels: Sequence[int] | None = None, masks: np.ndarray | None = None,
                    targets: Any = None, regions: np.ndarray | None = None,
                    options: PointOptions | None = None,
                    **overrides: Any) -> Generator[Progress, None, ObjectResults]:
    """Predict and explain the objects centred on ``centres`` (N, 2: y, x field pixels).

    ``masks`` (N, s, s): each object's mask as :func:`mask_fraction` at training scale
    over its crop, for :attr:`ObjectResults.inside`. ``targets``: class per object (None:
    the predicted one). ``regions`` (N, s, s): explain each object *within* its region
    (e.g. its cell, :func:`cell_regions`): only the region's pixels may change
    (:class:`Within`), the rest of the crop stays as the model saw it and gets no
    evidence; channel occlusion then replaces a channel inside the region only (and,
    with ``crop_channels``, over the whole crop too: ``crop_channel_evidence``); the
    evidence check deletes the map's top pixels of the region against the same mask
    moved elsewhere in the region, in the intact crop. ``options``
    (:class:`PointOptions`) and ``overrides`` (``steps=3``, ``threads=1``, PCIM
    settings such as ``lr``): how to explain.
    """
    opts = PointOptions.build(options, **overrides)
    with torch_threads(opts.threads):
        return (yield from _explain_objects(clf, prep, centres, labels, masks, targets,
                                            regions, opts))


def _explain_objects(clf: Any, prep: PreparedField, centres: np.ndarray,
                     labels: Sequence[int] | None, masks: np.ndarray | None, targets: Any,
                     regions: np.ndarray | None, opts: PointOptions
                     ) -> Generator[Progress, None, ObjectResults]:
    from .explain import explain

    t0 = time.perf_counter()
    steps, channel_evidence, evidence = opts.steps, opts.channel_evidence, opts.evidence
    pcim = dict(opts.pcim)
    pts = np.asarray(centres, float).reshape(-1, 2)
    n = len(pts)
    if n == 0:
        raise InputError("no objects to explain")
    ids = np.arange(1, n + 1) if labels is None else np.asarray(labels, np.int64)
    origins = np.array([prep.origin(p) for p in pts], np.int64).reshape(n, 2)
    x = _crops(prep, origins, clf)
    dev = resolve_device(opts.device)
    pcim.setdefault("min_steps", min(3, steps))
    per_channel = channel_evidence == "pcim"
    crop_ch = ch_lo = None
    if regions is None:
        result = yield from explain(clf.module, x, targets, method="pcim", steps=int(steps),
                                    per_channel=per_channel, device=str(dev),
                                    batch_size=opts.batch_size, evidence=evidence, **pcim)
        maps = np.asarray(result.maps, np.float32)
        ev = result.evidence or {}
        probabilities, tgt, used = result.probabilities, result.targets, result.params
    else:
        maps, probabilities, tgt, ev, used = yield from _within_regions(
            clf, x, regions, targets, steps, per_channel, dev, evidence, **pcim)
    if per_channel:
        pos = np.clip(maps, 0, None).sum(axis=(-2, -1))
        ch = pos / np.maximum(pos.sum(1, keepdims=True), 1e-12)
        maps = maps.sum(1)
    elif regions is None:
        with frozen(clf.module, dev) as net:
            ch, ch_lo = occlusion_drops(net, x, tgt, dev)
    else:
        drops = [_occlude_within(clf.module, x[i:i + 1], regions[i:i + 1], tgt[i:i + 1],
                                 dev) for i in range(n)]
        ch = np.concatenate([d[0] for d in drops])
        ch_lo = np.concatenate([d[1] for d in drops])
        if opts.crop_channels:
            with frozen(clf.module, dev) as net:
                crop_ch = channel_occlusion(net, x, tgt, dev)
    states = list(ev.get("state", [None] * n))
    gains = np.asarray(ev.get("gain", [np.nan] * n), float)
    inside = (inside_share(maps, masks) if masks is not None
              else np.full(n, np.nan))
    return ObjectResults(
        labels=ids, centres=pts, origins=origins, maps=maps,
        probabilities=np.asarray(probabilities, np.float32),
        targets=np.asarray(tgt, np.int64), channel_evidence=np.asarray(ch),
        channel_names=[str(c) for c in clf.channel_names],
        class_names=[str(c) for c in clf.class_names], channel_method=channel_evidence,
        evidence_state=states, evidence_gain=gains, inside=inside, factor=prep.factor,
        crop=prep.crop, seconds=time.perf_counter() - t0,
        params={"steps": int(steps), "pcim": used, "device": str(dev),
                "evidence_config": ev.get("config"),
                "scope": "crop" if regions is None else "cell"},
        crop_channel_evidence=None if crop_ch is None else np.asarray(crop_ch),
        channel_log_odds=None if ch_lo is None else np.asarray(ch_lo))


class Within(torch.nn.Module):
    """``model`` seeing ``x`` (1, C, H, W) where only ``region`` (1, 1, H, W; 1 = free)
    follows the input: ``model(region * z + (1 - region) * x)``. PCIM through it
    explains one object inside its crop; on ``x`` itself it is the model."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, region: torch.Tensor
                 ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("x", x)
        self.register_buffer("region", region)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(self.region * z + (1 - self.region) * self.x)


def _within_regions(clf: Any, x: np.ndarray, regions: np.ndarray, targets: Any,
                    steps: int, per_channel: bool, dev: torch.device, evidence: bool,
                    **pcim: Any) -> Generator[Progress, None, tuple]:
    """PCIM of each crop within its region (one object at a time), then the evidence
    check on the intact model, deleting inside each region only."""
    from .evidence import evidence_check
    from .explain import _relay, explain

    n = len(x)
    reg = np.asarray(regions, np.float32).reshape(n, 1, *x.shape[-2:])
    tg = [None] * n if targets is None or np.ndim(targets) == 0 else list(targets)
    if targets is not None and np.ndim(targets) == 0:
        tg = [targets] * n
    maps, probs, tgt, used = [], [], [], {}
    for i in range(n):
        net = Within(clf.module, torch.from_numpy(x[i:i + 1]), torch.from_numpy(reg[i:i + 1]))
        gen = explain(net, x[i:i + 1], tg[i], method="pcim", steps=int(steps),
                      per_channel=per_channel, device=str(dev), **pcim)
        res = yield from _relay(gen, i, n, f"object {i + 1}/{n} — ", {})
        keep = reg[i] if per_channel else reg[i, 0]
        maps.append(np.asarray(res.maps[0], np.float32) * (keep > 0))
        probs.append(res.probabilities[0])
        tgt.append(int(res.targets[0]))
        used = res.params
    maps_a, tgt_a = np.stack(maps), np.asarray(tgt, np.int64)
    ev: dict = {}
    if evidence:
        flat = maps_a.sum(1) if per_channel else maps_a
        with frozen(clf.module, dev) as model:
            ev = evidence_check(model, x, flat, tgt_a, device=dev, within=reg[:, 0] > 0)
    return maps_a, np.stack(probs), tgt_a, ev, used


def _occlude_within(model: torch.nn.Module, x: np.ndarray, region: np.ndarray,
                    targets: np.ndarray, dev: torch.device
                    ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`occlusion_drops` with each channel replaced inside ``region`` only."""
    net = Within(model, torch.from_numpy(x), torch.from_numpy(
        np.asarray(region, np.float32).reshape(1, 1, *x.shape[-2:])))
    with frozen(net, dev) as wrapped:
        return occlusion_drops(wrapped, x, targets, dev)


def cell_regions(labels: np.ndarray, ids: Sequence[int], prep: PreparedField,
                 origins: np.ndarray, grow: float | None = None) -> np.ndarray:
    """(N, s, s) regions of the objects' cells: each label grown by ``grow`` field pixels
    (default: one median object diameter) without crossing its neighbours
    (``skimage.segmentation.expand_labels``), as the fraction of each training-scale
    pixel it covers (> 0 counts as inside)."""
    from skimage.segmentation import expand_labels

    lab = np.asarray(labels)
    if grow is None:
        counts = np.bincount(lab.ravel())[1:]
        area = float(np.median(counts[counts > 0])) if (counts > 0).any() else 0.0
        grow = 2 * np.sqrt(area / np.pi)
    grow = max(float(grow), 0.0)
    f, s = prep.factor, prep.crop
    side, pad = s * f, int(np.ceil(grow)) + 1
    h, w = lab.shape[-2:]
    out = np.zeros((len(ids), s, s), np.float32)
    for k, (obj, (oy, ox)) in enumerate(zip(ids, origins, strict=True)):
        # growing reaches only ``grow`` pixels: a window around the crop gives the same
        y0, x0 = int(oy) * f, int(ox) * f
        wy, wx = max(y0 - pad, 0), max(x0 - pad, 0)
        win = expand_labels(lab[wy:min(y0 + side + pad, h), wx:min(x0 + side + pad, w)],
                            distance=grow)
        cell = win[y0 - wy:y0 - wy + side, x0 - wx:x0 - wx + side] == obj
        out[k] = mask_fraction(cell, f)
    return out


def object_masks(labels: np.ndarray, ids: Sequence[int], prep: PreparedField,
                 origins: np.ndarray) -> np.ndarray:
    """(N, s, s): the fraction of each training-scale pixel of each crop inside its object
    (``labels``: the field's label image, field pixels)."""
    f, s = prep.factor, prep.crop
    out = np.zeros((len(ids), s, s), np.float32)
    for k, (lab, (y0, x0)) in enumerate(zip(ids, origins, strict=True)):
        win = labels[y0 * f:(y0 + s) * f, x0 * f:(x0 + s) * f] == lab
        out[k] = mask_fraction(win, f)
    return out


def explain_labels(clf: Any, prep: PreparedField, labels: np.ndarray,
                   ids: Sequence[int] | None = None, scope: str = DEFAULT_SCOPE,
                   **options: Any) -> Generator[Progress, None, ObjectResults]:
    """:func:`explain_objects` for the objects of a label image (field pixels, 0 =
    background), centred on their centroids, with their masks (``ids``: only these;
    ``scope``: ``"cell"`` (default: each row's map and channel evidence are that
    cell's) or ``"crop"``, as in :func:`explain_point`)."""
    from ..data.segmentation import check_labels_image, object_centres

    _check_scope(scope)
    lab = check_labels_image(labels, prep.shape, "the label image")
    all_ids, centres = object_centres(lab)
    if ids is not None:
        keep = np.isin(all_ids, np.asarray(ids))
        all_ids, centres = all_ids[keep], centres[keep]
    if all_ids.size == 0:
        raise InputError("the label image holds no objects (all 0)")
    return (yield from _explain_labelled(clf, prep, lab, all_ids, centres, scope, options))


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise InputError(f"unknown scope {scope!r}; choose one of {SCOPES}")


def _explain_labelled(clf: Any, prep: PreparedField, lab: np.ndarray, ids: Sequence[int],
                      centres: Sequence[Sequence[float]], scope: str, options: dict
                      ) -> Generator[Progress, None, ObjectResults]:
    """:func:`explain_objects` for objects ``ids`` of the label image ``lab`` centred on
    ``centres``: their masks, and in the cell scope their cells as regions."""
    origins = np.array([prep.origin(c) for c in centres], np.int64)
    masks = object_masks(lab, ids, prep, origins)
    if scope == "cell":
        options["regions"] = cell_regions(lab, ids, prep, origins)
    return (yield from explain_objects(clf, prep, centres, labels=ids, masks=masks,
                                       **options))


def label_at(labels: np.ndarray, point: Sequence[float]) -> int:
    """The label under ``point`` (y, x field pixels); 0 outside the image."""
    y, x = (int(round(float(p))) for p in point)
    h, w = labels.shape[-2:]
    if not (0 <= y < h and 0 <= x < w):
        return 0
    return int(labels[y, x])


def explain_point(clf: Any, prep: PreparedField, point: Sequence[float],
                  labels: np.ndarray | None = None, scope: str = DEFAULT_SCOPE,
                  **options: Any) -> Generator[Progress, None, ObjectResults]:
    """Explain the object under ``point`` (y, x field pixels): with a label image
    (field pixels) and a label there, the crop centres on that object's centroid and the
    object's mask gives :attr:`ObjectResults.inside`; else the crop centres on the point
    (label 0). ``scope``: ``"cell"`` (default: only the object's cell may change,
    :func:`cell_regions`) or ``"crop"`` (what the model sees). Without a label under the
    point the crop scope is used and ``params["scope_note"]`` says why. One torch thread
    unless ``threads`` says otherwise (``POINT_THREADS``)."""
    options.setdefault("threads", POINT_THREADS)
    _check_scope(scope)
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape[-2:] != prep.shape:
            raise InputError(f"the label image is {lab.shape[-2]}x{lab.shape[-1]} but the "
                             f"field is {prep.shape[0]}x{prep.shape[1]}")
        hit = label_at(lab, point)
        if hit:
            ys, xs = np.nonzero(lab == hit)
            centre = (float(ys.mean()), float(xs.mean()))
            return (yield from _explain_labelled(clf, prep, lab, [hit], [centre], scope,
                                                 options))
    res = yield from explain_objects(clf, prep, [tuple(point)], labels=[0], **options)
    if scope == "cell":
        res.params["scope_note"] = ("no label image: the object is not known"
                                    if labels is None else "no object under the click")
    return res
