"""training/finetune.py: fine-tuning on a timestep range (the time-decoupled experts), its resumable run and its
LoRA / diff file, and `bench decoupled-training --quick`."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from comfyui_tempo.samplers import schedules
from comfyui_tempo.training import finetune, lora
from comfyui_tempo.training import run as training_run


class Toy(nn.Module):
    """A tiny eps denoiser in k-diffusion convention: x0 = x - sigma * eps(x / sqrt(1 + sigma^2), log sigma)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.emb = nn.Linear(1, 4)
        self.norm = nn.GroupNorm(2, 4)
        self.seen = []

    def forward(self, x, sigma, cond=None):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1)
        self.seen.append(s.detach().clone())
        sb = s.view(-1, 1, 1, 1)
        h = self.norm(self.conv(x / (sb**2 + 1).sqrt())) + self.emb(s.log()[:, None])[:, :, None, None]
        return x - sb * h


def data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 4, 4, 4, generator=g)
    return base + 0.1 * torch.randn(n, 4, 4, 4, generator=g)


def make(net=None, **cfg):
    net = net if net is not None else Toy().requires_grad_(True)
    config = finetune.FinetuneConfig(**{"batch_size": 4, "lr": 1e-2, "seed": 3, **cfg})
    return finetune.FinetuneTrainer(net, data(), config)


def test_config_errors_name_the_input():
    with pytest.raises(finetune.FinetuneError, match=r"^timestep_max: expected >= timestep_min"):
        finetune.FinetuneConfig(timestep_min=600, timestep_max=500).validate()
    with pytest.raises(finetune.FinetuneError, match=r"^timestep_max: expected an integer \[0, 999\]"):
        finetune.FinetuneConfig(timestep_max=1000).validate(1000)
    with pytest.raises(finetune.FinetuneError, match=r"^uncond_dropout:"):
        finetune.FinetuneConfig(uncond_dropout=1.0).validate()
    with pytest.raises(finetune.FinetuneError, match=r"^model_type:"):
        finetune.FinetuneConfig(model_type="edm").validate()
    with pytest.raises(finetune.FinetuneError, match=r"^net: the network has no trainable parameter"):
        finetune.FinetuneTrainer(Toy().requires_grad_(False), data())
    with pytest.raises(finetune.FinetuneError, match=r"^conditioning: 3 items for 16 latents"):
        finetune.FinetuneTrainer(Toy(), data(), conditioning=[0, 1, 2])
    with pytest.raises(finetune.FinetuneError, match=r"^uncond: uncond_dropout > 0"):
        finetune.FinetuneTrainer(
            Toy(), data(), finetune.FinetuneConfig(uncond_dropout=0.1), conditioning=[0], cond_index=None
        )


def test_ranges_and_cost():
    assert finetune.expert_ranges(500) == {"structure": (500, 999), "texture": (0, 499)}
    with pytest.raises(finetune.FinetuneError, match=r"^t_struct:"):
        finetune.expert_ranges(0)
    assert finetune.train_cost(10, 4, (4, 8, 8)) * 4 == finetune.train_cost(10, 4, (4, 16, 16))


def test_trains_only_its_timestep_range():
    """Every sigma the network is trained at is a table entry of the range [timestep_min, timestep_max]."""
    table = schedules.discrete_sigmas()
    tr = make(timestep_min=500, timestep_max=999)
    tr.train(20)
    seen = torch.cat(tr.net.seen)
    lo, hi = float(table[500]), float(table[999])
    assert seen.numel() == 80 and float(seen.min()) >= lo * (1 - 1e-6) and float(seen.max()) <= hi * (1 + 1e-6)
    assert bool(torch.isin(seen, table[500:]).all())
    assert float(seen.min()) < float(table[560])  # the range's lower part is drawn too
    tex = make(timestep_min=0, timestep_max=499)
    tex.train(20)
    assert float(torch.cat(tex.net.seen).max()) <= float(table[499]) * (1 + 1e-6)


@torch.no_grad()
def range_loss(net, t_lo, t_hi, seed=9):
    table = schedules.discrete_sigmas()
    sched = finetune.guidance.NoiseSchedule("eps", table)
    x0 = data(64, seed=1)
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(t_lo, t_hi + 1, (64,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    return float(finetune.guidance.fake_loss(net, sched, x0, table[t], noise, None, "eps", 0.5))


def test_the_denoising_loss_falls_in_the_trained_range():
    tr = make(timestep_min=0, timestep_max=499, lr=3e-2)
    before = range_loss(tr.net, 0, 499)
    logs = tr.train(150)
    after = range_loss(tr.net, 0, 499)
    assert after < 0.5 * before, (before, after)
    assert all(k in logs[-1] for k in ("loss_denoise", "grad_norm", "step"))


def test_lora_expert_trains_only_its_factors_and_saves_comfy_layout(tmp_path):
    base = Toy()
    net = lora.lora_copy(base, 2)
    tr = finetune.FinetuneTrainer(net, data(), finetune.FinetuneConfig(batch_size=4, lr=1e-2, lora_rank=2))
    w0 = base.conv.weight.clone()
    tr.train(5)
    assert torch.equal(base.conv.weight, w0)  # the base is shared and frozen
    sd = finetune.expert_state_dict(net)
    assert set(sd) == {
        f"diffusion_model.{m}.{k}" for m in ("conv", "emb") for k in ("lora_up.weight", "lora_down.weight", "alpha")
    }
    assert float(sd["diffusion_model.conv.lora_up.weight"].abs().sum()) > 0
    path = tmp_path / "structure.safetensors"
    finetune.write_expert(path, sd, finetune.expert_info(tr))
    info = finetune.read_expert_info(path)
    assert info["format"] == "lora" and info["timestep_min"] == 0 and info["steps"] == 5
    assert info["train_cost"] == 5 * 4 * 16


def test_full_expert_saves_its_difference_to_the_base():
    base = Toy()
    net = Toy().requires_grad_(True)
    tr = finetune.FinetuneTrainer(net, data(), finetune.FinetuneConfig(batch_size=4, lr=1e-2))
    tr.train(5)
    sd = finetune.expert_state_dict(net, base, prefix="diffusion_model.")
    assert set(sd) == {
        "diffusion_model.conv.diff",
        "diffusion_model.conv.diff_b",
        "diffusion_model.emb.diff",
        "diffusion_model.emb.diff_b",
        "diffusion_model.norm.diff",
        "diffusion_model.norm.diff_b",
    }
    # what ComfyUI's "diff" patch computes: base weight + diff = the trained weight
    assert torch.allclose(base.conv.weight + sd["diffusion_model.conv.diff"], net.conv.weight, atol=1e-7)
    assert torch.allclose(base.norm.bias + sd["diffusion_model.norm.diff_b"], net.norm.bias, atol=1e-7)
    with pytest.raises(finetune.FinetuneError, match=r"^base:"):
        finetune.expert_state_dict(net)


def test_run_resumes_bit_identically_and_saves_on_interrupt(tmp_path):
    straight = make()
    training_run.DMDRun  # the run is DMDRun's loop
    finetune.FinetuneRun(straight, tmp_path / "a.pt", 2).train(8)
    ref = {k: v.clone() for k, v in straight.net.state_dict().items()}

    first = make()
    run = finetune.FinetuneRun(first, tmp_path / "b.pt", 100)

    class Stop(Exception):
        pass

    def cancel(step, total):
        if step == 5:
            raise Stop

    with pytest.raises(Stop):
        run.train(8, on_step=cancel)
    state = torch.load(tmp_path / "b.pt", weights_only=True)
    assert state["step"] == 5 and len(state["history"]["loss_denoise"]) == 5

    second = make()
    run2 = finetune.FinetuneRun(second, tmp_path / "b.pt", 100)
    assert run2.resume() and run2.resumed_from == 5
    run2.train(8)
    for k, v in second.net.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert [s for s, _ in run2.history["loss_denoise"]] == list(range(1, 9))
    assert run2.status(8, 8, 1.0).startswith("expert step 8/8")


def test_resume_refuses_other_settings_and_foreign_files(tmp_path):
    path = tmp_path / "c.pt"
    finetune.FinetuneRun(make(), path, 100).train(2)
    with pytest.raises(training_run.RunError, match=r"^resume: the checkpoint .* other settings .*timestep_min"):
        finetune.FinetuneRun(make(timestep_min=300), path, 100).resume()
    other = finetune.FinetuneTrainer(Toy().requires_grad_(True), data()[:, :, :2, :2], finetune.FinetuneConfig())
    with pytest.raises(training_run.RunError, match=r"^latent_shape: the checkpoint"):
        finetune.FinetuneRun(other, path, 100).resume()
    bad = tmp_path / "bad.pt"
    torch.save({"x": 1}, bad)
    with pytest.raises(training_run.RunError, match=r"^resume: .* is not a fine-tuning checkpoint"):
        finetune.FinetuneRun(make(), bad, 100).resume()
    assert json.loads(json.dumps(torch.load(bad, weights_only=True))) == {"x": 1}  # left as it was


def test_resize_latents():
    z = torch.arange(16.0).reshape(1, 1, 4, 4)
    down = finetune.resize_latents(z, (2, 2))
    assert torch.equal(down[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    assert finetune.resize_latents(z, (8, 8)).shape == (1, 1, 8, 8)
    assert finetune.resize_latents(z, (4, 4)) is z


def test_bench_quick(tmp_path):
    """`bench decoupled-training --quick`: the rows the README quotes, the pair at the monolithic model's train cost."""
    from comfyui_tempo import cli

    out = tmp_path / "td.json"
    assert cli.main(["bench", "decoupled-training", "--quick", "--quiet", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert {"monolithic", "time_decoupled", "time_decoupled_hr", "base"} <= set(rows)
    for r in result["rows"]:
        assert {"method", "t_struct", "train_cost", "fd", "class_acc"} <= set(r)
        assert r["fd"] >= 0 and 0 <= r["class_acc"] <= 1
    mono = rows["monolithic"]
    assert rows["time_decoupled"]["t_struct"] == 500
    assert 0 < rows["time_decoupled"]["train_cost"] <= mono["train_cost"]
    assert mono["train_cost"] == result["meta"]["budget"] > 0
    assert rows["data"]["fd"] < rows["base"]["fd"]  # the domain shift is real
    assert rows["monolithic"]["sample_cost"] == 1.0 > rows["time_decoupled"]["sample_cost"]  # structure at 32 px
