"""The trained testbed (testbed/trained.py): loading, shapes, determinism, the autoencoder's
round trip, the denoiser's accuracy, class conditioning, CFG batching and trajectory curvature."""

import inspect

import pytest
import torch

from comfyui_tempo.samplers import schedules
from comfyui_tempo.testbed import trained

torch.set_num_threads(1)

# floors measured on the shipped weights (in brackets), with some margin for a retrained model
AE_PSNR_FLOOR = 24.0  # held-out round trip [25.7 dB]
LARGE_SIGMA_RATIO = {2.0: 0.45, 4.0: 0.75}  # denoiser MSE / MSE of predicting 0 [0.33, 0.60]


@pytest.fixture(scope="module")
def tb():
    return trained.load()


def _psnr(a, b):
    return -10 * torch.log10((a - b).pow(2).flatten(1).mean(1))


def _euler(denoise, x, sigmas, cond):
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - denoise(x, s, cond)) / s
        x = x + d * (s_next - s)
    return x


def test_load_is_cached_and_in_eval_mode(tb):
    assert trained.load() is tb
    assert not tb.net.training and not tb.ae.training
    assert all(p.dtype == torch.float32 for p in tb.net.parameters())
    assert tb.num_classes == 10 and tb.null_class == 10


def test_weights_small_and_record_present():
    # one file per shipped model (testbed, testbed_hr, ...): each a few MB
    files = list(trained.WEIGHTS_DIR.glob("*.safetensors"))
    assert trained.WEIGHTS_FILE in files
    assert all(f.stat().st_size < 5e6 for f in files), [(f.name, f.stat().st_size) for f in files]
    meta = trained.read_meta()
    assert {"ae_config", "unet_config", "seed", "train", "data"} <= set(meta)
    assert meta["train"]["unet"]["steps"] > 0 and meta["train"]["autoencoder"]["steps"] > 0


def test_shapes_and_schedule(tb):
    c, h, w = tb.latent_shape
    assert c == 4 and h >= 8 and w >= 8
    assert tb.image_size == h * tb.ae.factor
    assert tb.sigmas.shape == (1000,)
    assert tb.sigma_min == pytest.approx(float(schedules.discrete_sigmas()[0]))
    assert tb.sigma_max == pytest.approx(float(schedules.discrete_sigmas()[-1]))
    x = torch.randn(3, *tb.latent_shape)
    assert tb.denoiser(x, torch.full((3,), 2.0), torch.tensor([1, 2, 10])).shape == x.shape
    assert tb.denoiser(x, 2.0).shape == x.shape  # float sigma, cond None
    assert tb.denoiser(x, torch.tensor(2.0), torch.tensor([4, 4, 4])).shape == x.shape  # 0-d sigma
    img = tb.decode(x)
    assert img.shape == (3, 3, tb.image_size, tb.image_size)
    assert img.min() >= 0 and img.max() <= 1
    assert tb.encode(img).shape == x.shape


def test_unet_signature_matches_comfyui(tb):
    params = list(inspect.signature(tb.net.forward).parameters)
    assert params[:3] == ["x", "timesteps", "context"]
    x = torch.randn(2, *tb.latent_shape)
    t = torch.tensor([10.0, 900.0])
    null = torch.zeros(2, 1, 11)
    null[:, :, 10] = 1
    out = tb.net(x, t, context=null, control=None, transformer_options={})
    assert out.shape == x.shape
    torch.testing.assert_close(tb.net(x, t), out)  # context=None is the null class
    torch.testing.assert_close(tb.net(x, t.long(), context=null), out)  # long timesteps


def test_deterministic(tb):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, *tb.latent_shape, generator=g) * 3
    cond = torch.tensor([0, 3, 7, 10])
    s = torch.full((4,), 3.0)
    torch.testing.assert_close(tb.denoiser(x, s, cond), tb.denoiser(x, s, cond), rtol=0, atol=0)
    f = tb.cfg_denoiser(5.0)
    torch.testing.assert_close(f(x, s, cond), f(x, s, cond), rtol=0, atol=0)


def test_dataset_and_latents(tb):
    images, labels = tb.dataset()
    assert images.ndim == 4 and images.shape[1:] == (3, tb.image_size, tb.image_size)
    assert labels.dtype == torch.long and set(labels.unique().tolist()) == set(range(10))
    assert images.min() >= 0 and images.max() <= 1
    lat = tb.latents()
    assert lat.shape == (images.shape[0], *tb.latent_shape)
    assert 0.8 < float(lat.std()) < 1.25 and abs(float(lat.mean())) < 0.2
    held, _ = tb.dataset("heldout")
    assert held.shape[0] > 100


def test_autoencoder_round_trip(tb):
    held, _ = tb.dataset("heldout")
    rec = tb.decode(tb.encode(held[:256]))
    psnr = float(-10 * torch.log10((rec - held[:256]).pow(2).mean()))
    assert psnr > AE_PSNR_FLOOR, psnr


def test_denoiser_accuracy(tb):
    g = torch.Generator().manual_seed(0)
    x0 = tb.latents()[:64]
    _, labels = tb.dataset()
    cond = labels[:64]
    noise = torch.randn(x0.shape, generator=g)
    # small sigma: close to the clean latent (better than the input itself)
    s = tb.sigma_min
    err_small = (tb.denoiser(x0 + s * noise, s, cond) - x0).pow(2).mean()
    assert err_small < 1.05 * s**2 and err_small < 1e-3, float(err_small)  # [0.94 s^2]
    # large sigma: far better than predicting zero (the data mean)
    for s, ratio in LARGE_SIGMA_RATIO.items():
        err = (tb.denoiser(x0 + s * noise, s, cond) - x0).pow(2).mean()
        assert err < ratio * x0.pow(2).mean(), (s, float(err))


def test_class_conditioning_matters(tb):
    g = torch.Generator().manual_seed(1)
    x0 = tb.latents()[:100]
    _, labels = tb.dataset()
    y = labels[:100]
    s = 2.0
    x = x0 + s * torch.randn(x0.shape, generator=g)
    right = (tb.denoiser(x, s, y) - x0).pow(2).mean()
    wrong = (tb.denoiser(x, s, (y + 1 + torch.randint(9, y.shape, generator=g)) % 10) - x0).pow(2).mean()
    null = tb.denoiser(x, s, None)
    assert (tb.denoiser(x, s, y) - null).abs().mean() > 0.02
    assert right < 0.9 * wrong, (float(right), float(wrong))  # [0.80]


def test_cfg_denoiser_batched_matches_two_calls(tb):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, *tb.latent_shape, generator=g) * 4
    cond = torch.tensor([2, 5, 9])
    s = torch.tensor([4.0, 1.0, 0.3])
    c, u = tb.denoiser(x, s, cond), tb.denoiser(x, s, None)
    torch.testing.assert_close(tb.cfg_denoiser(5.0)(x, s, cond), u + 5.0 * (c - u), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tb.cfg_denoiser(1.0)(x, s, cond), c, rtol=0, atol=0)


def _stroke_features(img):
    """Colour-invariant digit map: each pixel's colour distance from the border's median colour."""
    border = torch.cat([img[:, :, 0], img[:, :, -1], img[:, :, :, 0], img[:, :, :, -1]], -1).median(-1).values
    d = (img - border[:, :, None, None]).pow(2).sum(1, keepdim=True).sqrt()
    d = d / d.flatten(1).amax(1).clamp(min=1e-3)[:, None, None, None]
    return torch.nn.functional.avg_pool2d(d, 2).flatten(1).numpy()


@pytest.fixture(scope="module")
def euler_samples(tb):
    """CFG-5 Euler samples (karras) with 10, 25 and 50 steps from the same noise, decoded."""
    cond = torch.arange(10).repeat(2)
    noise = torch.randn(20, *tb.latent_shape, generator=torch.Generator().manual_seed(0))
    den = tb.cfg_denoiser(5.0)
    out = {}
    for n in (10, 25, 50):
        sig = schedules.get_sigmas("karras", n, tb.sigmas)
        out[n] = tb.decode(_euler(den, noise * sig[0], sig, cond))
    return cond, out


def test_samples_show_the_requested_digit(tb, euler_samples):
    """A simple colour-invariant classifier trained on the data set reads the requested class."""
    from sklearn.linear_model import LogisticRegression

    images, labels = tb.dataset()
    clf = LogisticRegression(max_iter=200, C=0.5).fit(_stroke_features(images), labels.numpy())
    held, held_y = tb.dataset("heldout")
    assert clf.score(_stroke_features(held), held_y.numpy()) > 0.75  # [0.85]
    cond, out = euler_samples
    acc = (clf.predict(_stroke_features(out[50])) == cond.numpy()).mean()
    assert acc >= 0.8, acc  # [1.0]


def test_samples_are_curved(euler_samples):
    """Euler trajectories are curved: fewer steps give clearly different images, and the error
    shrinks as steps are added (first order). Measured: 10 vs 50 steps ~35 dB, 25 vs 50 ~47 dB."""
    _, out = euler_samples
    p10 = float(_psnr(out[10], out[50]).mean())
    p25 = float(_psnr(out[25], out[50]).mean())
    assert p10 < 38.0, p10
    assert p25 < 52.0, p25
    assert p10 + 5 < p25, (p10, p25)


@pytest.mark.xfail(
    strict=True,
    reason="target not reached: this tiny model's 25- and 50-step "
    "Euler samples differ by ~47 dB (see testbed/trained.py, curvature)",
)
def test_curvature_target_25_vs_50_below_35db(euler_samples):
    """The brief's target: 25 vs 50 Euler steps (karras, CFG 5) decoded PSNR below 35 dB."""
    _, out = euler_samples
    assert float(_psnr(out[25], out[50]).mean()) < 35.0
