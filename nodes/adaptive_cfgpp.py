"""ComfyUI's CFG++ samplers under AdaptiveDiffusion: the unguided prediction of a skipped step.

A CFG++ sampler (``sample_*_cfg_pp``) adds a post-CFG hook to ``model_options`` and steps with the unguided
prediction (``uncond_denoised``) that hook captures at each model call. A skipped step calls no model, so the
bridge calls the hooks itself, with reused predictions: the guided one is the controller's output, and the unguided
and conditional ones are reused by the same rule, with the same weights, from their own history
(``AdaptiveSampling.remember_aux`` / ``reuse_aux``). Under extrapolation ``hold`` (the paper's reuse) that reuses both
noise predictions exactly. (The form "held_guidance", for the benchmark's comparison, holds the guidance direction
instead: ``support.POST_CFG_FORMS``.) What the hooks return at a skipped step is not used: the guided prediction
there is the controller's.
"""

from __future__ import annotations

import comfy.model_patcher
import torch

from ..samplers.adaptive import AdaptiveSampling
from ..samplers.support import POST_CFG_FORMS

_OTHERS = ("uncond_denoised", "cond_denoised")
NOTE = (
    "CFG++: at skipped steps the sampler's post-CFG hooks got the unguided prediction reused as the guided one is "
    "(the same rule)"
)


class PostCfgBridge:
    """The denoiser a CFG++ sampler calls: the controller (``samplers.adaptive.AdaptiveSampling``), with its
    post-CFG hooks called at the samples the controller reused; form: one of ``support.POST_CFG_FORMS``."""

    def __init__(self, controller: AdaptiveSampling, form: str = "same_rule"):
        if form not in POST_CFG_FORMS:
            raise ValueError(f"post_cfg: expected one of {', '.join(POST_CFG_FORMS)}, got {form!r}")
        self._ctl = controller
        self._hold_offset = form == "held_guidance"
        self._args: dict = {}  # the last computed call's other hook arguments (cond, cond_scale, model, ...)
        self.hook_calls = 0  # calls of the sampler's hooks at reused samples

    def __getattr__(self, name):
        # samplers look through the denoiser (model.inner_model.model_patcher, ...)
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._ctl, name)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra):
        options = extra.get("model_options", {})
        hooks = list(options.get("sampler_post_cfg_function", []))
        seen: list[dict] = []

        def capture(args):
            seen.append(args)
            return args["denoised"]

        extra["model_options"] = comfy.model_patcher.set_model_options_post_cfg_function(options, capture)
        out = self._ctl(x, sigma, **extra)
        s = float(sigma.reshape(-1)[0])
        reused = self._ctl.last_reused
        ran = torch.ones(x.shape[0], dtype=torch.bool)
        ran[reused] = False
        ran_idx = ran.nonzero().flatten()
        got = seen[-1] if seen and seen[-1]["denoised"].shape[0] == ran_idx.numel() else None
        if got is not None:
            # kept as offsets from the guided prediction on the controller's output (which an inpainting mask blends)
            for key in _OTHERS:
                value = got.get(key)
                if isinstance(value, torch.Tensor) and value.shape == got["denoised"].shape:
                    x0 = out[ran_idx] + (value - got["denoised"]).to(out.dtype)
                    self._ctl.remember_aux(key, x[ran_idx], s, x0, ran_idx)
            self._args = {k: v for k, v in got.items() if k not in _OTHERS + ("denoised", "sigma", "input")}
        if reused.numel() == 0 or not hooks:
            return out
        args = dict(self._args)
        args["denoised"] = out
        for key in _OTHERS:
            full = out.clone()
            full[reused] = self._ctl.reuse_aux(key, x[reused], s, reused, self._hold_offset).to(out.dtype)
            value = got.get(key) if got is not None else None
            if isinstance(value, torch.Tensor) and value.shape == got["denoised"].shape:
                full[ran_idx] = value.to(out.dtype)  # the samples that ran: what their hook saw
            args[key] = full
        args.update(sigma=sigma, input=x, model_options=extra["model_options"])
        for fn in hooks:
            fn(dict(args))  # the sampler's hook keeps uncond_denoised; the guided prediction stays the controller's
        if self.hook_calls == 0:
            self._ctl.report.notes.append(NOTE)
        self.hook_calls += 1
        return out


def with_post_cfg(base_fn, form: str = "same_rule"):
    """`base_fn` (a CFG++ sampler function) given the bridge around the controller it is called with; any other
    denoiser (a re-spaced run, skipping disabled) is passed through."""

    def sample(model, x, sigmas, *args, **kwargs):
        if isinstance(model, AdaptiveSampling):
            model = PostCfgBridge(model, form)
        return base_fn(model, x, sigmas, *args, **kwargs)

    sample.__name__ = getattr(base_fn, "__name__", "sample")
    return sample
