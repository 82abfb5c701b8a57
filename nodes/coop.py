"""Coop-Diffusion nodes (PanGu-Draw, arXiv 2312.16486): latent and noisy-latent bridges, the
two-model fusing sampler (Algorithm 1, Sub-Module 1) as a KSampler-style node and as a GUIDER, and
time-decoupled sampling (a structure model above a timestep, a texture model below it).

The maths lives in the pure-torch core (``bridges.core``); this module binds it to ComfyUI's MODEL,
VAE, LATENT and sampler objects (``nodes.comfy_vae`` adapts a ComfyUI VAE to ``BridgeVAE``).

Conventions: LATENTs hold raw VAE latents; sampling happens in each model's own space
(``latent_format.process_in``) and sigma space (eps / v: x = x0 + sigma n; flow: x = (1 - sigma) x0
+ sigma n). Noise levels are matched across models at equal SNR (``bridges.core.match_sigma``).
Bad inputs raise ValueError (``BridgeInputError``) whose message starts with the input's name.
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

from ..bridges.core import FILTERS, bridge_latent, match_sigma, resize_images, resolution_shift, schedule_from
from ..bridges.decoupled import plan_handoff
from ..bridges.fusion import TAPERS as fusion_tapers
from ..bridges.fusion import d_schedule
from ..bridges.vae import BridgeInputError
from ..samplers.finite import with_nonfinite_note
from . import compat, inputs
from .comfy_vae import (
    ComfyBridgeVAE,
    bridge_vae_for,
    check_latent_vae,
    check_model_vae,
    model_latent_format,
    model_schedule,
    vae_factor,
)
from .coop_guiders import CoopGuider, SwitchGuider, fresh_noise

log = logging.getLogger("comfyui_tempo")

CATEGORY_SAMPLING = "sampling/tempo"
CATEGORY_LATENT = "latent/tempo"
TAPERS = list(fusion_tapers)
SWITCH_MODES = ["timestep", "sigma"]
HANDOFFS = ["auto", "bridge"]
RENOISE_LEVELS = ["resolution-aware", "paper (equal SNR)"]


def _renoise_input(stage: str) -> io.Combo.Input:
    return io.Combo.Input(
        "renoise_level",
        options=RENOISE_LEVELS,
        default=RENOISE_LEVELS[0],
        tooltip=f"The noise level {stage} is re-noised to after a resize. paper (equal SNR): the level of the same "
        "signal-to-noise ratio (PanGu-Draw's rule). resolution-aware (the pack's default, measured closer to a full "
        "high-res run): that level times the size factor (2x for a 2x upscale, as SD3's resolution shift), because "
        "upscaling shrinks the noise in the content the first model settled. Without a resize both are the same.",
    )


def _renoise_name(renoise_level: str) -> str:
    """The node's renoise_level label -> bridges.decoupled's name ("resolution" | "paper")."""
    if renoise_level not in RENOISE_LEVELS:
        raise BridgeInputError(f"renoise_level: expected one of {RENOISE_LEVELS}, got {renoise_level!r}")
    return "resolution" if renoise_level == RENOISE_LEVELS[0] else "paper"


def _shift_for(renoise_level: str, px_from: tuple[int, int], px_to: tuple[int, int]) -> float:
    return resolution_shift(px_from, px_to) if _renoise_name(renoise_level) == "resolution" else 1.0


# ============================================================================= shared helpers
def _size_inputs(prefix: str = "", what: str = "the output", source: str = "the source image") -> list:
    p = prefix
    return [
        io.Int.Input(
            f"{p}width",
            default=0,
            min=0,
            max=16384,
            step=8,
            tooltip=f"Width of {what} in pixels. 0: from scale ({source}'s size times scale).",
        ),
        io.Int.Input(
            f"{p}height",
            default=0,
            min=0,
            max=16384,
            step=8,
            tooltip=f"Height of {what} in pixels. 0: from scale ({source}'s size times scale).",
        ),
        io.Float.Input(
            f"{p}scale",
            default=1.0,
            min=0.05,
            max=16.0,
            step=0.05,
            tooltip=f"Used where width / height is 0: {what} is {source}'s size times this, "
            "rounded to the nearest multiple of the target VAE's downscale factor.",
        ),
        io.Combo.Input(
            f"{p}resize_method",
            options=list(FILTERS),
            default="bilinear",
            tooltip="kornia filter for the pixel-space resize (antialiased when shrinking). "
            "Not used when the size does not change.",
        ),
    ]


def target_pixels(
    src_h: int, src_w: int, f_dst: int, width: int, height: int, scale: float, prefix: str = ""
) -> tuple[int, int]:
    """(H, W) in pixels of the bridged image; explicit sizes must be multiples of the target VAE's factor."""
    out = []
    for name, given, src in ((f"{prefix}height", height, src_h), (f"{prefix}width", width, src_w)):
        if given:
            if given % f_dst:
                raise BridgeInputError(f"{name}: {given} is not divisible by the target VAE's downscale factor {f_dst}")
            out.append(int(given))
        else:
            if not (scale > 0 and math.isfinite(scale)):
                raise BridgeInputError(f"{prefix}scale: expected a positive number, got {scale}")
            v = max(f_dst, int(round(src * scale / f_dst)) * f_dst)
            out.append(v)
    return out[0], out[1]


def _calls_text(calls: dict) -> str:
    return f"{calls.get('decode', 0)} decodes + {calls.get('encode', 0)} encodes"


def _ksampler_sigmas(model, steps: int, sampler_name: str, scheduler: str, denoise: float) -> torch.Tensor:
    ks = comfy.samplers.KSampler(
        model,
        steps=steps,
        device=model.load_device,
        sampler=sampler_name,
        scheduler=scheduler,
        denoise=denoise,
        model_options=model.model_options,
    )
    return ks.sigmas


def _eval_x0_sampler(store: dict) -> comfy.samplers.KSAMPLER:
    """A 'sampler' that evaluates the model once at sigmas[0] on the start latent (x0 and x kept)."""

    def sample_eval(model, x, sigmas, extra_args=None, callback=None, disable=None):
        s = sigmas[0] * x.new_ones([x.shape[0]])
        store["x"] = x.clone()
        store["x0"] = model(x, s, **(extra_args or {})).clone()
        return x

    return comfy.samplers.KSAMPLER(sample_eval)


def _capture_end_sampler(sampler, store: dict) -> comfy.samplers.KSAMPLER:
    """`sampler` run as usual, then one more model call at its last sigma: the x0 prediction there
    (Sub-Module 2 step 4's extra evaluation) and the noisy latent, both in model space."""
    base = sampler.sampler_function

    def sample_then_predict(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        x = base(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **options)
        s = sigmas[-1] * x.new_ones([x.shape[0]])
        store["x"] = x.clone()
        store["x0"] = model(x, s, **(extra_args or {})).clone()
        store["sigma"] = float(sigmas[-1])
        return x

    return comfy.samplers.KSAMPLER(sample_then_predict, dict(sampler.extra_options), dict(sampler.inpaint_options))


def model_x0_at(model, positive, negative, cfg: float, raw: torch.Tensor, sigma: float, seed: int):
    """The model's CFG x0-prediction for the noisy LATENT `raw` at `sigma`, through ComfyUI's own
    guider (conditioning, patches, wrappers). Returns (x, x0) in model space, where x is what a
    sampler continuing from `raw` (KSamplerAdvanced with add_noise disabled) starts from."""
    store: dict = {}
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    sigmas = torch.tensor([float(sigma), 0.0])
    guider.sample(torch.zeros_like(raw), raw, _eval_x0_sampler(store), sigmas, seed=seed)
    return store["x"], store["x0"]


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


# ============================================================================= Latent Bridge
class LatentBridge(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return compat.schema(
            node_id="TempoLatentBridge",
            display_name="Latent Bridge",
            category=CATEGORY_LATENT,
            description="Moves a clean LATENT from one VAE's latent space to another's through pixels: decode with the "
            "source VAE, resize (optional), encode with the target VAE. With one VAE and no resize it is exactly a "
            "VAEDecode + VAEEncode round trip.",
            inputs=[
                io.Latent.Input("samples", tooltip="The (clean) latent to move, in vae_source's space."),
                io.Vae.Input("vae_source", tooltip="The VAE of the space the latent is in."),
                io.Vae.Input("vae_target", tooltip="The VAE of the space to move it to."),
                *_size_inputs(what="the bridged image"),
                io.Boolean.Input(
                    "tiled",
                    default=False,
                    tooltip="Decode and encode in tiles (ComfyUI's tiled VAE), for large images.",
                ),
                io.Int.Input(
                    "tile_size", default=512, min=64, max=4096, step=32, tooltip="Tile size in pixels when tiled."
                ),
                io.Int.Input(
                    "overlap",
                    default=64,
                    min=0,
                    max=4096,
                    step=32,
                    tooltip="Tile overlap in pixels when tiled (at most a quarter of the tile).",
                ),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="The latent in vae_target's space.")],
        )

    @classmethod
    def execute(
        cls,
        samples,
        vae_source,
        vae_target,
        width,
        height,
        scale,
        resize_method,
        tiled=False,
        tile_size=512,
        overlap=64,
    ) -> io.NodeOutput:
        z = samples["samples"]
        check_latent_vae(z, vae_source, "samples", "vae_source")
        if resize_method not in FILTERS:
            raise BridgeInputError(f"resize_method: expected one of {FILTERS}, got {resize_method!r}")
        calls = {"decode": 0, "encode": 0}
        src = ComfyBridgeVAE(vae_source, None, "vae_source", tiled, tile_size, overlap, calls)
        dst = ComfyBridgeVAE(vae_target, None, "vae_target", tiled, tile_size, overlap, calls)
        h, w = target_pixels(
            z.shape[-2] * src.downscale, z.shape[-1] * src.downscale, dst.downscale, width, height, scale
        )
        # raw -> pixels -> raw, no latent-format round trip: one VAE and no resize is exactly decode + encode
        images = resize_images(src.decode(z), (h, w), resize_method)
        out = samples.copy()
        if tuple(z.shape[-2:]) != (h // dst.downscale, w // dst.downscale):
            out.pop("noise_mask", None)  # a mask at the old size no longer fits
        out["samples"] = dst.encode(images)
        text = f"Latent Bridge: {z.shape[-1] * src.downscale}x{z.shape[-2] * src.downscale} -> {w}x{h} px, VAE {_calls_text(calls)}"
        text = with_nonfinite_note(text, out["samples"])
        return io.NodeOutput(out, ui=ui.PreviewText(text))


# ============================================================================= Noisy Latent Bridge
def _source_sigma(model_source, steps, end_at_step, scheduler, sigmas_source) -> float:
    if sigmas_source is not None:
        s = torch.as_tensor(sigmas_source).flatten()
        if s.numel() == 0:
            raise BridgeInputError("sigmas_source: empty")
        sigma = float(s[-1])
        if sigma <= 0:
            raise BridgeInputError(
                "sigmas_source: ends at 0, so the latent is fully denoised; connect the first part of a split "
                "schedule (SplitSigmas' high_sigmas), or use Latent Bridge for clean latents"
            )
        return sigma
    if not 1 <= end_at_step < steps:
        raise BridgeInputError(
            f"end_at_step: expected 1..{steps - 1} (the step KSamplerAdvanced stopped at, with leftover noise), got {end_at_step}"
        )
    sig = _ksampler_sigmas(model_source, steps, "euler", scheduler, 1.0)
    return float(sig[end_at_step])


class NoisyLatentBridge(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return compat.schema(
            node_id="TempoNoisyLatentBridge",
            display_name="Noisy Latent Bridge",
            category=CATEGORY_LATENT,
            description="Hands a partly denoised LATENT to another model, space or resolution (Coop-Diffusion "
            "Sub-Module 2, single-stage super-resolution): the source model's x0-prediction at the latent's noise "
            "level, decode, resize in pixels, encode with the target VAE, then fresh white noise at the target "
            "model's matching noise level. Continue with KSamplerAdvanced (add_noise disable, same steps and "
            "scheduler, start_at_step from here) or SamplerCustomAdvanced (DisableNoise, the SIGMAS from here).",
            inputs=[
                io.Latent.Input(
                    "samples",
                    tooltip="The partly denoised latent, e.g. from KSamplerAdvanced with "
                    "return_with_leftover_noise enabled (it carries no sigma: give steps / end_at_step / "
                    "scheduler, or sigmas_source).",
                ),
                io.Model.Input("model_source", tooltip="The model that produced the latent (it predicts x0 once)."),
                io.Vae.Input("vae_source", tooltip="The VAE of the source model's latent space."),
                io.Conditioning.Input("positive_source", tooltip="The source model's positive conditioning."),
                io.Conditioning.Input("negative_source", tooltip="The source model's negative conditioning."),
                inputs.cfg("cfg_source", tooltip="CFG of the source model's one x0-prediction."),
                io.Model.Input("model_target", tooltip="The model that will continue."),
                io.Vae.Input("vae_target", tooltip="The VAE of the target model's latent space."),
                inputs.steps(tooltip="Steps of the KSamplerAdvanced pair (the same on both sides).", minimum=2),
                io.Int.Input(
                    "end_at_step",
                    default=10,
                    min=1,
                    max=10000,
                    tooltip="The step the first KSamplerAdvanced ended at: the latent sits at that step's sigma "
                    "of the source schedule.",
                ),
                inputs.scheduler(
                    "Scheduler of the KSamplerAdvanced pair; the target's schedule uses it with its own model sampling."
                ),
                *_size_inputs(what="the target image"),
                inputs.seed("Seed of the fresh noise."),
                io.Boolean.Input("tiled", default=False, tooltip="Tiled decode and encode (ComfyUI's tiled VAE)."),
                _renoise_input("the bridged latent"),
                io.Sigmas.Input(
                    "sigmas_source",
                    optional=True,
                    tooltip="Optional: the schedule the source sampler ran (e.g. SplitSigmas' high_sigmas); "
                    "its last sigma replaces steps / end_at_step / scheduler.",
                ),
            ],
            outputs=[
                io.Latent.Output(display_name="LATENT", tooltip="The re-noised latent in the target space."),
                io.Sigmas.Output(
                    display_name="sigmas",
                    tooltip="The target's remaining schedule, from the hand-off sigma to 0 "
                    "(for SamplerCustomAdvanced with DisableNoise).",
                ),
                io.Int.Output(
                    display_name="start_at_step",
                    tooltip="start_at_step for the target KSamplerAdvanced "
                    "(add_noise disable, same steps and scheduler).",
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        samples,
        model_source,
        vae_source,
        positive_source,
        negative_source,
        cfg_source,
        model_target,
        vae_target,
        steps,
        end_at_step,
        scheduler,
        width,
        height,
        scale,
        resize_method,
        seed,
        tiled=False,
        sigmas_source=None,
        renoise_level=RENOISE_LEVELS[0],
    ) -> io.NodeOutput:
        raw = samples["samples"]
        check_latent_vae(raw, vae_source, "samples", "vae_source")
        check_model_vae(model_source, vae_source, "model_source", "vae_source")
        check_model_vae(model_target, vae_target, "model_target", "vae_target")
        sigma = _source_sigma(model_source, steps, end_at_step, scheduler, sigmas_source)
        sched_s, sched_t = model_schedule(model_source, "model_source"), model_schedule(model_target, "model_target")
        kind_t = sched_t.kind
        sig_t = _ksampler_sigmas(model_target, steps, "euler", scheduler, 1.0)
        calls = {"decode": 0, "encode": 0}
        vs = ComfyBridgeVAE(vae_source, model_latent_format(model_source), "vae_source", tiled, calls=calls)
        vt = ComfyBridgeVAE(vae_target, model_latent_format(model_target), "vae_target", tiled, calls=calls)
        px_from = (raw.shape[-2] * vs.downscale, raw.shape[-1] * vs.downscale)
        h, w = target_pixels(*px_from, vt.downscale, width, height, scale)
        shift = _shift_for(renoise_level, px_from, (h, w))
        s_match = match_sigma(
            torch.tensor(sigma),
            sched_s,
            sched_t,
            snap=False,
            name="end_at_step" if sigmas_source is None else "sigmas_source",
            shift=shift,
        )
        idx, tail = schedule_from(sig_t, float(s_match), kind_t, name="end_at_step")
        if idx >= len(sig_t) - 1:
            raise BridgeInputError(
                "end_at_step: the hand-off lands on the target schedule's end; nothing left to denoise"
            )
        s_to = float(tail[0])
        _, x0 = model_x0_at(model_source, positive_source, negative_source, cfg_source, raw, sigma, seed)
        z0 = bridge_latent(x0.float().cpu(), vs, vt, size=(h, w), filter=resize_method)
        noise = fresh_noise(z0.shape, seed)
        ms_t = model_target.get_model_object("model_sampling")
        x_t = ms_t.noise_scaling(torch.tensor(s_to), noise, z0)  # the model's own re-noising (flow noise_scale)
        raw_t = vt.from_model(ms_t.inverse_noise_scaling(torch.tensor(s_to), x_t))
        out = {k: v for k, v in samples.items() if k not in ("noise_mask", "samples")}
        out["samples"] = raw_t.to(comfy.model_management.intermediate_device())
        text = (
            f"Noisy Latent Bridge: sigma {sigma:.4g} -> target sigma {s_to:.4g} (matched {float(s_match):.4g}"
            f"{f', x{shift:.3g} for the resize' if shift != 1.0 else ''}), "
            f"start_at_step {idx} of {len(sig_t) - 1}; {raw.shape[-1] * vs.downscale}x{raw.shape[-2] * vs.downscale} -> "
            f"{w}x{h} px; NFE 1, VAE {_calls_text(calls)}"
        )
        text = with_nonfinite_note(text, out["samples"])
        log.info("%s", text)
        return io.NodeOutput(out, tail.clone(), int(idx), ui=ui.PreviewText(text))


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


NODES = [LatentBridge, NoisyLatentBridge, CoopSampler, CoopGuiderNode, TimeDecoupledSampler]
