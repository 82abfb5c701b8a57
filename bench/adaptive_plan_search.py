"""`comfyui-tempo bench adaptive --plan-search`: how the schedule planner's settings were chosen, rerunnable.

For every (model, sampler, scheduler) of the grid at ``--grid-steps`` (30) and CFG 5, the skip path the planner
gives with isolated skips only (max_skip 1) and with runs of up to 4 skips at each penalty of ``--penalties`` and
each step-length weight of ``--step-weights`` (0: the cost model without the step-length factor, as the earlier
planners), each run with the default ``auto`` extrapolation (and ``first version``: isolated skips with the first
version's extrapolation, log-linear for one-evaluation deterministic samplers on flow models too), scored like the
grid (decoded PSNR against the full run) against fewer steps and uniform every-other-step skipping with the paper's
reuse. Prints, per variant, the cells not above both baselines, the mean margin over the better one and the worst;
then the plans: per model, scheduler and step count (20 / 30 / 50), the modelled cost of the isolated plan over the
best plan with runs, and the plan at the controller's RUN_PENALTY and STEP_WEIGHT; then the planning time by step
count. ``--force-last`` adds, for each count k > 0, the variants with the last k steps always run.

    comfyui-tempo bench adaptive --plan-search --grid-models testbed,testbed_hr,flow --classes 6 --json out/plan_search.json
"""

from __future__ import annotations

import platform
import time

import torch

from ..samplers.adaptive import AdaptiveConfig, target_skips
from ..samplers.skip_plan import RUN_PENALTY, STEP_WEIGHT, default_plan, plan_skips
from .adaptive_grid import Cell, build_problem, fewer_steps
from .common import number_list, print_table, psnr_db, write_json


def _path_string(path: torch.Tensor) -> str:
    return "".join("C" if c else "s" for c in path.tolist())


def _variants(penalties, force_last=(0,), step_weights=(0.0,)) -> list[tuple[str, int, float, int, float]]:
    """(name, max_skip, run penalty, protected last steps, step weight) of each scored variant."""
    out = [("first version", 1, 1.0, 0, 0.0), ("isolated", 1, 1.0, 0, 0.0)]
    for k in force_last:
        for w in step_weights:
            tail = (f", step weight {w:g}" if w else "") + (f", last {k} run" if k else "")
            out += [(f"penalty {p:g}" + tail, 4, p, k, w) for p in penalties]
    return out


def score_variants(
    models, samplers, schedulers, steps: int, classes: int, penalties, log=print, force_last=(0,), step_weights=(0.0,)
) -> list[dict]:
    rows = []
    for model in models:
        for sched in schedulers:
            problem = build_problem(model, sched, 5.0, classes, 1)
            for sampler in samplers:
                cell = Cell(problem, model, sampler, sched, steps, 5.0)
                full, *_ = cell.run(None)
                ref = problem.decode(full)

                def score(out):
                    return float(psnr_db(problem.decode(out), ref).mean())

                sig = [float(s) for s in cell.sigmas(steps)]
                n = len(sig) - 1
                skips = target_skips(n, 2.0)
                out, *_ = cell.run(None, fewer_steps(cell, n - skips))  # as the grid asks for fewer steps
                fewer = score(out)
                every_other = torch.zeros(n, dtype=torch.bool)
                every_other[::2] = True
                out, *_ = cell.run(AdaptiveConfig(mode="path", path=every_other, extrapolation="hold"))
                uniform = score(out)
                # the first version: isolated skips, and auto was log-linear on flow too (in log s / (1 - s))
                one_eval = not (cell.stochastic or cell.entry.endpoint_corrector)
                first_extrap = "log_linear" if one_eval else "linear"
                for name, max_skip, penalty, keep, weight in _variants(penalties, force_last, step_weights):
                    path, _ = plan_skips(
                        sig,
                        skips,
                        max_skip=max_skip,
                        last=n - keep,
                        flow=cell.flow,
                        run_penalty=penalty,
                        step_weight=weight,
                    )
                    extrap = first_extrap if name == "first version" else "auto"
                    out, *_ = cell.run(AdaptiveConfig(mode="path", path=path, extrapolation=extrap))
                    db = score(out)
                    rows.append(
                        {
                            "model": model,
                            "sampler": sampler,
                            "scheduler": sched,
                            "variant": name,
                            "psnr_db": db,
                            "margin": db - max(fewer, uniform),
                            "path": _path_string(path),
                        }
                    )
            if log is not None:
                log(f"  {model} {sched}: {len(samplers)} samplers scored")
    return rows


def summarize(rows: list[dict], penalties, force_last=(0,), step_weights=(0.0,)) -> list[dict]:
    out = []
    for name, *_ in _variants(penalties, force_last, step_weights):
        m = [r["margin"] for r in rows if r["variant"] == name]
        out.append(
            {
                "variant": name,
                "cells": len(m),
                "failing": sum(1 for v in m if v <= 0),
                "mean_margin_db": sum(m) / len(m),
                "worst_db": min(m),
            }
        )
    return out


def plan_table(models, schedulers, step_counts=(20, 30, 50)) -> list[dict]:
    rows = []
    for model in models:
        for sched in schedulers:
            problem = build_problem(model, sched, 5.0, 1, 1)
            for steps in step_counts:
                cell = Cell(problem, model, "euler", sched, steps, 5.0)
                sig = [float(s) for s in cell.sigmas(steps)]
                n = len(sig) - 1
                k = target_skips(n, 2.0)
                _, iso = plan_skips(sig, k, max_skip=1, flow=cell.flow, step_weight=STEP_WEIGHT)
                _, free = plan_skips(sig, k, max_skip=4, flow=cell.flow, step_weight=STEP_WEIGHT)
                path = default_plan(sig, k, max_skip=4, flow=cell.flow)
                rows.append(
                    {
                        "model": model,
                        "scheduler": sched,
                        "steps": steps,
                        "isolated_over_runs": iso / free if free > 0 else float("inf"),
                        "plan": _path_string(path),
                    }
                )
    return rows


def planning_time(step_counts=(30, 50, 100, 200), repeats: int = 3) -> list[dict]:
    from ..samplers import schedules

    rows = []
    for steps in step_counts:
        sig = schedules.get_sigmas("karras", steps)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            plan_skips(sig, steps - steps // 2, max_skip=4, run_penalty=RUN_PENALTY, step_weight=STEP_WEIGHT)
            best = min(best, time.perf_counter() - t0)
        rows.append({"steps": steps, "plan_ms": 1000 * best})
    return rows


def plan_search_main(args) -> int:
    from .adaptive_grid import SAMPLERS, SCHEDULERS

    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m for m in args.grid_models.split(",") if m]
    samplers = [s for s in args.grid_samplers.split(",") if s] or SAMPLERS
    schedulers = [s for s in args.grid_schedulers.split(",") if s] or SCHEDULERS
    penalties = number_list(args.penalties, "--penalties", float, low=1)
    force_last = number_list(args.force_last, "--force-last", int, low=0, high=args.grid_steps - 1)
    step_weights = number_list(args.step_weights, "--step-weights", float, low=0)
    t0 = time.perf_counter()
    rows = score_variants(
        models,
        samplers,
        schedulers,
        args.grid_steps,
        args.classes or 6,
        penalties,
        log=None if args.quiet else print,
        force_last=force_last,
        step_weights=step_weights,
    )
    summary = summarize(rows, penalties, force_last, step_weights)
    print(
        f"\nvariants over {len(rows) // len(summary)} cells (margin: PSNR minus the better of fewer steps and uniform skipping):"
    )
    result = {"rows": rows, "summary": summary, "table": print_table(summary, list(summary[0]))}
    plans = plan_table(models, schedulers)
    print(
        f"\nplans at RUN_PENALTY {RUN_PENALTY:g}, STEP_WEIGHT {STEP_WEIGHT:g}, the final jump's step run (the "
        "controller's; isolated_over_runs: the isolated plan's modelled cost over the best with runs):"
    )
    result["plans"] = plans
    print_table(plans, list(plans[0]))
    timing = planning_time()
    print("\nplanning time (karras, 2x, max_skip 4, this machine):")
    result["planning_time"] = timing
    print_table(timing, list(timing[0]))
    result["meta"] = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "seconds": time.perf_counter() - t0,
        "command": "comfyui-tempo bench adaptive " + " ".join(getattr(args, "argv", [])),
    }
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
