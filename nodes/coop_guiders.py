"""The Coop-Diffusion and time-decoupled GUIDERs: thin ComfyUI adapters around the core.

* ``CoopGuider`` (Algorithm 1, Sub-Module 1): model A drives ComfyUI's sampler; model B's chain is the core's
  ``bridges.fusion.CoopChain`` (the code bench coop measures), which this guider only feeds with A's
  predictions and B's CFG predictions.
* ``SwitchGuider``: one sampler run, the structure model above the switch sigma, the texture model below.
* ``Secondary``: a second model with its own conditioning and CFG, prepared inside another guider's run.
"""

from __future__ import annotations

import logging
import math

import comfy.hooks
import comfy.model_patcher
import comfy.sampler_helpers
import comfy.samplers
import torch

from ..bridges.core import bridge_latent, match_sigma, ve_sigma
from ..bridges.fusion import CoopChain
from ..samplers.finite import with_nonfinite_note
from . import compat
from .comfy_vae import ComfyBridgeVAE, model_schedule

log = logging.getLogger("comfyui_tempo")


def fresh_noise(shape, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(int(seed) & 0xFFFFFFFFFFFFFFFF)
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32)


class Secondary:
    """A second model with its own conditioning and CFG, prepared for sampling inside another
    guider's run (what CFGGuider.sample / outer_sample / inner_sample do, minus the sampler call)."""

    def __init__(self, model, positive, negative, cfg: float):
        self.guider = comfy.samplers.CFGGuider(model)
        self.guider.set_conds(positive, negative)
        self.guider.set_cfg(cfg)
        self.model = model
        self.prepared = False

    def prepare(self, noise_shape, latent_model_space, sigmas, seed):
        g = self.guider
        g.conds = {k: [c.copy() for c in v] for k, v in g.original_conds.items()}
        comfy.samplers.preprocess_conds_hooks(g.conds)
        self._orig_options = g.model_options
        self._orig_hook_mode = g.model_patcher.hook_mode
        g.model_options = comfy.model_patcher.create_model_options_clone(g.model_options)
        if comfy.samplers.get_total_hook_groups_in_conds(g.conds) <= 1:
            g.model_patcher.hook_mode = comfy.hooks.EnumHookMode.MinVram
        comfy.sampler_helpers.prepare_model_patcher(g.model_patcher, g.conds, g.model_options)
        comfy.samplers.filter_registered_hooks_on_conds(g.conds, g.model_options)
        g.inner_model, g.conds, g.loaded_models = comfy.sampler_helpers.prepare_sampling(
            g.model_patcher, noise_shape, g.conds, g.model_options
        )
        device = g.model_patcher.load_device
        comfy.samplers.cast_to_load_options(g.model_options, device=device, dtype=g.model_patcher.model_dtype())
        g.model_patcher.pre_run()
        self.prepared = True
        noise = torch.zeros(noise_shape, device=device)
        lat = (
            latent_model_space.to(device) if latent_model_space is not None else torch.zeros(noise_shape, device=device)
        )
        g.conds = comfy.samplers.process_conds(g.inner_model, noise, g.conds, device, lat, None, seed)
        self.model_options = comfy.model_patcher.create_model_options_clone(g.model_options)
        self.model_options.setdefault("transformer_options", {})["sample_sigmas"] = sigmas
        self.device = device

    def __call__(self, x, sigma, seed=None):
        """The CFG x0-prediction (ComfyUI's 'denoised') of this model at (x, sigma)."""
        return self.guider.outer_predict_noise(x.to(self.device), sigma.to(self.device), self.model_options, seed)

    def process_latent_in(self, raw):
        return self.guider.model_patcher.model.process_latent_in(raw)

    def cleanup(self):
        if not self.prepared:
            return
        g = self.guider
        try:
            g.model_patcher.cleanup()
            comfy.sampler_helpers.cleanup_models(g.conds, g.loaded_models)
        finally:
            comfy.samplers.cast_to_load_options(g.model_options, device=g.model_patcher.offload_device)
            g.model_options = self._orig_options
            g.model_patcher.hook_mode = self._orig_hook_mode
            g.model_patcher.restore_hook_patches()
            for attr in ("inner_model", "loaded_models"):
                if hasattr(g, attr):
                    delattr(g, attr)
            self.prepared = False


class CoopGuider(comfy.samplers.CFGGuider):
    """Algorithm 1 (Sub-Module 1) as a GUIDER: model A drives the sampler in its own space; model B
    runs a shadow chain in its space at the SNR-matched sigma. Per call: A's x0; B's x0 on its chain,
    decoded with B's VAE, resized to A's size, encoded with A's VAE (steps 2-4); fused
    x0 = d * B_in_A + (1 - d) * A (step 5, the paper's d); the fused x0 goes back into B (decode A,
    encode B) and advances B's chain with a first-order (Euler = DDIM) step at the next sigma (step 7).

    A's sampler may be any: B's chain moves from the last sigma to the current one whenever the
    sigma changes (second-order samplers: B is evaluated once per distinct sigma, its chain is still
    first order; ancestral samplers: B's chain stays deterministic). d = 0 at a call returns A's x0
    untouched; while some later step has d > 0 B's chain is still carried (2 VAE calls, no B call).
    """

    def __init__(
        self,
        model_a,
        vae_a: ComfyBridgeVAE,
        model_b,
        vae_b: ComfyBridgeVAE,
        positive_b,
        negative_b,
        cfg_b: float,
        d_fn,
        size_b=None,
        resize_method: str = "bilinear",
        calls: dict | None = None,
    ):
        super().__init__(model_a)
        self.model_b = model_b
        self.vae_a, self.vae_b = vae_a, vae_b
        self.secondary = Secondary(model_b, positive_b, negative_b, cfg_b)
        self.d_fn = d_fn
        self.size_b = size_b  # (H, W) pixels of B's image; None: A's image size
        self.resize_method = resize_method
        self.sched_a = model_schedule(model_a, "model_a")
        self.sched_b = model_schedule(model_b, "model_b")
        self.calls = calls if calls is not None else {}
        self.stats: dict = {}
        self.last_report = ""

    # --- the run
    def inner_sample(
        self,
        noise,
        latent_image,
        device,
        sampler,
        sigmas,
        denoise_mask,
        callback,
        disable_pbar,
        seed,
        latent_shapes=None,
        **kwargs,
    ):
        # latent_shapes: ComfyUI >= 0.3.67 passes it (nested multi-latent runs); older ones never do
        compat.refuse_nested(latent_shapes, "latent_image")
        compat.refuse_not_image_latent(noise, "latent_image")  # B's chain goes through images
        self.stats = {"nfe_a": 0, "nfe_b": 0, "steps": int(sigmas.numel() - 1)}
        self.vae_a.calls = self.calls
        self.vae_b.calls = self.calls
        self.calls.clear()
        self.calls.update(decode=0, encode=0)
        n = int(sigmas.numel() - 1)
        self._seed = seed
        # B's chain: the core's CoopChain (bridges/fusion.py), the same code bench coop measures
        self.chain = CoopChain(
            self._denoise_b,
            self.vae_a,
            self.vae_b,
            sigmas,
            [self.d_fn(i, n) for i in range(n)],
            self._sigma_b,
            filter=self.resize_method,
        )
        try:
            if self.chain.active:
                self._init_b(noise, latent_image, sigmas, seed)
            out = super().inner_sample(
                noise,
                latent_image,
                device,
                sampler,
                sigmas,
                denoise_mask,
                callback,
                disable_pbar,
                seed,
                **compat.sample_kwargs(latent_shapes),
                **kwargs,
            )
        finally:
            self.secondary.cleanup()
        self.stats["nfe_b"] = self.chain.nfe_b
        self.last_report = with_nonfinite_note(self.report(), out)
        (log.warning if "NaN/inf" in self.last_report else log.info)("%s", self.last_report)
        return out

    def _init_b(self, noise, latent_image, sigmas, seed):
        h_a, w_a = noise.shape[-2] * self.vae_a.downscale, noise.shape[-1] * self.vae_a.downscale
        h_b, w_b = self.size_b if self.size_b is not None else (h_a, w_a)
        self.chain.size_a, self.chain.size_b = (h_a, w_a), (h_b, w_b)
        shape_b = (noise.shape[0], self.vae_b.latent_channels, h_b // self.vae_b.downscale, w_b // self.vae_b.downscale)
        # B's start: A's noise where the shapes match (the paper's z'_T = z_T), else its own seeded noise
        noise_b = (
            noise.detach().cpu().float()
            if tuple(noise.shape) == shape_b
            else fresh_noise(shape_b, seed if seed is not None else 0)
        )
        if latent_image is not None and torch.count_nonzero(latent_image) > 0:
            za = self.model_patcher.model.process_latent_in(latent_image)
            z_b = bridge_latent(za.cpu().float(), self.vae_a, self.vae_b, size=(h_b, w_b), filter=self.resize_method)
        else:
            z_b = torch.zeros(shape_b)
        s0_a = float(sigmas[0])
        s0_b = self._sigma_b(s0_a)
        ms_b = self.model_b.get_model_object("model_sampling")
        max_den = math.isclose(float(ms_b.sigma_max), s0_b, rel_tol=1e-5) or s0_b > float(ms_b.sigma_max)
        device = self.model_b.load_device
        x_b = ms_b.noise_scaling(torch.tensor(s0_b), noise_b.to(device), z_b.to(device), max_den)
        sig_b = torch.stack(
            [torch.tensor(self._sigma_b(float(s)) if float(s) > 0 else 0.0) for s in sigmas.detach().float().cpu()]
        ).to(device)
        self.secondary.prepare(tuple(shape_b), z_b.to(device), sig_b, seed)
        self.chain.start(x_b, s0_b)

    def _denoise_b(self, x_b, sigma_b):
        return self.secondary(x_b, sigma_b, self._seed)

    def _sigma_b(self, s_a: float) -> float:
        """B's sigma at A's `s_a` (equal SNR), held at the ends of B's schedule where A's noise level lies
        beyond them (a flow A starts at sigma 1, SNR 0, and ends near 0.01: both outside an eps table)."""

        def ve(s, kind):
            return float(ve_sigma(torch.tensor(float(s), dtype=torch.float64), kind))

        v = ve(s_a, self.sched_a.kind)
        if v >= ve(self.sched_b.sigma_max, self.sched_b.kind):
            return float(self.sched_b.sigma_max)
        if v <= ve(self.sched_b.sigma_min, self.sched_b.kind):
            return float(self.sched_b.sigma_min)
        return float(match_sigma(torch.tensor(s_a), self.sched_a, self.sched_b, snap=False, name="sigmas"))

    def outer_predict_noise(self, x, timestep, model_options={}, seed=None):
        x0_a = super().outer_predict_noise(x, timestep, model_options, seed)
        self.stats["nfe_a"] = self.stats.get("nfe_a", 0) + 1
        return self.chain(x0_a, float(timestep.flatten()[0]))

    def report(self) -> str:
        st = self.stats
        n = max(st.get("steps", 0), 1)
        dec, enc = self.calls.get("decode", 0), self.calls.get("encode", 0)
        d_steps = self.chain.d_steps if getattr(self, "chain", None) is not None else []
        return (
            f"Coop-Diffusion: {st.get('steps', 0)} steps, NFE A {st.get('nfe_a', 0)} + B {st.get('nfe_b', 0)} "
            f"({(st.get('nfe_a', 0) + st.get('nfe_b', 0)) / n:.2f} per step); VAE {dec} decodes + {enc} encodes "
            f"({(dec + enc) / n:.2f} per step; {self.vae_a.name} / {self.vae_b.name}); "
            f"d > 0 on {sum(1 for v in d_steps if v != 0)} of {st.get('steps', 0)} steps "
            f"(max {max(d_steps or [0.0]):.2f})"
        )


class SwitchGuider(comfy.samplers.CFGGuider):
    """One sampler run, two models: the structure model (this guider's) at sigma >= sigma_switch,
    the texture model (with its own conditioning and CFG) below. Same latent space and size only;
    the sampler's history (multistep, noise sampler) is kept across the switch."""

    def __init__(self, model_struct, model_tex, positive_t, negative_t, cfg_t, sigma_switch: float):
        super().__init__(model_struct)
        self.secondary = Secondary(model_tex, positive_t, negative_t, cfg_t)
        self.sigma_switch = float(sigma_switch)
        self.stats = {"struct": 0, "texture": 0}

    def inner_sample(
        self,
        noise,
        latent_image,
        device,
        sampler,
        sigmas,
        denoise_mask,
        callback,
        disable_pbar,
        seed,
        latent_shapes=None,
        **kwargs,
    ):
        compat.refuse_nested(latent_shapes, "latent_image")
        self.stats = {"struct": 0, "texture": 0}
        lat = latent_image
        if lat is not None and torch.count_nonzero(lat) > 0:
            lat = self.secondary.process_latent_in(lat)
        self.secondary.prepare(tuple(noise.shape), lat, sigmas, seed)
        try:
            return super().inner_sample(
                noise,
                latent_image,
                device,
                sampler,
                sigmas,
                denoise_mask,
                callback,
                disable_pbar,
                seed,
                **compat.sample_kwargs(latent_shapes),
                **kwargs,
            )
        finally:
            self.secondary.cleanup()

    def outer_predict_noise(self, x, timestep, model_options={}, seed=None):
        if float(timestep.flatten()[0]) >= self.sigma_switch:
            self.stats["struct"] += 1
            return super().outer_predict_noise(x, timestep, model_options, seed)
        self.stats["texture"] += 1
        return self.secondary(x, timestep, seed)
