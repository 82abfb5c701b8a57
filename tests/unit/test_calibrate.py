"""Calibrated skip profiles: the greedy search over several prompts (samplers/calibrate.py), the profile file
(samplers/skip_profile.py) and the testbed command and rows (bench/adaptive_calibration.py)."""

import json
import math

import pytest
import torch

from comfyui_tempo import cli
from comfyui_tempo.bench import adaptive_calibration as ac
from comfyui_tempo.samplers import kdiff
from comfyui_tempo.samplers.adaptive import AdaptiveConfig, adaptive_sample
from comfyui_tempo.samplers.calibrate import (
    CalibrationError,
    calibrate_path,
    greedy_skip_path,
    greedy_skip_paths,
    refine_skip_path,
    skips_for_speedup,
    validate_search,
    vote_path,
)
from comfyui_tempo.samplers.skip_profile import ProfileError, SkipProfile, load_profile, save_profile
from comfyui_tempo.testbed import problems

STEPS = 16


@pytest.fixture(scope="module")
def gmm():
    return problems.gmm_problem(classes=4, seeds=2)


def _errors_of(p, idx, sampler="euler", steps=STEPS):
    r = ac._Runner(p, sampler, steps, "linear")
    idx = torch.as_tensor(idx)
    ref = p.decode(r.run(idx, None))
    return r, r.errors_of(idx, ref)


def test_joint_profile_has_the_requested_skips_and_keeps_step_0(gmm):
    skips = skips_for_speedup(STEPS, 2.0)
    assert skips == 8
    prof = ac.calibrate(gmm, "euler", STEPS, skips, [0, 2, 4], extrapolation="linear")
    assert prof.steps == STEPS and prof.skips == skips and prof.path[0]
    assert prof.prompts == 3 and prof.calib_nfe > 0 and prof.calib_wall_s > 0
    greedy = prof.errors[:skips]
    assert greedy == sorted(greedy) and prof.search.endswith("+local")  # each skip adds error
    assert prof.errors[-1] <= greedy[-1] * (1 + 1e-5)  # the local search never ends worse than the greedy path
    assert len(prof.prompt_errors) == 3
    # the default's path was among the candidates: the profile is at least as good on these prompts, and says so
    gain = prof.gain_over_default_db()
    assert "default" in prof.candidates and gain is not None and gain >= -1e-4
    assert f"{gain:+.1f} dB over the default's path" in prof.summary()
    # the profile through the controller: exactly its steps run, for every sample
    sig = gmm.sigmas(STEPS)
    _, rep = adaptive_sample(
        kdiff.sample_euler, gmm.denoiser, gmm.noise * sig[0], sig, prof.config(), extra_args={"cond": gmm.cond}
    )
    assert rep.path_string() == prof.path_string() and rep.nfe == STEPS - skips


def test_one_prompt_search_is_the_single_path_greedy(gmm):
    """greedy_skip_path (the benchmark's) and greedy_skip_paths with one prompt, joint or not, agree."""
    r, errors_of = _errors_of(gmm, [1])
    joint = greedy_skip_paths(errors_of, 1, STEPS, 4, joint=True)
    alone = greedy_skip_paths(errors_of, 1, STEPS, 4, joint=False)
    ref = gmm.decode(r.run(torch.tensor([1]), None))
    single = greedy_skip_path(
        lambda paths: r.run(torch.ones(paths.shape[0], dtype=torch.long), paths),
        STEPS,
        4,
        lambda out: ((gmm.decode(out) - ref) ** 2).flatten(1).mean(1),
    )
    assert joint.path_string() == alone.path_string(0) == single.path_string()
    assert joint.errors == pytest.approx(single.errors, rel=1e-6)


def test_per_prompt_search_in_one_batch_equals_separate_searches(gmm):
    idx = [0, 3, 5]
    _, errors_of = _errors_of(gmm, idx)
    batched = greedy_skip_paths(errors_of, 3, STEPS, 5, joint=False, max_batch=16)
    for row, i in enumerate(idx):
        _, one = _errors_of(gmm, [i])
        alone = greedy_skip_paths(one, 1, STEPS, 5, joint=False)
        assert batched.path_string(row) == alone.path_string(0), i
        assert batched.prompt_errors[row] == pytest.approx(alone.prompt_errors[0], rel=1e-5)


def test_joint_path_beats_the_default_controller_on_the_calibration_prompts():
    """At the same NFE the joint greedy path's mean PSNR on its own prompts is above the default's (trained
    testbed, 20 euler steps, 2x)."""
    p = problems.trained_problem(classes=4, seeds=1)
    steps, skips = 20, skips_for_speedup(20, 2.0)
    idx = torch.tensor([0, 1, 2])
    prof = ac.calibrate(p, "euler", steps, skips, idx)
    sig = p.sigmas(steps)
    x, extra = p.noise[idx] * sig[0], {"cond": p.cond[idx]}
    ref = p.decode(kdiff.sample_euler(p.denoiser, x, sig, extra_args=extra))

    def mean_log_mse(cfg):
        out, rep = adaptive_sample(kdiff.sample_euler, p.denoiser, x, sig, cfg, extra_args=extra)
        assert rep.nfe == steps - skips
        return float(((p.decode(out) - ref) ** 2).flatten(1).mean(1).log().mean())

    profile_err, default_err = mean_log_mse(prof.config()), mean_log_mse(AdaptiveConfig())
    assert math.exp(profile_err) == pytest.approx(prof.errors[-1], rel=1e-4)  # the search's own number
    assert profile_err < default_err, (profile_err, default_err)


def test_local_search_keeps_the_skips_and_lowers_the_error(gmm):
    idx = [0, 3, 6]
    _, errors_of = _errors_of(gmm, idx, sampler="dpmpp_2m")
    g = greedy_skip_paths(errors_of, 3, STEPS, 8)
    start = g.path.clone()
    start[1:8], start[8:] = True, False  # a poor start: all 8 skips at the end
    r = refine_skip_path(errors_of, 3, start, max_passes=3)
    assert int((~r.path).sum()) == 8 and r.path[0]
    assert len(r.errors) >= 2 and r.errors[-1] < r.errors[0]  # it moved skips, and that helped
    assert all(b <= a * (1 + 1e-5) for a, b in zip(r.errors, r.errors[1:]))  # (batch-size rounding aside)
    # the error it reports is the path's own
    assert r.errors[-1] == pytest.approx(float(errors_of(r.path.expand(1, 3, -1)).log().mean().exp()), rel=1e-6)
    full = calibrate_path(errors_of, 3, STEPS, 8)
    assert full.errors[-1] <= g.errors[-1] * (1 + 1e-5) and int((~full.path).sum()) == 8
    # a start of its own: the winner is the better local search, and says where it started
    uniform = torch.ones(STEPS, dtype=torch.bool)
    uniform[1::2] = False
    both = calibrate_path(errors_of, 3, STEPS, 8, starts={"uniform": uniform, "wrong_skips": uniform[:-1]})
    from_uniform = refine_skip_path(errors_of, 3, uniform)
    assert both.start in ("greedy", "uniform") and both.runs > full.runs
    assert both.errors[-1] <= min(full.errors[-1], from_uniform.errors[-1]) * (1 + 1e-5)


def test_vote_path_skips_the_most_often_skipped_steps():
    paths = torch.tensor([[1, 0, 1, 0, 1, 0], [1, 0, 1, 1, 0, 0], [1, 1, 0, 1, 1, 0]], dtype=torch.bool)
    assert vote_path(paths, 2).tolist() == [True, False, True, True, True, False]
    assert vote_path(paths, 3).tolist() == [True, False, True, True, False, False]  # tie of 2, 3, 4: the latest
    assert vote_path(torch.zeros(2, 5, dtype=torch.bool), 2)[0]  # step 0 never


def test_search_settings_are_checked():
    with pytest.raises(CalibrationError, match="^skips:"):
        greedy_skip_paths(lambda t: torch.zeros(t.shape[:2]), 1, 6, 6)
    with pytest.raises(CalibrationError, match="^reduce:"):
        greedy_skip_paths(lambda t: torch.zeros(t.shape[:2]), 1, 6, 2, reduce="median")
    with pytest.raises(CalibrationError, match="^target_speedup:"):
        skips_for_speedup(20, 0.5)
    assert skips_for_speedup(30, 2.0) == 15 and skips_for_speedup(20, 1.0) == 0


@pytest.mark.parametrize("target", [1.0, 1.5, 2.0, 2.5, 3.0, 4.0])
def test_the_target_speed_up_is_a_floor_at_every_step_count(target):
    """The computed steps are steps / target rounded down (at least one): never below the target, and one step more
    would be. Python's round gave 8 of 15 steps at 2x (1.88x) and 16 of 31 (ddim_uniform's 30 steps, 1.94x)."""
    for steps in range(1, 151):
        computed = steps - skips_for_speedup(steps, target)
        assert computed >= 1
        assert steps / computed >= target - 1e-9 or computed == 1
        assert steps / (computed + 1) < target - 1e-9 or computed + 1 > steps
    assert skips_for_speedup(15, 2.0) == 8 and skips_for_speedup(31, 2.0) == 16 and skips_for_speedup(10, 1.5) == 4


def _profile(steps=8, scheduler="karras"):
    p = problems.gmm_problem(classes=2, seeds=1, scheduler=scheduler)
    path = [True] * steps
    path[3] = path[5] = False
    return SkipProfile(path=path, sigmas=[float(s) for s in p.sigmas(steps)], sampler="euler", scheduler=scheduler)


def test_profile_file_round_trip(tmp_path):
    prof = _profile()
    prof.errors, prof.calib_nfe, prof.extrapolation = [1e-4, 2e-4], 123.0, "hold"
    path = save_profile(prof, str(tmp_path / "sub" / "p.json"))
    back = load_profile(path)
    assert back == prof
    data = json.loads(open(path).read())
    assert data["steps"] == 8 and data["skips"] == 2 and data["format"] == "comfyui-tempo/skip-profile"
    cfg = back.config()
    assert cfg.mode == "path" and cfg.extrapolation == "hold" and cfg.path.tolist() == prof.path
    assert not (tmp_path / "sub" / "p.json.tmp").exists()


def test_a_run_on_another_schedule_is_refused():
    prof = _profile()
    assert prof.check(torch.tensor(prof.sigmas)) == []
    assert prof.check(torch.tensor(prof.sigmas, dtype=torch.float32), "euler") == []  # float32 rounding is fine
    assert "dpmpp_2m" in prof.check(torch.tensor(prof.sigmas), "dpmpp_2m")[0]  # another sampler: a note
    other = _profile(scheduler="normal")
    with pytest.raises(ProfileError, match="^profile: made for another sigma schedule"):
        prof.check(torch.tensor(other.sigmas))
    with pytest.raises(ProfileError, match="^profile: made for 8 steps.*this run has 10 steps"):
        prof.check(problems.gmm_problem(classes=2, seeds=1).sigmas(10))
    with pytest.raises(ProfileError, match="^profile: made for 8 steps.*this run has 5 steps"):
        prof.check(torch.tensor(prof.sigmas[3:]))  # denoise < 1: the schedule's tail


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(format="x"), "not a ComfyUI-Tempo skip profile"),
        (lambda d: d.update(version=9), "profile version 9"),
        (lambda d: d["path"].__setitem__(0, False), "skips step 0"),
        (lambda d: d.update(path=[1, 0, 1]), "'path' must be"),
        (lambda d: d.update(sigmas=d["sigmas"][:-1]), "'sigmas' must be 9"),
        (lambda d: d.update(extrapolation="cubic"), "'extrapolation' must be"),
    ],
)
def test_bad_profile_files_are_refused_with_the_input_named(tmp_path, edit, message):
    d = _profile().to_dict()
    edit(d)
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(d))
    with pytest.raises(ProfileError, match="^profile_name: 'bad.json'") as e:
        load_profile(str(f), "profile_name")
    assert message in str(e.value)
    f.write_text("{not json")
    with pytest.raises(ProfileError, match="is not JSON"):
        load_profile(str(f))


def test_calibration_rows(gmm):
    rows = ac.calibration_rows(gmm, "euler", STEPS, 8, [0, 1], [2, 3, 5], baselines=True, vote=True)
    by = {r["method"]: r for r in rows}
    assert set(by) == {
        "adaptive_calibrated",
        "greedy_optimal",
        "adaptive_calibrated_greedy",
        "adaptive_calibrated_vote",
        "adaptive",
        "fewer_steps",
    }
    for r in rows:
        for key in ("model", "sampler", "scheduler", "steps", "cfg", "method", "nfe", "psnr_db"):
            assert key in r, key
        assert r["nfe"] == STEPS - 8 and math.isfinite(r["psnr_db"]) and r["cfg"] == 5.0
    assert by["adaptive_calibrated"]["calib_nfe"] > 0 and by["adaptive_calibrated"]["calib_wall_s"] > 0
    # on prompts it never saw, the profile stays within 3 dB of each prompt's own greedy path (the bar)
    # and beats fewer steps at the same NFE (exact Gaussian mixture: 53.4, 52.8 and 44.5 dB)
    assert by["adaptive_calibrated"]["psnr_db"] >= by["greedy_optimal"]["psnr_db"] - 3.0
    assert by["adaptive_calibrated"]["psnr_db"] > by["fewer_steps"]["psnr_db"] + 3.0


def test_cli_calibrate_writes_a_profile(tmp_path, capsys):
    out = tmp_path / "p.json"
    argv = ["adaptive", "calibrate", "--out", str(out), "--steps", "8", "--calib", "0", "--threads", "1"]
    assert cli.main(argv) == 0
    prof = load_profile(str(out))
    assert prof.steps == 8 and prof.skips == 4 and prof.sampler == "euler" and prof.scheduler == "karras"
    assert "wrote" in capsys.readouterr().out
    argv = [
        "adaptive",
        "calibrate",
        "--out",
        str(out),
        "--steps",
        "6",
        "--calib",
        "1",
        "--heldout",
        "2",
        "--seeds",
        "2",
    ]
    assert cli.main(argv + ["--json", str(tmp_path / "rows.json")]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert {r["method"] for r in rows} >= {"adaptive_calibrated", "greedy_optimal", "adaptive", "fewer_steps"}
    assert all(r["heldout"] == 2 and r["calib_prompts"] == 1 for r in rows)
    # --calib-seeds 2: class 1 calibrates on both its seeds (a latent batch of 2 in the node)
    assert cli.main(argv + ["--calib-seeds", "2", "--json", str(tmp_path / "rows2.json")]) == 0
    assert load_profile(str(out)).prompts == 2
    rows = json.loads((tmp_path / "rows2.json").read_text())["rows"]
    assert all(r["heldout"] == 2 and r["calib_prompts"] == 2 for r in rows)
    with pytest.raises(SystemExit, match=r"^--calib-seeds: expected 1 to --seeds \(2\), got 3$"):
        cli.main(argv + ["--calib-seeds", "3"])


def test_planner_paths_are_distinct_and_include_the_default():
    from comfyui_tempo.samplers import schedules
    from comfyui_tempo.samplers.calibrate import planner_paths
    from comfyui_tempo.samplers.skip_plan import RUN_PENALTY, STEP_WEIGHT, plan_skips, skip_costs_fn

    sig = schedules.get_sigmas("normal", 20)
    paths = planner_paths(sig, 10)
    assert len(paths) >= 3 and all(int((~p).sum()) == 10 and bool(p[0]) for p in paths.values())
    assert len({tuple(p.tolist()) for p in paths.values()}) == len(paths)
    default, _ = plan_skips(sig, 10, run_penalty=RUN_PENALTY, step_weight=STEP_WEIGHT)
    assert any(torch.equal(p, default) for p in paths.values())
    # measured single-skip errors proportional to the model's: the calibrated cost model is the planner's own
    cost = skip_costs_fn(sig)
    modelled = [float("nan")] + [3.0 * cost(i, i - 1, i - 2 if i >= 2 else None) for i in range(1, 20)]
    with_cal = planner_paths(sig, 10, single_errors=modelled)
    assert not any(k.startswith("calibrated") for k in with_cal)  # every calibrated path was already a planner's
    # one step measured far costlier than modelled: the calibrated paths run it
    costly = list(modelled)
    step = int((~default).nonzero()[0])
    costly[step] *= 1e6
    cal = {k: p for k, p in planner_paths(sig, 10, single_errors=costly).items() if k.startswith("calibrated")}
    assert cal and all(bool(p[step]) for p in cal.values())
    with pytest.raises(CalibrationError, match="^single_errors:"):
        planner_paths(sig, 10, single_errors=modelled[:-1])


def test_calibrate_path_with_planner_paths_wins_over_every_candidate(gmm):
    idx = [0, 3, 6]
    r, errors_of = _errors_of(gmm, idx, sampler="dpmpp_2m")
    planner = {"sigmas": r.sig, "flow": False}
    res = calibrate_path(errors_of, 3, STEPS, 8, planner=planner)
    greedy = greedy_skip_paths(errors_of, 3, STEPS, 8)
    assert "greedy" in res.candidates and any(k.startswith("planner") for k in res.candidates)
    assert (
        res.first_round is not None
        and torch.isnan(res.first_round[0]).all()
        and torch.isfinite(res.first_round[1:]).all()
    )
    assert res.start in res.candidates and int((~res.path).sum()) == 8 and res.path[0]
    assert res.errors[-1] <= min(res.candidates.values()) * (1 + 1e-5)
    assert res.errors[-1] <= greedy.errors[-1] * (1 + 1e-5)
    # the error it reports is its path's own
    assert res.errors[-1] == pytest.approx(float(errors_of(res.path.expand(1, 3, -1)).log().mean().exp()), rel=1e-5)
    # without the local search: the best candidate as it is
    plain = calibrate_path(errors_of, 3, STEPS, 8, planner=planner, refine=False)
    assert plain.errors[-1] == pytest.approx(min(plain.candidates.values()), rel=1e-9)


def test_quick_search_samples_the_first_round_and_the_planner_paths_only(gmm):
    idx = [0, 3, 6]
    r, errors_of = _errors_of(gmm, idx, sampler="dpmpp_2m")
    sampled = []

    def counting(trial):
        sampled.append(trial.shape[0] * trial.shape[1])
        return errors_of(trial)

    planner = {"sigmas": r.sig, "flow": False}
    quick = calibrate_path(counting, 3, STEPS, 8, planner=planner, quick=True)
    full = calibrate_path(errors_of, 3, STEPS, 8, planner=planner)
    # sampled: each of steps 1..15 skipped alone for every prompt, then every planner path once per prompt
    assert sum(sampled) == (STEPS - 1) * 3 + 3 * len(quick.candidates)
    assert "greedy" not in quick.candidates and quick.greedy_path is None and quick.start in quick.candidates
    assert quick.rows < full.rows / 2
    assert int((~quick.path).sum()) == 8 and quick.path[0]
    assert torch.allclose(quick.first_round, full.first_round, equal_nan=True)  # the full search's first round
    # the best of its candidates, unchanged (no local search); the same candidates as the full search's, greedy aside
    assert quick.errors[-1] == pytest.approx(min(quick.candidates.values()), rel=1e-9)
    assert set(quick.candidates) == set(full.candidates) - {"greedy"}
    assert full.errors[-1] <= quick.errors[-1] * (1 + 1e-5)  # the full search never ends worse
    with pytest.raises(CalibrationError, match="^quick:"):
        calibrate_path(errors_of, 3, STEPS, 8, quick=True)


def _additive(costs: torch.Tensor, calls: list | None = None):
    """validate(rows) for a synthetic search: prompt p's error is the sum of costs[p] over the skipped steps."""

    def validate(rows):
        if calls is not None:
            calls.append(list(rows))

        def errors_of(trial):  # [C, P, N]
            skipped = (~trial).double()
            return (skipped * costs[rows].unsqueeze(0)).sum(2) + 1e-3

        return errors_of

    return validate


def _discounted(cheap_steps):
    """8 steps: skipping steps 1 and 2 costs 1 each on every prompt, the others 5, except each prompt's own
    cheap steps (0.01)."""
    costs = torch.full((len(cheap_steps), 8), 5.0, dtype=torch.float64)
    costs[:, 1:3] = 1.0
    for p, steps in enumerate(cheap_steps):
        costs[p, steps] = 0.01
    return costs


def test_validation_keeps_a_search_that_carries_over_to_left_out_prompts():
    costs = _discounted([[3, 4], [3, 4], [3, 4]])  # every prompt prefers the same steps
    fallback = torch.tensor([True, False, False] + [True] * 5)
    calls = []
    validate = _additive(costs, calls)
    res = calibrate_path(validate([0, 1, 2]), 3, 8, 2, starts={"default": fallback}, validate=validate)
    v = res.validation
    assert sorted(map(sorted, calls[1:])) == [[0, 1], [0, 1, 2], [0, 2], [1, 2]]  # each prompt left out, then all
    assert v["chosen"] == "search" and v["fold_paths"] == ["CCCssCCC"] * 3
    assert v["gain_db"] == pytest.approx(10 * math.log10(2.001 / 0.021), rel=1e-6)
    assert res.path_string() == v["searched_path"] == "CCCssCCC"
    assert res.start != "default"


def test_validation_falls_back_to_the_default_where_the_search_does_not_carry_over():
    costs = _discounted([[3, 4], [5, 6], [6, 7]])  # each prompt prefers its own steps
    fallback = torch.tensor([True, False, False] + [True] * 5)
    validate = _additive(costs)
    unchecked = calibrate_path(validate([0, 1, 2]), 3, 8, 2, starts={"default": fallback})
    assert unchecked.path_string() != "CssCCCCC"  # on all three prompts the search prefers its own path
    res = calibrate_path(validate([0, 1, 2]), 3, 8, 2, starts={"default": fallback}, validate=validate)
    v = res.validation
    assert v["chosen"] == "default" and v["gain_db"] < 0
    assert res.path_string() == "CssCCCCC" and v["searched_path"] == unchecked.path_string()
    assert res.start == "default" and res.errors[-1] == pytest.approx(res.candidates["default"])
    assert v["left_out_fallback"] == pytest.approx([2.001] * 3)
    # each calibration prompt's error is the default path's, as the profile file records it
    assert res.prompt_errors == pytest.approx([2.001] * 3)
    prof = SkipProfile(
        path=res.path.tolist(),
        sigmas=[float(8 - i) for i in range(9)],
        errors=res.errors,
        candidates=res.candidates,
        validation=v,
    )
    assert f"{-v['gain_db']:.1f} dB below the default's on prompts left out" in prof.summary()
    with pytest.raises(CalibrationError, match="^validate:"):
        calibrate_path(validate([0, 1, 2]), 3, 8, 2, validate=validate)


def test_bench_calibration_with_the_check_records_it(gmm):
    prof = ac.calibrate(gmm, "euler", STEPS, 8, [0, 2, 4], extrapolation="linear", validate=True)
    v = prof.validation
    assert v["chosen"] in ("search", "default") and len(v["fold_paths"]) == 3
    assert len(v["left_out_search"]) == len(v["left_out_fallback"]) == 3
    if v["chosen"] == "search":
        assert prof.path_string() == v["searched_path"] and v["gain_db"] > 0
    else:
        assert prof.search.startswith("default") and v["gain_db"] <= 0
    assert SkipProfile.from_dict(json.loads(json.dumps(prof.to_dict()))).validation == v


def test_validation_folds_leave_a_prompts_seeds_out_together():
    """Rows 0-1 are one prompt's two seeds, rows 2-3 another's: each fold leaves a whole prompt out."""
    costs = _discounted([[3, 4], [3, 4], [3, 4], [3, 4]])
    fallback = torch.tensor([True, False, False] + [True] * 5)
    calls = []
    validate = _additive(costs, calls)
    res = calibrate_path(
        validate([0, 1, 2, 3]), 4, 8, 2, starts={"default": fallback}, validate=validate, folds=[[0, 1], [2, 3]]
    )
    assert [sorted(c) for c in calls[1:]] == [[2, 3], [0, 1], [0, 1, 2, 3]]
    assert len(res.validation["fold_paths"]) == 2 and len(res.validation["left_out_search"]) == 4
    with pytest.raises(CalibrationError, match="^folds:"):
        validate_search(validate, 4, 8, 2, fallback, folds=[[0, 1], [1, 2, 3]])
    with pytest.raises(CalibrationError, match="at least two folds"):
        validate_search(validate, 4, 8, 2, fallback, folds=[[0, 1, 2, 3]])


def test_validation_with_one_prompt_is_not_run_and_says_so():
    costs = _discounted([[3, 4]])
    fallback = torch.tensor([True, False, False] + [True] * 5)
    calls = []
    validate = _additive(costs, calls)
    res = calibrate_path(validate([0]), 1, 8, 2, starts={"default": fallback}, validate=validate)
    assert res.validation["chosen"] == "search" and "needs two or more prompts" in res.validation["note"]
    assert calls == [[0]]  # no left-out search ran
    prof = SkipProfile(path=res.path.tolist(), sigmas=[float(8 - i) for i in range(9)], validation=res.validation)
    assert "not checked: it needs two or more prompts" in prof.summary()


def test_the_default_respaced_is_a_candidate_and_a_profile_can_be_respaced():
    """respaced_errors_of: the default's path run re-spaced (what respace auto gives on lms / normal) competes; where it
    wins the result is that path, re-spaced, with no local search from it, and the profile runs it re-spaced."""
    from comfyui_tempo.samplers.skip_profile import RESPACED_DEFAULT

    costs = _discounted([[3, 4], [3, 4], [3, 4]])
    default = torch.tensor([True, False, False] + [True] * 5)
    validate = _additive(costs)

    def constant(value):
        return lambda trial: torch.full(trial.shape[:2], value, dtype=torch.float64)

    for value, wins in ((0.005, True), (50.0, False)):
        res = calibrate_path(
            validate([0, 1, 2]), 3, 8, 2, starts={"default": default}, respaced_errors_of=constant(value)
        )
        assert res.candidates[RESPACED_DEFAULT] == pytest.approx(value)
        assert res.respaced is wins
        if wins:
            assert torch.equal(res.path, default) and res.start == RESPACED_DEFAULT
            assert res.errors[-1] == pytest.approx(value) and res.prompt_errors == pytest.approx([value] * 3)
        else:
            assert res.path_string() == "CCCssCCC"
    # with the check: where the default re-spaced wins there is nothing to check; where the check falls back, the
    # fallback is the default as it runs, re-spaced
    won = calibrate_path(
        validate([0, 1, 2]), 3, 8, 2, starts={"default": default}, respaced_errors_of=constant(0.005), validate=validate
    )
    assert won.respaced and "re-spaced" in won.validation["note"]
    lost = _discounted([[3, 4], [5, 6], [6, 7]])
    fell = calibrate_path(
        _additive(lost)([0, 1, 2]),
        3,
        8,
        2,
        starts={"default": default},
        respaced_errors_of=constant(2.0),
        validate=_additive(lost),
    )
    assert fell.validation["chosen"] == "default" and fell.respaced and fell.start == RESPACED_DEFAULT
    # and the check measured that fallback as it runs: its left-out errors are the re-spaced default's
    assert fell.validation["fallback_respaced"] and fell.validation["left_out_fallback"] == pytest.approx([2.0] * 3)
    prof = SkipProfile(
        path=fell.path.tolist(),
        sigmas=[float(8 - i) for i in range(9)],
        errors=fell.errors,
        candidates=fell.candidates,
        respace=fell.respaced,
    )
    back = SkipProfile.from_dict(json.loads(json.dumps(prof.to_dict())))
    assert back.respace and back.config().respace == "on" and back.config().mode == "path"
    assert "re-spaced" in back.summary() and "over the default (re-spaced)" in back.summary()
    assert SkipProfile(path=[True] * 8, sigmas=[float(8 - i) for i in range(9)]).config().respace == "off"
    with pytest.raises(ProfileError, match="'respace' must be true or false"):
        SkipProfile.from_dict({**prof.to_dict(), "respace": "yes"})


def test_transfer_rows_carry_each_prompts_greedy_path_to_the_others(gmm):
    """transfer_rows: each prompt along its own greedy path (the same path greedy_skip_paths gives it), along the
    other prompts' paths and along the default's; the rows are the matrix's means, recomputed here."""
    idx = [0, 2, 5]
    rows = {r["method"]: r for r in ac.transfer_rows(gmm, "euler", STEPS, 8, idx, "linear")}
    assert set(rows) == {"greedy_own", "greedy_transfer", "greedy_transfer_best", "adaptive_transfer_prompts"}
    t = rows["greedy_transfer"]
    db = torch.tensor(t["transfer_db"])  # [path][prompt]: the three greedy paths, then the default's
    assert db.shape == (4, 3) and len(t["paths"]) == 4
    _, errors_of = _errors_of(gmm, idx)
    g = greedy_skip_paths(errors_of, 3, STEPS, 8, joint=False)
    assert t["paths"][:3] == [g.path_string(p) for p in range(3)]
    assert all(p.count("s") == 8 and p[0] == "C" for p in t["paths"])
    own = db.diagonal()
    off = ~torch.eye(3, dtype=torch.bool)
    assert rows["greedy_own"]["psnr_db"] == pytest.approx(float(own.mean()), abs=2e-3)
    assert t["psnr_db"] == pytest.approx(float(db[:3][off].mean()), abs=2e-3)
    best = [max(float(db[a, b]) for a in range(3) if a != b) for b in range(3)]
    assert rows["greedy_transfer_best"]["psnr_db"] == pytest.approx(sum(best) / 3, abs=2e-3)
    assert rows["adaptive_transfer_prompts"]["psnr_db"] == pytest.approx(float(db[3].mean()), abs=2e-3)
    assert rows["greedy_own"]["pairs_within_3db"] == int(((db[:3] >= own[None] - 3.0) & off).sum())
    assert rows["greedy_own"]["pairs"] == 6 and all(r["nfe"] == STEPS - 8 for r in rows.values())
    # a path carried over from another prompt is no better than that prompt's best other path
    assert t["psnr_db"] <= rows["greedy_transfer_best"]["psnr_db"] + 1e-6
    with pytest.raises(ValueError, match="at least 2"):
        ac.transfer_rows(gmm, "euler", STEPS, 8, [1])


def test_calibrate_records_every_path_it_sampled_with_the_profiles_skips(gmm):
    """calibrate(record=...): each sampled path with the profile's skips and the calibration prompts' errors along
    it (the profile's own path with the errors the profile reports), and the candidates before the local search
    (the default's and the greedy's among them), each with its path."""
    steps, skips = STEPS, skips_for_speedup(STEPS, 2.0)
    record: dict = {}
    prof = ac.calibrate(gmm, "euler", steps, skips, [0, 1, 2], "linear", record=record)
    paths = record["paths"]
    assert len(paths) > len(record["candidates"]) >= 2
    assert all(len(t) == steps and t.count("s") == skips and len(e) == 3 for t, e in paths.items())
    assert paths[prof.path_string()] == pytest.approx(prof.prompt_errors, rel=1e-6)
    cands = record["candidates"]
    assert "default" in cands and "greedy" in cands
    assert cands["greedy"][0] == "".join("C" if c else "s" for c in prof.greedy_path)
    for text, errors in cands.values():
        assert paths[text] == pytest.approx(errors, rel=1e-6)


def test_moved_paths_move_a_skip_one_step_where_the_signal_says_so():
    """moved_paths: a skip before a computed step moves later where the prompt's signal is higher there than at the
    next step by more than tau, a skip after a computed step moves earlier where the next step's is; a swapped pair is
    not looked at again, NaN never moves, and the skips' count stays."""
    path = torch.tensor([1, 0, 1, 0, 1, 1, 0, 1], dtype=torch.bool)
    nan = float("nan")
    z = torch.tensor(
        [
            [nan, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # skip 1 costs more than step 2: 1 <-> 2, then from step 3 on
            [nan, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0],  # step 6's skip costs more: computed 5 / skip 6 -> skip 5
            [nan, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # nothing to move
            [nan, nan, 5.0, -5.0, nan, nan, nan, nan],  # computed 2 before skip 3, the skip cheaper: stays
        ]
    )
    paths, counts = ac.moved_paths(path, z, 1.0)
    rows = ["".join("C" if c else "s" for c in p.tolist()) for p in paths]
    assert rows == ["CCssCCsC", "CsCsCsCC", "CsCsCCsC", "CsCsCCsC"]
    assert counts == [1, 1, 0, 0]
    assert all(int((~p).sum()) == int((~path).sum()) for p in paths)
    # a chain of moves: each pair swaps once, so a skip never travels two steps
    chain = torch.tensor([[nan, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    p2, c2 = ac.moved_paths(torch.tensor([1, 0, 1, 1, 1, 1, 1, 1], dtype=torch.bool), chain, 0.5)
    assert p2[0].tolist() == [True, True, False, True, True, True, True, True] and c2 == [1]
    # a threshold above every difference leaves every prompt on the profile's path
    same, none = ac.moved_paths(path, z.nan_to_num(0.0), 10.0)
    assert torch.equal(same, path.expand(4, -1)) and none == [0, 0, 0, 0]


def test_reuse_signals_are_the_extrapolation_error_at_the_step_and_the_one_before(gmm):
    """reuse_signals: local[k] is the log error of d = (x - x0) / sigma extrapolated linearly in log sigma from steps
    k - 2 and k - 1, recomputed here from a recorded euler run; lagged is local one step later; a sampler with two
    evaluations a step is refused, naming the sampler."""
    idx = torch.tensor([0, 3])
    s = ac.reuse_signals(gmm, "euler", STEPS, idx)
    assert s["local"].shape == s["lagged"].shape == (STEPS, 2)
    assert torch.isnan(s["local"][:2]).all() and torch.isnan(s["lagged"][:3]).all()
    assert torch.equal(s["lagged"][3:], s["local"][2:-1])
    assert torch.isfinite(s["local"][2:]).all()
    sig = gmm.sigmas(STEPS)
    seen = []

    def rec(x, sigma, **kw):
        out = gmm.denoiser(x, sigma, **kw)
        seen.append(((x - out) / sigma.reshape(-1, *[1] * (x.ndim - 1))).double())
        return out

    kdiff.SAMPLERS["euler"](rec, gmm.noise[idx] * sig[0], sig, extra_args={"cond": gmm.cond[idx]})
    t = sig[:STEPS].double().log()
    k = 5
    pred = seen[k - 1] + (t[k] - t[k - 1]) / (t[k - 1] - t[k - 2]) * (seen[k - 1] - seen[k - 2])
    want = (pred - seen[k]).flatten(1).norm(dim=1).log()
    assert s["local"][k] == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="sampler: the per-prompt moves need one network evaluation per step; heun"):
        ac.reuse_signals(gmm, "heun", STEPS, idx)


def test_calibration_rows_with_moves(gmm):
    """calibration_rows(moves=True): one row per signal and threshold at the profile's NFE; a prompt none of whose
    skips moved is sampled along the profile's path (a row with no move equals the profile)."""
    rows = ac.calibration_rows(gmm, "euler", STEPS, 8, [0, 1], [2, 3, 5], moves=True)
    by = {r["method"]: r for r in rows}
    want = {f"adaptive_calibrated_moved_{n}_{t:g}" for n in ac.MOVE_SIGNALS for t in ac.MOVE_TAUS}
    assert want <= set(by)
    prof = by["adaptive_calibrated"]
    for name in want:
        r = by[name]
        assert r["nfe"] == prof["nfe"] == STEPS - 8 and len(r["moves"]) == 3 and len(r["psnr_images_db"]) == 3
        for moved, db, base in zip(r["moves"], r["psnr_images_db"], prof["psnr_images_db"]):
            if moved == 0:
                assert db == pytest.approx(base, abs=1e-3)
