"""`comfyui-tempo bench adaptive`: AdaptiveDiffusion against the full run and its rivals.

Every row samples the same batch (classes x seeds) with the same noise; PSNR is measured on the
decoded images against the full run's decoded images (the paper's protocol: fidelity to the
original model). Rows at "matched NFE" take the NFE of the pack's default (`adaptive`).
"""

from __future__ import annotations

import math
import os
import platform
import time

import torch

from ..samplers import kdiff, support
from ..samplers.adaptive import AdaptiveConfig, CountingDenoiser, adaptive_sample
from ..samplers.schedules import t_to_sigma
from ..testbed.problems import Problem
from . import adaptive_grid
from .common import print_table, psnr_db, timed, write_json
from .greedy import greedy_skip_path
from .peers import EasyCacheNet

COLUMNS = [
    "sampler",
    "method",
    "nfe",
    "psnr_db",
    "wall_s",
    "speedup_wall",
    "nfe_ratio",
    "ctl_ms_step",
    "setting",
    "path",
]


def _sample(problem: Problem, sampler: str, steps: int, config: AdaptiveConfig | None = None, denoiser=None):
    sig = problem.sigmas(steps)
    x = problem.noise * sig[0]
    fn = kdiff.SAMPLERS[sampler]
    den = denoiser or problem.denoiser
    extra = {"cond": problem.cond}
    if config is None:
        counting = CountingDenoiser(den)
        out, wall = timed(fn, counting, x, sig, extra_args=extra)
        return out, None, wall, float(counting.nfe)
    (out, rep), wall = timed(
        adaptive_sample, fn, den, x, sig, config, extra_args=extra, **support.adaptive_kwargs(sampler)
    )
    return out, rep, wall, rep.nfe


def _percent_to_sigma(table: torch.Tensor, p: float) -> float:
    """ComfyUI's ModelSamplingDiscrete.percent_to_sigma."""
    if p <= 0:
        return 999999999.9
    if p >= 1:
        return 0.0
    return float(t_to_sigma(torch.tensor((1 - p) * (table.shape[0] - 1)), table))


def _easycache_run(problem: Problem, sampler: str, steps: int, threshold: float):
    holder = {}

    def wrap(net_call):
        holder["ec"] = EasyCacheNet(
            net_call,
            threshold,
            _percent_to_sigma(problem.sigma_table, 0.15),
            _percent_to_sigma(problem.sigma_table, 0.95),
        )
        return holder["ec"]

    den = problem.net_denoiser(wrap)
    sig = problem.sigmas(steps)
    out, wall = timed(kdiff.SAMPLERS[sampler], den, problem.noise * sig[0], sig, extra_args={"cond": problem.cond})
    return out, wall, float(holder["ec"].calls)


def _bisect(run_at, target_nfe: float, lo: float, hi: float, iters: int = 14, increasing_skips: bool = True):
    """Threshold whose NFE is closest to target_nfe (NFE falls as the threshold rises)."""
    best = None
    for _ in range(iters):
        mid = (lo + hi) / 2 if hi / max(lo, 1e-12) < 4 else math.sqrt(max(lo, 1e-6) * hi)
        res = run_at(mid)
        nfe = res[-1]
        if best is None or abs(nfe - target_nfe) < abs(best[1][-1] - target_nfe):
            best = (mid, res)
        if abs(nfe - target_nfe) < 0.5:
            break
        if (nfe > target_nfe) == increasing_skips:
            lo = mid
        else:
            hi = mid
    return best


def run(problem: Problem, samplers=("euler", "dpmpp_2m"), steps: int = 50, greedy_conds: int = 2, log=print) -> dict:
    rows = []
    for sampler in samplers:
        log(f"[{sampler}] full run ({steps} steps)")
        full, _, full_wall, full_nfe = _sample(problem, sampler, steps)
        ref_img = problem.decode(full)

        def row(method, out, wall, nfe, setting="", report=None, **more):
            r = {
                "sampler": sampler,
                "method": method,
                "steps": steps,
                "nfe": float(nfe),
                "psnr_db": float(psnr_db(problem.decode(out), ref_img).mean()) if method != "full" else float("inf"),
                "wall_s": wall,
                "speedup_wall": full_wall / wall,
                "nfe_ratio": full_nfe / nfe if nfe else float("nan"),
                "setting": setting,
                "path": report.path_string() if report is not None else "",
            }
            if report is not None:
                r["controller_s_per_step"] = report.controller_seconds / max(1, report.steps)
                r["ctl_ms_step"] = 1000 * r["controller_s_per_step"]
                r["model_calls"] = report.model_calls
            r.update(more)
            rows.append(r)
            log(f"  {method:24s} nfe {r['nfe']:6.2f}  psnr {r['psnr_db']:6.2f} dB  wall {wall:6.2f}s  {setting}")
            return r

        row("full", full, full_wall, full_nfe, f"{steps} steps")
        default = AdaptiveConfig()
        out, rep, wall, nfe = _sample(problem, sampler, steps, default)
        main = row("adaptive", out, wall, nfe, "target_speedup 2.0, planner schedule (pack default)", rep)
        target = main["nfe"]

        variants = [
            ("adaptive_paper", AdaptiveConfig.paper(0.01, 4), "paper rule, threshold 0.01, max_skip 4"),
            ("adaptive_threshold", AdaptiveConfig(mode="threshold", threshold=0.01), "threshold 0.01 + improvements"),
            ("adaptive_hold", AdaptiveConfig(extrapolation="hold"), "default but hold (reuse as the paper)"),
            ("adaptive_quadratic", AdaptiveConfig(extrapolation="quadratic"), "default but quadratic extrapolation"),
            ("adaptive_log_linear", AdaptiveConfig(extrapolation="log_linear"), "default but linear in log sigma"),
            (
                "adaptive_pace",
                AdaptiveConfig(planner="pace", force_last=1),
                "planner pace, late_bias 0.25, force_last 1 (the earlier default)",
            ),
            ("adaptive_pace_even", AdaptiveConfig(planner="pace", tilt=0.0, force_last=1), "planner pace, late_bias 0"),
            (
                "adaptive_pace_placed_reuse",
                AdaptiveConfig(planner="pace", placement=0.5, estimator="reuse_error", force_last=1),
                "planner pace + placement 0.5 by the reuse-error estimator",
            ),
            ("adaptive_force_last", AdaptiveConfig(force_last=1), "default but the last step always runs"),
        ]
        for name, cfg, setting in variants:
            out, rep, wall, nfe = _sample(problem, sampler, steps, cfg)
            row(name, out, wall, nfe, setting, rep)

        # the faithful rule at the default's NFE (its threshold bisected)
        best = _bisect(lambda t: _sample(problem, sampler, steps, AdaptiveConfig.paper(t, 4)), target, 1e-4, 5.0)
        thr, (out, rep, wall, nfe) = best
        row("adaptive_paper_matched", out, wall, nfe, f"paper rule, threshold {thr:.4g}", rep)

        n_fewer = max(1, int(round(target / max(1.0, full_nfe / steps))))
        out, _, wall, nfe = _sample(problem, sampler, n_fewer)
        row("fewer_steps", out, wall, nfe, f"{n_fewer} steps")

        path = torch.zeros(steps, dtype=torch.bool)
        path[::2] = True
        out, rep, wall, nfe = _sample(
            problem, sampler, steps, AdaptiveConfig(mode="path", path=path, extrapolation="hold")
        )
        row("uniform_skip", out, wall, nfe, "network on every other step, reuse held", rep)

        if problem.net_denoiser is not None:
            best = _bisect(lambda t: _easycache_run(problem, sampler, steps, t), target, 1e-3, 3.0)
            thr, (out, wall, nfe) = best
            row("easycache", out, wall, nfe, f"EasyCache rule (ComfyUI 0.3.64), reuse_threshold {thr:.4g}")

        if greedy_conds > 0:
            rows.extend(_greedy_rows(problem, sampler, steps, default, greedy_conds, log))
    return {"rows": rows}


def _greedy_rows(problem: Problem, sampler: str, steps: int, config: AdaptiveConfig, n_conds: int, log) -> list[dict]:
    """Greedy optimal path at the default's skip count, per conditioning, against the estimator."""
    out_rows = []
    gaps, greedy_psnr, est_psnr = [], [], []
    t0 = time.perf_counter()
    for b in range(min(n_conds, problem.noise.shape[0])):
        one = problem.subset(slice(b, b + 1))
        full, _, _, _ = _sample(one, sampler, steps)
        ref = one.decode(full)
        out, rep, _, nfe = _sample(one, sampler, steps, config)
        est = float(psnr_db(one.decode(out), ref).mean())
        n_skips = sum(1 for r in rep.records if not r.mask[0])
        sig = one.sigmas(steps)

        def run_paths(paths):
            n = paths.shape[0]
            x = one.noise.repeat(n, *([1] * (one.noise.ndim - 1))) * sig[0]
            res, _ = adaptive_sample(
                kdiff.SAMPLERS[sampler],
                one.denoiser,
                x,
                sig,
                AdaptiveConfig(mode="path", path=paths, extrapolation=config.extrapolation),
                extra_args={"cond": one.cond.repeat(n)},
                **support.adaptive_kwargs(sampler),
            )
            return res

        def err(res):
            return ((one.decode(res) - ref) ** 2).flatten(1).mean(1)

        g = greedy_skip_path(run_paths, steps, n_skips, err)
        g_psnr = float(-10 * math.log10(max(g.errors[-1], 1e-12))) if g.errors else float("inf")
        gaps.append(g_psnr - est)
        greedy_psnr.append(g_psnr)
        est_psnr.append(est)
        log(f"  greedy cond {b}: {n_skips} skips, greedy {g_psnr:.2f} dB vs estimator {est:.2f} dB; {g.path_string()}")
        out_rows.append(
            {
                "sampler": sampler,
                "method": "greedy_optimal",
                "steps": steps,
                "nfe": float(steps - n_skips),
                "psnr_db": g_psnr,
                "estimator_psnr_db": est,
                "gap_db": g_psnr - est,
                "cond_index": b,
                "setting": f"greedy, {n_skips} skips, reuse {config.extrapolation}",
                "path": g.path_string(),
                "estimator_path": rep.path_string(),
                "wall_s": float("nan"),
            }
        )
    log(
        f"  greedy: mean gap {sum(gaps) / len(gaps):.2f} dB over {len(gaps)} conditionings "
        f"({time.perf_counter() - t0:.0f}s)"
    )
    return out_rows


def comfyui_rows(
    problem: Problem, tree: str, python: str | None, samplers, steps: int, cfg: float, log=print
) -> list[dict]:
    """Rows measured inside a real ComfyUI (its EasyCache and LazyCache nodes, the pack's nodes)."""
    import json
    import os
    import subprocess
    import tempfile

    from safetensors.torch import save_file

    from .adaptive_comfy_grid import comfyui_python

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    python = python or comfyui_python(tree)
    with tempfile.TemporaryDirectory(prefix="tempo-bench-") as tmp:
        tensors = os.path.join(tmp, "batch.safetensors")
        save_file({"noise": problem.noise.contiguous(), "cond": problem.cond.contiguous()}, tensors)
        job = {
            "repo": repo,
            "tensors": tensors,
            "samplers": list(samplers),
            "steps": steps,
            "cfg": cfg,
            "scheduler": problem.scheduler,
            "threads": torch.get_num_threads(),
        }
        job_path, out_path = os.path.join(tmp, "job.json"), os.path.join(tmp, "out.json")
        json.dump(job, open(job_path, "w"))
        log(f"[comfyui] running the ComfyUI rows under {python} in {tree}")
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        proc = subprocess.run(
            [python, os.path.join(repo, "harness", "host_bench.py"), job_path, out_path],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not os.path.exists(out_path):
            raise RuntimeError(f"the ComfyUI rows failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        rows = json.load(open(out_path))["rows"]
    for r in rows:
        r["host"] = "comfyui"
        log(f"  {r['sampler']:10s} {r['method']:24s} nfe {r['nfe']:6.2f}  psnr {r['psnr_db']:6.2f} dB  {r['setting']}")
    return rows


def summarize(result: dict) -> list[dict]:
    """One line per sampler and method: means over the greedy conditionings where there are several."""
    merged: dict[tuple, dict] = {}
    for r in result["rows"]:
        key = (r["sampler"], r["method"])
        if key not in merged:
            merged[key] = dict(r)
            merged[key]["_n"] = 1
        else:
            m = merged[key]
            n = m["_n"]
            for k in ("psnr_db", "nfe", "estimator_psnr_db", "gap_db"):
                if k in r:
                    m[k] = (m[k] * n + r[k]) / (n + 1)
            m["_n"] = n + 1
    out = []
    for m in merged.values():
        m.pop("_n")
        if m["method"] == "greedy_optimal":
            m["path"] = f"gap {m['gap_db']:+.2f} dB vs estimator {m['estimator_psnr_db']:.2f}"
        out.append(m)
    return out


def add_parser(bench_sub) -> None:
    p = bench_sub.add_parser("adaptive", help="AdaptiveDiffusion against the full run, fewer steps, EasyCache, ...")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--quick", action="store_true", help="a small, fast configuration (used by the tests)")
    p.add_argument("--samplers", default="euler,dpmpp_2m")
    p.add_argument("--steps", type=int, default=0, help="default 50 (20 with --quick)")
    p.add_argument("--classes", type=int, default=0, help="default 10 (4 with --quick)")
    p.add_argument("--seeds", type=int, default=0, help="seeds per class; default 2 (1 with --quick)")
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--scheduler", default="karras", choices=["karras", "normal"])
    p.add_argument(
        "--greedy", type=int, default=None, help="conditionings for the greedy search (default 2; 0 with --quick)"
    )
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--comfyui",
        default=None,
        help="a ComfyUI tree: adds rows measured inside it (EasyCache, LazyCache, the pack's nodes); default $TEMPO_COMFYUI",
    )
    p.add_argument("--quiet", action="store_true")
    adaptive_grid.add_arguments(p)
    p.add_argument(
        "--comfyui-grid",
        action="store_true",
        help="the grid's methods (full, adaptive, fewer_steps, uniform_skip) inside the ComfyUI tree of --comfyui, with "
        "its own samplers, on --grid-models x --comfyui-samplers x --grid-schedulers at --grid-steps (with --grid-respace "
        "also adaptive_skip and adaptive_respaced)",
    )
    p.add_argument(
        "--comfyui-samplers",
        default="",
        help="with --comfyui-grid: ComfyUI samplers (default: the served ones with no plain-PyTorch copy, e.g. "
        "dpmpp_3m_sde, er_sde, deis, ipndm, res_multistep, sa_solver, seeds_2; the CFG++ ones, e.g. euler_cfg_pp, "
        "only when named)",
    )
    p.add_argument(
        "--comfyui-reuse-sweep",
        default="",
        help="with --comfyui-grid: also run the default with the sampler's reuse rule replaced by each of none, "
        "hold_low_noise, hold_below_sigma, hold_long_gap, hold_always (adaptive_rule_NAME); a table per sampler",
    )
    p.add_argument(
        "--comfyui-respace-sweep",
        default="",
        help="with --comfyui-grid: also run the default with the sampler's re-spacing rule replaced by each of none, "
        "final_jump, min_steps, even, chunks, chunks_whole, chunks_long_first, chunks_long_last (adaptive_respace_NAME); "
        "a table per sampler",
    )
    p.add_argument(
        "--comfyui-post-cfg-sweep",
        default="",
        help="with --comfyui-grid: also run each CFG++ sampler's default with its reuse of the unguided prediction "
        "replaced by each of same_rule, held_guidance (adaptive_postcfg_NAME); a table per CFG++ sampler",
    )
    p.add_argument("--overhead", action="store_true", help="the controller's cost per step (SD1.5 / SDXL latents)")
    p.add_argument(
        "--unet-timing",
        action="store_true",
        help="wall speed-up and controller cost next to SD1.5 / SDXL-size UNets (random weights; needs a GPU)",
    )
    p.add_argument("--unets", default="sd15,sdxl", help="with --unet-timing: sd15, sdxl, tiny (a CPU smoke test)")
    p.add_argument("--batches", default="1,4", help="with --unet-timing: batch sizes")
    p.add_argument(
        "--plan-search",
        action="store_true",
        help="how the planner's run penalty was chosen: penalty variants scored on the grid's cells (--grid-models)",
    )
    p.add_argument(
        "--kappa-fit",
        action="store_true",
        help="the scale of the noisy samplers' candidate: extrapolation errors of full runs, fitted per model "
        "(--grid-models, --grid-schedulers, --grid-steps and --grid-step-sweep)",
    )
    p.add_argument(
        "--skip-errors",
        action="store_true",
        help="what one skip costs at each step of a full run, next to the planner's modelled cost and the direction's "
        "measured extrapolation error (--grid-models, --grid-samplers with one evaluation per step, --grid-schedulers, "
        "--grid-steps)",
    )
    p.add_argument("--penalties", default="1,3,10,30", help="with --plan-search: run penalties to score")
    p.add_argument(
        "--force-last",
        default="0",
        help="with --plan-search: also score the penalties with the last k steps always run, for each k listed",
    )
    p.add_argument(
        "--step-weights",
        default="0,1",
        help="with --plan-search: step-length factor exponents to score each penalty with (0: without the factor)",
    )


def main(args) -> int:
    from ..testbed import problems

    if args.grid:
        return adaptive_grid.grid_main(args)
    if args.comfyui_grid:
        from .adaptive_comfy_grid import comfy_grid_main

        return comfy_grid_main(args)
    if args.overhead:
        from .adaptive_overhead import overhead_main

        return overhead_main(args)
    if args.plan_search:
        from .adaptive_plan_search import plan_search_main

        return plan_search_main(args)
    if args.kappa_fit:
        from .adaptive_kappa import kappa_fit_main

        return kappa_fit_main(args)
    if args.skip_errors:
        from .adaptive_skip_errors import skip_errors_main

        return skip_errors_main(args)
    if args.unet_timing:
        from .adaptive_unet_timing import unet_timing_main

        return unet_timing_main(args)

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    problem = problems.trained_problem(
        classes=args.classes or (4 if quick else 10),
        seeds=args.seeds or (1 if quick else 2),
        cfg=args.cfg,
        scheduler=args.scheduler,
    )
    t0 = time.perf_counter()
    result = run(
        problem,
        samplers=tuple(args.samplers.split(",")),
        steps=args.steps or (20 if quick else 50),
        greedy_conds=args.greedy if args.greedy is not None else (0 if quick else 2),
        log=(lambda *a: None) if args.quiet else print,
    )
    tree = args.comfyui or os.environ.get("TEMPO_COMFYUI")
    if tree:
        result["rows"].extend(
            comfyui_rows(
                problem,
                tree,
                os.environ.get("TEMPO_COMFYUI_PYTHON"),
                tuple(args.samplers.split(",")),
                args.steps or (20 if quick else 50),
                args.cfg,
            )
        )
    result["meta"] = {
        "problem": problem.name,
        "batch": int(problem.noise.shape[0]),
        "cfg": args.cfg,
        "scheduler": args.scheduler,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "seconds": time.perf_counter() - t0,
        "command": "comfyui-tempo bench adaptive " + " ".join(args.argv),
    }
    print()
    table = print_table(summarize(result), COLUMNS)
    result["table"] = table
    if args.json:
        write_json(args.json, result)
        print(f"\nwrote {args.json}")
    return 0
