"""AdaptiveDiffusion skip profiles inside a real ComfyUI: the Calibrate node saves a profile, the loader reads it
back, and the KSampler, the SAMPLER and the model patch sample exactly the profile's path; a run on another
schedule is refused naming the input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from comfy_client import Graph, HostError

STEPS = 8
SAVE = "tempo_host/calib"


def _base(g, seed=5):
    model = g.node("TempoTestbedModel")
    pos = g.node("TempoTestbedClass", class_id=3)
    neg = g.node("TempoTestbedClass", class_id=10)
    latent = g.node("TempoTestbedEmptyLatent", batch_size=1)
    return model, pos, neg, latent


def _settings(comfy, node: str) -> dict:
    """The node's widget inputs at their defaults (every AdaptiveDiffusion setting; the profile overrides them)."""
    spec = comfy.object_info(node)[node]["input"]["required"]
    out = {}
    for name, value in spec.items():
        opts = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
        if "default" in opts:
            out[name] = opts["default"]
        elif isinstance(value[0], list) and value[0]:
            out[name] = value[0][0]
        elif value[0] == "COMBO" and opts.get("options"):
            out[name] = opts["options"][0]
    return out


def _ksampler(comfy, g, model, pos, neg, latent, profile, steps=STEPS, scheduler="karras"):
    return g.node("TempoAdaptiveKSampler", **_settings(comfy, "TempoAdaptiveKSampler")).set(
        model=model.out(0), seed=5, steps=steps, cfg=5.0, sampler_name="euler", scheduler=scheduler,
        positive=pos.out(0), negative=neg.out(0), latent_image=latent.out(0), denoise=1.0, profile=profile,
    )  # fmt: skip


@pytest.fixture(scope="module")
def calibrated(comfy, comfy_base):
    g = Graph()
    model, pos, neg, latent = _base(g)
    pos2 = g.node("TempoTestbedClass", class_id=7)
    vae = g.node("TempoTestbedVAE", name="testbed")
    cal = g.node(
        "TempoAdaptiveCalibrate", node_id="cal", model=model.out(0), positive=pos.out(0), negative=neg.out(0),
        latent_image=latent.out(0), seed=1, steps=STEPS, cfg=5.0, sampler_name="euler", scheduler="karras",
        target_speedup=2.0, extrapolation="linear", save_name=SAVE, batch_rows=8, vae=vae.out(0),
        positive_2=pos2.out(0),
    )  # fmt: skip
    ks = _ksampler(comfy, g, model, pos, neg, latent, cal.out(0))
    ks_id = ks.id
    dec = g.node("TempoTestbedDecode", samples=ks.out(0))
    g.node("SaveImage", node_id="save", images=dec.out(0), filename_prefix="tempo_host/calib_ks")
    entry = comfy.run(g, timeout=600)
    path = comfy_base / "output" / "tempo_profiles" / (SAVE + ".json")
    return {
        "entry": entry,
        "ks_text": entry["outputs"][ks_id]["text"][0],
        "cal_text": entry["outputs"]["cal"]["text"][0],
        "file": json.loads(path.read_text()),
        "image": comfy.output_images(entry, "save")[0],
    }


def _path_of(text: str) -> str:
    return text.split(" path ")[1].split()[0].rstrip(",")


def test_calibrate_saves_a_profile_with_the_requested_skips(calibrated):
    f = calibrated["file"]
    assert f["format"] == "comfyui-tempo/skip-profile" and f["steps"] == STEPS and f["skips"] == STEPS // 2
    assert f["sampler"] == "euler" and f["scheduler"] == "karras" and f["prompts"] == 2
    assert f["metric"] == "image_mse" and f["calib_nfe"] > 0 and len(f["sigmas"]) == STEPS + 1
    assert "TestbedConfig" in f["model"] and "EPS" in f["model"]
    assert "tempo_host/calib.json" in calibrated["cal_text"]
    # the search compared the greedy path with the default's and the planner's, and kept the best on these prompts
    cands = f["candidates"]
    assert {"greedy", "default"} <= set(cands) and any(k.startswith("planner") for k in cands), cands
    assert f["errors"][-1] <= min(cands.values()) * (1 + 1e-5)
    assert "over the default's path" in calibrated["cal_text"]


def test_ksampler_samples_the_profiles_path(calibrated):
    path = "".join("C" if c else "s" for c in calibrated["file"]["path"])
    text = calibrated["ks_text"]
    assert text.startswith("AdaptiveDiffusion [path"), text
    assert _path_of(text) == path and "(2.00x)" in text


def test_loader_and_the_other_two_nodes_give_the_same_images(comfy, calibrated):
    """The loader's profile on the KSampler, the SAMPLER (SamplerCustom) and the model patch (core KSampler):
    the same picture as the KSampler fed by Calibrate directly."""
    spec = comfy.object_info("TempoAdaptiveProfileLoader")["TempoAdaptiveProfileLoader"]["input"]["required"]
    spec = spec["profile_name"]
    options = spec[1]["options"] if spec[0] == "COMBO" else spec[0]  # V3 / V1 combo layouts
    assert "tempo_host/calib.json" in options  # listed once saved (ComfyUI's list follows the folder)
    g = Graph()
    model, pos, neg, latent = _base(g)
    prof = g.node("TempoAdaptiveProfileLoader", profile_name="tempo_host/calib.json")
    ks = _ksampler(comfy, g, model, pos, neg, latent, prof.out(0))
    smp = g.node("TempoAdaptiveSampler", **{**_settings(comfy, "TempoAdaptiveSampler"), "sampler_name": "euler"})
    smp.set(profile=prof.out(0))
    sig = g.node("BasicScheduler", model=model.out(0), scheduler="karras", steps=STEPS, denoise=1.0)
    custom = g.node(
        "SamplerCustom", model=model.out(0), add_noise=True, noise_seed=5, cfg=5.0, positive=pos.out(0),
        negative=neg.out(0), sampler=smp.out(0), sigmas=sig.out(0), latent_image=latent.out(0),
    )  # fmt: skip
    patched = g.node("TempoAdaptiveModel", **_settings(comfy, "TempoAdaptiveModel"))
    patched.set(model=model.out(0), profile=prof.out(0))
    core = g.node(
        "KSampler", model=patched.out(0), seed=5, steps=STEPS, cfg=5.0, sampler_name="euler", scheduler="karras",
        positive=pos.out(0), negative=neg.out(0), latent_image=latent.out(0), denoise=1.0,
    )  # fmt: skip
    for name, samples in (("ks", ks.out(0)), ("custom", custom.out(0)), ("patch", core.out(0))):
        dec = g.node("TempoTestbedDecode", samples=samples)
        g.node("SaveImage", node_id=f"save_{name}", images=dec.out(0), filename_prefix=f"tempo_host/calib_{name}")
    entry = comfy.run(g, timeout=600)
    assert _path_of(entry["outputs"][ks.id]["text"][0]) == _path_of(calibrated["ks_text"])
    ref = calibrated["image"]
    for name in ("ks", "custom", "patch"):
        img = comfy.output_images(entry, f"save_{name}")[0]
        assert np.array_equal(img, ref), name
    # and skipping did something: the same KSampler without the profile samples another picture
    g2 = Graph()
    model, pos, neg, latent = _base(g2)
    plain = g2.node(
        "KSampler", model=model.out(0), seed=5, steps=STEPS, cfg=5.0, sampler_name="euler", scheduler="karras",
        positive=pos.out(0), negative=neg.out(0), latent_image=latent.out(0), denoise=1.0,
    )  # fmt: skip
    dec = g2.node("TempoTestbedDecode", samples=plain.out(0))
    g2.node("SaveImage", node_id="save_plain", images=dec.out(0), filename_prefix="tempo_host/calib_plain")
    full = comfy.output_images(comfy.run(g2, timeout=300), "save_plain")[0]
    assert not np.array_equal(full, ref)


@pytest.mark.parametrize("steps, scheduler", [(STEPS + 2, "karras"), (STEPS, "normal")])
def test_a_run_on_another_schedule_is_refused(comfy, calibrated, steps, scheduler):
    g = Graph()
    model, pos, neg, latent = _base(g)
    prof = g.node("TempoAdaptiveProfileLoader", profile_name="tempo_host/calib.json")
    ks = _ksampler(comfy, g, model, pos, neg, latent, prof.out(0), steps=steps, scheduler=scheduler)
    dec = g.node("TempoTestbedDecode", samples=ks.out(0))
    g.node("PreviewImage", images=dec.out(0))
    with pytest.raises(HostError) as e:
        comfy.run(g, timeout=300)
    msg = str(e.value)
    assert "ProfileError: profile: made for" in msg, msg[:2000]
    assert f"{STEPS} steps" in msg


def test_bad_save_name_and_missing_profile_are_named(comfy):
    g = Graph()
    model, pos, neg, latent = _base(g)
    g.node(
        "TempoAdaptiveCalibrate", model=model.out(0), positive=pos.out(0), negative=neg.out(0),
        latent_image=latent.out(0), seed=1, steps=4, cfg=5.0, sampler_name="euler", scheduler="karras",
        target_speedup=2.0, extrapolation="linear", save_name="../escape", batch_rows=8,
    )  # fmt: skip
    with pytest.raises(HostError, match="save_name: "):
        comfy.run(g, timeout=120)


def test_calibrate_with_the_check_leaves_each_prompt_out(comfy, comfy_base):
    """check on two prompts: one more search per prompt on the other, the searched path against the default's on
    the left-out prompt; the profile is the one the check chose, and its text says so."""
    g = Graph()
    model, pos, neg, latent = _base(g)
    pos2 = g.node("TempoTestbedClass", class_id=7)
    g.node(
        "TempoAdaptiveCalibrate", node_id="cal", model=model.out(0), positive=pos.out(0), negative=neg.out(0),
        latent_image=latent.out(0), seed=1, steps=STEPS, cfg=5.0, sampler_name="euler", scheduler="karras",
        target_speedup=2.0, extrapolation="linear", save_name="tempo_host/calib_check", batch_rows=8,
        positive_2=pos2.out(0), check=True,
    )  # fmt: skip
    entry = comfy.run(g, timeout=600)
    text = entry["outputs"]["cal"]["text"][0]
    f = json.loads((comfy_base / "output" / "tempo_profiles" / "tempo_host/calib_check.json").read_text())
    v = f["validation"]
    assert len(v["fold_paths"]) == 2 and len(v["left_out_search"]) == len(v["left_out_fallback"]) == 2, v
    path = "".join("C" if c else "s" for c in f["path"])
    if v["chosen"] == "search":
        assert path == v["searched_path"] and v["gain_db"] > 0
        assert "on prompts left out of the search" in text, text
    else:
        assert v["chosen"] == "default" and v["gain_db"] <= 0 and f["search"].startswith("default")
        assert "so this profile is the default's path" in text, text


PROGRESS_SNIPPET = r"""
import torch
import comfy.model_base, comfy.utils
from comfyui_tempo.nodes import adaptive_profile
from tempo_testnodes import tiny_sd_model as build

updates = []


class Recorder:
    def __init__(self, total, node_id=None):
        self.total = total

    def update_absolute(self, value, total=None, preview=None):
        updates.append((int(value), int(total if total is not None else self.total)))


comfy.utils.ProgressBar = Recorder
model = build(comfy.model_base.ModelType.EPS)
prompts = [[[torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(s)), {}]] for s in (1, 2, 3)]
neg = [[torch.zeros(1, 2, 64), {}]]
with torch.inference_mode():
    prof = adaptive_profile.calibrate_in_comfy(model, prompts, neg, {"samples": torch.zeros(1, 4, 8, 8)}, 1, 8, 5.0,
                                               "euler", "karras", 2.0, "linear", check=True)
RESULT = {"updates": updates, "chosen": prof.validation.get("chosen"), "prompt_errors": prof.prompt_errors}
"""


def test_calibrate_progress_never_shows_done_while_the_check_still_runs(comfy_snippet):
    """The check's left-out searches and every local search extend the bar's total before they run: it reaches its
    end only with the last call (it used to sit full through the check's local searches)."""
    r = comfy_snippet(PROGRESS_SNIPPET, timeout=600)
    ups = [tuple(u) for u in r["updates"]]
    last = max(v for v, _ in ups)
    early_full = [u for u in ups if u[0] >= u[1] and u[0] < last]
    assert len(ups) > 10 and not early_full, early_full
    assert all(v <= t for v, t in ups), ups
    assert ups[-1] == (last, last)  # and it ends full
    assert len(r["prompt_errors"]) == 3, r  # one per calibration prompt, whichever path the check chose


RESPACE_SNIPPET = r"""
import torch
import comfy.model_base
from comfyui_tempo.nodes import adaptive as adaptive_nodes, adaptive_profile
from tempo_testnodes import skip_settings, tiny_sd_model as build

model = build(comfy.model_base.ModelType.EPS)
prompts = [[[torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(s)), {}]] for s in (1, 2)]
neg = [[torch.zeros(1, 2, 64), {}]]
lat = {"samples": torch.zeros(1, 4, 8, 8)}
S = skip_settings()
result = {}
with torch.inference_mode():
    for sampler, sched in (("lms", "normal"), ("euler", "karras"), ("dpmpp_3m_sde", "karras")):
        prof = adaptive_profile.calibrate_in_comfy(model, prompts, neg, lat, 1, 12, 5.0, sampler, sched, 2.0, "auto")
        out = adaptive_nodes.AdaptiveKSampler.execute(model, 1, 12, 5.0, sampler, sched, prompts[0], neg, lat, 1.0,
                                                      profile=prof, **S)
        text = out.ui.as_dict()["text"][0] if hasattr(out.ui, "as_dict") else str(out.ui)
        result[sampler] = {"candidates": prof.candidates, "respace": prof.respace, "search": prof.search,
                           "summary": prof.summary(), "text": text, "path": list(prof.path)}
    checked = adaptive_profile.calibrate_in_comfy(model, prompts, neg, lat, 1, 12, 5.0, "lms", "normal", 2.0, "auto",
                                                  check=True)
    result["check"] = {k: v for k, v in checked.validation.items() if k != "fold_paths"}
    # a profile marked re-spaced (what the search gives where the re-spaced default wins) runs re-spaced
    import dataclasses
    marked = dataclasses.replace(prof, respace=True)
    out = adaptive_nodes.AdaptiveKSampler.execute(model, 1, 12, 5.0, "euler", "karras", prompts[0], neg, lat, 1.0,
                                                  profile=marked, **S)
    result["marked"] = out.ui.as_dict()["text"][0] if hasattr(out.ui, "as_dict") else str(out.ui)
RESULT = result
"""


def test_calibrate_weighs_the_default_as_it_runs_respaced(comfy_snippet):
    """lms on normal, where respace auto re-spaces the uncalibrated default: the default competes re-spaced, the gain
    is reported against it, and a profile it wins runs re-spaced; on euler / karras nothing changes. dpmpp_3m_sde at
    12 steps re-spaces in runs of two: its re-spaced default is every other step, and a profile it wins is that."""
    r = comfy_snippet(RESPACE_SNIPPET, timeout=600)
    lms, euler = r["lms"], r["euler"]
    assert "default (re-spaced)" in lms["candidates"] and "default" in lms["candidates"], lms
    assert "over the default (re-spaced)" in lms["summary"], lms["summary"]
    assert lms["respace"] == (lms["search"] == "default (re-spaced)"), lms
    assert ("re-spaced" in lms["text"]) == lms["respace"], lms["text"]
    assert "default (re-spaced)" not in euler["candidates"] and not euler["respace"], euler
    assert "re-spaced" not in euler["text"], euler["text"]
    assert "re-spaced" in r["marked"] and "NFE 6" in r["marked"], r["marked"]
    m3 = r["dpmpp_3m_sde"]
    assert "default (re-spaced)" in m3["candidates"] and "over the default (re-spaced)" in m3["summary"], m3
    if m3["respace"]:
        assert m3["search"] == "default (re-spaced)" and m3["path"] == [True, False] * 6, m3
    # the check measures its fallback, the default, as it runs: re-spaced (unless that default won outright)
    v = r["check"]
    assert v.get("fallback_respaced") or "re-spaced" in v.get("note", ""), v
