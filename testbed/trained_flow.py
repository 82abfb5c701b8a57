"""The flow testbed: a small class-conditional rectified-flow DiT on coloured shapes (pixel space, 3x16x16),
the third testbed, different from ``testbed`` / ``testbed-hr`` in data (``testbed/shapes.py``),
architecture (a transformer, ``testbed/dit.py``) and parameterisation (velocity, like SD3 and Flux).

``load()`` rebuilds the DiT and its evaluation classifier from ``weights/testbed_flow.safetensors``
(configs in its metadata) and wraps them in k-diffusion conventions, as ComfyUI runs a CONST model
with ``ModelSamplingDiscreteFlow`` (shift 3, multiplier 1000; ``samplers/schedules.py``'s ``Flow``):
``denoiser(x, sigma, cond) -> x0 = x - sigma * v(x, timestep = 1000 sigma, cond)`` where
``x = (1 - sigma) x0 + sigma noise`` and the images are x0 in [-1, 1] (``decode`` maps them to 0..1).
Sampling starts from ``noise * sigmas[0]`` (sigma_max is 1), as ComfyUI's CONST noise scaling of an
empty latent does.

Curvature and sample quality: ``python -m comfyui_tempo.testbed.trained_flow``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from ..samplers import schedules
from . import shapes
from .classifier import Classifier
from .dit import DiT
from .trained import euler, psnr

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "testbed_flow.safetensors"
RECORD_FILE = WEIGHTS_DIR / "testbed_flow.json"
NUM_CLASSES = 10
NULL_CLASS = 10


class FlowTestbed:
    """The loaded flow testbed (see the module docstring). Build it with ``load()``."""

    num_classes = NUM_CLASSES
    null_class = NULL_CLASS

    def __init__(self, net: DiT, clf: Classifier | None, meta: dict, device="cpu"):
        self.net = net
        self.clf = clf
        self.meta = meta
        self.device = torch.device(device)
        self.sampling = schedules.Flow(**meta["sampling"])
        self.sigmas = self.sampling.sigmas.to(self.device)
        s = meta["data"]["size"]
        self.latent_shape = (3, s, s)
        self.image_size = s
        self._data = None

    # --- the denoisers -------------------------------------------------------------------------
    def _batch(self, sigma, cond, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        if cond is None:
            cond = torch.full((b,), NULL_CLASS, dtype=torch.long, device=x.device)
        cond = torch.as_tensor(cond, device=x.device).long().reshape(-1)
        if sigma.numel() not in (1, b) or cond.numel() not in (1, b):
            raise ValueError(f"sigma / cond: expected 1 or {b} values, got {sigma.numel()} / {cond.numel()}")
        return sigma.expand(b), cond.expand(b)

    def velocity(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        """The network's output v ~ noise - x0 at noise level sigma (class cond; None or 10 = unconditional)."""
        sigma, cond = self._batch(sigma, cond, x)
        return self.net(x, self.sampling.timestep(sigma), cond)

    def denoiser(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        """x0 estimate: x - sigma * v (ComfyUI's CONST.calculate_denoised)."""
        s, _ = self._batch(sigma, cond, x)
        return x - s.view(-1, 1, 1, 1) * self.velocity(x, sigma, cond)

    def cfg_denoiser(self, scale: float):
        """(x, sigma, cond) -> x0_uncond + scale * (x0_cond - x0_uncond), one batched network call on
        [cond; uncond] (scale 1 runs only the conditional batch)."""

        def fn(x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
            if scale == 1.0:
                return self.denoiser(x, sigma, cond)
            s, c = self._batch(sigma, cond, x)
            x0 = self.denoiser(torch.cat([x, x]), torch.cat([s, s]), torch.cat([c, torch.full_like(c, NULL_CLASS)]))
            x0_c, x0_u = x0.chunk(2)
            return x0_u + scale * (x0_c - x0_u)

        return fn

    # --- pixels --------------------------------------------------------------------------------
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space [-1, 1] -> images in [0, 1] (clamped)."""
        return ((x.to(self.device) + 1) / 2).clamp(0, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device) * 2 - 1

    def dataset(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """(images [N, 3, H, W] in [0, 1], labels [N]) of the shapes set: "train", "heldout" or "all"."""
        if self._data is None:
            d = self.meta["data"]
            self._data = shapes.build(seed=d["seed"], size=d["size"], per_class=d["per_class"])
        images, labels = self._data
        tr, held = shapes.split_indices(images.shape[0], self.meta["data"]["heldout_every"])
        idx = {"train": tr, "heldout": held, "all": torch.arange(images.shape[0])}[split]
        return images[idx], labels[idx]

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted shape class [N] of images in [0, 1] (the shipped classifier)."""
        if self.clf is None:
            raise RuntimeError("classify: this flow testbed was loaded without its classifier")
        return self.clf.embed(images.to(self.device))[1]


def read_meta(path: Path = WEIGHTS_FILE) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["testbed_flow"])


def build_modules(meta: dict) -> tuple[DiT, Classifier]:
    return DiT(**meta["dit_config"]), Classifier(**meta["classifier_config"])


@functools.lru_cache(maxsize=4)
def _load(device: str, path: str) -> FlowTestbed:
    from safetensors.torch import load_file

    meta = read_meta(Path(path))
    net, clf = build_modules(meta)
    sd = load_file(path)
    net.load_state_dict({k[4:]: v.float() for k, v in sd.items() if k.startswith("dit.")})
    clf.load_state_dict({k[4:]: v.float() for k, v in sd.items() if k.startswith("clf.")})
    net = net.float().eval().requires_grad_(False).to(device)
    clf = clf.float().eval().requires_grad_(False).to(device)
    return FlowTestbed(net, clf, meta, device)


def load(device="cpu", path: str | Path | None = None) -> FlowTestbed:
    """The shipped flow testbed on `device` (cached); `path` overrides the weights file."""
    p = Path(path) if path is not None else WEIGHTS_FILE
    if not p.is_file():
        raise FileNotFoundError(
            f"path: flow testbed weights not found at {p}; run `python -m comfyui_tempo.testbed.train_flow`"
        )
    return _load(str(torch.device(device)), str(p))


# --- measurements ----------------------------------------------------------------------------
def batch(classes=tuple(range(10)), seeds=(0, 1), shape=(3, 16, 16)) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit noise [len(seeds) * len(classes), *shape], classes): one noise tensor per seed, for all classes."""
    cond = torch.tensor([c for _ in seeds for c in classes])
    noise = torch.cat([torch.randn(len(classes), *shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    return noise, cond


@torch.no_grad()
def sample(tb: FlowTestbed, noise, cond, steps: int = 30, scheduler: str = "simple", cfg: float = 4.0):
    """Euler samples (decoded images in [0, 1])."""
    sig = schedules.get_sigmas(scheduler, steps, tb.sampling)
    return tb.decode(euler(tb.cfg_denoiser(cfg), noise * sig[0], sig, cond))


@torch.no_grad()
def class_accuracy(tb: FlowTestbed, steps: int = 30, scheduler: str = "simple", cfg: float = 4.0, seeds=(0, 1)):
    """Fraction of Euler samples (10 classes x seeds) that the classifier puts in the class asked for."""
    noise, cond = batch(seeds=seeds, shape=tb.latent_shape)
    return float((tb.classify(sample(tb, noise, cond, steps, scheduler, cfg)) == cond).float().mean())


@torch.no_grad()
def curvature(tb: FlowTestbed, steps=(25, 50), scheduler="karras", cfg=4.0, seeds=(0, 1)) -> dict:
    """Decoded PSNR between Euler samples with steps[0] and steps[1] steps from the same noise."""
    noise, cond = batch(seeds=seeds, shape=tb.latent_shape)
    a, b = (sample(tb, noise, cond, n, scheduler, cfg) for n in steps)
    p = psnr(a, b)
    pooled = -10 * torch.log10((a - b).pow(2).mean().clamp(min=1e-12))
    return {
        "steps": list(steps),
        "scheduler": scheduler,
        "cfg": cfg,
        "mean_psnr": float(p.mean()),
        "min_psnr": float(p.min()),
        "pooled_psnr": float(pooled),
        "n": int(p.numel()),
    }


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Curvature and class accuracy of the flow testbed's Euler samples.")
    ap.add_argument("--seeds", type=int, default=4, help="noise seeds (x 10 classes)")
    ap.add_argument("--cfg", type=float, nargs="+", default=[4.0])
    ap.add_argument("--path", default=None, help="weights file (default: the shipped one)")
    ap.add_argument("--grid", default=None, help="also write a sample grid PNG here (30 steps, simple)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tb = load(path=args.path)
    seeds = tuple(range(args.seeds))
    for cfg in args.cfg:
        for scheduler in ("simple", "normal", "karras"):
            acc = class_accuracy(tb, 30, scheduler, cfg, seeds)
            print(f"cfg {cfg:g} {scheduler:7s} 30 steps: class accuracy {acc:.3f}")
        for scheduler in ("karras", "normal"):
            for steps in ((25, 50), (10, 100)):
                r = curvature(tb, steps, scheduler, cfg, seeds)
                print(
                    f"cfg {cfg:g} {scheduler:7s} {steps[0]:3d} vs {steps[1]:3d} steps: mean {r['mean_psnr']:.2f} dB"
                    f"  min {r['min_psnr']:.2f}  pooled {r['pooled_psnr']:.2f}  ({r['n']} images)"
                )
    if args.grid:
        save_grid(tb, args.grid, cfg=args.cfg[0])


def save_grid(tb: FlowTestbed, path: str, cfg: float = 4.0, seeds=range(8), steps: int = 30) -> None:
    """A PNG: one column per class, one row per seed (Euler, `steps` steps, simple scheduler)."""
    from PIL import Image

    noise, cond = batch(seeds=tuple(seeds), shape=tb.latent_shape)
    img = sample(tb, noise, cond, steps, "simple", cfg)
    n, s = len(tuple(seeds)), tb.image_size
    grid = img.view(n, 10, 3, s, s).permute(0, 3, 1, 4, 2).reshape(n * s, 10 * s, 3)
    k = max(1, 64 // s)
    Image.fromarray((grid.numpy() * 255).round().astype("uint8")).resize((10 * k * s, n * k * s), Image.NEAREST).save(
        path
    )


if __name__ == "__main__":
    main()
