"""Euler ancestral's reuse rule: under extrapolation "auto" on eps / v models a skipped step whose last computed step is
HOLD_GAP or more of the run's median steps away in log sigma holds the last direction (the paper's reuse), elsewhere
it extrapolates linearly in sigma; flow models, named extrapolations and the other samplers are untouched."""

import math

import pytest
import torch

from comfyui_tempo.samplers import kdiff, schedules, support
from comfyui_tempo.samplers.adaptive import (
    HOLD_GAP,
    AdaptiveConfig,
    AdaptiveConfigError,
    AdaptiveSampling,
    adaptive_sample,
)
from comfyui_tempo.samplers.skip_plan import median_log_step
from comfyui_tempo.testbed.exact import CFGDenoiser, FiniteSetDenoiser, FlowDenoiser, GaussianMixtureDenoiser

RULE = support.lookup("euler_ancestral").reuse


def make_gmm(classes=10, per_class=3):
    means = torch.randn(classes * per_class, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(classes * per_class) % classes
    return GaussianMixtureDenoiser(means, 0.3, labels=labels, num_classes=classes)


def _run(den, x, sig, config, reuse=RULE, flow=False, **kw):
    seen = {}

    def cb(d):
        seen[d["i"]] = (d["x"].clone(), d["denoised"].clone())

    out, rep = adaptive_sample(
        kdiff.sample_euler_ancestral,
        den,
        x,
        sig,
        config,
        extra_args={"cond": torch.tensor([1, 4])} if not flow else {},
        callback=cb,
        noise_sampler=kdiff.default_noise_sampler(x, seed=3),
        vp_estimator_ok=not flow,
        sampler_reuse=reuse,
        **kw,
    )
    return out, rep, seen


def _gap(sig, i):
    """log sigma from the step before i (computed) to step i (skipped)."""
    return math.log(float(sig[i - 1]) / float(sig[i]))


def test_the_rule_is_euler_ancestrals():
    assert {n for n, e in support.SUPPORT.items() if e.reuse == "hold_long_gap"} == {"euler_ancestral"}
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
    _, rep, seen = _run(den, x, sig, cfg)
    _, _, lin = _run(den, x, sig, AdaptiveConfig(mode="path", path=path, extrapolation="linear"))
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
    default = _run(den, x, sig, cfg)[0]
    off, rep, _ = _run(den, x, sig, cfg, hold_gap=math.inf)
    assert rep.extrapolation == "linear (auto)"
    assert torch.equal(off, _run(den, x, sig, AdaptiveConfig(mode="path", path=path, extrapolation="linear"))[0])
    assert not torch.equal(default, off)
    # a multiple below every gap holds every skip after the first two computed steps: the paper's hold throughout
    held = _run(den, x, sig, cfg, hold_gap=0.01)[0]
    assert torch.equal(held, _run(den, x, sig, AdaptiveConfig(mode="path", path=path, extrapolation="hold"))[0])
    # on a sampler without the rule the knob applies too (the benchmark's sweep)
    plain = _run(den, x, sig, cfg, reuse="")[0]
    assert torch.equal(plain, off)
    assert torch.equal(_run(den, x, sig, cfg, reuse="", hold_gap=HOLD_GAP)[0], default)
    with pytest.raises(AdaptiveConfigError, match="hold_gap / hold_step"):
        _run(den, x, sig, cfg, hold_gap=2.0, hold_step=0.2)


def test_flow_models_and_named_extrapolations_are_untouched():
    den = CFGDenoiser(make_gmm(), 4.0, 10)
    sig = schedules.get_sigmas("simple", 20)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * sig[0]
    named, rep, _ = _run(den, x, sig, AdaptiveConfig(extrapolation="linear"))
    assert rep.extrapolation == "linear"
    g = torch.Generator().manual_seed(5)
    flow = FlowDenoiser(FiniteSetDenoiser(torch.randn(8, 4, 6, 6, generator=g)))
    fs = schedules.flow_sigmas(20, shift=3.0)
    xf = torch.randn(2, 4, 6, 6, generator=g) * fs[0]
    a, rep2, _ = _run(flow, xf, fs, AdaptiveConfig(), flow=True)
    b, _, _ = _run(flow, xf, fs, AdaptiveConfig(extrapolation="linear"), flow=True)
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
        ctl = AdaptiveSampling(lambda *a, **k: None, sig, AdaptiveConfig(), sampler_reuse=RULE)
        assert ctl._median_step() == pytest.approx(want, rel=1e-9), (sched, n)
        assert ctl.hold_step == pytest.approx(HOLD_GAP * want, rel=1e-9)
        assert ctl.hold_below is None
