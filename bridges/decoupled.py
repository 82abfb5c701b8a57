"""Time-decoupled sampling and resolution hand-offs, pure PyTorch (PanGu-Draw, arXiv 2312.16486, section 3.2).

* ``time_decoupled_sample``: a *structure* model denoises while sigma >= the switch level, a
  *texture* model below it. The switch is a timestep (default 500, the paper's T_struct, converted
  with the structure model's schedule) or a sigma, never a step index. Different latent spaces or
  resolutions are bridged at the switch with Sub-Module 2 (``core.bridge_noisy``: x0-prediction,
  decode, resize, encode, fresh noise at the texture model's matching level). Same space and same
  size: the latent passes unchanged (a family change eps <-> flow is converted at equal SNR), so
  the same model on both sides reproduces plain sampling bit for bit with a one-step sampler.
* ``plan_handoff``: where a run hands off and the texture model's schedule (the one planner: the
  Time-Decoupled Sampler node calls it too).

The resolution hand-off routes the benchmark compares are in ``bench/routes.py``, the testbed VAEs in
``testbed/vaes.py``. Samplers follow ``samplers/kdiff.py`` (``fn(model, x, sigmas, extra_args=None, ...)``);
schedules ``samplers/schedules.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..samplers import kdiff
from ..samplers import schedules as S
from ..samplers.kdiff import CountingDenoiser
from .core import BridgeInputError, ModelSchedule, bridge_noisy, convert_noisy, match_sigma, resolution_shift
from .vae import BridgeVAE

RENOISE = ("resolution", "paper")  # hand-off noise level: resolution-aware (default) or the paper's equal SNR

__all__ = [
    "RENOISE",
    "CountingDenoiser",
    "switch_to_sigma",
    "split_at_switch",
    "HandoffPlan",
    "plan_handoff",
    "time_decoupled_sample",
    "DecoupledResult",
    "descending_from",
]


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
        raise BridgeInputError(
            f"{nm}: the {sched.name or sched.kind} schedule has no timestep table; give switch_sigma"
        )
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


def plan_handoff(
    sigmas: torch.Tensor,
    switch_sigma: float,
    sched_structure: ModelSchedule,
    sched_texture: ModelSchedule | None = None,
    px_from=None,
    px_to=None,
    renoise: str = "resolution",
    name: str = "switch_timestep",
) -> HandoffPlan:
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
    tex = torch.stack(
        [
            match_sigma(s, sched_structure, sched_texture, snap=False, name=name).reshape(())
            if float(s) > 0
            else torch.tensor(0.0)
            for s in tail
        ]
    )
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
            nb = bridge_noisy(
                x_s,
                sigma_k,
                count_s,
                vae_structure,
                vae_texture,
                sched_structure,
                sched_texture,
                size=size,
                filter=filter,
                sigma_to=s_to,
                noise=noise,
                generator=generator,
                extra_args=extra_structure,
                **bridge_kw,
            )
        else:
            x0_last = last["x0"]
            nb = bridge_noisy(
                last["x"],
                last["sigma"],
                lambda *a, **kw: x0_last,
                vae_structure,
                vae_texture,
                sched_structure,
                sched_texture,
                size=size,
                filter=filter,
                sigma_to=s_to,
                noise=noise,
                generator=generator,
                **bridge_kw,
            )
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
    return DecoupledResult(
        x=x_out,
        k=k,
        switch_sigma=s_switch,
        handoff_sigma=float(s_t),
        x_structure=x_s,
        bridged=bridged,
        nfe_structure=count_s.nfe,
        nfe_texture=count_t.nfe,
        info=info,
    )


def descending_from(tail: torch.Tensor) -> torch.Tensor:
    """A schedule whose first entry (a hand-off level) was replaced: the later entries not below it
    are dropped (a downscale's level can fall under the next step's), so it stays descending."""
    keep = torch.cat([torch.ones(1, dtype=torch.bool), tail[1:] < tail[0]])
    return tail[keep]
