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


def _steps(sigmas, k: int) -> int:
    """The schedule's step count n, checking that k steps spread over it is 1 to n."""
    n = len(sigmas) - 1
    if not 1 <= k <= n:
        raise ValueError(f"re-spacing over the schedule: expected 1 to {n} steps, got {k}")
    return n


def even_indices(sigmas, k: int) -> list[int]:
    """Indices into the schedule's sigmas nearest to ``even_sigmas``'s: the steps an even re-spacing covers, for
    the report and the progress bar (k step starts, then the schedule's end)."""
    n = _steps(sigmas, k)
    if float(sigmas[-1]) == 0:  # k points over the nonzero sigmas, the last step to sigma 0
        return [int(round(j * (n - 1) / (k - 1))) if k > 1 else 0 for j in range(k)] + [n]
    return chunk_indices(sigmas, k)  # all sigmas nonzero: k + 1 points over all of them


def chunk_indices(sigmas, k: int) -> list[int]:
    """The step starts nearest j n / k (k runs of about n / k consecutive steps), then the schedule's end."""
    n = _steps(sigmas, k)
    return [int(round(j * n / k)) for j in range(k)] + [n]


def ordered_chunk_indices(sigmas, k: int, long_first: bool) -> list[int]:
    """k runs of consecutive steps whose lengths differ by one at most, the longer ones first (long_first) or last;
    where k divides the steps, ``chunk_indices``."""
    n = _steps(sigmas, k)
    q, r = divmod(n, k)
    lengths = [q + 1] * r + [q] * (k - r) if long_first else [q] * (k - r) + [q + 1] * r
    starts = [0]
    for length in lengths[:-1]:
        starts.append(starts[-1] + length)
    return starts + [n]


def even_sigmas(sigmas, k: int) -> torch.Tensor:
    """k steps spread evenly in index over the schedule: log sigma interpolated at evenly spaced positions over its
    nonzero sigmas, first and last kept, then the final sigma (0 or, with denoise below 1, its last one). As close
    to the scheduler's own k-step schedule as the sigmas alone allow: exactly it for exponential, within
    interpolation for the others (karras, normal, simple, ...)."""
    s = torch.as_tensor(sigmas)
    _steps(s, k)
    to_zero = float(s[-1]) == 0
    body = (s[:-1] if to_zero else s).double()
    points = k if to_zero else k + 1
    pos = torch.linspace(0, len(body) - 1, points, dtype=torch.float64)
    lo = pos.floor().long().clamp(max=len(body) - 1)
    hi = (lo + 1).clamp(max=len(body) - 1)
    w = pos - lo
    logs = body.log()
    out = torch.exp(logs[lo] * (1 - w) + logs[hi] * w)
    out[0], out[-1] = body[0], body[-1]
    if to_zero:
        out = torch.cat([out, out.new_zeros(1)])
    return out.to(s.dtype)


#: the re-spacing rules that spread the planned number of steps over the schedule, and how
SPREADS = {
    "even": "even",
    "chunks": "chunks",
    "chunks_whole": "chunks",
    "chunks_long_first": "long_first",
    "chunks_long_last": "long_last",
}


def default_path_as_run(rule: str, sigmas, planned) -> torch.Tensor:
    """The path the default runs re-spaced under ``rule``: its planned path, or for a rule of ``SPREADS`` the steps
    it spreads its planned count over (``_spread_indices``; "even": the steps nearest its interpolated sigmas). For
    the calibration's ``RESPACED_DEFAULT`` candidate and its fallback, so that they are the default as it runs."""
    planned = torch.as_tensor(planned, dtype=torch.bool).flatten()
    spread = SPREADS.get(rule, "")
    if not spread:
        return planned
    n, k = len(sigmas) - 1, int(planned.sum())
    keep = _spread_indices(spread, sigmas, k)
    path = torch.zeros(n, dtype=torch.bool)
    path[keep[:-1]] = True
    return path


def _spread_indices(spread: str, sigmas, k: int) -> list[int]:
    if spread == "even":
        return even_indices(sigmas, k)
    if spread == "chunks":
        return chunk_indices(sigmas, k)
    if spread in ("long_first", "long_last"):
        return ordered_chunk_indices(sigmas, k, spread == "long_first")
    raise ValueError(f"spread: expected '', 'even', 'chunks', 'long_first' or 'long_last', got {spread!r}")


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
    """Whether mode target re-spaces by default, and why (the report's note; a reason with False, where a rule
    does not apply, goes into the report too).

    ``rule`` is the sampler's ``SamplerSupport.respace``. The rules, chosen on the design models (testbed,
    testbed_hr, flow; `comfyui-tempo bench adaptive --grid --grid-respace` at 20, 30, 40 and 50 steps), apply to
    eps / v models only (on the flow model skipping won nearly everywhere):

    * ``"final_jump"`` (LMS, whose order-4 coefficients come from the history's sigmas, so that a reused
      prediction bends its polynomial): the schedule ends with a jump, its last step at least ``FINAL_JUMP`` times
      the one before it in log sigma (ComfyUI's ``normal``).
    * ``"min_steps"`` (UniPC, third order, whose corrector would also take the reused prediction as an
      evaluation): the re-spaced run keeps at least ``MIN_RESPACED_STEPS`` steps (2x from 40 steps), where its
      error has fallen below the reuse error of skipping.
    * ``"chunks_long_last"`` (dpmpp_3m_sde, third order and stochastic, whose two-deep history takes a reused
      prediction badly): always, the plan's number of computed steps as runs of consecutive steps merged, not the
      planned steps; equal runs where they divide the schedule (every other sigma at 2x and an even step count), else
      runs one step longer at the end (``ordered_chunk_indices``). Chosen and tested inside ComfyUI (docs/adaptive.md,
      "ComfyUI's other samplers"). ``"chunks_long_first"`` puts the longer runs first (measured, given to no
      sampler).
    * ``"chunks_whole"``: where the computed steps divide the schedule, equal runs; else skip (dpmpp_3m_sde's rule
      before the odd step counts were measured).
    * ``"even"`` / ``"chunks"``: always, the planned count spread over the schedule (``even_sigmas`` /
      ``chunk_indices``). Measured for dpmpp_3m_sde (``--comfyui-grid --comfyui-respace-sweep even,chunks``) and
      given to no sampler: chunks won on the design models at 20 / 30 steps and lost cells at 15 / 25, where one
      run is longer than the others.
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
    elif rule == "chunks_whole":
        n = len(sigmas) - 1
        if computed and n % computed == 0:
            return True, (
                f"respace auto: this sampler on {computed} runs of {n // computed} consecutive steps "
                "(skipping measured below it there)"
            )
        return False, (
            f"respace auto: this sampler re-spaces where its computed steps divide the schedule's (2x at an even step "
            f"count, measured better than skipping); {computed} of {n} do not, so it skips"
        )
    elif rule in ("chunks_long_first", "chunks_long_last"):
        if computed:
            q, r = divmod(len(sigmas) - 1, computed)
            runs = f"{computed} runs of {q}" + (f" or {q + 1}" if r else "") + " consecutive steps"
            where = ", the longer " + rule.rsplit("_", 1)[1] if r else ""
            return True, f"respace auto: this sampler on {runs}{where} (skipping measured below it there)"
    elif rule in ("even", "chunks"):
        return True, (
            f"respace auto: this sampler on its planned number of steps spread over the schedule ({rule}; skipping "
            "measured below it there)"
        )
    elif rule == "min_steps":
        if computed is not None and computed >= MIN_RESPACED_STEPS:
            return True, (
                f"respace auto: this sampler with {computed} steps computed (from {MIN_RESPACED_STEPS} on, "
                "re-spacing measured above skipping)"
            )
    else:
        raise ValueError(
            f"respace rule: expected '', 'final_jump', 'min_steps' or one of {', '.join(SPREADS)}, got {rule!r}"
        )
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
    spread: str = "",
    extra_args: dict | None = None,
    callback: Callable | None = None,
    disable=None,
    **sampler_options,
):
    """Run ``sampler_fn`` on the sigmas of ``path``'s computed steps; returns (x, SkipReport). spread "even" or
    "chunks": on as many steps as ``path`` computes, spread over the schedule instead (``even_sigmas``,
    ``chunk_indices``). The report's path is ``path`` (spread: the steps run or nearest the ones run; a dropped step
    shows as skipped), its NFE what the network ran, and a note says it re-spaced."""
    t0 = time.perf_counter()
    n = len(sigmas) - 1
    k = int(torch.as_tensor(path).sum())
    if spread == "even":
        keep, sub = even_indices(sigmas, k), even_sigmas(sigmas, k).to(sigmas)
    else:
        keep = _spread_indices(spread, sigmas, k) if spread else respaced_indices(path)
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
        f"re-spaced: the sampler ran on {steps_run} of the schedule's {n} steps "
        + {"": "(the planned ones)", "even": "(spread evenly over it)"}.get(
            spread, "(runs of consecutive steps merged)"
        )
        + ", nothing reused"
        + (f"; {reason}" if reason else "")
        + " (respace = off skips instead)"
    )
    return out, rep
