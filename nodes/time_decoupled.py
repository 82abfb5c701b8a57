"""Time-Decoupled Sampler (PanGu-Draw, arXiv 2312.16486): a structure model above a switch timestep, a texture model
below it, in one sampler run (same space and size) or bridged through pixels (another space or size); the hand-off
is planned by the core's ``bridges.decoupled.plan_handoff``.
"""

from __future__ import annotations

import logging
import math

import comfy.hooks
import comfy.model_management
import comfy.model_patcher
import comfy.sample
import comfy.sampler_helpers
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io, ui

from ..bridges.core import bridge_latent
from ..bridges.decoupled import plan_handoff
from ..bridges.vae import BridgeInputError
from ..samplers.finite import with_nonfinite_note
from . import compat, inputs
from .bridge_nodes import (  # the helpers the Coop-Diffusion nodes share
    CATEGORY_SAMPLING,
    HANDOFFS,
    RENOISE_LEVELS,
    SWITCH_MODES,
    _calls_text,
    _capture_end_sampler,
    _ksampler_sigmas,
    _renoise_input,
    _renoise_name,
    _size_inputs,
    target_pixels,
)
from .comfy_vae import bridge_vae_for, check_latent_vae, model_latent_format, model_schedule
from .coop_guiders import SwitchGuider, fresh_noise

log = logging.getLogger("comfyui_tempo")


# ============================================================================= Time-decoupled
def switch_to_sigma(model, switch_mode: str, switch_timestep: int, switch_sigma_value: float) -> tuple[float, str]:
    if switch_mode == "timestep":
        if not 0 <= switch_timestep <= 999:
            raise BridgeInputError(f"switch_timestep: expected 0..999, got {switch_timestep}")
        ms = model.get_model_object("model_sampling")
        return float(ms.sigma(torch.tensor(float(switch_timestep)))), "switch_timestep"
    if switch_mode == "sigma":
        if not (switch_sigma_value > 0 and math.isfinite(switch_sigma_value)):
            raise BridgeInputError(f"switch_sigma: expected a positive sigma, got {switch_sigma_value}")
        return float(switch_sigma_value), "switch_sigma"
    raise BridgeInputError(f"switch_mode: expected one of {SWITCH_MODES}, got {switch_mode!r}")


def _same_space(model_a, model_b) -> bool:
    fa, fb = model_latent_format(model_a), model_latent_format(model_b)
    same_fmt = (
        type(fa) is type(fb)
        and getattr(fa, "scale_factor", 1) == getattr(fb, "scale_factor", 1)
        and getattr(fa, "shift_factor", 0) == getattr(fb, "shift_factor", 0)
    )
    return same_fmt and model_schedule(model_a).kind == model_schedule(model_b).kind  # the bridges' kinds


class TimeDecoupledSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return compat.schema(
            node_id="TempoTimeDecoupledSampler",
            display_name="Time-Decoupled Sampler",
            category=CATEGORY_SAMPLING,
            description="Two models split by noise level, not by step index (PanGu-Draw's time-decoupled experts): "
            "the structure model denoises from the start down to the switch (a timestep, default 500, or a sigma), "
            "the texture model from there to the end, each with its own conditioning and CFG. Same latent space and "
            "size: one sampler run whose model changes at the switch (bit-identical to KSampler when both are the "
            "same model). Different spaces or a resolution change: the structure model's x0 at the switch is bridged "
            "through pixels and re-noised with fresh noise at the texture model's matching level.",
            inputs=[
                io.Model.Input("model_structure", tooltip="The model for high noise (t from T down to the switch)."),
                io.Conditioning.Input("positive_structure", tooltip="Positive conditioning of the structure model."),
                io.Conditioning.Input("negative_structure", tooltip="Negative conditioning of the structure model."),
                inputs.cfg("cfg_structure", tooltip="CFG of the structure model."),
                io.Model.Input("model_texture", tooltip="The model for low noise (from the switch to 0)."),
                io.Conditioning.Input("positive_texture", tooltip="Positive conditioning of the texture model."),
                io.Conditioning.Input("negative_texture", tooltip="Negative conditioning of the texture model."),
                inputs.cfg("cfg_texture", tooltip="CFG of the texture model."),
                io.Latent.Input("latent_image", tooltip="The latent to denoise, in the structure model's space."),
                inputs.seed("The random seed used for creating the noise (the bridge's fresh noise uses seed + 1)."),
                inputs.steps(tooltip="Total steps (the structure model's schedule)."),
                inputs.sampler_name("The sampler (both stages)."),
                inputs.scheduler("The scheduler (computed on the structure model)."),
                inputs.denoise(),
                io.Combo.Input(
                    "switch_mode",
                    options=SWITCH_MODES,
                    default="timestep",
                    tooltip="Give the switch as a timestep of the structure model (0..999) or as a sigma.",
                ),
                io.Int.Input(
                    "switch_timestep",
                    default=500,
                    min=0,
                    max=999,
                    tooltip="switch_mode timestep: steps at timesteps >= this run the structure model "
                    "(PanGu-Draw: 500). Converted with the structure model's own sampling.",
                ),
                io.Float.Input(
                    "switch_sigma",
                    default=1.0,
                    min=0.0,
                    max=1000.0,
                    step=0.001,
                    round=0.0001,
                    tooltip="switch_mode sigma: steps at sigma >= this run the structure model (the structure "
                    "model's sigma space).",
                ),
                io.Combo.Input(
                    "handoff",
                    options=HANDOFFS,
                    default="auto",
                    tooltip="auto: one sampler run when both models share latent space, parameterisation and "
                    "size (history kept), else the pixel bridge; bridge: always decode, resize, encode and "
                    "re-noise at the switch.",
                ),
                *_size_inputs(what="the texture stage's image", source="the structure stage's image"),
                _renoise_input("the texture stage"),
                io.Vae.Input(
                    "vae_structure",
                    optional=True,
                    tooltip="VAE of the structure model's space (needed for a bridged hand-off).",
                ),
                io.Vae.Input(
                    "vae_texture",
                    optional=True,
                    tooltip="VAE of the texture model's space (needed for a bridged hand-off).",
                ),
            ],
            outputs=[
                io.Latent.Output(display_name="LATENT", tooltip="The denoised latent in the texture model's space.")
            ],
        )

    @classmethod
    def execute(
        cls,
        model_structure,
        positive_structure,
        negative_structure,
        cfg_structure,
        model_texture,
        positive_texture,
        negative_texture,
        cfg_texture,
        latent_image,
        seed,
        steps,
        sampler_name,
        scheduler,
        denoise,
        switch_mode,
        switch_timestep,
        switch_sigma,
        handoff,
        width,
        height,
        scale,
        resize_method,
        vae_structure=None,
        vae_texture=None,
        renoise_level=RENOISE_LEVELS[0],
    ) -> io.NodeOutput:
        ms_name = switch_mode
        s_switch, name = switch_to_sigma(model_structure, switch_mode, switch_timestep, switch_sigma)
        if handoff not in HANDOFFS:
            raise BridgeInputError(f"handoff: expected one of {HANDOFFS}, got {handoff!r}")
        samples_in = comfy.sample.fix_empty_latent_channels(model_structure, latent_image["samples"])
        sigmas = _ksampler_sigmas(model_structure, steps, sampler_name, scheduler, denoise)
        if sigmas.numel() < 2:
            return io.NodeOutput(latent_image.copy(), ui=ui.PreviewText("Time-decoupled: nothing to sample"))
        sched_s, sched_t = (
            model_schedule(model_structure, "model_structure"),
            model_schedule(model_texture, "model_texture"),
        )
        k = plan_handoff(sigmas, s_switch, sched_s, sched_t, name=name).k  # the core's planner, as bench coop runs it
        n = sigmas.numel() - 1
        resize = bool(width or height or scale != 1.0)
        noise = comfy.sample.prepare_noise(samples_in, seed, latent_image.get("batch_index"))
        disable_pbar = not comfy.utils.PROGRESS_BAR_ENABLED
        if handoff == "auto" and not resize and _same_space(model_structure, model_texture):
            guider = SwitchGuider(
                model_structure, model_texture, positive_texture, negative_texture, cfg_texture, s_switch
            )
            guider.set_conds(positive_structure, negative_structure)
            guider.set_cfg(cfg_structure)
            callback = latent_preview.prepare_callback(model_structure, n)
            samples = guider.sample(
                noise,
                samples_in,
                comfy.samplers.sampler_object(sampler_name),
                sigmas,
                denoise_mask=latent_image.get("noise_mask"),
                callback=callback,
                disable_pbar=disable_pbar,
                seed=seed,
            )
            out = latent_image.copy()
            out["samples"] = samples.to(comfy.model_management.intermediate_device())
            text = (
                f"Time-decoupled ({ms_name} switch at sigma {s_switch:.4g}): one run, structure {k} steps "
                f"(NFE {guider.stats['struct']}), texture {n - k} steps (NFE {guider.stats['texture']}), VAE 0 calls"
            )
            text = with_nonfinite_note(text, out["samples"])
            log.info("%s", text)
            return io.NodeOutput(out, ui=ui.PreviewText(text))

        # bridged hand-off: stage 1, Sub-Module 2 at the switch, stage 2
        if vae_structure is None or vae_texture is None:
            missing = "vae_structure" if vae_structure is None else "vae_texture"
            raise BridgeInputError(
                f"{missing}: required when the two models' latent spaces, parameterisations or sizes differ "
                "(or handoff is bridge): the hand-off goes through pixels"
            )
        check_latent_vae(samples_in, vae_structure, "latent_image", "vae_structure")
        calls = {"decode": 0, "encode": 0}
        vs = bridge_vae_for(model_structure, vae_structure, "vae_structure", calls)
        vt = bridge_vae_for(model_texture, vae_texture, "vae_texture", calls)
        sig1 = sigmas[: k + 1]
        px_from = (samples_in.shape[-2] * vs.downscale, samples_in.shape[-1] * vs.downscale)
        h, w = target_pixels(*px_from, vt.downscale, width, height, scale)
        plan = plan_handoff(sigmas, s_switch, sched_s, sched_t, px_from, (h, w), _renoise_name(renoise_level), name)
        sig2, shift = plan.texture_sigmas, plan.shift
        store: dict = {}
        g1 = comfy.samplers.CFGGuider(model_structure)
        g1.set_conds(positive_structure, negative_structure)
        g1.set_cfg(cfg_structure)
        g1.sample(
            noise,
            samples_in,
            _capture_end_sampler(comfy.samplers.sampler_object(sampler_name), store),
            sig1,
            denoise_mask=latent_image.get("noise_mask"),
            callback=latent_preview.prepare_callback(model_structure, k),
            disable_pbar=disable_pbar,
            seed=seed,
        )
        z0 = bridge_latent(store["x0"].float().cpu(), vs, vt, size=(h, w), filter=resize_method)
        noise2 = fresh_noise(z0.shape, seed + 1)
        g2 = comfy.samplers.CFGGuider(model_texture)
        g2.set_conds(positive_texture, negative_texture)
        g2.set_cfg(cfg_texture)
        # KSAMPLER starts from noise_scaling(sig2[0], noise2, z0): exactly the re-noise of Sub-Module 2 step 7
        samples = g2.sample(
            noise2,
            vt.from_model(z0),
            comfy.samplers.sampler_object(sampler_name),
            sig2,
            callback=latent_preview.prepare_callback(model_texture, sig2.numel() - 1),
            disable_pbar=disable_pbar,
            seed=seed + 1,
        )
        out = {kk: v for kk, v in latent_image.items() if kk not in ("noise_mask", "samples")}
        out["samples"] = samples.to(comfy.model_management.intermediate_device())
        text = (
            f"Time-decoupled ({ms_name} switch at sigma {s_switch:.4g}, hand-off at texture sigma {float(sig2[0]):.4g}"
            f"{f', x{shift:.3g} for the resize' if shift != 1.0 else ''}): bridged, "
            f"structure {k} steps (NFE {k} + 1 for x0 at the switch), texture {sig2.numel() - 1} steps; "
            f"{samples_in.shape[-1] * vs.downscale}x{samples_in.shape[-2] * vs.downscale} -> {w}x{h} px; "
            f"VAE {_calls_text(calls)}"
        )
        text = with_nonfinite_note(text, out["samples"])
        log.info("%s", text)
        return io.NodeOutput(out, ui=ui.PreviewText(text))


NODES = [TimeDecoupledSampler]
