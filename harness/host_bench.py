"""The benchmark's ComfyUI rows: run under ComfyUI's own Python by `comfyui-tempo bench adaptive`
when a ComfyUI tree is given (--comfyui or TEMPO_COMFYUI).

    python harness/host_bench.py JOB.json OUT.json     (cwd: the ComfyUI tree)

It samples the testbed MODEL inside ComfyUI with ComfyUI's own sampler functions: the full run, the
pack's AdaptiveDiffusion (default settings), and ComfyUI's EasyCache and LazyCache nodes with their
reuse_threshold bisected to land on the pack's NFE. NFE = real network calls, counted by a forward
hook on the network (skipped calls never reach it). PSNR is on decoded images against ComfyUI's full run.

A job of kind "grid" (``comfyui-tempo bench adaptive --comfyui-grid``) runs the generalisation grid's methods
instead (full, adaptive, fewer_steps, uniform_skip; with ``respace`` adaptive_skip and adaptive_respaced too;
``bench/adaptive_grid.py``) for each model, scheduler, step
count and sampler, with ComfyUI's sampler functions and sigmas (its KSampler's) on the testbeds built as ComfyUI
MODELs (``harness/comfy_testbed.py``), and writes rows in the grid's format.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
import sys
import time


def _load_pack(repo: str):
    spec = importlib.util.spec_from_file_location(
        "comfyui_tempo", os.path.join(repo, "__init__.py"), submodule_search_locations=[repo]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_tempo"] = module
    spec.loader.exec_module(module)
    return module


def main(job_path: str, out_path: str) -> None:
    job = json.load(open(job_path))
    sys.path.insert(0, os.getcwd())
    if job.get("kind") == "grid":
        return grid(job, out_path)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.sample
    import comfy.samplers
    import torch
    from comfy_extras import nodes_easycache
    from safetensors.torch import load_file

    _load_pack(job["repo"])
    from comfyui_tempo.harness import comfy_testbed
    from comfyui_tempo.nodes import adaptive as adaptive_nodes
    from comfyui_tempo.samplers.adaptive import AdaptiveConfig

    torch.set_num_threads(job.get("threads") or torch.get_num_threads())
    tensors = load_file(job["tensors"])
    noise, cond = tensors["noise"], tensors["cond"].long()
    tb = comfy_testbed.testbed()
    positive = [[torch.nn.functional.one_hot(cond, comfy_testbed.CONTEXT_DIM).float()[:, None, :], {}]]
    negative = [[comfy_testbed.class_cond(comfy_testbed.NULL_CLASS), {}]]
    latent = torch.zeros_like(noise)
    steps, cfg, seed = job["steps"], job["cfg"], 0
    rows = []

    def sample(model, make_sampler, one_at_a_time=False):
        """Decoded images, network calls per sample, wall time. one_at_a_time: a batch-1 loop."""
        net = model.model.diffusion_model.net
        calls = {"n": 0}
        hook = net.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
        parts = [slice(b, b + 1) for b in range(noise.shape[0])] if one_at_a_time else [slice(None)]
        outs = []
        try:
            sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), job["scheduler"], steps)
            t0 = time.perf_counter()
            for sl in parts:
                pos = [[positive[0][0][sl], {}]]
                with torch.inference_mode():
                    outs.append(
                        comfy.sample.sample_custom(
                            model, noise[sl], cfg, make_sampler(), sigmas, pos, negative, latent[sl], seed=seed
                        )
                    )
            wall = time.perf_counter() - t0
        finally:
            hook.remove()
        with torch.no_grad():
            img = tb.decode(torch.cat(outs).float())
        return img, float(calls["n"]) / len(parts), wall

    def psnr(img, ref):
        mse = ((img - ref) ** 2).flatten(1).mean(1).clamp_min(1e-12)
        return float((-10 * torch.log10(mse)).mean())

    for name in job["samplers"]:
        base = comfy_testbed.build_model()
        plain = functools.partial(comfy.samplers.sampler_object, name)
        ref, full_nfe, full_wall = sample(base, plain)
        evals = full_nfe / steps

        def add(method, img, nfe, wall, setting):
            rows.append(
                {
                    "sampler": name,
                    "method": method,
                    "steps": steps,
                    "nfe": nfe / evals,
                    "psnr_db": psnr(img, ref) if method != "full_comfyui" else float("inf"),
                    "wall_s": wall,
                    "speedup_wall": full_wall / wall,
                    "nfe_ratio": full_nfe / nfe,
                    "setting": setting,
                }
            )

        add("full_comfyui", ref, full_nfe, full_wall, "ComfyUI, full run")
        img, nfe, wall = sample(base, lambda: adaptive_nodes.wrap_sampler(plain(), name, AdaptiveConfig()))
        add("adaptive_comfyui", img, nfe, wall, "the pack's default inside ComfyUI")
        target = nfe

        # ComfyUI 0.3.64's EasyCache fails at batch > 1 (apply_cache_diff adds each cond's cached
        # difference to the whole batch; Comfy-Org/ComfyUI#10344), so it runs one image at a time
        for method, node, one in (
            ("easycache_comfyui", nodes_easycache.EasyCacheNode, True),
            ("lazycache", nodes_easycache.LazyCacheNode, False),
        ):
            lo, hi, best = 1e-3, 3.0, None
            for _ in range(14):
                thr = (lo * hi) ** 0.5
                patched = node.execute(base, thr, 0.15, 0.95, False).args[0]
                img, nfe, wall = sample(patched, plain, one_at_a_time=one)
                if best is None or abs(nfe - target) < abs(best[2] - target):
                    best = (thr, img, nfe, wall)
                if abs(nfe - target) < 0.5 * evals:
                    break
                if nfe > target:
                    lo = thr
                else:
                    hi = thr
            thr, img, nfe, wall = best
            how = ", batch 1 loop" if one else ""
            add(method, img, nfe, wall, f"ComfyUI {node.__name__[:-4]} node, reuse_threshold {thr:.4g}{how}")
    json.dump({"rows": rows}, open(out_path, "w"))


# the grid's model names -> comfy_testbed's
GRID_NAMES = {"testbed_hr": "hr"}


def grid(job: dict, out_path: str) -> None:
    """The grid's four methods per cell, inside ComfyUI (see the module docstring); rows as bench/adaptive_grid's."""
    from comfy.cli_args import args

    args.cpu = True
    import comfy.sample
    import comfy.samplers
    import torch

    _load_pack(job["repo"])
    from comfyui_tempo.bench.adaptive_grid import HELD_OUT, fewer_steps_for, grid_row
    from comfyui_tempo.bench.common import psnr_db
    from comfyui_tempo.harness import comfy_testbed
    from comfyui_tempo.nodes import adaptive as adaptive_nodes
    from comfyui_tempo.samplers import support
    from comfyui_tempo.samplers.adaptive import AdaptiveConfig
    from comfyui_tempo.testbed import problems

    torch.set_num_threads(job.get("threads") or torch.get_num_threads())
    cfg, seed = float(job["cfg"]), 0
    have = set(comfy.samplers.KSampler.SAMPLERS)
    samplers = [s for s in job["samplers"] if s in have]
    rows, missing = [], [s for s in job["samplers"] if s not in have]
    t_start = time.perf_counter()
    for model_name in job["models"]:
        name = GRID_NAMES.get(model_name, model_name)
        tb = comfy_testbed.testbed(name)
        model = comfy_testbed.build_model(name)
        net = model.model.diffusion_model.net
        shape = tuple(tb.latent_shape) if name != "hr" else (tb.latent_shape[0], 8, 8)  # hr at 32 px, as the grid
        noise, cond = problems._batch(job["classes"], job["seeds"], shape)
        positive = [[torch.nn.functional.one_hot(cond, comfy_testbed.CONTEXT_DIM).float()[:, None, :], {}]]
        negative = [[comfy_testbed.class_cond(comfy_testbed.NULL_CLASS), {}]]
        latent = torch.zeros_like(noise)
        decode = torch.no_grad()(tb.decode)

        for scheduler in job["schedulers"]:
            for steps in job["steps"]:
                for sampler in samplers:

                    def sigmas(n, sampler=sampler, scheduler=scheduler):
                        ks = comfy.samplers.KSampler(
                            model, n, model.load_device, sampler, scheduler, 1.0, model.model_options
                        )
                        return ks.sigmas

                    def sample(sampler_obj, sig):
                        calls = {"n": 0}
                        hook = net.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
                        try:
                            t0 = time.perf_counter()
                            with torch.inference_mode():
                                out = comfy.sample.sample_custom(
                                    model, noise, cfg, sampler_obj, sig, positive, negative, latent, seed=seed
                                )
                            wall = time.perf_counter() - t0
                        finally:
                            hook.remove()
                        return decode(out.float()), float(calls["n"]), wall

                    plain = functools.partial(comfy.samplers.sampler_object, sampler)
                    sig = sigmas(steps)
                    n_run = len(sig) - 1
                    ref, full_nfe, full_wall = sample(plain(), sig)
                    base = {
                        "model": model_name,
                        "held_out": model_name in HELD_OUT,
                        "sampler": sampler,
                        "scheduler": scheduler,
                        "steps": steps,
                        "cfg": cfg,
                        "host": "comfyui",
                    }

                    def add(method, img, nfe, wall, setting, report=None):
                        psnr = psnr_db(img, ref) if method != "full" else torch.full((len(ref),), float("inf"))
                        row = grid_row(base, method, psnr, nfe, full_nfe, wall, setting, report)
                        rows.append(row)
                        return row

                    start = len(rows)
                    add("full", ref, full_nfe, full_wall, f"{steps} steps")
                    sink = []
                    wrapped = adaptive_nodes.wrap_sampler(plain(), sampler, AdaptiveConfig(), sink)
                    img, nfe, wall = sample(wrapped, sig)
                    main_row = add(
                        "adaptive", img, nfe, wall, "AdaptiveConfig() (target 2x, planner schedule)", sink[-1]
                    )
                    swept = [("reuse", r, "adaptive_rule_") for r in job.get("reuses", ())]
                    swept += [("respace", r, "adaptive_respace_") for r in job.get("respaces", ())]
                    if support.SUPPORT[sampler].post_cfg:  # a CFG++ sampler: its reuse forms of the unguided prediction
                        swept += [("post_cfg", r, "adaptive_postcfg_") for r in job.get("post_cfgs", ())]
                    for field, rule, prefix in swept:  # the default with one of the sampler's rules replaced
                        entry = support.SUPPORT[sampler]
                        support.SUPPORT[sampler] = dataclasses.replace(entry, **{field: "" if rule == "none" else rule})
                        try:
                            sink = []
                            img, nfe, wall = sample(
                                adaptive_nodes.wrap_sampler(plain(), sampler, AdaptiveConfig(), sink), sig
                            )
                        finally:
                            support.SUPPORT[sampler] = entry
                        add(prefix + rule, img, nfe, wall, f"AdaptiveConfig(), {field} rule {rule}", sink[-1])
                    if job.get("noise_x0_off"):  # the default reusing by the sampler's direction rule above sigma 3 too
                        from comfyui_tempo.samplers import adaptive as adaptive_mod

                        keep = adaptive_mod.NOISE_X0_SIGMA, adaptive_mod.NOISE_X0_RULE
                        adaptive_mod.NOISE_X0_SIGMA, adaptive_mod.NOISE_X0_RULE = math.inf, "sigma"
                        try:
                            sink = []
                            img, nfe, wall = sample(
                                adaptive_nodes.wrap_sampler(plain(), sampler, AdaptiveConfig(), sink), sig
                            )
                        finally:
                            adaptive_mod.NOISE_X0_SIGMA, adaptive_mod.NOISE_X0_RULE = keep
                        setting = "AdaptiveConfig(), NOISE_X0_SIGMA inf, NOISE_X0_RULE 'sigma'"
                        add("adaptive_noise_x0_off", img, nfe, wall, setting, sink[-1])
                    for rule in job.get("noise_x0_rules", ()):  # the default with the x0 reuse placed by that rule
                        from comfyui_tempo.samplers import adaptive as adaptive_mod

                        keep, adaptive_mod.NOISE_X0_RULE = adaptive_mod.NOISE_X0_RULE, rule
                        try:
                            sink = []
                            img, nfe, wall = sample(
                                adaptive_nodes.wrap_sampler(plain(), sampler, AdaptiveConfig(), sink), sig
                            )
                        finally:
                            adaptive_mod.NOISE_X0_RULE = keep
                        setting = f"AdaptiveConfig(), NOISE_X0_RULE {rule!r}"
                        add(f"adaptive_noise_x0_rule_{rule}", img, nfe, wall, setting, sink[-1])
                    if job.get("respace"):  # the default's planned path skipped and re-spaced, as the pack's grid
                        for method, how in (("adaptive_skip", "off"), ("adaptive_respaced", "on")):
                            sink = []
                            config = AdaptiveConfig(respace=how)
                            img, nfe, wall = sample(adaptive_nodes.wrap_sampler(plain(), sampler, config, sink), sig)
                            add(method, img, nfe, wall, f"AdaptiveConfig(respace={how!r})", sink[-1])
                    n_fewer = fewer_steps_for(sigmas, max(1, int(round(main_row["nfe"] / (full_nfe / n_run)))))
                    img, nfe, wall = sample(plain(), sigmas(n_fewer))
                    add("fewer_steps", img, nfe, wall, f"{n_fewer} steps")
                    every_other = torch.zeros(n_run, dtype=torch.bool)
                    every_other[::2] = True
                    sink = []
                    config = AdaptiveConfig(mode="path", path=every_other, extrapolation="hold")
                    img, nfe, wall = sample(adaptive_nodes.wrap_sampler(plain(), sampler, config, sink), sig)
                    add("uniform_skip", img, nfe, wall, "network on every other step, reuse hold", sink[-1])
                    m = {r["method"]: r for r in rows[start:]}
                    print(
                        f"  {model_name:11s} {sampler:24s} {scheduler:11s} {steps:3d}: adaptive nfe "
                        f"{m['adaptive']['nfe']:.0f}/{full_nfe:.0f} {m['adaptive']['psnr_db']:.2f} dB | fewer "
                        f"{m['fewer_steps']['psnr_db']:.2f} | uniform {m['uniform_skip']['psnr_db']:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
    try:
        import comfyui_version

        version = comfyui_version.__version__
    except ImportError:
        version = "?"
    meta = {"comfyui": version, "missing": missing}
    meta["seconds"] = time.perf_counter() - t_start
    json.dump({"rows": rows, "meta": meta}, open(out_path, "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
