"""The pixel-space UNet testbeds: small class-conditional UNets on ComfyUI's discrete schedule in pixel space
(3x16x16), and four in real latent spaces (SD1.x's and SDXL's 4x16x16, SD3's and FLUX.1's 16x16x16, through the real
TAESDs), one per entry of ``SPECS``:

* ``vpred``: predicts v on coloured digits, the fourth testbed, held out from every choice of the
  AdaptiveDiffusion default made after the flow testbed was measured. It differs from ``testbed`` /
  ``testbed-hr`` in parameterisation (v, like SD2-768-v) and space (pixels, no autoencoder), and from the flow
  DiT in data, architecture and parameterisation.
* ``shapes_eps``: predicts eps on the flow testbed's coloured shapes (drawn with another seed), the fifth
  testbed, trained after the v-prediction testbed was measured and held out from every choice made after
  that. It differs from ``testbed`` / ``testbed-hr`` in data and space, from the flow DiT in architecture and
  parameterisation, and from ``vpred`` in data, parameterisation and UNet shape.
* ``shapes_v``: predicts v on coloured shapes of a third draw, with a UNet of another shape (width 24, three
  levels, one res block per level, 0.67M parameters), the sixth testbed, trained after ``respace`` auto was fixed
  and held out from every choice. It differs from ``shapes_eps`` in parameterisation and UNet shape, from ``vpred``
  in data and UNet shape, from the flow DiT in architecture and parameterisation.
* ``digits_flow``: a rectified-flow UNet (velocity noise - x0, ComfyUI's CONST with ``ModelSamplingDiscreteFlow``
  at shift 8, as ComfyUI's video workflows set for Wan) on coloured digits of a fourth draw, the seventh testbed and
  the second flow model, trained after dpmpp_2m_sde's plan where every skip holds was fixed and held out from every
  choice. It differs from the flow DiT in architecture (a UNet, width 32, attention at 8x8), data (digits) and
  shift (8, not 3); from ``vpred`` in parameterisation, shift and UNet shape.
* ``vpred_zsnr``: predicts v on coloured digits of a fifth draw on ComfyUI's zero-terminal-SNR table
  (``ModelSamplingDiscrete(zsnr=True)``, sigma_max ~4518 instead of 14.6: what v-prediction ztsnr checkpoints such as
  NoobAI-XL v-pred run with), with a UNet of a fourth shape (width 32, two levels, one res block, attention at the
  second, 2 heads), the eighth testbed, trained after every rule of the AdaptiveDiffusion default was fixed, the
  rules chosen on all five eps / v models before it (euler_ancestral's hold after a long gap, its start below eta 1)
  included: the only eps / v model no choice has seen. It differs from ``vpred`` in schedule, data draw and UNet shape.
* ``shapes_zsnr``: predicts v on coloured shapes of a fourth draw on the same zero-terminal-SNR table, with a UNet
  of a fifth shape (width 32, three levels, one res block, attention at the third, 4 heads), the ninth testbed,
  trained to hold out the planner's rule for noise-dominated steps, which was chosen on ``vpred_zsnr``.
* ``sd_latent``: predicts eps in SD1.x's real latent space: coloured shapes of a fifth draw at 128 px, encoded by
  the real TAESD (``taesd_encoder`` / ``taesd_decoder.safetensors``, read from ``$TEMPO_TAESD_DIR`` or
  shared/assets/taesd, never copied) to 4x16x16 latents (TAESD's output is SD's scaled latent space, about unit
  spread: what an SD1.5 UNet sees), decoded by TAESD's decoder; a UNet of a sixth shape (width 32, three levels, one
  res block, attention at the second, 4 heads). The tenth testbed, trained after every rule of the AdaptiveDiffusion
  default was fixed (the noisy samplers' x0 reuse included): blind to all of them, and the first latent model beside
  the two design testbeds (whose autoencoders are the lab's own).
* ``sdxl_latent``: predicts eps in SDXL's real latent space (coloured digits on flat, gradient and photo backgrounds
  at 128 px through the real taesdxl), a UNet of another shape; trained to hold out the x0 reuse's 3-against-14.6
  choice.
* ``sd3_flow``: a rectified-flow UNet (noise - x0, ComfyUI's CONST with ``ModelSamplingDiscreteFlow`` at shift 3, SD3's
  ``ModelSamplingSD3`` default) in SD3's real latent space: coloured shapes of a sixth draw at 128 px encoded by the
  real taesd3 to 16x16x16 latents, decoded by its decoder; a UNet of a seventh shape (width 32, three levels, one res
  block, attention at the second and third, 2 heads). The twelfth testbed, trained after every rule of the default was
  fixed: blind to all of them, and the first flow model in a real latent space (what SD3 / Flux users sample in).
* ``flux_flow``: a rectified-flow UNet in FLUX.1's real latent space (coloured digits on flat, gradient and photo
  backgrounds at 128 px through the real taef1, 16x16x16 latents) at Flux's time shift (``ModelSamplingFlux`` at mu
  1.15: ``ModelSamplingDiscreteFlow``'s form at shift e^1.15); a UNet of an eighth shape (width 32, two levels, two res
  blocks, attention at the second, 2 heads). The thirteenth testbed, trained after ``sd3_flow``'s grid showed that
  where a flow model should skip depends on the model, to hold out a rule for it; no AdaptiveDiffusion run of it has
  been read (docs/testbed-vpred.md).

Training (CPU, one thread, fixed seeds; ~15 min each):

    OMP_NUM_THREADS=1 python -m comfyui_tempo.testbed.trained_vpred --train [--model shapes_eps|shapes_v|digits_flow|vpred_zsnr|shapes_zsnr|sd_latent|sdxl_latent|sd3_flow|flux_flow]

writes ``weights/testbed_vpred.safetensors`` (or ``testbed_shapes_eps`` / ``testbed_shapes_v`` / ``testbed_digits_flow`` /
``testbed_vpred_zsnr`` / ``testbed_shapes_zsnr`` / ``testbed_sd_latent`` / ``testbed_sdxl_latent`` / ``testbed_sd3_flow`` /
``testbed_flux_flow``;
fp16 weights; configs, seeds and the training record in its metadata) and the ``.json`` beside it. The UNet (``testbed/unet.py``) sees the VP input
x / sqrt(1 + sigma^2) at Stable Diffusion's discrete timestep and learns v = alpha eps - s x0
(alpha = 1 / sqrt(1 + sigma^2), s = sigma alpha) or eps, t uniform, 15 % null labels, EMA weights; the flow UNet
sees x = (1 - sigma) x0 + sigma noise itself at ComfyUI's flow timestep 1000 sigma and learns noise - x0, with sigma
logit-normal (SD3's training density, as the flow DiT).
``load()`` wraps it as ComfyUI runs a V_PREDICTION model with ``ModelSamplingDiscrete``:
``x0 = x / (1 + sigma^2) - v sigma / sqrt(1 + sigma^2)`` on the VE latent x = x0 + sigma noise (an EPS model:
``x0 = x - sigma eps``; the flow model: ``x0 = x - sigma v``, ComfyUI's CONST).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..samplers import schedules
from . import data as data_mod
from . import shapes as shapes_mod
from .trained import euler, psnr
from .unet import UNet

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "testbed_vpred.safetensors"
NUM_CLASSES = 10
NULL_CLASS = 10
DATA_CONFIG = dict(seed=data_mod.DEFAULT_SEED + 7, size=16, copies=2, heldout_every=10)
UNET_CONFIG = dict(
    in_channels=3,
    model_channels=24,
    channel_mult=[1, 2, 2],
    num_res_blocks=2,
    attention_levels=[2],
    num_heads=4,
    context_dim=11,
    dropout=0.0,
)
SHAPES_DATA_CONFIG = dict(kind="shapes", seed=shapes_mod.DEFAULT_SEED + 17, size=16, per_class=500, heldout_every=10)
SHAPES_UNET_CONFIG = dict(
    in_channels=3,
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=2,
    attention_levels=[1],
    num_heads=4,
    context_dim=11,
    dropout=0.0,
)
SHAPES_V_DATA_CONFIG = dict(kind="shapes", seed=shapes_mod.DEFAULT_SEED + 29, size=16, per_class=500, heldout_every=10)
SHAPES_V_UNET_CONFIG = dict(
    in_channels=3,
    model_channels=24,
    channel_mult=[1, 2, 2],
    num_res_blocks=1,
    attention_levels=[2],
    num_heads=2,
    context_dim=11,
    dropout=0.0,
)
DIGITS_FLOW_DATA_CONFIG = dict(seed=data_mod.DEFAULT_SEED + 53, size=16, copies=2, heldout_every=10)
DIGITS_FLOW_UNET_CONFIG = dict(
    in_channels=3,
    model_channels=32,
    channel_mult=[1, 2, 2],
    num_res_blocks=1,
    attention_levels=[1],
    num_heads=4,
    context_dim=11,
    dropout=0.0,
)
#: the flow UNet's model sampling (schedules.Flow): shift 8, as ComfyUI's example workflows set for Wan 2.1
DIGITS_FLOW_SAMPLING = dict(shift=8.0, multiplier=1000)
VPRED_ZSNR_DATA_CONFIG = dict(seed=data_mod.DEFAULT_SEED + 71, size=16, copies=2, heldout_every=10)
VPRED_ZSNR_UNET_CONFIG = dict(
    in_channels=3,
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=1,
    attention_levels=[1],
    num_heads=2,
    context_dim=11,
    dropout=0.0,
)
SHAPES_ZSNR_DATA_CONFIG = dict(
    kind="shapes", seed=shapes_mod.DEFAULT_SEED + 41, size=16, per_class=500, heldout_every=10
)
SHAPES_ZSNR_UNET_CONFIG = dict(
    in_channels=3,
    model_channels=32,
    channel_mult=[1, 2, 2],
    num_res_blocks=1,
    attention_levels=[2],
    num_heads=4,
    context_dim=11,
    dropout=0.0,
)
SD_LATENT_DATA_CONFIG = dict(
    kind="shapes", seed=shapes_mod.DEFAULT_SEED + 59, size=128, per_class=400, heldout_every=10, vae="taesd"
)
SD_LATENT_UNET_CONFIG = dict(
    in_channels=4,
    model_channels=32,
    channel_mult=[1, 2, 2],
    num_res_blocks=1,
    attention_levels=[1],
    num_heads=4,
    context_dim=11,
    dropout=0.0,
)
SDXL_LATENT_DATA_CONFIG = dict(seed=data_mod.DEFAULT_SEED + 83, size=128, copies=2, heldout_every=10, vae="taesdxl")
SDXL_LATENT_UNET_CONFIG = dict(
    in_channels=4,
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=2,
    attention_levels=[1],
    num_heads=4,
    context_dim=11,
    dropout=0.0,
)
SD3_FLOW_DATA_CONFIG = dict(
    kind="shapes", seed=shapes_mod.DEFAULT_SEED + 97, size=128, per_class=400, heldout_every=10, vae="taesd3"
)
SD3_FLOW_UNET_CONFIG = dict(
    in_channels=16,
    model_channels=32,
    channel_mult=[1, 2, 2],
    num_res_blocks=1,
    attention_levels=[1, 2],
    num_heads=2,
    context_dim=11,
    dropout=0.0,
)
#: sd3_flow's model sampling: shift 3, SD3's (ComfyUI's ModelSamplingSD3 default)
SD3_FLOW_SAMPLING = dict(shift=3.0, multiplier=1000)
FLUX_FLOW_DATA_CONFIG = dict(seed=data_mod.DEFAULT_SEED + 131, size=128, copies=2, heldout_every=10, vae="taef1")
FLUX_FLOW_UNET_CONFIG = dict(
    in_channels=16,
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=2,
    attention_levels=[1],
    num_heads=2,
    context_dim=11,
    dropout=0.0,
)
#: flux_flow's model sampling: Flux's time shift at mu 1.15 (ComfyUI's ModelSamplingFlux at its max_shift, what
#: Flux dev runs at 1024 px): e^mu t / (1 + (e^mu - 1) t), ModelSamplingDiscreteFlow's form at shift e^1.15
FLUX_FLOW_SAMPLING = dict(shift=round(math.exp(1.15), 6), multiplier=1000)
#: the flow testbeds' model sampling (schedules.Flow)
FLOW_SAMPLINGS = {"digits_flow": DIGITS_FLOW_SAMPLING, "sd3_flow": SD3_FLOW_SAMPLING, "flux_flow": FLUX_FLOW_SAMPLING}
#: the latent space each TAESD of a data config's ``vae`` encodes to
VAE_SPACES = {"taesd": "SD1.x", "taesdxl": "SDXL", "taesd3": "SD3", "taef1": "FLUX.1"}
#: the testbeds trained and sampled on the zero-terminal-SNR table (schedules.discrete_sigmas(zsnr=True))
ZSNR_MODELS = frozenset({"vpred_zsnr", "shapes_zsnr"})
#: name -> (prediction, data config, UNet config, weights file, seed offset)
SPECS = {
    "vpred": ("v", DATA_CONFIG, UNET_CONFIG, WEIGHTS_FILE, 3),
    "shapes_eps": ("eps", SHAPES_DATA_CONFIG, SHAPES_UNET_CONFIG, WEIGHTS_DIR / "testbed_shapes_eps.safetensors", 5),
    "shapes_v": ("v", SHAPES_V_DATA_CONFIG, SHAPES_V_UNET_CONFIG, WEIGHTS_DIR / "testbed_shapes_v.safetensors", 7),
    "digits_flow": (
        "flow",
        DIGITS_FLOW_DATA_CONFIG,
        DIGITS_FLOW_UNET_CONFIG,
        WEIGHTS_DIR / "testbed_digits_flow.safetensors",
        11,
    ),
    "vpred_zsnr": (
        "v",
        VPRED_ZSNR_DATA_CONFIG,
        VPRED_ZSNR_UNET_CONFIG,
        WEIGHTS_DIR / "testbed_vpred_zsnr.safetensors",
        13,
    ),
    "shapes_zsnr": (
        "v",
        SHAPES_ZSNR_DATA_CONFIG,
        SHAPES_ZSNR_UNET_CONFIG,
        WEIGHTS_DIR / "testbed_shapes_zsnr.safetensors",
        17,
    ),
    "sd_latent": (
        "eps",
        SD_LATENT_DATA_CONFIG,
        SD_LATENT_UNET_CONFIG,
        WEIGHTS_DIR / "testbed_sd_latent.safetensors",
        19,
    ),
    "sdxl_latent": (
        "eps",
        SDXL_LATENT_DATA_CONFIG,
        SDXL_LATENT_UNET_CONFIG,
        WEIGHTS_DIR / "testbed_sdxl_latent.safetensors",
        23,
    ),
    "sd3_flow": ("flow", SD3_FLOW_DATA_CONFIG, SD3_FLOW_UNET_CONFIG, WEIGHTS_DIR / "testbed_sd3_flow.safetensors", 29),
    "flux_flow": (
        "flow",
        FLUX_FLOW_DATA_CONFIG,
        FLUX_FLOW_UNET_CONFIG,
        WEIGHTS_DIR / "testbed_flux_flow.safetensors",
        31,
    ),
}


def taesd_folder():
    """The folder of the real TAESD files (``vaes.find_taesd``: ``$TEMPO_TAESD_DIR``, else shared/assets/taesd inside or
    beside the checkout); None where none is found."""
    from .vaes import find_taesd

    return find_taesd()


@functools.lru_cache(maxsize=2)
def data_vae(name: str):
    """The real TAESD of a latent testbed's data config (``vae``), read from taesd_folder() (never copied)."""
    from .vaes import TAESD

    folder = taesd_folder()
    if folder is None:
        raise FileNotFoundError(
            f"the {name} testbed needs the real TAESD files ({name}_encoder / _decoder.safetensors): set "
            "TEMPO_TAESD_DIR to their folder (the project's shared/assets/taesd)"
        )
    return TAESD.load(name, folder)


def build_data(d: dict):
    """(images in [0, 1], labels) of a data config: the digits (data.py) or the shapes (shapes.py). (A config with a
    ``vae`` is encoded to its latents by ``encode_data``.)"""
    if d.get("kind") == "shapes":
        return shapes_mod.build(d["seed"], d["size"], d["per_class"])
    return data_mod.build(d["seed"], d["size"], d["copies"])


@torch.no_grad()
def encode_data(d: dict, images: torch.Tensor, chunk: int = 20) -> torch.Tensor:
    """The model-space latents of images in [0, 1] for a data config with a ``vae`` (TAESD's own space, which is
    SD's scaled latent space: what an SD1.5 UNet sees), else the images mapped to [-1, 1]."""
    if not d.get("vae"):
        return images * 2 - 1
    vae = data_vae(d["vae"])
    return torch.cat([vae._encode_model(images[i : i + chunk]) for i in range(0, images.shape[0], chunk)])


class VPredTestbed:
    """A loaded pixel-space UNet testbed (see the module docstring; ``prediction`` is "v", "eps" or "flow"). Build
    it with ``load()``."""

    num_classes = NUM_CLASSES
    null_class = NULL_CLASS

    def __init__(self, net: UNet, meta: dict):
        self.net = net
        self.meta = meta
        self.prediction = meta.get("prediction", "v")
        #: the model sampling: schedules.Flow for the flow model (sigmas its table), else None (the discrete table)
        self.sampling = schedules.Flow(**meta["sampling"]) if self.prediction == "flow" else None
        #: the zero-terminal-SNR table where the metadata says zsnr (ComfyUI's ModelSamplingDiscrete(zsnr=True))
        self.zsnr = bool(meta.get("zsnr", False))
        self.sigmas = self.sampling.sigmas if self.sampling is not None else schedules.discrete_sigmas(zsnr=self.zsnr)
        s = meta["data"]["size"]
        #: the real VAE of a latent testbed (meta data "vae"), else None (pixel space)
        self.vae = data_vae(meta["data"]["vae"]) if meta["data"].get("vae") else None
        self.latent_shape = (self.vae.latent_channels, s // 8, s // 8) if self.vae is not None else (3, s, s)

    def velocity(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        """The network's output (v, eps for an eps model, noise - x0 for the flow model) at the latent x (VE, or the
        flow's) and noise level sigma (class cond; None = unconditional)."""
        b = x.shape[0]
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1).expand(b)
        c = torch.full((b,), NULL_CLASS) if cond is None else torch.as_tensor(cond).long().reshape(-1).expand(b)
        ctx = F.one_hot(c, NULL_CLASS + 1).float()[:, None]
        if self.sampling is not None:  # CONST: the network sees x itself at the flow timestep
            return self.net(x, self.sampling.timestep(s), context=ctx)
        xc = x * schedules.vp_scale(s).view(-1, 1, 1, 1)
        return self.net(xc, schedules.sigma_to_t(s, self.sigmas), context=ctx)

    def denoiser(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        """x0 = x / (1 + sigma^2) - v sigma / sqrt(1 + sigma^2) (ComfyUI's V_PREDICTION.calculate_denoised), or
        x0 = x - sigma eps (EPS), or x0 = x - sigma v (CONST, the flow model)."""
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        if self.prediction in ("eps", "flow"):
            return x - s * self.velocity(x, sigma, cond)
        return x / (1 + s**2) - self.velocity(x, sigma, cond) * s / (1 + s**2).sqrt()

    def cfg_denoiser(self, scale: float):
        """(x, sigma, cond) -> x0_uncond + scale * (x0_cond - x0_uncond), one batched call on [cond; uncond]."""

        def fn(x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
            b = x.shape[0]
            s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1).expand(b)
            c = torch.as_tensor(cond).long().reshape(-1).expand(b)
            x0 = self.denoiser(torch.cat([x, x]), torch.cat([s, s]), torch.cat([c, torch.full_like(c, NULL_CLASS)]))
            x0_c, x0_u = x0.chunk(2)
            return x0_u + scale * (x0_c - x0_u)

        return fn

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space [-1, 1] -> images in [0, 1] (clamped); a latent testbed's latents through its TAESD decoder."""
        if self.vae is not None:
            return self.vae._decode_model(x).clamp(0, 1)
        return ((x + 1) / 2).clamp(0, 1)


@functools.lru_cache(maxsize=4)
def load(path: str | None = None, model: str = "vpred") -> VPredTestbed:
    """A shipped testbed of ``SPECS`` (default the v-prediction one), or the file at path (cached)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = str(SPECS[model][3] if path is None else path)
    with safe_open(path, framework="pt") as f:
        md = f.metadata()
        meta = json.loads(md[next(k for k in md if k.startswith("testbed_"))])
    net = UNet(**meta["unet_config"])
    net.load_state_dict({k[5:]: v.float() for k, v in load_file(path).items() if k.startswith("unet.")})
    return VPredTestbed(net.eval().requires_grad_(False), meta)


def vpred_step(
    net, ema, opt, x0, y, sigmas, g, p_uncond: float, ema_decay: float, step: int, prediction: str = "v", sampling=None
) -> float:
    """One training step: label dropout to the null class, t uniform in 0..999, v-MSE (or eps-MSE) on the VP
    input; for prediction "flow" (sampling: its schedules.Flow) sigma = sigmoid(N(0, 1)), x = (1 - sigma) x0 +
    sigma noise and the MSE to noise - x0 at the flow timestep."""
    from .train import optimizer_step

    b = x0.shape[0]
    y[torch.rand(b, generator=g) < p_uncond] = NULL_CLASS
    ctx = F.one_hot(y, NULL_CLASS + 1).float()[:, None]
    if prediction == "flow":
        s = torch.sigmoid(torch.randn(b, generator=g))
        noise = torch.randn(x0.shape, generator=g)
        sv = s.view(-1, 1, 1, 1)
        loss = (net((1 - sv) * x0 + sv * noise, sampling.timestep(s), context=ctx) - (noise - x0)).pow(2).mean()
        return optimizer_step(net, ema, opt, loss, ema_decay, step)
    t = torch.randint(0, 1000, (b,), generator=g)
    sigma = sigmas[t].view(-1, 1, 1, 1)
    eps = torch.randn(x0.shape, generator=g)
    alpha = schedules.vp_scale(sigma)
    x_in = (x0 + sigma * eps) * alpha
    v = alpha * eps - sigma * alpha * x0 if prediction == "v" else eps
    loss = (net(x_in, t.float(), context=ctx) - v).pow(2).mean()
    return optimizer_step(net, ema, opt, loss, ema_decay, step)


@torch.no_grad()
def curvature(tb: VPredTestbed, steps=(25, 50), scheduler="karras", cfg=5.0, seeds=(0, 1)) -> float:
    """Mean per-image PSNR between Euler samples with steps[0] and steps[1] steps, same noise."""
    cond = torch.arange(NUM_CLASSES).repeat(len(seeds))
    noise = torch.cat(
        [torch.randn(NUM_CLASSES, *tb.latent_shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    )
    den = tb.cfg_denoiser(cfg)
    imgs = []
    for n in steps:
        sig = schedules.get_sigmas(scheduler, n, tb.sigmas if tb.sampling is None else tb.sampling)
        imgs.append(tb.decode(euler(den, noise * sig[0], sig, cond)))
    return float(psnr(imgs[0], imgs[1]).mean())


def train(args) -> None:
    from safetensors.torch import save_file

    from .train import _lr, _round_fp16

    torch.set_num_threads(1)
    t_start = time.time()
    model = getattr(args, "model", "vpred")
    prediction, data_config, unet_config, _, seed_offset = SPECS[model]
    d = dict(data_config)
    images, labels = build_data(d)
    tr, _ = data_mod.split_indices(images.shape[0], d["heldout_every"])
    x0_all, y_all = encode_data(d, images[tr]), labels[tr]
    if d.get("vae"):
        print(f"  encoded {x0_all.shape[0]} images with {d['vae']}: latent std {float(x0_all.std()):.3f}", flush=True)
    torch.manual_seed(args.seed + seed_offset)
    net = UNet(**unet_config)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    sigmas = schedules.discrete_sigmas(zsnr=model in ZSNR_MODELS)
    sampling = schedules.Flow(**FLOW_SAMPLINGS[model]) if prediction == "flow" else None
    g = torch.Generator().manual_seed(args.seed + seed_offset)
    running = None
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, args.steps, args.lr, warmup=max(1, args.steps // 30))
        idx = torch.randint(x0_all.shape[0], (args.batch,), generator=g)
        loss = vpred_step(
            net,
            ema,
            opt,
            x0_all[idx],
            y_all[idx].clone(),
            sigmas,
            g,
            0.15,
            0.999,
            step,
            prediction=prediction,
            sampling=sampling,
        )
        running = loss if running is None else 0.98 * running + 0.02 * loss
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            print(
                f"  unet step {step + 1}/{args.steps}  loss(ema) {running:.4f}  {time.time() - t_start:.0f}s",
                flush=True,
            )
    ema.eval()
    _round_fp16(ema)
    flow_shift = f"shift {sampling.shift:g}" if sampling is not None else ""
    meta = dict(
        unet_config=unet_config,
        data=d,
        seed=args.seed,
        parameterisation={
            "v": "V_PREDICTION on ComfyUI's discrete schedule: output v = alpha eps - sigma alpha x0",
            "eps": "EPS on ComfyUI's discrete schedule: output eps",
            "flow": f"CONST (rectified flow), ModelSamplingDiscreteFlow {flow_shift}: x = (1 - sigma) x0 + sigma "
            "noise, output v = noise - x0",
        }[prediction],
        params=sum(p.numel() for p in ema.parameters()),
        train=dict(
            steps=args.steps,
            batch=args.batch,
            lr=args.lr,
            p_uncond=0.15,
            ema_decay=0.999,
            seconds=round(time.time() - t_start, 1),
            final_loss_smoothed=round(running, 5),
            torch=torch.__version__,
            threads=1,
        ),
    )
    if prediction != "v":  # (the v testbed's metadata predates this key; load() defaults to v)
        meta["prediction"] = prediction
    if model in ZSNR_MODELS:
        meta["zsnr"] = True
        meta["parameterisation"] = (
            "V_PREDICTION on ComfyUI's discrete schedule rescaled to zero terminal SNR (ModelSamplingDiscrete "
            "zsnr=True, sigma_max ~4518): output v = alpha eps - sigma alpha x0"
        )
    if d.get("vae"):
        space = (
            f"in {VAE_SPACES[d['vae']]}'s latent space (the real {d['vae']}: its encoder's output, the scaled latents, "
            "is the model space; decoded by its decoder)"
        )
        meta["parameterisation"] = (
            f"CONST (rectified flow), ModelSamplingDiscreteFlow {flow_shift}, {space}: "
            "x = (1 - sigma) x0 + sigma noise, output v = noise - x0"
            if sampling is not None
            else f"EPS on ComfyUI's discrete schedule {space}: output eps"
        )
        meta["latent_std"] = round(float(x0_all.std()), 4)
    if sampling is not None:
        meta["sampling"] = dict(FLOW_SAMPLINGS[model])
        meta["train"]["sigma_density"] = "logit-normal(0, 1)"
    tb = VPredTestbed(ema.requires_grad_(False), meta)
    meta["curvature_cfg5"] = {
        f"{sch}_{a}_vs_{b}": round(curvature(tb, (a, b), sch), 2)
        for sch in ("karras", "normal")
        for a, b in ((25, 50),)
    }
    tensors = {"unet." + k: v.detach().half().contiguous() for k, v in ema.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata={"testbed_" + model: json.dumps(meta)})
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"curvature {meta['curvature_cfg5']}; wrote {args.out} in {time.time() - t_start:.0f}s")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", action="store_true", help="train and write the weights (else: print the curvature)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--model", choices=sorted(SPECS), default="vpred", help="which testbed (module docstring)")
    ap.add_argument("--out", type=Path, default=None, help="weights file (default: the shipped one of --model)")
    args = ap.parse_args(argv)
    default_out = SPECS[args.model][3]
    args.out = default_out if args.out is None else args.out
    if args.train:
        train(args)
        return
    torch.set_num_threads(1)
    tb = load(None if args.out == default_out else str(args.out), args.model)
    for sch in ("karras", "normal"):
        print(f"{sch}: Euler 25 vs 50 steps, CFG 5: {curvature(tb, (25, 50), sch):.2f} dB")


if __name__ == "__main__":
    main()
