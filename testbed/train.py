"""Train the testbed: the autoencoder, then the class-conditional eps-UNet on its latents.

    OMP_NUM_THREADS=1 python -m comfyui_tempo.testbed.train

CPU, one thread, fixed seeds; writes ``testbed/weights/testbed.safetensors`` (fp16 weights, the
module configs, the seeds and the training record in its metadata) and ``testbed/weights/testbed.json``
(the same record, readable). The denoiser is trained for eps-prediction on Stable Diffusion's
discrete schedule: t uniform in 0..999, x = x0 + sigma_t * eps, network input x / sqrt(1 + sigma_t^2),
MSE on eps, 15 % of the labels replaced by the null class (for classifier-free guidance), EMA weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..samplers import schedules
from . import data as data_mod
from .autoencoder import AutoEncoder
from .unet import UNet

AE_CONFIG = dict(in_channels=3, latent_channels=4, channels=[32, 64], num_res=[1, 1], image_size=32)
UNET_CONFIG = dict(
    in_channels=4,
    model_channels=32,
    channel_mult=[1, 2, 2],
    num_res_blocks=2,
    attention_levels=[2],
    num_heads=4,
    context_dim=11,
    dropout=0.0,
)
DATA_CONFIG = dict(seed=data_mod.DEFAULT_SEED, size=32, copies=3, heldout_every=10)


def _lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10((a - b).pow(2).mean()))


def train_autoencoder(
    images: torch.Tensor,
    heldout: torch.Tensor,
    steps: int,
    seed: int,
    batch: int = 64,
    lr: float = 3e-3,
    latent_noise: float = 0.05,
    log=print,
):
    """MSE reconstruction with a little latent noise (relative to the latent std), so that the
    decoder is smooth around the latents the diffusion model will produce."""
    torch.manual_seed(seed)
    ae = AutoEncoder(**AE_CONFIG)
    opt = torch.optim.AdamW(ae.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup=max(1, steps // 20))
        x = images[torch.randint(images.shape[0], (batch,), generator=g)]
        z = ae.encode_raw(x)
        z = z + latent_noise * z.detach().std() * torch.randn(z.shape, generator=g)
        loss = (ae.decode_raw(z) - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 200 == 0 or step + 1 == steps:
            log(f"  ae step {step + 1}/{steps}  loss {loss.item():.5f}  {time.time() - t0:.0f}s")
    ae.eval()
    with torch.no_grad():
        raw = torch.cat([ae.encode_raw(c) for c in images.split(512)])
        ae.shift.fill_(float(raw.mean()))
        ae.scale.fill_(1.0 / float(raw.std()))
        rec = torch.cat([ae.decode(ae.encode(c)) for c in heldout.split(512)])
        rec_tr = torch.cat([ae.decode(ae.encode(c)) for c in images[:512].split(512)])
    record = dict(
        steps=steps,
        batch=batch,
        lr=lr,
        latent_noise=latent_noise,
        seconds=round(time.time() - t0, 1),
        final_loss=round(loss.item(), 6),
        heldout_psnr=round(_psnr(rec, heldout), 2),
        train_psnr=round(_psnr(rec_tr, images[:512]), 2),
        latent_shift=float(ae.shift),
        latent_scale=float(ae.scale),
    )
    return ae, record


def optimizer_step(net, ema, opt, loss: torch.Tensor, ema_decay: float, step: int) -> float:
    """Backward, gradient clipping at 1, the optimiser's step, then the EMA update with a warm decay
    (min(ema_decay, (1 + step) / (10 + step))). Returns the loss. The testbeds' trainers share it."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    decay = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), net.parameters()):
            pe.lerp_(p, 1 - decay)
    return loss.item()


def denoiser_step(
    net: UNet,
    ema: UNet,
    opt,
    x0: torch.Tensor,
    y: torch.Tensor,
    sigmas: torch.Tensor,
    g: torch.Generator,
    p_uncond: float,
    ema_decay: float,
    step: int,
) -> float:
    """One training step of the eps-UNet: CFG dropout of the labels y (in place, to the null class 10),
    a uniform discrete timestep, eps-MSE on the VP-scaled input, AdamW with gradient clipping at 1,
    then the EMA update (warm decay). Returns the loss."""
    batch = x0.shape[0]
    y[torch.rand(batch, generator=g) < p_uncond] = 10
    t = torch.randint(0, 1000, (batch,), generator=g)
    sigma = sigmas[t].view(-1, 1, 1, 1)
    eps = torch.randn(x0.shape, generator=g)
    x_in = (x0 + sigma * eps) * schedules.vp_scale(sigma)
    ctx = F.one_hot(y, 11).float()[:, None]
    loss = (net(x_in, t.float(), context=ctx) - eps).pow(2).mean()
    return optimizer_step(net, ema, opt, loss, ema_decay, step)


def train_denoiser(
    latents: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    seed: int,
    unet_config: dict = UNET_CONFIG,
    batch: int = 128,
    lr: float = 2e-3,
    p_uncond: float = 0.15,
    ema_decay: float = 0.999,
    log=print,
):
    torch.manual_seed(seed + 1)
    net = UNet(**unet_config)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    sigmas = schedules.discrete_sigmas()
    g = torch.Generator().manual_seed(seed + 1)
    t0 = time.time()
    running = None
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup=max(1, steps // 50))
        idx = torch.randint(latents.shape[0], (batch,), generator=g)
        loss = denoiser_step(net, ema, opt, latents[idx], labels[idx].clone(), sigmas, g, p_uncond, ema_decay, step)
        running = loss if running is None else 0.98 * running + 0.02 * loss
        if (step + 1) % 250 == 0 or step + 1 == steps:
            log(f"  unet step {step + 1}/{steps}  loss(ema) {running:.4f}  {time.time() - t0:.0f}s")
    record = dict(
        steps=steps,
        batch=batch,
        lr=lr,
        p_uncond=p_uncond,
        ema_decay=ema_decay,
        seconds=round(time.time() - t0, 1),
        final_loss_smoothed=round(running, 5),
    )
    return ema.eval(), record


@torch.no_grad()
def eval_eps_loss(net: UNet, latents: torch.Tensor, labels: torch.Tensor, seed: int = 0, n: int = 1024) -> float:
    """Mean eps-MSE on n training latents at uniform timesteps (fixed noise), conditional."""
    g = torch.Generator().manual_seed(seed)
    sigmas = schedules.discrete_sigmas()
    idx = torch.randint(latents.shape[0], (n,), generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    eps = torch.randn(n, *latents.shape[1:], generator=g)
    sigma = sigmas[t].view(-1, 1, 1, 1)
    x_in = (latents[idx] + sigma * eps) * schedules.vp_scale(sigma)
    out = torch.cat(
        [
            net(a, b.float(), context=F.one_hot(c, 11).float()[:, None])
            for a, b, c in zip(x_in.split(256), t.split(256), labels[idx].split(256))
        ]
    )
    return float((out - eps).pow(2).mean())


def _round_fp16(module: torch.nn.Module) -> None:
    """Round the parameters to fp16 in place (what ships), keeping float32 storage."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())


def save(path: Path, net: UNet, ae: AutoEncoder, meta: dict) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for k, v in net.state_dict().items():
        tensors["unet." + k] = v.detach().half().contiguous()
    for k, v in ae.state_dict().items():
        # the latent shift/scale stay float32: they are two numbers
        v = v.detach().float() if k in ("shift", "scale") else v.detach().half()
        tensors["ae." + k] = v.contiguous().reshape(v.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"testbed": json.dumps(meta)})
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


def main(argv=None) -> None:
    from . import trained

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ae-steps", type=int, default=700)
    ap.add_argument("--steps", type=int, default=2400, help="denoiser training steps")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--out", type=Path, default=trained.WEIGHTS_FILE)
    ap.add_argument("--p-uncond", type=float, default=0.15)
    ap.add_argument("--unet", type=json.loads, default={}, help="UNet config overrides (JSON)")
    ap.add_argument(
        "--ae-from", type=Path, default=None, help="reuse the autoencoder of an existing testbed file (experiments)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.time()

    images, labels = data_mod.build(DATA_CONFIG["seed"], DATA_CONFIG["size"], DATA_CONFIG["copies"])
    tr, held = data_mod.split_indices(images.shape[0], DATA_CONFIG["heldout_every"])
    print(f"data: {tuple(images.shape)} train {tr.numel()} heldout {held.numel()} ({time.time() - t_start:.0f}s)")

    if args.ae_from is not None:
        prev = trained.read_meta(args.ae_from)
        from safetensors.torch import load_file

        ae = AutoEncoder(**prev["ae_config"])
        ae.load_state_dict({k[3:]: v.float() for k, v in load_file(str(args.ae_from)).items() if k.startswith("ae.")})
        ae_record = prev["train"]["autoencoder"]
        ae_config = prev["ae_config"]
        print("autoencoder: reused from", args.ae_from)
    else:
        print("autoencoder:")
        ae, ae_record = train_autoencoder(images[tr], images[held], args.ae_steps, args.seed)
        ae_config = AE_CONFIG
        print("  ", ae_record)
    # the denoiser learns the latents of the fp16-rounded autoencoder that ships
    _round_fp16(ae)
    ae = ae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([ae.encode(c) for c in images[tr].split(512)])
    print(f"latents: {tuple(latents.shape)} mean {latents.mean():.3f} std {latents.std():.3f}")

    print("denoiser:")
    unet_config = {**UNET_CONFIG, **args.unet}
    net, unet_record = train_denoiser(
        latents, labels[tr], args.steps, args.seed, unet_config, batch=args.batch, lr=args.lr, p_uncond=args.p_uncond
    )
    _round_fp16(net)
    unet_record["eval_eps_mse"] = round(eval_eps_loss(net, latents, labels[tr]), 5)
    print("  ", unet_record)

    meta = dict(
        ae_config=ae_config,
        unet_config=unet_config,
        data=DATA_CONFIG,
        seed=args.seed,
        latent_shape=list(ae.latent_shape),
        image_size=ae.image_size,
        params=dict(unet=sum(p.numel() for p in net.parameters()), ae=sum(p.numel() for p in ae.parameters())),
        train=dict(
            autoencoder=ae_record,
            unet=unet_record,
            total_seconds=round(time.time() - t_start, 1),
            torch=torch.__version__,
            threads=torch.get_num_threads(),
        ),
    )
    save(args.out, net, ae, meta)
    tb = trained.Testbed(net.eval().requires_grad_(False), ae, meta)
    meta["curvature"] = {
        f"karras_{a}_vs_{b}": round(trained.curvature(tb, steps=(a, b))["mean_psnr"], 2)
        for a, b in ((25, 50), (50, 100))
    }
    save(args.out, net, ae, meta)
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) in {time.time() - t_start:.0f}s;"
        f" curvature {meta['curvature']}"
    )


if __name__ == "__main__":
    main()
