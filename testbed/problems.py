"""Benchmark problems built on the testbeds: ``Problem`` (a denoiser with its noise, classes and decoder) and
the problems of the trained testbeds (``testbed``, ``testbed-hr``, the flow DiT, the v-prediction UNet, the eps
and v shapes UNets, the flow UNet on digits) and of an exact Gaussian mixture."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..samplers import schedules
from .exact import CFGDenoiser, GaussianMixtureDenoiser


@dataclass
class Problem:
    """One batch to sample: denoiser(x, sigma, cond=) -> x0 with CFG applied, unit noise, classes."""

    name: str
    denoiser: Callable
    noise: torch.Tensor
    cond: torch.Tensor
    decode: Callable[[torch.Tensor], torch.Tensor]  # latents -> images [B, 3, H, W] in 0..1
    sigma_table: torch.Tensor
    scheduler: str = "karras"
    net_denoiser: Callable | None = None  # net_denoiser(wrap) -> denoiser whose network is wrap(net_call)
    #: the model sampling (schedules.Flow or schedules.Discrete; sigma_table is its sigmas); None: sigma_table
    sampling: schedules.Flow | schedules.Discrete | None = None

    def sigmas(self, steps: int) -> torch.Tensor:
        """ComfyUI's schedule `scheduler` for `steps` steps (schedules.get_sigmas, as calculate_sigmas): from
        the model sampling when there is one (schedules.Flow for the flow testbed), else the sigma table."""
        return schedules.get_sigmas(self.scheduler, steps, self.sigma_table if self.sampling is None else self.sampling)

    def subset(self, idx) -> "Problem":
        return Problem(
            self.name,
            self.denoiser,
            self.noise[idx],
            self.cond[idx],
            self.decode,
            self.sigma_table,
            self.scheduler,
            self.net_denoiser,
            self.sampling,
        )


def _batch(classes: int, seeds: int, shape, seed: int = 1234):
    cond = torch.arange(classes).repeat_interleave(seeds)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((classes * seeds,) + tuple(shape), generator=g)
    return noise, cond


def trained_problem(classes: int = 10, seeds: int = 2, cfg: float = 5.0, scheduler: str = "karras") -> Problem:
    """The trained class-conditional latent testbed, sampled with CFG."""
    from . import trained

    tb = trained.load()
    label = f"trained testbed ({classes} classes x {seeds} seeds, CFG {cfg:g}, {scheduler})"
    return _unet_testbed_problem(tb, label, classes, seeds, cfg, scheduler, tb.latent_shape)


def hr_problem(
    classes: int = 10, seeds: int = 2, cfg: float = 5.0, scheduler: str = "karras", size: int = 32
) -> Problem:
    """testbed-hr (its own autoencoder and latent space, the UNet fine-tuned at 32 and 64 px) at `size` px
    (32: 4x8x8 latents, 64: 4x16x16), sampled with CFG."""
    from . import trained

    if size not in (32, 64):
        raise ValueError(f"size: expected 32 or 64 (the sizes testbed-hr was trained at), got {size!r}")
    tb = trained.load(name="hr")
    shape = (tb.latent_shape[0], size // 4, size // 4)
    label = f"testbed-hr {size} px ({classes} classes x {seeds} seeds, CFG {cfg:g}, {scheduler})"
    return _unet_testbed_problem(tb, label, classes, seeds, cfg, scheduler, shape)


def _unet_testbed_problem(
    tb, label: str, classes: int, seeds: int, cfg: float, scheduler: str, shape, prediction: str = "eps"
) -> Problem:
    """A class-conditional UNet testbed on ComfyUI's discrete table: the network sees x / sqrt(1 + sigma^2) and
    predicts eps (x0 = x - sigma eps) or v (x0 = x / (1 + sigma^2) - v sigma / sqrt(1 + sigma^2)); or, prediction
    "flow", on its flow model sampling (``tb.sampling``, CONST): the network sees x itself at the flow timestep and
    predicts noise - x0 (x0 = x - sigma v). A testbed trained on the zero-terminal-SNR table (``tb.zsnr``) gets its
    schedules from ``schedules.Discrete(zsnr=True)``."""
    noise, cond = _batch(classes, seeds, shape)
    table = tb.sigmas
    sampling = getattr(tb, "sampling", None) if prediction == "flow" else None
    # the problem's model sampling: the flow one, or the zero-terminal-SNR table's (its schedules; the network still
    # reads the table), else None (the table)
    model_sampling = (
        sampling if sampling is not None else schedules.Discrete(zsnr=True) if getattr(tb, "zsnr", False) else None
    )

    def net_denoiser(wrap):
        """The same CFG denoiser with its network calls going through wrap(net_call)."""

        def net_call(xc, t, context):
            return tb.net(xc, t, context=context)

        wrapped = wrap(net_call)

        @torch.no_grad()
        def den(x, sigma, cond=None, **_):
            b = x.shape[0]
            s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1).expand(b)
            c = torch.as_tensor(cond).reshape(-1).expand(b)
            if sampling is not None:
                xc, t = x, sampling.timestep(s)
            else:
                xc = x / (1 + s**2).sqrt().reshape(b, *([1] * (x.ndim - 1)))
                t = schedules.sigma_to_t(s, table)
            ctx = torch.nn.functional.one_hot(torch.cat([c, torch.full_like(c, tb.null_class)]), tb.null_class + 1)
            ctx = ctx.float()[:, None, :]
            out = wrapped(torch.cat([xc, xc]), float(s[0]), torch.cat([t, t]), ctx)
            out = out[b:] + cfg * (out[:b] - out[b:])  # linear in the output: CFG on eps / v = CFG on x0
            sv = s.reshape(b, *([1] * (x.ndim - 1)))
            if prediction == "v":
                return x / (1 + sv**2) - out * sv / (1 + sv**2).sqrt()
            return x - sv * out

        return den

    return Problem(
        name=label,
        denoiser=torch.no_grad()(tb.cfg_denoiser(cfg)),
        noise=noise,
        cond=cond,
        decode=torch.no_grad()(tb.decode),
        sigma_table=table,
        scheduler=scheduler,
        net_denoiser=net_denoiser,
        sampling=model_sampling,
    )


def flow_problem(classes: int = 10, seeds: int = 2, cfg: float = 4.0, scheduler: str = "simple") -> Problem:
    """The flow testbed (testbed/trained_flow.py: a rectified-flow DiT on coloured shapes, pixel space
    3x16x16, ComfyUI's ModelSamplingDiscreteFlow with shift 3), sampled with CFG. The denoiser returns
    x0 = x - sigma v; sampling starts at noise * sigmas[0] (sigma_max = 1); decode maps [-1, 1] to 0..1."""
    from . import trained_flow

    tb = trained_flow.load()
    noise, cond = _batch(classes, seeds, tb.latent_shape)
    null = tb.null_class

    def net_denoiser(wrap):
        """The same CFG denoiser with its network calls going through wrap(net_call); the network input is x
        itself (CONST), the call is net_call(x, timestep, class)."""

        def net_call(x, t, y):
            return tb.net(x, t, y)

        wrapped = wrap(net_call)

        @torch.no_grad()
        def den(x, sigma, cond=None, **_):
            b = x.shape[0]
            s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1).expand(b)
            c = torch.as_tensor(cond).reshape(-1).expand(b)
            xx, ss = torch.cat([x, x]), torch.cat([s, s])
            v = wrapped(xx, float(s[0]), tb.sampling.timestep(ss), torch.cat([c, torch.full_like(c, null)]))
            x0 = xx - ss.view(-1, 1, 1, 1) * v
            x0_c, x0_u = x0.chunk(2)
            return x0_u + cfg * (x0_c - x0_u)

        return den

    return Problem(
        name=f"flow DiT testbed ({classes} classes x {seeds} seeds, CFG {cfg:g}, {scheduler})",
        denoiser=torch.no_grad()(tb.cfg_denoiser(cfg)),
        noise=noise,
        cond=cond,
        decode=torch.no_grad()(tb.decode),
        sigma_table=tb.sigmas,
        scheduler=scheduler,
        net_denoiser=net_denoiser,
        sampling=tb.sampling,
    )


def vpred_problem(classes: int = 10, seeds: int = 2, cfg: float = 5.0, scheduler: str = "karras") -> Problem:
    """The v-prediction testbed (testbed/trained_vpred.py: a UNet predicting v on 3x16x16 coloured digits in
    pixel space, ComfyUI's ModelSamplingDiscrete as for SD2-768-v), sampled with CFG; decode maps [-1, 1] to 0..1."""
    from . import trained_vpred

    tb = trained_vpred.load()
    label = f"v-prediction testbed ({classes} classes x {seeds} seeds, CFG {cfg:g}, {scheduler})"
    return _unet_testbed_problem(tb, label, classes, seeds, cfg, scheduler, tb.latent_shape, prediction="v")


def shapes_eps_problem(classes: int = 10, seeds: int = 2, cfg: float = 5.0, scheduler: str = "karras") -> Problem:
    """The eps-prediction shapes testbed (testbed/trained_vpred.py, ``shapes_eps``: a UNet predicting eps on
    3x16x16 coloured shapes in pixel space, ComfyUI's ModelSamplingDiscrete), sampled with CFG; decode maps
    [-1, 1] to 0..1."""
    from . import trained_vpred

    tb = trained_vpred.load(model="shapes_eps")
    label = f"eps shapes testbed ({classes} classes x {seeds} seeds, CFG {cfg:g}, {scheduler})"
    return _unet_testbed_problem(tb, label, classes, seeds, cfg, scheduler, tb.latent_shape, prediction="eps")


def shapes_v_problem(classes: int = 10, seeds: int = 2, cfg: float = 5.0, scheduler: str = "karras") -> Problem:
    """The v-prediction shapes testbed (testbed/trained_vpred.py, ``shapes_v``: a UNet of another shape predicting v
    on 3x16x16 coloured shapes of another draw, ComfyUI's ModelSamplingDiscrete), sampled with CFG; decode maps
    [-1, 1] to 0..1."""
    from . import trained_vpred

    tb = trained_vpred.load(model="shapes_v")
    label = f"v-prediction shapes testbed ({classes} classes x {seeds} seeds, CFG {cfg:g}, {scheduler})"
    return _unet_testbed_problem(tb, label, classes, seeds, cfg, scheduler, tb.latent_shape, prediction="v")


def digits_flow_problem(classes: int = 10, seeds: int = 2, cfg: float = 5.0, scheduler: str = "simple") -> Problem:
    """The flow UNet on digits (testbed/trained_vpred.py, ``digits_flow``: a UNet predicting noise - x0 on 3x16x16
    coloured digits in pixel space, ComfyUI's CONST with ModelSamplingDiscreteFlow at shift 8), sampled with CFG;
    sampling starts at noise * sigmas[0] (sigma_max 1); decode maps [-1, 1] to 0..1."""
    from . import trained_vpred

    tb = trained_vpred.load(model="digits_flow")
    label = f"flow UNet digits testbed ({classes} classes x {seeds} seeds, CFG {cfg:g}, {scheduler})"
    return _unet_testbed_problem(tb, label, classes, seeds, cfg, scheduler, tb.latent_shape, prediction="flow")


def vpred_zsnr_problem(classes: int = 10, seeds: int = 2, cfg: float = 5.0, scheduler: str = "karras") -> Problem:
    """The zero-terminal-SNR v-prediction testbed (testbed/trained_vpred.py, ``vpred_zsnr``: a UNet predicting v on
    3x16x16 coloured digits, ComfyUI's ModelSamplingDiscrete with zsnr on: sigma_max ~4518), sampled with CFG; the
    schedules come from that model sampling (schedules.Discrete(zsnr=True), as ComfyUI's calculate_sigmas on it);
    decode maps [-1, 1] to 0..1."""
    from . import trained_vpred

    tb = trained_vpred.load(model="vpred_zsnr")
    label = f"zero-terminal-SNR v testbed ({classes} classes x {seeds} seeds, CFG {cfg:g}, {scheduler})"
    return _unet_testbed_problem(tb, label, classes, seeds, cfg, scheduler, tb.latent_shape, prediction="v")


def shapes_zsnr_problem(classes: int = 10, seeds: int = 2, cfg: float = 5.0, scheduler: str = "karras") -> Problem:
    """The second zero-terminal-SNR v-prediction testbed (testbed/trained_vpred.py, ``shapes_zsnr``: a UNet of another
    shape predicting v on 3x16x16 coloured shapes of another draw, on ComfyUI's zsnr table), as vpred_zsnr_problem."""
    from . import trained_vpred

    tb = trained_vpred.load(model="shapes_zsnr")
    label = f"zero-terminal-SNR v shapes testbed ({classes} classes x {seeds} seeds, CFG {cfg:g}, {scheduler})"
    return _unet_testbed_problem(tb, label, classes, seeds, cfg, scheduler, tb.latent_shape, prediction="v")


def sd_latent_problem(classes: int = 10, seeds: int = 2, cfg: float = 5.0, scheduler: str = "karras") -> Problem:
    """The eps UNet in SD1.x's latent space (testbed/trained_vpred.py, ``sd_latent``: coloured shapes at 128 px encoded
    by the real TAESD to 4x16x16 latents, ComfyUI's ModelSamplingDiscrete as for SD1.5), sampled with CFG; decode is
    TAESD's decoder (the TAESD files from $TEMPO_TAESD_DIR or shared/assets/taesd)."""
    from . import trained_vpred

    tb = trained_vpred.load(model="sd_latent")
    label = f"eps SD-latent testbed ({classes} classes x {seeds} seeds, CFG {cfg:g}, {scheduler})"
    return _unet_testbed_problem(tb, label, classes, seeds, cfg, scheduler, tb.latent_shape, prediction="eps")


def sdxl_latent_problem(classes: int = 10, seeds: int = 2, cfg: float = 5.0, scheduler: str = "karras") -> Problem:
    """The eps UNet in SDXL's latent space (testbed/trained_vpred.py, ``sdxl_latent``: coloured digits on flat, gradient
    and photo backgrounds at 128 px encoded by the real taesdxl to 4x16x16 latents, ComfyUI's ModelSamplingDiscrete as
    for SDXL), sampled with CFG; decode is taesdxl's decoder (the TAESD files from $TEMPO_TAESD_DIR or
    shared/assets/taesd)."""
    from . import trained_vpred

    tb = trained_vpred.load(model="sdxl_latent")
    label = f"eps SDXL-latent testbed ({classes} classes x {seeds} seeds, CFG {cfg:g}, {scheduler})"
    return _unet_testbed_problem(tb, label, classes, seeds, cfg, scheduler, tb.latent_shape, prediction="eps")


def sd3_flow_problem(classes: int = 10, seeds: int = 2, cfg: float = 5.0, scheduler: str = "simple") -> Problem:
    """The flow UNet in SD3's latent space (testbed/trained_vpred.py, ``sd3_flow``: coloured shapes at 128 px encoded by
    the real taesd3 to 16x16x16 latents, a UNet predicting noise - x0, ComfyUI's CONST with ModelSamplingDiscreteFlow at
    shift 3 as for SD3), sampled with CFG; sampling starts at noise * sigmas[0] (sigma_max 1); decode is taesd3's
    decoder (the TAESD files from $TEMPO_TAESD_DIR or shared/assets/taesd)."""
    from . import trained_vpred

    tb = trained_vpred.load(model="sd3_flow")
    label = f"flow SD3-latent testbed ({classes} classes x {seeds} seeds, CFG {cfg:g}, {scheduler})"
    return _unet_testbed_problem(tb, label, classes, seeds, cfg, scheduler, tb.latent_shape, prediction="flow")


def flux_flow_problem(classes: int = 10, seeds: int = 2, cfg: float = 5.0, scheduler: str = "simple") -> Problem:
    """The flow UNet in FLUX.1's latent space (testbed/trained_vpred.py, ``flux_flow``: coloured digits on flat, gradient
    and photo backgrounds at 128 px encoded by the real taef1 to 16x16x16 latents, a UNet predicting noise - x0 at
    Flux's time shift, mu 1.15), sampled with CFG; decode is taef1's decoder (the TAESD files from $TEMPO_TAESD_DIR or
    shared/assets/taesd)."""
    from . import trained_vpred

    tb = trained_vpred.load(model="flux_flow")
    label = f"flow FLUX-latent testbed ({classes} classes x {seeds} seeds, CFG {cfg:g}, {scheduler})"
    return _unet_testbed_problem(tb, label, classes, seeds, cfg, scheduler, tb.latent_shape, prediction="flow")


def gmm_problem(
    classes: int = 4, seeds: int = 2, cfg: float = 5.0, shape=(4, 8, 8), scheduler: str = "karras"
) -> Problem:
    """An exact class-conditional Gaussian mixture (fast; for tests of the benchmark itself)."""
    g = torch.Generator().manual_seed(0)
    k = classes * 3
    means = torch.randn((k,) + tuple(shape), generator=g)
    gmm = GaussianMixtureDenoiser(means, 0.3, labels=torch.arange(k) % classes, num_classes=classes)
    noise, cond = _batch(classes, seeds, shape)

    def decode(lat):
        return (lat[:, :3] / 6 + 0.5).clamp(0, 1)

    return Problem(
        name=f"gmm ({classes} classes x {seeds} seeds, CFG {cfg:g})",
        denoiser=CFGDenoiser(gmm, cfg, classes),
        noise=noise,
        cond=cond,
        decode=decode,
        sigma_table=schedules.discrete_sigmas(),
        scheduler=scheduler,
    )
