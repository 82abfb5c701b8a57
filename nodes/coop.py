"""Coop-Diffusion Sampler and Guider (PanGu-Draw, arXiv 2312.16486, Algorithm 1, Sub-Module 1): two models in
different latent spaces fused in one denoising loop, as a KSampler-style node and as a GUIDER for
SamplerCustomAdvanced. Model B's chain is the core's ``bridges.fusion.CoopChain``, run by ``coop_guiders.CoopGuider``.
"""

from __future__ import annotations

import logging

import comfy.hooks
import comfy.model_management
import comfy.model_patcher
import comfy.sample
import comfy.sampler_helpers
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import io, ui

from ..bridges.core import FILTERS
from ..bridges.fusion import d_schedule
from ..bridges.vae import BridgeInputError
from . import compat, inputs
from .bridge_nodes import CATEGORY_SAMPLING, TAPERS, _ksampler_sigmas  # the helpers the Coop-Diffusion nodes share
from .comfy_vae import bridge_vae_for, check_latent_vae, vae_factor
from .coop_guiders import CoopGuider

log = logging.getLogger("comfyui_tempo")


def coop_inputs() -> list:
    return [
        io.Float.Input(
            "d",
            default=0.5,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="Fusion weight of model B's converted prediction (the paper's d): fused = d * B + "
            "(1 - d) * A. 0 gives model A alone, bit for bit.",
        ),
        io.Float.Input(
            "d_start",
            default=0.0,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="Fuse from this fraction of the steps on (0: from the first step).",
        ),
        io.Float.Input(
            "d_end",
            default=1.0,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="Fuse up to this fraction of the steps (1: to the last step).",
        ),
        io.Combo.Input(
            "taper",
            options=TAPERS,
            default="none",
            tooltip="none: constant d in [d_start, d_end] (the paper); linear / cosine: d falls to 0 at d_end.",
        ),
        io.Int.Input(
            "width_b",
            default=0,
            min=0,
            max=16384,
            step=8,
            tooltip="Image width model B works at, in pixels. 0: the same image size as A.",
        ),
        io.Int.Input(
            "height_b",
            default=0,
            min=0,
            max=16384,
            step=8,
            tooltip="Image height model B works at, in pixels. 0: the same image size as A.",
        ),
        io.Combo.Input(
            "resize_method",
            options=list(FILTERS),
            default="bilinear",
            tooltip="kornia filter for the pixel resize between A's and B's sizes.",
        ),
        io.Vae.Input(
            "bridge_vae_a",
            optional=True,
            tooltip="Optional cheap VAE (TAESD family) used instead of vae_a for the per-step decode / encode.",
        ),
        io.Vae.Input(
            "bridge_vae_b",
            optional=True,
            tooltip="Optional cheap VAE (TAESD family) used instead of vae_b for the per-step decode / encode.",
        ),
    ]


def _b_size(width_b: int, height_b: int, vae_b) -> tuple[int, int] | None:
    if not width_b and not height_b:
        return None
    if not (width_b and height_b):
        raise BridgeInputError("width_b: give both width_b and height_b, or neither (0: A's size)")
    f = vae_factor(vae_b)
    for name, v in (("width_b", width_b), ("height_b", height_b)):
        if v % f:
            raise BridgeInputError(f"{name}: {v} is not divisible by vae_b's downscale factor {f}")
    return int(height_b), int(width_b)


def make_coop_guider(
    model_a,
    vae_a,
    positive_a,
    negative_a,
    cfg_a,
    model_b,
    vae_b,
    positive_b,
    negative_b,
    cfg_b,
    d,
    d_start,
    d_end,
    taper,
    width_b=0,
    height_b=0,
    resize_method="bilinear",
    bridge_vae_a=None,
    bridge_vae_b=None,
) -> CoopGuider:
    calls: dict = {"decode": 0, "encode": 0}
    va = bridge_vae_for(model_a, vae_a, "vae_a", calls, bridge_vae_a)
    vb = bridge_vae_for(model_b, vae_b, "vae_b", calls, bridge_vae_b)
    size_b = _b_size(width_b, height_b, vae_b)
    guider = CoopGuider(
        model_a,
        va,
        model_b,
        vb,
        positive_b,
        negative_b,
        cfg_b,
        d_schedule(d, d_start, d_end, taper),
        size_b,
        resize_method,
        calls,
    )
    guider.set_conds(positive_a, negative_a)
    guider.set_cfg(cfg_a)
    return guider


def _pair_inputs(tag: str) -> list:
    t = tag.upper()
    return [
        io.Model.Input(
            f"model_{tag}",
            tooltip=f"Model {t}."
            + (
                " Sampling runs in its latent space; the output is in it."
                if tag == "a"
                else " Its prediction is bridged into A's space and fused."
            ),
        ),
        io.Vae.Input(f"vae_{tag}", tooltip=f"The VAE of model {t}'s latent space."),
        io.Conditioning.Input(f"positive_{tag}", tooltip=f"Model {t}'s positive conditioning."),
        io.Conditioning.Input(f"negative_{tag}", tooltip=f"Model {t}'s negative conditioning."),
        inputs.cfg(f"cfg_{tag}", tooltip=f"Classifier-free guidance scale of model {t}."),
    ]


class CoopSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return compat.schema(
            node_id="TempoCoopSampler",
            display_name="Coop-Diffusion Sampler",
            category=CATEGORY_SAMPLING,
            description="Samples model A while fusing model B's prediction into it at every step (Coop-Diffusion, "
            "PanGu-Draw Algorithm 1): the models may live in different latent spaces and work at different "
            "resolutions; B's prediction goes through pixels (B's VAE, resize, A's VAE). Reports NFE and VAE calls.",
            inputs=[
                *_pair_inputs("a"),
                *_pair_inputs("b"),
                io.Latent.Input("latent_image", tooltip="The latent to denoise, in model A's space."),
                inputs.seed(
                    "The random seed used for creating the noise (B's chain shares A's noise where the shapes match)."
                ),
                inputs.steps(tooltip="The number of steps (A's schedule; B follows at equal SNR)."),
                inputs.sampler_name("Sampler on model A. B's shadow chain is always first order (Euler = DDIM)."),
                inputs.scheduler("The scheduler of model A's sigmas."),
                inputs.denoise(),
                *coop_inputs(),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="The denoised latent in model A's space.")],
        )

    @classmethod
    def execute(
        cls,
        model_a,
        vae_a,
        positive_a,
        negative_a,
        cfg_a,
        model_b,
        vae_b,
        positive_b,
        negative_b,
        cfg_b,
        latent_image,
        seed,
        steps,
        sampler_name,
        scheduler,
        denoise,
        d,
        d_start,
        d_end,
        taper,
        width_b=0,
        height_b=0,
        resize_method="bilinear",
        bridge_vae_a=None,
        bridge_vae_b=None,
    ) -> io.NodeOutput:
        samples_in = comfy.sample.fix_empty_latent_channels(model_a, latent_image["samples"])
        check_latent_vae(samples_in, vae_a, "latent_image", "vae_a")
        guider = make_coop_guider(
            model_a,
            vae_a,
            positive_a,
            negative_a,
            cfg_a,
            model_b,
            vae_b,
            positive_b,
            negative_b,
            cfg_b,
            d,
            d_start,
            d_end,
            taper,
            width_b,
            height_b,
            resize_method,
            bridge_vae_a,
            bridge_vae_b,
        )
        noise = comfy.sample.prepare_noise(samples_in, seed, latent_image.get("batch_index"))
        sigmas = _ksampler_sigmas(model_a, steps, sampler_name, scheduler, denoise)
        callback = latent_preview.prepare_callback(model_a, sigmas.numel() - 1)
        samples = guider.sample(
            noise,
            samples_in,
            comfy.samplers.sampler_object(sampler_name),
            sigmas,
            denoise_mask=latent_image.get("noise_mask"),
            callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
            seed=seed,
        )
        out = latent_image.copy()
        out["samples"] = samples.to(comfy.model_management.intermediate_device())
        text = guider.last_report or "Coop-Diffusion: nothing to sample"  # with the guider's NaN/inf note
        return io.NodeOutput(out, ui=ui.PreviewText(text))


class CoopGuiderNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return compat.schema(
            node_id="TempoCoopGuider",
            display_name="Coop-Diffusion Guider",
            category=CATEGORY_SAMPLING,
            description="A GUIDER for SamplerCustomAdvanced: model A with CFG, fused at every call with model B's "
            "prediction bridged from B's latent space (Coop-Diffusion). Connect a LATENT in A's space; NFE and VAE "
            "calls are written to the console after each run.",
            inputs=[*_pair_inputs("a"), *_pair_inputs("b"), *coop_inputs()],
            outputs=[io.Guider.Output(tooltip="Model A's guider with model B fused in.")],
        )

    @classmethod
    def execute(
        cls,
        model_a,
        vae_a,
        positive_a,
        negative_a,
        cfg_a,
        model_b,
        vae_b,
        positive_b,
        negative_b,
        cfg_b,
        d,
        d_start,
        d_end,
        taper,
        width_b=0,
        height_b=0,
        resize_method="bilinear",
        bridge_vae_a=None,
        bridge_vae_b=None,
    ) -> io.NodeOutput:
        return io.NodeOutput(
            make_coop_guider(
                model_a,
                vae_a,
                positive_a,
                negative_a,
                cfg_a,
                model_b,
                vae_b,
                positive_b,
                negative_b,
                cfg_b,
                d,
                d_start,
                d_end,
                taper,
                width_b,
                height_b,
                resize_method,
                bridge_vae_a,
                bridge_vae_b,
            )
        )


NODES = [CoopSampler, CoopGuiderNode]
