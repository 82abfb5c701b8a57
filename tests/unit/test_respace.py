"""Re-spacing instead of skipping (samplers/respace.py through adaptive_sample), on exact denoisers."""

import pytest
import torch

from comfyui_tempo.samplers import kdiff, schedules, support
from comfyui_tempo.samplers.adaptive import AdaptiveConfig, AdaptiveConfigError, adaptive_sample
from comfyui_tempo.samplers.respace import (
    FINAL_JUMP,
    auto_respace,
    chunk_indices,
    default_path_as_run,
    even_indices,
    even_sigmas,
    final_jump,
    ordered_chunk_indices,
    respaced_indices,
)
from comfyui_tempo.testbed.exact import CFGDenoiser, GaussianMixtureDenoiser


def _gmm():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(12, 4, 8, 8, generator=g)
    return GaussianMixtureDenoiser(means, 0.3, labels=torch.arange(12) % 4, num_classes=4)


@pytest.fixture(scope="module")
def setup():
    den = CFGDenoiser(_gmm(), 5.0, 4)
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    return den, noise, {"cond": torch.tensor([0, 1, 3])}


def test_respaced_indices_keep_each_computed_steps_start_and_the_last_sigma():
    assert respaced_indices([True, False, True, True, False]) == [0, 2, 3, 5]
    assert respaced_indices([True] * 3) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="path"):
        respaced_indices([False, True])


@pytest.mark.parametrize("sampler", ["uni_pc", "dpmpp_2m", "euler", "heun"])
def test_on_runs_the_sampler_on_the_planned_sigmas_alone(setup, sampler):
    den, noise, extra = setup
    sig = schedules.get_sigmas("karras", 20)
    fn = kdiff.SAMPLERS[sampler]
    skipped_out, skipped = adaptive_sample(
        fn, den, noise * sig[0], sig, AdaptiveConfig(respace="off"), extra_args=extra
    )
    out, rep = adaptive_sample(fn, den, noise * sig[0], sig, AdaptiveConfig(respace="on"), extra_args=extra)
    # the same plan, run on the computed steps' sigmas only: bit-identical to the base sampler on them
    assert rep.path_string() == skipped.path_string()
    keep = respaced_indices([c == "C" for c in rep.path_string()])
    counting = kdiff.CountingDenoiser(den)
    ref = fn(counting, noise * sig[0], sig[keep], extra_args=extra)
    assert torch.equal(out, ref)
    assert rep.respaced and not skipped.respaced
    assert rep.nfe == counting.nfe == skipped.nfe
    assert rep.speedup == pytest.approx(skipped.speedup, rel=0.05)
    assert "re-spaced" in rep.summary() and "respace = on" in rep.summary()
    assert not torch.equal(out, skipped_out)
    assert rep.to_dict()["respaced"] is True


@pytest.mark.parametrize("sampler", sorted(kdiff.SAMPLERS))
@pytest.mark.parametrize("scheduler", ["karras", "normal"])
def test_respaced_report_requests_what_the_full_run_evaluates(setup, sampler, scheduler):
    """evals_requested of a re-spaced run is the evaluation count of the sampler on the full schedule, Heun's
    one-evaluation last step included (it was the run's evaluations per step scaled, off by one there)."""
    den, noise, extra = setup
    sig = schedules.get_sigmas(scheduler, 20)
    fn = kdiff.SAMPLERS[sampler]
    kw = {}
    if support.SUPPORT[sampler].stochastic:
        kw["noise_sampler"] = kdiff.default_noise_sampler(noise, seed=3)
    full = kdiff.CountingDenoiser(den)
    fn(full, noise * sig[0], sig, extra_args=extra, **kw)
    if support.SUPPORT[sampler].stochastic:
        kw["noise_sampler"] = kdiff.default_noise_sampler(noise, seed=3)
    _, rep = adaptive_sample(fn, den, noise * sig[0], sig, AdaptiveConfig(respace="on"), extra_args=extra, **kw)
    assert rep.respaced and rep.nfe < full.nfe
    assert rep.evals_requested == full.nfe, (rep.evals_requested, full.nfe, rep.nfe)


def test_progress_callback_counts_the_full_schedule(setup):
    den, noise, extra = setup
    sig = schedules.get_sigmas("karras", 20)
    seen = []
    _, rep = adaptive_sample(
        kdiff.sample_euler,
        den,
        noise * sig[0],
        sig,
        AdaptiveConfig(respace="on"),
        extra_args=extra,
        callback=lambda d: seen.append(d["i"]),
    )
    assert rep.respaced and len(seen) == rep.nfe
    assert seen == sorted(seen) and seen[-1] == 19  # the bar ends at the full step count


@pytest.mark.parametrize("n", [10, 20, 30, 50, 150])
def test_final_jump_tells_normal_from_the_other_schedules(n):
    for sc in schedules.SCHEDULERS:
        jump = final_jump(schedules.get_sigmas(sc, n))
        assert (jump >= FINAL_JUMP) == (sc == "normal"), (sc, n, jump)


def test_auto_follows_the_samplers_entry_the_schedule_and_the_model_kind(setup):
    den, noise, extra = setup
    lms = kdiff.SAMPLERS["lms"]
    normal, karras = schedules.get_sigmas("normal", 20), schedules.get_sigmas("karras", 20)
    _, rep = adaptive_sample(
        lms, den, noise * normal[0], normal, AdaptiveConfig(), extra_args=extra, sampler_respace="final_jump"
    )
    assert rep.respaced and "respace auto" in rep.summary() and "last step" in rep.summary()
    # the sampler's entry not marked, another schedule, or respace off: skipping
    for sig, marked, how in ((normal, "", "auto"), (karras, "final_jump", "auto"), (normal, "final_jump", "off")):
        _, rep = adaptive_sample(
            lms, den, noise * sig[0], sig, AdaptiveConfig(respace=how), extra_args=extra, sampler_respace=marked
        )
        assert not rep.respaced
    # a flow model keeps skipping, whatever its schedule
    assert auto_respace("final_jump", flow=False, sigmas=normal)[0]
    assert not auto_respace("final_jump", flow=True, sigmas=normal)[0]
    assert not auto_respace("", flow=False, sigmas=normal)[0]
    with pytest.raises(ValueError, match="respace rule"):
        auto_respace("sometimes", flow=False, sigmas=normal)


@pytest.mark.parametrize(
    "steps,speedup,respaced", [(30, 2.0, False), (40, 2.0, True), (50, 2.0, True), (60, 3.0, True), (50, 3.0, False)]
)
def test_auto_respaces_unipc_from_twenty_computed_steps(setup, steps, speedup, respaced):
    den, noise, extra = setup
    sig = schedules.ksampler_sigmas("karras", steps, None, "uni_pc")
    _, rep = adaptive_sample(
        kdiff.SAMPLERS["uni_pc"],
        den,
        noise * sig[0],
        sig,
        AdaptiveConfig(target_speedup=speedup),
        extra_args=extra,
        sampler_respace=support.lookup("uni_pc").respace,
    )
    assert rep.respaced == respaced, rep.summary()
    if respaced:
        assert f"{int(rep.nfe)} steps computed" in rep.summary()
    assert not auto_respace("min_steps", flow=True, sigmas=sig, computed=30)[0]


def test_only_the_planned_target_mode_respaces(setup):
    den, noise, extra = setup
    sig = schedules.get_sigmas("karras", 20)
    for cfg in (
        AdaptiveConfig(respace="on", planner="pace"),
        AdaptiveConfig(mode="threshold", respace="on"),
        AdaptiveConfig(mode="path", path=torch.arange(20) % 2 == 0),  # auto: a profile's path skips
    ):
        _, rep = adaptive_sample(kdiff.sample_euler, den, noise * sig[0], sig, cfg, extra_args=extra)
        assert not rep.respaced


def test_a_path_respaced_on_is_the_target_modes_respaced_run(setup):
    """mode path with respace on (a re-spaced profile) runs the path's computed steps' sigmas alone, as mode target
    re-spaces its planned path; one path for the whole batch, else a clear error."""
    den, noise, extra = setup
    sig = schedules.get_sigmas("normal", 20)
    x = noise * sig[0]
    target, trep = adaptive_sample(kdiff.sample_lms, den, x, sig, AdaptiveConfig(respace="on"), extra_args=extra)
    path = torch.tensor([c == "C" for c in trep.path_string()])
    assert trep.respaced and not bool(path.all())
    for p in (path, path.expand(noise.shape[0], -1)):
        out, rep = adaptive_sample(
            kdiff.sample_lms, den, x, sig, AdaptiveConfig(mode="path", path=p, respace="on"), extra_args=extra
        )
        assert rep.respaced and torch.equal(out, target) and rep.nfe == trep.nfe
    rows = path.expand(noise.shape[0], -1).clone()
    rows[0, 1] = not bool(rows[0, 1])
    with pytest.raises(AdaptiveConfigError, match="respace: 'on' with mode path needs one path"):
        adaptive_sample(
            kdiff.sample_lms, den, x, sig, AdaptiveConfig(mode="path", path=rows, respace="on"), extra_args=extra
        )


def test_bad_respace_names_the_input():
    with pytest.raises(AdaptiveConfigError, match="respace"):
        AdaptiveConfig(respace="sometimes").validate()


def test_support_table_marks_lms_unipc_and_dpmpp_3m_sde():
    rules = {n: e.respace for n, e in support.SUPPORT.items() if e.respace}
    assert rules == {
        "lms": "final_jump",
        "uni_pc": "min_steps",
        "uni_pc_bh2": "min_steps",
        "dpmpp_3m_sde": "chunks_long_last",
        "dpmpp_3m_sde_gpu": "chunks_long_last",
    }
    assert "else the longer runs last" in support.support_matrix_markdown()


def test_the_default_as_it_runs_re_spaced_is_its_spread_path():
    """The calibration's re-spaced default: the planned path for lms / uni_pc, the runs for dpmpp_3m_sde (a run of
    three last at an odd step count)."""
    sig = schedules.get_sigmas("karras", 20)
    planned = torch.tensor([True, True, False, True, False, False] + [True, False] * 7)
    assert torch.equal(default_path_as_run("final_jump", sig, planned), planned)
    assert default_path_as_run("chunks_whole", sig, planned).tolist() == [True, False] * 10
    odd = default_path_as_run(
        "chunks_long_last", schedules.get_sigmas("karras", 15), torch.tensor([True] * 7 + [False] * 8)
    )
    assert odd.tolist() == [True, False] * 6 + [True, False, False]
    even = default_path_as_run("even", sig, planned)
    assert int(even.sum()) == 10 and even.nonzero().flatten().tolist() == even_indices(sig, 10)[:-1]


def test_plot_of_a_respaced_run_names_the_dropped_steps(setup):
    """The skip plot's legend says dropped steps were merged, not reused (the legend row differs from a skip run's)."""
    from comfyui_tempo.samplers.plot import plot_report

    den, noise, extra = setup
    sig = schedules.get_sigmas("karras", 20)
    imgs = []
    for how in ("on", "off"):
        _, rep = adaptive_sample(
            kdiff.sample_euler, den, noise * sig[0], sig, AdaptiveConfig(respace=how), extra_args=extra
        )
        imgs.append(plot_report(rep, width=640, height=240))
    assert imgs[0].shape == imgs[1].shape == (240, 640, 3)
    legend = slice(24, 35)  # the legend row under the title
    assert not (imgs[0][legend] == imgs[1][legend]).all()


@pytest.mark.parametrize("scheduler", ["exponential", "karras", "normal", "simple", "beta"])
@pytest.mark.parametrize("n,k", [(20, 10), (30, 15), (25, 7)])
def test_even_sigmas_spread_k_steps_over_the_schedule(scheduler, n, k):
    """k + 1 sigmas, falling, first and last nonzero sigma and the final 0 kept; on exponential the scheduler's own
    k-step schedule, on karras within interpolation of it; the indices nearest them rise from 0 to n."""
    sig = schedules.get_sigmas(scheduler, n)
    ev = even_sigmas(sig, k)
    assert len(ev) == k + 1 and float(ev[-1]) == 0 and bool((ev[:-2] > ev[1:-1]).all())
    assert float(ev[0]) == float(sig[0]) and float(ev[-2]) == float(sig[-2])
    own = schedules.get_sigmas(scheduler, k)
    gap = float((ev[:-1].log() - own[:-1].log()).abs().max())
    if scheduler in ("exponential", "karras"):
        assert gap < {"exponential": 1e-5, "karras": 0.01}[scheduler], gap
    idx = even_indices(sig, k)
    assert len(idx) == k + 1 and idx[0] == 0 and idx[-1] == n and idx == sorted(set(idx))
    # each index is the schedule's sigma nearest (in index) the even one: within one step of it
    for i, s in zip(idx[:-1], ev[:-1]):
        assert float(sig[min(i + 1, n - 1)]) <= float(s) * (1 + 1e-6) and float(s) <= float(sig[max(i - 1, 0)]) * (
            1 + 1e-6
        )


def test_even_sigmas_of_a_partial_schedule_keep_its_last_sigma():
    sig = schedules.get_sigmas("karras", 20)[6:]  # denoise below 1 ends on a nonzero sigma after a split
    ev = even_sigmas(sig[:-1], 5)  # a schedule ending above 0
    assert len(ev) == 6 and float(ev[0]) == float(sig[0]) and float(ev[-1]) == float(sig[-2]) > 0
    assert even_indices(sig[:-1], 5)[-1] == len(sig) - 2
    for bad in (0, len(sig)):  # 1 to the schedule's steps
        with pytest.raises(ValueError, match="re-spacing over the schedule"):
            even_sigmas(sig, bad)


def test_auto_with_the_even_rule_runs_the_planned_count_spread_evenly(setup):
    """A sampler marked "even": auto runs it on as many steps as the plan computes, spread evenly (bit-identical to
    the sampler on even_sigmas), and says so; respace off skips; a flow model keeps skipping."""
    den, noise, extra = setup
    sig = schedules.get_sigmas("simple", 20)
    fn = kdiff.SAMPLERS["dpmpp_2m"]
    _, skipped = adaptive_sample(fn, den, noise * sig[0], sig, AdaptiveConfig(respace="off"), extra_args=extra)
    out, rep = adaptive_sample(fn, den, noise * sig[0], sig, AdaptiveConfig(), extra_args=extra, sampler_respace="even")
    k = skipped.path_string().count("C")
    counting = kdiff.CountingDenoiser(den)
    ref = fn(counting, noise * sig[0], even_sigmas(sig, k), extra_args=extra)
    assert torch.equal(out, ref) and rep.respaced and rep.nfe == counting.nfe == k
    assert "spread evenly" in rep.summary() and "respace auto" in rep.summary()
    assert [i for i, c in enumerate(rep.path_string()) if c == "C"] == even_indices(sig, k)[:-1]
    assert rep.path_string() != skipped.path_string()  # the planned path is not the even one here
    _, on = adaptive_sample(
        fn, den, noise * sig[0], sig, AdaptiveConfig(respace="on"), extra_args=extra, sampler_respace="even"
    )
    assert on.path_string() == skipped.path_string() and "the planned ones" in on.summary()
    _, off = adaptive_sample(
        fn, den, noise * sig[0], sig, AdaptiveConfig(respace="off"), extra_args=extra, sampler_respace="even"
    )
    assert not off.respaced
    assert auto_respace("even", flow=False, sigmas=sig)[0] and not auto_respace("even", flow=True, sigmas=sig)[0]


def test_chunks_merge_runs_of_consecutive_steps(setup):
    """chunk_indices: k step starts nearest j n / k (every other step at n = 2k), then the end; a sampler marked
    "chunks" runs on those sigmas of the schedule under auto, bit-identical to the sampler on them."""
    sig = schedules.get_sigmas("simple", 20)
    assert chunk_indices(sig, 10) == list(range(0, 21, 2))
    assert chunk_indices(sig, 7) == [0, 3, 6, 9, 11, 14, 17, 20]
    with pytest.raises(ValueError, match="re-spacing over the schedule"):
        chunk_indices(sig, 21)
    den, noise, extra = setup
    fn = kdiff.SAMPLERS["dpmpp_2m"]
    out, rep = adaptive_sample(
        fn, den, noise * sig[0], sig, AdaptiveConfig(), extra_args=extra, sampler_respace="chunks"
    )
    ref = fn(den, noise * sig[0], sig[chunk_indices(sig, 10)], extra_args=extra)
    assert torch.equal(out, ref) and rep.respaced and rep.path_string() == "Cs" * 10
    assert "runs of consecutive steps merged" in rep.summary() and "(chunks;" in rep.summary()


@pytest.mark.parametrize("steps,respaced", [(20, True), (15, False), (30, True)])
def test_chunks_whole_respaces_only_where_the_chunks_are_equal(setup, steps, respaced):
    """chunks_whole: runs of n / k consecutive steps where n / k is whole (2x at an even step count), else the
    planned skips as without a rule."""
    den, noise, extra = setup
    sig = schedules.get_sigmas("karras", steps)
    fn = kdiff.SAMPLERS["dpmpp_2m"]
    out, rep = adaptive_sample(
        fn, den, noise * sig[0], sig, AdaptiveConfig(), extra_args=extra, sampler_respace="chunks_whole"
    )
    plain, skipped = adaptive_sample(fn, den, noise * sig[0], sig, AdaptiveConfig(), extra_args=extra)
    assert rep.respaced == respaced
    if respaced:
        assert rep.path_string() == "Cs" * (steps // 2) and "runs of 2 consecutive steps" in rep.summary()
        assert torch.equal(out, fn(den, noise * sig[0], sig[::2] if steps % 2 == 0 else sig, extra_args=extra))
    else:
        assert torch.equal(out, plain) and rep.path_string() == skipped.path_string()
        assert any(f"{steps // 2} of {steps} do not, so it skips" in n for n in rep.notes), rep.notes
        assert not any("do not, so it skips" in n for n in skipped.notes)


@pytest.mark.parametrize(
    "n,k,first,last",
    [
        (15, 7, [0, 3, 5, 7, 9, 11, 13, 15], [0, 2, 4, 6, 8, 10, 12, 15]),
        (25, 12, [0, 3] + list(range(5, 26, 2)), list(range(0, 23, 2)) + [25]),
        (20, 10, list(range(0, 21, 2)), list(range(0, 21, 2))),
        (20, 7, [0, 3, 6, 9, 12, 15, 18, 20], [0, 2, 5, 8, 11, 14, 17, 20]),
    ],
)
def test_ordered_chunks_put_the_longer_runs_at_one_end(n, k, first, last):
    """k runs whose lengths differ by one at most, the longer ones first or last; equal runs where k divides n."""
    sig = schedules.get_sigmas("karras", n)
    assert ordered_chunk_indices(sig, k, True) == first
    assert ordered_chunk_indices(sig, k, False) == last
    if n % k == 0:
        assert first == last == chunk_indices(sig, k)
    with pytest.raises(ValueError, match="re-spacing over the schedule"):
        ordered_chunk_indices(sig, 0, True)


def test_chunks_long_last_respaces_at_every_step_count(setup):
    """dpmpp_3m_sde's rule: at 15 steps 7 runs, the one of three last; at 20 every other sigma; the report says so."""
    den, noise, extra = setup
    fn = kdiff.SAMPLERS["dpmpp_2m"]
    for steps, path, runs in (
        (15, "Cs" * 6 + "Css", "7 runs of 2 or 3 consecutive steps, the longer last"),
        (20, "Cs" * 10, "10 runs of 2 consecutive steps"),
    ):
        sig = schedules.get_sigmas("karras", steps)
        out, rep = adaptive_sample(
            fn, den, noise * sig[0], sig, AdaptiveConfig(), extra_args=extra, sampler_respace="chunks_long_last"
        )
        keep = [i for i, c in enumerate(path) if c == "C"] + [steps]
        assert rep.respaced and rep.path_string() == path and runs in rep.summary(), rep.summary()
        assert torch.equal(out, fn(den, noise * sig[0], sig[keep], extra_args=extra))
