"""`comfyui-tempo`: the pack's algorithms without ComfyUI.

  comfyui-tempo demo [--out DIR]            AdaptiveDiffusion and the DMD one-step generator on the bundled testbed: grids + metrics
  comfyui-tempo bench adaptive [--json F]   the AdaptiveDiffusion benchmark table
  comfyui-tempo bench coop [--json F]       Coop-Diffusion bridges, resolution hand-off, fusion, time-decoupled
  comfyui-tempo bench dmd [--json F]        DMD one-step generators against their teachers
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _demo(args) -> int:
    import numpy as np
    import torch

    from .bench.common import print_table, psnr_db, write_json
    from .samplers import kdiff
    from .samplers.adaptive import AdaptiveConfig, adaptive_sample
    from .samplers.plot import plot_report
    from .testbed import problems

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
    dmd = _demo_dmd(args, problem, full, runs["full"][2], runs["full"][1].nfe, scale)
    with open(os.path.join(args.out, "metrics.md"), "w") as f:
        f.write(f"# {problem.name}, {args.sampler}, {args.steps} steps\n\n```\n{table}\n```\n")
        f.write(f"\n# DMD one-step generator (shipped) beside the teacher's {args.steps} steps\n\n```\n{dmd['table']}\n```\n")
    write_json(os.path.join(args.out, "dmd.json"), dmd)
    print(f"\nwrote {grid_path} (rows: classes 0-9; columns per seed: {', '.join(order)}), {plot_path}, {metrics_path}, "
          f"{dmd['grid']} (columns per seed: teacher, DMD one-step), dmd.json")
    return 0


def _demo_dmd(args, problem, teacher_latents, teacher_wall: float, teacher_nfe: int, scale: int) -> dict:
    """The shipped DMD one-step generator on the demo's noise and classes, beside the teacher's full
    CFG run: class accuracy (the evaluation classifier), NFE and wall time; a second grid."""
    import numpy as np
    import torch
    from PIL import Image

    from .bench.common import print_table
    from .testbed import classifier as C
    from .training import distill_testbed as DT

    gen, meta = DT.load_generator(DT.GENERATOR_FILE)
    t0 = time.perf_counter()
    with torch.no_grad():
        latents = DT.one_step_samples(gen, problem.noise, problem.cond, meta["conditioning_timestep"])
    wall = time.perf_counter() - t0
    clf = C.load()
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
    return {"generator": str(DT.GENERATOR_FILE.name), "conditioning_timestep": meta["conditioning_timestep"],
            "rows": rows, "table": table, "grid": path}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="comfyui-tempo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="AdaptiveDiffusion and the DMD one-step generator on the bundled testbed: image grids and metrics tables")
    demo.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    demo.add_argument("--sampler", default="euler", help="euler, heun, dpm_2, dpmpp_2m or euler_ancestral")
    demo.add_argument("--steps", type=int, default=50)
    demo.add_argument("--cfg", type=float, default=5.0)
    demo.add_argument("--scheduler", default="karras", choices=["karras", "normal"])
    demo.add_argument("--seeds", type=int, default=2, help="seeds per class")
    demo.add_argument("--target-speedup", type=float, default=2.0)
    demo.add_argument("--threshold", type=float, default=0.01, help="threshold of the paper-rule run")
    demo.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")

    bench = sub.add_parser("bench", help="benchmarks that print a table and write JSON")
    bench_sub = bench.add_subparsers(dest="which", required=True)
    ad = bench_sub.add_parser("adaptive", help="AdaptiveDiffusion against the full run, fewer steps, EasyCache, ...")
    ad.add_argument("--json", help="write the rows here")
    ad.add_argument("--quick", action="store_true", help="a small, fast configuration (used by the tests)")
    ad.add_argument("--samplers", default="euler,dpmpp_2m")
    ad.add_argument("--steps", type=int, default=0, help="default 50 (20 with --quick)")
    ad.add_argument("--classes", type=int, default=0, help="default 10 (4 with --quick)")
    ad.add_argument("--seeds", type=int, default=0, help="seeds per class; default 2 (1 with --quick)")
    ad.add_argument("--cfg", type=float, default=5.0)
    ad.add_argument("--scheduler", default="karras", choices=["karras", "normal"])
    ad.add_argument("--greedy", type=int, default=None, help="conditionings for the greedy search (default 2; 0 with --quick)")
    ad.add_argument("--threads", type=int, default=0)
    ad.add_argument(
        "--comfyui", default=None,
        help="a ComfyUI tree: adds rows measured inside it (EasyCache, LazyCache, the pack's nodes); default $TEMPO_COMFYUI",
    )
    ad.add_argument("--quiet", action="store_true")
    from .bench import coop as _coop_bench

    _coop_bench.add_parser(bench_sub)

    dm = bench_sub.add_parser("dmd", help="DMD one-step generators against their teachers (ring, latent mixture, testbed)")
    dm.add_argument("--json", help="write the rows here")
    dm.add_argument("--quick", action="store_true", help="only the testbed case (shipped weights), 20 samples per class")
    dm.add_argument("--cases", default="", help="comma-separated: ring, gmm, testbed (default all; testbed with --quick)")
    dm.add_argument("--per-class", type=int, default=0, help="testbed samples per class (default 50; 20 with --quick)")
    dm.add_argument("--retrain", action="store_true", help="distil the testbed generator and control again (~30 min)")
    dm.add_argument("--threads", type=int, default=1)
    dm.add_argument("--quiet", action="store_true")

    args = parser.parse_args(argv)
    args.argv = argv[2:] if args.command == "bench" else argv[1:]
    if args.command == "demo":
        return _demo(args)
    if args.command == "bench" and args.which == "adaptive":
        from .bench import adaptive

        return adaptive.main(args)
    if args.command == "bench" and args.which == "dmd":
        from .bench import dmd

        return dmd.main(args)
    if args.command == "bench" and args.which == "coop":
        from .bench import coop

        return coop.main(args)
    parser.error("unknown command")
    return 2


if __name__ == "__main__":
    sys.exit(main())
