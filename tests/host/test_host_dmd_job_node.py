"""The DMD Job Export node inside a real ComfyUI (0.3.64 and 0.33.0): run in a graph on the tiny SD1.5 checkpoint
(ComfyUI's own CheckpointLoaderSimple and CLIPTextEncode), it writes under output/tempo_jobs the job that
``nodes/dmd_job.py`` ``export_job`` writes for the same inputs (job.json and every conditioning tensor equal),
``training/job.py`` reads it back, ``job_trainer`` trains a step from it, and the node shows the torchrun commands.
Bad inputs (the job name, a teacher file, a teacher with a LoRA) are errors naming the input."""

from __future__ import annotations

import json
import shlex

import pytest
from comfy_client import Graph

SETTINGS = dict(
    width=64,
    height=64,
    batch_size=2,
    steps=4,
    generator_lr=1e-4,
    fake_lr=1e-4,
    guidance=2.0,
    update_ratio=2,
    conditioning_timestep=999,
    generator_steps=1,
    warmup_steps=0,
    regression_weight=0.0,
    regression_pairs="",
    gan_weight=0.0,
    lora_rank=0,
    seed=5,
    save_name="host/job_node",
    checkpoint_interval=2,
    gradient_checkpointing=False,
)
PROMPTS = ("a red cube", "a blue sphere")


def export_graph(ckpt: str, job_name: str, lora: str | None = None, **settings) -> Graph:
    """CheckpointLoaderSimple -> two prompts combined, an empty negative -> DMD Job Export."""
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name=ckpt)
    model = ck.out(0)
    if lora:
        model = g.node("LoraLoaderModelOnly", model=model, lora_name=lora, strength_model=1.0).out(0)
    p = [g.node("CLIPTextEncode", clip=ck.out(1), text=t) for t in PROMPTS]
    pos = g.node("ConditioningCombine", conditioning_1=p[0].out(0), conditioning_2=p[1].out(0))
    neg = g.node("CLIPTextEncode", clip=ck.out(1), text="")
    g.node(
        "TempoDMDJobExport",
        node_id="export",
        teacher=model,
        positive=pos.out(0),
        negative=neg.out(0),
        teacher_checkpoint=ckpt,
        job_name=job_name,
        **{**SETTINGS, **settings},
    )
    return g


def error_of(comfy, graph) -> dict:
    entry = comfy.run(graph, timeout=300, check=False)
    msgs = [d for n, d in entry["status"]["messages"] if n == "execution_error"]
    assert msgs, entry["status"]
    return msgs[0]


@pytest.fixture(scope="module")
def exported(comfy, tiny_models):
    ckpt = tiny_models["names"]["ckpt_a"]
    entry = comfy.run(export_graph(ckpt, "host/node_job"), timeout=600)
    return ckpt, entry


SAME_JOB_SNIPPET = r"""
import json, os, torch, nodes, folder_paths
from safetensors.torch import load_file
from comfyui_tempo.nodes import dmd_job
from comfyui_tempo.training import job as training_job
JOB = os.path.join(folder_paths.get_output_directory(), "tempo_jobs", "host", "node_job")
with torch.inference_mode():
    model, clip = nodes.CheckpointLoaderSimple().load_checkpoint(CKPT)[:2]
    enc = lambda t: nodes.CLIPTextEncode().encode(clip, t)[0]
    pos = nodes.ConditioningCombine().combine(enc(PROMPTS[0]), enc(PROMPTS[1]))[0]
    neg = enc("")
with torch.inference_mode(False):
    dmd_job.export_job(REF, folder_paths.get_full_path("checkpoints", CKPT), model, pos, neg, **SETTINGS)
res = {}
with open(os.path.join(JOB, "job.json")) as f:
    node_json = json.load(f)
with open(os.path.join(REF, "job.json")) as f:
    ref_json = json.load(f)
res["json_equal"] = node_json == ref_json
res["json_diff"] = sorted(k for k in set(node_json) | set(ref_json) if node_json.get(k) != ref_json.get(k))
a, b = load_file(os.path.join(JOB, "conditioning.safetensors")), load_file(os.path.join(REF, "conditioning.safetensors"))
res["tensor_keys"] = sorted(a)
res["tensors_equal"] = set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
res["prompts_differ"] = not torch.equal(a["positive.0.c_crossattn"], a["positive.1.c_crossattn"])
job = training_job.read_job(JOB)
res["job"] = {"steps": job["steps"], "n_pos": len(job["positive"]), "teacher": job["teacher"]["name"],
              "shape": job["latent_shape"], "batch": job["config"].batch_size, "seed": job["config"].seed,
              "guidance": job["config"].real_guidance_scale, "interval": job["checkpoint_interval"],
              "name": job["name"], "pairs": job["pairs"] is None}
teacher = dmd_job.load_teacher(training_job.resolve_teacher(job))
with torch.inference_mode(False):
    trainer, save = dmd_job.job_trainer(job, teacher)
    log = trainer.step()
res["step"] = {"count": trainer.step_count, "keys": sorted(log),
               "finite": all(v == v and abs(v) < float("inf") for k, v in log.items() if k.startswith("loss"))}
RESULT = res
"""


def test_the_node_writes_the_job_export_job_writes_and_it_trains(comfy, comfy_snippet, exported, tmp_path):
    ckpt, entry = exported
    folder = comfy.base / "output" / "tempo_jobs" / "host" / "node_job"
    assert (folder / "job.json").is_file() and (folder / "conditioning.safetensors").is_file()
    text = entry["outputs"]["export"]["text"][0]
    lines = [line for line in text.splitlines() if line.startswith("torchrun ")]
    assert len(lines) == 2 and all(f"train dmd --job {shlex.quote(str(folder))} " in line for line in lines), text
    assert "--strategy fsdp" in text and "--standalone --nproc-per-node N" in text and "--rdzv-backend c10d" in text
    ref = tmp_path / "ref_job"
    code = f"CKPT, REF, PROMPTS = {ckpt!r}, {str(ref)!r}, {PROMPTS!r}\nSETTINGS = {SETTINGS!r}\n" + SAME_JOB_SNIPPET
    r = comfy_snippet(code, timeout=900)
    assert r["json_equal"], r["json_diff"]
    assert r["tensors_equal"] and r["prompts_differ"] and "positive.1.c_crossattn" in r["tensor_keys"], r
    assert r["job"] == {
        "steps": 4,
        "n_pos": 2,
        "teacher": ckpt,
        "shape": [4, 8, 8],
        "batch": 2,
        "seed": 5,
        "guidance": 2.0,
        "interval": 2,
        "name": "host/job_node",
        "pairs": True,
    }, r
    assert r["step"]["count"] == 1 and {"loss_dm", "loss_fake"} <= set(r["step"]["keys"]) and r["step"]["finite"], r


def test_the_node_lists_its_inputs_with_tooltips(comfy, tiny_models):
    info = comfy.object_info()["TempoDMDJobExport"]
    trainer = comfy.object_info()["TempoDMDTrainer"]
    order = info["input_order"]["required"]
    assert order[:5] == ["teacher", "positive", "negative", "teacher_checkpoint", "job_name"], order
    want = [n for n in trainer["input_order"]["required"] if n != "resume"]
    assert [n for n in order if n not in ("teacher_checkpoint", "job_name")] == want
    assert "optional" not in info["input_order"] or not info["input_order"]["optional"]
    spec = info["input"]["required"]
    for name in order:
        assert spec[name][1].get("tooltip"), name
    # the settings are the trainer's own entries (defaults, ranges), the save_name tooltip says what a job does
    assert spec["guidance"] == trainer["input"]["required"]["guidance"]
    assert "--out" in spec["save_name"][1]["tooltip"]
    options = (
        spec["teacher_checkpoint"][1]["options"]
        if spec["teacher_checkpoint"][0] == "COMBO"
        else spec["teacher_checkpoint"][0]
    )
    assert tiny_models["names"]["ckpt_a"] in options and "diffusion_models/" + tiny_models["names"]["unet"] in options
    assert info["output"] == ["STRING"] and info["output_tooltips"][0] and info["output_node"] is True


@pytest.mark.parametrize(
    "job_name, word",
    [("../escape", "'..'"), ("/abs/job", "absolute"), ("C:/job", "drive"), ("nul", "reserved"), ("", "expected")],
)
def test_a_bad_job_name_is_refused_by_name(comfy, tiny_models, job_name, word):
    msg = error_of(comfy, export_graph(tiny_models["names"]["ckpt_a"], job_name))
    assert msg["exception_message"].startswith("job_name: ") and word in msg["exception_message"], msg
    assert msg["exception_type"].endswith("DMDNodeError"), msg


def test_a_folder_that_is_not_a_job_is_not_overwritten(comfy, tiny_models):
    other = comfy.base / "output" / "tempo_jobs" / "host" / "not_a_job"
    other.mkdir(parents=True, exist_ok=True)
    (other / "keep.txt").write_text("mine")
    msg = error_of(comfy, export_graph(tiny_models["names"]["ckpt_a"], "host/not_a_job"))
    assert msg["exception_message"].startswith("job_name: ") and "no job.json" in msg["exception_message"], msg
    assert (other / "keep.txt").read_text() == "mine" and not (other / "job.json").exists()


def test_a_teacher_with_a_lora_or_a_bad_setting_is_refused_by_name(comfy, tiny_models):
    names = tiny_models["names"]
    msg = error_of(comfy, export_graph(names["ckpt_a"], "host/lora_job", lora=names["lora"]))
    assert msg["exception_message"].startswith("teacher: the MODEL carries weight patches"), msg
    msg = error_of(comfy, export_graph(names["ckpt_a"], "host/bad_ct", conditioning_timestep=5000))
    assert msg["exception_message"].startswith("conditioning_timestep: expected an integer in [0, 999]"), msg
    msg = error_of(comfy, export_graph(names["ckpt_a"], "host/bad_reg", regression_weight=0.5))
    assert msg["exception_message"].startswith("regression_pairs: a pairs file is required"), msg
    info = json.loads(json.dumps(comfy.object_info()["TempoDMDJobExport"]))
    assert info["category"] == "training/tempo"


def test_a_teacher_checkpoint_other_than_the_models_file_is_refused_where_comfyui_records_it(
    comfy, comfy_snippet, tiny_models
):
    """ComfyUI >= 0.12 records the file a MODEL was loaded from (``cached_patcher_init``): there a teacher loaded
    from one checkpoint exported with another's name is refused; an older ComfyUI cannot tell, the job is written."""
    recorded = comfy_snippet(
        "import inspect, comfy.sd\n"
        "RESULT = 'cached_patcher_init' in inspect.getsource(comfy.sd.load_checkpoint_guess_config)\n",
        timeout=300,
    )
    names = tiny_models["names"]
    g = export_graph(names["ckpt_a"], "host/other_teacher")
    g.nodes["export"]["inputs"]["teacher_checkpoint"] = names["ckpt_b"]
    entry = comfy.run(g, timeout=600, check=False)
    msgs = [d for n, d in entry["status"]["messages"] if n == "execution_error"]
    if recorded:
        assert msgs and msgs[0]["exception_message"].startswith(
            f"teacher_checkpoint: the teacher MODEL was loaded from {names['ckpt_a']!r}, not from {names['ckpt_b']!r}"
        ), entry["status"]
    else:
        assert not msgs, msgs
        job = json.loads((comfy.base / "output" / "tempo_jobs" / "host" / "other_teacher" / "job.json").read_text())
        assert job["teacher"]["name"] == names["ckpt_b"]
