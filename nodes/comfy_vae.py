"""A ComfyUI VAE (``comfy.sd.VAE``) as a ``bridges.vae.BridgeVAE``, and helpers to read a MODEL's
latent space and noise schedule for the pure-torch bridges.

Spaces (see ``bridges.vae``): a LATENT holds the VAE's **raw** latents; a model samples in **model
space** = its ``latent_format.process_in(raw)``. The adapter takes the latent format of the MODEL the
latents belong to (``latent_format=model.get_model_object("latent_format")``) so that model-space x0
predictions go through the right ``process_out`` before ``vae.decode``; without a MODEL it uses the
VAE's own scale / shift where it has one (TAESD from VAELoader carries ``vae_scale`` / ``vae_shift``),
else raw = model space.

Images are ``[B, 3, H, W]`` 0..1 on the bridge side and ComfyUI's ``[B, H, W, 3]`` on the VAE side.
``tiled=True`` uses ComfyUI's own ``decode_tiled`` / ``encode_tiled`` (tile and overlap in pixels,
as VAEDecodeTiled). Every decode / encode call is counted in ``calls`` for the nodes' reports.
"""

from __future__ import annotations

import torch

from ..bridges.core import ModelSchedule
from ..bridges.vae import BridgeInputError, BridgeVAE
from . import compat
from .comfy_model import model_kind  # also imported from here by nodes/coop.py


def vae_factor(vae) -> int:
    """Spatial downscale factor of a ComfyUI VAE (an int; video VAEs give their spatial one)."""
    f = vae.spacial_compression_encode()
    return int(f)


def vae_latent_channels(vae) -> int:
    return int(getattr(vae, "latent_channels", 4))


def _own_format(vae) -> tuple[float, float]:
    fsm = getattr(vae, "first_stage_model", None)
    scale = getattr(fsm, "vae_scale", None)
    shift = getattr(fsm, "vae_shift", None)
    if isinstance(scale, torch.Tensor) and isinstance(shift, torch.Tensor):
        return float(scale), float(shift)
    return 1.0, 0.0


class ComfyBridgeVAE(BridgeVAE):
    """BridgeVAE over a ComfyUI VAE. `latent_format`: the MODEL's (process_in / process_out);
    None: the VAE's own scale / shift (TAESD) or identity."""

    def __init__(
        self,
        vae,
        latent_format=None,
        name: str = "vae",
        tiled: bool = False,
        tile: int = 512,
        overlap: int = 64,
        calls: dict | None = None,
    ):
        if vae is None or not hasattr(vae, "decode") or not hasattr(vae, "encode"):
            raise BridgeInputError(f"{name}: expected a ComfyUI VAE, got {type(vae).__name__}")
        self.vae = vae
        self.name = name
        self.latent_format = latent_format
        self.latent_channels = vae_latent_channels(vae)
        self.downscale = vae_factor(vae)
        if latent_format is not None:
            self.scale_factor = float(getattr(latent_format, "scale_factor", 1.0))
            self.shift_factor = float(getattr(latent_format, "shift_factor", 0.0) or 0.0)
        else:
            self.scale_factor, self.shift_factor = _own_format(vae)
        self.tiled = bool(tiled)
        self.tile = int(tile)
        self.overlap = int(overlap)
        self.calls = calls if calls is not None else {"decode": 0, "encode": 0}

    # latent formats: exactly ComfyUI's process_in / process_out where a format is known
    def to_model(self, raw):
        if self.latent_format is not None:
            return self.latent_format.process_in(raw)
        return super().to_model(raw)

    def from_model(self, z):
        if self.latent_format is not None:
            return self.latent_format.process_out(z)
        return super().from_model(z)

    # raw latents <-> images [B, 3, H, W]
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.check_latent(latents, "samples")
        self.calls["decode"] = self.calls.get("decode", 0) + 1
        if self.tiled:
            f = self.vae.spacial_compression_decode()
            overlap = min(self.overlap, self.tile // 4)
            img = self.vae.decode_tiled(latents, tile_x=self.tile // f, tile_y=self.tile // f, overlap=overlap // f)
        else:
            img = self.vae.decode(latents)
        if img.ndim == 5:  # video VAEs: frames into the batch
            img = img.reshape(-1, *img.shape[-3:])
        return img[..., :3].movedim(-1, 1).float()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images, "images")
        self.calls["encode"] = self.calls.get("encode", 0) + 1
        pixels = images.movedim(1, -1)
        if self.tiled:
            overlap = min(self.overlap, self.tile // 4)
            return self.vae.encode_tiled(pixels, tile_x=self.tile, tile_y=self.tile, overlap=overlap).float()
        return self.vae.encode(pixels).float()

    # model space
    def _decode_model(self, z):
        return self.decode(self.from_model(z))

    def _encode_model(self, images):
        return self.to_model(self.encode(images))

    def encode_model(self, images, name: str = "images"):
        self.check_images(images, name)
        return self._encode_model(images)

    @property
    def device(self):
        return getattr(self.vae, "device", torch.device("cpu"))


# ------------------------------------------------------------------------------- models
def model_schedule(model, name: str = "model") -> ModelSchedule:
    """The noise levels a MODEL accepts, as a bridges.core.ModelSchedule."""
    ms = model.get_model_object("model_sampling")
    # bridges.core's kinds: x = x0 + sigma * noise ("eps" and "v" alike) or flow; EDM models are v-prediction
    # (Karras et al.'s preconditioning), x0 and unknown ones are taken as eps, both in ComfyUI's x = x0 + sigma n
    kind = {"flow": "flow", "v": "v", "edm": "v"}.get(model_kind(model), "eps")
    table = getattr(ms, "sigmas", None)
    if isinstance(table, torch.Tensor) and table.numel() > 1:
        return ModelSchedule(kind=kind, table=table.detach().float().cpu(), name=name)
    return ModelSchedule(kind=kind, sigma_min=float(ms.sigma_min), sigma_max=float(ms.sigma_max), name=name)


def model_latent_format(model):
    return model.get_model_object("latent_format")


def check_model_vae(model, vae, model_name: str, vae_name: str) -> None:
    """Raise when a MODEL's latent format does not fit its VAE (channel count)."""
    fmt = model_latent_format(model)
    want = int(getattr(fmt, "latent_channels", vae_latent_channels(vae)))
    have = vae_latent_channels(vae)
    if want != have:
        raise BridgeInputError(
            f"{vae_name}: has {have} latent channels but {model_name}'s latent format "
            f"{type(fmt).__name__} has {want}; connect the VAE that belongs to {model_name}"
        )


def check_latent_vae(samples: torch.Tensor, vae, latent_name: str, vae_name: str) -> None:
    compat.refuse_not_image_latent(samples, latent_name)
    have = int(samples.shape[1])
    want = vae_latent_channels(vae)
    if have != want:
        raise BridgeInputError(
            f"{vae_name}: expects {want} latent channels but {latent_name} has {have}; "
            f"connect the VAE of the space {latent_name} is in"
        )


def bridge_vae_for(
    model, vae, name: str, calls: dict, bridge_vae=None, tiled=False, tile=512, overlap=64
) -> ComfyBridgeVAE:
    """The BridgeVAE a node uses for `model`'s space: `bridge_vae` (a cheap stand-in such as TAESD)
    when given, else `vae`; in the MODEL's latent format. Checks channels against the model."""
    check_model_vae(model, vae, name.replace("vae", "model"), name)
    use, label = vae, name
    if bridge_vae is not None:
        check_model_vae(model, bridge_vae, name.replace("vae", "model"), "bridge_" + name)
        if vae_factor(bridge_vae) != vae_factor(vae):
            raise BridgeInputError(
                f"bridge_{name}: downscale factor {vae_factor(bridge_vae)} differs from {name}'s {vae_factor(vae)}"
            )
        use, label = bridge_vae, "bridge_" + name
    return ComfyBridgeVAE(
        use, model_latent_format(model), name=label, tiled=tiled, tile=tile, overlap=overlap, calls=calls
    )
