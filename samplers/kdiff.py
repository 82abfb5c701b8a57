"""Reference k-diffusion samplers for the pure-PyTorch tier.

ComfyUI's samplers live in ``comfy.k_diffusion.sampling`` (UniPC in ``comfy.extra_samplers.uni_pc``); the unit
tier cannot import them, so these are written from the same published update rules (Karras et al. 2022 for Euler
and Heun, k-diffusion's DPM-2, ancestral and linear multistep steps, Lu et al. 2022 for DPM-Solver++(2M) and its
SDE variants, Zhao et al. 2023 for UniPC in samplers/unipc.py) with the same signature:
``fn(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)``,
``model(x, sigma * s_in, **extra_args) -> x0``. The host tier checks them against ComfyUI's own
(tests/host/test_host_kdiff_parity.py).

Flow models: as ComfyUI's samplers read ``model_sampling`` through the model wrapper (and treat a CONST one,
rectified flow, apart in the ancestral and SDE samplers), these read ``model.model_sampling`` when the denoiser
has one: a ``schedules.Flow`` makes euler_ancestral, dpm_2_ancestral, dpmpp_sde and dpmpp_2m_sde take their
rectified-flow form; anything else (or none) is the VE form. Stochastic samplers take ``noise_sampler=``
(``fn(sigma, sigma_next) -> unit noise like x``); without one they draw Gaussian noise, seeded by
``extra_args["seed"]`` when given (ComfyUI's dpmpp_sde / dpmpp_2m_sde default to a Brownian tree instead, a
torchsde dependency the pack does not take: pass ComfyUI's noise sampler to reproduce its runs).
Which samplers are stochastic or evaluate at the step's end sigma: samplers/support.py (``SUPPORT``).
"""

from __future__ import annotations

import numpy as np
import torch

from . import schedules


class CountingDenoiser:
    """A pass-through denoiser that counts its calls in ``nfe`` (one call = one network evaluation, a batched
    CFG call included); other attributes are looked up on the wrapped denoiser, so samplers see through it."""

    def __init__(self, model):
        self.model, self.nfe = model, 0

    def __getattr__(self, name):
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):
        self.nfe += 1
        return self.model(*args, **kwargs)


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - x0) / sigma."""
    return (x - denoised) / sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim))


def _s_in(x: torch.Tensor) -> torch.Tensor:
    return x.new_ones([x.shape[0]])


def _report(callback, x, i, sigma, denoised):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args = extra_args or {}
    s_in = _s_in(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        x = x + to_d(x, sigmas[i] * s_in, denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args = extra_args or {}
    s_in = _s_in(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        d = to_d(x, sigmas[i] * s_in, denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in, **extra_args)
            d_2 = to_d(x_2, sigmas[i + 1] * s_in, denoised_2)
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args = extra_args or {}
    s_in = _s_in(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        d = to_d(x, sigmas[i] * s_in, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            denoised_2 = model(x_2, sigma_mid * s_in, **extra_args)
            d_2 = to_d(x_2, sigma_mid * s_in, denoised_2)
            x = x + d_2 * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args = extra_args or {}
    s_in = _s_in(x)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised
        else:
            h_last = t - (-sigmas[i - 1].log())
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def ancestral_step(sigma_from, sigma_to, eta=1.0):
    """(sigma_down, sigma_up) of an ancestral step (k-diffusion's get_ancestral_step)."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def default_noise_sampler(x: torch.Tensor, seed: int | None = None):
    """Fresh Gaussian noise per call, from a private generator when a seed is given."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed)

    def noise_sampler(sigma, sigma_next):
        return torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)

    return noise_sampler


def _model_sampling(model):
    """The denoiser's ``model_sampling`` (a schedules.Discrete / Flow), or None; wrappers pass the lookup on."""
    return getattr(model, "model_sampling", None)


def _noise_sampler(x, extra_args, noise_sampler):
    return default_noise_sampler(x, seed=extra_args.get("seed", None)) if noise_sampler is None else noise_sampler


def half_log_snr(sigma: torch.Tensor, model_sampling=None) -> torch.Tensor:
    """lambda = log(alpha / sigma): -log(sigma) for VE latents, log((1 - sigma) / sigma) for rectified flow."""
    if schedules.is_flow(model_sampling):
        return sigma.logit().neg()
    return sigma.log().neg()


def sigma_of_half_log_snr(lam: torch.Tensor, model_sampling=None) -> torch.Tensor:
    """Inverse of half_log_snr."""
    if schedules.is_flow(model_sampling):
        return lam.neg().sigmoid()
    return lam.neg().exp()


def offset_first_sigma(sigmas: torch.Tensor, model_sampling=None, percent: float = 1e-4) -> torch.Tensor:
    """A flow schedule starting at sigma >= 1 (pure noise, infinite -lambda) starts at the model's sigma for
    ``percent`` instead, as ComfyUI's SDE samplers do; other schedules are returned unchanged."""
    if len(sigmas) > 1 and schedules.is_flow(model_sampling) and sigmas[0] >= 1:
        sigmas = sigmas.clone()
        sigmas[0] = model_sampling.percent_to_sigma(percent)
    return sigmas


def _rf_ancestral(sigma, sigma_next, eta):
    """Rectified-flow ancestral step: (sigma_down, alpha_next / alpha_down, renoise coefficient)."""
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    renoise = (sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
    return sigma_down, alpha_next / alpha_down, renoise


@torch.no_grad()
def sample_euler_ancestral(
    model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None
):
    """Euler steps down to sigma_down, then fresh noise up to sigma_{i+1} (flow: the rectified-flow form, which
    scales x by alpha_{i+1} / alpha_down before renoising)."""
    extra_args = extra_args or {}
    noise_sampler = _noise_sampler(x, extra_args, noise_sampler)
    ms = _model_sampling(model)
    flow = schedules.is_flow(ms)
    if flow:
        s_noise = s_noise * getattr(ms, "noise_scale", 1.0)
    s_in = _s_in(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        if flow:
            if sigmas[i + 1] == 0:
                x = denoised
                continue
            sigma_down, rescale, renoise = _rf_ancestral(sigmas[i], sigmas[i + 1], eta)
            ratio = sigma_down / sigmas[i]
            x = ratio * x + (1 - ratio) * denoised
            if eta > 0:
                x = rescale * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise
            continue
        sigma_down, sigma_up = ancestral_step(float(sigmas[i]), float(sigmas[i + 1]), eta=eta)
        if sigma_down == 0:
            x = denoised
        else:
            d = to_d(x, sigmas[i] * s_in, denoised)
            x = x + d * (sigma_down - sigmas[i]) + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(
    model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None
):
    """DPM-2 (a midpoint evaluation in log-sigma) down to sigma_down, then fresh noise up to sigma_{i+1}."""
    extra_args = extra_args or {}
    noise_sampler = _noise_sampler(x, extra_args, noise_sampler)
    ms = _model_sampling(model)
    flow = schedules.is_flow(ms)
    if flow:
        s_noise = s_noise * getattr(ms, "noise_scale", 1.0)
    s_in = _s_in(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        if flow:
            sigma_down, rescale, renoise = _rf_ancestral(sigmas[i], sigmas[i + 1], eta)
        else:
            sigma_down, renoise = ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        d = to_d(x, sigmas[i] * s_in, denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
            continue
        sigma_mid = sigmas[i].log().lerp(torch.as_tensor(sigma_down).log(), 0.5).exp()
        x_2 = x + d * (sigma_mid - sigmas[i])
        denoised_2 = model(x_2, sigma_mid * s_in, **extra_args)
        x = x + to_d(x_2, sigma_mid * s_in, denoised_2) * (sigma_down - sigmas[i])
        if not flow:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise
        elif eta > 0:  # (ComfyUI's flow form renoises at eta 0 too, by sqrt of a rounding error: NaN or 0)
            x = rescale * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


def lms_coefficient(t: np.ndarray, i: int, j: int, order: int) -> float:
    """Weight of the derivative at t[i - j] in the order-``order`` Adams-Bashforth step from t[i] to t[i + 1]:
    the integral over [t[i], t[i + 1]] of the Lagrange basis polynomial through t[i], ..., t[i - order + 1] that
    is 1 at t[i - j]. Gauss-Legendre with ``order`` nodes, exact for this degree-(order - 1) polynomial."""
    if order - 1 > i:
        raise ValueError(f"order {order} is too high for step {i}")
    nodes, weights = np.polynomial.legendre.leggauss(order)
    a, b = float(t[i]), float(t[i + 1])
    tau = (b - a) / 2 * nodes + (a + b) / 2
    basis = np.ones_like(tau)
    for k in range(order):
        if k != j:
            basis *= (tau - t[i - k]) / (t[i - j] - t[i - k])
    return float((b - a) / 2 * np.sum(weights * basis))


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    """Linear multistep (Adams-Bashforth in sigma) on the last ``order`` derivatives; the last step to sigma 0
    returns the denoised latents."""
    extra_args = extra_args or {}
    s_in = _s_in(x)
    t = sigmas.detach().cpu().double().numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        ds = (ds + [to_d(x, sigmas[i] * s_in, denoised)])[-order:]
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        cur = min(i + 1, order)
        for j in range(cur):
            x = x + lms_coefficient(t, i, j, cur) * ds[-1 - j]
    return x


@torch.no_grad()
def sample_dpmpp_sde(
    model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None, r=0.5
):
    """DPM-Solver++ (stochastic, two evaluations per step: at the start and at lambda_s + r h)."""
    if len(sigmas) <= 1:
        return x
    extra_args = extra_args or {}
    noise_sampler = _noise_sampler(x, extra_args, noise_sampler)
    ms = _model_sampling(model)
    sigmas = offset_first_sigma(sigmas, ms)
    s_noise = s_noise * getattr(ms, "noise_scale", 1.0)
    s_in = _s_in(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sigmas[i], ms), half_log_snr(sigmas[i + 1], ms)
        h = lam_t - lam_s
        lam_mid = lam_s + r * h
        sigma_mid = sigma_of_half_log_snr(lam_mid, ms)
        alpha_s, alpha_mid = sigmas[i] * lam_s.exp(), sigma_mid * lam_mid.exp()
        alpha_t = sigmas[i + 1] * lam_t.exp()
        # first stage: to the intermediate point, with its own ancestral noise (in e^-lambda)
        sd, su = ancestral_step(lam_s.neg().exp(), lam_mid.neg().exp(), eta)
        h_ = sd.log().neg() - lam_s
        x_2 = (alpha_mid / alpha_s) * (-h_).exp() * x - alpha_mid * (-h_).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + alpha_mid * noise_sampler(sigmas[i], sigma_mid) * s_noise * su
        denoised_2 = model(x_2, sigma_mid * s_in, **extra_args)
        # second stage: the whole step with the two predictions mixed
        sd, su = ancestral_step(lam_s.neg().exp(), lam_t.neg().exp(), eta)
        h_ = sd.log().neg() - lam_s
        fac = 1 / (2 * r)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta=1.0,
    s_noise=1.0,
    noise_sampler=None,
    solver_type="midpoint",
):
    """DPM-Solver++(2M) SDE: the exact exponential-integrator step of the data-prediction SDE with eta times the
    ODE's decay, a second-order correction from the previous prediction (midpoint or heun), and fresh noise.
    eta = 0 is DPM-Solver++(2M) itself."""
    if len(sigmas) <= 1:
        return x
    if solver_type not in ("heun", "midpoint"):
        raise ValueError(f"solver_type: expected 'heun' or 'midpoint', got {solver_type!r}")
    extra_args = extra_args or {}
    noise_sampler = _noise_sampler(x, extra_args, noise_sampler)
    ms = _model_sampling(model)
    sigmas = offset_first_sigma(sigmas, ms)
    s_noise = s_noise * getattr(ms, "noise_scale", 1.0)
    s_in = _s_in(x)
    old_denoised, h, h_last = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = half_log_snr(sigmas[i], ms), half_log_snr(sigmas[i + 1], ms)
            h = lam_t - lam_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lam_t.exp()
            phi = (-h_eta).expm1().neg()  # 1 - e^(-h (1 + eta))
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * phi * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * (phi / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * alpha_t * phi * (1 / r) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                scale = sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * scale
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(
    model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None
):
    return sample_dpmpp_2m_sde(
        model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, solver_type="heun"
    )


from .unipc import sample_unipc, sample_unipc_bh2  # noqa: E402  (UniPC is its own file)

SAMPLERS = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpm_2": sample_dpm_2,
    "dpmpp_2m": sample_dpmpp_2m,
    "euler_ancestral": sample_euler_ancestral,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_heun": sample_dpmpp_2m_sde_heun,
    "uni_pc": sample_unipc,
    "uni_pc_bh2": sample_unipc_bh2,
}
