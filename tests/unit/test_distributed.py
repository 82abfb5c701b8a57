"""`comfyui-tempo train dmd` under torchrun: two CPU processes with the gloo backend on the bundled testbed.

The two commands of the documentation (20 steps, then the same command with 30 steps resumes), and what makes them
the same run as one process: 2 processes at batch 2 each equal 1 process at batch 4 (same seed), FSDP equals
DDP, a checkpoint written by 2 FSDP processes resumed by 1 process continues the run, and the one-process CLI
trains exactly what the DMD Trainer node's run (training.run.DMDRun) trains. Tolerance: the networks' weights
agree within 1e-4 of each tensor's largest value (measured: ~2e-5 after 30 steps; the processes add the
gradient's halves in another order than one process adds the whole batch).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from comfyui_tempo.training import distributed

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4


def torchrun(out, *args, nproc=2, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["-m", "comfyui_tempo.cli", "train", "dmd", "--testbed", "--out", str(out), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def one_process(out, *args):
    from comfyui_tempo import cli

    assert cli.main(["train", "dmd", "--testbed", "--out", str(out), *args]) == 0


def rel_diff(a: dict, b: dict, prefixes=("generator.", "critic.")) -> float:
    keys = [k for k in a if k.startswith(prefixes)]
    assert keys and set(keys) == {k for k in b if k.startswith(prefixes)}
    return max(
        float((a[k].float() - b[k].float()).abs().max() / a[k].float().abs().max().clamp_min(1e-12)) for k in keys
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    r = {"base": base}
    r["log20"] = torchrun(base / "ddp", "--steps", "20")
    shutil.copytree(base / "ddp" / "checkpoint", base / "ddp20" / "checkpoint")
    r["log30"] = torchrun(base / "ddp", "--steps", "30")
    r["fsdp_log"] = torchrun(base / "fsdp", "--steps", "20", "--strategy", "fsdp")
    shutil.copytree(base / "fsdp", base / "fsdp_then_one")
    one_process(base / "fsdp_then_one", "--steps", "30")
    one_process(base / "one", "--steps", "30")
    return r


def test_the_two_torchrun_commands_train_and_resume(runs):
    base = runs["base"]
    assert "resumed" not in runs["log20"] and "2 process(es), ddp" in runs["log20"]
    assert "resumed from step 20" in runs["log30"] and "steps 20 -> 30" in runs["log30"]
    assert "ETA" in runs["log30"]  # rank 0's progress line
    assert runs["log30"].count("resumed from step 20") == 1  # rank 0 only
    from comfyui_tempo.samplers import dmd as dmd_sampling

    sd, info = dmd_sampling.read_generator(base / "ddp" / "generator.safetensors")
    assert info["steps"] == 30 and info["timesteps"] == [999] and info["model_type"] == "eps"
    assert info["base"] == "testbed" and info["format"] == "full" and all(k.startswith("net.") for k in sd)
    log = [json.loads(line) for line in (base / "ddp" / "log.jsonl").read_text().splitlines()]
    status = [e for e in log if "step" in e]
    assert status[-1]["step"] == 30 and {"loss_dm", "loss_fake", "it_s", "eta_s"} <= set(status[-1])
    assert log[-1]["done"] == 30 and log[-1]["processes"] == 2 and log[-1]["peak_mib"] > 0  # the run's figures
    assert (base / "ddp" / "losses.png").stat().st_size > 1000
    # the generator samples the testbed's classes as the loader's base expects (net.<UNet key>, fp16)
    from comfyui_tempo.testbed import distill

    den, _ = distill.load_generator(base / "ddp" / "generator.safetensors")
    z, cond = distill.class_batch(2, 0)
    assert torch.isfinite(distill.one_step_samples(den, z, cond)).all()


def test_two_processes_at_batch_2_equal_one_process_at_batch_4(runs):
    base = runs["base"]
    a, run_a = distributed.read_checkpoint(base / "one")
    b, run_b = distributed.read_checkpoint(base / "ddp")  # 2 x 2, interrupted at 20 and resumed
    assert run_a["step"] == run_b["step"] == 30 and run_b["world"] == 2 and run_a["world"] == 1
    assert rel_diff(a, b) < TOL
    for k, hist in run_a["history"].items():
        assert max(abs(x[1] - y[1]) for x, y in zip(hist, run_b["history"][k])) < 1e-4, k
    # and not trivially: the weights moved from the teacher's
    from comfyui_tempo.testbed import trained

    teacher = trained.load().net.state_dict()
    moved = max(float((a["generator.net." + k] - v).abs().max()) for k, v in teacher.items())
    assert moved > 1e-3


def test_fsdp_equals_ddp(runs):
    base = runs["base"]
    ddp, _ = distributed.read_checkpoint(base / "ddp20")
    fsdp, run = distributed.read_checkpoint(base / "fsdp")
    assert run["step"] == 20 and "2 process(es), fsdp" in runs["fsdp_log"]
    assert rel_diff(ddp, fsdp) < TOL
    assert rel_diff(ddp, fsdp, ("opt_g.", "opt_f.")) < 1e-3  # Adam's moments (small values: a looser bound)


def test_a_checkpoint_of_two_fsdp_processes_resumes_in_one(runs):
    base = runs["base"]
    ref, _ = distributed.read_checkpoint(base / "one")
    cont, run = distributed.read_checkpoint(base / "fsdp_then_one")
    assert run["step"] == 30 and run["world"] == 1
    assert rel_diff(ref, cont) < TOL


def test_one_process_cli_trains_what_the_node_run_trains(runs, tmp_path):
    """The DMD Trainer node's run is training.run.DMDRun around the same DMDTrainer: on one process the CLI's
    generator file is the same, tensor for tensor."""
    from safetensors.torch import load_file

    from comfyui_tempo.testbed import dmd_dist
    from comfyui_tempo.training import run as training_run

    torch.set_num_threads(1)
    trainer, save = dmd_dist.build()
    run = training_run.DMDRun(trainer, tmp_path / "ckpt.pt", 10)
    run.train(30)
    run.save_generator(tmp_path / "node.safetensors", **save)
    a = load_file(tmp_path / "node.safetensors")
    b = load_file(runs["base"] / "one" / "generator.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_batch_the_processes_cannot_share_is_a_clear_error():
    from comfyui_tempo.training.config import DMDConfig, DMDConfigError

    with pytest.raises(DMDConfigError, match="^batch_size: the global batch 6 must be a multiple of .* 4"):
        distributed.check_batch(DMDConfig(batch_size=6), 4)
    distributed.check_batch(DMDConfig(batch_size=8), 4)


def _gan_losses(nproc: int, strategy: str, steps: int = 6) -> list[dict]:
    worker = str(Path(__file__).with_name("dist_gan_worker.py"))
    cmd = [sys.executable, worker, strategy, str(steps)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] + cmd[1:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def test_the_gan_head_trains_the_same_on_two_processes():
    """DMD2's GAN head (on the fake score's bottleneck, the forward stopped there) under DDP and FSDP: the losses of
    2 processes at batch 2 are those of 1 process at batch 4."""
    one = _gan_losses(1, "ddp")
    assert len(one) == 6 and "loss_gen_cls" in one[0] and "loss_guidance_cls" in one[1]
    for strategy in ("ddp", "fsdp"):
        two = _gan_losses(2, strategy)
        assert [set(a) for a in one] == [set(b) for b in two], strategy
        worst = max(abs(a[k] - b[k]) for a, b in zip(one, two) for k in a)
        assert worst < 1e-4, (strategy, worst)


def _rank0_pid(marker: str) -> int | None:
    """The pid of the rank-0 worker whose command line holds ``marker`` (Linux /proc)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in cmd and "torch.distributed.run" not in cmd and b"RANK=0" in env:
            return int(d.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc to find the rank-0 worker")
def test_killing_rank_0_loses_only_the_steps_since_the_last_checkpoint(runs, tmp_path):
    import signal
    import time

    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "comfyui_tempo.cli",
    ]
    cmd += ["train", "dmd", "--testbed", "--steps", "30", "--checkpoint-every", "5", "--out", str(out)]
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO
        )
    try:
        deadline = time.monotonic() + 240
        while "DMD step 12/30" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        pid = _rank0_pid(str(out))
        assert pid is not None, log.read_text()[-2000:]
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    _, run = distributed.read_checkpoint(out)
    assert run["step"] in (10, 15) and not (out / "generator.safetensors").exists(), run["step"]
    text = torchrun(out, "--steps", "30", "--checkpoint-every", "5")
    assert f"resumed from step {run['step']}" in text
    ref, _ = distributed.read_checkpoint(runs["base"] / "one")
    done, _ = distributed.read_checkpoint(out)
    assert rel_diff(ref, done) < TOL


def test_exit_job_returns_in_one_process_and_exits_with_the_code_in_a_job():
    """exit_job: one process gets the code back; a process of a job (world > 1) exits with it, its buffered output
    flushed first (it leaves without Python's shutdown, where gloo's threads aborted now and then)."""
    assert distributed.exit_job(distributed.Dist(), 3) == 3
    code = (
        "import sys\n"
        "from comfyui_tempo.training import distributed\n"
        "print('written before the exit')\n"
        "sys.stderr.write('and on stderr')\n"
        "distributed.exit_job(distributed.Dist(rank=1, world=2), 3)\n"
        "print('never reached')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 3
    assert r.stdout == "written before the exit\n" and r.stderr == "and on stderr"
