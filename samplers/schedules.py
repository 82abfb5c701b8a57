"""Noise schedules in the k-diffusion "sigma" convention that ComfyUI uses.

Everything here is written from the published formulas (the Stable Diffusion discrete schedule, Karras et al. 2022,
rectified-flow time shifting, the Beta schedule of Lee et al. 2024, the KL-optimal schedule as AUTOMATIC1111's pull
request 15608 gives it, Genmo's linear-quadratic schedule for Mochi, DDIM's uniform timesteps) so that the pure-PyTorch
testbed and ComfyUI produce the same sigmas for the same settings. The host tier checks that against ComfyUI itself
(tests/host/test_host_kdiff_parity.py, ``comfy.samplers.calculate_sigmas``).

A model's sampling is described by a small object, as ComfyUI's ``model_sampling`` is:

* ``Discrete(table)``: ComfyUI's ModelSamplingDiscrete (eps / v models): a table of sigmas indexed by
  timestep; ``timestep(sigma)`` is the nearest entry in log-sigma, ``sigma(t)`` interpolates log-sigma.
* ``Flow(shift)``: ComfyUI's ModelSamplingDiscreteFlow (CONST, rectified flow), multiplier 1000:
  ``sigma(t) = shift * u / (1 + (shift - 1) * u)`` with ``u = t / 1000``, and ``timestep(sigma) = 1000 * sigma``
  (ComfyUI's own pair; they are not inverse for shift != 1, and the "normal" schedule inherits that).

``get_sigmas(name, n, sampling)`` takes either object, a bare sigma table (a Discrete) or None (the SD1.5 table).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

SCHEDULERS = ("normal", "karras", "exponential", "sgm_uniform", "simple", "beta")
#: ComfyUI's other schedulers (its KSampler lists them too); not in the issue's grid: AdaptiveDiffusion's default
#: was never chosen on them (``bench adaptive --grid --grid-schedulers ddim_uniform,kl_optimal,linear_quadratic``)
MORE_SCHEDULERS = ("ddim_uniform", "kl_optimal", "linear_quadratic")
ALL_SCHEDULERS = SCHEDULERS + MORE_SCHEDULERS


def _discrete_sigmas64(beta_start: float, beta_end: float, timesteps: int) -> torch.Tensor:
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


#: the last alpha-bar of ComfyUI's zero-terminal-SNR table (rescale_zero_terminal_snr_sigmas): sigma_max ~4518
ZSNR_LAST_ALPHA_BAR = 4.8973451890853435e-08


def _zsnr64(sigmas: torch.Tensor) -> torch.Tensor:
    """ComfyUI's ``rescale_zero_terminal_snr_sigmas`` (Lin et al. 2024, "Common diffusion noise schedules and sample
    steps are flawed"): sqrt(alpha-bar) shifted so the last timestep is zero and scaled so the first is unchanged, the
    last alpha-bar then set to ZSNR_LAST_ALPHA_BAR (a finite sigma_max), in the table's dtype."""
    a = (1 / (sigmas * sigmas + 1)).sqrt()
    a0, a_t = a[0].clone(), a[-1].clone()
    a = (a - a_t) * (a0 / (a0 - a_t))
    alphas_bar = a**2
    alphas_bar[-1] = ZSNR_LAST_ALPHA_BAR
    return ((1 - alphas_bar) / alphas_bar) ** 0.5


def discrete_sigmas(
    beta_start: float = 0.00085, beta_end: float = 0.012, timesteps: int = 1000, zsnr: bool = False
) -> torch.Tensor:
    """The 1000 sigmas of Stable Diffusion's "scaled_linear" beta schedule (ascending).

    sigma_t = sqrt((1 - abar_t) / abar_t): an eps model run on x / sqrt(1 + sigma^2) at timestep t.
    The betas are computed in float64, as ComfyUI does, then stored as float32. zsnr: rescaled to zero terminal
    SNR as ComfyUI's ModelSamplingDiscrete(zsnr=True) does (v-prediction ztsnr checkpoints; sigma_max ~4518).
    """
    table = _discrete_sigmas64(beta_start, beta_end, timesteps)
    return (_zsnr64(table) if zsnr else table).float()


class Discrete:
    """ComfyUI's ModelSamplingDiscrete: ``sigmas`` (ascending, one per timestep) and their logs.

    Discrete() is Stable Diffusion's table (ComfyUI's default betas, linear 0.00085..0.012); Discrete(table)
    any other ascending table (its logs are taken in float64 when the table is float64, as ComfyUI does);
    Discrete(zsnr=True) SD's table rescaled to zero terminal SNR, as ComfyUI's ModelSamplingDiscrete(zsnr=True)."""

    kind = "discrete"

    def __init__(self, sigmas: torch.Tensor | None = None, zsnr: bool = False):
        if zsnr and sigmas is not None:
            raise ValueError("zsnr: expected no sigma table with zsnr=True (it rescales Stable Diffusion's)")
        table = _discrete_sigmas64(0.00085, 0.012, 1000) if sigmas is None else torch.as_tensor(sigmas)
        table = _zsnr64(table) if zsnr else table
        if table.ndim != 1 or table.numel() < 2 or not bool((table[1:] > table[:-1]).all()) or table[0] <= 0:
            raise ValueError("sigmas: expected a 1-D ascending table of positive sigmas (one per timestep)")
        self.sigmas = table.float()
        self.log_sigmas = table.log().float()

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma) -> torch.Tensor:
        """Index of the table entry nearest to ``sigma`` in log-sigma (a long tensor of sigma's shape)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        dists = sigma.log() - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape)

    def sigma(self, timestep) -> torch.Tensor:
        """Log-linear interpolation of the table at a continuous timestep (clamped to the table)."""
        t = torch.as_tensor(timestep).float().clamp(0, len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * 999.0)))


class Flow:
    """ComfyUI's ModelSamplingDiscreteFlow (rectified flow, CONST): x_sigma = (1 - sigma) x0 + sigma * noise.

    shift: the time shift (SD3 3.0, ComfyUI's default 1.0); the table holds sigma(t) for t = 1..timesteps
    times multiplier / timesteps, as ComfyUI's does, so sigma_max = 1 and sigma_min = sigma(1)."""

    kind = "flow"

    def __init__(self, shift: float, multiplier: float = 1000, timesteps: int = 1000, noise_scale: float = 1.0):
        if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
            raise ValueError(f"shift: expected a positive number, got {shift!r}")
        self.shift, self.multiplier, self.noise_scale = float(shift), multiplier, float(noise_scale)
        self.sigmas = self.sigma((torch.arange(1, timesteps + 1, 1) / timesteps) * multiplier)

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma) -> torch.Tensor:
        return torch.as_tensor(sigma) * self.multiplier

    def sigma(self, timestep) -> torch.Tensor:
        return time_shift(self.shift, torch.as_tensor(timestep) / self.multiplier)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return time_shift(self.shift, 1.0 - percent)


def time_shift(shift: float, t):
    """Rectified-flow time shift: shift * t / (1 + (shift - 1) * t) (the identity for shift 1)."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def is_flow(sampling) -> bool:
    return isinstance(sampling, Flow)


def as_sampling(sampling) -> Discrete | Flow:
    """A Discrete or Flow from what get_sigmas accepts: one of them, a bare sigma table, or None (SD1.5)."""
    if sampling is None:
        return Discrete()
    if isinstance(sampling, (Discrete, Flow)):
        return sampling
    if isinstance(sampling, torch.Tensor):
        return Discrete(sampling)
    raise ValueError(
        f"sampling: expected schedules.Discrete, schedules.Flow, a sigma table tensor or None, got {type(sampling)}"
    )


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


def _append_zero(s: torch.Tensor) -> torch.Tensor:
    return torch.cat([s, s.new_zeros([1])])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) schedule: n sigmas from sigma_max to sigma_min, then a final 0."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    s = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return _append_zero(s)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """n sigmas evenly spaced in log-sigma from sigma_max to sigma_min, then 0."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def normal(n: int, sigmas: torch.Tensor) -> torch.Tensor:
    """ComfyUI's "normal" scheduler on a bare sigma table: n timesteps evenly spaced from t_max to t_min
    (both included), then 0."""
    return uniform_timesteps(Discrete(sigmas), n)


def uniform_timesteps(sampling, n: int, sgm: bool = False) -> torch.Tensor:
    """ComfyUI's "normal" (sgm=False) and "sgm_uniform" (sgm=True) schedulers: timesteps evenly spaced from
    timestep(sigma_max) to timestep(sigma_min), mapped through sigma(t); "normal" includes the end, sgm_uniform
    takes n + 1 points and drops the last. A final 0 unless the last sigma is already ~0."""
    s = as_sampling(sampling)
    start, end = s.timestep(s.sigma_max), s.timestep(s.sigma_min)
    append_zero = True
    if sgm:
        ts = torch.linspace(float(start), float(end), n + 1)[:-1]
    else:
        if math.isclose(float(s.sigma(end)), 0, abs_tol=0.00001):
            n += 1
            append_zero = False
        ts = torch.linspace(float(start), float(end), n)
    sig = s.sigma(ts).float()
    return _append_zero(sig) if append_zero else sig


def simple(sampling, n: int) -> torch.Tensor:
    """ComfyUI's "simple": every (len(table) / n)-th table entry from the top, then 0."""
    s = as_sampling(sampling)
    ss = len(s.sigmas) / n
    return _append_zero(torch.stack([s.sigmas[-(1 + int(x * ss))] for x in range(n)]).float())


def beta_schedule(sampling, n: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """ComfyUI's "beta" (Lee et al. 2024, "Beta Sampling is All You Need"): the table entries at the timesteps
    round(ppf_Beta(alpha, beta)(1 - i / n) * (len - 1)), i = 0..n-1, repeats dropped, then 0. The ppf is this
    module's own (bisection on the regularized incomplete beta), so no scipy."""
    s = as_sampling(sampling)
    ts = _beta_timesteps(n, float(alpha), float(beta), len(s.sigmas) - 1)
    sig, last = [], -1
    for t in ts:
        if t != last:
            sig.append(s.sigmas[int(t)])
        last = t
    return _append_zero(torch.stack(sig).float())


@functools.lru_cache(maxsize=256)
def _beta_timesteps(n: int, alpha: float, beta: float, total: int) -> tuple[float, ...]:
    p = 1 - np.linspace(0, 1, n, endpoint=False)
    return tuple(np.rint(beta_ppf(p, alpha, beta) * total).tolist())


def betainc(a: float, b: float, x) -> np.ndarray:
    """Regularized incomplete beta function I_x(a, b) (float64), by its continued fraction (modified Lentz),
    on the side of the mean where it converges fast."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    flip = x > (a + 1) / (a + b + 2)
    xs = np.where(flip, 1 - x, x)
    aa, bb = np.where(flip, b, a), np.where(flip, a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        lbeta = np.vectorize(math.lgamma)(aa) + np.vectorize(math.lgamma)(bb) - np.vectorize(math.lgamma)(aa + bb)
        front = np.exp(aa * np.log(xs) + bb * np.log1p(-xs) - lbeta) / aa
    tiny = 1e-300
    c = np.ones_like(xs)
    d = 1 - (aa + bb) * xs / (aa + 1)
    d = 1 / np.where(np.abs(d) < tiny, tiny, d)
    h = d.copy()
    for m in range(1, 300):
        for num in (
            m * (bb - m) * xs / ((aa + 2 * m - 1) * (aa + 2 * m)),
            -(aa + m) * (aa + bb + m) * xs / ((aa + 2 * m) * (aa + 2 * m + 1)),
        ):
            d = 1 + num * d
            d = 1 / np.where(np.abs(d) < tiny, tiny, d)
            c = 1 + num / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            h = h * d * c
        if np.all(np.abs(d * c - 1) < 4e-16):
            break
    val = np.where(xs > 0, front * h, 0.0)
    return np.where(flip, 1 - val, val)


def beta_ppf(p, a: float, b: float) -> np.ndarray:
    """Quantile function of Beta(a, b): the x with I_x(a, b) = p, by bisection to float64 resolution. For a == b
    it solves on the lower half and reflects, so the median is exactly 1/2 (as scipy's is: ComfyUI rounds
    999 * ppf, and 499.5 must round to even)."""
    p = np.asarray(p, dtype=np.float64)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("p: expected probabilities in [0, 1]")
    if a == b:
        upper = p > 0.5
        x = _bisect_ppf(np.where(upper, 1 - p, p), a, b)
        return np.where(p == 0.5, 0.5, np.where(upper, 1 - x, x))
    return _bisect_ppf(p, a, b)


def _bisect_ppf(p: np.ndarray, a: float, b: float) -> np.ndarray:
    lo, hi = np.zeros_like(p), np.ones_like(p)
    for _ in range(64):
        mid = (lo + hi) / 2
        below = betainc(a, b, mid) < p
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return np.where(p <= 0, 0.0, np.where(p >= 1, 1.0, (lo + hi) / 2))


def ddim_uniform(sampling, n: int) -> torch.Tensor:
    """ComfyUI's "ddim_uniform": every (len(table) // n)-th table entry from timestep 1 up, descending, then 0 (no 0
    where the table's entry 1 is already ~0; then one step more). Like ComfyUI's it can return more steps than n
    where the stride does not divide the table (on a 1000-entry table 31 for 30, 7 for 6; 20 and 50 exactly)."""
    table = as_sampling(sampling).sigmas
    near_zero = math.isclose(float(table[1]), 0, abs_tol=0.00001)
    stride = max(len(table) // (n + 1 if near_zero else n), 1)
    picked = table[1::stride].flip(0).float()
    return picked if near_zero else _append_zero(picked)


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """ComfyUI's "kl_optimal" (AUTOMATIC1111 #15608): n sigmas evenly spaced in arctan(sigma) from sigma_max to
    sigma_min, then 0. At least 2 steps (ComfyUI divides by n - 1: one step gives it a NaN sigma)."""
    if n < 2:
        raise ValueError(f"steps: kl_optimal needs at least 2 steps (its spacing divides by steps - 1), got {n}")
    w = torch.arange(n, dtype=torch.float).div_(n - 1)
    out = w.new_zeros(n + 1)
    out[:-1] = (w * math.atan(sigma_min) + (1 - w) * math.atan(sigma_max)).tan_()
    return out


def linear_quadratic(sampling, n: int, threshold_noise: float = 0.025) -> torch.Tensor:
    """ComfyUI's "linear_quadratic" (Genmo's Mochi schedule): in units of sigma_max, the first n // 2 steps lower
    the noise linearly by ``threshold_noise`` in all, the rest follow a quadratic down to 0 that joins it with the
    same slope. Made for flow models (sigma_max 1); on an eps model it spends half the steps near sigma_max."""
    if n == 1:
        ramp = [1.0, 0.0]
    else:
        lin = n // 2
        quad = n - lin
        gap = lin - threshold_noise * n
        a = gap / (lin * quad**2)
        b = threshold_noise / lin - 2 * gap / (quad**2)
        c = a * (lin**2)
        noise = [i * threshold_noise / lin for i in range(lin)] + [a * (i**2) + b * i + c for i in range(lin, n)]
        ramp = [1.0 - v for v in noise + [1.0]]
    return torch.FloatTensor(ramp) * as_sampling(sampling).sigma_max


def flow_sigmas(n: int, shift: float = 3.0) -> torch.Tensor:
    """Rectified-flow schedule (SD3-style "simple"): t uniform in (0, 1], time-shifted, then 0.

    x_sigma = (1 - sigma) * x0 + sigma * noise; shift > 1 spends more steps at high noise.
    """
    t = torch.linspace(1.0, 0.0, n + 1)[:-1]
    s = shift * t / (1 + (shift - 1) * t)
    return torch.cat([s, s.new_zeros([1])])


def get_sigmas(scheduler: str, n: int, sampling=None) -> torch.Tensor:
    """ComfyUI's ``calculate_sigmas(model_sampling, scheduler, n)``: n + 1 descending sigmas ending in 0 (beta
    may give fewer when two of its timesteps round alike, as ComfyUI's does).

    scheduler: one of ALL_SCHEDULERS. sampling: Discrete, Flow, a bare ascending sigma table (a Discrete), or None
    (Stable Diffusion's table). karras, exponential and kl_optimal use only the model's sigma_min and sigma_max."""
    if scheduler not in ALL_SCHEDULERS:
        raise ValueError(f"scheduler: expected one of {', '.join(ALL_SCHEDULERS)}, got {scheduler!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"steps: expected an integer >= 1, got {n!r}")
    s = as_sampling(sampling)
    if scheduler == "karras":
        return karras(n, float(s.sigma_min), float(s.sigma_max))
    if scheduler == "exponential":
        return exponential(n, float(s.sigma_min), float(s.sigma_max))
    if scheduler == "normal":
        return uniform_timesteps(s, n)
    if scheduler == "sgm_uniform":
        return uniform_timesteps(s, n, sgm=True)
    if scheduler == "simple":
        return simple(s, n)
    if scheduler == "ddim_uniform":
        return ddim_uniform(s, n)
    if scheduler == "kl_optimal":
        return kl_optimal(n, float(s.sigma_min), float(s.sigma_max))
    if scheduler == "linear_quadratic":
        return linear_quadratic(s, n)
    return beta_schedule(s, n)


def ksampler_sigmas(scheduler: str, n: int, sampling=None, sampler: str | None = None) -> torch.Tensor:
    """The sigmas ComfyUI's KSampler node runs for ``sampler``: samplers that discard the penultimate sigma
    (dpm_2, dpm_2_ancestral, uni_pc, uni_pc_bh2; samplers/support.py) get a schedule of n + 1 steps without its
    last nonzero sigma, the others ``get_sigmas(scheduler, n, sampling)``."""
    from .support import SUPPORT

    entry = SUPPORT.get(sampler) if sampler is not None else None
    if entry is not None and entry.discard_penultimate_sigma:
        s = get_sigmas(scheduler, n + 1, sampling)
        return torch.cat([s[:-2], s[-1:]])
    return get_sigmas(scheduler, n, sampling)


def ksampler_schedules(sampling=None, sampler: str | None = None):
    """(schedule(name, n), names) for ``samplers.split_run``: every scheduler of ALL_SCHEDULERS as KSampler runs it for
    ``sampler`` (``ksampler_sigmas``: the penultimate sigma discarded for the samplers that do, then also whole, as
    BasicScheduler gives it; ``split_run.schedule_candidates``). The nodes build the same from ComfyUI's schedulers."""
    from .split_run import schedule_candidates
    from .support import SUPPORT

    entry = SUPPORT.get(sampler) if sampler is not None else None
    discard = entry is not None and entry.discard_penultimate_sigma
    return schedule_candidates(lambda name, n: get_sigmas(name, n, sampling), ALL_SCHEDULERS, discard)


def vp_scale(sigma: torch.Tensor | float) -> torch.Tensor | float:
    """1 / sqrt(1 + sigma^2): maps ComfyUI's VE latents of an eps/v model to the VP latents."""
    if isinstance(sigma, torch.Tensor):
        return (1 + sigma.float() ** 2).rsqrt()
    return 1.0 / math.sqrt(1.0 + sigma * sigma)
