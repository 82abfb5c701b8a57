"""The latent testbeds in real latent spaces (testbed/trained_vpred.py): ``sd_latent``, coloured shapes at 128 px
encoded by the real TAESD (SD1.x's space), and ``sdxl_latent``, coloured digits on flat, gradient and photo
backgrounds at 128 px encoded by the real taesdxl (SDXL's space): 4x16x16 latents, an eps UNet on ComfyUI's discrete
table; ``sd3_flow``, coloured shapes at 128 px encoded by the real taesd3 (SD3's space, 16x16x16 latents), a
rectified-flow UNet at SD3's shift 3; ``flux_flow``, coloured digits on backgrounds encoded by the real taef1 (FLUX.1's
space, 16x16x16), a rectified-flow UNet at Flux's time shift. The TAESD's decoder is decode. The TAESD files are read from $TEMPO_TAESD_DIR or
shared/assets/taesd, never copied. The AdaptiveDiffusion grid's tenth to thirteenth models.

Checks the shipped weights and their record, that the data are the TAESD's latents (the scaled latent space: about
unit spread), that the net predicts eps (or the flow's noise - x0) on them, that decode is the TAESD's decoder, the
grid Problem, and the clear error when the TAESD files are missing. Skipped, saying why, where the TAESD files are not
found."""

from __future__ import annotations

import pytest
import torch

from comfyui_tempo.bench import adaptive_grid as ag
from comfyui_tempo.testbed import trained_vpred
from comfyui_tempo.testbed.trained import psnr

torch.set_num_threads(1)

pytestmark = pytest.mark.skipif(
    trained_vpred.taesd_folder() is None,
    reason="the real TAESD files were not found (set TEMPO_TAESD_DIR or provide shared/assets/taesd)",
)

#: name -> (data config, UNet config, the TAESD, a smaller data set of the same generator and seed: other images than
#: the training set's, drawn alike)
MODELS = {
    "sd_latent": ("SD_LATENT_DATA_CONFIG", "SD_LATENT_UNET_CONFIG", "taesd", {"per_class": 30}),
    "sdxl_latent": ("SDXL_LATENT_DATA_CONFIG", "SDXL_LATENT_UNET_CONFIG", "taesdxl", {"copies": 1}),
    "sd3_flow": ("SD3_FLOW_DATA_CONFIG", "SD3_FLOW_UNET_CONFIG", "taesd3", {"per_class": 30}),
    "flux_flow": ("FLUX_FLOW_DATA_CONFIG", "FLUX_FLOW_UNET_CONFIG", "taef1", {"copies": 1}),
}
#: name -> (prediction, latent channels, the flow shift or None)
KINDS = {
    "sd_latent": ("eps", 4, None),
    "sdxl_latent": ("eps", 4, None),
    "sd3_flow": ("flow", 16, 3.0),
    "flux_flow": ("flow", 16, 3.158193),  # Flux's time shift at mu 1.15: e^1.15
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    """(name, testbed, images, labels, their latents): 30 images of the model's own kind, not its training set's."""
    name = request.param
    data, _, _, small = MODELS[name]
    d = dict(getattr(trained_vpred, data), **small)
    images, labels = trained_vpred.build_data(d)
    _, held = trained_vpred.data_mod.split_indices(images.shape[0], d["heldout_every"])
    held = held[:30]
    images, labels = images[held], labels[held]
    return name, trained_vpred.load(model=name), images, labels, trained_vpred.encode_data(d, images)


def test_weights_load_with_their_config_and_the_taesd_space(model):
    name, tb, *_ = model
    data, unet, vae, _ = MODELS[name]
    assert trained_vpred.SPECS[name][3].stat().st_size < 3e6
    prediction, channels, shift = KINDS[name]
    assert tb.prediction == prediction and not tb.zsnr
    if shift is None:
        assert tb.sampling is None
    else:  # ComfyUI's ModelSamplingDiscreteFlow at the shift the record names: sigma_max 1
        assert tb.sampling.shift == shift and tb.meta["sampling"] == {"shift": shift, "multiplier": 1000}
        assert float(tb.sigmas[-1]) == pytest.approx(1.0) and f"shift {shift:g}" in tb.meta["parameterisation"]
    assert tb.meta["unet_config"] == getattr(trained_vpred, unet) and tb.meta["unet_config"]["in_channels"] == channels
    assert tb.meta["data"] == getattr(trained_vpred, data) and tb.meta["data"]["vae"] == vae
    assert tb.latent_shape == (channels, 16, 16) and tb.vae is not None and tb.vae.name == vae
    assert trained_vpred.VAE_SPACES[vae] in tb.meta["parameterisation"]
    # the scaled latent space: about unit spread (pixels in [-1, 1] have ~0.6), as the record says
    assert 0.7 < tb.meta["latent_std"] < 1.3


def test_data_are_the_taesds_latents_and_decode_is_its_decoder(model):
    name, tb, images, _, z = model
    assert z.shape == (images.shape[0], KINDS[name][1], 16, 16)
    assert float(z.std()) == pytest.approx(tb.meta["latent_std"], abs=0.15)
    rec = tb.decode(z)
    assert rec.shape == images.shape and float(rec.min()) >= 0 and float(rec.max()) <= 1
    assert float(psnr(rec, images).mean()) > 20  # a TAESD round trip (measured ~29 dB on the flat shapes)
    assert torch.equal(rec, tb.vae._decode_model(z).clamp(0, 1))


def test_net_predicts_eps_and_denoises(model):
    name, tb, _, labels, x0 = model
    flow = KINDS[name][0] == "flow"
    sigma = 0.6 if flow else 1.5
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    x = (1 - sigma) * x0 + sigma * noise if flow else x0 + sigma * noise
    with torch.no_grad():
        out = tb.velocity(x, sigma, labels)
        den = tb.denoiser(x, sigma, labels)
    assert torch.allclose(den, x - sigma * out, atol=1e-6)  # EPS and CONST alike: x0 = x - sigma * output
    target = noise - x0 if flow else noise  # the flow's velocity, or eps
    cos = torch.nn.functional.cosine_similarity(out.flatten(1), target.flatten(1)).mean()
    assert cos > 0.9
    assert (den - x0).pow(2).mean() < 0.25 * (x - x0).pow(2).mean()


def test_the_grid_problem_is_the_testbed_with_cfg(model):
    name, tb, *_ = model
    c = KINDS[name][1]
    assert name in ag.MODELS and name in ag.HELD_OUT
    p = ag.build_problem(name, "normal", 5.0, 3, 1)
    assert p.noise.shape == (3, c, 16, 16) and (p.sampling is None) == (KINDS[name][2] is None)
    x = torch.randn(3, c, 16, 16, generator=torch.Generator().manual_seed(0)) * (0.5 if p.sampling else 2)
    s = 0.7 if p.sampling else 2.0
    a = p.denoiser(x, torch.tensor(s), cond=p.cond)
    b = p.net_denoiser(lambda f: lambda xc, s, *rest: f(xc, *rest))(x, torch.tensor(s), cond=p.cond)
    assert torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(a, tb.cfg_denoiser(5.0)(x, s, p.cond), atol=1e-4)
    assert p.decode(torch.zeros(1, c, 16, 16)).shape == (1, 3, 128, 128)


def test_missing_taesd_files_are_a_clear_error(monkeypatch):
    monkeypatch.setattr(trained_vpred, "taesd_folder", lambda: None)
    with pytest.raises(FileNotFoundError, match="TEMPO_TAESD_DIR"):
        trained_vpred.data_vae.__wrapped__("taesd")
