"""The pack's plain-PyTorch samplers and schedulers (samplers/kdiff.py, unipc.py, schedules.py) against ComfyUI's own.

Schedulers: ``comfy.samplers.calculate_sigmas`` on the model samplings ComfyUI builds for an eps model (default SD1.5
betas, ModelSamplingDiscrete) and a flow model (ModelSamplingDiscreteFlow, shift 3), both read off real models
(``tempo_testnodes.tiny_sd_model``), against ``schedules.get_sigmas``: bit-identical, every scheduler of the
AdaptiveDiffusion grid and ComfyUI's other three (ddim_uniform, kl_optimal, linear_quadratic), 1-40, 50, 100, 333 and
1000 steps (kl_optimal from 2: ComfyUI's gives a NaN sigma at 1 step, ours a clear error); and KSampler's schedule (the
penultimate sigma dropped for uni_pc / dpm_2) against ``schedules.ksampler_sigmas``.

Samplers: ComfyUI's sampler functions (``comfy.samplers.sampler_object(name).sampler_function``: the
``comfy.k_diffusion.sampling`` functions and UniPC) run on a deterministic Gaussian-mixture denoiser (the pack's
``testbed.exact``, also as a flow model) behind a wrapper that exposes the real model's ``model_sampling`` where
ComfyUI's samplers read it; ours run on the same denoiser with ``schedules.Discrete()`` / ``schedules.Flow(3.0)``.
Same start, same schedule, the same seeded noise sampler for the stochastic ones. In float64 every sampler agrees
to 1e-9 of the output's scale (measured 1.5e-12 on 0.3.64 and 0.33); in float32 the k-diffusion samplers agree to
2e-5 (measured 5e-6). ComfyUI's UniPC works in VP latents through a float32 noise-prediction round trip that drifts
from its own float64 result (measured up to 9e-4 of the output's scale, 4e-2 absolute, on 3-step schedules); ours
is held to ComfyUI's float64 result instead, within 2e-5.
"""

import json

import pytest

SAMPLERS = ["euler", "dpmpp_2m", "heun", "uni_pc", "dpmpp_2m_sde", "euler_ancestral", "lms"]  # the grid's
EXTRA_SAMPLERS = ["dpm_2", "dpm_2_ancestral", "dpmpp_sde", "dpmpp_2m_sde_heun", "uni_pc_bh2"]
SCHEDULERS = ["normal", "karras", "simple", "sgm_uniform", "exponential", "beta"]  # the samplers run on these
MORE_SCHEDULERS = ["ddim_uniform", "kl_optimal", "linear_quadratic"]

SNIPPET = r"""
import json, types
import torch
import comfy.model_base, comfy.model_sampling, comfy.samplers
from tempo_testnodes import tiny_sd_model
from comfyui_tempo.samplers import kdiff, schedules, support
from comfyui_tempo.testbed.exact import FlowDenoiser, GaussianMixtureDenoiser

NAMES, SCHEDS, MORE = json.loads(__NAMES__), json.loads(__SCHEDS__), json.loads(__MORE__)
patchers = {"eps": tiny_sd_model(comfy.model_base.ModelType.EPS),
            "flow": tiny_sd_model(comfy.model_base.ModelType.FLOW, shift=3.0)}
theirs = {k: p.get_model_object("model_sampling") for k, p in patchers.items()}
ours = {"eps": schedules.Discrete(), "flow": schedules.Flow(shift=3.0)}
R = {"comfy_samplers": list(comfy.samplers.SAMPLER_NAMES), "comfy_schedulers": list(comfy.samplers.SCHEDULER_NAMES),
     "classes": {k: [c.__name__ for c in (comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.ModelSamplingDiscreteFlow,
                                          comfy.model_sampling.EPS, comfy.model_sampling.CONST) if isinstance(v, c)]
                 for k, v in theirs.items()},
     "tables_equal": {k: bool(torch.equal(theirs[k].sigmas.float(), ours[k].sigmas)) for k in ours},
     "sched": {}, "ksampler": {}, "f64": {}, "f32": {}, "unipc_comfy_f32_drift": 0.0}

# -- schedulers
for kind in ours:
    for name in SCHEDS + MORE:
        bad = []
        for n in list(range(1, 41)) + [50, 100, 333, 1000]:
            a = comfy.samplers.calculate_sigmas(theirs[kind], name, n)
            if name == "kl_optimal" and n == 1:
                R["kl_optimal_1"] = [bool(torch.isnan(a).any())]
                try:
                    schedules.get_sigmas(name, n, ours[kind])
                except ValueError as e:
                    R["kl_optimal_1"].append(str(e))
                continue
            b = schedules.get_sigmas(name, n, ours[kind])
            if a.shape != b.shape or not torch.equal(a.float(), b):
                bad.append(n)
        R["sched"][f"{kind}/{name}"] = bad
    for sampler in ("euler", "uni_pc", "dpm_2"):
        for name in ("karras", "normal", "beta"):
            ks = comfy.samplers.KSampler(patchers[kind], 9, "cpu", sampler, name, 1.0)
            mine = schedules.ksampler_sigmas(name, 9, ours[kind], sampler)
            R["ksampler"][f"{kind}/{sampler}/{name}"] = bool(torch.equal(ks.sigmas.float(), mine))

# -- the zero-terminal-SNR table (v-prediction ztsnr checkpoints): ComfyUI's ModelSamplingDiscrete(zsnr=True)
zt, zo = comfy.model_sampling.ModelSamplingDiscrete(zsnr=True), schedules.Discrete(zsnr=True)
R["zsnr_tables_equal"] = [bool(torch.equal(zt.sigmas, zo.sigmas)), bool(torch.equal(zt.log_sigmas, zo.log_sigmas)),
                          bool(torch.equal(zt.sigmas, schedules.discrete_sigmas(zsnr=True)))]
R["zsnr_sigma_max"] = float(zt.sigma_max)
R["zsnr_sched"] = {}
for name in SCHEDS + MORE:
    bad = []
    for n in list(range(2, 41)) + [50, 100, 333]:
        a, b = comfy.samplers.calculate_sigmas(zt, name, n), schedules.get_sigmas(name, n, zo)
        if a.shape != b.shape or not torch.equal(a.float(), b):
            bad.append(n)
    R["zsnr_sched"][name] = bad

# -- samplers
g = torch.Generator().manual_seed(0)
mix = GaussianMixtureDenoiser(torch.randn(3, 4, 4, 4, generator=g), 0.5)
dens = {"eps": mix, "flow": FlowDenoiser(mix)}
start = torch.randn(2, 4, 4, 4, generator=g)

class Ours:
    def __init__(self, den, ms):
        self.den, self.model_sampling = den, ms
    def __call__(self, x, sigma, **extra):
        return self.den(x, sigma)

class AsComfy:
    # what ComfyUI's sampler functions read off their model: inner_model.inner_model.model_sampling (the BaseModel)
    # and inner_model.model_patcher.get_model_object("model_sampling")
    def __init__(self, den, patcher):
        self.den = den
        self.inner_model = types.SimpleNamespace(inner_model=patcher.model, model_patcher=patcher,
                                                 model_sampling=patcher.model.model_sampling)
    def __call__(self, x, sigma, **extra):
        return self.den(x, sigma)

def noise_sampler(x):
    gen = torch.Generator().manual_seed(7)
    return lambda s, s_next: torch.randn(x.shape, generator=gen, dtype=x.dtype)

def run_pair(kind, name, sig, dtype):
    x = (start * sig[0]).to(dtype)
    sig = sig.to(dtype)
    stochastic = support.SUPPORT[name].stochastic
    kw_c = {"noise_sampler": noise_sampler(x)} if stochastic else {}
    kw_o = {"noise_sampler": noise_sampler(x)} if stochastic else {}
    fn = comfy.samplers.sampler_object(name).sampler_function
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # ComfyUI's UniPC builds its coefficient tensors in the default dtype
    try:
        a = fn(AsComfy(dens[kind], patchers[kind]), x.clone(), sig.clone(), extra_args={}, callback=None, disable=True, **kw_c)
    finally:
        torch.set_default_dtype(default)
    b = kdiff.SAMPLERS[name](Ours(dens[kind], ours[kind]), x.clone(), sig.clone(), **kw_o)
    return a, b

with torch.no_grad():
    for kind in ours:
        for sched in SCHEDS:
            for n in (1, 2, 3, 5, 12):
                sig = schedules.get_sigmas(sched, n, ours[kind])
                for name in NAMES:
                    key = f"{kind}/{sched}/{n}/{name}"
                    a64, b64 = run_pair(kind, name, sig, torch.float64)
                    a32, b32 = run_pair(kind, name, sig, torch.float32)
                    scale = max(1.0, float(a64.abs().max()))
                    R["f64"][key] = float((a64 - b64).abs().max()) / scale
                    if name.startswith("uni_pc"):
                        R["f32"][key] = float((a64 - b32.double()).abs().max()) / scale
                        R["unipc_comfy_f32_drift"] = max(R["unipc_comfy_f32_drift"], float((a64 - a32.double()).abs().max()) / scale)
                    else:
                        R["f32"][key] = float((a32 - b32).abs().max()) / scale
                    if not (torch.isfinite(b64).all() and torch.isfinite(b32).all()):
                        R["f64"][key] = float("nan")
RESULT = R
"""


@pytest.fixture(scope="module")
def parity(comfy_snippet):
    code = (
        SNIPPET.replace("__NAMES__", repr(json.dumps(SAMPLERS + EXTRA_SAMPLERS)))
        .replace("__SCHEDS__", repr(json.dumps(SCHEDULERS)))
        .replace("__MORE__", repr(json.dumps(MORE_SCHEDULERS)))
    )
    return comfy_snippet(code, timeout=900)


def test_the_grid_is_comfyuis(parity):
    assert set(SAMPLERS + EXTRA_SAMPLERS) <= set(parity["comfy_samplers"])
    assert set(SCHEDULERS + MORE_SCHEDULERS) <= set(parity["comfy_schedulers"])
    assert parity["classes"] == {
        "eps": ["ModelSamplingDiscrete", "EPS"],
        "flow": ["ModelSamplingDiscreteFlow", "CONST"],
    }
    assert parity["tables_equal"] == {"eps": True, "flow": True}


@pytest.mark.parametrize("kind", ["eps", "flow"])
@pytest.mark.parametrize("name", SCHEDULERS + MORE_SCHEDULERS)
def test_schedulers_are_bit_identical(parity, kind, name):
    assert parity["sched"][f"{kind}/{name}"] == [], "step counts where get_sigmas differs from calculate_sigmas"


def test_zero_terminal_snr_table_and_schedulers_are_comfyuis(parity):
    """schedules.Discrete(zsnr=True) (the vpred_zsnr testbed's model sampling) is ComfyUI's ModelSamplingDiscrete with
    zsnr on, bit for bit, and every scheduler on it gives ComfyUI's sigmas."""
    assert parity["zsnr_tables_equal"] == [True, True, True]
    assert 4000 < parity["zsnr_sigma_max"] < 5000
    assert parity["zsnr_sched"] == {name: [] for name in SCHEDULERS + MORE_SCHEDULERS}


def test_kl_optimal_at_one_step_is_an_error_where_comfyui_gives_nan(parity):
    nan, message = parity["kl_optimal_1"]
    assert nan, "ComfyUI's kl_optimal no longer gives a NaN sigma at 1 step: get_sigmas could follow it"
    assert "kl_optimal needs at least 2 steps" in message


def test_ksampler_schedules(parity):
    assert parity["ksampler"] and all(parity["ksampler"].values()), parity["ksampler"]


@pytest.mark.parametrize("kind", ["eps", "flow"])
@pytest.mark.parametrize("name", SAMPLERS + EXTRA_SAMPLERS)
def test_samplers_match_comfyui(parity, kind, name):
    f64 = {k: v for k, v in parity["f64"].items() if k.startswith(kind + "/") and k.endswith("/" + name)}
    f32 = {k: v for k, v in parity["f32"].items() if k.startswith(kind + "/") and k.endswith("/" + name)}
    assert len(f64) == len(SCHEDULERS) * 5
    bad64 = {k: v for k, v in f64.items() if not v <= 1e-9}
    bad32 = {k: v for k, v in f32.items() if not v <= 2e-5}
    assert not bad64, f"float64 differences (relative to the output's scale): {bad64}"
    assert not bad32, f"float32 differences (relative to the output's scale): {bad32}"


def test_unipc_comfyui_float32_drift_is_what_the_docstring_says(parity):
    """Not a property of the pack: records that ComfyUI's own float32 UniPC is the looser reference."""
    assert parity["unipc_comfy_f32_drift"] < 1e-2
    print(
        "max relative differences: float64 %.1e, float32 %.1e (UniPC against ComfyUI's float64), "
        "ComfyUI's own float32 UniPC drift %.1e"
        % (max(parity["f64"].values()), max(parity["f32"].values()), parity["unipc_comfy_f32_drift"])
    )
