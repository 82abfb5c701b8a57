"""The lab's VAEs (the bridges' ``BridgeVAE`` interface, ``bridges/vae.py``), for the benchmarks and tests.

* ``TestbedVAE``: a trained testbed's autoencoder as a BridgeVAE, counting its calls;
* ``LinearVAE``: a cheap, least-squares per-patch linear stand-in for a VAE (like ComfyUI's latent-to-RGB
  preview factors; the testbed's "cheap bridge VAE");
* ``vae_calls``: the calls those two counted;
* ``TAESD``: Tiny AutoEncoder for Stable Diffusion (madebyollin/taesd, MIT, Ollin Boer Bohan),
  re-implemented from its published architecture; the weight files are read from a folder (argument, or
  ``TEMPO_TAESD_DIR``). TAESD's own latent space is the model space: ComfyUI's TAESD wrapper turns its
  output into raw latents with the latent format's scale and shift, which this class copies. The pack's
  nodes take ComfyUI's own TAESD (VAELoader); this one serves the benchmark's photo cases and the tests;
* ``ToyVAE``: a deterministic linear "VAE" for fast tests.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..bridges.vae import BridgeInputError, BridgeVAE

__all__ = [
    "TestbedVAE",
    "LinearVAE",
    "vae_calls",
    "TAESD_FORMATS",
    "taesd_encoder",
    "taesd_decoder",
    "taesd_dir",
    "find_taesd",
    "TAESD",
    "ToyVAE",
]


# ---------------------------------------------------------------------------------------------
# The testbed VAEs


class TestbedVAE(BridgeVAE):
    """A trained testbed's autoencoder (``testbed.trained.load(...)``) as a BridgeVAE. Its
    normalised latents (what the testbed's denoiser sees) are both the raw and the model space
    (scale 1, shift 0). Fully convolutional: any multiple-of-4 image size. Counts its calls."""

    __test__ = False  # not a pytest class

    def __init__(self, tb, name: str = "testbed"):
        self.tb = tb
        self.name = name
        self.latent_channels = int(tb.ae.latent_channels)
        self.downscale = int(tb.ae.factor)
        self.scale_factor, self.shift_factor = 1.0, 0.0
        self.calls = {"encode": 0, "decode": 0}

    def _encode_model(self, images):
        self.calls["encode"] += 1
        with torch.no_grad():
            return self.tb.ae.encode(images.to(self.tb.device))

    def _decode_model(self, z):
        self.calls["decode"] += 1
        ae = self.tb.ae
        with torch.no_grad():
            return ae.decode_raw(z.to(self.tb.device) / ae.scale + ae.shift)

    def reset_calls(self):
        self.calls = {"encode": 0, "decode": 0}


class LinearVAE(BridgeVAE):
    """A cheap stand-in for a VAE: per latent pixel an affine map from its 3x3 latent
    neighbourhood to its f x f RGB patch (decode), and from the 3x3 neighbourhood of patches to the
    latent (encode), both fitted by least squares on (image, latent) pairs of the real VAE. One
    small matmul instead of a conv net: the testbed analogue of a TAESD standing in for the full
    VAE (and of ComfyUI's latent-to-RGB preview factors, which use a 1x1 neighbourhood)."""

    def __init__(self, latent_channels: int, downscale: int, dec_w, enc_w, name: str = "linear"):
        self.name = name
        self.latent_channels = int(latent_channels)
        self.downscale = int(downscale)
        self.scale_factor, self.shift_factor = 1.0, 0.0
        self.dec_w, self.enc_w = dec_w, enc_w
        self.calls = {"encode": 0, "decode": 0}

    @staticmethod
    def _feat(t: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] -> [B*h*w, 9C + 1] (3x3 neighbourhoods, replicate padding, bias)."""
        b, c, h, w = t.shape
        u = F.unfold(F.pad(t, (1, 1, 1, 1), mode="replicate"), 3)  # [B, 9C, h*w]
        u = u.transpose(1, 2).reshape(b * h * w, 9 * c)
        return torch.cat([u, u.new_ones(u.shape[0], 1)], 1)

    @classmethod
    def fit(cls, vae: BridgeVAE, images: torch.Tensor, name: str = "linear", ridge: float = 1e-4) -> "LinearVAE":
        f = vae.downscale
        with torch.no_grad():
            z = torch.cat([vae.encode_model(c) for c in images.split(256)])
        b, c, h, w = z.shape
        patches = F.pixel_unshuffle(images.float() * 2 - 1, f)  # [B, 3ff, h, w]
        xz, xp = cls._feat(z.double()), cls._feat(patches.double())
        yp = patches.double().permute(0, 2, 3, 1).reshape(b * h * w, -1)
        yz = z.double().permute(0, 2, 3, 1).reshape(b * h * w, -1)

        def solve(x, y):
            a = x.T @ x
            a += ridge * a.diagonal().mean() * torch.eye(a.shape[0], dtype=a.dtype)
            return torch.linalg.solve(a, x.T @ y).float()

        return cls(c, f, solve(xz, yp), solve(xp, yz), name=name)

    def _encode_model(self, images):
        self.calls["encode"] += 1
        p = F.pixel_unshuffle(images.float() * 2 - 1, self.downscale)
        b, _, h, w = p.shape
        out = self._feat(p) @ self.enc_w.to(p.device)
        return out.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()

    def _decode_model(self, z):
        self.calls["decode"] += 1
        b, _, h, w = z.shape
        out = self._feat(z.float()) @ self.dec_w.to(z.device)
        p = out.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        return (F.pixel_shuffle(p, self.downscale) + 1) / 2

    def reset_calls(self):
        self.calls = {"encode": 0, "decode": 0}


def vae_calls(*vaes) -> int:
    """Total encode + decode calls counted by TestbedVAE / LinearVAE objects (0 for others)."""
    return int(sum(sum(getattr(v, "calls", {}).values()) for v in vaes if v is not None))


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
        layers += [
            _Block(width),
            _Block(width),
            _Block(width),
            nn.Upsample(scale_factor=2),
            _conv(width, width, bias=False),
        ]
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


def find_taesd(path: str | os.PathLike | None = None) -> Path | None:
    """The folder of the real TAESD files: `path`, else ``$TEMPO_TAESD_DIR``, else the project's shared/assets/taesd
    inside or beside the checkout; the first that holds ``taesd_decoder.safetensors``; None when none does."""
    repo = Path(__file__).resolve().parents[1]
    for p in (
        path,
        os.environ.get("TEMPO_TAESD_DIR"),
        repo / "shared/assets/taesd",
        repo.parent / "shared/assets/taesd",
    ):
        if p and (Path(p) / "taesd_decoder.safetensors").is_file():
            return Path(p)
    return None


class TAESD(BridgeVAE, nn.Module):
    """Tiny AutoEncoder for Stable Diffusion (SD1, SDXL, SD3, FLUX.1 variants), downscale 8.

    ``TAESD.load("taesdxl", folder)`` reads ``taesdxl_encoder.safetensors`` and
    ``taesdxl_decoder.safetensors`` (weights are cast to float32). The encoder's output is the
    model-space latent; raw latents are ``z / scale + shift`` as in ComfyUI's TAESD wrapper.
    """

    downscale = 8

    def __init__(
        self, latent_channels: int = 4, scale_factor: float = 1.0, shift_factor: float = 0.0, name: str = "taesd"
    ):
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

    def __init__(
        self,
        latent_channels: int = 4,
        downscale: int = 8,
        scale_factor: float = 1.0,
        shift_factor: float = 0.0,
        seed: int = 0,
        name: str = "toy",
    ):
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
