"""Train the second testbed model "hr": its own autoencoder (AE2, a different latent space) and the
testbed UNet fine-tuned in AE2's space at two resolutions (32 px -> 8x8 latents, 64 px -> 16x16).

    OMP_NUM_THREADS=1 python -m comfyui_tempo.testbed.train_hr

CPU, one thread, fixed seeds; writes ``testbed/weights/testbed_hr.safetensors`` (fp16, same layout
and metadata as ``testbed.safetensors``) and ``testbed_hr.json``. Same data generator as the first
testbed (``testbed/data.py``) rendered at 32 and 64 px. AE2 differs from AE1 in seed and widths and
is trained on both sizes (it is fully convolutional, factor 4). The denoiser starts from the shipped
testbed UNet (same architecture) and is fine-tuned on a mix of 8x8 and 16x16 AE2 latents, with the
same objective as ``train.py`` (eps-MSE on SD's discrete schedule, CFG dropout, EMA). Load it with
``testbed.trained.load(name="hr")``. Used by the Coop-Diffusion bench (different latent space,
resolution hand-off with one model at both sizes).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from ..samplers import schedules
from . import data as data_mod
from .autoencoder import AutoEncoder
from .train import _lr, _psnr, _round_fp16, denoiser_step, eval_eps_loss, save
from .unet import UNet

AE2_CONFIG = dict(in_channels=3, latent_channels=4, channels=[24, 48], num_res=[1, 1], image_size=64)
#: the 64 px set is what ``Testbed.dataset()`` returns for "hr"; the 32 px set is ``data_lr``
DATA_CONFIG = dict(seed=data_mod.DEFAULT_SEED, size=64, copies=2, heldout_every=10)
DATA_LR_CONFIG = dict(seed=data_mod.DEFAULT_SEED, size=32, copies=3, heldout_every=10)


def _batch(sets, step, sizes, g):
    """Alternate between the resolutions: even steps the first set, odd steps the second."""
    k = step % len(sets)
    x = sets[k]
    return x[torch.randint(x.shape[0], (sizes[k],), generator=g)], k


def train_autoencoder_multi(
    train_sets,
    held_sets,
    steps: int,
    seed: int,
    batches=(64, 16),
    lr: float = 3e-3,
    latent_noise: float = 0.05,
    log=print,
):
    """train.train_autoencoder's objective on alternating 32 px / 64 px batches."""
    torch.manual_seed(seed)
    ae = AutoEncoder(**AE2_CONFIG)
    opt = torch.optim.AdamW(ae.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup=max(1, steps // 20))
        x, _ = _batch(train_sets, step, batches, g)
        z = ae.encode_raw(x)
        z = z + latent_noise * z.detach().std() * torch.randn(z.shape, generator=g)
        loss = (ae.decode_raw(z) - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"  ae step {step + 1}/{steps}  loss {loss.item():.5f}  {time.time() - t0:.0f}s", flush=True)
    ae.eval()
    with torch.no_grad():
        raw = torch.cat([ae.encode_raw(c).flatten() for s in train_sets for c in s.split(256)])
        ae.shift.fill_(float(raw.mean()))
        ae.scale.fill_(1.0 / float(raw.std()))
        held_psnr = []
        for h in held_sets:
            rec = torch.cat([ae.decode(ae.encode(c)) for c in h.split(256)])
            held_psnr.append(round(_psnr(rec, h), 2))
    record = dict(
        steps=steps,
        batches=list(batches),
        lr=lr,
        latent_noise=latent_noise,
        seconds=round(time.time() - t0, 1),
        final_loss=round(loss.item(), 6),
        heldout_psnr_32=held_psnr[0],
        heldout_psnr_64=held_psnr[1],
        latent_shift=float(ae.shift),
        latent_scale=float(ae.scale),
    )
    return ae, record


def finetune_denoiser(
    net: UNet,
    latent_sets,
    label_sets,
    steps: int,
    seed: int,
    batches=(64, 16),
    lr: float = 1e-3,
    p_uncond: float = 0.15,
    ema_decay: float = 0.999,
    log=print,
):
    """train.train_denoiser's objective (eps-MSE, SD discrete schedule, CFG dropout, EMA) from an
    initial network, alternating 8x8 and 16x16 latent batches."""
    torch.manual_seed(seed + 1)
    net = net.train().requires_grad_(True)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    sigmas = schedules.discrete_sigmas()
    g = torch.Generator().manual_seed(seed + 1)
    t0 = time.time()
    running = [None, None]
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup=max(1, steps // 50))
        k = step % len(latent_sets)
        lat, lab = latent_sets[k], label_sets[k]
        batch = batches[k]
        idx = torch.randint(lat.shape[0], (batch,), generator=g)
        loss = denoiser_step(net, ema, opt, lat[idx], lab[idx].clone(), sigmas, g, p_uncond, ema_decay, step)
        running[k] = loss if running[k] is None else 0.96 * running[k] + 0.04 * loss
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(
                f"  unet step {step + 1}/{steps}  loss(ema) 8x8 {running[0]:.4f} 16x16 {running[1]:.4f}"
                f"  {time.time() - t0:.0f}s",
                flush=True,
            )
    record = dict(
        steps=steps,
        batches=list(batches),
        lr=lr,
        p_uncond=p_uncond,
        ema_decay=ema_decay,
        init="testbed.safetensors unet",
        seconds=round(time.time() - t0, 1),
        final_loss_smoothed_8=round(running[0], 5),
        final_loss_smoothed_16=round(running[1], 5),
    )
    return ema.eval(), record


def main(argv=None) -> None:
    from safetensors.torch import load_file

    from . import trained

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ae-steps", type=int, default=1400)
    ap.add_argument("--steps", type=int, default=2800, help="denoiser fine-tuning steps")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument(
        "--init", type=Path, default=trained.WEIGHTS_FILE, help="testbed file whose UNet starts the fine-tune"
    )
    ap.add_argument("--out", type=Path, default=trained.WEIGHTS_DIR / "testbed_hr.safetensors")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.time()

    sets, labels, held = [], [], []
    for cfg in (DATA_LR_CONFIG, DATA_CONFIG):
        images, lab = data_mod.build(cfg["seed"], cfg["size"], cfg["copies"])
        tr, he = data_mod.split_indices(images.shape[0], cfg["heldout_every"])
        sets.append(images[tr])
        labels.append(lab[tr])
        held.append(images[he])
    print(
        f"data: 32 px {tuple(sets[0].shape)}, 64 px {tuple(sets[1].shape)} ({time.time() - t_start:.0f}s)", flush=True
    )

    print("autoencoder AE2:", flush=True)
    ae, ae_record = train_autoencoder_multi(sets, held, args.ae_steps, args.seed)
    print("  ", ae_record, flush=True)
    _round_fp16(ae)
    ae = ae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = [torch.cat([ae.encode(c) for c in s.split(256)]) for s in sets]
    for lat in latents:
        print(f"latents: {tuple(lat.shape)} mean {lat.mean():.3f} std {lat.std():.3f}", flush=True)

    init_meta = trained.read_meta(args.init)
    net = UNet(**init_meta["unet_config"])
    net.load_state_dict({k[5:]: v.float() for k, v in load_file(str(args.init)).items() if k.startswith("unet.")})
    print("denoiser (fine-tune from", args.init.name, "):", flush=True)
    net, unet_record = finetune_denoiser(net, latents, labels, args.steps, args.seed, lr=args.lr)
    _round_fp16(net)
    unet_record["eval_eps_mse_8"] = round(eval_eps_loss(net, latents[0], labels[0], n=512), 5)
    unet_record["eval_eps_mse_16"] = round(eval_eps_loss(net, latents[1], labels[1], n=256), 5)
    print("  ", unet_record, flush=True)

    meta = dict(
        name="hr",
        ae_config=ae.config,
        unet_config=init_meta["unet_config"],
        data=DATA_CONFIG,
        data_lr=DATA_LR_CONFIG,
        seed=args.seed,
        latent_shape=list(ae.latent_shape),
        image_size=ae.image_size,
        sizes=[32, 64],
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
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) in {time.time() - t_start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
