"""Minimal VAE interface for the Coop-Diffusion bridges (the lab's VAEs, TAESD and a toy VAE among them,
are in ``testbed/vaes.py``).

Conventions (those of ComfyUI: ``comfy/sd.py`` ``VAE`` and ``comfy/latent_formats.py``):

* images are ``[B, 3, H, W]`` floats in 0..1 (channels first, unlike ComfyUI's IMAGE);
* ``encode`` returns the VAE's **raw** latents (what a ComfyUI LATENT holds) and ``decode`` takes
  raw latents; ``decode`` clamps to 0..1 as ComfyUI's ``process_output`` does;
* a model samples in **model space**: ``to_model(raw) = (raw - shift) * scale`` (ComfyUI's
  ``latent_format.process_in``), ``from_model`` is its inverse (``process_out``). The bridges
  work in model space (the denoisers' x0 predictions live there), via ``encode_model`` and
  ``decode_model``.
"""

from __future__ import annotations

import torch


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
        raise BridgeInputError(f"overlap: expected a multiple of {unit} in [0, {name}), got {overlap!r}")


def decode_model_tiled(
    vae: BridgeVAE, z: torch.Tensor, tile: int = 64, overlap: int = 16, clamp: bool = True
) -> torch.Tensor:
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
