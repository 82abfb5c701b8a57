"""The latent testbed in SD1.x's real latent space (testbed/trained_vpred.py, ``sd_latent``): coloured shapes at
128 px encoded by the real TAESD (read from $TEMPO_TAESD_DIR or shared/assets/taesd, never copied) to 4x16x16
latents, an eps UNet on ComfyUI's discrete table, TAESD's decoder as its decode. The AdaptiveDiffusion grid's tenth
model, blind to every rule.

Checks the shipped weights and their record, that the data are TAESD's latents (SD's scaled space: about unit
spread), that the net predicts eps on them, that decode is TAESD's decoder, the grid Problem, and the clear error
when the TAESD files are missing. Skipped, saying why, where the TAESD files are not found."""

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


@pytest.fixture(scope="module")
def tb():
    return trained_vpred.load(model="sd_latent")


@pytest.fixture(scope="module")
def heldout():
    """(images, labels) of 30 of the model's held-out images (never trained on), and their TAESD latents."""
    d = dict(trained_vpred.SD_LATENT_DATA_CONFIG, per_class=30)  # the first 300 images of the same draw
    images, labels = trained_vpred.build_data(d)
    _, held = trained_vpred.data_mod.split_indices(images.shape[0], d["heldout_every"])
    images, labels = images[held], labels[held]
    return images, labels, trained_vpred.encode_data(d, images)


def test_weights_load_with_their_config_and_the_taesd_space(tb):
    assert trained_vpred.SPECS["sd_latent"][3].stat().st_size < 3e6
    assert tb.prediction == "eps" and not tb.zsnr and tb.sampling is None
    assert tb.meta["unet_config"] == trained_vpred.SD_LATENT_UNET_CONFIG
    assert tb.meta["data"] == trained_vpred.SD_LATENT_DATA_CONFIG and tb.meta["data"]["vae"] == "taesd"
    assert tb.latent_shape == (4, 16, 16) and tb.vae is not None and tb.vae.name == "taesd"
    # SD's scaled latents: about unit spread (pixels in [-1, 1] have ~0.6), as the record says
    assert 0.8 < tb.meta["latent_std"] < 1.1


def test_data_are_taesds_latents_and_decode_is_its_decoder(tb, heldout):
    images, _, z = heldout
    assert z.shape == (images.shape[0], 4, 16, 16)
    assert float(z.std()) == pytest.approx(tb.meta["latent_std"], abs=0.1)
    rec = tb.decode(z)
    assert rec.shape == images.shape and float(rec.min()) >= 0 and float(rec.max()) <= 1
    assert float(psnr(rec, images).mean()) > 22  # TAESD round trip of flat shapes (measured ~29 dB)
    assert torch.equal(rec, tb.vae._decode_model(z).clamp(0, 1))


def test_net_predicts_eps_and_denoises(tb, heldout):
    _, labels, x0 = heldout
    sigma = 1.5
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    x = x0 + sigma * noise
    with torch.no_grad():
        eps = tb.velocity(x, sigma, labels)
        den = tb.denoiser(x, sigma, labels)
    assert torch.allclose(den, x - sigma * eps, atol=1e-6)
    cos = torch.nn.functional.cosine_similarity(eps.flatten(1), noise.flatten(1)).mean()
    assert cos > 0.9
    assert (den - x0).pow(2).mean() < 0.25 * (x - x0).pow(2).mean()


def test_the_grid_problem_is_the_testbed_with_cfg(tb):
    assert "sd_latent" in ag.MODELS and "sd_latent" in ag.HELD_OUT
    p = ag.build_problem("sd_latent", "normal", 5.0, 3, 1)
    assert p.noise.shape == (3, 4, 16, 16) and p.sampling is None
    x = torch.randn(3, 4, 16, 16) * 2
    a = p.denoiser(x, torch.tensor(2.0), cond=p.cond)
    b = p.net_denoiser(lambda f: lambda xc, s, *rest: f(xc, *rest))(x, torch.tensor(2.0), cond=p.cond)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a, tb.cfg_denoiser(5.0)(x, 2.0, p.cond), atol=1e-5)
    assert p.decode(torch.zeros(1, 4, 16, 16)).shape == (1, 3, 128, 128)


def test_missing_taesd_files_are_a_clear_error(monkeypatch):
    monkeypatch.setattr(trained_vpred, "taesd_folder", lambda: None)
    with pytest.raises(FileNotFoundError, match="TEMPO_TAESD_DIR"):
        trained_vpred.data_vae.__wrapped__("taesd")
