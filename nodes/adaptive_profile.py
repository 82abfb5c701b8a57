"""AdaptiveDiffusion skip profiles in ComfyUI: the Calibrate node (the joint greedy search of
``samplers.calibrate`` with ComfyUI's own sampler, saved as a profile file) and the Skip Profile Loader.
The three AdaptiveDiffusion nodes (nodes/adaptive.py) take the profile on their ``profile`` input.

Files: output/tempo_profiles (where Calibrate saves) and models/tempo_profiles, JSON (``samplers.skip_profile``).
"""

from __future__ import annotations

import math
import os
import time

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io, ui

from ..samplers import support
from ..samplers.adaptive import EXTRAPOLATIONS, AdaptiveConfig
from ..samplers.calibrate import CalibrationError, calibrate_path, search_label, skips_for_speedup
from ..samplers.respace import auto_respace, default_path_as_run
from ..samplers.skip_profile import SUFFIX, ProfileError, SkipProfile, load_profile, save_profile
from . import compat, files, inputs
from .adaptive import CATEGORY, PROFILE, _check_sampler_name, _check_scheduler, wrap_sampler
from .comfy_model import model_kind
from .dmd_files import folder_paths_of, invalidate

FOLDER = "tempo_profiles"  # models/tempo_profiles and output/tempo_profiles
EXTRAPOLATION_OPTIONS = list(EXTRAPOLATIONS)


def _register_folder() -> None:
    paths = [os.path.join(folder_paths.models_dir, FOLDER), os.path.join(folder_paths.get_output_directory(), FOLDER)]
    if FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[FOLDER] = (paths, {SUFFIX})
    else:
        for p in paths:
            folder_paths.add_model_folder_path(FOLDER, p)


_register_folder()


def _checked(check, *args):
    try:
        return check(*args)
    except files.FileNameError as e:
        raise ProfileError(str(e)) from None


def profile_files() -> list[str]:
    return [n for n in folder_paths.get_filename_list(FOLDER) if n.lower().endswith(SUFFIX)]


def resolve_profile(name: str) -> str:
    """profile_name -> its file in models/ or output/tempo_profiles (nothing outside them)."""
    name = _checked(files.check_listed_name, name, "profile_name")
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise ProfileError(f"profile_name: no file {name!r} in models/{FOLDER} or output/{FOLDER}")
    return _checked(files.inside, path, folder_paths_of(FOLDER), "profile_name")


def model_identity(model) -> str:
    """What the profile records of the model: its config class, model class and prediction type."""
    inner = getattr(model, "model", None)
    parts = [type(getattr(inner, "model_config", None)).__name__, type(inner).__name__]
    kind = getattr(getattr(inner, "model_type", None), "name", None)
    return f"{parts[0]} ({parts[1]}{', ' + kind if kind else ''})"


# ----------------------------------------------------------------------------- calibration
class _ComfyCalibration:
    """Samples one prompt's latents along per-row skip paths with ComfyUI's sampler; counts NFE and calls."""

    def __init__(self, model, noise, latent, sigmas, sampler_name, cfg, negative, seed, extrapolation, vae, batch_rows):
        self.model, self.noise, self.latent, self.sigmas = model, noise, latent, sigmas
        self.sampler_name, self.cfg, self.negative, self.seed = sampler_name, cfg, negative, seed
        self.extrapolation, self.vae = extrapolation, vae
        self.seeds = noise.shape[0]
        # stochastic samplers draw their noise for the whole batch: one candidate per call keeps it the full run's
        self.per_call = 1 if support.lookup(sampler_name).stochastic else max(1, batch_rows // self.seeds)
        self.nfe = 0.0
        self.calls = 0
        self.on_call = None

    def default_path(self, positive, skips: int) -> torch.Tensor:
        """The path the pack's default controller takes at these skips (its first seed's)."""
        steps = len(self.sigmas) - 1
        config = AdaptiveConfig(target_speedup=steps / max(1, steps - skips), extrapolation=self.extrapolation)
        report = self.run(positive, None, config)
        return torch.tensor([rec.mask[0] for rec in report.records], dtype=torch.bool)

    def run(self, positive, paths: torch.Tensor | None, config: AdaptiveConfig | None = None, respace: bool = False):
        """Final results (decoded images with a VAE, else latents) for paths [C * seeds, N] (respace: one path, run
        re-spaced); with a config instead of paths, the seeds sampled with it and its SkipReport."""
        mm.throw_exception_if_processing_interrupted()
        reps = 1 if paths is None else paths.shape[0] // self.seeds
        sink: list = []
        if config is None:
            config = AdaptiveConfig(
                mode="path", path=paths, extrapolation=self.extrapolation, respace="on" if respace else "off"
            )
        sampler = wrap_sampler(comfy.samplers.sampler_object(self.sampler_name), self.sampler_name, config, sink)
        rep = (reps,) + (1,) * (self.noise.ndim - 1)
        out = comfy.sample.sample_custom(
            self.model,
            self.noise.repeat(rep),
            self.cfg,
            sampler,
            self.sigmas,
            positive,
            self.negative,
            self.latent.repeat(rep),
            callback=None,
            disable_pbar=True,
            seed=self.seed,
        )
        if sink:
            self.nfe += sum(sink[-1].nfe_per_sample)
        self.calls += 1
        if self.on_call is not None:
            self.on_call()
        if paths is None:
            return sink[-1]
        if self.vae is not None:
            out = self.vae.decode(out)
        return out.float().cpu()

    def errors(self, positive, ref: torch.Tensor, paths: torch.Tensor, respace: bool = False) -> torch.Tensor:
        """[C, seeds] MSE against ref for candidate paths [C, N], run in calls of per_call candidates (respace: one
        candidate per call, each run re-spaced)."""
        errs = []
        per_call = 1 if respace else self.per_call
        for start in range(0, paths.shape[0], per_call):
            chunk = paths[start : start + per_call]
            out = self.run(positive, chunk.repeat_interleave(self.seeds, 0), respace=respace)
            e = ((out - ref.repeat((chunk.shape[0],) + (1,) * (ref.ndim - 1))) ** 2).flatten(1).mean(1)
            errs.append(e.reshape(chunk.shape[0], self.seeds))
        return torch.cat(errs)


def calibrate_in_comfy(
    model,
    prompts: list,
    negative,
    latent: dict,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    target_speedup: float,
    extrapolation: str,
    vae=None,
    batch_rows: int = 8,
    node_id=None,
    check: bool = False,
) -> SkipProfile:
    """The profile over `prompts` x the latent's batch (seeds), with ComfyUI's sampler: the best of the joint greedy
    path, the default's and the schedule planner's paths, then the local search (``calibrate_path``). check (two
    or more prompts): the search once more per prompt with that prompt left out, and the default's path kept where
    the searched path does worse than it on the left-out prompts."""
    t0 = time.perf_counter()
    try:
        skips = skips_for_speedup(steps, target_speedup)
    except CalibrationError as e:
        raise ProfileError(str(e)) from None
    ks = comfy.samplers.KSampler(
        model, steps=steps, device=model.load_device, sampler=sampler_name, scheduler=scheduler, denoise=1.0
    )
    sigmas = ks.sigmas
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
    cal = _ComfyCalibration(
        model, noise, samples, sigmas, sampler_name, cfg, negative, seed, extrapolation, vae, batch_rows
    )
    n_p, n_s = len(prompts), noise.shape[0]
    eligible = steps - 1
    greedy_calls = sum(math.ceil((eligible - r) / cal.per_call) for r in range(skips))
    check = bool(check)  # with one prompt the profile's summary says it was not checked
    # the greedy's calls are known (with the check: once more per prompt, on the others); the local search adds
    calls = n_p + 1 + n_p * greedy_calls + (n_p * (n_p - 1) * greedy_calls + 2 * n_p if check and n_p > 1 else 0)
    total = [calls]
    pbar = comfy.utils.ProgressBar(calls, node_id=node_id)

    def on_call():
        total[0] = max(total[0], cal.calls)
        pbar.update_absolute(cal.calls, total[0])

    cal.on_call = on_call
    full = torch.ones(n_s, steps, dtype=torch.bool)
    refs = [cal.run(p, full) for p in prompts]
    starts = {"default": cal.default_path(prompts[0], skips)} if skips else {}

    def expect(n_prompts: int, candidates: int):
        """The bar's total covers the calls about to be made and one more (the local searches' passes and the
        check's are not known in advance), so it never shows done while work may remain; it ends at the last call."""
        total[0] = max(total[0], cal.calls + n_prompts * math.ceil(candidates / cal.per_call) + 1)
        pbar.update_absolute(cal.calls, total[0])

    def errors_of(trial, respace=False):  # [C, P * seeds, N], joint: every column of a candidate holds the same path
        expect(n_p, trial.shape[0])
        return torch.cat([cal.errors(p, refs[i], trial[:, i * n_s], respace) for i, p in enumerate(prompts)], 1)

    # where the uncalibrated default re-spaces (respace auto: lms on normal, uni_pc from 20 computed steps,
    # dpmpp_3m_sde) the default competes as it runs, re-spaced
    flow = model_kind(model) == "flow"
    rule = support.lookup(sampler_name).respace
    respaced, _ = auto_respace(rule, flow, sigmas.cpu(), steps - skips)
    if respaced and skips:
        starts["default"] = default_path_as_run(rule, sigmas.cpu(), starts["default"])

    def validate(rows):  # errors_of over whole prompts (rows p * seeds .. p * seeds + seeds - 1), in order
        chosen = sorted({r // n_s for r in rows})

        def errs(trial):  # [C, len(rows), N]: each prompt's seeds share their path
            expect(len(chosen), trial.shape[0])
            return torch.cat([cal.errors(prompts[p], refs[p], trial[:, j * n_s]) for j, p in enumerate(chosen)], 1)

        return errs

    planner = {"sigmas": sigmas.cpu(), "flow": flow}
    g = calibrate_path(
        errors_of,
        n_p * n_s,
        steps,
        skips,
        starts=starts,
        planner=planner,
        reduce="log",
        max_batch=1 << 30,
        validate=validate if check else None,
        folds=[list(range(p * n_s, (p + 1) * n_s)) for p in range(n_p)],
        respaced_errors_of=(lambda trial: errors_of(trial, respace=True)) if respaced and skips else None,
    )
    pbar.update_absolute(cal.calls, cal.calls)  # done
    return SkipProfile(
        path=g.path.tolist(),
        sigmas=[float(s) for s in sigmas.cpu()],
        sampler=sampler_name,
        scheduler=scheduler,
        extrapolation=extrapolation,
        model=model_identity(model),
        cfg=float(cfg),
        prompts=n_p * n_s,
        metric="image_mse" if vae is not None else "latent_mse",
        reduce="log",
        search=search_label(g, bool(skips)),
        greedy_path=g.greedy_path.tolist() if g.greedy_path is not None else [],
        calib_nfe=cal.nfe,
        calib_wall_s=time.perf_counter() - t0,
        errors=g.errors,
        prompt_errors=g.prompt_errors,
        candidates=g.candidates,
        validation=g.validation,
        respace=g.respaced,
    )


class AdaptiveCalibrate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return compat.schema(
            node_id="TempoAdaptiveCalibrate",
            display_name="AdaptiveDiffusion Calibrate",
            category=CATEGORY,
            description="Finds one skip path for this model, sampler, scheduler and step count: the greedy search "
            "of the AdaptiveDiffusion paper (add, one at a time, the skip that raises the error against the full run "
            "least), run jointly on your prompts and the latent's batch, compared with the default's path and the "
            "schedule planner's paths (its settings, and its cost model calibrated on your prompts), then a local "
            "search that moves single skips while that lowers the error. Saves it as a profile file and outputs it "
            "for the AdaptiveDiffusion nodes' profile input. Costs many sampling runs (shown in the progress bar).",
            inputs=[
                io.Model.Input("model", tooltip="The model the profile is for."),
                io.Conditioning.Input("positive", tooltip="A calibration prompt."),
                io.Conditioning.Input("negative", tooltip="The negative prompt (shared by all calibration prompts)."),
                io.Latent.Input(
                    "latent_image",
                    tooltip="The latent to sample from (empty latent); each image of its batch is one more seed.",
                ),
                inputs.seed(),
                inputs.steps(default=20),
                inputs.cfg(),
                inputs.sampler_name("The sampler the profile is for (the profile's skips are searched with it)."),
                inputs.scheduler(),
                io.Float.Input(
                    "target_speedup",
                    default=2.0,
                    min=1.0,
                    max=5.0,
                    step=0.05,
                    tooltip="Steps of the full run divided by the steps the profile's path computes, at least (the "
                    "computed steps are rounded down); so too in network evaluations, but a little less where a "
                    "sampler that evaluates several times per step skips its last step, which evaluates once (heun at "
                    "20 steps: 1.95x).",
                ),
                io.Combo.Input(
                    "extrapolation",
                    options=EXTRAPOLATION_OPTIONS,
                    default="auto",
                    tooltip="How a skipped step predicts the noise direction (as on the AdaptiveDiffusion nodes); "
                    "the profile keeps it.",
                ),
                io.String.Input(
                    "save_name",
                    default="tempo/profile",
                    tooltip=f"File name under output/{FOLDER} ('.json' is added; overwritten).",
                ),
                io.Int.Input(
                    "batch_rows",
                    default=8,
                    min=1,
                    max=256,
                    tooltip="Most images sampled in one call (candidate paths x seeds); lower it if memory runs out.",
                ),
                io.Boolean.Input(
                    "check",
                    default=False,
                    optional=True,
                    tooltip="With two or more prompts: run the search once more per prompt with that prompt left out, "
                    "and keep the default's path if the searched path does worse than it on the left-out prompts "
                    "(a path fitted to a few prompts may not carry over to others). Costs about one more search per "
                    "prompt.",
                ),
                io.Vae.Input(
                    "vae",
                    optional=True,
                    tooltip="Optional: measure the error on decoded images (the paper's protocol) instead of latents.",
                ),
                io.Conditioning.Input("positive_2", optional=True, tooltip="Another calibration prompt."),
                io.Conditioning.Input("positive_3", optional=True, tooltip="Another calibration prompt."),
                io.Conditioning.Input("positive_4", optional=True, tooltip="Another calibration prompt."),
            ],
            outputs=[
                PROFILE.Output(display_name="profile", tooltip="The skip profile, for the AdaptiveDiffusion nodes."),
                io.String.Output(display_name="profile_name", tooltip="The saved file, relative to its folder."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, sampler_name=None):
        if sampler_name is None:
            return True
        return _check_sampler_name(sampler_name)

    @classmethod
    def execute(
        cls,
        model,
        positive,
        negative,
        latent_image,
        seed,
        steps,
        cfg,
        sampler_name,
        scheduler,
        target_speedup,
        extrapolation,
        save_name,
        batch_rows=8,
        check=False,
        vae=None,
        positive_2=None,
        positive_3=None,
        positive_4=None,
    ) -> io.NodeOutput:
        _check_scheduler(scheduler)
        if extrapolation not in EXTRAPOLATION_OPTIONS:
            raise ProfileError(f"extrapolation: expected one of {EXTRAPOLATION_OPTIONS}, got {extrapolation!r}")
        name = _checked(files.safe_save_name, save_name, "save_name", SUFFIX)
        root = os.path.join(folder_paths.get_output_directory(), FOLDER)
        path = _checked(files.inside, os.path.join(root, *name.split("/")) + SUFFIX, [root], "save_name")
        prompts = [p for p in (positive, positive_2, positive_3, positive_4) if p is not None]
        node_id = getattr(getattr(cls, "hidden", None), "unique_id", None)
        with torch.inference_mode():
            prof = calibrate_in_comfy(
                model,
                prompts,
                negative,
                latent_image,
                seed,
                steps,
                cfg,
                sampler_name,
                scheduler,
                target_speedup,
                extrapolation,
                vae,
                batch_rows,
                node_id,
                check,
            )
        save_profile(prof, path)
        invalidate(FOLDER)
        rel = name + SUFFIX
        return io.NodeOutput(prof, rel, ui=ui.PreviewText(f"{prof.summary()} -> {rel}"))


class SkipProfileLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return compat.schema(
            node_id="TempoAdaptiveProfileLoader",
            display_name="AdaptiveDiffusion Skip Profile Loader",
            category=CATEGORY,
            description="Loads a skip profile saved by AdaptiveDiffusion Calibrate, for the AdaptiveDiffusion nodes' "
            "profile input. The profile holds the steps and sigma schedule it was made for; a run with others is "
            "refused.",
            inputs=[
                io.Combo.Input(
                    "profile_name",
                    options=profile_files(),
                    tooltip=f"The profile file: output/{FOLDER} (Calibrate saves there) or models/{FOLDER}.",
                )
            ],
            outputs=[PROFILE.Output(display_name="profile", tooltip="The skip profile.")],
        )

    @classmethod
    def validate_inputs(cls, profile_name=None):
        if profile_name is None:
            return True
        try:
            files.check_listed_name(str(profile_name), "profile_name")
        except files.FileNameError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, profile_name) -> io.NodeOutput:
        prof = load_profile(resolve_profile(profile_name), "profile_name")
        return io.NodeOutput(prof, ui=ui.PreviewText(prof.summary()))


NODES = [AdaptiveCalibrate, SkipProfileLoader]
