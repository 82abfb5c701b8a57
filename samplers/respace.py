"""Re-spacing the schedule instead of skipping (plain PyTorch): the issue's fallback for target-speed-up mode.

A skip path keeps every sigma of the schedule and, at a skipped step, reuses a direction extrapolated from the
last computed ones. Re-spacing runs the base sampler on the sigmas of the planned (computed) steps alone: a
skipped step merges into the computed step before it, nothing is reused, and the sampler keeps its own order
and corrector on a coarser schedule. It costs the same network evaluations as the skip path it comes from.

``respaced_sample`` is the one implementation: ``samplers.adaptive.adaptive_sample`` calls it (the nodes, the
benchmark and the tests all go through that) when ``AdaptiveConfig.respace`` is "on", or "auto" and
``auto_respace`` says skipping loses to re-spacing for the sampler.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from .kdiff import CountingDenoiser
from .skip_report import SkipReport, StepRecord


def respaced_indices(path) -> list[int]:
    """Indices into the schedule's sigmas that a re-spaced run keeps: the start of every computed step, then the
    last sigma. path: bool [N], True = the step runs."""
    path = [bool(v) for v in path]
    if not path or not path[0]:
        raise ValueError("path: a re-spaced schedule needs its first step computed")
    return [i for i, run in enumerate(path) if run] + [len(path)]


FINAL_JUMP = 2.5  # auto: the schedule's last step this many times the step before it calls for re-spacing


def final_jump(sigmas) -> float:
    """The schedule's last step over the step before it, in log sigma (the step to sigma 0 aside). ComfyUI's
    ``normal`` ends with such a jump (3.2 to 4.9 at 10 to 150 steps on SD's sigmas); karras, exponential, simple,
    sgm_uniform and beta grow smoothly (1.0 to 1.9)."""
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    s = s[s > 0]
    if s.numel() < 3:
        return 1.0
    h = (s[:-1].log() - s[1:].log()).abs()
    return float(h[-1] / h[-2]) if float(h[-2]) > 0 else float("inf")


MIN_RESPACED_STEPS = 20  # auto, UniPC: re-space once the re-spaced run keeps this many steps


def auto_respace(rule: str, flow: bool, sigmas=None, computed: int | None = None) -> tuple[bool, str]:
    """Whether mode target re-spaces by default, and why (the report's note).

    ``rule`` is the sampler's ``SamplerSupport.respace``. The rules, chosen on the design models (testbed,
    testbed_hr, flow; `comfyui-tempo bench adaptive --grid --grid-respace` at 20, 30, 40 and 50 steps), apply to
    eps / v models only (on the flow model skipping won nearly everywhere):

    * ``"final_jump"`` (LMS, whose order-4 coefficients come from the history's sigmas, so that a reused
      prediction bends its polynomial): the schedule ends with a jump, its last step at least ``FINAL_JUMP`` times
      the one before it in log sigma (ComfyUI's ``normal``).
    * ``"min_steps"`` (UniPC, third order, whose corrector would also take the reused prediction as an
      evaluation): the re-spaced run keeps at least ``MIN_RESPACED_STEPS`` steps (2x from 40 steps), where its
      error has fallen below the reuse error of skipping.
    """
    if not rule or flow or sigmas is None:
        return False, ""
    if rule == "final_jump":
        jump = final_jump(sigmas)
        if jump >= FINAL_JUMP:
            return True, (
                f"respace auto: this sampler on a schedule whose last step is {jump:.1f}x the one before it "
                "(skipping measured below re-spacing there)"
            )
    elif rule == "min_steps":
        if computed is not None and computed >= MIN_RESPACED_STEPS:
            return True, (
                f"respace auto: this sampler with {computed} steps computed (from {MIN_RESPACED_STEPS} on, "
                "re-spacing measured above skipping)"
            )
    else:
        raise ValueError(f"respace rule: expected '', 'final_jump' or 'min_steps', got {rule!r}")
    return False, ""


def _remapped_callback(callback: Callable | None, keep: list[int], on_step: Callable | None = None) -> Callable | None:
    """The base sampler's callback with step i of the re-spaced schedule reported as the last step of the full
    schedule it covers, so that a progress bar over the full step count ends full. on_step(): called first at
    every step (the evaluation count per step)."""
    if callback is None and on_step is None:
        return None

    def cb(d):
        if on_step is not None:
            on_step()
        if callback is None:
            return None
        d = dict(d)
        i = int(d.get("i", 0))
        d["i"] = keep[min(i + 1, len(keep) - 1)] - 1
        return callback(d)

    return cb


def _requested(nfe: int, marks: list[int], steps_run: int, n: int) -> int:
    """The evaluations the base sampler asks for on the full schedule of n steps, from its re-spaced run of
    steps_run steps that took nfe: every step but the last at the evaluations per step it took mid-run, the last
    step (to the same final sigma) at what it took (Heun's last step, to sigma 0, is one Euler evaluation). marks:
    the evaluation count at each step's callback (wherever in the step a sampler calls it, two calls mid-run are
    one step apart); without one per step, the run's mean evaluations per step scaled to n."""
    if not steps_run:
        return 0
    if len(marks) != steps_run or steps_run < 3:
        return int(round(nfe * n / steps_run))
    k = steps_run // 2
    per_step = marks[k] - marks[k - 1]
    return per_step * (n - 1) + (nfe - per_step * (steps_run - 1))


def respaced_sample(
    sampler_fn: Callable,
    model: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    path,
    *,
    mode: str = "target",
    reason: str = "",
    extra_args: dict | None = None,
    callback: Callable | None = None,
    disable=None,
    **sampler_options,
):
    """Run ``sampler_fn`` on the sigmas of ``path``'s computed steps; returns (x, SkipReport). The report's path
    is ``path`` (a dropped step shows as skipped), its NFE what the network ran, and a note says it re-spaced."""
    t0 = time.perf_counter()
    keep = respaced_indices(path)
    n = len(sigmas) - 1
    sub = sigmas[keep]
    counting = CountingDenoiser(model)
    marks: list[int] = []
    plan_s = time.perf_counter() - t0
    out = sampler_fn(
        counting,
        x,
        sub,
        extra_args=extra_args,
        callback=_remapped_callback(callback, keep, lambda: marks.append(counting.nfe)),
        disable=disable,
        **sampler_options,
    )
    b = x.shape[0]
    kept = set(keep[:-1])
    rep = SkipReport(steps=n, batch=b, mode=mode, planner="schedule", extrapolation="none (re-spaced)")
    rep.records = [
        StepRecord(
            index=i, sigma=float(sigmas[i]), score=None, computed=1.0 if i in kept else 0.0, mask=[i in kept] * b
        )
        for i in range(n)
    ]
    rep.nfe_per_sample = [counting.nfe] * b
    rep.model_calls = counting.nfe
    steps_run = len(keep) - 1
    rep.evals_requested = _requested(counting.nfe, marks, steps_run, n)
    rep.controller_seconds = plan_s
    rep.respaced = True
    rep.notes.append(
        f"re-spaced: the sampler ran on {steps_run} of the schedule's {n} steps (the planned ones), nothing reused"
        + (f"; {reason}" if reason else "")
        + " (respace = off skips instead)"
    )
    return out, rep
