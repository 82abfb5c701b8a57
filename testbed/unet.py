"""A small class-conditional UNet eps-predictor for the testbed's latents.

The call signature is the one ComfyUI's BaseModel uses for an SD-style UNet:
``forward(x, timesteps, context=None, **kwargs) -> eps`` with ``x`` the VP latent
(already multiplied by c_in = 1 / sqrt(1 + sigma^2)), ``timesteps`` the discrete timestep in
[0, 999] (float or long, shape [B]) and ``context`` a [B, 1, 11] one-hot class vector whose index
10 is the null class. Extra keyword arguments (control, transformer_options, ...) are ignored.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _gn(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(ch, 32 if ch >= 128 else 8), ch)


def _zero(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _gn(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)  # scale and shift after the second norm
        self.norm2 = _gn(cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm = _gn(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x, emb=None):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """ADM-style UNet: per level `num_res_blocks` residual blocks (attention at `attention_levels`),
    stride-2 conv down, nearest+conv up, skip concatenations; the timestep and the class share one
    embedding that modulates every residual block (scale and shift)."""

    def __init__(
        self,
        in_channels: int = 4,
        model_channels: int = 64,
        channel_mult=(1, 2),
        num_res_blocks: int = 2,
        attention_levels=(1,),
        num_heads: int = 4,
        context_dim: int = 11,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.config = dict(
            in_channels=in_channels,
            model_channels=model_channels,
            channel_mult=list(channel_mult),
            num_res_blocks=num_res_blocks,
            attention_levels=list(attention_levels),
            num_heads=num_heads,
            context_dim=context_dim,
            dropout=dropout,
        )
        self.in_channels = in_channels
        self.context_dim = context_dim
        self.model_channels = model_channels
        c0 = model_channels
        emb_dim = 4 * c0
        self.time_embed = nn.Sequential(nn.Linear(c0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = nn.Linear(context_dim, emb_dim)

        self.input_conv = nn.Conv2d(in_channels, c0, 3, padding=1)
        self.down = nn.ModuleList()
        skip_ch = [c0]
        ch = c0
        for lvl, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                blk = nn.ModuleList([ResBlock(ch, c0 * mult, emb_dim, dropout)])
                ch = c0 * mult
                if lvl in attention_levels:
                    blk.append(Attention(ch, num_heads))
                self.down.append(blk)
                skip_ch.append(ch)
            if lvl != len(channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skip_ch.append(ch)

        self.mid = nn.ModuleList(
            [ResBlock(ch, ch, emb_dim, dropout), Attention(ch, num_heads), ResBlock(ch, ch, emb_dim, dropout)]
        )

        self.up = nn.ModuleList()
        for lvl, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                blk = nn.ModuleList([ResBlock(ch + skip_ch.pop(), c0 * mult, emb_dim, dropout)])
                ch = c0 * mult
                if lvl in attention_levels:
                    blk.append(Attention(ch, num_heads))
                if lvl != 0 and i == num_res_blocks:
                    blk.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    blk.append(nn.Conv2d(ch, ch, 3, padding=1))
                self.up.append(blk)

        self.out = nn.Sequential(_gn(ch), nn.SiLU(), _zero(nn.Conv2d(ch, in_channels, 3, padding=1)))

    def null_context(self, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
        ctx = torch.zeros(batch, 1, self.context_dim, device=device, dtype=dtype)
        ctx[:, :, self.context_dim - 1] = 1
        return ctx

    @staticmethod
    def _run_block(blk: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for m in blk:
            h = m(h, emb) if isinstance(m, (ResBlock, Attention)) else m(h)
        return h

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        b = x.shape[0]
        dtype = self.input_conv.weight.dtype
        if not isinstance(timesteps, torch.Tensor):
            timesteps = torch.tensor([float(timesteps)], device=x.device)
        t = timesteps.to(x.device).float().reshape(-1)
        if t.numel() == 1 and b > 1:
            t = t.expand(b)
        if context is None:
            context = self.null_context(b, x.device)
        ctx = context.to(device=x.device, dtype=dtype).reshape(context.shape[0], -1, self.context_dim)
        ctx = ctx.mean(dim=1)  # one token expected; several are averaged
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(dtype)) + self.class_embed(ctx)

        h = self.input_conv(x.to(dtype))
        hs = [h]
        for blk in self.down:
            h = self._run_block(blk, h, emb)
            hs.append(h)
        for m in self.mid:
            h = m(h, emb)
        for blk in self.up:
            h = self._run_block(blk, torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h).to(x.dtype)
