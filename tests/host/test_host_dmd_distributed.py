"""`comfyui-tempo train dmd` and ComfyUI: the generator a 2-process torchrun job writes loads through DMD Generator
Loader, and a job folder exported from ComfyUI (a tiny SD1.5-architecture checkpoint read by ComfyUI's own loader,
the conditionings encoded) trains the DMD Trainer node's generator: bit for bit on one process, and within 1e-4
(of each tensor's largest value) on 2 processes with DDP (gloo, CPU) under ComfyUI's Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _env(extra_path=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _torchrun(python, args, cwd, env, timeout=600):
    cmd = [str(python), "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "comfyui_tempo.cli", "train", "dmd", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


LOADER_SNIPPET = r"""
import torch, comfy.sample
import tempo_testnodes as tn
from comfyui_tempo.nodes import dmd as dmd_nodes
from comfyui_tempo.testbed import distill
res = {}
with torch.inference_mode():
    model = tn.build_model()
    ld = dmd_nodes.DMDGeneratorLoader.execute(model, "host_dist/testbed.safetensors")
    res["ct"] = ld.args[2]
    lat = {"samples": torch.zeros(4, 4, 8, 8)}
    x = dmd_nodes.DMDKSampler.execute(ld.args[0], 11, "from model", 1.0, [[tn.class_cond(3), {}]], lat).args[0]["samples"]
    z = comfy.sample.prepare_noise(lat["samples"], 11)
with torch.inference_mode(False):
    den, info = distill.load_generator(PATH)
    ref = distill.one_step_samples(den, z, torch.full((4,), 3, dtype=torch.long))
res["vs_torch"] = float((x - ref).abs().max() / ref.abs().max())
res["steps"] = info["steps"]
RESULT = res
"""


def test_a_torchrun_generator_loads_through_the_generator_loader(comfy_install, comfy_base, comfy_snippet, tmp_path):
    out = tmp_path / "testbed_run"
    log = _torchrun(
        sys.executable, ["--testbed", "--steps", "6", "--checkpoint-every", "3", "--out", str(out)], REPO, _env()
    )
    assert "2 process(es), ddp" in log
    dest = comfy_base / "models" / "dmd_generators" / "host_dist"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "generator.safetensors", dest / "testbed.safetensors")
    r = comfy_snippet(f"PATH = {str(out / 'generator.safetensors')!r}\n" + LOADER_SNIPPET, timeout=600)
    assert r["ct"] == 999 and r["steps"] == 6, r
    assert r["vs_torch"] < 1e-2, r  # ComfyUI's sampler on the fp16 file against the plain-PyTorch generator


JOB_SNIPPET = r"""
import os, torch, nodes, folder_paths
from safetensors.torch import load_file
from comfyui_tempo import cli
from comfyui_tempo.nodes import dmd_job, dmd_train
from comfyui_tempo.training import job as training_job
res = {}
g = torch.Generator().manual_seed(0)
pos = [[torch.randn(1, 77, 768, generator=g) * 0.5, {}] for _ in range(2)]
neg = [[torch.randn(1, 77, 768, generator=g) * 0.5, {}]]
with torch.inference_mode():
    model = nodes.CheckpointLoaderSimple().load_checkpoint(CKPT)[0]
ckpt_path = folder_paths.get_full_path("checkpoints", CKPT)
inputs = (64, 64, 2, 4, 1e-4, 1e-4, 2.0, 2, 999, 1, 0, 0.0, "", 0.0, 0, 0, "host/dist_job", 2)
dmd_job.export_job(JOB, ckpt_path, model, pos, neg, *inputs)
job = training_job.read_job(JOB)
res["job"] = {"steps": job["steps"], "n_pos": len(job["positive"]), "keys": sorted(job["positive"][0]),
              "teacher": job["teacher"]["name"], "shape": job["latent_shape"]}
with torch.inference_mode():
    dmd_train.DMDTrainerNode.execute(model, pos, neg, *inputs, False)
node = load_file(os.path.join(folder_paths.get_output_directory(), "dmd_generators", "host", "dist_job.safetensors"))
res["cli_rc"] = cli.main(["train", "dmd", "--job", JOB, "--out", OUT, "--device", "cpu"])
mine = load_file(os.path.join(OUT, "generator.safetensors"))
res["same_keys"] = set(node) == set(mine)
res["bit_identical"] = res["same_keys"] and all(torch.equal(node[k], mine[k]) for k in node)
RESULT = res
"""

COMPARE_SNIPPET = r"""
import torch
from safetensors.torch import load_file
from comfyui_tempo.nodes import dmd as dmd_nodes
import nodes, shutil, os, folder_paths
a, b = load_file(ONE), load_file(TWO)
init = load_file(folder_paths.get_full_path("checkpoints", CKPT))  # the teacher: where both generators started
init = {k: init["model.diffusion_model." + k].float() for k in a}
# how far the two runs ended apart, against how far training moved the generator (L2 over every weight; the
# files are fp16, so a per-tensor ratio would measure fp16 rounding of the few-step updates, not the runs)
diff = sum(float(((a[k].float() - b[k].float()) ** 2).sum()) for k in a) ** 0.5
moved = sum(float(((a[k].float() - init[k]) ** 2).sum()) for k in a) ** 0.5
rel = diff / max(moved, 1e-30)
dest = os.path.join(folder_paths.models_dir, "dmd_generators", "host_dist")
os.makedirs(dest, exist_ok=True)
shutil.copy(TWO, os.path.join(dest, "job_2proc.safetensors"))
with torch.inference_mode():
    model = nodes.CheckpointLoaderSimple().load_checkpoint(CKPT)[0]
    ld = dmd_nodes.DMDGeneratorLoader.execute(model, "host_dist/job_2proc.safetensors")
    cond = [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(0)) * 0.5, {}]]
    x = dmd_nodes.DMDKSampler.execute(ld.args[0], 3, "from model", 1.0, cond, {"samples": torch.zeros(1, 4, 8, 8)}).args[0]["samples"]
RESULT = {"rel": rel, "moved": moved, "finite": bool(torch.isfinite(x).all()), "keys": len(a) == len(b)}
"""


def test_a_job_from_comfyui_trains_the_node_generator(comfy_install, comfy_base, comfy_snippet, tiny_models, tmp_path):
    ckpt = tiny_models["names"]["ckpt_a"]
    job, one, two = tmp_path / "job", tmp_path / "one", tmp_path / "two"
    r = comfy_snippet(f"CKPT, JOB, OUT = {ckpt!r}, {str(job)!r}, {str(one)!r}\n" + JOB_SNIPPET, timeout=900)
    assert r["job"]["steps"] == 4 and r["job"]["n_pos"] == 2 and "c_crossattn" in r["job"]["keys"], r
    assert r["job"]["teacher"] == ckpt and r["job"]["shape"] == [4, 8, 8], r
    assert r["cli_rc"] == 0 and r["same_keys"] and r["bit_identical"], r
    # the same job on 2 processes (DDP, gloo) under ComfyUI's Python, the checkpoint read by ComfyUI's loader
    args = ["--job", str(job), "--comfyui", str(comfy_install.tree), "--device", "cpu", "--out", str(two)]
    log = _torchrun(comfy_install.python, args, comfy_install.tree, _env(comfy_base / "custom_nodes"))
    assert "2 process(es), ddp" in log, log
    c = comfy_snippet(
        f"CKPT, ONE, TWO = {ckpt!r}, {str(one / 'generator.safetensors')!r}, {str(two / 'generator.safetensors')!r}\n"
        + COMPARE_SNIPPET,
        timeout=600,
    )
    # 2 processes at batch 1 each = 1 process at batch 2: measured 2.6e-4 of the movement (gloo, CPU; printed with -s)
    print(f"\n2 processes vs 1: {c['rel']:.2e} of the generator's movement ({c['moved']:.3g})")
    assert c["keys"] and c["moved"] > 0 and c["rel"] < 1e-2 and c["finite"], c


EXPORT_SNIPPET = r"""
import torch, nodes
from comfyui_tempo import cli
from comfyui_tempo.training import job as training_job
rc = cli.main(["train", "dmd-export", "--out", JOB, "--checkpoint", CKPT, "--prompt", "a red cube", "--prompt", "a blue sphere",
               "--negative", "", "--width", "64", "--height", "64", "--batch", "2", "--steps", "3", "--guidance", "2.5"])
job = training_job.read_job(JOB)
with torch.inference_mode():
    clip = nodes.CheckpointLoaderSimple().load_checkpoint(CKPT)[1]
    want = [nodes.CLIPTextEncode().encode(clip, t)[0][0][0] for t in ("a red cube", "a blue sphere", "")]
got = [job["positive"][0]["c_crossattn"]["tensor"], job["positive"][1]["c_crossattn"]["tensor"], job["negative"]["c_crossattn"]["tensor"]]
RESULT = {"rc": rc, "steps": job["steps"], "guidance": job["config"].real_guidance_scale, "batch": job["config"].batch_size,
          "same": [bool(torch.equal(g.float(), w.float())) for g, w in zip(got, want)], "differ": not torch.equal(got[0], got[1]),
          "train_rc": cli.main(["train", "dmd", "--job", JOB, "--out", OUT, "--device", "cpu"])}
"""


def test_the_export_command_encodes_the_prompts_as_clip_text_encode(comfy_snippet, tiny_models, tmp_path):
    """`train dmd-export` (ComfyUI's Python, where the text encoders are): the job carries what CLIP Text Encode
    gives for each prompt, and trains."""
    ckpt = tiny_models["names"]["ckpt_a"]
    code = f"CKPT, JOB, OUT = {ckpt!r}, {str(tmp_path / 'job')!r}, {str(tmp_path / 'run')!r}\n" + EXPORT_SNIPPET
    r = comfy_snippet(code, timeout=900)
    assert r["rc"] == 0 and r["steps"] == 3 and r["guidance"] == 2.5 and r["batch"] == 2, r
    assert r["same"] == [True, True, True] and r["differ"], r
    assert r["train_rc"] == 0 and (tmp_path / "run" / "generator.safetensors").is_file(), r


LORA_SEED_SNIPPET = r"""
import torch, nodes
from comfyui_tempo.nodes.comfy_model import teacher_denoiser, trainable_networks
from comfyui_tempo.training import lora
with torch.inference_mode():
    model = nodes.CheckpointLoaderSimple().load_checkpoint(CKPT)[0]
def factors(seed):
    base, teacher_d, _ = teacher_denoiser(model)
    _, gen, fake = trainable_networks(base, teacher_d, 4, seed)
    return [p.detach().clone() for p in lora.lora_parameters(gen) + lora.lora_parameters(fake)]
torch.manual_seed(1)
a = factors(7)
torch.manual_seed(2)
b = factors(7)
c = factors(8)
RESULT = {"n": len(a), "same": all(torch.equal(x, y) for x, y in zip(a, b)),
          "differ": any(not torch.equal(x, y) for x, y in zip(a, c))}
"""


def test_lora_factors_follow_the_seed_not_the_global_random_state(comfy_snippet, tiny_models):
    """The DMD Trainer node and a job of the same settings build their LoRA copies through trainable_networks:
    with the same seed they start from the same factors whatever the process's random state was."""
    r = comfy_snippet(f"CKPT = {tiny_models['names']['ckpt_a']!r}\n" + LORA_SEED_SNIPPET, timeout=600)
    assert r["n"] > 0 and r["same"] and r["differ"], r
