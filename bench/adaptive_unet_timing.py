"""`comfyui-tempo bench adaptive --unet-timing`: AdaptiveDiffusion's wall speed-up next to SD1.5- and SDXL-size
UNets, and the controller's cost per step next to one UNet evaluation (issue 12's GPU measurement).

The networks are stand-ins with random weights (timing does not depend on them): ``testbed/unet.py``'s ADM-style
UNet at SD1.5's widths (320 / 640 / 1280 / 1280, two residual blocks a level, self-attention on the three
finest levels, 4x64x64 latents) and SDXL's (320 / 640 / 1280, attention on the two coarser levels, 4x128x128
latents): 668 M and 418 M parameters against the real UNets' 860 M and 2.6 B (one self-attention layer per
block where SDXL stacks up to ten transformer layers; no cross-attention, no text encoder). An evaluation is
therefore cheaper than the real one: the controller's share is an upper bound and the wall speed-up a lower one. Each
evaluation is a CFG pair (batch doubled), fp16 on CUDA. For each network, batch and sampler (euler, dpmpp_2m): one
UNet evaluation (ms, mean of 5 after 2 warm-up calls), the full run and the default AdaptiveDiffusion run (wall
seconds, synchronised, the faster of two), their ratio, the network evaluations and the controller's own time per step.

    comfyui-tempo bench adaptive --unet-timing --json out/unet_timing.json      # on a GPU, about 2 min
    comfyui-tempo bench adaptive --unet-timing --unets tiny --batches 1 --steps 6  # a CPU smoke test
"""

from __future__ import annotations

import platform
import time

import torch

from ..samplers import kdiff, schedules
from ..samplers.adaptive import AdaptiveConfig, CountingDenoiser, adaptive_sample
from .common import number_list, print_table, write_json

UNETS = {
    "sd15": dict(
        config=dict(
            in_channels=4,
            model_channels=320,
            channel_mult=[1, 2, 4, 4],
            num_res_blocks=2,
            attention_levels=[0, 1, 2],
            num_heads=8,
        ),
        latent=(4, 64, 64),
    ),
    "sdxl": dict(
        config=dict(
            in_channels=4,
            model_channels=320,
            channel_mult=[1, 2, 4],
            num_res_blocks=2,
            attention_levels=[1, 2],
            num_heads=10,
        ),
        latent=(4, 128, 128),
    ),
    "tiny": dict(
        config=dict(
            in_channels=4, model_channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_levels=[1], num_heads=2
        ),
        latent=(4, 16, 16),
    ),
}
SAMPLERS = ("euler", "dpmpp_2m")
COLUMNS = [
    "unet",
    "params_m",
    "batch",
    "sampler",
    "steps",
    "unet_ms",
    "full_s",
    "adaptive_s",
    "speedup",
    "nfe_full",
    "nfe_adaptive",
    "ctl_ms_per_step",
    "ctl_pct_of_unet",
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _denoiser(net, table: torch.Tensor, cfg: float, dtype: torch.dtype):
    """An eps model with CFG, as ComfyUI runs SD1.5 / SDXL: x0 = x - sigma eps, one batched call on [cond; uncond]."""
    table_dev = None

    @torch.no_grad()
    def den(x, sigma, **_):
        nonlocal table_dev
        if table_dev is None:
            table_dev = table.to(x.device)
        b = x.shape[0]
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(b)
        xc = (x / (1 + s**2).sqrt().view(-1, 1, 1, 1)).to(dtype)
        t = schedules.sigma_to_t(s.float(), table_dev)
        ctx = torch.zeros(2 * b, 1, net.context_dim, device=x.device, dtype=dtype)
        ctx[:b, :, 0] = 1
        ctx[b:, :, -1] = 1
        eps = net(torch.cat([xc, xc]), torch.cat([t, t]), context=ctx).to(x.dtype)
        eps = eps[b:] + cfg * (eps[:b] - eps[b:])
        return x - s.view(-1, 1, 1, 1) * eps

    return den


def measure(
    unets, batches, steps: int, device: torch.device, cfg: float = 5.0, repeats: int = 2, log=print
) -> list[dict]:
    from ..testbed.unet import UNet

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    table = schedules.discrete_sigmas()
    sig = schedules.get_sigmas("normal", steps, table).to(device)
    rows = []
    for name in unets:
        spec = UNETS[name]
        torch.manual_seed(0)
        net = UNet(**spec["config"]).to(device=device, dtype=dtype).eval().requires_grad_(False)
        params = sum(p.numel() for p in net.parameters()) / 1e6
        den = _denoiser(net, table, cfg, dtype)
        for batch in batches:
            x = torch.randn((batch,) + spec["latent"], generator=torch.Generator().manual_seed(1)).to(device) * sig[0]
            for _ in range(2):
                den(x, sig[1])
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(5):
                den(x, sig[1])
            _sync(device)
            unet_ms = 1000 * (time.perf_counter() - t0) / 5
            for sampler in SAMPLERS:
                fn = kdiff.SAMPLERS[sampler]
                full_s = adaptive_s = float("inf")
                for _ in range(repeats):  # the faster of the repeats, alternating the two runs
                    counting = CountingDenoiser(den)
                    _sync(device)
                    t0 = time.perf_counter()
                    fn(counting, x, sig)
                    _sync(device)
                    full_s = min(full_s, time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    _, rep = adaptive_sample(fn, den, x, sig, AdaptiveConfig())
                    _sync(device)
                    adaptive_s = min(adaptive_s, time.perf_counter() - t0)
                ctl_ms = 1000 * rep.controller_seconds / steps
                row = {
                    "unet": name,
                    "params_m": round(params, 1),
                    "latent": "x".join(map(str, spec["latent"])),
                    "batch": batch,
                    "sampler": sampler,
                    "steps": steps,
                    "device": str(device),
                    "dtype": str(dtype).replace("torch.", ""),
                    "unet_ms": unet_ms,
                    "full_s": full_s,
                    "adaptive_s": adaptive_s,
                    "speedup": full_s / adaptive_s,
                    "nfe_full": counting.nfe,
                    "nfe_adaptive": rep.nfe,
                    "ctl_ms_per_step": ctl_ms,
                    "ctl_pct_of_unet": 100 * ctl_ms / unet_ms,
                }
                rows.append(row)
                if log is not None:
                    log(
                        f"  {name} batch {batch} {sampler}: UNet {unet_ms:.1f} ms, full {full_s:.2f} s, adaptive "
                        f"{adaptive_s:.2f} s ({row['speedup']:.2f}x), controller {ctl_ms:.2f} ms/step"
                    )
        del net
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def unet_timing_main(args) -> int:
    unets = [u for u in args.unets.split(",") if u]
    unknown = [u for u in unets if u not in UNETS]
    if unknown or not unets:
        raise SystemExit(f"--unets: expected names from {sorted(UNETS)}, got {args.unets!r}")
    batches = number_list(args.batches, "--batches", int, low=1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and any(u != "tiny" for u in unets):
        raise SystemExit(
            "--unet-timing: SD1.5 / SDXL-size UNets need a CUDA GPU (none found); --unets tiny runs a CPU smoke test"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or 30
    rows = measure(unets, batches, steps, device, cfg=args.cfg, log=None if args.quiet else print)
    print()
    table = print_table(rows, COLUMNS)
    print(
        "\nunet_ms: one CFG evaluation (batch doubled); speedup: full run's wall over the default AdaptiveDiffusion "
        "run's; ctl_pct_of_unet: the controller's time per step as a share of one evaluation."
    )
    if args.json:
        meta = {
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__,
            "machine": platform.machine(),
            "command": "comfyui-tempo bench adaptive " + " ".join(getattr(args, "argv", [])),
        }
        write_json(args.json, {"rows": rows, "table": table, "meta": meta})
        print(f"wrote {args.json}")
    return 0
