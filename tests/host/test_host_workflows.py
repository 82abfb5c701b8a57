"""The user's path, with real parts: every example workflow in workflows/ runs end to end inside a real
ComfyUI server, through ComfyUI's own loader nodes (CheckpointLoaderSimple, UNETLoader,
LoraLoaderModelOnly) reading tiny saved model files (``tiny_models`` fixture, tests/host/testnodes/
tiny_files.py) whose VAEs are the real TAESD weights. No test double stands where a loader would.

Each workflow is the shipped UI file converted to an API prompt (comfy_client.ui_to_api) with only
these changes:
* the model file names it references -> the tiny files (FILE_NAMES);
* the pack's own file inputs that name what another workflow made: the DMD trainer's save_name and the
  generator loaders' generator_name -> a name of this test's own (the other host tests write
  dmd/generator with the testbed); the regression pairs' save_name likewise;
* run-time sizes for a 2-core CPU (RUN_TIME): pixel sizes / 8 (512 px -> 64 px, 1024 -> 128), the
  trainer's 2000 steps -> 6 (checkpoint every 3), 16 regression pairs per prompt -> 2, the Time-Decoupled
  Trainers' 500 steps -> 4; adaptive_calibrated.json's 20 steps -> 6 on both its nodes (the profile and
  the sampler must agree; at 20 steps the greedy search took 745 s on a 2-core CPU: run this test
  with the entry removed from WORKFLOW_RUN_TIME to see it); LoadImage reads an image the test
  writes into input/. Other sampling step counts, cfg, samplers, schedulers, seeds and every other widget
  stay as shipped.

dmd_trainer.json runs with its VAE connected (the checkpoint loader's VAE, built inside the server's
inference mode as a user's is): its one-step sample preview decodes through it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from comfy_client import REPO_ROOT, ui_to_api

WORKFLOWS = REPO_ROOT / "workflows"
ALL = sorted(p.name for p in WORKFLOWS.glob("*.json"))

# the files the workflows reference -> the tiny files' roles (tiny_models()["names"])
FILE_NAMES = {
    "v1-5-pruned-emaonly.safetensors": "ckpt_a",
    "sd_xl_base_1.0.safetensors": "ckpt_b",
    "dmd2_sdxl_1step_unet_fp16.bin": "unet",
    "dmd2_sdxl_4step_lora_fp16.safetensors": "lora",
}
LOADERS = {"CheckpointLoaderSimple": "ckpt_name", "UNETLoader": "unet_name", "LoraLoaderModelOnly": "lora_name"}
PIXEL_INPUTS = ("width", "height", "width_b", "height_b")
PIXEL_DIVISOR = 8
GENERATOR = "tempo_workflows/generator"
PAIRS = "tempo_workflows/pairs"
RUN_TIME = {
    "TempoDMDTrainer": dict(steps=6, checkpoint_interval=3, save_name=GENERATOR),
    "TempoDMDRegressionPairs": dict(pairs_per_conditioning=2, save_name=PAIRS),
    "TempoDMDGeneratorLoader": dict(generator_name=GENERATOR + ".safetensors"),
    "TempoTimeDecoupledTrainer": dict(steps=4, checkpoint_interval=2, resume=False),
}
# run-time sizes of one workflow only: {workflow: {class_type: inputs}}
WORKFLOW_RUN_TIME = {
    "adaptive_calibrated.json": {"TempoAdaptiveCalibrate": dict(steps=6), "TempoAdaptiveKSampler": dict(steps=6)}
}
# workflows that read a file another workflow writes run after it
ORDER = ["dmd_regression_pairs.json", "dmd_trainer.json"]
ORDERED = ORDER + [n for n in ALL if n not in ORDER]


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def as_user_prompt(name: str, object_info: dict, names: dict, extra: dict | None = None) -> dict:
    """The shipped workflow as the API prompt a user's ComfyUI sends, with the swaps above."""
    prompt = ui_to_api(load(name), object_info)
    for node in prompt.values():
        inputs = node["inputs"]
        for k, v in inputs.items():
            if isinstance(v, str) and v in FILE_NAMES:
                inputs[k] = names[FILE_NAMES[v]]
        for k in PIXEL_INPUTS:
            if isinstance(inputs.get(k), int) and not isinstance(inputs[k], bool):
                inputs[k] //= PIXEL_DIVISOR
        inputs.update(RUN_TIME.get(node["class_type"], {}))
        inputs.update(WORKFLOW_RUN_TIME.get(name, {}).get(node["class_type"], {}))
        inputs.update((extra or {}).get(node["class_type"], {}))
    return prompt


@pytest.fixture(scope="module")
def object_info(comfy, tiny_models):
    return comfy.object_info()


def test_tiny_files_are_what_a_user_loads(tiny_models):
    """Each tiny file, loaded by ComfyUI's loader nodes: detected as SD1.5, every weight of its UNet,
    CLIP-L and TAESD VAE the file's (nothing left uninitialised), every LoRA key applied."""
    check, names = tiny_models["check"], tiny_models["names"]
    for role, vae in (("ckpt_a", "TAESD"), ("ckpt_b", "TAESD")):
        r = check[names[role]]
        assert r["config"] == "SD15" and r["model"] == "BaseModel" and r["vae_model"] == vae, r
        assert r["unet_mismatch"] == [] and r["clip_mismatch"] == [] and r["vae_mismatch"] == [], r
        assert r["clip_params"] > 120_000_000, r  # the full 12-layer CLIP-L, not a part of it
        assert r["cond_shape"] == [1, 77, 768] and r["cond_finite"], r
        assert r["eps_finite"] and 0.01 < r["eps_std"] < 10.0, r  # the UNet predicts something, not zero
    assert check[names["unet"]]["config"] == "SD15"
    lora = check[names["lora"]]
    assert lora["modules"] > 0 and lora["patched"] == lora["modules"] and lora["before"] == 0, lora
    print(
        f"\ntiny files: {json.dumps(tiny_models['write'])}; loads {check['load_s']}; snippets {tiny_models['seconds']}"
    )


def test_loaders_list_the_tiny_files(comfy, object_info, tiny_models):
    names = tiny_models["names"]
    fresh = comfy.object_info()

    def options(node, name):
        spec = fresh[node]["input"]["required"][name]
        return spec[0] if isinstance(spec[0], list) else spec[1].get("options", [])

    assert {names["ckpt_a"], names["ckpt_b"]} <= set(options("CheckpointLoaderSimple", "ckpt_name"))
    assert names["unet"] in options("UNETLoader", "unet_name")
    assert names["lora"] in options("LoraLoaderModelOnly", "lora_name")
    assert {"taesd", "taesdxl"} <= set(options("VAELoader", "vae_name"))


def test_every_workflow_is_covered():
    assert sorted(ORDERED) == ALL and len(ALL) >= 13, ALL


def _images(comfy, entry, prompt, class_type):
    out = {}
    for nid, n in prompt.items():
        if n["class_type"] == class_type:
            out[nid] = comfy.output_images(entry, nid)
    return out


def made_by(comfy) -> dict:
    """The files a workflow writes that another one reads: {workflow: path}."""
    out = Path(comfy.base) / "output"
    return {
        "dmd_trainer.json": out / "dmd_generators" / (GENERATOR + ".safetensors"),
        "dmd_regression_pairs.json": out / "dmd_pairs" / (PAIRS + ".safetensors"),
    }


def needs(name: str) -> list[str]:
    """The workflows whose files `name` reads (by the pack's file inputs it has)."""
    types = {n["type"] for n in load(name)["nodes"]}
    return ["dmd_trainer.json"] if "TempoDMDGeneratorLoader" in types else []


@pytest.mark.parametrize("name", ORDERED)
def test_workflow_runs_through_the_loaders(comfy, object_info, tiny_models, name):
    for producer in needs(name):  # run on its own (-k): make what it reads first
        if not made_by(comfy)[producer].is_file():
            comfy.run(as_user_prompt(producer, object_info, tiny_models["names"]), timeout=900)
    from test_host_td_train import write_input_image

    write_input_image(comfy.base)  # LoadImage's example.png (td_trainer.json's training image)
    prompt = as_user_prompt(name, object_info, tiny_models["names"])
    types = {n["class_type"] for n in prompt.values()}
    assert not any("Testbed" in t for t in types), types
    loaders = [
        (n["class_type"], n["inputs"][LOADERS[n["class_type"]]]) for n in prompt.values() if n["class_type"] in LOADERS
    ]
    assert loaders and all(v in tiny_models["names"].values() for _, v in loaders), loaders
    entry = comfy.run(prompt, timeout=900)
    texts = {nid: out.get("text", []) for nid, out in entry.get("outputs", {}).items() if out.get("text")}
    saved = _images(comfy, entry, prompt, "SaveImage")
    previews = _images(comfy, entry, prompt, "PreviewImage")
    for nid, imgs in {**saved, **previews}.items():
        assert imgs, (name, nid, prompt[nid])
        for img in imgs:
            assert img.std() > 1.0, (name, nid, img.shape)
    if name == "dmd_trainer.json":
        tr = next(nid for nid, n in prompt.items() if n["class_type"] == "TempoDMDTrainer")
        assert prompt[tr]["inputs"]["vae"][0] in {
            nid for nid, n in prompt.items() if n["class_type"] == "CheckpointLoaderSimple"
        }
        shapes = sorted(img.shape for imgs in previews.values() for img in imgs)
        # the loss curves and one decoded one-step sample per prompt (2 prompts, 64 px)
        samples = [s for s in shapes if s[:2] == (64, 64)]
        assert len(samples) == 2, shapes
    if name in made_by(comfy):
        assert made_by(comfy)[name].is_file(), texts
    if name == "dmd_job_export.json":  # writes a job folder, shows the torchrun commands
        assert (Path(comfy.base) / "output" / "tempo_jobs" / "dmd" / "sd15_job" / "job.json").is_file(), texts
        assert any("train dmd --job" in t for ts in texts.values() for t in ts), texts
    elif name not in ("dmd_trainer.json", "dmd_regression_pairs.json"):
        assert saved, name
    print(
        f"\n{name}: {sum(len(v) for v in saved.values())} saved, "
        f"{sum(len(v) for v in previews.values())} previews; {json.dumps(texts)[:600]}"
    )


def test_trainer_reads_the_pairs_the_pairs_workflow_saved(comfy, object_info, tiny_models):
    """dmd_trainer.json fed the file dmd_regression_pairs.json saved (regression loss on, LoRA)."""
    if not made_by(comfy)["dmd_regression_pairs.json"].is_file():
        comfy.run(as_user_prompt("dmd_regression_pairs.json", object_info, tiny_models["names"]), timeout=900)
    prompt = as_user_prompt(
        "dmd_trainer.json",
        object_info,
        tiny_models["names"],
        {
            "TempoDMDTrainer": dict(
                regression_weight=0.25,
                regression_pairs=PAIRS + ".safetensors",
                lora_rank=4,
                steps=3,
                save_name="tempo_workflows/regression_lora",
                resume=False,
            )
        },
    )
    entry = comfy.run(prompt, timeout=900)
    tr = next(nid for nid, n in prompt.items() if n["class_type"] == "TempoDMDTrainer")
    text = entry["outputs"][tr]["text"][0]
    assert "3 steps" in text and "regression_lora.safetensors" in text, text


def test_testbed_vae_has_every_attribute_of_a_real_vae(comfy_snippet, tiny_models):
    """TestbedVAE (the testbed autoencoder as a comfy.sd.VAE, for quality tests) has every attribute
    that ComfyUI's VAE.__init__ sets on a real VAE, here the TAESD one VAELoader builds."""
    r = comfy_snippet(
        "import nodes, torch\n"
        "import tempo_testnodes as tn\n"
        "real = nodes.VAELoader().load_vae('taesd')[0]\n"
        "tb = tn.build_vae()\n"
        "missing = sorted(set(vars(real)) - set(vars(tb)))\n"
        "img = tb.decode(torch.zeros(1, *tn.testbed().latent_shape))\n"
        "RESULT = {'missing': missing, 'real': sorted(vars(real)), 'decoded': list(img.shape),\n"
        "          'format_encoded': hasattr(tb, 'format_encoded'), 'patcher': type(tb.patcher).__name__,\n"
        "          'real_patcher': type(real.patcher).__name__}\n",
        timeout=300,
    )
    assert r["missing"] == [], r
    assert r["patcher"] == r["real_patcher"], r
    assert r["decoded"][-1] == 3, r
