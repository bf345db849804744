"""Sanity checks (Adebayo et al. 2018) as a metric over several seeds.

* **Model-parameter randomisation**: every parameter of the model re-initialised
  (:func:`.metrics.randomize_model`, DCMIX's mixing layer included), one random model
  per seed; the maps of the trained and the random model are compared image by image
  with Spearman's ρ, on the signed maps and on their absolute values.
* **Cascading randomisation** (the same paper's figure 2): per seed, the layers are
  randomised cumulatively from the top (the logits) down to the input -- DCMIX's
  channel-mixing layer last, as it is the first layer -- and ρ is taken after each
  step (:func:`cascade_models`). The last step has every layer randomised: it *is* the
  full randomisation above, so the cascade ends where the pass/fail rule is applied.
  A faithful method's maps decorrelate as the cascade goes down; the curve shows from
  which layer on they do. The cascade does not add a fail rule of its own: a top-only
  randomisation may rightly leave maps correlated (the lower layers still find the same
  structures), so only the full step decides pass or fail.
* **Data-label randomisation** (optional, it trains): a randomised copy trained briefly
  on the evaluation images with shuffled labels (:func:`label_randomised_model`).

A method whose maps survive either randomisation -- mean |ρ| over images above
:data:`FAIL_ABS_RHO` in any seed, signed or absolute -- explains the image, not the
model, and is marked failing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import torch

from ..models.classifier import frozen
from ..runtime.errors import InputError
from .metrics import randomize_model, sanity_spearman

#: |ρ| above which maps count as surviving randomisation
FAIL_ABS_RHO = 0.5
#: how the model is randomised: layer by layer from the top, then all (``cascade``),
#: or every parameter at once only (``full``)
SANITY_MODES = ("cascade", "full")


def per_seed_rho(maps: np.ndarray, random_maps: np.ndarray) -> tuple[float, float]:
    """(signed, absolute): the mean over images of Spearman's ρ between the trained
    model's and a random model's maps, and between their absolute values."""
    return (float(np.mean(sanity_spearman(maps, random_maps))),
            float(np.mean(sanity_spearman(maps, random_maps, absolute=True))))


def _worst(values: list[float]) -> float:
    """The value of largest magnitude (the seed whose maps survived most), signed."""
    return float(values[int(np.argmax(np.abs(values)))])


def summarise(signed: list[float], absolute: list[float], seeds: list[int]) -> dict:
    """Median and worst ρ over seeds (signed and absolute maps), the per-seed values,
    the seeds that survived and whether the method fails (see :data:`FAIL_ABS_RHO`)."""
    if not signed:
        raise InputError("no sanity seeds to summarise")
    survived = [s for s, a, b in zip(seeds, signed, absolute, strict=True)
                if abs(a) > FAIL_ABS_RHO or abs(b) > FAIL_ABS_RHO]
    return {"seeds": list(seeds), "signed": list(signed), "absolute": list(absolute),
            "median": float(np.median(signed)), "worst": _worst(signed),
            "abs_median": float(np.median(absolute)), "abs_worst": _worst(absolute),
            "threshold": FAIL_ABS_RHO, "survived_seeds": survived,
            "failing": bool(survived)}


def _own_tensors(m: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]


def _is_norm(m: torch.nn.Module) -> bool:
    return hasattr(m, "reset_running_stats") or isinstance(
        m, (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.LocalResponseNorm))


def parameter_layers(model: torch.nn.Module, example: torch.Tensor) -> list[list[str]]:
    """The model's layers in forward order, input first: lists of module names.

    A layer is a module with parameters of its own (``parameters(recurse=False)``:
    a convolution, a linear layer, DCMIX's ``ChannelMixing``), found by one forward
    pass of ``example`` with a hook on each such module, in the order the hooks fire
    (a module called twice counts where it is first called). A normalisation layer
    (batch, group, layer norm) joins the layer called before it: a convolution and its
    batch norm are one layer, as in Adebayo et al.'s cascade. Modules with parameters
    that the forward pass never calls are left out (only the full randomisation, the
    cascade's last step, changes them; they cannot change the output).
    """
    order: list[str] = []
    handles = []
    for name, m in model.named_modules():
        if any(True for _ in m.parameters(recurse=False)):
            handles.append(m.register_forward_hook(
                lambda _m, _i, _o, name=name: None if name in order else order.append(name)))
    try:
        with torch.no_grad(), frozen(model) as net:
            net(example)
    finally:
        for h in handles:
            h.remove()
    modules = dict(model.named_modules())
    layers: list[list[str]] = []
    for name in order:
        if layers and _is_norm(modules[name]):
            layers[-1].append(name)
        else:
            layers.append([name])
    return layers


def cascade_models(model: torch.nn.Module, example: torch.Tensor, seed: int = 0
                   ) -> Iterator[tuple[list[str], torch.nn.Module]]:
    """Cascading randomisation of ``model`` for one seed: yields ``(the layer randomised
    at this step, model)``, one per step, top layer first (:func:`parameter_layers`),
    one model at a time (a copy per step would hold the model as many times as it has
    layers).

    Step ``k`` is the trained model with its last ``k`` layers taken from the fully
    randomised model of this seed (:func:`.metrics.randomize_model`: parameters and
    normalisation statistics), so the steps are nested and the last step, every layer
    randomised, is that fully randomised model itself. Step 0 (nothing randomised) is
    not among them.
    """
    full = randomize_model(model, seed=seed)
    layers = parameter_layers(model, example)
    if not layers:
        raise InputError("the cascading randomisation found no layer with parameters in "
                         "the model's forward pass")
    src = dict(full.named_modules())
    done: list[str] = []
    for k, layer in enumerate(reversed(layers), start=1):
        done = [*done, *layer]
        if k == len(layers):
            yield layer, full
            return
        net = copy.deepcopy(model)
        dst = dict(net.named_modules())
        with torch.no_grad():
            for name in done:
                mine = dict(_own_tensors(dst[name]))
                for key, t in _own_tensors(src[name]):
                    mine[key].copy_(t)
        for m in net.modules():
            m.training = False
        yield layer, net


def layer_name(layer: list[str]) -> str:
    """A layer's label: its first module's name, ``+norm`` when a normalisation layer
    goes with it."""
    return layer[0] + ("+norm" if len(layer) > 1 else "")


def summarise_cascade(names: list[str], signed: list[list[float]],
                      absolute: list[list[float]], seeds: list[int],
                      reference: tuple[float, float] | None = None) -> dict:
    """The cascade's curve: per step (``names``: the layer randomised at each step, top
    first), ρ per seed (``signed[step][seed]``, ``absolute`` likewise) and their median,
    with step 0 -- the trained model explained again, ``reference`` (signed, absolute):
    1 for a deterministic method -- first. ``decorrelated_at``: the first step whose
    median |ρ| (signed and absolute maps) is at most :data:`FAIL_ABS_RHO` (``None``
    if no step's is)."""
    steps = []
    if reference is not None:
        steps.append({"step": 0, "randomised": None, "signed": [reference[0]],
                      "absolute": [reference[1]], "median": reference[0],
                      "abs_median": reference[1]})
    for k, (name, s, a) in enumerate(zip(names, signed, absolute, strict=True), start=1):
        steps.append({"step": k, "randomised": name, "signed": list(s), "absolute": list(a),
                      "median": float(np.median(s)), "abs_median": float(np.median(a))})
    below = [st["step"] for st in steps if st["step"] > 0
             and abs(st["median"]) <= FAIL_ABS_RHO and abs(st["abs_median"]) <= FAIL_ABS_RHO]
    return {"seeds": list(seeds), "layers": list(names), "steps": steps,
            "decorrelated_at": below[0] if below else None,
            "last_step_is_full": True}


#: the share of its shuffled labels a label-randomised copy must fit (it trains on until
#: then, up to :data:`LABEL_MAX_EPOCHS`)
LABEL_FIT = 0.95
LABEL_MAX_EPOCHS = 300


def label_randomised_model(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
                           seed: int = 0, epochs: int = 30, lr: float = 1e-3,
                           batch_size: int = 32, device: str = "cpu",
                           fit: float = LABEL_FIT, max_epochs: int = LABEL_MAX_EPOCHS
                           ) -> tuple[torch.nn.Module, float]:
    """A randomised copy of ``model`` trained for ``epochs`` on ``images`` with their
    ``labels`` shuffled (seeded): (model in eval mode, its accuracy on the shuffled
    labels, i.e. how much of the noise it memorised; no better than the majority class:
    it did not learn). Labels of a single class are refused (their shuffle changes
    nothing). After ``epochs`` it trains on, 10 epochs at a time, until it fits ``fit``
    of the shuffled labels or ``max_epochs`` have run (30 epochs left one of five copies
    of the cell model at chance and the digit models at 0.72-0.89: a copy that has not
    learned the shuffle tests nothing; :func:`label_fit_note`)."""
    y = np.asarray(labels)
    if y.shape[0] != np.shape(images)[0]:
        raise InputError(f"{y.shape[0]} labels for {np.shape(images)[0]} images")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError("label randomisation needs integer class labels")
    if np.unique(y).size < 2:
        raise InputError("label randomisation needs images of at least two classes: "
                         "shuffling the labels of one class changes nothing")
    rng = np.random.default_rng(seed)
    shuffled = torch.as_tensor(rng.permutation(y), device=device).long()
    net = randomize_model(model, seed=seed).to(device)
    x = torch.as_tensor(np.asarray(images, np.float32), device=device)
    for p in net.parameters():
        p.requires_grad_(True)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(int(seed))

    def accuracy() -> float:
        net.eval()
        with torch.no_grad():
            pred = torch.cat([net(x[i:i + 256]).argmax(1)
                              for i in range(0, x.shape[0], 256)])
        return float((pred == shuffled).float().mean())

    done, block = 0, int(epochs)     # the first block is ``epochs``, then 10 at a time
    while True:
        net.train()
        for _ in range(block):
            order = torch.randperm(x.shape[0], generator=gen).to(device)
            for i in range(0, x.shape[0], batch_size):
                idx = order[i:i + batch_size]
                if idx.numel() < 2 and x.shape[0] > 1:
                    continue  # BatchNorm needs two samples
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(x[idx]), shuffled[idx])
                loss.backward()
                opt.step()
            done += 1
        acc = accuracy()
        if acc >= fit or done >= int(max_epochs):
            break
        block = min(10, int(max_epochs) - done)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, acc


def label_fit_note(accuracies: list[float], fit: float = LABEL_FIT) -> str | None:
    """A plain warning when a label-randomised copy fits less than ``fit`` of its
    shuffled labels (its maps then test an under-trained random model, not one that
    learned noise), else None."""
    low = [a for a in accuracies if a < fit]
    if not low:
        return None
    return (f"{len(low)} of {len(accuracies)} shuffled-label models fit only "
            f"{min(low):.2f}-{max(low):.2f} of their shuffled labels (< {fit:.2f}) after "
            "training on: the label-randomisation check is weak for them (an under-trained "
            "random model, not one that learned noise)")
