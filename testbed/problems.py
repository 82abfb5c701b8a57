"""Benchmark problems built on the testbeds: ``Problem`` (a denoiser with its noise, classes and decoder) and
the problems of the trained testbed and of an exact Gaussian mixture."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..samplers import schedules
from .exact import CFGDenoiser, GaussianMixtureDenoiser


@dataclass
class Problem:
    """One batch to sample: denoiser(x, sigma, cond=) -> x0 with CFG applied, unit noise, classes."""

    name: str
    denoiser: Callable
    noise: torch.Tensor
    cond: torch.Tensor
    decode: Callable[[torch.Tensor], torch.Tensor]  # latents -> images [B, 3, H, W] in 0..1
    sigma_table: torch.Tensor
    scheduler: str = "karras"
    net_denoiser: Callable | None = None  # net_denoiser(wrap) -> denoiser whose network is wrap(net_call)

    def sigmas(self, steps: int) -> torch.Tensor:
        return schedules.get_sigmas(self.scheduler, steps, self.sigma_table)

    def subset(self, idx) -> "Problem":
        return Problem(
            self.name,
            self.denoiser,
            self.noise[idx],
            self.cond[idx],
            self.decode,
            self.sigma_table,
            self.scheduler,
            self.net_denoiser,
        )


def _batch(classes: int, seeds: int, shape, seed: int = 1234):
    cond = torch.arange(classes).repeat_interleave(seeds)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((classes * seeds,) + tuple(shape), generator=g)
    return noise, cond


def trained_problem(classes: int = 10, seeds: int = 2, cfg: float = 5.0, scheduler: str = "karras") -> Problem:
    """The trained class-conditional latent testbed, sampled with CFG."""
    from . import trained

    tb = trained.load()
    noise, cond = _batch(classes, seeds, tb.latent_shape)
    table = tb.sigmas

    def net_denoiser(wrap):
        """The same CFG denoiser with its network calls going through wrap(net_call)."""

        def net_call(xc, t, context):
            return tb.net(xc, t, context=context)

        wrapped = wrap(net_call)

        @torch.no_grad()
        def den(x, sigma, cond=None, **_):
            b = x.shape[0]
            s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1).expand(b)
            c = torch.as_tensor(cond).reshape(-1).expand(b)
            xc = x / (1 + s**2).sqrt().reshape(b, *([1] * (x.ndim - 1)))
            t = schedules.sigma_to_t(s, table)
            ctx = torch.nn.functional.one_hot(torch.cat([c, torch.full_like(c, tb.null_class)]), tb.null_class + 1)
            ctx = ctx.float()[:, None, :]
            eps = wrapped(torch.cat([xc, xc]), float(s[0]), torch.cat([t, t]), ctx)
            eps_c, eps_u = eps[:b], eps[b:]
            eps = eps_u + cfg * (eps_c - eps_u)
            return x - s.reshape(b, *([1] * (x.ndim - 1))) * eps

        return den

    return Problem(
        name=f"trained testbed ({classes} classes x {seeds} seeds, CFG {cfg:g}, {scheduler})",
        denoiser=torch.no_grad()(tb.cfg_denoiser(cfg)),
        noise=noise,
        cond=cond,
        decode=torch.no_grad()(tb.decode),
        sigma_table=table,
        scheduler=scheduler,
        net_denoiser=net_denoiser,
    )


def gmm_problem(
    classes: int = 4, seeds: int = 2, cfg: float = 5.0, shape=(4, 8, 8), scheduler: str = "karras"
) -> Problem:
    """An exact class-conditional Gaussian mixture (fast; for tests of the benchmark itself)."""
    g = torch.Generator().manual_seed(0)
    k = classes * 3
    means = torch.randn((k,) + tuple(shape), generator=g)
    gmm = GaussianMixtureDenoiser(means, 0.3, labels=torch.arange(k) % classes, num_classes=classes)
    noise, cond = _batch(classes, seeds, shape)

    def decode(lat):
        return (lat[:, :3] / 6 + 0.5).clamp(0, 1)

    return Problem(
        name=f"gmm ({classes} classes x {seeds} seeds, CFG {cfg:g})",
        denoiser=CFGDenoiser(gmm, cfg, classes),
        noise=noise,
        cond=cond,
        decode=decode,
        sigma_table=schedules.discrete_sigmas(),
        scheduler=scheduler,
    )
