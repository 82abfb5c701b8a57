"""Where to skip: a skip path planned from the sampling schedule (the pack's default for a speed-up target).

A skipped step reuses a direction extrapolated linearly from the last two computed steps. Its error
in the final result is modelled, for step i with last computed steps b > a, as

    cost_i = kappa * travel_i * |(t_b - t_i) (t_a - t_i)| * (1 + h_i / median h)^STEP_WEIGHT * RUN_PENALTY^(j - 1)

in the model's own time variable t:

* eps / v models (ComfyUI's VE sigmas): t = log sigma, the time variable of DPM-Solver and of ComfyUI's multistep
  samplers, in which the direction is smooth; travel_i = |sigma_i - sigma_{i+1}| / sqrt(1 + sigma_{i+1}^2): the
  step's travel (a reused direction errs by the extrapolation error times it) times how much of an error in the
  latent at sigma_{i+1} survives to the end (a latent of unit scale: at high noise the rest of the run shrinks
  it, near the end it stays). In the middle of a run on the eps testbed the ratio of the observed single-skip
  error to this factor stays within a factor of about 2 on karras and on normal.
* flow models (x = (1 - sigma) x0 + sigma noise, ComfyUI's CONST): t = sigma, the flow time, in which the
  velocity is smooth (straight paths: constant); travel_i = |sigma_i - sigma_{i+1}| (x keeps unit scale along
  the whole path). The previous planner mapped flow sigmas to the equivalent VE sigma s / (1 - s) and planned
  in its logarithm: on the flow testbed that put skips among the first steps of karras and exponential, where
  the image forms, and lost 13 to 23 dB to pacing the skips late.
* (t_b - t_i)(t_a - t_i): the error of linear extrapolation of a function smooth in t; with one computed step,
  |t_b - t_i|.
* (1 + h_i / median h): h_i = |t_i - t_{i+1}| is the step's length in the time variable (for a VE schedule's last
  step to sigma 0, the length of the step before it), over the median step of the run. A skipped step is taken with
  a direction that is not the model's, so it loses the sampler's order on that step and the next ones that use its
  history; that error grows with the step's length, so long steps (the last steps of ``normal``, ``simple`` and
  ``sgm_uniform``, the first of ``karras`` and ``exponential`` on a flow model) cost more than travel and distance
  alone say.
* RUN_PENALTY^(j - 1) for the j-th skip in a row: a run of skips extrapolates further than the distance term
  says (isolated skips with linear extrapolation behave like a second-order multistep step, runs do not).
* kappa: one constant per run, so it drops out of the choice.

``plan_skips`` chooses the ``n_skips`` steps that minimise the summed cost, exactly, by dynamic
programming over the computed steps (state: the last two computed steps and how many skips so far),
with at most ``max_skip`` skips in a row. The controller plans with RUN_PENALTY and STEP_WEIGHT: runs of skips are
chosen where the schedule's steps differ much in cost (on the flow testbed with karras / exponential, whose last
steps are tiny in flow time, the isolated plan costs 160-200x / 2000-2800x more than the best plan with runs, by
the model: it runs the first 6 to 14 steps), or where a long last step is worth a pair of skips mid-run (eps
``normal``: the last two steps run at 30 and 50 steps), and skips stay isolated otherwise (every other step on eps
karras and beta at 20 and 30 steps). RUN_PENALTY was chosen among 1, 3, 10 and 30 and STEP_WEIGHT among 0 and 1
on the grid cells of the testbeds testbed, testbed-hr and flow (``comfyui-tempo bench adaptive --plan-search``,
which also prints these cost ratios and plans); the eps shapes testbed was held out (docs/adaptive.md).
The controller also always runs the step into the schedule's final jump (``jump_step``: ComfyUI's ``normal``,
eps / v models): the cost model alone skipped it at 20 steps (and at 15 with 8 computed, before the target
rounded down) and ran the last step (to sigma 0) instead with a pair of skips mid-run, below uniform skipping.
Chosen on testbed and testbed-hr (``comfyui-tempo bench adaptive --grid --grid-jump-off``, which runs the default
with and without it); of the six schedulers it changes the plan only on ``normal`` (none of the others has the
jump): at 18, 20 and 21 steps from 8 to 60 (at 10, 15, 25, 30 and 50 the plan runs that step already). ComfyUI's
``ddim_uniform`` ends in the same jump (3.5x to 4.2x up to 50 steps), and ``kl_optimal`` at 10 and 15 steps (2.9x,
2.6x); the rule follows the sigmas, not the scheduler's name.
Steps above SD's largest sigma are noise-dominated (``NOISE_DOMINATED_SIGMA``, eps / v models): a step whose start
sigma is above it costs (S / sigma_i)^2 times the model, and neither pays nor adds to the run penalty nor counts
toward ``max_skip``. There x0 is about the class's mean and d = (x - x0) / sigma about the noise, which changes by
O(1 / sigma) per unit of log sigma, so a reused direction's error falls as 1 / sigma beyond the data's scale; the
cost model, chosen on schedules up to sigma 14.6, has no such factor. Only zero-terminal-SNR schedules (ComfyUI's
``ModelSamplingDiscrete`` with ``zsnr``, sigma up to 4519: v-prediction ztsnr checkpoints) reach above it: there the
cost model alone planned every other step on ``karras`` (20 of its 30 steps above 14.6) where the greedy path skips
steps 1 to 14 in one run. On every schedule that stays at or below it, the plans are what they were.
The plan depends on the schedule only: the same path for every prompt of a run (prompt-specific paths:
calibrated skip profiles).
"""

from __future__ import annotations

import math

import torch

from .kdiff import ancestral_step
from .respace import FINAL_JUMP, final_jump
from .schedules import discrete_sigmas

#: each further skip in a row multiplies a skipped step's modelled cost by this (module docstring)
RUN_PENALTY = 10.0
#: the exponent of the step-length factor (1 + h_i / median h) (module docstring)
STEP_WEIGHT = 1.0
#: the largest sigma of Stable Diffusion's discrete table (``schedules.discrete_sigmas()[-1]``, 14.6146): steps that
#: start above it are noise-dominated (module docstring); only zero-terminal-SNR tables go above it
NOISE_DOMINATED_SIGMA = float(discrete_sigmas()[-1])


def step_travel(sigmas, flow: bool = False) -> list[float]:
    """travel_i of the module docstring, per step: |sigma_i - sigma_i+1| for a flow model, else that over
    sqrt(1 + sigma_i+1^2) (how much of a latent error at sigma_i+1 survives to the end)."""
    s = [float(v) for v in sigmas]
    if flow:
        return [abs(s[i] - s[i + 1]) for i in range(len(s) - 1)]
    return [abs(s[i] - s[i + 1]) / math.sqrt(1.0 + s[i + 1] ** 2) for i in range(len(s) - 1)]


def skip_costs_fn(sigmas, flow: bool = False, step_weight: float = 0.0, step_scale=None):
    """cost(i, b, a) of the module docstring without the run penalty (a may be None: one computed step only).
    flow: the sigmas are a flow model's (time variable sigma), else VE sigmas (time variable log sigma).
    step_weight: the exponent of the step-length factor (0: without it, as the first planners).
    step_scale: a factor per step [N] that multiplies its cost (a calibrated cost model: measured over
    modelled error, ``samplers.calibrate.planner_paths``); None: 1 everywhere."""
    s = [float(v) for v in sigmas]
    n = len(s) - 1
    u = s if flow else [math.log(max(v, 1e-8)) for v in s]
    travel = step_travel(s, flow)
    h = [abs(u[i] - u[i + 1]) for i in range(n)]
    if not flow and n >= 2 and s[-1] <= 0:
        h[-1] = h[-2]  # log 0: the last step to sigma 0 counts as long as the one before it
    med = sorted(h)[n // 2] if n else 0.0
    weight = [(1.0 + v / med) ** step_weight if step_weight and med > 0 else 1.0 for v in h]
    if step_scale is not None:
        scale = [float(v) for v in step_scale]
        if len(scale) != n or not all(math.isfinite(v) and v >= 0 for v in scale):
            raise ValueError(f"step_scale: expected {n} finite numbers >= 0, got {len(scale)}")
        weight = [w * v for w, v in zip(weight, scale)]

    def cost(i: int, b: int, a: int | None) -> float:
        dist = abs(u[b] - u[i]) if a is None else abs((u[b] - u[i]) * (u[a] - u[i]))
        return travel[i] * dist * weight[i]

    return cost


#: the noise forms ``noise_costs_fn`` knows, by sampler (eta 1, s_noise 1, ComfyUI's defaults)
NOISE_FORMS = {
    "euler_ancestral": "ancestral",
    "dpmpp_2m_sde": "sde",
    "dpmpp_2m_sde_gpu": "sde",
    "dpmpp_sde": "ancestral",  # each of its two stages adds noise by get_ancestral_step's sigma_up
    "dpmpp_sde_gpu": "ancestral",
}


#: the candidate's run penalty: none, since the injected noise a run of skips leaves accumulates in its cost
#: (sqrt(sum up^2) over the run) instead of through a factor; with RUN_PENALTY its plans stay every other step
NOISE_RUN_PENALTY = 1.0


def noise_terms(sigmas, form: str) -> tuple[list[float], list[float]]:
    """(up, removed) per step of a noise-injecting sampler (eps / v models, VE sigmas): up[k], the noise it adds at
    the end of step k; removed[i], the share of a perturbation of the latent at the start of step i that step i's
    own evaluation takes out (the denoiser does not follow the noise; a reused direction carries all of it).

    * ``"ancestral"`` (euler_ancestral): sigma_down and sigma_up of ``kdiff.ancestral_step`` (the sampler's own);
      removed = 1 - sigma_down / s.
    * ``"sde"`` (dpmpp_2m_sde): h = log(s / s'); up = s' sqrt(1 - e^(-2h)); removed = 1 - e^(-2h); the step to sigma 0
      takes out everything (removed 1, no noise)."""
    s = [float(v) for v in sigmas]
    up, removed = [], []
    for i in range(len(s) - 1):
        a, b = s[i], s[i + 1]
        if b <= 0 or a <= 0:
            up.append(0.0)
            removed.append(1.0)
        elif form == "ancestral":
            sigma_down, sigma_up = ancestral_step(a, b)
            up.append(sigma_up)
            removed.append(1.0 - sigma_down / a)
        elif form == "sde":
            e = math.exp(-2.0 * math.log(a / b))
            up.append(b * math.sqrt(1.0 - e))
            removed.append(1.0 - e)
        else:
            raise ValueError(f"noise form: expected one of {sorted(set(NOISE_FORMS.values()))}, got {form!r}")
    return up, removed


def noise_costs_fn(sigmas, form: str):
    """cost(i, b, a) of skipping step i after the last computed step b, for a sampler that injects noise: the noise
    added since b (the steps b .. i-1; the reused direction, taken at b, has not seen it) that step i would have
    taken out, times how much of a latent error at sigma_{i+1} survives to the end (as ``skip_costs_fn``'s travel):
    sqrt(sum up[b:i]^2) * removed[i] / sqrt(1 + sigma_{i+1}^2). It does not depend on a."""
    s = [float(v) for v in sigmas]
    up, removed = noise_terms(s, form)

    def cost(i: int, b: int, a: int | None) -> float:
        return math.sqrt(sum(v * v for v in up[b:i])) * removed[i] / math.sqrt(1.0 + s[i + 1] ** 2)

    return cost


#: the direction's linear-extrapolation error per unit of the cost model's distance, kappa, as a function of the
#: run's median step in log sigma h: KAPPA_SCALE * h ** KAPPA_POWER. Fitted on the design models' full runs
#: (testbed, testbed_hr; dpmpp_2m and euler; the six schedulers at 20, 30 and 50 steps; the median over the steps of
#: |d_i - linear extrapolation from d_i-1, d_i-2| / |(t_i-1 - t_i)(t_i-2 - t_i)|): 0.053 h^-1.36 and 0.050 h^-1.38,
#: within 10 to 13 % (rms, in log; ``comfyui-tempo bench adaptive --kappa-fit``). It grows as the steps shorten, so the
#: extrapolation error falls more slowly than the model's h^2. Only ``mixed_costs_fn`` uses it: the cost model alone
#: needs no scale.
KAPPA_SCALE = 0.05
KAPPA_POWER = -1.4


def median_log_step(sigmas) -> float:
    """The run's median step in log sigma, over its positive sigmas (nan with fewer than two)."""
    u = [math.log(float(v)) for v in sigmas if float(v) > 0]
    h = sorted(abs(u[i] - u[i + 1]) for i in range(len(u) - 1))
    return h[len(h) // 2] if h else float("nan")


def extrapolation_scale(sigmas) -> float:
    """kappa of the run (KAPPA_SCALE * median log-sigma step ** KAPPA_POWER): ``skip_costs_fn``'s cost times it is
    the latent error of a skip in the units of ``noise_costs_fn``'s (eps / v models, VE sigmas)."""
    h = median_log_step(sigmas)
    if not h > 0:
        return 1.0
    return KAPPA_SCALE * h**KAPPA_POWER


def mixed_costs_fn(sigmas, noise: str, step_weight: float = 0.0, step_scale=None):
    """A candidate cost for noise-injecting samplers (``plan_skips(noise=...)``, the benchmark's
    ``--grid-noise-plan``; not the default): both errors of a skip in the latent's units, added: ``skip_costs_fn``'s
    extrapolation cost times ``extrapolation_scale`` (the error per unit of it, fitted on the design models) and
    ``noise_costs_fn``'s injected noise. eps / v models."""
    det = skip_costs_fn(sigmas, False, step_weight, step_scale)
    nz = noise_costs_fn(sigmas, noise)
    kappa = extrapolation_scale(sigmas)

    def cost(i: int, b: int, a: int | None) -> float:
        return kappa * det(i, b, a) + nz(i, b, a)

    return cost


def holds_every_skip(sigmas, path, hold_below: float | None, hold_step: float | None) -> bool:
    """True where every skipped step of `path` (True = run) would reuse the last computed direction held, as the
    controller's reuse rule does (``AdaptiveSampling._direction``, eps / v models): its sigma is below hold_below, or
    it lies hold_step or more in log sigma past the last computed step, or fewer than two steps were computed before it
    (nothing to extrapolate from). None: that part of the rule is off. False for a path without a skip."""
    s = [float(v) for v in sigmas]
    run = [bool(v) for v in path]
    computed, skipped = 0, 0
    last = None
    for i, go in enumerate(run):
        if go:
            computed, last = computed + 1, i
            continue
        skipped += 1
        held = (
            computed < 2
            or (hold_below is not None and s[i] < hold_below)
            or (hold_step is not None and math.log(s[last]) - math.log(s[i]) >= hold_step)
        )
        if not held:
            return False
    return skipped > 0


def jump_step(sigmas, flow: bool = False) -> int | None:
    """The step into the schedule's final jump, which the controller always runs; None where there is none.

    ComfyUI's ``normal`` ends its nonzero sigmas with a step FINAL_JUMP (2.5) or more times as long in log sigma as
    the one before it (3.2 to 4.9 on SD's sigmas; karras, exponential, simple, sgm_uniform and beta: 1.0 to 1.9,
    ``samplers.respace.final_jump``). That step lies far outside the step lengths the cost model was fitted on, and
    at 20 steps the planner skipped it (running the last step, to sigma 0, instead, with a pair of skips
    mid-run) and fell below uniform skipping. Eps / v models only (a flow model's sigmas are not VE sigmas)."""
    if flow:
        return None
    positive = sum(1 for v in sigmas if float(v) > 0)
    if positive < 3 or final_jump(sigmas) < FINAL_JUMP:
        return None
    return positive - 2


def plan_skips(
    sigmas,
    n_skips: int,
    *,
    max_skip: int = 4,
    first: int = 1,
    last: int | None = None,
    flow: bool = False,
    run_penalty: float = 1.0,
    step_weight: float = 0.0,
    step_scale=None,
    protect=(),
    noise: str = "",
    fixed=(),
    free_above: float | None = None,
) -> tuple[torch.Tensor, float]:
    """(path [N] bool, True = run the network; the modelled cost) with n_skips skips at least cost.

    Steps before ``first``, from ``last`` on and in ``protect`` always run (step 0 always: nothing to reuse
    yet). If fewer skips fit (max_skip, the protected steps), it plans as many as fit. run_penalty: the j-th skip
    in a row costs run_penalty^(j - 1) times its modelled cost (1: the cost model alone; the controller
    passes RUN_PENALTY); step_weight: the step-length factor's exponent (0: none; the controller passes
    STEP_WEIGHT); step_scale: a factor per step on its cost (``skip_costs_fn``); protect: step indices that run
    (the controller passes ``jump_step``); noise: a form of ``NOISE_FORMS`` plans with ``mixed_costs_fn`` (eps / v
    models only; "": the cost model alone); fixed: the path of the first steps, already run (bools, True = ran: the
    earlier calls of a split run, ``samplers.split_run``): the plan keeps it and spends on the rest what n_skips leaves.
    free_above: a sigma (eps / v models; the controller passes NOISE_DOMINATED_SIGMA): a step whose start sigma is
    above it costs (free_above / sigma_i)^2 times the model and is left out of the run penalty and of max_skip
    (None: no such step).
    """
    n = len(sigmas) - 1
    last = n if last is None else min(n, last)
    first = max(1, first)
    if noise and flow:
        raise ValueError("noise: the injected-noise cost is for eps / v models (VE sigmas), not flow models")
    cost = (
        mixed_costs_fn(sigmas, noise, step_weight, step_scale)
        if noise
        else skip_costs_fn(sigmas, flow, step_weight, step_scale)
    )
    if free_above is not None and flow:
        raise ValueError("free_above: noise-dominated steps are for eps / v models (VE sigmas), not flow models")
    sv = [float(v) for v in sigmas]
    free = [free_above is not None and sv[i] > free_above for i in range(n)]
    factor = [(free_above / sv[i]) ** 2 if free[i] else 1.0 for i in range(n)]
    keep = {int(i) for i in protect if i is not None and first <= int(i) < last}
    fixed = [bool(v) for v in fixed]
    eligible = max(0, last - first)
    fit = eligible - eligible // (max_skip + 1) - len(keep)
    if n_skips <= 0 or eligible == 0:
        return torch.ones(n, dtype=torch.bool), 0.0
    n_skips = min(n_skips, max(fit, 0), eligible)
    inf = float("inf")
    # states_at[b] = [(a, {skips so far: (cost, computed steps)})] for partial paths whose last two computed
    # steps are b > a. Computed steps are processed in increasing order: from b the next computed step is
    # c = b + 1 + g (g skips in between, all eligible); c = n means the run ends after skipping to the end.
    states_at: dict[int, list[tuple[int | None, dict]]] = {0: [(None, {0: (0.0, (0,))})]}
    final: dict[int, tuple[float, tuple[int, ...]]] = {}
    for b in range(n):
        for a, table in states_at.get(b, []):
            counted, gap_cost = 0, 0.0  # the gap's skips that count toward max_skip / the run penalty, its cost
            for g in range(0, n - b):
                c = b + 1 + g
                if g:  # step c - 1 joins the gap
                    if free[c - 1]:
                        gap_cost += cost(c - 1, b, a) * factor[c - 1]
                    else:
                        gap_cost += cost(c - 1, b, a) * run_penalty**counted
                        counted += 1
                    if counted > max_skip:
                        break
                if g and (not (b + 1 >= first and c - 1 < last) or (c - 1) in keep):
                    break  # a skipped step outside the eligible range, or a protected one
                if g and c - 1 < len(fixed) and fixed[c - 1]:
                    break  # a step the fixed path ran cannot be skipped
                if c < len(fixed) and not fixed[c]:
                    continue  # nor one it skipped run
                for k, (cst, path) in table.items():
                    k2 = k + g
                    if k2 > n_skips:
                        continue
                    total = cst + gap_cost
                    if c == n:
                        if total < final.get(k2, (inf, ()))[0]:
                            final[k2] = (total, path)
                        continue
                    slot = _slot(states_at, c, b)
                    if total < slot.get(k2, (inf, ()))[0]:
                        slot[k2] = (total, path + (c,))
        states_at.pop(b, None)
    got = max(k for k in final) if final else 0
    k_use = n_skips if n_skips in final else got
    total, computed = final.get(k_use, (0.0, tuple(range(n))))
    path = torch.zeros(n, dtype=torch.bool)
    path[list(computed)] = True
    return path, float(total)


def default_plan(
    sigmas,
    n_skips: int,
    *,
    flow: bool = False,
    protect_final_jump: bool = True,
    noise: str = "",
    also_protect=(),
    fixed=(),
    noise_dominated: bool = True,
    **limits,
) -> torch.Tensor:
    """The controller's plan (mode target, planner schedule): ``plan_skips`` at RUN_PENALTY and STEP_WEIGHT with the
    step into the final jump run (``jump_step``; protect_final_jump False: without that rule). limits: plan_skips's
    max_skip, first and last. noise: the candidate injected-noise cost (``mixed_costs_fn``, at NOISE_RUN_PENALTY; "":
    the default). also_protect: more steps that run, and fixed: the path of the first steps, already run (a run
    split over sampler calls: the steps where later calls start, the earlier calls' path; ``samplers.split_run``).
    noise_dominated: steps above NOISE_DOMINATED_SIGMA plan as noise-dominated (eps / v models; False: without
    that rule, as before it)."""
    protect = ((jump_step(sigmas, flow),) if protect_final_jump else ()) + tuple(also_protect)
    path, _ = plan_skips(
        sigmas,
        n_skips,
        flow=flow,
        run_penalty=NOISE_RUN_PENALTY if noise else RUN_PENALTY,
        step_weight=STEP_WEIGHT,
        protect=protect,
        noise=noise,
        fixed=fixed,
        free_above=NOISE_DOMINATED_SIGMA if noise_dominated and not flow else None,
        **limits,
    )
    return path


def _slot(states_at: dict, c: int, b: int) -> dict:
    for a, table in states_at.setdefault(c, []):
        if a == b:
            return table
    table: dict = {}
    states_at[c].append((b, table))
    return table
