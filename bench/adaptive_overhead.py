"""`comfyui-tempo bench adaptive --overhead`: what the AdaptiveDiffusion controller costs per step.

The controller's own work (planning the skip path, the estimator's latent differences, extrapolating a
reused direction) on latents of Stable Diffusion 1.5 (4x64x64) and SDXL (4x128x128) size, batch 1 and 4,
with a stand-in network that costs nothing, so that only the controller is timed. Compare it with one
UNet evaluation on the same device (on a GPU, an SD1.5 UNet step is tens of milliseconds).
"""

from __future__ import annotations

import platform
import time

import torch

from ..samplers import kdiff, schedules
from ..samplers.adaptive import AdaptiveConfig, adaptive_sample
from .common import print_table, write_json

SHAPES = {"sd15": (4, 64, 64), "sdxl": (4, 128, 128)}
CONFIGS = {
    "adaptive (default)": AdaptiveConfig(),
    "threshold": AdaptiveConfig(mode="threshold", threshold=0.01),
    "paper": AdaptiveConfig.paper(0.01, 4),
}
COLUMNS = ["latent", "batch", "steps", "config", "device", "ctl_ms_per_step", "plan_ms", "base_ms_per_step"]


def _net(x, sigma, **_):
    return x * 0.5


def measure(device: str = "cpu", steps: int = 30, repeats: int = 3) -> list[dict]:
    rows = []
    sig = schedules.get_sigmas("normal", steps).to(device)
    for name, shape in SHAPES.items():
        for batch in (1, 4):
            x = torch.randn((batch,) + shape, generator=torch.Generator().manual_seed(0)).to(device) * sig[0]
            t0 = time.perf_counter()
            for _ in range(repeats):
                kdiff.sample_euler(_net, x, sig)
            if device == "cuda":
                torch.cuda.synchronize()
            base = (time.perf_counter() - t0) / repeats / steps
            for cname, cfg in CONFIGS.items():
                ctl = []
                for _ in range(repeats):
                    _, rep = adaptive_sample(kdiff.sample_euler, _net, x, sig, cfg)
                    ctl.append(rep.controller_seconds)
                t0 = time.perf_counter()
                schedules_plan = AdaptiveConfig()  # the planning alone (mode target, planner schedule)
                from ..samplers.adaptive import AdaptiveSampling

                AdaptiveSampling(_net, sig.cpu(), schedules_plan)
                plan_ms = 1000 * (time.perf_counter() - t0) if cname.startswith("adaptive") else 0.0
                rows.append(
                    {
                        "latent": f"{name} {'x'.join(map(str, shape))}",
                        "batch": batch,
                        "steps": steps,
                        "config": cname,
                        "device": device,
                        "ctl_ms_per_step": 1000 * min(ctl) / steps,
                        "plan_ms": plan_ms,
                        "base_ms_per_step": 1000 * base,
                    }
                )
    return rows


def overhead_main(args) -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(device, steps=args.steps or 30)
    table = print_table(rows, COLUMNS)
    print(
        "\nctl_ms_per_step: the controller's own time per step (planning included); base_ms_per_step: the plain "
        "Euler loop around a network that costs nothing (the sampler's own arithmetic), for scale."
    )
    if args.json:
        write_json(
            args.json,
            {
                "rows": rows,
                "table": table,
                "meta": {
                    "device": device,
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "machine": platform.machine(),
                    "command": "comfyui-tempo bench adaptive --overhead " + " ".join(getattr(args, "argv", [])),
                },
            },
        )
        print(f"wrote {args.json}")
    return 0
