"""Noise schedules in the k-diffusion "sigma" convention that ComfyUI uses.

Everything here is written from the published formulas (the Stable Diffusion discrete schedule,
Karras et al. 2022, rectified-flow time shifting) so that the pure-PyTorch testbed and ComfyUI
produce the same sigmas for the same settings. The host tier checks that against ComfyUI itself.
"""

from __future__ import annotations

import math

import torch


def discrete_sigmas(beta_start: float = 0.00085, beta_end: float = 0.012, timesteps: int = 1000) -> torch.Tensor:
    """The 1000 sigmas of Stable Diffusion's "scaled_linear" beta schedule (ascending).

    sigma_t = sqrt((1 - abar_t) / abar_t): an eps model run on x / sqrt(1 + sigma^2) at timestep t.
    The betas are computed in float64, as ComfyUI does, then stored as float32.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()


def sigma_to_t(sigma: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Timestep index of `sigma`: the nearest table entry in log-sigma (ComfyUI's rule for
    discrete models, so the network sees exactly the timesteps it sees inside ComfyUI)."""
    log_sigmas = sigmas.log().to(sigma.device)
    dists = sigma.float().clamp(min=1e-10).log() - log_sigmas[:, None]
    return dists.abs().argmin(dim=0).view(sigma.shape)


def t_to_sigma(t: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Inverse of sigma_to_t: log-linear interpolation of the sigma table at continuous t."""
    t = torch.as_tensor(t, dtype=torch.float32).clamp(0, sigmas.shape[0] - 1)
    low_idx = t.floor().long()
    high_idx = t.ceil().long()
    w = t.frac()
    log_sigmas = sigmas.log()
    return ((1 - w) * log_sigmas[low_idx] + w * log_sigmas[high_idx]).exp()


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) schedule: n sigmas from sigma_max to sigma_min, then a final 0."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    s = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([s, s.new_zeros([1])])


def normal(n: int, sigmas: torch.Tensor) -> torch.Tensor:
    """ComfyUI's "normal" scheduler: n timesteps evenly spaced from t_max to t_min (both
    included), then 0."""
    t_max = float(sigma_to_t(sigmas[-1:], sigmas))
    t_min = float(sigma_to_t(sigmas[:1], sigmas))
    ts = torch.linspace(t_max, t_min, n)
    s = t_to_sigma(ts, sigmas)
    return torch.cat([s, s.new_zeros([1])])


def flow_sigmas(n: int, shift: float = 3.0) -> torch.Tensor:
    """Rectified-flow schedule (SD3-style "simple"): t uniform in (0, 1], time-shifted, then 0.

    x_sigma = (1 - sigma) * x0 + sigma * noise; shift > 1 spends more steps at high noise.
    """
    t = torch.linspace(1.0, 0.0, n + 1)[:-1]
    s = shift * t / (1 + (shift - 1) * t)
    return torch.cat([s, s.new_zeros([1])])


def get_sigmas(scheduler: str, n: int, sigma_table: torch.Tensor | None = None) -> torch.Tensor:
    """Named schedules for the testbed and the CLI: "karras" and "normal" (discrete eps models)."""
    table = discrete_sigmas() if sigma_table is None else sigma_table
    if scheduler == "karras":
        return karras(n, float(table[0]), float(table[-1]))
    if scheduler == "normal":
        return normal(n, table)
    raise ValueError(f"scheduler: expected 'karras' or 'normal', got {scheduler!r}")


def vp_scale(sigma: torch.Tensor | float) -> torch.Tensor | float:
    """1 / sqrt(1 + sigma^2): maps ComfyUI's VE latents of an eps/v model to the VP latents."""
    if isinstance(sigma, torch.Tensor):
        return (1 + sigma.float() ** 2).rsqrt()
    return 1.0 / math.sqrt(1.0 + sigma * sigma)
