"""`bench adaptive --plan-search` (how the planner's run penalty was chosen) on a tiny slice: the variants it
scores, that their paths are the planner's, and a clear error for a bad --penalties."""

from __future__ import annotations

import json

import pytest
import torch

from comfyui_tempo import cli
from comfyui_tempo.samplers.skip_plan import RUN_PENALTY

torch.set_num_threads(1)


def test_plan_search_scores_each_variant_and_reports_the_plans(tmp_path):
    out = tmp_path / "p.json"
    argv = ["bench", "adaptive", "--plan-search", "--grid-models", "testbed", "--grid-samplers", "euler"]
    argv += ["--grid-schedulers", "normal", "--grid-steps", "10", "--classes", "2", "--penalties", "1,30", "--quiet"]
    argv += ["--step-weights", "0"]  # the cost model without the step-length factor (the earlier planners)
    assert cli.main(argv + ["--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert [s["variant"] for s in d["summary"]] == ["first version", "isolated", "penalty 1", "penalty 30"]
    by = {r["variant"]: r for r in d["rows"]}
    assert by["isolated"]["path"] == by["first version"]["path"] == "Cs" * 5  # max_skip 1 at 2x: every other step
    assert by["isolated"]["psnr_db"] == by["first version"]["psnr_db"]  # eps + euler: the same auto extrapolation
    assert "ss" in by["penalty 1"]["path"]  # the cost model alone takes runs on an eps schedule...
    assert by["penalty 30"]["path"] == "Cs" * 5  # ...the penalty keeps them isolated
    for s in d["summary"]:
        r = by[s["variant"]]
        assert s["failing"] == (1 if r["margin"] <= 0 else 0) and s["worst_db"] == pytest.approx(r["margin"])
    plans = {(p["steps"]): p for p in d["plans"]}
    # the controller's plans on normal (RUN_PENALTY, STEP_WEIGHT): the long last two steps run, two pairs of skips
    assert all(plans[n]["plan"].endswith("CC") and plans[n]["plan"].count("ss") == 2 for n in (30, 50))
    assert RUN_PENALTY == 10.0
    assert [t["steps"] for t in d["planning_time"]] == [30, 50, 100, 200]


def test_force_last_variants_protect_the_last_steps(tmp_path):
    out = tmp_path / "p.json"
    argv = ["bench", "adaptive", "--plan-search", "--grid-models", "testbed", "--grid-samplers", "euler"]
    argv += ["--grid-schedulers", "normal", "--grid-steps", "10", "--classes", "2", "--penalties", "30"]
    argv += ["--step-weights", "0"]
    assert cli.main(argv + ["--force-last", "0,2", "--quiet", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    by = {r["variant"]: r for r in d["rows"]}
    assert list(by) == ["first version", "isolated", "penalty 30", "penalty 30, last 2 run"]
    assert by["penalty 30"]["path"] == "Cs" * 5
    p2 = by["penalty 30, last 2 run"]["path"]
    assert p2.endswith("CC") and p2.count("s") == 5  # the same 5 skips, none in the last two steps
    assert by["penalty 30, last 2 run"]["psnr_db"] != by["penalty 30"]["psnr_db"]
    with pytest.raises(SystemExit, match="--force-last"):
        cli.main(argv + ["--force-last", "10"])


def test_step_weight_variants(tmp_path):
    out = tmp_path / "p.json"
    argv = ["bench", "adaptive", "--plan-search", "--grid-models", "testbed", "--grid-samplers", "euler"]
    argv += ["--grid-schedulers", "normal", "--grid-steps", "30", "--classes", "2", "--penalties", "10"]
    assert cli.main(argv + ["--step-weights", "0,1", "--quiet", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    by = {r["variant"]: r for r in d["rows"]}
    assert list(by) == ["first version", "isolated", "penalty 10", "penalty 10, step weight 1"]
    # normal's long last steps: with the factor they run and a pair of skips moves mid-run
    assert (
        by["penalty 10, step weight 1"]["path"].endswith("CC")
        and by["penalty 10, step weight 1"]["path"] != by["penalty 10"]["path"]
    )
    plans = {(p["steps"]): p for p in d["plans"]}
    assert plans[30]["plan"] == by["penalty 10, step weight 1"]["path"]  # the controller's settings
    with pytest.raises(SystemExit, match="--step-weights"):
        cli.main(argv + ["--step-weights", "-1"])


def test_bad_penalties_are_a_clear_error():
    with pytest.raises(SystemExit, match="--penalties"):
        cli.main(["bench", "adaptive", "--plan-search", "--grid-models", "testbed", "--penalties", "0.5"])
