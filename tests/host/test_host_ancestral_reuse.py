"""Euler ancestral's reuse rule inside a real ComfyUI: the nodes hold the direction at a skip 1.5 or more of the run's
median steps (log sigma) from the last computed step on eps / v models (extrapolation auto; at 20 simple steps the
last skip, where the steps lengthen), extrapolate linearly elsewhere, keep linear on a flow model, and say which in
the report."""

import pytest

SNIPPET = r"""
import torch
import comfy.model_base
from comfyui_tempo.nodes import adaptive as adaptive_nodes
from tempo_testnodes import skip_settings, tiny_sd_conditioning, tiny_sd_model as build

pos, neg, lat = tiny_sd_conditioning()
result = {}
with torch.inference_mode():
    for kind, mt in (("eps", "EPS"), ("v", "V_PREDICTION"), ("flow", "FLOW")):
        model = build(getattr(comfy.model_base.ModelType, mt))
        out = {}
        for ex in ("auto", "linear", "hold"):
            S = skip_settings(extrapolation=ex)
            r = adaptive_nodes.AdaptiveKSampler.execute(model, 3, 20, 5.0, "euler_ancestral", "simple", pos, neg, lat,
                                                        1.0, **S)
            result[f"{kind}/{ex}"] = r.ui.as_dict()["text"][0] if hasattr(r.ui, "as_dict") else str(r.ui)
            out[ex] = r.args[0]["samples"]
            if ex == "auto":
                patched = adaptive_nodes.AdaptiveModelPatch.execute(model, **S).args[0]
                import nodes
                via = nodes.common_ksampler(patched, 3, 20, 5.0, "euler_ancestral", "simple", pos, neg, lat)[0]
                result[f"{kind}/patch_equal"] = bool(torch.equal(via["samples"], out["auto"]))
        result[f"{kind}/same_as_linear"] = bool(torch.equal(out["auto"], out["linear"]))
        result[f"{kind}/same_as_hold"] = bool(torch.equal(out["auto"], out["hold"]))
        result[f"{kind}/finite"] = bool(torch.isfinite(out["auto"]).all())
RESULT = result
"""

RULE = "hold 1.5 or more of the run's median steps ("


@pytest.fixture(scope="module")
def ancestral_result(comfy_snippet):
    return comfy_snippet(SNIPPET, timeout=600)


@pytest.mark.parametrize("kind", ["eps", "v"])
def test_eps_and_v_models_hold_after_a_long_gap_and_say_so(ancestral_result, kind):
    r = ancestral_result
    assert r[f"{kind}/auto"].count(RULE) == 1 and "(the sampler's rule)" in r[f"{kind}/auto"], r[f"{kind}/auto"]
    assert RULE not in r[f"{kind}/linear"] and RULE not in r[f"{kind}/hold"]
    # the last skip holds, the others extrapolate: neither linear throughout nor the paper's hold throughout
    assert not r[f"{kind}/same_as_linear"] and not r[f"{kind}/same_as_hold"] and r[f"{kind}/finite"]
    assert r[f"{kind}/patch_equal"]  # the model patch under any KSampler does the same


def test_flow_model_keeps_linear(ancestral_result):
    r = ancestral_result
    assert RULE not in r["flow/auto"] and "linear (auto)" in r["flow/auto"], r["flow/auto"]
    assert r["flow/same_as_linear"] and r["flow/finite"] and r["flow/patch_equal"]
    assert not r["flow/same_as_hold"]
