"""Running ComfyUI's denoiser on part of a batch, for AdaptiveDiffusion's per-sample skipping.

The controller (``samplers.adaptive``) asks for x0 of the images ``idx`` only. ComfyUI keeps what is per image
outside that call: the guider's conditionings (``guider.conds``: lists of cond dicts whose ``model_conds`` hold
the tensors, CONDRegular / CONDCrossAttn / CONDNoiseShape / CONDList), the inpainting mask, latent and noise
(``KSamplerX0Inpaint``), a ControlNet's hint. At sampling time ComfyUI fits each conditioning tensor of batch T
to the latent batch with ``repeat_to_batch_size`` (image i gets row i % T), so a sub-batch of n images called
with the whole conditionings would get rows 0..n-1: the wrong images. ``plan_subset`` slices every such tensor
to the rows of the images in ``idx`` (batch 1 broadcasts and stays as it is); ``SubsetRunner`` swaps the sliced
conditionings into the guider for the one call and puts the guider's own back afterwards, even on an error.

Whatever this module cannot slice (a guider other than ComfyUI's CFG / Basic / DualCFG / PerpNeg guiders, a
conditioning class it does not know holding a batch, a ControlNet hint with more than one image, several
latents packed in one, a mask whose batch ComfyUI itself could not fit) makes the call run on the whole batch,
and the runner keeps the reason in ``fallback_reason`` for the controller's report.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import comfy.conds
import torch

# guiders whose predict_noise reads its conditionings from self.conds and nothing else (ComfyUI's own)
_KNOWN_PREDICT_NOISE = {
    ("comfy.samplers", "CFGGuider.predict_noise"),
    ("comfy_extras.nodes_custom_sampler", "Guider_DualCFG.predict_noise"),
    ("comfy_extras.nodes_perpneg", "Guider_PerpNeg.predict_noise"),
}

# process_cond implementations that fit a tensor to the batch with repeat_to_batch_size (image i: row i % T)
_REPEATING = (comfy.conds.CONDRegular.process_cond, comfy.conds.CONDNoiseShape.process_cond)


class CannotSlice(Exception):
    """Something per image that this module cannot cut to a sub-batch; the message says what."""


@dataclass
class SubsetPlan:
    """What one sub-batch call needs: the guider's sliced conditionings (None: keep the guider's own),
    the sliced extra_args, and attributes of the denoiser to set for the call (inpainting latent / noise)."""

    conds: dict | None
    extra_args: dict
    model_attrs: dict = field(default_factory=dict)


def _rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The rows of a batch-T tensor that ComfyUI gives the images idx (row i % T; T = 1 is kept as it is)."""
    n = t.shape[0]
    if n == 1:
        return t
    return t[(idx % n).to(t.device)]


def _batched(t) -> bool:
    return isinstance(t, torch.Tensor) and t.ndim > 0 and t.shape[0] > 1


def slice_model_cond(name: str, c, idx: torch.Tensor):
    """One entry of a cond dict's ``model_conds`` for the images idx (the same object when nothing is per image)."""
    proc = getattr(type(c), "process_cond", None)
    value = getattr(c, "cond", None)
    if proc is comfy.conds.CONDConstant.process_cond:
        return c
    if proc in _REPEATING and isinstance(value, torch.Tensor):
        if not _batched(value):
            return c
        out = copy.copy(c)
        out.cond = _rows(value, idx)
        return out
    if proc is comfy.conds.CONDList.process_cond and isinstance(value, (list, tuple)):
        if not any(_batched(v) for v in value):
            return c
        out = copy.copy(c)
        out.cond = [_rows(v, idx) if isinstance(v, torch.Tensor) and v.ndim > 0 else v for v in value]
        return out
    held = value if isinstance(value, (list, tuple)) else [value]
    if any(_batched(v) for v in held):
        raise CannotSlice(f"conditioning {name!r} ({type(c).__name__}) holds a batch this runner does not know")
    return c


def _check_control(control) -> None:
    """A ControlNet / T2I adapter chain: a hint of one image serves every sub-batch; a hint per image does not
    (ComfyUI caches the hint cut to the first call's batch)."""
    seen = 0
    while control is not None and seen < 64:
        if not hasattr(control, "cond_hint_original"):
            raise CannotSlice(f"a control ({type(control).__name__}) this runner does not know")
        if _batched(control.cond_hint_original):
            raise CannotSlice("a ControlNet hint with one image per latent")
        if any(_batched(t) for t in getattr(control, "extra_concat_orig", None) or []):
            raise CannotSlice("a ControlNet input with one image per latent")
        control = getattr(control, "previous_controlnet", None)
        seen += 1


def slice_cond_dict(cond: dict, batch: int, idx: torch.Tensor) -> dict:
    """One cond dict (after ComfyUI's process_conds) for the images idx of a batch of `batch`."""
    out = cond
    model_conds = cond.get("model_conds", {})
    new_mc = {k: slice_model_cond(k, v, idx) for k, v in model_conds.items()}
    if any(new_mc[k] is not model_conds[k] for k in model_conds):
        out = dict(cond)
        out["model_conds"] = new_mc
    mask = cond.get("mask", None)
    if _batched(mask):
        m = mask.shape[0]
        if m < batch and batch % m:  # ComfyUI's own call could not fit it either
            raise CannotSlice(f"a conditioning mask of batch {m} for a latent batch of {batch}")
        out = dict(out) if out is cond else out
        out["mask"] = _rows(mask, idx)
    if cond.get("control", None) is not None:
        _check_control(cond["control"])
    return out


def slice_conds(conds: dict, batch: int, idx: torch.Tensor) -> dict | None:
    """A guider's ``conds`` ({name: [cond dict, ...]}) for the images idx; None when nothing in them is per image."""
    out, changed = {}, False
    for k, lst in conds.items():
        if lst is None:
            out[k] = lst
            continue
        new = [slice_cond_dict(c, batch, idx) for c in lst]
        changed = changed or any(a is not b for a, b in zip(new, lst))
        out[k] = new
    return out if changed else None


def _guider_known(guider) -> bool:
    fn = getattr(type(guider), "predict_noise", None)
    return fn is not None and (getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)) in (
        _KNOWN_PREDICT_NOISE
    )


def plan_subset(model, batch: int, idx: torch.Tensor, extra_args: dict) -> SubsetPlan:
    """What running ComfyUI's denoiser `model` (KSamplerX0Inpaint around a guider) on the images idx of a batch
    of `batch` needs; raises CannotSlice naming what is per image and cannot be cut."""
    guider = getattr(model, "inner_model", None)
    conds = getattr(guider, "conds", None)
    if not isinstance(conds, dict):
        raise CannotSlice(f"a denoiser this runner does not know ({type(guider).__name__})")
    if not _guider_known(guider):
        raise CannotSlice(f"a guider this runner does not know ({type(guider).__name__})")
    shapes = getattr(getattr(guider, "inner_model", None), "latent_shapes", None)
    if shapes is not None and len(shapes) > 1:
        raise CannotSlice("several latents packed in one")
    sliced = slice_conds(conds, batch, idx)
    extra = dict(extra_args)
    attrs = {}
    mask = extra_args.get("denoise_mask", None)
    if mask is not None:
        for name in ("latent_image", "noise"):
            t = getattr(model, name, None)
            if not isinstance(t, torch.Tensor) or t.shape[0] not in (1, batch):
                raise CannotSlice(f"an inpainting {name} this runner does not know")
            attrs[name] = _rows(t, idx)
        if mask.shape[0] not in (1, batch):
            raise CannotSlice(f"an inpainting mask of batch {mask.shape[0]} for a latent batch of {batch}")
        extra["denoise_mask"] = _rows(mask, idx)
    return SubsetPlan(conds=sliced, extra_args=extra, model_attrs=attrs)


class SubsetRunner:
    """The controller's subset_runner for one sampling run: x0 of the images idx, with their own conditionings;
    the whole batch (and ``fallback_reason`` set) where something per image cannot be sliced."""

    def __init__(self):
        self.fallback_reason: str | None = None
        self.sliced_calls = 0

    def __call__(self, model, x, sigma, idx, extra_args):
        try:
            plan = plan_subset(model, x.shape[0], idx, extra_args)
        except CannotSlice as e:
            self.fallback_reason = f"per-image conditioning this runner cannot slice: {e}"
            return model(x, sigma, **extra_args)
        guider = model.inner_model
        own_conds = guider.conds
        own_attrs = {k: getattr(model, k) for k in plan.model_attrs}
        try:
            if plan.conds is not None:
                guider.conds = plan.conds
            for k, v in plan.model_attrs.items():
                setattr(model, k, v)
            out = model(x[idx], sigma[idx], **plan.extra_args)
        finally:
            guider.conds = own_conds
            for k, v in own_attrs.items():
                setattr(model, k, v)
        if plan.conds is not None or plan.model_attrs:
            self.sliced_calls += 1
        return out
