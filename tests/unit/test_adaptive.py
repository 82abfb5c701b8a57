"""AdaptiveDiffusion controller on exact denoisers (no ComfyUI)."""

import inspect
import math

import pytest
import torch

from comfyui_tempo.samplers import kdiff, schedules, support
from comfyui_tempo.samplers.adaptive import AdaptiveConfig, AdaptiveConfigError, AdaptiveSampling, adaptive_sample
from comfyui_tempo.testbed.exact import CFGDenoiser, FiniteSetDenoiser, FlowDenoiser, GaussianMixtureDenoiser

ENDPOINT = {name: e.endpoint_corrector for name, e in support.SUPPORT.items()}  # heun, the 2-stage ancestrals


def make_gmm(shape=(4, 8, 8), classes=10, per_class=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = classes * per_class
    means = torch.randn((k,) + shape, generator=g)
    return GaussianMixtureDenoiser(means, 0.3, labels=torch.arange(k) % classes, num_classes=classes)


@pytest.fixture(scope="module")
def setup():
    den = CFGDenoiser(make_gmm(), 5.0, 10)
    noise = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = torch.tensor([0, 3, 5, 9])
    return den, noise, cond


def run(den, noise, cond, sampler, n=20, config=None, **kw):
    sig = schedules.get_sigmas("karras", n)
    fn = kdiff.SAMPLERS[sampler]
    extra = {"cond": cond}
    stochastic = "noise_sampler" in inspect.signature(fn).parameters
    if stochastic:
        extra["seed"] = 7
    if config is None:
        return fn(den, noise * sig[0], sig, extra_args=extra), None
    if stochastic and "noise_sampler" not in kw:
        kw["noise_sampler"] = kdiff.default_noise_sampler(noise, seed=7)
    return adaptive_sample(
        fn, den, noise * sig[0], sig, config, extra_args=extra, endpoint_corrector=ENDPOINT.get(sampler, False), **kw
    )


@pytest.mark.parametrize("sampler", sorted(kdiff.SAMPLERS))
@pytest.mark.parametrize(
    "config",
    [AdaptiveConfig(mode="threshold", threshold=0.0), AdaptiveConfig(target_speedup=1.0), AdaptiveConfig.paper(0.0)],
    ids=["threshold0", "speedup1", "paper0"],
)
def test_disabled_is_bit_identical(setup, sampler, config):
    den, noise, cond = setup
    ref, _ = run(den, noise, cond, sampler)
    out, rep = run(den, noise, cond, sampler, config=config)
    assert torch.equal(ref, out)
    assert rep.nfe == rep.evals_requested  # one NFE per requested evaluation


@pytest.mark.parametrize("sampler", sorted(kdiff.SAMPLERS))
def test_active_controller_without_skips_is_bit_identical(setup, sampler):
    den, noise, cond = setup
    ref, _ = run(den, noise, cond, sampler)
    out, rep = run(den, noise, cond, sampler, config=AdaptiveConfig(mode="path", path=torch.ones(20, dtype=torch.bool)))
    assert torch.equal(ref, out)
    assert rep.path_string() == "C" * 20


@pytest.mark.parametrize(
    "n,cap,expected", [(20, 4, 7), (25, 4, 8), (50, 4, 13), (50, 6, 10), (250, 4, 53), (250, 6, 39)]
)
def test_paper_rule_minimum_nfe(n, cap, expected):
    """With every step eligible, the official control flow gives CCCC sssss C ssss C ... ."""
    den = make_gmm(shape=(2, 4, 4), classes=2, per_class=1)
    noise = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    sig = schedules.get_sigmas("karras", n)
    _, rep = adaptive_sample(
        kdiff.sample_euler, den, noise * sig[0], sig, AdaptiveConfig.paper(threshold=1e9, max_skip=cap)
    )
    assert rep.nfe == expected
    # the official cap is only checked once five decisions exist: the first run of skips is 5 long
    assert rep.path_string().startswith("CCCC" + "sssss" + "C" + "s" * cap + "C")


def test_paper_rule_is_the_official_formula():
    """Recompute the official decisions from the latents the run produced."""
    den = CFGDenoiser(make_gmm(), 5.0, 10)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    sig = schedules.get_sigmas("karras", 30)
    lat = []

    def cb(d):
        lat.append(d["x"].clone())

    out, rep = adaptive_sample(
        kdiff.sample_euler,
        den,
        noise * sig[0],
        sig,
        AdaptiveConfig.paper(0.05),
        extra_args={"cond": torch.tensor([2])},
        callback=cb,
    )
    lat = lat[1:] + [out]  # L_0 .. L_{N-1}: the latent after each step
    d = [None] + [float((lat[k] - lat[k - 1]).abs().mean()) for k in range(1, len(lat))]
    path = rep.path_string()
    mask = []
    for i in range(3, len(lat) - 1):
        if len(mask) > 4 and not any(mask[-4:]):
            run_next = True
        else:
            run_next = not (abs((d[i] + d[i - 2]) / 2 - d[i - 1]) <= d[i - 1] * 0.05)
        mask.append(run_next)
        assert (path[i + 1] == "C") == run_next, (i + 1, path)
    assert "s" in path and path[:4] == "CCCC"


def test_skipped_step_reuses_direction_not_x0(setup):
    den, noise, cond = setup
    sig = schedules.get_sigmas("karras", 12)
    path = torch.ones(12, dtype=torch.bool)
    path[3] = False
    seen = {}

    def cb(d):
        seen[d["i"]] = (d["x"].clone(), d["denoised"].clone())

    # with Euler, x - sigma * d is constant along a step, so eps reuse and x0 reuse coincide;
    # DPM++ 2M tells them apart
    adaptive_sample(
        kdiff.sample_dpmpp_2m,
        den,
        noise * sig[0],
        sig,
        AdaptiveConfig(mode="path", path=path, extrapolation="hold"),
        extra_args={"cond": cond},
        callback=cb,
    )
    x2, den2 = seen[2]
    x3, den3 = seen[3]
    d2 = (x2 - den2) / sig[2]
    assert torch.allclose(den3, x3 - sig[3] * d2, atol=1e-5)
    assert not torch.allclose(den3, den2, atol=1e-2)  # not the stale x0


def test_multi_evaluation_step_is_skipped_as_a_whole(setup):
    den, noise, cond = setup
    calls = []

    def spy(x, s, **kw):
        calls.append(float(s[0]))
        return den(x, s, **kw)

    sig = schedules.get_sigmas("karras", 10)
    path = torch.ones(10, dtype=torch.bool)
    path[5] = False
    _, rep = adaptive_sample(
        kdiff.sample_heun,
        spy,
        noise * sig[0],
        sig,
        AdaptiveConfig(mode="path", path=path),
        extra_args={"cond": cond},
        endpoint_corrector=True,
    )
    # Heun: 2 evaluations per step except the last (sigma_next == 0): 19 requested, 2 skipped
    assert rep.evals_requested == 19
    assert rep.nfe == 17
    assert rep.path_string() == "CCCCCsCCCC"
    # sigma_5: only step 4's corrector (step 5's own first evaluation skipped);
    # sigma_6: only step 6's first evaluation (step 5's corrector skipped)
    assert calls.count(float(sig[5])) == 1
    assert calls.count(float(sig[6])) == 1


def test_per_sample_runs_model_only_on_samples_that_need_it(setup):
    den, noise, cond = setup
    batches = []

    def spy(x, s, **kw):
        batches.append(x.shape[0])
        return den(x, s, **kw)

    sig = schedules.get_sigmas("karras", 12)
    path = torch.ones(4, 12, dtype=torch.bool)
    path[0, 5] = path[1, 7] = path[2, 5] = False
    out, rep = adaptive_sample(
        kdiff.sample_euler, spy, noise * sig[0], sig, AdaptiveConfig(mode="path", path=path), extra_args={"cond": cond}
    )
    assert sorted(set(batches)) == [2, 3, 4]
    assert rep.nfe_per_sample == [11, 11, 11, 12]
    for b in range(4):  # each sample as if it had been sampled alone with its own path
        alone, _ = adaptive_sample(
            kdiff.sample_euler,
            den,
            noise[b : b + 1] * sig[0],
            sig,
            AdaptiveConfig(mode="path", path=path[b : b + 1]),
            extra_args={"cond": cond[b : b + 1]},
        )
        assert torch.allclose(alone, out[b : b + 1], atol=1e-5)


def test_last_reused_names_the_samples_a_call_reused(setup):
    """What a CFG++ sampler's bridge reads (nodes/adaptive_cfgpp.py): after each call, the samples whose x0 the
    controller reused; empty where the model ran for all."""
    den, noise, cond = setup
    sig = schedules.get_sigmas("karras", 12)
    path = torch.ones(4, 12, dtype=torch.bool)
    path[0, 5] = path[1, 7] = path[2, 5] = path[:, 9] = False
    seen = []

    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        for i in range(len(sigmas) - 1):
            d = (x - model(x, sigmas[i] * x.new_ones(x.shape[0]), **extra_args)) / sigmas[i]
            seen.append(model.last_reused.tolist())
            x = x + d * (sigmas[i + 1] - sigmas[i])
        return x

    adaptive_sample(
        sampler, den, noise * sig[0], sig, AdaptiveConfig(mode="path", path=path), extra_args={"cond": cond}
    )
    assert seen[5] == [0, 2] and seen[7] == [1] and seen[9] == [0, 1, 2, 3]
    assert all(seen[i] == [] for i in range(12) if i not in (5, 7, 9))


AUX_PATH = torch.ones(4, 12, dtype=torch.bool)
AUX_PATH[:, 4] = AUX_PATH[:, 7] = AUX_PATH[:, 8] = AUX_PATH[1:, 10] = False  # all reused at 4, 7, 8; three at 10
AUX_OFFSET = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))


def _run_with_aux(setup, extrapolation, on_call):
    """Euler along AUX_PATH that calls on_call(model, i, s, x, x0, ran, reused) after each model call (the samples
    that ran, the samples the controller reused), as a CFG++ sampler's bridge does."""
    den, noise, cond = setup
    sig = schedules.get_sigmas("karras", 12)

    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        for i in range(len(sigmas) - 1):
            x0 = model(x, sigmas[i] * x.new_ones(x.shape[0]), **extra_args)
            reused = model.last_reused
            ran = torch.ones(x.shape[0], dtype=torch.bool)
            ran[reused] = False
            on_call(model, i, float(sigmas[i]), x, x0, ran.nonzero().flatten(), reused)
            x = x + (x - x0) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return x

    config = AdaptiveConfig(mode="path", path=AUX_PATH, extrapolation=extrapolation)
    adaptive_sample(sampler, den, noise * sig[0], sig, config, extra_args={"cond": cond})


@pytest.mark.parametrize("extrapolation", ["hold", "linear", "log_linear", "quadratic", "linear_x0", "auto"])
def test_a_second_prediction_is_reused_by_the_outputs_rule_and_weights(setup, extrapolation):
    """remember_aux / reuse_aux (a CFG++ sampler's unguided prediction): a prediction that differs from the output by a
    constant (in the space the rule extrapolates) comes back from a reused call with the same constant; one kept equal
    to the output comes back equal to the reused output."""
    in_x0 = extrapolation == "linear_x0"
    got = []

    def on_call(model, i, s, x, x0, idx, reused):
        shift = AUX_OFFSET if in_x0 else -s * AUX_OFFSET  # x0 + offset, or direction d + offset
        model.remember_aux("same", x[idx], s, x0[idx], idx)
        model.remember_aux("shifted", x[idx], s, x0[idx] + shift, idx)
        if reused.numel():
            same = model.reuse_aux("same", x[reused], s, reused)
            back = model.reuse_aux("shifted", x[reused], s, reused)
            got.append((float((same - x0[reused]).abs().max()), float((back - (x0[reused] + shift)).abs().max())))

    _run_with_aux(setup, extrapolation, on_call)
    assert len(got) == 4
    assert max(a for a, _ in got) <= 1e-5 and max(b for _, b in got) <= 1e-4, got


def test_hold_offset_reuses_the_output_plus_the_last_offset(setup):
    """reuse_aux(hold_offset=True), a CFG++ sampler's "held_guidance" form: the output's reuse plus the two
    directions' offset at the sample's last computed call, however the offset moved before."""
    last = torch.full((4,), -1)
    held, moved = [], []

    def on_call(model, i, s, x, x0, idx, reused):
        model.remember_aux("moving", x[idx], s, x0[idx] - s * (i + 1) * AUX_OFFSET, idx)  # direction + (i + 1) offset
        last[idx] = i
        if reused.numel():
            back = model.reuse_aux("moving", x[reused], s, reused, hold_offset=True)
            k = (last[reused] + 1).reshape(-1, 1, 1, 1)
            held.append(float((back - (x0[reused] - s * k * AUX_OFFSET)).abs().max()))
            rule = model.reuse_aux("moving", x[reused], s, reused)  # the rule's: extrapolates the moving offset
            moved.append(float((rule - back).abs().max()))

    _run_with_aux(setup, "linear", on_call)
    assert len(held) == 4 and max(held) <= 1e-4, held
    assert min(moved) > 1e-2, moved  # the check can fail: the same rule gives another prediction here


def test_cfgpp_samplers_are_served_as_their_twins():
    """A CFG++ sampler steps as the sampler it is the CFG++ form of: the same step shape, noise and rules."""
    assert set(support.CFG_PP_TWINS) == {n for n in support.SUPPORT if n.endswith("_cfg_pp")}
    for name, twin in support.CFG_PP_TWINS.items():
        e, t = support.lookup(name), support.lookup(twin)
        assert e.post_cfg == "same_rule" and not t.post_cfg
        fields = ("family", "stochastic", "noise", "endpoint_corrector", "respace", "reuse", "low_eta_base")
        assert all(getattr(e, f) == getattr(t, f) for f in fields), name
        assert support.adaptive_kwargs(name) == support.adaptive_kwargs(twin)
        fn = lambda: None  # noqa: E731
        fn.__name__ = f"sample_{name}"  # ComfyUI's k_diffusion.sampling.sample_<name>, as the model patch meets it
        assert support.name_of_function(fn) == name


def test_whole_batch_fallback_is_reported_as_run(setup):
    """A subset runner that has to run the whole batch (per-image inputs it cannot slice): the report shows every
    image as run at those steps, counts their NFE, says why and at how many steps, and the result is the run with
    those steps computed for everyone."""
    den, noise, cond = setup
    rows = []

    class WholeBatch:
        fallback_reason = "per-image conditioning this runner cannot slice: a test"

        def __call__(self, model, x, sigma, idx, extra_args):
            return model(x, sigma, **extra_args)

    def spy(x, s, **kw):
        rows.append(x.shape[0])
        return den(x, s, **kw)

    sig = schedules.get_sigmas("karras", 12)
    path = torch.ones(4, 12, dtype=torch.bool)
    path[0, 5] = path[1, 7] = path[2, 5] = False
    path[:, 9] = False  # skipped by everyone: no call, a real skip
    runner = WholeBatch()
    out, rep = adaptive_sample(
        kdiff.sample_euler,
        spy,
        noise * sig[0],
        sig,
        AdaptiveConfig(mode="path", path=path),
        extra_args={"cond": cond},
        subset_runner=runner,
    )
    assert rows == [4] * 11  # steps 5 and 7 ran on the whole batch, step 9 on nobody
    assert rep.nfe_per_sample == [11, 11, 11, 11] and sum(rep.nfe_per_sample) == sum(rows)
    assert [r.computed for r in rep.records] == [1.0] * 9 + [0.0] + [1.0] * 2
    assert rep.records[5].mask == [True] * 4 and rep.records[9].mask == [False] * 4
    assert rep.path_string() == "CCCCCCCCCsCC"
    assert rep.notes == [
        runner.fallback_reason + ": the whole batch ran at 2 step(s) where per-sample skipping needed only part of it"
    ]
    full = path.clone()
    full[:, 5] = full[:, 7] = True
    ref, _ = adaptive_sample(
        kdiff.sample_euler, den, noise * sig[0], sig, AdaptiveConfig(mode="path", path=full), extra_args={"cond": cond}
    )
    assert torch.equal(out, ref)


def test_per_batch_decides_once_for_the_batch(setup):
    den, noise, cond = setup
    _, rep = run(
        den, noise, cond, "euler", n=30, config=AdaptiveConfig(mode="threshold", threshold=0.05, per_sample=False)
    )
    assert set(rep.path_string()) <= {"C", "s"}
    assert len(set(rep.nfe_per_sample)) == 1


def test_target_speedup_meets_budget(setup):
    den, noise, cond = setup
    for planner in ("schedule", "pace"):
        for target in (1.5, 2.0, 2.5):
            config = AdaptiveConfig(target_speedup=target, planner=planner, force_last=1)
            _, rep = run(den, noise, cond, "euler", n=50, config=config)
            assert abs(rep.nfe - 50 / target) <= 1.5, (planner, target, rep.nfe)
            assert rep.path_string().endswith("C")  # force_last
            for b in range(noise.shape[0]):
                sample_path = "".join("C" if r.mask[b] else "s" for r in rep.records)
                assert max(len(r) for r in sample_path.split("C")) <= 4, sample_path


def test_schedule_planner_keeps_skips_as_isolated_as_the_target_allows(setup):
    den, noise, cond = setup
    for target, longest in ((1.5, 1), (2.0, 1), (2.5, 2), (3.0, 3)):  # 3x: 16 computed, 34 skips (> 2 per gap)
        _, rep = run(den, noise, cond, "euler", n=50, config=AdaptiveConfig(target_speedup=target))
        path = rep.path_string()
        assert 50 / rep.nfe >= target and 50 / (rep.nfe + 1) < target, (target, path)  # the target is a floor
        assert max(len(r) for r in path.split("C")) == longest == math.ceil(path.count("s") / path.count("C"))
        assert path[0] == "C"
    # at 2x on karras (the steps within a factor of two in cost) every other step runs
    _, rep = run(den, noise, cond, "dpmpp_2m", n=30, config=AdaptiveConfig())
    assert rep.path_string() == "Cs" * 15


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "heun"])
def test_schedule_planner_runs_the_step_into_normals_final_jump(setup, sampler):
    """On normal at 20 steps the controller runs the step into the final jump (jump_step), which the cost model
    alone skipped; protect_final_jump=False (the benchmark's before) plans without it; both at 2x; a flow model's
    schedule is left alone."""
    from comfyui_tempo.samplers.skip_plan import jump_step

    den, noise, cond = setup
    sig = schedules.get_sigmas("normal", 20)
    j = jump_step(sig)
    fn, extra = kdiff.SAMPLERS[sampler], {"cond": cond}
    kw = {"endpoint_corrector": ENDPOINT.get(sampler, False), "extra_args": extra}
    _, rep = adaptive_sample(fn, den, noise * sig[0], sig, AdaptiveConfig(), **kw)
    _, off = adaptive_sample(fn, den, noise * sig[0], sig, AdaptiveConfig(), protect_final_jump=False, **kw)
    assert j == 18 and rep.path_string()[j] == "C" and off.path_string()[j] == "s"
    assert rep.path_string().count("s") == off.path_string().count("s") == 10
    flow = schedules.flow_sigmas(20, shift=3.0)
    assert jump_step(flow, flow=True) is None


def test_ancestral_noise_is_not_progress(setup):
    """The estimator sees each increment with the injected noise regressed out."""
    den, noise, cond = setup
    sig = schedules.get_sigmas("karras", 20)
    injected = []

    def recording(seed):
        base = kdiff.default_noise_sampler(noise, seed=seed)

        def ns(s, sn):
            z = base(s, sn)
            injected.append(z)
            return z

        return ns

    # reference deterministic increments: rerun the same ancestral trajectory and subtract sigma_up*z
    xs = []
    kdiff.sample_euler_ancestral(
        den,
        noise * sig[0],
        sig,
        extra_args={"cond": cond},
        noise_sampler=recording(5),
        callback=lambda d: xs.append(d["x"].clone()),
    )
    true_d = []
    for k in range(1, len(xs)):
        _, up = kdiff.ancestral_step(float(sig[k - 1]), float(sig[k]))
        det = xs[k] - xs[k - 1] - up * injected[k - 1]
        true_d.append(det.abs().flatten(1).mean(1))
    ctl = AdaptiveSampling(den, sig, AdaptiveConfig(mode="threshold", threshold=1e-12, estimator_space="raw"))
    kdiff.sample_euler_ancestral(
        ctl,
        noise * sig[0],
        sig,
        extra_args={"cond": cond},
        noise_sampler=ctl.record_noise(kdiff.default_noise_sampler(noise, seed=5)),
    )
    got = torch.stack(ctl._d_hist)
    want = torch.stack(true_d[1 : 1 + len(got)])  # true_d[0] is L_0 - x_T, never measured
    assert torch.allclose(got, want, rtol=0.02)
    raw = torch.stack([(xs[k] - xs[k - 1]).abs().flatten(1).mean(1) for k in range(1, len(got) + 1)])
    assert (raw[-5:] > 1.5 * want[-5:]).all()  # without the regression, noise would dominate


def test_nan_stops_skipping_and_finishes(setup):
    den, noise, cond = setup
    state = {"n": 0}

    def flaky(x, s, **kw):
        state["n"] += 1
        out = den(x, s, **kw)
        if state["n"] == 8:
            state["sigma"] = float(s[0])
            out = out.clone()
            out[0, 0, 0, 0] = float("nan")
        return out

    sig = schedules.get_sigmas("karras", 30)
    _, rep = adaptive_sample(
        kdiff.sample_euler, flaky, noise * sig[0], sig, AdaptiveConfig(), extra_args={"cond": cond}
    )
    assert any("NaN" in n for n in rep.notes)
    k = [round(r.sigma, 5) for r in rep.records].index(round(state["sigma"], 5))
    assert rep.path_string()[k + 1 :] == "C" * (29 - k)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"threshold": -0.1, "mode": "threshold"}, "threshold"),
        ({"max_skip": 0}, "max_skip"),
        ({"mode": "fast"}, "mode"),
        ({"target_speedup": 0.5}, "target_speedup"),
        ({"start_percent": 2.0}, "start_percent"),
        ({"mode": "path"}, "path"),
    ],
)
def test_bad_settings_name_the_input(kwargs, name):
    with pytest.raises(AdaptiveConfigError, match=name):
        AdaptiveConfig(**kwargs).validate()


def test_shape_change_is_a_clear_error(setup):
    den, _, _ = setup
    sig = schedules.get_sigmas("karras", 10)
    ctl = AdaptiveSampling(den, sig, AdaptiveConfig())
    ctl(torch.randn(2, 4, 8, 8) * sig[0], sig[0] * torch.ones(2))
    with pytest.raises(AdaptiveConfigError, match="shape changed"):
        ctl(torch.randn(3, 4, 8, 8), sig[1] * torch.ones(3))


def test_video_latents_and_flow_models():
    g = torch.Generator().manual_seed(4)
    data = torch.randn(12, 4, 3, 6, 6, generator=g)  # [N, C, T, H, W]
    flow = FlowDenoiser(FiniteSetDenoiser(data))
    sig = schedules.flow_sigmas(30, shift=3.0)
    noise = torch.randn(2, 4, 3, 6, 6, generator=g)
    ref = kdiff.sample_euler(flow, noise * sig[0], sig)
    same, _ = adaptive_sample(kdiff.sample_euler, flow, noise * sig[0], sig, AdaptiveConfig(target_speedup=1.0))
    assert torch.equal(ref, same)
    out, rep = adaptive_sample(
        kdiff.sample_euler, flow, noise * sig[0], sig, AdaptiveConfig(target_speedup=2.0), vp_estimator_ok=False
    )
    assert rep.nfe <= 16
    assert out.shape == ref.shape and torch.isfinite(out).all()
    rel = float((out - ref).norm() / ref.norm())
    assert rel < 0.2


def test_auto_extrapolation_follows_the_sampler(setup):
    """auto: log sigma for one-evaluation deterministic samplers, sigma for noisy or multi-evaluation ones."""
    den, noise, cond = setup
    want = {"euler": "log_linear (auto)", "dpmpp_2m": "log_linear (auto)", "euler_ancestral": "linear (auto)"}
    want["heun"] = "linear (auto)"
    want["dpm_2"] = "linear (auto)"
    for sampler, resolved in want.items():
        out, rep = run(den, noise, cond, sampler, n=20, config=AdaptiveConfig())
        assert rep.extrapolation == resolved, sampler
        assert torch.isfinite(out).all()
    # and it is what the named setting gives
    a, _ = run(den, noise, cond, "euler", n=20, config=AdaptiveConfig())
    b, _ = run(den, noise, cond, "euler", n=20, config=AdaptiveConfig(extrapolation="log_linear"))
    assert torch.equal(a, b)


def test_auto_extrapolation_on_a_flow_model_is_linear_in_sigma():
    """On a flow model (vp_estimator_ok False: ComfyUI's CONST) auto is linear in sigma, the flow time, for every
    sampler, and is what extrapolation linear gives."""
    g = torch.Generator().manual_seed(5)
    flow = FlowDenoiser(FiniteSetDenoiser(torch.randn(8, 4, 6, 6, generator=g)))
    sig = schedules.flow_sigmas(20, shift=3.0)
    noise = torch.randn(2, 4, 6, 6, generator=g)
    outs = {}
    for sampler in ("euler", "dpmpp_2m", "heun"):
        fn = kdiff.SAMPLERS[sampler]
        for ex in ("auto", "linear"):
            out, rep = adaptive_sample(
                fn,
                flow,
                noise * sig[0],
                sig,
                AdaptiveConfig(extrapolation=ex),
                vp_estimator_ok=False,
                endpoint_corrector=ENDPOINT.get(sampler, False),
            )
            outs[sampler, ex] = out
            if ex == "auto":
                assert rep.extrapolation == "linear (auto)", sampler
        assert torch.equal(outs[sampler, "auto"], outs[sampler, "linear"]), sampler


def _euler_re_evaluated(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler that evaluates each step twice at its own sigma, the second time at the same latent (as sa_solver_pece
    re-evaluates its corrected state at the step's sigma): the same steps as euler."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        model(x, sigmas[i] * s_in, **(extra_args or {}))
        denoised = model(x, sigmas[i] * s_in, **(extra_args or {}))
        x = x + kdiff.to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@pytest.mark.parametrize("extrapolation", ["linear", "log_linear", "quadratic"])
def test_a_second_evaluation_at_the_same_sigma_extrapolates_as_one(setup, extrapolation):
    """A sampler evaluating twice at a step's sigma (sa_solver_pece) skips as the same sampler evaluating once: the
    second evaluation replaces the first in the history. Two history entries at one sigma had given every Lagrange
    weight 0, so a skipped step's direction was 0 and its x0 the noisy latent (sa_solver_pece: 10 dB from the full
    run inside ComfyUI, 20 dB below holding the direction)."""
    den, noise, cond = setup
    n = 20
    sig = schedules.get_sigmas("karras", n)
    path = torch.tensor([i % 2 == 0 for i in range(n)])
    config = AdaptiveConfig(mode="path", path=path, extrapolation=extrapolation)
    x = noise * sig[0]
    once, _ = adaptive_sample(kdiff.sample_euler, den, x, sig, config, extra_args={"cond": cond})
    twice, rep = adaptive_sample(_euler_re_evaluated, den, x, sig, config, extra_args={"cond": cond})
    assert rep.path_string() == "Cs" * (n // 2) and [r.evals for r in rep.records] == [2] * n
    assert not rep.notes, rep.notes
    torch.testing.assert_close(twice, once, rtol=0, atol=1e-5)
    full = kdiff.sample_euler(den, x, sig, extra_args={"cond": cond})
    assert float((twice - full).norm() / full.norm()) < 0.1


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_dpm_2_ancestrals_midpoint_stays_in_its_step(setup, eta):
    """At eta 1 dpm_2_ancestral's midpoint evaluation, between sigma_i and sigma_down in log sigma, lands on sigma_{i+1}
    exactly; below eta 1 it falls inside the step. Either way it is the step's second evaluation, not the next step's
    start: two evaluations per step (one on the last), every other step skipped as planned, and the result near the
    full run's (taking the midpoint for the next step had sent the latents to 1e7)."""
    den, noise, cond = setup
    n = 20
    path = torch.tensor([i % 2 == 0 for i in range(n)])
    kw = {"eta": eta, "noise_sampler": kdiff.default_noise_sampler(noise, seed=7)}
    ref, _ = run(den, noise, cond, "dpm_2_ancestral", n=n, config=AdaptiveConfig(target_speedup=1.0), **kw)
    kw["noise_sampler"] = kdiff.default_noise_sampler(noise, seed=7)
    out, rep = run(den, noise, cond, "dpm_2_ancestral", n=n, config=AdaptiveConfig(mode="path", path=path), **kw)
    assert [r.evals for r in rep.records] == [2] * (n - 1) + [1]
    assert rep.path_string() == "Cs" * (n // 2) and rep.nfe == 2 * (n // 2)
    assert not any("off its schedule" in m for m in rep.notes), rep.notes
    err = float((out - ref).norm() / ref.norm())
    assert err < 0.5, err


def test_midpoint_at_eta_1_from_a_zero_terminal_snr_sigma_is_the_corrector():
    """From sigma 4519 to 40 (the zero-terminal-SNR table's simple schedule at 20 steps) dpm_2_ancestral's float32
    midpoint sqrt(sigma_i sigma_down) misses sigma_{i+1} by 2.5e-4 (sigma_down cancels): it is still the step's
    corrector, not an evaluation off the schedule that stops skipping for the run (dpmpp_2s_ancestral, ComfyUI's
    only, has the same midpoint)."""
    sampler = "dpm_2_ancestral"
    sig = schedules.get_sigmas("simple", 20, schedules.Discrete(zsnr=True))
    assert float(sig[0]) > 4000 and float(sig[1]) < 50
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    den = lambda x, s, **e: x / (1 + torch.as_tensor(s).reshape(-1, 1, 1, 1) ** 2)  # noqa: E731  (data: a point at 0)
    kw = {"noise_sampler": kdiff.default_noise_sampler(x, seed=1), **support.adaptive_kwargs(sampler)}
    out, rep = adaptive_sample(kdiff.SAMPLERS[sampler], den, x * sig[0], sig, AdaptiveConfig(), **kw)
    assert not any("off its schedule" in m for m in rep.notes), rep.notes
    assert rep.nfe <= 20 and torch.isfinite(out).all()


def _point_mass_run(sampler, sched, table, noise_x0, steps=20, den=None, **more):
    """A noisy sampler on an exact denoiser of a point mass at c (D(x, sigma) = c for every x; or `den`): the denoised
    value the sampler saw at each step (its callback), the schedule and the report."""
    sig = schedules.get_sigmas(sched, steps, table)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    c = torch.linspace(-1, 1, 48).reshape(1, 3, 4, 4)
    if den is None:
        den = lambda x, s, **e: c.expand_as(x).clone()  # noqa: E731
    seen = []
    kw = support.adaptive_kwargs(sampler)
    if support.SUPPORT[sampler].stochastic:
        kw["noise_sampler"] = kdiff.default_noise_sampler(x, seed=1)
    out, rep = adaptive_sample(
        kdiff.SAMPLERS[sampler],
        den,
        x * sig[0],
        sig,
        AdaptiveConfig(),
        callback=lambda d: seen.append((float(d["sigma"]), d["denoised"].clone())),
        noise_x0=noise_x0,
        **kw,
        **more,
    )
    return seen, c, rep, out


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m_sde"])
def test_the_measured_x0_rule_holds_x0_where_x0_held_better(sampler):
    """noise_x0_rule "measured": on a point mass the held x0 is exact at every computed step, so from the first
    measurement on every skipped step reuses x0, below sigma 3 too: the run is the full run's, and the report says
    how. The sigma rule reuses the direction below 3, and the noise shows there."""
    tab = schedules.Discrete()
    seen, c, rep, out = _point_mass_run(sampler, "karras", tab, True, noise_x0_rule="measured")
    path = rep.path_string()
    low = [i for i, (s, _) in enumerate(seen) if 0 < s <= 3.0 and path[i] == "s"]
    assert low, path
    assert all(torch.allclose(seen[i][1], c.expand_as(seen[i][1]), atol=1e-5) for i in range(len(seen)))
    assert any("where it predicted their last computed step better" in m for m in rep.notes), rep.notes
    seen_s, _, rep_s, _ = _point_mass_run(sampler, "karras", tab, True, noise_x0_rule="sigma")
    assert rep_s.path_string() == path
    assert max(float((seen_s[i][1] - c).abs().max()) for i in low) > 1e-3


def test_the_measured_x0_rule_keeps_the_direction_where_the_direction_held_better():
    """A denoiser whose direction never changes (x0 = x - sigma g): the direction rule is exact at every computed
    step and the held x0 is not, so from the first measurement on no skipped step reuses x0, above sigma 3 neither:
    every x0 the sampler sees there is exact. The sigma rule reuses x0 above 3 and misses there. (Before a first
    measurement the measured rule follows sigma.)"""
    g = torch.linspace(-1, 1, 48).reshape(1, 3, 4, 4)
    sig = schedules.get_sigmas("karras", 20, schedules.Discrete())
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))

    def den(x, s, **e):
        return x - torch.as_tensor(s).reshape(-1, 1, 1, 1) * g

    errs = {}
    for rule in ("measured", "sigma"):
        seen = []
        _, rep = adaptive_sample(
            kdiff.sample_euler_ancestral,
            den,
            noise * sig[0],
            sig,
            AdaptiveConfig(),
            callback=lambda d: seen.append(
                (float(d["sigma"]), float((d["denoised"] - den(d["x"], d["sigma"])).abs().max()))
            ),
            noise_sampler=kdiff.default_noise_sampler(noise, seed=1),
            noise_x0_rule=rule,
            **support.adaptive_kwargs("euler_ancestral"),
        )
        path = rep.path_string()
        first = path.index("C", path.index("s"))  # the first computed step after a skip: measured from there on
        late = [i for i, (s, _) in enumerate(seen) if i > first and s > 3.0 and path[i] == "s"]
        assert late, path
        errs[rule] = max(seen[i][1] for i in late)
    assert errs["measured"] < 1e-4 < errs["sigma"], errs


def test_noise_x0_rule_must_be_known():
    sig = schedules.get_sigmas("karras", 10, schedules.Discrete())
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(AdaptiveConfigError, match="^noise_x0_rule: expected one of"):
        adaptive_sample(kdiff.sample_euler, lambda x, s, **e: x, x, sig, AdaptiveConfig(), noise_x0_rule="always")


@pytest.mark.parametrize("table", ["sd", "zsnr"])
@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m_sde"])
def test_a_noisy_samplers_skips_above_sigma_3_reuse_x0(sampler, table):
    """Above NOISE_X0_SIGMA a skipped step of a sampler that injects noise reuses the last x0: on a point mass every x0
    the sampler sees there is the point. Reusing the direction instead, the noise injected since it was computed
    lands in x0 (sqrt(2) sigma' after a long step). Below it the direction rule reuses, and the noise shows in x0."""
    from comfyui_tempo.samplers.adaptive import NOISE_X0_SIGMA

    tab = schedules.Discrete(zsnr=table == "zsnr")
    seen, c, rep, _ = _point_mass_run(sampler, "karras", tab, True)
    path = rep.path_string()
    high = [i for i, (s, _) in enumerate(seen) if s > NOISE_X0_SIGMA]
    skipped = [i for i in high if path[i] == "s"]
    assert skipped, path  # the plan skips steps above it
    assert all(torch.allclose(seen[i][1], c.expand_as(seen[i][1]), atol=1e-3) for i in high)
    assert any("reuse the last x0 (the sampler's rule)" in m for m in rep.notes), rep.notes
    seen_off, _, rep_off, _ = _point_mass_run(sampler, "karras", tab, False)
    assert rep_off.path_string() == path
    assert max(float((seen_off[i][1] - c).abs().max()) for i in skipped) > 0.1
    assert not any("reuse the last x0" in m for m in rep_off.notes)
    low = [i for i, (s, _) in enumerate(seen) if 0 < s <= NOISE_X0_SIGMA and path[i] == "s"]
    if table == "sd":  # (on the zsnr table's karras at 20 steps every skip is above it)
        assert low and max(float((seen[i][1] - c).abs().max()) for i in low) > 1e-3  # below it: the direction rule


@pytest.mark.parametrize("sched", ["normal", "karras", "exponential", "beta"])
def test_x0_reuse_changes_nothing_for_a_sampler_that_injects_no_noise(sched):
    """For a sampler that injects no noise (euler) the rule never fires, on SD's table or the zero-terminal-SNR one:
    the same result as without it, bit for bit."""
    for table in (schedules.Discrete(), schedules.Discrete(zsnr=True)):
        _, _, rep, out = _point_mass_run("euler", sched, table, True)
        _, _, rep_off, out_off = _point_mass_run("euler", sched, table, False)
        assert "s" in rep.path_string()
        assert torch.equal(out, out_off) and rep.path_string() == rep_off.path_string()
        assert not any("reuse the last x0" in m for m in rep.notes)


def test_x0_reuse_is_not_for_flow_models():
    """On a flow model (vp_estimator_ok False) euler_ancestral reuses by its direction rule at every skipped step:
    the same result with the rule as without it."""
    g = torch.Generator().manual_seed(6)
    flow = FlowDenoiser(FiniteSetDenoiser(torch.randn(8, 4, 6, 6, generator=g)))
    sig = schedules.flow_sigmas(20, shift=3.0)
    noise = torch.randn(2, 4, 6, 6, generator=g)
    outs = []
    for on in (True, False):
        out, rep = adaptive_sample(
            kdiff.sample_euler_ancestral,
            flow,
            noise * sig[0],
            sig,
            AdaptiveConfig(),
            vp_estimator_ok=False,
            noise_sampler=kdiff.default_noise_sampler(noise, seed=3),
            noise_x0=on,
        )
        assert "s" in rep.path_string() and not any("reuse the last x0" in m for m in rep.notes)
        outs.append(out)
    assert torch.equal(*outs)
