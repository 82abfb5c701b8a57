"""The plain-PyTorch samplers and schedulers (samplers/kdiff.py, samplers/unipc.py, samplers/schedules.py) on exact
denoisers, without ComfyUI. Parity with ComfyUI's own functions is tests/host/test_host_kdiff_parity.py."""

import inspect
import math

import numpy as np
import pytest
import torch

from comfyui_tempo.samplers import kdiff, schedules, support
from comfyui_tempo.testbed.exact import FlowDenoiser, GaussianMixtureDenoiser

SAMPLINGS = {"discrete": schedules.Discrete(), "flow": schedules.Flow(shift=3.0)}
DETERMINISTIC = [n for n in kdiff.SAMPLERS if not support.SUPPORT[n].stochastic]
STOCHASTIC = [n for n in kdiff.SAMPLERS if support.SUPPORT[n].stochastic]


class WithSampling:
    """A denoiser that carries its model sampling, as ComfyUI's model wrapper does."""

    def __init__(self, den, sampling):
        self.den, self.model_sampling = den, sampling

    def __call__(self, x, sigma, **extra):
        return self.den(x, sigma)


def gmm(dim=16, k=3, std=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return GaussianMixtureDenoiser(torch.randn(k, dim, generator=g), std)


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", schedules.SCHEDULERS)
@pytest.mark.parametrize("kind", ["discrete", "flow", "table"])
@pytest.mark.parametrize("n", [1, 2, 5, 10, 37, 50])
def test_schedule_shape(name, kind, n):
    sampling = schedules.discrete_sigmas() if kind == "table" else SAMPLINGS[kind]
    s = schedules.get_sigmas(name, n, sampling)
    ms = schedules.as_sampling(sampling)
    assert s.dtype == torch.float32 and s.ndim == 1
    assert len(s) == n + 1  # beta could merge two timesteps that round alike; not at these n
    assert s[-1] == 0 and bool((s[:-1] > 0).all())
    assert bool((s[1:] < s[:-1]).all()), f"{name} not decreasing: {s}"
    assert float(s[0]) == pytest.approx(float(ms.sigma_max), rel=1e-6)
    if name in ("karras", "exponential") or (name == "normal" and kind != "flow"):
        assert float(s[-2]) == pytest.approx(float(ms.sigma_min), rel=1e-5) or n == 1


@pytest.mark.parametrize("name", schedules.MORE_SCHEDULERS)
@pytest.mark.parametrize("kind", ["discrete", "flow", "table"])
@pytest.mark.parametrize("n", [2, 5, 10, 20, 37, 50])
def test_more_schedulers_shape(name, kind, n):
    """ComfyUI's other three schedulers (bit-identical to ComfyUI's in the host tier): descending from sigma_max
    (ddim_uniform: from the table entry its stride reaches) to 0, n steps (ddim_uniform: n or more, as ComfyUI's)."""
    sampling = schedules.discrete_sigmas() if kind == "table" else SAMPLINGS[kind]
    s = schedules.get_sigmas(name, n, sampling)
    ms = schedules.as_sampling(sampling)
    assert s.dtype == torch.float32 and s.ndim == 1 and s[-1] == 0 and bool((s[:-1] > 0).all())
    assert bool((s[1:] < s[:-1]).all()), f"{name} not decreasing: {s}"
    if name == "ddim_uniform":
        stride = len(ms.sigmas) // n
        assert len(s) - 1 == len(range(1, len(ms.sigmas), stride)) >= n
        assert float(s[-2]) == float(ms.sigmas[1]) and float(s[0]) <= float(ms.sigma_max)
    else:
        assert len(s) == n + 1 and float(s[0]) == pytest.approx(float(ms.sigma_max), rel=1e-6)
    if name == "kl_optimal":
        a = s[:-1].double().atan()
        assert torch.allclose(a[1:] - a[:-1], torch.full((n - 1,), float(a[1] - a[0]), dtype=torch.float64), atol=1e-6)
        assert float(s[-2]) == pytest.approx(float(ms.sigma_min), rel=1e-5)
    if name == "linear_quadratic" and n >= 4:  # half the steps lower the noise by 2.5 % of sigma_max, linearly
        lin = s[: n // 2 + 1].double() / float(ms.sigma_max)
        assert torch.allclose(
            lin[:-1] - lin[1:], torch.full((n // 2,), 0.025 / (n // 2), dtype=torch.float64), atol=1e-6
        )


def test_more_schedulers_clear_errors():
    with pytest.raises(ValueError, match="kl_optimal needs at least 2 steps"):
        schedules.get_sigmas("kl_optimal", 1)
    with pytest.raises(ValueError, match="expected one of .*linear_quadratic"):
        schedules.get_sigmas("kl_optimal_v2", 10)
    assert torch.equal(
        schedules.get_sigmas("linear_quadratic", 1), torch.tensor([float(schedules.Discrete().sigma_max), 0.0])
    )


def test_flow_normal_keeps_comfyui_timestep_pair():
    """ComfyUI's flow sampling maps sigma -> timestep as 1000 sigma but timestep -> sigma through the shift, so its
    "normal" schedule ends at shift(sigma_min), not sigma_min; ours reproduces that."""
    f = schedules.Flow(shift=3.0)
    s = schedules.get_sigmas("normal", 10, f)
    assert float(s[-2]) == pytest.approx(float(schedules.time_shift(3.0, f.sigma_min)), rel=1e-5)
    assert float(s[-2]) > float(f.sigma_min) * 2
    assert float(f.sigma_max) == 1.0 and float(f.sigma_min) == pytest.approx(3e-3 / 1.002, rel=1e-6)


def test_schedule_formulas():
    d = schedules.Discrete()
    lo, hi = float(d.sigma_min), float(d.sigma_max)
    e = schedules.get_sigmas("exponential", 8, d)[:-1].double().log()
    assert torch.allclose(e[1:] - e[:-1], torch.full((7,), (math.log(lo) - math.log(hi)) / 7, dtype=torch.float64))
    k = schedules.get_sigmas("karras", 8, d)[:-1].double() ** (1 / 7)
    assert torch.allclose(k[1:] - k[:-1], torch.full((7,), (lo ** (1 / 7) - hi ** (1 / 7)) / 7, dtype=torch.float64))
    # simple on a flow model is the shifted uniform grid (flow_sigmas) when n divides the table
    assert torch.allclose(schedules.get_sigmas("simple", 10, schedules.Flow(3.0)), schedules.flow_sigmas(10, 3.0))
    # simple on the discrete table takes every (1000 / n)-th entry from the top
    assert torch.equal(schedules.get_sigmas("simple", 4, d)[:-1], d.sigmas[[999, 749, 499, 249]])
    # sgm_uniform drops normal's last point of n + 1
    sg = schedules.get_sigmas("sgm_uniform", 5, d)
    nm = schedules.uniform_timesteps(d, 6)
    assert torch.allclose(sg[:-1], nm[:5])
    # the beta schedule with Beta(1, 1) is the uniform grid of timesteps
    b = schedules.beta_schedule(d, 10, alpha=1.0, beta=1.0)
    assert torch.equal(b[:-1], d.sigmas[np.rint((1 - np.arange(10) / 10) * 999).astype(int)])


def test_get_sigmas_back_compatible():
    table = schedules.discrete_sigmas()
    for n in (5, 20):
        assert torch.equal(schedules.get_sigmas("normal", n, table), schedules.normal(n, table))
        assert torch.equal(schedules.get_sigmas("karras", n), schedules.karras(n, float(table[0]), float(table[-1])))
        assert torch.equal(schedules.get_sigmas("karras", n, table), schedules.get_sigmas("karras", n, None))
    assert torch.equal(schedules.Discrete().sigmas, table)


def test_discrete_timestep_round_trip():
    d = schedules.Discrete()
    idx = torch.arange(1000)
    assert torch.equal(d.timestep(d.sigmas), idx)
    assert torch.allclose(d.sigma(idx.float()), d.sigmas, rtol=1e-6)
    mid = d.sigma(torch.tensor(10.5))
    assert float(d.sigmas[10]) < float(mid) < float(d.sigmas[11])


def test_ksampler_sigmas_discard_penultimate():
    d = schedules.Discrete()
    for name in ("uni_pc", "uni_pc_bh2", "dpm_2", "dpm_2_ancestral"):
        s = schedules.ksampler_sigmas("karras", 10, d, name)
        full = schedules.get_sigmas("karras", 11, d)
        assert len(s) == 11 and torch.equal(s, torch.cat([full[:-2], full[-1:]]))
    assert torch.equal(schedules.ksampler_sigmas("karras", 10, d, "euler"), schedules.get_sigmas("karras", 10, d))


def test_beta_quantiles_against_closed_forms():
    x = np.linspace(0, 1, 101)
    # Beta(1/2, 1/2) is the arcsine law, Beta(2, 1) has CDF x^2, Beta(1, 1) is uniform
    assert np.allclose(schedules.betainc(0.5, 0.5, x), 2 / np.pi * np.arcsin(np.sqrt(x)), atol=1e-13)
    assert np.allclose(schedules.betainc(2.0, 1.0, x), x**2, atol=1e-13)
    p = np.linspace(0, 1, 57)
    assert np.allclose(schedules.beta_ppf(p, 0.5, 0.5), np.sin(np.pi * p / 2) ** 2, atol=1e-13)
    assert np.allclose(schedules.beta_ppf(p, 2.0, 1.0), np.sqrt(p), atol=1e-13)
    assert np.allclose(schedules.beta_ppf(p, 1.0, 1.0), p, atol=1e-13)
    # Beta(0.6, 0.6), ComfyUI's: the ppf inverts the CDF, the CDF matches a numerical integral of the density
    q = schedules.beta_ppf(p, 0.6, 0.6)
    assert np.allclose(schedules.betainc(0.6, 0.6, q), p, atol=1e-13)
    assert schedules.beta_ppf(np.array([0.5]), 0.6, 0.6)[0] == 0.5  # exactly: 999 * 0.5 must round to even
    u = np.linspace(0, 0.4**0.6, 400001)  # x = u^(1/a) removes the x^(a - 1) singularity at 0
    f = (1 - u ** (1 / 0.6)) ** (0.6 - 1) / 0.6
    integral = np.sum((f[1:] + f[:-1]) / 2 * np.diff(u)) / math.exp(2 * math.lgamma(0.6) - math.lgamma(1.2))
    assert schedules.betainc(0.6, 0.6, np.array([0.4]))[0] == pytest.approx(integral, abs=1e-9)


def test_schedule_errors_name_the_input():
    with pytest.raises(ValueError, match="scheduler"):
        schedules.get_sigmas("nope", 10)
    with pytest.raises(ValueError, match="steps"):
        schedules.get_sigmas("karras", 0)
    with pytest.raises(ValueError, match="shift"):
        schedules.Flow(shift=-1.0)
    with pytest.raises(ValueError, match="sampling"):
        schedules.get_sigmas("normal", 5, "sd15")
    with pytest.raises(ValueError, match="sigmas"):
        schedules.Discrete(torch.tensor([3.0, 2.0, 1.0]))


# ---------------------------------------------------------------- samplers


def test_every_sampler_is_in_the_support_table():
    """One table: stochastic samplers (support.py) are the ones that take a noise sampler."""
    for name, fn in kdiff.SAMPLERS.items():
        assert name in support.SUPPORT, name
        assert support.SUPPORT[name].stochastic == ("noise_sampler" in inspect.signature(fn).parameters), name
        assert support.name_of_function(fn) == name


def _errors(name, den, noise, steps, ref_steps=640):
    fn = kdiff.SAMPLERS[name]
    ref_sig = schedules.get_sigmas("karras", ref_steps)
    ref = fn(den, noise * ref_sig[0], ref_sig)
    out = []
    for n in steps:
        sig = schedules.get_sigmas("karras", n)
        out.append(float((fn(den, noise * sig[0], sig) - ref).norm() / ref.norm()))
    return out


# the observed order between 20 and 40 karras steps on the mixture (the asymptotic orders are 1, 2, 2, 2, 4, 3-4)
ORDER = {"euler": 0.9, "heun": 1.8, "dpm_2": 1.8, "dpmpp_2m": 1.7, "lms": 2.4, "uni_pc": 2.8, "uni_pc_bh2": 2.8}


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_converge_at_their_order(name):
    noise = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    e10, e20, e40 = _errors(name, gmm(), noise, (10, 20, 40))
    assert e10 > e20 > e40
    assert math.log2(e20 / e40) > ORDER[name], (name, e10, e20, e40)


def test_lms_coefficients_integrate_polynomials_exactly():
    t = np.array([14.6, 9.1, 5.5, 3.2, 1.7, 0.9])
    for order in (1, 2, 3, 4):
        i = 4
        for k in range(order):  # the derivative t^k, a polynomial of degree < order
            weights = [kdiff.lms_coefficient(t, i, j, order) for j in range(order)]
            approx = sum(w * t[i - j] ** k for j, w in enumerate(weights))
            assert approx == pytest.approx((t[i + 1] ** (k + 1) - t[i] ** (k + 1)) / (k + 1), rel=1e-12)
    with pytest.raises(ValueError, match="order"):
        kdiff.lms_coefficient(t, 1, 0, 4)


@pytest.mark.parametrize(
    "sde,ode", [("euler_ancestral", "euler"), ("dpm_2_ancestral", "dpm_2"), ("dpmpp_2m_sde", "dpmpp_2m")]
)
@pytest.mark.parametrize("kind", ["discrete", "flow"])
def test_eta_zero_is_the_ode_sampler(sde, ode, kind):
    """With eta 0 the ancestral / SDE samplers are their ODE samplers (dpmpp_2m_sde's midpoint form is
    DPM-Solver++(2M)); on a flow model through the rectified-flow forms."""
    if kind == "flow" and sde == "dpmpp_2m_sde":
        pytest.skip("ComfyUI's dpmpp_2m has no flow form (its lambda is -log sigma), dpmpp_2m_sde has")
    base = gmm()
    den = kdiff.CountingDenoiser(
        WithSampling(FlowDenoiser(base) if kind == "flow" else base, SAMPLINGS[kind])
    )  # looked up through the wrapper
    noise = torch.randn(8, 16, generator=torch.Generator().manual_seed(2))
    sig = schedules.get_sigmas("karras" if kind == "discrete" else "simple", 12, SAMPLINGS[kind])
    a = kdiff.SAMPLERS[sde](den, noise * sig[0], sig, eta=0.0)
    b = kdiff.SAMPLERS[ode](den, noise * sig[0], sig)
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())


def test_flow_forms_differ_from_the_ve_forms():
    """A Flow model_sampling switches the ancestral samplers to their rectified-flow form (ComfyUI's CONST)."""
    den = FlowDenoiser(gmm())
    noise = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))
    sig = schedules.get_sigmas("simple", 10, SAMPLINGS["flow"])
    for name in STOCHASTIC:
        ve = kdiff.SAMPLERS[name](den, noise * sig[0], sig, extra_args={"seed": 4})
        rf = kdiff.SAMPLERS[name](WithSampling(den, SAMPLINGS["flow"]), noise * sig[0], sig, extra_args={"seed": 4})
        assert not torch.allclose(ve, rf, atol=1e-3), name


@pytest.mark.parametrize("name", STOCHASTIC)
@pytest.mark.parametrize("kind", ["discrete", "flow"])
def test_stochastic_samplers_sample_the_target(name, kind):
    """On a single Gaussian N(mu, 0.5^2) the samples' mean is the target's and their standard deviation
    approaches the target's as the steps grow (ancestral steps shrink it by O(step))."""
    g = torch.Generator().manual_seed(5)
    mu = torch.randn(1, 8, generator=g)
    target = GaussianMixtureDenoiser(mu, 0.5)
    den = WithSampling(FlowDenoiser(target) if kind == "flow" else target, SAMPLINGS[kind])
    noise = torch.randn(2000, 8, generator=g)
    gaps = []
    for n in (20, 160):
        sig = schedules.get_sigmas("karras", n, SAMPLINGS[kind])
        out = kdiff.SAMPLERS[name](den, noise * sig[0], sig, extra_args={"seed": 6})
        assert torch.isfinite(out).all()
        assert (out.mean(0) - mu[0]).abs().max() < 4 * 0.5 / math.sqrt(2000)
        gaps.append(abs(float(out.std(0).mean()) - 0.5))
    assert gaps[1] < 0.02 and gaps[1] < gaps[0] + 0.005, gaps


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_use_the_given_noise(name):
    den = gmm()
    noise = torch.randn(4, 16, generator=torch.Generator().manual_seed(7))
    sig = schedules.get_sigmas("karras", 8)
    fn = kdiff.SAMPLERS[name]
    a = fn(den, noise * sig[0], sig, extra_args={"seed": 1})
    assert torch.equal(a, fn(den, noise * sig[0], sig, extra_args={"seed": 1}))
    b = fn(den, noise * sig[0], sig, noise_sampler=kdiff.default_noise_sampler(noise, seed=1))
    assert torch.equal(a, b)
    calls = []

    def zero(s, s_next):
        calls.append((float(s), float(s_next)))
        return torch.zeros_like(noise)

    c = fn(den, noise * sig[0], sig, noise_sampler=zero)
    assert calls and not torch.allclose(a, c)


@pytest.mark.parametrize("name", sorted(kdiff.SAMPLERS))
def test_evaluations_per_step(name):
    """One evaluation per step, two for the two-stage samplers (none extra on the last step to 0); the
    second evaluation of heun, and of dpm_2_ancestral at eta 1 (its midpoint between sigma_i and sigma_down), is at
    the step's end sigma (within the controller's tolerance), as support.py says."""
    seen = []
    base = gmm()

    def den(x, sigma, **kw):
        seen.append(float(sigma[0]))
        return base(x, sigma)

    sig = schedules.get_sigmas("karras", 10)
    noise = torch.randn(2, 16, generator=torch.Generator().manual_seed(8))
    kdiff.SAMPLERS[name](den, noise * sig[0], sig, extra_args={"seed": 0})
    two_stage = support.SUPPORT[name].family == "multi-eval"
    assert len(seen) == (19 if two_stage else 10)
    on_schedule = all(any(abs(s - float(v)) <= 1e-5 * float(v) for v in sig[:-1]) for s in seen)
    assert support.SUPPORT[name].endpoint_corrector == (two_stage and on_schedule)
    if not two_stage:  # the multistep samplers evaluate each step's start once
        assert seen == [float(v) for v in sig[:-1]]


def test_unipc_corner_cases():
    den = gmm()
    noise = torch.randn(2, 16, generator=torch.Generator().manual_seed(9))
    sig = schedules.get_sigmas("karras", 6)
    keep = sig.clone()
    kdiff.sample_unipc(den, noise * sig[0], sig)
    assert torch.equal(sig, keep)  # ComfyUI's writes 0.001 into the caller's schedule; ours leaves it alone
    one = torch.tensor([10.0, 0.0])
    out = kdiff.sample_unipc(den, noise * 10, one)  # ComfyUI's one-step UniPC makes no update
    assert torch.allclose(out, noise * 10 * math.sqrt(1 + 1e-6) / math.sqrt(101))
    with pytest.raises(ValueError, match="variant"):
        kdiff.sample_unipc(den, noise * sig[0], sig, variant="bh3")
