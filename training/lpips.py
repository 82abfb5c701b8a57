"""LPIPS (Zhang et al., CVPR 2018) for DMD1's regression loss, from weight files the user already has.

DMD (Yin et al., CVPR 2024, section 3.3) regresses the one-step generator onto teacher ODE outputs
with LPIPS on decoded images. The pack never downloads weights, so this module only *loads* them:

* the VGG-16 backbone: torchvision's ``vgg16`` checkpoint (``vgg16-397923af.pth`` as torch hub caches it,
  or any file with its ``features.N.weight`` / ``features.N.bias`` keys; ``.pth`` or ``.safetensors``);
* the LPIPS linear heads: the ``lpips`` package's ``weights/v0.1/vgg.pth`` (keys ``linK.model.1.weight``,
  K = 0..4; ``.pth`` or ``.safetensors``).

The network is written here in plain PyTorch (the ``lpips`` package needs torchvision, which ComfyUI's
environment may not match): the backbone has torchvision's layer indices, so its checkpoint loads
unchanged, and the metric follows ``lpips.LPIPS(net="vgg", version="0.1")`` (scaling layer, features at
relu1_2 / relu2_2 / relu3_3 / relu4_3 / relu5_3, channel-wise unit normalisation, squared difference,
1x1 linear heads, spatial mean, sum over the five layers). ``tests/unit/test_lpips.py`` compares it
with the ``lpips`` package where that package and torchvision are installed.

``LatentLPIPS`` turns it into a regression loss on latents: decode both with a differentiable decoder
(for a ComfyUI model its VAE's decoder) and take LPIPS of the images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

# torchvision vgg16 "D" configuration; "M" = max-pool. Indices of the Sequential match torchvision's.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
CHANNELS = (64, 128, 256, 512, 512)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class LPIPSWeightsError(ValueError):
    """A weight file for LPIPS is missing or is not what it should be; the message names the input."""


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features`` layout (same indices, so its state dict loads as is)."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            c_in = v
    return nn.Sequential(*layers[: TAPS[-1] + 1])  # nothing after relu5_3 is used


class LPIPS(nn.Module):
    """LPIPS distance between images in [0, 1] (``lpips.LPIPS(net="vgg")`` with ``normalize=True``):
    ``forward(a, b) -> [B]``. Frozen; gradients flow to the inputs."""

    def __init__(self):
        super().__init__()
        self.features = vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                out.append(x)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
            raise ValueError(
                f"images: expected two [B, 3, H, W] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        w = self.lins[0].weight
        a = ((a.to(w.dtype) * 2 - 1) - self.shift) / self.scale
        b = ((b.to(w.dtype) * 2 - 1) - self.shift) / self.scale
        total = 0
        for fa, fb, lin in zip(self._taps(a), self._taps(b), self.lins):
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((na - nb) ** 2).mean(dim=(2, 3))
        return total.flatten()


def _read(path, what: str) -> dict[str, torch.Tensor]:
    p = Path(path) if path else None
    if p is None or not p.is_file():
        raise LPIPSWeightsError(f"{what}: expected an existing weight file (.pth or .safetensors), got {path!r}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # not a tensor file
        raise LPIPSWeightsError(
            f"{what}: {p.name} is not a readable torch weight file ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(sd, dict):
        raise LPIPSWeightsError(f"{what}: {p.name} does not hold a state dict")
    return sd


def load_lpips(vgg_weights, lin_weights, device=None) -> LPIPS:
    """LPIPS from torchvision's VGG-16 checkpoint (`vgg_weights`) and the lpips package's linear heads
    (`lin_weights`); errors name the input and list the keys that are missing."""
    net = LPIPS()
    sd = _read(vgg_weights, "vgg_weights")
    feats = {k[len("features.") :]: v for k, v in sd.items() if k.startswith("features.")}
    want = net.features.state_dict()
    missing = [k for k in want if k not in feats]
    if missing:
        raise LPIPSWeightsError(
            f"vgg_weights: not a torchvision vgg16 checkpoint (missing features.{missing[0]} and "
            f"{len(missing) - 1} more)"
        )
    try:
        net.features.load_state_dict({k: feats[k] for k in want})
    except RuntimeError as e:
        raise LPIPSWeightsError(f"vgg_weights: shapes do not match vgg16 ({str(e).splitlines()[-1].strip()})") from None
    sd = _read(lin_weights, "lin_weights")
    for k, (lin, c) in enumerate(zip(net.lins, CHANNELS)):
        key = f"lin{k}.model.1.weight"
        if key not in sd:
            raise LPIPSWeightsError(f"lin_weights: missing {key} (expected the lpips package's weights/v0.1/vgg.pth)")
        if tuple(sd[key].shape) != (1, c, 1, 1):
            raise LPIPSWeightsError(f"lin_weights: {key} has shape {tuple(sd[key].shape)}, expected (1, {c}, 1, 1)")
        lin.weight.data.copy_(sd[key].float())
    net.requires_grad_(False)
    return net.to(device) if device is not None else net


class LatentLPIPS(nn.Module):
    """Regression loss on latents: mean LPIPS between ``decode(pred)`` and ``decode(target)`` (DMD1's
    loss on decoded images). ``decode`` must be differentiable (latents -> images in [0, 1])."""

    def __init__(self, decode: Callable[[torch.Tensor], torch.Tensor], lpips: LPIPS):
        super().__init__()
        self.decode = decode
        self.lpips = lpips

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = self.decode(target)
        return self.lpips(self.decode(pred), t).mean()
