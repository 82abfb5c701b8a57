"""The resolution hand-off routes of ``bench coop`` (its ``resolution`` case), on the cores' samplers and bridges.

* ``coupled_noise``: high-res white noise whose 2x2 block means times 2 are the low-res noise, so a full
  high-res reference shares the low-res run's composition;
* the three routes ComfyUI users take today (``route_latent_upscale``, ``route_pixel_hires``,
  ``route_step_handoff``) and ours (``route_noisy_bridge``: ``bridges.decoupled.time_decoupled_sample``
  with a Sub-Module 2 noisy bridge at the switch; PanGu-Draw, arXiv 2312.16486, section 3.2), each
  returning the final latent and its NFE / VAE-call counts (``HandoffResult``);
* ComfyUI's KSampler ``denoise`` (``denoise_sigmas``) and "Upscale Latent" (``upscale_latent``) rebuilt.

Samplers follow ``samplers/kdiff.py`` (``fn(model, x, sigmas, extra_args=None, ...)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..bridges.core import BridgeInputError, ModelSchedule, bridge_latent
from ..bridges.decoupled import time_decoupled_sample
from ..bridges.vae import BridgeVAE
from ..samplers import kdiff
from ..samplers.kdiff import CountingDenoiser
from ..testbed.vaes import vae_calls


def coupled_noise(
    shape_lr, seed: int | None = None, generator: torch.Generator | None = None, factor: int = 2, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise_hr, noise_lr): white unit noise at `factor` x the low-res latent size (drawn as
    ComfyUI draws a seed's noise, ``torch.randn`` on the CPU) and the low-res noise its
    factor x factor block means times `factor` make (white, unit variance). A full high-res run
    from noise_hr then shares the low-res run's composition (its low frequencies)."""
    b, c, h, w = (int(v) for v in shape_lr)
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    hr = torch.randn(b, c, h * factor, w * factor, generator=generator, dtype=dtype)
    lr = F.avg_pool2d(hr, factor) * factor
    return hr, lr


def denoise_sigmas(sigmas_fn: Callable[[int], torch.Tensor], steps: int, denoise: float) -> torch.Tensor:
    """ComfyUI's KSampler `denoise` < 1: a schedule of int(steps / denoise) steps, its last
    steps + 1 sigmas (comfy.samplers.KSampler.set_steps)."""
    if not 0 < denoise <= 1:
        raise BridgeInputError(f"denoise: expected 0 < denoise <= 1, got {denoise}")
    if denoise >= 1:
        return sigmas_fn(steps)
    return sigmas_fn(int(steps / denoise))[-(steps + 1) :]


def upscale_latent(z: torch.Tensor, factor: int = 2, mode: str = "bilinear") -> torch.Tensor:
    """ComfyUI's "Upscale Latent" / LatentUpscaleBy with bilinear (align_corners False)."""
    return F.interpolate(
        z, scale_factor=factor, mode=mode, align_corners=False if mode in ("bilinear", "bicubic") else None
    )


@dataclass
class HandoffResult:
    x: torch.Tensor  # final high-res latent (HR space)
    nfe_lr: int
    nfe_hr: int
    vae_calls: int
    settings: dict
    x_lr: torch.Tensor | None = None  # final (or hand-off) low-res latent

    @property
    def nfe(self) -> int:
        return self.nfe_lr + self.nfe_hr

    def hr_equiv(self, pixel_ratio: float = 4.0) -> float:
        """Cost in high-res network calls: a low-res call costs 1 / pixel_ratio of one."""
        return self.nfe_hr + self.nfe_lr / pixel_ratio


def route_reference(den_hr, noise_hr, sigmas, extra=None, sampler=kdiff.sample_euler) -> HandoffResult:
    """The full high-res run from the coupled high-res noise (the target the routes aim at)."""
    c = CountingDenoiser(den_hr)
    x = sampler(c, noise_hr * sigmas[0], sigmas, extra_args=extra)
    return HandoffResult(x, 0, c.nfe, 0, {})


def _lr_full(den_lr, noise_lr, sigmas, extra, sampler):
    c = CountingDenoiser(den_lr)
    return sampler(c, noise_lr * sigmas[0], sigmas, extra_args=extra), c


def route_latent_upscale(
    den_lr,
    den_hr,
    noise_lr,
    noise_hr,
    sigmas_fn,
    steps_lr: int,
    steps_hr: int,
    denoise: float,
    extra=None,
    sampler=kdiff.sample_euler,
    factor: int = 2,
) -> HandoffResult:
    """(a) KSampler (low res, full) -> Upscale Latent (bilinear) -> KSampler (denoise < 1, the
    seed's high-res noise added at the first sigma)."""
    z_lr, c_lr = _lr_full(den_lr, noise_lr, sigmas_fn(steps_lr), extra, sampler)
    z = upscale_latent(z_lr, factor)
    sig = denoise_sigmas(sigmas_fn, steps_hr, denoise)
    c_hr = CountingDenoiser(den_hr)
    x = sampler(c_hr, z + noise_hr * sig[0], sig, extra_args=extra)
    return HandoffResult(x, c_lr.nfe, c_hr.nfe, 0, {"denoise": denoise, "steps_hr": steps_hr}, z_lr)


def route_pixel_hires(
    den_lr,
    den_hr,
    vae_lr: BridgeVAE,
    vae_hr: BridgeVAE,
    noise_lr,
    noise_hr,
    sigmas_fn,
    steps_lr: int,
    steps_hr: int,
    denoise: float,
    extra=None,
    sampler=kdiff.sample_euler,
    factor: int = 2,
    filter: str = "bicubic",
) -> HandoffResult:
    """(b) pixel hires-fix: KSampler (low res, full) -> VAE Decode -> pixel upscale -> VAE Encode
    -> KSampler (denoise < 1)."""
    z_lr, c_lr = _lr_full(den_lr, noise_lr, sigmas_fn(steps_lr), extra, sampler)
    h, w = z_lr.shape[-2] * vae_lr.downscale * factor, z_lr.shape[-1] * vae_lr.downscale * factor
    z = bridge_latent(z_lr, vae_lr, vae_hr, size=(h, w), filter=filter)
    sig = denoise_sigmas(sigmas_fn, steps_hr, denoise)
    c_hr = CountingDenoiser(den_hr)
    x = sampler(c_hr, z + noise_hr * sig[0], sig, extra_args=extra)
    return HandoffResult(x, c_lr.nfe, c_hr.nfe, 2, {"denoise": denoise, "steps_hr": steps_hr, "filter": filter}, z_lr)


def route_step_handoff(
    den_lr, den_hr, noise_lr, sigmas, k: int, extra=None, sampler=kdiff.sample_euler, factor: int = 2
) -> HandoffResult:
    """(c) KSamplerAdvanced pair: low res steps 0..k with leftover noise, Upscale Latent
    (bilinear) of the *noisy* latent, high res from step k with add_noise disabled."""
    c_lr = CountingDenoiser(den_lr)
    z = sampler(c_lr, noise_lr * sigmas[0], sigmas[: k + 1], extra_args=extra)
    c_hr = CountingDenoiser(den_hr)
    x = sampler(c_hr, upscale_latent(z, factor), sigmas[k:], extra_args=extra)
    return HandoffResult(x, c_lr.nfe, c_hr.nfe, 0, {"k": k}, z)


def route_noisy_bridge(
    den_lr,
    den_hr,
    vae_lr: BridgeVAE,
    vae_hr: BridgeVAE,
    noise_lr,
    noise_hr,
    sigmas,
    sched: ModelSchedule,
    switch_timestep=500,
    switch_sigma=None,
    extra=None,
    sampler=kdiff.sample_euler,
    factor: int = 2,
    filter: str = "bicubic",
    handoff: str = "last",
    renoise: str = "resolution",
) -> HandoffResult:
    """(d) ours: low res down to the switch, Sub-Module 2 noisy bridge (x0, decode, resize,
    encode, the seed's high-res noise as the fresh noise at the matching level: x factor with
    renoise "resolution", equal SNR with "paper"), high res continues on the same schedule from
    the hand-off level."""
    h = noise_lr.shape[-2] * vae_lr.downscale * factor
    w = noise_lr.shape[-1] * vae_lr.downscale * factor
    for v in (vae_lr, vae_hr):
        if hasattr(v, "reset_calls"):
            v.reset_calls()
    r = time_decoupled_sample(
        den_lr,
        den_hr,
        noise_lr * sigmas[0],
        sigmas,
        sched,
        sched,
        switch_timestep=switch_timestep if switch_sigma is None else None,
        switch_sigma=switch_sigma,
        vae_structure=vae_lr,
        vae_texture=vae_hr,
        size=(h, w),
        filter=filter,
        sampler=sampler,
        extra_structure=extra,
        extra_texture=extra,
        noise=noise_hr,
        handoff=handoff,
        renoise=renoise,
    )
    calls = vae_calls(vae_lr, vae_hr) if vae_lr is not vae_hr else vae_calls(vae_lr)
    return HandoffResult(
        r.x,
        r.nfe_structure,
        r.nfe_texture,
        calls or 2,
        {
            "k": r.k,
            "switch_sigma": round(r.switch_sigma, 4),
            "handoff": handoff,
            "renoise": renoise,
            "handoff_sigma": round(r.handoff_sigma, 4),
            "switch_timestep": switch_timestep,
            "filter": filter,
        },
        r.x_structure,
    )
