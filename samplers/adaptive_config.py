"""The settings of one AdaptiveDiffusion run (plain data, checked by ``validate``); see ``samplers.adaptive``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MODES = ("target", "threshold", "paper", "path")
EXTRAPOLATIONS = ("auto", "linear", "hold", "quadratic", "linear_x0", "log_linear")
ESTIMATOR_SPACES = ("vp", "raw")
ESTIMATORS = ("latent", "reuse_error")
PLANNERS = ("schedule", "pace")
RESPACINGS = ("auto", "off", "on")
SPLIT_PLANS = ("whole_run", "call")


class AdaptiveConfigError(ValueError):
    """A setting of the AdaptiveDiffusion controller is out of range; the message names it."""


def target_skips(steps: int, target_speedup: float) -> int:
    """Skips that reach ``target_speedup`` on ``steps`` steps: the computed steps are steps / target_speedup rounded
    down (at least one), so the speed-up is never below the target (2x on 15 steps: 7 computed, 2.14x; Python's
    round, used before, gave 8 there, 1.88x, and 7 on 13 steps: half the odd step counts fell short of 2x)."""
    return int(steps) - max(1, math.floor(steps / target_speedup + 1e-9))


@dataclass
class AdaptiveConfig:
    """Settings of one AdaptiveDiffusion run.

    mode:
        "target"    skip to meet ``target_speedup`` (the pack's default), where ``planner`` says:
                    "schedule" plans the skip path from the run's sigmas (``samplers.skip_plan``;
                    the default), "pace" paces skips at a rate ramped by ``tilt`` (the earlier
                    default, kept for comparison);
        "threshold" the paper's third-order rule with the pack's improvements;
        "paper"     the official rule exactly (see the module docstring); other options ignored;
        "path"      follow ``path`` (a bool tensor [N] or [B, N], True = run the network): for the
                    greedy search and fixed baselines.
    threshold: the paper's delta (>= 0); 0 disables skipping (bit-identical to the base sampler).
    max_skip: most consecutive skipped steps (>= 1), the paper's C.
    respace: mode target with planner schedule, and "on" in mode path. "off": skip the planned steps (reuse a
        direction); "on": run the sampler on the planned (path's) steps' sigmas alone (the schedule re-spaced,
        nothing reused; in mode path one path for the whole batch); "auto" (default): re-space where
        ``samplers.respace`` says skipping loses to it, else skip (mode path: skip).
    split_plan: mode target with planner schedule, a run split over two or more sampler calls
        (``samplers.split_run``): "whole_run" (default) plans the whole run and runs this call's slice of it; "call"
        plans this call's own sigmas at the target (what every call did before).
    """

    mode: str = "target"
    planner: str = "schedule"
    threshold: float = 0.01
    max_skip: int = 4
    target_speedup: float = 2.0
    extrapolation: str = "auto"
    force_last: int = 0
    start_percent: float = 0.0
    estimator_space: str = "vp"
    per_sample: bool = True
    warmup: int = 4
    placement: float = 0.0
    estimator: str = "latent"
    tilt: float = 0.25
    path: torch.Tensor | None = None
    respace: str = "auto"
    split_plan: str = "whole_run"

    @classmethod
    def paper(cls, threshold: float = 0.01, max_skip: int = 4) -> "AdaptiveConfig":
        return cls(
            mode="paper",
            threshold=threshold,
            max_skip=max_skip,
            extrapolation="hold",
            force_last=0,
            start_percent=0.0,
            estimator_space="raw",
            per_sample=False,
        )

    def validate(self) -> "AdaptiveConfig":
        if self.mode not in MODES:
            raise AdaptiveConfigError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)) or self.threshold < 0:
            raise AdaptiveConfigError(f"threshold: expected a number >= 0, got {self.threshold!r}")
        if int(self.max_skip) != self.max_skip or self.max_skip < 1:
            raise AdaptiveConfigError(f"max_skip: expected an integer >= 1, got {self.max_skip!r}")
        if not (self.target_speedup >= 1.0 and math.isfinite(self.target_speedup)):
            raise AdaptiveConfigError(f"target_speedup: expected a number >= 1.0, got {self.target_speedup!r}")
        if self.extrapolation not in EXTRAPOLATIONS:
            raise AdaptiveConfigError(f"extrapolation: expected one of {EXTRAPOLATIONS}, got {self.extrapolation!r}")
        if self.estimator_space not in ESTIMATOR_SPACES:
            raise AdaptiveConfigError(
                f"estimator_space: expected one of {ESTIMATOR_SPACES}, got {self.estimator_space!r}"
            )
        if self.planner not in PLANNERS:
            raise AdaptiveConfigError(f"planner: expected one of {PLANNERS}, got {self.planner!r}")
        if self.estimator not in ESTIMATORS:
            raise AdaptiveConfigError(f"estimator: expected one of {ESTIMATORS}, got {self.estimator!r}")
        if not (0.0 <= self.placement <= 4.0):
            raise AdaptiveConfigError(f"placement: expected 0..4, got {self.placement!r}")
        if not (0.0 <= self.tilt <= 1.0):
            raise AdaptiveConfigError(f"tilt: expected 0..1, got {self.tilt!r}")
        if int(self.force_last) != self.force_last or self.force_last < 0:
            raise AdaptiveConfigError(f"force_last: expected an integer >= 0, got {self.force_last!r}")
        if not 0.0 <= self.start_percent <= 1.0:
            raise AdaptiveConfigError(f"start_percent: expected 0..1, got {self.start_percent!r}")
        if int(self.warmup) != self.warmup or self.warmup < 0:
            raise AdaptiveConfigError(f"warmup: expected an integer >= 0, got {self.warmup!r}")
        if self.respace not in RESPACINGS:
            raise AdaptiveConfigError(f"respace: expected one of {RESPACINGS}, got {self.respace!r}")
        if self.split_plan not in SPLIT_PLANS:
            raise AdaptiveConfigError(f"split_plan: expected one of {SPLIT_PLANS}, got {self.split_plan!r}")
        if self.mode == "path" and self.path is None:
            raise AdaptiveConfigError("path: mode 'path' needs a bool tensor [steps] or [batch, steps]")
        return self

    @property
    def enabled(self) -> bool:
        if self.mode == "path":
            return True
        if self.mode == "target":
            return self.target_speedup > 1.0
        return self.threshold > 0
