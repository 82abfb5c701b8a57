"""`comfyui-tempo demo`: AdaptiveDiffusion and the DMD one-step generator on the bundled testbed.

All 10 classes x ``--seeds`` are sampled with the full schedule, with the pack's default (``adaptive``,
target speed-up) and with the paper's rule (``adaptive_paper``); then the shipped DMD one-step generator
runs on the same noise and classes beside the teacher's full run. Writes to ``--out``: grid.png,
skip_path.png, dmd_grid.png, metrics.json, metrics.md and dmd.json; prints both metric tables.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

from . import figures
from .common import print_table, psnr_db, write_json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="AdaptiveDiffusion and the DMD one-step generator on the bundled testbed: image grids and metrics tables",
    )
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--sampler", default="euler", help="euler, heun, dpm_2, dpmpp_2m or euler_ancestral")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--scheduler", default="karras", choices=["karras", "normal"])
    p.add_argument("--seeds", type=int, default=2, help="seeds per class")
    p.add_argument("--target-speedup", type=float, default=2.0)
    p.add_argument("--threshold", type=float, default=0.01, help="threshold of the paper-rule run")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def main(args) -> int:
    from ..samplers import kdiff
    from ..samplers.adaptive import AdaptiveConfig, adaptive_sample
    from ..samplers.plot import plot_report
    from ..testbed import problems

    if args.sampler not in kdiff.SAMPLERS:
        print(f"--sampler: expected one of {sorted(kdiff.SAMPLERS)}, got {args.sampler!r}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    problem = problems.trained_problem(classes=10, seeds=args.seeds, cfg=args.cfg, scheduler=args.scheduler)
    sig = problem.sigmas(args.steps)
    fn = kdiff.SAMPLERS[args.sampler]
    extra = {"cond": problem.cond}
    x = problem.noise * sig[0]

    runs = {}
    t0 = time.perf_counter()
    full, full_rep = adaptive_sample(fn, problem.denoiser, x, sig, AdaptiveConfig(target_speedup=1.0), extra_args=extra)
    runs["full"] = (full, full_rep, time.perf_counter() - t0)
    configs = {
        "adaptive": AdaptiveConfig(target_speedup=args.target_speedup),
        "adaptive_paper": AdaptiveConfig.paper(args.threshold, 4),
    }
    for name, cfg in configs.items():
        t0 = time.perf_counter()
        out, rep = adaptive_sample(
            fn, problem.denoiser, x, sig, cfg, extra_args=extra, endpoint_corrector=(args.sampler == "heun")
        )
        runs[name] = (out, rep, time.perf_counter() - t0)

    ref = problem.decode(full)
    rows = []
    for name, (out, rep, wall) in runs.items():
        img = problem.decode(out)
        rows.append(
            {
                "method": name,
                "nfe": rep.nfe,
                "speedup_nfe": runs["full"][1].nfe / rep.nfe,
                "psnr_db": float(psnr_db(img, ref).mean()) if name != "full" else float("inf"),
                "wall_s": wall,
                "speedup_wall": runs["full"][2] / wall,
                "path": rep.path_string(),
            }
        )
    table = print_table(rows, ["method", "nfe", "speedup_nfe", "psnr_db", "wall_s", "speedup_wall", "path"])

    from PIL import Image

    imgs = {name: problem.decode(out) for name, (out, _, _) in runs.items()}
    order = ["full", "adaptive", "|adaptive - full|", "adaptive_paper", "|adaptive_paper - full|"]
    grid_path = os.path.join(args.out, "grid.png")
    adaptive_grid(args, imgs, {name: rep.nfe for name, (_, rep, _) in runs.items()}, rows).save(grid_path)
    plot = plot_report(runs["adaptive"][1], threshold=None)
    plot_path = os.path.join(args.out, "skip_path.png")
    Image.fromarray((plot * 255).round().astype(np.uint8)).save(plot_path)
    metrics_path = os.path.join(args.out, "metrics.json")
    write_json(
        metrics_path,
        {
            "problem": problem.name,
            "sampler": args.sampler,
            "steps": args.steps,
            "grid_columns": order,
            "rows": rows,
            "reports": {name: rep.to_dict() for name, (_, rep, _) in runs.items()},
            "table": table,
        },
    )
    dmd = dmd_beside_teacher(args, problem, full, runs["full"][2], runs["full"][1].nfe)
    with open(os.path.join(args.out, "metrics.md"), "w") as f:
        f.write(f"# {problem.name}, {args.sampler}, {args.steps} steps\n\n```\n{table}\n```\n")
        f.write(
            f"\n# DMD one-step generator (shipped) beside the teacher's {args.steps} steps\n\n```\n{dmd['table']}\n```\n"
        )
    write_json(os.path.join(args.out, "dmd.json"), dmd)
    print(
        f"\nwrote {grid_path} (rows: classes 0-9; columns per seed: {', '.join(order)}), {plot_path}, {metrics_path}, "
        f"{dmd['grid']} (columns per seed: teacher, DMD one-step, |DMD - teacher|), dmd.json"
    )
    return 0


def dmd_beside_teacher(args, problem, teacher_latents, teacher_wall: float, teacher_nfe: int) -> dict:
    """The shipped DMD one-step generator on the demo's noise and classes, beside the teacher's full
    CFG run: class accuracy (the evaluation classifier), NFE and wall time; a second grid."""
    from ..testbed import classifier, distill

    gen, meta = distill.load_generator(distill.GENERATOR_FILE)
    t0 = time.perf_counter()
    with torch.no_grad():
        latents = distill.one_step_samples(gen, problem.noise, problem.cond, meta["conditioning_timestep"])
    wall = time.perf_counter() - t0
    clf = classifier.load()
    imgs = {"teacher": problem.decode(teacher_latents), "dmd_onestep": problem.decode(latents)}
    rows, preds = [], {}
    for name, nfe, w in (("teacher", teacher_nfe, teacher_wall), ("dmd_onestep", 1, wall)):
        with torch.no_grad():
            pred = preds[name] = clf.embed(imgs[name])[1]
        rows.append(
            {
                "method": name,
                "nfe": nfe,
                "class_acc": float((pred == problem.cond).float().mean()),
                "wall_s": w,
                "speedup_wall": teacher_wall / w,
            }
        )
    table = print_table(rows, ["method", "nfe", "class_acc", "wall_s", "speedup_wall"])
    path = os.path.join(args.out, "dmd_grid.png")
    dmd_grid(args, problem.cond, imgs, preds, rows).save(path)
    return {
        "generator": str(distill.GENERATOR_FILE.name),
        "conditioning_timestep": meta["conditioning_timestep"],
        "rows": rows,
        "table": table,
        "grid": path,
    }


# ---------------------------------------------------------------------------------------------- figures

CLASS_LABELS = [f"class {c}" for c in range(10)]


def _seed_rows(seeds: int, s: int) -> list[int]:
    """Batch indices of seed s for classes 0-9 (the batch is class-major: b = class * seeds + seed)."""
    return [c * seeds + s for c in range(10)]


def adaptive_grid(args, imgs: dict, nfe: dict, rows: list[dict]):
    """grid.png: per seed the full run, the pack's default and the paper's rule from the same noise, each
    method beside |method - full| (one gain for the figure); NFE and PSNR under each column."""
    ref = imgs["full"]
    names = {
        "adaptive": ("adaptive", f"pack default, {args.target_speedup:g}x target"),
        "adaptive_paper": ("paper rule", f"threshold {args.threshold:g}"),
    }
    short = {"adaptive": "adaptive", "adaptive_paper": "paper"}
    psnr = {name: psnr_db(imgs[name], ref) for name in names}
    diffs = {name: figures.abs_difference(imgs[name], ref) for name in names}
    gain = figures.nice_gain(list(diffs.values()))
    tiles = {name: figures.to_tiles(imgs[name]) for name in imgs}
    groups = []
    for s in range(args.seeds):
        idx = _seed_rows(args.seeds, s)
        cols = [
            figures.Column(
                ("full", f"reference, {args.steps} steps"),
                [tiles["full"][b] for b in idx],
                (f"NFE {nfe['full']:g}", "reference"),
            )
        ]
        for name, header in names.items():
            p = psnr[name][idx]
            cols.append(
                figures.Column(
                    header,
                    [tiles[name][b] for b in idx],
                    (f"NFE {nfe[name]:g} ({nfe['full'] / nfe[name]:.2f}x)", f"PSNR {float(p.mean()):.1f} dB"),
                )
            )
            cols.append(
                figures.Column(
                    (f"|{short[name]} - full|", f"x{gain}; corner: PSNR"),
                    figures.difference_tiles(diffs[name][idx], gain),
                    (f"max |diff| {float(diffs[name][idx].max()):.3f}",),
                    notes=[f"{float(v):.1f} dB" for v in p],
                )
            )
        groups.append((f"seed {s}", cols))
    overall = "; ".join(
        f"{names[r['method']][0]}: NFE {r['nfe']:g} ({r['speedup_nfe']:.2f}x fewer), PSNR {r['psnr_db']:.1f} dB"
        for r in rows
        if r["method"] in names
    )
    lines = [
        "rows: classes 0-9. Per seed, from the same noise: the full run (reference), the pack's default and the paper's",
        "rule, each beside its difference from the full run. NFE: network evaluations per image; PSNR: against the full run.",
        f"all {ref.shape[0]} images (as in metrics.md): {overall}",
    ]
    title = f"AdaptiveDiffusion on the bundled testbed: {args.sampler}, {args.steps} steps, CFG {args.cfg:g}, {args.scheduler}"
    return figures.labelled_grid(title, lines, groups, CLASS_LABELS, gain=gain, difference="|method - full|")


def dmd_grid(args, cond, imgs: dict, preds: dict, rows: list[dict]):
    """dmd_grid.png: per seed the teacher's full run, the DMD one-step sample from the same noise and class,
    and their difference; a red frame where the evaluation classifier reads another class."""
    diffs = figures.abs_difference(imgs["dmd_onestep"], imgs["teacher"])
    gain = figures.nice_gain([diffs])
    psnr = psnr_db(imgs["dmd_onestep"], imgs["teacher"])
    tiles = {name: figures.to_tiles(imgs[name]) for name in imgs}
    nfe = {r["method"]: r["nfe"] for r in rows}
    headers = {
        "teacher": ("teacher", f"{args.steps} steps, CFG {args.cfg:g}"),
        "dmd_onestep": ("DMD one-step", "shipped generator"),
    }
    groups = []
    for s in range(args.seeds):
        idx = _seed_rows(args.seeds, s)
        cols = []
        for name, header in headers.items():
            wrong = [int(preds[name][b]) != int(cond[b]) for b in idx]
            cols.append(
                figures.Column(
                    header,
                    [tiles[name][b] for b in idx],
                    (f"NFE {nfe[name]:g}", f"class acc {1 - sum(wrong) / len(idx):.2f}"),
                    notes=[f"read as {int(preds[name][b])}" if w else None for b, w in zip(idx, wrong)],
                    frames=[figures.WRONG if w else None for w in wrong],
                )
            )
        cols.append(
            figures.Column(
                ("|DMD - teacher|", f"x{gain}"),
                figures.difference_tiles(diffs[idx], gain),
                (f"PSNR {float(psnr[idx].mean()):.1f} dB",),
            )
        )
        groups.append((f"seed {s}", cols))
    overall = "; ".join(f"{headers[r['method']][0]}: NFE {r['nfe']:g}, class acc {r['class_acc']:.2f}" for r in rows)
    lines = [
        "rows: classes 0-9. Per seed, from the same noise and class: the teacher's full run, the DMD one-step sample,",
        "their difference. Red frame: the evaluation classifier reads another class (its reading in the corner).",
        f"all {cond.numel()} images (as in metrics.md): {overall}",
    ]
    title = "DMD one-step generator beside its teacher on the bundled testbed"
    return figures.labelled_grid(title, lines, groups, CLASS_LABELS, gain=gain, difference="|DMD - teacher|")
