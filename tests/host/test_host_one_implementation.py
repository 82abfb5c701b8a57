"""One implementation per algorithm: a node and the plain-PyTorch core its benchmark runs give the same latents
on the same inputs inside a real ComfyUI."""

from __future__ import annotations

COOP_SNIPPET = r"""
import torch
import comfy.sample, comfy.samplers
import tempo_testnodes as tn
from comfyui_tempo.nodes import coop
from comfyui_tempo.nodes.coop_guiders import Secondary
from comfyui_tempo.nodes.comfy_vae import ComfyBridgeVAE, model_latent_format
from comfyui_tempo.bridges import fusion

res = {}
m_a, m_b = tn.build_model(), tn.build_model("hr")
v_a, v_b = tn.build_vae(), tn.build_vae("hr")
pos_a, pos_b, neg = [[tn.class_cond(3), {}]], [[tn.class_cond(7), {}]], [[tn.class_cond(10), {}]]
lat = torch.zeros(2, 4, 8, 8)
seed, steps, cfg = 4, 8, 5.0
with torch.inference_mode():
    for d in (0.5, 1.0):
        node = coop.CoopSampler.execute(m_a, v_a, pos_a, neg, cfg, m_b, v_b, pos_b, neg, cfg, {"samples": lat}, seed, steps,
                                     "euler", "karras", 1.0, d, 0.0, 1.0, "none").args[0]["samples"]
        # the core on the same models (their CFG x0-predictions), VAEs, sigmas and noise
        sig = comfy.samplers.calculate_sigmas(m_a.get_model_object("model_sampling"), "karras", steps)
        ms_a, ms_b = m_a.get_model_object("model_sampling"), m_b.get_model_object("model_sampling")
        noise = comfy.sample.prepare_noise(lat, seed)
        x_a = ms_a.noise_scaling(sig[0], noise, torch.zeros_like(noise), True)
        x_b = ms_b.noise_scaling(sig[0], noise, torch.zeros_like(noise), True)
        den = {}
        for key, model, pos in (("a", m_a, pos_a), ("b", m_b, pos_b)):
            sec = Secondary(model, pos, neg, cfg)
            sec.prepare(tuple(noise.shape), None, sig, seed)
            den[key] = sec
        try:
            core, _ = fusion.coop_sample_euler(lambda x, s: den["a"](x, s, seed), lambda x, s: den["b"](x, s, seed),
                                               x_a, x_b, sig, sig,
                                               ComfyBridgeVAE(v_a, model_latent_format(m_a), "vae_a"),
                                               ComfyBridgeVAE(v_b, model_latent_format(m_b), "vae_b"), "eps", "eps", d=d)
        finally:
            den["a"].cleanup(); den["b"].cleanup()
        core_raw = m_a.model.process_latent_out(core)
        res[str(d)] = {"max_abs": float((core_raw - node).abs().max()), "scale": float(node.abs().max())}
RESULT = res
"""


def test_coop_node_and_core_give_the_same_latents(comfy_snippet):
    """The Coop-Diffusion Sampler node (ComfyUI's euler sampler, the guider routing to CoopChain) against
    bridges.fusion.coop_sample_euler (what bench coop runs): the same latents up to float rounding (ComfyUI's
    euler writes x + d * dt, the core x0 + (s' / s) (x - x0))."""
    r = comfy_snippet(COOP_SNIPPET, timeout=600)
    print("coop node vs core:", r)
    for d, v in r.items():
        assert v["max_abs"] <= 1e-4 * max(1.0, v["scale"]), (d, v)
