"""AdaptiveDiffusion step skipping for any k-diffusion sampler (plain PyTorch).

The official rule (Ye et al., NeurIPS 2024; UniModal4Reasoning/AdaptiveDiffusion,
``sparse_pipeline.py``), implemented exactly in mode ``"paper"``:

* L_k is the latent after sampler step k (the initial noise is never stored) and
  d_k = mean |L_k - L_{k-1}| over the whole tensor.
* Steps 0..3 always run the network (warm-up). After step i >= 3 the next step skips the network
  iff |(d_i + d_{i-2}) / 2 - d_{i-1}| <= threshold * d_{i-1}.
* At most ``max_skip`` decisions in a row may skip; the official code starts checking that cap only
  once five decisions exist, so its first run of skips can be max_skip + 1 long. ``"paper"`` keeps
  that quirk; the other modes do not.
* A skipped step still updates the latent, with the last noise prediction reused. In ComfyUI's
  k-diffusion terms that is the direction d = (x - x0) / sigma: a skipped evaluation returns
  x0 = x - sigma * d_cached (never the stale x0). For DDIM, Euler and DPM-Solver++ this is exactly
  the official eps reuse; for flow models d is the velocity.
* The last step is not protected and the decision is one per batch.

How it attaches to a sampler: ``AdaptiveSampling`` wraps the denoiser that a sampler function
calls. It maps every call onto the sigma schedule to find step boundaries (so a step that evaluates
the model several times, as Heun or DPM-2 do, is skipped or run as a whole, and cond/uncond splits
below the denoiser never matter), decides at each step's first call from the latents seen so far,
and either runs the model or returns the reused prediction. Multistep samplers (DPM++ 2M, iPNDM,
DEIS, ...) take the reused x0 into their history exactly as diffusers' schedulers take the reused
eps. For stochastic samplers, the injected noise is recorded through the sampler's own noise
sampler and regressed out of each latent increment before the estimator sees it.

Improvements over the paper, each behind an option of ``AdaptiveConfig``:
``mode="target"`` (the default): a speed-up target met on a skip path planned from the run's sigma
schedule (``planner="schedule"``, ``samplers.skip_plan``: a cost model of travel and extrapolation distance
in the model's time variable, log sigma or a flow model's sigma, with runs of skips penalised), or paced at a
rate ramped by ``tilt`` (``planner="pace"``, the earlier default); ``extrapolation`` of the reused
direction from the last computed ones (``"auto"``: linear in sigma for flow models; otherwise linear in log
sigma for deterministic one-evaluation samplers, linear in sigma for the others, and for DPM++ 2M SDE on eps / v
models the paper's hold below sigma 1 and after a long step, ``HOLD_BELOW_SIGMA`` / ``HOLD_STEP``, with the injected
noise in the plan's cost where every skip holds, ``HOLD_NOISE_FORM``, and for Euler ancestral the hold after a step of
1.5 times the run's median or more, ``HOLD_GAP``; for every sampler that injects noise, at skipped steps above
sigma 3, the last x0, ``NOISE_X0_SIGMA``; ``"hold"`` is the paper's reuse); ``force_last``,
``start_percent``, ``estimator_space="vp"`` (measure on x / sqrt(1 + sigma^2)), per-sample decisions
with the model run only on the samples that need it; ``placement`` > 0 lets an estimator move each
paced skip toward a step it rates cheaper.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from .adaptive_config import (  # noqa: F401  (re-exported: the settings live there)
    ESTIMATOR_SPACES,
    ESTIMATORS,
    EXTRAPOLATIONS,
    MODES,
    AdaptiveConfig,
    AdaptiveConfigError,
    target_skips,
)
from .kdiff import CountingDenoiser
from .respace import SPREADS, auto_respace, respaced_sample
from .skip_plan import NOISE_FORMS, default_plan, holds_every_skip
from .skip_report import SkipReport, StepRecord  # noqa: F401  (re-exported)
from .split_run import WholeRun, same_sigmas, shares

# A sampler marked reuse "hold_low_noise" in samplers.support (DPM++ 2M SDE) holds the last direction, the paper's
# reuse, at skipped steps below this sigma (the signal outweighs the noise there; the direction is mostly the noise
# the sampler injected, which a linear extrapolation amplifies), under extrapolation "auto" on eps / v models. Chosen
# among 0.3 / 1 / 3 on the design models (testbed, testbed_hr); flow models keep "linear" (they lost with it).
HOLD_BELOW_SIGMA = 1.0
# ... and, whatever the sigma, at a skipped step this far or further from the last computed step in log sigma (over
# such a gap DPM++ 2M SDE has replaced 1 - exp(-2 * 0.2) = 33 % or more of the latent's noise since the network last
# saw it). The best hold threshold in sigma falls as the steps shorten (design models, 18 images per cell: hold
# throughout best at 20 steps on karras / exponential / beta, below sigma 1 at 30, below 0.3 or linear at 50), which
# a threshold on the step length follows. Chosen among 0.1 / 0.15 / 0.2 / 0.25 / 0.3 / none on testbed and testbed_hr
# at 20, 30 and 50 steps (``bench adaptive --grid-hold-step-sweep``, docs/adaptive.md).
HOLD_STEP = 0.2
# Where every skip of the schedule planner's path would hold (the reuse rule above: at 20 steps on karras, exponential
# and beta, at 30 on exponential, at 15 or fewer on most schedulers), the cost model, which prices an extrapolated
# direction, prices nothing that is run: the controller plans again with the injected-noise cost
# (``samplers.skip_plan.mixed_costs_fn``) of this noise form, the hold_low_noise samplers' (DPM++ 2M SDE, eta 1).
# Chosen on the 20 / 30 / 50-step grids of the eps / v models (up in 19 of the 20 cells it changes there), then
# tested as stated on other step counts and schedulers (docs/adaptive.md, "... and where every skip holds").
HOLD_NOISE_FORM = "sde"
# The same for a sampler marked reuse "hold_always" (dpmpp_sde), whose every skip holds: its plan always adds the noise
# it injects, in the "ancestral" form (each of its stages adds noise by the ancestral step's sigma_up). On testbed /
# testbed_hr at 20 and 30 steps +2.73 / +1.83 dB, cells meeting the three checks 0 -> 11 / 6 -> 10 of 12; then held
# out (docs/adaptive.md, "Samplers no rule had seen").
HOLD_ALWAYS_NOISE_FORM = NOISE_FORMS["dpmpp_sde"]  # "ancestral", one source with the benchmark's candidate
# A sampler marked reuse "hold_long_gap" (euler_ancestral) holds the last direction at a skipped step whose last computed
# step is this many of the run's median steps or more away in log sigma (``_median_step``: between nonzero sigmas, the
# lower middle one; the planner's median, skip_plan.skip_costs_fn, also counts the step to 0),
# under extrapolation "auto" on eps / v models, and extrapolates linearly in sigma elsewhere. Over such a gap the
# ancestral sampler has replaced more of the latent's noise since the network last saw it than over a typical step
# (1 - exp(-2 h)), and the slope between the last two computed directions, each following its own noise draw, would be
# carried further than a typical skip carries it. On SD's sigmas, with every other step run, that is the last one to
# three skips of normal, simple, sgm_uniform and beta, where the steps lengthen toward the end, and the last one to
# three of karras at 20 to 50 steps (1.5 to 1.7 median steps), none of exponential (all steps alike); and the second
# skip of any pair. Chosen among 1.5 / 2 / 2.5 / 3 on the five eps / v testbeds at 20, 30 and 50 steps, CFG 5, the six
# schedulers, by the mean minus uniform skipping over the three step counts (``bench adaptive --grid-hold-gap-sweep``,
# docs/adaptive.md); flow models keep linear.
HOLD_GAP = 1.5

# The noisy two-stage samplers (measured on the kdiff ones, dpmpp_sde and dpm_2_ancestral, on testbed / testbed_hr at
# 20 and 30 steps, the six schedulers, 18 images a cell; held out on vpred / shapes_eps / shapes_v and at 15 / 25
# steps: docs/adaptive.md, "Samplers no rule had seen"). Under extrapolation "auto" on eps / v models: dpmpp_sde, whose
# two stages both inject Brownian noise, reuses the last direction unchanged throughout (reuse "hold_always"; linear
# was 5 to 6 dB below uniform skipping with the paper's hold on the design models); dpm_2_ancestral holds it below
# HOLD_BELOW_SIGMA and extrapolates linearly above (reuse "hold_below_sigma"). Each was the best of hold throughout,
# hold below sigma 1, dpmpp_2m_sde's hold after 0.2 in log sigma, euler_ancestral's hold after a long gap and linear
# that kept as many cells meeting the three checks as linear in both design runs. Flow models keep linear.
#
# The noisy samplers only ComfyUI has (dpmpp_3m_sde, sa_solver, sa_solver_pece, seeds_2 / 3, res_multistep_ancestral,
# exp_heun_2_x0_sde, ddpm, er_sde, dpmpp_2s_ancestral) were given one of these four rules by the same condition, measured
# inside ComfyUI (``bench adaptive --comfyui-grid --comfyui-reuse-sweep``; design testbed / testbed_hr at 20 / 30 steps,
# held out on vpred / shapes_eps / shapes_v and at 15 / 25 steps): hold throughout for dpmpp_3m_sde, sa_solver,
# seeds_2 / 3 and dpmpp_2s_ancestral (which had borrowed dpm_2_ancestral's); dpmpp_2m_sde's for res_multistep_ancestral
# and exp_heun_2_x0_sde; euler_ancestral's for ddpm and sa_solver_pece. er_sde keeps linear (its candidate lost cells in
# one held-out run). docs/adaptive.md, "ComfyUI's other samplers".


# A sampler that injects noise (recorded through record_noise) reuses the last computed x0 at a skipped step above this
# sigma, on eps / v models under extrapolation auto, instead of its direction rule (``AdaptiveSampling._x0_mask``): a
# held or extrapolated direction does not know the noise injected since it was computed (after an ancestral Euler
# step, x0 + s_up z - (s' - s_down) d; the held x0 is that direction with the noise accounted for), and up there the
# noise outweighs what x0 gains from the slope. Found on the zero-terminal-SNR models, where the steps above SD's
# largest sigma (14.6) carried the misses (euler_ancestral / dpmpp_2m_sde there: cells meeting the three checks 44 ->
# 62 of 72; held out on dpm_2_ancestral, dpmpp_sde, dpmpp_2m_sde_heun: 37 -> 55 of 72). Then swept below it: chosen
# among 0 / 1 / 3 on testbed / testbed_hr at 20, 30 and 50 steps (the four noisy kdiff samplers, six schedulers: +1.39
# -> +1.52 dB over uniform skipping, 106 -> 106 of 144 cells), held out on vpred / shapes_eps / shapes_v at 20 and 30
# (+1.66 -> +2.92 dB, 123 -> 138 of 144). It costs the latent design testbeds euler_ancestral / dpmpp_2m_sde cells at
# 30 / 50 steps, where 14.6 kept more; between the two, ComfyUI's eleven noisy samplers (held out, inside ComfyUI, the
# five SD-table eps / v models, 20 / 30 steps) decided: 383 -> 456 of 660 cells. ``bench adaptive
# --grid-noise-x0-off`` / ``--grid-noise-x0-sweep``, docs/adaptive.md ("... the noise a reused direction does not
# know"). Flow models keep their rules.
NOISE_X0_SIGMA = 3.0

# Where a noisy sampler reuses the last x0 (``AdaptiveSampling._x0_mask``): "sigma", at skipped steps above
# ``NOISE_X0_SIGMA``; "measured", per sample where the held x0 predicted the sample's last computed step better than the
# direction rule did (both reuses are worked out at every computed step that has an earlier one, against the direction
# the model gave there; no constant), above ``NOISE_X0_SIGMA`` until a first measurement. "measured" was tried and not
# adopted: on euler_ancestral / dpmpp_2m_sde on six SD-table eps / v models at 20 / 30 / 50 steps it met the three checks
# in 162 of 216 cells, against 177 for "sigma" and 198 without any x0 reuse (``bench adaptive --grid-noise-x0-rules
# measured``, docs/adaptive.md, "In real latent spaces").
NOISE_X0_RULES = ("sigma", "measured")
NOISE_X0_RULE = "sigma"

# A sampler with SamplerSupport.low_eta_base (euler_ancestral) run below this eta, which only SamplerCustom's sampler
# nodes set (ComfyUI's KSampler runs it at 1): extrapolation "auto" starts from that base (log_linear, a deterministic
# sampler's) instead of linear in sigma, its hold rule on top. As eta falls the sampler nears the deterministic one
# (at 0 it is euler), and the deterministic base won: on the five eps / v testbeds at eta 0.1 / 0.25 / 0.5 / 0.75, 20
# and 30 steps, it was above the default in every run; then held out at eta 0.35 / 0.6 (15 to 30 steps) and 0.9 (15,
# 20): +0.78 dB on average, 283 of 300 cells up, cells above uniform skipping 264 -> 267 (docs/adaptive.md). At eta 1
# it was +0.19 dB on step counts, schedulers and CFG scales held out, but cells above uniform skipping fell 200 -> 197
# (20 -> 16 at 15 steps), so eta 1 keeps linear.
LOW_ETA = 1.0

# k-diffusion's noisy samplers scale the noise they inject by these options (ComfyUI's SamplerCustom sampler nodes set
# them; its KSampler leaves the defaults, 1): either at 0 and the sampler injects none, so nothing is recorded as
# noise. At eta 0 the sampler is the deterministic one it extends (euler_ancestral at eta 0 is euler, dpmpp_2m_sde is
# DPM-Solver++(2M)): the reuse rules above, measured on the noise, give way to the deterministic samplers' reuse.
# At s_noise 0 with eta above 0 it still steps as the noisy sampler does (euler_ancestral down to sigma_down), and the
# rules stay, on the deterministic samplers' base (log_linear, as nothing is recorded): on the five eps / v testbeds,
# held out from the choice (step counts, CFG, schedulers), keeping them was +7.1 dB on dpmpp_2m_sde and +1.1 dB on
# euler_ancestral against dropping them (docs/adaptive.md, "Where the sampler injects no noise"). s_noise between 0
# and 1 keeps eta 1's rules (the log_linear base lost at 20 steps there).
NOISE_SCALES = ("eta", "s_noise")


def injects_no_noise(sampler_options: dict) -> list[str]:
    """The options that turn the sampler's noise off (eta or s_noise given as 0), as "name value"; empty: none. Only
    eta 0 makes the sampler the deterministic one (``drops_noise_rules``)."""
    off = []
    for key in NOISE_SCALES:
        v = sampler_options.get(key, None)
        try:
            if v is not None and float(v) == 0.0:
                off.append(f"{key} {v}")
        except (TypeError, ValueError):
            continue
    return off


def drops_noise_rules(off: list[str]) -> list[str]:
    """Of ``injects_no_noise``'s list, the options that make the sampler its deterministic one (eta 0), where its
    reuse rule gives way to a deterministic sampler's; s_noise 0 alone keeps it."""
    return [o for o in off if o.startswith("eta ")]


def _bshape(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape(v.shape[:1] + (1,) * (ndim - 1))


def default_subset_runner(model, x, sigma, idx, extra_args):
    """Run `model` on the samples `idx` only, slicing every per-sample tensor in extra_args."""
    b = x.shape[0]
    sub = {}
    for k, v in extra_args.items():
        if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == b:
            sub[k] = v[idx]
        else:
            sub[k] = v
    return model(x[idx], sigma[idx], **sub)


#: how far (in log sigma) an endpoint corrector's evaluation may sit from sigma_{i+1} and still be taken for it
#: (``AdaptiveSampling._near_end``): float32 rounding of the sampler's own sigma arithmetic, not another step
ENDPOINT_TOL = 1e-2


class AdaptiveSampling:
    """The controller of one sampling run; call it as the denoiser of a k-diffusion sampler.

    model(x, sigma, **extra) -> x0 is the real denoiser (CFG already applied). sigmas is the run's
    schedule. endpoint_corrector is True for samplers whose second evaluation of step i is, or can be,
    at sigma_{i+1} (Heun; dpm_2_ancestral and dpmpp_2s_ancestral at eta 1, whose midpoint between sigma_i
    and sigma_down is sigma_{i+1} exactly), so that it is not mistaken for the start of step i+1; a
    step whose second evaluation fell inside it has had its corrector. subset_runner runs the
    model on part of the batch (per-sample decisions); it must return x0 for those samples only.
    """

    def __init__(
        self,
        model: Callable,
        sigmas: torch.Tensor,
        config: AdaptiveConfig,
        *,
        endpoint_corrector: bool = False,
        vp_estimator_ok: bool = True,
        subset_runner: Callable | None = None,
        sampler_reuse: str = "",
        hold_below_sigma: float | None = None,
        hold_step: float | None = None,
        protect_final_jump: bool = True,
        noise_plan: str = "",
        hold_noise_plan: bool = True,
        hold_gap: float | None = None,
        auto_base: str = "",
        whole_run: WholeRun | None = None,
        noise_dominated: bool = True,
        noise_x0: bool = True,
        noise_x0_above: float | None = None,
        noise_x0_rule: str | None = None,
    ):
        self.model = model
        if auto_base not in ("", "log_linear", "linear"):
            raise AdaptiveConfigError(f"auto_base: expected '', 'log_linear' or 'linear', got {auto_base!r}")
        self.auto_base = auto_base
        self.protect_final_jump = protect_final_jump
        self.noise_dominated = noise_dominated
        self.noise_plan = noise_plan
        # a noisy sampler's skipped step above NOISE_X0_SIGMA reuses the last x0 (``_x0_mask``)
        self.noise_x0 = noise_x0 and config.extrapolation == "auto" and vp_estimator_ok
        self.noise_x0_above = NOISE_X0_SIGMA if noise_x0_above is None else float(noise_x0_above)
        self.noise_x0_rule = NOISE_X0_RULE if noise_x0_rule is None else noise_x0_rule
        if self.noise_x0_rule not in NOISE_X0_RULES:
            raise AdaptiveConfigError(f"noise_x0_rule: expected one of {NOISE_X0_RULES}, got {noise_x0_rule!r}")
        self.config = config.validate()
        self.sig = [float(s) for s in sigmas]
        self.n_steps = len(self.sig) - 1
        if self.n_steps < 1:
            raise AdaptiveConfigError("sigmas: expected at least two sigmas (one step)")
        if any(b > a for a, b in zip(self.sig, self.sig[1:])):
            raise AdaptiveConfigError("sigmas: expected a non-increasing schedule")
        # a run split over sampler calls, planned as one (samplers.split_run): mode target, planner schedule
        self.whole = None
        if whole_run is not None and shares(config):
            if not same_sigmas(whole_run.sigmas[whole_run.start : whole_run.end + 1], self.sig):
                raise AdaptiveConfigError("whole_run: this call's sigmas are not its slice of the whole run")
            self.whole = whole_run
        self.endpoint_corrector = endpoint_corrector
        self.use_vp = config.estimator_space == "vp" and vp_estimator_ok
        self.flow = not vp_estimator_ok  # a flow model (ComfyUI's CONST): sigma in (0, 1]
        # the sampler's reuse rule (extrapolation auto, eps / v models): hold the last direction below HOLD_BELOW_SIGMA
        # and at a skipped step HOLD_STEP or further from the last computed step in log sigma. hold_below_sigma /
        # hold_step where given replace it (any sampler and model: the benchmark's sweeps; hold_step inf: never)
        auto = config.extrapolation == "auto"
        rule = auto and sampler_reuse == "hold_low_noise" and not self.flow and hold_below_sigma is None
        below = auto and sampler_reuse == "hold_below_sigma" and not self.flow and hold_below_sigma is None
        # "hold_always" (dpmpp_sde): auto resolves to the paper's hold on eps / v models (_extrapolation)
        self._hold_always = auto and sampler_reuse == "hold_always" and not self.flow
        self.hold_below, self._hold_why = None, ""
        if auto and hold_below_sigma is not None:
            self.hold_below, self._hold_why = float(hold_below_sigma), "set"
        elif rule or below:
            self.hold_below, self._hold_why = HOLD_BELOW_SIGMA, "the sampler's rule"
        self.hold_step = float(hold_step) if auto and hold_step is not None else (HOLD_STEP if rule else None)
        if self.hold_step is not None and math.isinf(self.hold_step):
            self.hold_step = None
        self._hold_noise_plan = rule and hold_noise_plan  # the sampler's rule: plan with the noise cost where all hold
        self._always_noise_plan = self._hold_always and hold_noise_plan  # "hold_always": every skip holds
        # the "hold_long_gap" rule (HOLD_GAP): a hold_step of that many of the run's median steps; hold_gap where given
        # replaces it (any sampler and model: the benchmark's sweep; inf: never)
        if hold_gap is not None and hold_step is not None:
            raise AdaptiveConfigError("hold_gap / hold_step: give one of them, not both")
        self.hold_gap = None
        if auto and hold_gap is not None:
            self.hold_gap = float(hold_gap) if math.isfinite(float(hold_gap)) and float(hold_gap) > 0 else None
            self._hold_why = self._hold_why or "set"
        elif auto and sampler_reuse == "hold_long_gap" and not self.flow and hold_step is None:
            self.hold_gap, self._hold_why = HOLD_GAP, "the sampler's rule"
        if self.hold_gap is not None:
            med = self._median_step()
            self.hold_step = self.hold_gap * med if med > 0 else None
        self.planned = None  # bool [N], True = run (mode target, planner schedule)
        self.subset_runner = subset_runner or default_subset_runner
        self.report = SkipReport(steps=self.n_steps, batch=0, mode=config.mode)
        self.step = -1
        self.corrector_done = False
        self.compute_mask: torch.Tensor | None = None
        self.shape = None
        self.disabled = not config.enabled
        self.pending_noise: list[torch.Tensor] = []
        self._noise_seen = False  # the sampler injected noise (recorded through record_noise)
        self._auto = None  # what extrapolation "auto" resolved to
        self._prev_e = None  # estimator-space latent L_{k-2} (for d_{k-1})
        self._d_hist: list[torch.Tensor] = []  # d_1, d_2, ... (each [B] or [1])
        self._paper_mask: list[bool] = []
        self._skip_run = None  # consecutive skipped steps per sample
        self._credit = None
        self._hd = None  # [H, B, ...] the last computed directions, newest first
        self._hs = None  # [H, B] their sigmas (nan: none yet)
        self._hD = None  # [H, B, ...] their x0 (extrapolation linear_x0)
        self._hx = None  # [B, ...] the latent of each sample's newest computed direction (its x0: _hx - sigma * d)
        self._x0_held = 0  # 1 once a skipped call reused x0 (``_x0_mask``) and the report says so
        # [B] int8, noise_x0_rule "measured": 1 where the held x0 predicted the sample's last measured computed step
        # better than the direction rule, 0 where not, -1 before a first measurement
        self._x0_pref = None
        self._aux: dict[str, list[torch.Tensor]] = {}  # name -> [directions, x0] beside _hd / _hD (remember_aux)
        self._reuse_err = None  # per sample: |d - extrapolated d| at the last computed step start
        self._log_cost_sum = None
        self._cost_count = 0
        self._is_start = False
        self._whole_batch_steps = 0  # steps where the subset runner had to run the whole batch
        self._whole_batch_note = None
        # the samples whose output the last call reused (empty where the model ran for all): a sampler reading more
        # than x0 at a call (CFG++'s unguided prediction, nodes/adaptive_cfgpp.py) supplies its reused part from it
        self.last_reused = torch.zeros(0, dtype=torch.long)
        t0 = time.perf_counter()
        self._eligible_from, self._eligible_to, self._rate = self._plan()
        # the paper's latent estimator decides in modes paper and threshold and places skips in mode target
        # with planner pace; a planned or given path needs none of it
        self._needs_estimator = self.planned is None and config.mode != "path"
        self.report.controller_seconds += time.perf_counter() - t0  # planning counts as the controller's

    # ----------------------------------------------------------------- planning
    def _plan(self):
        cfg, n = self.config, self.n_steps
        if cfg.mode == "paper":
            return cfg.warmup, n, 0.0
        first = max(cfg.warmup, int(math.ceil(cfg.start_percent * n)))
        last = n - cfg.force_last  # eligible steps are first .. last-1
        eligible = max(0, last - first)
        rate = [0.0] * eligible
        if cfg.mode == "target" and cfg.planner == "schedule":
            own = (max(1, int(math.ceil(cfg.start_percent * n))), last, rate)
            sig, also = self.sig, ()
            if self.whole is not None:  # the whole run's plan (the split step run), this call's slice of it below
                sig, n, also = list(self.whole.sigmas), self.whole.steps, tuple(self.whole.protect)
                last = n - cfg.force_last
            first = max(1, int(math.ceil(cfg.start_percent * n)))
            skips = target_skips(n, cfg.target_speedup)
            fixed = tuple(self.whole.done) if self.whole is not None else ()
            limits = dict(max_skip=cfg.max_skip, first=first, last=last, flow=self.flow, also_protect=also, fixed=fixed)
            limits["noise_dominated"] = self.noise_dominated
            noise = "" if self.flow else self.noise_plan
            self.planned = default_plan(sig, skips, protect_final_jump=self.protect_final_jump, noise=noise, **limits)
            if fixed and self.planned[: len(fixed)].tolist() != list(fixed):
                # the earlier calls' path fits no plan under this call's settings (another max_skip, start_percent;
                # the constraints alone decide, so the re-plans below need no check): the whole run planned anew
                limits["fixed"] = ()
                self.planned = default_plan(
                    sig, skips, protect_final_jump=self.protect_final_jump, noise=noise, **limits
                )
                self.report.notes.append(
                    "the path the earlier calls ran fits no plan under this call's settings: the whole run planned "
                    "anew (the calls together may run a step more or less than the target)"
                )
            if noise:
                self.report.notes.append(f"planned with the injected-noise cost ({noise}; a candidate)")
            elif self._always_noise_plan:
                self.planned = default_plan(
                    sig, skips, protect_final_jump=self.protect_final_jump, noise=HOLD_ALWAYS_NOISE_FORM, **limits
                )
                self.report.notes.append(
                    f"planned with the injected-noise cost ({HOLD_ALWAYS_NOISE_FORM}): every skip holds the last "
                    "direction (the sampler's rule)"
                )
            elif self._hold_noise_plan and holds_every_skip(sig, self.planned, self.hold_below, self.hold_step):
                self.planned = default_plan(
                    sig, skips, protect_final_jump=self.protect_final_jump, noise=HOLD_NOISE_FORM, **limits
                )
                self.report.notes.append(
                    f"planned with the injected-noise cost ({HOLD_NOISE_FORM}): every skip of the cost model's plan "
                    "would hold the last direction (the sampler's rule)"
                )
            got = int((~self.planned).sum())
            if got < skips:
                self.report.notes.append(
                    f"target_speedup {cfg.target_speedup:g} needs {skips} skips but only {got} fit "
                    f"(protected steps, max_skip {cfg.max_skip}); skipping {got}"
                )
            self.report.planner = "schedule"
            if self.whole is not None:
                self.planned = self.planned[self.whole.start : self.whole.end].clone()
                self.report.notes.append(self.whole.describe())
                self.report.split_path = self.planned.tolist()
            return own
        if cfg.mode == "target" and eligible > 0:
            skips = target_skips(n, cfg.target_speedup)
            feasible = eligible - int(math.ceil(eligible / (cfg.max_skip + 1)))
            if skips > feasible:
                self.report.notes.append(
                    f"target_speedup {cfg.target_speedup:g} needs {skips} skips but only {feasible} fit "
                    f"(warm-up, protected steps, max_skip {cfg.max_skip}); skipping {feasible}"
                )
                skips = feasible
            rate = self._profile(max(0, skips), eligible)
            self.report.planner = "pace"
        return first, last, rate

    def _profile(self, skips: int, eligible: int) -> list[float]:
        """Skip rate per eligible step, summing to `skips`: uniform (tilt 0) or ramping up over the
        run (tilt > 0: r_u proportional to 1 + tilt * (2u - 1)), capped at what max_skip allows."""
        cap = self.config.max_skip / (self.config.max_skip + 1)
        tilt = self.config.tilt
        u = [i / max(1, eligible - 1) for i in range(eligible)]
        shape = [max(0.0, 1 + tilt * (2 * v - 1)) for v in u]

        def total(c):
            return sum(min(cap, c * w) for w in shape)

        lo, hi = 0.0, 1.0
        while total(hi) < skips and hi < 1e6:
            hi *= 2
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if total(mid) < skips else (lo, mid)
        return [min(cap, hi * w) for w in shape]

    # ----------------------------------------------------------------- sigma bookkeeping
    def _close(self, a: float, b: float) -> bool:
        return abs(a - b) <= 1e-5 * max(abs(a), abs(b), 1e-8)

    def _classify(self, s: float) -> str:
        k, sig = self.step, self.sig
        if k < 0:
            return "start"
        if k + 1 <= self.n_steps and self._close(s, sig[k + 1]):
            if self.endpoint_corrector and not self.corrector_done:
                self.corrector_done = True
                return "inner"
            return "start"
        if k + 1 <= self.n_steps and sig[k + 1] < s <= sig[k] * (1 + 1e-5):
            # a step's second evaluation inside it (dpm_2_ancestral's midpoint below eta 1): the next one at
            # sigma_{i+1} is the next step's, not an endpoint corrector
            self.corrector_done = True
            return "inner"
        if self.endpoint_corrector and not self.corrector_done and self._near_end(s, k):
            # the corrector's sigma_{i+1} as the sampler computed it: dpm_2_ancestral's midpoint at eta 1 is
            # sqrt(sigma_i sigma_down), and sigma_down = sqrt(sigma_{i+1}^2 - sigma_up^2) cancels in float32 when
            # sigma_i >> sigma_{i+1} (a zero-terminal-SNR schedule's first step, 4519 -> 40: off by 2.5e-4)
            self.corrector_done = True
            return "inner"
        return "unknown"

    def _near_end(self, s: float, k: int) -> bool:
        """s is sigma_{k+1} up to ENDPOINT_TOL in log sigma, and nearer to it than to any other sigma of the run."""
        if k + 1 > self.n_steps or s <= 0 or self.sig[k + 1] <= 0:
            return False
        tol = ENDPOINT_TOL
        if k + 2 <= self.n_steps and self.sig[k + 2] > 0:
            tol = min(tol, 0.5 * math.log(self.sig[k + 1] / self.sig[k + 2]))
        return abs(math.log(s / self.sig[k + 1])) <= tol

    # ----------------------------------------------------------------- the estimator
    def _estimator_latent(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        e = x.float()
        if self.use_vp:
            e = e / math.sqrt(1.0 + sigma * sigma)
        return e

    def _clean_increment(self, x: torch.Tensor, prev_x: torch.Tensor) -> torch.Tensor:
        """x with the noise injected since prev_x regressed out (per sample, least squares)."""
        if not self.pending_noise:
            return x
        b = x.shape[0]
        delta = (x - prev_x).float().reshape(b, -1)
        z = torch.stack([n.float().reshape(b, -1) for n in self.pending_noise], dim=2)  # [B, D, J]
        coef = torch.linalg.lstsq(z, delta.unsqueeze(2)).solution  # [B, J, 1]
        return x - (z @ coef).squeeze(2).reshape(x.shape).to(x.dtype)

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        """mean |.| per sample ([B]) or over the whole batch ([1]), on the CPU with the decisions."""
        if self.config.per_sample:
            return t.abs().flatten(1).mean(1).cpu()
        return t.abs().mean().reshape(1).cpu()

    def _score(self):
        """(d1, d2, d3) = (d_i, d_{i-1}, d_{i-2}) for the decision about the next step."""
        if len(self._d_hist) < 3:
            return None
        return self._d_hist[-1], self._d_hist[-2], self._d_hist[-3]

    # ----------------------------------------------------------------- decisions
    @torch.no_grad()
    def _begin_step(self, x: torch.Tensor):
        t0 = time.perf_counter()
        self.step += 1
        self.corrector_done = False
        k, b = self.step, x.shape[0]
        sigma = self.sig[k]
        if self.shape is None:
            self.shape = tuple(x.shape)
            self.report.batch = b
            self.report.nfe_per_sample = [0] * b
            self._skip_run = torch.zeros(b, dtype=torch.long)
            self._credit = torch.zeros(b)
            self._last_x = None
        elif tuple(x.shape) != self.shape:
            raise AdaptiveConfigError(
                f"latent: the shape changed inside one sampling run ({self.shape} -> {tuple(x.shape)})"
            )
        if not self.disabled and not torch.isfinite(x).all():
            self.disabled = True
            self.report.notes.append(f"NaN/inf in the latent at step {k}: skipping stopped, run finished")

        score_val = None
        if not self.disabled:
            # L_{k-1} = x (k >= 1); d_{k-1} = mean |e(L_{k-1}) - e(L_{k-2})|
            if k >= 1 and self._needs_estimator:
                x_clean = self._clean_increment(x, self._last_x) if self._last_x is not None else x
                e = self._estimator_latent(x_clean, sigma)
                if self._prev_e is not None:
                    self._d_hist.append(self._reduce(e - self._prev_e))
                self._prev_e = self._estimator_latent(x, sigma)
            self.pending_noise.clear()
            mask, score_val = self._decide(k, b)
        else:
            self.pending_noise.clear()
            mask = torch.ones(b, dtype=torch.bool)
        self._last_x = x.detach()
        self.compute_mask = mask
        self._skip_run = torch.where(mask, torch.zeros_like(self._skip_run), self._skip_run + 1)
        self.report.records.append(
            StepRecord(index=k, sigma=sigma, score=score_val, computed=float(mask.float().mean()), mask=mask.tolist())
        )
        self.report.controller_seconds += time.perf_counter() - t0

    def _decide(self, k: int, b: int):
        cfg = self.config
        ones = torch.ones(b, dtype=torch.bool)
        d = self._score()
        score = None
        if d is not None:
            d1, d2, d3 = d
            curv = ((d1 + d3) / 2 - d2).abs()
            flat = curv <= cfg.threshold * d2  # the official comparison, multiplicative form
            score = float((curv / d2.clamp_min(1e-30)).mean())
            if flat.numel() == 1:
                flat = flat.expand(b)

        if cfg.mode == "paper":
            if k < cfg.warmup or d is None:
                return ones, score
            run_model = ~flat
            if len(self._paper_mask) > 4 and not any(self._paper_mask[-cfg.max_skip :]):
                run_model = ones
            self._paper_mask.append(bool(run_model.all()))
            return run_model, score

        if cfg.mode == "path":
            path = cfg.path
            col = path[k] if path.ndim == 1 else path[:, k]
            return col.to(torch.bool).reshape(-1).expand(b).clone(), score

        if self.planned is not None:
            return self.planned[k].reshape(1).expand(b).clone(), score

        if not (self._eligible_from <= k < self._eligible_to):
            return ones, score
        capped = self._skip_run >= cfg.max_skip

        if cfg.mode == "threshold":
            if d is None:
                return ones, score
            return (~flat) | capped, score

        # mode == "target": pace skips at `rate` per eligible step; the estimator moves each skip
        # to a flatter neighbouring step (placement in [0, 1] is how far it may move it).
        self._credit += self._rate[k - self._eligible_from]
        pref = torch.zeros(b)
        if cfg.estimator == "latent" and d is not None:
            rel = ((d1 + d3) / 2 - d2).abs() / (cfg.threshold * d2).clamp_min(1e-30)
            pref = (-(rel.clamp(1e-6, 1e6).log()) / math.log(4.0)).clamp(-1, 1)
            if pref.numel() == 1:
                pref = pref.expand(b)
        elif cfg.estimator == "reuse_error" and self._reuse_err is not None:
            # cost of skipping this step: the last observed extrapolation error of d, times this
            # step's sigma travel, in VP units; preference relative to the geometric mean so far
            dsig = abs(self.sig[k + 1] - self.sig[k])
            scale = 1.0 / math.sqrt(1.0 + self.sig[k + 1] ** 2) if self.use_vp else 1.0
            cost = (self._reuse_err * dsig * scale).clamp_min(1e-20).log()
            if self._log_cost_sum is None:
                self._log_cost_sum = torch.zeros(b)
            self._log_cost_sum += cost
            self._cost_count += 1
            ref = self._log_cost_sum / self._cost_count
            pref = ((ref - cost) / math.log(4.0)).clamp(-1, 1)
            score = float(cost.exp().mean())
        want = self._credit + 1e-6 >= 1.0 - cfg.placement * pref
        owed = (self._credit + 1e-6).floor()
        remaining = self._eligible_to - k
        want = want | (owed >= remaining)  # end of the run: settle the skips still owed
        skip = want & ~capped
        self._credit = self._credit - skip.float()
        return ~skip, score

    # ----------------------------------------------------------------- reuse
    def _direction(
        self, sigma: float, idx: torch.Tensor, x: torch.Tensor, aux: str | None = None, x0_hold: bool = True
    ) -> torch.Tensor:
        """The direction d a skipped evaluation at `sigma` uses, for the samples idx (x: theirs).

        Lagrange extrapolation over the last computed evaluations of each sample: of d in sigma
        (hold: order 0, linear: 1, quadratic: 2), or of x0 in log sigma (linear_x0). Held instead below
        ``hold_below`` and, per sample, where its last computed step is ``hold_step`` or more away in log sigma.
        The last x0 instead where ``_x0_mask`` says so (x0_hold False: never; the direction rule alone).
        aux: the same for a prediction kept with ``remember_aux`` (the same nodes and weights)."""
        mode = self._extrapolation()
        hd_all, hD_all = (self._hd, self._hD) if aux is None else self._aux[aux]
        order = {"hold": 0, "linear": 1, "quadratic": 2, "linear_x0": 1, "log_linear": 1}[mode]
        if self.hold_below is not None and (sigma / max(1e-6, 1.0 - sigma) if self.flow else sigma) < self.hold_below:
            order = 0  # (a flow model's sigma compared as the equivalent VE sigma s / (1 - s))
        hd = hd_all[:, idx]  # [H, n, ...] newest first
        held = self._x0_mask(sigma, idx) if x0_hold else None
        if held is not None:  # the last x0, back to a direction at (x, sigma), for the samples held
            s0 = _bshape(self._hs[0, idx], hd.ndim - 1).to(hd.dtype).to(hd.device)
            d_x0 = (x - (self._hx[idx] - s0 * hd[0])) / sigma
            if bool(held.all()):
                return d_x0
            rest = self._direction(sigma, idx, x, aux=aux, x0_hold=False)
            return torch.where(_bshape(held, rest.ndim).to(rest.device), d_x0, rest)
        if order == 0 or hd.shape[0] == 1:
            return hd[0]
        hs = self._hs[:, idx]  # [H, n] float64, nan where not yet filled
        far = None  # the samples whose last computed step is hold_step or further away in log sigma: held
        if self.hold_step is not None:
            far = (self._log_time(hs[0]) - float(self._log_time(torch.tensor(sigma, dtype=torch.float64)))) >= (
                self.hold_step
            )
            if bool(far.all()):
                return hd[0]
        use_x0 = mode == "linear_x0"
        vals = hD_all[:, idx] if use_x0 else hd
        in_log = use_x0 or mode == "log_linear"
        nodes = self._log_time(hs) if in_log else hs
        t = float(self._log_time(torch.tensor(sigma, dtype=torch.float64))) if in_log else sigma
        m_per = ((~hs.isnan()).sum(0) - 1).clamp(0, order)  # usable order per sample
        out = torch.empty_like(hd[0])
        for m in m_per.unique().tolist():
            sel = (m_per == m).nonzero().flatten()
            if m == 0:
                est = vals[0, sel]
            else:
                ts = nodes[: m + 1, sel]  # [m+1, k]
                est = torch.zeros_like(vals[0, sel])
                for j in range(m + 1):
                    w = torch.ones(sel.numel(), dtype=torch.float64)
                    for other in range(m + 1):
                        if other != j:
                            gap = ts[j] - ts[other]
                            safe = gap.abs() > 1e-12
                            w = w * torch.where(
                                safe,
                                (t - ts[other]) / torch.where(safe, gap, torch.ones_like(gap)),
                                torch.zeros_like(gap),
                            )
                    est = est + _bshape(w, est.ndim).to(est.dtype).to(est.device) * vals[j, sel]
            if use_x0:
                est = (x[sel] - est) / sigma  # back to a direction at (x, sigma)
            out[sel] = est
        if far is not None and bool(far.any()):
            out[far] = hd[0, far]
        return out

    def _x0_mask(self, sigma: float, idx: torch.Tensor) -> torch.Tensor | None:
        """Which of the samples idx a skipped evaluation at `sigma` gives the last computed x0 instead of the direction
        rule ([n] bool; None: none): a sampler that has injected noise, on an eps / v model under extrapolation auto,
        above ``NOISE_X0_SIGMA`` (``noise_x0_above`` where given); with noise_x0_rule "measured", a sample measured at
        a computed step (``_measure_x0``) by what held better there, the others by sigma. The held direction does not
        know the noise injected since it was computed: after an ancestral Euler step x + (s_down - s) d + s_up z it
        gives x0 + s_up z - (s' - s_down) d, an error of about sqrt(2) s' where the step is long against s' (4519 -> 40
        on the zero-terminal-SNR table), while the held x0 is that direction with the injected noise accounted for."""
        if not (self.noise_x0 and self._noise_seen and self._hx is not None):
            return None
        above = sigma > self.noise_x0_above
        mask = torch.full((idx.numel(),), above, dtype=torch.bool)
        measured = self.noise_x0_rule == "measured" and self._x0_pref is not None
        if measured:
            pref = self._x0_pref[idx.cpu()]
            mask = torch.where(pref >= 0, pref > 0, mask)
        if not bool(mask.any()):
            return None
        if not self._x0_held:
            self._x0_held = 1
            why = "the sampler's rule" if self.noise_x0_above == NOISE_X0_SIGMA else "set"
            if self.noise_x0_rule == "measured":
                self.report.notes.append(
                    "skipped steps reuse the last x0 for the samples where it predicted their last computed step "
                    f"better than the direction rule (before a first such step: above sigma {self.noise_x0_above:g}) "
                    f"({why}): the sampler injects noise that a reused direction would not know"
                )
            else:
                self.report.notes.append(
                    f"skipped steps above sigma {self.noise_x0_above:g} reuse the last x0 ({why}): the sampler injects "
                    "noise that a reused direction would not know"
                )
        return mask

    @torch.no_grad()
    def _measure_x0(self, x: torch.Tensor, sigma: float, d: torch.Tensor, idx: torch.Tensor):
        """noise_x0_rule "measured": at a computed step's start (before it is recorded), the two reuses a skip here
        would have made, the direction rule and the last x0, each against the direction d the model gave; per sample,
        which was the closer (mean absolute difference), for ``_x0_mask``. Samples with no earlier computed step are
        left as they were."""
        if not (self.noise_x0 and self.noise_x0_rule == "measured" and self._noise_seen):
            return
        if self._hd is None or self._hx is None:
            return
        b = self.shape[0]
        if self._x0_pref is None:
            self._x0_pref = torch.full((b,), -1, dtype=torch.int8)
        hs = self._hs[0, idx]
        ok = ~hs.isnan()
        if not bool(ok.any()):
            return
        idx, x, d = idx[ok], x[ok.to(x.device)], d[ok.to(d.device)]
        rule = self._direction(sigma, idx, x, x0_hold=False)
        s0 = _bshape(self._hs[0, idx], d.ndim).to(d.dtype).to(d.device)
        d_x0 = (x - (self._hx[idx] - s0 * self._hd[0, idx])) / sigma
        e_rule = (d - rule).float().abs().flatten(1).mean(1)
        e_x0 = (d - d_x0).float().abs().flatten(1).mean(1)
        self._x0_pref[idx.cpu()] = (e_x0 < e_rule).to(torch.int8).cpu()

    def _extrapolation(self) -> str:
        """The extrapolation in use. "auto": for a flow model linear in sigma (the flow time, the planner's time
        variable there, in which the velocity is smooth); otherwise linear in log sigma (the planner's time
        variable) for a sampler that evaluates once per step and injects no noise, linear in sigma for the
        others (noise in the recorded directions, or a step's later evaluations far from its start); fixed at
        the first reuse. A sampler with reuse rule "hold_low_noise" holds below ``HOLD_BELOW_SIGMA`` and from
        ``HOLD_STEP`` in log sigma past the last computed step on top of it (``_direction``), one with
        "hold_below_sigma" below ``HOLD_BELOW_SIGMA``; one with "hold_always" (dpmpp_sde and others, ``samplers/support.py``)
        holds throughout on eps / v models."""
        mode = self.config.extrapolation
        if mode != "auto":
            self.report.extrapolation = mode
            return mode
        if self._auto is None:
            multi_eval = self.endpoint_corrector or any(r.evals > 1 for r in self.report.records[:-1])
            self._auto = "linear" if (self.flow or self._noise_seen or multi_eval) else "log_linear"
            if self.auto_base and not (self.flow or multi_eval):
                self._auto = self.auto_base
            if self._hold_always and not self.auto_base:
                self._auto = "hold"
            self.report.extrapolation = f"{self._auto} (auto" + (
                ", the sampler's rule)" if self._auto == "hold" else ")"
            )
            if self.hold_below is not None or self.hold_step is not None:
                held = [f"below sigma {self.hold_below:g}"] if self.hold_below is not None else []
                if self.hold_gap is not None:
                    held.append(
                        f"{self.hold_gap:g} or more of the run's median steps ({self.hold_step:.3g} in log sigma) from "
                        "the last computed step"
                    )
                elif self.hold_step is not None:
                    held.append(f"{self.hold_step:g} or more in log sigma from the last computed step")
                why = self._hold_why or "set"
                self.report.extrapolation += f", hold {' and '.join(held)} ({why})"
        return self._auto

    def _median_step(self) -> float:
        """The run's median step in the controller's log sigma (``_log_time``), over its positive sigmas (the step to
        sigma 0 aside; the lower of the two middle steps for an even count, where ``samplers.skip_plan.median_log_step``
        takes the upper); 0 with fewer than two."""
        sig = self.whole.sigmas if self.whole is not None else self.sig  # a split run's: the whole run's
        s = torch.tensor([v for v in sig if v > 0], dtype=torch.float64)
        if s.numel() < 2:
            return 0.0
        u = self._log_time(s)
        return float((u[:-1] - u[1:]).abs().median())

    def _log_time(self, s: torch.Tensor) -> torch.Tensor:
        """log sigma; for a flow model log(s / (1 - s)), the log sigma of the equivalent VE model (as the planner)."""
        if self.flow:
            s = s.clamp(max=1.0 - 1e-6)
            return (s / (1.0 - s)).log()
        return s.log()

    @torch.no_grad()
    def _remember(self, x: torch.Tensor, sigma: float, out: torch.Tensor, idx: torch.Tensor):
        d = (x - out) / sigma
        b = self.shape[0]
        if self._is_start and self._hd is not None and self.config.estimator == "reuse_error":
            # what reusing (extrapolating) would have cost at this step: |d - d_hat|
            if self._reuse_err is None:
                self._reuse_err = torch.zeros(b)
            pred = self._direction(sigma, idx, x)
            self._reuse_err[idx] = (d - pred).float().abs().flatten(1).mean(1).cpu()
        if self._is_start:
            self._measure_x0(x, sigma, d, idx)
        depth = {"hold": 1, "linear": 2, "quadratic": 3, "linear_x0": 2, "log_linear": 2, "auto": 2}[
            self.config.extrapolation
        ]
        if self._hd is None:
            self._hd = torch.zeros((depth, b) + d.shape[1:], dtype=d.dtype, device=d.device)
            self._hs = torch.full((depth, b), float("nan"), dtype=torch.float64)
            if self.config.extrapolation == "linear_x0":
                self._hD = torch.zeros_like(self._hd)
        if depth > 1:
            # a second evaluation at the newest entry's sigma (sa_solver_pece re-evaluates its corrected state at
            # the step's own sigma) replaces that entry: the extrapolation needs distinct sigmas (two nodes at one
            # sigma gave every Lagrange weight 0, a zero direction, x0 = x)
            newest = self._hs[0, idx]
            shift = idx[~((newest - sigma).abs() <= 1e-5 * max(abs(sigma), 1e-8))]
            self._hd[1:, shift] = self._hd[:-1, shift].clone()
            self._hs[1:, shift] = self._hs[:-1, shift].clone()
            if self.config.extrapolation == "linear_x0":
                self._hD[1:, shift] = self._hD[:-1, shift].clone()
            for hist in self._aux.values():
                hist[0][1:, shift] = hist[0][:-1, shift].clone()
                if hist[1] is not None:
                    hist[1][1:, shift] = hist[1][:-1, shift].clone()
        self._hd[0, idx] = d
        self._hs[0, idx] = sigma
        if self._hx is None:
            self._hx = torch.zeros((b,) + x.shape[1:], dtype=x.dtype, device=x.device)
        self._hx[idx] = x
        if self.config.extrapolation == "linear_x0":
            self._hD[0, idx] = out

    # ----------------------------------------------------------------- other predictions of a call
    @torch.no_grad()
    def remember_aux(self, name: str, x: torch.Tensor, sigma: float, x0: torch.Tensor, idx: torch.Tensor):
        """Keep another prediction of the call that just ran the model for the samples idx (x: theirs), beside its
        output: a CFG++ sampler's unguided one (nodes/adaptive_cfgpp.py). ``reuse_aux`` extrapolates it as the
        output is at a reused call."""
        if self._hd is None or idx.numel() == 0 or sigma <= 0:
            return
        if name not in self._aux:
            self._aux[name] = [torch.zeros_like(self._hd), None if self._hD is None else torch.zeros_like(self._hD)]
        hist = self._aux[name]
        hist[0][0, idx] = ((x - x0) / sigma).to(hist[0].dtype)
        if hist[1] is not None:
            hist[1][0, idx] = x0.to(hist[1].dtype)

    @torch.no_grad()
    def reuse_aux(
        self, name: str, x: torch.Tensor, sigma: float, idx: torch.Tensor, hold_offset: bool = False
    ) -> torch.Tensor:
        """The prediction ``name`` for the reused samples idx at (x, sigma), by the rule and weights the output's
        reuse had; a sample with none kept gets the output's. hold_offset: the output's reuse plus the offset of the
        two directions at the last computed call, held (what a CFG++ sampler's "held_guidance" form does)."""
        d = self._direction(sigma, idx, x)
        if name in self._aux:
            hist = self._aux[name][0]
            d = d - self._hd[0, idx] + hist[0, idx] if hold_offset else self._direction(sigma, idx, x, aux=name)
        return x - sigma * d.to(x.dtype)

    # ----------------------------------------------------------------- the denoiser
    def __getattr__(self, name):
        # samplers look through the denoiser (ComfyUI's read model.inner_model.inner_model.model_sampling)
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra):
        s = float(sigma.reshape(-1)[0])
        kind = self._classify(s)
        self._is_start = kind == "start"
        if kind == "start":
            self._begin_step(x)
        elif kind == "unknown" and not self.disabled:
            self.disabled = True
            self.compute_mask = torch.ones(x.shape[0], dtype=torch.bool)
            self.report.notes.append(
                f"the sampler evaluated at sigma {s:.4g}, off its schedule: skipping stopped for this run"
            )
        if self.compute_mask is None:  # an unknown call before any step: just run
            self.compute_mask = torch.ones(x.shape[0], dtype=torch.bool)
            self.shape = tuple(x.shape)
            self.report.batch = x.shape[0]
            self.report.nfe_per_sample = [0] * x.shape[0]
        if self.report.records:
            self.report.records[-1].evals += 1
        self.report.evals_requested = sum(r.evals for r in self.report.records)

        mask = torch.ones_like(self.compute_mask) if self.disabled else self.compute_mask
        b = x.shape[0]
        self.last_reused = torch.zeros(0, dtype=torch.long)
        if bool(mask.all()) or self._hd is None:
            out = self.model(x, sigma, **extra)
            idx = torch.arange(b)
        elif not bool(mask.any()):
            out = None
            idx = torch.arange(0)
        else:
            idx = mask.nonzero().flatten()
            part = self.subset_runner(self.model, x, sigma, idx, extra)
            if part.shape[0] == b:  # the runner had to run the whole batch: use all of it, and say so
                out, idx = part, torch.arange(b)
                self._whole_batch_ran(b)
            else:
                out = torch.empty_like(x)
                out[idx] = part
        if idx.numel():
            self.report.model_calls += 1
            for i in idx.tolist():
                self.report.nfe_per_sample[i] += 1
            if s > 0:
                if not torch.isfinite(out[idx]).all() and not self.disabled:
                    self.disabled = True
                    self.report.notes.append("NaN/inf in the model output: skipping stopped, run finished")
                self._remember(x[idx], s, out[idx], idx)
        if idx.numel() == b:
            return out
        t0 = time.perf_counter()
        skip_idx = (~mask).nonzero().flatten()
        with torch.no_grad():
            reused = x[skip_idx] - s * self._direction(s, skip_idx, x[skip_idx]).to(x.dtype)
        if out is None:
            out = torch.empty_like(x)
        out[skip_idx] = reused
        self.last_reused = skip_idx
        self.report.controller_seconds += time.perf_counter() - t0
        return out

    def _whole_batch_ran(self, b: int):
        """The subset runner ran every image at this step: the step's record shows that (mask, computed), the
        images count as computed (their skip runs restart), and one note says at how many steps and why."""
        rec = self.report.records[-1] if self.report.records else None
        self.compute_mask = torch.ones(b, dtype=torch.bool)
        if self._skip_run is not None:
            self._skip_run.zero_()
        if rec is None or rec.computed >= 1.0:
            return
        rec.mask = [True] * b
        rec.computed = 1.0
        self._whole_batch_steps += 1
        reason = getattr(self.subset_runner, "fallback_reason", None) or "the subset runner ran the whole batch"
        note = (
            f"{reason}: the whole batch ran at {self._whole_batch_steps} step(s) where per-sample skipping "
            "needed only part of it"
        )
        if self._whole_batch_note is None:
            self._whole_batch_note = len(self.report.notes)
            self.report.notes.append(note)
        else:
            self.report.notes[self._whole_batch_note] = note

    # ----------------------------------------------------------------- noise recording
    def record_noise(self, noise_sampler: Callable) -> Callable:
        """Wrap a sampler's noise sampler so that the injected noise can be regressed out."""

        def recording(sigma, sigma_next):
            z = noise_sampler(sigma, sigma_next)
            self._noise_seen = True
            if not self.disabled:
                self.pending_noise.append(z.detach())
            return z

        return recording


def adaptive_sample(
    sampler_fn: Callable,
    model: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    config: AdaptiveConfig,
    *,
    extra_args: dict | None = None,
    callback: Callable | None = None,
    disable=None,
    endpoint_corrector: bool = False,
    noise_sampler: Callable | None = None,
    vp_estimator_ok: bool = True,
    subset_runner: Callable | None = None,
    sampler_respace: str = "",
    sampler_reuse: str = "",
    hold_below_sigma: float | None = None,
    hold_step: float | None = None,
    protect_final_jump: bool = True,
    noise_plan: str = "",
    hold_noise_plan: bool = True,
    hold_gap: float | None = None,
    auto_base: str = "",
    sampler_low_eta_base: str = "",
    noise_dominated: bool = True,
    noise_x0: bool = True,
    noise_x0_above: float | None = None,
    noise_x0_rule: str | None = None,
    noise_gate: bool = True,
    whole_run: WholeRun | None = None,
    **sampler_options,
):
    """Run `sampler_fn` with AdaptiveDiffusion skipping; returns (x, SkipReport).

    With skipping disabled (threshold 0, target_speedup 1) the base sampler is called with the
    original model, unchanged: the result is bit-identical to the base sampler's.
    noise_sampler: the base sampler's own noise sampler (stochastic samplers), recorded so that
    its noise does not count as progress.
    sampler_respace: the sampler's ``SamplerSupport.respace`` rule; with ``respace = "auto"`` the planned path
    is run re-spaced (``samplers.respace``) where ``samplers.respace.auto_respace`` says so by that rule.
    sampler_reuse: the sampler's ``SamplerSupport.reuse`` rule ("hold_low_noise": see ``HOLD_BELOW_SIGMA``); off where
    ``sampler_options`` make the sampler its deterministic one (eta 0, ``drops_noise_rules``). The noise is not
    recorded where they turn it off (``injects_no_noise``: eta or s_noise 0).
    hold_below_sigma: with extrapolation auto, hold below this sigma whatever the sampler and model (flow models: in
    the equivalent VE sigma s / (1 - s)); None: the sampler's rule (given, the rule is off: no re-plan where every skip
    holds, hold_noise_plan). For the benchmark's sweep
    (``bench adaptive --grid-hold-sweep``); the nodes leave it None.
    hold_step: with extrapolation auto, hold at a skipped step this far or further in log sigma from the last
    computed step, whatever the sampler (inf: never); None: the sampler's rule (``HOLD_STEP`` for "hold_low_noise"
    on eps / v models). For the benchmark's sweep (``bench adaptive --grid-hold-step-sweep``); the nodes leave it None.
    protect_final_jump: the schedule planner runs the step into the schedule's final jump
    (``samplers.skip_plan.jump_step``); False plans without that rule, for the benchmark's before / after
    (``bench adaptive --grid-jump-off``); the nodes leave it True.
    noise_dominated: the schedule planner takes the steps above ``samplers.skip_plan.NOISE_DOMINATED_SIGMA`` as
    noise-dominated (eps / v models; only zero-terminal-SNR schedules have them); False plans without that rule, for
    the benchmark's before / after (``bench adaptive --grid-noise-dom-off``); the nodes leave it True.
    noise_x0: with extrapolation auto on eps / v models, a sampler that injects noise reuses the last x0 at skipped
    steps above ``NOISE_X0_SIGMA`` (``AdaptiveSampling._x0_mask``); False reuses by its direction rule there too, for
    the benchmark's before / after (``bench adaptive --grid-noise-x0-off``); the nodes leave it True.
    noise_x0_above: that rule above this sigma instead (0: at every skipped step), for the benchmark's sweep
    (``bench adaptive --grid-noise-x0-sweep``); the nodes leave it None.
    noise_x0_rule: where that rule reuses x0, one of ``NOISE_X0_RULES`` (None: ``NOISE_X0_RULE``), for the benchmark's
    comparison (``bench adaptive --grid-noise-x0-rules``); the nodes leave it None.
    noise_plan: a noise form of ``samplers.skip_plan.NOISE_FORMS``: the schedule planner adds the noise the sampler
    injects that a reused direction cannot see (``mixed_costs_fn``; eps / v models), a candidate measured by
    ``bench adaptive --grid-noise-plan``; the nodes leave it "".
    hold_noise_plan: with the sampler's hold rule (``HOLD_NOISE_FORM``), where every skip of the schedule planner's
    path would hold, plan again with the injected-noise cost (with "hold_always", ``HOLD_ALWAYS_NOISE_FORM``,
    always); False plans without that rule, for the benchmark's before / after (``bench adaptive
    --grid-hold-plan-off``); the nodes leave it True.
    hold_gap: with extrapolation auto, hold at a skipped step this many of the run's median steps or further in log
    sigma from the last computed step, whatever the sampler and model (inf: never; not with hold_step); None: the
    sampler's rule (``HOLD_GAP`` for "hold_long_gap" on eps / v models). For the benchmark's sweep and before / after
    (``bench adaptive --grid-hold-gap-sweep`` / ``--grid-hold-gap-off``); the nodes leave it None.
    auto_base: with extrapolation auto, the extrapolation a one-evaluation-per-step sampler on an eps / v model
    starts from, whether or not it injects noise ("log_linear" / "linear"; the sampler's hold rule on top); "": linear
    where the sampler injects noise, log_linear elsewhere, but see sampler_low_eta_base. For the benchmark
    (``--grid-auto-base``, which replaces the sampler's rule); the nodes leave it.
    sampler_low_eta_base: the sampler's ``SamplerSupport.low_eta_base``: with ``sampler_options`` eta below
    ``LOW_ETA`` (above 0), auto_base where auto_base is "".
    noise_gate: False keeps the sampler's reuse rule where ``drops_noise_rules`` would drop it (the noise sampler's
    draws still not recorded), for the benchmark's before / after (``bench adaptive --grid-noise-gate-off``); the
    nodes leave it True.
    whole_run: this call's place in a run split over sampler calls (``samplers.split_run``): with config.split_plan
    "whole_run" (mode target, planner schedule) the whole run is planned and this call runs its slice; None: its own.
    """
    config.validate()
    if not config.enabled:
        counting = CountingDenoiser(model)
        out = sampler_fn(
            counting, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **sampler_options
        )
        rep = SkipReport(steps=len(sigmas) - 1, batch=x.shape[0], mode=config.mode)
        rep.nfe_per_sample = [counting.nfe] * x.shape[0]
        rep.evals_requested = counting.nfe
        rep.model_calls = counting.nfe
        rep.notes.append("skipping disabled (threshold 0 / target_speedup 1): base sampler unchanged")
        return out, rep
    off = injects_no_noise(sampler_options) if noise_sampler is not None else []
    quiet = drops_noise_rules(off) if noise_gate else []  # the sampler's reuse rule dropped
    low_eta = None
    if sampler_low_eta_base and not auto_base and not quiet and config.extrapolation == "auto":
        try:
            eta = float(sampler_options.get("eta", LOW_ETA))
        except (TypeError, ValueError):
            eta = LOW_ETA
        if eta < LOW_ETA:
            auto_base, low_eta = sampler_low_eta_base, eta
    ctl = AdaptiveSampling(
        model,
        sigmas,
        config,
        endpoint_corrector=endpoint_corrector,
        vp_estimator_ok=vp_estimator_ok,
        subset_runner=subset_runner,
        sampler_reuse="" if quiet else sampler_reuse,
        hold_below_sigma=hold_below_sigma,
        hold_step=hold_step,
        protect_final_jump=protect_final_jump,
        noise_plan=noise_plan,
        hold_noise_plan=hold_noise_plan,
        hold_gap=hold_gap,
        auto_base=auto_base,
        whole_run=whole_run,
        noise_dominated=noise_dominated,
        noise_x0=noise_x0,
        noise_x0_above=noise_x0_above,
        noise_x0_rule=noise_x0_rule,
    )
    if low_eta is not None and not ctl.flow:
        ctl.report.notes.append(
            f"eta {low_eta:g} is below {LOW_ETA:g}: auto starts from {auto_base}, as for a deterministic sampler, the "
            "sampler's hold on top (the sampler's rule)"
        )
    if quiet:
        ctl.report.notes.append(
            f"the sampler injects no noise ({', '.join(off)}): reused as a deterministic sampler's"
            + (f" (its rule {sampler_reuse!r} is for its noise)" if sampler_reuse else "")
        )
    elif off:
        ctl.report.notes.append(
            f"the sampler injects no noise ({', '.join(off)}) but still steps as its noisy form does: nothing is "
            "recorded as noise" + (f", its rule {sampler_reuse!r} kept" if sampler_reuse else "")
        )
    planned = ctl.planned
    if config.mode == "path" and config.respace == "on":  # a profile's path, re-spaced (one path for the batch)
        p = torch.as_tensor(config.path, dtype=torch.bool)
        if p.ndim == 2 and not bool((p == p[:1]).all()):
            raise AdaptiveConfigError("respace: 'on' with mode path needs one path for the whole batch")
        planned = p.reshape(-1, p.shape[-1])[0]
        if planned.numel() != len(sigmas) - 1:
            raise AdaptiveConfigError(f"path: expected {len(sigmas) - 1} steps, got {planned.numel()}")
    if planned is not None and config.respace != "off":
        go, reason = (
            (True, "respace = on")
            if config.respace == "on"
            else auto_respace(sampler_respace, ctl.flow, sigmas, int(planned.sum()))
        )
        if go:
            if noise_sampler is not None:
                sampler_options["noise_sampler"] = noise_sampler
            out, rep = respaced_sample(
                sampler_fn,
                model,
                x,
                sigmas,
                planned,
                mode=config.mode,
                reason=reason,
                spread=SPREADS.get(sampler_respace, "") if config.respace == "auto" else "",
                extra_args=extra_args,
                callback=callback,
                disable=disable,
                **sampler_options,
            )
            rep.notes[:0] = ctl.report.notes
            rep.controller_seconds += ctl.report.controller_seconds
            rep.split_path = ctl.report.split_path
            return out, rep
        if reason:  # auto did not re-space, and says why (dpmpp_3m_sde at an odd step count)
            ctl.report.notes.append(reason)
    if noise_sampler is not None:
        sampler_options["noise_sampler"] = noise_sampler if off else ctl.record_noise(noise_sampler)
    out = sampler_fn(ctl, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **sampler_options)
    return out, ctl.report
