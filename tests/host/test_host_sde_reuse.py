"""The noisy samplers' reuse rules inside a real ComfyUI, each on eps / v models under extrapolation auto, linear on a
flow model and under a named extrapolation, and said in the report. DPM++ 2M SDE holds the direction below sigma 1 and
after a step of 0.2 or more in log sigma (at 20 karras steps every skip: the paper's hold throughout, so the path is
planned with the injected noise added to the cost). Euler ancestral holds it at a skip 1.5 or more of the run's median
steps (log sigma) from the last computed step (at 20 simple steps the last skip, where the steps lengthen). A sampler
that injects no noise (eta 0 on SamplerCustom's sampler nodes) reuses as a deterministic sampler; euler ancestral below
eta 1, or at s_noise 0, starts from log_linear, its hold on top."""

import re

import pytest

GAP_RULE = "hold 1.5 or more of the run's median steps ("

SNIPPET = r"""
import torch
import comfy.model_base
from comfyui_tempo.nodes import adaptive as adaptive_nodes
from tempo_testnodes import skip_settings, tiny_sd_conditioning, tiny_sd_model as build

pos, neg, lat = tiny_sd_conditioning()
result = {}
with torch.inference_mode():
  for sampler, sched in (("dpmpp_2m_sde", "karras"), ("euler_ancestral", "simple")):
    for kind, mt in (("eps", "EPS"), ("v", "V_PREDICTION"), ("flow", "FLOW")):
        model = build(getattr(comfy.model_base.ModelType, mt))
        kind = f"{sampler}/{kind}"
        out = {}
        for ex in ("auto", "linear", "hold"):
            S = skip_settings(extrapolation=ex)
            r = adaptive_nodes.AdaptiveKSampler.execute(model, 3, 20, 5.0, sampler, sched, pos, neg, lat, 1.0, **S)
            result[f"{kind}/{ex}"] = r.ui.as_dict()["text"][0] if hasattr(r.ui, "as_dict") else str(r.ui)
            out[ex] = r.args[0]["samples"]
            if ex == "auto":
                patched = adaptive_nodes.AdaptiveModelPatch.execute(model, **S).args[0]
                import nodes
                via = nodes.common_ksampler(patched, 3, 20, 5.0, sampler, sched, pos, neg, lat)[0]["samples"]
                result[f"{kind}/patch_equal"] = bool(torch.equal(via, out["auto"]))
        result[f"{kind}/same_as_linear"] = bool(torch.equal(out["auto"], out["linear"]))
        result[f"{kind}/same_as_hold"] = bool(torch.equal(out["auto"], out["hold"]))
        result[f"{kind}/finite"] = bool(torch.isfinite(out["auto"]).all())

# the model patch under SamplerCustom with ComfyUI's own SamplerEulerAncestral node at eta 0 (euler, no noise) and 1:
# what the patch wrote to the console, and the eta 0 result against the patch with euler (KSamplerSelect)
import logging
import comfy.sample
import comfy.samplers
from comfy_extras import nodes_custom_sampler as ncs

records = []
class _Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("comfyui_tempo").addHandler(_Keep())
logging.getLogger("comfyui_tempo").setLevel(logging.INFO)  # the patch's report is an info line

def ancestral(eta, s_noise=1.0):
    node = ncs.SamplerEulerAncestral
    r = node.execute(eta, s_noise) if hasattr(node, "define_schema") else node().get_sampler(eta, s_noise)
    return r.args[0] if hasattr(r, "args") else r[0]

with torch.inference_mode():
    model = build(comfy.model_base.ModelType.EPS)
    patched = adaptive_nodes.AdaptiveModelPatch.execute(model, **skip_settings(extrapolation="auto")).args[0]
    ks = comfy.samplers.KSampler(model, 20, model.load_device, "euler", "simple", 1.0, model.model_options)
    noise = comfy.sample.prepare_noise(lat["samples"], 3)
    runs = {}
    for name, sampler in (("eta0", ancestral(0.0)), ("eta05", ancestral(0.5)), ("eta1", ancestral(1.0)),
                          ("snoise0", ancestral(1.0, 0.0)), ("euler", comfy.samplers.sampler_object("euler"))):
        del records[:]
        runs[name] = comfy.sample.sample_custom(patched, noise, 5.0, sampler, ks.sigmas, pos, neg, lat["samples"], seed=3)
        result[f"custom/{name}/log"] = [m for m in records if m.startswith("AdaptiveDiffusion")]
    result["custom/eta0_close_to_euler"] = bool(torch.allclose(runs["eta0"], runs["euler"], atol=1e-3, rtol=0))
    result["custom/eta1_close_to_euler"] = bool(torch.allclose(runs["eta1"], runs["euler"], atol=1e-3, rtol=0))
RESULT = result
"""


@pytest.fixture(scope="module")
def sde_result(comfy_snippet):
    return comfy_snippet(SNIPPET, timeout=600)


@pytest.mark.parametrize("kind", ["eps", "v"])
def test_eps_and_v_models_hold_below_sigma_1_and_after_long_steps_and_say_so(sde_result, kind):
    r = sde_result
    kind = f"dpmpp_2m_sde/{kind}"
    rule = "hold below sigma 1 and 0.2 or more in log sigma from the last computed step (the sampler's rule)"
    assert rule in r[f"{kind}/auto"], r[f"{kind}/auto"]
    assert "hold below" not in r[f"{kind}/linear"], r[f"{kind}/linear"]
    assert not r[f"{kind}/same_as_linear"] and r[f"{kind}/finite"]
    # at 20 karras steps on SD's sigmas every skip above sigma 1 follows a step of 0.22 or more: all held, so the
    # plan is made again with the injected-noise cost (a named extrapolation, hold included, keeps the cost model's)
    replanned = "planned with the injected-noise cost (sde): every skip of the cost model's plan would hold"
    assert replanned in r[f"{kind}/auto"], r[f"{kind}/auto"]
    assert replanned not in r[f"{kind}/hold"] and replanned not in r[f"{kind}/linear"]
    assert not r[f"{kind}/same_as_hold"]
    assert r[f"{kind}/patch_equal"]  # the model patch under any KSampler does the same


@pytest.mark.parametrize("sampler", ["dpmpp_2m_sde", "euler_ancestral"])
def test_flow_model_keeps_linear(sde_result, sampler):
    r = {k.split("/", 1)[1]: v for k, v in sde_result.items() if k.startswith(f"{sampler}/")}
    assert "hold below" not in r["flow/auto"] and GAP_RULE not in r["flow/auto"], r["flow/auto"]
    assert "linear (auto)" in r["flow/auto"], r["flow/auto"]
    assert "injected-noise" not in r["flow/auto"]
    assert r["flow/same_as_linear"] and r["flow/finite"] and r["flow/patch_equal"]
    assert not r["flow/same_as_hold"]


@pytest.mark.parametrize("kind", ["eps", "v"])
def test_euler_ancestral_holds_after_a_long_gap_on_eps_and_v_models_and_says_so(sde_result, kind):
    r = {k.split("/", 1)[1]: v for k, v in sde_result.items() if k.startswith("euler_ancestral/")}
    assert r[f"{kind}/auto"].count(GAP_RULE) == 1 and "(the sampler's rule)" in r[f"{kind}/auto"], r[f"{kind}/auto"]
    assert GAP_RULE not in r[f"{kind}/linear"] and GAP_RULE not in r[f"{kind}/hold"]
    assert "injected-noise" not in r[f"{kind}/auto"]
    # the last skip holds, the others extrapolate: neither linear throughout nor the paper's hold throughout
    assert not r[f"{kind}/same_as_linear"] and not r[f"{kind}/same_as_hold"] and r[f"{kind}/finite"]
    assert r[f"{kind}/patch_equal"]  # the model patch under any KSampler does the same


def test_the_model_patch_reuses_an_ancestral_sampler_at_eta_0_as_euler(sde_result):
    """SamplerCustom with ComfyUI's SamplerEulerAncestral node at eta 0 injects no noise (it is euler): the patch
    drops the hold after a long gap, reuses as for euler and says so; at eta 1 the rule stays."""
    r = sde_result
    (quiet,) = r["custom/eta0/log"]
    (noisy,) = r["custom/eta1/log"]
    (euler,) = r["custom/euler/log"]
    assert "log_linear (auto)" in quiet and GAP_RULE not in quiet, quiet
    assert "the sampler injects no noise (eta 0.0): reused as a deterministic sampler's" in quiet, quiet

    def head(m):  # mode, extrapolation, NFE and path: the message without its notes and its sampler's name
        return re.sub(r" \((euler|euler_ancestral)\)$", "", m).split(" | ")[0]

    assert head(quiet) == head(euler), (quiet, euler)
    assert GAP_RULE in noisy and "injects no noise" not in noisy, noisy
    assert r["custom/eta0_close_to_euler"] and not r["custom/eta1_close_to_euler"]


def test_the_model_patch_starts_euler_ancestral_from_log_linear_below_eta_1(sde_result):
    """SamplerCustom with ComfyUI's SamplerEulerAncestral node at eta 0.5: auto starts from log_linear, the hold after
    a long gap on top, and the console line says so; at eta 1 it starts from linear."""
    (half,) = sde_result["custom/eta05/log"]
    (one,) = sde_result["custom/eta1/log"]
    assert "log_linear (auto), " + GAP_RULE in half, half
    assert "eta 0.5 is below 1: auto starts from log_linear" in half, half
    assert "[target, planner schedule, linear (auto), " + GAP_RULE in one and "below 1" not in one, one


def test_the_model_patch_keeps_euler_ancestrals_hold_at_s_noise_0(sde_result):
    """SamplerCustom with ComfyUI's SamplerEulerAncestral node at eta 1, s_noise 0: nothing is injected, but the steps
    are still ancestral ones: nothing is recorded as noise, so auto starts from log_linear, and the hold after a long
    gap stays on top; the console line says so."""
    (silent,) = sde_result["custom/snoise0/log"]
    assert "log_linear (auto), " + GAP_RULE in silent, silent
    assert "the sampler injects no noise (s_noise 0.0) but still steps as its noisy form does" in silent, silent
    assert "'hold_long_gap' kept" in silent and "reused as a deterministic sampler's" not in silent, silent
