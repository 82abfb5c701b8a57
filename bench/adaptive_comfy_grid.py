"""`comfyui-tempo bench adaptive --comfyui-grid`: the generalisation grid's methods inside a real ComfyUI.

For ComfyUI's samplers that the pack serves but has no plain-PyTorch copy of (``samplers/kdiff.py``): dpmpp_3m_sde,
er_sde, sa_solver, res_multistep, deis, ipndm, seeds_2, ... The grid (``bench/adaptive_grid.py``) can only run the
plain-PyTorch ones; this runs the same four methods (full, adaptive, fewer_steps, uniform_skip) with ComfyUI's own
sampler functions and schedules, through the pack's ``wrap_sampler`` (what the nodes run), on the nine testbeds built
as ComfyUI MODELs. The job runs under the tree's Python (``harness/host_bench.py``, kind "grid"); the rows come back
in the grid's format and are summarised by the grid's own ``summarize``.

Needs a ComfyUI tree (``--comfyui`` or ``$TEMPO_COMFYUI``) with its Python beside it (``TREE/../venv``, or
``$TEMPO_COMFYUI_PYTHON``).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from ..samplers import kdiff, respace, support
from ..samplers.adaptive import NOISE_X0_RULES
from .adaptive_grid import (
    MODELS,
    MORE_SCHEDULERS,
    SCHEDULERS,
    SUMMARY_COLUMNS,
    _meets,
    check_taesd_models,
    markdown_matrix,
    rule_off_summary,
    rule_off_table,
    summarize,
    within_noise_text,
)
from .common import print_table, write_json

#: ComfyUI's twins of a listed sampler (the same function, noise drawn on the device) and ddim (euler in ComfyUI)
TWINS = {"ddim", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde_gpu", "dpmpp_sde_gpu"}


#: --comfyui-reuse-sweep's names: none (linear / log-linear, no rule) and SamplerSupport.reuse's rules
REUSE_RULES = ["none", "hold_low_noise", "hold_below_sigma", "hold_long_gap", "hold_always"]


#: --comfyui-respace-sweep's names: none (skip) and SamplerSupport.respace's rules
RESPACE_RULES = ["none", "final_jump", "min_steps", *respace.SPREADS]


#: --comfyui-post-cfg-sweep's names: SamplerSupport.post_cfg's forms (CFG++ samplers)
POST_CFG_FORMS = list(support.POST_CFG_FORMS)


#: what each sweep's table shows, for its heading
SWEEP_TEXT = {
    "reuse": "reuse rule in place of the sampler's own: mean dB minus uniform skipping (cells meeting the three "
    "checks) over the models and schedulers run; 'current' is the sampler's own rule",
    "respace": "re-spacing rule in place of the sampler's own: mean dB minus the default as it is and minus fewer "
    "steps, cells above the default, cells meeting the three checks",
    "post_cfg": "CFG++ reuse form in place of the sampler's own: mean dB minus the default as it is and minus fewer "
    "steps, cells above the default, cells meeting the three checks",
}


def respace_summary(rows: list[dict], rules: list[str], prefix: str = "adaptive_respace_") -> list[dict]:
    """Per sampler and step count: each re-spacing rule's mean dB minus the default as it is and minus fewer steps,
    and cells meeting the three checks (the default's first); prefix: the rule's rows' method before its name
    (another sweep's: ``post_cfg_summary``). A sampler with no such rows (the post-CFG sweep's non-CFG++ ones) is
    left out."""
    out: dict[tuple, dict] = {}
    for r in rows:
        cells = out.setdefault((r["sampler"], r["steps"]), {})
        cells.setdefault((r["model"], r["scheduler"], r["cfg"]), {})[r["method"]] = r
    table = []
    for (sampler, steps), cells in out.items():
        if not all(f"{prefix}{rule}" in m for rule in rules for m in cells.values()):
            continue
        row = {"sampler": sampler, "steps": steps, "cells": len(cells)}
        row["default meets"] = sum(_meets(m["adaptive"], m) for m in cells.values())
        for rule in rules:
            ms = [(m[f"{prefix}{rule}"], m) for m in cells.values()]
            row[f"{rule} - default"] = f"{sum(a['psnr_db'] - m['adaptive']['psnr_db'] for a, m in ms) / len(ms):+.2f}"
            row[f"{rule} - default, above"] = sum(a["psnr_db"] > m["adaptive"]["psnr_db"] for a, m in ms)
            row[f"{rule} - fewer"] = f"{sum(a['psnr_db'] - m['fewer_steps']['psnr_db'] for a, m in ms) / len(ms):+.2f}"
            row[f"{rule} meets"] = sum(_meets(a, m) for a, m in ms)
        table.append(row)
    return table


def post_cfg_summary(rows: list[dict], forms: list[str]) -> list[dict]:
    """``respace_summary`` for the CFG++ reuse forms (``--comfyui-post-cfg-sweep``): the CFG++ samplers only."""
    return respace_summary(rows, forms, prefix="adaptive_postcfg_")


def reuse_summary(rows: list[dict], rules: list[str]) -> list[dict]:
    """Per sampler and step count: each rule's (and the sampler's current rule's) mean dB minus uniform skipping and
    cells meeting the three checks (cut >= 1.95x, above fewer steps, above uniform skipping)."""
    by: dict[tuple, dict] = {}
    for r in rows:
        key = (r["model"], r["sampler"], r["scheduler"], r["steps"], r["cfg"])
        by.setdefault(key, {})[r["method"]] = r
    out: dict[tuple, dict] = {}
    for (model, sampler, sched, steps, cfg), m in by.items():
        line = out.setdefault((sampler, steps), {"sampler": sampler, "steps": steps, "cells": 0})
        line["cells"] += 1
        for name, method in [("current", "adaptive")] + [(r, f"adaptive_rule_{r}") for r in rules]:
            a = m[method]
            meets = _meets(a, m)
            acc = line.setdefault(f"_{name}", [0.0, 0])
            acc[0] += a["psnr_db"] - m["uniform_skip"]["psnr_db"]
            acc[1] += int(meets)
    table = []
    for line in out.values():
        n = line["cells"]
        row = {"sampler": line["sampler"], "steps": line["steps"], "cells": n}
        for name in ["current"] + rules:
            total, meets = line[f"_{name}"]
            row[name] = f"{total / n:+.2f} ({meets})"
        table.append(row)
    return table


def default_samplers() -> list[str]:
    """The served samplers with no plain-PyTorch copy, twins and the CFG++ ones (``--comfyui-samplers``) left out."""
    return [
        n
        for n, e in support.SUPPORT.items()
        if e.served and n not in kdiff.SAMPLERS and n not in TWINS and not e.post_cfg
    ]


def comfyui_python(tree: str) -> str:
    """The Python that runs the ComfyUI tree: $TEMPO_COMFYUI_PYTHON, else TREE/../venv/bin/python, else this one."""
    cand = os.path.join(os.path.dirname(os.path.abspath(tree)), "venv", "bin", "python")
    return os.environ.get("TEMPO_COMFYUI_PYTHON") or (cand if os.path.exists(cand) else sys.executable)


def comfy_grid_main(args) -> int:
    tree = args.comfyui or os.environ.get("TEMPO_COMFYUI")
    if not tree or not os.path.isdir(os.path.join(tree, "comfy")):
        raise SystemExit(
            f"--comfyui-grid: needs a ComfyUI tree (--comfyui or $TEMPO_COMFYUI); got {tree!r}, which has no comfy/"
        )
    samplers = [s for s in args.comfyui_samplers.split(",") if s] if args.comfyui_samplers else default_samplers()
    models = [m for m in args.grid_models.split(",") if m]
    schedulers = [s for s in args.grid_schedulers.split(",") if s]
    for flag, given, known in (
        ("--grid-models", models, MODELS),
        ("--grid-schedulers", schedulers, SCHEDULERS + MORE_SCHEDULERS),
        ("--comfyui-samplers", samplers, [n for n, e in support.SUPPORT.items() if e.served]),
    ):
        unknown = [v for v in given if v not in known]
        if unknown:
            raise SystemExit(f"{flag}: {', '.join(map(repr, unknown))} unknown; expected names from {', '.join(known)}")
    check_taesd_models(models)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    python = comfyui_python(tree)
    job = {
        "kind": "grid",
        "repo": repo,
        "models": models,
        "samplers": samplers,
        "schedulers": schedulers,
        "steps": [args.grid_steps],
        "cfg": args.cfg,
        "classes": args.classes or 6,
        "seeds": args.seeds or 1,
        "threads": args.threads or 1,
        "reuses": [r for r in args.comfyui_reuse_sweep.split(",") if r],
        "respace": bool(args.grid_respace),
        "respaces": [r for r in args.comfyui_respace_sweep.split(",") if r],
        "post_cfgs": [r for r in args.comfyui_post_cfg_sweep.split(",") if r],
        "noise_x0_off": bool(getattr(args, "grid_noise_x0_off", False)),
        "noise_x0_rules": [r for r in getattr(args, "grid_noise_x0_rules", "").split(",") if r],
    }
    for flag, given, known in (
        ("--grid-noise-x0-rules", job["noise_x0_rules"], list(NOISE_X0_RULES)),
        ("--comfyui-reuse-sweep", job["reuses"], REUSE_RULES),
        ("--comfyui-respace-sweep", job["respaces"], RESPACE_RULES),
        ("--comfyui-post-cfg-sweep", job["post_cfgs"], POST_CFG_FORMS),
    ):
        bad = [r for r in given if r not in known]
        if bad:
            raise SystemExit(f"{flag}: {', '.join(map(repr, bad))} unknown; expected names from {', '.join(known)}")
    t0 = time.perf_counter()
    print(
        f"[comfyui grid] {len(models)} models x {len(samplers)} samplers x {len(schedulers)} schedulers, "
        f"{args.grid_steps} steps, CFG {args.cfg:g}, {job['classes']} classes x {job['seeds']} seeds, under {python} "
        f"in {tree}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="tempo-comfy-grid-") as tmp:
        job_path, out_path = os.path.join(tmp, "job.json"), os.path.join(tmp, "out.json")
        json.dump(job, open(job_path, "w"))
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(job["threads"])))
        # the job's progress lines go to its stderr, passed through as they come
        proc = subprocess.run(
            [python, os.path.join(repo, "harness", "host_bench.py"), job_path, out_path], cwd=tree, env=env
        )
        if proc.returncode != 0 or not os.path.exists(out_path):
            raise SystemExit(f"--comfyui-grid: the job under {python} failed (exit {proc.returncode}); see above")
        host = json.load(open(out_path))
    rows = host["rows"]
    if host["meta"]["missing"]:
        print(f"not in this ComfyUI, left out: {', '.join(host['meta']['missing'])}")
    summary = summarize(rows)
    result = {
        "rows": rows,
        "summary": summary,
        "meta": {
            "comfyui": host["meta"]["comfyui"],
            "batch": f"{job['classes']} classes x {job['seeds']} seeds",
            "machine": platform.machine(),
            "threads": job["threads"],
            "seconds": time.perf_counter() - t0,
            "command": "comfyui-tempo bench adaptive " + " ".join(getattr(args, "argv", [])),
        },
    }
    print()
    columns = [c for c in SUMMARY_COLUMNS if all(c in s for s in summary)]
    result["table"] = print_table(summary, columns)
    per_sampler = {}
    for s in summary:
        per_sampler.setdefault(s["sampler"], []).append(s["ok"] == "yes")
    result["per_sampler"] = [{"sampler": k, "meets": sum(v), "cells": len(v)} for k, v in per_sampler.items()]
    print("\ncells meeting cut >= 1.95x, above fewer steps and above uniform skipping, per sampler:")
    print_table(result["per_sampler"], ["sampler", "meets", "cells"])
    passed = sum(1 for s in summary if s["ok"] == "yes")
    print(f"\n{passed} of {len(summary)} cells meet the three checks (ComfyUI {host['meta']['comfyui']})")
    noise_line = within_noise_text(summary)
    if noise_line:
        print(noise_line)
    sweeps = (
        ("reuse_sweep", reuse_summary, job["reuses"], SWEEP_TEXT["reuse"]),
        ("respace_sweep", respace_summary, job["respaces"], SWEEP_TEXT["respace"]),
        ("post_cfg_sweep", post_cfg_summary, job["post_cfgs"], SWEEP_TEXT["post_cfg"]),
    )
    for key, table, rules, what in sweeps:
        if rules:
            result[key] = table(rows, rules)
            print(f"\nthe default with each {what}:")
            if result[key]:
                print_table(result[key], list(result[key][0]))
            else:  # the post-CFG sweep without a CFG++ sampler in the run
                print("  no sampler in this run has that rule (CFG++ ones: --comfyui-samplers euler_cfg_pp, ...)")
    if job["noise_x0_off"]:  # --grid-noise-x0-off: the default without the x0 reuse above sigma 3, per cell
        table = result["noise_x0"] = rule_off_table(rows, "noise_x0_off")
        s = result["noise_x0_summary"] = rule_off_summary(table, "noise_x0_off")
        print(
            f"\nthe x0 reuse above sigma 3 (the default minus it off): the two differ in {s['changed']} of {s['cells']} "
            f"cells, the rule above in {s['up']} (mean {s['mean_gain_db']:+.2f} dB, {s['min_gain_db']:+.2f} to "
            f"{s['max_gain_db']:+.2f}); cells meeting the three checks: {s['meets_without']} without it, "
            f"{s['meets_with']} with it"
        )
    for rule in job["noise_x0_rules"]:  # --grid-noise-x0-rules: the default against the x0 reuse placed by that rule
        table = result[f"noise_x0_rule_{rule}"] = rule_off_table(rows, f"noise_x0_rule_{rule}")
        s = rule_off_summary(table, f"noise_x0_rule_{rule}")
        result[f"noise_x0_rule_{rule}_summary"] = s
        print(
            f"\nthe default minus the x0 reuse placed by rule {rule!r}: the two differ in {s['changed']} of {s['cells']} "
            f"cells, the default above in {s['up']} (mean {s['mean_gain_db']:+.2f} dB); cells meeting the three checks: "
            f"{s['meets_without']} with rule {rule!r}, {s['meets_with']} with the default"
        )
    result["markdown"] = markdown_matrix(summary, args.grid_steps, args.cfg)
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
