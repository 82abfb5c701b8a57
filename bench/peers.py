"""Peers measured beside AdaptiveDiffusion in the pure-PyTorch benchmark.

``EasyCacheNet`` ports the decision rule of ComfyUI's EasyCache (comfy_extras/nodes_easycache.py,
ComfyUI 0.3.64) to a plain network callable, so the unit tier can compare with it without ComfyUI:
it wraps the network at the same level as EasyCache's DIFFUSION_MODEL wrapper (scaled input in,
raw output out, one call for the batched cond and uncond halves), decides on the first cond's half,
subsampled by 8 in space, accumulates k * input_change / |output_prev| and skips while the sum stays
below reuse_threshold; a skipped call returns input + the cached (output - input) of each half.
The host tier runs ComfyUI's own EasyCache and LazyCache nodes for the record.
"""

from __future__ import annotations

import torch


class EasyCacheNet:
    def __init__(
        self,
        net,
        reuse_threshold: float,
        start_sigma: float,
        end_sigma: float,
        halves: int = 2,
        subsample_factor: int = 8,
    ):
        self.net = net
        self.threshold = reuse_threshold
        self.start_sigma, self.end_sigma = start_sigma, end_sigma
        self.halves, self.factor = halves, subsample_factor
        self.rate = None
        self.cumulative = 0.0
        self.x_prev = self.out_prev = self.out_prev_norm = None
        self.cache_diff = None
        self.calls = 0  # network evaluations made
        self.skipped = 0

    def _sub(self, t: torch.Tensor) -> torch.Tensor:
        first = t[: t.shape[0] // self.halves]
        if self.factor > 1:
            first = first[..., :: self.factor, :: self.factor]
        return first

    def __call__(self, x: torch.Tensor, sigma: float, *args, **kwargs) -> torch.Tensor:
        if not sigma > self.end_sigma:  # past the end: always run, cache untouched
            self.calls += 1
            return self.net(x, *args, **kwargs)
        input_change = None
        if sigma <= self.start_sigma and self.x_prev is not None:
            input_change = (self._sub(x) - self.x_prev).abs().mean()
            if self.out_prev_norm is not None and self.rate is not None:
                self.cumulative += float(self.rate * input_change / self.out_prev_norm)
                if self.cumulative < self.threshold:
                    self.skipped += 1
                    return x + self.cache_diff
                self.cumulative = 0.0
        out = self.net(x, *args, **kwargs)
        self.calls += 1
        if self.out_prev_norm is not None and input_change is not None:
            output_change = (self._sub(out) - self.out_prev).abs().mean()
            self.rate = output_change / input_change
        self.cache_diff = out - x
        self.x_prev = self._sub(x).clone()
        self.out_prev = self._sub(out).clone()
        self.out_prev_norm = out.abs().mean()
        return out
