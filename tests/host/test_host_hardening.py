"""Bad inputs a user can send (paths, file names, values out of range, NaN latents) against a real ComfyUI.

Over HTTP: ComfyUI's own min / max / list checks run for the AdaptiveDiffusion nodes and the DMD Generator Loader
(their validate_inputs declare only the input they check), an unsupported sampler is one error, absolute generator
paths are refused at queue time, a NaN latent through Latent Bridge is said in its report, a 300-character save_name
is a named error. In a snippet: absolute generator / pairs paths, save names that would leave the output folder on
Windows, unreadable trainer checkpoints (kept as they are), DMD metadata that is a JSON list, and NaN through the
bridge, Coop-Diffusion and DMD nodes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from comfy_client import Graph


def post(comfy, graph: Graph) -> dict:
    """POST /prompt; the server's answer (``node_errors`` on a refusal at queue time)."""
    status, payload = comfy._request("POST", "/prompt", {"prompt": graph.api(), "client_id": comfy.client_id})
    assert isinstance(payload, dict), (status, payload)
    return payload


def errors_of(payload: dict) -> list[dict]:
    return [e for node in (payload.get("node_errors") or {}).values() for e in node.get("errors", [])]


def adaptive_ksampler_graph(**inputs) -> tuple[Graph, Graph.Node]:
    g = Graph()
    model = g.node("TempoTestbedModel")
    pos = g.node("TempoTestbedClass", class_id=3)
    neg = g.node("TempoTestbedClass", class_id=10)
    lat = g.node("TempoTestbedEmptyLatent", batch_size=1)
    ks = g.node(
        "TempoAdaptiveKSampler",
        model=model.out(0),
        positive=pos.out(0),
        negative=neg.out(0),
        latent_image=lat.out(0),
        seed=0,
        steps=4,
        cfg=3.0,
        sampler_name="euler",
        scheduler="normal",
        denoise=1.0,
        mode="target_speedup",
        target_speedup=1.0,
        threshold=0.01,
        max_skip=4,
        extrapolation="linear",
        force_last=1,
        start_percent=0.0,
        estimator_space="vp",
        late_bias=0.25,
        placement=0.0,
        estimator="latent",
        batch_mode="per_sample",
    )
    ks.set(**inputs)
    dec = g.node("TempoTestbedDecode", samples=ks.out(0))
    g.node("PreviewImage", images=dec.out(0))
    return g, ks


def adaptive_sampler_graph(**inputs) -> Graph:
    g = Graph()
    model = g.node("TempoTestbedModel")
    pos = g.node("TempoTestbedClass", class_id=3)
    neg = g.node("TempoTestbedClass", class_id=10)
    lat = g.node("TempoTestbedEmptyLatent", batch_size=1)
    smp = g.node(
        "TempoAdaptiveSampler",
        **{
            **dict(
                sampler_name="euler",
                mode="target_speedup",
                target_speedup=1.0,
                threshold=0.01,
                max_skip=4,
                extrapolation="linear",
                force_last=1,
                start_percent=0.0,
                estimator_space="vp",
                late_bias=0.25,
                placement=0.0,
                estimator="latent",
                batch_mode="per_sample",
            ),
            **inputs,
        },
    )
    sch = g.node("BasicScheduler", model=model.out(0), scheduler="normal", steps=4, denoise=1.0)
    sc = g.node(
        "SamplerCustom",
        model=model.out(0),
        add_noise=True,
        noise_seed=0,
        cfg=3.0,
        positive=pos.out(0),
        negative=neg.out(0),
        sampler=smp.out(0),
        sigmas=sch.out(0),
        latent_image=lat.out(0),
    )
    dec = g.node("TempoTestbedDecode", samples=sc.out(0))
    g.node("PreviewImage", images=dec.out(0))
    return g


def loader_graph(generator_name: str, **inputs) -> Graph:
    g = Graph()
    model = g.node("TempoTestbedModel")
    pos = g.node("TempoTestbedClass", class_id=3)
    lat = g.node("TempoTestbedEmptyLatent", batch_size=1)
    ld = g.node(
        "TempoDMDGeneratorLoader",
        **{
            **dict(
                model=model.out(0),
                generator_name=generator_name,
                conditioning_timestep=-1,
                timesteps="from file",
                strength=1.0,
            ),
            **inputs,
        },
    )
    ks = g.node(
        "TempoDMDKSampler",
        model=ld.out(0),
        seed=0,
        timesteps="from model",
        cfg=1.0,
        positive=pos.out(0),
        latent_image=lat.out(0),
    )
    dec = g.node("TempoTestbedDecode", samples=ks.out(0))
    g.node("PreviewImage", images=dec.out(0))
    return g


# ----------------------------------------------------------------------------- item 3: ComfyUI's own checks run
def test_adaptive_ksampler_valid_graph_runs(comfy):
    """The graph's inputs are an API prompt saved before `planner` existed: it still validates and runs, with the
    default planner; a prompt that names the planner gets it."""
    for extra, planner in (({}, "schedule"), ({"planner": "pace"}, "pace")):
        g, ks = adaptive_ksampler_graph(steps=10, target_speedup=2.0, **extra)
        payload = post(comfy, g)
        assert not errors_of(payload), payload
        entry = comfy.wait(payload["prompt_id"], timeout=300)
        assert entry["status"]["status_str"] == "success"
        text = entry["outputs"][ks.id]["text"][0]
        assert text.startswith(f"AdaptiveDiffusion [target, planner {planner}"), text


@pytest.mark.parametrize(
    "inputs, kind, name",
    [
        ({"denoise": 2.0}, "value_bigger_than_max", "denoise"),
        ({"seed": -5}, "value_smaller_than_min", "seed"),
        ({"steps": 0}, "value_smaller_than_min", "steps"),
        ({"target_speedup": 10.0}, "value_bigger_than_max", "target_speedup"),
    ],
)
def test_adaptive_ksampler_inputs_are_checked_by_comfyui(comfy, inputs, kind, name):
    g, _ = adaptive_ksampler_graph(**inputs)
    errs = errors_of(post(comfy, g))
    assert [(e["type"], e["extra_info"]["input_name"]) for e in errs] == [(kind, name)], errs


@pytest.mark.parametrize(
    "inputs, kind, name",
    [
        ({"target_speedup": 10.0}, "value_bigger_than_max", "target_speedup"),
        ({"max_skip": 0}, "value_smaller_than_min", "max_skip"),
    ],
)
def test_adaptive_sampler_inputs_are_checked_by_comfyui(comfy, inputs, kind, name):
    errs = errors_of(post(comfy, adaptive_sampler_graph(**inputs)))
    assert [(e["type"], e["extra_info"]["input_name"]) for e in errs] == [(kind, name)], errs


@pytest.fixture(scope="module")
def checks_v3_combos(comfy) -> bool:
    """Whether this ComfyUI checks a V3 node's combo values at queue time (0.33 does; 0.3.64 compares V1 list
    types only, for every V3 node): probed with the test pack's own combo."""
    g = Graph()
    model = g.node("TempoTestbedModel", name="bogus")
    lat = g.node("TempoTestbedEmptyLatent", batch_size=1)
    pos = g.node("TempoTestbedClass", class_id=3)
    ks = g.node(
        "KSampler",
        model=model.out(0),
        seed=0,
        steps=1,
        cfg=1.0,
        sampler_name="euler",
        scheduler="normal",
        positive=pos.out(0),
        negative=pos.out(0),
        latent_image=lat.out(0),
        denoise=1.0,
    )
    dec = g.node("TempoTestbedDecode", samples=ks.out(0))
    g.node("PreviewImage", images=dec.out(0))
    payload = post(comfy, g)
    if "prompt_id" in payload:
        comfy.wait(payload["prompt_id"], timeout=120, check=False)
    return bool(errors_of(payload))


@pytest.mark.parametrize("node, name", [("ksampler", "scheduler"), ("ksampler", "extrapolation"), ("sampler", "mode")])
def test_unknown_combo_values_are_refused(comfy, checks_v3_combos, node, name):
    """At queue time where ComfyUI checks V3 combos (our validate_inputs no longer switches that off); on 0.3.64,
    which checks none, with an error naming the input when the node runs (the scheduler was silently 'simple')."""
    g = (
        adaptive_ksampler_graph(**{name: "bogus"})[0]
        if node == "ksampler"
        else adaptive_sampler_graph(**{name: "bogus"})
    )
    payload = post(comfy, g)
    errs = errors_of(payload)
    if checks_v3_combos:
        assert [(e["type"], e["extra_info"]["input_name"]) for e in errs] == [("value_not_in_list", name)], errs
        return
    assert not errs, errs
    entry = comfy.wait(payload["prompt_id"], timeout=300, check=False)
    msgs = [d for n, d in entry["status"]["messages"] if n == "execution_error"]
    assert msgs and msgs[0]["exception_message"].startswith(f"{name}: "), entry["status"]


@pytest.mark.parametrize("sampler", ["dpm_fast", "dpm_adaptive", "bogus_sampler"])
def test_an_unsupported_sampler_is_reported_once(comfy, sampler):
    for g in (adaptive_ksampler_graph()[0], adaptive_sampler_graph()):
        tempo = next(n for n in g.nodes.values() if n["class_type"].startswith("TempoAdaptive"))
        tempo["inputs"]["sampler_name"] = sampler
        errs = errors_of(post(comfy, g))
        assert len(errs) == 1, errs  # was 22 (once per input) with **kwargs
        assert (
            errs[0]["type"] == "custom_validation_failed" and errs[0]["extra_info"]["input_name"] == "sampler_name"
        ), errs
        assert "sampler_name: " in errs[0]["details"] and sampler in errs[0]["details"], errs


def test_dmd_loader_inputs_are_checked_by_comfyui(comfy):
    errs = errors_of(post(comfy, loader_graph("any.safetensors", strength=100.0)))
    assert ("value_bigger_than_max", "strength") in [(e["type"], e["extra_info"]["input_name"]) for e in errs], errs


# ----------------------------------------------------------------------------- item 1: folders only
def test_absolute_generator_path_is_refused_at_queue_time(comfy):
    outside = Path(comfy.base) / "outside" / "secret.safetensors"
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_bytes(b"not read")
    errs = errors_of(post(comfy, loader_graph(str(outside))))
    assert len(errs) == 1 and errs[0]["extra_info"]["input_name"] == "generator_name", errs
    assert "generator_name: " in errs[0]["details"] and "absolute" in errs[0]["details"], errs


# ----------------------------------------------------------------------------- item 5 over HTTP
def test_nan_latent_through_latent_bridge_is_said_in_its_report(comfy):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    name = "tempo_qa_nan.latent"
    lat = np.zeros((1, 4, 8, 8), dtype=np.float32)
    lat[0, 0, :2] = np.nan
    safetensors_numpy.save_file(
        {"latent_tensor": lat, "latent_format_version_0": np.zeros(1, dtype=np.float32)},
        str(Path(comfy.base) / "input" / name),
    )
    g = Graph()
    load = g.node("LoadLatent", latent=name)
    vae = g.node("TempoTestbedVAE", name="testbed")
    br = g.node(
        "TempoLatentBridge",
        samples=load.out(0),
        vae_source=vae.out(0),
        vae_target=vae.out(0),
        width=0,
        height=0,
        scale=1.0,
        resize_method="bilinear",
        tiled=False,
        tile_size=512,
        overlap=64,
    )
    dec = g.node("TempoTestbedDecode", samples=br.out(0))
    g.node("PreviewImage", images=dec.out(0))
    entry = comfy.run(g, timeout=300)
    text = entry["outputs"][br.id]["text"][0]
    assert text.startswith("Latent Bridge: ") and "warning: the output holds NaN/inf (" in text, text


# ----------------------------------------------------------------------------- item 2 / 9 over HTTP
@pytest.mark.parametrize(
    "save_name, word", [("q" * 300, "bytes"), ("dmd/a\x00b", "NUL"), ("C:/x", "drive"), ("con", "reserved")]
)
def test_bad_save_name_is_a_named_error(comfy, save_name, word):
    g = Graph()
    model = g.node("TempoTestbedModel")
    pos = g.node("TempoTestbedClass", class_id=3)
    neg = g.node("TempoTestbedClass", class_id=10)
    g.node(
        "TempoDMDRegressionPairs",
        teacher=model.out(0),
        positive=pos.out(0),
        negative=neg.out(0),
        width=64,
        height=64,
        pairs_per_conditioning=1,
        steps=2,
        guidance=2.0,
        conditioning_timestep=999,
        batch_size=1,
        seed=0,
        save_name=save_name,
    )
    entry = comfy.run(g, timeout=300, check=False)
    msgs = [d for n, d in entry["status"]["messages"] if n == "execution_error"]
    assert msgs, entry["status"]
    assert msgs[0]["exception_message"].startswith("save_name: ") and word in msgs[0]["exception_message"], msgs[0]
    assert msgs[0]["exception_type"].endswith("DMDNodeError"), msgs[0]


# ----------------------------------------------------------------------------- in-process
SNIPPET = r"""
import json, os, shutil, torch
import folder_paths
import tempo_testnodes as tn
from safetensors.torch import save_file
from comfyui_tempo.nodes import dmd as dmd_nodes
from comfyui_tempo.nodes import dmd_files, dmd_pairs, dmd_train
from comfyui_tempo.nodes import bridge_nodes, coop, time_decoupled

def err(f):
    try:
        f()
        return "no error"
    except Exception as e:
        return f"{type(e).__name__}: {e}"

res = {}
out = folder_paths.get_output_directory()
outside = os.path.join(os.path.dirname(out), "outside")
os.makedirs(outside, exist_ok=True)

# item 1: a readable generator and a readable pairs file outside every folder, and the same names inside
sd = {"w": torch.zeros(2)}
save_file(sd, os.path.join(outside, "gen.safetensors"), metadata={"tempo_dmd": json.dumps({"conditioning_timestep": 999})})
save_file({"noise": torch.zeros(1, 4, 8, 8), "target": torch.zeros(1, 4, 8, 8)}, os.path.join(outside, "pairs.safetensors"))
gdir = os.path.join(folder_paths.models_dir, "dmd_generators", "qa")
pdir = os.path.join(out, "dmd_pairs", "qa")
os.makedirs(gdir, exist_ok=True); os.makedirs(pdir, exist_ok=True)
shutil.copy(os.path.join(outside, "gen.safetensors"), gdir)
shutil.copy(os.path.join(outside, "pairs.safetensors"), pdir)
res["resolve"] = {
    "abs_gen": err(lambda: dmd_files.resolve_generator(os.path.join(outside, "gen.safetensors"))),
    "abs_pairs": err(lambda: dmd_files.pairs_path(os.path.join(outside, "pairs.safetensors"))),
    "etc_passwd": err(lambda: dmd_files.pairs_path("/etc/passwd")),
    "drive": err(lambda: dmd_files.resolve_generator("C:/x.safetensors")),
    "dotdot": err(lambda: dmd_files.resolve_generator("../../outside/gen.safetensors")),
    "validate_abs": dmd_nodes.DMDGeneratorLoader.validate_inputs(generator_name=os.path.join(outside, "gen.safetensors")),
    "in_gen": os.path.relpath(dmd_files.resolve_generator("qa/gen.safetensors"), folder_paths.models_dir),
    "in_pairs": os.path.relpath(dmd_files.pairs_path("qa/pairs"), out),
}

# items 2 / 9: save names, and one through the Regression Pairs node (refused before any work)
names = ["C:\\Windows\\Temp\\x", "C:/x", "D:evil", "C:x", "/abs/dir/x", "~/x", "con", "nul.txt", "COM1", "lpt9.pt",
         "qa/x:stream", "x.", "x. ", "qa./x", "a\x00b", "q" * 300, "../x", "\\\\server\\share\\x"]
res["save_names"] = {repr(n): err(lambda n=n: dmd_files.safe_name(n)) for n in names}
res["save_name_ok"] = dmd_files.safe_name("dmd/generator.safetensors")
model = tn.build_model()
pos = [[tn.class_cond(i), {}] for i in range(2)]
neg = [[tn.class_cond(10), {}]]
with torch.inference_mode():
    res["pairs_node"] = err(lambda: dmd_pairs.DMDRegressionPairs.execute(model, pos, neg, 64, 64, 1, 2, 2.0, 999, 1, 0, "D:evil"))

# item 8: DMD metadata that is a JSON list (loader) / not an object (pairs)
save_file(sd, os.path.join(gdir, "list_meta.safetensors"), metadata={"tempo_dmd": "[1, 2]"})
save_file({"noise": torch.zeros(1, 4, 8, 8), "target": torch.zeros(1, 4, 8, 8)}, os.path.join(pdir, "list_meta.safetensors"),
          metadata={"tempo_dmd": "[1, 2]"})
with torch.inference_mode():
    res["list_meta"] = err(lambda: dmd_nodes.DMDGeneratorLoader.execute(model, "qa/list_meta.safetensors"))
res["list_meta_pairs"] = err(lambda: dmd_files.load_pairs("qa/list_meta", "eps", 999, (4, 8, 8), 2))

# item 4: unreadable checkpoints given to resume: a named error, the file kept as it is
def train(name, steps, resume):
    with torch.inference_mode():
        return dmd_train.DMDTrainerNode.execute(model, pos, neg, 64, 64, 1, steps, 1e-3, 1e-3, 3.0, 1, 999, 1, 0, 0.0, "", 0.0, 0,
                                        0, name, 1, resume)
train("qa_resume/good", 1, False)
cdir = os.path.join(out, "dmd_checkpoints", "qa_resume")
good = open(os.path.join(cdir, "good.pt"), "rb").read()
bad = {
    "empty": b"",
    "truncated": good[: len(good) // 2],
    "random": bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).tolist()),
    "safetensors": open(os.path.join(gdir, "gen.safetensors"), "rb").read(),
}
for k, data in bad.items():
    open(os.path.join(cdir, k + ".pt"), "wb").write(data)
torch.save({"weights": torch.zeros(3)}, os.path.join(cdir, "foreign_dict.pt"))
torch.save(torch.zeros(3), os.path.join(cdir, "foreign_tensor.pt"))
res["resume"] = {}
for k in list(bad) + ["foreign_dict", "foreign_tensor"]:
    p = os.path.join(cdir, k + ".pt")
    before = open(p, "rb").read()
    e = err(lambda: train("qa_resume/" + k, 2, True))
    res["resume"][k] = {"error": e, "kept": open(p, "rb").read() == before,
                        "generator": os.path.exists(os.path.join(out, "dmd_generators", "qa_resume", k + ".safetensors"))}
res["resume_good"] = train("qa_resume/good", 2, True).ui.as_dict()["text"][0]

# item 5: NaN in, the report says so (and a finite run says nothing)
v = tn.build_vae()
nan = torch.zeros(1, 4, 8, 8)
nan[0, 0, :2] = float("nan")
texts = {}
with torch.inference_mode():
    texts["latent_bridge"] = bridge_nodes.LatentBridge.execute({"samples": nan}, v, v, 0, 0, 1.0, "bilinear").ui.as_dict()["text"][0]
    texts["latent_bridge_finite"] = bridge_nodes.LatentBridge.execute({"samples": torch.zeros(1, 4, 8, 8)}, v, v, 0, 0, 1.0,
                                                           "bilinear").ui.as_dict()["text"][0]
    texts["noisy_bridge"] = bridge_nodes.NoisyLatentBridge.execute({"samples": nan}, model, v, pos[:1], neg, 3.0, model, v, 20, 10,
                                                        "normal", 0, 0, 1.0, "bilinear", 4).ui.as_dict()["text"][0]
    texts["coop"] = coop.CoopSampler.execute(model, v, pos[:1], neg, 3.0, model, v, pos[:1], neg, 3.0, {"samples": nan}, 3, 4,
                                          "euler", "normal", 1.0, 0.5, 0.0, 1.0, "none").ui.as_dict()["text"][0]
    texts["time_decoupled"] = time_decoupled.TimeDecoupledSampler.execute(model, pos[:1], neg, 3.0, model, pos[:1], neg, 3.0,
                                                             {"samples": nan}, 3, 4, "euler", "normal", 1.0, "timestep",
                                                             500, 1.0, "auto", 0, 0, 1.0, "bilinear").ui.as_dict()["text"][0]
    texts["dmd_ksampler"] = dmd_nodes.DMDKSampler.execute(model, 0, "999", 1.0, pos[:1], {"samples": nan}).ui.as_dict()["text"][0]
    texts["dmd_ksampler_finite"] = dmd_nodes.DMDKSampler.execute(model, 0, "999", 1.0, pos[:1],
                                                         {"samples": torch.zeros(1, 4, 8, 8)}).ui.as_dict()["text"][0]
res["nan"] = texts

# the DMD Sampler (a SAMPLER, no report of its own) says it in the console
import logging
import comfy.sample
records = []
class _Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("comfyui_tempo").addHandler(_Keep())
with torch.inference_mode():
    table = model.get_model_object("model_sampling").sigmas
    from comfyui_tempo.samplers import dmd as dmd_sampling
    sig = dmd_sampling.timesteps_to_sigmas([999], table)
    comfy.sample.sample_custom(model, torch.randn(1, 4, 8, 8), 1.0, dmd_nodes.DMDSampler([999]), sig, pos[:1], [],
                               torch.zeros(1, 4, 8, 8))
    n_finite = len(records)
    comfy.sample.sample_custom(model, torch.randn(1, 4, 8, 8), 1.0, dmd_nodes.DMDSampler([999]), sig, pos[:1], [], nan)
res["dmd_sampler_log"] = {"finite": records[:n_finite], "nan": records[n_finite:]}
RESULT = res
"""


@pytest.fixture(scope="module")
def inproc(comfy_snippet):
    return comfy_snippet(SNIPPET, timeout=600)


def test_generator_and_pairs_resolve_only_inside_their_folders(inproc):
    r = inproc["resolve"]
    for k in ("abs_gen", "drive", "dotdot"):
        assert r[k].startswith("DMDNodeError: generator_name: "), (k, r[k])
    for k in ("abs_pairs", "etc_passwd"):
        assert r[k].startswith("DMDNodeError: regression_pairs: "), (k, r[k])
    assert "absolute" in r["abs_gen"] and "absolute" in r["abs_pairs"], r
    assert isinstance(r["validate_abs"], str) and r["validate_abs"].startswith("generator_name: "), r
    assert r["in_gen"] == "dmd_generators/qa/gen.safetensors" and r["in_pairs"] == "dmd_pairs/qa/pairs.safetensors", r


def test_save_names_that_leave_the_folder_on_any_os_are_refused(inproc):
    for name, e in inproc["save_names"].items():
        assert e.startswith("DMDNodeError: save_name: "), (name, e)
    assert inproc["save_name_ok"] == "dmd/generator"
    assert inproc["pairs_node"].startswith("DMDNodeError: save_name: ") and "drive" in inproc["pairs_node"], inproc[
        "pairs_node"
    ]


def test_dmd_metadata_that_is_a_json_list_is_a_named_error(inproc):
    assert inproc["list_meta"].startswith("DMDNodeError: generator_name: ") and "list" in inproc["list_meta"], inproc
    assert (
        inproc["list_meta_pairs"].startswith("DMDNodeError: regression_pairs: ") and "list" in inproc["list_meta_pairs"]
    )


@pytest.mark.parametrize("kind", ["empty", "truncated", "random", "safetensors", "foreign_dict", "foreign_tensor"])
def test_unreadable_checkpoint_is_a_resume_error_and_is_kept(inproc, kind):
    r = inproc["resume"][kind]
    e = r["error"]
    assert e.startswith("DMDNodeError: resume: "), e
    assert f"output/dmd_checkpoints/qa_resume/{kind}.pt" in e, e  # names the file
    assert "not a" in e and "weights_only" not in e, e  # not torch's advice to unpickle it
    assert r["kept"] and not r["generator"], r


def test_a_good_checkpoint_still_resumes(inproc):
    assert "resumed from step 1" in inproc["resume_good"], inproc["resume_good"]


@pytest.mark.parametrize("node", ["latent_bridge", "noisy_bridge", "coop", "time_decoupled", "dmd_ksampler"])
def test_nan_in_is_said_in_the_report(inproc, node):
    text = inproc["nan"][node]
    assert "warning: the output holds NaN/inf (" in text and " of 256 values)" in text, text


def test_dmd_sampler_says_nan_in_the_console(inproc):
    r = inproc["dmd_sampler_log"]
    assert not [m for m in r["finite"] if "NaN" in m], r
    assert any(m.startswith("DMD Sampler: warning: the output holds NaN/inf (") for m in r["nan"]), r


def test_finite_runs_have_no_warning(inproc):
    for k in ("latent_bridge_finite", "dmd_ksampler_finite"):
        assert "warning" not in inproc["nan"][k], inproc["nan"][k]
    assert json.dumps(inproc["nan"])  # plain strings
