"""Minimal VAE interface for the Coop-Diffusion bridges, plus TAESD and a toy VAE.

Conventions (those of ComfyUI, see shared research notes "comfyui-host.md" section 4d):

* images are ``[B, 3, H, W]`` floats in 0..1 (channels first, unlike ComfyUI's IMAGE);
* ``encode`` returns the VAE's **raw** latents (what a ComfyUI LATENT holds) and ``decode`` takes
  raw latents; ``decode`` clamps to 0..1 as ComfyUI's ``process_output`` does;
* a model samples in **model space**: ``to_model(raw) = (raw - shift) * scale`` (ComfyUI's
  ``latent_format.process_in``), ``from_model`` is its inverse (``process_out``). The bridges
  work in model space (the denoisers' x0 predictions live there), via ``encode_model`` and
  ``decode_model``.

TAESD (madebyollin/taesd, MIT, Ollin Boer Bohan) is re-implemented here from its published
architecture; the weight files are read from a folder (argument, or ``TEMPO_TAESD_DIR``) and never
shipped with the pack. TAESD's own latent space is the model space: ComfyUI's TAESD wrapper turns
its output into raw latents with the latent format's scale and shift, which this class copies.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn


class BridgeInputError(ValueError):
    """An input of a bridge function is invalid; the message starts with the input's name."""


# ---------------------------------------------------------------------------------------------
# The interface


class BridgeVAE:
    """What a bridge needs from a VAE. Subclasses implement ``_encode_model`` / ``_decode_model``
    (model space), or override ``encode`` / ``decode`` (raw) and leave the model-space ones to the
    default composition."""

    name: str = "vae"
    latent_channels: int = 4
    downscale: int = 8
    scale_factor: float = 1.0
    shift_factor: float = 0.0

    # --- latent formats
    def to_model(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latents -> model space (ComfyUI's ``process_in``)."""
        return (raw - self.shift_factor) * self.scale_factor

    def from_model(self, z: torch.Tensor) -> torch.Tensor:
        """Model space -> raw latents (ComfyUI's ``process_out``)."""
        return z / self.scale_factor + self.shift_factor

    # --- raw
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in 0..1 -> raw latents [B, C, H/f, W/f]."""
        return self.from_model(self.encode_model(images))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents -> images in 0..1 (clamped)."""
        return self.decode_model(self.to_model(latents))

    # --- model space
    def encode_model(self, images: torch.Tensor, name: str = "images") -> torch.Tensor:
        """Images in 0..1 -> model-space latents."""
        self.check_images(images, name)
        return self._encode_model(images)

    def decode_model(self, z: torch.Tensor, name: str = "latent") -> torch.Tensor:
        """Model-space latents -> images in 0..1 (clamped)."""
        self.check_latent(z, name)
        return self._decode_model(z).clamp(0.0, 1.0)

    def _encode_model(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def _decode_model(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    # --- checks
    def check_latent(self, z, name: str = "latent") -> None:
        if not isinstance(z, torch.Tensor) or z.ndim != 4:
            raise BridgeInputError(f"{name}: expected a latent tensor [B, C, H, W], got {_describe(z)}")
        if z.shape[1] != self.latent_channels:
            raise BridgeInputError(
                f"{name}: has {z.shape[1]} channels but the VAE {self.name!r} expects {self.latent_channels}"
            )

    def check_images(self, images, name: str = "images") -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            raise BridgeInputError(f"{name}: expected images [B, 3, H, W] in 0..1, got {_describe(images)}")
        h, w = images.shape[-2:]
        if h % self.downscale or w % self.downscale:
            raise BridgeInputError(
                f"{name}: size {h}x{w} is not divisible by the VAE {self.name!r}'s downscale factor {self.downscale}"
            )

    # --- placement
    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, latent_channels={self.latent_channels}, "
            f"downscale={self.downscale}, scale={self.scale_factor}, shift={self.shift_factor})"
        )


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    return f"{type(x).__name__}"


# ---------------------------------------------------------------------------------------------
# Tiled encode / decode (large images with bounded memory)


def _tile_starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool, device, dtype) -> torch.Tensor:
    """1-D blending weight of a tile of length n: linear ramps over `overlap` on the sides that
    touch another tile, flat where the tile touches the image border."""
    w = torch.ones(n, device=device, dtype=dtype)
    if overlap > 0:
        r = (torch.arange(overlap, device=device, dtype=dtype) + 0.5) / overlap
        if not at_start:
            w[:overlap] = torch.minimum(w[:overlap], r)
        if not at_end:
            w[n - overlap :] = torch.minimum(w[n - overlap :], r.flip(0))
    return w


def _tiled(fn, x: torch.Tensor, tile: int, overlap: int, ratio_num: int, ratio_den: int, out_channels: int):
    """Apply a local map `fn` (input size * ratio_num / ratio_den = output size) tile by tile and
    blend the overlapping outputs with linear ramps. `tile` and `overlap` are in input pixels."""
    b, _, h, w = x.shape
    step = tile - overlap
    ys, xs = _tile_starts(h, tile, step), _tile_starts(w, tile, step)
    oh, ow = h * ratio_num // ratio_den, w * ratio_num // ratio_den
    out = weight = None
    o_ov = overlap * ratio_num // ratio_den
    for y0 in ys:
        for x0 in xs:
            th, tw = min(tile, h), min(tile, w)
            part = fn(x[:, :, y0 : y0 + th, x0 : x0 + tw]).float()
            if out is None:
                out = torch.zeros(b, out_channels, oh, ow, device=part.device, dtype=torch.float32)
                weight = torch.zeros(1, 1, oh, ow, device=part.device, dtype=torch.float32)  # fn's device, not x's
            py, px = part.shape[-2:]
            oy, ox = y0 * ratio_num // ratio_den, x0 * ratio_num // ratio_den
            wy = _ramp(py, min(o_ov, py // 2), y0 == 0, y0 + th >= h, part.device, torch.float32)
            wx = _ramp(px, min(o_ov, px // 2), x0 == 0, x0 + tw >= w, part.device, torch.float32)
            m = (wy[:, None] * wx[None, :])[None, None]
            out[:, :, oy : oy + py, ox : ox + px] += part * m
            weight[:, :, oy : oy + py, ox : ox + px] += m
    return out / weight


def _check_tiling(vae: BridgeVAE, tile, overlap, unit: int, name: str):
    if not isinstance(tile, int) or tile <= 0 or tile % unit:
        raise BridgeInputError(f"{name}: expected a positive multiple of {unit}, got {tile!r}")
    if not isinstance(overlap, int) or overlap < 0 or overlap % unit or overlap >= tile:
        raise BridgeInputError(
            f"overlap: expected a multiple of {unit} in [0, {name}), got {overlap!r}"
        )


def decode_model_tiled(vae: BridgeVAE, z: torch.Tensor, tile: int = 64, overlap: int = 16, clamp: bool = True) -> torch.Tensor:
    """``vae.decode_model`` over latent tiles of `tile` x `tile` latent pixels, overlapping by
    `overlap`, blended linearly in pixel space (clamped to 0..1 unless `clamp` is False)."""
    vae.check_latent(z)
    _check_tiling(vae, tile, overlap, 1, "tile")
    f = vae.downscale
    out = _tiled(vae._decode_model, z, tile, overlap, f, 1, 3)
    return out.clamp(0.0, 1.0) if clamp else out


def encode_model_tiled(vae: BridgeVAE, images: torch.Tensor, tile: int = 512, overlap: int = 128) -> torch.Tensor:
    """``vae.encode_model`` over image tiles of `tile` x `tile` pixels (multiples of the VAE's
    factor), overlapping by `overlap`, blended linearly in latent space."""
    vae.check_images(images)
    _check_tiling(vae, tile, overlap, vae.downscale, "tile")
    f = vae.downscale
    return _tiled(vae.encode_model, images, tile, overlap, 1, f, vae.latent_channels)


# ---------------------------------------------------------------------------------------------
# TAESD


# (latent channels, scale, shift) of the latent formats the TAESD family targets (ComfyUI
# comfy/latent_formats.py and nodes.py load_taesd).
TAESD_FORMATS: dict[str, tuple[int, float, float]] = {
    "taesd": (4, 0.18215, 0.0),  # SD1.x / SD2.x
    "taesdxl": (4, 0.13025, 0.0),  # SDXL
    "taesd3": (16, 1.5305, 0.0609),  # SD3
    "taef1": (16, 0.3611, 0.1159),  # FLUX.1
}


def _conv(n_in: int, n_out: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class _Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    """Residual block: conv-ReLU-conv-ReLU-conv plus identity, then ReLU (keys ``conv.0/2/4``)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(c, c), nn.ReLU(), _conv(c, c), nn.ReLU(), _conv(c, c))
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + x)


def taesd_encoder(latent_channels: int, width: int = 64) -> nn.Sequential:
    """conv(3, 64), Block, then 3 x [stride-2 conv (no bias), 3 Blocks], conv(64, C): keys 0..14."""
    layers: list[nn.Module] = [_conv(3, width), _Block(width)]
    for _ in range(3):
        layers += [_conv(width, width, stride=2, bias=False), _Block(width), _Block(width), _Block(width)]
    layers.append(_conv(width, latent_channels))
    return nn.Sequential(*layers)


def taesd_decoder(latent_channels: int, width: int = 64) -> nn.Sequential:
    """Clamp, conv(C, 64), ReLU, 3 x [3 Blocks, Upsample x2, conv (no bias)], Block, conv(64, 3):
    keys 0..19."""
    layers: list[nn.Module] = [_Clamp(), _conv(latent_channels, width), nn.ReLU()]
    for _ in range(3):
        layers += [_Block(width), _Block(width), _Block(width), nn.Upsample(scale_factor=2),
                   _conv(width, width, bias=False)]
    layers += [_Block(width), _conv(width, 3)]
    return nn.Sequential(*layers)


def taesd_dir(path: str | os.PathLike | None = None) -> Path | None:
    """The folder holding ``<name>_encoder.safetensors`` / ``<name>_decoder.safetensors``: `path`,
    else ``$TEMPO_TAESD_DIR``; None when neither names an existing folder."""
    p = path if path is not None else os.environ.get("TEMPO_TAESD_DIR")
    if not p:
        return None
    p = Path(p)
    return p if p.is_dir() else None


class TAESD(BridgeVAE, nn.Module):
    """Tiny AutoEncoder for Stable Diffusion (SD1, SDXL, SD3, FLUX.1 variants), downscale 8.

    ``TAESD.load("taesdxl", folder)`` reads ``taesdxl_encoder.safetensors`` and
    ``taesdxl_decoder.safetensors`` (weights are cast to float32). The encoder's output is the
    model-space latent; raw latents are ``z / scale + shift`` as in ComfyUI's TAESD wrapper.
    """

    downscale = 8

    def __init__(self, latent_channels: int = 4, scale_factor: float = 1.0, shift_factor: float = 0.0, name: str = "taesd"):
        nn.Module.__init__(self)
        self.name = name
        self.latent_channels = int(latent_channels)
        self.scale_factor = float(scale_factor)
        self.shift_factor = float(shift_factor)
        self.encoder = taesd_encoder(self.latent_channels)
        self.decoder = taesd_decoder(self.latent_channels)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def load(cls, name: str, folder: str | os.PathLike | None = None, device=None) -> "TAESD":
        """Load one of ``TAESD_FORMATS`` from `folder` (or ``$TEMPO_TAESD_DIR``)."""
        from safetensors.torch import load_file

        if name not in TAESD_FORMATS:
            raise BridgeInputError(f"name: expected one of {sorted(TAESD_FORMATS)}, got {name!r}")
        d = taesd_dir(folder)
        if d is None:
            raise BridgeInputError(
                f"folder: no TAESD folder (got {folder!r}, TEMPO_TAESD_DIR={os.environ.get('TEMPO_TAESD_DIR')!r})"
            )
        paths = {part: d / f"{name}_{part}.safetensors" for part in ("encoder", "decoder")}
        for part, p in paths.items():
            if not p.is_file():
                raise BridgeInputError(f"folder: {p.name} not found in {d}")
        channels, scale, shift = TAESD_FORMATS[name]
        enc_sd = {k: v.float() for k, v in load_file(str(paths["encoder"])).items()}
        dec_sd = {k: v.float() for k, v in load_file(str(paths["decoder"])).items()}
        found = dec_sd["1.weight"].shape[1]
        if found != channels:
            raise BridgeInputError(f"folder: {paths['decoder'].name} has {found} latent channels, expected {channels}")
        vae = cls(channels, scale, shift, name=name)
        vae.encoder.load_state_dict(enc_sd, strict=True)
        vae.decoder.load_state_dict(dec_sd, strict=True)
        if device is not None:
            vae.to(device)
        return vae

    @property
    def device(self) -> torch.device:
        return self.decoder[1].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder[1].weight.dtype

    @torch.no_grad()
    def _encode_model(self, images):
        return self.encoder(images.to(self.device, self.dtype))

    @torch.no_grad()
    def _decode_model(self, z):
        return self.decoder(z.to(self.device, self.dtype))

    def __repr__(self) -> str:  # nn.Module's repr would list every layer
        return BridgeVAE.__repr__(self)


# ---------------------------------------------------------------------------------------------
# Toy VAE for fast tests


class ToyVAE(BridgeVAE):
    """A deterministic linear "VAE": pixel-unshuffle by `downscale`, then a fixed projection with
    orthonormal rows (seeded) from 3*f*f to `latent_channels`; the decoder is the transpose.

    Each latent pixel depends only on its own f x f image patch, so tiled encode / decode are exact,
    and ``encode_model(decode_model(z)) == z`` up to rounding wherever the decoded image stays
    inside 0..1. Images are mapped to -1..1 before projection.
    """

    def __init__(self, latent_channels: int = 4, downscale: int = 8, scale_factor: float = 1.0,
                 shift_factor: float = 0.0, seed: int = 0, name: str = "toy"):
        if latent_channels > 3 * downscale * downscale:
            raise BridgeInputError(
                f"latent_channels: at most 3 * downscale^2 = {3 * downscale * downscale}, got {latent_channels}"
            )
        self.name = name
        self.latent_channels = int(latent_channels)
        self.downscale = int(downscale)
        self.scale_factor = float(scale_factor)
        self.shift_factor = float(shift_factor)
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(3 * downscale * downscale, latent_channels, generator=g, dtype=torch.float64)
        q, _ = torch.linalg.qr(a)  # orthonormal columns
        # a few latents of unit-ish scale per image: scale the projection by sqrt(patch size)
        self.proj = (q.T * math.sqrt(3 * downscale * downscale / latent_channels) / 2).float()  # [C, 3ff]

    def _encode_model(self, images):
        p = torch.nn.functional.pixel_unshuffle(images.float() * 2 - 1, self.downscale)  # [B, 3ff, h, w]
        return torch.einsum("ck,bkhw->bchw", self.proj.to(p.device), p)

    def _decode_model(self, z):
        k = self.proj.to(z.device)
        norm = (k * k).sum(1)[0]  # rows share one norm
        p = torch.einsum("ck,bchw->bkhw", k, z.float()) / norm
        return (torch.nn.functional.pixel_shuffle(p, self.downscale) + 1) / 2
