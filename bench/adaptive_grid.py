"""`comfyui-tempo bench adaptive --grid`: AdaptiveDiffusion across models, samplers, schedulers, steps and CFG.

Every cell samples one batch (classes x seeds, fixed noise) with the full run and with each method, and
scores decoded PSNR against the full run's images (the paper's fidelity protocol). Methods:

* ``full``: the base sampler, every step.
* ``adaptive``: the pack's default, ``AdaptiveConfig()`` (target 2x, schedule planner).
* ``adaptive_pace``: the earlier default (target 2x, skips paced with late bias 0.25).
* ``adaptive_paper``: the official rule exactly (threshold 0.01, max_skip 4), at its own NFE.
* ``fewer_steps``: the base sampler on a schedule with as many network evaluations as ``adaptive``.
* ``uniform_skip``: the network on every other step, the last prediction held (reuse as the paper).
* ``uniform_skip_linear``: every other step with the default's linear extrapolation.
* ``adaptive_skip`` / ``adaptive_respaced`` (``--grid-respace``): the default's planned path skipped
  (``respace="off"``) and re-spaced (``respace="on"``: the sampler on the planned steps' sigmas alone); the
  default itself (``respace="auto"``) is one of them, as ``samplers.respace.auto_respace`` says.
* ``greedy_optimal`` / ``adaptive_calibrated`` (cells in ``--calib-cells``): each held-out prompt's own
  greedy path, and a profile calibrated on other prompts (bench/adaptive_calibration.py); with them
  ``adaptive_heldout_prompts`` and ``fewer_steps_heldout_prompts``, the default and fewer steps on the same
  held-out prompts. Each keeps every held-out image's PSNR, so the profile's gap to the greedy paths gets a paired
  standard error and a verdict against the issue's 3 dB bar (``calib_bar_verdict``).
* ``greedy_own`` / ``greedy_transfer`` / ``greedy_transfer_best`` / ``adaptive_transfer_prompts``
  (``--calib-transfer``, on the ``--calib-cells`` instead of the profile): each prompt's own greedy path, the other
  prompts' paths carried over to it (mean, and the best for it) and the default's path, on every prompt of the cell
  (bench/adaptive_calibration.py ``transfer_rows``): how specific a greedy path is to its prompt.
* ``adaptive_calibrated_moved_<signal>_<tau>`` (``--calib-moves``, with the profile): the profile's path moved per
  held-out prompt by a run-time signal, a skip one step earlier or later where the prompt's reuse error there,
  against the calibration prompts', says so (bench/adaptive_calibration.py ``moved_paths``): whether a decision per
  prompt at run time closes the profile's gap to the per-prompt greedy paths.
* ``adaptive_calibrated_quick`` (``--calib-quick``, with the profile): a profile from the quick search on the same
  calibration prompts (the greedy's first round, each step skipped alone, then the best of the default's and the
  planner's paths with its cost model calibrated from that round; ``samplers.calibrate.calibrate_path(quick=True)``),
  its calibration's cost beside the full search's: whether most of the search's cost buys anything.
* ``adaptive_noise_plan`` (``--grid-noise-plan``, a candidate, not the default): the default planned with the
  noise the sampler injects that a reused direction cannot see added to its cost (``samplers.skip_plan``
  ``mixed_costs_fn``), on euler_ancestral and dpmpp_2m_sde with eps / v models. (The default itself plans so on
  dpmpp_2m_sde where every skip of its path would hold, ``samplers.adaptive.HOLD_NOISE_FORM``.)
* ``adaptive_noise_dom_off`` (``--grid-noise-dom-off``): the default planned without its noise-dominated steps
  (``samplers.skip_plan.NOISE_DOMINATED_SIGMA``; only zero-terminal-SNR schedules have them).
* ``adaptive_noise_x0_off`` (``--grid-noise-x0-off``): the default with a noisy sampler's skipped steps above sigma 3
  reusing by its direction rule instead of the last x0 (``samplers.adaptive.NOISE_X0_SIGMA``; eps / v models).
* ``adaptive_jump_off`` / ``adaptive_hold_plan_off`` / ``adaptive_hold_gap_off`` (``--grid-jump-off`` /
  ``--grid-hold-plan-off`` / ``--grid-hold-gap-off``): the default without its final-jump rule / without planning with
  the injected-noise cost where every skip holds / without euler_ancestral's hold after a long gap.
  ``adaptive_noise_gate_off`` (``--grid-noise-gate-off``): the default with the sampler's reuse rule kept where eta 0
  would drop it (s_noise 0 keeps it already).
* ``adaptive_flow_isolated`` / ``adaptive_flow_unshifted`` (``--grid-flow-plans``, flow models only): at the default's
  NFE, the default with isolated skips only (max_skip 1), and the default's cost model planned in the flow time before
  the shift (``unshifted_flow_time``), run as a path: two schedule-only alternatives to where the default skips, which
  on the SD3-latent flow model pairs its skips among the first steps (docs/adaptive.md).
* ``full_split`` / ``adaptive_split`` / ``fewer_steps_split`` (``--grid-split K``): the run split into two sampler calls
  at step K, as two KSamplerAdvanced nodes split it (Wan 2.2's high- and low-noise experts, SDXL's base and refiner;
  here the same model on both sides; ``--grid-split K1,K2`` three calls, and so on): the base sampler on both
  segments, the default on each segment as the model
  patch runs it (split_plan whole_run: both calls plan the whole run and run their slices, ``samplers.split_run``),
  and fewer steps split at the same share of the run; scored against ``full_split``. ``adaptive_split_call``: the
  default with split_plan call, each call planning its own segment at the target (the default before).
* ``--grid-eta E`` runs every method of a sampler that takes an eta at that eta, the full run included (rows get
  ``eta``): the noisy samplers' reuse rules away from ComfyUI's default, eta 1. ``--grid-s-noise S`` does the same
  with the scale of the noise (``s_noise``).
* ``adaptive_linear`` and ``adaptive_hold_below_T`` / ``adaptive_hold_step_H`` / ``adaptive_hold_gap_R``
  (``--grid-hold-sweep`` / ``--grid-hold-step-sweep`` / ``--grid-hold-gap-sweep``): the default with linear reuse
  throughout, and with the reuse held below sigma T / from H in log sigma / from R of the run's median steps past the
  last computed step; ``adaptive_reuse_NAME`` (``--grid-reuse-sweep``): the default with the extrapolation NAME, which
  turns the samplers' rules off (``log_linear``: what a sampler that injects no noise gets under auto);
  ``adaptive_noise_x0_above_T`` (``--grid-noise-x0-sweep``): the default with a noisy sampler's skipped steps above
  sigma T reusing the last x0 (0: all of them; the default does so above 3); ``adaptive_noise_x0_rule_NAME``
  (``--grid-noise-x0-rules``): the default with the x0 reuse placed by the rule NAME of
  ``samplers.adaptive.NOISE_X0_RULES`` (``sigma``: above sigma 3; ``measured``: per sample, where the held x0 predicted
  the last computed step better than the direction rule).

Models: ``testbed`` and ``testbed_hr`` (eps-prediction latent UNets on digits) are the models the planner was
first designed on; ``flow`` (a rectified-flow DiT on shapes, testbed/trained_flow.py) was held out from that design,
measured (28 of 42 cells passed), and then used to design the current default (the planner's time variable and
run penalty); ``vpred`` (a v-prediction pixel UNet on other digits, testbed/trained_vpred.py, trained after the flow
model was measured) was held out from that second design and measured on it; the current rule (the step-length
factor, penalty 10) was chosen on testbed, testbed_hr and flow only, with vpred's grid seen but not scored, so
vpred is held out from the selection though not blind; ``shapes_eps`` (an eps-prediction pixel UNet on coloured
shapes, the same file, trained before the current rule was chosen) was held out from every choice of the
planner, and its misses were read before ``respace`` auto was chosen (on testbed, testbed_hr and flow only);
``shapes_v`` (a v-prediction pixel UNet of another shape on another draw of the shapes, the same file, trained after
``respace`` auto was fixed) is the model no choice has seen, but two: dpmpp_2m_sde's plan where every skip holds
(``samplers.adaptive.HOLD_NOISE_FORM``) and euler_ancestral's hold after a long gap (``HOLD_GAP``) were chosen with
every eps / v model's noisy-sampler runs seen, and tested on step counts, schedulers and CFG scales they had not
seen; ``digits_flow`` (a rectified-flow pixel UNet on digits at shift 8, the same file, the second flow model,
trained after every rule of the default was fixed but the last, which flow models do not use) is blind to all of
them; ``vpred_zsnr`` (a v-prediction pixel UNet on a fifth draw of the digits on ComfyUI's zero-terminal-SNR table,
sigma_max ~4518, the same file, trained after every rule was fixed, the two noisy-sampler rules chosen on the five
eps / v models included) is the one eps / v model blind to all of them; ``shapes_zsnr`` (a v-prediction pixel UNet
of another shape on a draw of the shapes on the same zero-terminal-SNR table) was trained to hold out the rule for
noise-dominated steps (``samplers.skip_plan.NOISE_DOMINATED_SIGMA``), which was chosen on ``vpred_zsnr``;
``sd_latent`` (an eps UNet in SD1.x's real latent space: coloured shapes at 128 px through the real TAESD, 4x16x16
latents of std 0.95, decoded by TAESD's decoder; trained after every rule was fixed, the x0 reuse of the noisy
samplers included) is blind to all of them: the only latent model but the two design testbeds, and the only one in
a space users' checkpoints share; ``sdxl_latent`` (an eps UNet of another shape in SDXL's latent space: coloured digits
on flat, gradient and photo backgrounds at 128 px through the real taesdxl) was trained to hold out the choice between
the x0 reuse's sigma 3 and 14.6 that ``sd_latent``'s grid put again; ``sd3_flow`` (a rectified-flow UNet in SD3's
latent space at SD3's shift 3: coloured shapes at 128 px through the real taesd3, 16x16x16 latents; trained after every
rule was fixed) is blind to all of them: the first flow model in a real latent space, what SD3 / Flux users run;
``flux_flow`` (a rectified-flow UNet in FLUX.1's latent space through the real taef1, at Flux's time shift) was trained
after sd3_flow's grid, to hold out a rule for where a flow model skips; no AdaptiveDiffusion run of it has been read.
"""

from __future__ import annotations

import argparse
import inspect
import math
import platform
import time

import torch

from ..samplers import kdiff, schedules, support
from ..samplers.adaptive import NOISE_X0_RULES, AdaptiveConfig, CountingDenoiser, adaptive_sample
from ..samplers.adaptive_config import EXTRAPOLATIONS, target_skips
from ..samplers.skip_plan import NOISE_FORMS, default_plan
from ..samplers.split_run import SplitRuns
from .common import print_table, psnr_db, write_json

SAMPLERS = ["euler", "dpmpp_2m", "heun", "uni_pc", "dpmpp_2m_sde", "euler_ancestral", "lms"]
SCHEDULERS = ["normal", "karras", "simple", "sgm_uniform", "exponential", "beta"]
#: ComfyUI's other schedulers, on which no choice of the default was made (``--grid-schedulers``)
MORE_SCHEDULERS = list(schedules.MORE_SCHEDULERS)
MODELS = [
    "testbed",
    "testbed_hr",
    "flow",
    "vpred",
    "shapes_eps",
    "shapes_v",
    "digits_flow",
    "vpred_zsnr",
    "shapes_zsnr",
    "sd_latent",
    "sdxl_latent",
    "sd3_flow",
    "flux_flow",
]
#: the models the default was designed on (the module docstring); every other model is held out
DESIGN_MODELS = ("testbed", "testbed_hr", "flow")
HELD_OUT = set(MODELS) - set(DESIGN_MODELS)
METHODS = [
    "full",
    "adaptive",
    "adaptive_pace",
    "adaptive_paper",
    "adaptive_skip",
    "adaptive_respaced",
    "fewer_steps",
    "uniform_skip",
    "uniform_skip_linear",
    "greedy_optimal",
    "adaptive_calibrated",
    "adaptive_calibrated_quick",
    "adaptive_heldout_prompts",
    "fewer_steps_heldout_prompts",
    "greedy_own",
    "greedy_transfer",
    "greedy_transfer_best",
    "adaptive_transfer_prompts",
    "adaptive_noise_plan",
]
NOISE_SEED = 7
#: the method names of the profile moved per prompt (``--calib-moves``): MOVED + "<signal>_<tau>"
MOVED = "adaptive_calibrated_moved_"


def build_problem(model: str, scheduler: str, cfg: float, classes: int, seeds: int):
    """The Problem of one grid model (testbed/problems.py)."""
    from ..testbed import problems

    if model == "testbed":
        return problems.trained_problem(classes=classes, seeds=seeds, cfg=cfg, scheduler=scheduler)
    if model == "testbed_hr":
        return problems.hr_problem(classes=classes, seeds=seeds, cfg=cfg, scheduler=scheduler)
    if model == "flow":
        return problems.flow_problem(classes=classes, seeds=seeds, cfg=cfg, scheduler=scheduler)
    if model == "vpred":
        return problems.vpred_problem(classes=classes, seeds=seeds, cfg=cfg, scheduler=scheduler)
    if model == "shapes_eps":
        return problems.shapes_eps_problem(classes=classes, seeds=seeds, cfg=cfg, scheduler=scheduler)
    if model == "shapes_v":
        return problems.shapes_v_problem(classes=classes, seeds=seeds, cfg=cfg, scheduler=scheduler)
    if model == "digits_flow":
        return problems.digits_flow_problem(classes=classes, seeds=seeds, cfg=cfg, scheduler=scheduler)
    if model == "vpred_zsnr":
        return problems.vpred_zsnr_problem(classes=classes, seeds=seeds, cfg=cfg, scheduler=scheduler)
    if model == "shapes_zsnr":
        return problems.shapes_zsnr_problem(classes=classes, seeds=seeds, cfg=cfg, scheduler=scheduler)
    if model == "sd_latent":
        return problems.sd_latent_problem(classes=classes, seeds=seeds, cfg=cfg, scheduler=scheduler)
    if model == "sdxl_latent":
        return problems.sdxl_latent_problem(classes=classes, seeds=seeds, cfg=cfg, scheduler=scheduler)
    if model == "sd3_flow":
        return problems.sd3_flow_problem(classes=classes, seeds=seeds, cfg=cfg, scheduler=scheduler)
    if model == "flux_flow":
        return problems.flux_flow_problem(classes=classes, seeds=seeds, cfg=cfg, scheduler=scheduler)
    raise ValueError(f"--grid-models: expected names from {MODELS}, got {model!r}")


def check_taesd_models(models) -> None:
    """The models in a real TAESD's latent space (``sd_latent``, ``sdxl_latent``, ``sd3_flow``, ``flux_flow``) need the
    real TAESD files: refused before anything runs, naming them and what to set, where none are found."""
    from ..testbed import trained_vpred

    latent = [m for m in models if trained_vpred.SPECS.get(m, ("", {}))[1].get("vae")]
    if latent and trained_vpred.taesd_folder() is None:
        raise SystemExit(
            f"--grid-models: {', '.join(latent)} sample in a real TAESD's latent space and need its files; set "
            "TEMPO_TAESD_DIR to their folder (the project's shared/assets/taesd) or leave those models out"
        )


def _is_flow(problem) -> bool:
    return schedules.is_flow(getattr(problem, "sampling", None))


def _sampling(problem):
    s = getattr(problem, "sampling", None)
    return s if s is not None else problem.sigma_table


def unshifted_flow_time(sigmas, shift: float) -> torch.Tensor:
    """A flow schedule's sigmas in the flow time before the shift: t = sigma / (shift - (shift - 1) sigma), the
    inverse of ComfyUI's sigma(t) = shift t / (1 + (shift - 1) t) (``schedules.Flow``); ``simple`` is uniform in it."""
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    return s / (shift - (shift - 1.0) * s)


def flow_plan_paths(cell) -> dict:
    """``--grid-flow-plans``: two schedule-only alternatives to where the default skips on a flow model, each at the
    default's skip count (name -> (config, setting)): ``flow_isolated``, the default with isolated skips only
    (max_skip 1, an input of the nodes), and ``flow_unshifted``, the default's cost model planned in the flow time before
    the shift (``unshifted_flow_time``: the shift makes the first steps short in sigma, where the default pairs its
    skips), run as a path with the default's linear reuse. Empty for an eps / v model."""
    if not cell.flow:
        return {}
    sig = cell.sigmas(cell.steps)
    n = len(sig) - 1
    t = unshifted_flow_time(sig, float(cell.p.sampling.shift))
    path = default_plan(t, target_skips(n, 2.0), flow=True, max_skip=AdaptiveConfig.max_skip, first=1, last=n)
    return {
        "flow_isolated": (AdaptiveConfig(max_skip=1), "AdaptiveConfig(max_skip=1)"),
        "flow_unshifted": (
            AdaptiveConfig(mode="path", path=path, extrapolation="linear"),
            "the default's plan in the unshifted flow time, reuse linear",
        ),
    }


class Cell:
    """One (model, sampler, scheduler, steps, cfg): runs the methods on the same noise."""

    def __init__(
        self, problem, model: str, sampler: str, scheduler: str, steps: int, cfg: float, eta=None, s_noise=None
    ):
        self.p, self.model, self.sampler, self.scheduler, self.steps, self.cfg = (
            problem,
            model,
            sampler,
            scheduler,
            steps,
            cfg,
        )
        self.fn = kdiff.SAMPLERS[sampler]
        self.entry = support.lookup(sampler)
        params = inspect.signature(self.fn).parameters
        self.stochastic = "noise_sampler" in params
        # eta (--grid-eta): the noise scale of every run of the cell, full run and baselines included, on samplers
        # that take one (as SamplerCustom's sampler nodes set it); None: the sampler's default (ComfyUI's KSampler)
        # and s_noise (--grid-s-noise) the same way
        self.options = {k: float(v) for k, v in (("eta", eta), ("s_noise", s_noise)) if v is not None and k in params}
        self.flow = _is_flow(problem)

    def sigmas(self, steps: int) -> torch.Tensor:
        return schedules.ksampler_sigmas(self.scheduler, steps, _sampling(self.p), self.sampler)

    def run(self, config, steps: int | None = None, split=0, **more):
        """(latents, nfe per image, wall seconds, report or None); config: an AdaptiveConfig or None (the base
        sampler); more: adaptive_sample's other keywords. split: a step K > 0 or several in increasing order: the run
        in sampler calls from step to step (0..K, K..end), each with config (or with its own of a tuple) and its own
        noise sampler of the same seed, as KSamplerAdvanced nodes make them (the report: the last call's)."""
        sig = self.sigmas(steps or self.steps)
        x = self.p.noise * sig[0]  # ComfyUI's noise scaling for eps and flow (CONST) models alike
        ks = (split,) if isinstance(split, int) else tuple(split)
        if any(ks):
            t0, nfe, rep = time.perf_counter(), 0.0, None
            bounds = (0, *ks, len(sig) - 1)
            configs = config if isinstance(config, tuple) else (config,) * (len(bounds) - 1)
            runs = SplitRuns()  # as the nodes' (one per process there): the calls of one split run plan it as one
            schedule, names = schedules.ksampler_schedules(_sampling(self.p), self.sampler)
            segments = [sig[a : b + 1] for a, b in zip(bounds, bounds[1:])]
            for seg, cfg in zip(segments, configs):
                whole, note = runs.place(seg, cfg, schedule, names) if cfg is not None else (None, "")
                x, n, _, rep = self._run_on(cfg, seg, x, **({"whole_run": whole} if whole else {}), **more)
                if whole is not None:
                    runs.ran(whole, rep.split_path)
                if rep is not None and note:
                    rep.notes.append(note)
                nfe += n
            return x, nfe, time.perf_counter() - t0, rep
        return self._run_on(config, sig, x, **more)

    def _run_on(self, config: AdaptiveConfig | None, sig: torch.Tensor, x: torch.Tensor, **more):
        kw = dict(self.options)
        if self.stochastic:
            kw["noise_sampler"] = kdiff.default_noise_sampler(x, seed=NOISE_SEED)
        extra = {"cond": self.p.cond}
        t0 = time.perf_counter()
        if config is None:
            counting = CountingDenoiser(self.p.denoiser)
            out = self.fn(counting, x, sig, extra_args=extra, **kw)
            return out, float(counting.nfe), time.perf_counter() - t0, None
        out, rep = adaptive_sample(
            self.fn,
            self.p.denoiser,
            x,
            sig,
            config,
            extra_args=extra,
            vp_estimator_ok=not self.flow,
            **support.adaptive_kwargs(self.sampler),
            **kw,
            **more,
        )
        return out, float(rep.nfe), time.perf_counter() - t0, rep


def run_cell(
    cell: Cell,
    log=print,
    calib: dict | None = None,
    respace: bool = False,
    lean: bool = False,
    holds=(),
    jump_off: bool = False,
    noise_dom_off: bool = False,
    noise_x0_off: bool = False,
    hold_plan_off: bool = False,
    hold_steps=(),
    noise_plan: bool = False,
    hold_gaps=(),
    hold_gap_off: bool = False,
    noise_gate_off: bool = False,
    reuses=(),
    auto_bases=(),
    x0_aboves=(),
    x0_rules=(),
    split=0,
    flow_plans: bool = False,
) -> list[dict]:
    base = {
        "model": cell.model,
        "held_out": cell.model in HELD_OUT,
        "sampler": cell.sampler,
        "scheduler": cell.scheduler,
        "steps": cell.steps,
        "cfg": cell.cfg,
        **cell.options,
    }
    rows = []
    full, full_nfe, full_wall, _ = cell.run(None)
    ref = cell.p.decode(full)

    def add(method, out, nfe, wall, setting="", rep=None, **more):
        if method == "full":
            psnr = torch.full((ref.shape[0],), float("inf"))
        else:
            psnr = psnr_db(cell.p.decode(out), ref)
        row = grid_row(base, method, psnr, nfe, full_nfe, wall, setting, rep, **more)
        rows.append(row)
        return row

    add("full", full, full_nfe, full_wall, f"{cell.steps} steps")
    out, nfe, wall, rep = cell.run(AdaptiveConfig())
    main = add("adaptive", out, nfe, wall, "AdaptiveConfig() (target 2x, planner schedule)", rep)
    if respace:
        for name, how in (("adaptive_skip", "off"), ("adaptive_respaced", "on")):
            out, nfe, wall, rep = cell.run(AdaptiveConfig(respace=how))
            add(name, out, nfe, wall, f"AdaptiveConfig(respace={how!r})", rep)
    # the reuse rule swept on the default's path: linear throughout (no hold), then hold below each sigma alone, then
    # the sampler's hold below sigma with the hold past each step length, then the hold past each multiple of the
    # run's median step, then each named extrapolation, then each base of auto
    if holds or hold_steps or hold_gaps or reuses or auto_bases or x0_aboves or x0_rules:
        out, nfe, wall, rep = cell.run(AdaptiveConfig(extrapolation="linear"))
        add("adaptive_linear", out, nfe, wall, "AdaptiveConfig(extrapolation='linear')", rep)
        for t in holds:
            out, nfe, wall, rep = cell.run(AdaptiveConfig(), hold_below_sigma=t, hold_step=math.inf)
            add(f"adaptive_hold_below_{t:g}", out, nfe, wall, f"AdaptiveConfig(), hold_below_sigma={t:g}", rep)
        for h in hold_steps:
            out, nfe, wall, rep = cell.run(AdaptiveConfig(), hold_step=h)
            add(f"adaptive_hold_step_{h:g}", out, nfe, wall, f"AdaptiveConfig(), hold_step={h:g}", rep)
        for g in hold_gaps:
            out, nfe, wall, rep = cell.run(AdaptiveConfig(), hold_gap=g)
            add(f"adaptive_hold_gap_{g:g}", out, nfe, wall, f"AdaptiveConfig(), hold_gap={g:g}", rep)
        for t in x0_aboves:
            out, nfe, wall, rep = cell.run(AdaptiveConfig(), noise_x0_above=t)
            add(f"adaptive_noise_x0_above_{t:g}", out, nfe, wall, f"AdaptiveConfig(), noise_x0_above={t:g}", rep)
        for name in x0_rules:
            out, nfe, wall, rep = cell.run(AdaptiveConfig(), noise_x0_rule=name)
            add(f"adaptive_noise_x0_rule_{name}", out, nfe, wall, f"AdaptiveConfig(), noise_x0_rule={name!r}", rep)
        for name in reuses:
            out, nfe, wall, rep = cell.run(AdaptiveConfig(extrapolation=name))
            add(f"adaptive_reuse_{name}", out, nfe, wall, f"AdaptiveConfig(extrapolation={name!r})", rep)
        for name in auto_bases:
            out, nfe, wall, rep = cell.run(AdaptiveConfig(), auto_base=name)
            add(f"adaptive_base_{name}", out, nfe, wall, f"AdaptiveConfig(), auto_base={name!r}", rep)
            for g in hold_gaps:  # both flags: that base with each multiple of the hold after a long gap
                out, nfe, wall, rep = cell.run(AdaptiveConfig(), auto_base=name, hold_gap=g)
                setting = f"AdaptiveConfig(), auto_base={name!r}, hold_gap={g:g}"
                add(f"adaptive_base_{name}_hold_gap_{g:g}", out, nfe, wall, setting, rep)
    if jump_off:  # the default planned without its final-jump rule (samplers.skip_plan.jump_step)
        out, nfe, wall, rep = cell.run(AdaptiveConfig(), protect_final_jump=False)
        add("adaptive_jump_off", out, nfe, wall, "AdaptiveConfig(), protect_final_jump=False", rep)
    if noise_dom_off:  # the default planned without its noise-dominated steps (samplers.skip_plan, zsnr schedules)
        out, nfe, wall, rep = cell.run(AdaptiveConfig(), noise_dominated=False)
        add("adaptive_noise_dom_off", out, nfe, wall, "AdaptiveConfig(), noise_dominated=False", rep)
    if noise_x0_off:  # the default reusing by its direction rule at a noisy sampler's skips above sigma 3 too
        out, nfe, wall, rep = cell.run(AdaptiveConfig(), noise_x0=False)
        add("adaptive_noise_x0_off", out, nfe, wall, "AdaptiveConfig(), noise_x0=False", rep)
    if hold_plan_off:  # the default without planning with the injected-noise cost where every skip holds
        out, nfe, wall, rep = cell.run(AdaptiveConfig(), hold_noise_plan=False)
        add("adaptive_hold_plan_off", out, nfe, wall, "AdaptiveConfig(), hold_noise_plan=False", rep)
    if noise_gate_off:  # the default with the sampler's reuse rule kept where eta 0 would drop it
        out, nfe, wall, rep = cell.run(AdaptiveConfig(), noise_gate=False)
        add("adaptive_noise_gate_off", out, nfe, wall, "AdaptiveConfig(), noise_gate=False", rep)
    if hold_gap_off:  # the default without euler_ancestral's hold after a long gap (samplers.adaptive.HOLD_GAP)
        out, nfe, wall, rep = cell.run(AdaptiveConfig(), hold_gap=math.inf)
        add("adaptive_hold_gap_off", out, nfe, wall, "AdaptiveConfig(), hold_gap=inf", rep)
    if flow_plans:  # where a flow model's default skips, against two schedule-only alternatives (flow cells only)
        for name, (config, setting) in flow_plan_paths(cell).items():
            out, nfe, wall, rep = cell.run(config)
            add(f"adaptive_{name}", out, nfe, wall, setting, rep)
    form = NOISE_FORMS.get(cell.sampler, "")
    if noise_plan and form and not cell.flow:  # the candidate: the planner with the injected-noise cost
        out, nfe, wall, rep = cell.run(AdaptiveConfig(), noise_plan=form)
        add("adaptive_noise_plan", out, nfe, wall, f"AdaptiveConfig(), noise_plan={form!r}", rep)
    if not lean:
        out, nfe, wall, rep = cell.run(AdaptiveConfig(planner="pace", force_last=1))
        add("adaptive_pace", out, nfe, wall, "target 2x, planner pace, late_bias 0.25, force_last 1 (old default)", rep)
        out, nfe, wall, rep = cell.run(AdaptiveConfig.paper(0.01, 4))
        add("adaptive_paper", out, nfe, wall, "official rule, threshold 0.01, max_skip 4", rep)

    n_run = len(cell.sigmas(cell.steps)) - 1  # ddim_uniform may run more steps than asked (ComfyUI's does)
    n_fewer = fewer_steps(cell, max(1, int(round(main["nfe"] / (full_nfe / n_run)))))
    out, nfe, wall, _ = cell.run(None, n_fewer)
    add("fewer_steps", out, nfe, wall, f"{n_fewer} steps")

    every_other = torch.zeros(n_run, dtype=torch.bool)
    every_other[::2] = True
    for name, extrap in (("uniform_skip", "hold"), ("uniform_skip_linear", "linear"))[: 1 if lean else 2]:
        out, nfe, wall, rep = cell.run(AdaptiveConfig(mode="path", path=every_other, extrapolation=extrap))
        add(name, out, nfe, wall, f"network on every other step, reuse {extrap}", rep)

    if split:
        rows.extend(_split_rows(cell, base, split, n_run, n_fewer))
    if calib is not None:
        rows.extend(_calibrated_rows(cell, base, calib, log))
    m = {r["method"]: r for r in rows}

    def db(method):
        return f"{m[method]['psnr_db']:.2f}" if method in m else "-"

    log(
        f"  {cell.model:10s} {cell.sampler:15s} {cell.scheduler:11s} {cell.steps:3d} cfg {cell.cfg:g}: "
        f"adaptive nfe {m['adaptive']['nfe']:.1f} {db('adaptive')} dB (skip {db('adaptive_skip')} / re-spaced "
        f"{db('adaptive_respaced')}) | fewer {db('fewer_steps')} | uniform {db('uniform_skip')} / "
        f"{db('uniform_skip_linear')} | paper {db('adaptive_paper')} | pace {db('adaptive_pace')}"
    )
    return rows


def _split_rows(cell: Cell, base: dict, split, n_run: int, n_fewer: int) -> list[dict]:
    """``--grid-split``: the run split into sampler calls at the steps ``split`` (module docstring), scored against the
    split full run: the base sampler, the default on each call, split_plan call, and fewer steps split at the same
    shares."""
    ks = (split,) if isinstance(split, int) else tuple(split)
    if not ks or any(not 0 < k < n_run for k in ks) or list(ks) != sorted(set(ks)):
        raise ValueError(
            f"--grid-split: expected steps between 1 and {n_run - 1} in increasing order, got {','.join(map(str, ks))}"
        )
    full, full_nfe, full_wall, _ = cell.run(None, split=ks)
    ref = cell.p.decode(full)
    fewer_run = len(cell.sigmas(n_fewer)) - 1
    kf = tuple(min(max(1, round(k * fewer_run / n_run)), fewer_run - 1) for k in ks)
    if list(kf) != sorted(set(kf)):
        raise ValueError(f"--grid-split: steps {ks} map to {kf} at {fewer_run} steps (fewer steps): space them more")
    calls, at, at_f = len(ks) + 1, ", ".join(map(str, ks)), ", ".join(map(str, kf))
    label = ks[0] if len(ks) == 1 else list(ks)
    rows = [grid_row(base, "full_split", torch.full((ref.shape[0],), float("inf")), full_nfe, full_nfe, full_wall,
                     f"{cell.steps} steps in {calls} calls, at step {at}", None, split=label)]  # fmt: skip
    runs = [
        ("adaptive_split", AdaptiveConfig(), None, ks, f"AdaptiveConfig() on each call, split at step {at}"),
        ("adaptive_split_call", AdaptiveConfig(split_plan="call"), None, ks, "split_plan call: each call its own"),
        ("fewer_steps_split", None, n_fewer, kf, f"{n_fewer} steps in {calls} calls, at step {at_f}"),
    ]
    for method, config, steps, where, setting in runs:
        out, nfe, wall, rep = cell.run(config, steps, split=where)
        psnr = psnr_db(cell.p.decode(out), ref)
        rows.append(grid_row(base, method, psnr, nfe, full_nfe, wall, setting, rep, split=label))
    return rows


def _split_steps(text: str) -> tuple[int, ...]:
    """``--grid-split``'s value: steps, comma-separated ("" or "0": none)."""
    try:
        ks = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected steps such as 10 or 7,14, got {text!r}") from None
    return () if ks == (0,) else ks


def split_table(rows: list[dict]) -> list[dict]:
    """Per cell with split rows: the default split against fewer steps split (both scored against the split full run),
    and the default unsplit (against the full run): what the split costs it."""
    out = []
    for key, m in _by_cell(rows).items():
        if "adaptive_split" not in m:
            continue
        a, f = m["adaptive_split"], m["fewer_steps_split"]
        out.append(
            {
                **_cell_head(key),
                "split": a["split"],
                "nfe": a["nfe"],
                "adaptive_split_db": a["psnr_db"],
                "fewer_split_db": f["psnr_db"],
                "split_vs_fewer": a["psnr_db"] - f["psnr_db"],
                "adaptive_db": m["adaptive"]["psnr_db"],
                "split_vs_unsplit": a["psnr_db"] - m["adaptive"]["psnr_db"],
                "nfe_call": m["adaptive_split_call"]["nfe"],
                "whole_vs_call": a["psnr_db"] - m["adaptive_split_call"]["psnr_db"],
            }
        )
    return out


def grid_row(base: dict, method: str, psnr, nfe: float, full_nfe: float, wall: float, setting: str, rep, **more):
    """One row of the grid (and of the ComfyUI grid): base's cell keys, the method, its per-image PSNR's mean and
    minimum and each image's (``psnr_images_db``, in batch order: what ``paired_se`` pairs), NFE and cut against the
    full run, and the report's path."""
    return {
        **base,
        "method": method,
        "nfe": nfe,
        "psnr_db": float(psnr.mean()),
        "psnr_min_db": float(psnr.min()),
        "psnr_images_db": [round(float(v), 4) for v in psnr] if method != "full" else None,
        "nfe_ratio": full_nfe / nfe if nfe else float("nan"),
        "wall_s": wall,
        "setting": setting,
        "path": rep.path_string() if rep is not None and rep.batch else "",
        "respaced": bool(getattr(rep, "respaced", False)),
        **more,
    }


def fewer_steps(cell: Cell, target: int) -> int:
    """The step count to ask for so that the schedule runs ``target`` steps, or the fewest more where no count runs
    exactly that many (ddim_uniform on a 1000-entry table runs 16 steps for 15 and 17 for 16, and 5 for 5 but 7 for 6:
    fewer steps then gets the extra evaluation, never the default)."""
    return fewer_steps_for(cell.sigmas, target)


def fewer_steps_for(sigmas, target: int) -> int:
    """``fewer_steps`` for any ``sigmas(steps)`` (the ComfyUI grid passes its KSampler's)."""
    if len(sigmas(target)) - 1 == target:
        return target
    runs = {n: len(sigmas(n)) - 1 for n in range(max(1, target // 2), 2 * target + 1)}
    return min((r, n) for n, r in runs.items() if r >= target)[1]


def calib_split(n: int, prompts: int, seeds: int, calib: dict) -> tuple[list[int], list[int]]:
    """The calibration's and the held-out prompts' rows of a batch of n = classes x seeds (class c, seed s at row
    c * seeds + s). classes: the first `prompts` classes calibrate, on their first calib["calib_seeds"] seeds (default
    1), and the other classes' first seed is held out; seeds: each class's first seed calibrates and its other seeds
    are held out."""
    classes = n // seeds
    if calib.get("split") == "seeds":
        return [c * seeds for c in range(classes)], [c * seeds + s for c in range(classes) for s in range(1, seeds)]
    k = calib.get("calib_seeds", 1)
    if not 1 <= k <= seeds:
        raise ValueError(f"--calib-seeds: expected 1 to --seeds ({seeds}), got {k}")
    if not 1 <= prompts < classes:
        raise ValueError(
            f"--calib-prompts: expected 1 to {classes - 1} (--classes {classes} leaves the rest held out), got {prompts}"
        )
    return [c * seeds + s for c in range(prompts) for s in range(k)], [c * seeds for c in range(prompts, classes)]


def _calibrated_rows(cell: Cell, base: dict, calib: dict, log) -> list[dict]:
    """greedy_optimal and adaptive_calibrated on held-out prompts (the problem's rows split in two); with
    calib["transfer"] instead the greedy paths carried over between all the cell's prompts (``transfer_rows``)."""
    from .adaptive_calibration import calibration_rows, transfer_rows

    n = cell.p.noise.shape[0]
    full_nfe = len(cell.sigmas(cell.steps)) - 1
    skips = full_nfe - int(round(full_nfe / 2.0))
    if calib.get("transfer"):
        rows = transfer_rows(cell.p, cell.sampler, cell.steps, skips, list(range(n)))
        out = [{**base, **{k: v for k, v in r.items() if k not in base}} for r in rows]
        for r in out:
            log(f"    {r['method']:26s} nfe {r['nfe']:.1f} {r['psnr_db']:.2f} dB (all {n} prompts)")
        return out
    calib_idx, heldout_idx = calib_split(n, calib.get("prompts", 3), calib.get("seeds", 1), calib)
    rows = calibration_rows(
        cell.p,
        cell.sampler,
        cell.steps,
        skips,
        calib_idx,
        heldout_idx,
        baselines=True,
        log=None,
        planner=calib.get("planner", True),
        ceiling=calib.get("ceiling", False),
        validate=calib.get("validate", False),
        oracle=calib.get("oracle", False),
        moves=calib.get("moves", False),
        quick=calib.get("quick", False),
    )
    out = []
    # the default and fewer steps on the same held-out prompts (the cell's own rows are over every prompt)
    rename = {"adaptive": "adaptive_heldout_prompts", "fewer_steps": "fewer_steps_heldout_prompts"}
    for r in rows:
        if r["method"] not in (
            "adaptive_calibrated",
            "greedy_optimal",
            "adaptive_shared_best",
            "adaptive_calibrated_unchecked",
            "adaptive_searched_best",
            "adaptive_calibrated_nolocal",
            "adaptive_calibrated_quick",
            *rename,
        ) and not r["method"].startswith(MOVED):
            continue
        r = {**r, "method": rename.get(r["method"], r["method"])}
        out.append(
            {
                **base,
                **{k2: v for k2, v in r.items() if k2 not in base},
                "held_out_prompts": len(heldout_idx),
                "calib_images": len(calib_idx),
                "held_out_split": calib.get("split", "classes"),
            }
        )
    for r in out:
        log(f"    {r['method']:22s} nfe {r['nfe']:.1f} {r['psnr_db']:.2f} dB (held-out prompts {len(heldout_idx)})")
    return out


def cells(args) -> list[tuple]:
    """(model, sampler, scheduler, steps, cfg, calibrate?) of the grid: every model x sampler x scheduler at the
    default steps and CFG, then steps and CFG sweeps on euler / dpmpp_2m x normal / karras."""
    models = args.grid_models.split(",")
    samplers = args.grid_samplers.split(",")
    scheds = args.grid_schedulers.split(",")
    out = []
    for m in models:
        for sa in samplers:
            for sc in scheds:
                out.append((m, sa, sc, args.grid_steps, args.cfg))
        for sa in [s for s in ("euler", "dpmpp_2m") if s in samplers]:
            for sc in [s for s in ("normal", "karras") if s in scheds]:
                for st in [int(v) for v in args.grid_step_sweep.split(",") if v]:
                    if st != args.grid_steps:
                        out.append((m, sa, sc, st, args.cfg))
                for c in [float(v) for v in args.grid_cfg_sweep.split(",") if v]:
                    if c != args.cfg:
                        out.append((m, sa, sc, args.grid_steps, c))
    return out


def _diff(a: dict, b: dict | None):
    return None if b is None else a["psnr_db"] - b["psnr_db"]


def _cell_head(key: tuple) -> dict:
    """A per-cell table line's first fields from a ``_by_cell`` key."""
    return dict(zip(("model", "sampler", "scheduler", "steps", "cfg"), key))


def paired_se(a: dict, b: dict) -> float | None:
    """The standard error (dB) of a row's mean PSNR minus another's, from their per-image PSNRs paired image by image
    (the same noise and prompt): std of the differences / sqrt(n). None where a row has no per-image values (runs
    written before they were kept), the batches differ, or there is one image. A cell's verdict "above uniform
    skipping" is a difference of two such means; on the noisy samplers single images land 20 or more dB apart
    between methods (another image, not a worse one), and a margin within two of these errors is one another draw
    of the images could turn over."""
    x, y = a.get("psnr_images_db"), b.get("psnr_images_db")
    if not x or not y or len(x) != len(y) or len(x) < 2:
        return None
    d = [u - v for u, v in zip(x, y) if u is not None and v is not None]
    if len(d) != len(x):
        return None
    mean = sum(d) / len(d)
    return math.sqrt(sum((v - mean) ** 2 for v in d) / (len(d) - 1) / len(d))


def beyond_noise(value: float, se: float) -> int:
    """+1 where value is above zero by more than two standard errors, -1 where below by more than two, else 0: the
    one test behind the grid's verdicts (``margin_verdict``, ``calib_bar_verdict``)."""
    return 1 if value > 2 * se else -1 if value < -2 * se else 0


def margin_verdict(line: dict) -> str | None:
    """How sure a cell's two margins (vs_fewer, vs_uniform) are, by their paired standard errors (``paired_se``):
    "clear" where both are above zero by more than two, "clear miss" where one is below by more than two (or the cut
    is under 1.95x), otherwise "within noise" (whichever way the cell's check came out, another draw of the images
    could turn it over). None where a margin has no standard error."""
    if line["cut"] < 1.95:
        return "clear miss"
    margins = [(line[k], line.get(k + "_se")) for k in ("vs_fewer", "vs_uniform")]
    if any(se is None for _, se in margins):
        return None
    sure = [beyond_noise(v, se) for v, se in margins]
    if -1 in sure:
        return "clear miss"
    return "clear" if all(v == 1 for v in sure) else "within noise"


#: the issue's bar for a calibrated profile: within this many dB of each held-out prompt's own greedy path
CALIB_BAR_DB = 3.0


def calib_bar_verdict(vs_greedy: float, se: float | None) -> str | None:
    """How sure a calibrated cell's bar is: the profile's mean PSNR minus the per-prompt greedy paths' over the held-out
    images (vs_greedy, dB) against -CALIB_BAR_DB, by the paired standard error of that difference (``paired_se``):
    "clearly within" where it is above the bar by more than two, "clear miss" where below by more than two, otherwise
    "within noise". None without a standard error."""
    if se is None:
        return None
    return {1: "clearly within", -1: "clear miss", 0: "within noise"}[beyond_noise(vs_greedy + CALIB_BAR_DB, se)]


def calib_bar_text(summary: list[dict]) -> str:
    """A line on the calibrated cells: how many meet the bar (within CALIB_BAR_DB of the per-prompt greedy paths, on
    the mean over the held-out images) and how sure each is (``calib_bar_verdict``). Empty where no cell has a
    verdict."""
    cells = [s for s in summary if s.get("calib_bar_verdict") is not None]
    if not cells:
        return ""
    n = {
        v: sum(1 for s in cells if s["calib_bar_verdict"] == v)
        for v in ("clearly within", "within noise", "clear miss")
    }
    met = sum(1 for s in cells if s["calib_vs_greedy"] >= -CALIB_BAR_DB)
    near_met = sum(
        1 for s in cells if s["calib_bar_verdict"] == "within noise" and s["calib_vs_greedy"] >= -CALIB_BAR_DB
    )
    images = sorted({s["held_out_prompts"] for s in cells if s.get("held_out_prompts")})
    per = f" ({' / '.join(str(v) for v in images)} held-out images a cell)" if images else ""
    return (
        f"calibrated profiles within {CALIB_BAR_DB:g} dB of each held-out prompt's own greedy path: {met} of "
        f"{len(cells)} cells{per}; by two standard errors of the paired per-image differences (calib_vs_greedy_se): "
        f"{n['clearly within']} clearly within, {n['within noise']} within noise of the bar ({near_met} of them "
        f"meeting it), {n['clear miss']} clearly beyond it"
    )


def calib_by_model(summary: list[dict]) -> list[dict]:
    """The calibrated cells per model, then over all of them ("all"): cells, cells meeting the bar, the mean profile
    minus greedy (dB) with its standard error (the cells' ``calib_vs_greedy_se`` combined as if independent; a model's
    cells share their held-out images, so it is a lower bound), and cells where the profile is above the default."""
    cells = [s for s in summary if s.get("calib_vs_greedy_se") is not None]
    groups: dict = {}
    for s in cells:
        groups.setdefault(s["model"], []).append(s)
    if len(groups) > 1:
        groups["all"] = cells
    out = []
    for model, group in groups.items():
        n = len(group)
        out.append(
            {
                "model": model,
                "cells": n,
                "within_bar": sum(1 for s in group if s["calib_vs_greedy"] >= -CALIB_BAR_DB),
                "calib_vs_greedy": sum(s["calib_vs_greedy"] for s in group) / n,
                "calib_vs_greedy_se": math.sqrt(sum(s["calib_vs_greedy_se"] ** 2 for s in group)) / n,
                "above_default": sum(1 for s in group if (s.get("calib_vs_default") or 0.0) > 0),
            }
        )
    return out


def moves_summary(summary: list[dict]) -> list[dict]:
    """Per variant of the profile moved per prompt (``--calib-moves``: ``moved_<signal>_<tau>_vs_profile`` in the
    calibrated cells' lines): cells, the mean and the lowest of its difference to the profile, cells above it."""
    out = []
    for key in sorted({k for s in summary for k in s if k.startswith("moved_") and k.endswith("_vs_profile")}):
        v = [s[key] for s in summary if s.get(key) is not None]
        out.append(
            {
                "variant": key[len("moved_") : -len("_vs_profile")],
                "cells": len(v),
                "mean_db": sum(v) / len(v),
                "lowest_db": min(v),
                "above_profile": sum(1 for d in v if d > 0),
            }
        )
    return out


def _meets(row: dict, m: dict) -> bool:
    """The issue's three checks for one method's row of a cell m: cut >= 1.95x, above fewer steps and above uniform
    skipping."""
    return (
        row["nfe_ratio"] >= 1.95
        and row["psnr_db"] > m["fewer_steps"]["psnr_db"]
        and row["psnr_db"] > m["uniform_skip"]["psnr_db"]
    )


def _by_cell(rows: list[dict]) -> dict:
    """{(model, sampler, scheduler, steps, cfg): {method: row}}."""
    by: dict = {}
    for r in rows:
        by.setdefault((r["model"], r["sampler"], r["scheduler"], r["steps"], r["cfg"]), {})[r["method"]] = r
    return by


def summarize(rows: list[dict]) -> list[dict]:
    """One line per cell: the default against the baselines (dB differences) and the issue's three checks."""
    by = _by_cell(rows)
    out = []
    for (model, sampler, sched, steps, cfg), m in by.items():
        a = m["adaptive"]
        line = {
            "model": model + (" (held out)" if model in HELD_OUT else ""),
            "sampler": sampler,
            "scheduler": sched,
            "steps": steps,
            "cfg": cfg,
            "nfe": f"{m['full']['nfe']:.0f}->{a['nfe']:.1f}",
            "cut": a["nfe_ratio"],
            "adaptive_db": a["psnr_db"],
            "vs_fewer": a["psnr_db"] - m["fewer_steps"]["psnr_db"],
            "vs_uniform": a["psnr_db"] - m["uniform_skip"]["psnr_db"],
            "vs_fewer_se": paired_se(a, m["fewer_steps"]),
            "vs_uniform_se": paired_se(a, m["uniform_skip"]),
            "vs_uniform_lin": _diff(a, m.get("uniform_skip_linear")),
            "vs_pace": _diff(a, m.get("adaptive_pace")),
            "paper_db": m["adaptive_paper"]["psnr_db"] if "adaptive_paper" in m else None,
            "paper_cut": m["adaptive_paper"]["nfe_ratio"] if "adaptive_paper" in m else None,
        }
        if "adaptive_respaced" in m:
            line["respaced"] = bool(a.get("respaced"))
            line["skip_vs_fewer"] = _diff(m["adaptive_skip"], m["fewer_steps"])
            line["respaced_vs_fewer"] = _diff(m["adaptive_respaced"], m["fewer_steps"])
            line["respaced_vs_skip"] = _diff(m["adaptive_respaced"], m["adaptive_skip"])
        if "greedy_optimal" in m and "adaptive_calibrated" in m:
            line["calib_vs_greedy"] = m["adaptive_calibrated"]["psnr_db"] - m["greedy_optimal"]["psnr_db"]
            line["calib_vs_greedy_se"] = paired_se(m["adaptive_calibrated"], m["greedy_optimal"])
            line["calib_bar_verdict"] = calib_bar_verdict(line["calib_vs_greedy"], line["calib_vs_greedy_se"])
            line["held_out_prompts"] = m["adaptive_calibrated"].get("held_out_prompts")
            if "adaptive_heldout_prompts" in m:
                line["calib_vs_default_se"] = paired_se(m["adaptive_calibrated"], m["adaptive_heldout_prompts"])
            for key, method in (
                ("calib_vs_default", "adaptive_heldout_prompts"),
                ("calib_vs_fewer", "fewer_steps_heldout_prompts"),
            ):
                if method in m:
                    line[key] = m["adaptive_calibrated"]["psnr_db"] - m[method]["psnr_db"]
            if "adaptive_shared_best" in m:
                line["shared_best_vs_greedy"] = m["adaptive_shared_best"]["psnr_db"] - m["greedy_optimal"]["psnr_db"]
                line["calib_vs_shared_best"] = (
                    m["adaptive_calibrated"]["psnr_db"] - m["adaptive_shared_best"]["psnr_db"]
                )
            if "adaptive_searched_best" in m:
                g = m["greedy_optimal"]["psnr_db"]
                line["searched_best_vs_greedy"] = m["adaptive_searched_best"]["psnr_db"] - g
                line["nolocal_vs_greedy"] = m["adaptive_calibrated_nolocal"]["psnr_db"] - g
                line["searched_paths"] = m["adaptive_searched_best"].get("searched_paths")
                line["rank_corr"] = m["adaptive_searched_best"].get("rank_corr")
            if "adaptive_calibrated_unchecked" in m:
                u = m["adaptive_calibrated_unchecked"]
                line["unchecked_vs_greedy"] = u["psnr_db"] - m["greedy_optimal"]["psnr_db"]
                line["left_out_gain_db"] = u.get("left_out_gain_db")
                line["check_chose"] = u.get("chosen")
            for method in sorted(k for k in m if k.startswith(MOVED)):
                line[method[len("adaptive_calibrated_") :] + "_vs_profile"] = (
                    m[method]["psnr_db"] - m["adaptive_calibrated"]["psnr_db"]
                )
            if "adaptive_calibrated_quick" in m:
                q, prof = m["adaptive_calibrated_quick"], m["adaptive_calibrated"]
                line["quick_vs_greedy"] = q["psnr_db"] - m["greedy_optimal"]["psnr_db"]
                line["quick_vs_profile"] = q["psnr_db"] - prof["psnr_db"]
                if "adaptive_heldout_prompts" in m:
                    line["quick_vs_default"] = q["psnr_db"] - m["adaptive_heldout_prompts"]["psnr_db"]
                line["quick_nfe_share"] = q["calib_nfe"] / prof["calib_nfe"] if prof.get("calib_nfe") else None
                line["quick_search"] = q.get("search")
            line["calib_search"] = m["adaptive_calibrated"].get("search")
            line["calib_gain_on_calib_prompts"] = m["adaptive_calibrated"].get("calib_gain_db")
        if "greedy_own" in m:
            own = m["greedy_own"]["psnr_db"]
            line["own_db"] = own
            for key, method in (
                ("transfer_vs_own", "greedy_transfer"),
                ("best_other_vs_own", "greedy_transfer_best"),
                ("default_vs_own", "adaptive_transfer_prompts"),
            ):
                line[key] = m[method]["psnr_db"] - own
            line["pairs_within_3db"] = f"{m['greedy_own']['pairs_within_3db']} of {m['greedy_own']['pairs']}"
        line["ok"] = "yes" if _meets(a, m) else "NO"
        line["margin_verdict"] = margin_verdict(line)
        out.append(line)
    return out


def within_noise_text(summary: list[dict]) -> str:
    """A line on how sure the cells' checks are (``margin_verdict``): cells above both baselines by more than two
    paired standard errors, cells within two of a baseline (and how many of those meet the checks), cells below one
    by more than two. Empty where no cell has standard errors."""
    cells = [s for s in summary if s.get("margin_verdict") is not None]
    if not cells:
        return ""
    n = {v: sum(1 for s in cells if s["margin_verdict"] == v) for v in ("clear", "within noise", "clear miss")}
    near_ok = sum(1 for s in cells if s["margin_verdict"] == "within noise" and s["ok"] == "yes")
    return (
        f"by two standard errors of the paired per-image differences (vs_fewer_se / vs_uniform_se), of {len(cells)} "
        f"cells: {n['clear']} clearly above both baselines, {n['within noise']} within noise of one ({near_ok} of them "
        f"meeting the checks, {n['within noise'] - near_ok} not: another draw of the images could turn either "
        f"over), {n['clear miss']} clearly below one"
    )


SUMMARY_COLUMNS = [
    "model",
    "sampler",
    "scheduler",
    "steps",
    "cfg",
    "nfe",
    "cut",
    "adaptive_db",
    "vs_fewer",
    "vs_uniform",
    "vs_uniform_lin",
    "vs_pace",
    "paper_db",
    "paper_cut",
    "ok",
]


def markdown_matrix(summary: list[dict], steps: int, cfg: float) -> str:
    """The per-cell table at the default steps and CFG as markdown: a row per model and sampler, a column per
    scheduler, each cell "default dB (vs fewer steps / vs uniform skipping)"; failed checks in bold."""
    cells = [s for s in summary if s["steps"] == steps and s["cfg"] == cfg]
    scheds = [sc for sc in SCHEDULERS + MORE_SCHEDULERS if any(s["scheduler"] == sc for s in cells)]
    lines = ["| model | sampler | cut | " + " | ".join(scheds) + " |", "| --- | --- | --- |" + " --- |" * len(scheds)]
    keys = []
    for s in cells:
        if (s["model"], s["sampler"]) not in keys:
            keys.append((s["model"], s["sampler"]))
    for model, sampler in keys:
        row = {s["scheduler"]: s for s in cells if s["model"] == model and s["sampler"] == sampler}
        cut = min(r["cut"] for r in row.values())
        out = []
        for sc in scheds:
            r = row.get(sc)
            if r is None:
                out.append("")
                continue
            f = f"{r['vs_fewer']:+.1f}" if r["vs_fewer"] > 0 else f"**{r['vs_fewer']:+.1f}**"
            u = f"{r['vs_uniform']:+.1f}" if r["vs_uniform"] > 0 else f"**{r['vs_uniform']:+.1f}**"
            out.append(f"{r['adaptive_db']:.1f} ({f} / {u})")
        lines.append(f"| {model} | {sampler} | {cut:.2f}x | " + " | ".join(out) + " |")
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    """A sweep value: a float that is not NaN (inf allowed: a rule that never fires)."""
    try:
        return not math.isnan(float(text))
    except ValueError:
        return False


def rule_off_table(rows: list[dict], off: str = "jump_off") -> list[dict]:
    """Per cell with an adaptive_<off> row (the default without one of its rules: jump_off, noise_dom_off, noise_x0_off,
    hold_plan_off, hold_gap_off, noise_gate_off): the default minus it (dB), each against the better baseline, both plans, and whether the two runs
    differ (in their plans, or, for a reuse rule, in their result)."""
    out = []
    for key, m in _by_cell(rows).items():
        if f"adaptive_{off}" not in m:
            continue
        a, o = m["adaptive"], m[f"adaptive_{off}"]
        bar = max(m["fewer_steps"]["psnr_db"], m["uniform_skip"]["psnr_db"])
        out.append(
            {
                **_cell_head(key),
                "gain_db": a["psnr_db"] - o["psnr_db"],
                "margin_db": a["psnr_db"] - bar,
                f"margin_{off}_db": o["psnr_db"] - bar,
                "meets": _meets(a, m),
                f"meets_{off}": _meets(o, m),
                "path": a["path"],
                f"path_{off}": o["path"],
                "differs": a["path"] != o["path"] or a["psnr_db"] != o["psnr_db"],
            }
        )
    return out


def rule_off_summary(table: list[dict], off: str) -> dict:
    """Over a ``rule_off_table``: the cells where the two runs differ, how many the rule is above in, its mean and
    range there (dB), and the cells meeting the three checks without and with it."""
    changed = [j["gain_db"] for j in table if j["differs"]]
    return {
        "cells": len(table),
        "changed": len(changed),
        "up": sum(1 for g in changed if g > 0),
        "mean_gain_db": sum(changed) / len(changed) if changed else 0.0,
        "min_gain_db": min(changed, default=0.0),
        "max_gain_db": max(changed, default=0.0),
        "meets_without": sum(1 for j in table if j[f"meets_{off}"]),
        "meets_with": sum(1 for j in table if j["meets"]),
    }


def noise_plan_table(rows: list[dict]) -> list[dict]:
    """Per cell with an adaptive_noise_plan row: it and the default, each minus uniform skipping (dB), the gain, and
    both plans."""
    out = []
    for key, m in _by_cell(rows).items():
        if "adaptive_noise_plan" not in m:
            continue
        a, q, u = m["adaptive"], m["adaptive_noise_plan"], m["uniform_skip"]["psnr_db"]
        out.append(
            {
                **_cell_head(key),
                "gain_db": q["psnr_db"] - a["psnr_db"],
                "default_vs_uniform": a["psnr_db"] - u,
                "noise_plan_vs_uniform": q["psnr_db"] - u,
                "noise_plan_vs_fewer": q["psnr_db"] - m["fewer_steps"]["psnr_db"],
                "path": a["path"],
                "path_noise_plan": q["path"],
            }
        )
    return out


HOLD_PREFIXES = (
    "adaptive_noise_x0_above_",
    "adaptive_noise_x0_rule_",
    "adaptive_hold_below_",
    "adaptive_hold_step_",
    "adaptive_hold_gap_",
    "adaptive_reuse_",
    "adaptive_base_",
)


def _swept_hold(method: str) -> bool:
    return method.startswith(HOLD_PREFIXES) and method != "adaptive_hold_gap_off"


def hold_table(rows: list[dict]) -> list[dict]:
    """Per cell with --grid-hold-sweep / --grid-hold-step-sweep / --grid-hold-gap-sweep rows: each
    adaptive_hold_below_T, adaptive_hold_step_H and adaptive_hold_gap_R minus adaptive_linear (dB), and the
    default's (the --grid-hold-gap-off rows, adaptive_hold_gap_off, are not swept reuses: not in it)."""
    by = _by_cell(rows)
    out = []
    for (model, sampler, sched, steps, _), m in by.items():
        if "adaptive_linear" not in m:
            continue
        lin = m["adaptive_linear"]["psnr_db"]
        line = {"model": model, "sampler": sampler, "scheduler": sched, "steps": steps, "linear_db": lin}
        for k, r in m.items():
            if _swept_hold(k):
                line[k.replace("adaptive_", "")] = r["psnr_db"] - lin
        line["default"] = m["adaptive"]["psnr_db"] - lin
        out.append(line)
    return out


def hold_summary(rows: list[dict]) -> list[dict]:
    """Over the cells with --grid-hold-sweep / --grid-hold-step-sweep rows, one line per reuse (linear throughout, each
    swept rule, the default): its mean dB minus uniform skipping and the cells above it; and the cells where the
    default differs from it, how many of those the default is above, and the default minus it there (min, mean, max)."""
    cells = [m for m in _by_cell(rows).values() if "adaptive_linear" in m]
    swept = sorted({k for m in cells for k in m if _swept_hold(k)})
    out = []
    for k in ["adaptive_linear", *swept, "adaptive"]:
        have = [m for m in cells if k in m]
        vs_uniform = [m[k]["psnr_db"] - m["uniform_skip"]["psnr_db"] for m in have]
        diff = [m["adaptive"]["psnr_db"] - m[k]["psnr_db"] for m in have]
        diff = [d for d in diff if d != 0.0]
        out.append(
            {
                "reuse": "default" if k == "adaptive" else k.replace("adaptive_", ""),
                "cells": len(have),
                "mean_vs_uniform": sum(vs_uniform) / len(vs_uniform),
                "above_uniform": sum(1 for v in vs_uniform if v > 0),
                "meets": sum(1 for m in have if _meets(m[k], m)),
                "default_differs": len(diff),
                "default_above": sum(1 for d in diff if d > 0),
                "default_minus_min": min(diff) if diff else None,
                "default_minus_mean": sum(diff) / len(diff) if diff else None,
                "default_minus_max": max(diff) if diff else None,
            }
        )
    return out


def add_arguments(p) -> None:
    p.add_argument("--grid", action="store_true", help="the generalisation grid (models x samplers x schedulers ...)")
    p.add_argument(
        "--grid-respace",
        action="store_true",
        help="also run the default's planned path skipped (adaptive_skip) and re-spaced (adaptive_respaced)",
    )
    p.add_argument(
        "--grid-hold-sweep",
        default="",
        help="sigmas, e.g. 0.3,1,3,1e9: also run the default with the reuse held below each (any sampler and model; "
        "flow: its VE-equivalent sigma) and with linear reuse throughout (adaptive_linear); a table against linear",
    )
    p.add_argument(
        "--grid-hold-step-sweep",
        default="",
        help="log-sigma lengths, e.g. 0.15,0.2,0.3,inf: also run the default with the reuse held at a skipped step "
        "that far or further from the last computed step (adaptive_hold_step_H; with the sampler's hold below sigma; "
        "inf: never, the rule before it) and adaptive_linear; in the same table",
    )
    p.add_argument(
        "--grid-hold-gap-sweep",
        default="",
        help="multiples of the run's median step, e.g. 1.5,2,2.5,3: also run the default with the reuse held at a "
        "skipped step that many median steps or further (log sigma) from the last computed step (adaptive_hold_gap_R, "
        "any sampler and model) and adaptive_linear; in the same table",
    )
    p.add_argument(
        "--grid-noise-x0-sweep",
        default="",
        help="sigmas, e.g. 0,1,3: also run the default with a noisy sampler's skipped steps above each reusing the "
        "last x0 (adaptive_noise_x0_above_T; 0: every skipped step; the default: above 3) and adaptive_linear; in the "
        "same table",
    )
    p.add_argument(
        "--grid-noise-x0-rules",
        default="",
        help="names of samplers.adaptive.NOISE_X0_RULES, e.g. measured: also run the default with the noisy samplers' "
        "x0 reuse placed by each (adaptive_noise_x0_rule_NAME; sigma: above sigma 3; measured: per sample, where the "
        "held x0 predicted the last computed step better) and adaptive_linear; in the same table",
    )
    p.add_argument(
        "--grid-reuse-sweep",
        default="",
        help="extrapolations, e.g. log_linear,hold: also run the default with each named one, which turns the "
        "samplers' reuse rules off (adaptive_reuse_NAME), and adaptive_linear; in the same table",
    )
    p.add_argument(
        "--grid-auto-base",
        default="",
        help="log_linear and / or linear: also run the default with auto starting from that extrapolation whether or "
        "not the sampler injects noise, the sampler's rule on top (adaptive_base_NAME), and adaptive_linear; with "
        "--grid-hold-gap-sweep also each base with each multiple (adaptive_base_NAME_hold_gap_R); in the same table",
    )
    p.add_argument(
        "--grid-hold-gap-off",
        action="store_true",
        help="also run the default without euler_ancestral's hold after a long gap (adaptive_hold_gap_off; eps / v "
        "models); a table of the cells where the two differ",
    )
    p.add_argument(
        "--grid-split",
        type=_split_steps,
        default=(),
        metavar="K[,K2,...]",
        help="also run each cell split into sampler calls at step K (two calls, as two KSamplerAdvanced nodes split it) "
        "or at the steps K,K2,... (more calls) (full_split, adaptive_split: the default, adaptive_split_call: "
        "split_plan call, fewer_steps_split); a table against fewer steps split",
    )
    p.add_argument(
        "--grid-jump-off",
        action="store_true",
        help="also run the default planned without its final-jump rule (adaptive_jump_off); a table of the cells "
        "where the two plans differ",
    )
    p.add_argument(
        "--grid-flow-plans",
        action="store_true",
        help="on flow models also run two schedule-only alternatives to the default's plan at its NFE "
        "(adaptive_flow_isolated: max_skip 1; adaptive_flow_unshifted: planned in the flow time before the shift); a "
        "table of the default minus each",
    )
    p.add_argument(
        "--grid-noise-dom-off",
        action="store_true",
        help="also run the default planned without its noise-dominated steps (adaptive_noise_dom_off; steps above "
        "SD's largest sigma, zero-terminal-SNR schedules only); a table of the cells where the two plans differ",
    )
    p.add_argument(
        "--grid-noise-x0-off",
        action="store_true",
        help="also run the default with a noisy sampler's skipped steps above sigma 3 reusing by its direction rule "
        "instead of the last x0 (adaptive_noise_x0_off; eps / v models); a table of the cells where the two differ",
    )
    p.add_argument(
        "--grid-hold-plan-off",
        action="store_true",
        help="also run the default without planning with the injected-noise cost where every skip of its path "
        "would hold (adaptive_hold_plan_off; dpmpp_2m_sde on eps / v models); a table of the cells where the plans "
        "differ",
    )
    p.add_argument(
        "--grid-noise-plan",
        action="store_true",
        help="also run the default planned with the injected-noise cost (adaptive_noise_plan; a candidate, on "
        f"{', '.join(NOISE_FORMS)} with eps / v models); a table against the default and uniform skipping",
    )
    p.add_argument(
        "--grid-eta",
        type=float,
        default=None,
        help="run the samplers that take an eta (euler_ancestral, dpmpp_2m_sde, ...) at this one, every method and "
        "the full run alike (as SamplerCustom's sampler nodes can set it; default: the sampler's, 1); rows get an eta",
    )
    p.add_argument(
        "--grid-noise-gate-off",
        action="store_true",
        help="also run the default with the sampler's reuse rule kept where eta 0 (--grid-eta) would drop it, the "
        "sampler then injecting no noise (adaptive_noise_gate_off; s_noise 0 keeps the rule already); a table of the "
        "cells where the two differ",
    )
    p.add_argument(
        "--grid-s-noise",
        type=float,
        default=None,
        help="run the samplers that take an s_noise (the scale of the noise they inject) at this one, as --grid-eta "
        "does eta (default: the sampler's, 1); rows get an s_noise",
    )
    p.add_argument(
        "--grid-lean",
        action="store_true",
        help="leave out adaptive_pace, adaptive_paper and uniform_skip_linear (comparison rows) to save time",
    )
    p.add_argument("--grid-models", default=",".join(MODELS))
    p.add_argument("--grid-samplers", default=",".join(SAMPLERS))
    p.add_argument(
        "--grid-schedulers",
        default=",".join(SCHEDULERS),
        help=f"default: the issue's six; also {', '.join(MORE_SCHEDULERS)} (ComfyUI's others, no choice made on them)",
    )
    p.add_argument("--grid-steps", type=int, default=30, help="steps of the main grid (default 30)")
    p.add_argument("--grid-step-sweep", default="20,50", help="other step counts (euler/dpmpp_2m x normal/karras)")
    p.add_argument("--grid-cfg-sweep", default="1,3,8", help="other CFG scales (euler/dpmpp_2m x normal/karras)")
    p.add_argument(
        "--calib-cells",
        default="euler:normal,euler:karras,dpmpp_2m:normal,dpmpp_2m:karras",
        help="sampler:scheduler cells (default steps and CFG) that also get greedy_optimal and adaptive_calibrated",
    )
    p.add_argument("--calib-prompts", type=int, default=3, help="prompts (classes) the profile is calibrated on")
    p.add_argument(
        "--calib-seeds",
        type=int,
        default=1,
        help="with --calib-split classes: seeds of each calibration class the profile is calibrated on (a latent "
        "batch in the node; 1 to --seeds); the held-out classes' first seed is held out",
    )
    p.add_argument(
        "--calib-no-planner",
        action="store_true",
        help="calibrate without the schedule planner's paths (the greedy and the default's path only, as before)",
    )
    p.add_argument(
        "--calib-split",
        choices=["classes", "seeds"],
        default="classes",
        help="held-out prompts: other classes (classes: the first --calib-prompts calibrate, the rest are held out) "
        "or the same classes with other noise (seeds: each class's first seed calibrates, its other seeds are held "
        "out; needs --seeds 2 or more)",
    )
    p.add_argument(
        "--calib-validate",
        action="store_true",
        help="calibrate with the leave-one-prompt-out check (the default's path where the search does not carry "
        "over); adaptive_calibrated_unchecked is the search's path without it",
    )
    p.add_argument(
        "--calib-ceiling",
        action="store_true",
        help="also run the same search on the held-out prompts themselves (adaptive_shared_best): the best one "
        "shared path for them, to tell a profile's transfer loss from what no single path can do",
    )
    p.add_argument(
        "--calib-oracle",
        action="store_true",
        help="also sample every path the calibration's search tried on the held-out prompts: the best of them, "
        "picked with hindsight (adaptive_searched_best: how far any rule choosing among those paths could go), and "
        "the search's choice before its local search (adaptive_calibrated_nolocal)",
    )
    p.add_argument(
        "--calib-moves",
        action="store_true",
        help="also run the profile's path moved per held-out prompt by a run-time signal (a skip one step earlier or "
        "later where the prompt's reuse error there, against the calibration prompts', says so; signals lagged and "
        "local, thresholds 0.25, 0.5, 1): adaptive_calibrated_moved_<signal>_<tau>",
    )
    p.add_argument(
        "--calib-quick",
        action="store_true",
        help="also calibrate with the quick search (the greedy's first round, then the best of the default's and the "
        "planner's paths, its cost model calibrated from that round; no further greedy rounds, no local search) and "
        "sample its profile on the held-out prompts (adaptive_calibrated_quick)",
    )
    p.add_argument(
        "--calib-transfer",
        action="store_true",
        help="on the --calib-cells, instead of the profile: each prompt's own greedy path, and every prompt sampled "
        "along the other prompts' paths and the default's (greedy_own, greedy_transfer, greedy_transfer_best, "
        "adaptive_transfer_prompts): how specific a greedy path is to its prompt",
    )


def grid_main(args) -> int:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda *a: None) if args.quiet else print
    classes = args.classes or (4 if args.quick else 8)
    seeds = args.seeds or 1
    calib_cells = {tuple(c.split(":")) for c in args.calib_cells.split(",") if c}
    if args.calib_split == "seeds" and seeds < 2:
        raise SystemExit("--calib-split seeds: expected --seeds 2 or more (each class's other seeds are held out)")
    calibrated = any(
        (sa, sc) in calib_cells and st == args.grid_steps and c == args.cfg for _, sa, sc, st, c in cells(args)
    )
    if (
        calibrated
        and not args.calib_transfer
        and args.calib_split == "classes"
        and not 1 <= args.calib_prompts < classes
    ):
        raise SystemExit(
            f"--calib-prompts: expected 1 to {classes - 1} (--classes {classes} leaves the rest held out), "
            f"got {args.calib_prompts}"
        )
    if args.calib_seeds != 1 and (args.calib_split == "seeds" or not 1 <= args.calib_seeds <= seeds):
        raise SystemExit(
            f"--calib-seeds: expected 1 to --seeds ({seeds}) with --calib-split classes, got {args.calib_seeds}"
        )
    if args.calib_transfer:
        clash = [
            flag
            for flag, on in (
                ("--calib-ceiling", args.calib_ceiling),
                ("--calib-validate", args.calib_validate),
                ("--calib-oracle", args.calib_oracle),
                ("--calib-moves", args.calib_moves),
                ("--calib-quick", args.calib_quick),
                ("--calib-no-planner", args.calib_no_planner),
                ("--calib-split seeds", args.calib_split == "seeds"),
            )
            if on
        ]
        if clash:
            raise SystemExit(
                f"--calib-transfer: runs instead of the profile, so {', '.join(clash)} would do nothing; leave it out"
            )
    for flag, given, known in (
        ("--grid-models", args.grid_models, MODELS),
        ("--grid-samplers", args.grid_samplers, list(kdiff.SAMPLERS)),
        ("--grid-schedulers", args.grid_schedulers, SCHEDULERS + MORE_SCHEDULERS),
        ("--grid-reuse-sweep", args.grid_reuse_sweep, [e for e in EXTRAPOLATIONS if e != "auto"]),
        ("--grid-auto-base", args.grid_auto_base, ["log_linear", "linear"]),
        ("--grid-noise-x0-rules", args.grid_noise_x0_rules, list(NOISE_X0_RULES)),
    ):
        unknown = [v for v in given.split(",") if v and v not in known]
        if unknown:
            raise SystemExit(f"{flag}: {', '.join(map(repr, unknown))} unknown; expected names from {', '.join(known)}")
    for flag, given in (
        ("--grid-hold-sweep", args.grid_hold_sweep),
        ("--grid-hold-step-sweep", args.grid_hold_step_sweep),
        ("--grid-hold-gap-sweep", args.grid_hold_gap_sweep),
        ("--grid-noise-x0-sweep", args.grid_noise_x0_sweep),
    ):
        bad = [v for v in given.split(",") if v and not _is_number(v)]
        if bad:
            raise SystemExit(f"{flag}: {', '.join(map(repr, bad))} not a number; expected numbers separated by commas")
    check_taesd_models([m for m in args.grid_models.split(",") if m])
    t0 = time.perf_counter()
    rows, problems_cache = [], {}
    todo = cells(args)
    log(f"[grid] {len(todo)} cells, batch {classes} classes x {seeds} seeds")
    for model, sampler, sched, steps, cfg in todo:
        key = (model, sched, cfg)
        if key not in problems_cache:
            problems_cache[key] = build_problem(model, sched, cfg, classes, seeds)
        cell = Cell(
            problems_cache[key], model, sampler, sched, steps, cfg, eta=args.grid_eta, s_noise=args.grid_s_noise
        )
        calib = None
        if (sampler, sched) in calib_cells and steps == args.grid_steps and cfg == args.cfg:
            if cell.options:
                raise SystemExit(
                    f"--grid-eta / --grid-s-noise: the calibrated cells run at the sampler's own eta and s_noise; leave "
                    f"{sampler}:{sched} out of --calib-cells"
                )
            calib = {
                "prompts": args.calib_prompts,
                "planner": not args.calib_no_planner,
                "ceiling": args.calib_ceiling,
                "validate": args.calib_validate,
                "oracle": args.calib_oracle,
                "moves": args.calib_moves,
                "quick": args.calib_quick,
                "split": args.calib_split,
                "seeds": seeds,
                "calib_seeds": args.calib_seeds,
                "transfer": args.calib_transfer,
            }
        holds = [float(v) for v in args.grid_hold_sweep.split(",") if v]
        hold_steps = [float(v) for v in args.grid_hold_step_sweep.split(",") if v]
        hold_gaps = [float(v) for v in args.grid_hold_gap_sweep.split(",") if v]
        reuses = [v for v in args.grid_reuse_sweep.split(",") if v]
        auto_bases = [v for v in args.grid_auto_base.split(",") if v]
        x0_aboves = [float(v) for v in args.grid_noise_x0_sweep.split(",") if v]
        x0_rules = [v for v in args.grid_noise_x0_rules.split(",") if v]
        rows.extend(
            run_cell(
                cell,
                log=log,
                calib=calib,
                respace=args.grid_respace,
                lean=args.grid_lean,
                holds=holds,
                jump_off=args.grid_jump_off,
                noise_dom_off=args.grid_noise_dom_off,
                noise_x0_off=args.grid_noise_x0_off,
                hold_plan_off=args.grid_hold_plan_off,
                noise_plan=args.grid_noise_plan,
                hold_steps=hold_steps,
                hold_gaps=hold_gaps,
                hold_gap_off=args.grid_hold_gap_off,
                noise_gate_off=args.grid_noise_gate_off,
                reuses=reuses,
                auto_bases=auto_bases,
                x0_aboves=x0_aboves,
                x0_rules=x0_rules,
                split=args.grid_split,
                flow_plans=args.grid_flow_plans,
            )
        )
    summary = summarize(rows)
    result = {
        "rows": rows,
        "summary": summary,
        "meta": {
            "batch": f"{classes} classes x {seeds} seeds",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "seconds": time.perf_counter() - t0,
            "held_out": sorted(HELD_OUT & {c[0] for c in todo}),
            "command": "comfyui-tempo bench adaptive " + " ".join(getattr(args, "argv", [])),
        },
    }
    print()
    result["table"] = print_table(summary, SUMMARY_COLUMNS)
    ok = [s for s in summary if s["steps"] == args.grid_steps and s["cfg"] == args.cfg]
    passed = sum(1 for s in ok if s["ok"] == "yes")
    print(
        f"\n{passed} of {len(ok)} (model, sampler, scheduler) cells at the defaults meet cut >= 1.95x, above fewer "
        f"steps and above uniform skipping; worst vs fewer {min(s['vs_fewer'] for s in ok):+.2f} dB, worst vs "
        f"uniform {min(s['vs_uniform'] for s in ok):+.2f} dB"
    )
    noise_line = within_noise_text(ok)
    if noise_line:
        print(noise_line)
    rs = [s for s in summary if "respaced_vs_skip" in s]
    if rs:
        keys = ["model", "sampler", "scheduler", "steps", "skip_vs_fewer", "respaced_vs_fewer", "respaced_vs_skip"]
        result["respace"] = [
            {**{k: s[k] for k in keys}, "auto": "re-spaced" if s["respaced"] else "skipped"} for s in rs
        ]
        better = sum(1 for s in rs if s["respaced_vs_skip"] > 0)
        print("\nre-spaced against skipped, dB (the default's planned path; auto is what respace auto did):")
        print_table(result["respace"], keys + ["auto"])
        print(f"re-spacing above skipping in {better} of {len(rs)} cells")
    hold = hold_table(rows)
    if hold:
        result["hold"] = hold
        print(
            "\nthe default with the reuse held below sigma T (hold_below_T) or, with the sampler's hold below sigma, "
            "from H in log sigma past the last computed step (hold_step_H), or from R of the run's median steps past "
            "it (hold_gap_R), minus linear reuse throughout, dB (the default's path):"
        )
        print_table(hold, list(hold[0]))
        result["hold_summary"] = hold_summary(rows)
        print(
            "\nover those cells, each reuse: mean dB minus uniform skipping, cells above it, cells meeting the three "
            "checks; where the default differs:"
        )
        print_table(result["hold_summary"], list(result["hold_summary"][0]))
    for off, key, what in (
        ("jump_off", "jump", "its final-jump rule"),
        ("noise_dom_off", "noise_dom", "its noise-dominated steps"),
        ("noise_x0_off", "noise_x0", "the x0 reuse at a noisy sampler's skips above sigma 3"),
        ("hold_plan_off", "hold_plan", "the injected-noise cost where every skip holds"),
        ("hold_gap_off", "hold_gap", "euler_ancestral's hold after a long gap"),
        ("noise_gate_off", "noise_gate", "dropping the sampler's reuse rule where it injects no noise"),
    ):
        table = rule_off_table(rows, off)
        if not table:
            continue
        result[key] = table
        changed = [j for j in table if j["differs"]]
        print(f"\nthe default minus the default without {what}, dB (cells where the two differ):")
        if changed:
            print_table(changed, list(changed[0]))
        s = result[f"{key}_summary"] = rule_off_summary(table, off)
        print(
            f"the two differ in {s['changed']} of {s['cells']} cells; the rule is above in {s['up']} of them (mean "
            f"{s['mean_gain_db']:+.2f} dB, {s['min_gain_db']:+.2f} to {s['max_gain_db']:+.2f}); cells meeting the "
            f"three checks: {s['meets_without']} without it, {s['meets_with']} with it"
        )
    for off, what in (
        ("flow_isolated", "isolated skips only (max_skip 1)"),
        ("flow_unshifted", "the plan in the flow time before the shift"),
    ):  # --grid-flow-plans: the default minus each alternative (alternatives, not rules of the default)
        table = rule_off_table(rows, off)
        if not table:
            continue
        result[off] = table
        print(f"\nthe default minus {what}, dB (a flow model's cells):")
        print_table(table, [k for k in table[0] if not k.startswith("path")])
        s = result[f"{off}_summary"] = rule_off_summary(table, off)
        print(
            f"they differ in {s['changed']} of {s['cells']} cells; the default is above in {s['up']} of them (mean "
            f"{s['mean_gain_db']:+.2f} dB, {s['min_gain_db']:+.2f} to {s['max_gain_db']:+.2f}); cells meeting the "
            f"three checks: {s['meets_with']} with the default, {s['meets_without']} with {what}"
        )
    split = split_table(rows)
    if split:
        result["split"] = split
        above = sum(1 for j in split if j["split_vs_fewer"] > 0)
        whole = sum(1 for j in split if j["whole_vs_call"] > 0)
        print(
            f"\nthe run split into {len(args.grid_split) + 1} calls at step {','.join(map(str, args.grid_split))}: the "
            "default (the whole run planned, a slice per "
            "call), each call planning its own segment (split_plan call) and fewer steps split, dB against the split "
            "full run; the default unsplit against the full run:"
        )
        print_table(split, list(split[0]))
        print(
            f"the default split above fewer steps split in {above} of {len(split)} cells, above split_plan call in "
            f"{whole}; mean cost of the split {sum(j['split_vs_unsplit'] for j in split) / len(split):+.2f} dB"
        )
    noise = noise_plan_table(rows)
    if noise:
        result["noise_plan"] = noise
        print(
            "\nthe default planned with the injected-noise cost (a candidate) minus the default, and each minus "
            "uniform skipping, dB:"
        )
        print_table(noise, list(noise[0]))
        up = sum(1 for r in noise if r["gain_db"] > 0)
        above = [sum(1 for r in noise if r[k] > 0) for k in ("default_vs_uniform", "noise_plan_vs_uniform")]
        mean = sum(r["gain_db"] for r in noise) / len(noise)
        print(
            f"the candidate is above the default in {up} of {len(noise)} cells (mean {mean:+.2f} dB); above uniform "
            f"skipping: the default in {above[0]}, the candidate in {above[1]}"
        )
    calib = [s for s in summary if "calib_vs_greedy" in s]
    if calib:
        print(
            "\ncalibrated profiles on the held-out prompts, dB (minus each prompt's greedy path / the default / fewer steps;"
            " then the profile minus the default on the calibration prompts, and where its search started):"
        )
        result["calibration"] = [
            {
                k: s.get(k)
                for k in (
                    "model",
                    "sampler",
                    "scheduler",
                    "steps",
                    "calib_vs_greedy",
                    "calib_vs_greedy_se",
                    "calib_bar_verdict",
                    "calib_vs_default",
                    "calib_vs_default_se",
                    "calib_vs_fewer",
                    "calib_gain_on_calib_prompts",
                    "calib_search",
                    *(("shared_best_vs_greedy", "calib_vs_shared_best") if "shared_best_vs_greedy" in s else ()),
                    *(("unchecked_vs_greedy", "left_out_gain_db", "check_chose") if "check_chose" in s else ()),
                    *(
                        ("searched_best_vs_greedy", "nolocal_vs_greedy", "searched_paths", "rank_corr")
                        if "searched_best_vs_greedy" in s
                        else ()
                    ),
                    *(k for k in s if k.startswith("moved_")),
                    *(
                        ("quick_vs_greedy", "quick_vs_profile", "quick_vs_default", "quick_nfe_share", "quick_search")
                        if "quick_vs_greedy" in s
                        else ()
                    ),
                )
            }
            for s in calib
        ]
        print_table(result["calibration"], list(result["calibration"][0]))
        bar_line = calib_bar_text(calib)
        if bar_line:
            result["calibration_bar"] = bar_line
            print(bar_line)
            result["calibration_by_model"] = calib_by_model(calib)
            print_table(result["calibration_by_model"], list(result["calibration_by_model"][0]))
        moved = moves_summary(calib)
        if moved:
            result["calibration_moves"] = moved
            print(
                "\nthe profile's path moved per held-out prompt by a run-time signal, minus the profile, dB (over the "
                "calibrated cells):"
            )
            print_table(moved, list(moved[0]))
    transfer = [s for s in summary if "own_db" in s]
    if transfer:
        print(
            "\neach prompt's own greedy path carried over to the other prompts, dB (minus each prompt along its own "
            "path: the mean over pairs / the best other prompt's path / the default's path; pairs within 3 dB of own):"
        )
        keys = ["model", "sampler", "scheduler", "steps", "own_db", "transfer_vs_own", "best_other_vs_own"]
        result["transfer"] = [{k: s[k] for k in keys + ["default_vs_own", "pairs_within_3db"]} for s in transfer]
        print_table(result["transfer"], list(result["transfer"][0]))
    result["markdown"] = markdown_matrix(summary, args.grid_steps, args.cfg)
    print("\nper cell at the defaults: default's PSNR dB (minus fewer steps / minus uniform skipping):\n")
    print(result["markdown"])
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0 if math.isfinite(result["meta"]["seconds"]) else 1
