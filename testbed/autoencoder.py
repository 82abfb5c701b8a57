"""A tiny convolutional autoencoder: RGB images in [0, 1] <-> 4-channel latents (a VAE stand-in).

`encode` returns latents normalised to an overall std of about 1 (`(z - shift) * scale`, the two
numbers measured on the training set and stored with the weights); `decode` inverts that and
returns images clamped to [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _groups(ch: int) -> int:
    return 8 if ch % 8 == 0 else 1


class _Res(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.n1 = nn.GroupNorm(_groups(ch), ch)
        self.c1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.n2 = nn.GroupNorm(_groups(ch), ch)
        self.c2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        h = self.c1(F.silu(self.n1(x)))
        return x + self.c2(F.silu(self.n2(h)))


class AutoEncoder(nn.Module):
    """Encoder: pixel-unshuffle (2x), a conv, then per level residual blocks with a stride-2 conv
    between levels; the decoder mirrors it with a pixel-shuffle at the end. Working at half
    resolution from the first layer keeps it cheap on a CPU; the images are smooth anyway.

    `channels` lists the width per level (the first at H/2); the downscale factor is
    2 ** len(channels).
    """

    def __init__(
        self, in_channels: int = 3, latent_channels: int = 4, channels=(32, 64), num_res=(1, 2), image_size: int = 32
    ):
        super().__init__()
        self.config = dict(
            in_channels=in_channels,
            latent_channels=latent_channels,
            channels=list(channels),
            num_res=list(num_res),
            image_size=image_size,
        )
        ch = list(channels)
        self.factor = 2 ** len(ch)
        self.image_size = image_size
        self.latent_channels = latent_channels

        enc = [nn.PixelUnshuffle(2), nn.Conv2d(4 * in_channels, ch[0], 3, padding=1)]
        for i in range(len(ch)):
            if i > 0:
                enc.append(nn.Conv2d(ch[i - 1], ch[i], 3, stride=2, padding=1))
            enc += [_Res(ch[i]) for _ in range(num_res[i])]
        enc += [nn.GroupNorm(_groups(ch[-1]), ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        dec = [nn.Conv2d(latent_channels, ch[-1], 3, padding=1)]
        for i in range(len(ch) - 1, -1, -1):
            dec += [_Res(ch[i]) for _ in range(num_res[i])]
            if i > 0:
                dec += [nn.Conv2d(ch[i], 4 * ch[i - 1], 3, padding=1), nn.PixelShuffle(2)]
        dec += [
            nn.GroupNorm(_groups(ch[0]), ch[0]),
            nn.SiLU(),
            nn.Conv2d(ch[0], 4 * in_channels, 3, padding=1),
            nn.PixelShuffle(2),
        ]
        self.decoder = nn.Sequential(*dec)

        # latent normalisation, measured after training: z_norm = (z_raw - shift) * scale
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.image_size // self.factor
        return (self.latent_channels, s, s)

    # raw (unnormalised) halves, used in training
    def encode_raw(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images * 2 - 1)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z) * 0.5 + 0.5

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> normalised latents [B, 4, H/f, W/f] (std about 1)."""
        return (self.encode_raw(images) - self.shift) * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> images in [0, 1]."""
        return self.decode_raw(latents / self.scale + self.shift).clamp(0, 1)
