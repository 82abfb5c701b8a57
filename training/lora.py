"""LoRA (Hu et al. 2021) for DMD training, plain PyTorch (no ComfyUI import).

What it is for: DMD2 (Yin et al., NeurIPS 2024) trains two copies of the teacher (generator and fake score).
With LoRA the three networks share the teacher's weights: ``lora_copy(teacher, rank)`` returns a
module whose base parameters ARE the teacher's tensors (same storage, ``requires_grad`` False) and
whose only trainable parameters are the low-rank factors of the wrapped layers. The up factor is
zero-initialised, so a fresh copy computes exactly what the teacher computes.

Layers. ``torch.nn.Linear`` and ``torch.nn.Conv1d/2d/3d`` (groups = 1) and every subclass of them,
which covers the testbed UNet and ComfyUI's operations (``comfy.ops.disable_weight_init.Linear`` /
``Conv2d`` and the ``manual_cast`` variants subclass ``torch.nn.Linear`` / ``torch.nn.Conv2d``).
The base layer is called as is (so a ComfyUI op keeps its own weight casting) and the LoRA branch is
added to its output: y = base(x) + (alpha / rank) * up(down(x)). For a convolution ``down`` is a
convolution with the base's kernel, stride, padding and dilation into ``rank`` channels and ``up``
a 1x1 convolution (kohya's LoCon layout).

File format (``save_lora`` / ``lora_state_dict``), the kohya/"generic" layout that ComfyUI's LoRA
loader reads (``comfy/lora.py`` ``model_lora_keys_unet`` maps ``diffusion_model.<module>`` to
``diffusion_model.<module>.weight``; ``comfy/weight_adapter/lora.py`` reads the three keys)::

    <prefix><module>.lora_up.weight     [out, rank]            (conv: [out, rank, 1, 1])
    <prefix><module>.lora_down.weight   [rank, in]             (conv: [rank, in, kh, kw])
    <prefix><module>.alpha              scalar

with ``<module>`` the dotted module path in the wrapped network and ``prefix`` what the network is
called inside the host model: ``"diffusion_model."`` for a ComfyUI UNet/DiT whose
``diffusion_model`` is this network, ``"diffusion_model.net."`` for the pack's testbed inside
ComfyUI (``harness/comfy_testbed.py`` holds it as ``.net``). ComfyUI applies
W + strength * (alpha / rank) * (up.flatten(1) @ down.flatten(1)).reshape(W.shape), which is what
``merge_lora`` computes and what the forward computes for a linear or a convolution.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import re
from typing import Iterable, Sequence

import torch
from torch import nn

__all__ = [
    "LoRALayer",
    "LoRAError",
    "lora_copy",
    "add_lora",
    "lora_layers",
    "lora_parameters",
    "lora_state_dict",
    "load_lora_state_dict",
    "save_lora",
    "load_lora",
    "merge_lora",
    "merged_state_dict",
    "shares_base",
    "DEFAULT_TARGETS",
]

# Module types wrapped by default (their subclasses too, e.g. comfy.ops Linear/Conv2d).
DEFAULT_TARGETS: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class LoRAError(ValueError):
    """A LoRA input is out of range; the message starts with the input's name."""


class LoRALayer(nn.Module):
    """``base(x) + scale * up(down(x))`` around a Linear or ConvNd ``base`` (shared, frozen).

    ``weight`` and ``bias`` are the base layer's (code that reads ``layer.weight.dtype`` keeps
    working). ``enabled`` False (or ``scale_mult`` 0) turns the branch off.
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        if not isinstance(base, DEFAULT_TARGETS):
            raise LoRAError(
                f"base: expected a torch.nn.Linear or Conv1d/2d/3d (or a subclass), got {type(base).__name__}"
            )
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise LoRAError(f"rank: expected an integer >= 1, got {rank!r}")
        self.base = base
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.enabled = True
        self.scale_mult = 1.0
        w = base.weight
        dev = w.device
        pdt = dtype or (w.dtype if w.dtype in (torch.float32, torch.float64) else torch.float32)
        if isinstance(base, nn.Linear):
            self.kind = "linear"
            self.lora_down = nn.Linear(base.in_features, rank, bias=False, device=dev, dtype=pdt)
            self.lora_up = nn.Linear(rank, base.out_features, bias=False, device=dev, dtype=pdt)
        else:
            if base.groups != 1:
                raise LoRAError(f"base: grouped convolutions (groups={base.groups}) are not supported")
            if base.padding_mode != "zeros":
                raise LoRAError(f"base: padding_mode {base.padding_mode!r} is not supported (only 'zeros')")
            nd = len(base.kernel_size)
            conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd]
            self.kind = f"conv{nd}d"
            self.lora_down = conv(
                base.in_channels,
                rank,
                base.kernel_size,
                stride=base.stride,
                padding=base.padding,
                dilation=base.dilation,
                bias=False,
                device=dev,
                dtype=pdt,
            )
            self.lora_up = conv(rank, base.out_channels, 1, bias=False, device=dev, dtype=pdt)
        # kohya / peft init: down ~ kaiming-uniform(a = sqrt(5)) (nn.Linear's default), up = 0
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self):
        return self.base.bias

    def __setattr__(self, name, value):
        # code that sets ``layer.weight`` / ``layer.bias`` (ComfyUI's set_attr) reaches the base layer
        if name in ("weight", "bias") and "base" in self._modules:
            setattr(self._modules["base"], name, value)
        else:
            super().__setattr__(name, value)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank * self.scale_mult

    def delta_weight(self) -> torch.Tensor:
        """scale * up @ down reshaped to the base weight's shape (ComfyUI's formula), float32."""
        up = self.lora_up.weight.float().flatten(1)
        down = self.lora_down.weight.float().flatten(1)
        return (self.scale * (up @ down)).reshape(self.base.weight.shape)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base(x, *args, **kwargs)
        if not self.enabled or self.scale == 0:
            return out
        h = x.to(self.lora_down.weight.dtype)
        return out + (self.scale * self.lora_up(self.lora_down(h))).to(out.dtype)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, rank={self.rank}, alpha={self.alpha}"


# --------------------------------------------------------------------------------------------------
# wrapping


def _matches(name: str, module: nn.Module, targets, include, exclude) -> bool:
    if not isinstance(module, tuple(targets)):
        return False
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and getattr(module, "groups", 1) != 1:
        return False
    if include is not None and not any(_pattern(p, name) for p in include):
        return False
    if exclude is not None and any(_pattern(p, name) for p in exclude):
        return False
    return True


def _pattern(p, name: str) -> bool:
    """A name pattern: a compiled regex (``search``), a string with shell wildcards (``fnmatch`` on
    the full dotted name), or a plain string matched as a dotted-name component sequence
    (``"attn"`` matches ``mid.1.attn.qkv`` and ``attn``)."""
    if isinstance(p, re.Pattern):
        return p.search(name) is not None
    if any(c in p for c in "*?["):
        return fnmatch.fnmatchcase(name, p)
    parts = name.split(".")
    q = p.split(".")
    return any(parts[i : i + len(q)] == q for i in range(len(parts) - len(q) + 1))


def add_lora(
    module: nn.Module,
    rank: int,
    alpha: float | None = None,
    *,
    targets: Sequence[type] = DEFAULT_TARGETS,
    include: Iterable[str | re.Pattern] | None = None,
    exclude: Iterable[str | re.Pattern] | None = None,
    dtype: torch.dtype | None = None,
) -> list[str]:
    """Wrap (in place) every submodule of ``module`` that is an instance of ``targets`` and whose
    dotted name matches one of ``include`` (all when None) and none of ``exclude``, in a
    ``LoRALayer``. Freezes every non-LoRA parameter of ``module``. Returns the wrapped names.
    ``alpha`` defaults to ``rank`` (scale 1)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LoRAError(f"rank: expected an integer >= 1, got {rank!r}")
    if alpha is not None and not (isinstance(alpha, (int, float)) and alpha > 0):
        raise LoRAError(f"alpha: expected a number > 0 or None, got {alpha!r}")
    include = list(include) if include is not None else None
    exclude = list(exclude) if exclude is not None else None
    todo = []
    wrapped = [n for n, m in module.named_modules() if isinstance(m, LoRALayer)]
    for name, m in module.named_modules():
        if isinstance(m, LoRALayer) or any(name == n or name.startswith(n + ".") for n in wrapped):
            continue
        if name and _matches(name, m, targets, include, exclude):
            todo.append((name, m))
    for p in module.parameters():
        p.requires_grad_(False)
    for name, m in todo:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, LoRALayer(m, rank, alpha, dtype=dtype))
    if not todo:
        raise LoRAError("include: no Linear/Conv layer of the network matched the target selection")
    return [n for n, _ in todo]


def lora_copy(teacher: nn.Module, rank: int, alpha: float | None = None, **kw) -> nn.Module:
    """A LoRA copy of ``teacher`` that SHARES its parameters and buffers (no copy of the weights):
    the module structure is duplicated (``copy.deepcopy`` with the teacher's tensors pre-seeded in
    the memo), the selected layers are wrapped (``add_lora`` keywords), and every base parameter is
    set ``requires_grad=False`` (on the shared tensors, so the teacher is frozen too). The result
    computes exactly the teacher's function until its up factors move. Call it once per network
    (generator, fake score); all of them then share one set of teacher weights."""
    memo: dict[int, object] = {}
    for t in list(teacher.parameters()) + list(teacher.buffers()):
        memo[id(t)] = t
    net = copy.deepcopy(teacher, memo)
    add_lora(net, rank, alpha, **kw)
    return net


def lora_layers(module: nn.Module) -> dict[str, LoRALayer]:
    """Dotted name (as in the un-wrapped network) -> LoRALayer."""
    return {name: m for name, m in module.named_modules() if isinstance(m, LoRALayer)}


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA factors (down, up) of every LoRALayer in ``module``."""
    out = []
    for m in lora_layers(module).values():
        out += [m.lora_down.weight, m.lora_up.weight]
    return out


def shares_base(a: nn.Module, b: nn.Module) -> bool:
    """True when every base weight of the LoRA network ``a`` uses the same storage as the
    corresponding weight of ``b`` (a teacher or another LoRA copy of it)."""
    pa = dict(_base_named_tensors(a))
    pb = dict(_base_named_tensors(b))
    if set(pa) != set(pb):
        return False
    return all(pa[k].data_ptr() == pb[k].data_ptr() for k in pa)


def _base_named_tensors(module: nn.Module):
    """(name in the un-wrapped network, tensor) of every non-LoRA parameter and buffer."""
    layers = set(lora_layers(module))
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        parts = name.split(".")
        # a tensor under <layer>.lora_down / <layer>.lora_up is a LoRA factor; under <layer>.base a base tensor
        skip = False
        out = []
        i = 0
        while i < len(parts):
            out.append(parts[i])
            here = ".".join(out)
            if here in layers and i + 1 < len(parts):
                nxt = parts[i + 1]
                if nxt in ("lora_down", "lora_up"):
                    skip = True
                    break
                if nxt == "base":
                    i += 1  # drop the ".base" component
            i += 1
        if not skip:
            yield ".".join(out), t


# --------------------------------------------------------------------------------------------------
# state dicts and files


def lora_state_dict(module: nn.Module, prefix: str = "diffusion_model.", dtype: torch.dtype | None = None) -> dict:
    """The LoRA weights in ComfyUI's generic kohya layout (see the module docstring)."""
    sd = {}
    for name, m in lora_layers(module).items():
        k = prefix + name
        up = m.lora_up.weight.detach()
        down = m.lora_down.weight.detach()
        if dtype is not None:
            up, down = up.to(dtype), down.to(dtype)
        sd[k + ".lora_up.weight"] = up.contiguous().cpu().clone()
        sd[k + ".lora_down.weight"] = down.contiguous().cpu().clone()
        sd[k + ".alpha"] = torch.tensor(float(m.alpha) * m.scale_mult)
    return sd


def load_lora_state_dict(
    module: nn.Module, sd: dict, prefix: str = "diffusion_model.", strict: bool = True
) -> list[str]:
    """Load LoRA factors into an already wrapped ``module`` (ranks must match). With ``strict``,
    every LoRA layer must be in ``sd`` and every LoRA key of ``sd`` (under ``prefix``) must belong to
    a layer. Returns the loaded layer names."""
    layers = lora_layers(module)
    loaded = []
    for name, m in layers.items():
        k = prefix + name
        if k + ".lora_up.weight" not in sd:
            if strict:
                raise LoRAError(f"state: no LoRA weights for layer {name!r} (key {k}.lora_up.weight)")
            continue
        up, down = sd[k + ".lora_up.weight"], sd[k + ".lora_down.weight"]
        if tuple(up.shape) != tuple(m.lora_up.weight.shape) or tuple(down.shape) != tuple(m.lora_down.weight.shape):
            raise LoRAError(
                f"state: LoRA shapes of {name!r} differ: file up {tuple(up.shape)} down {tuple(down.shape)}, "
                f"layer up {tuple(m.lora_up.weight.shape)} down {tuple(m.lora_down.weight.shape)}"
            )
        with torch.no_grad():
            m.lora_up.weight.copy_(up)
            m.lora_down.weight.copy_(down)
        if k + ".alpha" in sd:
            m.alpha = float(sd[k + ".alpha"])
            m.scale_mult = 1.0
        loaded.append(name)
    if strict:
        known = {prefix + n for n in layers}
        extra = [k for k in sd if k.startswith(prefix) and k.rsplit(".lora_", 1)[0].removesuffix(".alpha") not in known]
        if extra:
            raise LoRAError(f"state: keys without a matching LoRA layer, e.g. {extra[:3]}")
    return loaded


def save_lora(
    module: nn.Module,
    path,
    prefix: str = "diffusion_model.",
    metadata: dict | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write ``lora_state_dict`` to a .safetensors file; ``metadata`` values become strings."""
    from safetensors.torch import save_file

    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    save_file(lora_state_dict(module, prefix, dtype), str(path), metadata=meta)


def load_lora(module: nn.Module, path, prefix: str = "diffusion_model.", strict: bool = True) -> dict:
    """Load a .safetensors LoRA file into the wrapped ``module``; returns the file's metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not str(path).endswith(".safetensors"):
        raise LoRAError(f"path: expected a .safetensors file, got {str(path)!r}")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    load_lora_state_dict(module, load_file(str(path)), prefix, strict)
    return meta


def lora_ranks(sd: dict, prefix: str = "diffusion_model.") -> dict[str, tuple[int, float]]:
    """Layer name -> (rank, alpha) of a LoRA state dict (for building a matching ``lora_copy``)."""
    out = {}
    for k, v in sd.items():
        if k.startswith(prefix) and k.endswith(".lora_down.weight"):
            name = k[len(prefix) : -len(".lora_down.weight")]
            a = sd.get(prefix + name + ".alpha")
            out[name] = (int(v.shape[0]), float(a) if a is not None else float(v.shape[0]))
    return out


# --------------------------------------------------------------------------------------------------
# merging


def merged_state_dict(module: nn.Module, strength: float = 1.0) -> dict:
    """The state dict of the UN-wrapped network with every LoRA merged into new tensors:
    W + strength * scale * up @ down (the shared teacher tensors are not modified)."""
    layers = lora_layers(module)
    sd = {}
    for name, t in _base_named_tensors(module):
        sd[name] = t.detach()
    for name, m in layers.items():
        w = m.base.weight.detach()
        sd[name + ".weight"] = (w.float() + strength * m.delta_weight().to(w.device)).to(w.dtype)
    return sd


def merge_lora(module: nn.Module, strength: float = 1.0) -> nn.Module:
    """A plain network (no LoRALayer) with the LoRA merged: a structural copy of ``module`` in which
    each LoRALayer is replaced by its base layer carrying a NEW merged weight. The shared teacher
    tensors stay untouched."""
    merged = merged_state_dict(module, strength)
    memo: dict[int, object] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        memo[id(t)] = t
    net = copy.deepcopy(module, memo)
    for name in list(lora_layers(net)):
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        layer = getattr(parent, attr)
        base = layer.base
        base.weight = nn.Parameter(merged[name + ".weight"].clone(), requires_grad=False)
        setattr(parent, attr, base)
    return net


def trainable_state(net: nn.Module) -> dict:
    """What a checkpoint keeps of a network: a LoRA network's trainable factors only (its base is shared and
    frozen), else its full state dict."""
    if lora_layers(net):
        return {k: v.detach().clone() for k, v in net.named_parameters() if v.requires_grad}
    return net.state_dict()


def load_trainable_state(net: nn.Module, sd: dict) -> bool:
    """Loads ``trainable_state``'s dict into ``net``; False (nothing loaded) when a LoRA network's trainable
    factors are not exactly the dict's keys."""
    if not lora_layers(net):
        net.load_state_dict(sd)
        return True
    own = dict(net.named_parameters())
    if set(sd) != {k for k, v in own.items() if v.requires_grad}:
        return False
    with torch.no_grad():
        for k, v in sd.items():
            own[k].copy_(v)
    return True
