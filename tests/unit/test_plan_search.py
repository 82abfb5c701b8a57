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
    assert plans[50]["plan"].count("ss") == 1 and plans[30]["plan"] == "Cs" * 15  # the docs' normal-at-50 pair
    assert RUN_PENALTY == 30.0
    assert [t["steps"] for t in d["planning_time"]] == [30, 50, 100, 200]


def test_bad_penalties_are_a_clear_error():
    with pytest.raises(SystemExit, match="--penalties"):
        cli.main(["bench", "adaptive", "--plan-search", "--grid-models", "testbed", "--penalties", "0.5"])
