"""UniPC (Zhao et al., NeurIPS 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models"), the multistep data-prediction form that ComfyUI runs for its "uni_pc" (B(h) = h, "bh1") and
"uni_pc_bh2" (B(h) = e^h - 1) samplers, written in k-diffusion's VE convention for the pure-PyTorch tier.

Each step goes from sigma_s to sigma_t with lambda = -log(sigma) and h = lambda_t - lambda_s: the DPM-Solver++
step x_t = (sigma_t / sigma_s) x - (e^-h - 1) x0_s, plus the UniP predictor's combination of the earlier
predictions' differences; the model is then evaluated once at the predicted x_t and UniC corrects the step with
that evaluation (which is the next step's x0_s: one evaluation per step). The order is min(3, steps - 1),
lowered during the warm-up and at the last two steps; the last step (to the schedule's last sigma) has no
corrector. A schedule ending in 0 ends at sigma 0.001 instead, as ComfyUI's does, and the result is the latent
there (not a final denoise).

ComfyUI's implementation works in VP latents through a noise-prediction wrapper; this one works on VE latents
and the denoiser's x0 directly, with the coefficients in float64, so the two agree to rounding (the host tier
measures it). ComfyUI's UniPC treats every model as VE (eps / v), flow models included; so does this one.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _coefficients(lams: list[float], lam_t: float, order: int, variant: str):
    """(h, B(h), predictor weights, corrector weights, r_k) for a step of ``order`` from lams[-1] to lam_t;
    lams are the lambdas of the stored predictions, oldest first."""
    h = lam_t - lams[-1]
    rks = [(lams[-(i + 1)] - lams[-1]) / h for i in range(1, order)] + [1.0]
    hh = -h  # data prediction
    h_phi_1 = math.expm1(hh)
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = math.expm1(hh)
    else:
        raise ValueError(f"variant: expected 'bh1' or 'bh2', got {variant!r}")
    b, h_phi_k, factorial = [], h_phi_1 / hh - 1, 1
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    rk = np.asarray(rks, dtype=np.float64)
    big_r = np.stack([rk**k for k in range(order)])
    b = np.asarray(b, dtype=np.float64)
    rhos_p = [0.5] if order == 2 else (list(np.linalg.solve(big_r[:-1, :-1], b[:-1])) if order > 2 else [])
    rhos_c = [0.5] if order == 1 else list(np.linalg.solve(big_r, b))
    return h, b_h, h_phi_1, rhos_p, rhos_c, rks[:-1]


def _update(model, x, preds, sigs, sigma_t, order, use_corrector, variant, s_in, extra_args):
    """One UniPC step of ``order`` to sigma_t from the stored predictions (``preds`` at ``sigs``, newest last).
    Returns (x_t, the evaluation at the predicted x_t or None)."""
    lams = [-math.log(s) for s in sigs]
    _, b_h, h_phi_1, rhos_p, rhos_c, rks = _coefficients(lams, -math.log(sigma_t), order, variant)
    m0 = preds[-1]
    d1s = [(preds[-(i + 1)] - m0) / rks[i - 1] for i in range(1, order)]
    x_base = (sigma_t / sigs[-1]) * x - h_phi_1 * m0
    x_t = x_base
    if d1s:
        x_t = x_base - b_h * sum(rho * d for rho, d in zip(rhos_p, d1s))
    if not use_corrector:
        return x_t, None
    m_t = model(x_t, torch.full_like(s_in, sigma_t), **extra_args)
    corr = sum((rho * d for rho, d in zip(rhos_c[:-1], d1s)), torch.zeros_like(x))
    return x_base - b_h * (corr + rhos_c[-1] * (m_t - m0)), m_t


@torch.no_grad()
def sample_unipc(model, x, sigmas, extra_args=None, callback=None, disable=None, variant="bh1"):
    """UniPC, ComfyUI's "uni_pc" (variant "bh1") and "uni_pc_bh2" (variant "bh2"). One model evaluation per step.

    A single-step schedule is ComfyUI's corner case: its UniPC evaluates the model once and makes no update, so
    the result is x rescaled from sigma_0 to the last sigma (sqrt(1 + sigma_last^2) / sqrt(1 + sigma_0^2));
    this does the same."""
    extra_args = extra_args or {}
    if len(sigmas) <= 1:
        return x
    sig = [float(s) for s in sigmas.detach().double().cpu()]
    if sig[-1] == 0:
        sig[-1] = 0.001
    steps = len(sig) - 1
    order = min(3, steps - 1)
    s_in = x.new_ones([x.shape[0]])
    preds = [model(x, torch.full_like(s_in, sig[0]), **extra_args)]
    sigs = [sig[0]]
    if callback is not None:
        callback({"x": x, "i": 0, "sigma": sigmas[0], "sigma_hat": sigmas[0], "denoised": preds[-1]})
    if order < 1:
        return x * math.sqrt(1 + sig[-1] ** 2) / math.sqrt(1 + sig[0] ** 2)
    for k in range(1, steps + 1):
        step_order = min(order, k, steps + 1 - k)
        use_corrector = k < steps
        x, m_t = _update(model, x, preds, sigs, sig[k], step_order, use_corrector, variant, s_in, extra_args)
        if m_t is not None:
            preds, sigs = (preds + [m_t])[-order:], (sigs + [sig[k]])[-order:]
        if callback is not None and k != steps - 1:  # ComfyUI reports the last two updates as one step
            i = min(k, steps - 1)
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": preds[-1]})
    return x


@torch.no_grad()
def sample_unipc_bh2(model, x, sigmas, extra_args=None, callback=None, disable=None):
    return sample_unipc(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, variant="bh2")
