"""AdaptiveDiffusion nodes: a KSampler, a SAMPLER for the custom-sampling nodes, a MODEL patch.

All three attach the same controller (``samplers.adaptive``) around one of ComfyUI's own sampler
functions, so a step is skipped or run as a whole however ComfyUI splits its model calls.
"""

from __future__ import annotations

import functools
import logging

import comfy.k_diffusion.sampling as kds
import comfy.model_sampling
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io, ui

from ..samplers import support
from ..samplers.adaptive import AdaptiveConfig, AdaptiveConfigError, adaptive_sample
from ..samplers.plot import plot_report
from ..samplers.skip_profile import ProfileError, SkipProfile
from ..samplers.split_run import SplitRuns, schedule_candidates
from . import adaptive_batch, adaptive_cfgpp, compat, inputs

log = logging.getLogger("comfyui_tempo")

CATEGORY = "sampling/tempo"
MODE_OPTIONS = ["target_speedup", "threshold", "paper"]
_MODE_TO_CORE = {"target_speedup": "target", "threshold": "threshold", "paper": "paper"}
PROFILE = io.Custom("TEMPO_SKIP_PROFILE")  # a samplers.skip_profile.SkipProfile (nodes/adaptive_profile.py)


# ----------------------------------------------------------------------------- inputs
def adaptive_inputs() -> list:
    """The AdaptiveDiffusion settings, shared by the three nodes."""
    return [
        io.Combo.Input(
            "mode",
            options=MODE_OPTIONS,
            default="target_speedup",
            tooltip="target_speedup: skip to reach the speed-up below, on a skip path planned from the sigma "
            "schedule (see planner; the pack's default). threshold: the paper's third-order rule with this pack's "
            "improvements. paper: the official AdaptiveDiffusion rule exactly (threshold and max_skip only).",
        ),
        io.Float.Input(
            "target_speedup",
            default=2.0,
            min=1.0,
            max=5.0,
            step=0.05,
            tooltip="mode target_speedup: steps of the full run divided by the steps this run computes, at least (the "
            "computed steps are rounded down: 7 of 15 at 2x); so too in network evaluations, but a little less where "
            "a sampler that evaluates several times per step skips its last step, which evaluates once (heun at 20 "
            "steps: 1.95x, seeds_3: 1.93x). 1.0 turns skipping off.",
        ),
        io.Float.Input(
            "threshold",
            default=0.01,
            min=0.0,
            max=1.0,
            step=0.001,
            round=0.0001,
            tooltip="Modes threshold and paper: the paper's delta: skip the next step when |(d_i + d_i-2)/2 - d_i-1| "
            "<= threshold * d_i-1 (d = mean latent change per step). Higher skips more; 0 turns skipping off there "
            "(bit-identical to the plain sampler). Mode target_speedup reads it only with planner pace, placement "
            "above 0 and estimator latent (where it shifts where skips go); in that mode target_speedup 1.0 turns "
            "skipping off.",
        ),
        io.Int.Input(
            "max_skip",
            default=4,
            min=1,
            max=20,
            tooltip="Most steps in a row that may reuse the last prediction (the paper's C_max; it also caps the "
            "schedule planner's runs of skips).",
        ),
        io.Combo.Input(
            "extrapolation",
            options=["auto", "linear", "hold", "quadratic", "linear_x0", "log_linear"],
            default="auto",
            tooltip="How a skipped step predicts the noise direction. auto (default): linear on flow models (SD3, "
            "Flux: in sigma, their flow time); otherwise log_linear for samplers that evaluate once per step and add "
            "no noise, linear for the others (dpmpp_2m_sde on eps / v models: hold below sigma 1 and where the "
            "last computed step is 0.2 or more away in log sigma, as at 20 steps, linear elsewhere; euler_ancestral "
            "on eps / v models: hold where it is 1.5 or more of the run's median steps away, log_linear elsewhere below "
            "eta 1; at s_noise 0, which adds no noise, both rules start from log_linear; neither applies at eta 0, "
            "where the sampler is the deterministic one; dpmpp_sde, dpmpp_3m_sde, sa_solver, seeds_2 / 3 and "
            "dpmpp_2s_ancestral on eps / v models: hold throughout, planned with their noise; dpm_2_ancestral: hold "
            "below sigma 1; res_multistep_ancestral and exp_heun_2_x0_sde as dpmpp_2m_sde; ddpm and sa_solver_pece "
            "as euler_ancestral; every sampler that adds noise, on eps / v models at skipped steps above sigma 3: "
            "the last clean-image prediction, since a reused direction would not know the noise added since). "
            "linear extrapolates it from the last two "
            "computed steps (in sigma); hold reuses the last one unchanged, as the paper does; quadratic uses the last "
            "three; linear_x0 extrapolates the clean-image prediction in log sigma; log_linear extrapolates the "
            "direction linearly in log sigma. Ignored in mode paper.",
        ),
        io.Int.Input(
            "force_last",
            default=0,
            min=0,
            max=10,
            tooltip="Always run the network on this many final steps (the paper protects none; the schedule planner "
            "already runs the last steps where the schedule makes them costly). Ignored in mode paper.",
        ),
        io.Float.Input(
            "start_percent",
            default=0.0,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="Never skip in this first fraction of the steps (the first step always runs; in mode threshold "
            "and with planner pace the first 4 do). "
            "Ignored in mode paper.",
        ),
        io.Combo.Input(
            "estimator_space",
            options=["vp", "raw"],
            default="vp",
            tooltip="Latents the estimator measures: vp = x / sqrt(1 + sigma^2), as the paper's DDIM and DPM-Solver "
            "runs saw them; raw = ComfyUI's own latents (the paper's Euler runs). Flow models always use raw. "
            "Ignored in mode paper (raw).",
        ),
        io.Float.Input(
            "late_bias",
            default=0.25,
            min=0.0,
            max=1.0,
            step=0.05,
            tooltip="mode target_speedup, planner pace only: 0 spreads the skips evenly over the run; higher puts "
            "more of them late. 0.25 was best on one testbed and schedule (karras) and lost on normal.",
        ),
        io.Float.Input(
            "placement",
            default=0.0,
            min=0.0,
            max=2.0,
            step=0.05,
            tooltip="mode target_speedup, planner pace only: how far (in steps of credit) the estimator may move a "
            "skip toward a step it rates cheaper. 0 (default) paces the skips without it.",
        ),
        io.Combo.Input(
            "estimator",
            options=["latent", "reuse_error"],
            default="latent",
            tooltip="planner pace only: what rates a step for placement: latent = the paper's third-order latent "
            "difference; reuse_error = how far the extrapolated direction missed at the last computed step.",
        ),
        io.Combo.Input(
            "batch_mode",
            options=["per_sample", "per_batch"],
            default="per_sample",
            tooltip="per_sample: each image in the batch skips on its own and the network runs only on the images "
            "that need it. per_batch: one decision for the whole batch, as the paper. Ignored in mode paper.",
        ),
        io.Combo.Input(
            "planner",
            options=["schedule", "pace"],
            default="schedule",
            optional=True,  # added after release: API prompts saved without it still validate (and get the default)
            tooltip="mode target_speedup: schedule (default) plans the skip path from this run's sigmas, where each "
            "step's travel, its length and the extrapolation distance make a skip cheapest, in the model's time "
            "variable (log sigma; sigma on flow models such as SD3 and Flux). Runs of skips are penalised: skips stay "
            "mostly isolated (about every other step at 2x); long steps run (the last ones of normal and simple, "
            "with a pair of skips mid-run instead; on normal the step into its final jump always runs, eps and v "
            "models), and where some steps are far cheaper it takes runs (a flow model "
            "with karras or exponential: it runs the first steps and skips the tiny last ones; a zero-terminal-SNR v "
            "model, ModelSamplingDiscrete zsnr, sigma up to ~4500: it skips the steps above sigma 14.6, all noise, "
            "first, in one run). dpmpp_2m_sde on eps "
            "and v models, where every skip of that plan would hold the last direction (18 and 20 steps on karras, "
            "exponential and beta; 25 and 30 on exponential; 15 or fewer), plans with the noise the sampler injects "
            "added to the cost; the report says so. pace: the earlier "
            "default (skips paced at a rate ramped by late_bias, placement and estimator).",
        ),
        io.Combo.Input(
            "respace",
            options=["auto", "off", "on"],
            default="auto",
            optional=True,  # added after release, as planner
            tooltip="mode target_speedup with planner schedule: off skips the planned steps (the network's last "
            "direction reused); on runs the sampler on the planned steps' sigmas alone (the schedule re-spaced, "
            "nothing reused, the same NFE); auto (default) re-spaces where skipping measured worse, on eps and v "
            "models: lms with the normal scheduler (a schedule ending in a long step), uni_pc and uni_pc_bh2 from 20 "
            "computed steps (2x at 40 steps or more), dpmpp_3m_sde always, in runs of consecutive steps (every other "
            "sigma at 2x and an even step count), not on the planned ones. The report says when it re-spaced.",
        ),
        io.Combo.Input(
            "split_plan",
            options=["whole_run", "call"],
            default="whole_run",
            optional=True,  # added after release, as planner
            tooltip="mode target_speedup with planner schedule, a run split over sampler calls (KSamplerAdvanced "
            "nodes, one ending at a step with its leftover noise and the next starting there: Wan 2.2's high- and "
            "low-noise experts, SDXL's base and refiner; or SplitSigmas): whole_run (default) plans the whole run, "
            "from the schedule the first call's sigmas begin, and each call runs its slice (the speed-up is the whole "
            "run's; where one part is much cheaper to skip, most skips go there). A call shares it only where an "
            "AdaptiveDiffusion call ran the one before. call: each call plans its own sigmas at the target. A run in "
            "one call is the same either way.",
        ),
        PROFILE.Input(
            "profile",
            optional=True,
            tooltip="A calibrated skip profile (AdaptiveDiffusion Calibrate or Skip Profile Loader): when connected, "
            "the network runs on exactly the profile's steps, with its extrapolation, and the settings above are "
            "ignored. It must match this run's steps and sigma schedule (a clear error otherwise).",
        ),
    ]


def make_config(
    mode,
    target_speedup,
    threshold,
    max_skip,
    extrapolation,
    force_last,
    start_percent,
    estimator_space,
    late_bias=0.25,
    placement=0.0,
    estimator="latent",
    batch_mode="per_sample",
    planner="schedule",
    respace="auto",
    split_plan="whole_run",
) -> AdaptiveConfig:
    if mode not in _MODE_TO_CORE:
        raise AdaptiveConfigError(f"mode: expected one of {MODE_OPTIONS}, got {mode!r}")
    if mode == "paper":
        return AdaptiveConfig.paper(threshold=threshold, max_skip=max_skip).validate()
    if batch_mode not in ("per_sample", "per_batch"):
        raise AdaptiveConfigError(f"batch_mode: expected per_sample or per_batch, got {batch_mode!r}")
    return AdaptiveConfig(
        mode=_MODE_TO_CORE[mode],
        target_speedup=target_speedup,
        threshold=threshold,
        max_skip=max_skip,
        extrapolation=extrapolation,
        force_last=force_last,
        start_percent=start_percent,
        estimator_space=estimator_space,
        tilt=late_bias,
        placement=placement,
        estimator=estimator,
        per_sample=batch_mode == "per_sample",
        planner=planner,
        respace=respace,
        split_plan=split_plan,
    ).validate()


# ----------------------------------------------------------------------------- ComfyUI glue
def _model_sampling(model_k):
    try:
        return model_k.inner_model.inner_model.model_sampling
    except AttributeError:
        return None


#: the calls of split runs that later calls continue, planned as whole runs (ComfyUI runs one prompt at a time)
SPLIT_RUNS = SplitRuns()


def _comfy_schedules(ms, base_name: str, custom_sigmas: bool = False):
    """(schedule(name, n), names) for ``SplitRuns.place``: ComfyUI's schedulers (those other packs registered
    included) on this model's sampling, as KSampler runs them for ``base_name`` and, for the samplers whose penultimate
    sigma it discards, also whole as BasicScheduler gives them; BasicScheduler's form first where ``custom_sigmas`` (the
    SAMPLER node, whose sigmas come from a SIGMAS input). ``samplers.split_run.schedule_candidates``."""
    handlers = getattr(comfy.samplers, "SCHEDULER_HANDLERS", None) or comfy.samplers.SCHEDULER_NAMES
    discard = base_name in getattr(comfy.samplers.KSampler, "DISCARD_PENULTIMATE_SIGMA_SAMPLERS", ())
    return schedule_candidates(
        lambda name, n: comfy.samplers.calculate_sigmas(ms, name, n), list(handlers), discard, custom_sigmas
    )


def _noise_sampler(kind: str, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict):
    """The noise sampler ComfyUI's sampler would build itself (same seed, same sequence)."""
    seed = (extra_args or {}).get("seed", None)
    if kind == "default":
        return kds.default_noise_sampler(x, seed=seed)
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    return kds.BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=seed, cpu=(kind == "brownian"))


def _checked_profile(profile):
    if profile is not None and not isinstance(profile, SkipProfile):
        raise ProfileError(
            f"profile: expected a skip profile (AdaptiveDiffusion Calibrate), got {type(profile).__name__}"
        )
    return profile


def adaptive_function(
    base_fn,
    base_name: str,
    config: AdaptiveConfig,
    sink: list | None = None,
    profile: SkipProfile | None = None,
    custom_sigmas: bool = False,
):
    """A k-diffusion sampler function: `base_fn` with AdaptiveDiffusion skipping around it (along `profile`'s
    path when one is given; it must match the run's sigmas). custom_sigmas: the sigmas come from a SIGMAS input
    (the SAMPLER node), not from KSampler (``_comfy_schedules``)."""
    entry = support.lookup(base_name)
    _checked_profile(profile)
    run_fn = adaptive_cfgpp.with_post_cfg(base_fn, entry.post_cfg) if entry.post_cfg else base_fn

    def sample_adaptive(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        extra_args = {} if extra_args is None else extra_args
        ms = _model_sampling(model)
        vp_ok = not isinstance(ms, comfy.model_sampling.CONST)
        noise_sampler = options.pop("noise_sampler", None)
        run_config = config
        if profile is not None:
            for note in profile.check(sigmas, base_name):
                log.warning("AdaptiveDiffusion %s", note)
            run_config = profile.config()
        if entry.stochastic and run_config.enabled and noise_sampler is None:
            noise_sampler = _noise_sampler(entry.noise, x, sigmas, extra_args)
        whole, split_note = None, ""
        if ms is not None:
            whole, split_note = SPLIT_RUNS.place(sigmas, run_config, *_comfy_schedules(ms, base_name, custom_sigmas))
        out, report = adaptive_sample(
            run_fn,
            model,
            x,
            sigmas,
            run_config,
            extra_args=extra_args,
            callback=callback,
            disable=disable,
            noise_sampler=noise_sampler,
            vp_estimator_ok=vp_ok,
            subset_runner=adaptive_batch.SubsetRunner(),
            whole_run=whole,
            **support.adaptive_kwargs(base_name),
            **options,
        )
        if whole is not None:
            SPLIT_RUNS.ran(whole, report.split_path)  # the calls continuing this one keep its path
        if split_note:
            report.notes.append(split_note)
        log.info("%s (%s)", report.summary(), base_name)
        if sink is not None:
            sink.append(report)
        return out

    sample_adaptive._tempo_adaptive = True
    return sample_adaptive


def wrap_sampler(
    sampler, base_name: str, config: AdaptiveConfig, sink: list | None = None, profile=None, custom_sigmas=False
):
    """A new KSAMPLER running `sampler`'s function with skipping (its options kept); custom_sigmas: see
    ``adaptive_function``."""
    if not isinstance(sampler, comfy.samplers.KSAMPLER):
        raise AdaptiveConfigError(
            f"sampler: AdaptiveDiffusion wraps ComfyUI's k-diffusion samplers (KSAMPLER); got {type(sampler).__name__}"
        )
    fn = adaptive_function(sampler.sampler_function, base_name, config, sink, profile, custom_sigmas)
    return comfy.samplers.KSAMPLER(fn, dict(sampler.extra_options), dict(sampler.inpaint_options))


def _plot_image(report, config: AdaptiveConfig) -> torch.Tensor:
    thr = config.threshold if config.mode in ("threshold", "paper", "target") else None
    return torch.from_numpy(plot_report(report, threshold=thr)).unsqueeze(0)


def _empty_plot() -> torch.Tensor:
    return torch.zeros(1, 64, 64, 3)


def _check_sampler_name(sampler_name):
    """The nodes' ``validate_inputs``: they declare ``sampler_name`` alone, never ``**kwargs``. ComfyUI skips its
    min / max / list checks of every input a validate_inputs declares (of all of them with ``**kwargs``) and
    repeats a failure once per declared input."""
    if sampler_name not in comfy.samplers.SAMPLER_NAMES:
        return f"sampler_name: {sampler_name!r} is not one of this ComfyUI's samplers"
    try:
        support.lookup(sampler_name)
    except support.UnsupportedSampler as e:
        return str(e)
    return True


def _check_scheduler(scheduler) -> None:
    """Run time, for ComfyUI 0.3.64: it checks no V3 combo at queue time (its validation compares V1 list types
    only; 0.33 checks them) and its KSampler quietly swaps an unknown scheduler for the first one."""
    if scheduler not in comfy.samplers.KSampler.SCHEDULERS:
        raise ValueError(
            f"scheduler: {scheduler!r} is not one of this ComfyUI's schedulers "
            f"({', '.join(comfy.samplers.KSampler.SCHEDULERS)})"
        )


# ----------------------------------------------------------------------------- nodes
class AdaptiveKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return compat.schema(
            node_id="TempoAdaptiveKSampler",
            display_name="AdaptiveDiffusion KSampler",
            category=CATEGORY,
            description="KSampler that skips the network on some steps and reuses its last noise prediction there "
            "(AdaptiveDiffusion, NeurIPS 2024): by default on a skip path planned from the run's sigma schedule, in "
            "modes threshold and paper where the latents allow. Same inputs as KSampler plus the skip settings; "
            "reports which steps ran, the NFE and the speed-up.",
            inputs=[
                io.Model.Input("model", tooltip="The model used for denoising the input latent."),
                inputs.seed(),
                inputs.steps(default=30),
                inputs.cfg(),
                inputs.sampler_name(
                    "The base sampler. Those AdaptiveDiffusion cannot serve (dpm_fast, dpm_adaptive, "
                    "heunpp2) are refused with the reason."
                ),
                inputs.scheduler(),
                io.Conditioning.Input("positive", tooltip="The conditioning describing what to include."),
                io.Conditioning.Input("negative", tooltip="The conditioning describing what to exclude."),
                io.Latent.Input("latent_image", tooltip="The latent image to denoise."),
                inputs.denoise(),
                *adaptive_inputs(),
            ],
            outputs=[
                io.Latent.Output(display_name="LATENT", tooltip="The denoised latent."),
                io.Image.Output(
                    display_name="skip_plot",
                    tooltip="The estimator per step and which steps ran the network (green) or reused (red).",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, sampler_name=None):
        # sampler_name only (see _check_sampler_name): ComfyUI keeps its own checks of the other inputs
        if sampler_name is None:
            return True
        return _check_sampler_name(sampler_name)

    @classmethod
    def execute(
        cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise, **settings
    ) -> io.NodeOutput:
        profile = _checked_profile(settings.pop("profile", None))
        config = make_config(**settings)
        _check_scheduler(scheduler)
        latent = latent_image
        samples_in = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        noise = comfy.sample.prepare_noise(samples_in, seed, latent.get("batch_index"))
        noise_mask = latent.get("noise_mask")
        sink: list = []
        sampler = wrap_sampler(comfy.samplers.sampler_object(sampler_name), sampler_name, config, sink, profile)
        ks = comfy.samplers.KSampler(
            model,
            steps=steps,
            device=model.load_device,
            sampler=sampler_name,
            scheduler=scheduler,
            denoise=denoise,
            model_options=model.model_options,
        )
        callback = latent_preview.prepare_callback(model, steps)
        samples = comfy.sample.sample_custom(
            model,
            noise,
            cfg,
            sampler,
            ks.sigmas,
            positive,
            negative,
            samples_in,
            noise_mask=noise_mask,
            callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
            seed=seed,
        )
        out = latent.copy()
        out["samples"] = samples
        if sink:
            report = sink[-1]
            return io.NodeOutput(out, _plot_image(report, config), ui=ui.PreviewText(report.summary()))
        return io.NodeOutput(out, _empty_plot(), ui=ui.PreviewText("AdaptiveDiffusion: nothing to sample (denoise 0)"))


class AdaptiveSamplerNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return compat.schema(
            node_id="TempoAdaptiveSampler",
            display_name="AdaptiveDiffusion Sampler",
            category=CATEGORY,
            description="A SAMPLER for SamplerCustom / SamplerCustomAdvanced: the chosen base sampler with "
            "AdaptiveDiffusion step skipping. The skip path is written to the console after each run.",
            inputs=[
                io.Combo.Input(
                    "sampler_name",
                    options=comfy.samplers.SAMPLER_NAMES,
                    default="euler",
                    tooltip="The base sampler to wrap.",
                ),
                *adaptive_inputs(),
            ],
            outputs=[io.Sampler.Output(tooltip="The base sampler with AdaptiveDiffusion skipping.")],
        )

    @classmethod
    def validate_inputs(cls, sampler_name=None):
        # sampler_name only (see _check_sampler_name): ComfyUI keeps its own checks of the other inputs
        if sampler_name is None:
            return True
        return _check_sampler_name(sampler_name)

    @classmethod
    def execute(cls, sampler_name, **settings) -> io.NodeOutput:
        profile = _checked_profile(settings.pop("profile", None))
        config = make_config(**settings)
        return io.NodeOutput(
            wrap_sampler(comfy.samplers.sampler_object(sampler_name), sampler_name, config, None, profile, True)
        )


def _sampler_sample_wrapper(config: AdaptiveConfig, profile, executor, *args, **kwargs):
    """SAMPLER_SAMPLE wrapper: run this sampling with the sampler's function wrapped."""
    sampler = executor.class_obj
    fn = getattr(sampler, "sampler_function", None)
    name = support.name_of_function(fn)
    if fn is None or getattr(fn, "_tempo_adaptive", False):
        return executor(*args, **kwargs)
    if name is None:
        log.warning(
            "AdaptiveDiffusion: sampler function %r is not one it knows; sampling without skipping",
            getattr(fn, "__name__", fn),
        )
        return executor(*args, **kwargs)
    entry = support.SUPPORT[name]
    if not entry.served:
        raise support.UnsupportedSampler(
            f"sampler_name: the AdaptiveDiffusion model patch cannot serve {name!r}: {entry.note}. "
            "Pick another sampler or remove the patch."
        )
    sampler.sampler_function = adaptive_function(fn, name, config, None, profile)
    try:
        return executor(*args, **kwargs)
    finally:
        sampler.sampler_function = fn


class AdaptiveModelPatch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return compat.schema(
            node_id="TempoAdaptiveModel",
            display_name="AdaptiveDiffusion (model patch)",
            category=CATEGORY,
            description="Patches a MODEL so that any sampler node (KSampler, KSamplerAdvanced, SamplerCustom, ...) "
            "samples it with AdaptiveDiffusion step skipping, as EasyCache does. The skip path is written to the "
            "console after each run.",
            inputs=[io.Model.Input("model", tooltip="The model to patch."), *adaptive_inputs()],
            outputs=[io.Model.Output(tooltip="The model with AdaptiveDiffusion skipping.")],
        )

    @classmethod
    def execute(cls, model, **settings) -> io.NodeOutput:
        profile = _checked_profile(settings.pop("profile", None))
        config = make_config(**settings)
        model = model.clone()
        model.add_wrapper_with_key(
            comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE,
            "tempo_adaptive",
            functools.partial(_sampler_sample_wrapper, config, profile),
        )
        return io.NodeOutput(model)


NODES = [AdaptiveKSampler, AdaptiveSamplerNode, AdaptiveModelPatch]
