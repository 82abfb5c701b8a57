"""The trained testbed: a tiny class-conditional latent diffusion model that ships with the pack.

``load()`` rebuilds the autoencoder and the eps-UNet from ``weights/testbed.safetensors`` (the
module configs live in its metadata) and wraps them in k-diffusion conventions:
``denoiser(x, sigma, cond) -> x0`` with ``x = x0 + sigma * noise`` (VE latent) and the network run on
the VP latent ``x / sqrt(1 + sigma^2)`` at ComfyUI's nearest discrete timestep. The weights are
frozen (requires_grad False) but autograd is not switched off, so gradients w.r.t. the inputs work;
wrap sampling loops in ``torch.no_grad()`` when inputs require grad.

Curvature (``python -m comfyui_tempo.testbed.trained``): decoded PSNR between Euler samples from
the same noise, CFG 5, karras: 25 vs 50 steps about 46 dB, 50 vs 100 about 52 dB, 10 vs 100 about
34 dB. Trajectories of this small model are nearly straight at 25+ steps; step-skipping differences
show up in the 8-15 step regime.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..samplers import schedules
from . import data as data_mod
from .autoencoder import AutoEncoder
from .unet import UNet

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "testbed.safetensors"
RECORD_FILE = WEIGHTS_DIR / "testbed.json"

NUM_CLASSES = 10
NULL_CLASS = 10


def onehot(cond: torch.Tensor | None, batch: int, device=None) -> torch.Tensor:
    """Class indices [B] (10 = null; None = all null) -> the UNet's context [B, 1, 11]."""
    if cond is None:
        cond = torch.full((batch,), NULL_CLASS, dtype=torch.long, device=device)
    cond = torch.as_tensor(cond, device=device).long().reshape(-1)
    if cond.numel() == 1 and batch > 1:
        cond = cond.expand(batch)
    return F.one_hot(cond, NUM_CLASSES + 1).float()[:, None, :]


class Testbed:
    """The loaded testbed (see the module docstring). Build it with ``load()``."""

    num_classes = NUM_CLASSES
    null_class = NULL_CLASS

    def __init__(self, net: UNet, ae: AutoEncoder, meta: dict, device="cpu"):
        self.net = net
        self.ae = ae
        self.meta = meta
        self.device = torch.device(device)
        self.sigmas = schedules.discrete_sigmas().to(self.device)
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])
        self.latent_shape = tuple(ae.latent_shape)
        self.image_size = ae.image_size
        self._data = None
        self._latents = None

    # --- the denoisers -------------------------------------------------------------------------
    def _sigma_batch(self, sigma, x: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        return sigma

    def eps(self, x: torch.Tensor, sigma, context: torch.Tensor) -> torch.Tensor:
        """eps prediction for the VE latent x at noise level sigma ([B]) and context [B, 1, 11]."""
        sigma = self._sigma_batch(sigma, x)
        t = schedules.sigma_to_t(sigma, self.sigmas).float()
        # x / sqrt(sigma^2 + 1), computed exactly as ComfyUI's EPS.calculate_input does, so the
        # testbed inside ComfyUI gives bit-identical x0
        s = sigma.view(-1, 1, 1, 1).to(x.dtype)
        return self.net(x / (s**2 + 1.0) ** 0.5, t, context=context)

    def denoiser(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        """x0 estimate: x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma), onehot(cond))."""
        sigma = self._sigma_batch(sigma, x)
        eps = self.eps(x, sigma, onehot(cond, x.shape[0], x.device))
        return x - sigma.view(-1, 1, 1, 1).to(x.dtype) * eps

    def cfg_denoiser(self, scale: float):
        """A callable (x, sigma, cond) -> x0 = uncond + scale * (cond - uncond), with one batched
        net call on [cond batch; uncond batch] (scale == 1 runs only the cond batch)."""

        def fn(x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
            if scale == 1.0:
                return self.denoiser(x, sigma, cond)
            b = x.shape[0]
            s = self._sigma_batch(sigma, x)
            ctx = torch.cat([onehot(cond, b, x.device), onehot(None, b, x.device)])
            eps = self.eps(torch.cat([x, x]), torch.cat([s, s]), ctx)
            x0 = torch.cat([x, x]) - torch.cat([s, s]).view(-1, 1, 1, 1).to(x.dtype) * eps
            x0_c, x0_u = x0.chunk(2)
            return x0_u + scale * (x0_c - x0_u)

        return fn

    # --- latents <-> images --------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.ae.decode(latents.to(self.device))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.ae.encode(images.to(self.device))

    # --- the training data ---------------------------------------------------------------------
    def dataset(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """(images [N, 3, H, W] in [0, 1], labels [N]) of the coloured-digits set; "train" is what
        both models were trained on, "heldout" the images the autoencoder never saw, "all" both."""
        if self._data is None:
            d = self.meta["data"]
            self._data = data_mod.build(seed=d["seed"], size=d["size"], copies=d["copies"])
        images, labels = self._data
        tr, held = data_mod.split_indices(images.shape[0], self.meta["data"]["heldout_every"])
        idx = {"train": tr, "heldout": held, "all": torch.arange(images.shape[0])}[split]
        return images[idx], labels[idx]

    def latents(self) -> torch.Tensor:
        """The encoded training images (same order as ``dataset()``), [N, 4, h, w]."""
        if self._latents is None:
            images, _ = self.dataset()
            with torch.no_grad():
                self._latents = torch.cat([self.encode(chunk) for chunk in images.split(512)])
        return self._latents


def build_modules(meta: dict) -> tuple[UNet, AutoEncoder]:
    return UNet(**meta["unet_config"]), AutoEncoder(**meta["ae_config"])


def read_meta(path: Path = WEIGHTS_FILE) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["testbed"])


@functools.lru_cache(maxsize=4)
def _load(device: str, path: str) -> Testbed:
    from safetensors.torch import load_file

    meta = read_meta(Path(path))
    net, ae = build_modules(meta)
    sd = load_file(path)
    net.load_state_dict({k[5:]: v.float() for k, v in sd.items() if k.startswith("unet.")})
    ae.load_state_dict({k[3:]: v.float() for k, v in sd.items() if k.startswith("ae.")})
    net = net.float().eval().requires_grad_(False).to(device)
    ae = ae.float().eval().requires_grad_(False).to(device)
    return Testbed(net, ae, meta, device)


#: the shipped testbed models: "testbed" (AE1, 32 px, 4x8x8 latents) and "hr" (AE2, a different
#: latent space, the UNet fine-tuned at 32 and 64 px: 4x8x8 and 4x16x16 latents; testbed/train_hr.py)
MODELS = {"testbed": WEIGHTS_FILE, "hr": WEIGHTS_DIR / "testbed_hr.safetensors"}


def load(device="cpu", path: str | Path | None = None, name: str = "testbed") -> Testbed:
    """The testbed `name` ("testbed" or "hr", see MODELS) on `device` (cached: repeated calls
    return the same object); `path` overrides the weights file. Both autoencoders are fully
    convolutional (factor 4): encode / decode work at any multiple-of-4 image size."""
    if path is None:
        if name not in MODELS:
            raise ValueError(f"name: expected one of {sorted(MODELS)}, got {name!r}")
        path = MODELS[name]
    return _load(str(torch.device(device)), str(path))


# --- curvature measurement -------------------------------------------------------------------
@torch.no_grad()
def euler(denoise, x: torch.Tensor, sigmas: torch.Tensor, cond) -> torch.Tensor:
    """Plain Euler on the probability-flow ODE (k-diffusion's sample_euler without churn)."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - denoise(x, s, cond)) / s
        x = x + d * (s_next - s)
    return x


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1]."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp(min=1e-12)
    return -10 * torch.log10(mse)


@torch.no_grad()
def curvature(tb: Testbed, steps=(25, 50), scheduler="karras", cfg=5.0, seeds=(0, 1), classes=tuple(range(10))) -> dict:
    """Decoded PSNR between Euler samples with steps[0] and steps[1] steps, same noise."""
    cond = torch.tensor([c for _ in seeds for c in classes])
    noise = torch.cat(
        [torch.randn(len(classes), *tb.latent_shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    )
    den = tb.cfg_denoiser(cfg)
    imgs = []
    for n in steps:
        sig = schedules.get_sigmas(scheduler, n, tb.sigmas)
        imgs.append(tb.decode(euler(den, noise * sig[0], sig, cond)))
    p = psnr(imgs[0], imgs[1])
    pooled = -10 * torch.log10((imgs[0] - imgs[1]).pow(2).mean().clamp(min=1e-12))
    return {
        "steps": list(steps),
        "scheduler": scheduler,
        "cfg": cfg,
        "mean_psnr": float(p.mean()),
        "median_psnr": float(p.median()),
        "min_psnr": float(p.min()),
        "max_psnr": float(p.max()),
        "pooled_psnr": float(pooled),
        "n": int(p.numel()),
    }


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Curvature of the testbed's Euler trajectories.")
    ap.add_argument("--seeds", type=int, default=4, help="noise seeds (x 10 classes)")
    ap.add_argument("--cfg", type=float, nargs="+", default=[5.0])
    ap.add_argument("--path", default=None, help="weights file (default: the shipped one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tb = load(path=args.path)
    print(
        "decoded PSNR between Euler samples with the same noise (per-image mean / median / min;"
        " pooled = one PSNR over all images' MSE)"
    )
    for cfg in args.cfg:
        for scheduler in ("karras", "normal"):
            for steps in ((25, 50), (50, 100)):
                r = curvature(tb, steps=steps, scheduler=scheduler, cfg=cfg, seeds=tuple(range(args.seeds)))
                print(
                    f"{scheduler:6s} cfg {cfg:g} {steps[0]:3d} vs {steps[1]:3d} steps: mean {r['mean_psnr']:.2f} dB"
                    f"  median {r['median_psnr']:.2f}  min {r['min_psnr']:.2f}  pooled {r['pooled_psnr']:.2f}"
                    f"  ({r['n']} images)"
                )


if __name__ == "__main__":
    main()
