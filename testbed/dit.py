"""A small DiT (Peebles & Xie 2023): a patchified transformer with adaLN-Zero conditioning on the
timestep and the class, the network of the flow testbed (``testbed/trained_flow.py``).

``DiT(x [B, C, H, W], timestep [B], y [B]) -> [B, C, H, W]``: the image is cut into p x p patches
(a strided convolution), fixed 2-D sine-cosine position embeddings are added, and each block is
pre-norm attention + MLP whose LayerNorm shift / scale and residual gates come from the conditioning
vector c = MLP(sinusoidal(timestep)) + embedding(y) (class ``num_classes`` = the null class, for
classifier-free guidance). The gates and the output layer start at zero, so the untrained net outputs 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .unet import timestep_embedding


def _pos_embed_2d(dim: int, gh: int, gw: int) -> torch.Tensor:
    """Fixed sine-cosine position embeddings [gh * gw, dim] (half the channels for each axis)."""
    quarter = dim // 4
    freqs = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij")
    parts = []
    for pos in (ys.reshape(-1), xs.reshape(-1)):
        a = pos[:, None] * freqs[None]
        parts += [torch.sin(a), torch.cos(a)]
    return torch.cat(parts, 1).float()


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(c)).chunk(6, dim=1)
        b, n, d = x.shape
        q, k, v = self.qkv(_modulate(self.norm1(x), sh1, sc1)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + g1[:, None] * self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + g2[:, None] * self.mlp(_modulate(self.norm2(x), sh2, sc2))


class DiT(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        patch: int = 4,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 3.0,
        num_classes: int = 10,
    ):
        super().__init__()
        if image_size % patch or dim % 4 or dim % heads:
            raise ValueError(
                f"DiT: image_size {image_size} must be a multiple of patch {patch}; dim {dim} of 4 and heads"
            )
        self.in_channels, self.patch, self.image_size, self.dim = in_channels, patch, image_size, dim
        self.num_classes = num_classes
        self.embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        g = image_size // patch
        self.register_buffer("pos", _pos_embed_2d(dim, g, g), persistent=False)
        self.t_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.y_embed = nn.Embedding(num_classes + 1, dim)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, patch * patch * in_channels)
        for m in (self.ada_out, self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        nn.init.normal_(self.y_embed.weight, std=0.5)  # the class is as loud as the timestep from the start

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, ch, h, w = x.shape
        p = self.patch
        if ch != self.in_channels or h % p or w % p or (h // p) * (w // p) != self.pos.shape[0]:
            raise ValueError(
                f"x: expected [B, {self.in_channels}, {self.image_size}, {self.image_size}], got {list(x.shape)}"
            )
        tok = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        c = self.t_mlp(timestep_embedding(timestep.reshape(-1).expand(b), self.dim)) + self.y_embed(y)
        for blk in self.blocks:
            tok = blk(tok, c)
        shift, scale = self.ada_out(F.silu(c)).chunk(2, dim=1)
        out = self.out(_modulate(self.norm_out(tok), shift, scale))  # [B, N, p * p * C]
        gh, gw = h // p, w // p
        out = out.view(b, gh, gw, p, p, ch).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, ch, h, w)


def param_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
