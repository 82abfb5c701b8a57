"""Sample-quality metrics for the small-scale DMD validation (plain PyTorch, no ComfyUI).

* ``sliced_wasserstein``: the sliced Wasserstein distance SW_p (Rabin et al. 2011; Bonneel et al.
  2015): the p-Wasserstein distance of the 1-D projections onto random unit directions, averaged
  over directions (in the p-th power) and taken to the power 1/p. 1-D W_p between two empirical
  sets is computed exactly from sorted projections (quantile functions), so sets of unequal size
  are allowed (both quantile functions are evaluated on a common grid).
* ``mode_coverage``: the mode statistics used for the ring of Gaussians (``bench dmd``'s ``ring`` case):
  each sample belongs to its nearest mode if it lies within ``radius`` of it,
  otherwise to none; a mode is covered when it holds at least ``min_fraction`` of all samples.
"""

from __future__ import annotations

import math

import torch


def _quantiles(proj: torch.Tensor, n: int) -> torch.Tensor:
    """Empirical quantile function of each column of ``proj`` [N, P] at n mid-point levels."""
    s, _ = proj.sort(dim=0)
    m = s.shape[0]
    if m == n:
        return s
    levels = (torch.arange(n, dtype=s.dtype, device=s.device) + 0.5) / n
    idx = (levels * m).floor().long().clamp(max=m - 1)
    return s[idx]


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    num_projections: int = 512,
    p: float = 2.0,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> float:
    """Sliced p-Wasserstein distance between the sample sets ``x`` [N, ...] and ``y`` [M, ...].

    Directions are uniform on the unit sphere (normalised Gaussians), drawn from ``generator``
    or, when none is given, from a fresh generator seeded with ``seed`` so that repeated calls on
    the same sets agree. Computed in float64.
    """
    if x.ndim < 2 or y.ndim < 2:
        raise ValueError(f"x: expected sample sets [N, ...], got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    a = x.reshape(x.shape[0], -1).double()
    b = y.reshape(y.shape[0], -1).double().to(a.device)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"y: expected samples of dimension {a.shape[1]}, got {b.shape[1]}")
    if p < 1:
        raise ValueError(f"p: expected a number >= 1, got {p!r}")
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    theta = torch.randn(a.shape[1], num_projections, generator=g, dtype=torch.float64).to(a.device)
    theta = theta / theta.norm(dim=0, keepdim=True)
    n = max(a.shape[0], b.shape[0])
    qa = _quantiles(a @ theta, n)
    qb = _quantiles(b @ theta, n)
    return float(((qa - qb).abs() ** p).mean() ** (1.0 / p))


def ring_means(modes: int = 8, radius: float = 2.0) -> torch.Tensor:
    """Centres of the ring of Gaussians, as in ``testbed.exact.ring_mixture`` (angle 2 pi k / K)."""
    ang = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    return torch.stack([radius * ang.cos(), radius * ang.sin()], dim=1)


def mode_assignment(samples: torch.Tensor, means: torch.Tensor, radius: float) -> torch.Tensor:
    """Index of the nearest mode of each sample, or -1 when that mode is farther than ``radius``."""
    d = torch.cdist(samples.reshape(samples.shape[0], -1).double(), means.reshape(means.shape[0], -1).double())
    dist, idx = d.min(dim=1)
    return torch.where(dist <= radius, idx, torch.full_like(idx, -1))


def mode_coverage(
    samples: torch.Tensor,
    means: torch.Tensor,
    radius: float,
    weights: torch.Tensor | None = None,
    min_fraction: float | None = None,
) -> dict:
    """Mode statistics of ``samples`` against the mixture with centres ``means``.

    Returns ``covered`` (modes holding >= ``min_fraction`` of all samples; default a fifth of a
    uniform share, 0.2 / K, i.e. 2.5 % for 8 modes), ``quality`` (fraction of
    samples within ``radius`` of a mode), ``fractions`` [K] (share of all samples per mode) and
    ``tv`` (total variation between the mode weights of the assigned samples and ``weights``,
    uniform by default; 1.0 when no sample is assigned).
    """
    k = means.shape[0]
    if radius <= 0:
        raise ValueError(f"radius: expected a number > 0, got {radius!r}")
    assign = mode_assignment(samples, means, radius)
    counts = torch.bincount(assign[assign >= 0], minlength=k).double()
    n = samples.shape[0]
    fractions = counts / n
    thr = 0.2 / k if min_fraction is None else float(min_fraction)
    w = (
        torch.full((k,), 1.0 / k, dtype=torch.float64)
        if weights is None
        else torch.as_tensor(weights, dtype=torch.float64)
    )
    w = w / w.sum()
    assigned = counts.sum()
    tv = float(0.5 * (counts / assigned - w).abs().sum()) if assigned > 0 else 1.0
    return {"covered": int((fractions >= thr).sum()), "quality": float(assigned / n), "fractions": fractions, "tv": tv}
