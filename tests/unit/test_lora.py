"""training/lora.py: LoRA copies that share the teacher's weights, ComfyUI's kohya file layout, merge."""

import pytest
import torch
from torch import nn

from comfyui_tempo.testbed.unet import UNet
from comfyui_tempo.training import lora

torch.set_num_threads(1)


def _unet(seed=0):
    torch.manual_seed(seed)
    net = UNet(
        in_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2
    )
    # the testbed zero-initialises some output convs; give every weight a value so LoRA effects show
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return net.eval()


def _inputs(b=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, 8, 8, generator=g)
    t = torch.tensor([999.0, 500.0, 20.0][:b])
    ctx = torch.nn.functional.one_hot(torch.tensor([1, 5, 10][:b]), 11).float()[:, None]
    return x, t, ctx


def _perturb(net, seed=2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.lora_parameters(net):
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_lora_copy_starts_identical_shares_storage_only_lora_trainable():
    teacher = _unet()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    gen = lora.lora_copy(teacher, rank=4, alpha=2.0)
    fake = lora.lora_copy(teacher, rank=4)
    x, t, ctx = _inputs()
    with torch.no_grad():
        ref = teacher(x, t, ctx)
        assert torch.equal(gen(x, t, ctx), ref)  # up factors are zero: bit for bit the teacher
        assert torch.equal(fake(x, t, ctx), ref)
    layers = lora.lora_layers(gen)
    assert "input_conv" in layers and "time_embed.0" in layers and "class_embed" in layers
    assert layers["input_conv"].kind == "conv2d" and layers["time_embed.0"].kind == "linear"
    # base tensors are the teacher's own (same storage), frozen; only the factors train
    tp = dict(teacher.named_parameters())
    for name, m in layers.items():
        assert m.base.weight is tp[name + ".weight"]
        assert m.base.weight.data_ptr() == fake.get_submodule(name).base.weight.data_ptr()
    assert lora.shares_base(gen, teacher) and lora.shares_base(gen, fake)
    trainable = [n for n, p in gen.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_down." in n or ".lora_up." in n for n in trainable)
    assert len(trainable) == 2 * len(layers)
    assert not any(p.requires_grad for p in teacher.parameters())
    # total parameter storage: the copy adds only the factors
    base_ptrs = {p.data_ptr() for p in teacher.parameters()}
    extra = [p for p in gen.parameters() if p.data_ptr() not in base_ptrs]
    assert sum(p.numel() for p in extra) == sum(p.numel() for p in lora.lora_parameters(gen))

    # a few optimizer steps move the copy, never the teacher
    opt = torch.optim.AdamW(lora.lora_parameters(gen), lr=1e-2)
    for _ in range(3):
        loss = (gen(x, t, ctx) - 1).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert not torch.allclose(gen(x, t, ctx), ref)
        assert torch.equal(fake(x, t, ctx), ref)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_save_load_round_trip_and_comfyui_layout(tmp_path):
    teacher = _unet()
    gen = lora.lora_copy(teacher, rank=3, alpha=1.5)
    _perturb(gen)
    path = tmp_path / "g.safetensors"
    lora.save_lora(gen, path, prefix="diffusion_model.net.", metadata={"dmd_conditioning_timestep": 999})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
        up = f.get_tensor("diffusion_model.net.input_conv.lora_up.weight")
        down = f.get_tensor("diffusion_model.net.input_conv.lora_down.weight")
        alpha = f.get_tensor("diffusion_model.net.input_conv.alpha")
    assert meta["dmd_conditioning_timestep"] == "999"
    assert tuple(up.shape) == (16, 3, 1, 1) and tuple(down.shape) == (3, 4, 3, 3) and float(alpha) == 1.5
    assert "diffusion_model.net.time_embed.0.lora_down.weight" in keys
    assert all(k.startswith("diffusion_model.net.") for k in keys)
    assert len(keys) == 3 * len(lora.lora_layers(gen))

    other = lora.lora_copy(teacher, rank=3, alpha=1.5)
    x, t, ctx = _inputs()
    with torch.no_grad():
        assert not torch.equal(other(x, t, ctx), gen(x, t, ctx))
        got = lora.load_lora(other, path, prefix="diffusion_model.net.")
        assert got["dmd_conditioning_timestep"] == "999"
        assert torch.equal(other(x, t, ctx), gen(x, t, ctx))
    assert lora.lora_ranks(lora.lora_state_dict(gen), "diffusion_model.")["input_conv"] == (3, 1.5)
    # wrong rank, wrong prefix, not safetensors: named errors
    with pytest.raises(ValueError, match="^state"):
        lora.load_lora(lora.lora_copy(teacher, rank=2), path, prefix="diffusion_model.net.")
    with pytest.raises(ValueError, match="^state"):
        lora.load_lora(lora.lora_copy(teacher, rank=3), path, prefix="diffusion_model.")
    with pytest.raises(ValueError, match="^path"):
        lora.load_lora(other, tmp_path / "g.pt")


def test_merge_equals_forward_and_comfyui_formula():
    teacher = _unet()
    gen = lora.lora_copy(teacher, rank=4, alpha=8.0)
    _perturb(gen)
    x, t, ctx = _inputs()
    with torch.no_grad():
        y = gen(x, t, ctx)
        merged = lora.merge_lora(gen)
        assert not lora.lora_layers(merged)
        assert torch.allclose(merged(x, t, ctx), y, atol=1e-5, rtol=1e-4)
        # the teacher is untouched by merging
        assert not torch.allclose(teacher(x, t, ctx), y)
    # ComfyUI's LoRAAdapter.calculate_weight: W + (alpha / rank) * mm(up.flatten(1), down.flatten(1)).reshape(W.shape)
    sd = lora.lora_state_dict(gen, prefix="diffusion_model.")
    msd = lora.merged_state_dict(gen)
    tsd = teacher.state_dict()
    assert set(msd) == set(tsd)
    for name in lora.lora_layers(gen):
        k = "diffusion_model." + name
        up, down, alpha = sd[k + ".lora_up.weight"], sd[k + ".lora_down.weight"], float(sd[k + ".alpha"])
        w = tsd[name + ".weight"]
        comfy = w + (alpha / down.shape[0]) * torch.mm(up.flatten(1), down.flatten(1)).reshape(w.shape)
        assert torch.allclose(msd[name + ".weight"], comfy, atol=1e-6), name
    # a plain UNet loads the merged state dict and matches
    plain = _unet(seed=5)
    plain.load_state_dict(msd)
    with torch.no_grad():
        assert torch.allclose(plain(x, t, ctx), y, atol=1e-5, rtol=1e-4)


def test_target_selection_and_subclasses():
    class CastLinear(nn.Linear):
        """Like comfy.ops.manual_cast.Linear: a torch.nn.Linear subclass with its own forward."""

        def forward(self, x):
            return nn.functional.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.Module()
            self.attn.to_q = CastLinear(6, 6)
            self.attn.to_k = nn.Linear(6, 6)
            self.ff = nn.Linear(6, 6)
            self.dw = nn.Conv1d(6, 6, 3, padding=1, groups=6)  # depthwise: skipped
            self.norm = nn.LayerNorm(6)

        def forward(self, x):
            h = self.attn.to_q(x) + self.attn.to_k(x) + self.ff(x)
            return self.norm(h + self.dw(h[:, :, None].expand(-1, -1, 4)).mean(-1))

    torch.manual_seed(0)
    net = Net()
    a = lora.lora_copy(net, 2)
    assert set(lora.lora_layers(a)) == {"attn.to_q", "attn.to_k", "ff"}
    assert isinstance(lora.lora_layers(a)["attn.to_q"].base, CastLinear)
    b = lora.lora_copy(net, 2, include=["attn"], exclude=["*to_k"])
    assert set(lora.lora_layers(b)) == {"attn.to_q"}
    c = lora.lora_copy(net, 2, targets=(nn.Linear,), include=[__import__("re").compile(r"^ff$")])
    assert set(lora.lora_layers(c)) == {"ff"}
    x = torch.randn(5, 6)
    with torch.no_grad():
        assert torch.equal(a(x), net(x))
    # setting .weight on a wrapped layer (as ComfyUI's set_attr does) reaches its base layer
    lay = lora.lora_layers(a)["ff"]
    neww = nn.Parameter(torch.zeros(6, 6), requires_grad=False)
    lay.weight = neww
    assert lay.base.weight is neww and lay.weight is neww and net.ff.weight is not neww
    # norms and the depthwise conv stay shared and frozen
    assert a.norm.weight is net.norm.weight and a.dw.weight is net.dw.weight
    with pytest.raises(ValueError, match="^rank"):
        lora.lora_copy(net, 0)
    with pytest.raises(ValueError, match="^include"):
        lora.lora_copy(net, 2, include=["nothing_here"])
    # adding LoRA to an already wrapped net does not wrap twice
    with pytest.raises(ValueError, match="^include"):
        lora.add_lora(a, 2)


def test_bf16_base_keeps_float32_factors():
    torch.manual_seed(0)
    base = nn.Linear(8, 8).to(torch.bfloat16)
    net = nn.Sequential(base)
    c = lora.lora_copy(net, 2)
    layer = lora.lora_layers(c)["0"]
    assert layer.lora_up.weight.dtype == torch.float32 and layer.weight.dtype == torch.bfloat16
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    assert c(x).dtype == torch.bfloat16
