"""DMD2's guidance side, plain PyTorch (no ComfyUI import): the noise schedule, classifier-free
guidance, the distribution-matching gradient and the losses of the generator and the fake score.

The counterpart of DMD2's ``EDMGuidance`` / ``SDGuidance`` (tianweiy/DMD2, HEAD 8d8fa55,
main/edm/edm_guidance.py and main/sd_guidance.py; Yin et al., "Improved Distribution Matching
Distillation for Fast Image Synthesis", NeurIPS 2024), written as free functions of the networks:
``dm_loss`` (``compute_distribution_matching_loss``), ``fake_loss`` (``compute_loss_fake``) and
``gan_logits`` (``compute_cls_logits``). Each takes its random draws (timesteps as sigmas, noise) as
arguments, so the caller (``training.trainer.DMDTrainer``) owns the random generator and the order
of the draws. The regression loss and its teacher ODE pairs follow DMD (Yin et al., "One-step
Diffusion with Distribution Matching Distillation", CVPR 2024). File:line references are to the
DMD2 repository; every rule names where it comes from.

Conventions. All networks are *denoisers* in ComfyUI's k-diffusion convention
``net(x, sigma, cond=None) -> x0`` (``testbed.exact``), noised as

* ``"eps"``, ``"v"``, ``"ve"``: x_sigma = x0 + sigma * noise (ComfyUI's EPS / V_PREDICTION models
  are wrapped so that they take VE latents; ``"ve"`` is an EDM-style model);
* ``"flow"``: x_sigma = (1 - sigma) * x0 + sigma * noise (ComfyUI's CONST / rectified flow).

A timestep t in [0, T) indexes an ascending sigma table (``NoiseSchedule``): Stable Diffusion's
discrete table for eps/v (``samplers.schedules.discrete_sigmas``), DMD2's EDM table (Karras sigmas
0.002..80, rho 7, 1000 entries, main/edm/edm_guidance.py:61-67) for ve, and ComfyUI's shifted flow
table for flow; or any table the caller passes (a ComfyUI adapter passes ``model_sampling.sigmas``).
DMD2 works with eps predictions; the x0 form used here is equivalent: CFG is linear and its weights
sum to one, so CFG on x0 equals CFG on eps, and ``x - x0`` is ``sigma * eps``.

Roles (main/sd_guidance.py:45-67, main/edm/edm_guidance.py:27-35): the *real score* is the frozen
teacher (any callable), the *fake score* a trainable copy of the teacher, the *generator* a third
trainable copy. The functions here take them as arguments, so a caller can pass UNet copies,
LoRA-wrapped models or (in the tests) small MLPs and an exact mixture denoiser; ``copy_teacher``
makes the copies.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..samplers import dmd as dmd_sampling
from ..samplers import kdiff, schedules
from .config import MODEL_TYPES, REGRESSION_LOSSES, DMDConfigError

# --------------------------------------------------------------------------------------------------
# Noise schedule


def edm_sigmas(
    timesteps: int = 1000, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> torch.Tensor:
    """DMD2's EDM timestep table: Karras sigmas flipped to ascending order, ``timesteps`` entries
    (main/edm/edm_guidance.py: ``torch.flip(get_sigmas_karras(1000, 0.002, 80, 7), dims=[0])``)."""
    return schedules.karras(timesteps, sigma_min, sigma_max, rho)[:-1].flip(0).contiguous()


def flow_table(timesteps: int = 1000, shift: float = 1.0) -> torch.Tensor:
    """ComfyUI's discrete flow table (ModelSamplingDiscreteFlow): sigma_i = shift(i / T), i = 1..T."""
    t = torch.arange(1, timesteps + 1, dtype=torch.float64) / timesteps
    return (shift * t / (1 + (shift - 1) * t)).float()


class NoiseSchedule:
    """Sigma table and noising rule of one model type (see the module docstring)."""

    def __init__(self, model_type: str = "eps", sigmas: torch.Tensor | None = None, flow_shift: float = 1.0):
        if model_type not in MODEL_TYPES:
            raise DMDConfigError(f"model_type: expected one of {MODEL_TYPES}, got {model_type!r}")
        self.model_type = model_type
        if sigmas is None:
            if model_type in ("eps", "v"):
                sigmas = schedules.discrete_sigmas()
            elif model_type == "ve":
                sigmas = edm_sigmas()
            else:
                sigmas = flow_table(shift=flow_shift)
        sigmas = torch.as_tensor(sigmas, dtype=torch.float32).reshape(-1)
        if sigmas.numel() < 2 or not bool((sigmas[1:] >= sigmas[:-1]).all()) or not bool((sigmas > 0).all()):
            raise DMDConfigError("sigmas: expected an ascending table of at least 2 positive sigmas")
        self.sigmas = sigmas

    @property
    def num_timesteps(self) -> int:
        return int(self.sigmas.numel())

    def sigma(self, t: torch.Tensor | int) -> torch.Tensor:
        """Sigma of integer timestep(s) t (t = T - 1 is the noisiest)."""
        return self.sigmas[torch.as_tensor(t, dtype=torch.long)]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x_sigma from x0 (``scheduler.add_noise`` in DMD2, written in this model type's convention)."""
        s = _bcast(sigma, x0)
        if self.model_type == "flow":
            return (1 - s) * x0 + s * noise
        return x0 + s * noise

    def generator_input(self, z: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The latent a one-step generator is fed at the conditioning sigma, from z ~ N(0, I).

        * eps / v: DMD2 SD feeds a pure N(0, I) latent at ``conditioning_timestep``
          (main/sd_unified_model.py:246, ``noisy_image = noise``). That latent is the VP model input;
          in ComfyUI's VE convention (model input x / sqrt(1 + sigma^2)) it is
          z * sqrt(1 + sigma^2). At t = 999 this is sigma * z to 0.2 %; at t = 399 (DMD2's 1-step
          SDXL, ``--conditioning_timestep 399`` in
          experiments/sdxl/sdxl_cond399_8node_lr5e-7_1step_diffusion1000_gan5e-3_guidance8_noinit_noode.sh:38)
          it is not, which is why the factor matters.
        * ve: DMD2 EDM feeds ``randn * conditioning_sigma`` (main/edm/train_edm.py:217-225), sigma * z.
        * flow: the same rule as eps (pure noise of the marginal's total variance for unit data),
          z * sqrt((1 - s)^2 + s^2), which is z at s = 1. DMD2 has no flow teacher; this is the
          pack's choice.
        """
        return dmd_sampling.noise_input(z, sigma, self.model_type)

    def fake_loss_weight(self, sigma: torch.Tensor, weighting: str, sigma_data: float) -> torch.Tensor:
        """Per-sample weight of the x0 squared error in the fake-score loss.

        * eps: DMD2 SD, ``mean((eps_fake - eps)^2)`` (main/sd_guidance.py:255-310) written on x0:
          (alpha / sigma)^2 (alpha = 1 in VE, 1 - sigma in flow).
        * edm: DMD2 EDM, ``snrs + 1 / sigma_data^2`` = sigma^-2 + sigma_data^-2
          (main/edm/edm_guidance.py:150-162).
        * v: v-prediction MSE in VE terms, sigma^-2 + 1 (the edm weight with sigma_data = 1).
        * flow: velocity MSE, sigma^-2 (the flow teachers' own loss; not in DMD2).
        * x0: uniform.
        """
        s = sigma.to(wide_dtype(sigma.device))
        if weighting == "eps":
            alpha = (1 - s) if self.model_type == "flow" else torch.ones_like(s)
            return (alpha / s) ** 2
        if weighting == "edm":
            return s**-2 + sigma_data**-2
        if weighting == "v":
            return s**-2 + 1.0
        if weighting == "flow":
            return s**-2
        return torch.ones_like(s)


def _bcast(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, device=x.device).to(x.dtype).reshape(-1)
    if s.numel() == 1:
        s = s.expand(x.shape[0])
    return s.reshape((x.shape[0],) + (1,) * (x.ndim - 1))


# --------------------------------------------------------------------------------------------------
# Generator, CFG, losses


def copy_teacher(teacher: nn.Module) -> nn.Module:
    """A trainable copy of the teacher network: DMD2 initialises both the fake score and the
    generator from the teacher (main/edm/edm_guidance.py:34 ``copy.deepcopy(self.real_unet)``,
    ``--initialie_generator``)."""
    net = copy.deepcopy(teacher)
    net.requires_grad_(True)
    net.train()
    return net


class OneStepGenerator(nn.Module):
    """G(z) = D_theta(input(z, sigma_c), sigma_c): a denoiser evaluated at the fixed conditioning
    timestep on pure noise (DMD: G(z) = mu_base(z, T - 1); DMD2 main/sd_unified_model.py:246 and
    main/edm/train_edm.py:217-225). ``net`` is the teacher-initialised denoiser."""

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, conditioning_timestep: int = 999):
        super().__init__()
        if not 0 <= int(conditioning_timestep) < schedule.num_timesteps:
            raise DMDConfigError(
                f"conditioning_timestep: expected an integer in [0, {schedule.num_timesteps - 1}], "
                f"got {conditioning_timestep!r}"
            )
        self.net = net
        self.schedule = schedule
        self.conditioning_timestep = int(conditioning_timestep)
        self.conditioning_sigma = float(schedule.sigma(self.conditioning_timestep))

    def forward(self, z: torch.Tensor, cond: Any = None) -> torch.Tensor:
        x = self.schedule.generator_input(z, self.conditioning_sigma)
        sigma = torch.full((z.shape[0],), self.conditioning_sigma, dtype=z.dtype, device=z.device)
        return self.net(x, sigma, cond=cond)


def cfg_denoise(denoiser: Callable, x, sigma, cond, uncond, scale: float) -> torch.Tensor:
    """Teacher x0 with classifier-free guidance: uncond + scale * (cond - uncond)
    (main/sd_guidance.py:31, on eps; identical on x0). scale 1 runs the conditional branch only."""
    out = denoiser(x, sigma, cond=cond)
    if float(scale) == 1.0:
        return out
    un = denoiser(x, sigma, cond=uncond)
    return un + scale * (out - un)


def wide_dtype(device) -> torch.dtype:
    """The precision of the DM gradient and the losses: float64 as DMD2 (main/sd_guidance.py converts
    to x0 in float64), float32 on Apple's MPS, which has no float64 (``.double()`` raises there)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def dm_gradient(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor | None) -> torch.Tensor:
    """DMD gradient on generator samples, float64 (``wide_dtype``; main/sd_guidance.py:178-241,
    main/edm/edm_guidance.py:105-111):

        p_real = x - x0_real; p_fake = x - x0_fake
        grad = (p_real - p_fake) / mean(|p_real|) over all but the batch dim; nan_to_num

    The normaliser is mean |x - x0_real| (main/edm/edm_guidance.py:105, main/sd_guidance.py:238),
    not mean |x0_real| (the slip of the unofficial dmd-mnist code).
    ``x0_fake=None`` is the "real score only" control (p_fake = 0).
    """
    wd = wide_dtype(x.device)
    xd = x.detach().to(wd)
    p_real = xd - x0_real.to(wd)
    p_fake = torch.zeros_like(p_real) if x0_fake is None else xd - x0_fake.to(wd)
    dims = list(range(1, x.ndim))
    weight = p_real.abs().mean(dim=dims, keepdim=True)
    return torch.nan_to_num((p_real - p_fake) / weight)


def dm_surrogate_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """0.5 * mse(x, (x - grad).detach()): its gradient w.r.t. x is grad / numel (DMD2 surrogate)."""
    wd = wide_dtype(x.device)
    return 0.5 * F.mse_loss(x.to(wd), (x.detach().to(wd) - grad.to(wd)).detach(), reduction="mean")


def regression_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "pseudo_huber") -> torch.Tensor:
    """DMD1's regression loss on precomputed teacher-ODE pairs (LPIPS in the paper, DMD section 3.3;
    offline stand-ins here): pseudo-Huber sqrt(|d|^2 + c^2) - c per sample, c = 0.00054 sqrt(dim)
    (iCT, Song and Dhariwal, ICLR 2024), or L2 (mean squared error)."""
    if kind == "l2":
        return F.mse_loss(pred, target)
    if kind == "lpips":
        raise DMDConfigError("regression_loss: 'lpips' needs the decoder and weights: use training.lpips.LatentLPIPS")
    if kind != "pseudo_huber":
        raise DMDConfigError(f"regression_loss: expected one of {REGRESSION_LOSSES}, got {kind!r}")
    d = (pred - target).reshape(pred.shape[0], -1)
    c = 0.00054 * math.sqrt(d.shape[1])
    return (torch.sqrt((d**2).sum(1) + c * c) - c).mean()


# --------------------------------------------------------------------------------------------------
# Guidance losses (the caller draws the timesteps and the noise)


def dm_loss(
    real_score: Callable,
    fake_score: Callable | None,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    cond: Any,
    uncond: Any,
    guidance_scale: float,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> tuple[torch.Tensor, dict]:
    """DM surrogate loss of generator samples x (with grad) and its logs (DMD2
    ``compute_distribution_matching_loss``, main/edm/edm_guidance.py:73-125, main/sd_guidance.py:168-255):
    x noised to ``sigma`` with ``noise``, the real score with CFG (``guidance_scale``) and the fake
    score without, both without grad; ``dm_gradient`` and ``dm_surrogate_loss``. ``fake_score=None``
    is the "real score only" control. ``autocast()`` is the context of the network calls."""
    n = x.shape[0]
    with torch.no_grad(), autocast():
        noisy = schedule.add_noise(x.detach(), noise.to(x.dtype), sigma)
        s = sigma.to(x.dtype)
        x0_real = cfg_denoise(real_score, noisy, s, cond, uncond, guidance_scale)
        x0_fake = fake_score(noisy, s, cond=cond) if fake_score is not None else None
    grad = dm_gradient(x, x0_real, x0_fake)
    loss = dm_surrogate_loss(x, grad)
    return loss, {"dm_grad_norm": float(grad.reshape(n, -1).norm(dim=1).mean())}


def fake_loss(
    fake_score: Callable,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    cond: Any,
    weighting: str,
    sigma_data: float,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> torch.Tensor:
    """Denoising loss of the fake score on detached generator samples x noised to ``sigma`` (DMD2
    ``compute_loss_fake``, main/edm/edm_guidance.py:127-172, main/sd_guidance.py:257-310): the
    x0 squared error weighted by ``NoiseSchedule.fake_loss_weight(sigma, weighting, sigma_data)``."""
    n = x.shape[0]
    noisy = schedule.add_noise(x, noise.to(x.dtype), sigma)
    with autocast():
        pred = fake_score(noisy, sigma.to(x.dtype), cond=cond)
    w = schedule.fake_loss_weight(sigma, weighting, sigma_data)
    wd = wide_dtype(x.device)
    per = ((pred.to(wd) - x.to(wd)) ** 2).reshape(n, -1).mean(1)
    return (w * per).mean()


def gan_logits(
    fake_score: nn.Module,
    tap: Any,
    head: nn.Module,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    cond: Any,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> torch.Tensor:
    """Critic logits of latents x noised to ``sigma`` ("diffusion GAN"; DMD2 ``compute_cls_logits``,
    main/sd_guidance.py:145-165, main/edm/edm_guidance.py:174-190): the fake score's features at the
    ``tap`` (``gan.FeatureTap``), then the ``head`` (``gan.GANHead``)."""
    noisy = schedule.add_noise(x, noise.to(x.dtype), sigma)
    with autocast():
        f = tap.features(fake_score, noisy, sigma.to(x.dtype), cond=cond)
    return head(f)


# --------------------------------------------------------------------------------------------------
# Teacher ODE pairs (regression loss, reference samples)


@torch.no_grad()
def teacher_ode_samples(
    teacher: Callable,
    z: torch.Tensor,
    schedule: NoiseSchedule,
    conditioning_timestep: int = 999,
    steps: int = 50,
    cond: Any = None,
    uncond: Any = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Deterministic teacher samples from the same noise the generator gets: Heun (EDM / Karras
    2nd order) from the conditioning sigma down to the table's smallest sigma on a Karras schedule,
    starting at ``schedule.generator_input(z, sigma_c)``; ``steps`` Heun steps (2 * steps - 1
    teacher calls). DMD1 builds its regression pairs with the teacher's deterministic ODE sampler;
    DMD2's SDXL pairs use diffusers' Euler (main/sdxl/generate_noise_image_pairs_laion_sdxl.py:53)."""
    sigma_c = float(schedule.sigma(conditioning_timestep))
    sig = schedules.karras(steps, float(schedule.sigmas[0]), sigma_c).to(z.device)
    x = schedule.generator_input(z, sigma_c)

    def model(xx, s, **_):
        return cfg_denoise(teacher, xx, s, cond, uncond, guidance_scale)

    return kdiff.sample_heun(model, x, sig)


@dataclass
class RegressionPairs:
    """Precomputed (noise z, teacher ODE output y[, conditioning index]) pairs (DMD1 section 3.3)."""

    noise: torch.Tensor
    target: torch.Tensor
    cond_index: torch.Tensor | None = None
