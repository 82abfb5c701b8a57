"""`comfyui-tempo bench adaptive --kappa-fit`: where the noisy samplers' candidate gets its scale, rerunnable.

The schedule planner's cost model (``samplers.skip_plan.skip_costs_fn``) knows a skip's error only up to a constant
kappa: the direction's linear-extrapolation error per unit of its distance factor |(t_b - t_i)(t_a - t_i)| (t = log
sigma). The default's choice does not depend on it; the candidate that adds the injected noise
(``mixed_costs_fn``) does, since it adds two costs in the latent's units. This command measures kappa on full runs
of the deterministic samplers behind the two noisy ones (dpmpp_2m for dpmpp_2m_sde, euler for euler_ancestral): for
each step i >= 2, |d_i - the linear extrapolation of d_i-1, d_i-2 to t_i| (root mean square over the batch, d = (x -
x0) / sigma) over |(t_i-1 - t_i)(t_i-2 - t_i)|, and the median over the steps. Per model, it fits kappa = scale *
h ** power to the runs, h the run's median step in log sigma, and prints it beside the pack's constants
(``KAPPA_SCALE``, ``KAPPA_POWER``, chosen from the design models' fits).

    comfyui-tempo bench adaptive --kappa-fit --grid-models testbed,testbed_hr,vpred,shapes_eps,shapes_v \\
        --classes 6 --seeds 3 --json out/kappa_fit.json
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..samplers import kdiff
from ..samplers.skip_plan import KAPPA_POWER, KAPPA_SCALE, extrapolation_scale, median_log_step
from .adaptive_grid import Cell, build_problem
from .common import number_list, print_table, write_json

#: the deterministic sampler behind each noisy one the candidate covers
COUNTERPARTS = {"dpmpp_2m_sde": "dpmpp_2m", "euler_ancestral": "euler"}


def run_kappa(cell: Cell, sigmas: torch.Tensor) -> float:
    """kappa of one full run of ``cell``'s sampler on ``sigmas`` (one evaluation per step: euler, dpmpp_2m)."""
    seen: list[tuple[float, torch.Tensor]] = []

    def recording(x, sigma, **extra):
        x0 = cell.p.denoiser(x, sigma, **extra)
        s = sigma.reshape(-1)[0] if torch.is_tensor(sigma) else torch.tensor(float(sigma))
        seen.append((float(s), ((x - x0) / s).detach()))
        return x0

    x = cell.p.noise * sigmas[0]
    kdiff.SAMPLERS[cell.sampler](recording, x, sigmas, extra_args={"cond": cell.p.cond})
    ratios = []
    for i in range(2, len(seen)):
        (s2, d2), (s1, d1), (s0, d0) = seen[i - 2], seen[i - 1], seen[i]
        t2, t1, t0 = math.log(s2), math.log(s1), math.log(s0)
        extrapolated = d1 + (d1 - d2) * (t0 - t1) / (t1 - t2)
        err = float((d0 - extrapolated).pow(2).mean().sqrt())
        ratios.append(err / abs((t1 - t0) * (t2 - t0)))
    ratios.sort()
    return ratios[len(ratios) // 2] if ratios else float("nan")


def fit_power_law(h: list[float], kappa: list[float]) -> dict:
    """Least squares of log kappa on log h: scale, power and the rms of the residual (in log)."""
    x, y = np.log(np.asarray(h, dtype=np.float64)), np.log(np.asarray(kappa, dtype=np.float64))
    a = np.vstack([x, np.ones_like(x)]).T
    (power, log_scale), *_ = np.linalg.lstsq(a, y, rcond=None)
    rms = float(np.sqrt(np.mean((a @ np.array([power, log_scale]) - y) ** 2)))
    return {"scale": float(math.exp(log_scale)), "power": float(power), "rms_log": rms}


def kappa_fit_main(args) -> int:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda *a: None) if args.quiet else print
    models = args.grid_models.split(",")
    schedulers = args.grid_schedulers.split(",")
    sweep = number_list(args.grid_step_sweep, "--grid-step-sweep", int, 3, 1000) if args.grid_step_sweep.strip() else []
    steps = sorted({args.grid_steps, *sweep})
    classes, seeds = args.classes or 6, args.seeds or 3
    t0 = time.perf_counter()
    rows = []
    for model in models:
        for sched in schedulers:
            problem = build_problem(model, sched, args.cfg, classes, seeds)
            for n in steps:
                for noisy, sampler in COUNTERPARTS.items():
                    cell = Cell(problem, model, sampler, sched, n, args.cfg)
                    if cell.flow:
                        raise SystemExit(f"--grid-models: {model} is a flow model; kappa is for eps / v models")
                    sig = cell.sigmas(n)
                    rows.append(
                        {
                            "model": model,
                            "sampler": sampler,
                            "for": noisy,
                            "scheduler": sched,
                            "steps": n,
                            "median_step": median_log_step(sig),
                            "kappa": run_kappa(cell, sig),
                            "kappa_pack": extrapolation_scale(sig),
                        }
                    )
            log(f"  {model} {sched}: {len(rows)} runs")
    fits = [
        {"model": m, **fit_power_law(*zip(*[(r["median_step"], r["kappa"]) for r in rows if r["model"] == m]))}
        for m in models
    ]
    fits.append(
        {
            "model": "pack (KAPPA_SCALE, KAPPA_POWER)",
            "scale": KAPPA_SCALE,
            "power": KAPPA_POWER,
            "rms_log": float("nan"),
        }
    )
    if not args.quiet:
        print_table(rows, ["model", "sampler", "scheduler", "steps", "median_step", "kappa", "kappa_pack"])
        print("\nkappa = scale * (median log-sigma step) ** power, fitted per model over its runs:\n")
        print_table(fits, ["model", "scale", "power", "rms_log"])
    if args.json:
        write_json(
            args.json,
            {
                "meta": {
                    "classes": classes,
                    "seeds": seeds,
                    "cfg": args.cfg,
                    "steps": steps,
                    "wall_s": time.perf_counter() - t0,
                },
                "rows": rows,
                "fits": fits,
            },
        )
        log(f"wrote {args.json}")
    return 0
