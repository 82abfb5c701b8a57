"""Small networks for the CPU-scale DMD validation (``bench dmd``'s toy cases): an EDM-preconditioned MLP
denoiser and a fit of it to an exact denoiser (the "teacher network" the generator and the fake
score are copied from). Plain PyTorch, no ComfyUI.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MLPDenoiser(nn.Module):
    """x0 denoiser ``net(x, sigma, cond=None)`` for flat latents, with EDM preconditioning
    (Karras et al. 2022): x0 = c_skip x + c_out F(c_in x, c_noise[, class]), c_noise = log(sigma)/4
    fed through a few Fourier features. ``num_classes`` > 0 adds a class embedding (index
    ``num_classes`` = unconditional)."""

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        sigma_data: float = 1.0,
        num_classes: int = 0,
        fourier: int = 8,
    ):
        super().__init__()
        self.dim, self.sigma_data, self.num_classes = dim, float(sigma_data), num_classes
        self.register_buffer("freqs", torch.arange(1, fourier + 1, dtype=torch.float32) * math.pi / 2)
        emb = 2 * fourier + 1
        self.class_emb = nn.Embedding(num_classes + 1, hidden) if num_classes > 0 else None
        layers: list[nn.Module] = []
        d = dim + emb
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.SiLU()]
            d = hidden
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        b = x.shape[0]
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(b)[:, None]
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / (s**2 + sd2).sqrt()
        c_in = 1 / (s**2 + sd2).sqrt()
        c_noise = s.log() / 4
        ang = c_noise * self.freqs[None]
        h = torch.cat([c_in * x.reshape(b, -1), c_noise, ang.sin(), ang.cos()], dim=1)
        if self.class_emb is not None:
            c = (
                torch.full((b,), self.num_classes, dtype=torch.long, device=x.device)
                if cond is None
                else torch.as_tensor(cond, dtype=torch.long, device=x.device).reshape(-1).expand(b)
            )
            h = self.body[0](h) + self.class_emb(c)
            h = self.body[1:](h)
        else:
            h = self.body(h)
        return (c_skip * x.reshape(b, -1) + c_out * self.out(h)).reshape(x.shape)


def fit_denoiser(
    net: nn.Module,
    target,
    sample_data,
    sigmas: torch.Tensor,
    steps: int = 1000,
    batch: int = 512,
    lr: float = 2e-3,
    seed: int = 0,
) -> list[float]:
    """Fit ``net`` to the exact denoiser ``target`` (x0 regression at x = x0 + sigma n, with
    x0 = ``sample_data(batch, generator)`` and sigma a uniform draw from the table ``sigmas``),
    EDM weighting 1 / c_out^2. Regressing to the exact posterior mean instead of the noisy x0 makes
    this a fast, low-variance fit. Returns the loss curve."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    sd2 = getattr(net, "sigma_data", 1.0) ** 2
    losses = []
    for _ in range(steps):
        x0 = sample_data(batch, g)
        s = sigmas[torch.randint(0, sigmas.numel(), (batch,), generator=g)]
        x = x0 + s[:, None] * torch.randn(x0.shape, generator=g)
        with torch.no_grad():
            y = target(x, s)
        w = (s**2 + sd2) / (s**2 * sd2)
        loss = (w[:, None] * (net(x, s) - y) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses
