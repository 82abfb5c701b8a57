"""The Time-Decoupled Trainer inside a real ComfyUI (0.3.64 and 0.33.0): the example workflow td_trainer.json run
through ComfyUI's own loaders on the tiny SD1.5 files (a structure LoRA on t >= 500 at the low size, a texture
LoRA on t < 500 at the full size, then the Time-Decoupled Sampler with the two), its two LoRA files listed and
loaded by stock LoraLoader, Cancel and resume, and errors that name the input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from test_host_workflows import as_user_prompt

NAMES = {"structure": "time_decoupled/structure.safetensors", "texture": "time_decoupled/texture.safetensors"}


def write_input_image(base: Path, name: str = "example.png", size: int = 96) -> None:
    """A training image in BASE/input (the workflow's LoadImage reads ComfyUI's example.png)."""
    from PIL import Image

    path = Path(base) / "input" / name
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([xx, yy, 0.5 + 0.5 * np.sin(12 * (xx + yy))], -1)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def object_info(comfy, tiny_models):
    return comfy.object_info()


@pytest.fixture(scope="module")
def trained(comfy, object_info, tiny_models):
    """td_trainer.json as a user runs it, with 4 training steps per expert (checkpoint every 2)."""
    write_input_image(comfy.base)
    prompt = as_user_prompt(
        "td_trainer.json",
        object_info,
        tiny_models["names"],
        {"TempoTimeDecoupledTrainer": dict(steps=4, checkpoint_interval=2, resume=False)},
    )
    entry = comfy.run(prompt, timeout=900)
    return prompt, entry


def test_workflow_trains_both_experts_and_samples_with_them(comfy, trained):
    prompt, entry = trained
    trainers = {
        n["inputs"]["save_name"]: nid for nid, n in prompt.items() if n["class_type"] == "TempoTimeDecoupledTrainer"
    }
    assert set(trainers) == {"time_decoupled/structure", "time_decoupled/texture"}
    texts = {name: entry["outputs"][nid]["text"][0] for name, nid in trainers.items()}
    # the host test divides the shipped pixel sizes by 8: 256 -> 32 px (4x4 latents), 512 -> 64 px (8x8)
    assert (
        "4 steps on t 500..999 at latents 4x4 -> loras/time_decoupled/structure.safetensors"
        in texts["time_decoupled/structure"]
    ), texts
    assert (
        "4 steps on t 0..499 at latents 8x8 -> loras/time_decoupled/texture.safetensors"
        in texts["time_decoupled/texture"]
    ), texts
    out = Path(comfy.base) / "output"
    for rel in NAMES.values():
        assert (out / "loras" / rel).is_file(), rel
    for name in ("structure", "texture"):
        assert (out / "td_checkpoints" / "time_decoupled" / f"{name}.pt").is_file()
    save = next(nid for nid, n in prompt.items() if n["class_type"] == "SaveImage")
    imgs = comfy.output_images(entry, save)
    assert len(imgs) == 1 and imgs[0].shape[:2] == (64, 64) and imgs[0].std() > 1.0, [i.shape for i in imgs]


def test_loraloader_lists_and_loads_both_experts(comfy, comfy_snippet, trained, tiny_models):
    """Stock LoraLoader lists the saved files and patches every layer of each; the patched UNet weight is the base
    plus the LoRA (ComfyUI's own formula), so the file is what the trainer trained."""
    fresh = comfy.object_info()
    options = fresh["LoraLoader"]["input"]["required"]["lora_name"]
    options = options[0] if isinstance(options[0], list) else options[1].get("options", [])
    assert set(NAMES.values()) <= set(options), options
    ckpt = tiny_models["names"]["ckpt_a"]
    r = comfy_snippet(
        "import json, os, torch, folder_paths, nodes\n"
        "from safetensors import safe_open\n"
        "from safetensors.torch import load_file\n"
        "folder_paths.add_model_folder_path('loras', os.path.join(folder_paths.get_output_directory(), 'loras'))\n"
        f"model, clip = nodes.CheckpointLoaderSimple().load_checkpoint({ckpt!r})[:2]\n"
        "R = {}\n"
        f"for name in {sorted(NAMES.values())!r}:\n"
        "    path = folder_paths.get_full_path_or_raise('loras', name)\n"
        "    sd = load_file(path)\n"
        "    with safe_open(path, framework='pt') as f:\n"
        "        meta = json.loads(f.metadata()['tempo_expert'])\n"
        "    m, c = nodes.LoraLoader().load_lora(model, clip, name, 1.0, 1.0)\n"
        "    layers = sorted({k.rsplit('.lora_', 1)[0] for k in sd if '.lora_' in k})\n"
        "    key = layers[0][len('diffusion_model.'):] + '.weight'\n"
        "    w0 = model.model.diffusion_model.state_dict()[key].float()\n"
        "    up, down = sd[layers[0] + '.lora_up.weight'].float(), sd[layers[0] + '.lora_down.weight'].float()\n"
        "    alpha = float(sd[layers[0] + '.alpha'])\n"
        "    want = w0 + alpha / down.shape[0] * (up.flatten(1) @ down.flatten(1)).reshape(w0.shape)\n"
        "    m.patch_model()\n"
        "    got = m.model.diffusion_model.state_dict()[key].float()\n"
        "    m.unpatch_model()\n"
        "    R[name] = {'layers': len(layers), 'patched': len(m.patches), 'before': len(model.patches),\n"
        "               'err': float((got - want).abs().max()), 'delta': float((want - w0).abs().max()),\n"
        "               'meta': meta}\n"
        "RESULT = R\n",
        timeout=600,
    )
    for name, t_range in ((NAMES["structure"], (500, 999)), (NAMES["texture"], (0, 499))):
        x = r[name]
        assert x["layers"] > 10 and x["patched"] == x["layers"] and x["before"] == 0, x
        # the tiny UNet's eps is 0 (its GroupNorms out.0 / in_layers.0 / out_layers.0 are zero in tiny_files), so its
        # LoRA's gradients are 0 and its up factors stay 0: that the weights move is checked on the testbed below
        assert x["err"] <= 1e-3 * max(1.0, x["delta"]), x
        meta = x["meta"]
        assert (meta["timestep_min"], meta["timestep_max"], meta["format"], meta["steps"]) == (*t_range, "lora", 4)


def test_testbed_expert_trains_and_loraloader_applies_it(comfy, comfy_snippet):
    """On the trained testbed (a ComfyUI MODEL whose loss has gradients): 6 steps of a texture expert move its LoRA,
    and LoraLoaderModelOnly patches every layer with base + (alpha / rank) up @ down."""
    write_input_image(comfy.base, "td_testbed.png", size=32)
    graph = {
        "1": {"class_type": "TempoTestbedModel", "inputs": {"name": "testbed"}},
        "2": {"class_type": "TempoTestbedVAE", "inputs": {"name": "testbed"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "td_testbed.png"}},
        "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["3", 0], "vae": ["2", 0]}},
        "5": {"class_type": "TempoTestbedClass", "inputs": {"class_id": 3}},
        "6": {
            "class_type": "TempoTimeDecoupledTrainer",
            "inputs": dict(
                model=["1", 0],
                latents=["4", 0],
                positive=["5", 0],
                timestep_min=0,
                timestep_max=499,
                width=0,
                height=0,
                batch_size=2,
                steps=6,
                learning_rate=1e-3,
                lora_rank=4,
                warmup_steps=0,
                uncond_dropout=0.0,
                seed=0,
                save_name="time_decoupled/testbed_texture",
                checkpoint_interval=3,
                resume=False,
            ),
        },
    }
    entry = comfy.run(graph, timeout=600)
    assert "6 steps on t 0..499 at latents 8x8" in entry["outputs"]["6"]["text"][0], entry["outputs"]["6"]
    r = comfy_snippet(
        "import os, torch, folder_paths, nodes\n"
        "import tempo_testnodes as tn\n"
        "from safetensors.torch import load_file\n"
        "folder_paths.add_model_folder_path('loras', os.path.join(folder_paths.get_output_directory(), 'loras'))\n"
        "name = 'time_decoupled/testbed_texture.safetensors'\n"
        "sd = load_file(folder_paths.get_full_path_or_raise('loras', name))\n"
        "model = tn.build_model('testbed')\n"
        "m = nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, 1.0)[0]\n"
        "layers = sorted({k.rsplit('.lora_', 1)[0] for k in sd if '.lora_' in k})\n"
        "moved = [l for l in layers if float(sd[l + '.lora_up.weight'].abs().max()) > 0]\n"
        "l = moved[0]\n"
        "key = l[len('diffusion_model.'):] + '.weight'\n"
        "w0 = model.model.diffusion_model.state_dict()[key].float()\n"
        "up, down = sd[l + '.lora_up.weight'].float(), sd[l + '.lora_down.weight'].float()\n"
        "want = w0 + float(sd[l + '.alpha']) / down.shape[0] * (up.flatten(1) @ down.flatten(1)).reshape(w0.shape)\n"
        "m.patch_model()\n"
        "got = m.model.diffusion_model.state_dict()[key].float()\n"
        "m.unpatch_model()\n"
        "RESULT = {'layers': len(layers), 'moved': len(moved), 'patched': len(m.patches),\n"
        "          'err': float((got - want).abs().max()), 'delta': float((want - w0).abs().max())}\n",
        timeout=600,
    )
    assert r["layers"] > 20 and r["patched"] == r["layers"] and r["moved"] > r["layers"] // 2, r
    assert r["delta"] > 1e-6 and r["err"] <= 1e-6 + 1e-3 * r["delta"], r


def test_full_weights_expert_saves_a_diff_file_loraloader_applies(comfy, comfy_snippet, object_info, tiny_models):
    """lora_rank 0 trains the full weights and saves their difference (.diff / .diff_b), which LoraLoader applies
    to every trained tensor."""
    write_input_image(comfy.base)
    prompt = as_user_prompt(
        "td_trainer.json",
        object_info,
        tiny_models["names"],
        {"TempoTimeDecoupledTrainer": dict(steps=2, lora_rank=0, learning_rate=1e-3, resume=False)},
    )
    trainer = next(nid for nid, n in prompt.items() if n["class_type"] == "TempoTimeDecoupledTrainer")
    prompt[trainer]["inputs"]["save_name"] = "time_decoupled/full_texture"
    keep = {trainer} | _upstream(prompt, trainer)
    prompt = {nid: n for nid, n in prompt.items() if nid in keep}
    entry = comfy.run(prompt, timeout=900)
    assert "loras/time_decoupled/full_texture.safetensors" in entry["outputs"][trainer]["text"][0]
    ckpt = tiny_models["names"]["ckpt_a"]
    r = comfy_snippet(
        "import os, torch, folder_paths, nodes\n"
        "from safetensors.torch import load_file\n"
        "folder_paths.add_model_folder_path('loras', os.path.join(folder_paths.get_output_directory(), 'loras'))\n"
        f"model, clip = nodes.CheckpointLoaderSimple().load_checkpoint({ckpt!r})[:2]\n"
        "name = 'time_decoupled/full_texture.safetensors'\n"
        "sd = load_file(folder_paths.get_full_path_or_raise('loras', name))\n"
        "m, c = nodes.LoraLoader().load_lora(model, clip, name, 1.0, 1.0)\n"
        "RESULT = {'keys': len(sd), 'diff': sum(k.endswith('.diff') for k in sd),\n"
        "          'diff_b': sum(k.endswith('.diff_b') for k in sd), 'patched': len(m.patches),\n"
        "          }\n",
        timeout=600,
    )
    assert r["diff"] > 10 and r["diff_b"] > 10 and r["keys"] == r["diff"] + r["diff_b"], r
    assert r["patched"] == r["keys"], r


def _upstream(prompt: dict, nid: str) -> set:
    seen, todo = set(), [nid]
    while todo:
        for v in prompt[todo.pop()]["inputs"].values():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] not in seen:
                seen.add(v[0])
                todo.append(v[0])
    return seen


def test_cancel_then_resume_continues_from_the_checkpoint(comfy, object_info, tiny_models):
    """Cancel (POST /interrupt) after the first checkpoint saves the run; the same prompt continues from it."""
    write_input_image(comfy.base)
    prompt = as_user_prompt(
        "td_trainer.json",
        object_info,
        tiny_models["names"],
        {"TempoTimeDecoupledTrainer": dict(steps=4000, checkpoint_interval=3, resume=False)},
    )
    trainer = next(nid for nid, n in prompt.items() if n["class_type"] == "TempoTimeDecoupledTrainer")
    prompt[trainer]["inputs"]["save_name"] = "time_decoupled/cancelled"
    prompt = {nid: n for nid, n in prompt.items() if nid in {trainer} | _upstream(prompt, trainer)}
    out = Path(comfy.base) / "output"
    ckpt = out / "td_checkpoints" / "time_decoupled" / "cancelled.pt"
    lora_file = out / "loras" / "time_decoupled" / "cancelled.safetensors"
    pid = comfy.queue(prompt)
    deadline = time.monotonic() + 600
    while not ckpt.exists() and time.monotonic() < deadline:
        entry = comfy.history(pid)
        if entry is not None and entry.get("status", {}).get("completed") is not None:
            pytest.fail("the trainer finished before it could be cancelled:\n" + comfy.describe_failure(pid, entry))
        time.sleep(0.2)
    assert ckpt.exists(), "no checkpoint after 600 s\n" + comfy.server.log_tail()
    time.sleep(0.5)
    comfy.interrupt()
    first = comfy.wait(pid, timeout=300, check=False)
    assert any(name == "execution_interrupted" for name, _ in first["status"]["messages"]), first["status"]
    assert not lora_file.exists(), "a cancelled run saves no LoRA"
    stopped_at = _ckpt_step(ckpt)
    assert 3 <= stopped_at < 4000
    prompt[trainer]["inputs"].update(resume=True, steps=stopped_at + 2)
    done = comfy.run(prompt, timeout=900)
    text = done["outputs"][trainer]["text"][0]
    assert f"resumed from step {stopped_at}, {stopped_at + 2} steps" in text, text
    assert lora_file.is_file()


def _ckpt_step(path: Path) -> int:
    import torch

    return int(torch.load(path, weights_only=True)["step"])


def test_errors_name_the_input(comfy, object_info, tiny_models):
    write_input_image(comfy.base)
    prompt = as_user_prompt("td_trainer.json", object_info, tiny_models["names"])
    trainer = next(nid for nid, n in prompt.items() if n["class_type"] == "TempoTimeDecoupledTrainer")
    prompt = {nid: n for nid, n in prompt.items() if nid in {trainer} | _upstream(prompt, trainer)}
    for inputs, message in (
        (dict(timestep_min=700, timestep_max=600), "timestep_max: expected >= timestep_min (700)"),
        (dict(width=64, height=0), "width: give both width and height"),
        (dict(save_name="../x"), "save_name: "),
    ):
        bad = json.loads(json.dumps(prompt))
        bad[trainer]["inputs"].update(steps=1, resume=False, **inputs)
        entry = comfy.run(bad, timeout=300, check=False)
        msgs = [d for n, d in entry["status"]["messages"] if n == "execution_error"]
        assert msgs and msgs[0]["exception_message"].startswith(message), (inputs, entry["status"])


ONE_IMPLEMENTATION = r"""
import torch
import tempo_testnodes as tn
from comfyui_tempo.nodes.td_train import TimeDecoupledTrainer
from comfyui_tempo.testbed.distill import TestbedDenoiser
from comfyui_tempo.training import finetune, lora
from safetensors.torch import load_file
import folder_paths, os

model = tn.build_model("testbed")
raw = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(1))
seed, steps = 7, 3
out = TimeDecoupledTrainer.execute(
    model, {"samples": raw}, [[tn.class_cond(3), {}]], 500, 999, 0, 0, 2, steps, 1e-3, 4, 0, 0.0, seed,
    "time_decoupled/one_implementation", 100, False,
)
node_sd = load_file(os.path.join(folder_paths.get_output_directory(), "loras", "time_decoupled",
                                 "one_implementation.safetensors"))
# the core on the testbed's own network and denoiser, the same latents (model space), class, seed and settings
with torch.inference_mode(False):
    tb = tn.testbed("testbed")
    z = model.model.process_latent_in(raw.clone())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = lora.lora_copy(tb.net, 4)
    cfg = finetune.FinetuneConfig(model_type="eps", timestep_min=500, timestep_max=999, batch_size=2, lr=1e-3,
                                  lora_rank=4, seed=seed)
    tr = finetune.FinetuneTrainer(TestbedDenoiser(net), z, cfg, conditioning=[3])
    logs = tr.train(steps)
    core_sd = finetune.expert_state_dict(net, prefix="diffusion_model.net.")
RESULT = {
    "same_keys": sorted(node_sd) == sorted(core_sd),
    "n": len(core_sd),
    "max_diff": max(float((node_sd[k].float() - core_sd[k].float()).abs().max()) for k in core_sd),
    "moved": max(float(core_sd[k].abs().max()) for k in core_sd if k.endswith("lora_up.weight")),
    "losses": [l["loss_denoise"] for l in logs],
}
"""


def test_node_and_core_train_the_same_expert(comfy_snippet):
    """One implementation: the node's LoRA (ComfyUI's model, conditioning and latent plumbing around
    training.finetune) equals the core's on the testbed's own denoiser for the same latents, class, seed and
    settings, after 3 steps."""
    r = comfy_snippet(ONE_IMPLEMENTATION, timeout=600)
    assert r["same_keys"] and r["n"] > 60, r
    assert r["moved"] > 1e-4, r
    assert r["max_diff"] <= 1e-5 * max(1.0, r["moved"] * 100), r
