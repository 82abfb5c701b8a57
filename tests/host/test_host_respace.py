"""Re-spacing instead of skipping inside a real ComfyUI: the three AdaptiveDiffusion nodes, ComfyUI's own lms."""

import pytest

SNIPPET = r"""
import torch
import comfy.model_base, comfy.samplers, comfy.sample
import nodes
from comfyui_tempo.nodes import adaptive as adaptive_nodes
from comfyui_tempo.samplers import respace
from tempo_testnodes import skip_settings, tiny_sd_conditioning, tiny_sd_model as build

pos, neg, lat = tiny_sd_conditioning()
S = skip_settings()
model = build(comfy.model_base.ModelType.EPS)
result, samples = {}, {}
with torch.inference_mode():
    for how in ("auto", "off", "on"):
        for sched in ("normal", "karras"):
            out = adaptive_nodes.AdaptiveKSampler.execute(model, 3, 20, 5.0, "lms", sched, pos, neg, lat, 1.0,
                                                          respace=how, **S)
            text = out.ui.as_dict()["text"][0] if hasattr(out.ui, "as_dict") else str(out.ui)
            result[f"{how}/{sched}"] = text
            samples[f"{how}/{sched}"] = out.args[0]["samples"]
    # the re-spaced run is ComfyUI's own lms on the kept sigmas, its progress over the full 20 steps
    text = result["auto/normal"]
    path = [c == "C" for c in text.split("path ")[1].split()[0]]
    ks = comfy.samplers.KSampler(model, 20, model.load_device, "lms", "normal", 1.0, model.model_options)
    keep = respace.respaced_indices(path)
    noise = comfy.sample.prepare_noise(lat["samples"], 3)
    ref = comfy.sample.sample_custom(model, noise, 5.0, comfy.samplers.sampler_object("lms"), ks.sigmas[keep], pos,
                                     neg, lat["samples"], seed=3)
    result["equals_comfy_lms_on_kept_sigmas"] = bool(torch.equal(ref, samples["auto/normal"]))
    result["kept"] = len(keep) - 1
    result["differs_from_skipping"] = not torch.equal(samples["auto/normal"], samples["off/normal"])
    # the SAMPLER node (SamplerCustom) and the model patch (any KSampler) re-space alike
    seen = []
    wrapped = adaptive_nodes.AdaptiveSamplerNode.execute("lms", **S).args[0]
    custom = comfy.sample.sample_custom(model, noise, 5.0, wrapped, ks.sigmas, pos, neg, lat["samples"], seed=3,
                                        callback=lambda i, x0, x, total: seen.append((i, total)))
    result["sampler_node_equal"] = bool(torch.equal(custom, samples["auto/normal"]))
    result["progress"] = seen
    patched = adaptive_nodes.AdaptiveModelPatch.execute(model, **S).args[0]
    via_patch = nodes.common_ksampler(patched, 3, 20, 5.0, "lms", "normal", pos, neg, lat)[0]["samples"]
    result["patch_equal"] = bool(torch.equal(via_patch, samples["auto/normal"]))
    # uni_pc from 20 computed steps (40 steps at 2x; ComfyUI's KSampler drops its penultimate sigma), not at 30
    for steps in (30, 40):
        out = adaptive_nodes.AdaptiveKSampler.execute(model, 3, steps, 5.0, "uni_pc", "karras", pos, neg, lat, 1.0, **S)
        text = out.ui.as_dict()["text"][0] if hasattr(out.ui, "as_dict") else str(out.ui)
        result[f"uni_pc/{steps}"] = text
    ks = comfy.samplers.KSampler(model, 40, model.load_device, "uni_pc", "karras", 1.0, model.model_options)
    keep = respace.respaced_indices([c == "C" for c in text.split("path ")[1].split()[0]])
    ref = comfy.sample.sample_custom(model, noise, 5.0, comfy.samplers.sampler_object("uni_pc"), ks.sigmas[keep], pos,
                                     neg, lat["samples"], seed=3)
    result["uni_pc_equals_comfy_on_kept_sigmas"] = bool(torch.equal(ref, out.args[0]["samples"]))
    result["uni_pc_kept"] = len(keep) - 1
    try:
        adaptive_nodes.AdaptiveKSampler.execute(model, 3, 20, 5.0, "lms", "normal", pos, neg, lat, 1.0,
                                                respace="sometimes", **S)
        result["bad"] = "no error"
    except Exception as e:
        result["bad"] = f"{type(e).__name__}: {e}"
RESULT = result
"""


@pytest.fixture(scope="module")
def respace_result(comfy_snippet):
    return comfy_snippet(SNIPPET, timeout=600)


def test_auto_respaces_lms_on_normal_only_and_says_so(respace_result):
    r = respace_result
    assert "re-spaced" in r["auto/normal"] and "respace auto" in r["auto/normal"], r["auto/normal"]
    assert "re-spaced" in r["on/karras"] and "respace = on" in r["on/karras"]
    for key in ("auto/karras", "off/normal", "off/karras"):
        assert "re-spaced" not in r[key], (key, r[key])
    speed = float(r["auto/normal"].split("(")[1].split("x")[0])
    assert 1.8 < speed < 2.2, r["auto/normal"]


def test_respaced_run_is_comfys_own_sampler_on_the_kept_sigmas(respace_result):
    r = respace_result
    assert r["equals_comfy_lms_on_kept_sigmas"] and r["kept"] == 10
    assert r["differs_from_skipping"]


def test_sampler_node_and_model_patch_respace_alike(respace_result):
    r = respace_result
    assert r["sampler_node_equal"] and r["patch_equal"]
    steps = [i for i, _ in r["progress"]]
    assert len(steps) == 10 and steps == sorted(steps) and steps[-1] == 19  # the bar ends at 20 of 20
    assert {t for _, t in r["progress"]} == {20}


def test_unipc_respaces_from_twenty_computed_steps(respace_result):
    r = respace_result
    assert "re-spaced" not in r["uni_pc/30"], r["uni_pc/30"]
    assert "re-spaced" in r["uni_pc/40"] and "20 steps computed" in r["uni_pc/40"], r["uni_pc/40"]
    assert r["uni_pc_equals_comfy_on_kept_sigmas"] and r["uni_pc_kept"] == 20


def test_bad_respace_is_named(respace_result):
    assert "respace" in respace_result["bad"] and "AdaptiveConfigError" in respace_result["bad"]
