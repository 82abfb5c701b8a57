"""Coop-Diffusion bridges (PanGu-Draw, arXiv 2312.16486), pure PyTorch, batched.

Algorithm 1 of the paper in ComfyUI's k-diffusion conventions: a denoiser is
``denoiser(x, sigma, **extra) -> x0`` with sigma a tensor [B] in the model's *own* space; eps / v models see x = x0 + sigma * noise, flow ("CONST")
models x = (1 - sigma) * x0 + sigma * noise. All latents here are in **model space** (ComfyUI's
``process_in`` applied); see ``bridges.vae`` for raw <-> model space.

Sub-Module 1 (latent-space gap), per step t, with A the target space and B the foreign one:

* step 3: z~0_t = E_A(D_B(x0'_t))                             -> ``bridge_latent``
* steps 2, 4-7 (B's prediction, fusion, B's chain)           -> ``bridges.fusion``

Sub-Module 2 (resolution gap): the one-shot hand-off at T_low, steps 4 to 7
(x0-prediction, decode, pixel resize, encode, fresh IID noise)  -> ``bridge_noisy``.

Noise levels across model families are matched at equal SNR: an eps / v model at sigma and a flow
model at sigma / (1 + sigma) see the same signal-to-noise ratio (``match_sigma``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..samplers import schedules as S
from .vae import BridgeInputError, BridgeVAE, decode_model_tiled, encode_model_tiled

__all__ = [
    "BridgeInputError",
    "ModelSchedule",
    "KINDS",
    "FILTERS",
    "ve_sigma",
    "sigma_from_ve",
    "snr",
    "match_sigma",
    "resolution_shift",
    "convert_noisy",
    "schedule_from",
    "renoise",
    "eps_from_x0",
    "x0_from_eps",
    "resize_images",
    "bridge_latent",
    "bridge_raw",
    "bridge_noisy",
    "NoisyBridge",
]

KINDS = ("eps", "v", "flow")
FILTERS = ("bilinear", "bicubic", "nearest", "nearest-exact", "area")


# ---------------------------------------------------------------------------------------------
# Schedules and noise levels


@dataclass(frozen=True, eq=False)
class ModelSchedule:
    """The noise levels one model accepts, in its own sigma space.

    kind: "eps" or "v" (x = x0 + sigma * noise) or "flow" (x = (1 - sigma) x0 + sigma * noise).
    table: the ascending sigmas of a discrete schedule (ComfyUI's ``model_sampling.sigmas``); a
    discrete eps / v model only sees these timesteps, so matched sigmas snap to the nearest entry
    (in log sigma, ComfyUI's rule). None: continuous in [sigma_min, sigma_max].
    """

    kind: str = "eps"
    sigma_min: float = 0.0
    sigma_max: float = math.inf
    table: torch.Tensor | None = None
    name: str = ""
    shift: float = 1.0  # flow models: ComfyUI's ModelSamplingDiscreteFlow shift (timestep t -> sigma)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise BridgeInputError(f"kind: expected one of {KINDS}, got {self.kind!r}")
        if self.table is not None:
            t = torch.as_tensor(self.table, dtype=torch.float32).flatten().sort().values
            object.__setattr__(self, "table", t)
            object.__setattr__(self, "sigma_min", float(t[0]))
            object.__setattr__(self, "sigma_max", float(t[-1]))
        if not (0 <= self.sigma_min < self.sigma_max):
            raise BridgeInputError(
                f"sigma_min: expected 0 <= sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}"
            )
        if self.kind == "flow" and self.sigma_max > 1.0 + 1e-6:
            raise BridgeInputError(f"sigma_max: a flow model's sigmas are at most 1, got {self.sigma_max}")

    # constructors for the families the pack targets
    @classmethod
    def sd_discrete(cls, kind: str = "eps", name: str = "sd") -> "ModelSchedule":
        """SD1.x / SD2.x / SDXL: 1000 scaled-linear betas 0.00085..0.012 (the same table for all)."""
        return cls(kind=kind, table=S.discrete_sigmas(), name=name)

    @classmethod
    def flow(cls, shift: float | None = None, timesteps: int = 1000, name: str = "flow") -> "ModelSchedule":
        """Rectified flow. shift=None: continuous in (0, 1]. A shift: ComfyUI's
        ModelSamplingDiscreteFlow table sigma(t) = shift t / (1 + (shift - 1) t), t = i / timesteps
        (SD3: shift 3). Flow models take a continuous timestep, so no snapping is done."""
        if shift is None:
            return cls(kind="flow", sigma_min=0.0, sigma_max=1.0, name=name)
        t = torch.arange(1, timesteps + 1, dtype=torch.float64) / timesteps
        s = shift * t / (1 + (shift - 1) * t)
        return cls(kind="flow", sigma_min=float(s[0]), sigma_max=1.0, name=name, shift=float(shift))

    @property
    def discrete(self) -> bool:
        return self.table is not None and self.kind != "flow"

    def check(self, sigma: torch.Tensor, name: str = "sigma", allow_zero: bool = False) -> None:
        """Raise when a sigma lies outside [sigma_min, sigma_max] (relative tolerance 1e-4)."""
        s = torch.as_tensor(sigma, dtype=torch.float64).flatten()
        lo, hi = self.sigma_min * (1 - 1e-4), self.sigma_max * (1 + 1e-4)
        bad = ~torch.isfinite(s) | (s > hi) | (s < lo) | (s <= 0)
        if allow_zero:
            bad &= s != 0
        if bool(bad.any()):
            v = float(s[bad][0])
            raise BridgeInputError(
                f"{name}: {v:g} is outside the {self.name or self.kind} schedule "
                f"[{self.sigma_min:g}, {self.sigma_max:g}]"
            )

    def snap(self, sigma: torch.Tensor) -> torch.Tensor:
        """The nearest table entry in log sigma for discrete eps / v models; identity otherwise."""
        if not self.discrete:
            return sigma
        idx = S.sigma_to_t(sigma.float().flatten(), self.table)
        return self.table.to(sigma.device)[idx].reshape(sigma.shape).to(sigma.dtype)


def _sigma_batch(sigma, b: int | None, name: str = "sigma") -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=torch.float32).flatten()
    if b is not None:
        if s.numel() == 1:
            s = s.expand(b).clone()
        elif s.numel() != b:
            raise BridgeInputError(f"{name}: expected one sigma or one per sample ({b}), got {s.numel()}")
    return s


def _bcast(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return s.to(device=x.device, dtype=x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))


def _check_kind(kind: str, name: str = "kind") -> None:
    if kind not in KINDS:
        raise BridgeInputError(f"{name}: expected one of {KINDS}, got {kind!r}")


def ve_sigma(sigma, kind: str) -> torch.Tensor:
    """Noise-to-signal ratio of a model's sigma: sigma for eps / v, sigma / (1 - sigma) for flow
    (x_flow / (1 - sigma) = x0 + sigma / (1 - sigma) * noise). SNR = 1 / ve_sigma^2."""
    _check_kind(kind)
    s = torch.as_tensor(sigma, dtype=torch.float64)
    return s / (1 - s) if kind == "flow" else s


def sigma_from_ve(s_ve, kind: str) -> torch.Tensor:
    """Inverse of ``ve_sigma``: sigma_flow = s / (1 + s)."""
    _check_kind(kind)
    s = torch.as_tensor(s_ve, dtype=torch.float64)
    return s / (1 + s) if kind == "flow" else s


def snr(sigma, kind: str) -> torch.Tensor:
    """Signal-to-noise ratio (abar / (1 - abar) in DDPM terms)."""
    return ve_sigma(sigma, kind).pow(-2)


def resolution_shift(size_from, size_to) -> float:
    """The noise-level factor of a resolution change: sqrt(pixels_to / pixels_from) (2.0 for a 2x
    upscale). Sizes are (h, w) pairs in pixels or latent cells (only the ratio counts)."""
    (h0, w0), (h1, w1) = (
        (int(v), int(v)) if isinstance(v, int) else tuple(int(a) for a in v) for v in (size_from, size_to)
    )
    if min(h0, w0, h1, w1) <= 0:
        raise BridgeInputError(f"size: expected positive sizes, got {size_from} -> {size_to}")
    return math.sqrt((h1 * w1) / (h0 * w0))


def match_sigma(
    sigma, src: ModelSchedule, dst: ModelSchedule, snap: bool = True, name: str = "sigma", shift: float = 1.0
) -> torch.Tensor:
    """The noise level of `dst` with the same SNR as `sigma` of `src` (cross-family matching; not in the
    paper, which pairs models of one schedule).

    eps <-> eps on the same table: the same sigma. eps -> flow: sigma / (1 + sigma). flow -> eps:
    sigma / (1 - sigma). With ``snap`` the result is moved to the nearest entry of a discrete
    target table (what a discrete model can see). Raises BridgeInputError naming `name` when
    `sigma` is outside `src`'s schedule or its match outside `dst`'s.

    `shift` (the pack's resolution-aware hand-off, not the paper's rule; 1.0 = the paper): the
    target's noise-to-signal ratio is `shift` times the source's, i.e. SNR / shift^2. After an
    f x upscale the f x f block means of white noise of level s have level s / f, so the content
    the source model settled at s matches the target's f s (``resolution_shift``; the same
    correction as SD3's resolution-dependent timestep shift). A shifted level above the target's
    sigma_max is clamped to it (the target then starts from its noisiest level).
    """
    s = torch.as_tensor(sigma, dtype=torch.float32)
    src.check(s, name)
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise BridgeInputError(f"shift: expected a positive number, got {shift!r}")
    s_ve = ve_sigma(s.double(), src.kind) * float(shift)
    out = sigma_from_ve(s_ve, dst.kind).float()
    if shift != 1.0:
        out = out.clamp(max=dst.sigma_max)
    try:
        dst.check(out, name)
    except BridgeInputError as e:
        raise BridgeInputError(
            f"{name}: {float(s.flatten()[0]):g} on the {src.name or src.kind} schedule matches "
            f"{float(out.flatten()[0]):g}, outside the {dst.name or dst.kind} schedule "
            f"[{dst.sigma_min:g}, {dst.sigma_max:g}]"
        ) from e
    return dst.snap(out) if snap else out


def convert_noisy(x: torch.Tensor, sigma, src_kind: str, dst_kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The same noisy latent (same x0, same noise) in another family's convention, at equal SNR:
    eps / v x = x0 + s n  <->  flow x_f = (1 - s_f) x0 + s_f n with s_f = s / (1 + s),
    x_f = x / (1 + s). Returns (x_dst, sigma_dst)."""
    _check_kind(src_kind, "src_kind")
    _check_kind(dst_kind, "dst_kind")
    s = _sigma_batch(sigma, x.shape[0]).double()
    s_ve = ve_sigma(s, src_kind)
    scale_in = (1 - s) if src_kind == "flow" else torch.ones_like(s)  # x_ve = x / scale_in
    s_dst = sigma_from_ve(s_ve, dst_kind)
    scale_out = (1 - s_dst) if dst_kind == "flow" else torch.ones_like(s)
    x_out = x.double() * _bcast(scale_out / scale_in, x.double())
    return x_out.to(x.dtype), s_dst.float()


def schedule_from(sigmas: torch.Tensor, sigma: float, kind: str, name: str = "sigma") -> tuple[int, torch.Tensor]:
    """Where a hand-off at noise level `sigma` enters a target model's own sampling schedule
    `sigmas` (descending, ending at 0): the index of the entry nearest to `sigma` in log SNR and
    the schedule's tail from it. Raises when `sigma` is outside [sigmas[-2], sigmas[0]]."""
    sig = torch.as_tensor(sigmas, dtype=torch.float32).flatten()
    if sig.numel() < 2:
        raise BridgeInputError(f"sigmas: expected a schedule of at least 2 sigmas, got {sig.numel()}")
    pos = sig[sig > 0]
    s = float(torch.as_tensor(sigma).flatten()[0])
    lo, hi = float(pos.min()), float(pos.max())
    if not (lo * (1 - 1e-4) <= s <= hi * (1 + 1e-4)):
        raise BridgeInputError(f"{name}: {s:g} is outside the target schedule [{lo:g}, {hi:g}]")
    d = (ve_sigma(pos.double(), kind).log() - float(ve_sigma(torch.tensor(s, dtype=torch.float64), kind).log())).abs()
    idx = int(d.argmin())
    return idx, sig[idx:]


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma, kind: str) -> torch.Tensor:
    """A model's noisy latent from its x0 and unit noise: x0 + s n (eps / v), (1 - s) x0 + s n (flow).
    (Sub-Module 2, step 7.)"""
    _check_kind(kind)
    s = _bcast(_sigma_batch(sigma, x0.shape[0]), x0)
    return ((1 - s) * x0 if kind == "flow" else x0) + s * noise


def eps_from_x0(x: torch.Tensor, sigma, x0: torch.Tensor, kind: str) -> torch.Tensor:
    """The noise a model would predict for x0 at (x, sigma): (x - x0) / s (eps / v) or
    (x - (1 - s) x0) / s (flow). Algorithm 1 step 4, in ComfyUI's sigma terms."""
    _check_kind(kind)
    s = _sigma_batch(sigma, x.shape[0])
    if bool((s <= 0).any()):
        raise BridgeInputError("sigma: eps is undefined at sigma 0; use the x0 prediction")
    s = _bcast(s, x)
    return (x - ((1 - s) * x0 if kind == "flow" else x0)) / s


def x0_from_eps(x: torch.Tensor, sigma, eps: torch.Tensor, kind: str) -> torch.Tensor:
    """Inverse of ``eps_from_x0`` (Algorithm 1 step 2's x0 formula)."""
    _check_kind(kind)
    s = _bcast(_sigma_batch(sigma, x.shape[0]), x)
    return (x - s * eps) / (1 - s) if kind == "flow" else x - s * eps


# ---------------------------------------------------------------------------------------------
# Clean latents through pixels


def resize_images(images: torch.Tensor, size, filter: str = "bilinear", antialias: bool = True) -> torch.Tensor:
    """kornia resize to (H, W) with `filter` (antialias when shrinking), clamped to 0..1."""
    import kornia

    if filter not in FILTERS:
        raise BridgeInputError(f"filter: expected one of {FILTERS}, got {filter!r}")
    size = (int(size[0]), int(size[1]))
    if tuple(images.shape[-2:]) == size:
        return images
    aa = antialias and filter in ("bilinear", "bicubic") and (size[0] < images.shape[-2] or size[1] < images.shape[-1])
    out = kornia.geometry.transform.resize(images, size, interpolation=filter, antialias=aa)
    return out.clamp(0.0, 1.0)


def _check_vae(vae, name: str) -> None:
    if not isinstance(vae, BridgeVAE):
        raise BridgeInputError(f"{name}: expected a BridgeVAE, got {type(vae).__name__}")


def _target_size(z: torch.Tensor, vae_from: BridgeVAE, vae_to: BridgeVAE, size) -> tuple[int, int]:
    if size is None:
        h, w = z.shape[-2] * vae_from.downscale, z.shape[-1] * vae_from.downscale
        if h % vae_to.downscale or w % vae_to.downscale:
            raise BridgeInputError(
                f"vae_to: image size {h}x{w} is not divisible by its downscale factor {vae_to.downscale}; give a size"
            )
        return h, w
    try:
        h, w = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
    except (TypeError, ValueError, IndexError):
        raise BridgeInputError(f"size: expected (height, width) in pixels, got {size!r}") from None
    if h <= 0 or w <= 0 or h % vae_to.downscale or w % vae_to.downscale:
        raise BridgeInputError(
            f"size: {h}x{w} is not a positive multiple of the target VAE {vae_to.name!r}'s downscale factor {vae_to.downscale}"
        )
    return h, w


def _decode(vae: BridgeVAE, z, tile, overlap, clamp: bool, name: str):
    if tile is None:
        vae.check_latent(z, name)
        img = vae._decode_model(z)
        return img.clamp(0.0, 1.0) if clamp else img
    f = vae.downscale
    if tile % f or overlap % f:
        raise BridgeInputError(
            f"tile: {tile} and overlap {overlap} must be multiples of the VAE {vae.name!r}'s factor {f}"
        )
    vae.check_latent(z, name)
    return decode_model_tiled(vae, z, tile // f, overlap // f, clamp=clamp)


def _encode(vae: BridgeVAE, images, tile, overlap):
    if tile is None:
        return vae.encode_model(images)
    return encode_model_tiled(vae, images, tile, overlap)


def bridge_latent(
    z: torch.Tensor,
    vae_from: BridgeVAE,
    vae_to: BridgeVAE,
    size=None,
    filter: str = "bilinear",
    antialias: bool = True,
    tile: int | None = None,
    overlap: int = 64,
    clamp: bool = True,
) -> torch.Tensor:
    """Clean model-space latents of space B (`vae_from`) -> space A (`vae_to`) through pixels:
    decode with B's VAE, resize to `size` = (H, W) pixels with kornia's `filter` (skipped when the
    size is unchanged), encode with A's VAE. Algorithm 1 step 3 (z~0 = E(D'(z^'0))) and Sub-Module
    2 steps 5-6 (decode, upsample, encode).

    tile: decode / encode in tiles of `tile` x `tile` pixels overlapping by `overlap` (multiples of
    both VAEs' factors), for large images. clamp: clamp the decoded image to 0..1 as ComfyUI does.
    The result is on `z`'s device and dtype, wherever the VAEs run (a CPU bridge VAE beside a GPU model).
    """
    _check_vae(vae_from, "vae_from")
    _check_vae(vae_to, "vae_to")
    if not isinstance(z, torch.Tensor) or z.ndim != 4:
        raise BridgeInputError(f"z: expected a latent tensor [B, C, H, W], got {type(z).__name__}")
    if z.shape[1] != vae_from.latent_channels:
        raise BridgeInputError(
            f"vae_from: {vae_from.name!r} expects {vae_from.latent_channels} latent channels, the latent has {z.shape[1]}"
        )
    if tile is not None and (not isinstance(tile, int) or tile <= 0):
        raise BridgeInputError(f"tile: expected a positive number of pixels or None, got {tile!r}")
    h, w = _target_size(z, vae_from, vae_to, size)
    images = _decode(vae_from, z, tile, overlap, clamp, "z")
    images = resize_images(images, (h, w), filter, antialias)
    return _encode(vae_to, images.to(vae_to.dtype), tile, overlap).to(device=z.device, dtype=z.dtype)


def bridge_raw(raw: torch.Tensor, vae_from: BridgeVAE, vae_to: BridgeVAE, **kw) -> torch.Tensor:
    """``bridge_latent`` for raw latents (what a ComfyUI LATENT holds)."""
    _check_vae(vae_from, "vae_from")
    _check_vae(vae_to, "vae_to")
    return vae_to.from_model(bridge_latent(vae_from.to_model(raw), vae_from, vae_to, **kw))


# ---------------------------------------------------------------------------------------------
# Noisy latents: Sub-Module 2


@dataclass
class NoisyBridge:
    """Result of ``bridge_noisy``: x, sigma (target space / schedule), the bridged x0 in the
    target space, the source model's x0, and the fresh noise used."""

    x: torch.Tensor
    sigma: torch.Tensor
    x0: torch.Tensor
    x0_source: torch.Tensor
    noise: torch.Tensor


def bridge_noisy(
    x: torch.Tensor,
    sigma,
    denoiser: Callable,
    vae_from: BridgeVAE,
    vae_to: BridgeVAE,
    sched_from: ModelSchedule,
    sched_to: ModelSchedule,
    size=None,
    filter: str = "bilinear",
    sigma_to=None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    extra_args: dict | None = None,
    shift: float = 1.0,
    **bridge_kw,
) -> NoisyBridge:
    """Hand a noisy latent of model B (space `vae_from`, schedule `sched_from`) to model A:
    Sub-Module 2, steps 4-7. Step 4: B's x0-prediction at `sigma`; steps 5-6: decode, resize to
    `size` pixels, encode into A (``bridge_latent``); step 7: re-noise with **fresh** IID noise to
    A's matching noise level (``match_sigma`` unless `sigma_to` is given), so A sees white noise of
    the right level, not upsampled (shrunk, correlated) noise. `shift` goes to ``match_sigma``
    (1.0, the paper: equal SNR; ``resolution_shift`` of the resize: the resolution-aware level).
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise BridgeInputError(f"x: expected a latent tensor [B, C, H, W], got {type(x).__name__}")
    b = x.shape[0]
    s_from = _sigma_batch(sigma, b, "sigma")
    sched_from.check(s_from, "sigma")
    if sigma_to is None:
        s_to = match_sigma(s_from, sched_from, sched_to, name="sigma", shift=shift)
    else:
        s_to = _sigma_batch(sigma_to, b, "sigma_to")
        sched_to.check(s_to, "sigma_to")
    if x.shape[1] != vae_from.latent_channels:
        raise BridgeInputError(
            f"vae_from: {vae_from.name!r} expects {vae_from.latent_channels} latent channels, the latent has {x.shape[1]}"
        )
    with torch.no_grad():
        x0_src = denoiser(x, s_from.to(x.device, x.dtype), **(extra_args or {}))
        z0 = bridge_latent(x0_src, vae_from, vae_to, size=size, filter=filter, **bridge_kw)
    if noise is None:
        noise = torch.randn(
            z0.shape,
            generator=generator,
            dtype=z0.dtype,
            device=generator.device if generator is not None else z0.device,
        ).to(z0.device)
    elif tuple(noise.shape) != tuple(z0.shape):
        raise BridgeInputError(f"noise: expected shape {tuple(z0.shape)}, got {tuple(noise.shape)}")
    x_to = renoise(z0, noise.to(z0), s_to, sched_to.kind)
    return NoisyBridge(x=x_to, sigma=s_to, x0=z0, x0_source=x0_src, noise=noise)
