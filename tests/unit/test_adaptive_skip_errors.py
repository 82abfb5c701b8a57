"""`comfyui-tempo bench adaptive --skip-errors` (bench/adaptive_skip_errors.py): one skip's cost at each step of a
run, beside the planner's modelled cost and the direction's measured extrapolation error."""

from __future__ import annotations

import json
import math

import pytest
import torch

from comfyui_tempo import cli
from comfyui_tempo.bench.adaptive_grid import Cell, build_problem
from comfyui_tempo.bench.adaptive_skip_errors import cell_summary, spearman, step_rows, third_of
from comfyui_tempo.samplers.skip_plan import STEP_WEIGHT, skip_costs_fn

torch.set_num_threads(1)


def test_spearman_orders_ties_and_short_input():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 100, 2, 3]) == pytest.approx(0.4)  # ranks, not values
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(0.75))  # the tie gets the average rank
    assert math.isnan(spearman([1, 2], [1, 2])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_thirds_cover_the_steps_in_order():
    got = [third_of(i, 2, 28) for i in range(2, 29)]
    assert got == sorted(got) and got[0] == 0 and got[-1] == 2
    assert [got.count(k) for k in range(3)] == [9, 9, 9]


def _exact_cell(c: float, steps: int = 10):
    """The eps testbed's cell with its network replaced by a direction d = 0.2 + 0.7 t + c t^2 (t = log sigma) for
    every x: the default's reuse on euler (linear in log sigma) is exact at c = 0."""
    problem = build_problem("testbed", "karras", 5.0, 1, 1)

    def denoiser(x, sigma, **extra):
        s = sigma.reshape(-1)[0]
        t = torch.log(s)
        return x - s * (0.2 + 0.7 * t + c * t * t)

    problem.denoiser = denoiser
    return Cell(problem, "testbed", "euler", "karras", steps, 5.0)


def test_step_rows_measure_the_extrapolation_error_and_the_skip_it_leaves():
    lin, quad = step_rows(_exact_cell(0.0)), step_rows(_exact_cell(0.3))
    assert [r["step"] for r in lin] == list(range(2, 10)) == [r["step"] for r in quad]
    sig = _exact_cell(0.3).sigmas(10)
    cost = skip_costs_fn(sig, False, STEP_WEIGHT)
    for r0, r in zip(lin, quad):
        i = r["step"]
        t = [math.log(float(sig[k])) for k in (i - 2, i - 1, i)]
        assert r0["extrap_err"] == pytest.approx(0.0, abs=1e-4)  # float32 rounding of (x - x0) / sigma
        assert r["extrap_err"] == pytest.approx(0.3 * abs((t[1] - t[2]) * (t[0] - t[2])), rel=1e-3)
        assert r["modelled"] == pytest.approx(cost(i, i - 1, i - 2))
        s0, s1 = float(sig[i]), float(sig[i + 1])
        assert r["travel_err"] == pytest.approx(abs(s0 - s1) / math.sqrt(1 + s1 * s1) * r["extrap_err"], rel=1e-6)
        assert r0["skip_db"] > 100  # exact reuse: the skip changes nothing
        assert r["skip_db"] < r0["skip_db"] - 10  # a curved direction: the skip shows in the output


def test_cell_summary_places_the_default_and_ranks_the_signals():
    cell = _exact_cell(0.3)
    rows = step_rows(cell)
    line = cell_summary(rows, cell)
    path = line["default_path"]
    assert len(path) == 10 and path.count("s") == 5  # target 2x on 10 steps
    assert sum(int(v) for v in line["default_skips"].split("/")) == sum(c == "s" for c in path[2:10])
    assert -1.0 <= line["rho_modelled"] <= 1.0 and -1.0 <= line["rho_travel_err"] <= 1.0
    by = [[r["skip_db"] for r in rows if third_of(r["step"], 2, 9) == k] for k in range(3)]
    assert [line[f"{n}_db"] for n in ("first", "middle", "last")] == pytest.approx([sum(v) / len(v) for v in by])
    logs = [
        [math.log10(r["travel_err"] / r["modelled"]) for r in rows if third_of(r["step"], 2, 9) == k] for k in range(3)
    ]
    assert [line[f"ratio_{n}"] for n in ("first", "middle", "last")] == pytest.approx([sum(v) / len(v) for v in logs])
    best = max(range(3), key=lambda k: sum(by[k]) / len(by[k]))
    assert line["cheapest"] == ("first", "middle", "last")[best]


def test_skip_errors_command_writes_rows_and_cells_and_refuses_a_two_evaluation_sampler(tmp_path, capsys):
    out = tmp_path / "skip_errors.json"
    rc = cli.main(
        ["bench", "adaptive", "--skip-errors", "--grid-models", "testbed", "--grid-samplers", "euler,dpmpp_2m",
         "--grid-schedulers", "karras", "--grid-steps", "8", "--classes", "1", "--seeds", "1", "--threads", "1",
         "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    assert "rho_travel_err" in capsys.readouterr().out
    d = json.loads(out.read_text())
    assert len(d["rows"]) == 2 * 6 and {r["sampler"] for r in d["rows"]} == {"euler", "dpmpp_2m"}
    assert [c["sampler"] for c in d["cells"]] == ["euler", "dpmpp_2m"]
    assert all(math.isfinite(r["skip_db"]) and r["extrap_err"] > 0 for r in d["rows"])
    assert d["meta"]["command"].startswith("comfyui-tempo bench adaptive --skip-errors")
    with pytest.raises(SystemExit, match="--grid-samplers: expected samplers with one evaluation per step, got heun"):
        cli.main(["bench", "adaptive", "--skip-errors", "--grid-models", "testbed", "--grid-samplers", "euler,heun",
                  "--grid-schedulers", "karras", "--grid-steps", "8", "--classes", "1", "--quiet"])  # fmt: skip
