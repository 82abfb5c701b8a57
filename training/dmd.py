"""Distribution Matching Distillation (DMD / DMD2) training core, plain PyTorch (no ComfyUI import).

Faithful to the official DMD2 code (tianweiy/DMD2, HEAD 8d8fa55; file and line references below are
to that repository, as read for the research note ``shared/research/dmd.md`` sections 1.1-1.8) and to
DMD (Yin et al., CVPR 2024) for the regression loss. Every rule names where it comes from.

Conventions. All networks are *denoisers* in ComfyUI's k-diffusion convention
``net(x, sigma, cond=None) -> x0`` (``testbed.exact``), noised as

* ``"eps"``, ``"v"``, ``"ve"``: x_sigma = x0 + sigma * noise (ComfyUI's EPS / V_PREDICTION models
  are wrapped so that they take VE latents; ``"ve"`` is an EDM-style model);
* ``"flow"``: x_sigma = (1 - sigma) * x0 + sigma * noise (ComfyUI's CONST / rectified flow).

A timestep t in [0, T) indexes an ascending sigma table (``NoiseSchedule``): Stable Diffusion's
discrete table for eps/v (``samplers.schedules.discrete_sigmas``), DMD2's EDM table (Karras sigmas
0.002..80, rho 7, 1000 entries, main/edm/edm_guidance.py) for ve, and ComfyUI's shifted flow table
for flow; or any table the caller passes (a ComfyUI adapter passes ``model_sampling.sigmas``).
DMD2 works with eps predictions; the x0 form used here is equivalent: CFG is linear and its weights
sum to one, so CFG on x0 equals CFG on eps, and ``x - x0`` is ``sigma * eps``.

Roles (main/sd_guidance.py:52-67, main/edm/edm_guidance.py:34): the *real score* is the frozen
teacher (any callable), the *fake score* a trainable copy of the teacher, the *generator* a third
trainable copy. This module takes the three as arguments, so a caller can pass UNet copies,
LoRA-wrapped models or (in the tests) small MLPs and an exact mixture denoiser; ``copy_teacher``
makes the copies.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..samplers import dmd as dmd_sampling
from ..samplers import kdiff
from ..samplers import schedules as S
from . import gan as _gan
from . import lora as _lora

MODEL_TYPES = ("eps", "v", "ve", "flow")
FAKE_WEIGHTINGS = ("auto", "eps", "v", "edm", "flow", "x0")
REGRESSION_LOSSES = ("pseudo_huber", "l2", "lpips")


class DMDConfigError(ValueError):
    """An input of the DMD trainer is out of range; the message starts with the input's name."""


# --------------------------------------------------------------------------------------------------
# Noise schedule


def edm_sigmas(timesteps: int = 1000, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """DMD2's EDM timestep table: Karras sigmas flipped to ascending order, ``timesteps`` entries
    (main/edm/edm_guidance.py: ``torch.flip(get_sigmas_karras(1000, 0.002, 80, 7), dims=[0])``)."""
    return S.karras(timesteps, sigma_min, sigma_max, rho)[:-1].flip(0).contiguous()


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
                sigmas = S.discrete_sigmas()
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
          SDXL) it is not, which is why the factor matters (dmd.md 3.1).
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
# Configuration


@dataclass
class DMDConfig:
    """Settings of one DMD2 run. Defaults are the official recipe (dmd.md 1.8) where one exists.

    model_type: "eps" | "v" | "ve" | "flow" (see the module docstring).
    conditioning_timestep: timestep the one-step generator is evaluated at; 999 (DMD2 default
        ``--conditioning_timestep``; the released 1-step SDXL model uses 399), in [0, T).
    real_guidance_scale: CFG scale of the real score (DMD2: SD1.5 1.75, SDXL 8, ImageNet 1).
    min_step_percent, max_step_percent: DM timestep range, t ~ U{int(0.02 T), ..., int(0.98 T)}
        (main/sd_guidance.py:178-241, DMD's DreamFusion convention).
    dfake_gen_update_ratio: fake-score updates per generator update (TTUR; DMD2 5 for ImageNet and
        SDXL, 10 for SD1.5; DMD1 used 1).
    batch_size: generator samples per iteration.
    generator_lr, fake_lr: AdamW learning rates (DMD2 SD1.5 1e-5 both).
    betas, weight_decay: AdamW (0.9, 0.999), 0.01 for both networks (main/train_sd.py).
    warmup_steps: diffusers ``constant_with_warmup``: lr * min(1, k / warmup_steps) at the k-th
        optimizer step (k from 0), 500 in DMD2; each optimizer has its own schedule.
    max_grad_norm: ``clip_grad_norm_`` of each network's gradient (10 in DMD2).
    fake_loss_weighting: "auto" (eps -> "eps", v -> "v", ve -> "edm", flow -> "flow"), or one of
        "eps", "v", "edm", "flow", "x0" (``NoiseSchedule.fake_loss_weight``).
    sigma_data: data standard deviation of the "edm" weighting (0.5 in EDM).
    regression_weight: lambda_reg of DMD1's regression loss on teacher ODE pairs (DMD1 0.25; 0 =
        off, DMD2). regression_loss: "pseudo_huber" (iCT, c = 0.00054 sqrt(d), the offline
        stand-in for LPIPS, dmd.md 4.1), "l2" (mean squared error), or "lpips" (DMD1's loss: LPIPS on
        decoded images; the trainer then needs ``regression_loss_fn``, e.g. ``training.lpips.LatentLPIPS``
        built from weight files the user has). regression_batch_size: pairs
        per generator update (default ``batch_size``).
    use_fake_score, train_fake_score: ablation switches for the control runs only (dmd.md 4.2):
        use_fake_score=False drops the fake score from the DM gradient ("real score only", SDS-like);
        train_fake_score=False keeps the fake score frozen at its initialisation.
    seed: seed of the trainer's random generator (all noise, timesteps, conditioning draws).

    DMD2 options (dmd.md 1.6-1.8), all off by default:
    gen_cls_loss_weight, guidance_cls_loss_weight: the GAN head (``gan.GANHead``) on the fake
        score's features (DMD2: gen 3e-3 ImageNet / 1e-3 SD1.5 / 5e-3 SDXL, guidance 1e-2). The
        generator adds ``gen_cls_loss_weight * softplus(-D(G(z)))``, the fake-score update
        ``guidance_cls_loss_weight * (softplus(D(fake)) + softplus(-D(real)))`` (non-saturating),
        both inputs noised at t ~ U{0, ..., diffusion_gan_max_timestep - 1}. The GAN is on when
        either weight is > 0; it needs ``gan_feature_module`` (dotted name of the fake score's
        submodule whose output is the feature map, e.g. the UNet bottleneck) and the trainer's
        ``real_data``.
    denoising_timesteps: None (one step at ``conditioning_timestep``) or the multi-step generator's
        timesteps, e.g. (999, 749, 499, 249) (DMD2 ``--denoising --num_denoising_step 4``).
    backward_simulation: multi-step only: the generator's training input at a random step of the
        list is made by running the current generator from pure noise through the earlier steps
        without grad, re-noising with fresh noise (DMD2 ``--backward_simulation``, dmd.md 1.7);
        False noises ``real_data`` to that step instead (DMD2 without backward simulation).
    mixed_precision: "no" or "bf16": ``torch.autocast(bfloat16)`` around the network calls on CUDA
        (DMD2 ``--use_fp16``); a no-op on CPU.
    gradient_checkpointing: recompute the activations of each block of the generator and fake
        score in backward (``enable_gradient_checkpointing``; DMD2 ``--gradient_checkpointing``).
    lora_rank, lora_alpha: used by ``DMDTrainer.from_teacher``: > 0 makes the generator and fake
        score LoRA copies of the teacher sharing its weights (``training.lora``; DMD2 SDXL LoRA:
        rank 64, alpha 8); 0 = full-weight copies. Checkpoints of LoRA networks hold only the LoRA
        factors (plus optimizer state).

    Pack option (not in DMD2's training loop, which has no EMA; NVlabs/FastGen uses one):
    ema_decay: > 0 keeps an exponential moving average of the generator's trainable weights,
        updated after every generator step (ema = d * ema + (1 - d) * w); ``sample`` and
        ``save_generator`` then use the averaged weights (``use_ema=False`` for the raw ones).
        0 = off (faithful).
    """

    model_type: str = "eps"
    conditioning_timestep: int = 999
    real_guidance_scale: float = 1.75
    min_step_percent: float = 0.02
    max_step_percent: float = 0.98
    dfake_gen_update_ratio: int = 10
    batch_size: int = 1
    generator_lr: float = 1e-5
    fake_lr: float = 1e-5
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.01
    warmup_steps: int = 500
    max_grad_norm: float = 10.0
    fake_loss_weighting: str = "auto"
    sigma_data: float = 0.5
    regression_weight: float = 0.0
    regression_loss: str = "pseudo_huber"
    regression_batch_size: int | None = None
    use_fake_score: bool = True
    train_fake_score: bool = True
    seed: int = 0
    gen_cls_loss_weight: float = 0.0
    guidance_cls_loss_weight: float = 0.0
    gan_feature_module: str | None = None
    diffusion_gan_max_timestep: int = 1000
    denoising_timesteps: tuple | None = None
    backward_simulation: bool = True
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    lora_rank: int = 0
    lora_alpha: float | None = None
    ema_decay: float = 0.0

    def validate(self, num_timesteps: int | None = None) -> None:
        def err(name, msg):
            raise DMDConfigError(f"{name}: {msg}, got {getattr(self, name)!r}")

        if self.model_type not in MODEL_TYPES:
            err("model_type", f"expected one of {MODEL_TYPES}")
        if isinstance(self.conditioning_timestep, bool) or not isinstance(self.conditioning_timestep, int):
            err("conditioning_timestep", "expected an integer timestep")
        if num_timesteps is not None and not 0 <= self.conditioning_timestep < num_timesteps:
            err("conditioning_timestep", f"expected an integer in [0, {num_timesteps - 1}]")
        if not self.real_guidance_scale >= 0:
            err("real_guidance_scale", "expected a number >= 0")
        if not 0 <= self.min_step_percent <= self.max_step_percent <= 1:
            err("min_step_percent", "expected 0 <= min_step_percent <= max_step_percent <= 1")
        if not (isinstance(self.dfake_gen_update_ratio, int) and self.dfake_gen_update_ratio >= 1):
            err("dfake_gen_update_ratio", "expected an integer >= 1")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            err("batch_size", "expected an integer >= 1")
        for name in ("generator_lr", "fake_lr"):
            if not getattr(self, name) > 0:
                err(name, "expected a number > 0")
        if not self.weight_decay >= 0:
            err("weight_decay", "expected a number >= 0")
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            err("warmup_steps", "expected an integer >= 0")
        if not self.max_grad_norm > 0:
            err("max_grad_norm", "expected a number > 0")
        if self.fake_loss_weighting not in FAKE_WEIGHTINGS:
            err("fake_loss_weighting", f"expected one of {FAKE_WEIGHTINGS}")
        if not self.sigma_data > 0:
            err("sigma_data", "expected a number > 0")
        if not self.regression_weight >= 0:
            err("regression_weight", "expected a number >= 0")
        if self.regression_loss not in REGRESSION_LOSSES:
            err("regression_loss", f"expected one of {REGRESSION_LOSSES}")
        if self.regression_batch_size is not None and not (
            isinstance(self.regression_batch_size, int) and self.regression_batch_size >= 1
        ):
            err("regression_batch_size", "expected None or an integer >= 1")

        for name in ("gen_cls_loss_weight", "guidance_cls_loss_weight"):
            if not getattr(self, name) >= 0:
                err(name, "expected a number >= 0")
        if self.use_gan and not (isinstance(self.gan_feature_module, str) and self.gan_feature_module):
            err("gan_feature_module", "expected the dotted name of a fake-score submodule when the GAN loss is on")
        if not (isinstance(self.diffusion_gan_max_timestep, int) and self.diffusion_gan_max_timestep >= 1):
            err("diffusion_gan_max_timestep", "expected an integer >= 1")
        if self.denoising_timesteps is not None:
            ts = self.denoising_timesteps
            ok = isinstance(ts, (tuple, list)) and len(ts) >= 1 and all(
                isinstance(t, int) and not isinstance(t, bool) for t in ts)
            ok = ok and all(b < a for a, b in zip(ts, ts[1:])) and min(ts) >= 0
            if ok and num_timesteps is not None:
                ok = max(ts) < num_timesteps
            if not ok:
                err("denoising_timesteps", "expected None or strictly decreasing integer timesteps in [0, T)")
        if self.mixed_precision not in ("no", "bf16"):
            err("mixed_precision", "expected 'no' or 'bf16'")
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            err("lora_rank", "expected an integer >= 0 (0 = full weights)")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            err("lora_alpha", "expected None or a number > 0")
        if not 0 <= self.ema_decay < 1:
            err("ema_decay", "expected a number in [0, 1) (0 = off)")

    @property
    def use_gan(self) -> bool:
        return self.gen_cls_loss_weight > 0 or self.guidance_cls_loss_weight > 0

    def generator_timesteps(self) -> list[int]:
        """The generator's timesteps: ``denoising_timesteps`` or [conditioning_timestep]."""
        if self.denoising_timesteps is None:
            return [int(self.conditioning_timestep)]
        return [int(t) for t in self.denoising_timesteps]

    def weighting(self) -> str:
        if self.fake_loss_weighting != "auto":
            return self.fake_loss_weighting
        return {"eps": "eps", "v": "v", "ve": "edm", "flow": "flow"}[self.model_type]


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

    The normaliser is mean |x - x0_real| (not mean |x0_real|, the dmd-mnist slip, dmd.md 1.3).
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
    """DMD1's regression loss on precomputed teacher-ODE pairs (LPIPS in the paper; offline stand-ins
    from dmd.md 4.1): pseudo-Huber sqrt(|d|^2 + c^2) - c per sample, c = 0.00054 sqrt(dim) (iCT), or
    L2 (mean squared error)."""
    if kind == "l2":
        return F.mse_loss(pred, target)
    if kind == "lpips":
        raise DMDConfigError("regression_loss: 'lpips' needs the decoder and weights: use training.lpips.LatentLPIPS")
    if kind != "pseudo_huber":
        raise DMDConfigError(f"regression_loss: expected one of {REGRESSION_LOSSES}, got {kind!r}")
    d = (pred - target).reshape(pred.shape[0], -1)
    c = 0.00054 * math.sqrt(d.shape[1])
    return (torch.sqrt((d**2).sum(1) + c * c) - c).mean()


def constant_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """diffusers ``get_scheduler("constant_with_warmup")`` (DMD2 main/train_sd.py): factor
    k / warmup before ``warmup_steps`` optimizer steps, 1 after."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: float(k) / float(max(1, warmup_steps)) if k < warmup_steps else 1.0
    )


def default_collate(items: Sequence[Any]) -> Any:
    """Conditioning items of one batch -> the ``cond`` argument: None, a LongTensor of class
    indices, or stacked tensors (an item with a leading batch dim of 1 is concatenated)."""
    if all(i is None for i in items):
        return None
    if all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        return torch.tensor(items, dtype=torch.long)
    if all(isinstance(i, torch.Tensor) for i in items):
        if items[0].ndim >= 1 and items[0].shape[0] == 1:
            return torch.cat(list(items))
        return torch.stack(list(items))
    raise DMDConfigError("conditioning: items must all be None, all ints or all tensors (or pass a collate function)")


def _to_device(c, device):
    return c.to(device) if isinstance(c, torch.Tensor) else c


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
    DMD2's SDXL pairs use diffusers' Euler (dmd.md 1.5)."""
    sigma_c = float(schedule.sigma(conditioning_timestep))
    sig = S.karras(steps, float(schedule.sigmas[0]), sigma_c).to(z.device)
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


# --------------------------------------------------------------------------------------------------
# Trainer


class DMDTrainer:
    """DMD2 training loop over caller-supplied networks.

    real_score: frozen teacher, ``real_score(x, sigma, cond=...) -> x0`` (any callable; never
        backpropagated through, main/sd_guidance.py:64-67).
    generator_net: trainable denoiser (a ``copy_teacher`` copy or a ``lora.lora_copy``), wrapped in
        ``OneStepGenerator``.
    fake_score: trainable denoiser (a ``copy_teacher`` copy or a LoRA copy); run without CFG
        (DMD2 asserts ``fake_guidance_scale == 1``).
    latent_shape: shape of one latent (without batch).
    conditioning: non-empty list of conditioning items (default ``[None]``, unconditional); every
        sample draws one uniformly. uncond: the unconditional item for CFG (None = the teacher's
        unconditional branch). collate: items -> ``cond`` argument (``default_collate``).
    sigmas: the timestep table (default: the model type's, ``NoiseSchedule``).
    regression_pairs: ``RegressionPairs`` for DMD1's regression loss (used when
        ``config.regression_weight > 0``).
    real_data: "real" latents for the GAN critic (and for multi-step training without backward
        simulation): a tensor [N, *latent_shape], a ``RegressionPairs`` (its targets, e.g. teacher
        ODE outputs, with their cond_index) or a callable ``(n, torch.Generator) -> latents``.
        real_cond_index: [N] conditioning indices of a real_data tensor (needed with more than one
        conditioning item).
    progress: ``progress(step, total, losses)`` called by ``train`` after every step.

    One ``step()`` is one DMD2 iteration (main/train_sd.py:330, main/edm/train_edm.py:235): the
    generator produces a batch (with grad on generator turns, ``step % ratio == 0``, where it is
    updated with the DM loss [+ regression] [+ GAN]); then the fake score takes one denoising step
    on that batch, detached, at t ~ U{0, ..., T-1} (main/sd_guidance.py:255-310) [+ the critic's GAN
    loss, same optimizer].
    """

    def __init__(
        self,
        real_score: Callable,
        generator_net: nn.Module,
        fake_score: nn.Module,
        latent_shape: Sequence[int],
        config: DMDConfig | None = None,
        *,
        conditioning: Sequence[Any] | None = None,
        uncond: Any = None,
        collate: Callable[[Sequence[Any]], Any] | None = None,
        sigmas: torch.Tensor | None = None,
        flow_shift: float = 1.0,
        regression_pairs: RegressionPairs | None = None,
        regression_loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        real_data: Any = None,
        real_cond_index: torch.Tensor | None = None,
        progress: Callable[[int, int, dict], None] | None = None,
        device: torch.device | str | None = None,
    ):
        self.config = cfg = config if config is not None else DMDConfig()
        if not isinstance(cfg, DMDConfig):
            raise DMDConfigError(f"config: expected a DMDConfig, got {type(cfg).__name__}")
        cfg.validate()
        self.schedule = NoiseSchedule(cfg.model_type, sigmas, flow_shift)
        cfg.validate(self.schedule.num_timesteps)
        if conditioning is None:
            conditioning = [None]
        if isinstance(conditioning, (str, bytes)) or not isinstance(conditioning, Sequence) or len(conditioning) == 0:
            raise DMDConfigError(f"conditioning: expected a non-empty list of conditioning items, got {conditioning!r}")
        self.conditioning = list(conditioning)
        self.uncond = uncond
        self.collate = collate or default_collate
        self.latent_shape = tuple(int(d) for d in latent_shape)
        if not self.latent_shape or min(self.latent_shape) < 1:
            raise DMDConfigError(f"latent_shape: expected a non-empty shape of positive sizes, got {latent_shape!r}")
        if cfg.regression_weight > 0:
            if regression_pairs is None:
                raise DMDConfigError("regression_pairs: required when regression_weight > 0")
            if tuple(regression_pairs.noise.shape[1:]) != self.latent_shape or regression_pairs.noise.shape != regression_pairs.target.shape:
                raise DMDConfigError("regression_pairs: noise and target must both be [N, *latent_shape]")
            if regression_pairs.cond_index is None and len(conditioning) > 1:
                raise DMDConfigError("regression_pairs: cond_index is required with more than one conditioning item")
            if cfg.regression_loss == "lpips" and not callable(regression_loss_fn):
                raise DMDConfigError("regression_loss_fn: regression_loss 'lpips' needs a loss on latents, e.g. "
                                     "training.lpips.LatentLPIPS(decode, load_lpips(vgg_weights, lin_weights))")
        self.regression_loss_fn = regression_loss_fn
        if not isinstance(generator_net, nn.Module) or not isinstance(fake_score, nn.Module):
            raise DMDConfigError("generator_net: generator_net and fake_score must be torch.nn.Module")
        self.gen_timesteps = cfg.generator_timesteps()
        needs_real = cfg.use_gan or (len(self.gen_timesteps) > 1 and not cfg.backward_simulation)
        self.real_data, self.real_cond_index = self._check_real_data(real_data, real_cond_index, needs_real)
        self.pairs = regression_pairs
        self.progress = progress
        self.real_score = real_score
        self.generator = OneStepGenerator(generator_net, self.schedule, self.gen_timesteps[0])
        self.fake_score = fake_score
        if device is None:
            p = next(generator_net.parameters(), None)
            device = p.device if p is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.rng = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.lora = bool(_lora.lora_layers(generator_net)) or bool(_lora.lora_layers(fake_score))
        if cfg.gradient_checkpointing:
            _gan.enable_gradient_checkpointing(generator_net)
            _gan.enable_gradient_checkpointing(fake_score)

        self.gan_head = None
        self.tap = None
        if cfg.use_gan:
            self.tap = _gan.FeatureTap(fake_score, cfg.gan_feature_module)
            with torch.no_grad():
                n0 = 2
                probe = self._randn_local(n0)
                s0 = self.schedule.sigma(self.schedule.num_timesteps // 2).to(self.device).expand(n0)
                cond0 = self._cond(torch.zeros(n0, dtype=torch.long))
                f = self.tap.features(self.fake_score, probe, s0, cond=cond0)
            self.gan_head = _gan.GANHead(tuple(f.shape[1:])).to(self.device)

        self.opt_g = torch.optim.AdamW(
            [p for p in generator_net.parameters() if p.requires_grad],
            lr=cfg.generator_lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
        )
        self.opt_f = torch.optim.AdamW(
            self._critic_params(),
            lr=cfg.fake_lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
        )
        self.sched_g = constant_with_warmup(self.opt_g, cfg.warmup_steps)
        self.sched_f = constant_with_warmup(self.opt_f, cfg.warmup_steps)
        self.ema: dict[str, torch.Tensor] | None = None
        if cfg.ema_decay > 0:
            self.ema = {k: v.detach().clone() for k, v in generator_net.named_parameters() if v.requires_grad}
        self.step_count = 0
        self.generator_steps = 0
        self.fake_steps = 0
        self.last_generator_timestep: int | None = None
        self.updating = False  # inside an iteration's optimizer updates (``step``)
        T = self.schedule.num_timesteps
        self.min_step = int(cfg.min_step_percent * T)
        self.max_step = min(int(cfg.max_step_percent * T), T - 1)

    @classmethod
    def from_teacher(
        cls,
        teacher: nn.Module,
        latent_shape: Sequence[int],
        config: DMDConfig | None = None,
        *,
        real_score: Callable | None = None,
        lora_include=None,
        lora_exclude=None,
        lora_targets=None,
        **kwargs,
    ) -> "DMDTrainer":
        """Build the generator and fake score from ``teacher`` (a denoiser module) and the trainer.

        ``config.lora_rank`` > 0: both are ``lora.lora_copy`` copies (rank, ``lora_alpha``, target
        selection by ``lora_include`` / ``lora_exclude`` name patterns and ``lora_targets`` types)
        that share the teacher's tensors; else full ``copy_teacher`` copies. The real score is
        ``real_score`` or the teacher itself (frozen: ``requires_grad_(False)``, eval mode)."""
        cfg = config if config is not None else DMDConfig()
        if not isinstance(cfg, DMDConfig):
            raise DMDConfigError(f"config: expected a DMDConfig, got {type(cfg).__name__}")
        cfg.validate()
        if not isinstance(teacher, nn.Module):
            raise DMDConfigError(f"teacher: expected a torch.nn.Module denoiser, got {type(teacher).__name__}")
        teacher.requires_grad_(False)
        teacher.eval()
        if cfg.lora_rank > 0:
            kw = {}
            if lora_targets is not None:
                kw["targets"] = tuple(lora_targets)
            gen = _lora.lora_copy(teacher, cfg.lora_rank, cfg.lora_alpha, include=lora_include, exclude=lora_exclude, **kw)
            fake = _lora.lora_copy(teacher, cfg.lora_rank, cfg.lora_alpha, include=lora_include, exclude=lora_exclude, **kw)
            gen.train()
            fake.train()
        else:
            gen, fake = copy_teacher(teacher), copy_teacher(teacher)
        return cls(real_score if real_score is not None else teacher, gen, fake, latent_shape, cfg, **kwargs)

    def _check_real_data(self, real_data, real_cond_index, needed: bool):
        if real_data is None:
            if needed:
                raise DMDConfigError("real_data: required when the GAN loss is on or a multi-step generator is "
                                     "trained without backward simulation")
            return None, None
        if isinstance(real_data, RegressionPairs):
            real_cond_index = real_data.cond_index if real_cond_index is None else real_cond_index
            real_data = real_data.target
        if isinstance(real_data, torch.Tensor):
            if tuple(real_data.shape[1:]) != self.latent_shape or real_data.shape[0] < 1:
                raise DMDConfigError(f"real_data: expected a tensor [N, {', '.join(map(str, self.latent_shape))}], "
                                     f"got {tuple(real_data.shape)}")
            if real_cond_index is None and len(self.conditioning) > 1:
                raise DMDConfigError("real_cond_index: required for a real_data tensor with more than one conditioning item")
            if real_cond_index is not None:
                real_cond_index = torch.as_tensor(real_cond_index, dtype=torch.long).reshape(-1)
                if real_cond_index.numel() != real_data.shape[0]:
                    raise DMDConfigError("real_cond_index: expected one conditioning index per real_data sample")
                if int(real_cond_index.min()) < 0 or int(real_cond_index.max()) >= len(self.conditioning):
                    raise DMDConfigError(f"real_cond_index: expected indices into the conditioning list, in "
                                         f"[0, {len(self.conditioning) - 1}]")
        elif not callable(real_data):
            raise DMDConfigError(f"real_data: expected a tensor, RegressionPairs or callable, got {type(real_data).__name__}")
        return real_data, real_cond_index

    def _critic_params(self) -> list:
        ps = [p for p in self.fake_score.parameters() if p.requires_grad]
        if self.gan_head is not None:
            ps += list(self.gan_head.parameters())
        return ps

    # ---- random draws (all from self.rng, so a resumed run replays exactly)

    def _randn(self, n: int) -> torch.Tensor:
        return torch.randn((n,) + self.latent_shape, generator=self.rng, device=self.device)

    def _randn_local(self, n: int) -> torch.Tensor:
        g = torch.Generator(device=self.device).manual_seed(12345)
        return torch.randn((n,) + self.latent_shape, generator=g, device=self.device)

    def _randint(self, low: int, high: int, n: int) -> torch.Tensor:
        return torch.randint(low, high, (n,), generator=self.rng, device=self.device)

    def sample_dm_timesteps(self, n: int) -> torch.Tensor:
        """t ~ U{int(0.02 T), ..., int(0.98 T)} (``randint(min_step, max_step + 1)``)."""
        return self._randint(self.min_step, self.max_step + 1, n)

    def _cond(self, idx: torch.Tensor):
        items = [self.conditioning[int(i)] for i in idx.tolist()]
        return _to_device(self.collate(items), self.device)

    def _uncond(self, n: int):
        return _to_device(self.collate([self.uncond] * n), self.device)

    def _autocast(self):
        if self.config.mixed_precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- generator

    def _sigma_of(self, t: int, n: int) -> torch.Tensor:
        return self.schedule.sigma(int(t)).to(self.device).expand(n).clone()

    def generate(self, z: torch.Tensor, cond: Any, grad: bool) -> torch.Tensor:
        """The generator's training output for noise z: one step at the conditioning timestep, or
        (multi-step) its x0 at a random step of ``denoising_timesteps`` (one draw per batch, as
        DMD2's ``randint(0, num_denoising_step, (1,))``), whose input comes from backward simulation
        (the current generator run without grad from pure noise through the earlier steps,
        re-noising its x0 with fresh noise at each next step; the first step is pure noise) or from
        ``real_data`` noised to that step. Sets ``last_generator_timestep``."""
        ts = self.gen_timesteps
        n = z.shape[0]
        net = self.generator.net
        ctx = torch.enable_grad() if grad else torch.no_grad()
        if len(ts) == 1:
            self.last_generator_timestep = ts[0]
            with ctx, self._autocast():
                return self.generator(z, cond).float()
        sel = int(self._randint(0, len(ts), 1))
        with torch.no_grad(), self._autocast():
            if sel == 0:
                x = self.schedule.generator_input(z, float(self.schedule.sigma(ts[0])))
            elif self.config.backward_simulation:
                x = self.schedule.generator_input(z, float(self.schedule.sigma(ts[0])))
                for i in range(sel):
                    x0 = net(x, self._sigma_of(ts[i], n).to(x.dtype), cond=cond).float()
                    x = self.schedule.add_noise(x0, self._randn(n), self._sigma_of(ts[i + 1], n))
            else:
                real, _ = self._real_batch(n)
                x = self.schedule.add_noise(real, self._randn(n), self._sigma_of(ts[sel], n))
        self.last_generator_timestep = ts[sel]
        with ctx, self._autocast():
            return net(x, self._sigma_of(ts[sel], n).to(x.dtype), cond=cond).float()

    def _real_batch(self, n: int):
        if callable(self.real_data) and not isinstance(self.real_data, torch.Tensor):
            return self.real_data(n, self.rng).to(self.device), None
        idx = self._randint(0, self.real_data.shape[0], n).cpu()
        ci = self.real_cond_index[idx] if self.real_cond_index is not None else None
        return self.real_data[idx].to(self.device), ci

    # ---- losses

    def dm_loss(self, x: torch.Tensor, cond: Any, uncond: Any) -> tuple[torch.Tensor, dict]:
        """DM surrogate loss of generator samples x (with grad) and its logs."""
        cfg = self.config
        n = x.shape[0]
        t = self.sample_dm_timesteps(n)
        sigma = self.schedule.sigma(t.cpu()).to(self.device)
        noise = self._randn(n)
        with torch.no_grad(), self._autocast():
            noisy = self.schedule.add_noise(x.detach(), noise.to(x.dtype), sigma)
            s = sigma.to(x.dtype)
            x0_real = cfg_denoise(self.real_score, noisy, s, cond, uncond, cfg.real_guidance_scale)
            x0_fake = self.fake_score(noisy, s, cond=cond) if cfg.use_fake_score else None
        grad = dm_gradient(x, x0_real, x0_fake)
        loss = dm_surrogate_loss(x, grad)
        return loss, {"dm_grad_norm": float(grad.reshape(n, -1).norm(dim=1).mean())}

    def fake_loss(self, x: torch.Tensor, cond: Any) -> torch.Tensor:
        """Denoising loss of the fake score on detached generator samples, t ~ U{0, ..., T-1}."""
        n = x.shape[0]
        t = self._randint(0, self.schedule.num_timesteps, n)
        sigma = self.schedule.sigma(t.cpu()).to(self.device)
        noise = self._randn(n).to(x.dtype)
        noisy = self.schedule.add_noise(x, noise, sigma)
        with self._autocast():
            pred = self.fake_score(noisy, sigma.to(x.dtype), cond=cond)
        w = self.schedule.fake_loss_weight(sigma, self.config.weighting(), self.config.sigma_data)
        wd = wide_dtype(x.device)
        per = ((pred.to(wd) - x.to(wd)) ** 2).reshape(n, -1).mean(1)
        return (w * per).mean()

    def gan_logits(self, x: torch.Tensor, cond: Any) -> torch.Tensor:
        """Critic logits of latents x: noised at t ~ U{0, ..., diffusion_gan_max_timestep - 1}
        ("diffusion GAN", main/sd_guidance.py:145-165), fake-score features at
        ``gan_feature_module``, ``GANHead``."""
        n = x.shape[0]
        hi = min(self.config.diffusion_gan_max_timestep, self.schedule.num_timesteps)
        t = self._randint(0, hi, n)
        sigma = self.schedule.sigma(t.cpu()).to(self.device)
        noisy = self.schedule.add_noise(x, self._randn(n).to(x.dtype), sigma)
        with self._autocast():
            f = self.tap.features(self.fake_score, noisy, sigma.to(x.dtype), cond=cond)
        return self.gan_head(f)

    # ---- one iteration

    def step(self) -> dict:
        """One DMD2 iteration; returns the losses as floats (keys present only when computed)."""
        cfg = self.config
        n = cfg.batch_size
        gen_turn = self.step_count % cfg.dfake_gen_update_ratio == 0
        cond_idx = self._randint(0, len(self.conditioning), n)
        cond = self._cond(cond_idx)
        uncond = self._uncond(n) if float(cfg.real_guidance_scale) != 1.0 else None
        z = self._randn(n)
        out: dict = {"step": self.step_count}
        g_params = [p for p in self.generator.parameters() if p.requires_grad]
        # True from the first optimizer update of this iteration to its end: a state saved after an error
        # in between would hold a half-done iteration
        self.updating = False
        if gen_turn:
            self.generator.train()
            x = self.generate(z, cond, grad=True)
            out["generator_timestep"] = self.last_generator_timestep
            loss_dm, log = self.dm_loss(x, cond, uncond)
            loss = loss_dm
            out["loss_dm"] = float(loss_dm.detach())
            out.update(log)
            if cfg.regression_weight > 0:
                m = cfg.regression_batch_size or n
                idx = self._randint(0, self.pairs.noise.shape[0], m).cpu()
                pz = self.pairs.noise[idx].to(self.device)
                ci = self.pairs.cond_index[idx] if self.pairs.cond_index is not None else torch.zeros(m, dtype=torch.long)
                pc = self._cond(ci)
                with self._autocast():
                    pred = self.generator(pz, pc).float()
                target = self.pairs.target[idx].to(pred.device, pred.dtype)
                if cfg.regression_loss == "lpips":
                    loss_reg = self.regression_loss_fn(pred, target)
                else:
                    loss_reg = regression_loss(pred, target, cfg.regression_loss)
                loss = loss + cfg.regression_weight * loss_reg
                out["loss_reg"] = float(loss_reg.detach())
            if cfg.gen_cls_loss_weight > 0:
                loss_gan = _gan.gen_gan_loss(self.gan_logits(x, cond))
                loss = loss + cfg.gen_cls_loss_weight * loss_gan
                out["loss_gen_cls"] = float(loss_gan.detach())
            # gradients w.r.t. the generator only: the critic is not updated by the generator's
            # losses (DMD2's generator_turn sets guidance_model.requires_grad_(False); toggling
            # requires_grad would break gradient checkpointing's recomputation, autograd.grad does not)
            self.opt_g.zero_grad(set_to_none=True)
            grads = torch.autograd.grad(loss, g_params, allow_unused=True)
            self.updating = True
            for p, gr in zip(g_params, grads):
                p.grad = gr
            out["grad_norm_g"] = float(torch.nn.utils.clip_grad_norm_(g_params, cfg.max_grad_norm))
            self.opt_g.step()
            self.sched_g.step()
            self.opt_g.zero_grad(set_to_none=True)
            self.generator_steps += 1
            if self.ema is not None:
                with torch.no_grad():
                    for k, v in self.generator.net.named_parameters():
                        if k in self.ema:
                            self.ema[k].lerp_(v.detach(), 1 - cfg.ema_decay)
            x = x.detach()
        else:
            x = self.generate(z, cond, grad=False)
        if cfg.use_fake_score and cfg.train_fake_score:
            f_params = self._critic_params()
            self.fake_score.train()
            loss_f = self.fake_loss(x, cond)
            total = loss_f
            if cfg.guidance_cls_loss_weight > 0:
                real, rci = self._real_batch(n)
                rcond = self._cond(rci) if rci is not None else cond
                loss_c = _gan.critic_gan_loss(self.gan_logits(x, cond), self.gan_logits(real, rcond))
                total = total + cfg.guidance_cls_loss_weight * loss_c
                out["loss_guidance_cls"] = float(loss_c.detach())
            self.opt_f.zero_grad(set_to_none=True)
            total.backward()
            self.updating = True
            out["grad_norm_f"] = float(torch.nn.utils.clip_grad_norm_(f_params, cfg.max_grad_norm))
            self.opt_f.step()
            self.sched_f.step()
            self.opt_f.zero_grad(set_to_none=True)
            self.fake_steps += 1
            out["loss_fake"] = float(loss_f.detach())
        self.step_count += 1
        self.updating = False
        return out

    def train(
        self,
        steps: int,
        progress: Callable[[int, int, dict], None] | None = None,
        should_stop: Callable[[int], bool] | None = None,
    ) -> list[dict]:
        """Run until ``step_count == steps`` (a resumed trainer continues where it stopped).

        ``progress(step, steps, losses)`` (or the constructor's) is called after every step; it may
        raise to interrupt (as ComfyUI's ``throw_exception_if_processing_interrupted`` does).
        ``should_stop(step)`` returning True stops cleanly after that step. Returns the step logs.
        """
        hook = progress or self.progress
        logs = []
        while self.step_count < steps:
            out = self.step()
            logs.append(out)
            if hook is not None:
                hook(self.step_count, steps, out)
            if should_stop is not None and should_stop(self.step_count):
                break
        return logs

    @contextlib.contextmanager
    def ema_weights(self, use_ema: bool | None = None):
        """Context in which the generator carries its EMA weights (when ``ema_decay`` > 0 and
        ``use_ema`` is not False); the trained weights are restored on exit."""
        if self.ema is None or use_ema is False:
            yield
            return
        params = dict(self.generator.net.named_parameters())
        saved = {k: params[k].detach().clone() for k in self.ema}
        with torch.no_grad():
            for k, v in self.ema.items():
                params[k].copy_(v)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in saved.items():
                    params[k].copy_(v)

    @torch.no_grad()
    def sample(self, n: int, cond: Any = None, generator: torch.Generator | None = None,
               timesteps: Sequence[int] | None = None, use_ema: bool | None = None) -> torch.Tensor:
        """n samples (noise from ``generator`` or a fresh one seeded 0; the trainer's RNG is not
        touched): one step at the conditioning timestep, or the multi-step generator's
        ``denoising_timesteps`` (``samplers.dmd.sample_dmd``), or the given ``timesteps``. With
        ``ema_decay`` > 0 the EMA weights are used unless ``use_ema`` is False."""
        with self.ema_weights(use_ema):
            return self._sample(n, cond, generator, timesteps)

    def _sample(self, n, cond, generator, timesteps):
        g = generator if generator is not None else torch.Generator(device=self.device).manual_seed(0)
        z = torch.randn((n,) + self.latent_shape, generator=g, device=self.device)
        self.generator.eval()
        ts = list(timesteps) if timesteps is not None else self.gen_timesteps
        if len(ts) == 1 and ts[0] == self.generator.conditioning_timestep:
            with self._autocast():
                return self.generator(z, cond).float()
        sig = dmd_sampling.timesteps_to_sigmas(ts, self.schedule.sigmas).to(self.device)
        with self._autocast():
            return dmd_sampling.sample_dmd(self.generator.net, z, sig, self.config.model_type, extra_args={"cond": cond},
                                           generator=g).float()

    def generator_metadata(self) -> dict:
        """What a loader needs to sample the generator (strings, for safetensors metadata)."""
        cfg = self.config
        return {
            "dmd.model_type": cfg.model_type,
            "dmd.conditioning_timestep": str(self.gen_timesteps[0]),
            "dmd.timesteps": ",".join(str(t) for t in self.gen_timesteps),
            "dmd.format": "lora" if self.lora else "full",
            "dmd.lora_rank": str(cfg.lora_rank),
            "dmd.generator_steps": str(self.generator_steps),
        }

    def save_generator(self, path, prefix: str = "diffusion_model.", module: str | None = None,
                       metadata: dict | None = None, use_ema: bool | None = None) -> dict:
        """Write the generator to a .safetensors file: LoRA factors (kohya layout, ``lora.save_lora``)
        for a LoRA generator, else the full state dict, of ``generator.net.get_submodule(module)``
        (the whole denoiser when None), keys prefixed with ``prefix``. Metadata =
        ``generator_metadata()`` + ``metadata``. Returns the metadata written."""
        from safetensors.torch import save_file

        if not str(path).endswith(".safetensors"):
            raise DMDConfigError(f"path: expected a .safetensors file name, got {str(path)!r}")
        net = self.generator.net if module is None else self.generator.net.get_submodule(module)
        meta = {**self.generator_metadata(), **{str(k): str(v) for k, v in (metadata or {}).items()}}
        meta["dmd.ema"] = "1" if (self.ema is not None and use_ema is not False) else "0"
        with self.ema_weights(use_ema):
            if _lora.lora_layers(net):
                _lora.save_lora(net, path, prefix=prefix, metadata=meta)
            else:
                sd = {prefix + k: v.detach().contiguous().cpu().clone() for k, v in net.state_dict().items()}
                save_file(sd, str(path), metadata=meta)
        return meta

    # ---- checkpoint / resume

    @staticmethod
    def _net_state(net: nn.Module) -> dict:
        """A LoRA network's trainable factors only (its base is the shared teacher), else the full
        state dict."""
        if _lora.lora_layers(net):
            return {k: v.detach().clone() for k, v in net.named_parameters() if v.requires_grad}
        return net.state_dict()

    @staticmethod
    def _load_net_state(net: nn.Module, sd: dict) -> None:
        if _lora.lora_layers(net):
            own = dict(net.named_parameters())
            want = {k for k, v in own.items() if v.requires_grad}
            if set(sd) != want:
                raise DMDConfigError("state: the checkpoint's LoRA layers differ from this trainer's")
            with torch.no_grad():
                for k, v in sd.items():
                    own[k].copy_(v)
        else:
            net.load_state_dict(sd)

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly: networks (LoRA factors only for
        LoRA networks), GAN head, optimizers, LR schedules, counters and the random generator's
        state (plus the config, checked on load)."""
        st = {
            "config": asdict(self.config),
            "step": self.step_count,
            "generator_steps": self.generator_steps,
            "fake_steps": self.fake_steps,
            "generator": self._net_state(self.generator.net),
            "fake_score": self._net_state(self.fake_score),
            "opt_g": self.opt_g.state_dict(),
            "opt_f": self.opt_f.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_f": self.sched_f.state_dict(),
            "rng": self.rng.get_state(),
            "lora": self.lora,
        }
        if self.gan_head is not None:
            st["gan_head"] = self.gan_head.state_dict()
        if self.ema is not None:
            st["ema"] = {k: v.clone() for k, v in self.ema.items()}
        return st

    def load_state_dict(self, state: dict) -> None:
        saved = dict(state.get("config", {}))
        mine = asdict(self.config)
        for d in (saved, mine):
            for k in ("betas", "denoising_timesteps"):
                if d.get(k) is not None:
                    d[k] = tuple(d[k])
        diff = [f.name for f in fields(DMDConfig) if f.name in saved and saved[f.name] != mine[f.name]]
        if diff:
            raise DMDConfigError(f"state: checkpoint config differs from this trainer's in {diff}")
        self._load_net_state(self.generator.net, state["generator"])
        self._load_net_state(self.fake_score, state["fake_score"])
        if self.gan_head is not None:
            self.gan_head.load_state_dict(state["gan_head"])
        if self.ema is not None:
            if set(state.get("ema", {})) != set(self.ema):
                raise DMDConfigError("state: the checkpoint has no EMA weights matching this generator")
            for k, v in state["ema"].items():
                self.ema[k].copy_(v)
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_f.load_state_dict(state["opt_f"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_f.load_state_dict(state["sched_f"])
        # a CPU ByteTensor: get_state() gives one even for a CUDA generator, but torch.load with
        # map_location="cuda" moves it, and set_state refuses anything else
        self.rng.set_state(state["rng"].cpu())
        self.step_count = int(state["step"])
        self.generator_steps = int(state["generator_steps"])
        self.fake_steps = int(state["fake_steps"])

    def save_checkpoint(self, path) -> None:
        """Write the state to ``path`` atomically (a temporary file, then a rename), so a run stopped
        while writing keeps its previous checkpoint."""
        import os

        tmp = f"{os.fspath(path)}.tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path) -> None:
        # onto the CPU: load_state_dict copies onto the networks' device, so the GPU never holds a second
        # copy of the networks and optimizer states
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
