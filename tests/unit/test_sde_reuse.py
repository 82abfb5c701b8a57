"""The noisy samplers' reuse rules. DPM++ 2M SDE: under extrapolation "auto" a skipped step below sigma 1, or HOLD_STEP
or further in log sigma from the last computed step, holds the last direction (the paper's reuse), elsewhere it
extrapolates linearly. Euler ancestral: a skipped step HOLD_GAP or more of the run's median steps (log sigma) from the
last computed step holds, elsewhere it extrapolates linearly in sigma. Flow models and named extrapolations are
untouched."""

import math

import pytest
import torch

from comfyui_tempo.samplers import kdiff, schedules, support
from comfyui_tempo.samplers.adaptive import (
    HOLD_BELOW_SIGMA,
    HOLD_GAP,
    HOLD_STEP,
    AdaptiveConfig,
    AdaptiveConfigError,
    AdaptiveSampling,
    adaptive_sample,
)
from comfyui_tempo.samplers.skip_plan import median_log_step
from comfyui_tempo.testbed.exact import CFGDenoiser, FiniteSetDenoiser, FlowDenoiser, GaussianMixtureDenoiser

RULE = support.lookup("dpmpp_2m_sde").reuse
GAP_RULE = support.lookup("euler_ancestral").reuse


def make_gmm(classes=10, per_class=3):
    means = torch.randn(classes * per_class, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(classes * per_class) % classes
    return GaussianMixtureDenoiser(means, 0.3, labels=labels, num_classes=classes)


def _run(den, x, sig, config, reuse=RULE, flow=False, fn=kdiff.sample_dpmpp_2m_sde, noise=True, **kw):
    """The sampler's direction rules alone: the x0 reuse above sigma 3 (NOISE_X0_SIGMA, on top of them) off unless
    noise_x0 is given (tests/unit/test_adaptive.py tests it; test_the_x0_reuse_sits_on_top_of_the_rules here)."""
    kw.setdefault("noise_x0", False)
    seen = {}

    def cb(d):
        seen[d["i"]] = (d["x"].clone(), d["denoised"].clone())

    out, rep = adaptive_sample(
        fn,
        den,
        x,
        sig,
        config,
        extra_args={"cond": torch.tensor([1, 4])} if not flow else {},
        callback=cb,
        noise_sampler=kdiff.default_noise_sampler(x, seed=3) if noise else None,
        vp_estimator_ok=not flow,
        sampler_reuse=reuse,
        **kw,
    )
    return out, rep, seen


# which served sampler has which reuse rule: each measured on its sampler (the ComfyUI-only ones with `bench adaptive
# --comfyui-grid --comfyui-reuse-sweep`); every other sampler has none
RULES = {
    "hold_low_noise": {
        "dpmpp_2m_sde",
        "dpmpp_2m_sde_gpu",
        "dpmpp_2m_sde_heun",
        "dpmpp_2m_sde_heun_gpu",
        "res_multistep_ancestral",
        "res_multistep_ancestral_cfg_pp",
        "exp_heun_2_x0_sde",
    },
    "hold_long_gap": {"euler_ancestral", "euler_ancestral_cfg_pp", "ddpm", "sa_solver_pece"},
    "hold_below_sigma": {"dpm_2_ancestral"},
    "hold_always": {
        "dpmpp_sde",
        "dpmpp_sde_gpu",
        "dpmpp_3m_sde",
        "dpmpp_3m_sde_gpu",
        "sa_solver",
        "dpmpp_2s_ancestral",
        "dpmpp_2s_ancestral_cfg_pp",
        "seeds_2",
        "seeds_3",
    },
}


def test_each_rule_is_its_samplers_only():
    for rule, names in RULES.items():
        assert {n for n, e in support.SUPPORT.items() if e.reuse == rule} == names, rule
    assert {n for n, e in support.SUPPORT.items() if e.reuse} == set().union(*RULES.values())
    assert all(support.lookup(n).stochastic for names in RULES.values() for n in names)


def test_the_rule_is_the_dpmpp_2m_sde_familys():
    assert {"dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu"} <= RULES[RULE]
    assert RULE == "hold_low_noise"
    assert "held below sigma 1" in support.support_matrix_markdown()


def _flow_case():
    """A flow model (an exact finite-set denoiser as CONST), its shift-3 sigmas at 20 steps and a starting latent."""
    g = torch.Generator().manual_seed(5)
    flow = FlowDenoiser(FiniteSetDenoiser(torch.randn(8, 4, 6, 6, generator=g)))
    fs = schedules.flow_sigmas(20, shift=3.0)
    return flow, fs, torch.randn(2, 4, 6, 6, generator=g) * fs[0]


def _gap(sig, i):
    """log sigma from the step before i (computed) to step i (skipped)."""
    return math.log(float(sig[i - 1]) / float(sig[i]))


def test_skips_hold_below_sigma_1_and_extrapolate_above():
    den = CFGDenoiser(make_gmm(), 4.0, 10)
    sig = schedules.get_sigmas("karras", 40)  # steps shorter than HOLD_STEP above sigma 1
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * sig[0]
    hi = next(i for i in range(4, 40) if sig[i] > 2 * HOLD_BELOW_SIGMA and _gap(sig, i) < HOLD_STEP)
    lo = next(i for i in range(hi + 3, 39) if sig[i] < HOLD_BELOW_SIGMA / 2)
    path = torch.ones(40, dtype=torch.bool)
    path[[hi, lo]] = False
    runs = {
        ex: _run(den, x, sig, AdaptiveConfig(mode="path", path=path, extrapolation=ex)) for ex in ("auto", "linear")
    }
    _, rep, seen = runs["auto"]
    _, _, lin = runs["linear"]
    assert rep.extrapolation == (
        "linear (auto), hold below sigma 1 and 0.2 or more in log sigma from the last computed step (the sampler's rule)"
    )
    # above sigma 1 the skip is the linear extrapolation: the run equals extrapolation linear up to the low skip
    for i in range(lo + 1):
        assert torch.equal(seen[i][0], lin[i][0]), i
    assert torch.equal(seen[hi][1], lin[hi][1])
    d_hi = (seen[hi - 1][0] - seen[hi - 1][1]) / sig[hi - 1]
    assert not torch.allclose(seen[hi][1], seen[hi][0] - sig[hi] * d_hi, atol=1e-3)  # not a hold there
    # below sigma 1 the skip holds the last computed direction, which linear does not
    d_last = (seen[lo - 1][0] - seen[lo - 1][1]) / sig[lo - 1]
    assert torch.allclose(seen[lo][1], seen[lo][0] - sig[lo] * d_last, atol=1e-5)
    assert not torch.allclose(lin[lo][1], lin[lo][0] - sig[lo] * d_last, atol=1e-3)


def test_a_skip_far_from_the_last_computed_step_holds_above_sigma_1():
    """At 20 karras steps every step above sigma 1 is longer than HOLD_STEP in log sigma: a skip there holds; with
    hold_step inf (the rule before HOLD_STEP) it extrapolates linearly."""
    den = CFGDenoiser(make_gmm(), 4.0, 10)
    sig = schedules.get_sigmas("karras", 20)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * sig[0]
    hi = next(i for i in range(4, 20) if sig[i] > 2 * HOLD_BELOW_SIGMA)
    assert _gap(sig, hi) >= HOLD_STEP
    path = torch.ones(20, dtype=torch.bool)
    path[hi] = False
    cfg = AdaptiveConfig(mode="path", path=path)
    _, _, seen = _run(den, x, sig, cfg)
    _, rep, before = _run(den, x, sig, cfg, hold_step=math.inf)
    assert rep.extrapolation == "linear (auto), hold below sigma 1 (the sampler's rule)"
    d_last = (seen[hi - 1][0] - seen[hi - 1][1]) / sig[hi - 1]
    assert torch.allclose(seen[hi][1], seen[hi][0] - sig[hi] * d_last, atol=1e-5)  # held
    assert not torch.allclose(before[hi][1], before[hi][0] - sig[hi] * d_last, atol=1e-3)  # linear
    # a hold_step longer than the gap leaves the skip linear; one at most the gap holds it
    _, _, longer = _run(den, x, sig, cfg, hold_step=_gap(sig, hi) * 1.01)
    assert torch.equal(longer[hi][1], before[hi][1])
    _, _, shorter = _run(den, x, sig, cfg, hold_step=_gap(sig, hi) * 0.99)
    assert torch.equal(shorter[hi][1], seen[hi][1])


def test_flow_models_named_extrapolations_and_other_samplers_are_untouched():
    den = CFGDenoiser(make_gmm(), 4.0, 10)
    sig = schedules.get_sigmas("karras", 20)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * sig[0]
    auto, rep, _ = _run(den, x, sig, AdaptiveConfig(respace="off"))
    assert "hold below sigma 1" in rep.extrapolation
    without, rep2, _ = _run(den, x, sig, AdaptiveConfig(respace="off"), reuse="")
    assert rep2.extrapolation == "linear (auto)"
    named, rep3, _ = _run(den, x, sig, AdaptiveConfig(respace="off", extrapolation="linear"))
    assert rep3.extrapolation == "linear"
    assert torch.equal(without, named) and not torch.equal(auto, without)
    # a flow model keeps linear in sigma (it lost with the hold on the flow testbed)
    flow, fs, xf = _flow_case()
    a, rep4, _ = _run(flow, xf, fs, AdaptiveConfig(), flow=True)
    b, _, _ = _run(flow, xf, fs, AdaptiveConfig(extrapolation="linear"), flow=True)
    assert rep4.extrapolation == "linear (auto)" and torch.equal(a, b)


def test_adaptive_kwargs_carry_every_rule_of_the_support_table():
    """The nodes, the grid and the calibration benchmark pass the sampler's rules through one helper."""
    assert support.adaptive_kwargs("heun") == {
        "endpoint_corrector": True,
        "sampler_respace": "",
        "sampler_reuse": "",
        "sampler_low_eta_base": "",
    }
    assert support.adaptive_kwargs("dpmpp_2m_sde")["sampler_reuse"] == "hold_low_noise"
    assert {n for n, e in support.SUPPORT.items() if e.low_eta_base} == {"euler_ancestral", "euler_ancestral_cfg_pp"}
    assert support.adaptive_kwargs("euler_ancestral")["sampler_low_eta_base"] == "log_linear"
    assert support.adaptive_kwargs("lms")["sampler_respace"] == "final_jump"
    with pytest.raises(support.UnsupportedSampler, match="sampler_name"):
        support.adaptive_kwargs("heunpp2")


def test_hold_below_sigma_set_applies_to_any_sampler_and_model():
    """The benchmark's knob: hold_below_sigma holds below it for any sampler (here euler_ancestral, its rule not passed) and on a
    flow model (its sigma compared as s / (1 - s)); very large is the paper's hold throughout, 0 is linear."""
    flow, fs, xf = _flow_case()
    den = CFGDenoiser(make_gmm(), 4.0, 10)
    sig = schedules.get_sigmas("karras", 20)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * sig[0]
    for fn, model, s0, xs, is_flow, extra in (
        (kdiff.sample_euler_ancestral, den, sig, x, False, {"cond": torch.tensor([1, 4])}),
        (kdiff.sample_euler, flow, fs, xf, True, {}),
    ):

        def run(**kw):
            cfg = kw.pop("cfg", AdaptiveConfig())
            ns = (
                {"noise_sampler": kdiff.default_noise_sampler(xs, seed=3)} if fn is kdiff.sample_euler_ancestral else {}
            )
            return adaptive_sample(
                fn, model, xs, s0, cfg, extra_args=extra, vp_estimator_ok=not is_flow, noise_x0=False, **ns, **kw
            )

        always, rep = run(hold_below_sigma=1e9)
        assert rep.extrapolation.endswith("hold below sigma 1e+09 (set)")
        assert torch.equal(always, run(cfg=AdaptiveConfig(extrapolation="hold"))[0])
        assert torch.equal(run(hold_below_sigma=0.0)[0], run(cfg=AdaptiveConfig(extrapolation="linear"))[0])
        some = run(hold_below_sigma=1.0)[0]
        assert not torch.equal(some, always) and not torch.equal(some, run()[0])


def test_the_long_step_hold_is_per_sample():
    """Per-sample decisions leave samples with different last computed steps: at one skipped sigma the sample whose
    last computed step is HOLD_STEP or more away holds its direction, the other extrapolates (white box: the
    controller's history set by hand, as two per-sample runs would leave it)."""

    sig = schedules.get_sigmas("karras", 40)
    ctl = AdaptiveSampling(lambda *a, **k: None, sig, AdaptiveConfig(), sampler_reuse=RULE)
    assert ctl.hold_step == HOLD_STEP and ctl.hold_below == HOLD_BELOW_SIGMA
    ctl._auto = "linear"
    i = next(k for k in range(3, 40) if sig[k] > 2 * HOLD_BELOW_SIGMA)
    s = float(sig[i])
    near, far = s * math.exp(0.5 * HOLD_STEP), s * math.exp(1.5 * HOLD_STEP)  # last computed sigmas, per sample
    ctl._hs = torch.tensor([[near, far], [near * 1.3, far * 1.3]], dtype=torch.float64)
    ctl._hd = torch.stack([torch.full((2, 3), 1.0), torch.full((2, 3), 2.0)])  # newest first: d 1.0, before it 2.0
    d = ctl._direction(s, torch.arange(2), torch.zeros(2, 3))
    assert torch.equal(d[1], torch.full((3,), 1.0))  # far: held
    assert not torch.allclose(d[0], torch.full((3,), 1.0))  # near: extrapolated linearly in sigma
    lin = 1.0 + (1.0 - 2.0) * (s - near) / (near - near * 1.3)
    assert torch.allclose(d[0], torch.full((3,), lin, dtype=d.dtype))


def _arun(den, x, sig, config, reuse=GAP_RULE, flow=False, **kw):
    return _run(den, x, sig, config, reuse=reuse, flow=flow, fn=kdiff.sample_euler_ancestral, **kw)


def test_the_rule_is_euler_ancestrals():
    assert "euler_ancestral" in RULES["hold_long_gap"]
    assert support.adaptive_kwargs("euler_ancestral")["sampler_reuse"] == "hold_long_gap"
    assert "1.5 or more of the run's median steps" in support.support_matrix_markdown()
    assert HOLD_GAP == 1.5


def test_a_skip_after_a_long_gap_holds_and_the_others_extrapolate():
    """simple at 20 steps, every other step run: the last skip lies 2.2 median steps from its computed step (held),
    the ones before it 1.3 or fewer (linear in sigma, as extrapolation linear)."""
    den = CFGDenoiser(make_gmm(), 4.0, 10)
    sig = schedules.get_sigmas("simple", 20)
    med = median_log_step(sig)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * sig[0]
    path = torch.tensor([i % 2 == 0 for i in range(20)])
    skipped = [i for i in range(20) if not path[i] and sig[i] > 0]
    far = [i for i in skipped if _gap(sig, i) >= HOLD_GAP * med]
    assert far == [19]  # the last skip only
    cfg = AdaptiveConfig(mode="path", path=path)
    _, rep, seen = _arun(den, x, sig, cfg)
    _, _, lin = _arun(den, x, sig, AdaptiveConfig(mode="path", path=path, extrapolation="linear"))
    assert rep.extrapolation == (
        f"linear (auto), hold {HOLD_GAP:g} or more of the run's median steps ({HOLD_GAP * med:.3g} in log sigma) from the last "
        "computed step (the sampler's rule)"
    )
    for i in range(19):  # every skip before it extrapolates as linear does
        assert torch.equal(seen[i][1], lin[i][1]), i
    d_last = (seen[18][0] - seen[18][1]) / sig[18]
    assert torch.allclose(seen[19][1], seen[19][0] - sig[19] * d_last, atol=1e-5)  # held
    assert not torch.allclose(lin[19][1], lin[19][0] - sig[19] * d_last, atol=1e-3)  # linear does not hold
    # a mid-run skip is not a hold
    i = skipped[len(skipped) // 2]
    d_mid = (seen[i - 1][0] - seen[i - 1][1]) / sig[i - 1]
    assert not torch.allclose(seen[i][1], seen[i][0] - sig[i] * d_mid, atol=1e-3)


def test_hold_gap_sets_the_multiple_or_turns_the_rule_off():
    den = CFGDenoiser(make_gmm(), 4.0, 10)
    sig = schedules.get_sigmas("simple", 20)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * sig[0]
    path = torch.tensor([i % 2 == 0 for i in range(20)])
    cfg = AdaptiveConfig(mode="path", path=path)
    default = _arun(den, x, sig, cfg)[0]
    off, rep, _ = _arun(den, x, sig, cfg, hold_gap=math.inf)
    assert rep.extrapolation == "linear (auto)"
    assert torch.equal(off, _arun(den, x, sig, AdaptiveConfig(mode="path", path=path, extrapolation="linear"))[0])
    assert not torch.equal(default, off)
    # a multiple below every gap holds every skip after the first two computed steps: the paper's hold throughout
    held = _arun(den, x, sig, cfg, hold_gap=0.01)[0]
    assert torch.equal(held, _arun(den, x, sig, AdaptiveConfig(mode="path", path=path, extrapolation="hold"))[0])
    # on a sampler without the rule the knob applies too (the benchmark's sweep)
    plain = _arun(den, x, sig, cfg, reuse="")[0]
    assert torch.equal(plain, off)
    assert torch.equal(_arun(den, x, sig, cfg, reuse="", hold_gap=HOLD_GAP)[0], default)
    with pytest.raises(AdaptiveConfigError, match="hold_gap / hold_step"):
        _arun(den, x, sig, cfg, hold_gap=2.0, hold_step=0.2)


def test_flow_models_and_named_extrapolations_are_untouched():
    den = CFGDenoiser(make_gmm(), 4.0, 10)
    sig = schedules.get_sigmas("simple", 20)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * sig[0]
    named, rep, _ = _arun(den, x, sig, AdaptiveConfig(extrapolation="linear"))
    assert rep.extrapolation == "linear"
    flow, fs, xf = _flow_case()
    a, rep2, _ = _arun(flow, xf, fs, AdaptiveConfig(), flow=True)
    b, _, _ = _arun(flow, xf, fs, AdaptiveConfig(extrapolation="linear"), flow=True)
    assert rep2.extrapolation == "linear (auto)" and torch.equal(a, b)


def test_the_median_step_is_the_runs():
    """The controller's median step is over the run's steps in log sigma, the step to sigma 0 aside: the planner's
    median_log_step where their count is odd (an even step count), the lower middle one where it is even; the rule's
    threshold is HOLD_GAP times it, per run."""
    for sched, n in (("simple", 20), ("karras", 30), ("normal", 50), ("karras", 15), ("beta", 25)):
        sig = schedules.get_sigmas(sched, n)
        u = [math.log(float(v)) for v in sig if float(v) > 0]
        h = sorted(abs(a - b) for a, b in zip(u, u[1:]))
        want = h[(len(h) - 1) // 2]
        if len(h) % 2:
            assert want == pytest.approx(median_log_step(sig), rel=1e-9)
        ctl = AdaptiveSampling(lambda *a, **k: None, sig, AdaptiveConfig(), sampler_reuse=GAP_RULE)
        assert ctl._median_step() == pytest.approx(want, rel=1e-9), (sched, n)
        assert ctl.hold_step == pytest.approx(HOLD_GAP * want, rel=1e-9)
        assert ctl.hold_below is None


@pytest.mark.parametrize(
    "noisy, plain, reuse",
    [
        (kdiff.sample_euler_ancestral, kdiff.sample_euler, GAP_RULE),
        (kdiff.sample_dpmpp_2m_sde, kdiff.sample_dpmpp_2m, RULE),
    ],
)
def test_a_sampler_told_to_inject_no_noise_is_reused_as_a_deterministic_sampler(noisy, plain, reuse):
    """eta 0 makes euler_ancestral euler and dpmpp_2m_sde DPM-Solver++(2M): the noise rules give way to the
    deterministic sampler's reuse, log-linear under auto, and the run follows the deterministic sampler's (the same
    path and result). s_noise 0 (SamplerCustom's sampler nodes can set it) keeps the noisy sampler's step but injects
    nothing: nothing is recorded as noise, so auto starts from log_linear, and the sampler's rule stays on top (it
    holds where the named log_linear does not). With the noise on, the rule stays on its linear base."""
    den = CFGDenoiser(make_gmm(), 4.0, 10)
    sig = schedules.get_sigmas("simple", 20)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * sig[0]
    cfg = AdaptiveConfig()
    quiet, rep, _ = _run(den, x, sig, cfg, reuse=reuse, fn=noisy, eta=0.0)
    det, rep_det, _ = _run(den, x, sig, cfg, reuse="", fn=plain, noise=False)
    assert rep.extrapolation == rep_det.extrapolation == "log_linear (auto)"
    assert rep.path_string() == rep_det.path_string()
    assert torch.allclose(quiet, det, atol=1e-4, rtol=0)
    assert any(n.startswith("the sampler injects no noise (eta 0.0)") and repr(reuse) in n for n in rep.notes)
    silent, rep_s, _ = _run(den, x, sig, cfg, reuse=reuse, fn=noisy, s_noise=0)
    assert rep_s.extrapolation.startswith("log_linear (auto), hold ") and "the sampler's rule" in rep_s.extrapolation
    assert any(
        n.startswith("the sampler injects no noise (s_noise 0) but still steps") and repr(reuse) in n
        for n in rep_s.notes
    ), rep_s.notes
    named = _run(den, x, sig, AdaptiveConfig(extrapolation="log_linear"), reuse=reuse, fn=noisy, s_noise=0)[0]
    assert not torch.allclose(silent, named, atol=1e-4)
    noisy_out, rep_on, _ = _run(den, x, sig, cfg, reuse=reuse, fn=noisy)
    assert "hold" in rep_on.extrapolation and not any("injects no noise" in n for n in rep_on.notes)
    assert not torch.allclose(noisy_out, det, atol=1e-2)


def test_euler_ancestral_below_eta_1_extrapolates_in_log_sigma_with_its_hold():
    """Below eta 1 (SamplerCustom) euler_ancestral's auto starts from log_linear, a deterministic sampler's base, and
    keeps its hold after a long gap: every skip but the last (simple, 20 steps, every other step run) is the named
    log_linear's, the last holds. At eta 1 the base stays linear; a given auto_base (the benchmark's) replaces the rule;
    flow models keep linear."""
    den = CFGDenoiser(make_gmm(), 4.0, 10)
    sig = schedules.get_sigmas("simple", 20)
    med = median_log_step(sig)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * sig[0]
    path = torch.tensor([i % 2 == 0 for i in range(20)])
    cfg = AdaptiveConfig(mode="path", path=path)
    low = dict(sampler_low_eta_base=support.adaptive_kwargs("euler_ancestral")["sampler_low_eta_base"])
    out, rep, seen = _arun(den, x, sig, cfg, eta=0.5, **low)
    _, _, loglin = _arun(den, x, sig, AdaptiveConfig(mode="path", path=path, extrapolation="log_linear"), eta=0.5)
    assert rep.extrapolation == (
        f"log_linear (auto), hold {HOLD_GAP:g} or more of the run's median steps ({HOLD_GAP * med:.3g} in log sigma) "
        "from the last computed step (the sampler's rule)"
    )
    assert any(n.startswith("eta 0.5 is below 1: auto starts from log_linear") for n in rep.notes), rep.notes
    for i in range(19):
        assert torch.equal(seen[i][1], loglin[i][1]), i
    d_last = (seen[18][0] - seen[18][1]) / sig[18]
    assert torch.allclose(seen[19][1], seen[19][0] - sig[19] * d_last, atol=1e-5)  # held
    assert not torch.allclose(loglin[19][1], loglin[19][0] - sig[19] * d_last, atol=1e-3)
    # eta 1 (ComfyUI's KSampler): linear in sigma, no note
    _, rep1, _ = _arun(den, x, sig, cfg, eta=1.0, **low)
    assert rep1.extrapolation.startswith("linear (auto), hold") and not any("below 1" in n for n in rep1.notes)
    # the benchmark's auto_base replaces the rule: linear is the eta-1 base at eta 0.5
    before, rep_b, _ = _arun(den, x, sig, cfg, eta=0.5, auto_base="linear", **low)
    assert rep_b.extrapolation.startswith("linear (auto), hold") and not torch.equal(before, out)
    assert torch.equal(before, _arun(den, x, sig, cfg, eta=0.5)[0])
    flow, fs, xf = _flow_case()
    _, rep_f, _ = _arun(flow, xf, fs, AdaptiveConfig(), flow=True, eta=0.5, **low)
    assert rep_f.extrapolation == "linear (auto)" and not any("below 1" in n for n in rep_f.notes)


@pytest.mark.parametrize(
    "name, fn, rule",
    [
        ("dpmpp_sde", kdiff.sample_dpmpp_sde, "hold_always"),
        ("dpm_2_ancestral", kdiff.sample_dpm_2_ancestral, "hold_below_sigma"),
    ],
)
def test_the_noisy_two_stage_samplers_hold(name, fn, rule):
    """Under auto on eps / v models dpmpp_sde reuses the last direction unchanged throughout and, every skip holding,
    plans with the noise it injects (its run is the named hold's planned so; without that plan, the named hold's), and
    the report says both; dpm_2_ancestral holds it below sigma 1 only (its run is an explicit hold below sigma 1's, not
    the named hold's); both lose it without their rule (linear) and keep linear on a flow model."""
    assert support.lookup(name).reuse == rule and name in RULES[rule]
    den = CFGDenoiser(make_gmm(), 4.0, 10)
    sig = schedules.get_sigmas("karras", 20)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * sig[0]
    kw = dict(fn=fn, endpoint_corrector=support.lookup(name).endpoint_corrector)
    auto, rep, _ = _run(den, x, sig, AdaptiveConfig(respace="off"), reuse=rule, **kw)
    linear, rep_l, _ = _run(den, x, sig, AdaptiveConfig(respace="off"), reuse="", **kw)
    hold, _, _ = _run(den, x, sig, AdaptiveConfig(respace="off", extrapolation="hold"), reuse=rule, **kw)
    below, _, _ = _run(den, x, sig, AdaptiveConfig(respace="off"), reuse="", hold_below_sigma=1.0, **kw)
    assert rep_l.extrapolation == "linear (auto)" and not torch.equal(auto, linear)
    if rule == "hold_always":
        assert rep.extrapolation == "hold (auto, the sampler's rule)"
        assert any(
            n.startswith("planned with the injected-noise cost (ancestral): every skip holds") for n in rep.notes
        )
        planned, rep_p, _ = _run(
            den, x, sig, AdaptiveConfig(respace="off", extrapolation="hold"), reuse=rule, noise_plan="ancestral", **kw
        )
        assert torch.equal(auto, planned) and rep.path_string() == rep_p.path_string()
        plain, rep_u, _ = _run(den, x, sig, AdaptiveConfig(respace="off"), reuse=rule, hold_noise_plan=False, **kw)
        assert torch.equal(plain, hold) and rep_u.path_string() != rep.path_string()
    else:
        assert rep.extrapolation == "linear (auto), hold below sigma 1 (the sampler's rule)"
        assert torch.equal(auto, below) and not torch.equal(auto, hold)
    flow, fs, xf = _flow_case()
    a, rep_f, _ = _run(flow, xf, fs, AdaptiveConfig(), flow=True, reuse=rule, **kw)
    b, _, _ = _run(flow, xf, fs, AdaptiveConfig(extrapolation="linear"), flow=True, reuse=rule, **kw)
    assert rep_f.extrapolation == "linear (auto)" and torch.equal(a, b)


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "euler_ancestral", "dpmpp_sde", "dpm_2_ancestral"])
def test_the_x0_reuse_sits_on_top_of_the_rules(name):
    """With the x0 reuse on (the default) a skipped step above NOISE_X0_SIGMA reuses the last computed x0 whatever the
    sampler's direction rule: the same latent reaches the first skip (sigma 9.7 on SD's karras at 20 steps, every
    other step run), and its x0 is the last computed one (a two-stage sampler's last is its second stage's, which the
    callback does not show), not the rule's reuse; the report says so."""
    from comfyui_tempo.samplers.adaptive import NOISE_X0_SIGMA

    e = support.lookup(name)
    den = CFGDenoiser(make_gmm(), 4.0, 10)
    sig = schedules.get_sigmas("karras", 20)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * sig[0]
    path = torch.tensor([i % 2 == 0 for i in range(20)])
    kw = dict(fn=kdiff.SAMPLERS[name], reuse=e.reuse, endpoint_corrector=e.endpoint_corrector)
    cfg = AdaptiveConfig(mode="path", path=path)
    _, rep, on = _run(den, x, sig, cfg, noise_x0=True, **kw)
    _, rep_off, off = _run(den, x, sig, cfg, **kw)
    first = 1  # the first skip, sigma 9.7 on SD's karras at 20 steps
    assert float(sig[first]) > NOISE_X0_SIGMA
    assert torch.equal(on[first][0], off[first][0])  # the same latent reaches it
    if e.family != "multi-eval":  # (a two-stage sampler's last computed x0 is its second stage's, not in the callback)
        x0_last = on[first - 1][1]
        assert torch.allclose(on[first][1], x0_last, atol=1e-5)  # the last computed x0
        assert not torch.allclose(off[first][1], x0_last, atol=1e-3)  # the rule's reuse is another
    assert not torch.allclose(on[first][1], off[first][1], atol=1e-3)
    assert any("reuse the last x0 (the sampler's rule)" in n for n in rep.notes)
    assert not any("reuse the last x0" in n for n in rep_off.notes)
