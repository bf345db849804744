"""The attribution methods: the built-ins, one :func:`.registry.register_method` call each,
and the registry's functions (import them from here: importing this module registers the
built-ins).

A new method is a module with its batch generator and its :class:`.MethodConfig` plus one
registration here (or in the user's own code, or through an entry point: see
:mod:`.registry`). Pass counts, ``passes(config, C, H, W, per_channel)``, are model
evaluations per image (the cost hint the widgets turn into seconds); ``trained_on`` lists
the fidelity games a method optimises.
"""

from __future__ import annotations

from . import baselines
from .pcim import PCIMConfig, pcim_batch
from .pcim_blackbox import BlackboxPCIMConfig, pcim_blackbox_batch
from .registry import (
    AttributionMethod,
    get_method,
    register_method,
    registered_methods,
    single_pass,
    unregister_method,
)

__all__ = ["BUILT_IN", "AttributionMethod", "get_method", "register_method",
           "registered_methods", "single_pass", "unregister_method"]


def _pcim(model, x, targets, per_channel, cfg: PCIMConfig):
    return (yield from pcim_batch(model, x, targets, cfg, per_channel))


def _pcim_blackbox(model, x, targets, per_channel, cfg: BlackboxPCIMConfig):
    return (yield from pcim_blackbox_batch(model, x, targets, cfg, per_channel))


def _pcim_games(cfg) -> list[tuple[str, str, float]]:
    """PCIM's deletion game fades to ``substrate``, its preservation game to
    ``preserve_substrate`` (insertion metrics from that substrate)."""
    return [("deletion", cfg.substrate, cfg.blur_sigma),
            ("insertion", cfg.preserve_substrate or cfg.substrate, cfg.blur_sigma)]


def _coarse_grid(cfg: BlackboxPCIMConfig, h: int, w: int) -> list[str]:
    warning = cfg.coarseness_warning(h, w)
    return [warning] if warning else []


BUILT_IN = (
    AttributionMethod(
        "pcim", _pcim, PCIMConfig,
        "PCIM: learned blending of pixel-channels against the frozen model (gradients)",
        needs_gradients=True, passes=lambda cfg, c, h, w, pc: cfg.steps,
        trained_on=_pcim_games, signed=True, whole_field=True),
    AttributionMethod(
        "pcim_blackbox", _pcim_blackbox, BlackboxPCIMConfig,
        "forward-only PCIM: the blending estimated from forward passes (any model)",
        needs_gradients=False, passes=lambda cfg, c, h, w, pc: cfg.forward_passes(h, w),
        trained_on=_pcim_games, warnings=_coarse_grid, signed=True),
    AttributionMethod(
        "saliency", baselines.saliency, baselines.SaliencyConfig,
        "saliency: absolute input gradient (Captum)",
        needs_gradients=True, passes=lambda cfg, c, h, w, pc: 1),
    AttributionMethod(
        "integrated_gradients", baselines.integrated_gradients,
        baselines.IntegratedGradientsConfig,
        "integrated gradients from a constant or blurred baseline (Captum)",
        needs_gradients=True, passes=lambda cfg, c, h, w, pc: cfg.n_steps, signed=True),
    AttributionMethod(
        "integrated_gradients_blur", baselines.integrated_gradients_blur,
        baselines.IntegratedGradientsBlurConfig,
        "integrated gradients from the blurred image (Captum)",
        needs_gradients=True, passes=lambda cfg, c, h, w, pc: cfg.n_steps, signed=True),
    AttributionMethod(
        "occlusion", baselines.occlusion, baselines.OcclusionConfig,
        "occlusion: probability change as a window slides over the image (Captum)",
        needs_gradients=False, passes=baselines.occlusion_passes, signed=True),
    AttributionMethod(
        "gradcam", baselines.gradcam, baselines.GradCAMConfig,
        "Grad-CAM on the last convolution (Captum); one map per image",
        needs_gradients=True, passes=lambda cfg, c, h, w, pc: 1, per_channel=False),
    AttributionMethod(
        "rise", baselines.rise, baselines.RISEConfig,
        "RISE: random masks weighted by the target probability (forward passes)",
        needs_gradients=False, passes=lambda cfg, c, h, w, pc: cfg.n_masks),
    AttributionMethod(
        "extremal_mask", baselines.extremal_mask, baselines.ExtremalMaskConfig,
        "extremal mask: a smooth keep/delete mask of a target area (gradients)",
        needs_gradients=True, passes=lambda cfg, c, h, w, pc: 2 * cfg.steps),
)

for _method in BUILT_IN:
    register_method(_method, replace=True)
