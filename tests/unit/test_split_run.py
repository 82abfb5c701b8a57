"""A run split over two sampler calls, planned as one (samplers/split_run.py) and run by the controller."""

import pytest
import torch

from comfyui_tempo.samplers import kdiff, schedules
from comfyui_tempo.samplers.adaptive import AdaptiveConfig, AdaptiveConfigError, adaptive_sample
from comfyui_tempo.samplers.adaptive_config import target_skips
from comfyui_tempo.samplers.skip_plan import default_plan
from comfyui_tempo.samplers.split_run import SplitRuns, WholeRun, find_whole_run, shares
from comfyui_tempo.testbed.exact import FiniteSetDenoiser, FlowDenoiser

FLOW8 = schedules.Flow(8.0)
UNAMBIGUOUS = ("karras", "exponential", "simple", "beta", "kl_optimal", "ddim_uniform")


def _pack(sampling, sampler="euler"):
    return schedules.ksampler_schedules(sampling, sampler)


@pytest.mark.parametrize("sampling", [None, FLOW8], ids=["sd", "flow8"])
@pytest.mark.parametrize("scheduler", UNAMBIGUOUS)
@pytest.mark.parametrize(("n", "k"), [(20, 10), (30, 12), (4, 2), (25, 20), (60, 7), (100, 40)])
def test_a_first_call_finds_the_schedule_its_sigmas_begin(sampling, scheduler, n, k):
    full = schedules.get_sigmas(scheduler, n, sampling)
    runs = find_whole_run(full[: k + 1], *_pack(sampling), max_steps=2000)
    assert runs and runs[0].scheduler == scheduler and runs[0].start == 0 and runs[0].end == k
    assert torch.equal(torch.tensor(runs[0].sigmas), full.double()) or runs[0].sigmas == tuple(full.tolist())
    assert runs[0].protect == (k,)


def test_normal_begins_as_sgm_uniform_one_step_shorter_and_comes_first():
    full = schedules.get_sigmas("normal", 20)
    runs = find_whole_run(full[:11], *_pack(None), max_steps=2000)
    assert [(r.scheduler, r.steps) for r in runs][:2] == [("normal", 20), ("sgm_uniform", 19)]


def test_a_call_ending_at_zero_or_matching_nothing_is_no_first_call():
    full = schedules.get_sigmas("karras", 20)
    assert find_whole_run(full, *_pack(None)) == []  # a whole run: ends at 0
    bent = full[:11].clone()
    bent[5] *= 1.01
    assert find_whole_run(bent, *_pack(None), max_steps=2000) == []


def test_samplers_that_discard_the_penultimate_sigma_are_found_as_ksampler_runs_them():
    full = schedules.ksampler_sigmas("karras", 20, None, "uni_pc")
    (run, *_) = find_whole_run(full[:9], *_pack(None, "uni_pc"), max_steps=2000)
    assert run.sigmas == tuple(full.tolist()) and run.steps == 20


def test_the_second_call_shares_only_where_a_first_call_was_recorded():
    """Its sigmas alone are also an img2img run's (denoise < 1): without a recorded first call it plans its own."""
    full = schedules.get_sigmas("karras", 20, FLOW8)
    runs, config = SplitRuns(), AdaptiveConfig()
    pack = _pack(FLOW8)
    assert runs.place(full[10:], config, *pack) == (None, "")
    head, note = runs.place(full[:11], config, *pack, max_steps=2000)
    assert head is not None and head.start == 0 and head.end == 10 and note == ""
    path = [True, False] * 5  # what the first call ran (the node records it after the call: SplitRuns.ran)
    runs.ran(head, path)
    tail, note = runs.place(full[10:], config, *pack)
    assert tail == WholeRun(head.sigmas, 10, 20, "karras", (10,), tuple(path)) and note == ""
    assert runs.place(full[9:], config, *pack) == (None, "")  # not the rest of the recorded run
    other = schedules.get_sigmas("karras", 24, FLOW8)
    assert runs.place(other[12:], config, *pack) == (None, "")


def test_what_does_not_share():
    full = schedules.get_sigmas("karras", 20)
    for config in (
        AdaptiveConfig(split_plan="call"),
        AdaptiveConfig(target_speedup=1.0),
        AdaptiveConfig(mode="threshold"),
        AdaptiveConfig.paper(),
        AdaptiveConfig(planner="pace"),
    ):
        assert not shares(config)
        assert SplitRuns().place(full[:11], config, *_pack(None)) == (None, "")
    with pytest.raises(AdaptiveConfigError, match="split_plan: expected one of"):
        AdaptiveConfig(split_plan="both").validate()


def test_a_three_call_split_adds_the_middle_calls_split_step():
    """A middle call continues the first and ends above 0: it and the last call plan with both split steps. Without
    the record of what the earlier calls ran (``ran``), they say the calls may miss the target by a step."""
    full = schedules.get_sigmas("karras", 30)
    runs, config, pack = SplitRuns(), AdaptiveConfig(), _pack(None)
    head, _ = runs.place(full[:11], config, *pack, max_steps=2000)
    assert (head.start, head.end, head.protect) == (0, 10, (10,))
    middle, note = runs.place(full[10:21], config, *pack, max_steps=2000)
    assert (middle.start, middle.end, middle.protect) == (10, 20, (10, 20)) and "was not recorded" in note
    assert "(middle call" in middle.describe() and "split at steps 10, 20" in middle.describe()
    last, note = runs.place(full[20:], config, *pack)
    assert (last.start, last.end, last.protect) == (20, 30, (10, 20)) and "was not recorded" in note
    assert "(last call" in last.describe()
    assert runs.place(full[15:], config, *pack) == (None, "")  # begins at no recorded call's last sigma


def test_three_calls_run_the_whole_plan_with_both_split_steps():
    """The later calls keep the path the first ran and plan the rest with both split steps run: the run's NFE is the
    target's (10 of 20), not one more."""
    den, noise = _flow_setup()
    full = schedules.get_sigmas("karras", 20, schedules.Flow(3.0))
    first = default_plan(full.tolist(), target_skips(20, 2.0), flow=True, also_protect=(7,))
    runs, config, pack = SplitRuns(), AdaptiveConfig(), _pack(schedules.Flow(3.0))
    x, paths = noise * full[0], []
    for seg in (full[:8], full[7:15], full[14:]):
        whole, note = runs.place(seg, config, *pack, max_steps=2000)
        notes = [note]
        x, rep = adaptive_sample(kdiff.sample_euler, den, x, seg, config, vp_estimator_ok=False, whole_run=whole)
        assert rep.split_path == [r.computed > 0 for r in rep.records] and not any("not recorded" in n for n in notes)
        runs.ran(whole, rep.split_path)
        paths.append(rep.split_path)
    rest = default_plan(full.tolist(), target_skips(20, 2.0), flow=True, also_protect=(7, 14), fixed=paths[0])
    assert paths[0] == first[:7].tolist() and paths[1] + paths[2] == rest[7:].tolist()
    assert paths[1][0] and paths[2][0] and sum(map(sum, paths)) == 10  # each call's first step runs; 2x in all
    # without the record of what the first ran, the rest's plan is the whole plan with both split steps: one more
    both = default_plan(full.tolist(), target_skips(20, 2.0), flow=True, also_protect=(7, 14))
    assert sum(first[:7].tolist()) + sum(both[7:].tolist()) == 11


def test_the_planner_keeps_a_fixed_prefix():
    full = schedules.get_sigmas("karras", 20).tolist()
    free = default_plan(full, 10)
    fixed = [True, True, True, False, True, True, False, True]  # not the free plan's start
    path = default_plan(full, 10, fixed=fixed)
    assert path[:8].tolist() == fixed and int((~path).sum()) == 10 and path[:8].tolist() != free[:8].tolist()


def test_the_ambiguous_first_call_says_so_at_the_second():
    full = schedules.get_sigmas("sgm_uniform", 19)
    runs, config, pack = SplitRuns(), AdaptiveConfig(), _pack(None)
    head, _ = runs.place(full[:11], config, *pack, max_steps=2000)
    assert (head.scheduler, head.steps) == ("normal", 20)  # planned as normal, KSampler's default
    tail, note = runs.place(full[10:], config, *pack)
    assert (tail.scheduler, tail.steps) == ("sgm_uniform", 19) and "continues the 19-step sgm_uniform run" in note


def _flow_setup():
    g = torch.Generator().manual_seed(3)
    den = FlowDenoiser(FiniteSetDenoiser(torch.randn(6, 4, 6, 6, generator=g)))
    noise = torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(4))
    return den, noise


@pytest.mark.parametrize("scheduler", ["karras", "simple"])
def test_two_calls_run_the_whole_runs_plan_a_slice_each(scheduler):
    """The controller plans the whole run (the split step run) and runs its slice: the two calls' paths are the
    default's plan of the whole run, the NFE together the whole run's target; split_plan call halves each call."""
    den, noise = _flow_setup()
    full = schedules.get_sigmas(scheduler, 20, FLOW8)
    plan = default_plan(full.tolist(), target_skips(20, 2.0), flow=True, also_protect=(10,))
    for split_plan in ("whole_run", "call"):
        runs, config, pack = SplitRuns(), AdaptiveConfig(split_plan=split_plan), _pack(FLOW8)
        x, paths, nfe = noise * full[0], [], 0.0
        for seg in (full[:11], full[10:]):
            whole, _ = runs.place(seg, config, *pack, max_steps=2000)
            x, rep = adaptive_sample(kdiff.sample_euler, den, x, seg, config, vp_estimator_ok=False, whole_run=whole)
            if whole is not None:
                runs.ran(whole, rep.split_path)
            paths.append([r.computed > 0 for r in rep.records])
            nfe += rep.nfe
        if split_plan == "whole_run":
            assert paths[0] + paths[1] == plan.tolist() and nfe == 10
            assert any("split at step 10" in n for n in rep.notes)
        else:
            assert sum(paths[0]) == 5 and sum(paths[1]) == 5
    # on a flow model the two halves cost differently to skip: the whole run's plan is not 5 + 5
    assert sum(plan[:10].tolist()) != 5


def test_the_controller_refuses_a_whole_run_its_sigmas_are_not_a_slice_of():
    den, noise = _flow_setup()
    full = schedules.get_sigmas("karras", 20, FLOW8)
    wrong = WholeRun(tuple(full.tolist()), 0, 9, "karras")
    with pytest.raises(AdaptiveConfigError, match="whole_run: this call's sigmas are not its slice"):
        adaptive_sample(kdiff.sample_euler, den, noise, full[:11], AdaptiveConfig(), whole_run=wrong)


def test_a_recorded_path_that_fits_no_plan_under_this_calls_settings_is_replanned():
    """The first call skipped two steps in a row; a continuing call with max_skip 1 cannot keep that path: it plans
    the whole run anew and says so."""
    den, noise = _flow_setup()
    full = schedules.get_sigmas("karras", 20, FLOW8)
    runs, pack = SplitRuns(), _pack(FLOW8)
    head, _ = runs.place(full[:11], AdaptiveConfig(), *pack, max_steps=2000)
    runs.ran(head, [True, False, False, True, False, True, False, True, False, True])
    tail, _ = runs.place(full[10:], AdaptiveConfig(max_skip=1), *pack)
    x, rep = adaptive_sample(
        kdiff.sample_euler, den, noise * full[10], full[10:], AdaptiveConfig(max_skip=1), vp_estimator_ok=False,
        whole_run=tail,
    )  # fmt: skip
    assert any("fits no plan under this call's settings" in n for n in rep.notes), rep.notes
    plan = default_plan(full.tolist(), target_skips(20, 2.0), flow=True, also_protect=(10,), max_skip=1)
    assert rep.split_path == plan[10:].tolist()
