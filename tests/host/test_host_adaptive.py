"""AdaptiveDiffusion inside a real ComfyUI: every served sampler, eps / v / flow models, the three nodes."""

import json

import pytest

from comfyui_tempo.samplers import support

SNIPPET = r"""
import json, torch
import comfy.model_base, comfy.model_patcher, comfy.model_management as mm
import comfy.samplers, comfy.sample
import nodes
from comfyui_tempo.nodes import adaptive as adaptive_nodes
from comfyui_tempo.samplers import support

SAMPLERS = [s for s in json.loads(__SAMPLERS__) if s in comfy.samplers.SAMPLER_NAMES]  # this ComfyUI's

from tempo_testnodes import tiny_sd_conditioning, tiny_sd_model as build

pos, neg, lat = tiny_sd_conditioning()
ADAPT = dict(extrapolation="linear", force_last=1, start_percent=0.0, estimator_space="vp", batch_mode="per_sample")

def S(mode, target_speedup, threshold, max_skip):
    return dict(mode=mode, target_speedup=target_speedup, threshold=threshold, max_skip=max_skip, **ADAPT)
from comfyui_tempo.samplers.adaptive import AdaptiveConfig
result = {"active_identical": {}, "identical": {}, "patch_identical": {}, "custom_identical": {}, "skipping": {}, "errors": {},
          "host_samplers": list(comfy.samplers.SAMPLER_NAMES)}
models = {"eps": build(comfy.model_base.ModelType.EPS), "v": build(comfy.model_base.ModelType.V_PREDICTION),
          "flow": build(comfy.model_base.ModelType.FLOW)}
with torch.inference_mode():
    for kind, model in models.items():
        names = SAMPLERS if kind == "eps" else ["euler", "dpmpp_2m", "heun", "euler_ancestral"]
        for name in names:
            steps = 10
            ref = nodes.common_ksampler(model, 3, steps, 5.0, name, "normal", pos, neg, lat)[0]["samples"]
            off = adaptive_nodes.AdaptiveKSampler.execute(model, 3, steps, 5.0, name, "normal", pos, neg, lat, 1.0,
                                             **S("threshold", 2.0, 0.0, 4))
            result["identical"][f"{kind}/{name}"] = bool(torch.equal(ref, off.args[0]["samples"]))
            # the controller active but told to run every step: the step bookkeeping and, for
            # stochastic samplers, the rebuilt noise sampler must leave the result untouched
            ks = comfy.samplers.KSampler(model, steps, model.load_device, name, "normal", 1.0, model.model_options)
            sampler = adaptive_nodes.wrap_sampler(comfy.samplers.sampler_object(name), name,
                                     AdaptiveConfig(mode="path", path=torch.ones(len(ks.sigmas) - 1, dtype=torch.bool)))
            noise = comfy.sample.prepare_noise(lat["samples"], 3)
            act = comfy.sample.sample_custom(model, noise, 5.0, sampler, ks.sigmas, pos, neg, lat["samples"], seed=3)
            result["active_identical"][f"{kind}/{name}"] = bool(torch.equal(ref, act))
            patched = adaptive_nodes.AdaptiveModelPatch.execute(model, **S("paper", 2.0, 0.0, 4)).args[0]
            ref_p = nodes.common_ksampler(patched, 3, steps, 5.0, name, "normal", pos, neg, lat)[0]["samples"]
            result["patch_identical"][f"{kind}/{name}"] = bool(torch.equal(ref, ref_p))
            on = adaptive_nodes.AdaptiveKSampler.execute(model, 3, 20, 5.0, name, "normal", pos, neg, lat, 1.0,
                                            **S("target_speedup", 2.0, 0.01, 4))
            text = on.ui.as_dict()["text"][0] if hasattr(on.ui, "as_dict") else str(on.ui)
            out = on.args[0]["samples"]
            result["skipping"][f"{kind}/{name}"] = {"text": text, "finite": bool(torch.isfinite(out).all()),
                                                   "plot": list(on.args[1].shape)}
        # SamplerCustom with the SAMPLER node, threshold 0, against KSamplerSelect
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", 8)
        for name in ["euler", "dpmpp_2m", "dpmpp_sde"]:
            base = comfy.samplers.sampler_object(name)
            wrapped = adaptive_nodes.AdaptiveSamplerNode.execute(name, **S("threshold", 2.0, 0.0, 4)).args[0]
            a = comfy.sample.sample_custom(model, torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5)),
                                           5.0, base, sigmas, pos, neg, lat["samples"], seed=5)
            b = comfy.sample.sample_custom(model, torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5)),
                                           5.0, wrapped, sigmas, pos, neg, lat["samples"], seed=5)
            result["custom_identical"][f"{kind}/{name}"] = bool(torch.equal(a, b))
    # every scheduler of this ComfyUI (ddim_uniform, kl_optimal, linear_quadratic too) at the default: KSampler's
    # sigmas (ddim_uniform runs 31 steps for 30), the planner's path over all of them
    result["schedulers"], result["host_schedulers"] = {}, list(comfy.samplers.SCHEDULER_NAMES)
    model = models["eps"]
    for sched in comfy.samplers.SCHEDULER_NAMES:
        for name in ("euler", "dpmpp_2m_sde", "uni_pc"):
            ks = comfy.samplers.KSampler(model, 30, model.load_device, name, sched, 1.0, model.model_options)
            sink = []
            sampler = adaptive_nodes.wrap_sampler(comfy.samplers.sampler_object(name), name, AdaptiveConfig(), sink)
            noise = comfy.sample.prepare_noise(lat["samples"], 3)
            out = comfy.sample.sample_custom(model, noise, 5.0, sampler, ks.sigmas, pos, neg, lat["samples"], seed=3)
            rep = sink[-1]
            result["schedulers"][f"{sched}/{name}"] = {"steps": len(ks.sigmas) - 1, "report_steps": rep.steps,
                                                      "speedup": rep.speedup, "finite": bool(torch.isfinite(out).all()),
                                                      "text": rep.summary()}
    # each served sampler's evaluations mapped onto its steps by the default (eps, 20 steps, normal): the first step
    # (always computed) has as many as any step, and none falls off the schedule (dpm_2_ancestral's and
    # dpmpp_2s_ancestral's midpoint at eta 1 is sigma_{i+1}: taken for the next step's start, it shifted every step)
    result["evals"] = {}
    for name in SAMPLERS:
        ks = comfy.samplers.KSampler(model, 20, model.load_device, name, "normal", 1.0, model.model_options)
        sink = []
        sampler = adaptive_nodes.wrap_sampler(comfy.samplers.sampler_object(name), name, AdaptiveConfig(), sink)
        noise = comfy.sample.prepare_noise(lat["samples"], 3)
        comfy.sample.sample_custom(model, noise, 5.0, sampler, ks.sigmas, pos, neg, lat["samples"], seed=3)
        rep = sink[-1]
        result["evals"][name] = {"steps": len(ks.sigmas) - 1, "evals": [r.evals for r in rep.records],
                                 "path": rep.path_string(), "notes": list(rep.notes), "reuse": rep.extrapolation}
    # dpmpp_3m_sde at an odd step count: 7 runs of 15 steps, the one of three last (at 20, "evals" above: 10 of 2)
    ks = comfy.samplers.KSampler(model, 15, model.load_device, "dpmpp_3m_sde", "karras", 1.0, model.model_options)
    sink = []
    sampler = adaptive_nodes.wrap_sampler(comfy.samplers.sampler_object("dpmpp_3m_sde"), "dpmpp_3m_sde",
                                          AdaptiveConfig(), sink)
    noise = comfy.sample.prepare_noise(lat["samples"], 3)
    comfy.sample.sample_custom(model, noise, 5.0, sampler, ks.sigmas, pos, neg, lat["samples"], seed=3)
    result["dpmpp_3m_sde_15"] = {"path": sink[-1].path_string(), "respaced": sink[-1].respaced,
                                 "reuse": sink[-1].extrapolation, "text": sink[-1].summary()}
    for name in ["dpm_fast", "heunpp2", "dpm_adaptive"]:
        result["errors"][name] = adaptive_nodes.AdaptiveKSampler.validate_inputs(sampler_name=name)
        try:
            adaptive_nodes.AdaptiveSamplerNode.execute(name, **S("threshold", 2.0, 0.01, 4))
            result["errors"][name + "/execute"] = "no error"
        except Exception as e:
            result["errors"][name + "/execute"] = f"{type(e).__name__}: {e}"
RESULT = result
"""


@pytest.fixture(scope="module")
def adaptive_result(comfy_snippet):
    served = support.served_names()
    return comfy_snippet(SNIPPET.replace("__SAMPLERS__", repr(json.dumps(served))), timeout=900)


def test_threshold_zero_is_bit_identical_for_every_served_sampler(adaptive_result):
    bad = [k for k, v in adaptive_result["identical"].items() if not v]
    assert not bad, f"not bit-identical with threshold 0: {bad}"
    served = set(support.served_names()) & set(adaptive_result["host_samplers"])
    assert {k.split("/")[1] for k in adaptive_result["identical"] if k.startswith("eps/")} == served


def test_support_matrix_covers_every_sampler_of_this_comfyui(adaptive_result):
    """A sampler a newer ComfyUI adds (0.33: exp_heun_2_x0, exp_heun_2_x0_sde) is served or refused with a
    reason, never met unknown."""
    unknown = [n for n in adaptive_result["host_samplers"] if n not in support.SUPPORT]
    assert not unknown, f"samplers of this ComfyUI missing from samplers/support.py: {unknown}"


def test_active_controller_running_every_step_is_bit_identical(adaptive_result):
    bad = [k for k, v in adaptive_result["active_identical"].items() if not v]
    assert not bad, f"controller on, no skips, yet results differ: {bad}"


def test_model_patch_and_sampler_node_are_bit_identical_when_off(adaptive_result):
    assert all(adaptive_result["patch_identical"].values()), adaptive_result["patch_identical"]
    assert all(adaptive_result["custom_identical"].values()), adaptive_result["custom_identical"]


def test_skipping_cuts_nfe_for_eps_v_and_flow_models(adaptive_result):
    for key, info in adaptive_result["skipping"].items():
        assert info["finite"], key
        assert info["plot"][0] == 1 and info["plot"][-1] == 3
        text = info["text"]
        assert text.startswith("AdaptiveDiffusion [target, planner schedule"), text
        speed = float(text.split("(")[1].split("x")[0])
        assert speed > 1.3, (key, text)


def test_the_default_halves_the_nfe_on_every_scheduler_of_this_comfyui(adaptive_result):
    """The three AdaptiveDiffusion nodes take KSampler's sigmas, whatever scheduler made them: every one this ComfyUI
    lists, at 30 steps (ddim_uniform: 31), euler, dpmpp_2m_sde and uni_pc."""
    got = adaptive_result["schedulers"]
    assert {k.split("/")[0] for k in got} == set(adaptive_result["host_schedulers"])
    assert {"ddim_uniform", "kl_optimal", "linear_quadratic"} <= set(adaptive_result["host_schedulers"])
    for key, info in got.items():
        assert info["finite"], key
        assert info["report_steps"] == info["steps"] >= 30, (key, info)
        assert info["speedup"] >= 1.9, (key, info["text"])
    assert got["ddim_uniform/euler"]["steps"] == 31


def test_refused_samplers_get_a_clear_error(adaptive_result):
    for name in ["dpm_fast", "heunpp2", "dpm_adaptive"]:
        msg = adaptive_result["errors"][name]
        assert isinstance(msg, str) and msg.startswith("sampler_name:") and name in msg
        assert "UnsupportedSampler" in adaptive_result["errors"][name + "/execute"]


def test_every_served_samplers_evaluations_stay_in_their_steps(adaptive_result):
    """The default maps each evaluation of every served sampler onto its own step: one record per step, the first
    step's evaluations as many as any step's, none off the schedule; the two-stage ancestral samplers (whose midpoint at
    eta 1 is sigma_{i+1}) have two evaluations at every computed step but the last, and skip every other step.
    (sa_solver_pece's corrector evaluates at sigma_{i+1}, the next step's own sigma, and is counted with that step,
    as support.py notes: its first step has one.)"""
    got = adaptive_result["evals"]
    assert set(got) == set(support.served_names()) & set(adaptive_result["host_samplers"])
    for name, info in got.items():
        ev = info["evals"]
        assert len(ev) == info["steps"], (name, info)
        assert ev[0] == max(ev) or name == "sa_solver_pece", (name, info)
        assert not any("off its schedule" in n for n in info["notes"]), (name, info)
    for name in ("dpm_2_ancestral", "dpmpp_2s_ancestral"):
        info = got[name]
        computed = [e for e, c in zip(info["evals"][:-1], info["path"]) if c == "C"]
        assert computed and set(computed) == {2}, (name, info)


def test_every_noisy_sampler_reuses_by_its_rule_under_auto(adaptive_result):
    """Inside ComfyUI the default's reuse on the eps model, for every served sampler, as its support entry says and
    the report says it: hold throughout, planned with the noise injected (dpmpp_sde, dpmpp_3m_sde, sa_solver, seeds_2
    / 3, dpmpp_2s_ancestral, ...), hold below sigma 1 (dpm_2_ancestral), dpmpp_2m_sde's hold below sigma 1 and after a
    long step (its family, res_multistep_ancestral, exp_heun_2_x0_sde), euler_ancestral's hold after a long gap (ddpm,
    sa_solver_pece); no rule: linear or log-linear, never a hold (or nothing reused where respace auto re-spaces)."""
    got = adaptive_result["evals"]
    reports = {
        "hold_always": "hold (auto, the sampler's rule)",
        "hold_below_sigma": "linear (auto), hold below sigma 1 (the sampler's rule)",
        "hold_low_noise": "linear (auto), hold below sigma 1 and 0.2 or more in log sigma from the last computed step "
        "(the sampler's rule)",
        "hold_long_gap": "hold 1.5 or more of the run's median steps (",
    }
    seen = set()
    for name, info in got.items():
        rule, text = support.lookup(name).reuse, info["reuse"]
        if support.lookup(name).respace.startswith("chunks"):  # dpmpp_3m_sde: re-spaced, nothing reused
            assert text == "none (re-spaced)", (name, text)
            continue
        if not rule:  # (lms on normal: re-spaced by respace auto, nothing reused)
            assert text in ("linear (auto)", "log_linear (auto)", "none (re-spaced)"), (name, text)
            continue
        seen.add(rule)
        if rule == "hold_long_gap":  # on linear, or log-linear where the first skip precedes noise (sa_solver_pece)
            assert text.split(", ")[0] in ("linear (auto)", "log_linear (auto)"), (name, text)
            assert text.split(", ", 1)[1].startswith(reports[rule]), (name, rule, text)
        else:
            assert text.startswith(reports[rule]), (name, rule, text)
        planned = "planned with the injected-noise cost (ancestral): every skip holds the last direction"
        assert (rule == "hold_always") == any(n.startswith(planned) for n in info["notes"]), (name, info["notes"])
    assert seen == set(reports)
    assert got["dpm_2"]["reuse"] == "linear (auto)"


def test_dpmpp_3m_sde_re_spaces_in_runs_of_consecutive_steps(adaptive_result):
    """Its respace rule inside ComfyUI: at 20 steps (10 computed) every other sigma, nothing reused, the report says
    why; at 15 steps (7 computed) runs of two and a last run of three."""
    for name in ("dpmpp_3m_sde", "dpmpp_3m_sde_gpu"):
        info = adaptive_result["evals"][name]
        assert info["path"] == "Cs" * 10 and info["reuse"] == "none (re-spaced)", (name, info)
        assert any("on 10 runs of 2 consecutive steps" in n for n in info["notes"]), (name, info["notes"])
    odd = adaptive_result["dpmpp_3m_sde_15"]
    assert odd["respaced"] and odd["path"] == "Cs" * 6 + "Css" and odd["reuse"] == "none (re-spaced)", odd
    assert "7 runs of 2 or 3 consecutive steps, the longer last" in odd["text"], odd["text"]
