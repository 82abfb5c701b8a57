"""`comfyui-tempo bench adaptive --skip-errors`: what one skip costs at each step of a run, next to what the planner
and a run can know of it.

The default plans its skips from the schedule alone (``samplers.skip_plan``): a skip's cost is modelled as the
step's travel times the linear extrapolation's distance factor, one unknown constant apart. A rule that reads the model
while it runs would replace that constant by what it measures at computed steps: how far the model's direction
moved from its linear extrapolation. This command measures, on one full run per cell (``--grid-models``,
``--grid-samplers``, ``--grid-schedulers``, ``--grid-steps``), for every step i >= 2:

* ``skip_db``: the decoded PSNR of the run that skips step i alone (the default's reuse, extrapolation auto: linear
  in the planner's time variable for these samplers) against the full run, mean over the images: what one skip there
  costs in the output;
* ``extrap_err``: |d_i - the linear extrapolation of d_i-1, d_i-2 to t_i| (root mean square, d = (x - x0) / sigma,
  t the planner's time variable: sigma for flow models, log sigma for eps / v): what a run measures at step i when
  it computes it;
* ``modelled``: the planner's modelled cost of that skip (``skip_costs_fn`` at STEP_WEIGHT, no run penalty);
* ``travel_err``: the step's travel times ``extrap_err``: the modelled cost with the constant replaced by the
  measured error (what a rule reading the model could know at best, if it had the step computed).

Per cell it prints the skips' cost by third of the run (mean ``skip_db`` over the steps of each third), the measured
over the modelled cost by third (mean of log10(``travel_err`` / ``modelled``): the factor a rule reading the model would
put on the planner's cost; the planner takes it as one constant), where the default (target 2x) puts its skips (skips outside steps 2..N-1 are not counted), and how well each signal orders the steps (Spearman rank correlation of
``modelled`` and of ``travel_err`` with the skip's error, 10^(-skip_db / 20)). Samplers with one evaluation per
step only (a skipped step there is one evaluation saved).

    comfyui-tempo bench adaptive --skip-errors --grid-models flow,digits_flow,sd3_flow --grid-samplers euler \\
        --grid-schedulers normal,beta,karras --classes 6 --json out/skip_errors.json
"""

from __future__ import annotations

import math
import time

import torch

from ..samplers import kdiff, support
from ..samplers.adaptive_config import AdaptiveConfig
from ..samplers.skip_plan import STEP_WEIGHT, skip_costs_fn, step_travel
from .adaptive_grid import Cell, build_problem, check_taesd_models
from .common import print_table, psnr_db, write_json

STEP_COLUMNS = ["model", "scheduler", "sampler", "step", "sigma", "skip_db", "extrap_err", "modelled", "travel_err"]
CELL_COLUMNS = [
    "model",
    "scheduler",
    "sampler",
    "steps",
    "first_db",
    "middle_db",
    "last_db",
    "cheapest",
    "ratio_first",
    "ratio_middle",
    "ratio_last",
    "default_skips",
    "rho_modelled",
    "rho_travel_err",
]
THIRDS = ("first", "middle", "last")


def spearman(a, b) -> float:
    """Spearman's rank correlation of two equal-length sequences (average ranks for ties); nan below 3 values."""
    if len(a) < 3:
        return float("nan")

    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2.0
            i = j + 1
        return r

    ra, rb = ranks(list(a)), ranks(list(b))
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else float("nan")


def third_of(step: int, first: int, last: int) -> int:
    """0, 1 or 2: the third of the steps first..last (inclusive) that ``step`` falls in."""
    span = last - first + 1
    return min(2, (step - first) * 3 // span)


def step_rows(cell: Cell) -> list[dict]:
    """One row per step i >= 2 of the cell's full run (the module docstring's columns)."""
    sig = cell.sigmas(cell.steps)
    n = len(sig) - 1
    seen: list[tuple[float, torch.Tensor]] = []
    denoiser = cell.p.denoiser

    def recording(x, sigma, **extra):
        x0 = denoiser(x, sigma, **extra)
        s = float(sigma.reshape(-1)[0]) if torch.is_tensor(sigma) else float(sigma)
        seen.append((s, ((x - x0) / s).detach()))
        return x0

    cell.p.denoiser = recording
    try:
        ref, *_ = cell.run(None)
    finally:
        cell.p.denoiser = denoiser
    if len(seen) != n:
        raise SystemExit(
            f"--grid-samplers: {cell.sampler} evaluates the model {len(seen)} times in {n} steps; --skip-errors "
            "takes samplers with one evaluation per step (euler, dpmpp_2m, lms, uni_pc, ...)"
        )
    ref_img = cell.p.decode(ref)
    cost = skip_costs_fn(sig, cell.flow, STEP_WEIGHT)
    travel = step_travel(sig, cell.flow)  # the planner's own travel factor per step

    def t(s: float) -> float:
        return s if cell.flow else math.log(s)

    rows = []
    for i in range(2, n):
        (s2, d2), (s1, d1), (s0, d0) = seen[i - 2], seen[i - 1], seen[i]
        extrapolated = d1 + (d1 - d2) * (t(s0) - t(s1)) / (t(s1) - t(s2))
        err = float((d0 - extrapolated).pow(2).mean().sqrt())
        path = torch.ones(n, dtype=torch.bool)
        path[i] = False
        out, *_ = cell.run(AdaptiveConfig(mode="path", path=path))
        rows.append(
            {
                "model": cell.model,
                "scheduler": cell.scheduler,
                "sampler": cell.sampler,
                "steps": n,
                "step": i,
                "sigma": s0,
                "skip_db": float(psnr_db(cell.p.decode(out), ref_img).mean()),
                "extrap_err": err,
                "modelled": cost(i, i - 1, i - 2),
                "travel_err": travel[i] * err,
            }
        )
    return rows


def cell_summary(rows: list[dict], cell: Cell) -> dict:
    """The cell's line: mean skip_db per third, the cheapest third, the default's skips per third (first/middle/last),
    and the rank correlations of the two signals with the skip's error."""
    steps = [r["step"] for r in rows]
    first, last = min(steps), max(steps)
    by_third: list[list[float]] = [[], [], []]
    ratio: list[list[float]] = [[], [], []]  # log10(travel_err / modelled): the measured over the modelled cost
    for r in rows:
        k = third_of(r["step"], first, last)
        by_third[k].append(r["skip_db"])
        if r["travel_err"] > 0 and r["modelled"] > 0:
            ratio[k].append(math.log10(r["travel_err"] / r["modelled"]))
    means = [sum(v) / len(v) if v else float("nan") for v in by_third]
    ratios = [sum(v) / len(v) if v else float("nan") for v in ratio]
    _, _, _, rep = cell.run(AdaptiveConfig())  # the default (target 2x): where it skips
    path = rep.path_string()
    placed = [0, 0, 0]
    for i, c in enumerate(path):
        if c != "C" and first <= i <= last:
            placed[third_of(i, first, last)] += 1
    skip_err = [10 ** (-r["skip_db"] / 20.0) for r in rows]
    return {
        "model": cell.model,
        "scheduler": cell.scheduler,
        "sampler": cell.sampler,
        "steps": cell.steps,
        **{f"{name}_db": m for name, m in zip(THIRDS, means)},
        "cheapest": THIRDS[max(range(3), key=lambda k: means[k] if math.isfinite(means[k]) else -math.inf)],
        **{f"ratio_{name}": m for name, m in zip(THIRDS, ratios)},
        "default_skips": "/".join(str(v) for v in placed),
        "default_path": path,
        "rho_modelled": spearman([r["modelled"] for r in rows], skip_err),
        "rho_travel_err": spearman([r["travel_err"] for r in rows], skip_err),
    }


def skip_errors_main(args) -> int:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda *a: None) if args.quiet else print
    models = args.grid_models.split(",")
    check_taesd_models(models)
    samplers = args.grid_samplers.split(",")
    multi = [s for s in samplers if s not in kdiff.SAMPLERS or support.lookup(s).family not in ("single", "multistep")]
    if multi:
        raise SystemExit(
            f"--grid-samplers: expected samplers with one evaluation per step, got {', '.join(multi)} (more than one "
            "a step, or not a sampler the pack has): for instance euler, dpmpp_2m, lms, uni_pc"
        )
    classes, seeds = args.classes or 6, args.seeds or 1
    t0 = time.perf_counter()
    rows, cells = [], []
    for model in models:
        for sched in args.grid_schedulers.split(","):
            problem = build_problem(model, sched, args.cfg, classes, seeds)
            for sampler in samplers:
                cell = Cell(problem, model, sampler, sched, args.grid_steps, args.cfg)
                got = step_rows(cell)
                rows.extend(got)
                cells.append(cell_summary(got, cell))
                log(f"  {model} {sched} {sampler}: {len(got)} steps")
    if not args.quiet:
        small = ("sigma", "extrap_err", "modelled", "travel_err")  # spans decades: three significant digits
        print_table([{k: f"{v:.3g}" if k in small else v for k, v in r.items()} for r in rows], STEP_COLUMNS)
        print(
            "\nper cell: mean skip_db by third of the run (higher: cheaper to skip there), log10 of the measured over the"
            " modelled cost by third, the default's skips per third (target 2x), and the rank correlation of each signal"
            " with a skip's error:\n"
        )
        print_table(cells, CELL_COLUMNS)
    if args.json:
        write_json(
            args.json,
            {
                "meta": {
                    "classes": classes,
                    "seeds": seeds,
                    "cfg": args.cfg,
                    "steps": args.grid_steps,
                    "wall_s": time.perf_counter() - t0,
                    "command": "comfyui-tempo bench adaptive " + " ".join(getattr(args, "argv", [])),
                },
                "rows": rows,
                "cells": cells,
            },
        )
        log(f"wrote {args.json}")
    return 0
