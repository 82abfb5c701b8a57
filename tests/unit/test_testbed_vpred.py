"""The pixel-space UNet testbeds (testbed/trained_vpred.py), the AdaptiveDiffusion grid's held-out models: the
v-prediction digits UNet, the eps- and v-prediction shapes UNets and the rectified-flow digits UNet.

Checks the shipped weights, ComfyUI's V_PREDICTION convention on the discrete schedule
(x0 = x / (1 + sigma^2) - v sigma / sqrt(1 + sigma^2), network input x / sqrt(1 + sigma^2)), that the trained net
predicts v (not eps, not x0), the EPS convention and an eps-predicting net for the shapes model, ComfyUI's CONST
convention on a shift-8 flow model sampling for the flow UNet (x0 = x - sigma v, input x at timestep 1000 sigma) and
a net predicting noise - x0, the zero-terminal-SNR table (ComfyUI's rescale_zero_terminal_snr_sigmas) and a v net
trained and sampled on it, the grid Problems, and that training is deterministic."""

from __future__ import annotations

import argparse

import pytest
import torch

from comfyui_tempo.samplers import schedules
from comfyui_tempo.testbed import data as data_mod
from comfyui_tempo.testbed import problems, trained_vpred

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tb():
    return trained_vpred.load()


def _images(tb):
    """(images in [0, 1], labels) of a testbed's own data (one copy of the digits; the shapes as drawn)."""
    d = dict(tb.meta["data"])
    if d.get("kind") == "shapes":
        return trained_vpred.build_data(d)
    return data_mod.build(d["seed"], d["size"], 1)


def _noisy(tb, n=20, sigma=1.5):
    images, labels = _images(tb)
    x0 = images[:n] * 2 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    return x0, labels[:n], noise, x0 + sigma * noise


def test_weights_load_with_their_config(tb):
    assert trained_vpred.WEIGHTS_FILE.stat().st_size < 3e6
    assert tb.latent_shape == (3, 16, 16)
    assert tb.meta["unet_config"] == trained_vpred.UNET_CONFIG
    assert torch.allclose(tb.sigmas, schedules.discrete_sigmas())


def _assert_predicts_v(tb, sigma=1.5):
    """The net's output is v (cosine > 0.9 with alpha noise - sigma alpha x0, clearly above eps), the denoiser is
    ComfyUI's V_PREDICTION.calculate_denoised (sigma_data 1), and it denoises."""
    x0, y, noise, x = _noisy(tb, sigma=sigma)
    alpha = 1 / (1 + sigma**2) ** 0.5
    v_true = alpha * noise - sigma * alpha * x0
    with torch.no_grad():
        v = tb.velocity(x, sigma, y)
        den = tb.denoiser(x, sigma, y)
    assert torch.allclose(den, x / (1 + sigma**2) - v * sigma / (1 + sigma**2) ** 0.5, atol=1e-6)
    cos = torch.nn.functional.cosine_similarity(v.flatten(1), v_true.flatten(1)).mean()
    cos_eps = torch.nn.functional.cosine_similarity(v.flatten(1), noise.flatten(1)).mean()
    assert cos > 0.9 and cos > cos_eps + 0.05
    assert (den - x0).pow(2).mean() < 0.25 * (x - x0).pow(2).mean()


def test_the_net_predicts_v_and_the_denoiser_is_comfyuis_v_prediction(tb):
    _assert_predicts_v(tb)


def test_problem_matches_the_testbed_and_its_network_hook(tb):
    p = problems.vpred_problem(classes=3, seeds=1, scheduler="normal")
    x = torch.randn(3, 3, 16, 16) * 2
    a = p.denoiser(x, torch.tensor(2.0), cond=p.cond)
    calls = []

    def wrap(f):
        def g(xc, s, *rest):
            calls.append(s)
            return f(xc, *rest)

        return g

    b = p.net_denoiser(wrap)(x, torch.tensor(2.0), cond=p.cond)
    assert torch.allclose(a, b, atol=1e-5) and calls == [2.0]
    assert torch.allclose(a, tb.cfg_denoiser(5.0)(x, 2.0, p.cond), atol=1e-5)
    sig = p.sigmas(10)
    assert sig.shape == (11,) and float(sig[-1]) == 0.0 and float(sig[0]) == pytest.approx(float(tb.sigmas[-1]))


@pytest.mark.parametrize("model", ["vpred", "shapes_eps", "shapes_v", "digits_flow", "vpred_zsnr", "shapes_zsnr"])
def test_training_is_deterministic(tmp_path, model):
    outs = []
    for k in range(2):
        args = argparse.Namespace(seed=0, steps=3, batch=4, lr=1e-3, out=tmp_path / f"v{k}.safetensors", model=model)
        trained_vpred.train(args)
        outs.append(trained_vpred.load(str(args.out), model))
    assert outs[0].prediction == {"vpred": "v", "shapes_eps": "eps", "shapes_v": "v", "digits_flow": "flow"}.get(
        model, "v"
    )
    assert outs[0].zsnr == model.endswith("_zsnr") and bool(outs[0].sigmas[-1] > 4000) == outs[0].zsnr
    assert outs[0].meta["unet_config"] == trained_vpred.SPECS[model][2]
    for (name, a), (_, b) in zip(outs[0].net.state_dict().items(), outs[1].net.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.fixture(scope="module")
def tb_eps():
    return trained_vpred.load(model="shapes_eps")


def test_shapes_eps_weights_load_with_their_config(tb_eps):
    assert trained_vpred.SPECS["shapes_eps"][3].stat().st_size < 3e6
    assert tb_eps.prediction == "eps" and tb_eps.latent_shape == (3, 16, 16)
    assert tb_eps.meta["unet_config"] == trained_vpred.SHAPES_UNET_CONFIG
    assert tb_eps.meta["data"] == trained_vpred.SHAPES_DATA_CONFIG


def test_shapes_eps_problem_matches_the_testbed_and_its_network_hook(tb_eps):
    p = problems.shapes_eps_problem(classes=3, seeds=1, scheduler="normal")
    x = torch.randn(3, 3, 16, 16) * 2
    a = p.denoiser(x, torch.tensor(2.0), cond=p.cond)
    b = p.net_denoiser(lambda f: lambda xc, s, *rest: f(xc, *rest))(x, torch.tensor(2.0), cond=p.cond)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a, tb_eps.cfg_denoiser(5.0)(x, 2.0, p.cond), atol=1e-5)


@pytest.fixture(scope="module")
def tb_sv():
    return trained_vpred.load(model="shapes_v")


def test_shapes_v_weights_load_with_their_config(tb_sv):
    assert trained_vpred.SPECS["shapes_v"][3].stat().st_size < 3e6
    assert tb_sv.prediction == "v" and tb_sv.latent_shape == (3, 16, 16)
    assert tb_sv.meta["unet_config"] == trained_vpred.SHAPES_V_UNET_CONFIG
    assert tb_sv.meta["data"] == trained_vpred.SHAPES_V_DATA_CONFIG
    assert tb_sv.meta["data"]["seed"] != trained_vpred.SHAPES_DATA_CONFIG["seed"]  # another draw of the shapes


@pytest.mark.parametrize("model", ["shapes_eps", "shapes_v"])
def test_shapes_net_predicts_its_target_and_the_denoiser_is_comfyuis(model, tb_eps, tb_sv):
    """eps model: output ~ the noise, x0 = x - sigma eps (EPS); v model: output ~ v, x0 = x / (1 + sigma^2) - v sigma /
    sqrt(1 + sigma^2) (V_PREDICTION)."""
    tb = {"shapes_eps": tb_eps, "shapes_v": tb_sv}[model]
    sigma = 1.5
    images, labels = trained_vpred.build_data(dict(trained_vpred.SPECS[model][1], per_class=2))
    x0, y = images * 2 - 1, labels
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    x = x0 + sigma * noise
    with torch.no_grad():
        out = tb.velocity(x, sigma, y)
        den = tb.denoiser(x, sigma, y)
    s2 = 1 + sigma**2
    v_true = noise / s2**0.5 - sigma * x0 / s2**0.5
    if model == "shapes_eps":
        assert torch.allclose(den, x - sigma * out, atol=1e-6)
        target, other = noise, v_true
    else:
        assert torch.allclose(den, x / s2 - out * sigma / s2**0.5, atol=1e-5)
        target, other = v_true, noise
    cos = torch.nn.functional.cosine_similarity(out.flatten(1), target.flatten(1)).mean()
    cos_other = torch.nn.functional.cosine_similarity(out.flatten(1), other.flatten(1)).mean()
    assert cos > 0.9 and cos > cos_other + 0.02
    assert (den - x0).pow(2).mean() < 0.25 * (x - x0).pow(2).mean()


def test_shapes_v_problem_matches_the_testbed(tb_sv):
    p = problems.shapes_v_problem(classes=3, seeds=1, scheduler="normal")
    x = torch.randn(3, 3, 16, 16) * 2
    a = p.denoiser(x, torch.tensor(2.0), cond=p.cond)
    assert torch.allclose(a, tb_sv.cfg_denoiser(5.0)(x, 2.0, p.cond), atol=1e-5)


@pytest.fixture(scope="module")
def tb_df():
    return trained_vpred.load(model="digits_flow")


def test_digits_flow_weights_load_with_their_config_and_model_sampling(tb_df):
    assert trained_vpred.SPECS["digits_flow"][3].stat().st_size < 3e6
    assert tb_df.prediction == "flow" and tb_df.latent_shape == (3, 16, 16)
    assert tb_df.meta["unet_config"] == trained_vpred.DIGITS_FLOW_UNET_CONFIG
    assert tb_df.meta["data"] == trained_vpred.DIGITS_FLOW_DATA_CONFIG
    assert tb_df.meta["data"]["seed"] != trained_vpred.DATA_CONFIG["seed"]  # another draw of the digits than vpred's
    assert tb_df.meta["sampling"] == {"shift": 8.0, "multiplier": 1000}
    # ComfyUI's ModelSamplingDiscreteFlow at shift 8: sigma(t) = 8 t / (1 + 7 t), t = k / 1000
    t = torch.tensor([0.001, 0.5, 1.0])
    assert torch.allclose(tb_df.sigmas[[0, 499, 999]], 8 * t / (1 + 7 * t))


def test_digits_flow_net_predicts_the_velocity_and_the_denoiser_is_comfyuis_const(tb_df):
    sigma = 0.6
    images, labels = trained_vpred.build_data(trained_vpred.DIGITS_FLOW_DATA_CONFIG)
    x0, y = images[:20] * 2 - 1, labels[:20]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    x = (1 - sigma) * x0 + sigma * noise
    with torch.no_grad():
        v = tb_df.velocity(x, sigma, y)
        den = tb_df.denoiser(x, sigma, y)
        # the network sees x itself at timestep 1000 sigma (CONST; no input scaling)
        ctx = torch.nn.functional.one_hot(y, 11).float()[:, None]
        assert torch.allclose(v, tb_df.net(x, torch.full((20,), 1000 * sigma), context=ctx), atol=1e-6)
    assert torch.allclose(den, x - sigma * v, atol=1e-6)
    cos = torch.nn.functional.cosine_similarity(v.flatten(1), (noise - x0).flatten(1)).mean()
    cos_noise = torch.nn.functional.cosine_similarity(v.flatten(1), noise.flatten(1)).mean()
    assert cos > 0.9 and cos > cos_noise + 0.02
    assert (den - x0).pow(2).mean() < 0.25 * (x - x0).pow(2).mean()


def test_digits_flow_problem_is_a_flow_problem_matching_the_testbed(tb_df):
    p = problems.digits_flow_problem(classes=3, seeds=1, scheduler="simple")
    assert schedules.is_flow(p.sampling)
    x = torch.randn(3, 3, 16, 16) * 0.8
    a = p.denoiser(x, torch.tensor(0.7), cond=p.cond)
    b = p.net_denoiser(lambda f: lambda xc, s, *rest: f(xc, *rest))(x, torch.tensor(0.7), cond=p.cond)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a, tb_df.cfg_denoiser(5.0)(x, 0.7, p.cond), atol=1e-5)
    sig = p.sigmas(10)  # ComfyUI's simple on the shift-8 flow sampling: from sigma 1 to 0
    assert sig.shape == (11,) and float(sig[0]) == pytest.approx(1.0) and float(sig[-1]) == 0.0
    assert float(sig[5]) > 0.8  # shift 8 keeps half the steps above sigma 0.8


def test_zero_terminal_snr_table_is_comfyuis_rescale():
    """schedules.discrete_sigmas(zsnr=True): SD's table with sqrt(alpha-bar) shifted to end at 0 and scaled to keep its
    first value, the last alpha-bar then ComfyUI's 4.897e-8 (the host tier compares it with ComfyUI's, bit for bit)."""
    sd, z = schedules.discrete_sigmas().double(), schedules.discrete_sigmas(zsnr=True).double()
    assert z.shape == sd.shape and bool((z[1:] > z[:-1]).all())
    assert float(z[0]) == pytest.approx(float(sd[0]), rel=1e-6)  # the first timestep unchanged
    assert float(z[-1]) == pytest.approx(((1 - 4.8973451890853435e-08) / 4.8973451890853435e-08) ** 0.5, rel=1e-6)
    a_sd, a_z = (1 / (1 + sd**2)).sqrt(), (1 / (1 + z**2)).sqrt()
    a_expected = (a_sd - a_sd[-1]) * a_sd[0] / (a_sd[0] - a_sd[-1])  # the rescale, but for the last entry
    assert torch.allclose(a_z[:-1], a_expected[:-1], rtol=1e-5, atol=1e-9)
    assert bool((z[:-1] > sd[:-1] * 0.999).all())  # more noise at every step
    ds = schedules.Discrete(zsnr=True)
    assert torch.equal(ds.sigmas, schedules.discrete_sigmas(zsnr=True)) and float(ds.sigma_max) > 4000
    assert float(schedules.get_sigmas("karras", 10, ds)[0]) == pytest.approx(float(ds.sigma_max))
    with pytest.raises(ValueError, match="^zsnr: "):
        schedules.Discrete(schedules.discrete_sigmas(), zsnr=True)


ZSNR = {  # name -> (UNet config, data config, its grid Problem)
    "vpred_zsnr": ("VPRED_ZSNR_UNET_CONFIG", "VPRED_ZSNR_DATA_CONFIG", "vpred_zsnr_problem"),
    "shapes_zsnr": ("SHAPES_ZSNR_UNET_CONFIG", "SHAPES_ZSNR_DATA_CONFIG", "shapes_zsnr_problem"),
}


@pytest.fixture(scope="module", params=sorted(ZSNR))
def tb_zs(request):
    return request.param, trained_vpred.load(model=request.param)


def test_zsnr_weights_load_with_their_config_and_table(tb_zs):
    name, tb = tb_zs
    unet, data, _ = ZSNR[name]
    assert trained_vpred.SPECS[name][3].stat().st_size < 3e6
    assert tb.prediction == "v" and tb.zsnr and tb.meta["zsnr"] is True
    assert tb.meta["unet_config"] == getattr(trained_vpred, unet)
    assert tb.meta["data"] == getattr(trained_vpred, data)
    assert torch.equal(tb.sigmas, schedules.discrete_sigmas(zsnr=True))


def test_zsnr_net_predicts_v_and_at_zero_snr_the_class_mean(tb_zs):
    """At sigma 1.5 the net predicts v (not eps); at the table's last sigma (~4518: alpha-bar 4.9e-8, the input is all
    noise) what it denoises to hardly depends on the noise (the class's mean image, as at zero SNR it must): its spread
    over 16 noises is a small part of the class's own images' spread (measured 0.03 against 0.48 on vpred_zsnr)."""
    name, tb = tb_zs
    _assert_predicts_v(tb)
    images, labels = _images(tb)
    s_max = float(tb.sigmas[-1])
    noise16 = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        end = tb.denoiser(noise16 * s_max, s_max, torch.full((16,), 3))
    spread_data = float((images[labels == 3] * 2 - 1).std(0).mean())
    assert float(end.std(0).mean()) < 0.15 * spread_data and float(end.abs().mean()) > 0.05


def test_zsnr_problem_samples_from_the_zsnr_table(tb_zs):
    name, tb = tb_zs
    p = getattr(problems, ZSNR[name][2])(classes=3, seeds=1, scheduler="normal")
    assert not schedules.is_flow(p.sampling) and torch.equal(p.sampling.sigmas, tb.sigmas)
    x = torch.randn(3, 3, 16, 16) * 2
    a = p.denoiser(x, torch.tensor(2.0), cond=p.cond)
    b = p.net_denoiser(lambda f: lambda xc, s, *rest: f(xc, *rest))(x, torch.tensor(2.0), cond=p.cond)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a, tb.cfg_denoiser(5.0)(x, 2.0, p.cond), atol=1e-5)
    sig = p.sigmas(10)  # ComfyUI's normal on the zsnr table: from sigma_max ~4518 to 0
    assert sig.shape == (11,) and float(sig[0]) == pytest.approx(float(tb.sigmas[-1])) and float(sig[-1]) == 0.0
    assert torch.equal(p.sigmas(10), schedules.get_sigmas("normal", 10, schedules.Discrete(zsnr=True)))
