"""The schedule planner (samplers.skip_plan): exact optimum of its cost model, constraints, flow sigmas."""

import itertools
import math

import pytest
import torch

from comfyui_tempo.samplers import schedules
from comfyui_tempo.samplers.skip_plan import plan_skips, shortest_runs, skip_costs_fn


def brute_force(sigmas, n_skips, max_skip, first, last, flow=False):
    """Every path with n_skips skips: the least summed cost (reference for the dynamic programme)."""
    n = len(sigmas) - 1
    cost = skip_costs_fn(sigmas, flow)
    best = (math.inf, None)
    for skipped in itertools.combinations(range(max(1, first), last), n_skips):
        path = [True] * n
        for i in skipped:
            path[i] = False
        runs = "".join("C" if c else "s" for c in path).split("C")
        if max(len(r) for r in runs) > max_skip:
            continue
        total, b, a = 0.0, 0, None
        for i in range(1, n):
            if path[i]:
                b, a = i, b
            else:
                total += cost(i, b, a)
        best = min(best, (total, tuple(path)))
    return best


@pytest.mark.parametrize("scheduler", ["karras", "normal"])
@pytest.mark.parametrize("n,n_skips,max_skip,first,last", [(10, 4, 2, 1, 10), (12, 7, 3, 2, 11), (11, 3, 1, 1, 11)])
def test_plan_is_the_exact_optimum(scheduler, n, n_skips, max_skip, first, last):
    sig = schedules.get_sigmas(scheduler, n)
    want_cost, want_path = brute_force(sig, n_skips, max_skip, first, last)
    path, got = plan_skips(sig, n_skips, max_skip=max_skip, first=first, last=last)
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


def test_shortest_runs_is_the_shortest_that_fits():
    for n in (7, 20, 33):
        sig = schedules.get_sigmas("karras", n)
        for k in range(1, n - 1):
            run = shortest_runs(n, k)
            path, _ = plan_skips(sig, k, max_skip=run)
            assert int((~path).sum()) == k, (n, k, run)
            if run > 1:
                shorter, _ = plan_skips(sig, k, max_skip=run - 1)
                assert int((~shorter).sum()) < k, (n, k, run)


def test_flow_sigmas_plan_on_the_equivalent_ve_sigmas():
    flow = schedules.flow_sigmas(12, shift=3.0)
    ve = torch.tensor([float(s) / (1 - float(s)) if s < 1 else 1e4 for s in flow])
    a, ca = plan_skips(flow, 5, max_skip=2, flow=True)
    b, cb = plan_skips(ve, 5, max_skip=2)
    assert torch.equal(a, b) and ca == pytest.approx(cb)


def test_late_skips_cost_more_on_normal_than_on_karras():
    """The cost model sees normal's large last log-sigma jumps (where the greedy paths keep the network)."""
    costs = {}
    for name in ("karras", "normal"):
        sig = schedules.get_sigmas(name, 20)
        cost = skip_costs_fn(sig)
        costs[name] = cost(18, 17, 16) / cost(10, 9, 8)
    assert costs["normal"] > 10 * costs["karras"]
