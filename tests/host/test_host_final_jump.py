"""The planner's final-jump rule inside a real ComfyUI: on KSampler's defaults (20 steps, normal) the nodes run the
step into normal's final jump of the sigmas ComfyUI computes for the model, with euler, dpmpp_2m and heun; on karras
the rule finds no jump."""

import re

import pytest

SNIPPET = r"""
import torch
import comfy.model_base
import comfy.samplers
import nodes
from comfyui_tempo.nodes import adaptive as adaptive_nodes
from comfyui_tempo.samplers.skip_plan import jump_step
from tempo_testnodes import skip_settings, tiny_sd_conditioning, tiny_sd_model as build

pos, neg, lat = tiny_sd_conditioning()
S = skip_settings()
result = {}
with torch.inference_mode():
    model = build(comfy.model_base.ModelType.EPS)
    ms = model.get_model_object("model_sampling")
    for sched in ("normal", "karras"):
        result[f"{sched}/jump"] = jump_step(comfy.samplers.calculate_sigmas(ms, sched, 20).tolist())
        for name in ("euler", "dpmpp_2m", "heun"):
            r = adaptive_nodes.AdaptiveKSampler.execute(model, 3, 20, 5.0, name, sched, pos, neg, lat, 1.0, **S)
            result[f"{sched}/{name}"] = r.ui.as_dict()["text"][0] if hasattr(r.ui, "as_dict") else str(r.ui)
    patched = adaptive_nodes.AdaptiveModelPatch.execute(model, **S).args[0]
    ref = adaptive_nodes.AdaptiveKSampler.execute(model, 3, 20, 5.0, "euler", "normal", pos, neg, lat, 1.0, **S)
    via = nodes.common_ksampler(patched, 3, 20, 5.0, "euler", "normal", pos, neg, lat)[0]["samples"]
    result["patch_equal"] = bool(torch.equal(via, ref.args[0]["samples"]))
RESULT = result
"""


@pytest.fixture(scope="module")
def jump_result(comfy_snippet):
    return comfy_snippet(SNIPPET, timeout=600)


def _path(report: str) -> str:
    m = re.search(r"path ([Csp]+)", report)
    assert m, report
    return m.group(1)


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "heun"])
def test_ksampler_defaults_run_the_step_into_normals_final_jump(jump_result, sampler):
    r = jump_result
    j = r["normal/jump"]
    assert j == 18, r  # ComfyUI's normal at 20 steps: the step into sigma_min
    path = _path(r[f"normal/{sampler}"])
    assert len(path) == 20 and path[j] == "C" and path.count("s") == 10, path


def test_karras_has_no_jump_and_the_patch_plans_the_same(jump_result):
    r = jump_result
    assert r["karras/jump"] is None
    assert _path(r["karras/euler"]) == "Cs" * 10
    assert r["patch_equal"]
