"""Exact denoisers: closed-form E[x0 | x_sigma] for data sets whose optimum is known.

All follow the k-diffusion convention ``denoiser(x, sigma, cond=None) -> x0`` with the VE noising
x_sigma = x0 + sigma * noise, sigma a tensor [B] (or a scalar), any latent shape, any batch.
``cond`` is a LongTensor [B] of class indices; ``null_class`` (or None) means unconditional.
"""

from __future__ import annotations

import math

import torch


def _sigma_vec(sigma, b: int, device) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=torch.float64, device=device).reshape(-1)
    return s.expand(b) if s.numel() == 1 else s


def _cond_vec(cond, b: int, null_class: int, device) -> torch.Tensor:
    if cond is None:
        return torch.full((b,), null_class, dtype=torch.long, device=device)
    c = torch.as_tensor(cond, dtype=torch.long, device=device).reshape(-1)
    return c.expand(b) if c.numel() == 1 else c


class FiniteSetDenoiser:
    """The optimal denoiser of a finite set of points (optionally labelled).

    E[x0 | x] = sum_i softmax_i(-|x - x_i|^2 / (2 sigma^2)) x_i, the sum restricted to the points of
    the requested class. Computed in float64 with a log-sum-exp, so it is exact to rounding.
    """

    def __init__(self, data: torch.Tensor, labels: torch.Tensor | None = None, num_classes: int | None = None):
        self.shape = tuple(data.shape[1:])
        self.data = data.reshape(data.shape[0], -1).double()
        self.sq = (self.data**2).sum(1)
        self.labels = None if labels is None else labels.long()
        self.num_classes = (
            num_classes if num_classes is not None else (int(self.labels.max()) + 1 if self.labels is not None else 0)
        )
        self.null_class = self.num_classes

    def __call__(self, x: torch.Tensor, sigma, cond=None, **_) -> torch.Tensor:
        b = x.shape[0]
        flat = x.reshape(b, -1).double()
        s = _sigma_vec(sigma, b, x.device)
        dist = (flat**2).sum(1, keepdim=True) - 2 * flat @ self.data.T + self.sq[None]
        logits = -dist / (2 * s[:, None] ** 2)
        if self.labels is not None:
            c = _cond_vec(cond, b, self.null_class, x.device)
            allowed = (self.labels[None, :] == c[:, None]) | (c[:, None] == self.null_class)
            logits = logits.masked_fill(~allowed, float("-inf"))
        w = torch.softmax(logits, dim=1)
        return (w @ self.data).reshape(x.shape).to(x.dtype)


class GaussianMixtureDenoiser:
    """The optimal denoiser of an isotropic Gaussian mixture sum_k w_k N(mu_k, s_k^2 I).

    E[x0 | x] = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)),
    r_k proportional to w_k N(x; mu_k, (s_k^2 + sigma^2) I). A component may carry a class label.
    """

    def __init__(self, means: torch.Tensor, stds, weights=None, labels=None, num_classes: int | None = None):
        self.shape = tuple(means.shape[1:])
        self.means = means.reshape(means.shape[0], -1).double()
        k = self.means.shape[0]
        self.stds = torch.as_tensor(stds, dtype=torch.float64).reshape(-1).expand(k).clone()
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.log_w = (w / w.sum()).log()
        self.labels = None if labels is None else torch.as_tensor(labels).long()
        self.num_classes = (
            num_classes if num_classes is not None else (int(self.labels.max()) + 1 if self.labels is not None else 0)
        )
        self.null_class = self.num_classes

    def __call__(self, x: torch.Tensor, sigma, cond=None, **_) -> torch.Tensor:
        b = x.shape[0]
        dim = self.means.shape[1]
        flat = x.reshape(b, -1).double()
        s2 = _sigma_vec(sigma, b, x.device)[:, None] ** 2  # [B, 1]
        var = self.stds[None, :] ** 2 + s2  # [B, K]
        dist = (flat**2).sum(1, keepdim=True) - 2 * flat @ self.means.T + (self.means**2).sum(1)[None]
        logits = self.log_w[None] - dist / (2 * var) - 0.5 * dim * var.log()
        if self.labels is not None:
            c = _cond_vec(cond, b, self.null_class, x.device)
            allowed = (self.labels[None, :] == c[:, None]) | (c[:, None] == self.null_class)
            logits = logits.masked_fill(~allowed, float("-inf"))
        r = torch.softmax(logits, dim=1)  # [B, K]
        shrink = self.stds[None, :] ** 2 / var  # [B, K]
        # sum_k r_k (mu_k + shrink_k (x - mu_k)) = sum_k r_k (1 - shrink_k) mu_k + (sum_k r_k shrink_k) x
        mean_part = (r * (1 - shrink)) @ self.means
        x_part = (r * shrink).sum(1, keepdim=True) * flat
        return (mean_part + x_part).reshape(x.shape).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None, cond=None) -> torch.Tensor:
        """Draw n samples (of class `cond` when given)."""
        logits = self.log_w.clone()
        if cond is not None and self.labels is not None:
            logits = logits.masked_fill(self.labels != int(cond), float("-inf"))
        comp = torch.multinomial(logits.softmax(0), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        x = self.means[comp] + self.stds[comp, None] * eps
        return x.reshape((n,) + self.shape).float()


class CFGDenoiser:
    """Classifier-free guidance over a class-conditional denoiser: one batched call, as ComfyUI.

    x0 = uncond + scale * (cond - uncond); scale 1 runs the conditional branch only.
    """

    def __init__(self, base, scale: float, null_class: int):
        self.base, self.scale, self.null_class = base, float(scale), null_class

    def __call__(self, x: torch.Tensor, sigma, cond=None, **_) -> torch.Tensor:
        b = x.shape[0]
        c = _cond_vec(cond, b, self.null_class, x.device)
        s = _sigma_vec(sigma, b, x.device).to(x.dtype)
        if self.scale == 1.0:
            return self.base(x, s, cond=c)
        both = self.base(torch.cat([x, x]), torch.cat([s, s]), cond=torch.cat([c, torch.full_like(c, self.null_class)]))
        cond_out, uncond_out = both[:b], both[b:]
        return uncond_out + self.scale * (cond_out - uncond_out)


class FlowDenoiser:
    """A VE denoiser seen as a rectified-flow (ComfyUI "CONST") model.

    Flow latents are x = (1 - sigma) x0 + sigma * noise, so x / (1 - sigma) is the VE latent at
    sigma / (1 - sigma); the optimal x0 is the same.
    """

    def __init__(self, ve_denoiser, sigma_cap: float = 1.0 - 1e-4):
        self.ve, self.cap = ve_denoiser, sigma_cap

    def __call__(self, x: torch.Tensor, sigma, **extra) -> torch.Tensor:
        b = x.shape[0]
        s = _sigma_vec(sigma, b, x.device).clamp(max=self.cap)
        scale = (1 - s).reshape((b,) + (1,) * (x.ndim - 1))
        return self.ve((x.double() / scale).to(x.dtype), (s / (1 - s)).to(x.dtype), **extra)


def ring_mixture(modes: int = 8, radius: float = 2.0, std: float = 0.05) -> GaussianMixtureDenoiser:
    """The classic 2-D ring of Gaussians (one class per mode)."""
    ang = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    means = torch.stack([radius * ang.cos(), radius * ang.sin()], dim=1)
    return GaussianMixtureDenoiser(means, std, labels=torch.arange(modes), num_classes=modes)
