"""The KSampler-style inputs several nodes declare (seed, steps, cfg, sampler_name, scheduler, denoise), in one
place: the same ranges and defaults as ComfyUI's KSampler, a node-specific tooltip where the meaning differs.
Input names and order stay the nodes' own (saved workflows store widget values by position)."""

from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def seed(tooltip: str = "The random seed used for creating the noise.", name: str = "seed") -> io.Int.Input:
    return io.Int.Input(name, default=0, min=0, max=SEED_MAX, control_after_generate=True, tooltip=tooltip)


def steps(
    default: int = 20,
    tooltip: str = "The number of steps in the denoising process.",
    minimum: int = 1,
    name: str = "steps",
) -> io.Int.Input:
    return io.Int.Input(name, default=default, min=minimum, max=10000, tooltip=tooltip)


def cfg(name: str = "cfg", default: float = 7.0, tooltip: str = "Classifier-free guidance scale.") -> io.Float.Input:
    return io.Float.Input(name, default=default, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=tooltip)


def sampler_name(tooltip: str, options=None) -> io.Combo.Input:
    return io.Combo.Input(
        "sampler_name", options=options or comfy.samplers.KSampler.SAMPLERS, default="euler", tooltip=tooltip
    )


def scheduler(
    tooltip: str = "The scheduler controls how noise is gradually removed to form the image.",
) -> io.Combo.Input:
    return io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal", tooltip=tooltip)


def denoise(
    tooltip: str = "The amount of denoising applied; lower values keep more of the input latent.",
) -> io.Float.Input:
    return io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, tooltip=tooltip)
