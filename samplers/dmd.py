"""One-step and few-step sampling for DMD / DMD2 generators (plain PyTorch, no ComfyUI import).

A DMD generator is a denoiser ``model(x, sigma, **extra) -> x0`` in the k-diffusion convention
(eps/v: x = x0 + sigma * n in ComfyUI's VE form; flow: x = (1 - sigma) x0 + sigma n), fine-tuned so
that ONE evaluation at a fixed conditioning timestep maps noise to a sample.

* One step (DMD, DMD2 1-step): x = input_scale(sigma_c) * z with z ~ N(0, I), one evaluation at
  sigma_c, the x0 output is the sample. ``input_scale``: eps / v: sqrt(1 + sigma^2) — DMD2 feeds the
  pure N(0, I) latent as the VP model input (tianweiy/DMD2 main/sd_unified_model.py:246), and
  ComfyUI's EPS model divides its VE input by sqrt(1 + sigma^2); ve (EDM): sigma
  (main/edm/train_edm.py:217-225); flow: sqrt((1 - sigma)^2 + sigma^2), the marginal's standard
  deviation for unit data (= 1 at sigma = 1; DMD2 has no flow teacher, the pack's choice).
* Few steps (DMD2 multi-step, main/sd_unified_model.py:131-199 and demo/text_to_image_sdxl.py:147-170):
  predict x0, re-noise it with FRESH Gaussian noise to the next timestep
  (``scheduler.add_noise(x0, randn, t_next)``, here x0 + sigma n for eps/v/ve and
  (1 - sigma) x0 + sigma n for flow), repeat; the last x0 is the sample. This is ComfyUI's
  ``sample_lcm`` update. DMD2's step list: ``range(T - 1, 0, -(T // n))`` = 999, 749, 499, 249.

Timesteps index an ascending sigma table (``sigma_table[t]``; ComfyUI's
``model.model_sampling.sigmas`` is such a table, as is ``training.dmd.NoiseSchedule.sigmas``).
"""

from __future__ import annotations

import json
from typing import Callable, Sequence

import torch

MODEL_TYPES = ("eps", "v", "ve", "flow")


class DMDSamplingError(ValueError):
    """A sampling input is out of range; the message starts with the input's name."""


def _check_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise DMDSamplingError(f"model_type: expected one of {MODEL_TYPES}, got {model_type!r}")


def dmd2_timesteps(num_steps: int = 4, num_timesteps: int = 1000) -> list[int]:
    """DMD2's ``denoising_step_list``: ``range(T - 1, 0, -(T // n))`` (main/sd_unified_model.py:31-33);
    4 steps of 1000 -> [999, 749, 499, 249]; 1 step -> [999]."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= num_timesteps:
        raise DMDSamplingError(f"num_steps: expected an integer in [1, {num_timesteps}], got {num_steps!r}")
    return list(range(num_timesteps - 1, 0, -(num_timesteps // num_steps)))[:num_steps]


def parse_timesteps(text: str | Sequence[int], num_timesteps: int = 1000) -> list[int]:
    """ "999,749,499,249" (or a list) -> strictly decreasing integer timesteps in [0, T)."""
    if isinstance(text, str):
        try:
            ts = [int(float(p)) for p in text.replace(";", ",").split(",") if p.strip()]
        except ValueError:
            raise DMDSamplingError(
                f"timesteps: expected comma-separated integers such as '999,749,499,249', got {text!r}"
            )
    else:
        ts = [int(t) for t in text]
    if not ts:
        raise DMDSamplingError("timesteps: expected at least one timestep")
    if any(not 0 <= t < num_timesteps for t in ts):
        raise DMDSamplingError(f"timesteps: expected integers in [0, {num_timesteps - 1}], got {ts}")
    if any(b >= a for a, b in zip(ts, ts[1:])):
        raise DMDSamplingError(f"timesteps: expected strictly decreasing timesteps, got {ts}")
    return ts


def timesteps_to_sigmas(
    timesteps: Sequence[int] | torch.Tensor, sigma_table: torch.Tensor, append_zero: bool = True
) -> torch.Tensor:
    """Sigmas of integer timesteps from an ascending table (``sigma_table[t]``), in the given order,
    with a final 0 when ``append_zero`` (the k-diffusion sampler convention)."""
    table = torch.as_tensor(sigma_table).reshape(-1)
    t = torch.as_tensor(timesteps, dtype=torch.long).reshape(-1)
    if t.numel() == 0:
        raise DMDSamplingError("timesteps: expected at least one timestep")
    if int(t.min()) < 0 or int(t.max()) >= table.numel():
        raise DMDSamplingError(f"timesteps: expected integers in [0, {table.numel() - 1}], got {t.tolist()}")
    s = table[t.to(table.device)].float()
    if append_zero:
        s = torch.cat([s, s.new_zeros(1)])
    return s


def input_scale(sigma, model_type: str = "eps") -> torch.Tensor:
    """Standard deviation of the generator's pure-noise input at ``sigma`` (module docstring)."""
    _check_type(model_type)
    s = torch.as_tensor(sigma, dtype=torch.float64)
    if model_type in ("eps", "v"):
        return torch.sqrt(1 + s * s)
    if model_type == "ve":
        return s
    return torch.sqrt((1 - s) ** 2 + s * s)


def noise_input(z: torch.Tensor, sigma, model_type: str = "eps") -> torch.Tensor:
    """The generator's input from z ~ N(0, I) at ``sigma``: ``input_scale(sigma) * z``."""
    scale = input_scale(sigma, model_type)
    if scale.ndim:
        scale = scale.reshape((-1,) + (1,) * (z.ndim - 1))
    return z * scale.to(z.device, z.dtype)


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma, model_type: str = "eps") -> torch.Tensor:
    """x at ``sigma`` from x0 and fresh noise: x0 + sigma n (eps/v/ve), (1 - sigma) x0 + sigma n (flow)."""
    _check_type(model_type)
    s = torch.as_tensor(sigma, device=x0.device).to(x0.dtype).reshape(-1)
    s = s.reshape((s.numel() if s.numel() > 1 else 1,) + (1,) * (x0.ndim - 1))
    if model_type == "flow":
        return (1 - s) * x0 + s * noise
    return x0 + s * noise


@torch.no_grad()
def sample_dmd(
    model: Callable,
    z: torch.Tensor,
    sigmas: torch.Tensor,
    model_type: str = "eps",
    extra_args: dict | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: Callable | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """One- or few-step DMD sampling from unit noise ``z``.

    ``sigmas``: the generator's sigmas, descending (``timesteps_to_sigmas``), with or without the
    final 0. Step 0 evaluates ``model`` on ``noise_input(z, sigmas[0])``; each later step on the
    previous x0 re-noised with fresh noise to its sigma (``renoise``). Fresh noise comes from
    ``noise_sampler(sigma_prev, sigma_next)`` or ``torch.randn`` with ``generator``. Returns the
    last x0. One step = exactly one model evaluation.
    """
    extra_args = extra_args or {}
    sig = torch.as_tensor(sigmas).reshape(-1).to(z.device)
    sig = sig[sig > 0]
    if sig.numel() == 0:
        raise DMDSamplingError("sigmas: expected at least one sigma > 0")
    if bool((sig[1:] >= sig[:-1]).any()):
        raise DMDSamplingError(f"sigmas: expected strictly decreasing sigmas, got {sig.tolist()}")
    if noise_sampler is None:

        def noise_sampler(sigma, sigma_next):
            return torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)

    # the one loop: ComfyUI's DMD sampler runs it too
    x = noise_input(z, float(sig[0]), model_type)
    return sample_dmd_kdiff(
        model,
        x,
        torch.cat([sig, sig.new_zeros(1)]),
        extra_args=extra_args,
        callback=callback,
        noise_sampler=noise_sampler,
        model_type=model_type,
    )


@torch.no_grad()
def sample_dmd_kdiff(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    noise_sampler=None,
    model_type: str = "eps",
    renoise_fn: Callable | None = None,
):
    """The same loop with the k-diffusion sampler signature (ComfyUI's KSAMPLER): ``x`` is the
    already-scaled starting latent (ComfyUI scales the noise itself), then x0, re-noise to each next
    sigma with ``noise_sampler(sigma, sigma_next)`` (default: ``torch.randn_like``), as
    ``comfy.k_diffusion.sampling.sample_lcm``. Returns the final x0. ``renoise_fn(x0, noise, sigma)``
    replaces ``renoise`` (ComfyUI passes its ``model_sampling.noise_scaling``, which knows a model's noise scale)."""
    extra_args = extra_args or {}
    if noise_sampler is None:

        def noise_sampler(a, b):
            return torch.randn_like(x)

    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = denoised
        if sigmas[i + 1] > 0:
            noise = noise_sampler(sigmas[i], sigmas[i + 1])
            if renoise_fn is not None:
                x = renoise_fn(denoised, noise, sigmas[i + 1])
            else:
                x = renoise(denoised, noise, sigmas[i + 1], model_type)
    return x


def sigma_c_of(conditioning_timestep: int, sigma_table: torch.Tensor) -> float:
    """The conditioning sigma of a one-step generator (``sigma_table[t_c]``)."""
    return float(timesteps_to_sigmas([conditioning_timestep], sigma_table, append_zero=False)[0])


# --------------------------------------------------------------------------------------------------
# generator files: one layout, written by training.run.write_generator, read here
#
# A .safetensors file whose metadata key "tempo_dmd" holds a JSON object: "kind" ("generator"), "format"
# ("lora" | "full"), "model_type", "conditioning_timestep", "timesteps" and what the run recorded (steps,
# guidance, lora_rank, latent_shape, ...). Files of earlier versions hold flat "dmd.*" strings instead
# (dmd.model_type, dmd.conditioning_timestep, dmd.timesteps; optionally dmd.format, dmd.lora_rank,
# dmd.generator_steps, dmd.ema, dmd.record): they are read into the same dict.

METADATA_KEY = "tempo_dmd"
GENERATOR_FORMATS = ("lora", "full")
LORA_SUFFIXES = (".lora_up.weight", ".lora_down.weight", ".lora_A.weight", ".lora_B.weight")


def is_lora_keys(keys) -> bool:
    """Whether tensor names are LoRA factors (kohya ``lora_up`` / ``lora_down`` or PEFT ``lora_A`` / ``lora_B``)."""
    return any(str(k).endswith(LORA_SUFFIXES) for k in keys)


def generator_metadata(info: dict) -> dict:
    """The safetensors metadata (strings) of a generator file with the DMD settings ``info``."""
    return {METADATA_KEY: json.dumps(info)}


def metadata_object(meta: dict | None, name: str = "path") -> dict | None:
    """The JSON object under ``METADATA_KEY`` (generator and regression-pairs files), None when absent;
    a ``DMDSamplingError`` starting with ``name`` when it is not a JSON object."""
    text = (meta or {}).get(METADATA_KEY)
    if text is None:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        raise DMDSamplingError(f"{name}: unreadable DMD metadata ({METADATA_KEY} is not JSON)") from None
    if not isinstance(info, dict):
        raise DMDSamplingError(
            f"{name}: unreadable DMD metadata ({METADATA_KEY} is a JSON {type(info).__name__}, expected an object)"
        )
    return info


def _flat_metadata(meta: dict) -> dict:
    """The flat ``dmd.*`` strings of earlier versions as the info dict."""
    info: dict = {"kind": "generator", "conditioning_timestep": int(meta["dmd.conditioning_timestep"])}
    if meta.get("dmd.timesteps"):
        info["timesteps"] = parse_timesteps(meta["dmd.timesteps"], 10**9)
    for key in ("model_type", "format"):
        if meta.get(f"dmd.{key}"):
            info[key] = meta[f"dmd.{key}"]
    for key in ("lora_rank", "generator_steps"):
        if meta.get(f"dmd.{key}"):
            info[key] = int(meta[f"dmd.{key}"])
    if meta.get("dmd.ema"):
        info["ema"] = meta["dmd.ema"] == "1"
    if meta.get("dmd.base"):
        info["base"] = meta["dmd.base"]
    if meta.get("dmd.record"):
        info["record"] = json.loads(meta["dmd.record"])
    return info


def parse_generator_metadata(meta: dict | None, keys=(), name: str = "path") -> dict | None:
    """The DMD settings of a generator file from its safetensors metadata (either layout), checked:
    ``conditioning_timestep`` (int) and ``timesteps`` (strictly decreasing ints, the first being the
    conditioning timestep; each filled from the other when one is missing), ``model_type`` (when
    given) one of ``MODEL_TYPES``, ``format`` "lora" | "full" (when absent: "lora" if ``keys``, the
    file's tensor names, are LoRA factors, else "full"). None for a file without DMD metadata (a plain
    LoRA or UNet). Errors are ``DMDSamplingError`` starting with ``name``."""
    meta = dict(meta or {})
    try:
        info = metadata_object(meta, name)
        if info is None:
            if "dmd.conditioning_timestep" not in meta:
                return None
            info = _flat_metadata(meta)
        else:
            info = dict(info)
        if info.get("timesteps") is not None:
            info["timesteps"] = parse_timesteps([int(t) for t in info["timesteps"]], 10**9)
        if info.get("conditioning_timestep") is not None:
            info["conditioning_timestep"] = int(info["conditioning_timestep"])
    except DMDSamplingError as e:
        if str(e).startswith(name + ":"):
            raise
        raise DMDSamplingError(f"{name}: unreadable DMD metadata ({e})") from None
    except (ValueError, TypeError) as e:
        raise DMDSamplingError(f"{name}: unreadable DMD metadata ({type(e).__name__}: {e})") from None
    ts, tc = info.get("timesteps"), info.get("conditioning_timestep")
    if ts and tc is None:
        info["conditioning_timestep"] = tc = ts[0]
    if tc is not None and not ts:
        info["timesteps"] = ts = [tc]
    if tc is not None and tc != ts[0]:
        raise DMDSamplingError(
            f"{name}: DMD metadata conditioning timestep {tc} differs from the first of its timesteps {ts}"
        )
    if info.get("model_type") is not None and info["model_type"] not in MODEL_TYPES:
        raise DMDSamplingError(f"{name}: DMD metadata model type {info['model_type']!r}, expected one of {MODEL_TYPES}")
    if info.get("format") is None:
        info["format"] = "lora" if is_lora_keys(keys) else "full"
    if info["format"] not in GENERATOR_FORMATS:
        raise DMDSamplingError(
            f"{name}: unknown generator format {info['format']!r} in the DMD metadata, expected "
            f"one of {GENERATOR_FORMATS}"
        )
    return info


def read_generator(path, load_tensors: bool = True) -> tuple[dict | None, dict | None]:
    """(state dict or None when ``load_tensors`` is False, ``parse_generator_metadata`` of its header) of
    a .safetensors generator file; pickled files are never loaded. Errors start with ``path:``."""
    import os

    shown = os.path.basename(str(path))
    if not str(path).lower().endswith(".safetensors"):
        raise DMDSamplingError(
            f"path: expected a .safetensors file (pickled .bin/.ckpt/.pt files are not loaded), got {shown!r}"
        )
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = list(f.keys())
    except Exception as e:  # noqa: BLE001 - a clear message for any unreadable file
        raise DMDSamplingError(
            f"path: {shown!r} is not a readable safetensors file ({type(e).__name__}: {e})"
        ) from None
    try:
        info = parse_generator_metadata(meta, keys)
    except DMDSamplingError as e:
        raise DMDSamplingError(f"path: {shown!r} has {str(e)[len('path: ') :]}") from None
    if not load_tensors:
        return None, info
    from safetensors.torch import load_file

    return load_file(str(path)), info


__all__ = [
    "DMDSamplingError",
    "dmd2_timesteps",
    "parse_timesteps",
    "timesteps_to_sigmas",
    "input_scale",
    "noise_input",
    "renoise",
    "sample_dmd",
    "sample_dmd_kdiff",
    "sigma_c_of",
    "METADATA_KEY",
    "GENERATOR_FORMATS",
    "is_lora_keys",
    "generator_metadata",
    "metadata_object",
    "parse_generator_metadata",
    "read_generator",
]
