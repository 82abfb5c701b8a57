"""DMD2's GAN head on the fake score's features, and gradient checkpointing (plain PyTorch).

DMD2 (Yin et al., NeurIPS 2024; tianweiy/DMD2 main/sd_guidance.py:96-165) has no separate discriminator: a small
head (``cls_pred_branch``) classifies the fake UNet's bottleneck features of a noisy input
("diffusion GAN": noised at t ~ U{0, ..., 999}). SD1.5: strided 4x4 convs with GroupNorm and SiLU
from 8x8 to 1x1, then a 1x1 conv to one logit. Losses are non-saturating (softplus):
generator ``softplus(-D(G(z)))``, critic ``softplus(D(G(z))) + softplus(-D(x_real))``.

``FeatureTap`` takes the features of ANY network with a forward hook on a named submodule (the
testbed UNet's ``mid.2``, the last layer of an SD UNet's ``middle_block`` (ComfyUI's UNet calls
the layers of its blocks, never the block itself), a DiT block, an MLP layer) and stops the
forward pass there (DMD2's ``classify_mode`` also returns at the bottleneck), so classifying costs
only the encoder half.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class _Stop(Exception):
    pass


class FeatureTap:
    """Forward hook on ``module.get_submodule(name)`` that captures its output.

    ``features(fn, *args, **kw)`` runs ``fn`` (a forward of the network that contains the
    submodule) and returns the captured output, stopping the forward right after the submodule.
    Outside ``features`` the hook does nothing.
    """

    def __init__(self, module: nn.Module, name: str):
        try:
            self.target = module.get_submodule(name)
        except AttributeError:
            raise ValueError(f"gan_feature_module: the fake score has no submodule {name!r}") from None
        self.name = name
        self._armed = False
        self._out = None
        self._handle = self.target.register_forward_hook(self._hook)

    def _hook(self, mod, args, out):
        if self._armed:
            self._out = out[0] if isinstance(out, (tuple, list)) else out
            raise _Stop

    def features(self, fn: Callable, *args, **kwargs) -> torch.Tensor:
        self._armed, self._out = True, None
        try:
            fn(*args, **kwargs)
        except _Stop:
            pass
        finally:
            self._armed = False
        if self._out is None:
            raise ValueError(f"gan_feature_module: submodule {self.name!r} was not called by the fake score's forward")
        out, self._out = self._out, None
        return out

    def remove(self) -> None:
        self._handle.remove()


def _gn(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(ch, 32), ch)


class GANHead(nn.Module):
    """One logit per sample from a feature map, shaped after DMD2's ``cls_pred_branch``:

    * [B, C, H, W]: (4x4 conv stride 2, GroupNorm, SiLU) while the map is larger than 2x2, then a
      global mean, then a 1x1 "conv" (Linear C -> 1);
    * [B, N, C] tokens (a DiT block): mean over tokens, then Linear-SiLU-Linear;
    * [B, C]: Linear-SiLU-Linear.
    """

    def __init__(self, feature_shape: tuple[int, ...]):
        super().__init__()
        self.feature_shape = tuple(int(d) for d in feature_shape)
        if len(feature_shape) == 3:
            c, h, w = feature_shape
            layers: list[nn.Module] = []
            while min(h, w) > 2:
                layers += [nn.Conv2d(c, c, 4, stride=2, padding=1), _gn(c), nn.SiLU()]
                h, w = h // 2, w // 2
            self.body = nn.Sequential(*layers)
            self.out = nn.Linear(c, 1)
            self.kind = "map"
        elif len(feature_shape) in (1, 2):
            c = feature_shape[-1]
            self.body = nn.Sequential(nn.Linear(c, c), nn.SiLU())
            self.out = nn.Linear(c, 1)
            self.kind = "tokens" if len(feature_shape) == 2 else "vector"
        else:
            raise ValueError(
                f"gan_feature_module: expected features [B, C], [B, N, C] or [B, C, H, W], got [B, *{feature_shape}]"
            )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        f = f.float()
        if self.kind == "map":
            h = self.body(f).mean(dim=(2, 3))
        elif self.kind == "tokens":
            h = self.body(f.mean(dim=1))
        else:
            h = self.body(f)
        return self.out(h).reshape(-1)


def gen_gan_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: mean softplus(-D(G(z)))."""
    return F.softplus(-logits_fake.float()).mean()


def critic_gan_loss(logits_fake: torch.Tensor, logits_real: torch.Tensor) -> torch.Tensor:
    """Critic loss: mean softplus(D(G(z))) + mean softplus(-D(x_real))."""
    return F.softplus(logits_fake.float()).mean() + F.softplus(-logits_real.float()).mean()


# --------------------------------------------------------------------------------------------------
# gradient checkpointing


def _ckpt_forward(orig, *args, **kwargs):
    if torch.is_grad_enabled():
        return checkpoint(orig, *args, use_reentrant=False, **kwargs)
    return orig(*args, **kwargs)


def enable_gradient_checkpointing(net: nn.Module) -> list[str]:
    """Recompute activations block by block in backward. A network with its own switch (diffusers'
    ``enable_gradient_checkpointing``) uses it; otherwise every module held in an ``nn.ModuleList``
    (UNet blocks, DiT blocks; nested lists are descended), and every layer of an ``nn.Sequential`` held
    in one (ComfyUI's TimestepEmbedSequential blocks), gets a checkpointed ``forward`` (instance
    attribute, so parameter names and state dicts are unchanged). Returns the names of the wrapped
    modules (or ["<native>"])."""
    if hasattr(net, "enable_gradient_checkpointing") and callable(net.enable_gradient_checkpointing):
        net.enable_gradient_checkpointing()
        return ["<native>"]
    done: list[str] = []

    def visit(prefix: str, m: nn.Module, in_list: bool):
        # in_list: m is a ModuleList, or an nn.Sequential held in one. The layers of such a Sequential are
        # wrapped one by one, not the Sequential: ComfyUI's UNet runs its TimestepEmbedSequential blocks
        # through forward_timestep_embed(block, ...), which calls the layers but never block.forward
        # (ComfyUI's own training node also descends into Sequentials)
        for name, child in m.named_children():
            full = f"{prefix}{name}"
            if in_list and not isinstance(child, (nn.ModuleList, nn.ModuleDict, nn.Sequential)):
                if not getattr(child, "_tempo_ckpt", False):
                    child.forward = functools.partial(_ckpt_forward, child.forward)
                    child._tempo_ckpt = True
                done.append(full)
            else:
                visit(
                    full + ".",
                    child,
                    isinstance(child, nn.ModuleList) or (in_list and isinstance(child, nn.Sequential)),
                )

    visit("", net, False)
    return done
