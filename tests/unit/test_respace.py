"""Re-spacing instead of skipping (samplers/respace.py through adaptive_sample), on exact denoisers."""

import pytest
import torch

from comfyui_tempo.samplers import kdiff, schedules, support
from comfyui_tempo.samplers.adaptive import AdaptiveConfig, AdaptiveConfigError, adaptive_sample
from comfyui_tempo.samplers.respace import FINAL_JUMP, auto_respace, final_jump, respaced_indices
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


def test_support_table_marks_lms_and_unipc():
    rules = {n: e.respace for n, e in support.SUPPORT.items() if e.respace}
    assert rules == {"lms": "final_jump", "uni_pc": "min_steps", "uni_pc_bh2": "min_steps"}


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
