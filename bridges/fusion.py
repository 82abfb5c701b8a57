"""Coop-Diffusion Sub-Module 1 (PanGu-Draw, arXiv 2312.16486, Algorithm 1): model B's prediction in A's
space, the fusion, and B's own chain. Pure PyTorch, batched, in the conventions of ``bridges.core``.

* step 2: x0'_t = B's x0-prediction                          -> ``predict_b_in_a`` (calls B)
* step 3: z~0_t = E_A(D_B(x0'_t))                             -> ``core.bridge_latent``
* step 4: eps~_t = B's prediction as an eps in A             -> ``convert_prediction``
* step 5: fused = d * (B converted) + (1 - d) * A             -> ``fuse`` (paper's d: weight of B)
* step 6 / 7: advance both chains                            -> ``euler_step``
* step 7: fused prediction back into B                        -> ``fused_to_b``
* B's chain driven by A's model calls                        -> ``CoopChain`` (what the ComfyUI guider runs)
* the whole loop with an Euler sampler on A                   -> ``coop_sample_euler`` (a CoopChain too)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .core import _bcast, _check_kind, _sigma_batch, bridge_latent, eps_from_x0
from .vae import BridgeInputError, BridgeVAE

TAPERS = ("none", "linear", "cosine")

__all__ = [
    "TAPERS",
    "d_schedule",
    "Prediction",
    "convert_prediction",
    "predict_b_in_a",
    "fuse",
    "fused_to_b",
    "euler_step",
    "CoopChain",
    "coop_sample_euler",
]


@dataclass
class Prediction:
    """A prediction in one space at (x, sigma): its x0 and the equivalent eps."""

    x0: torch.Tensor
    eps: torch.Tensor


def convert_prediction(
    x0_from: torch.Tensor,
    vae_from: BridgeVAE,
    vae_to: BridgeVAE,
    x_to: torch.Tensor,
    sigma_to,
    kind_to: str,
    **bridge_kw,
) -> Prediction:
    """A model's x0-prediction in one space as a prediction in another space at (x_to, sigma_to):
    Algorithm 1 step 3 (z~0 = E_to(D_from(x0))) and step 4 (eps~ = (z_t - sqrt(abar) z~0) /
    sqrt(1 - abar), i.e. ``eps_from_x0`` in the target's convention). The bridged latent must have
    the target's shape (give `size` when resolutions differ)."""
    _check_kind(kind_to, "kind_to")
    if bridge_kw.get("size") is None:
        bridge_kw["size"] = (x_to.shape[-2] * vae_to.downscale, x_to.shape[-1] * vae_to.downscale)
    with torch.no_grad():
        z0 = bridge_latent(x0_from, vae_from, vae_to, **bridge_kw)
    if z0.shape != x_to.shape:
        raise BridgeInputError(f"x_to: shape {tuple(x_to.shape)} does not match the bridged latent {tuple(z0.shape)}")
    z0 = z0.to(x_to)
    return Prediction(x0=z0, eps=eps_from_x0(x_to, sigma_to, z0, kind_to))


def predict_b_in_a(
    denoiser_b: Callable,
    x_b: torch.Tensor,
    sigma_b,
    vae_b: BridgeVAE,
    vae_a: BridgeVAE,
    x_a: torch.Tensor,
    sigma_a,
    kind_a: str,
    extra_args: dict | None = None,
    **bridge_kw,
) -> Prediction:
    """Algorithm 1 steps 2-4: run model B on its own chain (x_b, sigma_b), take its x0-prediction,
    bridge it into A and express it as A's prediction at (x_a, sigma_a)."""
    if x_b.shape[1] != vae_b.latent_channels:
        raise BridgeInputError(
            f"vae_b: {vae_b.name!r} expects {vae_b.latent_channels} latent channels, x_b has {x_b.shape[1]}"
        )
    with torch.no_grad():
        x0_b = denoiser_b(x_b, _sigma_batch(sigma_b, x_b.shape[0]).to(x_b), **(extra_args or {}))
    return convert_prediction(x0_b, vae_b, vae_a, x_a, sigma_a, kind_a, **bridge_kw)


def fuse(pred_a: torch.Tensor, pred_b_in_a: torch.Tensor, d) -> torch.Tensor:
    """Algorithm 1 step 5 with the paper's convention: d weights the **converted** prediction of
    model B: fused = d * pred_b_in_a + (1 - d) * pred_a. Works on eps or on x0 alike (at fixed
    (x, sigma) eps is affine in x0 with the same coefficient), d a number or one per sample."""
    dd = torch.as_tensor(d, dtype=pred_a.dtype, device=pred_a.device)
    if dd.ndim == 1:
        if dd.numel() != pred_a.shape[0]:
            raise BridgeInputError(f"d: expected one weight or one per sample ({pred_a.shape[0]}), got {dd.numel()}")
        dd = dd.reshape((-1,) + (1,) * (pred_a.ndim - 1))
    elif dd.ndim > 1:
        raise BridgeInputError(f"d: expected a number or a [B] tensor, got shape {tuple(dd.shape)}")
    if not bool(torch.isfinite(dd).all()):
        raise BridgeInputError("d: must be finite")
    return pred_a + dd * (pred_b_in_a - pred_a)


def fused_to_b(
    x0_fused_a: torch.Tensor, vae_a: BridgeVAE, vae_b: BridgeVAE, x_b: torch.Tensor, sigma_b, kind_b: str, **bridge_kw
) -> Prediction:
    """Algorithm 1 step 7 ("eps'_fuse from eps_fuse, similar to steps 3-4"): the fused x0 in A
    bridged back into B and expressed at B's chain point (x_b, sigma_b), for B's own update."""
    return convert_prediction(x0_fused_a, vae_a, vae_b, x_b, sigma_b, kind_b, **bridge_kw)


def euler_step(x: torch.Tensor, sigma, sigma_next, x0: torch.Tensor) -> torch.Tensor:
    """First-order update with ComfyUI's Euler (d = (x - x0) / sigma), which is DDIM for eps and
    flow models alike: x_next = x0 + (sigma_next / sigma) (x - x0). Algorithm 1 steps 6 / 7."""
    s = _bcast(_sigma_batch(sigma, x.shape[0]), x)
    sn = _bcast(_sigma_batch(sigma_next, x.shape[0]), x)
    return x0 + (sn / s) * (x - x0)


def d_schedule(d: float, start: float, end: float, taper: str):
    """Per-step fusion weight: `d` inside the fraction [start, end] of the steps (by step index
    among the sampler's sigmas), tapering to 0 at `end` with `taper`; 0 outside."""
    if taper not in TAPERS:
        raise BridgeInputError(f"taper: expected one of {list(TAPERS)}, got {taper!r}")
    if not (0.0 <= start <= end <= 1.0):
        raise BridgeInputError(f"d_start: expected 0 <= d_start <= d_end <= 1, got {start} and {end}")
    if not math.isfinite(d):
        raise BridgeInputError(f"d: must be finite, got {d}")

    def fn(i: int, n: int) -> float:
        frac = i / max(n - 1, 1)
        if d == 0 or frac < start - 1e-9 or frac > end + 1e-9:
            return 0.0
        u = 0.0 if end <= start else (frac - start) / (end - start)
        if taper == "linear":
            return d * (1.0 - u)
        if taper == "cosine":
            return d * 0.5 * (1.0 + math.cos(math.pi * u))
        return d

    return fn


class CoopChain:
    """Model B's shadow chain of Algorithm 1, driven by model A's calls; the one implementation that both the
    ComfyUI guider (``nodes/coop.py``) and ``coop_sample_euler`` run.

    Call it with A's x0-prediction at A's sigma; it returns the fused x0 for A's sampler, and keeps B's chain:
    * B's sigma is ``sigma_b_of(sigma_a)`` (equal SNR, held at the ends of B's schedule);
    * when A's sigma moves on, B's chain moves with a first-order (Euler = DDIM) step to B's new sigma,
      using the last fused x0 bridged back into B (step 7). A sampler of any order may drive A: B is
      evaluated once per distinct sigma (a cache), its chain stays first order, and an ancestral A leaves
      B's chain deterministic;
    * ``d_steps[i]`` is the fusion weight at A's step i (the index of the nearest sigma of ``sigmas_a``).
      d = 0 returns A's x0 untouched; while a later step has d > 0 B's chain is still carried (two VAE calls,
      no B call); once no later step has d > 0, B is dropped (no work at all).

    ``denoise_b(x_b, sigma_b[B]) -> x0_b`` is model B (with its conditioning and CFG). ``size_a`` / ``size_b``
    are the pixel sizes of A's and B's images; ``bridge_kw`` go to ``bridge_latent`` (filter, tile, clamp...).
    ``nfe_b`` counts B's calls.
    """

    def __init__(
        self,
        denoise_b: Callable,
        vae_a: BridgeVAE,
        vae_b: BridgeVAE,
        sigmas_a: torch.Tensor,
        d_steps,
        sigma_b_of: Callable[[float], float],
        size_a=None,
        size_b=None,
        **bridge_kw,
    ):
        self.denoise_b = denoise_b
        self.vae_a, self.vae_b = vae_a, vae_b
        self.sigmas_a = torch.as_tensor(sigmas_a).detach().float().cpu().flatten()
        self.d_steps = [float(v) for v in d_steps]
        if len(self.d_steps) != max(1, self.sigmas_a.numel() - 1):
            raise BridgeInputError(
                f"d: expected one weight per step ({self.sigmas_a.numel() - 1}), got {len(self.d_steps)}"
            )
        self.sigma_b_of = sigma_b_of
        self.size_a, self.size_b = size_a, size_b
        self.bridge_kw = bridge_kw
        self.nfe_b = 0
        self.x_b = None
        self.s_b = None
        self._x0_b_fused = None
        self._x0_b_cache = None

    @property
    def active(self) -> bool:
        """Whether B contributes at any step (else A runs alone and B is never started)."""
        return any(v != 0 for v in self.d_steps)

    def start(self, x_b: torch.Tensor, sigma_b: float) -> None:
        """B's noisy latent at its first sigma (model space)."""
        self.x_b, self.s_b = x_b, float(sigma_b)
        self._x0_b_fused = self._x0_b_cache = None

    def step_index(self, sigma_a: float) -> int:
        pos = self.sigmas_a[:-1] if self.sigmas_a.numel() > 1 else self.sigmas_a
        return int((pos - sigma_a).abs().argmin())

    def advance_to(self, sigma_b: float) -> None:
        """Moves B's chain to ``sigma_b`` with the last fused x0 (a first-order step); nothing before a fusion."""
        if self._x0_b_fused is not None and sigma_b != self.s_b:
            self.x_b = euler_step(self.x_b, self.s_b, sigma_b, self._x0_b_fused.to(self.x_b))
            self.s_b = sigma_b
            self._x0_b_cache = None

    def __call__(self, x0_a: torch.Tensor, sigma_a: float) -> torch.Tensor:
        if self.x_b is None or sigma_a <= 0:
            return x0_a
        i = self.step_index(sigma_a)
        if not any(v != 0 for v in self.d_steps[i:]):
            return x0_a  # B can no longer contribute: stop carrying its chain
        d = self.d_steps[i]
        self.advance_to(float(self.sigma_b_of(sigma_a)))
        if d != 0:
            if self._x0_b_cache is None:
                sb = torch.full((self.x_b.shape[0],), self.s_b, dtype=self.x_b.dtype, device=self.x_b.device)
                with torch.no_grad():
                    self._x0_b_cache = self.denoise_b(self.x_b, sb)
                self.nfe_b += 1
            z = bridge_latent(self._x0_b_cache.float(), self.vae_b, self.vae_a, size=self.size_a, **self.bridge_kw)
            fused = fuse(x0_a, z.to(x0_a), d)
        else:
            fused = x0_a
        self._x0_b_fused = bridge_latent(fused.float(), self.vae_a, self.vae_b, size=self.size_b, **self.bridge_kw)
        return fused


def coop_sample_euler(
    denoiser_a: Callable,
    denoiser_b: Callable,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    sigmas_a: torch.Tensor,
    sigmas_b: torch.Tensor,
    vae_a: BridgeVAE,
    vae_b: BridgeVAE,
    kind_a: str,
    kind_b: str,
    d=0.5,
    extra_a: dict | None = None,
    extra_b: dict | None = None,
    callback: Callable | None = None,
    **bridge_kw,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 (Sub-Module 1) with an Euler / DDIM sampler on A and B's chain a ``CoopChain``: A in its
    space on `sigmas_a`, B in its space on `sigmas_b` (each model's own schedule, of equal length, matched
    entry by entry, e.g. with ``match_sigma``), fusing x0 with weight `d` on B (a number, or a callable
    (i, sigma_a) -> d for a per-step schedule). Per fused step: 2 model calls, 2 decodes, 2 encodes.
    Returns the final (x_a, x_b)."""
    _check_kind(kind_a, "kind_a")
    _check_kind(kind_b, "kind_b")
    sig_a = torch.as_tensor(sigmas_a, dtype=torch.float32).flatten()
    sig_b = torch.as_tensor(sigmas_b, dtype=torch.float32).flatten()
    if sig_a.numel() != sig_b.numel() or sig_a.numel() < 2:
        raise BridgeInputError(f"sigmas_b: expected {sig_a.numel()} sigmas like sigmas_a, got {sig_b.numel()}")
    n = x_a.shape[0]
    if x_b.shape[0] != n:
        raise BridgeInputError(f"x_b: batch {x_b.shape[0]} differs from x_a's {n}")
    if x_b.shape[1] != vae_b.latent_channels:
        raise BridgeInputError(
            f"vae_b: {vae_b.name!r} expects {vae_b.latent_channels} latent channels, x_b has {x_b.shape[1]}"
        )
    steps = sig_a.numel() - 1
    d_steps = [d(i, float(sig_a[i])) if callable(d) else d for i in range(steps)]
    b_of = {float(a): float(b) for a, b in zip(sig_a, sig_b)}
    size = lambda z, vae: (z.shape[-2] * vae.downscale, z.shape[-1] * vae.downscale)  # noqa: E731

    def denoise_b(x, s):
        return denoiser_b(x, s.to(x), **(extra_b or {}))

    chain = CoopChain(
        denoise_b, vae_a, vae_b, sig_a, d_steps, b_of.__getitem__, size(x_a, vae_a), size(x_b, vae_b), **bridge_kw
    )
    chain.start(x_b, float(sig_b[0]))
    for i in range(steps):
        sa = sig_a[i].expand(n)
        with torch.no_grad():
            x0_a = denoiser_a(x_a, sa.to(x_a), **(extra_a or {}))
        x0_fused = chain(x0_a, float(sig_a[i]))
        if callback is not None:
            callback({"i": i, "x_a": x_a, "x_b": chain.x_b, "x0_a": x0_a, "x0_fused": x0_fused})
        x_a = euler_step(x_a, sa, sig_a[i + 1], x0_fused)
    chain.advance_to(float(sig_b[-1]))
    return x_a, chain.x_b
