"""A ComfyUI MODEL for the plain-PyTorch cores: its prediction kind and sigma table, the model as a k-diffusion
denoiser ``D(x, sigma, cond) -> x0`` whose network can be swapped (``ComfyDenoiser``: ComfyUI's own
``BaseModel._apply_model`` steps, with the generator's or the fake score's copy of ``diffusion_model``), its
conditioning through ComfyUI's ``extra_conds`` / ``cond_cat``, trainable copies of its network, and latents
as a picture.
"""

from __future__ import annotations

import copy

import comfy.model_management as mm
import comfy.model_sampling
import comfy.sampler_helpers
import comfy.samplers
import torch
from torch import nn

from ..training import lora
from . import compat
from .dmd_files import DMDNodeError

KINDS = ("eps", "v", "flow", "edm", "x0")


# ----------------------------------------------------------------------------- prediction kind
def sampling_kind(ms) -> str | None:
    """The prediction of a ComfyUI ``model_sampling`` object: "eps", "v", "flow" (CONST), "edm" (EDM, the
    v-prediction of Karras et al.'s preconditioning) or "x0"; None for any other (COSMOS_RFLOW, 0.33's
    V_PREDICTION_DDPM). Each caller decides what it refuses."""
    cms = comfy.model_sampling
    if isinstance(ms, cms.CONST):
        return "flow"
    if isinstance(ms, cms.EDM):  # before V_PREDICTION: EDM subclasses it
        return "edm"
    if isinstance(ms, cms.V_PREDICTION):
        return "v"
    if isinstance(ms, cms.X0):
        return "x0"
    if isinstance(ms, cms.EPS):
        return "eps"
    return None


def model_kind(model) -> str | None:
    """``sampling_kind`` of a ComfyUI MODEL's model_sampling (one of ``KINDS``, or None)."""
    return sampling_kind(model.get_model_object("model_sampling"))


def dmd_schedule(model, what: str = "model", *, sampling=None) -> tuple[str, torch.Tensor]:
    """("eps" | "v" | "flow", ascending sigma table) of a ComfyUI MODEL (or of its ``sampling`` object), or
    an error naming ``what``: the DMD nodes serve eps, v-prediction and flow models with a sigma table."""
    ms = sampling
    if ms is None:
        try:
            ms = model.get_model_object("model_sampling")
        except Exception:
            ms = getattr(getattr(model, "model", None), "model_sampling", None)
    if ms is None:
        raise DMDNodeError(f"{what}: expected a ComfyUI MODEL with a model_sampling, got {type(model).__name__}")
    kind = sampling_kind(ms)
    sigmas = getattr(ms, "sigmas", None)
    if kind not in ("eps", "v", "flow") or not isinstance(sigmas, torch.Tensor) or sigmas.numel() < 2:
        cms = comfy.model_sampling
        raise DMDNodeError(
            f"{what}: DMD needs an eps, v-prediction or flow (CONST) model with a sigma table; this model's "
            f"model sampling is {type(ms).__name__} ({', '.join(b.__name__ for b in type(ms).__mro__ if b.__module__ == cms.__name__)})"
        )
    return kind, sigmas.detach().float().cpu()


def latent_shape(model, width: int, height: int, what_w: str = "width", what_h: str = "height") -> tuple[int, int, int]:
    """The [C, H, W] latent of an image of ``width`` x ``height`` pixels for a MODEL of image latents."""
    for name, v in ((what_w, width), (what_h, height)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 8 or v % 8:
            raise DMDNodeError(f"{name}: expected a multiple of 8 (pixels; the latent is 1/8 of it), got {v!r}")
    lf = model.model.latent_format
    dims = int(getattr(lf, "latent_dimensions", 2))
    if dims != 2:  # a video (3) or audio (1) model: the trainer and the pairs make [B, C, H, W] latents only
        raise DMDNodeError(
            f"teacher: DMD training serves image models ([B, C, H, W] latents); this model's latent format "
            f"{type(lf).__name__} has {dims} spatial dimensions (video or audio)"
        )
    ch = int(getattr(lf, "latent_channels", 4))
    return (ch, height // 8, width // 8)


def teacher_denoiser(teacher):
    """(BaseModel, the teacher as a ComfyDenoiser, its device), the model loaded in full onto its device."""
    mm.load_models_gpu([teacher], force_full_load=True)
    base = teacher.model
    return base, ComfyDenoiser(base, base.diffusion_model), teacher.load_device


# ----------------------------------------------------------------------------- the model as a denoiser
class ComfyDenoiser(nn.Module):
    """``D(x, sigma, cond=kwargs) -> x0`` of a ComfyUI ``BaseModel`` with ``net`` in place of its
    ``diffusion_model`` (``BaseModel._apply_model``'s steps: input scaling, timestep, extra conds,
    ``calculate_denoised``). ``cond`` is a dict of model keyword arguments (``c_crossattn``, ``y``...)."""

    def __init__(self, base_model, net: nn.Module):
        super().__init__()
        self.net = net
        object.__setattr__(self, "_base", base_model)

    def forward(self, x, sigma, cond=None):
        base = self._base
        ms = base.model_sampling
        kwargs = dict(cond or {})
        c_concat = kwargs.pop("c_concat", None)
        context = kwargs.pop("c_crossattn", None)
        sigma = sigma.to(x.dtype).reshape(-1)
        if sigma.numel() == 1 and x.shape[0] > 1:
            sigma = sigma.expand(x.shape[0])
        xc = ms.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, c_concat.to(xc.device, xc.dtype)], dim=1)
        dtype = base.manual_cast_dtype or param_dtype(self.net, x.dtype)
        xc = xc.to(dtype)
        t = ms.timestep(sigma).float()
        if context is not None:
            context = context.to(xc.device, dtype)
        extra = {
            k: (v.to(xc.device, dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for k, v in kwargs.items()
        }
        t = base.process_timestep(t, x=x, **extra)
        out = self.net(xc, t, context=context, control=None, transformer_options={}, **extra).float()
        return ms.calculate_denoised(sigma, out, x)


def param_dtype(net: nn.Module, default: torch.dtype) -> torch.dtype:
    for p in net.parameters():
        if p.is_floating_point():
            return p.dtype
    return default


def encode_conditioning(
    base_model, conditioning, latent_shape, device, what: str, prompt_type: str = "positive"
) -> list[dict]:
    """Each entry of a CONDITIONING -> its processed model conds for a batch of one (``extra_conds``)."""
    if not isinstance(conditioning, list) or len(conditioning) == 0:
        raise DMDNodeError(
            f"{what}: expected a CONDITIONING with at least one entry (combine several with Conditioning (Combine))"
        )
    template = torch.zeros((1,) + tuple(latent_shape), device=device)
    items = []
    for entry in comfy.sampler_helpers.convert_cond(conditioning):
        params = entry.copy()
        params.update(
            device=device,
            noise=template,
            width=latent_shape[-1] * 8,
            height=latent_shape[-2] * 8,
            prompt_type=prompt_type,
        )
        params.pop("model_conds", None)
        try:
            conds = base_model.extra_conds(**params)
        except Exception as e:
            raise DMDNodeError(f"{what}: this conditioning does not fit the model ({type(e).__name__}: {e})") from None
        item = {}
        for k, v in conds.items():
            c = v.process_cond(batch_size=1, device=device, area=None)
            if isinstance(getattr(c, "cond", None), torch.Tensor):  # ordinary tensors (autograd may save them)
                c.cond = c.cond.detach().clone().to(device)
            item[k] = c
        items.append(item)
    return items


def collate_conds(items):
    if all(i is None for i in items):
        return None
    return comfy.samplers.cond_cat(list(items))


def to_trainable(net: nn.Module, trainable: bool = True) -> nn.Module:
    """A copy of ``net`` with ordinary (non-inference) float32 tensors, built outside inference mode.

    ``trainable``: every floating-point parameter requires grad (else none does). The flag is set here,
    never copied: ComfyUI >= 0.30 builds diffusion models with ``requires_grad_(False)``."""
    with torch.inference_mode(False):
        twin = copy.deepcopy(net)
        for mod in twin.modules():
            for key, p in list(mod._parameters.items()):
                if p is not None:
                    t = p.detach().clone()
                    mod._parameters[key] = nn.Parameter(t.float() if t.is_floating_point() else t, requires_grad=False)
            for key, b in list(mod._buffers.items()):
                if b is not None and b.is_inference():
                    mod._buffers[key] = b.clone()
    return compat.make_trainable(twin) if trainable else twin


def has_inference_tensors(net: nn.Module) -> bool:
    return any(t.is_inference() for t in list(net.parameters()) + list(net.buffers()))


def trainable_networks(base, teacher_d, lora_rank: int, seed: int = 0) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(real score, generator network, fake-score network) for a DMD run on ``base`` (a BaseModel) whose
    teacher denoiser is ``teacher_d``: the teacher's own diffusion model (frozen), and the generator and
    fake score as trainable float32 copies (``lora_rank`` 0, full weights) or as LoRA copies sharing one
    set of base weights with the teacher, whose initial factors follow ``seed`` (not the global random
    state: the node and a job of the same settings start from the same factors)."""
    src = base.diffusion_model
    if lora_rank > 0:
        shared = to_trainable(src, trainable=False) if has_inference_tensors(src) else src
        shared.requires_grad_(False)
        real = ComfyDenoiser(base, shared)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) % 2**63)
            gen_net, fake_net = lora.lora_copy(shared, int(lora_rank)), lora.lora_copy(shared, int(lora_rank))
    else:
        real, gen_net, fake_net = teacher_d, to_trainable(src), to_trainable(src)
    gen_net.train()
    fake_net.train()
    return real, gen_net, fake_net


def gan_feature_module(net: nn.Module) -> str | None:
    """The fake score's bottleneck for the GAN head: ComfyUI UNets' middle_block, the testbed's mid."""
    names = dict(net.named_modules())
    mid = names.get("middle_block")
    if isinstance(mid, nn.Sequential) and len(mid):
        # ComfyUI's UNet runs middle_block through forward_timestep_embed, which calls its layers but never
        # middle_block itself (a hook on it does not fire): tap its last layer, whose output is the same
        return f"net.middle_block.{len(mid) - 1}"
    if "net.mid" in names and isinstance(names["net.mid"], nn.ModuleList) and len(names["net.mid"]):
        return f"net.net.mid.{len(names['net.mid']) - 1}"
    return None


# ----------------------------------------------------------------------------- pictures
def latent_picture(model, latent_raw: torch.Tensor, vae=None) -> torch.Tensor:
    """IMAGE of raw latents: the VAE's decode when given, else the model's latent RGB factors (or
    the first three channels), upscaled 8x."""
    if vae is not None:
        # without autograd: the trainer runs with gradients on, and a VAE from a loader node holds inference
        # tensors, which autograd refuses to save ("Inference tensors cannot be saved for backward")
        with torch.inference_mode():
            return vae.decode(latent_raw).clone()
    lf = model.model.latent_format
    x = latent_raw.float()
    factors = getattr(lf, "latent_rgb_factors", None)
    if factors is not None and len(factors) == x.shape[1]:
        f = torch.tensor(factors, dtype=x.dtype)
        rgb = torch.einsum("bchw,cr->bhwr", lf.process_in(x), f)
        rgb = ((rgb + 1) / 2).clamp(0, 1)
    else:
        c = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
        lo = c.amin(dim=(2, 3), keepdim=True)
        hi = c.amax(dim=(2, 3), keepdim=True)
        rgb = ((c - lo) / (hi - lo).clamp_min(1e-6)).permute(0, 2, 3, 1)
    return rgb.repeat_interleave(8, 1).repeat_interleave(8, 2).contiguous()
