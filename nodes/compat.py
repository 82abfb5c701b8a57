"""What differs between the ComfyUI versions the pack supports, decided by feature detection.

Tested range: ComfyUI 0.3.64 (October 2025) to 0.33.0 (August 2026). Every difference the nodes meet is
decided here by looking at the running ComfyUI (a dataclass field, a signature, an attribute), never by
comparing version strings, so a ComfyUI between or after the two gets what it actually has.

* ``schema(**fields)``: an ``io.Schema`` with the fields this ComfyUI knows. Newer fields
  (``search_aliases`` from 0.11) are dropped on an older ComfyUI, where passing them raises ``TypeError``.
  The pack's search aliases live in ``registry.SEARCH_ALIASES`` and are added here by node id.
* ``sample_kwargs(latent_shapes)``: the keyword ``CFGGuider.inner_sample`` / ``outer_sample`` take for
  nested (multi-latent) sampling since 0.3.67, only where they take it. ``refuse_nested`` turns a nested
  run (several packed latents, e.g. LTX-2 audio + video) into an error naming the input.
* ``make_trainable(net)``: parameters that train. ComfyUI >= 0.30 builds diffusion models with
  ``requires_grad_(False)``; copying that flag trains nothing, so trainable copies set it themselves.
* ``refuse_not_image_latent``: a 5-D (video) or nested latent given to a node that serves [B, C, H, W] only.

``OVERRIDDEN`` lists every ComfyUI method the pack overrides or wraps with the parameters our code relies
on; a host test compares it with ``inspect.signature`` of the running ComfyUI.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

import torch
from comfy_api.latest import io
from torch import nn

from .registry import SEARCH_ALIASES


@functools.lru_cache(maxsize=None)
def schema_fields() -> frozenset[str]:
    """The field names of this ComfyUI's ``io.Schema``."""
    if dataclasses.is_dataclass(io.Schema):
        return frozenset(f.name for f in dataclasses.fields(io.Schema))
    return frozenset(inspect.signature(io.Schema).parameters)


def schema(**fields) -> io.Schema:
    """``io.Schema(**fields)`` keeping only the fields this ComfyUI has, with the node's search aliases."""
    aliases = SEARCH_ALIASES.get(fields.get("node_id", ""))
    if aliases and "search_aliases" not in fields:
        fields["search_aliases"] = list(aliases)
    known = schema_fields()
    return io.Schema(**{k: v for k, v in fields.items() if k in known})


@functools.lru_cache(maxsize=None)
def guider_takes_latent_shapes() -> bool:
    """Whether ``CFGGuider.inner_sample`` has the ``latent_shapes`` parameter (ComfyUI >= 0.3.67)."""
    import comfy.samplers

    return "latent_shapes" in inspect.signature(comfy.samplers.CFGGuider.inner_sample).parameters


def sample_kwargs(latent_shapes=None) -> dict:
    """Keyword arguments to pass on to ``CFGGuider.inner_sample`` / ``outer_sample``."""
    return {"latent_shapes": latent_shapes} if guider_takes_latent_shapes() else {}


def refuse_nested(latent_shapes, what: str) -> None:
    """A nested run packs several latents (e.g. video + audio) into one; the pack's guiders serve one."""
    if latent_shapes is not None and len(latent_shapes) > 1:
        shapes = ", ".join(str(tuple(s)) for s in latent_shapes)
        raise ValueError(
            f"{what}: expected one image latent [B, C, H, W], got a nested latent of {len(latent_shapes)} "
            f"parts ({shapes}); this node does not serve multi-latent (audio + video) models"
        )


def refuse_not_image_latent(samples, what: str) -> torch.Tensor:
    """``samples`` as a [B, C, H, W] tensor, or an error naming ``what`` (nested and 5-D video latents)."""
    if getattr(samples, "is_nested", False):
        raise ValueError(
            f"{what}: expected one image latent [B, C, H, W], got a nested latent (several packed "
            "latents, e.g. audio + video); this node serves image latents only"
        )
    if not isinstance(samples, torch.Tensor):
        raise ValueError(f"{what}: expected a latent tensor [B, C, H, W], got {type(samples).__name__}")
    if samples.ndim != 4:
        kind = " (a video latent [B, C, T, H, W])" if samples.ndim == 5 else ""
        raise ValueError(
            f"{what}: expected a latent tensor [B, C, H, W], got shape {tuple(samples.shape)}{kind}; "
            "this node serves image models only"
        )
    return samples


def make_trainable(net: nn.Module) -> nn.Module:
    """Turns on gradients for every floating-point parameter of ``net`` (in place) and returns it."""
    for p in net.parameters():
        if p.is_floating_point():
            p.requires_grad_(True)
    return net


# method -> the parameter names, in order, that the pack's overrides and wrappers rely on
OVERRIDDEN: dict[str, tuple[str, ...]] = {
    "comfy.samplers.CFGGuider.inner_sample": (
        "self",
        "noise",
        "latent_image",
        "device",
        "sampler",
        "sigmas",
        "denoise_mask",
        "callback",
        "disable_pbar",
        "seed",
    ),
    "comfy.samplers.CFGGuider.outer_sample": (
        "self",
        "noise",
        "latent_image",
        "sampler",
        "sigmas",
        "denoise_mask",
        "callback",
        "disable_pbar",
        "seed",
    ),
    "comfy.samplers.CFGGuider.outer_predict_noise": ("self", "x", "timestep", "model_options", "seed"),
    "comfy.samplers.CFGGuider.predict_noise": ("self", "x", "timestep", "model_options", "seed"),
    "comfy.samplers.CFGGuider.__init__": ("self", "model_patcher"),
    "comfy.samplers.KSAMPLER.sample": (
        "self",
        "model_wrap",
        "sigmas",
        "extra_args",
        "callback",
        "noise",
        "latent_image",
        "denoise_mask",
        "disable_pbar",
    ),
    "comfy.samplers.KSAMPLER.__init__": ("self", "sampler_function", "extra_options", "inpaint_options"),
    "comfy.samplers.KSamplerX0Inpaint.__init__": ("self", "model", "sigmas"),
    "comfy.sample.sample_custom": (
        "model",
        "noise",
        "cfg",
        "sampler",
        "sigmas",
        "positive",
        "negative",
        "latent_image",
        "noise_mask",
        "callback",
        "disable_pbar",
        "seed",
    ),
    "comfy.sample.sample": (
        "model",
        "noise",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "positive",
        "negative",
        "latent_image",
        "denoise",
        "disable_noise",
        "start_step",
        "last_step",
        "force_full_denoise",
        "noise_mask",
        "sigmas",
        "callback",
        "disable_pbar",
        "seed",
    ),
    "comfy.sample.prepare_noise": ("latent_image", "seed", "noise_inds"),
    "comfy.sample.fix_empty_latent_channels": ("model", "latent_image"),
    "comfy.samplers.calculate_sigmas": ("model_sampling", "scheduler_name", "steps"),
    "comfy.model_sampling.EPS.noise_scaling": ("self", "sigma", "noise", "latent_image", "max_denoise"),
    "comfy.model_sampling.CONST.noise_scaling": ("self", "sigma", "noise", "latent_image", "max_denoise"),
    "comfy.model_sampling.EPS.inverse_noise_scaling": ("self", "sigma", "latent"),
    "comfy.model_patcher.ModelPatcher.add_wrapper_with_key": ("self", "wrapper_type", "key", "wrapper"),
    "comfy.model_patcher.ModelPatcher.add_patches": ("self", "patches", "strength_patch", "strength_model"),
    "comfy.sd.VAE.decode": ("self", "samples_in"),
    "comfy.sd.VAE.encode": ("self", "pixel_samples"),
    "comfy.sd.VAE.decode_tiled": ("self", "samples", "tile_x", "tile_y", "overlap"),
    "comfy.sd.VAE.encode_tiled": ("self", "pixel_samples", "tile_x", "tile_y", "overlap"),
    "latent_preview.prepare_callback": ("model", "steps", "x0_output_dict"),
    # what the Coop guiders' second model does in place of CFGGuider.outer_sample
    "comfy.samplers.process_conds": ("model", "noise", "conds", "device", "latent_image", "denoise_mask", "seed"),
    "comfy.samplers.preprocess_conds_hooks": ("conds",),
    "comfy.samplers.filter_registered_hooks_on_conds": ("conds", "model_options"),
    "comfy.samplers.get_total_hook_groups_in_conds": ("conds",),
    "comfy.samplers.cast_to_load_options": ("model_options", "device", "dtype"),
    "comfy.sampler_helpers.prepare_sampling": ("model", "noise_shape", "conds", "model_options"),
    "comfy.sampler_helpers.prepare_model_patcher": ("model", "conds", "model_options"),
    "comfy.sampler_helpers.cleanup_models": ("conds", "models"),
    "comfy.sampler_helpers.convert_cond": ("cond",),
}
