"""Coop-Diffusion bridges (PanGu-Draw, arXiv 2312.16486), pure PyTorch, batched.

Algorithm 1 of the paper (transcribed in the research notes, coop-diffusion.md section 1.2), in
ComfyUI's k-diffusion conventions: a denoiser is ``denoiser(x, sigma, **extra) -> x0`` with sigma a
tensor [B] in the model's *own* space; eps / v models see x = x0 + sigma * noise, flow ("CONST")
models x = (1 - sigma) * x0 + sigma * noise. All latents here are in **model space** (ComfyUI's
``process_in`` applied); see ``bridges.vae`` for raw <-> model space.

Sub-Module 1 (latent-space gap), per step t, with A the target space and B the foreign one:

* step 2: x0'_t = B's x0-prediction                          -> ``predict_b_in_a`` (calls B)
* step 3: z~0_t = E_A(D_B(x0'_t))                             -> ``bridge_latent``
* step 4: eps~_t = B's prediction as an eps in A             -> ``convert_prediction``
* step 5: fused = d * (B converted) + (1 - d) * A             -> ``fuse`` (paper's d: weight of B)
* step 6 / 7: advance both chains                            -> ``euler_step``
* step 7: fused prediction back into B                        -> ``fused_to_b``
* the whole loop with a first-order sampler                  -> ``coop_sample_euler``

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
    "Prediction",
    "convert_prediction",
    "predict_b_in_a",
    "fuse",
    "fused_to_b",
    "euler_step",
    "coop_sample_euler",
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
            raise BridgeInputError(f"sigma_min: expected 0 <= sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
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
    (h0, w0), (h1, w1) = ((int(v), int(v)) if isinstance(v, int) else tuple(int(a) for a in v)
                          for v in (size_from, size_to))
    if min(h0, w0, h1, w1) <= 0:
        raise BridgeInputError(f"size: expected positive sizes, got {size_from} -> {size_to}")
    return math.sqrt((h1 * w1) / (h0 * w0))


def match_sigma(sigma, src: ModelSchedule, dst: ModelSchedule, snap: bool = True, name: str = "sigma",
                shift: float = 1.0) -> torch.Tensor:
    """The noise level of `dst` with the same SNR as `sigma` of `src` (cross-family matching,
    research notes section 1.2 note 6; not in the paper, which pairs same-schedule models).

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
        raise BridgeInputError(f"tile: {tile} and overlap {overlap} must be multiples of the VAE {vae.name!r}'s factor {f}")
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
        noise = torch.randn(z0.shape, generator=generator, dtype=z0.dtype,
                            device=generator.device if generator is not None else z0.device).to(z0.device)
    elif tuple(noise.shape) != tuple(z0.shape):
        raise BridgeInputError(f"noise: expected shape {tuple(z0.shape)}, got {tuple(noise.shape)}")
    x_to = renoise(z0, noise.to(z0), s_to, sched_to.kind)
    return NoisyBridge(x=x_to, sigma=s_to, x0=z0, x0_source=x0_src, noise=noise)


# ---------------------------------------------------------------------------------------------
# Predictions: Sub-Module 1


@dataclass
class Prediction:
    """A prediction in one space at (x, sigma): its x0 and the equivalent eps."""

    x0: torch.Tensor
    eps: torch.Tensor


def convert_prediction(
    x0_from: torch.Tensor,
    vae_from: BridgeVAE,
    vae_to: BridgeVAE,
    x_to: torch.Tensor,
    sigma_to,
    kind_to: str,
    **bridge_kw,
) -> Prediction:
    """A model's x0-prediction in one space as a prediction in another space at (x_to, sigma_to):
    Algorithm 1 step 3 (z~0 = E_to(D_from(x0))) and step 4 (eps~ = (z_t - sqrt(abar) z~0) /
    sqrt(1 - abar), i.e. ``eps_from_x0`` in the target's convention). The bridged latent must have
    the target's shape (give `size` when resolutions differ)."""
    _check_kind(kind_to, "kind_to")
    if bridge_kw.get("size") is None:
        bridge_kw["size"] = (x_to.shape[-2] * vae_to.downscale, x_to.shape[-1] * vae_to.downscale)
    with torch.no_grad():
        z0 = bridge_latent(x0_from, vae_from, vae_to, **bridge_kw)
    if z0.shape != x_to.shape:
        raise BridgeInputError(f"x_to: shape {tuple(x_to.shape)} does not match the bridged latent {tuple(z0.shape)}")
    z0 = z0.to(x_to)
    return Prediction(x0=z0, eps=eps_from_x0(x_to, sigma_to, z0, kind_to))


def predict_b_in_a(
    denoiser_b: Callable,
    x_b: torch.Tensor,
    sigma_b,
    vae_b: BridgeVAE,
    vae_a: BridgeVAE,
    x_a: torch.Tensor,
    sigma_a,
    kind_a: str,
    extra_args: dict | None = None,
    **bridge_kw,
) -> Prediction:
    """Algorithm 1 steps 2-4: run model B on its own chain (x_b, sigma_b), take its x0-prediction,
    bridge it into A and express it as A's prediction at (x_a, sigma_a)."""
    if x_b.shape[1] != vae_b.latent_channels:
        raise BridgeInputError(
            f"vae_b: {vae_b.name!r} expects {vae_b.latent_channels} latent channels, x_b has {x_b.shape[1]}"
        )
    with torch.no_grad():
        x0_b = denoiser_b(x_b, _sigma_batch(sigma_b, x_b.shape[0]).to(x_b), **(extra_args or {}))
    return convert_prediction(x0_b, vae_b, vae_a, x_a, sigma_a, kind_a, **bridge_kw)


def fuse(pred_a: torch.Tensor, pred_b_in_a: torch.Tensor, d) -> torch.Tensor:
    """Algorithm 1 step 5 with the paper's convention: d weights the **converted** prediction of
    model B: fused = d * pred_b_in_a + (1 - d) * pred_a. Works on eps or on x0 alike (at fixed
    (x, sigma) eps is affine in x0 with the same coefficient), d a number or one per sample."""
    dd = torch.as_tensor(d, dtype=pred_a.dtype, device=pred_a.device)
    if dd.ndim == 1:
        if dd.numel() != pred_a.shape[0]:
            raise BridgeInputError(f"d: expected one weight or one per sample ({pred_a.shape[0]}), got {dd.numel()}")
        dd = dd.reshape((-1,) + (1,) * (pred_a.ndim - 1))
    elif dd.ndim > 1:
        raise BridgeInputError(f"d: expected a number or a [B] tensor, got shape {tuple(dd.shape)}")
    if not bool(torch.isfinite(dd).all()):
        raise BridgeInputError("d: must be finite")
    return pred_a + dd * (pred_b_in_a - pred_a)


def fused_to_b(
    x0_fused_a: torch.Tensor,
    vae_a: BridgeVAE,
    vae_b: BridgeVAE,
    x_b: torch.Tensor,
    sigma_b,
    kind_b: str,
    **bridge_kw,
) -> Prediction:
    """Algorithm 1 step 7 ("eps'_fuse from eps_fuse, similar to steps 3-4"): the fused x0 in A
    bridged back into B and expressed at B's chain point (x_b, sigma_b), for B's own update."""
    return convert_prediction(x0_fused_a, vae_a, vae_b, x_b, sigma_b, kind_b, **bridge_kw)


def euler_step(x: torch.Tensor, sigma, sigma_next, x0: torch.Tensor) -> torch.Tensor:
    """First-order update with ComfyUI's Euler (d = (x - x0) / sigma), which is DDIM for eps and
    flow models alike: x_next = x0 + (sigma_next / sigma) (x - x0). Algorithm 1 steps 6 / 7."""
    s = _bcast(_sigma_batch(sigma, x.shape[0]), x)
    sn = _bcast(_sigma_batch(sigma_next, x.shape[0]), x)
    return x0 + (sn / s) * (x - x0)


def coop_sample_euler(
    denoiser_a: Callable,
    denoiser_b: Callable,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    sigmas_a: torch.Tensor,
    sigmas_b: torch.Tensor,
    vae_a: BridgeVAE,
    vae_b: BridgeVAE,
    kind_a: str,
    kind_b: str,
    d=0.5,
    extra_a: dict | None = None,
    extra_b: dict | None = None,
    callback: Callable | None = None,
    **bridge_kw,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 (Sub-Module 1) with an Euler / DDIM sampler on both chains: two chains, A in
    its space on `sigmas_a`, B in its space on `sigmas_b` (each model's own schedule, of equal
    length, matched entry by entry, e.g. with ``match_sigma``), fusing x0 with weight `d` on B
    (a number, or a callable (i, sigma_a) -> d for a per-step schedule). Per step: 2 model calls,
    2 decodes, 2 encodes. Returns the final (x_a, x_b)."""
    sig_a = torch.as_tensor(sigmas_a, dtype=torch.float32).flatten()
    sig_b = torch.as_tensor(sigmas_b, dtype=torch.float32).flatten()
    if sig_a.numel() != sig_b.numel() or sig_a.numel() < 2:
        raise BridgeInputError(f"sigmas_b: expected {sig_a.numel()} sigmas like sigmas_a, got {sig_b.numel()}")
    n = x_a.shape[0]
    if x_b.shape[0] != n:
        raise BridgeInputError(f"x_b: batch {x_b.shape[0]} differs from x_a's {n}")
    for i in range(sig_a.numel() - 1):
        sa, sb = sig_a[i].expand(n), sig_b[i].expand(n)
        with torch.no_grad():
            x0_a = denoiser_a(x_a, sa.to(x_a), **(extra_a or {}))
            pb = predict_b_in_a(denoiser_b, x_b, sb, vae_b, vae_a, x_a, sa, kind_a, extra_b, **bridge_kw)
        di = d(i, float(sig_a[i])) if callable(d) else d
        x0_fused = fuse(x0_a, pb.x0, di)
        back = fused_to_b(x0_fused, vae_a, vae_b, x_b, sb, kind_b, **bridge_kw)
        if callback is not None:
            callback({"i": i, "x_a": x_a, "x_b": x_b, "x0_a": x0_a, "x0_b_in_a": pb.x0, "x0_fused": x0_fused})
        x_a = euler_step(x_a, sa, sig_a[i + 1], x0_fused)
        x_b = euler_step(x_b, sb, sig_b[i + 1], back.x0)
    return x_a, x_b
