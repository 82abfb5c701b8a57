"""DMD / DMD2 sampling nodes: the DMD Generator Loader, the DMD Sampler (a SAMPLER for SamplerCustom) and the
DMD KSampler, for generators the DMD Trainer made (``nodes/dmd_train.py``) or DMD2's released ones.

The sampling loop is ``samplers/dmd.py`` (plain PyTorch; ComfyUI's ``KSAMPLER`` runs it unchanged), the
generator file's reader too; timesteps index the model's own sigma table ``model_sampling.sigmas``
(eps / v / flow). The files and folders are ``nodes/dmd_files.py``; the MODEL adapter ``nodes/comfy_model.py``.
"""

from __future__ import annotations

import logging
import math
import os

import comfy.k_diffusion.sampling as kds
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import io, ui

from ..samplers import dmd as dmd_sampling
from ..samplers.finite import nonfinite_note, with_nonfinite_note
from . import compat, files
from .comfy_model import dmd_schedule
from .dmd_files import FOLDER, META_KEY, DMDNodeError, generator_files, read_generator, resolve_generator

log = logging.getLogger("comfyui_tempo")

CATEGORY = "sampling/tempo/dmd"
FROM_FILE = "from file"
FROM_MODEL = "from model"


# ----------------------------------------------------------------------------- timesteps
def parse_timesteps(text, num_timesteps: int, what: str = "timesteps") -> list[int]:
    try:
        return dmd_sampling.parse_timesteps(text, num_timesteps)
    except dmd_sampling.DMDSamplingError as e:
        raise DMDNodeError(str(e).replace("timesteps:", f"{what}:", 1)) from None


def model_dmd_info(model) -> dict | None:
    info = getattr(model, "model_options", {}).get(META_KEY)
    return dict(info) if isinstance(info, dict) else None


def resolve_timesteps(model, timesteps: str, num_timesteps: int) -> list[int] | None:
    """timesteps input -> a list, or None = use the sigmas given (SamplerCustom)."""
    text = (timesteps or "").strip()
    if text in ("", FROM_MODEL):
        info = model_dmd_info(model) if model is not None else None
        if info and info.get("timesteps"):
            return [int(t) for t in info["timesteps"]]
        return None
    return parse_timesteps(text, num_timesteps)


# ----------------------------------------------------------------------------- sampling
class DMDSampler(comfy.samplers.KSAMPLER):
    """ComfyUI SAMPLER running a DMD generator: pure noise scaled for the first timestep, x0 output,
    fresh re-noising between steps (``samplers.dmd``). ``timesteps`` None: the model's DMD timesteps
    (set by the loader or trainer), else the sigmas the sampler node is given."""

    def __init__(self, timesteps: list[int] | None = None):
        super().__init__(dmd_sampling.sample_dmd_kdiff)
        self.timesteps = timesteps
        self.last_sigmas = None

    def sample(
        self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False
    ):
        extra_args["denoise_mask"] = denoise_mask
        inner = model_wrap.inner_model
        ms = inner.model_sampling
        kind, table = dmd_schedule(None, "model", sampling=ms)
        ts = self.timesteps
        if ts is None:
            info = (extra_args.get("model_options") or {}).get(META_KEY)
            if isinstance(info, dict) and info.get("timesteps"):
                ts = [int(t) for t in info["timesteps"]]
        if ts is not None:
            sigmas = dmd_sampling.timesteps_to_sigmas(ts, table).to(noise.device)
        self.last_sigmas = sigmas
        model_k = comfy.samplers.KSamplerX0Inpaint(model_wrap, sigmas)
        model_k.latent_image = latent_image
        model_k.noise = noise
        s0 = float(sigmas[0])
        if latent_image is None or not bool(latent_image.abs().gt(0).any()):
            x = dmd_sampling.noise_input(noise, s0, kind)
            if latent_image is not None:
                x = x + latent_image * (1 - s0 if kind == "flow" else 1.0)
        else:  # a latent to refine: ComfyUI's own noising (img2img)
            x = ms.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas))
        total = len(sigmas) - 1
        k_callback = None
        if callback is not None:
            k_callback = lambda d: callback(d["i"], d["denoised"], d["x"], total)  # noqa: E731
        seed = extra_args.get("seed", None)
        ns = kds.default_noise_sampler(x, seed=seed)
        samples = dmd_sampling.sample_dmd_kdiff(
            model_k,
            x,
            sigmas,
            extra_args=extra_args,
            callback=k_callback,
            disable=disable_pbar,
            noise_sampler=ns,
            model_type=kind,
            renoise_fn=lambda x0, n, s: ms.noise_scaling(s, n, x0),  # the model's own re-noising (noise_scale)
        )
        out = ms.inverse_noise_scaling(sigmas[-1], samples)
        note = nonfinite_note(out)
        if note:  # a SAMPLER has no report of its own: the console
            log.warning("DMD Sampler: %s", note)
        return out


TIMESTEPS_TOOLTIP = (
    "Generator timesteps, comma-separated and decreasing, as indices into the model's sigma table: '999' (one step), "
    "'399' (DMD2's released 1-step SDXL UNet), '999,749,499,249' (DMD2 4-step). 'from model' takes them from the "
    "DMD Generator Loader / DMD Trainer that produced the MODEL"
)


class DMDSamplerNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return compat.schema(
            node_id="TempoDMDSampler",
            display_name="DMD Sampler",
            category=CATEGORY,
            description="A SAMPLER for SamplerCustom / SamplerCustomAdvanced that runs a DMD / DMD2 generator: pure noise "
            "fed at the first timestep with the input scaling that timestep needs, the x0 output, fresh noise between "
            "steps. Works for eps, v-prediction and flow models. Use cfg 1.",
            inputs=[
                io.String.Input(
                    "timesteps",
                    default=FROM_MODEL,
                    tooltip=TIMESTEPS_TOOLTIP
                    + "; with a MODEL that has none, the SIGMAS given to the sampler node are used "
                    "(e.g. BasicScheduler simple, 4 steps = 999/749/499/249).",
                )
            ],
            outputs=[io.Sampler.Output(tooltip="The DMD sampler.")],
        )

    @classmethod
    def execute(cls, timesteps) -> io.NodeOutput:
        text = (timesteps or "").strip()
        ts = None if text in ("", FROM_MODEL) else parse_timesteps(text, 10**9)
        return io.NodeOutput(DMDSampler(ts))


class DMDKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return compat.schema(
            node_id="TempoDMDKSampler",
            display_name="DMD KSampler",
            category=CATEGORY,
            description="KSampler for DMD / DMD2 generators: one or a few steps at the generator's timesteps "
            "(999, 399 for DMD2's 1-step SDXL UNet, 999/749/499/249 for DMD2 4-step), x0 output, fresh re-noising.",
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="The generator (from DMD Generator Loader, DMD Trainer, or a DMD2 UNet/LoRA "
                    "loaded with UNETLoader / LoraLoaderModelOnly).",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Seed of the noise (and of the fresh noise between steps).",
                ),
                io.String.Input(
                    "timesteps",
                    default=FROM_MODEL,
                    tooltip=TIMESTEPS_TOOLTIP + "; a MODEL without them gets one step at 999.",
                ),
                io.Float.Input(
                    "cfg",
                    default=1.0,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    round=0.01,
                    tooltip="Classifier-free guidance. DMD generators have the guidance baked in: keep 1 "
                    "(one network evaluation per step, no negative needed).",
                ),
                io.Conditioning.Input("positive", tooltip="The conditioning describing what to generate."),
                io.Latent.Input("latent_image", tooltip="An empty latent of the size to generate."),
                io.Conditioning.Input(
                    "negative",
                    optional=True,
                    tooltip="The conditioning to steer away from; only used (and required) when cfg != 1.",
                ),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="The generated latent.")],
        )

    @classmethod
    def execute(cls, model, seed, timesteps, cfg, positive, latent_image, negative=None) -> io.NodeOutput:
        kind, table = dmd_schedule(model)
        ts = resolve_timesteps(model, timesteps, table.numel())
        if ts is None:
            ts = [table.numel() - 1]
        if not positive:
            raise DMDNodeError("positive: expected a CONDITIONING with at least one entry")
        if not math.isclose(float(cfg), 1.0) and not negative:
            raise DMDNodeError("negative: required when cfg != 1 (DMD generators are meant for cfg 1)")
        sigmas = dmd_sampling.timesteps_to_sigmas(ts, table)
        latent = latent_image
        samples_in = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        noise = comfy.sample.prepare_noise(samples_in, seed, latent.get("batch_index"))
        callback = latent_preview.prepare_callback(model, len(ts))
        samples = comfy.sample.sample_custom(
            model,
            noise,
            float(cfg),
            DMDSampler(ts),
            sigmas,
            positive,
            negative or [],
            samples_in,
            noise_mask=latent.get("noise_mask"),
            callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
            seed=seed,
        )
        out = latent.copy()
        out["samples"] = samples
        return io.NodeOutput(
            out, ui=ui.PreviewText(with_nonfinite_note(f"DMD: {len(ts)} step(s) at t = {ts} ({kind})", samples))
        )


# ----------------------------------------------------------------------------- loader
def apply_generator(model, sd: dict, fmt: str, strength: float = 1.0, what: str = "generator_name"):
    """A clone of ``model`` with the generator's weights: LoRA through ComfyUI's own LoRA loader, full
    diffusion-model weights as "set" patches (same keys as ``diffusion_model``'s state dict)."""
    if fmt == "lora":
        import comfy.lora
        import comfy.lora_convert

        key_map = comfy.lora.model_lora_keys_unet(model.model, {})
        loaded = comfy.lora.load_lora(comfy.lora_convert.convert_lora(sd), key_map)
        new_model = model.clone()
        patched = new_model.add_patches(loaded, strength)
        n_layers = len({k.rsplit(".lora_", 1)[0] for k in sd if ".lora_" in k})
        n_patched = len(set(patched))
        if n_patched < n_layers:
            raise DMDNodeError(
                f"{what}: the LoRA patches {n_patched} of its {n_layers} layers on this model: it was made for another base model"
            )
        return new_model
    own = model.model.diffusion_model.state_dict()
    params = {k for k, _ in model.model.diffusion_model.named_parameters()}
    if (
        sd
        and all(k.startswith("diffusion_model.") for k in sd)
        and not any(k.startswith("diffusion_model.") for k in own)
    ):
        sd = {k[len("diffusion_model.") :]: v for k, v in sd.items()}  # saved with the checkpoint prefix
    missing = [k for k in params if k not in sd]
    unknown = [k for k in sd if k not in own]
    bad = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unknown or bad:
        raise DMDNodeError(
            f"{what}: its weights do not fit this base model's diffusion model (missing {len(missing)}, unknown "
            f"{len(unknown)}, wrong shape {len(bad)}; e.g. {(missing + unknown + bad)[:3]})"
        )
    m = model.clone()
    m.add_patches({"diffusion_model." + k: ("set", (sd[k],)) for k in params}, 1.0, 1.0)
    return m


def attach_info(model, info: dict):
    """``model`` carrying its DMD settings (read by the DMD samplers' "from model" timesteps)."""
    model.model_options[META_KEY] = dict(info)
    return model


class DMDGeneratorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return compat.schema(
            node_id="TempoDMDGeneratorLoader",
            display_name="DMD Generator Loader",
            category=CATEGORY,
            description="Loads a distilled DMD generator (full diffusion-model weights or a LoRA, safetensors) onto its "
            "base MODEL. The conditioning timestep and the step schedule come from the file's metadata (written by "
            "DMD Trainer) and are shown as outputs; the inputs override them.",
            inputs=[
                io.Model.Input("model", tooltip="The base model the generator was distilled from (its teacher)."),
                io.Combo.Input(
                    "generator_name",
                    options=generator_files(),
                    tooltip=f"The generator file: models/{FOLDER} or output/{FOLDER} (DMD Trainer saves there), "
                    "or loras/..., diffusion_models/... Safetensors only.",
                ),
                io.Int.Input(
                    "conditioning_timestep",
                    default=-1,
                    min=-1,
                    max=10000,
                    tooltip="-1 = from the file. The timestep a one-step generator is evaluated at "
                    "(999; 399 for DMD2's released 1-step SDXL UNet).",
                ),
                io.String.Input(
                    "timesteps",
                    default=FROM_FILE,
                    tooltip="'from file', or comma-separated decreasing timesteps for a few-step generator "
                    "('999,749,499,249' for DMD2 4-step). A one-step generator uses its conditioning timestep.",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-10.0,
                    max=10.0,
                    step=0.01,
                    tooltip="LoRA strength (1 = as trained). Ignored for full weights.",
                ),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The generator, ready for DMD Sampler / DMD KSampler."),
                io.Sigmas.Output(display_name="SIGMAS", tooltip="The generator's sigmas (for SamplerCustom)."),
                io.Int.Output(display_name="conditioning_timestep", tooltip="The conditioning timestep in use."),
                io.String.Output(
                    display_name="timesteps", tooltip="The step schedule in use, e.g. '999' or '999,749,499,249'."
                ),
            ],
        )

    @classmethod
    def execute(
        cls, model, generator_name, conditioning_timestep=-1, timesteps=FROM_FILE, strength=1.0
    ) -> io.NodeOutput:
        kind, table = dmd_schedule(model)
        path = resolve_generator(generator_name)
        sd, info = read_generator(path)
        T = table.numel()
        ts_text = (timesteps or "").strip()
        from_file_ts = ts_text in ("", FROM_FILE)
        if info is None and (conditioning_timestep < 0 and from_file_ts):
            raise DMDNodeError(
                f"generator_name: {os.path.basename(path)!r} has no DMD metadata ({META_KEY} or dmd.conditioning_timestep): set conditioning_timestep "
                "or timesteps to load it anyway (e.g. DMD2's released SDXL LoRA: timesteps 999,749,499,249), or load it "
                "with LoraLoader and use DMD KSampler"
            )
        info = dict(info or {})
        fmt = info["format"] if info else ("lora" if dmd_sampling.is_lora_keys(sd) else "full")
        if info.get("model_type") and info["model_type"] != kind:
            raise DMDNodeError(
                f"model: the generator was distilled from a {info['model_type']} model, this base model is {kind}"
            )
        if conditioning_timestep >= 0:
            if conditioning_timestep >= T:
                raise DMDNodeError(
                    f"conditioning_timestep: expected -1 or an integer in [0, {T - 1}], got {conditioning_timestep}"
                )
            ct = int(conditioning_timestep)
        else:
            ct = int(info.get("conditioning_timestep", T - 1))
        if from_file_ts:
            ts = [int(t) for t in info.get("timesteps") or []] if conditioning_timestep < 0 else []
            if not ts:
                ts = [ct]
        else:
            ts = parse_timesteps(ts_text, T)
        if ts[0] != ct and len(ts) == 1:
            ts = [ct]
        new_model = apply_generator(model, sd, fmt, strength)
        info.update(format=fmt, conditioning_timestep=ct, timesteps=ts, model_type=kind, file=os.path.basename(path))
        attach_info(new_model, info)
        sigmas = dmd_sampling.timesteps_to_sigmas(ts, table)
        text = ",".join(str(t) for t in ts)
        return io.NodeOutput(
            new_model,
            sigmas,
            ct,
            text,
            ui=ui.PreviewText(f"{os.path.basename(path)}: {fmt}, {kind}, t_c {ct}, timesteps {text}"),
        )

    @classmethod
    def validate_inputs(cls, generator_name=None):
        # declares generator_name only: ComfyUI checks every other input itself (an input named here, or any
        # input at all with **kwargs, skips its min / max / list checks) and reports a failure once per name
        if generator_name is None:  # linked: checked when it runs
            return True
        if not str(generator_name).lower().endswith(".safetensors"):
            return f"generator_name: expected a .safetensors file, got {generator_name!r}"
        try:
            files.check_listed_name(str(generator_name), "generator_name")
        except files.FileNameError as e:
            return str(e)
        return True


NODES = [DMDGeneratorLoader, DMDSamplerNode, DMDKSampler]
