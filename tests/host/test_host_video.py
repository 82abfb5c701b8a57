"""AdaptiveDiffusion on a video model inside a real ComfyUI, loaded the way users load one.

The model is a tiny Wan 2.1 text-to-video DiT written with ComfyUI's own ``WanModel`` class (two blocks, width 128,
random weights) into ``models/diffusion_models``, loaded through ``UNETLoader`` (ComfyUI detects it as WAN21_T2V from
its keys), with ``ModelSamplingSD3`` at shift 8 as Wan workflows set, on the 5-D latent of ``EmptyHunyuanLatentVideo``
(16 channels, 9 frames -> 3 latent frames). The conditioning has the shape of Wan's umt5-xxl text encoder ([1, L,
4096]); no text encoder is loaded. Checked: the KSampler node with skipping off is bit-identical with stock KSampler;
the default halves the NFE, the model patch gives the same latents, and it is closer to the full run than fewer steps at
the same NFE, at CFG 5 and at CFG 1 (distilled Wan LoRAs; ComfyUI then evaluates the positive prompt only); with a
different conditioning per video in a batch, per-sample skipping gives each video what it gets alone along the same
skip path, at both scales; a skip profile calibrated on it (AdaptiveDiffusion Calibrate's search) is sampled along.
Wan 2.2's split between a high-noise and a low-noise expert (two KSamplerAdvanced nodes, each model patched) runs the
whole run's plan, a slice per call.
"""

import re

import pytest

# (sampler, scheduler, cfg): Wan workflows run uni_pc / euler on simple; CFG 1 is what distilled Wan LoRAs run, where
# ComfyUI evaluates the positive prompt only
CASES = [
    ("euler", "simple", 5.0),
    ("uni_pc", "simple", 5.0),
    ("dpmpp_2m", "normal", 5.0),
    ("euler_ancestral", "normal", 5.0),
    ("euler", "simple", 1.0),
]

# writes tiny Wan 2.1 text-to-video files (ComfyUI's own Wan class, random weights N(0, 1/fan_in), norms 1, biases 0)
# where a user's UNETLoader reads them, and loads one as a user does
PREFIX = r"""
import torch
import comfy.ops
import comfy.samplers
import folder_paths
import nodes
from pathlib import Path
from safetensors.torch import save_file
from comfy.ldm.wan.model import WanModel
from comfy_extras.nodes_hunyuan import EmptyHunyuanLatentVideo
from comfy_extras.nodes_model_advanced import ModelSamplingSD3
from comfyui_tempo.nodes import adaptive as A
from tempo_testnodes import skip_settings
from tempo_testnodes.tiny_files import _randomise

STEPS, SEED = 20, 7
R = {}


def load_wan(seed):
    name = f"tempo_tiny_wan21_t2v_{seed}.safetensors"
    net = WanModel(model_type="t2v", in_dim=16, dim=128, ffn_dim=256, out_dim=16, num_heads=1, num_layers=2,
                   operations=comfy.ops.disable_weight_init)
    sd = _randomise(net.state_dict(), seed)
    path = Path(folder_paths.get_folder_paths("diffusion_models")[0]) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model = nodes.UNETLoader().load_unet(name, "default")[0]
    R.setdefault("config", type(model.model.model_config).__name__)
    return ModelSamplingSD3().patch(model, 8.0)[0]


empty = EmptyHunyuanLatentVideo().generate(48, 48, 9, 1)[0]
R["latent_shape"] = list(empty["samples"].shape)
pos = [[torch.randn(1, 8, 4096, generator=torch.Generator().manual_seed(1)), {}]]
neg = [[torch.zeros(1, 8, 4096), {}]]


def psnr(a, b):
    mse = float(((a - b) ** 2).mean())
    return 10 * torch.log10(torch.tensor(float((b.max() - b.min()) ** 2) / max(mse, 1e-20))).item()
"""

SNIPPET = (
    PREFIX
    + r"""
from comfyui_tempo.nodes.adaptive_profile import calibrate_in_comfy
from comfyui_tempo.samplers.adaptive import AdaptiveConfig

model = load_wan(0)

with torch.inference_mode():
    patched = A.AdaptiveModelPatch.execute(model, **skip_settings()).args[0]
    for name, sched, cfg in __CASES__:
        full = nodes.common_ksampler(model, SEED, STEPS, cfg, name, sched, pos, neg, empty)[0]["samples"]
        fewer = nodes.common_ksampler(model, SEED, STEPS // 2, cfg, name, sched, pos, neg, empty)[0]["samples"]
        off = A.AdaptiveKSampler.execute(model, SEED, STEPS, cfg, name, sched, pos, neg, empty, 1.0,
                                         **skip_settings(mode="threshold", threshold=0.0)).args[0]["samples"]
        r = A.AdaptiveKSampler.execute(model, SEED, STEPS, cfg, name, sched, pos, neg, empty, 1.0, **skip_settings())
        out = r.args[0]["samples"]
        plot = r.args[1]
        via = nodes.common_ksampler(patched, SEED, STEPS, cfg, name, sched, pos, neg, empty)[0]["samples"]
        text = r.ui.as_dict()["text"][0] if hasattr(r.ui, "as_dict") else str(r.ui)
        R[f"{name}/{sched}/{cfg:g}"] = {"text": text, "shape": list(out.shape), "finite": bool(torch.isfinite(out).all()),
                   "off_equal": bool(torch.equal(off, full)), "patch_equal": bool(torch.equal(via, out)),
                   "plot_shape": list(plot.shape), "psnr": psnr(out, full), "psnr_fewer": psnr(fewer, full)}

    # a batch of two videos, each with its own prompt: per-sample skipping against each video alone on its path,
    # at CFG 5 and at CFG 1 (no negative prompt evaluated)
    ctx = torch.randn(2, 8, 4096, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(2, 16, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    lat = torch.zeros(2, 16, 3, 6, 6)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS)

    def sample(config, ctx_, noise_, lat_, cfg):
        sink = []
        sampler = A.wrap_sampler(comfy.samplers.sampler_object("euler"), "euler", config, sink)
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds([[ctx_, {}]], neg)
        guider.set_cfg(cfg)
        return guider.sample(noise_, lat_, sampler, sigmas, seed=SEED), sink[-1]

    config = A.make_config(**skip_settings(mode="threshold", threshold=0.02, max_skip=2, extrapolation="linear",
                                           force_last=1))
    for cfg in (5.0, 1.0):
        both, rep = sample(config, ctx, noise, lat, cfg)
        paths = torch.tensor([rec.mask for rec in rep.records]).T
        alone, wrong = [], []
        for b in range(2):
            on_path = AdaptiveConfig(mode="path", path=paths[b], extrapolation="linear")
            one, _ = sample(on_path, ctx[b:b + 1], noise[b:b + 1], lat[b:b + 1], cfg)
            alone.append(float((one - both[b:b + 1]).abs().max()))
            other, _ = sample(on_path, ctx[1 - b:2 - b], noise[b:b + 1], lat[b:b + 1], cfg)
            wrong.append(float((other - both[b:b + 1]).abs().max()))
        R[f"batch/{cfg:g}"] = {"nfe_per_sample": list(rep.nfe_per_sample),
                               "paths_differ": bool((paths[0] != paths[1]).any()), "alone": alone, "wrong": wrong,
                               "scale": float(both.abs().max()), "notes": list(rep.notes),
                               "computed": [rec.computed for rec in rep.records]}

    # a skip profile calibrated on the video model (two prompts, the error on latents) and sampled along
    pos2 = [[torch.randn(1, 8, 4096, generator=torch.Generator().manual_seed(4)), {}]]
    prof = calibrate_in_comfy(model, [pos, pos2], neg, empty, SEED, 12, 5.0, "euler", "simple", 2.0, "auto")
    r = A.AdaptiveKSampler.execute(model, SEED, 12, 5.0, "euler", "simple", pos, neg, empty, 1.0, profile=prof,
                                   **skip_settings())
    text = r.ui.as_dict()["text"][0] if hasattr(r.ui, "as_dict") else str(r.ui)
    R["profile"] = {"path": "".join("C" if c else "s" for c in prof.path), "metric": prof.metric,
                    "search": prof.search, "calib_nfe": prof.calib_nfe, "text": text,
                    "finite": bool(torch.isfinite(r.args[0]["samples"]).all())}
RESULT = R
"""
)


# Wan 2.2's two experts: KSamplerAdvanced with the high-noise model on steps 0-10 of 20 (leftover noise returned), then
# the low-noise model on steps 10-20, each model patched: by default both plan the whole run and run their slices
SPLIT_SNIPPET = (
    PREFIX
    + r"""
import logging
import comfy.sample
from comfyui_tempo.samplers.adaptive_config import target_skips
from comfyui_tempo.samplers.skip_plan import default_plan

high, low = load_wan(10), load_wan(20)
calls = {}
for key, m in (("high", high), ("low", low)):
    m.model.diffusion_model.register_forward_hook(lambda mod, a, o, key=key: calls.__setitem__(key, calls.get(key, 0) + 1))
ksa = nodes.KSamplerAdvanced()
lines = []
handler = logging.Handler()
handler.emit = lambda record: lines.append(record.getMessage())
logging.getLogger("comfyui_tempo").addHandler(handler)
logging.getLogger("comfyui_tempo").setLevel(logging.INFO)


def pair(h, l, steps, split, sampler="euler", scheduler="simple"):
    calls.clear()
    lines.clear()
    with torch.inference_mode():
        a = ksa.sample(h, "enable", SEED, steps, 5.0, sampler, scheduler, pos, neg, empty, 0, split, "enable")[0]
        out = ksa.sample(l, "disable", SEED, steps, 5.0, sampler, scheduler, pos, neg, a, split, 10000, "disable")[0]
    return out["samples"], dict(calls), list(lines)


def patched(m, **changes):
    return A.AdaptiveModelPatch.execute(m, **skip_settings(**changes)).args[0]


def whole_plan(sampler, scheduler):
    ms = high.get_model_object("model_sampling")
    sig = comfy.samplers.KSampler(high, STEPS, "cpu", sampler, scheduler).sigmas
    plan = default_plan(sig.tolist(), target_skips(STEPS, 2.0), flow=True, also_protect=(STEPS // 2,))
    return [int(plan[: STEPS // 2].sum()), int(plan[STEPS // 2 :].sum())]


full, c_full, _ = pair(high, low, STEPS, STEPS // 2)
fewer, c_fewer, _ = pair(high, low, STEPS // 2, STEPS // 4)
off, c_off, _ = pair(patched(high, target_speedup=1.0), patched(low, target_speedup=1.0), STEPS, STEPS // 2)
skip, c_skip, notes = pair(patched(high), patched(low), STEPS, STEPS // 2)
_, c_call, _ = pair(patched(high, split_plan="call"), patched(low, split_plan="call"), STEPS, STEPS // 2)
_, c_full_k, _ = pair(high, low, STEPS, STEPS // 2, "uni_pc", "karras")
_, c_skip_k, _ = pair(patched(high), patched(low), STEPS, STEPS // 2, "uni_pc", "karras")


# the same split through the SAMPLER node, as BasicScheduler -> SplitSigmas -> two SamplerCustom nodes run it
def custom_pair(h, l, sampler, scheduler):
    calls.clear()
    lines.clear()
    sig = comfy.samplers.calculate_sigmas(h.get_model_object("model_sampling"), scheduler, STEPS).cpu()
    smp = A.AdaptiveSamplerNode.execute(sampler, **skip_settings()).args[0]
    lat = empty["samples"]
    with torch.inference_mode():
        a = comfy.sample.sample_custom(h, comfy.sample.prepare_noise(lat, SEED), 5.0, smp, sig[: STEPS // 2 + 1], pos,
                                       neg, lat, seed=SEED)
        out = comfy.sample.sample_custom(l, torch.zeros_like(a), 5.0, smp, sig[STEPS // 2 :], pos, neg, a, seed=SEED)
    plan = default_plan(sig.tolist(), target_skips(STEPS, 2.0), flow=True, also_protect=(STEPS // 2,))
    return out, dict(calls), list(lines), [int(plan[: STEPS // 2].sum()), int(plan[STEPS // 2 :].sum())]


c_out, c_calls, c_notes, _ = custom_pair(high, low, "euler", "simple")
_, u_calls, u_notes, u_plan = custom_pair(high, low, "uni_pc", "simple")
R["custom"] = {"equal": bool(torch.equal(c_out, skip)), "calls": c_calls, "notes": c_notes, "uni_pc_calls": u_calls,
               "uni_pc_notes": u_notes, "uni_pc_plan": u_plan}


# three calls (a first stage on steps 0-4, then the two experts): the middle call continues the first
def triple(h, l):
    calls.clear()
    lines.clear()
    with torch.inference_mode():
        a = ksa.sample(h, "enable", SEED, STEPS, 5.0, "euler", "simple", pos, neg, empty, 0, 4, "enable")[0]
        b = ksa.sample(h, "disable", SEED, STEPS, 5.0, "euler", "simple", pos, neg, a, 4, STEPS // 2, "enable")[0]
        out = ksa.sample(l, "disable", SEED, STEPS, 5.0, "euler", "simple", pos, neg, b, STEPS // 2, 10000, "disable")[0]
    return out["samples"], dict(calls), list(lines)


_, t_calls, t_notes = triple(patched(high), patched(low))
sig = comfy.samplers.KSampler(high, STEPS, "cpu", "euler", "simple").sigmas.tolist()
first = default_plan(sig, target_skips(STEPS, 2.0), flow=True, also_protect=(4,))
rest = default_plan(sig, target_skips(STEPS, 2.0), flow=True, also_protect=(4, STEPS // 2), fixed=first[:4].tolist())
R["triple"] = {"calls": t_calls, "notes": t_notes, "plan": [int(first[:4].sum() + rest[4 : STEPS // 2].sum()),
                                                            int(rest[STEPS // 2 :].sum())]}
# the second call alone (as img2img at denoise 0.5 would run it): no first call recorded, it plans its own sigmas
A.SPLIT_RUNS._runs.clear()
calls.clear()
with torch.inference_mode():
    ksa.sample(patched(low), "enable", SEED, STEPS, 5.0, "euler", "simple", pos, neg, empty, STEPS // 2, 10000, "disable")
R["split"] = {"off_equal": bool(torch.equal(off, full)), "calls_full": c_full, "calls_off": c_off,
              "calls_skip": c_skip, "calls_call": c_call, "calls_fewer": c_fewer,
              "finite": bool(torch.isfinite(skip).all()), "psnr": psnr(skip, full), "psnr_fewer": psnr(fewer, full),
              "plan": whole_plan("euler", "simple"), "notes": notes, "calls_full_k": c_full_k,
              "calls_skip_k": c_skip_k, "plan_k": whole_plan("uni_pc", "karras"), "tail_alone": calls.get("low", 0)}
RESULT = R
"""
)


@pytest.fixture(scope="module")
def split_result(comfy_snippet):
    return comfy_snippet(SPLIT_SNIPPET, timeout=600)


def test_two_experts_split_by_ksampler_advanced_plan_the_whole_run(split_result):
    """Wan 2.2's high / low-noise experts (KSamplerAdvanced steps 0-10 and 10-20 of 20), each behind the model patch:
    skipping off is bit-identical with the plain pair. By default (split_plan whole_run) the two calls run the whole
    run's plan, a slice each: their calls together halve, each expert's are the plan's slice (at shift 8 the first
    half of `simple` is the cheaper one to skip: it runs fewer there), both calls' reports say so; uni_pc on karras
    too (KSampler's schedule for it, its penultimate sigma discarded). split_plan call halves each expert's calls.
    The second call alone, with no first call before it (as img2img runs a schedule's last steps), plans its own
    sigmas. (Two random experts make no consistent trajectory, so the pictures are not compared here; split runs on
    the trained testbeds: `comfyui-tempo bench adaptive --grid --grid-split K`, docs/adaptive.md "Video models".)"""
    r = split_result["split"]
    print(
        f"\ncalls {r['calls_full']} -> {r['calls_skip']} (whole run), {r['calls_call']} (call); plan {r['plan']}; "
        f"default {r['psnr']:.1f} dB, fewer steps {r['psnr_fewer']:.1f}"
    )
    assert split_result["config"] == "WAN21_T2V"
    assert r["off_equal"] and r["calls_off"] == r["calls_full"], r
    per_step = r["calls_full"]["high"] // 10
    assert [r["calls_skip"]["high"], r["calls_skip"]["low"]] == [per_step * n for n in r["plan"]], r
    assert r["plan"] != [5, 5] and sum(r["plan"]) == 10, r  # not half of each call: the whole run's plan
    assert sum(r["calls_full"].values()) >= 1.95 * sum(r["calls_skip"].values()), r
    assert [r["calls_skip_k"]["high"], r["calls_skip_k"]["low"]] == [per_step * n for n in r["plan_k"]], r
    assert sum(r["plan_k"]) == 10 and r["plan_k"] != [5, 5], r
    split_notes = [line for line in r["notes"] if "of a 20-step simple run, split at step 10" in line]
    assert len(split_notes) == 2 and "first call" in split_notes[0] and "second call" in split_notes[1], r["notes"]
    for key in ("high", "low"):
        assert r["calls_full"][key] >= 1.95 * r["calls_call"][key], r
    assert r["tail_alone"] == per_step * 5, r
    assert r["finite"], r


def test_three_calls_keep_the_whole_runs_target(split_result):
    """A first stage on steps 0-4, then the two experts (4-10 on the high-noise one, 10-20 on the low-noise one), all
    patched: the middle call continues the first and the last the middle; the later calls keep what the earlier ran
    and plan the rest with both split steps, so the three together halve the network calls; their reports say so."""
    t, r = split_result["triple"], split_result["split"]
    per_step = r["calls_full"]["high"] // 10
    assert [t["calls"]["high"], t["calls"]["low"]] == [per_step * n for n in t["plan"]] and sum(t["plan"]) == 10, t
    parts = [line for line in t["notes"] if "of a 20-step simple run, split at step" in line]
    assert len(parts) == 3, t["notes"]
    assert "(first call" in parts[0] and "(middle call" in parts[1] and "(last call" in parts[2], parts
    assert "split at steps 4, 10" in parts[1] and "split at steps 4, 10" in parts[2], parts


def test_the_sampler_node_split_by_split_sigmas_plans_the_whole_run_too(split_result):
    """The same split through the AdaptiveDiffusion Sampler (BasicScheduler's sigmas cut at step 10, two SamplerCustom
    calls, as SplitSigmas feeds them): the same latents as the two patched KSamplerAdvanced calls. uni_pc: its sigmas
    come whole from BasicScheduler (KSampler would discard the penultimate one), and the SAMPLER node plans them so:
    each call runs its slice of that run's plan, and no note that the calls planned different runs."""
    c, r = split_result["custom"], split_result["split"]
    per_step = r["calls_full"]["high"] // 10
    assert c["equal"] and c["calls"] == r["calls_skip"], c
    assert [c["uni_pc_calls"]["high"], c["uni_pc_calls"]["low"]] == [per_step * n for n in c["uni_pc_plan"]], c
    assert sum(c["uni_pc_plan"]) == 10 and c["uni_pc_plan"] != [5, 5], c
    notes = [line for line in c["uni_pc_notes"] if "of a 20-step simple run, split at step 10" in line]
    assert len(notes) == 2 and not any("sigmas begin both" in line for line in c["uni_pc_notes"]), c


@pytest.fixture(scope="module")
def video_result(comfy_snippet):
    return comfy_snippet(SNIPPET.replace("__CASES__", repr(CASES)), timeout=600)


def test_the_tiny_wan_file_loads_as_wan_with_a_video_latent(video_result):
    assert video_result["config"] == "WAN21_T2V", video_result["config"]
    assert video_result["latent_shape"] == [1, 16, 3, 6, 6], video_result["latent_shape"]


@pytest.mark.parametrize("name,scheduler,cfg", CASES)
def test_skipping_on_a_video_model(video_result, name, scheduler, cfg):
    r = video_result[f"{name}/{scheduler}/{cfg:g}"]
    print(
        f"\n{name} / {scheduler} / CFG {cfg:g}: default {r['psnr']:.1f} dB from the full run, fewer steps {r['psnr_fewer']:.1f}"
    )
    print(r["text"])
    assert r["off_equal"], "skipping off differs from stock KSampler"
    assert r["shape"] == [1, 16, 3, 6, 6] and r["finite"], r
    nfe, evals = map(float, re.search(r"NFE ([\d.]+) of (\d+)", r["text"]).groups())
    assert evals / nfe >= 1.95, r["text"]
    # reused as a flow model's (on an eps / v model euler reuses log_linear, euler_ancestral holds after a long gap)
    assert "linear (auto)]" in r["text"], r["text"]
    assert r["patch_equal"], "the model patch and the KSampler node differ"
    assert r["plot_shape"][0] == 1 and r["plot_shape"][-1] == 3, r["plot_shape"]
    assert r["psnr"] > r["psnr_fewer"], r


@pytest.mark.parametrize("cfg", [5.0, 1.0])
def test_per_sample_skipping_with_a_prompt_per_video(video_result, cfg):
    b = video_result[f"batch/{cfg:g}"]
    print(
        f"\nCFG {cfg:g}: per-video NFE {b['nfe_per_sample']}, paths differ: {b['paths_differ']}, alone {b['alone']}, "
        f"with the other prompt {b['wrong']}"
    )
    # steps where one video ran and the other did not, run on that video alone (its prompt sliced from the batch's)
    assert any(0.0 < c < 1.0 for c in b["computed"]), b["computed"]
    assert not [n for n in b["notes"] if "cannot slice" in n], b["notes"]
    tol = 1e-4 * max(1.0, b["scale"])  # batched against single attention: float32 rounding (2e-5 here)
    assert max(b["alone"]) <= tol, b
    # the check can fail: the other video's prompt along the same path gives another video
    assert min(b["wrong"]) > 100 * tol, b


def test_a_profile_calibrated_on_the_video_model_is_sampled_along(video_result):
    p = video_result["profile"]
    print(f"\nprofile {p['path']} ({p['search']}, {p['calib_nfe']} NFE to calibrate)")
    assert p["metric"] == "latent_mse" and p["calib_nfe"] > 0, p
    assert p["path"].count("s") == 6 and p["path"][0] == "C", p
    assert p["text"].startswith("AdaptiveDiffusion [path"), p["text"]
    assert p["text"].split(" path ")[1].split()[0].rstrip(",") == p["path"] and p["finite"], p["text"]
