"""DMD / DMD2 nodes: a generator loader, a one/few-step sampler (SAMPLER and KSampler-style), teacher
regression pairs, and a trainer that distils a ComfyUI MODEL into a one-step generator.

The training maths live in ``training/dmd.py`` (plain PyTorch), the sampling loop in
``samplers/dmd.py``, LoRA in ``training/lora.py``; this module only connects them to ComfyUI:

* a ComfyUI model as a k-diffusion denoiser ``D(x, sigma, cond) -> x0`` whose network can be swapped
  (``ComfyDenoiser``: ComfyUI's own ``BaseModel._apply_model`` steps, with the generator's or the fake
  score's copy of ``diffusion_model``), conditioning through ComfyUI's ``extra_conds`` / ``cond_cat``;
* timesteps index the model's own sigma table ``model_sampling.sigmas`` (eps / v / flow);
* files: safetensors in ComfyUI's model folders with the DMD settings in the metadata key
  ``tempo_dmd`` (JSON), checkpoints of a run beside them so an interrupted run resumes.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os

import torch
from torch import nn

import comfy.k_diffusion.sampling as kds
import comfy.model_management as mm
import comfy.model_sampling
import comfy.sample
import comfy.sampler_helpers
import comfy.samplers
import comfy.utils
import folder_paths
import latent_preview
from comfy_api.latest import io, ui

from ..samplers import dmd as dmd_sampling
from ..samplers.finite import nonfinite_note, with_nonfinite_note
from ..samplers.plot import moving_average
from ..training import dmd as dmd_core
from ..training import lora as lora_core
from ..training import run as training_run
from . import compat, files

log = logging.getLogger("comfyui_tempo")

CATEGORY = "sampling/tempo/dmd"
TRAIN_CATEGORY = "training/tempo"
FOLDER = "dmd_generators"  # the pack's model folder type: models/dmd_generators and output/dmd_generators
PAIRS_FOLDER = "dmd_pairs"
CKPT_FOLDER = "dmd_checkpoints"
META_KEY = "tempo_dmd"
FROM_FILE = "from file"
FROM_MODEL = "from model"
EXTENSIONS = {".safetensors"}


class DMDNodeError(ValueError):
    """A DMD node input is wrong; the message starts with the input's name."""


# ----------------------------------------------------------------------------- folders
def _register_folders() -> None:
    """models/<folder> and output/<folder> for generators and pairs (listed by the loader at once)."""
    out = folder_paths.get_output_directory()
    for name in (FOLDER, PAIRS_FOLDER):
        paths = [os.path.join(folder_paths.models_dir, name), os.path.join(out, name)]
        if name not in folder_paths.folder_names_and_paths:
            folder_paths.folder_names_and_paths[name] = (paths, set(EXTENSIONS))
        else:
            for p in paths:
                folder_paths.add_model_folder_path(name, p)


_register_folders()


def _invalidate(folder: str) -> None:
    """Drop ComfyUI's cached file list so a file written now is listed by the next request."""
    folder_paths.filename_list_cache.pop(folder, None)
    helper = getattr(folder_paths, "cache_helper", None)
    if helper is not None and getattr(helper, "cache", None) is not None:
        helper.cache.pop(folder, None)


def generator_files() -> list[str]:
    """The loader's list: the pack's folder, then ``loras/`` and ``diffusion_models/`` safetensors."""
    names = [n for n in folder_paths.get_filename_list(FOLDER) if n.endswith(".safetensors")]
    for folder in ("loras", "diffusion_models"):
        try:
            names += [f"{folder}/{n}" for n in folder_paths.get_filename_list(folder) if n.endswith(".safetensors")]
        except Exception:  # a folder type this ComfyUI does not have
            pass
    return names


def _folder_paths_of(folder: str) -> list[str]:
    try:
        return list(folder_paths.get_folder_paths(folder))
    except Exception:  # a folder type this ComfyUI does not have
        return []


def resolve_generator(name: str) -> str:
    """generator_name -> its file in models/ or output/dmd_generators, loras/ or diffusion_models/ (never
    anywhere else: absolute paths and drive letters are refused, '..' is refused by ComfyUI's get_full_path)."""
    name = _checked(files.check_listed_name, name, "generator_name")
    folder = FOLDER
    for f in ("loras", "diffusion_models"):
        if name.startswith(f + "/"):
            folder, name = f, name[len(f) + 1:]
            break
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise DMDNodeError(f"generator_name: no file {name!r} in models/{FOLDER}, output/{FOLDER}, loras or diffusion_models")
    return _checked(files.inside, path, _folder_paths_of(folder), "generator_name")


def _checked(check, *args):
    """A ``files`` check with its FileNameError raised as the node's error (same message)."""
    try:
        return check(*args)
    except files.FileNameError as e:
        raise DMDNodeError(str(e)) from None


def _safe_name(save_name: str, what: str = "save_name") -> str:
    """save_name -> "dir/name" that stays in output/<folder> on every OS (``files.safe_save_name``)."""
    return _checked(files.safe_save_name, save_name, what)


def _output_path(folder: str, name: str, suffix: str) -> str:
    """output/<folder>/<name><suffix>, checked to stay inside output/<folder>."""
    root = os.path.join(folder_paths.get_output_directory(), folder)
    return _checked(files.inside, os.path.join(root, *name.split("/")) + suffix, [root], "save_name")


# ----------------------------------------------------------------------------- model sampling
def model_kind(model, what: str = "model") -> tuple[str, torch.Tensor, object]:
    """("eps" | "v" | "flow", ascending sigma table, model_sampling) of a ComfyUI MODEL, or a clear error."""
    try:
        ms = model.get_model_object("model_sampling")
    except Exception:
        ms = getattr(getattr(model, "model", None), "model_sampling", None)
    if ms is None:
        raise DMDNodeError(f"{what}: expected a ComfyUI MODEL with a model_sampling, got {type(model).__name__}")
    cms = comfy.model_sampling
    if isinstance(ms, cms.CONST):
        kind = "flow"
    elif isinstance(ms, (cms.EDM, cms.X0)) or not isinstance(ms, cms.EPS):
        kind = None
    elif isinstance(ms, cms.V_PREDICTION):
        kind = "v"
    else:
        kind = "eps"
    sigmas = getattr(ms, "sigmas", None)
    if kind is None or not isinstance(sigmas, torch.Tensor) or sigmas.numel() < 2:
        raise DMDNodeError(
            f"{what}: DMD needs an eps, v-prediction or flow (CONST) model with a sigma table; this model's "
            f"model sampling is {type(ms).__name__} ({', '.join(b.__name__ for b in type(ms).__mro__ if b.__module__ == cms.__name__)})"
        )
    return kind, sigmas.detach().float().cpu(), ms


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

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False):
        extra_args["denoise_mask"] = denoise_mask
        inner = model_wrap.inner_model
        ms = inner.model_sampling
        kind, table, _ = _kind_of_sampling(ms)
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
            model_k, x, sigmas, extra_args=extra_args, callback=k_callback, disable=disable_pbar,
            noise_sampler=ns, model_type=kind,
            renoise_fn=lambda x0, n, s: ms.noise_scaling(s, n, x0),  # the model's own re-noising (noise_scale)
        )
        out = ms.inverse_noise_scaling(sigmas[-1], samples)
        note = nonfinite_note(out)
        if note:  # a SAMPLER has no report of its own: the console
            log.warning("DMD Sampler: %s", note)
        return out


def _kind_of_sampling(ms):
    class _M:
        def get_model_object(self, name):
            return ms

    return model_kind(_M())


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
                    "timesteps", default=FROM_MODEL,
                    tooltip=TIMESTEPS_TOOLTIP + "; with a MODEL that has none, the SIGMAS given to the sampler node are used "
                    "(e.g. BasicScheduler simple, 4 steps = 999/749/499/249).",
                ),
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
                io.Model.Input("model", tooltip="The generator (from DMD Generator Loader, DMD Trainer, or a DMD2 UNet/LoRA "
                               "loaded with UNETLoader/LoraLoader)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the noise (and of the fresh noise between steps)."),
                io.String.Input("timesteps", default=FROM_MODEL,
                                tooltip=TIMESTEPS_TOOLTIP + "; a MODEL without them gets one step at 999."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance. DMD generators have the guidance baked in: keep 1 "
                               "(one network evaluation per step, no negative needed)."),
                io.Conditioning.Input("positive", tooltip="The conditioning describing what to generate."),
                io.Latent.Input("latent_image", tooltip="An empty latent of the size to generate."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="The conditioning to steer away from; only used (and required) when cfg != 1."),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="The generated latent.")],
        )

    @classmethod
    def execute(cls, model, seed, timesteps, cfg, positive, latent_image, negative=None) -> io.NodeOutput:
        kind, table, _ = model_kind(model)
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
            model, noise, float(cfg), DMDSampler(ts), sigmas, positive, negative or [], samples_in,
            noise_mask=latent.get("noise_mask"), callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed,
        )
        out = latent.copy()
        out["samples"] = samples
        return io.NodeOutput(out, ui=ui.PreviewText(with_nonfinite_note(f"DMD: {len(ts)} step(s) at t = {ts} ({kind})", samples)))


# ----------------------------------------------------------------------------- loader
def read_generator(path: str, what: str = "generator_name") -> tuple[dict, dict | None]:
    """(state dict, DMD settings or None) of a generator file (``samplers.dmd.read_generator``: either metadata
    layout, safetensors only); its errors named ``what``."""
    try:
        return dmd_sampling.read_generator(path)
    except dmd_sampling.DMDSamplingError as e:
        raise DMDNodeError(what + str(e)[len("path"):]) from None


def _metadata_object(meta: dict, what: str, path: str) -> dict:
    """The pack's metadata entry of a file (a JSON object; {} when absent), or a clear error naming ``what`` and the file."""
    try:
        return dmd_sampling.metadata_object(meta) or {}
    except dmd_sampling.DMDSamplingError as e:
        raise DMDNodeError(f"{what}: {os.path.basename(path)!r} has {str(e)[len('path: '):]}") from None


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
    if sd and all(k.startswith("diffusion_model.") for k in sd) and not any(k.startswith("diffusion_model.") for k in own):
        sd = {k[len("diffusion_model."):]: v for k, v in sd.items()}  # saved with the checkpoint prefix
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
                io.Combo.Input("generator_name", options=generator_files(),
                               tooltip=f"The generator file: models/{FOLDER} or output/{FOLDER} (DMD Trainer saves there), "
                               "or loras/..., diffusion_models/... Safetensors only."),
                io.Int.Input("conditioning_timestep", default=-1, min=-1, max=10000,
                             tooltip="-1 = from the file. The timestep a one-step generator is evaluated at "
                             "(999; 399 for DMD2's released 1-step SDXL UNet)."),
                io.String.Input("timesteps", default=FROM_FILE,
                                tooltip="'from file', or comma-separated decreasing timesteps for a few-step generator "
                                "('999,749,499,249' for DMD2 4-step). A one-step generator uses its conditioning timestep."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="LoRA strength (1 = as trained). Ignored for full weights."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The generator, ready for DMD Sampler / DMD KSampler."),
                io.Sigmas.Output(display_name="SIGMAS", tooltip="The generator's sigmas (for SamplerCustom)."),
                io.Int.Output(display_name="conditioning_timestep", tooltip="The conditioning timestep in use."),
                io.String.Output(display_name="timesteps", tooltip="The step schedule in use, e.g. '999' or '999,749,499,249'."),
            ],
        )

    @classmethod
    def execute(cls, model, generator_name, conditioning_timestep=-1, timesteps=FROM_FILE, strength=1.0) -> io.NodeOutput:
        kind, table, _ = model_kind(model)
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
                raise DMDNodeError(f"conditioning_timestep: expected -1 or an integer in [0, {T - 1}], got {conditioning_timestep}")
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
        return io.NodeOutput(new_model, sigmas, ct, text,
                             ui=ui.PreviewText(f"{os.path.basename(path)}: {fmt}, {kind}, t_c {ct}, timesteps {text}"))

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


# ----------------------------------------------------------------------------- ComfyUI model as a denoiser
class ComfyDenoiser(nn.Module):
    """``D(x, sigma, cond=kwargs) -> x0`` of a ComfyUI ``BaseModel`` with ``net`` in place of its
    ``diffusion_model`` (``BaseModel._apply_model``'s steps: input scaling, timestep, extra conds,
    ``calculate_denoised``). ``cond`` is a dict of model keyword arguments (``c_crossattn``, ``y``...)."""

    def __init__(self, base_model, net: nn.Module):
        super().__init__()
        self.net = net
        object.__setattr__(self, "_base", base_model)

    def forward(self, x, sigma, cond=None):
        base = self._base
        ms = base.model_sampling
        kwargs = dict(cond or {})
        c_concat = kwargs.pop("c_concat", None)
        context = kwargs.pop("c_crossattn", None)
        sigma = sigma.to(x.dtype).reshape(-1)
        if sigma.numel() == 1 and x.shape[0] > 1:
            sigma = sigma.expand(x.shape[0])
        xc = ms.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, c_concat.to(xc.device, xc.dtype)], dim=1)
        dtype = base.manual_cast_dtype or _param_dtype(self.net, x.dtype)
        xc = xc.to(dtype)
        t = ms.timestep(sigma).float()
        if context is not None:
            context = context.to(xc.device, dtype)
        extra = {k: (v.to(xc.device, dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in kwargs.items()}
        t = base.process_timestep(t, x=x, **extra)
        out = self.net(xc, t, context=context, control=None, transformer_options={}, **extra).float()
        return ms.calculate_denoised(sigma, out, x)


def _param_dtype(net: nn.Module, default: torch.dtype) -> torch.dtype:
    for p in net.parameters():
        if p.is_floating_point():
            return p.dtype
    return default


def encode_conditioning(base_model, conditioning, latent_shape, device, what: str, prompt_type: str = "positive") -> list[dict]:
    """Each entry of a CONDITIONING -> its processed model conds for a batch of one (``extra_conds``)."""
    if not isinstance(conditioning, list) or len(conditioning) == 0:
        raise DMDNodeError(f"{what}: expected a CONDITIONING with at least one entry (combine several with Conditioning (Combine))")
    template = torch.zeros((1,) + tuple(latent_shape), device=device)
    items = []
    for entry in comfy.sampler_helpers.convert_cond(conditioning):
        params = entry.copy()
        params.update(device=device, noise=template, width=latent_shape[-1] * 8, height=latent_shape[-2] * 8,
                      prompt_type=prompt_type)
        params.pop("model_conds", None)
        try:
            conds = base_model.extra_conds(**params)
        except Exception as e:
            raise DMDNodeError(f"{what}: this conditioning does not fit the model ({type(e).__name__}: {e})") from None
        item = {}
        for k, v in conds.items():
            c = v.process_cond(batch_size=1, device=device, area=None)
            if isinstance(getattr(c, "cond", None), torch.Tensor):  # ordinary tensors (autograd may save them)
                c.cond = c.cond.detach().clone().to(device)
            item[k] = c
        items.append(item)
    return items


def collate_conds(items):
    if all(i is None for i in items):
        return None
    return comfy.samplers.cond_cat(list(items))


def to_trainable(net: nn.Module, trainable: bool = True) -> nn.Module:
    """A copy of ``net`` with ordinary (non-inference) float32 tensors, built outside inference mode.

    ``trainable``: every floating-point parameter requires grad (else none does). The flag is set here,
    never copied: ComfyUI >= 0.30 builds diffusion models with ``requires_grad_(False)``."""
    with torch.inference_mode(False):
        twin = copy.deepcopy(net)
        for mod in twin.modules():
            for key, p in list(mod._parameters.items()):
                if p is not None:
                    t = p.detach().clone()
                    mod._parameters[key] = nn.Parameter(t.float() if t.is_floating_point() else t, requires_grad=False)
            for key, b in list(mod._buffers.items()):
                if b is not None and b.is_inference():
                    mod._buffers[key] = b.clone()
    return compat.make_trainable(twin) if trainable else twin


def _has_inference_tensors(net: nn.Module) -> bool:
    return any(t.is_inference() for t in list(net.parameters()) + list(net.buffers()))


# ----------------------------------------------------------------------------- pictures
_COLORS = [(90, 160, 255), (240, 120, 90), (110, 210, 120), (230, 190, 70), (200, 130, 230)]


def plot_losses(history: dict[str, list[tuple[int, float]]], width: int = 640, height: int = 300) -> torch.Tensor:
    """IMAGE [1, H, W, 3]: one panel per loss (own y range, step on x), drawn with Pillow."""
    import numpy as np
    from PIL import Image, ImageDraw

    keys = [k for k in ("loss_dm", "loss_fake", "loss_reg", "loss_gan_g", "loss_gan_d") if history.get(k)]
    img = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(img)
    if not keys:
        draw.text((8, 8), "no losses yet", fill=(220, 220, 220))
    else:
        ph = height // len(keys)
        for i, k in enumerate(keys):
            pts = history[k]
            top, bottom, left, right = i * ph + 16, (i + 1) * ph - 6, 50, width - 8
            steps = [p[0] for p in pts]
            vals = np.array([p[1] for p in pts], dtype=np.float64)
            if len(vals) > 20:  # a moving average over ~1/20 of the run, the raw curve is noisy
                vals = moving_average(vals, len(vals) // 20)
            lo, hi = float(np.nanmin(vals)), float(np.nanmax(vals))
            if not math.isfinite(lo) or not math.isfinite(hi):
                lo, hi = 0.0, 1.0
            if hi - lo < 1e-12:
                hi = lo + 1e-12
            s0, s1 = min(steps), max(max(steps), min(steps) + 1)
            draw.rectangle([left, top, right, bottom], outline=(90, 90, 100))
            xy = [(left + (s - s0) / (s1 - s0) * (right - left), bottom - (v - lo) / (hi - lo) * (bottom - top))
                  for s, v in zip(steps, vals)]
            if len(xy) > 1:
                draw.line(xy, fill=_COLORS[i % len(_COLORS)], width=1)
            draw.text((left + 4, top - 14), f"{k}  last {pts[-1][1]:.4g}  steps {s0}-{s1}", fill=(220, 220, 220))
            draw.text((2, top), f"{hi:.3g}", fill=(150, 150, 160))
            draw.text((2, bottom - 10), f"{lo:.3g}", fill=(150, 150, 160))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).unsqueeze(0)


def latent_picture(model, latent_raw: torch.Tensor, vae=None) -> torch.Tensor:
    """IMAGE of raw latents: the VAE's decode when given, else the model's latent RGB factors (or
    the first three channels), upscaled 8x."""
    if vae is not None:
        # without autograd: the trainer runs with gradients on, and a VAE from a loader node holds inference
        # tensors, which autograd refuses to save ("Inference tensors cannot be saved for backward")
        with torch.inference_mode():
            return vae.decode(latent_raw).clone()
    lf = model.model.latent_format
    x = latent_raw.float()
    factors = getattr(lf, "latent_rgb_factors", None)
    if factors is not None and len(factors) == x.shape[1]:
        f = torch.tensor(factors, dtype=x.dtype)
        rgb = torch.einsum("bchw,cr->bhwr", lf.process_in(x), f)
        rgb = ((rgb + 1) / 2).clamp(0, 1)
    else:
        c = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
        lo = c.amin(dim=(2, 3), keepdim=True)
        hi = c.amax(dim=(2, 3), keepdim=True)
        rgb = ((c - lo) / (hi - lo).clamp_min(1e-6)).permute(0, 2, 3, 1)
    return rgb.repeat_interleave(8, 1).repeat_interleave(8, 2).contiguous()


# ----------------------------------------------------------------------------- regression pairs
def _latent_shape(model, width: int, height: int, what_w: str = "width", what_h: str = "height") -> tuple[int, int, int]:
    for name, v in ((what_w, width), (what_h, height)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 8 or v % 8:
            raise DMDNodeError(f"{name}: expected a multiple of 8 (pixels; the latent is 1/8 of it), got {v!r}")
    lf = model.model.latent_format
    dims = int(getattr(lf, "latent_dimensions", 2))
    if dims != 2:  # a video (3) or audio (1) model: the trainer and the pairs make [B, C, H, W] latents only
        raise DMDNodeError(f"teacher: DMD training serves image models ([B, C, H, W] latents); this model's latent format "
                           f"{type(lf).__name__} has {dims} spatial dimensions (video or audio)")
    ch = int(getattr(lf, "latent_channels", 4))
    return (ch, height // 8, width // 8)


def _teacher_denoiser(teacher):
    mm.load_models_gpu([teacher], force_full_load=True)
    base = teacher.model
    return base, ComfyDenoiser(base, base.diffusion_model), teacher.load_device


def pairs_path(name: str) -> str:
    """regression_pairs -> its file in models/ or output/dmd_pairs (absolute paths and drive letters refused)."""
    name = (name or "").strip()
    if not name:
        raise DMDNodeError("regression_pairs: expected a file name")
    name = _checked(files.check_listed_name, name, "regression_pairs")
    if not name.endswith(".safetensors"):
        name += ".safetensors"
    path = folder_paths.get_full_path(PAIRS_FOLDER, name)
    if path is None:
        raise DMDNodeError(f"regression_pairs: no file {name!r} in models/{PAIRS_FOLDER} or output/{PAIRS_FOLDER}")
    return _checked(files.inside, path, _folder_paths_of(PAIRS_FOLDER), "regression_pairs")


class DMDRegressionPairs(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return compat.schema(
            node_id="TempoDMDRegressionPairs",
            display_name="DMD Regression Pairs",
            category=TRAIN_CATEGORY,
            description="Teacher ODE pairs for DMD's regression loss: noise z and the teacher's deterministic "
            "sample from it (Heun, with CFG), for each conditioning entry, saved as safetensors in "
            f"output/{PAIRS_FOLDER} for DMD Trainer.",
            inputs=[
                io.Model.Input("teacher", tooltip="The teacher model (eps, v-prediction or flow)."),
                io.Conditioning.Input("positive", tooltip="One pair set per entry (combine several with Conditioning (Combine))."),
                io.Conditioning.Input("negative", tooltip="The unconditional / negative conditioning for CFG."),
                io.Int.Input("width", default=512, min=8, max=8192, step=8, tooltip="Image width in pixels (multiple of 8)."),
                io.Int.Input("height", default=512, min=8, max=8192, step=8, tooltip="Image height in pixels (multiple of 8)."),
                io.Int.Input("pairs_per_conditioning", default=16, min=1, max=100000, tooltip="Pairs made per conditioning entry."),
                io.Int.Input("steps", default=25, min=1, max=1000, tooltip="Heun steps of the teacher's ODE (2*steps-1 evaluations)."),
                io.Float.Input("guidance", default=1.75, min=0.0, max=100.0, step=0.05,
                               tooltip="The teacher's CFG scale (use the trainer's guidance)."),
                io.Int.Input("conditioning_timestep", default=999, min=0, max=10000,
                             tooltip="The generator's conditioning timestep (the ODE starts there from the same noise)."),
                io.Int.Input("batch_size", default=8, min=1, max=4096, tooltip="Pairs computed per teacher call."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the noise."),
                io.String.Input("save_name", default="dmd/pairs", tooltip=f"File name under output/{PAIRS_FOLDER} (overwritten)."),
            ],
            outputs=[io.String.Output(display_name="regression_pairs",
                                      tooltip="The saved file's name, for DMD Trainer's regression_pairs input.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, teacher, positive, negative, width, height, pairs_per_conditioning, steps, guidance,
                conditioning_timestep, batch_size, seed, save_name) -> io.NodeOutput:
        kind, table, _ = model_kind(teacher, "teacher")
        shape = _latent_shape(teacher, width, height)
        name = _safe_name(save_name)
        if not 0 <= conditioning_timestep < table.numel():
            raise DMDNodeError(f"conditioning_timestep: expected an integer in [0, {table.numel() - 1}], got {conditioning_timestep}")
        base, teacher_d, device = _teacher_denoiser(teacher)
        pos = encode_conditioning(base, positive, shape, device, "positive")
        neg = encode_conditioning(base, negative, shape, device, "negative", "negative")[0]
        schedule = dmd_core.NoiseSchedule(kind, table)
        g = torch.Generator().manual_seed(int(seed))
        n_total = len(pos) * pairs_per_conditioning
        z_all = torch.randn((n_total,) + shape, generator=g)
        ci_all = torch.arange(len(pos)).repeat_interleave(pairs_per_conditioning)
        targets = []
        pbar = comfy.utils.ProgressBar(n_total)
        with torch.no_grad():
            for i in range(0, n_total, batch_size):
                z = z_all[i:i + batch_size].to(device)
                ci = ci_all[i:i + batch_size]
                cond = collate_conds([pos[int(c)] for c in ci])
                unc = collate_conds([neg] * z.shape[0])
                y = dmd_core.teacher_ode_samples(teacher_d, z, schedule, conditioning_timestep, steps, cond, unc, guidance)
                targets.append(y.float().cpu())
                pbar.update_absolute(min(i + batch_size, n_total), n_total)
        meta = {META_KEY: json.dumps({"kind": "regression_pairs", "model_type": kind, "conditioning_timestep": int(conditioning_timestep),
                                      "steps": int(steps), "guidance": float(guidance), "conditionings": len(pos),
                                      "latent_shape": list(shape), "seed": int(seed)})}
        path = _output_path(PAIRS_FOLDER, name, ".safetensors")
        from safetensors.torch import save_file

        tensors = {"noise": z_all.contiguous(), "target": torch.cat(targets).contiguous(), "cond_index": ci_all.contiguous()}
        training_run.atomic_save(lambda p: save_file(tensors, p, metadata=meta), path)
        _invalidate(PAIRS_FOLDER)
        rel = name + ".safetensors"
        return io.NodeOutput(rel, ui=ui.PreviewText(f"{n_total} pairs ({len(pos)} conditionings, {steps} Heun steps) -> {rel}"))


def load_pairs(name: str, kind: str, ct: int, shape, n_conds: int):
    from safetensors import safe_open

    path = pairs_path(name)
    try:
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = set(f.keys())
    except Exception as e:
        raise DMDNodeError(f"regression_pairs: {os.path.basename(path)!r} is not a readable safetensors file "
                           f"({type(e).__name__})") from None
    info = _metadata_object(meta, "regression_pairs", path)
    if not {"noise", "target"} <= keys:
        raise DMDNodeError(f"regression_pairs: {os.path.basename(path)!r} is not a pairs file (no noise/target tensors)")
    sd = comfy.utils.load_torch_file(path, safe_load=True)
    if tuple(sd["noise"].shape[1:]) != tuple(shape):
        raise DMDNodeError(f"regression_pairs: latents of shape {tuple(sd['noise'].shape[1:])}, the trainer's are {tuple(shape)} "
                           "(width/height differ)")
    if info.get("conditioning_timestep") is not None and int(info["conditioning_timestep"]) != ct:
        raise DMDNodeError(f"regression_pairs: made at conditioning timestep {info['conditioning_timestep']}, the trainer uses {ct}")
    if info.get("model_type") and info["model_type"] != kind:
        raise DMDNodeError(f"regression_pairs: made with a {info['model_type']} teacher, this teacher is {kind}")
    ci = sd.get("cond_index")
    if ci is not None and int(ci.max()) >= n_conds:
        raise DMDNodeError(f"regression_pairs: made for {int(ci.max()) + 1} conditionings, positive has {n_conds}")
    return dmd_core.RegressionPairs(sd["noise"].float(), sd["target"].float(), ci.long() if ci is not None else None)


# ----------------------------------------------------------------------------- trainer
def _progress_text(text: str, node_id) -> None:
    try:
        from server import PromptServer

        if node_id is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(text, node_id)
    except Exception:
        pass


class DMDTrainerNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return compat.schema(
            node_id="TempoDMDTrainer",
            display_name="DMD Trainer",
            category=TRAIN_CATEGORY,
            description="Distils a teacher MODEL into a one-step generator with DMD / DMD2 (distribution matching with a "
            "trained fake score, optional regression loss). Runs inside ComfyUI with its progress bar; Cancel saves a "
            f"checkpoint and resume continues from it. The generator is saved to output/{FOLDER} (listed by DMD Generator "
            "Loader at once) and returned as a MODEL.",
            inputs=[
                io.Model.Input("teacher", tooltip="The teacher (eps, v-prediction or flow). Its LoRAs/patches are part of it."),
                io.Conditioning.Input("positive", tooltip="The prompts to distil: every entry is one conditioning "
                                      "(combine several with Conditioning (Combine)); each sample draws one."),
                io.Conditioning.Input("negative", tooltip="The negative / empty prompt for the teacher's CFG."),
                io.Int.Input("width", default=512, min=8, max=8192, step=8, tooltip="Image width in pixels (multiple of 8)."),
                io.Int.Input("height", default=512, min=8, max=8192, step=8, tooltip="Image height in pixels (multiple of 8)."),
                io.Int.Input("batch_size", default=1, min=1, max=4096, tooltip="Generator samples per step."),
                io.Int.Input("steps", default=1000, min=1, max=10**7,
                             tooltip="Total training steps (one DMD2 iteration each; the generator updates every update_ratio-th)."),
                io.Float.Input("generator_lr", default=1e-5, min=1e-9, max=1.0, step=1e-6, round=1e-9,
                               tooltip="AdamW learning rate of the generator (DMD2: SD1.5 1e-5, SDXL 5e-7; LoRA ~5e-5 or more)."),
                io.Float.Input("fake_lr", default=1e-5, min=1e-9, max=1.0, step=1e-6, round=1e-9,
                               tooltip="AdamW learning rate of the fake score."),
                io.Float.Input("guidance", default=1.75, min=0.0, max=100.0, step=0.05,
                               tooltip="CFG scale of the real score (the teacher); baked into the generator (DMD2: SD1.5 1.75, SDXL 8)."),
                io.Int.Input("update_ratio", default=5, min=1, max=100,
                             tooltip="Fake-score updates per generator update (DMD2's two-time-scale rule: 5, SD1.5 10)."),
                io.Int.Input("conditioning_timestep", default=999, min=0, max=10000,
                             tooltip="The timestep the generator is evaluated at (999; DMD2's 1-step SDXL used 399)."),
                io.Int.Input("generator_steps", default=1, min=1, max=50,
                             tooltip="1 = one-step generator at conditioning_timestep; n > 1 = DMD2 multi-step generator at "
                             "range(T-1, 0, -T/n) (4: 999/749/499/249), trained with backward simulation."),
                io.Int.Input("warmup_steps", default=500, min=0, max=10**6, tooltip="Linear learning-rate warm-up (optimizer steps)."),
                io.Float.Input("regression_weight", default=0.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of DMD1's regression loss on teacher pairs (0 = off, DMD2; DMD1 used 0.25)."),
                io.String.Input("regression_pairs", default="",
                                tooltip="Pairs file from DMD Regression Pairs (output/dmd_pairs/...); needed when regression_weight > 0."),
                io.Float.Input("gan_weight", default=0.0, min=0.0, max=10.0, step=0.001, round=1e-5,
                               tooltip="DMD2's GAN loss weight for the generator (SD1.5 1e-3, SDXL 5e-3; 0 = off). The "
                               "critic is a head on the fake score's bottleneck, trained with weight 1e-2 on the regression "
                               "pairs' teacher samples as real data (so it needs regression_pairs)."),
                io.Int.Input("lora_rank", default=0, min=0, max=1024,
                             tooltip="0 = train full weights (two copies of the network); >0 = LoRA of this rank on the generator "
                             "and the fake score, which then share the teacher's weights (saved as a LoRA)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of every random draw of the run (a resumed run continues the same sequence)."),
                io.String.Input("save_name", default="dmd/generator",
                                tooltip=f"Generator file name under output/{FOLDER} (and the run's checkpoint under output/{CKPT_FOLDER}: "
                                "one file per save_name, overwritten at every save. With lora_rank 0 it holds about 6 float32 copies "
                                "of the diffusion model (generator, fake score, two AdamW moments of each): ~20 GB for SD1.5; "
                                "lora_rank > 0 stores only the LoRA factors). A relative name: no drive, absolute path or '..'."),
                io.Int.Input("checkpoint_interval", default=100, min=1, max=10**6,
                             tooltip="Save a checkpoint every this many steps (also on Cancel and on an error)."),
                io.Boolean.Input("resume", default=True,
                                 tooltip="Continue from save_name's checkpoint when one exists (same settings); off starts over."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute activations in backward: less memory, slower (large models)."),
                io.Vae.Input("vae", optional=True, tooltip="Optional: decodes the sample images (else a latent preview)."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The generator, usable at once (DMD KSampler / DMD Sampler)."),
                io.Image.Output(display_name="loss_curves", tooltip="The training losses."),
                io.Image.Output(display_name="samples", tooltip="One-step samples, one per conditioning (up to 8)."),
                io.Latent.Output(display_name="sample_latents", tooltip="The same samples as a LATENT."),
                io.String.Output(display_name="generator_name", tooltip="The saved file, for DMD Generator Loader."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, teacher, positive, negative, width, height, batch_size, steps, generator_lr, fake_lr, guidance,
                update_ratio, conditioning_timestep, generator_steps, warmup_steps, regression_weight, regression_pairs,
                gan_weight, lora_rank, seed, save_name, checkpoint_interval, resume, gradient_checkpointing=False,
                vae=None) -> io.NodeOutput:
        node_id = getattr(getattr(cls, "hidden", None), "unique_id", None)
        with torch.inference_mode(False), torch.enable_grad():
            return _train(teacher, positive, negative, width, height, batch_size, steps, generator_lr, fake_lr, guidance,
                          update_ratio, conditioning_timestep, generator_steps, warmup_steps, regression_weight,
                          regression_pairs, gan_weight, lora_rank, seed, save_name, checkpoint_interval, resume,
                          gradient_checkpointing, vae, node_id)


def _gan_feature_module(net: nn.Module) -> str | None:
    """The fake score's bottleneck for the GAN head: ComfyUI UNets' middle_block, the testbed's mid."""
    names = dict(net.named_modules())
    mid = names.get("middle_block")
    if isinstance(mid, nn.Sequential) and len(mid):
        # ComfyUI's UNet runs middle_block through forward_timestep_embed, which calls its layers but never
        # middle_block itself (a hook on it does not fire): tap its last layer, whose output is the same
        return f"net.middle_block.{len(mid) - 1}"
    if "net.mid" in names and isinstance(names["net.mid"], nn.ModuleList) and len(names["net.mid"]):
        return f"net.net.mid.{len(names['net.mid']) - 1}"
    return None


def _train(teacher, positive, negative, width, height, batch_size, steps, generator_lr, fake_lr, guidance, update_ratio,
           conditioning_timestep, generator_steps, warmup_steps, regression_weight, regression_pairs, gan_weight, lora_rank,
           seed, save_name, checkpoint_interval, resume, gradient_checkpointing, vae, node_id):
    kind, table, _ = model_kind(teacher, "teacher")
    shape = _latent_shape(teacher, width, height)
    name = _safe_name(save_name)
    T = table.numel()
    if not 0 <= conditioning_timestep < T:
        raise DMDNodeError(f"conditioning_timestep: expected an integer in [0, {T - 1}], got {conditioning_timestep}")
    if not isinstance(positive, list) or len(positive) == 0:
        raise DMDNodeError("positive: expected a CONDITIONING with at least one entry (the list of prompts to distil is empty)")
    if regression_weight > 0 and not (regression_pairs or "").strip():
        raise DMDNodeError("regression_pairs: a pairs file is required when regression_weight > 0 (make one with DMD Regression Pairs)")
    if gan_weight > 0 and not (regression_pairs or "").strip():
        raise DMDNodeError("regression_pairs: a pairs file is required when gan_weight > 0 (its teacher samples are the GAN's real data)")
    gan_module = _gan_feature_module(teacher.model.diffusion_model) if gan_weight > 0 else None
    if gan_weight > 0 and gan_module is None:
        raise DMDNodeError("gan_weight: this model has no bottleneck the GAN head knows (a UNet middle_block); set gan_weight 0")
    denoising = None
    if generator_steps > 1:
        denoising = tuple(dmd_sampling.dmd2_timesteps(int(generator_steps), T))
    config = dmd_core.DMDConfig(
        model_type=kind, conditioning_timestep=int(conditioning_timestep), real_guidance_scale=float(guidance),
        dfake_gen_update_ratio=int(update_ratio), batch_size=int(batch_size), generator_lr=float(generator_lr),
        fake_lr=float(fake_lr), warmup_steps=int(warmup_steps), regression_weight=float(regression_weight),
        seed=int(seed) % (2**63), denoising_timesteps=denoising,
        gen_cls_loss_weight=float(gan_weight), guidance_cls_loss_weight=1e-2 if gan_weight > 0 else 0.0,
        gan_feature_module=gan_module, gradient_checkpointing=bool(gradient_checkpointing),
        mixed_precision="bf16" if mm.get_torch_device().type == "cuda" else "no", lora_rank=int(lora_rank),
    )
    try:
        config.validate(T)
    except dmd_core.DMDConfigError as e:
        raise DMDNodeError(_node_error_name(str(e))) from None

    base, teacher_d, device = _teacher_denoiser(teacher)
    pos = encode_conditioning(base, positive, shape, device, "positive")
    neg = encode_conditioning(base, negative, shape, device, "negative", "negative")[0]
    use_pairs = regression_weight > 0 or gan_weight > 0
    pairs = load_pairs(regression_pairs, kind, int(denoising[0] if denoising else conditioning_timestep), shape, len(pos)) if use_pairs else None

    # the three networks: the teacher's own diffusion model (frozen), and the generator / fake score as
    # trainable copies (full weights) or LoRA copies sharing one set of base weights with the teacher
    src = base.diffusion_model
    if lora_rank > 0:
        shared = to_trainable(src, trainable=False) if _has_inference_tensors(src) else src
        shared.requires_grad_(False)
        real = ComfyDenoiser(base, shared)
        gen_net = lora_core.lora_copy(shared, int(lora_rank))
        fake_net = lora_core.lora_copy(shared, int(lora_rank))
    else:
        real = teacher_d
        gen_net = to_trainable(src)
        fake_net = to_trainable(src)
    gen_net.train()
    fake_net.train()
    trainer = dmd_core.DMDTrainer(
        real, ComfyDenoiser(base, gen_net), ComfyDenoiser(base, fake_net), shape, config,
        conditioning=pos, uncond=neg, collate=collate_conds, sigmas=table,
        regression_pairs=pairs if regression_weight > 0 else None, real_data=pairs if gan_weight > 0 else None, device=device,
    )

    shown = f"output/{CKPT_FOLDER}/{name}.pt"  # not the server's path
    run = training_run.DMDRun(trainer, _output_path(CKPT_FOLDER, name, ".pt"), int(checkpoint_interval), shown=shown,
                              names={"latent_shape": "width/height", "conditioning": "positive"},
                              advice="turn resume off or change save_name")
    try:
        if resume:
            run.resume()
    except training_run.RunError as e:
        raise DMDNodeError(str(e)) from None
    status = f"resumed from step {run.resumed_from}" if run.resumed_from is not None else ""
    pbar = comfy.utils.ProgressBar(steps, node_id=node_id)
    pbar.update_absolute(min(trainer.step_count, steps), steps)

    def on_step(step, total):
        pbar.update_absolute(step, total)  # in the server this also raises on Cancel
        mm.throw_exception_if_processing_interrupted()

    run.train(steps, on_step=on_step, on_status=lambda text: _progress_text(text, node_id))

    # the generator: saved, then applied to a clone of the teacher the same way the loader applies it
    full = lora_rank == 0
    sd, info = run.save_generator(_output_path(FOLDER, name, ".safetensors"), gen_net,
                                  prefix="" if full else "diffusion_model.",
                                  dtype=_param_dtype(src, torch.float32) if full else None, title=name,
                                  info={"base": type(base).__name__ + "/" + type(base.diffusion_model).__name__})
    _invalidate(FOLDER)
    generator = attach_info(apply_generator(teacher, sd, info["format"], 1.0, what="save_name"), info)

    n = min(8, len(pos))
    with torch.no_grad():
        g = torch.Generator(device=device).manual_seed(int(seed) % (2**63))
        x0 = trainer.sample(n, collate_conds(pos[:n]), generator=g)
    raw = base.process_latent_out(x0.float()).cpu()
    samples_img = latent_picture(teacher, raw, vae)
    curves = plot_losses(run.history)
    rel = name + ".safetensors"
    text = (f"DMD Trainer: {status + ', ' if status else ''}{trainer.step_count} steps "
            f"({trainer.generator_steps} generator updates) -> {FOLDER}/{rel}")
    return io.NodeOutput(generator, curves, samples_img, {"samples": raw}, rel, ui=ui.PreviewText(text))


def _node_error_name(msg: str) -> str:
    """Map the core's config names onto the node's input names."""
    for core, node in (("real_guidance_scale", "guidance"), ("dfake_gen_update_ratio", "update_ratio")):
        if msg.startswith(core + ":"):
            return node + msg[len(core):]
    return msg


NODES = [DMDGeneratorLoader, DMDSamplerNode, DMDKSampler, DMDRegressionPairs, DMDTrainerNode]
