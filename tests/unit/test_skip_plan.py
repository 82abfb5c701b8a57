"""The schedule planner (samplers.skip_plan): exact optimum of its cost model (with and without the run penalty),
constraints, the flow time variable, where runs of skips go."""

import itertools
import math

import pytest
import torch

from comfyui_tempo.samplers import schedules
from comfyui_tempo.samplers.adaptive_config import target_skips
from comfyui_tempo.samplers.skip_plan import (
    NOISE_DOMINATED_SIGMA,
    RUN_PENALTY,
    STEP_WEIGHT,
    default_plan,
    plan_skips,
    skip_costs_fn,
)


def least_cost(cost, n, steps, n_skips, max_skip, penalty=1.0):
    """(least summed cost, its path) over every path of n steps skipping n_skips of `steps`, at most max_skip in a
    row, the j-th skip of a run at penalty^(j - 1) (the reference for the dynamic programme)."""
    best = (math.inf, None)
    for skipped in itertools.combinations(steps, n_skips):
        path = tuple(i not in skipped for i in range(n))
        if max(len(r) for r in "".join("C" if c else "s" for c in path).split("C")) > max_skip:
            continue
        total, b, a = 0.0, 0, None
        for i in range(1, n):
            if path[i]:
                b, a = i, b
            else:
                total += cost(i, b, a) * penalty ** (i - b - 1)
        best = min(best, (total, path))
    return best


def brute_force(sigmas, n_skips, max_skip, first, last, flow=False, penalty=1.0):
    """Every path with n_skips skips of the cost model: the least summed cost and its path."""
    n = len(sigmas) - 1
    return least_cost(skip_costs_fn(sigmas, flow), n, range(max(1, first), last), n_skips, max_skip, penalty)


@pytest.mark.parametrize("scheduler", ["karras", "normal", "flow_simple"])
@pytest.mark.parametrize("penalty", [1.0, RUN_PENALTY])
@pytest.mark.parametrize("n,n_skips,max_skip,first,last", [(10, 4, 2, 1, 10), (12, 7, 3, 2, 11), (11, 3, 1, 1, 11)])
def test_plan_is_the_exact_optimum(scheduler, penalty, n, n_skips, max_skip, first, last):
    flow = scheduler.startswith("flow")
    sig = schedules.flow_sigmas(n, shift=3.0) if flow else schedules.get_sigmas(scheduler, n)
    want_cost, want_path = brute_force(sig, n_skips, max_skip, first, last, flow, penalty)
    path, got = plan_skips(sig, n_skips, max_skip=max_skip, first=first, last=last, flow=flow, run_penalty=penalty)
    assert int((~path).sum()) == n_skips
    assert got == pytest.approx(want_cost, rel=1e-9)


def test_plan_respects_protected_steps_and_runs():
    sig = schedules.get_sigmas("karras", 40)
    path, _ = plan_skips(sig, 20, max_skip=3, first=5, last=37)
    assert path[:5].all() and path[37:].all()
    assert max(len(r) for r in "".join("C" if c else "s" for c in path.tolist()).split("C")) <= 3
    assert int((~path).sum()) == 20


def test_plan_skips_as_many_as_fit():
    sig = schedules.get_sigmas("normal", 10)
    path, _ = plan_skips(sig, 9, max_skip=1)
    assert "".join("C" if c else "s" for c in path.tolist()) == "Cs" * 5


def _runs(path) -> str:
    return "".join("C" if c else "s" for c in path.tolist())


def test_flow_costs_are_in_flow_time():
    """On a flow model the time variable is sigma itself and the travel |sigma_i - sigma_i+1| (no VE mapping)."""
    sig = schedules.flow_sigmas(12, shift=3.0)
    s = [float(v) for v in sig]
    cost = skip_costs_fn(sig, flow=True)
    assert cost(5, 4, 3) == pytest.approx(abs(s[5] - s[6]) * abs((s[4] - s[5]) * (s[3] - s[5])), rel=1e-12)
    assert cost(5, 4, None) == pytest.approx(abs(s[5] - s[6]) * abs(s[4] - s[5]), rel=1e-12)


def test_run_penalty_keeps_skips_isolated_unless_some_steps_are_far_cheaper():
    """With the controller's penalty and step weight a 2x plan is every other step on an eps karras schedule
    (costs within 2x), but on a flow karras schedule (the last steps tiny in flow time) it runs the first steps and
    skips late in runs; without the penalty the eps plan would use runs too."""
    from comfyui_tempo.samplers.schedules import Flow, karras

    eps = schedules.get_sigmas("karras", 30)
    path, _ = plan_skips(eps, 15, max_skip=4, run_penalty=RUN_PENALTY, step_weight=STEP_WEIGHT)
    assert "ss" not in _runs(path)
    free, _ = plan_skips(eps, 15, max_skip=4, step_weight=STEP_WEIGHT)
    assert "ss" in _runs(free)
    fl = Flow(shift=3.0)
    sig = karras(30, float(fl.sigma_min), float(fl.sigma_max))
    path, _ = plan_skips(sig, 15, max_skip=4, flow=True, run_penalty=RUN_PENALTY, step_weight=STEP_WEIGHT)
    runs = _runs(path)
    assert runs.startswith("CCCCCCC") and "sss" in runs[15:] and int((~path).sum()) == 15


def test_step_weight_makes_long_steps_costlier_and_keeps_normals_last_steps():
    """The step-length factor (1 + h_i / median h)^w: on an eps normal schedule the last steps (to sigma 0 the
    length of the one before) are the longest in log sigma, so with the controller's settings the plan runs the
    last two steps and takes pairs of skips mid-run instead (without the factor: every other step to the end)."""
    sig = schedules.get_sigmas("normal", 30)
    s = [float(v) for v in sig]
    plain, weighted = skip_costs_fn(sig), skip_costs_fn(sig, step_weight=2.0)
    h = [abs(math.log(s[i]) - math.log(s[i + 1])) for i in range(29)] + [0.0]
    h[29] = h[28]
    med = sorted(h)[15]
    for i in (5, 28, 29):
        assert weighted(i, i - 1, i - 2) == pytest.approx(plain(i, i - 1, i - 2) * (1 + h[i] / med) ** 2, rel=1e-9)
    assert weighted(29, 28, 27) / plain(29, 28, 27) > 10 * weighted(10, 9, 8) / plain(10, 9, 8)
    path, _ = plan_skips(sig, 15, max_skip=4, run_penalty=RUN_PENALTY, step_weight=STEP_WEIGHT)
    old, _ = plan_skips(sig, 15, max_skip=4, run_penalty=30.0)  # the previous planner (penalty 30, no factor)
    assert _runs(path).endswith("CC") and "ss" in _runs(path) and int((~path).sum()) == 15
    assert _runs(old) == "Cs" * 15


def test_late_skips_cost_more_on_normal_than_on_karras():
    """The cost model sees normal's large last log-sigma jumps (where the greedy paths keep the network)."""
    costs = {}
    for name in ("karras", "normal"):
        sig = schedules.get_sigmas(name, 20)
        cost = skip_costs_fn(sig)
        costs[name] = cost(18, 17, 16) / cost(10, 9, 8)
    assert costs["normal"] > 10 * costs["karras"]


def test_step_scale_multiplies_each_steps_cost():
    """A calibrated cost model: step_scale multiplies each step's modelled cost; a constant scale plans the same
    path, a costly step is kept, a wrong length is refused."""
    sig = schedules.get_sigmas("karras", 20)
    base, scaled = skip_costs_fn(sig), skip_costs_fn(sig, step_scale=[float(i + 1) for i in range(20)])
    for i in (3, 11, 18):
        assert scaled(i, i - 1, i - 2) == pytest.approx(base(i, i - 1, i - 2) * (i + 1), rel=1e-12)
    path, _ = plan_skips(sig, 10, run_penalty=RUN_PENALTY)
    same, _ = plan_skips(sig, 10, run_penalty=RUN_PENALTY, step_scale=[7.0] * 20)
    assert same.tolist() == path.tolist()
    skipped = int((~path).nonzero()[0])
    scale = [1.0] * 20
    scale[skipped] = 1e6
    kept, _ = plan_skips(sig, 10, run_penalty=RUN_PENALTY, step_scale=scale)
    assert bool(kept[skipped]) and int((~kept).sum()) == 10
    with pytest.raises(ValueError, match="^step_scale:"):
        plan_skips(sig, 10, step_scale=[1.0] * 19)


@pytest.mark.parametrize("n", [10, 15, 20, 30, 50])
def test_jump_step_is_the_step_into_normals_final_jump(n):
    """jump_step: on normal the step into sigma_min (the last step before sigma 0); none on the schedules that
    grow smoothly, none for a flow model; without the trailing 0 the last step."""
    from comfyui_tempo.samplers.skip_plan import jump_step

    sig = schedules.get_sigmas("normal", n)
    assert jump_step(sig) == n - 2
    assert jump_step(sig[:-1]) == n - 2  # the same schedule cut before sigma 0: its last step is the jump
    assert jump_step(sig, flow=True) is None
    for name in ("karras", "exponential", "simple", "sgm_uniform", "beta"):
        assert jump_step(schedules.get_sigmas(name, n)) is None, name


def test_protected_steps_run_and_the_rest_is_the_optimum():
    """plan_skips(protect=...): the protected step runs, the skip count holds, and the plan is the least cost of
    the paths that run it (brute force); at 20 steps on normal the controller's plan runs the final jump's step,
    which the cost model alone skipped."""
    from comfyui_tempo.samplers.skip_plan import jump_step

    sig = schedules.get_sigmas("normal", 12)
    for keep in (5, 10):
        path, got = plan_skips(sig, 5, max_skip=2, protect=(keep,))
        assert bool(path[keep]) and int((~path).sum()) == 5
        best, _ = least_cost(skip_costs_fn(sig), 12, [i for i in range(1, 12) if i != keep], 5, 2)
        assert got == pytest.approx(best, rel=1e-9)
    sig = schedules.get_sigmas("normal", 20)
    j = jump_step(sig)
    free, _ = plan_skips(sig, 10, max_skip=4, run_penalty=RUN_PENALTY, step_weight=STEP_WEIGHT)
    kept, _ = plan_skips(sig, 10, max_skip=4, run_penalty=RUN_PENALTY, step_weight=STEP_WEIGHT, protect=(j,))
    assert not bool(free[j]) and bool(kept[j]) and int((~kept).sum()) == 10
    assert plan_skips(sig, 10, protect=(None,))[0].tolist() == plan_skips(sig, 10)[0].tolist()


def test_noise_terms_by_hand():
    """The noise a step adds and the share of a perturbation a step's evaluation takes out, on sigmas 2, 1, 0.5, 0:
    euler_ancestral's sigma_up / sigma_down and dpmpp_2m_sde's e^(-2h) (here equal), the last step taking out all."""
    from comfyui_tempo.samplers.skip_plan import noise_costs_fn, noise_terms

    sig = [2.0, 1.0, 0.5, 0.0]
    for form in ("ancestral", "sde"):
        up, removed = noise_terms(sig, form)
        assert up == pytest.approx([math.sqrt(0.75), 0.5 * math.sqrt(0.75), 0.0])
        assert removed == pytest.approx([0.75, 0.75, 1.0])
        cost = noise_costs_fn(sig, form)
        # skipping step 2 after step 0: the noise of steps 0 and 1, all of it left in by the step to sigma 0
        assert cost(2, 0, None) == pytest.approx(math.sqrt(0.75 + 0.1875))
        assert cost(1, 0, None) == pytest.approx(math.sqrt(0.75) * 0.75 / math.sqrt(1 + 0.25))
    up, removed = noise_terms([3.0, 2.0, 1.0], "ancestral")  # unequal steps: the two forms differ
    up2, removed2 = noise_terms([3.0, 2.0, 1.0], "sde")
    assert up[0] == pytest.approx(math.sqrt(4 * 5 / 9)) and removed[0] == pytest.approx(1 - math.sqrt(4 - 20 / 9) / 3)
    assert up2[0] == pytest.approx(2 * math.sqrt(1 - 4 / 9)) and removed2[0] == pytest.approx(1 - 4 / 9)
    with pytest.raises(ValueError, match="noise form: expected one of"):
        noise_terms(sig, "brownian")


def test_the_mixed_cost_adds_the_two_errors_in_the_latents_units():
    """mixed_costs_fn = extrapolation_scale (KAPPA_SCALE * median log-sigma step ** KAPPA_POWER) x skip_costs_fn +
    noise_costs_fn: no normalisation, each in the latent's units."""
    from comfyui_tempo.samplers.skip_plan import (
        KAPPA_POWER,
        KAPPA_SCALE,
        extrapolation_scale,
        mixed_costs_fn,
        noise_costs_fn,
        skip_costs_fn,
    )

    for n in (20, 50):
        sig = schedules.get_sigmas("exponential", n)  # equal steps in log sigma but the last, to 0
        h = (math.log(float(sig[0])) - math.log(float(sig[-2]))) / (n - 1)
        assert extrapolation_scale(sig) == pytest.approx(KAPPA_SCALE * h**KAPPA_POWER, rel=1e-5)
        mixed, det, nz = (
            mixed_costs_fn(sig, "sde", STEP_WEIGHT),
            skip_costs_fn(sig, False, STEP_WEIGHT),
            noise_costs_fn(sig, "sde"),
        )
        for i, b, a in ((5, 4, 3), (9, 7, 6), (n - 1, n - 2, n - 3), (1, 0, None)):
            assert mixed(i, b, a) == pytest.approx(extrapolation_scale(sig) * det(i, b, a) + nz(i, b, a))
    share = []
    for n in (20, 50):
        sig = schedules.get_sigmas("karras", n)
        det, nz, k = skip_costs_fn(sig, False, STEP_WEIGHT), noise_costs_fn(sig, "sde"), extrapolation_scale(sig)
        share.append(sum(nz(i, i - 1, None) for i in range(2, n)) / sum(k * det(i, i - 1, i - 2) for i in range(2, n)))
    # over a run's single skips the injected noise outweighs the extrapolation (about 13x at 20 steps, 16x at 50)
    assert 1 < share[0] < share[1]


def test_noise_plan_is_the_optimum_of_the_mixed_cost_and_only_for_ve_sigmas():
    """plan_skips(noise=...): the exact optimum of mixed_costs_fn (brute force, no run penalty), the same number of
    skips; on karras at 20 steps it leaves every-other-step skipping (the default's path); a flow model is refused."""
    from comfyui_tempo.samplers.skip_plan import NOISE_RUN_PENALTY, default_plan, mixed_costs_fn

    sig = schedules.get_sigmas("karras", 12)
    cost = mixed_costs_fn(sig, "sde", STEP_WEIGHT)
    path, total = plan_skips(sig, 5, max_skip=3, noise="sde", step_weight=STEP_WEIGHT, run_penalty=NOISE_RUN_PENALTY)
    assert total == pytest.approx(least_cost(cost, 12, range(1, 12), 5, 3)[0]) and int((~path).sum()) == 5
    sig20 = schedules.get_sigmas("karras", 20)
    default, noisy = default_plan(sig20, 10), default_plan(sig20, 10, noise="sde")
    assert "".join("C" if c else "s" for c in default.tolist()) == "Cs" * 10
    assert int((~noisy).sum()) == 10 and not bool((noisy == default).all())
    with pytest.raises(ValueError, match="not flow models"):
        plan_skips(sig, 5, flow=True, noise="sde")


def test_the_controller_plans_with_the_noise_cost_where_asked_and_says_so():
    import torch

    from comfyui_tempo.samplers import kdiff
    from comfyui_tempo.samplers.adaptive import AdaptiveConfig, adaptive_sample

    sig = schedules.get_sigmas("karras", 20)
    x = torch.randn(2, 3, 4, 4) * sig[0]

    def run(**kw):
        return adaptive_sample(
            kdiff.SAMPLERS["euler_ancestral"],
            lambda x, s, **e: x * 0.5,
            x,
            sig,
            AdaptiveConfig(),
            noise_sampler=kdiff.default_noise_sampler(x, seed=1),
            **kw,
        )[1]

    base, noisy = run(), run(noise_plan="ancestral")
    assert noisy.nfe == base.nfe == 10
    assert noisy.path_string() != base.path_string()
    assert any("injected-noise cost (ancestral" in n for n in noisy.notes)
    assert not any("injected-noise" in n for n in base.notes)
    flow = run(noise_plan="ancestral", vp_estimator_ok=False)  # a flow model keeps the cost model alone
    assert not any("injected-noise" in n for n in flow.notes)


def test_holds_every_skip_follows_the_controllers_reuse_rule():
    """holds_every_skip: a skip holds below hold_below, hold_step or more past the last computed step in log sigma, or
    with fewer than two computed steps before it; a path without a skip is False."""
    import torch

    from comfyui_tempo.samplers.skip_plan import holds_every_skip

    sig = [8.0, 4.0, 3.5, 0.9, 0.5, 0.0]
    p = torch.tensor([True, False, True, True, False])  # step 1: one computed before it; step 4: sigma 0.5 < 1
    assert holds_every_skip(sig, p, 1.0, None)
    assert not holds_every_skip(sig, p, 0.4, None)  # step 4 no longer below; two computed before it
    assert holds_every_skip(sig, p, 0.4, math.log(0.9 / 0.5))  # ... but that far past step 3
    assert not holds_every_skip(sig, p, 0.4, math.log(0.9 / 0.5) + 1e-6)
    q = torch.tensor([True, True, False, True, True])  # step 2 (sigma 3.5): log(4 / 3.5) = 0.13 past step 1
    assert not holds_every_skip(sig, q, 1.0, 0.2) and holds_every_skip(sig, q, 1.0, 0.13)
    assert not holds_every_skip(sig, torch.ones(5, dtype=torch.bool), 1.0, 0.2)
    assert not holds_every_skip(sig, q, None, None)


@pytest.mark.parametrize("scheduler,replanned", [("karras", True), ("exponential", True), ("normal", False)])
def test_dpmpp_2m_sde_plans_with_the_noise_cost_where_every_skip_holds(scheduler, replanned):
    """At 20 steps on SD's sigmas every skip of the cost model's plan holds on karras and exponential (0.2 or more in
    log sigma from the last computed step, or below sigma 1), not on normal: the controller plans there with the
    injected-noise cost and says so; hold_noise_plan=False, a sampler without the hold rule (dpmpp_2m) and a flow
    model keep the cost model's plan."""
    import torch

    from comfyui_tempo.samplers import kdiff
    from comfyui_tempo.samplers.adaptive import HOLD_BELOW_SIGMA, HOLD_STEP, AdaptiveConfig, adaptive_sample
    from comfyui_tempo.samplers.skip_plan import default_plan, holds_every_skip

    sig = schedules.get_sigmas(scheduler, 20)
    plain, noisy = default_plan(sig, 10), default_plan(sig, 10, noise="sde")
    assert holds_every_skip(sig, plain, HOLD_BELOW_SIGMA, HOLD_STEP) == replanned
    x = torch.randn(2, 3, 4, 4) * sig[0]

    def run(sampler, reuse, **kw):
        if sampler != "dpmpp_2m":
            kw["noise_sampler"] = kdiff.default_noise_sampler(x, seed=1)
        return adaptive_sample(
            kdiff.SAMPLERS[sampler], lambda x, s, **e: x * 0.5, x, sig, AdaptiveConfig(), sampler_reuse=reuse, **kw
        )[1]

    def path(p):
        return "".join("C" if c else "s" for c in p.tolist())

    rep = run("dpmpp_2m_sde", "hold_low_noise")
    assert rep.nfe == 10
    assert rep.path_string() == path(noisy if replanned else plain) and path(noisy) != path(plain)
    assert any("every skip of the cost model's plan would hold" in n for n in rep.notes) == replanned
    assert run("dpmpp_2m_sde", "hold_low_noise", hold_noise_plan=False).path_string() == path(plain)
    assert run("dpmpp_2m", "").path_string() == path(plain)
    flow = run("dpmpp_2m_sde", "hold_low_noise", vp_estimator_ok=False)
    assert not any("injected-noise" in n for n in flow.notes)


@pytest.mark.parametrize("scheduler", ["karras", "normal"])
def test_holds_every_skip_agrees_with_what_the_controller_reuses(scheduler):
    """holds_every_skip restates the controller's reuse rule (AdaptiveSampling._direction) for a whole path: where it
    says every skip holds, the path run with the sampler's rule is bit-identical to the path run with the paper's hold
    throughout; where it does not, some skip extrapolated and the two differ."""
    import torch

    from comfyui_tempo.samplers import kdiff
    from comfyui_tempo.samplers.adaptive import HOLD_BELOW_SIGMA, HOLD_STEP, AdaptiveConfig, adaptive_sample
    from comfyui_tempo.samplers.skip_plan import default_plan, holds_every_skip

    sig = schedules.get_sigmas(scheduler, 20)
    path = default_plan(sig, 10)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * sig[0]

    def run(extrapolation):
        return adaptive_sample(
            kdiff.SAMPLERS["dpmpp_2m_sde"],
            lambda x, s, **e: x * 0.5 + 0.1 * torch.tanh(x),
            x,
            sig,
            AdaptiveConfig(mode="path", path=path, extrapolation=extrapolation),
            noise_sampler=kdiff.default_noise_sampler(x, seed=1),
            sampler_reuse="hold_low_noise",
            noise_x0=False,  # the direction rule alone (the x0 reuse above sigma 3 sits on top of it)
        )[0]

    held = holds_every_skip(sig, path, HOLD_BELOW_SIGMA, HOLD_STEP)
    assert held == (scheduler == "karras")
    assert torch.equal(run("auto"), run("hold")) == held


def least_cost_free(sigmas, n_skips, max_skip, first, last, penalty, free_above):
    """Brute force with noise-dominated steps: a step starting above free_above costs (free_above / sigma)^2 times
    the model, pays no run penalty, adds to no run and does not count toward max_skip."""
    n = len(sigmas) - 1
    cost, sv = skip_costs_fn(sigmas), [float(v) for v in sigmas]
    free = [sv[i] > free_above for i in range(n)]
    best = (math.inf, None)
    for skipped in itertools.combinations(range(max(1, first), last), n_skips):
        path = tuple(i not in skipped for i in range(n))
        total, b, a, run, ok = 0.0, 0, None, 0, True
        for i in range(1, n):
            if path[i]:
                b, a, run = i, b, 0
            elif free[i]:
                total += cost(i, b, a) * (free_above / sv[i]) ** 2
            else:
                total += cost(i, b, a) * penalty**run
                run += 1
                ok = ok and run <= max_skip
        if ok:
            best = min(best, (total, path))
    return best


@pytest.mark.parametrize("scheduler", ["karras", "normal", "exponential"])
@pytest.mark.parametrize("n,n_skips,max_skip", [(12, 6, 2), (11, 5, 1), (12, 8, 3)])
def test_noise_dominated_steps_plan_is_the_exact_optimum(scheduler, n, n_skips, max_skip):
    sig = schedules.get_sigmas(scheduler, n, schedules.Discrete(zsnr=True))
    free_above = NOISE_DOMINATED_SIGMA
    assert float(sig[1]) > free_above  # the zero-terminal-SNR table: some steps above SD's largest sigma
    want_cost, want_path = least_cost_free(sig, n_skips, max_skip, 1, n, RUN_PENALTY, free_above)
    path, got = plan_skips(sig, n_skips, max_skip=max_skip, run_penalty=RUN_PENALTY, free_above=free_above)
    assert int((~path).sum()) == n_skips
    assert got == pytest.approx(want_cost, rel=1e-9)


@pytest.mark.parametrize("kind", ["sd", "flow"])
def test_noise_dominated_rule_changes_no_plan_at_or_below_sds_largest_sigma(kind):
    """Every scheduler ComfyUI lists, 8 to 60 steps, on SD's table and on a flow model: the default's plan with the
    rule is the plan without it (only zero-terminal-SNR tables have steps above 14.61)."""
    sampling = schedules.Discrete() if kind == "sd" else schedules.Flow(shift=3.0)
    for scheduler in schedules.ALL_SCHEDULERS:
        for n in range(8, 61, 4):
            sig = schedules.get_sigmas(scheduler, n, sampling)
            k = target_skips(len(sig) - 1, 2.0)
            with_rule = default_plan(sig, k, flow=kind == "flow")
            without = default_plan(sig, k, flow=kind == "flow", noise_dominated=False)
            assert torch.equal(with_rule, without), (scheduler, n)


def test_noise_dominated_steps_are_skipped_first_on_zsnr_karras():
    """karras from sigma 4519 (30 steps, 20 of them above 14.61): the cost model alone plans every other step; with
    the rule the plan skips a long run of the noise-dominated steps and runs the informative ones."""
    sig = schedules.get_sigmas("karras", 30, schedules.Discrete(zsnr=True))
    k = target_skips(30, 2.0)
    without = default_plan(sig, k, noise_dominated=False)
    assert "".join("C" if c else "s" for c in without.tolist()) == "Cs" * 15
    path = default_plan(sig, k)
    skipped = (~path).nonzero().flatten().tolist()
    assert len(skipped) == k and all(float(sig[i]) > NOISE_DOMINATED_SIGMA for i in skipped)
    assert bool(path[sig[:-1] <= NOISE_DOMINATED_SIGMA].all())  # every informative step runs
    with pytest.raises(ValueError, match="^free_above: "):
        plan_skips(schedules.flow_sigmas(10), 4, flow=True, free_above=1.0)
