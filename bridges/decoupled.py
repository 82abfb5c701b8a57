"""Time-decoupled sampling and resolution hand-offs, pure PyTorch (issue 4; PanGu-Draw section 3.2,
research notes coop-diffusion.md sections 1.2 to 1.3).

* ``time_decoupled_sample``: a *structure* model denoises while sigma >= the switch level, a
  *texture* model below it. The switch is a timestep (default 500, the paper's T_struct, converted
  with the structure model's schedule) or a sigma, never a step index. Different latent spaces or
  resolutions are bridged at the switch with Sub-Module 2 (``core.bridge_noisy``: x0-prediction,
  decode, resize, encode, fresh noise at the texture model's matching level). Same space and same
  size: the latent passes unchanged (a family change eps <-> flow is converted at equal SNR), so
  the same model on both sides reproduces plain sampling bit for bit with a one-step sampler.
* Resolution hand-off routes (the bench's case): ``coupled_noise`` (high-res white noise whose
  2x2 block means times 2 are the low-res noise, so a full high-res reference shares the low-res
  run's composition), the three routes ComfyUI users take today (``route_latent_upscale``,
  ``route_pixel_hires``, ``route_step_handoff``) and ours (``route_noisy_bridge``), each returning
  the final latent and its NFE / VAE-call counts.
* ``TestbedVAE`` (the trained testbed autoencoders as a ``BridgeVAE``) and ``LinearVAE`` (a cheap,
  least-squares per-patch linear stand-in for a VAE, like ComfyUI's latent-to-RGB preview factors;
  the testbed's "cheap bridge VAE").

Samplers follow ``samplers/kdiff.py`` (``fn(model, x, sigmas, extra_args=None, ...)``); schedules
``samplers/schedules.py``; ComfyUI's KSampler ``denoise`` and KSamplerAdvanced step ranges are
rebuilt by ``denoise_sigmas`` and plain slicing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..samplers import kdiff
from ..samplers.kdiff import CountingDenoiser
from ..samplers import schedules as S
from .core import (
    BridgeInputError,
    ModelSchedule,
    bridge_latent,
    bridge_noisy,
    convert_noisy,
    match_sigma,
    resolution_shift,
)
from .vae import BridgeVAE

RENOISE = ("resolution", "paper")  # hand-off noise level: resolution-aware (default) or the paper's equal SNR

__all__ = [
    "RENOISE",
    "TestbedVAE",
    "LinearVAE",
    "CountingDenoiser",
    "switch_to_sigma",
    "split_at_switch",
    "HandoffPlan",
    "plan_handoff",
    "time_decoupled_sample",
    "DecoupledResult",
    "coupled_noise",
    "denoise_sigmas",
    "HandoffResult",
    "route_reference",
    "route_latent_upscale",
    "route_pixel_hires",
    "route_step_handoff",
    "route_noisy_bridge",
    "upscale_latent",
    "descending_from",
]


# ---------------------------------------------------------------------------------------------
# VAEs


class TestbedVAE(BridgeVAE):
    """A trained testbed's autoencoder (``testbed.trained.load(...)``) as a BridgeVAE. Its
    normalised latents (what the testbed's denoiser sees) are both the raw and the model space
    (scale 1, shift 0). Fully convolutional: any multiple-of-4 image size. Counts its calls."""

    __test__ = False  # not a pytest class

    def __init__(self, tb, name: str = "testbed"):
        self.tb = tb
        self.name = name
        self.latent_channels = int(tb.ae.latent_channels)
        self.downscale = int(tb.ae.factor)
        self.scale_factor, self.shift_factor = 1.0, 0.0
        self.calls = {"encode": 0, "decode": 0}

    def _encode_model(self, images):
        self.calls["encode"] += 1
        with torch.no_grad():
            return self.tb.ae.encode(images.to(self.tb.device))

    def _decode_model(self, z):
        self.calls["decode"] += 1
        ae = self.tb.ae
        with torch.no_grad():
            return ae.decode_raw(z.to(self.tb.device) / ae.scale + ae.shift)

    def reset_calls(self):
        self.calls = {"encode": 0, "decode": 0}


class LinearVAE(BridgeVAE):
    """A cheap stand-in for a VAE: per latent pixel an affine map from its 3x3 latent
    neighbourhood to its f x f RGB patch (decode), and from the 3x3 neighbourhood of patches to the
    latent (encode), both fitted by least squares on (image, latent) pairs of the real VAE. One
    small matmul instead of a conv net: the testbed analogue of a TAESD standing in for the full
    VAE (and of ComfyUI's latent-to-RGB preview factors, which use a 1x1 neighbourhood)."""

    def __init__(self, latent_channels: int, downscale: int, dec_w, enc_w, name: str = "linear"):
        self.name = name
        self.latent_channels = int(latent_channels)
        self.downscale = int(downscale)
        self.scale_factor, self.shift_factor = 1.0, 0.0
        self.dec_w, self.enc_w = dec_w, enc_w
        self.calls = {"encode": 0, "decode": 0}

    @staticmethod
    def _feat(t: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] -> [B*h*w, 9C + 1] (3x3 neighbourhoods, replicate padding, bias)."""
        b, c, h, w = t.shape
        u = F.unfold(F.pad(t, (1, 1, 1, 1), mode="replicate"), 3)  # [B, 9C, h*w]
        u = u.transpose(1, 2).reshape(b * h * w, 9 * c)
        return torch.cat([u, u.new_ones(u.shape[0], 1)], 1)

    @classmethod
    def fit(cls, vae: BridgeVAE, images: torch.Tensor, name: str = "linear", ridge: float = 1e-4) -> "LinearVAE":
        f = vae.downscale
        with torch.no_grad():
            z = torch.cat([vae.encode_model(c) for c in images.split(256)])
        b, c, h, w = z.shape
        patches = F.pixel_unshuffle(images.float() * 2 - 1, f)  # [B, 3ff, h, w]
        xz, xp = cls._feat(z.double()), cls._feat(patches.double())
        yp = patches.double().permute(0, 2, 3, 1).reshape(b * h * w, -1)
        yz = z.double().permute(0, 2, 3, 1).reshape(b * h * w, -1)

        def solve(x, y):
            a = x.T @ x
            a += ridge * a.diagonal().mean() * torch.eye(a.shape[0], dtype=a.dtype)
            return torch.linalg.solve(a, x.T @ y).float()

        return cls(c, f, solve(xz, yp), solve(xp, yz), name=name)

    def _encode_model(self, images):
        self.calls["encode"] += 1
        p = F.pixel_unshuffle(images.float() * 2 - 1, self.downscale)
        b, _, h, w = p.shape
        out = self._feat(p) @ self.enc_w.to(p.device)
        return out.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()

    def _decode_model(self, z):
        self.calls["decode"] += 1
        b, _, h, w = z.shape
        out = self._feat(z.float()) @ self.dec_w.to(z.device)
        p = out.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        return (F.pixel_shuffle(p, self.downscale) + 1) / 2

    def reset_calls(self):
        self.calls = {"encode": 0, "decode": 0}


def vae_calls(*vaes) -> int:
    """Total encode + decode calls counted by TestbedVAE / LinearVAE objects (0 for others)."""
    return int(sum(sum(getattr(v, "calls", {}).values()) for v in vaes if v is not None))


# ---------------------------------------------------------------------------------------------
# The switch


def switch_to_sigma(sched: ModelSchedule, timestep=None, sigma=None, name: str | None = None) -> float:
    """The switch level in `sched`'s sigma space from a timestep (0..999 on a discrete eps / v
    table: that entry, interpolated log-linearly between entries; flow: ComfyUI's
    ModelSamplingDiscreteFlow, sigma = shift u / (1 + (shift - 1) u) with u = t / 1000) or from a sigma (checked against the schedule). Exactly
    one of the two."""
    if (timestep is None) == (sigma is None):
        raise BridgeInputError("switch_timestep: give exactly one of switch_timestep and switch_sigma")
    if sigma is not None:
        nm = name or "switch_sigma"
        s = torch.as_tensor(sigma, dtype=torch.float32).flatten()
        if s.numel() != 1:
            raise BridgeInputError(f"{nm}: expected one number, got {s.numel()}")
        sched.check(s, nm)
        return float(s[0])
    nm = name or "switch_timestep"
    try:
        t = float(timestep)
    except (TypeError, ValueError):
        raise BridgeInputError(f"{nm}: expected a number in [0, 999], got {timestep!r}") from None
    if not math.isfinite(t):
        raise BridgeInputError(f"{nm}: expected a number in [0, 999], got {timestep!r}")
    if sched.kind == "flow":
        if not 0 < t <= 1000:
            raise BridgeInputError(f"{nm}: {t:g} is outside the flow model's timesteps (0, 1000]")
        u = t / 1000.0
        s = sched.shift * u / (1 + (sched.shift - 1) * u)  # ComfyUI's time_snr_shift
        sched.check(torch.tensor([s]), nm)
        return s
    if sched.table is None:
        raise BridgeInputError(f"{nm}: the {sched.name or sched.kind} schedule has no timestep table; give switch_sigma")
    n = sched.table.numel()
    if not 0 <= t <= n - 1:
        raise BridgeInputError(f"{nm}: {t:g} is outside the model's timesteps [0, {n - 1}]")
    return float(S.t_to_sigma(torch.tensor(t), sched.table))


def split_at_switch(sigmas: torch.Tensor, switch_sigma: float, name: str = "switch_timestep") -> int:
    """k = the number of sampling steps whose sigma is >= the switch (the structure model's steps):
    the structure model runs ``sigmas[:k + 1]``, the texture model ``sigmas[k:]``. Raises when
    either side would get no step (the switch outside the schedule)."""
    sig = torch.as_tensor(sigmas, dtype=torch.float32).flatten()
    pos = sig[:-1]
    k = int((pos >= switch_sigma * (1 - 1e-6)).sum())
    if k < 1 or k > pos.numel() - 1:
        raise BridgeInputError(
            f"{name}: sigma {switch_sigma:g} is outside the sampling schedule: the structure model needs at least one "
            f"step at sigma >= the switch and the texture model one below it (schedule {float(pos[0]):g} .. "
            f"{float(pos[-1]):g})"
        )
    return k


@dataclass
class HandoffPlan:
    """Where a time-decoupled run hands off (``plan_handoff``): the structure model runs ``sigmas[:k + 1]``; the
    texture model runs ``texture_sigmas`` (its own noise levels, descending to 0), whose first entry is the
    hand-off level; ``shift`` is the resolution factor applied to that level (1 without a resize)."""

    k: int
    switch_sigma: float
    shift: float
    texture_sigmas: torch.Tensor


def plan_handoff(sigmas: torch.Tensor, switch_sigma: float, sched_structure: ModelSchedule,
                 sched_texture: ModelSchedule | None = None, px_from=None, px_to=None, renoise: str = "resolution",
                 name: str = "switch_timestep") -> HandoffPlan:
    """The one hand-off planner (``time_decoupled_sample`` and the Time-Decoupled Sampler node both call it).

    k = the steps at sigma >= the switch (``split_at_switch``). The texture model continues on ``sigmas[k:]``
    matched into its schedule at equal SNR (not snapped to its table: ComfyUI's samplers accept any sigma);
    with a resize from `px_from` to `px_to` pixels and renoise="resolution" the first entry, the hand-off
    level, is raised by ``resolution_shift`` (renoise="paper": the equal-SNR level), and entries no longer
    below it are dropped (``descending_from``), so the texture model keeps its n - k steps (fewer after a
    downscale)."""
    if renoise not in RENOISE:
        raise BridgeInputError(f"renoise: expected one of {RENOISE}, got {renoise!r}")
    sched_texture = sched_texture or sched_structure
    sig = torch.as_tensor(sigmas, dtype=torch.float32).detach().cpu().flatten()
    k = split_at_switch(sig, switch_sigma, name)
    tail = sig[k:]
    tex = torch.stack([match_sigma(s, sched_structure, sched_texture, snap=False, name=name).reshape(())
                       if float(s) > 0 else torch.tensor(0.0) for s in tail])
    shift = 1.0
    if renoise == "resolution" and px_from is not None and px_to is not None:
        shift = resolution_shift(px_from, px_to)
    if shift != 1.0:
        tex[0] = match_sigma(tail[0], sched_structure, sched_texture, snap=False, name=name, shift=shift)
        tex = descending_from(tex)
    return HandoffPlan(k=k, switch_sigma=float(switch_sigma), shift=shift, texture_sigmas=tex)


@dataclass
class DecoupledResult:
    x: torch.Tensor  # final latent in the texture space
    k: int  # structure steps
    switch_sigma: float  # in the structure schedule
    handoff_sigma: float  # the texture model's first sigma
    x_structure: torch.Tensor  # the structure chain at the hand-off (its space)
    bridged: bool
    nfe_structure: int = 0
    nfe_texture: int = 0
    info: dict = field(default_factory=dict)


def time_decoupled_sample(
    structure: Callable,
    texture: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    sched_structure: ModelSchedule,
    sched_texture: ModelSchedule | None = None,
    switch_timestep=500,
    switch_sigma=None,
    vae_structure: BridgeVAE | None = None,
    vae_texture: BridgeVAE | None = None,
    size=None,
    filter: str = "bilinear",
    sigmas_texture: torch.Tensor | None = None,
    sampler: Callable = kdiff.sample_euler,
    sampler_texture: Callable | None = None,
    extra_structure: dict | None = None,
    extra_texture: dict | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    handoff: str = "fresh",
    renoise: str = "resolution",
    **bridge_kw,
) -> DecoupledResult:
    """Time-decoupled sampling (PanGu-Draw): `structure` for sigma >= the switch, `texture` below.

    x: the initial noisy latent in the structure space at ``sigmas[0]`` (already scaled).
    sigmas: the structure model's sampling schedule (descending, ending at 0). The switch is
    `switch_timestep` (default 500) or `switch_sigma` (then give switch_timestep=None), in the
    structure model's schedule; k steps (those at sigma >= switch) run on the structure model.

    Hand-off at sigma_k = ``sigmas[k]``:
    * same space (vae_texture is vae_structure or both None) and no size change: the latent passes
      as is (converted at equal SNR when the families differ); the texture model continues on
      ``sigmas[k:]`` matched into its schedule, or on the tail of `sigmas_texture` from its entry
      nearest to sigma_k.
    * otherwise Sub-Module 2: ``bridge_noisy`` (x0-prediction, decode, resize to `size` pixels,
      encode, fresh IID `noise`/`generator` noise at the texture model's matching level).
      handoff="fresh" (the paper) asks the structure model for its x0 at sigma_k (one extra NFE);
      "last" reuses the x0 of its last step (at sigma_{k-1}) and re-noises straight to sigma_k's
      match (no extra NFE).
      renoise="paper" re-noises at the equal-SNR level (the paper's rule); "resolution" (default)
      multiplies the level by the resize's ``resolution_shift`` (2 for 2x; 1 without a resize, so
      both agree then): an f x upscale shrinks the noise in the content the structure model
      settled by f, see ``core.match_sigma``. The texture model continues on ``sigmas[k:]`` with
      its first entry replaced by the hand-off level (the same number of steps either way).
    """
    sched_texture = sched_texture or sched_structure
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise BridgeInputError(f"x: expected a latent tensor [B, C, H, W], got {type(x).__name__}")
    if handoff not in ("fresh", "last"):
        raise BridgeInputError(f"handoff: expected 'fresh' or 'last', got {handoff!r}")
    if renoise not in RENOISE:
        raise BridgeInputError(f"renoise: expected one of {RENOISE}, got {renoise!r}")
    sig = torch.as_tensor(sigmas, dtype=torch.float32).flatten()
    if sig.numel() < 3:
        raise BridgeInputError(f"sigmas: expected at least 2 steps (3 sigmas), got {sig.numel()}")
    if vae_structure is not None and x.shape[1] != vae_structure.latent_channels:
        raise BridgeInputError(
            f"vae_structure: {vae_structure.name!r} expects {vae_structure.latent_channels} latent channels, "
            f"the latent has {x.shape[1]}"
        )
    name = "switch_sigma" if switch_sigma is not None else "switch_timestep"
    s_switch = switch_to_sigma(sched_structure, switch_timestep if switch_sigma is None else None, switch_sigma)
    sampler_texture = sampler_texture or sampler

    count_s, count_t = CountingDenoiser(structure), CountingDenoiser(texture)
    last = {}

    def structure_rec(xx, ss, **kw):
        out = count_s(xx, ss, **kw)
        last["x"], last["sigma"], last["x0"] = xx, ss, out
        return out

    same_space = vae_structure is vae_texture
    same_size = size is None or (
        vae_structure is not None
        and tuple(int(v) for v in ((size, size) if isinstance(size, int) else size))
        == (x.shape[-2] * vae_structure.downscale, x.shape[-1] * vae_structure.downscale)
    )
    if not (same_space and same_size) and (vae_structure is None or vae_texture is None):
        raise BridgeInputError("vae_texture: a change of latent space or size needs both vae_structure and vae_texture")

    px_from = px_to = None
    if not (same_space and same_size):
        px_from = (x.shape[-2] * vae_structure.downscale, x.shape[-1] * vae_structure.downscale)
        px_to = px_from if size is None else ((size, size) if isinstance(size, int) else tuple(size))
    plan = plan_handoff(sig, s_switch, sched_structure, sched_texture, px_from, px_to, renoise, name)
    k = plan.k
    x_s = sampler(structure_rec, x, sig[: k + 1], extra_args=extra_structure)
    sigma_k = sig[k]
    b = x.shape[0]
    info = {}
    if same_space and same_size:
        x_t, s_t = convert_noisy(x_s, sigma_k, sched_structure.kind, sched_texture.kind)
        s_t = s_t[0]
        bridged = False
    else:
        s_to = plan.texture_sigmas[0].expand(b)
        info["shift"] = plan.shift
        if handoff == "fresh":
            nb = bridge_noisy(x_s, sigma_k, count_s, vae_structure, vae_texture, sched_structure, sched_texture,
                              size=size, filter=filter, sigma_to=s_to, noise=noise, generator=generator,
                              extra_args=extra_structure, **bridge_kw)
        else:
            x0_last = last["x0"]
            nb = bridge_noisy(last["x"], last["sigma"], lambda *a, **kw: x0_last, vae_structure, vae_texture,
                              sched_structure, sched_texture, size=size, filter=filter, sigma_to=s_to, noise=noise,
                              generator=generator, **bridge_kw)
        x_t, s_t = nb.x, nb.sigma[0]
        bridged = True
        info["x0_bridged"] = nb.x0
    if sigmas_texture is None:
        tail = plan.texture_sigmas.clone()
        tail[0] = s_t
    else:
        from .core import schedule_from

        idx, tail = schedule_from(sigmas_texture, float(s_t), sched_texture.kind, name="sigmas_texture")
        tail = tail.clone()
        tail[0] = s_t
        info["texture_start_index"] = idx
    tail = descending_from(tail)
    x_out = sampler_texture(count_t, x_t, tail, extra_args=extra_texture)
    return DecoupledResult(x=x_out, k=k, switch_sigma=s_switch, handoff_sigma=float(s_t), x_structure=x_s,
                           bridged=bridged, nfe_structure=count_s.nfe, nfe_texture=count_t.nfe, info=info)


def descending_from(tail: torch.Tensor) -> torch.Tensor:
    """A schedule whose first entry (a hand-off level) was replaced: the later entries not below it
    are dropped (a downscale's level can fall under the next step's), so it stays descending."""
    keep = torch.cat([torch.ones(1, dtype=torch.bool), tail[1:] < tail[0]])
    return tail[keep]


# ---------------------------------------------------------------------------------------------
# Resolution hand-off: coupled noise and the routes


def coupled_noise(shape_lr, seed: int | None = None, generator: torch.Generator | None = None,
                  factor: int = 2, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
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
    return sigmas_fn(int(steps / denoise))[-(steps + 1):]


def upscale_latent(z: torch.Tensor, factor: int = 2, mode: str = "bilinear") -> torch.Tensor:
    """ComfyUI's "Upscale Latent" / LatentUpscaleBy with bilinear (align_corners False)."""
    return F.interpolate(z, scale_factor=factor, mode=mode, align_corners=False if mode in ("bilinear", "bicubic") else None)


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


def route_latent_upscale(den_lr, den_hr, noise_lr, noise_hr, sigmas_fn, steps_lr: int, steps_hr: int,
                         denoise: float, extra=None, sampler=kdiff.sample_euler, factor: int = 2) -> HandoffResult:
    """(a) KSampler (low res, full) -> Upscale Latent (bilinear) -> KSampler (denoise < 1, the
    seed's high-res noise added at the first sigma)."""
    z_lr, c_lr = _lr_full(den_lr, noise_lr, sigmas_fn(steps_lr), extra, sampler)
    z = upscale_latent(z_lr, factor)
    sig = denoise_sigmas(sigmas_fn, steps_hr, denoise)
    c_hr = CountingDenoiser(den_hr)
    x = sampler(c_hr, z + noise_hr * sig[0], sig, extra_args=extra)
    return HandoffResult(x, c_lr.nfe, c_hr.nfe, 0, {"denoise": denoise, "steps_hr": steps_hr}, z_lr)


def route_pixel_hires(den_lr, den_hr, vae_lr: BridgeVAE, vae_hr: BridgeVAE, noise_lr, noise_hr, sigmas_fn,
                      steps_lr: int, steps_hr: int, denoise: float, extra=None, sampler=kdiff.sample_euler,
                      factor: int = 2, filter: str = "bicubic") -> HandoffResult:
    """(b) pixel hires-fix: KSampler (low res, full) -> VAE Decode -> pixel upscale -> VAE Encode
    -> KSampler (denoise < 1)."""
    z_lr, c_lr = _lr_full(den_lr, noise_lr, sigmas_fn(steps_lr), extra, sampler)
    h, w = z_lr.shape[-2] * vae_lr.downscale * factor, z_lr.shape[-1] * vae_lr.downscale * factor
    z = bridge_latent(z_lr, vae_lr, vae_hr, size=(h, w), filter=filter)
    sig = denoise_sigmas(sigmas_fn, steps_hr, denoise)
    c_hr = CountingDenoiser(den_hr)
    x = sampler(c_hr, z + noise_hr * sig[0], sig, extra_args=extra)
    return HandoffResult(x, c_lr.nfe, c_hr.nfe, 2, {"denoise": denoise, "steps_hr": steps_hr, "filter": filter}, z_lr)


def route_step_handoff(den_lr, den_hr, noise_lr, sigmas, k: int, extra=None, sampler=kdiff.sample_euler,
                       factor: int = 2) -> HandoffResult:
    """(c) KSamplerAdvanced pair: low res steps 0..k with leftover noise, Upscale Latent
    (bilinear) of the *noisy* latent, high res from step k with add_noise disabled."""
    c_lr = CountingDenoiser(den_lr)
    z = sampler(c_lr, noise_lr * sigmas[0], sigmas[: k + 1], extra_args=extra)
    c_hr = CountingDenoiser(den_hr)
    x = sampler(c_hr, upscale_latent(z, factor), sigmas[k:], extra_args=extra)
    return HandoffResult(x, c_lr.nfe, c_hr.nfe, 0, {"k": k}, z)


def route_noisy_bridge(den_lr, den_hr, vae_lr: BridgeVAE, vae_hr: BridgeVAE, noise_lr, noise_hr, sigmas,
                       sched: ModelSchedule, switch_timestep=500, switch_sigma=None, extra=None,
                       sampler=kdiff.sample_euler, factor: int = 2, filter: str = "bicubic",
                       handoff: str = "last", renoise: str = "resolution") -> HandoffResult:
    """(d) ours: low res down to the switch, Sub-Module 2 noisy bridge (x0, decode, resize,
    encode, the seed's high-res noise as the fresh noise at the matching level: x factor with
    renoise "resolution", equal SNR with "paper"), high res continues on the same schedule from
    the hand-off level."""
    h = noise_lr.shape[-2] * vae_lr.downscale * factor
    w = noise_lr.shape[-1] * vae_lr.downscale * factor
    for v in (vae_lr, vae_hr):
        if hasattr(v, "reset_calls"):
            v.reset_calls()
    r = time_decoupled_sample(den_lr, den_hr, noise_lr * sigmas[0], sigmas, sched, sched,
                              switch_timestep=switch_timestep if switch_sigma is None else None,
                              switch_sigma=switch_sigma, vae_structure=vae_lr, vae_texture=vae_hr,
                              size=(h, w), filter=filter, sampler=sampler, extra_structure=extra,
                              extra_texture=extra, noise=noise_hr, handoff=handoff, renoise=renoise)
    calls = vae_calls(vae_lr, vae_hr) if vae_lr is not vae_hr else vae_calls(vae_lr)
    return HandoffResult(r.x, r.nfe_structure, r.nfe_texture, calls or 2,
                         {"k": r.k, "switch_sigma": round(r.switch_sigma, 4), "handoff": handoff, "renoise": renoise,
                          "handoff_sigma": round(r.handoff_sigma, 4),
                          "switch_timestep": switch_timestep, "filter": filter}, r.x_structure)
