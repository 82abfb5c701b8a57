"""LPIPS from local weight files (training/lpips.py) and DMD's regression loss with it (Yin et al.,
CVPR 2024).

No weights can be downloaded here, so the tests write random weights in the two file layouts the user
would have (torchvision's vgg16 checkpoint, the lpips package's linear heads) and check the metric's
properties, the trainer's use of it and the errors; where the ``lpips`` package and torchvision are
installed, the metric is compared with the package's on the same weights.
"""

import pytest
import torch

from comfyui_tempo.training import dmd as dmd_training
from comfyui_tempo.training import lpips as tempo_lpips

torch.set_num_threads(1)


def _write_weights(tmp_path, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = tempo_lpips.vgg16_features()
    vgg = {}
    for k, v in feats.state_dict().items():
        scale = (2.0 / (v[0].numel() if v.ndim > 1 else 1)) ** 0.5 if v.ndim > 1 else 0.01
        vgg[f"features.{k}"] = torch.randn(v.shape, generator=g) * scale
    vgg["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision's file has more than the features
    lin = {
        f"lin{k}.model.1.weight": torch.rand((1, c, 1, 1), generator=g) * 0.1
        for k, c in enumerate(tempo_lpips.CHANNELS)
    }
    vp, lp = tmp_path / "vgg16-397923af.pth", tmp_path / "vgg.pth"
    torch.save(vgg, vp)
    torch.save(lin, lp)
    return vp, lp


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return _write_weights(tmp_path_factory.mktemp("lpips"))


def test_lpips_metric_properties(weights):
    net = tempo_lpips.load_lpips(*weights)
    g = torch.Generator().manual_seed(1)
    a = torch.rand((2, 3, 32, 32), generator=g)
    b = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    c = torch.rand((2, 3, 32, 32), generator=g)
    assert torch.allclose(net(a, a), torch.zeros(2), atol=1e-6)
    d_ab, d_ba, d_ac = net(a, b), net(b, a), net(a, c)
    assert (d_ab > 0).all() and torch.allclose(d_ab, d_ba, rtol=1e-5)
    assert (d_ac > d_ab).all(), "an unrelated image should be farther than a noisy copy"
    x = a.clone().requires_grad_(True)
    net(x, c).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in net.parameters())


def test_lpips_bad_files_name_the_input(tmp_path, weights):
    vp, lp = weights
    with pytest.raises(tempo_lpips.LPIPSWeightsError, match=r"^vgg_weights: expected an existing"):
        tempo_lpips.load_lpips(tmp_path / "nope.pth", lp)
    with pytest.raises(tempo_lpips.LPIPSWeightsError, match=r"^vgg_weights: not a torchvision vgg16"):
        tempo_lpips.load_lpips(lp, lp)
    with pytest.raises(tempo_lpips.LPIPSWeightsError, match=r"^lin_weights: missing lin0"):
        tempo_lpips.load_lpips(vp, vp)
    bad = tmp_path / "bad_lin.pth"
    torch.save({f"lin{k}.model.1.weight": torch.zeros(1, 3, 1, 1) for k in range(5)}, bad)
    with pytest.raises(tempo_lpips.LPIPSWeightsError, match=r"^lin_weights: lin0.model.1.weight has shape"):
        tempo_lpips.load_lpips(vp, bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(tempo_lpips.LPIPSWeightsError, match=r"^lin_weights: junk.pth is not a readable"):
        tempo_lpips.load_lpips(vp, junk)


def test_lpips_matches_the_lpips_package(weights):
    lpips = pytest.importorskip("lpips", reason="the lpips package (and torchvision) are not installed")
    vp, lp = weights
    ref = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False).eval()
    sd = torch.load(vp, weights_only=True)
    slices = [ref.net.slice1, ref.net.slice2, ref.net.slice3, ref.net.slice4, ref.net.slice5]
    for s in slices:
        for name, mod in s.named_children():
            if isinstance(mod, torch.nn.Conv2d):
                mod.weight.data.copy_(sd[f"features.{name}.weight"])
                mod.bias.data.copy_(sd[f"features.{name}.bias"])
    ref.load_state_dict(torch.load(lp, weights_only=True), strict=False)
    mine = tempo_lpips.load_lpips(vp, lp)
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand((3, 3, 48, 48), generator=g), torch.rand((3, 3, 48, 48), generator=g)
    with torch.no_grad():
        want = ref(a, b, normalize=True).flatten()
    assert torch.allclose(mine(a, b), want, rtol=1e-4, atol=1e-6)


class _Decode(torch.nn.Module):
    """A fixed differentiable 'VAE decoder': 4x8x8 latents -> 3x32x32 images in [0, 1]."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.register_buffer("w", torch.randn((3, 4, 1, 1), generator=g) * 0.5)

    def forward(self, z):
        x = torch.nn.functional.conv2d(z, self.w)
        return torch.sigmoid(torch.nn.functional.interpolate(x, scale_factor=4, mode="bilinear"))


def test_trainer_regression_with_lpips(weights):
    from comfyui_tempo.testbed.toy import MLPDenoiser

    torch.manual_seed(0)
    shape = (4, 8, 8)
    teacher = MLPDenoiser(dim=4 * 8 * 8, hidden=64, depth=2)

    class Flat(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, sigma, cond=None):
            return self.net(x.flatten(1), sigma, cond).view(x.shape)

    teacher = Flat(teacher).requires_grad_(False)
    pairs = dmd_training.RegressionPairs(noise=torch.randn((8,) + shape), target=torch.randn((8,) + shape) * 0.5)
    cfg = dmd_training.DMDConfig(
        batch_size=2,
        regression_weight=0.25,
        regression_loss="lpips",
        dfake_gen_update_ratio=1,
        warmup_steps=0,
        real_guidance_scale=1.0,
        generator_lr=1e-3,
        fake_lr=1e-3,
    )
    with pytest.raises(dmd_training.DMDConfigError, match=r"^regression_loss_fn:"):
        dmd_training.DMDTrainer(
            teacher,
            dmd_training.copy_teacher(teacher),
            dmd_training.copy_teacher(teacher),
            shape,
            cfg,
            regression_pairs=pairs,
        )
    loss_fn = tempo_lpips.LatentLPIPS(_Decode(), tempo_lpips.load_lpips(*weights))
    gen = dmd_training.copy_teacher(teacher)
    before = [p.detach().clone() for p in gen.parameters()]
    tr = dmd_training.DMDTrainer(
        teacher, gen, dmd_training.copy_teacher(teacher), shape, cfg, regression_pairs=pairs, regression_loss_fn=loss_fn
    )
    log = tr.step()
    assert log["loss_reg"] > 0
    assert any((p - q).abs().max() > 0 for p, q in zip(gen.parameters(), before))
    # the LPIPS term itself moves the generator: the same step with a zero regression loss differs
    gen0 = dmd_training.copy_teacher(teacher)
    tr0 = dmd_training.DMDTrainer(
        teacher,
        gen0,
        dmd_training.copy_teacher(teacher),
        shape,
        cfg,
        regression_pairs=pairs,
        regression_loss_fn=lambda p, t: (p * 0).sum(),
    )
    tr0.step()
    assert any((p - q).abs().max() > 1e-7 for p, q in zip(gen.parameters(), gen0.parameters()))
    with pytest.raises(dmd_training.DMDConfigError, match=r"^regression_loss: 'lpips' needs"):
        dmd_training.regression_loss(torch.zeros(1, 2), torch.zeros(1, 2), "lpips")
