"""AdaptiveDiffusion per-sample skipping inside a real ComfyUI with a different conditioning per image.

The batch is the benchmark's: the testbed MODEL with a positive conditioning of one class per image (a
conditioning tensor of batch B, as a batched prompt gives), CFG 5, karras. Per-sample skipping must run the
network only on the images that need it with their own conditionings (nodes/adaptive_batch.py slices them), each
image must come out as if it had been sampled alone with its own conditioning and the same skip path, and the
report must count what ran: a forward hook on the network counts the rows it really saw. A guider the runner does
not know makes it run the whole batch: the report then says so and counts that.
"""

import json

import pytest

SNIPPET = r"""
import json, time, torch
import comfy.samplers
from comfyui_tempo.nodes import adaptive as A
from comfyui_tempo.samplers.adaptive import AdaptiveConfig
import tempo_testnodes as T

P = json.loads(__PARAMS__)
torch.manual_seed(0)
model = T.build_model()
net = model.model.diffusion_model.net
rows = [0]
net.register_forward_hook(lambda m, a, o: rows.__setitem__(0, rows[0] + a[0].shape[0]))
classes = P["classes"]
B, STEPS, CFG, SEED = len(classes), P["steps"], 5.0, 3
pos_all = torch.nn.functional.one_hot(torch.tensor(classes), T.CONTEXT_DIM).float()[:, None, :]
POS = [[pos_all, {}]]
NEG = [[T.class_cond(T.NULL_CLASS), {}]]
noise = torch.randn(B, 4, 8, 8, generator=torch.Generator().manual_seed(1))
empty = torch.zeros(B, 4, 8, 8)
sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", STEPS)


class ThirdPartyGuider(comfy.samplers.CFGGuider):
    # a custom node's guider: the runner cannot know where it keeps what is per image
    def predict_noise(self, x, timestep, model_options={}, seed=None):
        return super().predict_noise(x, timestep, model_options, seed)


def settings(batch_mode):
    return dict(mode="threshold", target_speedup=2.0, threshold=P["threshold"], max_skip=4, extrapolation="linear",
                force_last=1, start_percent=0.0, estimator_space="vp", batch_mode=batch_mode)


def sample(name, config, pos, noise, latent, mask=None, guider_cls=comfy.samplers.CFGGuider):
    sink = []
    sampler = A.wrap_sampler(comfy.samplers.sampler_object(name), name, config, sink)
    g = guider_cls(model)
    g.set_conds(pos, NEG)
    g.set_cfg(CFG)
    rows[0] = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = g.sample(noise, latent, sampler, sigmas, denoise_mask=mask, seed=SEED)
    return out, sink[-1], rows[0], time.perf_counter() - t0


def info(rep, n_rows, wall):
    masks = [r.mask for r in rep.records]
    return {
        "nfe_per_sample": list(rep.nfe_per_sample),
        "nfe": rep.nfe,
        "rows": n_rows,  # network rows: cond + uncond per image per evaluation
        "computed": [r.computed for r in rep.records],
        "masks": masks,
        "evals": [r.evals for r in rep.records],
        # what the records say ran, per image
        "ran_per_record": [sum(r.evals for r in rep.records if r.mask[i]) for i in range(len(rep.nfe_per_sample))],
        # steps where at least one image ran: the whole batch would run there
        "any_ran": sum(r.evals for r in rep.records if any(r.mask)),
        "notes": list(rep.notes),
        "summary": rep.summary(),
        "wall_s": round(wall, 3),
    }


R = {}
for name in P["samplers"]:
    R[name] = {}
    for key, guider_cls, mode in (("per_sample", comfy.samplers.CFGGuider, "per_sample"),
                                  ("per_batch", comfy.samplers.CFGGuider, "per_batch"),
                                  ("whole_batch", ThirdPartyGuider, "per_sample")):
        out, rep, n, wall = sample(name, A.make_config(**settings(mode)), POS, noise, empty, guider_cls=guider_cls)
        R[name][key] = info(rep, n, wall)
        if key == "per_sample" and P["alone"]:
            # each image alone, with its own conditioning and the skip path the batch run gave it
            path = torch.tensor([r.mask for r in rep.records]).T
            diffs = []
            for b in range(B):
                cfg_b = AdaptiveConfig(mode="path", path=path[b], extrapolation="linear")
                one, rep1, n1, _ = sample(name, cfg_b, [[pos_all[b:b + 1], {}]], noise[b:b + 1], empty[b:b + 1])
                diffs.append(float((one - out[b:b + 1]).abs().max()))
                assert rep1.nfe_per_sample[0] == rep.nfe_per_sample[b]
            # the same paths with every image given the first image's conditioning: what a mis-paired sub-batch gets
            wrong = []
            for b in range(1, B):
                cfg_b = AdaptiveConfig(mode="path", path=path[b], extrapolation="linear")
                one, _, _, _ = sample(name, cfg_b, [[pos_all[0:1], {}]], noise[b:b + 1], empty[b:b + 1])
                wrong.append(float((one - out[b:b + 1]).abs().max()))
            R[name]["alone_max_abs_diff"] = diffs
            R[name]["wrong_cond_max_abs_diff"] = wrong
            R[name]["scale"] = float(out.abs().max())

if P["inpaint"]:
    # inpainting: a latent to keep, a mask per image; the mask, the latent and the noise are sliced too
    name = P["samplers"][0]
    latent = torch.randn(B, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(B, 1, 8, 8)
    for b in range(B):
        mask[b, :, b % 4 * 2 : b % 4 * 2 + 4, :] = 1.0
    out, rep, n, wall = sample(name, A.make_config(**settings("per_sample")), POS, noise, latent, mask=mask)
    R["inpaint"] = info(rep, n, wall)
    path = torch.tensor([r.mask for r in rep.records]).T
    diffs = []
    for b in range(B):
        cfg_b = AdaptiveConfig(mode="path", path=path[b], extrapolation="linear")
        one, _, _, _ = sample(name, cfg_b, [[pos_all[b:b + 1], {}]], noise[b:b + 1], latent[b:b + 1], mask=mask[b:b + 1])
        diffs.append(float((one - out[b:b + 1]).abs().max()))
    R["inpaint"]["alone_max_abs_diff"] = diffs
    R["inpaint"]["kept_max_abs_diff"] = float(((out - latent) * (1 - mask)).abs().max())

# the node itself: its report text gives the same NFE
ks = A.AdaptiveKSampler.execute(model, SEED, STEPS, CFG, P["samplers"][0], "karras", POS, NEG, {"samples": empty},
                                1.0, **settings("per_sample"))
R["node_text"] = ks.ui.as_dict()["text"][0] if hasattr(ks.ui, "as_dict") else str(ks.ui)
RESULT = R
"""

SAMPLERS = ["euler", "dpmpp_2m", "euler_cfg_pp"]
PARAMS = dict(classes=[2, 7, 1, 9, 4, 0], steps=30, threshold=0.01, samplers=SAMPLERS, alone=True, inpaint=True)


@pytest.fixture(scope="module")
def batch_result(comfy_snippet):
    return comfy_snippet(SNIPPET.replace("__PARAMS__", repr(json.dumps(PARAMS))), timeout=900)


def _notes(run: dict) -> list:
    """The run's notes but CFG++'s (that a skipped step's unguided prediction was reused: test_host_cfgpp.py)."""
    return [n for n in run["notes"] if not n.startswith("CFG++:")]


def _consistent(run: dict, cfg_rows: int = 2) -> None:
    """The report counts what ran: its NFE equals the network's rows, and its step records say the same."""
    assert run["rows"] == cfg_rows * sum(run["nfe_per_sample"]), run
    assert run["ran_per_record"] == run["nfe_per_sample"], run


@pytest.mark.parametrize("name", SAMPLERS)
def test_per_sample_runs_only_the_images_that_need_it(batch_result, name):
    r = batch_result[name]
    ps, pb, whole = r["per_sample"], r["per_batch"], r["whole_batch"]
    print(
        f"\n{name}: NFE per image per_sample {ps['nfe']:.2f}, per_batch {pb['nfe']:.2f}, "
        f"whole batch whenever one image needs it {whole['nfe']:.2f} (of {len(ps['computed'])} steps)"
    )
    for run in (ps, pb, whole):
        _consistent(run)
    # partly run steps exist and really ran part of the batch: fewer rows than the whole batch at those steps
    assert any(0.0 < c < 1.0 for c in ps["computed"]), ps["computed"]
    assert not _notes(ps), ps["notes"]
    assert ps["nfe"] < ps["any_ran"], ps
    # the whole-batch behaviour (what the runner did before it sliced conditionings) costs more per image
    assert ps["nfe"] < whole["nfe"], (ps["nfe"], whole["nfe"])


@pytest.mark.parametrize("name", SAMPLERS)
def test_each_image_equals_its_own_run_alone(batch_result, name):
    r = batch_result[name]
    tol = 1e-4 * max(1.0, r["scale"])
    assert max(r["alone_max_abs_diff"]) <= tol, r["alone_max_abs_diff"]
    # the check can fail: the same skip path with another image's conditioning is far off
    assert min(r["wrong_cond_max_abs_diff"]) > 100 * tol, r["wrong_cond_max_abs_diff"]


def test_inpainting_mask_latent_and_noise_are_sliced_too(batch_result):
    r = batch_result["inpaint"]
    _consistent(r)
    assert any(0.0 < c < 1.0 for c in r["computed"]), r["computed"]
    assert not r["notes"], r["notes"]
    assert max(r["alone_max_abs_diff"]) <= 2e-4, r["alone_max_abs_diff"]
    assert r["kept_max_abs_diff"] <= 1e-5  # the unmasked part stays the latent


@pytest.mark.parametrize("name", SAMPLERS)
def test_a_guider_it_cannot_slice_runs_the_whole_batch_and_says_so(batch_result, name):
    whole = batch_result[name]["whole_batch"]
    _consistent(whole)
    assert set(whole["computed"]) <= {0.0, 1.0}, whole["computed"]  # no step claims to have run part of the batch
    assert whole["nfe"] == whole["any_ran"]
    (note,) = _notes(whole)
    assert note.startswith("per-image conditioning this runner cannot slice: a guider this runner does not know")
    n = int(note.split("the whole batch ran at ")[1].split(" step")[0])
    assert n >= 1 and note in whole["summary"]


def test_the_node_reports_the_sliced_run(batch_result):
    text = batch_result["node_text"]
    assert text.startswith("AdaptiveDiffusion [threshold"), text
    assert "cannot slice" not in text and "p" in text.split("path ")[1], text


SLICE_SNIPPET = r"""
import torch
import comfy.conds, comfy.controlnet
from comfyui_tempo.nodes import adaptive_batch as AB

B = 4
idx = torch.tensor([1, 3])
per_image = torch.arange(B, dtype=torch.float32).reshape(B, 1, 1) + torch.zeros(B, 2, 3)
two = torch.tensor([10.0, 11.0]).reshape(2, 1)  # batch 2 for a latent batch of 4: ComfyUI tiles it (row i % 2)
one = torch.ones(1, 5)
cond = {"model_conds": {"c_crossattn": comfy.conds.CONDCrossAttn(per_image), "y": comfy.conds.CONDRegular(two),
                        "c_concat": comfy.conds.CONDNoiseShape(torch.arange(B).float().reshape(B, 1, 1, 1)),
                        "pooled": comfy.conds.CONDRegular(one), "const": comfy.conds.CONDConstant(3),
                        "refs": comfy.conds.CONDList([torch.arange(B).float().reshape(B, 1), one])},
        "mask": torch.arange(B).float().reshape(B, 1, 1), "uuid": "u"}
uncond = {"model_conds": {"c_crossattn": comfy.conds.CONDCrossAttn(torch.zeros(1, 2, 3))}, "uuid": "v"}
conds = {"positive": [cond], "negative": [uncond]}
R = {}
out = AB.slice_conds(conds, B, idx)
mc = out["positive"][0]["model_conds"]
# what ComfyUI itself gives images 1 and 3 when it fits the whole conditioning to the whole batch
full = {k: v.process_cond(batch_size=B, area=None) for k, v in cond["model_conds"].items()}
R["crossattn"] = torch.equal(mc["c_crossattn"].cond, full["c_crossattn"].cond[idx])
R["y_tiled"] = mc["y"].cond.flatten().tolist()
R["y_like_comfy"] = torch.equal(mc["y"].process_cond(batch_size=2).cond, full["y"].cond[idx])
R["concat"] = mc["c_concat"].cond.flatten().tolist()
R["kept"] = [mc["pooled"] is cond["model_conds"]["pooled"], mc["const"] is cond["model_conds"]["const"],
             out["negative"][0] is uncond]
R["list"] = [mc["refs"].cond[0].flatten().tolist(), mc["refs"].cond[1] is one]
R["mask"] = out["positive"][0]["mask"].flatten().tolist()
R["original_untouched"] = torch.equal(cond["model_conds"]["c_crossattn"].cond, per_image) and cond["mask"].shape[0] == B
R["nothing_per_image"] = AB.slice_conds({"negative": [uncond]}, B, idx) is None


def refuses(c):
    try:
        AB.slice_conds({"positive": [c]}, B, idx)
        return None
    except AB.CannotSlice as e:
        return str(e)


class Odd(comfy.conds.CONDRegular):  # a conditioning class with its own batch rule
    def process_cond(self, batch_size, **kwargs):
        return self._copy_with(self.cond[:batch_size])


R["odd_class"] = refuses({"model_conds": {"odd": Odd(per_image)}})
R["odd_class_batch1"] = refuses({"model_conds": {"odd": Odd(one)}})
hint = comfy.controlnet.ControlBase()
hint.set_cond_hint(torch.zeros(B, 3, 16, 16))
R["hint_per_image"] = refuses({"model_conds": {}, "control": hint})
single = comfy.controlnet.ControlBase()
single.set_cond_hint(torch.zeros(1, 3, 16, 16))
R["hint_single"] = refuses({"model_conds": {}, "control": single})
chained = comfy.controlnet.ControlBase()
chained.set_cond_hint(torch.zeros(1, 3, 16, 16))
chained.previous_controlnet = hint
R["hint_in_chain"] = refuses({"model_conds": {}, "control": chained})
R["mask_misfit"] = refuses({"model_conds": {}, "mask": torch.zeros(3, 1, 1)})
RESULT = R
"""


def test_slicing_gives_each_image_the_rows_comfyui_gives_it(comfy_snippet):
    r = comfy_snippet(SLICE_SNIPPET, timeout=300)
    assert r["crossattn"] and r["y_like_comfy"] and r["original_untouched"] and r["nothing_per_image"], r
    assert r["y_tiled"] == [11.0, 11.0]  # images 1 and 3 of a batch-2 conditioning tiled over 4
    assert r["concat"] == [1.0, 3.0] and r["mask"] == [1.0, 3.0]
    assert r["kept"] == [True, True, True]  # batch 1, constants and an untouched negative stay the same objects
    assert r["list"] == [[1.0, 3.0], True]
    assert r["odd_class"] and "does not know" in r["odd_class"] and r["odd_class_batch1"] is None
    assert "ControlNet hint" in r["hint_per_image"] and r["hint_single"] is None
    assert "ControlNet hint" in r["hint_in_chain"]
    assert "mask of batch 3" in r["mask_misfit"]
