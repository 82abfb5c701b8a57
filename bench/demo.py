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

from .common import print_table, psnr_db, write_json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="AdaptiveDiffusion and the DMD one-step generator on the bundled testbed: image grids and metrics tables"
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

    # grid: one row per class; columns: (full, adaptive, paper) for each seed
    from PIL import Image

    imgs = {name: problem.decode(out) for name, (out, _, _) in runs.items()}
    order = ["full", "adaptive", "adaptive_paper"]
    seeds = args.seeds
    tiles = []
    for c in range(10):
        row = []
        for s in range(seeds):
            b = c * seeds + s
            for name in order:
                row.append(imgs[name][b])
            row.append(torch.ones_like(imgs["full"][b][:, :, :2]))  # a thin white line between seeds
        tiles.append(torch.cat(row[:-1], dim=2))
    grid = torch.cat(tiles, dim=1).permute(1, 2, 0).clamp(0, 1).numpy()
    scale = max(1, 256 // imgs["full"].shape[-1])
    grid_img = Image.fromarray((grid * 255).round().astype(np.uint8)).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST
    )
    grid_path = os.path.join(args.out, "grid.png")
    grid_img.save(grid_path)
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
    dmd = dmd_beside_teacher(args, problem, full, runs["full"][2], runs["full"][1].nfe, scale)
    with open(os.path.join(args.out, "metrics.md"), "w") as f:
        f.write(f"# {problem.name}, {args.sampler}, {args.steps} steps\n\n```\n{table}\n```\n")
        f.write(f"\n# DMD one-step generator (shipped) beside the teacher's {args.steps} steps\n\n```\n{dmd['table']}\n```\n")
    write_json(os.path.join(args.out, "dmd.json"), dmd)
    print(f"\nwrote {grid_path} (rows: classes 0-9; columns per seed: {', '.join(order)}), {plot_path}, {metrics_path}, "
          f"{dmd['grid']} (columns per seed: teacher, DMD one-step), dmd.json")
    return 0


def dmd_beside_teacher(args, problem, teacher_latents, teacher_wall: float, teacher_nfe: int, scale: int) -> dict:
    """The shipped DMD one-step generator on the demo's noise and classes, beside the teacher's full
    CFG run: class accuracy (the evaluation classifier), NFE and wall time; a second grid."""
    from PIL import Image

    from ..testbed import classifier
    from ..training import distill_testbed

    gen, meta = distill_testbed.load_generator(distill_testbed.GENERATOR_FILE)
    t0 = time.perf_counter()
    with torch.no_grad():
        latents = distill_testbed.one_step_samples(gen, problem.noise, problem.cond, meta["conditioning_timestep"])
    wall = time.perf_counter() - t0
    clf = classifier.load()
    imgs = {"teacher": problem.decode(teacher_latents), "dmd_onestep": problem.decode(latents)}
    rows = []
    for name, nfe, w in (("teacher", teacher_nfe, teacher_wall), ("dmd_onestep", 1, wall)):
        with torch.no_grad():
            pred = clf.embed(imgs[name])[1]
        rows.append({"method": name, "nfe": nfe, "class_acc": float((pred == problem.cond).float().mean()),
                     "wall_s": w, "speedup_wall": teacher_wall / w})
    table = print_table(rows, ["method", "nfe", "class_acc", "wall_s", "speedup_wall"])
    tiles = []
    for c in range(10):
        row = []
        for s in range(args.seeds):
            b = c * args.seeds + s
            row += [imgs["teacher"][b], imgs["dmd_onestep"][b], torch.ones_like(imgs["teacher"][b][:, :, :2])]
        tiles.append(torch.cat(row[:-1], dim=2))
    grid = torch.cat(tiles, dim=1).permute(1, 2, 0).clamp(0, 1).numpy()
    path = os.path.join(args.out, "dmd_grid.png")
    Image.fromarray((grid * 255).round().astype(np.uint8)).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST
    ).save(path)
    return {"generator": str(distill_testbed.GENERATOR_FILE.name), "conditioning_timestep": meta["conditioning_timestep"],
            "rows": rows, "table": table, "grid": path}
