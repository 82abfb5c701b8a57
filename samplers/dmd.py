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
    """"999,749,499,249" (or a list) -> strictly decreasing integer timesteps in [0, T)."""
    if isinstance(text, str):
        try:
            ts = [int(float(p)) for p in text.replace(";", ",").split(",") if p.strip()]
        except ValueError:
            raise DMDSamplingError(f"timesteps: expected comma-separated integers such as '999,749,499,249', got {text!r}")
    else:
        ts = [int(t) for t in text]
    if not ts:
        raise DMDSamplingError("timesteps: expected at least one timestep")
    if any(not 0 <= t < num_timesteps for t in ts):
        raise DMDSamplingError(f"timesteps: expected integers in [0, {num_timesteps - 1}], got {ts}")
    if any(b >= a for a, b in zip(ts, ts[1:])):
        raise DMDSamplingError(f"timesteps: expected strictly decreasing timesteps, got {ts}")
    return ts


def timesteps_to_sigmas(timesteps: Sequence[int] | torch.Tensor, sigma_table: torch.Tensor, append_zero: bool = True) -> torch.Tensor:
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
    s_in = z.new_ones([z.shape[0]])
    x = noise_input(z, float(sig[0]), model_type)
    x0 = None
    for i in range(sig.numel()):
        if i > 0:
            if noise_sampler is not None:
                n = noise_sampler(sig[i - 1], sig[i])
            else:
                n = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            x = renoise(x0, n, sig[i], model_type)
        x0 = model(x, sig[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sig[i], "sigma_hat": sig[i], "denoised": x0})
    return x0


@torch.no_grad()
def sample_dmd_kdiff(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None,
                     model_type: str = "eps", renoise_fn: Callable | None = None):
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
# generator files (written by training.dmd.DMDTrainer.save_generator)

METADATA_KEYS = ("dmd.model_type", "dmd.conditioning_timestep", "dmd.timesteps")


def parse_dmd_metadata(meta: dict | None, num_timesteps: int = 1000, keys=None) -> dict:
    """Validate and parse a generator file's DMD metadata (safetensors string metadata):

    ``dmd.model_type`` (eps | v | ve | flow), ``dmd.conditioning_timestep`` (int),
    ``dmd.timesteps`` ("999,749,499,249"; its first entry is the conditioning timestep),
    ``dmd.format`` (lora | full; when absent, "lora" if `keys` (the file's tensor names) hold LoRA
    factors, else "full"); optional ``dmd.lora_rank``, ``dmd.generator_steps``, ``dmd.ema``.
    Returns {"model_type", "conditioning_timestep", "timesteps", "format", "lora_rank", "raw"}.
    """
    meta = dict(meta or {})
    missing = [k for k in METADATA_KEYS if k not in meta]
    if missing:
        raise DMDSamplingError(f"metadata: the file has no DMD metadata {missing} (not written by the pack's "
                               f"DMD trainer; give the conditioning timestep and steps by hand)")
    model_type = meta["dmd.model_type"]
    _check_type(model_type)
    ts = parse_timesteps(meta["dmd.timesteps"], num_timesteps)
    try:
        tc = int(meta["dmd.conditioning_timestep"])
    except ValueError:
        raise DMDSamplingError(f"metadata: dmd.conditioning_timestep is not an integer: {meta['dmd.conditioning_timestep']!r}")
    if tc != ts[0]:
        raise DMDSamplingError(f"metadata: dmd.conditioning_timestep {tc} differs from the first of dmd.timesteps {ts}")
    fmt = meta.get("dmd.format")
    if fmt is None:
        fmt = "lora" if any(".lora_up." in k or ".lora_down." in k for k in (keys or ())) else "full"
    if fmt not in ("lora", "full"):
        raise DMDSamplingError(f"metadata: dmd.format must be 'lora' or 'full', got {fmt!r}")
    return {"model_type": model_type, "conditioning_timestep": tc, "timesteps": ts, "format": fmt,
            "lora_rank": int(meta.get("dmd.lora_rank", "0") or 0), "raw": meta}


def read_dmd_metadata(path, num_timesteps: int = 1000) -> dict:
    """``parse_dmd_metadata`` of a .safetensors file's header (the tensors are not loaded)."""
    if not str(path).endswith(".safetensors"):
        raise DMDSamplingError(f"path: expected a .safetensors file, got {str(path)!r}")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            keys = list(f.keys())
    except Exception as e:  # noqa: BLE001 - a clear message for any unreadable file
        raise DMDSamplingError(f"path: {str(path)!r} is not a readable safetensors file ({e})") from None
    return parse_dmd_metadata(meta, num_timesteps, keys)


__all__ = [
    "DMDSamplingError", "dmd2_timesteps", "parse_timesteps", "timesteps_to_sigmas", "input_scale", "noise_input",
    "renoise", "sample_dmd", "sample_dmd_kdiff", "sigma_c_of", "parse_dmd_metadata", "read_dmd_metadata",
    "METADATA_KEYS",
]
