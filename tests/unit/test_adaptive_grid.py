"""`comfyui-tempo bench adaptive --grid` on a tiny slice: the rows and methods the issue asks for, the held-out
model marked, the three checks computed from the rows, the per-cell markdown table, a clear error for an unknown
model."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from comfyui_tempo import cli
from comfyui_tempo.bench import adaptive_grid
from comfyui_tempo.samplers import schedules
from comfyui_tempo.samplers.adaptive import HOLD_GAP, HOLD_STEP
from comfyui_tempo.samplers.skip_plan import median_log_step

torch.set_num_threads(1)


def test_grid_on_the_held_out_model_writes_the_issue_rows(tmp_path):
    out = tmp_path / "grid.json"
    rc = cli.main(
        ["bench", "adaptive", "--grid", "--grid-models", "vpred", "--grid-samplers", "euler", "--grid-schedulers",
         "karras", "--grid-steps", "10", "--grid-step-sweep", "", "--grid-cfg-sweep", "", "--calib-cells", "",
         "--classes", "2", "--threads", "1", "--quiet", "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    d = json.loads(out.read_text())
    rows = d["rows"]
    for key in ("model", "sampler", "scheduler", "steps", "cfg", "method", "nfe", "psnr_db"):
        assert all(key in r for r in rows), key
    methods = {r["method"] for r in rows}
    assert {"full", "adaptive", "adaptive_paper", "fewer_steps", "uniform_skip"} <= methods
    assert all(r["held_out"] for r in rows) and d["meta"]["held_out"] == ["vpred"]
    m = {r["method"]: r for r in rows}
    assert m["full"]["nfe"] == 10 and m["adaptive"]["nfe"] == 5 and m["fewer_steps"]["nfe"] == 5
    (s,) = d["summary"]
    assert s["model"] == "vpred (held out)"
    assert s["vs_fewer"] == pytest.approx(m["adaptive"]["psnr_db"] - m["fewer_steps"]["psnr_db"])
    want = s["cut"] >= 1.95 and s["vs_fewer"] > 0 and s["vs_uniform"] > 0
    assert s["ok"] == ("yes" if want else "NO")
    assert d["markdown"].splitlines()[2].startswith("| vpred (held out) | euler | 2.00x |")
    # each image's PSNR is kept, in batch order, and the margins' paired standard errors come from them
    assert m["full"]["psnr_images_db"] is None
    a, f = m["adaptive"]["psnr_images_db"], m["fewer_steps"]["psnr_images_db"]
    assert len(a) == len(f) == 2 and sum(a) / 2 == pytest.approx(m["adaptive"]["psnr_db"], abs=1e-3)
    assert s["vs_fewer_se"] == pytest.approx(abs((a[0] - f[0]) - (a[1] - f[1])) / 2, abs=1e-3)


def _cell(adaptive, fewer, uniform):
    """A summary's cell from per-image PSNRs of the default and the two baselines."""
    rows = [
        {"model": "m", "sampler": "s", "scheduler": "k", "steps": 30, "cfg": 5.0, "method": meth, "nfe": nfe,
         "nfe_ratio": 30 / nfe, "psnr_db": sum(v) / len(v), "psnr_images_db": v}
        for meth, v, nfe in (("full", [99.0] * len(adaptive), 30), ("adaptive", adaptive, 15),
                             ("fewer_steps", fewer, 15), ("uniform_skip", uniform, 15))
    ]  # fmt: skip
    (line,) = adaptive_grid.summarize(rows)
    return line


def test_paired_standard_error_and_margin_verdict():
    # differences 1, -3, 2, -4 dB against uniform skipping: mean -1, std sqrt(26 / 3), se sqrt(26 / 12) = 1.47
    line = _cell([31, 27, 32, 26], [10, 10, 10, 10], [30, 30, 30, 30])
    assert line["vs_uniform"] == pytest.approx(-1.0)
    assert line["vs_uniform_se"] == pytest.approx(math.sqrt(26 / 12))
    assert line["ok"] == "NO" and line["margin_verdict"] == "within noise"
    # the same mean with every image 1 dB below: se 0, a miss beyond noise
    line = _cell([29, 29, 29, 29], [10, 10, 10, 10], [30, 30, 30, 30])
    assert line["vs_uniform_se"] == pytest.approx(0.0) and line["margin_verdict"] == "clear miss"
    # clearly above both; above uniform skipping by less than two standard errors (meets the checks, within noise)
    assert _cell([40, 41, 42, 43], [10, 10, 10, 10], [30, 30, 30, 30])["margin_verdict"] == "clear"
    line = _cell([33, 29, 34, 28], [10, 10, 10, 10], [30, 30, 30, 30])
    assert line["ok"] == "yes" and line["margin_verdict"] == "within noise"
    assert adaptive_grid.paired_se({"psnr_images_db": [1.0, 2.0]}, {}) is None
    assert adaptive_grid.paired_se({"psnr_images_db": [1.0]}, {"psnr_images_db": [2.0]}) is None
    cells = [_cell([31, 27, 32, 26], [10] * 4, [30] * 4), _cell([29] * 4, [10] * 4, [30] * 4), line]
    text = adaptive_grid.within_noise_text(cells)
    assert text.endswith("of 3 cells: 0 clearly above both baselines, 2 within noise of one (1 of them meeting the "
                         "checks, 1 not: another draw of the images could turn either over), 1 clearly below one")  # fmt: skip
    rows_without = [dict(c, vs_uniform_se=None, margin_verdict=None) for c in cells]
    assert adaptive_grid.within_noise_text(rows_without) == ""


def test_calibrated_profile_bar_verdict():
    """The bar (within 3 dB of each held-out prompt's greedy path) by two paired standard errors of the difference."""
    v = adaptive_grid.calib_bar_verdict
    assert v(-1.0, 0.5) == "clearly within"  # 2 dB above the bar, 4 standard errors
    assert v(-2.0, 0.5) == "within noise"  # 1 dB above it: 2 standard errors, not more
    assert v(-4.0, 0.6) == "within noise"  # 1 dB below it, under 2 standard errors
    assert v(-5.5, 1.0) == "clear miss"  # 2.5 dB below it
    assert v(-5.5, 1.3) == "within noise" and v(-5.5, None) is None
    cells = [
        {"calib_vs_greedy": -1.0, "calib_vs_greedy_se": 0.5, "calib_bar_verdict": v(-1.0, 0.5), "held_out_prompts": 7},
        {"calib_vs_greedy": -2.9, "calib_vs_greedy_se": 1.0, "calib_bar_verdict": v(-2.9, 1.0), "held_out_prompts": 7},
        {"calib_vs_greedy": -3.4, "calib_vs_greedy_se": 1.0, "calib_bar_verdict": v(-3.4, 1.0), "held_out_prompts": 7},
        {"calib_vs_greedy": -8.0, "calib_vs_greedy_se": 1.0, "calib_bar_verdict": v(-8.0, 1.0), "held_out_prompts": 7},
        {"calib_vs_greedy": -8.0, "calib_vs_greedy_se": None, "calib_bar_verdict": None},
    ]
    assert adaptive_grid.calib_bar_text(cells) == (
        "calibrated profiles within 3 dB of each held-out prompt's own greedy path: 2 of 4 cells (7 held-out images a "
        "cell); by two standard errors of the paired per-image differences (calib_vs_greedy_se): 1 clearly within, 2 "
        "within noise of the bar (1 of them meeting it), 1 clearly beyond it"
    )
    assert adaptive_grid.calib_bar_text(cells[-1:]) == ""
    for c, model, vs_default in zip(cells, ("a", "a", "b", "b", "b"), (1.0, -2.0, 0.5, 3.0, 1.0)):
        c["model"], c["calib_vs_default"] = model, vs_default
    a, b, both = adaptive_grid.calib_by_model(cells)  # the cell without a standard error is left out
    assert (a["model"], a["cells"], a["within_bar"], a["above_default"]) == ("a", 2, 2, 1)
    assert a["calib_vs_greedy"] == pytest.approx(-1.95) and a["calib_vs_greedy_se"] == pytest.approx(
        math.sqrt(1.25) / 2
    )
    assert (b["cells"], b["within_bar"], b["above_default"]) == (2, 0, 2) and b["calib_vs_greedy"] == pytest.approx(
        -5.7
    )
    assert both["model"] == "all" and both["cells"] == 4 and both["calib_vs_greedy"] == pytest.approx(-3.825)
    assert both["calib_vs_greedy_se"] == pytest.approx(math.sqrt(0.25 + 1 + 1 + 1) / 4)


def test_grid_respace_rows_the_default_is_one_of_them(tmp_path):
    """--grid-respace: the planned path skipped and re-spaced beside the default, which is the re-spaced one
    exactly where respace auto re-spaces (lms on normal here, not on karras); --grid-lean drops the comparison
    rows."""
    out = tmp_path / "grid.json"
    rc = cli.main(
        ["bench", "adaptive", "--grid", "--grid-models", "testbed", "--grid-samplers", "lms", "--grid-schedulers",
         "normal,karras", "--grid-steps", "10", "--grid-step-sweep", "", "--grid-cfg-sweep", "", "--calib-cells", "",
         "--classes", "2", "--threads", "1", "--quiet", "--grid-respace", "--grid-lean", "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    d = json.loads(out.read_text())
    by = {}
    for r in d["rows"]:
        by.setdefault(r["scheduler"], {})[r["method"]] = r
    for sched, m in by.items():
        assert not {"adaptive_pace", "adaptive_paper", "uniform_skip_linear"} & set(m)
        assert m["adaptive_respaced"]["respaced"] and not m["adaptive_skip"]["respaced"]
        assert m["adaptive_respaced"]["nfe"] == m["adaptive_skip"]["nfe"] == m["adaptive"]["nfe"]
        same = "adaptive_respaced" if sched == "normal" else "adaptive_skip"
        assert m["adaptive"]["respaced"] == (sched == "normal")
        assert m["adaptive"]["psnr_db"] == m[same]["psnr_db"]
    rs = {r["scheduler"]: r for r in d["respace"]}
    assert rs["normal"]["auto"] == "re-spaced" and rs["karras"]["auto"] == "skipped"
    m = by["normal"]
    assert rs["normal"]["respaced_vs_skip"] == pytest.approx(
        m["adaptive_respaced"]["psnr_db"] - m["adaptive_skip"]["psnr_db"]
    )


def test_grid_runs_the_blind_flow_model_as_a_flow_model(tmp_path):
    """digits_flow (a rectified-flow UNet at shift 8) is held out, and its cells run as a flow model's: sigmas from 1
    down its shift-8 table, the controller planning in flow time and reusing linearly in sigma."""
    p = adaptive_grid.build_problem("digits_flow", "simple", 5.0, 2, 1)
    cell = adaptive_grid.Cell(p, "digits_flow", "euler", "simple", 10, 5.0)
    assert cell.flow and float(cell.sigmas(10)[0]) == pytest.approx(1.0)
    _, nfe, _, rep = cell.run(adaptive_grid.AdaptiveConfig())
    assert nfe == 5 and rep.extrapolation.startswith("linear")
    out = tmp_path / "grid.json"
    rc = cli.main(
        ["bench", "adaptive", "--grid", "--grid-models", "digits_flow", "--grid-samplers", "euler", "--grid-schedulers",
         "simple", "--grid-steps", "10", "--grid-step-sweep", "", "--grid-cfg-sweep", "", "--calib-cells", "",
         "--classes", "2", "--threads", "1", "--quiet", "--grid-lean", "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    d = json.loads(out.read_text())
    assert d["meta"]["held_out"] == ["digits_flow"] and all(r["held_out"] for r in d["rows"])


def test_unknown_grid_model_is_a_clear_error():
    with pytest.raises(ValueError, match="--grid-models: expected names from"):
        adaptive_grid.build_problem("sdxl", "karras", 5.0, 1, 1)


def test_unknown_grid_names_are_a_clear_error_before_anything_runs(capsys):
    for flag, bad in (("--grid-schedulers", "karras,kl_optimal_v2"), ("--grid-samplers", "euler,dpm_fast_x")):
        with pytest.raises(SystemExit, match=f"{flag}: '{bad.split(',')[1]}' unknown; expected names from"):
            cli.main(["bench", "adaptive", "--grid", "--grid-models", "testbed", flag, bad, "--quiet"])


def test_the_latent_models_without_the_taesd_files_are_a_clear_error_before_anything_runs(monkeypatch, tmp_path):
    """sd_latent / sdxl_latent / sd3_flow sample in a real TAESD's space: without its files the grid (the default's all models
    included) and the ComfyUI grid refuse, naming them and TEMPO_TAESD_DIR, before anything runs."""
    from comfyui_tempo.testbed import trained_vpred

    monkeypatch.setattr(trained_vpred, "taesd_folder", lambda: None)
    for models in ("testbed,sd_latent", ",".join(adaptive_grid.MODELS)):
        with pytest.raises(
            SystemExit,
            match=r"--grid-models: (sd_latent|sd_latent, sdxl_latent, sd3_flow, flux_flow) sample in .*TEMPO_TAESD_DIR",
        ):
            cli.main(["bench", "adaptive", "--grid", "--grid-models", models, "--quiet"])
    with pytest.raises(SystemExit, match="--grid-models: sdxl_latent sample in"):
        adaptive_grid.check_taesd_models(["vpred", "sdxl_latent"])
    adaptive_grid.check_taesd_models(["testbed", "vpred"])  # no latent model: nothing to refuse
    (tmp_path / "comfy").mkdir()  # a tree the ComfyUI grid accepts; the refusal comes before it starts ComfyUI
    with pytest.raises(SystemExit, match="--grid-models: sd_latent sample in"):
        cli.main(
            ["bench", "adaptive", "--comfyui-grid", "--comfyui", str(tmp_path), "--grid-models", "sd_latent", "--quiet"]
        )


def test_a_sweep_value_that_is_not_a_number_is_a_clear_error_before_anything_runs():
    for flag, bad in (
        ("--grid-noise-x0-sweep", "0,three"),
        ("--grid-hold-sweep", "1,nan"),
        ("--grid-hold-gap-sweep", "x"),
    ):
        with pytest.raises(SystemExit, match=f"{flag}: '{bad.split(',')[-1]}' not a number; expected numbers"):
            cli.main(["bench", "adaptive", "--grid", "--grid-models", "testbed", flag, bad, "--quiet"])


def test_grid_on_comfyuis_other_schedulers(tmp_path):
    """ddim_uniform runs more steps than asked (ComfyUI's does: 13 for 12, 7 for 6 on a 1000-entry table); the default
    halves the steps it runs, and fewer steps runs at least the default's NFE (no count runs 6: 7 of them); the table's
    columns follow."""
    out = tmp_path / "grid.json"
    rc = cli.main(
        ["bench", "adaptive", "--grid", "--grid-models", "testbed", "--grid-samplers", "euler", "--grid-schedulers",
         "ddim_uniform,kl_optimal", "--grid-steps", "12", "--grid-step-sweep", "", "--grid-cfg-sweep", "",
         "--calib-cells", "", "--classes", "2", "--threads", "1", "--quiet", "--grid-lean", "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    d = json.loads(out.read_text())
    by = {}
    for r in d["rows"]:
        by.setdefault(r["scheduler"], {})[r["method"]] = r
    ddim, kl = by["ddim_uniform"], by["kl_optimal"]
    assert ddim["full"]["nfe"] == 13 and ddim["adaptive"]["nfe"] == 6 and len(ddim["adaptive"]["path"].split()[0]) == 13
    assert ddim["fewer_steps"]["nfe"] == 7 and ddim["fewer_steps"]["setting"] == "6 steps"
    assert kl["full"]["nfe"] == 12 and kl["adaptive"]["nfe"] == kl["fewer_steps"]["nfe"] == 6
    assert d["markdown"].splitlines()[0] == "| model | sampler | cut | ddim_uniform | kl_optimal |"


def test_calibrated_cells_report_against_greedy_default_and_fewer_steps_on_the_same_prompts(tmp_path):
    out = tmp_path / "calib.json"
    rc = cli.main(
        ["bench", "adaptive", "--grid", "--grid-models", "testbed", "--grid-samplers", "euler", "--grid-schedulers",
         "karras", "--grid-steps", "6", "--grid-step-sweep", "", "--grid-cfg-sweep", "", "--calib-cells",
         "euler:karras", "--calib-prompts", "2", "--classes", "4", "--threads", "1", "--quiet", "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    d = json.loads(out.read_text())
    m = {r["method"]: r for r in d["rows"]}
    for method in ("greedy_optimal", "adaptive_calibrated", "adaptive_heldout_prompts", "fewer_steps_heldout_prompts"):
        assert m[method]["held_out_prompts"] == 2, method
        # each held-out image's PSNR, their mean the row's
        assert len(m[method]["psnr_images_db"]) == 2, method
        assert sum(m[method]["psnr_images_db"]) / 2 == pytest.approx(m[method]["psnr_db"], abs=1e-3), method
    assert m["adaptive_calibrated"]["nfe"] == m["adaptive_heldout_prompts"]["nfe"] == 3
    (c,) = d["calibration"]
    cal = m["adaptive_calibrated"]["psnr_db"]
    assert c["calib_vs_greedy"] == pytest.approx(cal - m["greedy_optimal"]["psnr_db"])
    assert c["calib_vs_default"] == pytest.approx(cal - m["adaptive_heldout_prompts"]["psnr_db"])
    assert c["calib_vs_fewer"] == pytest.approx(cal - m["fewer_steps_heldout_prompts"]["psnr_db"])
    # the bar's standard error: the spread of the two images' differences over sqrt(2), i.e. half their difference
    diffs = [a - b for a, b in zip(m["adaptive_calibrated"]["psnr_images_db"], m["greedy_optimal"]["psnr_images_db"])]
    assert c["calib_vs_greedy_se"] == pytest.approx(abs(diffs[0] - diffs[1]) / 2, abs=1e-3)
    assert c["calib_bar_verdict"] == adaptive_grid.calib_bar_verdict(c["calib_vs_greedy"], c["calib_vs_greedy_se"])
    assert (
        d["calibration_bar"].startswith("calibrated profiles within 3 dB")
        and "(2 held-out images a cell)" in d["calibration_bar"]
    )
    # on its own calibration prompts the profile is at least the default's path (it was a candidate)
    assert c["calib_gain_on_calib_prompts"] >= -1e-4 and c["calib_search"]


def test_calibration_with_and_without_the_planners_paths(tmp_path):
    """On this cell a planner path wins the calibration; --calib-no-planner leaves the greedy path and the default's
    only (the search before the planner's paths were added)."""
    searches = []
    for extra in ([], ["--calib-no-planner"]):
        out = tmp_path / f"calib{len(extra)}.json"
        rc = cli.main(
            ["bench", "adaptive", "--grid", "--grid-models", "testbed", "--grid-samplers", "euler",
             "--grid-schedulers", "karras", "--grid-steps", "10", "--grid-step-sweep", "", "--grid-cfg-sweep", "",
             "--calib-cells", "euler:karras", "--calib-prompts", "2", "--classes", "3", "--threads", "1", "--quiet",
             *extra, "--json", str(out)]
        )  # fmt: skip
        assert rc == 0
        (c,) = json.loads(out.read_text())["calibration"]
        searches.append(c["calib_search"])
    assert searches[0].startswith("planner ") and searches[0].endswith("+local"), searches
    assert searches[1] in ("greedy+local", "default+local"), searches


def test_calibration_ceiling_check_and_seed_split(tmp_path):
    """--calib-ceiling: the search on the held-out prompts themselves, never below the profile there (the profile's
    path is one of its candidates); --calib-validate: the checked profile and the search's path beside it, the
    checked one the default's path where the check chose it; --calib-split seeds: the same classes, other seeds."""
    out = tmp_path / "ceiling.json"
    rc = cli.main(
        ["bench", "adaptive", "--grid", "--grid-models", "testbed", "--grid-samplers", "euler", "--grid-schedulers",
         "karras", "--grid-steps", "8", "--grid-step-sweep", "", "--grid-cfg-sweep", "", "--calib-cells",
         "euler:karras", "--calib-prompts", "3", "--classes", "5", "--threads", "1", "--quiet", "--calib-ceiling",
         "--calib-validate", "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    d = json.loads(out.read_text())
    m = {r["method"]: r for r in d["rows"]}
    best, cal, raw = m["adaptive_shared_best"], m["adaptive_calibrated"], m["adaptive_calibrated_unchecked"]
    assert best["held_out_prompts"] == 2 and best["nfe"] == cal["nfe"] == raw["nfe"] == 4
    assert best["psnr_db"] >= raw["psnr_db"] - 1e-3
    (c,) = d["calibration"]
    assert c["shared_best_vs_greedy"] == pytest.approx(best["psnr_db"] - m["greedy_optimal"]["psnr_db"])
    assert c["check_chose"] == raw["chosen"] in ("search", "default")
    if raw["chosen"] == "default":
        assert cal["psnr_db"] == pytest.approx(m["adaptive_heldout_prompts"]["psnr_db"], abs=1e-4)
        assert cal["search"].startswith("default")
    else:
        assert cal["path"] == raw["path"] and raw["left_out_gain_db"] > 0

    out = tmp_path / "seeds.json"
    rc = cli.main(
        ["bench", "adaptive", "--grid", "--grid-models", "testbed", "--grid-samplers", "euler", "--grid-schedulers",
         "karras", "--grid-steps", "6", "--grid-step-sweep", "", "--grid-cfg-sweep", "", "--calib-cells",
         "euler:karras", "--classes", "2", "--seeds", "3", "--calib-split", "seeds", "--threads", "1", "--quiet",
         "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    rows = [r for r in json.loads(out.read_text())["rows"] if r["method"] == "adaptive_calibrated"]
    assert rows[0]["held_out_prompts"] == 4 and rows[0]["calib_prompts"] == 2 and rows[0]["held_out_split"] == "seeds"
    with pytest.raises(SystemExit, match="--calib-split seeds: expected --seeds 2"):
        cli.main(["bench", "adaptive", "--grid", "--grid-models", "testbed", "--calib-split", "seeds", "--seeds", "1"])


def test_calib_split_keeps_each_class_on_one_side():
    """Rows are class c, seed s at c * seeds + s. classes: the calibration classes' first --calib-seeds seeds
    calibrate and only the other classes are held out (their first seed), so no class is on both sides; seeds: each
    class's first seed calibrates, its others are held out."""
    split = adaptive_grid.calib_split
    assert split(6, 3, 1, {}) == ([0, 1, 2], [3, 4, 5])  # one seed: as before
    assert split(18, 3, 3, {"calib_seeds": 3}) == ([0, 1, 2, 3, 4, 5, 6, 7, 8], [9, 12, 15])
    assert split(18, 3, 3, {"calib_seeds": 1}) == ([0, 3, 6], [9, 12, 15])  # the same held-out images
    assert split(6, 2, 2, {"split": "seeds"}) == ([0, 2, 4], [1, 3, 5])
    with pytest.raises(ValueError, match="--calib-seeds: expected 1 to --seeds \\(3\\), got 4"):
        split(18, 3, 3, {"calib_seeds": 4})
    with pytest.raises(ValueError, match="--calib-prompts: expected 1 to 5"):
        split(18, 6, 3, {})
    with pytest.raises(SystemExit, match="--calib-seeds: expected 1 to --seeds \\(2\\) with --calib-split classes"):
        cli.main(["bench", "adaptive", "--grid", "--grid-models", "testbed", "--seeds", "2", "--calib-seeds", "3"])
    with pytest.raises(SystemExit, match="--calib-prompts: expected 1 to 3 \\(--classes 4 leaves the rest held out"):
        cli.main(["bench", "adaptive", "--grid", "--grid-models", "testbed", "--classes", "4", "--calib-prompts", "4"])


def _lean_grid(tmp_path, samplers: str, schedulers: str, *flags: str, steps: int = 20, model="testbed") -> dict:
    """A small lean grid on a model (default testbed; 2 classes, one thread, no step / CFG sweeps, no calibrated
    cells) with the given flags; its JSON."""
    out = tmp_path / "grid.json"
    rc = cli.main(
        ["bench", "adaptive", "--grid", "--grid-models", model, "--grid-samplers", samplers,
         "--grid-schedulers", schedulers, "--grid-steps", str(steps), "--grid-step-sweep", "", "--grid-cfg-sweep", "",
         "--calib-cells", "", "--classes", "2", "--threads", "1", "--quiet", "--grid-lean", *flags, "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    return json.loads(out.read_text())


def _direction_rules_alone(monkeypatch):
    """The sampler's direction rules as they were swept, without the x0 reuse above sigma 3 on top (NOISE_X0_SIGMA
    inf; --grid-noise-x0-off / --grid-noise-x0-sweep measure that): the default, the swept rules and the named
    extrapolations then compare as the rules say."""
    from comfyui_tempo.samplers import adaptive

    monkeypatch.setattr(adaptive, "NOISE_X0_SIGMA", math.inf)


def test_grid_hold_sweep_rows_and_table(tmp_path, monkeypatch):
    """--grid-hold-sweep / --grid-hold-step-sweep: the default with the reuse held below each sigma alone, with the
    sampler's hold below sigma 1 and the hold past each step length, and with linear reuse throughout. On
    dpmpp_2m_sde (eps model) the default is the hold below 1 with HOLD_STEP (at 12 karras steps every step is longer
    than it: held throughout, so it plans with the injected-noise cost; a hold below sigma given by the sweep is not
    the sampler's rule and keeps the cost model's plan, as the default without that, --grid-hold-plan-off), hold_step
    inf the hold below 1 alone; on euler_ancestral the default is its hold after HOLD_GAP median steps (a hold_step
    given turns it off: inf is linear throughout)."""
    _direction_rules_alone(monkeypatch)
    d = _lean_grid(
        tmp_path,
        "dpmpp_2m_sde,euler_ancestral",
        "karras",
        "--grid-hold-sweep",
        "1,1e9",
        "--grid-hold-step-sweep",
        "0.2,inf",
        "--grid-hold-gap-sweep",
        "1.5",
        "--grid-hold-plan-off",
        steps=12,
    )
    m = {(r["sampler"], r["method"]): r["psnr_db"] for r in d["rows"]}
    assert HOLD_STEP == 0.2
    assert m["dpmpp_2m_sde", "adaptive"] == m["dpmpp_2m_sde", "adaptive_hold_step_0.2"]
    assert m["dpmpp_2m_sde", "adaptive_hold_plan_off"] == m["dpmpp_2m_sde", "adaptive_hold_below_1e+09"]
    assert m["dpmpp_2m_sde", "adaptive"] != m["dpmpp_2m_sde", "adaptive_hold_plan_off"]
    assert m["dpmpp_2m_sde", "adaptive_hold_step_inf"] == m["dpmpp_2m_sde", "adaptive_hold_below_1"]
    assert m["dpmpp_2m_sde", "adaptive"] != m["dpmpp_2m_sde", "adaptive_hold_below_1"]
    assert m["dpmpp_2m_sde", "adaptive"] != m["dpmpp_2m_sde", "adaptive_linear"]
    assert m["euler_ancestral", "adaptive"] != m["euler_ancestral", "adaptive_hold_below_1e+09"]
    assert HOLD_GAP == 1.5
    assert m["euler_ancestral", "adaptive"] == m["euler_ancestral", "adaptive_hold_gap_1.5"]
    assert m["euler_ancestral", "adaptive_hold_step_inf"] == m["euler_ancestral", "adaptive_linear"]
    assert m["euler_ancestral", "adaptive"] != m["euler_ancestral", "adaptive_linear"]
    assert m["euler_ancestral", "adaptive"] != m["euler_ancestral", "adaptive_hold_step_0.2"]
    t = {r["sampler"]: r for r in d["hold"]}
    assert t["dpmpp_2m_sde"]["hold_below_1"] == pytest.approx(
        m["dpmpp_2m_sde", "adaptive_hold_below_1"] - m["dpmpp_2m_sde", "adaptive_linear"]
    )
    assert t["dpmpp_2m_sde"]["default"] == pytest.approx(t["dpmpp_2m_sde"]["hold_step_0.2"])
    # the summary over the cells: each reuse against uniform skipping, and where the default differs from it
    u = {sa: m[sa, "uniform_skip"] for sa in ("dpmpp_2m_sde", "euler_ancestral")}
    summ = {r["reuse"]: r for r in d["hold_summary"]}
    assert summ["linear"]["cells"] == 2
    assert summ["linear"]["mean_vs_uniform"] == pytest.approx(sum(m[sa, "adaptive_linear"] - u[sa] for sa in u) / 2)
    assert summ["linear"]["above_uniform"] == sum(m[sa, "adaptive_linear"] > u[sa] for sa in u)
    assert summ["default"]["default_differs"] == 0
    # hold_step inf: the default differs from it on both samplers
    inf = summ["hold_step_inf"]
    assert inf["default_differs"] == 2
    diffs = [m[sa, "adaptive"] - m[sa, "adaptive_hold_step_inf"] for sa in u]
    assert inf["default_minus_mean"] == pytest.approx(sum(diffs) / 2)
    assert inf["default_above"] == sum(v > 0 for v in diffs)


def test_grid_jump_off_rows_and_table(tmp_path):
    """--grid-jump-off: the default planned without its final-jump rule; on normal at 20 steps the two plans
    differ at the final jump's step (run by the default), on karras they are the same."""
    d = _lean_grid(tmp_path, "euler", "normal,karras", "--grid-jump-off")
    t = {r["scheduler"]: r for r in d["jump"]}
    assert t["normal"]["path"][18] == "C" and t["normal"]["path_jump_off"][18] == "s"
    assert t["karras"]["path"] == t["karras"]["path_jump_off"] and t["karras"]["gain_db"] == 0
    m = {(r["scheduler"], r["method"]): r["psnr_db"] for r in d["rows"]}
    assert t["normal"]["gain_db"] == pytest.approx(m["normal", "adaptive"] - m["normal", "adaptive_jump_off"])


def test_grid_noise_dom_off_rows_and_table(tmp_path):
    """--grid-noise-dom-off: the default planned without its noise-dominated steps. On the zero-terminal-SNR model's
    karras (13 of 20 steps above sigma 14.61) the default skips a run of them and runs every step below; without the
    rule it is every other step. On its normal at 20 steps the two plans are the same; on testbed (SD's table) there
    is no such step and no row differs."""
    d = _lean_grid(tmp_path, "euler", "normal,karras", "--grid-noise-dom-off", model="vpred_zsnr")
    t = {r["scheduler"]: r for r in d["noise_dom"]}
    assert t["karras"]["path_noise_dom_off"] == "Cs" * 10 and t["karras"]["path"].startswith("Cssss")
    assert t["karras"]["path"].endswith("C" * 7) and t["karras"]["differs"]
    assert t["normal"]["path"] == t["normal"]["path_noise_dom_off"] and t["normal"]["gain_db"] == 0
    m = {(r["scheduler"], r["method"]): r["psnr_db"] for r in d["rows"]}
    assert t["karras"]["gain_db"] == pytest.approx(m["karras", "adaptive"] - m["karras", "adaptive_noise_dom_off"])
    assert d["noise_dom_summary"]["changed"] == 1
    sd = _lean_grid(tmp_path, "euler", "karras", "--grid-noise-dom-off")
    assert sd["noise_dom_summary"]["changed"] == 0


def test_grid_noise_x0_off_and_sweep_rows_and_tables(tmp_path):
    """--grid-noise-x0-off / --grid-noise-x0-sweep: euler_ancestral on the zero-terminal-SNR model reuses the last x0
    at its skipped steps above sigma 3; without the rule (by its direction rule there) the same path and another
    result, and the sweep's threshold at 3 is the default. On karras at 20 steps every skip is above it (the sweep's
    0 changes nothing), on beta some are below (0 changes them). euler injects no noise: no row of it differs. A flow
    model keeps its rules: no row differs."""
    from comfyui_tempo.samplers.adaptive import NOISE_X0_SIGMA

    d = _lean_grid(tmp_path, "euler_ancestral,euler", "karras,beta", "--grid-noise-x0-off", "--grid-noise-x0-sweep",
                   f"0,{NOISE_X0_SIGMA!r}", model="vpred_zsnr")  # fmt: skip
    t = {(r["sampler"], r["scheduler"]): r for r in d["noise_x0"]}
    m = {(r["sampler"], r["scheduler"], r["method"]): r["psnr_db"] for r in d["rows"]}
    at = f"adaptive_noise_x0_above_{NOISE_X0_SIGMA:g}"
    for sc in ("karras", "beta"):
        ea = t["euler_ancestral", sc]
        assert ea["path"] == ea["path_noise_x0_off"] and ea["path"].startswith("Css") and ea["differs"]
        assert ea["gain_db"] == pytest.approx(
            m["euler_ancestral", sc, "adaptive"] - m["euler_ancestral", sc, "adaptive_noise_x0_off"]
        )
        assert m["euler_ancestral", sc, at] == m["euler_ancestral", sc, "adaptive"]
        assert not t["euler", sc]["differs"] and t["euler", sc]["gain_db"] == 0
        assert m["euler", sc, "adaptive_noise_x0_above_0"] == m["euler", sc, "adaptive"]
    assert m["euler_ancestral", "karras", "adaptive_noise_x0_above_0"] == m["euler_ancestral", "karras", "adaptive"]
    assert m["euler_ancestral", "beta", "adaptive_noise_x0_above_0"] != m["euler_ancestral", "beta", "adaptive"]
    h = {(r["sampler"], r["scheduler"]): r for r in d["hold"]}
    assert h["euler_ancestral", "beta"]["noise_x0_above_0"] == pytest.approx(
        m["euler_ancestral", "beta", "adaptive_noise_x0_above_0"] - m["euler_ancestral", "beta", "adaptive_linear"]
    )
    fl = _lean_grid(tmp_path, "euler_ancestral", "karras", "--grid-noise-x0-off", model="flow")
    assert fl["noise_x0_summary"]["changed"] == 0


def test_grid_noise_x0_rules_rows_and_table(tmp_path):
    """--grid-noise-x0-rules: the default with the x0 reuse placed by each rule. The default's own rule gives the
    default's result; the other one changes euler_ancestral's and not euler's (no noise: no x0 reuse). An unknown
    rule is refused before anything runs, naming the flag."""
    from comfyui_tempo.samplers.adaptive import NOISE_X0_RULE, NOISE_X0_RULES

    other = next(r for r in NOISE_X0_RULES if r != NOISE_X0_RULE)
    d = _lean_grid(
        tmp_path, "euler_ancestral,euler", "karras,beta", "--grid-noise-x0-rules", f"{NOISE_X0_RULE},{other}"
    )
    m = {(r["sampler"], r["scheduler"], r["method"]): r["psnr_db"] for r in d["rows"]}
    for sc in ("karras", "beta"):
        assert (
            m["euler_ancestral", sc, f"adaptive_noise_x0_rule_{NOISE_X0_RULE}"] == m["euler_ancestral", sc, "adaptive"]
        )
        assert m["euler", sc, f"adaptive_noise_x0_rule_{other}"] == m["euler", sc, "adaptive"]
    assert any(m["euler_ancestral", sc, f"adaptive_noise_x0_rule_{other}"] != m["euler_ancestral", sc, "adaptive"]
               for sc in ("karras", "beta"))  # fmt: skip
    h = {(r["sampler"], r["scheduler"]): r for r in d["hold"]}
    assert h["euler_ancestral", "beta"][f"noise_x0_rule_{other}"] == pytest.approx(
        m["euler_ancestral", "beta", f"adaptive_noise_x0_rule_{other}"]
        - m["euler_ancestral", "beta", "adaptive_linear"]
    )
    with pytest.raises(SystemExit, match="--grid-noise-x0-rules: 'always' unknown; expected names from"):
        cli.main(
            ["bench", "adaptive", "--grid", "--grid-models", "testbed", "--grid-noise-x0-rules", "always", "--quiet"]
        )


def test_grid_hold_plan_off_rows_and_table(tmp_path, monkeypatch):
    """--grid-hold-plan-off: dpmpp_2m_sde without planning with the injected-noise cost where every skip holds; on
    karras at 20 steps the default plans with it (its path is the candidate's, the rule off is uniform skipping's),
    on normal the plans are the same."""
    _direction_rules_alone(monkeypatch)
    d = _lean_grid(tmp_path, "dpmpp_2m_sde", "normal,karras", "--grid-hold-plan-off", "--grid-noise-plan")
    t = {r["scheduler"]: r for r in d["hold_plan"]}
    m = {(r["scheduler"], r["method"]): r for r in d["rows"]}
    assert t["karras"]["path_hold_plan_off"] == "Cs" * 10 == m["karras", "uniform_skip"]["path"]
    assert t["karras"]["path"] == m["karras", "adaptive_noise_plan"]["path"] != t["karras"]["path_hold_plan_off"]
    assert t["normal"]["path"] == t["normal"]["path_hold_plan_off"] and t["normal"]["gain_db"] == 0
    gain = m["karras", "adaptive"]["psnr_db"] - m["karras", "adaptive_hold_plan_off"]["psnr_db"]
    assert t["karras"]["gain_db"] == pytest.approx(gain)
    assert m["karras", "adaptive"]["nfe"] == m["karras", "adaptive_hold_plan_off"]["nfe"] == 10
    # the summary line's figures come from the rows: one cell changed, and the three checks with and without the rule
    s = d["hold_plan_summary"]
    assert (s["cells"], s["changed"], s["up"]) == (2, 1, int(gain > 0))
    assert s["mean_gain_db"] == s["min_gain_db"] == s["max_gain_db"] == pytest.approx(gain)

    def meets(sched, method):
        r, fewer, uni = m[sched, method], m[sched, "fewer_steps"], m[sched, "uniform_skip"]
        return r["nfe_ratio"] >= 1.95 and r["psnr_db"] > fewer["psnr_db"] and r["psnr_db"] > uni["psnr_db"]

    assert s["meets_with"] == sum(meets(sc, "adaptive") for sc in ("normal", "karras"))
    assert s["meets_without"] == sum(meets(sc, "adaptive_hold_plan_off") for sc in ("normal", "karras"))
    assert s["meets_without"] < s["meets_with"]  # karras: uniform skipping's own path ties it without the rule


def test_grid_hold_gap_off_rows_and_table(tmp_path):
    """--grid-hold-gap-off: euler_ancestral without its hold after HOLD_GAP median steps. The two runs differ exactly
    where the default's path has a skip that far (in log sigma) from its last computed step, after at least two
    computed steps (before that a skip holds anyway); the plans are the same."""
    scheds = ["normal", "karras", "exponential", "simple"]
    d = _lean_grid(tmp_path, "euler_ancestral", ",".join(scheds), "--grid-hold-gap-off")
    t = {r["scheduler"]: r for r in d["hold_gap"]}
    m = {(r["scheduler"], r["method"]): r for r in d["rows"]}

    def has_far_skip(sched):
        sig = [float(v) for v in schedules.get_sigmas(sched, 20)]
        path = m[sched, "adaptive"]["path"]
        limit, last, computed = HOLD_GAP * median_log_step(sig), None, 0
        for i, c in enumerate(path):
            if c == "C":
                last, computed = i, computed + 1
            elif computed >= 2 and math.log(sig[last] / sig[i]) >= limit:
                return True
        return False

    want = {sc: has_far_skip(sc) for sc in scheds}
    assert want["simple"] and not want["exponential"]  # its last skip 2.2 median steps away; all steps alike
    for sc in scheds:
        assert t[sc]["path"] == t[sc]["path_hold_gap_off"] == m[sc, "adaptive"]["path"]
        assert t[sc]["differs"] == want[sc], sc
        gain = m[sc, "adaptive"]["psnr_db"] - m[sc, "adaptive_hold_gap_off"]["psnr_db"]
        assert t[sc]["gain_db"] == pytest.approx(gain)
        assert (gain != 0) == want[sc]
    s = d["hold_gap_summary"]
    assert (s["cells"], s["changed"]) == (4, sum(want.values()))


def test_grid_eta_runs_every_method_at_that_eta(tmp_path):
    """--grid-eta 0: euler_ancestral's every run injects no noise (its rows say eta 0), so each of its methods lands
    where euler's does (the same paths; PSNR within a hair, both against their own full runs); euler, which takes no
    eta, is run as before; both reuse as the named log_linear (--grid-reuse-sweep). A calibrated cell of a sampler
    that takes an eta is refused, as is an unknown extrapolation."""
    out = tmp_path / "grid.json"
    argv = ["bench", "adaptive", "--grid", "--grid-models", "testbed", "--grid-samplers", "euler,euler_ancestral",
            "--grid-schedulers", "simple", "--grid-steps", "20", "--grid-step-sweep", "", "--grid-cfg-sweep", "",
            "--classes", "2", "--threads", "1", "--quiet", "--grid-lean", "--grid-eta", "0"]  # fmt: skip
    assert cli.main([*argv, "--calib-cells", "", "--grid-reuse-sweep", "log_linear", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    rows = d["rows"]
    m = {(r["sampler"], r["method"]): r for r in rows}
    # with no noise the default's reuse is a deterministic sampler's: log_linear, the named one (--grid-reuse-sweep)
    for sampler in ("euler", "euler_ancestral"):
        assert m[sampler, "adaptive_reuse_log_linear"]["psnr_db"] == m[sampler, "adaptive"]["psnr_db"]
        assert m[sampler, "adaptive_linear"]["psnr_db"] != m[sampler, "adaptive"]["psnr_db"]
    assert sorted(line["sampler"] for line in d["hold"]) == ["euler", "euler_ancestral"]  # the hold table has them
    for line in d["hold"]:
        assert line["reuse_log_linear"] == pytest.approx(line["default"]), line
    assert {r.get("eta") for r in rows if r["sampler"] == "euler_ancestral"} == {0.0}
    assert all("eta" not in r for r in rows if r["sampler"] == "euler")
    for method in ("adaptive", "fewer_steps", "uniform_skip"):
        a, e = m["euler_ancestral", method], m["euler", method]
        assert a["path"] == e["path"] and a["nfe"] == e["nfe"], method
        assert a["psnr_db"] == pytest.approx(e["psnr_db"], abs=0.01), method
    with pytest.raises(SystemExit, match="--grid-eta / --grid-s-noise: the calibrated cells"):
        no = str(tmp_path / "no.json")  # one calibration prompt: 2 classes leave one held out
        cli.main([*argv, "--calib-cells", "euler_ancestral:simple", "--calib-prompts", "1", "--json", no])
    with pytest.raises(SystemExit, match="--grid-reuse-sweep: 'cubic' unknown"):
        cli.main([*argv, "--calib-cells", "", "--grid-reuse-sweep", "log_linear,cubic"])


def test_grid_s_noise_runs_every_method_at_that_scale(tmp_path):
    """--grid-s-noise: the rows of a sampler that takes an s_noise carry it and every run of the cell uses it. At 0
    the sampler injects no noise: nothing is recorded as noise, so its default starts from log_linear with its hold on
    top (adaptive_base_log_linear), not the named log_linear; at the sampler's own scale it starts from linear. At 0.5
    the runs differ from those at 1 (uniform skipping against its own full run)."""
    runs = {}
    for sn in ("0", "0.5", None):
        flags = ("--grid-reuse-sweep", "log_linear", "--grid-auto-base", "log_linear") + (
            ("--grid-s-noise", sn) if sn else ()
        )
        runs[sn] = {
            r["method"]: r["psnr_db"] for r in _lean_grid(tmp_path, "euler_ancestral", "simple", *flags)["rows"]
        }
        if sn:
            assert {r.get("s_noise") for r in json.loads((tmp_path / "grid.json").read_text())["rows"]} == {float(sn)}
    assert runs["0"]["adaptive"] == runs["0"]["adaptive_base_log_linear"] != runs["0"]["adaptive_reuse_log_linear"]
    assert runs[None]["adaptive"] != runs[None]["adaptive_base_log_linear"]
    assert runs["0.5"]["uniform_skip"] != runs[None]["uniform_skip"]


def test_grid_noise_gate_off_keeps_the_samplers_rule(tmp_path):
    """--grid-noise-gate-off: with eta 0 dpmpp_2m_sde is DPM-Solver++(2M) and the default drops its hold rules; the
    gate-off row keeps them, so the two differ (in the table, with the gain from the rows). With s_noise 0 the default
    keeps them itself, and at the sampler's own scale the gate does nothing: the two runs are the same."""
    for flags, differs in ((("--grid-eta", "0"), True), (("--grid-s-noise", "0"), False), ((), False)):
        d = _lean_grid(tmp_path, "dpmpp_2m_sde", "karras", "--grid-noise-gate-off", *flags)
        m = {r["method"]: r for r in d["rows"]}
        (line,) = d["noise_gate"]
        assert line["differs"] is differs
        assert line["gain_db"] == pytest.approx(m["adaptive"]["psnr_db"] - m["adaptive_noise_gate_off"]["psnr_db"])
        assert (m["adaptive"]["psnr_db"] != m["adaptive_noise_gate_off"]["psnr_db"]) is differs


def test_grid_auto_base_below_eta_1(tmp_path):
    """--grid-eta 0.5 with --grid-auto-base linear,log_linear on euler_ancestral: the default there starts from
    log_linear (its rule below eta 1), so it is adaptive_base_log_linear's run, and adaptive_base_linear is the default
    as it ran before that rule."""
    d = _lean_grid(
        tmp_path, "euler_ancestral", "normal,simple", "--grid-eta", "0.5", "--grid-auto-base", "linear,log_linear"
    )
    m = {(r["scheduler"], r["method"]): r for r in d["rows"]}
    for sc in ("normal", "simple"):
        assert m[sc, "adaptive"]["psnr_db"] == m[sc, "adaptive_base_log_linear"]["psnr_db"]
        assert m[sc, "adaptive"]["psnr_db"] != m[sc, "adaptive_base_linear"]["psnr_db"]
    assert {line["scheduler"] for line in d["hold"]} == {"normal", "simple"}
    assert all(line["default"] == pytest.approx(line["base_log_linear"]) for line in d["hold"])


def test_grid_auto_base_with_hold_gap_sweep(tmp_path, monkeypatch):
    """--grid-auto-base with --grid-hold-gap-sweep: each base with each multiple of the hold after a long gap. At eta 1
    euler_ancestral's default is linear with the hold after 1.5 median steps, so the linear base at 1.5 is the
    default's run and the log_linear base at 1.5 is adaptive_base_log_linear's; a multiple no gap reaches (1000) is the
    base without its hold. The summary counts the cells meeting the three checks from the rows."""
    _direction_rules_alone(monkeypatch)
    d = _lean_grid(
        tmp_path, "euler_ancestral", "normal,simple", "--grid-auto-base", "linear,log_linear",
        "--grid-hold-gap-sweep", "1.5,1000", "--grid-reuse-sweep", "log_linear",
    )  # fmt: skip
    m = {(r["scheduler"], r["method"]): r for r in d["rows"]}
    for sc in ("normal", "simple"):
        db = {k: r["psnr_db"] for (s, k), r in m.items() if s == sc}
        assert db["adaptive_base_linear_hold_gap_1.5"] == db["adaptive"]
        assert db["adaptive_base_log_linear_hold_gap_1.5"] == db["adaptive_base_log_linear"]
        assert db["adaptive_base_log_linear_hold_gap_1000"] == db["adaptive_reuse_log_linear"]
        assert db["adaptive_base_linear_hold_gap_1000"] == db["adaptive_linear"]
    assert db["adaptive_base_log_linear_hold_gap_1000"] != db["adaptive_base_log_linear_hold_gap_1.5"]  # simple
    summ = {r["reuse"]: r for r in d["hold_summary"]}
    for k in ("base_log_linear_hold_gap_1000", "default"):
        rows = [m[sc, "adaptive" if k == "default" else "adaptive_" + k] for sc in ("normal", "simple")]
        meets = sum(
            r["nfe_ratio"] >= 1.95
            and r["psnr_db"] > m[r["scheduler"], "fewer_steps"]["psnr_db"]
            and r["psnr_db"] > m[r["scheduler"], "uniform_skip"]["psnr_db"]
            for r in rows
        )
        assert summ[k]["meets"] == meets


def test_calib_transfer_reports_each_prompts_greedy_path_against_the_others(tmp_path):
    """--calib-transfer: on the calibrated cells, instead of the profile, the greedy paths carried over between all
    the cell's prompts; the summary's differences come from the rows, and the default's path on the same prompts is
    the cell's own adaptive row (the same path, prompts and noise)."""
    out = tmp_path / "transfer.json"
    rc = cli.main(
        ["bench", "adaptive", "--grid", "--grid-models", "testbed", "--grid-samplers", "euler", "--grid-schedulers",
         "karras", "--grid-steps", "6", "--grid-step-sweep", "", "--grid-cfg-sweep", "", "--calib-cells",
         "euler:karras", "--calib-transfer", "--grid-lean", "--classes", "3", "--threads", "1", "--quiet", "--json",
         str(out)]
    )  # fmt: skip
    assert rc == 0
    d = json.loads(out.read_text())
    m = {r["method"]: r for r in d["rows"]}
    assert "adaptive_calibrated" not in m and "greedy_optimal" not in m
    own = m["greedy_own"]["psnr_db"]
    (t,) = d["transfer"]
    assert t["transfer_vs_own"] == pytest.approx(m["greedy_transfer"]["psnr_db"] - own)
    assert t["best_other_vs_own"] == pytest.approx(m["greedy_transfer_best"]["psnr_db"] - own)
    assert t["default_vs_own"] == pytest.approx(m["adaptive_transfer_prompts"]["psnr_db"] - own)
    assert t["pairs_within_3db"] == f"{m['greedy_own']['pairs_within_3db']} of 6"
    assert m["adaptive_transfer_prompts"]["path"] == m["adaptive"]["path"]
    assert m["adaptive_transfer_prompts"]["psnr_db"] == pytest.approx(m["adaptive"]["psnr_db"], abs=1e-3)
    with pytest.raises(SystemExit, match="--calib-transfer: runs instead of the profile, so --calib-ceiling"):
        cli.main(["bench", "adaptive", "--grid", "--grid-models", "testbed", "--calib-transfer", "--calib-ceiling"])


def test_calibration_oracle_rows(tmp_path):
    """--calib-oracle: the best on the held-out prompts of every path the search sampled is at or above the profile
    and the search's choice before its local search (both are among those paths); the summary's differences are the
    rows'; it cannot go with --calib-transfer."""
    out = tmp_path / "oracle.json"
    rc = cli.main(
        ["bench", "adaptive", "--grid", "--grid-models", "testbed", "--grid-samplers", "dpmpp_2m", "--grid-schedulers",
         "normal", "--grid-steps", "8", "--grid-step-sweep", "", "--grid-cfg-sweep", "", "--calib-cells",
         "dpmpp_2m:normal", "--calib-prompts", "3", "--classes", "5", "--threads", "1", "--quiet", "--grid-lean",
         "--calib-oracle", "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    d = json.loads(out.read_text())
    m = {r["method"]: r for r in d["rows"]}
    best = m["adaptive_searched_best"]
    for method in ("adaptive_calibrated", "adaptive_calibrated_nolocal"):
        assert m[method]["held_out_prompts"] == 2 and m[method]["nfe"] == best["nfe"] == 4
        assert best["psnr_db"] >= m[method]["psnr_db"] - 1e-3, method
    assert best["searched_paths"] > 1 and -1.0 <= best["rank_corr"] <= 1.0
    assert m["adaptive_calibrated_nolocal"]["candidate"]
    (c,) = d["calibration"]
    g = m["greedy_optimal"]["psnr_db"]
    assert c["searched_best_vs_greedy"] == pytest.approx(best["psnr_db"] - g)
    assert c["nolocal_vs_greedy"] == pytest.approx(m["adaptive_calibrated_nolocal"]["psnr_db"] - g)
    assert c["searched_paths"] == best["searched_paths"]
    with pytest.raises(SystemExit, match="--calib-transfer: runs instead of the profile, so --calib-oracle"):
        cli.main(["bench", "adaptive", "--grid", "--grid-models", "testbed", "--calib-transfer", "--calib-oracle"])


def test_calibration_moves_rows_and_summary(tmp_path):
    """--calib-moves: a row per signal and threshold at the profile's NFE on the held-out prompts; each cell's moved
    minus profile and the summary over cells come from the rows; it cannot go with --calib-transfer."""
    out = tmp_path / "moves.json"
    rc = cli.main(
        ["bench", "adaptive", "--grid", "--grid-models", "testbed", "--grid-samplers", "euler", "--grid-schedulers",
         "normal", "--grid-steps", "10", "--grid-step-sweep", "", "--grid-cfg-sweep", "", "--calib-cells",
         "euler:normal", "--classes", "5", "--threads", "1", "--quiet", "--grid-lean", "--calib-moves", "--json",
         str(out)]
    )  # fmt: skip
    assert rc == 0
    d = json.loads(out.read_text())
    m = {r["method"]: r for r in d["rows"]}
    prof = m["adaptive_calibrated"]
    moved = {k: r for k, r in m.items() if k.startswith("adaptive_calibrated_moved_")}
    assert len(moved) == 6
    (c,) = d["calibration"]
    for name, r in moved.items():
        assert r["nfe"] == prof["nfe"] == 5 and r["held_out_prompts"] == 2
        key = name[len("adaptive_calibrated_") :] + "_vs_profile"
        assert c[key] == pytest.approx(r["psnr_db"] - prof["psnr_db"])
    summ = {s["variant"]: s for s in d["calibration_moves"]}
    assert set(summ) == {k[len("adaptive_calibrated_moved_") :] for k in moved}
    for variant, s in summ.items():
        diff = c[f"moved_{variant}_vs_profile"]
        assert s["cells"] == 1 and s["mean_db"] == pytest.approx(diff) and s["above_profile"] == int(diff > 0)
    with pytest.raises(SystemExit, match="--calib-transfer: runs instead of the profile, so --calib-moves"):
        cli.main(["bench", "adaptive", "--grid", "--grid-models", "testbed", "--calib-transfer", "--calib-moves"])


def test_calibration_quick_rows_and_summary(tmp_path):
    """--calib-quick: the quick search's profile on the same held-out prompts at the profile's NFE, its calibration's
    cost below the full search's, and the cell's differences from the rows; it cannot go with --calib-transfer."""
    out = tmp_path / "quick.json"
    rc = cli.main(
        ["bench", "adaptive", "--grid", "--grid-models", "testbed", "--grid-samplers", "euler", "--grid-schedulers",
         "karras", "--grid-steps", "12", "--grid-step-sweep", "", "--grid-cfg-sweep", "", "--calib-cells",
         "euler:karras", "--classes", "5", "--threads", "1", "--quiet", "--grid-lean", "--calib-quick", "--json",
         str(out)]
    )  # fmt: skip
    assert rc == 0
    d = json.loads(out.read_text())
    m = {r["method"]: r for r in d["rows"]}
    prof, quick = m["adaptive_calibrated"], m["adaptive_calibrated_quick"]
    assert quick["nfe"] == prof["nfe"] == 6 and quick["held_out_prompts"] == 2
    assert quick["search"].endswith("(quick search)") and "+local" not in quick["search"]
    assert 0 < quick["calib_nfe"] < prof["calib_nfe"]
    (c,) = d["calibration"]
    assert c["quick_vs_profile"] == pytest.approx(quick["psnr_db"] - prof["psnr_db"])
    assert c["quick_vs_greedy"] == pytest.approx(quick["psnr_db"] - m["greedy_optimal"]["psnr_db"])
    assert c["quick_vs_default"] == pytest.approx(quick["psnr_db"] - m["adaptive_heldout_prompts"]["psnr_db"])
    assert c["quick_nfe_share"] == pytest.approx(quick["calib_nfe"] / prof["calib_nfe"])
    with pytest.raises(SystemExit, match="--calib-transfer: runs instead of the profile, so --calib-quick"):
        cli.main(["bench", "adaptive", "--grid", "--grid-models", "testbed", "--calib-transfer", "--calib-quick"])


def test_grid_noise_plan_rows_on_the_noisy_samplers_only(tmp_path):
    """--grid-noise-plan: an adaptive_noise_plan row on euler_ancestral and dpmpp_2m_sde (not on euler), at the
    default's NFE; the table's differences are the rows'."""
    out = tmp_path / "noise.json"
    rc = cli.main(
        ["bench", "adaptive", "--grid", "--grid-models", "testbed", "--grid-samplers",
         "euler,euler_ancestral,dpmpp_2m_sde", "--grid-schedulers", "exponential", "--grid-steps", "12",
         "--grid-step-sweep", "", "--grid-cfg-sweep", "", "--calib-cells", "", "--grid-lean", "--grid-noise-plan",
         "--classes", "2", "--threads", "1", "--quiet", "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    d = json.loads(out.read_text())
    by = {}
    for r in d["rows"]:
        by.setdefault(r["sampler"], {})[r["method"]] = r
    assert "adaptive_noise_plan" not in by["euler"]
    table = {t["sampler"]: t for t in d["noise_plan"]}
    assert set(table) == {"euler_ancestral", "dpmpp_2m_sde"}
    for sampler, t in table.items():
        m = by[sampler]
        q = m["adaptive_noise_plan"]
        assert q["nfe"] == m["adaptive"]["nfe"] == 6
        assert t["gain_db"] == pytest.approx(q["psnr_db"] - m["adaptive"]["psnr_db"])
        assert t["noise_plan_vs_uniform"] == pytest.approx(q["psnr_db"] - m["uniform_skip"]["psnr_db"])
        assert t["path_noise_plan"] == q["path"] and q["path"].count("s") == 6
        assert "noise_plan=" in q["setting"]


def test_comfyui_grid_samplers_are_the_served_ones_the_grid_cannot_run():
    """--comfyui-grid's default samplers: served, none with a plain-PyTorch copy (the grid runs those), no twin."""
    from comfyui_tempo.bench import adaptive_comfy_grid
    from comfyui_tempo.samplers import kdiff, support

    names = adaptive_comfy_grid.default_samplers()
    assert {"dpmpp_3m_sde", "er_sde", "deis", "ipndm", "res_multistep", "sa_solver", "seeds_2"} <= set(names)
    assert all(support.lookup(n).served and n not in kdiff.SAMPLERS for n in names)
    assert not set(names) & adaptive_comfy_grid.TWINS


def test_comfyui_grid_without_a_comfyui_tree_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("TEMPO_COMFYUI", raising=False)
    with pytest.raises(SystemExit, match="--comfyui-grid: needs a ComfyUI tree"):
        cli.main(["bench", "adaptive", "--comfyui-grid", "--quiet"])
    with pytest.raises(SystemExit, match="which has no comfy/"):
        cli.main(["bench", "adaptive", "--comfyui-grid", "--comfyui", str(tmp_path), "--quiet"])


def test_fewer_steps_for_any_schedule():
    """The fewer-steps count the ComfyUI grid shares with the grid: the target where a schedule runs it, else the
    fewest step count running more (as ddim_uniform on a 1000-entry table)."""
    table = schedules.discrete_sigmas()
    assert adaptive_grid.fewer_steps_for(lambda n: schedules.get_sigmas("karras", n, table), 7) == 7
    ddim = lambda n: schedules.get_sigmas("ddim_uniform", n, table)  # noqa: E731
    n = adaptive_grid.fewer_steps_for(ddim, 6)
    runs = {k: len(ddim(k)) - 1 for k in range(3, 13)}
    assert runs[n] == min(r for r in runs.values() if r >= 6) and runs[n] > 6  # ddim_uniform runs 7 for 6 here


def test_grid_split_runs_two_calls_and_scores_them_against_the_split_full_run(tmp_path):
    """--grid-split K: the run in two sampler calls at step K, as two KSamplerAdvanced nodes make it. Euler keeps no
    history, so its split full run is the full run exactly; the default plans the whole run and halves the two calls'
    NFE together (split_plan call halves each call's); fewer steps are split at the same share of the run."""
    p = adaptive_grid.build_problem("testbed", "karras", 5.0, 2, 1)
    cell = adaptive_grid.Cell(p, "testbed", "euler", "karras", 20, 5.0)
    whole, nfe, _, _ = cell.run(None)
    split, nfe_split, _, _ = cell.run(None, split=8)
    assert torch.equal(whole, split) and nfe == nfe_split == 20
    _, nfe_c, _, rep_c = cell.run(adaptive_grid.AdaptiveConfig(split_plan="call"), split=8)
    assert nfe_c == 4 + 6 and rep_c.steps == 12  # 8 steps at 2x, then 12; the report is the second call's
    _, nfe_a, _, rep = cell.run(adaptive_grid.AdaptiveConfig(), split=8)
    assert nfe_a == 10 and rep.steps == 12 and any("of a 20-step karras run, split at step 8" in n for n in rep.notes)
    with pytest.raises(ValueError, match="--grid-split: expected steps between 1 and 19 in increasing order, got 20"):
        adaptive_grid._split_rows(cell, {}, 20, 20, 10)
    with pytest.raises(ValueError, match="in increasing order, got 12,6"):
        adaptive_grid._split_rows(cell, {}, (12, 6), 20, 10)
    assert adaptive_grid._split_steps("7,14") == (7, 14) and adaptive_grid._split_steps("") == ()
    with pytest.raises(argparse.ArgumentTypeError, match="expected steps such as 10 or 7,14, got '7;14'"):
        adaptive_grid._split_steps("7;14")
    # three calls (a middle one): the whole run's plan with both split steps run, 10 evaluations together
    _, nfe_3, _, rep_3 = cell.run(adaptive_grid.AdaptiveConfig(), split=(6, 13))
    assert nfe_3 == 10 and rep_3.steps == 7 and any("split at steps 6, 13" in n for n in rep_3.notes)
    d = _lean_grid(tmp_path, "dpmpp_2m", "karras", "--grid-split", "10")
    m = {r["method"]: r for r in d["rows"]}
    assert {"full_split", "adaptive_split", "adaptive_split_call", "fewer_steps_split"} <= set(m)
    assert m["full_split"]["nfe"] == 20 and m["adaptive_split"]["nfe"] == 10 and m["fewer_steps_split"]["nfe"] == 10
    assert m["adaptive_split_call"]["nfe"] == 10 and m["adaptive_split"]["path"][0] == "C"  # the split step runs
    assert m["fewer_steps_split"]["setting"] == "10 steps in 2 calls, at step 5"
    (t,) = d["split"]
    assert t["split_vs_fewer"] == pytest.approx(m["adaptive_split"]["psnr_db"] - m["fewer_steps_split"]["psnr_db"])
    assert t["split_vs_unsplit"] == pytest.approx(m["adaptive_split"]["psnr_db"] - m["adaptive"]["psnr_db"])
    assert t["whole_vs_call"] == pytest.approx(m["adaptive_split"]["psnr_db"] - m["adaptive_split_call"]["psnr_db"])


def test_flow_plans_are_two_alternatives_at_the_defaults_nfe_on_flow_cells_only():
    """--grid-flow-plans: on a flow cell, isolated skips (max_skip 1) and the default's cost model planned in the flow
    time before the shift, each at the default's NFE; the unshifted time inverts the shift (simple is uniform in it);
    an eps cell gets neither; the table is the default minus each."""
    p = adaptive_grid.build_problem("digits_flow", "simple", 5.0, 2, 1)
    cell = adaptive_grid.Cell(p, "digits_flow", "euler", "beta", 12, 5.0)
    sig = cell.sigmas(12)
    t = adaptive_grid.unshifted_flow_time(sig, 8.0)
    assert torch.allclose(8.0 * t / (1 + 7.0 * t), sig.double(), atol=1e-6)  # ComfyUI's shift, inverted
    simple = adaptive_grid.Cell(p, "digits_flow", "euler", "simple", 12, 5.0)
    t_simple = adaptive_grid.unshifted_flow_time(simple.sigmas(12), 8.0)
    steps = (t_simple[:-1] - t_simple[1:]).float()
    assert float(steps.max() - steps.min()) < 2e-3  # simple: uniform in the unshifted time (to the table's 1e-3)
    rows = adaptive_grid.run_cell(cell, log=lambda *a: None, lean=True, flow_plans=True)
    m = {r["method"]: r for r in rows}
    assert m["adaptive_flow_isolated"]["nfe"] == m["adaptive_flow_unshifted"]["nfe"] == m["adaptive"]["nfe"] == 6
    assert "ss" not in m["adaptive_flow_isolated"]["path"]
    planned = adaptive_grid.default_plan(t, 6, flow=True, max_skip=4, first=1, last=12)
    assert m["adaptive_flow_unshifted"]["path"] == "".join("C" if v else "s" for v in planned.tolist())
    assert m["adaptive_flow_unshifted"]["path"] != m["adaptive"]["path"]  # the shift moves where it skips
    table = adaptive_grid.rule_off_table(rows, "flow_unshifted")
    assert len(table) == 1
    assert table[0]["gain_db"] == pytest.approx(m["adaptive"]["psnr_db"] - m["adaptive_flow_unshifted"]["psnr_db"])
    eps_problem = adaptive_grid.build_problem("testbed", "karras", 5.0, 2, 1)
    assert adaptive_grid.flow_plan_paths(adaptive_grid.Cell(eps_problem, "testbed", "euler", "karras", 8, 5.0)) == {}


def test_flow_plans_flag_writes_the_tables(tmp_path):
    out = tmp_path / "grid.json"
    rc = cli.main(
        ["bench", "adaptive", "--grid", "--grid-models", "digits_flow", "--grid-samplers", "euler", "--grid-schedulers",
         "beta", "--grid-steps", "10", "--grid-step-sweep", "", "--grid-cfg-sweep", "", "--calib-cells", "",
         "--classes", "2", "--threads", "1", "--quiet", "--grid-lean", "--grid-flow-plans", "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    d = json.loads(out.read_text())
    methods = {r["method"] for r in d["rows"]}
    assert {"adaptive_flow_isolated", "adaptive_flow_unshifted"} <= methods
    for key in ("flow_isolated", "flow_unshifted"):
        assert len(d[key]) == 1 and d[f"{key}_summary"]["cells"] == 1
