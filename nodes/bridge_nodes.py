"""Latent Bridge and Noisy Latent Bridge (PanGu-Draw, arXiv 2312.16486, Coop-Diffusion's bridges between latent
spaces and resolutions), and the helpers the Coop-Diffusion nodes share (size inputs, the hand-off level's label,
one x0-prediction of a MODEL).

The maths lives in the pure-torch core (``bridges.core``); this module binds it to ComfyUI's MODEL, VAE and LATENT
(``nodes.comfy_vae`` adapts a ComfyUI VAE to ``BridgeVAE``). LATENTs hold raw VAE latents; sampling happens in each
model's own space (``latent_format.process_in``) and sigma space. Bad inputs raise ValueError (``BridgeInputError``)
whose message starts with the input's name.
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
import torch
from comfy_api.latest import io, ui

from ..bridges.core import FILTERS, bridge_latent, match_sigma, resize_images, resolution_shift, schedule_from
from ..bridges.fusion import TAPERS as fusion_tapers
from ..bridges.vae import BridgeInputError
from ..samplers.finite import with_nonfinite_note
from . import compat, inputs
from .comfy_vae import ComfyBridgeVAE, check_latent_vae, check_model_vae, model_latent_format, model_schedule
from .coop_guiders import fresh_noise

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


NODES = [LatentBridge, NoisyLatentBridge]
