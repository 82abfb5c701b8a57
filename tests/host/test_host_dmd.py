"""DMD nodes inside a real ComfyUI.

Over HTTP, with the testbed teacher: the DMD Trainer node trains, is interrupted (POST /interrupt) after its
first checkpoint, resumes from that checkpoint and saves; the DMD Generator Loader lists the file at once and
loads it; one-step graphs (DMD KSampler, SamplerCustom + DMD Sampler) produce images; bad inputs give errors
naming the input. Each flow runs as the example workflow in workflows/ (UI format), converted to an API prompt
with the testbed standing in for the checkpoint, CLIP text encoders, empty latent and VAE (a teacher of known
quality; test_host_workflows.py runs every workflow as shipped through ComfyUI's own loaders on real files).

In-process (snippets): the sampler's first-step input scaling against the testbed's own denoiser (t = 999 and
t = 399), eps / v / flow models against the pure-torch DMD sampler, a short training on v and flow models, and
the trained LoRA loaded by ComfyUI's own LoraLoaderModelOnly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import comfy_client
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
STEPS = 240  # a few hundred DMD iterations (batch 2) on the testbed: ~1-2 min on a 2-core CPU
CKPT_EVERY = 20

# the user's nodes -> the testbed, for the behaviour checks here (what the trainer, the loader and the
# one-step samplers do with a teacher of known quality): type -> (testbed type, inputs kept). That every
# workflow runs through ComfyUI's own loaders on real files is test_host_workflows.py's.
SUBSTITUTE = {
    "CheckpointLoaderSimple": ("TempoTestbedModel", []),
    "EmptyLatentImage": ("TempoTestbedEmptyLatent", ["batch_size"]),
}
VAE_OUTPUT = {"CheckpointLoaderSimple": 2}  # its VAE output -> the testbed's autoencoder as a ComfyUI VAE


def as_testbed_prompt(wf: dict, object_info: dict, overrides: dict | None = None) -> dict:
    """A UI-format workflow as an API prompt (comfy_client.ui_to_api) with the testbed standing in for the
    checkpoint (SUBSTITUTE; its VAE -> TempoTestbedVAE, decoded by ComfyUI's own VAEDecode; CLIPTextEncode ->
    a class: prompts 0, 1, ... in order, the one titled "Negative prompt" the null class 10).
    ``overrides``: {node type: {input: value}} applied after the conversion."""
    api = comfy_client.ui_to_api(wf, object_info)
    titles = {str(n["id"]): (n.get("title") or "") for n in wf["nodes"]}
    out: dict[str, dict] = {}
    next_class = 0
    for nid in sorted(api, key=int):
        t, inputs = api[nid]["class_type"], api[nid]["inputs"]
        if t == "CLIPTextEncode":
            neg = titles[nid].lower().startswith("negative")
            out[nid] = {"class_type": "TempoTestbedClass", "inputs": {"class_id": 10 if neg else next_class}}
            next_class += 0 if neg else 1
            continue
        if t in VAE_OUTPUT:
            out[f"{nid}vae"] = {"class_type": "TempoTestbedVAE", "inputs": {"name": "testbed"}}
        if t in SUBSTITUTE:
            new, keep = SUBSTITUTE[t]
            inputs = {k: v for k, v in inputs.items() if k in keep}
            t = new
        out[nid] = {"class_type": t, "inputs": inputs}
    # a checkpoint's VAE output: the testbed VAE node beside it
    vae_of = {nid: VAE_OUTPUT[n["class_type"]] for nid, n in api.items() if n["class_type"] in VAE_OUTPUT}
    for node in out.values():
        for k, v in node["inputs"].items():
            if isinstance(v, list) and len(v) == 2 and vae_of.get(v[0]) == v[1]:
                node["inputs"][k] = [f"{v[0]}vae", 0]
    # inputs that pointed at outputs the testbed nodes do not have (CLIP): dropped
    outputs = {nid: len(object_info[node["class_type"]]["output"]) for nid, node in out.items()}
    for node in out.values():
        for k, v in list(node["inputs"].items()):
            if (
                isinstance(v, list)
                and len(v) == 2
                and isinstance(v[0], str)
                and (v[0] not in out or v[1] >= outputs[v[0]])
            ):
                del node["inputs"][k]
    for node in out.values():
        node["inputs"].update((overrides or {}).get(node["class_type"], {}))
    return out


def load_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def node_of(api: dict, class_type: str) -> str:
    return next(nid for nid, n in api.items() if n["class_type"] == class_type)


def ui_texts(entry: dict, node_id: str) -> list[str]:
    return list(entry.get("outputs", {}).get(node_id, {}).get("text", []))


def error_message(comfy, graph) -> str:
    """The execution error of a graph that must fail (type: message)."""
    entry = comfy.run(graph, timeout=300, check=False)
    msgs = [d for name, d in entry["status"]["messages"] if name == "execution_error"]
    assert msgs, f"expected an execution error, got {entry['status']}"
    return f"{msgs[0].get('exception_type')}: {msgs[0].get('exception_message')}"


TRAINER = {
    "TempoDMDTrainer": dict(
        width=64,
        height=64,
        batch_size=2,
        steps=STEPS,
        generator_lr=2e-4,
        fake_lr=2e-4,
        guidance=3.0,
        update_ratio=5,
        warmup_steps=0,
        checkpoint_interval=CKPT_EVERY,
        save_name="dmd/generator",
        resume=True,
    )
}


@pytest.fixture(scope="module")
def object_info(comfy):
    return comfy.object_info()


@pytest.fixture(scope="module")
def trained(comfy, object_info):
    """The trainer workflow: started, interrupted after its first checkpoint, resumed to the end."""
    api = as_testbed_prompt(load_workflow("dmd_trainer.json"), object_info, TRAINER)
    tr = node_of(api, "TempoDMDTrainer")
    out = Path(comfy.base) / "output"
    ckpt = out / "dmd_checkpoints" / "dmd" / "generator.pt"
    gen = out / "dmd_generators" / "dmd" / "generator.safetensors"
    for p in (ckpt, gen):
        if p.exists():
            p.unlink()
    t_start = time.monotonic()
    pid = comfy.queue(api)
    deadline = time.monotonic() + 600
    while not ckpt.exists() and time.monotonic() < deadline:
        entry = comfy.history(pid)
        if entry is not None and entry.get("status", {}).get("completed") is not None:
            pytest.fail("the trainer finished before it could be interrupted:\n" + comfy.describe_failure(pid, entry))
        time.sleep(0.2)
    assert ckpt.exists(), "no checkpoint after 600 s\n" + comfy.server.log_tail()
    time.sleep(1.0)
    comfy.interrupt()
    first = comfy.wait(pid, timeout=300, check=False)
    ckpt_after_interrupt = ckpt.stat().st_size
    gen_after_interrupt = gen.exists()
    t0 = time.monotonic()
    second = comfy.run(api, timeout=900)
    return {
        "api": api,
        "node": tr,
        "first": first,
        "second": second,
        "ckpt": ckpt,
        "gen": gen,
        "ckpt_size": ckpt_after_interrupt,
        "gen_after_interrupt": gen_after_interrupt,
        "resume_s": time.monotonic() - t0,
        "total_s": time.monotonic() - t_start,
    }


def test_trainer_is_interrupted_keeps_its_checkpoint_and_resumes(trained):
    status = trained["first"]["status"]
    assert status["status_str"] == "error"
    assert any(name == "execution_interrupted" for name, _ in status["messages"]), status
    assert trained["ckpt_size"] > 0 and not trained["gen_after_interrupt"], "an interrupted run saves no generator"
    texts = ui_texts(trained["second"], trained["node"])
    assert texts, trained["second"].get("outputs")
    text = texts[0]
    assert "resumed from step" in text, text
    resumed_at = int(text.split("resumed from step ")[1].split(",")[0])
    assert CKPT_EVERY <= resumed_at < STEPS, text  # the interrupt checkpoint: past the first interval, before the end
    assert f"{STEPS} steps" in text and "dmd_generators/dmd/generator.safetensors" in text, text
    assert trained["gen"].exists()
    print(
        f"\ntrainer: {STEPS} steps at batch 2, interrupted, resumed and saved in {trained['total_s']:.0f} s "
        f"(resumed part {trained['resume_s']:.0f} s); {text}"
    )


def test_trainer_outputs_loss_curves_and_samples(comfy, trained):
    entry = trained["second"]
    images = {
        nid: comfy.output_images(entry, nid) for nid, n in trained["api"].items() if n["class_type"] == "PreviewImage"
    }
    shapes = sorted(tuple(a.shape) for imgs in images.values() for a in imgs)
    assert (300, 640, 3) in shapes, shapes  # the loss curves
    # one per conditioning, decoded by the trainer's vae input (the testbed autoencoder: 8x8 latents -> 32x32)
    samples = [a for imgs in images.values() for a in imgs if a.shape[:2] == (32, 32)]
    assert len(samples) == 2 and all(a.std() > 1.0 for a in samples), shapes


def test_generator_file_has_its_metadata(trained):
    safetensors = pytest.importorskip("safetensors")
    with safetensors.safe_open(str(trained["gen"]), framework="np") as f:
        meta = json.loads(f.metadata()["tempo_dmd"])
    assert meta["conditioning_timestep"] == 999 and meta["timesteps"] == [999]
    assert meta["model_type"] == "eps" and meta["format"] == "full" and meta["steps"] == STEPS
    assert meta["base"].endswith("TestbedUNet")


def test_loader_lists_the_file_at_once(comfy, trained):
    options = comfy.object_info("TempoDMDGeneratorLoader")["TempoDMDGeneratorLoader"]["input"]["required"][
        "generator_name"
    ]
    names = options[0] if isinstance(options[0], list) else options[1].get("options", [])
    assert "dmd/generator.safetensors" in names, names


def test_one_step_workflows_produce_images(comfy, trained, object_info):
    ks = as_testbed_prompt(load_workflow("dmd_loader_ksampler.json"), object_info)
    sc = as_testbed_prompt(load_workflow("dmd_sampler_custom.json"), object_info)
    a = comfy.run(ks, timeout=300)
    b = comfy.run(sc, timeout=300)
    img_a = comfy.output_images(a, node_of(ks, "SaveImage"))
    img_b = comfy.output_images(b, node_of(sc, "SaveImage"))
    assert len(img_a) == 4 and all(x.std() > 1.0 for x in img_a)
    assert not np.array_equal(img_a[0], img_a[1]), "every image of the batch is the same"
    # same seed, same sigmas (the loader's), same DMD sampler: the SamplerCustom route gives the same pictures
    assert all(np.array_equal(x, y) for x, y in zip(img_a, img_b))
    loader_text = ui_texts(a, node_of(ks, "TempoDMDGeneratorLoader"))
    assert loader_text and "t_c 999" in loader_text[0], loader_text
    # the generator differs from its teacher run the same way (the training changed the weights)
    teacher = json.loads(json.dumps(ks))
    ld = node_of(teacher, "TempoDMDGeneratorLoader")
    ksn = node_of(teacher, "TempoDMDKSampler")
    teacher[ksn]["inputs"]["model"] = teacher[ld]["inputs"]["model"]
    teacher[ksn]["inputs"]["timesteps"] = "999"
    del teacher[ld]
    img_t = comfy.output_images(comfy.run(teacher, timeout=300), node_of(teacher, "SaveImage"))
    assert not np.array_equal(img_t[0], img_a[0])


def test_regression_pairs_workflow_saves_a_file_the_trainer_reads(comfy, object_info):
    api = as_testbed_prompt(
        load_workflow("dmd_regression_pairs.json"),
        object_info,
        {"TempoDMDRegressionPairs": dict(width=64, height=64, pairs_per_conditioning=3, steps=4)},
    )
    entry = comfy.run(api, timeout=300)
    path = Path(comfy.base) / "output" / "dmd_pairs" / "dmd" / "pairs.safetensors"
    assert path.exists(), entry.get("outputs")
    # the trainer with the regression loss on those pairs (a few steps, LoRA)
    tr = as_testbed_prompt(
        load_workflow("dmd_trainer.json"),
        object_info,
        {
            "TempoDMDTrainer": dict(
                TRAINER["TempoDMDTrainer"],
                steps=6,
                regression_weight=0.25,
                regression_pairs="dmd/pairs.safetensors",
                lora_rank=4,
                save_name="dmd/host_reg_lora",
                resume=False,
            )
        },
    )
    entry = comfy.run(tr, timeout=300)
    text = ui_texts(entry, node_of(tr, "TempoDMDTrainer"))[0]
    assert "6 steps" in text and "host_reg_lora.safetensors" in text, text


# ----------------------------------------------------------------------------- bad inputs over HTTP
def _trainer_graph(object_info, **override):
    return as_testbed_prompt(
        load_workflow("dmd_trainer.json"),
        object_info,
        {"TempoDMDTrainer": dict(TRAINER["TempoDMDTrainer"], steps=2, save_name="dmd/bad", resume=False, **override)},
    )


def test_latent_size_not_divisible_by_8_is_a_clear_error(comfy, object_info):
    g = _trainer_graph(object_info)
    g[node_of(g, "TempoDMDTrainer")]["inputs"]["width"] = 60
    try:
        msg = error_message(comfy, g)
    except comfy_client.HostError as e:  # ComfyUI's own validation (step 8) may refuse it first
        msg = str(e)
    assert "width" in msg and "8" in msg, msg


def test_unknown_model_sampling_is_a_clear_error(comfy, object_info):
    g = _trainer_graph(object_info)
    tr = node_of(g, "TempoDMDTrainer")
    model_src = g[tr]["inputs"]["teacher"]
    g["900"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": model_src, "sampling": "x0", "zsnr": False}}
    g[tr]["inputs"]["teacher"] = ["900", 0]
    msg = error_message(comfy, g)
    assert "DMDNodeError: teacher:" in msg and "model sampling" in msg, msg


def test_generator_without_metadata_is_a_clear_error(comfy, object_info):
    safetensors_torch = pytest.importorskip("safetensors.numpy")
    folder = Path(comfy.base) / "models" / "dmd_generators"
    folder.mkdir(parents=True, exist_ok=True)
    safetensors_torch.save_file({"x": np.zeros(2, dtype=np.float32)}, str(folder / "no_meta.safetensors"))
    g = as_testbed_prompt(
        load_workflow("dmd_loader_ksampler.json"),
        object_info,
        {"TempoDMDGeneratorLoader": {"generator_name": "no_meta.safetensors"}},
    )
    msg = error_message(comfy, g)
    assert "DMDNodeError: generator_name:" in msg and "no DMD metadata" in msg, msg


def test_resume_with_another_latent_size_is_a_clear_error(comfy, object_info):
    """A checkpoint made for 64 x 64 px is not resumed at 128 x 128 (nor with another number of prompts)."""
    first = as_testbed_prompt(
        load_workflow("dmd_trainer.json"),
        object_info,
        {
            "TempoDMDTrainer": dict(
                TRAINER["TempoDMDTrainer"], steps=2, checkpoint_interval=1, save_name="dmd/host_resize", resume=False
            )
        },
    )
    comfy.run(first, timeout=300)
    assert any((Path(comfy.base) / "output").rglob("host_resize.pt")), "no checkpoint written"
    again = as_testbed_prompt(
        load_workflow("dmd_trainer.json"),
        object_info,
        {
            "TempoDMDTrainer": dict(
                TRAINER["TempoDMDTrainer"], steps=4, width=128, height=128, save_name="dmd/host_resize", resume=True
            )
        },
    )
    msg = error_message(comfy, again)
    assert "DMDNodeError: width/height:" in msg and "(4, 8, 8)" in msg and "(4, 16, 16)" in msg, msg


def test_regression_without_pairs_is_a_clear_error(comfy, object_info):
    msg = error_message(comfy, _trainer_graph(object_info, regression_weight=0.25, regression_pairs=""))
    assert "DMDNodeError: regression_pairs:" in msg, msg


# ----------------------------------------------------------------------------- in-process
SNIPPET = r"""
import json, os, torch
import comfy.model_base, comfy.model_patcher, comfy.model_management as mm
import comfy.samplers, comfy.sample
import comfy.k_diffusion.sampling as kds
import folder_paths
import tempo_testnodes as tn
from comfyui_tempo.nodes import dmd as dmd_nodes
from comfyui_tempo.nodes import dmd_files, dmd_pairs, dmd_train
from comfyui_tempo.samplers import dmd as dmd_sampling
import nodes

res = {}
def err(f):
    try:
        f()
        return "no error"
    except Exception as e:
        return f"{type(e).__name__}: {e}"

with torch.inference_mode():
    # 1. first-step input scaling: the DMD KSampler on the teacher = the testbed's denoiser on z * sqrt(1 + s^2)
    model = tn.build_model()
    tb = tn.testbed()
    table = model.get_model_object("model_sampling").sigmas
    lat = {"samples": torch.zeros(3, 4, 8, 8)}
    cond = [[tn.class_cond(4), {}]]
    noise = comfy.sample.prepare_noise(lat["samples"], 11)
    for t in (999, 399):
        out = dmd_nodes.DMDKSampler.execute(model, 11, str(t), 1.0, cond, lat).args[0]["samples"]
        s = float(table[t])
        ref = tb.denoiser(noise * (1 + s * s) ** 0.5, torch.full((3,), s), cond=torch.tensor([4, 4, 4]))
        res[f"scaling_{t}"] = float((out - ref).abs().max())

    # 2. eps / v / flow tiny models: the node's SAMPLER equals the pure-torch DMD loop (same noise)
    build = tn.tiny_sd_model  # inference tensors, as a model loaded by a node (the trainer copies them)
    pos = [[torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(1)), {}],
           [torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(2)), {}]]
    neg = [[torch.zeros(1, 2, 64), {}]]
    latt = {"samples": torch.zeros(2, 4, 8, 8)}
    res["kinds"] = {}
    for kind, mt in (("eps", comfy.model_base.ModelType.EPS), ("v", comfy.model_base.ModelType.V_PREDICTION),
                     ("flow", comfy.model_base.ModelType.FLOW)):
        m = build(mt)
        ms = m.get_model_object("model_sampling")
        ts = [999, 749, 499, 249]
        sig = dmd_sampling.timesteps_to_sigmas(ts, ms.sigmas)
        z = comfy.sample.prepare_noise(latt["samples"], 5)
        got = dmd_nodes.DMDKSampler.execute(m, 5, "999,749,499,249", 1.0, pos[:1], latt).args[0]["samples"]
        mm.load_models_gpu([m])
        den = lambda x, s: m.model.apply_model(x, s, c_crossattn=pos[0][0].expand(x.shape[0], -1, -1))
        x0 = dmd_sampling.noise_input(z, float(sig[0]), kind)
        ns = kds.default_noise_sampler(x0, seed=5)
        ref = dmd_sampling.sample_dmd(den, z, sig, kind, noise_sampler=ns)
        ref = m.model.process_latent_out(ref)
        sampler = dmd_nodes.DMDSamplerNode.execute("from model").args[0]
        sc = comfy.sample.sample_custom(m, z, 1.0, sampler, sig, pos[:1], neg, latt["samples"], seed=5)
        info = {"vs_torch": float((got - ref).abs().max() / ref.abs().max()), "custom_vs_ksampler": float((sc - got).abs().max()),
                "finite": bool(torch.isfinite(got).all())}
        # a short training on this model type, then the loader on the saved file
        rank = 2 if kind == "v" else 0  # a LoRA on inference-tensor weights too
        tr = dmd_train.DMDTrainerNode.execute(m, pos, neg, 64, 64, 2, 6, 1e-4, 1e-4, 2.0, 3, 999, 1, 0, 0.0, "", 0.0, rank, 0,
                                      f"host/{kind}", 3, False)
        gen, curves, samples, slat, name = tr.args
        ld = dmd_nodes.DMDGeneratorLoader.execute(m, name)
        a = dmd_nodes.DMDKSampler.execute(gen, 3, "from model", 1.0, pos[:1], latt).args[0]["samples"]
        b = dmd_nodes.DMDKSampler.execute(ld.args[0], 3, "from model", 1.0, pos[:1], latt).args[0]["samples"]
        info["trained_model_equals_loaded"] = bool(torch.equal(a, b))
        info["meta"] = gen.model_options["tempo_dmd"]["model_type"]
        info["samples"] = list(samples.shape)
        res["kinds"][kind] = info

    # 3. LoRA: the trained file loads with ComfyUI's own LoraLoaderModelOnly, same result as the trainer's MODEL
    tr = dmd_train.DMDTrainerNode.execute(model, [[tn.class_cond(i), {}] for i in range(3)], [[tn.class_cond(10), {}]], 64, 64, 2,
                                  10, 1e-3, 1e-3, 3.0, 5, 999, 1, 0, 0.0, "", 0.0, 4, 0, "host/lora", 5, False)
    gen, name = tr.args[0], tr.args[4]
    path = folder_paths.get_full_path("dmd_generators", name)
    os.makedirs(os.path.join(folder_paths.models_dir, "loras"), exist_ok=True)
    import shutil
    shutil.copy(path, os.path.join(folder_paths.get_folder_paths("loras")[0], "host_dmd_lora.safetensors"))
    stock = nodes.LoraLoaderModelOnly().load_lora_model_only(model, "host_dmd_lora.safetensors", 1.0)[0]
    a = dmd_nodes.DMDKSampler.execute(gen, 1, "from model", 1.0, cond, lat).args[0]["samples"]
    b = dmd_nodes.DMDKSampler.execute(stock, 1, "999", 1.0, cond, lat).args[0]["samples"]
    t = dmd_nodes.DMDKSampler.execute(model, 1, "999", 1.0, cond, lat).args[0]["samples"]
    res["lora"] = {"stock_vs_trainer": float((a - b).abs().max()), "vs_teacher": float((a - t).abs().max()),
                   "format": gen.model_options["tempo_dmd"]["format"]}
    # the loader lists the file of the pack's folder and a lora copied by hand (prefixed)
    files = dmd_files.generator_files()
    res["listed"] = [name in files, "loras/host_dmd_lora.safetensors" in files]

    # 4. the stock route for DMD2 4-step files (KSampler lcm + simple, 4 steps, cfg 1) reaches the same timesteps:
    #    the DMD KSampler at 999,749,499,249 gives the same latents
    stock4 = nodes.common_ksampler(model, 21, 4, 1.0, "lcm", "simple", cond, [[tn.class_cond(10), {}]], lat)[0]["samples"]
    dmd4 = dmd_nodes.DMDKSampler.execute(model, 21, "999,749,499,249", 1.0, cond, lat).args[0]["samples"]
    res["stock_lcm_simple_vs_dmd4"] = float((stock4 - dmd4).abs().max())

    # 5. a generator in the core's file layout (flat dmd.* metadata, keys with the checkpoint prefix) loads too
    from safetensors.torch import load_file, save_file
    core_path = os.path.join(folder_paths.get_output_directory(), "dmd_generators", "host", "core_layout.safetensors")
    full = dmd_nodes.DMDGeneratorLoader.execute(model, "dmd/generator.safetensors") if folder_paths.get_full_path("dmd_generators", "dmd/generator.safetensors") else None
    if full is not None:
        sd = load_file(folder_paths.get_full_path("dmd_generators", "dmd/generator.safetensors"))
        save_file({"diffusion_model." + k: v for k, v in sd.items()}, core_path,
                  metadata={"dmd.model_type": "eps", "dmd.conditioning_timestep": "999", "dmd.timesteps": "999", "dmd.format": "full"})
        core = dmd_nodes.DMDGeneratorLoader.execute(model, "host/core_layout.safetensors")
        a = dmd_nodes.DMDKSampler.execute(full.args[0], 2, "from model", 1.0, cond, lat).args[0]["samples"]
        b = dmd_nodes.DMDKSampler.execute(core.args[0], 2, "from model", 1.0, cond, lat).args[0]["samples"]
        res["core_layout"] = {"equal": bool(torch.equal(a, b)), "ct": core.args[2], "ts": core.args[3]}

    # 6. the node trains what the plain-PyTorch core trains: the same run (testbed teacher, full weights, seed 3)
    #    through DMDTrainerNode and through training.dmd.DMDTrainer on the testbed's own denoiser gives the same losses
    from comfyui_tempo.training import dmd as core
    from comfyui_tempo.samplers import schedules
    from comfyui_tempo.testbed.trained import onehot
    classes = [1, 5, 7]
    with torch.inference_mode(False):
        node_run = dmd_train.DMDTrainerNode.execute(model, [[tn.class_cond(c), {}] for c in classes], [[tn.class_cond(10), {}]],
                                            64, 64, 2, 12, 1e-4, 2e-4, 4.0, 3, 999, 1, 2, 0.0, "", 0.0, 0, 3, "host/equiv", 100, False)
        ck = torch.load(os.path.join(folder_paths.get_output_directory(), "dmd_checkpoints", "host", "equiv.pt"), weights_only=True)

        class TB(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net
            def forward(self, x, sigma, cond=None):
                sigma = sigma.reshape(-1).expand(x.shape[0]).float()
                t = schedules.sigma_to_t(sigma, tb.sigmas).float()
                s = sigma.view(-1, 1, 1, 1).to(x.dtype)
                return x - s * self.net(x / (s ** 2 + 1.0) ** 0.5, t, context=onehot(cond, x.shape[0], x.device))
        import copy
        teacher_net = copy.deepcopy(tb.net).requires_grad_(False).eval()
        cfg = core.DMDConfig(model_type="eps", conditioning_timestep=999, real_guidance_scale=4.0, dfake_gen_update_ratio=3,
                             batch_size=2, generator_lr=1e-4, fake_lr=2e-4, warmup_steps=2, seed=3)
        gnet, fnet = copy.deepcopy(teacher_net).requires_grad_(True), copy.deepcopy(teacher_net).requires_grad_(True)
        gnet.train(); fnet.train()
        pure = core.DMDTrainer(TB(teacher_net), TB(gnet), TB(fnet), (4, 8, 8), cfg, conditioning=classes, uncond=10,
                               sigmas=model.get_model_object("model_sampling").sigmas)
        logs = pure.train(12)
    node_dm = [v for _, v in ck["history"]["loss_dm"]]
    node_fake = [v for _, v in ck["history"]["loss_fake"]]
    pure_dm = [l["loss_dm"] for l in logs if "loss_dm" in l]
    pure_fake = [l["loss_fake"] for l in logs if "loss_fake" in l]
    res["equiv"] = {"n": [len(node_dm), len(pure_dm), len(node_fake), len(pure_fake)],
                    "dm": max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(node_dm, pure_dm)),
                    "fake": max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(node_fake, pure_fake)),
                    "moved": abs(node_fake[-1] - node_fake[0]) > 0}

    # 7. an SDXL-architecture UNet (tiny; pooled_output -> y through ComfyUI's extra_conds): LoRA generator at t = 399
    #    (DMD2's 1-step setting), saved in ComfyUI's LoRA key layout for a real UNet, loaded by LoraLoaderModelOnly
    import comfy.supported_models as sm
    xcfg = sm.SDXL(dict(image_size=32, in_channels=4, out_channels=4, model_channels=64, num_res_blocks=[1], channel_mult=[1],
        transformer_depth=[1], transformer_depth_output=[0, 0], transformer_depth_middle=-2, use_spatial_transformer=True,
        legacy=False, context_dim=64, use_linear_in_transformer=True, adm_in_channels=2816, num_classes="sequential"))
    xcfg.set_inference_dtype(torch.float32, None)
    xbase = xcfg.get_model({})
    gx = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in xbase.diffusion_model.parameters():
            p.copy_(torch.randn(p.shape, generator=gx) * 0.05)
    xm = comfy.model_patcher.ModelPatcher(xbase, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    xpos = [[torch.randn(1, 3, 64), {"pooled_output": torch.randn(1, 1280)}], [torch.randn(1, 5, 64), {"pooled_output": torch.randn(1, 1280)}]]
    xneg = [[torch.zeros(1, 3, 64), {"pooled_output": torch.zeros(1, 1280)}]]
    xl = {"samples": torch.zeros(2, 4, 8, 8)}
    xt = dmd_train.DMDTrainerNode.execute(xm, xpos, xneg, 64, 64, 2, 4, 1e-3, 1e-3, 8.0, 3, 399, 1, 0, 0.0, "", 0.0, 4, 0, "host/sdxl_lora", 2, False)
    shutil.copy(folder_paths.get_full_path("dmd_generators", xt.args[4]),
                os.path.join(folder_paths.get_folder_paths("loras")[0], "host_sdxl_dmd.safetensors"))
    xstock = nodes.LoraLoaderModelOnly().load_lora_model_only(xm, "host_sdxl_dmd.safetensors", 1.0)[0]
    xa = dmd_nodes.DMDKSampler.execute(xt.args[0], 4, "from model", 1.0, xpos[:1], xl).args[0]["samples"]
    xb = dmd_nodes.DMDKSampler.execute(xstock, 4, "399", 1.0, xpos[:1], xl).args[0]["samples"]
    xld = dmd_nodes.DMDGeneratorLoader.execute(xm, xt.args[4])
    res["sdxl"] = {"stock_vs_trainer": float((xa - xb).abs().max() / xa.abs().max()), "ct": xld.args[2],
                   "patched": len(xt.args[0].patches), "finite": bool(torch.isfinite(xa).all())}

    # 8. DMD2 options through the node: 4-step generator (backward simulation) with the GAN head, real data = pairs
    tcond = [[tn.class_cond(i), {}] for i in range(3)]
    pr = dmd_pairs.DMDRegressionPairs.execute(model, tcond, [[tn.class_cond(10), {}]], 64, 64, 2, 3, 3.0, 999, 8, 0, "host/gan_pairs")
    g4 = dmd_train.DMDTrainerNode.execute(model, tcond, [[tn.class_cond(10), {}]], 64, 64, 2, 10, 1e-4, 1e-4, 3.0, 5, 999, 4, 0,
                                  0.0, pr.args[0], 1e-3, 0, 0, "host/gan4", 5, False)
    l4 = dmd_nodes.DMDGeneratorLoader.execute(model, g4.args[4])
    k4 = dmd_nodes.DMDKSampler.execute(l4.args[0], 0, "from model", 1.0, cond, lat)
    res["dmd2_options"] = {"timesteps": l4.args[3], "sigmas": len(l4.args[1]), "ksampler": k4.ui.as_dict()["text"][0],
                           "meta": g4.args[0].model_options["tempo_dmd"]["gan_weight"]}

    # 9. the shipped testbed generator (testbed/distill.py, flat dmd.* metadata) through the loader:
    #    the same one-step samples as the plain-PyTorch generator, classified by the shipped classifier
    shipped = os.path.join(os.path.dirname(os.path.dirname(dmd_nodes.__file__)), "testbed", "weights", "dmd_onestep.safetensors")
    if os.path.isfile(shipped):
        from comfyui_tempo.testbed import distill
        from comfyui_tempo.testbed import classifier
        os.makedirs(os.path.join(folder_paths.models_dir, "dmd_generators"), exist_ok=True)
        shutil.copy(shipped, os.path.join(folder_paths.models_dir, "dmd_generators", "testbed_dmd_onestep.safetensors"))
        sl = dmd_nodes.DMDGeneratorLoader.execute(model, "testbed_dmd_onestep.safetensors")
        per = 8
        node_x, labels, zs = [], [], []
        for c in range(10):
            lat_c = {"samples": torch.zeros(per, 4, 8, 8)}
            node_x.append(dmd_nodes.DMDKSampler.execute(sl.args[0], 100 + c, "from model", 1.0, [[tn.class_cond(c), {}]], lat_c).args[0]["samples"])
            zs.append(comfy.sample.prepare_noise(lat_c["samples"], 100 + c))
            labels.append(torch.full((per,), c, dtype=torch.long))
        node_x, labels, zs = torch.cat(node_x), torch.cat(labels), torch.cat(zs)
        with torch.inference_mode(False):
            den, meta = distill.load_generator(shipped, tb)
            ref = distill.one_step_samples(den, zs, labels)
            clf = classifier.load()
            _, pred = clf.embed(tb.decode(node_x).float().clamp(0, 1))
            _, pred_t = clf.embed(tb.decode(dmd_nodes.DMDKSampler.execute(model, 7, "999", 1.0, [[tn.class_cond(3), {}]],
                                                                   {"samples": torch.zeros(per, 4, 8, 8)}).args[0]["samples"]).float().clamp(0, 1))
        res["shipped"] = {"vs_torch": float((node_x - ref).abs().max() / ref.abs().max()), "ct": sl.args[2],
                          "class_acc": float((pred.cpu() == labels).float().mean()),
                          "teacher_one_step_acc_class3": float((pred_t.cpu() == 3).float().mean())}

    # 10. bad inputs
    res["errors"] = {
        "empty": err(lambda: dmd_train.DMDTrainerNode.execute(model, [], [[tn.class_cond(10), {}]], 64, 64, 1, 2, 1e-4, 1e-4, 3.0, 5,
                                                      999, 1, 0, 0.0, "", 0.0, 0, 0, "host/x", 5, False)),
        "ckpt": dmd_nodes.DMDGeneratorLoader.validate_inputs(generator_name="x.ckpt"),
        "timesteps": err(lambda: dmd_nodes.DMDKSampler.execute(model, 0, "999,999", 1.0, cond, lat)),
        "negative": err(lambda: dmd_nodes.DMDKSampler.execute(model, 0, "999", 4.0, cond, lat)),
    }
    d = os.path.join(folder_paths.get_output_directory(), "dmd_generators")
    open(os.path.join(d, "pickled.ckpt"), "wb").write(b"x")
    res["errors"]["not_safetensors"] = err(lambda: dmd_files.read_generator(os.path.join(d, "pickled.ckpt")))
RESULT = res
"""


@pytest.fixture(scope="module")
def inproc(comfy_snippet, trained):
    """In-process checks; after ``trained`` (it reads the trainer's file from the same base directory)."""
    return comfy_snippet(SNIPPET, timeout=900)


def test_first_step_input_is_pure_noise_at_the_conditioning_timestep(inproc):
    # the model sees N(0, I) at t = 999 and at t = 399 (stock nodes feed 0.757 z at 399)
    assert inproc["scaling_999"] < 1e-5 and inproc["scaling_399"] < 1e-5, inproc


def test_eps_v_flow_models_sample_and_train(inproc):
    assert set(inproc["kinds"]) == {"eps", "v", "flow"}
    for kind, info in inproc["kinds"].items():
        assert info["finite"], kind
        assert info["vs_torch"] < 1e-5, (kind, info)  # relative to the largest value
        assert info["custom_vs_ksampler"] < 1e-6, (kind, info)
        assert info["trained_model_equals_loaded"], (kind, info)
        assert info["meta"] == kind and info["samples"][0] == 2, (kind, info)


def test_lora_generator_loads_with_comfyui_lora_loader(inproc):
    lora = inproc["lora"]
    assert lora["format"] == "lora"
    assert lora["stock_vs_trainer"] < 1e-5, lora
    assert lora["vs_teacher"] > 1e-4, lora  # the LoRA did train
    assert inproc["listed"] == [True, True]


def test_stock_lcm_route_matches_the_dmd_ksampler_at_dmd2_timesteps(inproc):
    assert inproc["stock_lcm_simple_vs_dmd4"] < 1e-5, inproc["stock_lcm_simple_vs_dmd4"]


def test_generator_in_the_core_file_layout_loads(inproc, trained):
    info = inproc.get("core_layout")
    assert info is not None, "the trained generator was not there for the snippet"
    assert info["equal"] and info["ct"] == 999 and info["ts"] == "999", info


def test_the_node_trains_what_the_core_trains(inproc):
    """The trainer node (ComfyUI's model, conditioning plumbing and copies) against the plain-PyTorch core on the
    testbed's own denoiser, same settings and seed: the same loss curves (the benchmark's results carry over)."""
    e = inproc["equiv"]
    assert e["n"] == [4, 4, 12, 12], e
    assert e["dm"] < 1e-3 and e["fake"] < 1e-3, e


def test_sdxl_architecture_lora_generator_at_399(inproc):
    x = inproc["sdxl"]
    assert x["finite"] and x["ct"] == 399, x
    assert x["patched"] > 10 and x["stock_vs_trainer"] < 1e-5, x


def test_dmd2_multistep_and_gan_through_the_node(inproc):
    o = inproc["dmd2_options"]
    assert o["timesteps"] == "999,749,499,249" and o["sigmas"] == 5, o
    assert o["ksampler"] == "DMD: 4 step(s) at t = [999, 749, 499, 249] (eps)" and o["meta"] == 1e-3, o


def test_shipped_testbed_generator_loads_and_keeps_its_classes(inproc):
    """The generator distilled in plain PyTorch (testbed/weights/dmd_onestep.safetensors) through DMD Generator
    Loader + DMD KSampler: the same samples as its own one-step function, the classes right (class accuracy >= 0.8)."""
    sh = inproc.get("shipped")
    if sh is None:
        pytest.skip("testbed/weights/dmd_onestep.safetensors is not in this checkout")
    assert sh["ct"] == 999 and sh["vs_torch"] < 1e-5, sh
    assert sh["class_acc"] >= 0.8, sh
    # control: the undistilled teacher evaluated once from pure noise does not give the class (0.0 measured)
    assert sh["teacher_one_step_acc_class3"] < 0.5, sh
    print(
        f"\nshipped generator in ComfyUI: class accuracy {sh['class_acc']:.3f}, relative difference to its own "
        f"one-step function {sh['vs_torch']:.1e}, teacher at one step {sh['teacher_one_step_acc_class3']:.2f}"
    )


def test_bad_inputs_in_process(inproc):
    e = inproc["errors"]
    assert e["empty"].startswith("DMDNodeError: positive:"), e
    assert isinstance(e["ckpt"], str) and e["ckpt"].startswith("generator_name:"), e
    assert e["timesteps"].startswith("DMDNodeError: timesteps:"), e
    assert e["negative"].startswith("DMDNodeError: negative:"), e
    assert e["not_safetensors"].startswith("DMDNodeError: generator_name:") and "safetensors" in e["not_safetensors"], e


SD_UNET_SNIPPET = r"""
import os, torch
import comfy.model_base, comfy.model_patcher, comfy.model_management as mm
import folder_paths
from comfyui_tempo.nodes import comfy_model, dmd_pairs, dmd_train
from comfyui_tempo.training import gan

from tempo_testnodes import tiny_sd_model

with torch.inference_mode():
    # an SD-style UNet WITH a middle block (ResBlock, SpatialTransformer, ResBlock), run by ComfyUI's
    # forward_timestep_embed, which calls the blocks' layers but never middle_block / input_blocks[i] themselves
    m = tiny_sd_model(middle=True)
    base = m.model
    pos = [[torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(1)), {}]]
    neg = [[torch.zeros(1, 2, 64), {}]]
    res = {}
    # gradient checkpointing recomputes a ResBlock of input_blocks in backward
    with torch.inference_mode(False), torch.enable_grad():
        net = comfy_model.to_trainable(base.diffusion_model)
        den = comfy_model.ComfyDenoiser(base, net)
        gan.enable_gradient_checkpointing(den)
        calls = []
        h = net.input_blocks[1][0].in_layers[2].register_forward_hook(lambda *a: calls.append(1))
        x = torch.randn(1, 4, 8, 8)
        ctx = pos[0][0].clone()  # an ordinary tensor (the trainer clones its conditioning the same way)
        den(x, torch.tensor([2.0]), cond={"c_crossattn": ctx}).square().mean().backward()
        h.remove()
        res["resblock_calls"] = len(calls)
        # the GAN feature module of this UNet is reached by its forward
        name = comfy_model.gan_feature_module(base.diffusion_model)
        tap = gan.FeatureTap(den, name)
        f = tap.features(den, x, torch.tensor([2.0]), cond={"c_crossattn": ctx})
        res["gan_module"], res["features"] = name, list(f.shape)
    # the trainer node with the GAN loss and gradient checkpointing on this UNet
    pairs = dmd_pairs.DMDRegressionPairs.execute(m, pos, neg, 64, 64, 4, 1, 2.0, 999, 4, 0, "host/sd_unet_pairs").args[0]
    tr = dmd_train.DMDTrainerNode.execute(m, pos, neg, 64, 64, 2, 4, 1e-4, 1e-4, 2.0, 2, 999, 1, 0, 0.0, pairs, 1e-3, 0, 0,
                                  "host/sd_unet_gan", 2, False, True)
    st = torch.load(os.path.join(folder_paths.get_output_directory(), "dmd_checkpoints", "host", "sd_unet_gan.pt"),
                    weights_only=True)
    res["history"] = sorted(st["history"])
    res["finite"] = bool(torch.isfinite(tr.args[3]["samples"]).all())
RESULT = res
"""


def test_gan_and_gradient_checkpointing_on_an_sd_unet(comfy_snippet):
    """ComfyUI's SD UNet runs input/middle/output blocks with forward_timestep_embed (the layers are called,
    the TimestepEmbedSequential blocks never): the GAN tap must sit on a layer that runs, and gradient
    checkpointing must wrap the layers."""
    r = comfy_snippet(SD_UNET_SNIPPET, timeout=600)
    assert r["resblock_calls"] == 2, r  # forward + recomputation in backward
    assert r["gan_module"].startswith("net.middle_block.") and r["features"][0] == 1, r
    assert "loss_gen_cls" in r["history"] and "loss_guidance_cls" in r["history"] and r["finite"], r


CRASH_SNIPPET = r"""
import os, torch
import folder_paths
import tempo_testnodes as tn
from comfyui_tempo.nodes import dmd_train
from comfyui_tempo.training import dmd as core
from safetensors.torch import load_file

res = {}
with torch.inference_mode():
    model = tn.build_model()
    pos = [[tn.class_cond(i), {}] for i in range(2)]
    neg = [[tn.class_cond(10), {}]]
    def train(name, steps, resume):
        return dmd_train.DMDTrainerNode.execute(model, pos, neg, 64, 64, 2, steps, 1e-3, 1e-3, 3.0, 1, 999, 1, 0, 0.0, "", 0.0, 0,
                                        0, name, 3, resume)
    def ckpt_step(name):
        return int(torch.load(os.path.join(folder_paths.get_output_directory(), "dmd_checkpoints", name + ".pt"),
                              weights_only=True)["step"])
    def weights(name):
        return load_file(os.path.join(folder_paths.get_output_directory(), "dmd_generators", name + ".safetensors"))
    train("host/crash_ref", 10, False)
    ref = weights("host/crash_ref")
    orig_fake, orig_gen = core.DMDTrainer.fake_loss, core.DMDTrainer.generate
    def crash_at(step, where):
        def fn(self, *a, **kw):
            if self.step_count == step:
                raise RuntimeError("simulated out of memory")
            return (orig_fake if where == "fake" else orig_gen)(self, *a, **kw)
        return fn
    for where in ("fake", "generate"):  # after the step's generator update / before any update of the step
        name = "host/crash_" + where
        setattr(core.DMDTrainer, "fake_loss" if where == "fake" else "generate", crash_at(7, where))
        try:
            train(name, 10, False)
            res[where] = "no error"
        except RuntimeError as e:
            res[where] = str(e)
        core.DMDTrainer.fake_loss, core.DMDTrainer.generate = orig_fake, orig_gen
        res[where + "_ckpt_step"] = ckpt_step(name)
        train(name, 10, True)
        w = weights(name)
        res[where + "_resumed_equal"] = all(torch.equal(w[k], ref[k]) for k in ref)
RESULT = res
"""


def test_a_crash_inside_a_step_keeps_a_consistent_checkpoint(comfy_snippet):
    """An error inside a step (an out-of-memory) after the step's generator update must not overwrite the last
    checkpoint with a half-done iteration; before any update the step's state (its random draws undone) is saved.
    Either way the resumed run ends with the weights of a run that never stopped."""
    r = comfy_snippet(CRASH_SNIPPET, timeout=600)
    assert r["fake"] == r["generate"] == "simulated out of memory", r
    assert r["fake_ckpt_step"] == 6 and r["generate_ckpt_step"] == 7, r  # last interval / the step's start
    assert r["fake_resumed_equal"] and r["generate_resumed_equal"], r
