"""Coop-Diffusion bridges (bridges/core.py, bridges/vae.py) on a toy VAE, exact denoisers and,
when the weight files are there, the real TAESD family.

TAESD weights: $TEMPO_TAESD_DIR, else shared/assets/taesd next to or inside the checkout; the tests
that need them skip with the reason otherwise.
"""

import math
import os
from pathlib import Path

import pytest
import torch

from comfyui_tempo.bridges import core, fusion
from comfyui_tempo.bridges.vae import BridgeInputError, decode_model_tiled, encode_model_tiled
from comfyui_tempo.samplers import kdiff, schedules
from comfyui_tempo.testbed.exact import FlowDenoiser, GaussianMixtureDenoiser
from comfyui_tempo.testbed.vaes import TAESD, ToyVAE

REPO = Path(__file__).resolve().parents[2]


def _taesd_dir():
    for p in (os.environ.get("TEMPO_TAESD_DIR"), REPO / "shared/assets/taesd", REPO.parent / "shared/assets/taesd"):
        if p and (Path(p) / "taesd_decoder.safetensors").is_file():
            return Path(p)
    return None


TAESD_DIR = _taesd_dir()
needs_taesd = pytest.mark.skipif(
    TAESD_DIR is None, reason="TAESD weights not found (set TEMPO_TAESD_DIR or provide shared/assets/taesd)"
)


def psnr(a, b):
    return (-10 * torch.log10(((a - b) ** 2).flatten(1).mean(1))).tolist()


def lag1_corr(r):
    """Mean of the horizontal and vertical neighbour correlations of a residual [B, C, H, W]."""
    r = r - r.mean(dim=(-2, -1), keepdim=True)
    ch = (r[..., :, 1:] * r[..., :, :-1]).mean() / (r * r).mean()
    cv = (r[..., 1:, :] * r[..., :-1, :]).mean() / (r * r).mean()
    return float((ch + cv) / 2)


def smooth_latents(shape, seed):
    """Latents with image-like spatial structure (smooth blobs), unit-ish scale."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape[0], shape[1], shape[2] // 4, shape[3] // 4, generator=g)
    return torch.nn.functional.interpolate(z, size=shape[-2:], mode="bicubic", align_corners=False)


# ---------------------------------------------------------------------------------------------
# VAE interface


def test_toy_vae_inverse_and_tiling_exact():
    vae = ToyVAE(4, 8, scale_factor=0.5, shift_factor=0.1)
    z = 0.1 * torch.randn(2, 4, 12, 20, generator=torch.Generator().manual_seed(0))
    img = vae.decode_model(z)
    assert img.shape == (2, 3, 96, 160) and 0 <= float(img.min()) and float(img.max()) <= 1
    torch.testing.assert_close(vae.encode_model(img), z, atol=1e-5, rtol=0)  # decoder stays in 0..1
    torch.testing.assert_close(vae.to_model(vae.from_model(z)), z)
    torch.testing.assert_close(vae.encode(img), vae.from_model(z), atol=1e-5, rtol=0)
    # a local VAE: tiled equals untiled
    torch.testing.assert_close(decode_model_tiled(vae, z, tile=8, overlap=4), img, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        encode_model_tiled(vae, img, tile=64, overlap=32), vae.encode_model(img), atol=1e-5, rtol=0
    )
    # through the bridge, tiled and unclamped: the identity for one VAE
    big = smooth_latents((1, 4, 24, 24), 2)
    torch.testing.assert_close(
        core.bridge_latent(big, vae, vae, tile=64, overlap=32, clamp=False), big, atol=1e-4, rtol=0
    )


def test_results_stay_on_the_device_of_the_vae_or_sigma():
    """A VAE on another device than the latents (TAESD on the GPU, a LATENT on the CPU): tiled decode /
    encode accumulate on the VAE's device; a snapped sigma stays on the sigma's device. The "meta"
    device stands in for a GPU here (a CPU table indexed by GPU indices raises there)."""

    class OtherDevice(ToyVAE):
        def _decode_model(self, z):
            return super()._decode_model(z).to("meta")

        def _encode_model(self, images):
            return super()._encode_model(images).to("meta")

    vae = OtherDevice(4, 8)
    assert decode_model_tiled(vae, torch.zeros(1, 4, 16, 16), tile=8, overlap=4).device.type == "meta"
    assert encode_model_tiled(vae, torch.rand(1, 3, 128, 128), tile=64, overlap=32).device.type == "meta"
    snapped = core.ModelSchedule.sd_discrete().snap(torch.tensor([1.0, 2.0], device="meta"))
    assert snapped.device.type == "meta" and snapped.shape == (2,)


def test_latent_bridge_one_vae_no_resize_is_one_round_trip():
    vae = ToyVAE(4, 8, seed=3)
    z = smooth_latents((2, 4, 16, 16), 1)
    ref = vae.encode_model(vae.decode_model(z))
    out = core.bridge_latent(z, vae, vae)
    assert torch.equal(out, ref)
    # raw latents: the same through the latent format
    raw = vae.from_model(z)
    torch.testing.assert_close(core.bridge_raw(raw, vae, vae), vae.from_model(ref))


@needs_taesd
def test_taesd_bridge_one_vae_is_round_trip_and_formats():
    vae = TAESD.load("taesd3", TAESD_DIR)
    assert (vae.latent_channels, vae.downscale, vae.scale_factor, vae.shift_factor) == (16, 8, 1.5305, 0.0609)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    z = vae.encode_model(x)
    assert torch.equal(core.bridge_latent(z, vae, vae), vae.encode_model(vae.decode_model(z)))
    # raw latents are ComfyUI's: encoder output / scale + shift, and decode takes them back
    torch.testing.assert_close(vae.encode(x), z / 1.5305 + 0.0609)
    torch.testing.assert_close(vae.decode(vae.encode(x)), vae.decode_model(z), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Noise levels


def test_equal_snr_matching_round_trips():
    sd = core.ModelSchedule.sd_discrete()
    fl = core.ModelSchedule.flow()
    sig = torch.tensor([14.6, 5.0, 1.618, 0.3, 0.03])
    s_f = core.match_sigma(sig, sd, fl)
    torch.testing.assert_close(s_f, sig / (1 + sig))
    torch.testing.assert_close(core.snr(s_f, "flow"), core.snr(sig, "eps"), rtol=1e-5, atol=0)
    back = core.match_sigma(s_f, fl, sd, snap=False)
    torch.testing.assert_close(back, sig, rtol=1e-5, atol=0)
    # a discrete target snaps to its table; table entries are fixed points of eps -> flow -> eps
    snapped = core.match_sigma(s_f, fl, sd)
    assert all(bool((sd.table == v).any()) for v in snapped)
    tab = sd.table[[0, 100, 499, 999]]
    torch.testing.assert_close(core.match_sigma(core.match_sigma(tab, sd, fl), fl, sd), tab, rtol=0, atol=0)

    # the noisy latents themselves: eps -> flow -> eps is the identity, and an exact denoiser sees
    # the same x0 on both sides (equal SNR = the same posterior)
    gmm = GaussianMixtureDenoiser(torch.randn(5, 4, 4, 4, generator=torch.Generator().manual_seed(2)), 0.4)
    x0 = gmm.sample(3, generator=torch.Generator().manual_seed(3))
    s = torch.tensor([8.0, 1.0, 0.1])
    x = x0 + s[:, None, None, None] * torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    xf, sf = core.convert_noisy(x, s, "eps", "flow")
    torch.testing.assert_close(sf, s / (1 + s))
    torch.testing.assert_close(FlowDenoiser(gmm)(xf, sf), gmm(x, s), atol=1e-5, rtol=1e-5)
    xe, se = core.convert_noisy(xf, sf, "flow", "eps")
    torch.testing.assert_close(xe, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(se, s, atol=0, rtol=1e-6)


def test_prediction_formulas_round_trip():
    g = torch.Generator().manual_seed(5)
    x0, n = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for kind, s in (("eps", torch.tensor([3.0, 0.2])), ("flow", torch.tensor([0.9, 0.1]))):
        x = core.renoise(x0, n, s, kind)
        torch.testing.assert_close(core.eps_from_x0(x, s, x0, kind), n, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(core.x0_from_eps(x, s, n, kind), x0, atol=1e-5, rtol=1e-5)
    # the paper's d weights B's converted prediction
    a, b = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    assert torch.equal(fusion.fuse(a, b, 1.0), b) and torch.equal(fusion.fuse(a, b, 0.0), a)
    torch.testing.assert_close(fusion.fuse(a, b, torch.tensor([0.25, 0.75]))[:, 0, 0, 0], torch.tensor([0.25, 0.75]))


def test_schedule_from_picks_the_targets_own_entry():
    sig_a = schedules.flow_sigmas(20, shift=3.0)
    idx, tail = core.schedule_from(sig_a, float(sig_a[7]) * 1.001, "flow")
    assert idx == 7 and torch.equal(tail, sig_a[7:])


# ---------------------------------------------------------------------------------------------
# Sub-Module 2: the noisy bridge keeps the noise white


def test_noisy_bridge_noise_is_white_latent_upscale_is_not():
    vae_b = ToyVAE(4, 8, seed=1, name="toy_b")  # "SD-like" source, eps, discrete schedule
    vae_a = ToyVAE(16, 8, seed=2, name="toy_a")  # "SD3-like" target, flow
    sd, fl = core.ModelSchedule.sd_discrete(), core.ModelSchedule.flow(shift=3.0)
    z0 = 0.15 * smooth_latents((4, 4, 32, 32), 7)
    sigma_b = sd.table[600]  # an SD noise level mid-schedule
    x_b = z0 + sigma_b * torch.randn(z0.shape, generator=torch.Generator().manual_seed(8))
    oracle = lambda x, s, **_: z0  # noqa: E731 - the source model's x0 (exact here)
    out = core.bridge_noisy(
        x_b, sigma_b, oracle, vae_b, vae_a, sd, fl, size=(512, 512), generator=torch.Generator().manual_seed(9)
    )
    assert out.x.shape == (4, 16, 64, 64)
    s_a = out.sigma
    torch.testing.assert_close(s_a, torch.full((4,), float(sigma_b / (1 + sigma_b))))
    resid = (out.x - (1 - s_a[:, None, None, None]) * out.x0) / s_a[:, None, None, None]
    std_ratio = resid.std(dim=(0, 2, 3))  # per channel, relative to the target noise level
    corr = lag1_corr(resid)
    assert float((std_ratio - 1).abs().max()) < 0.02, std_ratio
    assert abs(corr) < 0.02, corr

    # contrast: bilinear 2x upscale of the same noisy latent (core "LatentUpscale" + img2img)
    up = lambda t: torch.nn.functional.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
    r_up = (up(x_b) - up(z0)) / sigma_b
    up_std, up_corr = float(r_up.std()), lag1_corr(r_up)
    assert 0.55 < up_std < 0.70 and 0.65 < up_corr < 0.85, (up_std, up_corr)  # expected ~0.63 / ~0.75
    assert float(std_ratio.min()) - up_std > 0.25 and up_corr - abs(corr) > 0.5


def test_resolution_aware_level_keeps_the_coarse_noise_of_the_source():
    """The pack's resolution-aware hand-off level (``shift``): after a 2x upscale the 2x2 block means
    of the target's noise carry the source's level, where the paper's equal-SNR level halves it.
    For eps the level doubles; for flow it is SD3's shifted timestep 2t / (1 + t); above the
    target's sigma_max it is clamped; a bad shift names the input."""
    assert core.resolution_shift((32, 32), (64, 64)) == 2.0
    assert core.resolution_shift((64, 32), (64, 64)) == pytest.approx(math.sqrt(2))
    assert core.resolution_shift(64, 32) == 0.5
    sd, fl = core.ModelSchedule.sd_discrete(), core.ModelSchedule.flow()
    s = torch.tensor([5.0, 1.0, 0.1])
    torch.testing.assert_close(core.match_sigma(s, sd, sd, snap=False, shift=2.0), 2 * s)
    t = torch.tensor([0.2, 0.5, 0.8])
    torch.testing.assert_close(core.match_sigma(t, fl, fl, snap=False, shift=2.0), 2 * t / (1 + t))
    assert float(core.match_sigma(torch.tensor(10.0), sd, sd, snap=False, shift=2.0)) == pytest.approx(sd.sigma_max)
    with pytest.raises(BridgeInputError, match="^shift"):
        core.match_sigma(s, sd, sd, shift=0.0)

    vae = ToyVAE(4, 8, seed=1, name="toy")
    z0 = 0.15 * smooth_latents((8, 4, 16, 16), 3)
    sigma = sd.table[500]
    x = z0 + sigma * torch.randn(z0.shape, generator=torch.Generator().manual_seed(4))
    for shift, coarse in ((1.0, 0.5), (2.0, 1.0)):
        out = core.bridge_noisy(
            x,
            sigma,
            lambda *_a, **_k: z0,
            vae,
            vae,
            sd,
            sd,
            size=(256, 256),
            shift=shift,
            generator=torch.Generator().manual_seed(5),
        )
        block = torch.nn.functional.avg_pool2d(out.x - out.x0, 2) / sigma
        assert abs(float(block.std()) - coarse) < 0.02, (shift, float(block.std()))


def test_descending_from_drops_entries_above_a_lowered_hand_off_level():
    from comfyui_tempo.bridges.decoupled import descending_from

    tail = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0])
    torch.testing.assert_close(descending_from(tail), tail)
    low = tail.clone()
    low[0] = 1.5  # a downscale's level under the next step's
    torch.testing.assert_close(descending_from(low), torch.tensor([1.5, 1.0, 0.5, 0.0]))


# ---------------------------------------------------------------------------------------------
# Sub-Module 1: conversion B -> A, fusion, back to B


def test_prediction_conversion_and_back_with_identity_bridge():
    """With one (invertible, unclamped) VAE the bridge is the identity, so B's x0 carried into A is
    B's x0 and its eps at A's chain point is exact; the fused x0 carried back into B is the fused x0."""
    vae = ToyVAE(4, 8, seed=4)
    g = torch.Generator().manual_seed(10)
    x0_b, x0_a, n = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    s_a = torch.tensor([0.7, 0.3])  # A is a flow model
    x_a = core.renoise(x0_a, n, s_a, "flow")
    p = fusion.convert_prediction(x0_b, vae, vae, x_a, s_a, "flow", clamp=False)
    torch.testing.assert_close(p.x0, x0_b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p.eps, (x_a - (1 - s_a[:, None, None, None]) * x0_b) / s_a[:, None, None, None])
    fused = fusion.fuse(x0_a, p.x0, 0.3)
    x_b, s_b = core.convert_noisy(x_a, s_a, "flow", "eps")
    back = fusion.fused_to_b(fused, vae, vae, x_b, s_b, "eps", clamp=False)
    torch.testing.assert_close(back.x0, fused, atol=1e-5, rtol=1e-5)
    # fusing eps with (d, 1 - d) equals fusing x0 with (d, 1 - d)
    eps_a = core.eps_from_x0(x_a, s_a, x0_a, "flow")
    torch.testing.assert_close(
        core.eps_from_x0(x_a, s_a, fused, "flow"), fusion.fuse(eps_a, p.eps, 0.3), atol=1e-4, rtol=1e-4
    )


def test_coop_sampling_of_one_model_in_two_families_is_single_model_sampling():
    """Algorithm 1 with model A = a flow view and model B = an eps view of the same exact denoiser,
    one shared VAE, matched schedules: any d gives plain Euler sampling of the model, and B's
    chain tracks A's (the same latent in B's convention)."""
    gmm = GaussianMixtureDenoiser(torch.randn(6, 4, 4, 4, generator=torch.Generator().manual_seed(11)), 0.3)
    flow = FlowDenoiser(gmm)
    vae = ToyVAE(4, 8, seed=5)
    sig_b = schedules.karras(8, 0.03, 14.6)  # eps schedule, ending at 0
    fl = core.ModelSchedule.flow()
    sig_a = torch.cat([core.match_sigma(sig_b[:-1], core.ModelSchedule(kind="eps"), fl), torch.zeros(1)])
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(12))
    x_b = noise * sig_b[0]
    x_a, _ = core.convert_noisy(x_b, sig_b[0], "eps", "flow")
    ref = kdiff.sample_euler(gmm, x_b.clone(), sig_b)
    for d in (0.0, 0.5, 1.0):
        out_a, out_b = fusion.coop_sample_euler(
            flow, gmm, x_a, x_b, sig_a, sig_b, vae, vae, "flow", "eps", d=d, clamp=False
        )
        torch.testing.assert_close(out_a, ref, atol=1e-4, rtol=1e-4)
        if d > 0:  # at d = 0 B contributes nothing, so its chain is never started (out_b stays B's start)
            torch.testing.assert_close(out_b, ref, atol=1e-4, rtol=1e-4)
        else:
            assert torch.equal(out_b, x_b)


# ---------------------------------------------------------------------------------------------
# Real tiny VAEs


@pytest.fixture(scope="module")
def photos():
    import kornia
    from skimage import data

    def crop(a, s=128):
        t = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255
        h, w = t.shape[-2:]
        m = min(h, w)
        t = t[..., (h - m) // 2 : (h - m) // 2 + m, (w - m) // 2 : (w - m) // 2 + m]
        return kornia.geometry.transform.resize(t, (s, s), antialias=True).clamp(0, 1)

    return torch.cat([crop(data.astronaut()), crop(data.coffee()), crop(data.rocket())])


@pytest.fixture(scope="module")
def taesd_pair(photos):
    b = TAESD.load("taesd", TAESD_DIR)
    z_b = b.encode_model(photos)
    return b, z_b, b.decode_model(z_b)


@needs_taesd
def test_taesd_to_taesdxl_costs_no_more_than_a_round_trip(photos, taesd_pair):
    """Bridged image D_A(E_A(D_B(z_B))) against a plain decode-encode-decode round trip in either
    VAE: within 0.3 dB (measured: the bridge is 0.1-1.0 dB *better* at 128 px)."""
    b, z_b, img_b = taesd_pair
    a = TAESD.load("taesdxl", TAESD_DIR)
    z_a = core.bridge_latent(z_b, b, a)
    assert z_a.shape == z_b.shape
    bridged = psnr(photos, a.decode_model(z_a))
    rt_b = psnr(photos, b.decode_model(b.encode_model(img_b)))
    rt_a = psnr(photos, a.decode_model(a.encode_model(a.decode_model(a.encode_model(photos)))))
    for br, r1, r2 in zip(bridged, rt_b, rt_a):
        assert br >= max(r1, r2) - 0.3, (bridged, rt_b, rt_a)
    assert min(bridged) > 18.0


@needs_taesd
def test_taesd_to_taesd3_four_to_sixteen_channels_and_resize(photos, taesd_pair):
    b, z_b, img_b = taesd_pair
    a = TAESD.load("taesd3", TAESD_DIR)
    z_a = core.bridge_latent(z_b, b, a)
    assert z_a.shape == (3, 16, 16, 16) and torch.isfinite(z_a).all()
    # bounded by the weaker (source) VAE: no worse than its own round trip
    rt_b = psnr(photos, b.decode_model(b.encode_model(img_b)))
    for br, r in zip(psnr(photos, a.decode_model(z_a)), rt_b):
        assert br >= r - 0.3
    # a 2x resolution bridge with a chosen filter, tiled: close to untiled
    up = core.bridge_latent(z_b[:1], b, a, size=(256, 256), filter="bicubic")
    up_t = core.bridge_latent(z_b[:1], b, a, size=(256, 256), filter="bicubic", tile=128, overlap=64)
    assert up.shape == (1, 16, 32, 32)
    assert psnr(a.decode_model(up), a.decode_model(up_t))[0] > 38.0  # measured 46 dB


# ---------------------------------------------------------------------------------------------
# Bad inputs: ValueError subclasses whose message starts with the input's name


def _raises(name, fn, *args, **kw):
    with pytest.raises(BridgeInputError) as e:
        fn(*args, **kw)
    assert isinstance(e.value, ValueError)
    assert str(e.value).startswith(name + ":"), str(e.value)


def test_bad_inputs_name_the_input():
    v4, v16 = ToyVAE(4, 8), ToyVAE(16, 8)
    z4, z16 = torch.zeros(1, 4, 8, 8), torch.zeros(1, 16, 8, 8)
    sd, fl = core.ModelSchedule.sd_discrete(), core.ModelSchedule.flow(shift=3.0)
    den = lambda x, s, **_: x  # noqa: E731
    _raises("vae_from", core.bridge_latent, z16, v4, v16)  # latent channels vs the VAE's
    _raises("vae_b", fusion.predict_b_in_a, den, z16, 1.0, v4, v4, z4, 0.5, "flow")
    _raises("size", core.bridge_latent, z4, v4, v16, size=(100, 100))  # not divisible by 8
    _raises("size", core.bridge_latent, z4, v4, v16, size=(0, 64))
    _raises("vae_to", core.bridge_latent, torch.zeros(1, 4, 5, 5), v4, ToyVAE(4, 16))  # 40 px, factor 16
    _raises("images", v4.encode_model, torch.zeros(1, 3, 60, 64))
    _raises("latent", v4.decode_model, z16)
    _raises("filter", core.bridge_latent, z4, v4, v4, size=(128, 128), filter="lanczos")
    _raises("tile", core.bridge_latent, z4, v4, v4, tile=60)
    _raises("sigma", core.bridge_noisy, z4, 100.0, den, v4, v16, sd, fl)  # switch point above the schedule
    _raises("sigma", core.bridge_noisy, z4, 0.0, den, v4, v16, sd, fl)  # ... and at 0
    _raises("sigma", core.match_sigma, 0.002, core.ModelSchedule.flow(), fl)  # matches below SD3's sigma_min
    _raises("sigma_to", core.bridge_noisy, z4, 1.0, den, v4, v16, sd, fl, sigma_to=1.5)
    _raises("noise", core.bridge_noisy, z4, 1.0, den, v4, v16, sd, fl, noise=torch.zeros(1, 4, 8, 8))
    _raises("sigma", core.schedule_from, schedules.flow_sigmas(10), 1.5, "flow")
    _raises("kind", core.ModelSchedule, kind="x0")
    _raises("d", fusion.fuse, z4, z4, torch.ones(3))
    _raises("sigma", core.eps_from_x0, z4, 0.0, z4, "eps")
    _raises("name", TAESD.load, "taesd9", "/nonexistent")
    _raises("folder", TAESD.load, "taesd", "/nonexistent")
