"""Running ComfyUI's denoiser on part of a batch (AdaptiveDiffusion's per-sample skipping)."""

from __future__ import annotations

import torch


def _conds_batched(model_k) -> bool:
    """True when a conditioning carries a batch > 1 (running a sub-batch would mis-pair them)."""
    try:
        for conds in model_k.inner_model.conds.values():
            for c in conds:
                for v in c.get("model_conds", {}).values():
                    t = getattr(v, "cond", None)
                    if isinstance(t, torch.Tensor) and t.ndim > 0 and t.shape[0] > 1:
                        return True
    except Exception:  # an unknown guider: be safe and run the whole batch
        return True
    return False


class SubsetRunner:
    """The controller's subset_runner for one sampling run."""

    def __init__(self):
        self.fallback_reason: str | None = None

    def __call__(self, model, x, sigma, idx, extra_args):
        if extra_args.get("denoise_mask") is not None or _conds_batched(model):
            self.fallback_reason = "per-image conditioning this runner cannot slice"
            return model(x, sigma, **extra_args)
        return model(x[idx], sigma[idx], **extra_args)
