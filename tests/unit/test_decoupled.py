"""Time-decoupled sampling, the resolution hand-off and Coop fusion on the two trained testbeds
(bridges/decoupled.py, bench/coop.py). CPU, small batches; no TAESD needed."""

from __future__ import annotations

import pytest
import torch

from comfyui_tempo.bench import coop as coop_bench
from comfyui_tempo.bench import routes
from comfyui_tempo.bridges import core, decoupled, fusion
from comfyui_tempo.bridges.vae import BridgeInputError
from comfyui_tempo.samplers import kdiff, schedules
from comfyui_tempo.testbed import trained, vaes

CFG = 5.0


@pytest.fixture(scope="module")
def tbs():
    torch.set_num_threads(1)
    tb1, tbh = trained.load(), trained.load(name="hr")
    return tb1, tbh, vaes.TestbedVAE(tb1, "testbed"), vaes.TestbedVAE(tbh, "testbed-hr")


@pytest.fixture(scope="module")
def batch():
    cond = torch.tensor([0, 3, 5, 8])
    hr, lr = zip(*(routes.coupled_noise((1, 4, 8, 8), seed=100 + i) for i in range(cond.numel())))
    return cond, torch.cat(hr), torch.cat(lr)


SCHED = core.ModelSchedule.sd_discrete()


def test_hr_testbed_loads_and_codes_two_sizes(tbs):
    tb1, tbh, v1, v2 = tbs
    assert tbh is trained.load(name="hr") and tb1 is trained.load() and tb1 is not tbh
    assert tbh.meta["name"] == "hr" and tbh.latent_shape == (4, 16, 16)
    img, _ = tb1.dataset("heldout")  # 32 px renders (cheaper to build than the 64 px set)
    for size in (32, 64):
        x = core.resize_images(img[:8], (size, size), "bicubic")
        z = tbh.encode(x)
        assert z.shape == (8, 4, size // 4, size // 4)
        assert float(coop_bench.psnr_db(tbh.decode(z), x).mean()) > 22.0
    with pytest.raises(ValueError, match="^name"):
        trained.load(name="nope")


def test_coupled_noise_is_white_and_consistent():
    hr, lr = routes.coupled_noise((64, 4, 8, 8), seed=0)
    torch.testing.assert_close(lr, torch.nn.functional.avg_pool2d(hr, 2) * 2)
    for t in (hr, lr):
        assert abs(float(t.std()) - 1) < 0.03 and abs(coop_bench.lag1_corr(t)) < 0.03
    assert torch.equal(routes.coupled_noise((1, 4, 8, 8), seed=3)[0], routes.coupled_noise((1, 4, 8, 8), seed=3)[0])


@pytest.mark.parametrize(
    "switch", [dict(switch_timestep=500), dict(switch_timestep=None, switch_sigma=1.0), dict(switch_timestep=950)]
)
def test_time_decoupled_same_model_is_plain_sampling_bit_for_bit(tbs, batch, switch):
    tb1, _, v1, _ = tbs
    cond, _, noise = batch
    den = tb1.cfg_denoiser(CFG)
    sig = schedules.get_sigmas("karras", 12)
    x = noise * sig[0]
    plain = kdiff.sample_euler(den, x, sig, extra_args={"cond": cond})
    # with or without a VAE given: same space and no resize -> no bridge
    for vae in (None, v1):
        r = decoupled.time_decoupled_sample(
            den,
            den,
            x,
            sig,
            SCHED,
            vae_structure=vae,
            vae_texture=vae,
            extra_structure={"cond": cond},
            extra_texture={"cond": cond},
            **switch,
        )
        assert not r.bridged and 1 <= r.k < 12
        assert torch.equal(r.x, plain)
        assert r.nfe_structure + r.nfe_texture == 12
    # the switch is a noise level: timestep 500 is SD's sigma at t=500, whatever the step count
    if switch.get("switch_timestep") == 500:
        # an equal but separate schedule object for the texture model: eps -> eps on one table is the
        # identity, the texture model's tail is not moved onto table entries
        r2 = decoupled.time_decoupled_sample(
            den,
            den,
            x,
            sig,
            SCHED,
            core.ModelSchedule.sd_discrete(),
            extra_structure={"cond": cond},
            extra_texture={"cond": cond},
            **switch,
        )
        assert torch.equal(r2.x, plain)
        assert abs(r.switch_sigma - float(SCHED.table[500])) < 1e-5
        for n in (8, 30):
            s = schedules.get_sigmas("karras", n)
            k = decoupled.split_at_switch(s, r.switch_sigma)
            assert float(s[k - 1]) >= r.switch_sigma > float(s[k])


def test_time_decoupled_bridges_space_and_size(tbs, batch):
    tb1, tbh, v1, v2 = tbs
    cond, noise_hr, noise = batch
    sig = schedules.get_sigmas("karras", 12)
    ex = {"cond": cond}
    for handoff, extra_nfe in (("fresh", 1), ("last", 0)):
        v1.reset_calls(), v2.reset_calls()
        r = decoupled.time_decoupled_sample(
            tb1.cfg_denoiser(CFG),
            tbh.cfg_denoiser(CFG),
            noise * sig[0],
            sig,
            SCHED,
            SCHED,
            vae_structure=v1,
            vae_texture=v2,
            size=(64, 64),
            extra_structure=ex,
            extra_texture=ex,
            noise=noise_hr,
            handoff=handoff,
        )
        assert r.bridged and r.x.shape == (4, 4, 16, 16) and torch.isfinite(r.x).all()
        assert r.nfe_structure == r.k + extra_nfe and r.nfe_texture == 12 - r.k
        assert v1.calls == {"encode": 0, "decode": 1} and v2.calls == {"encode": 1, "decode": 0}
    # the structure model's composition survives the hand-off: closer to the structure model alone
    # (upscaled) than the texture model alone is
    img = v2.decode_model(r.x)
    alone1 = core.resize_images(
        v1.decode_model(kdiff.sample_euler(tb1.cfg_denoiser(CFG), noise * sig[0], sig, extra_args=ex)),
        (64, 64),
        "bicubic",
    )
    aloneh = v2.decode_model(kdiff.sample_euler(tbh.cfg_denoiser(CFG), noise_hr * sig[0], sig, extra_args=ex))
    assert float(coop_bench.psnr_db(img, alone1).mean()) > float(coop_bench.psnr_db(aloneh, alone1).mean()) + 3.0


def test_bad_inputs_name_the_input(tbs, batch):
    tb1, tbh, v1, v2 = tbs
    cond, _, noise = batch
    den = tb1.denoiser
    sig = schedules.get_sigmas("karras", 10)
    x = noise * sig[0]

    def raises(prefix, **kw):
        with pytest.raises(BridgeInputError) as e:
            decoupled.time_decoupled_sample(den, den, kw.pop("x", x), sig, SCHED, **kw)
        assert str(e.value).startswith(prefix), str(e.value)

    raises("switch_timestep", switch_timestep=1000)
    raises("switch_timestep", switch_timestep=-3)
    raises("switch_timestep", switch_timestep="late")
    raises("switch_timestep", switch_timestep=0)  # t=0: below every positive sigma of the schedule
    raises("switch_sigma", switch_timestep=None, switch_sigma=50.0)
    raises("switch_sigma", switch_timestep=None, switch_sigma=float(sig[-2]) * 0.999)
    raises("switch_timestep", switch_timestep=None)  # neither given
    raises("vae_structure", vae_structure=v1, vae_texture=v2, x=torch.randn(4, 16, 8, 8))
    raises("vae_texture", vae_structure=v1, vae_texture=None, size=(64, 64))
    raises("handoff", handoff="middle")
    with pytest.raises(BridgeInputError, match="^denoise"):
        routes.denoise_sigmas(lambda n: schedules.get_sigmas("karras", n), 10, 0.0)


def test_coop_d0_is_model_a_alone_bit_for_bit_and_fused_lies_between(tbs, batch):
    tb1, tbh, v1, v2 = tbs
    cond, _, noise = batch
    ex = {"cond": cond}
    sig = schedules.get_sigmas("karras", 8)
    x = noise * sig[0]
    den1, denh = tb1.cfg_denoiser(CFG), tbh.cfg_denoiser(CFG)
    lat_a = coop_bench._euler_alone(den1, x, sig, ex)
    img_a = v1.decode_model(lat_a)
    img_b = v2.decode_model(coop_bench._euler_alone(denh, x, sig, ex))
    out = {}
    for d in (0.0, 0.5, 1.0):
        v1.reset_calls(), v2.reset_calls()
        ca, cb = kdiff.CountingDenoiser(den1), kdiff.CountingDenoiser(denh)
        out[d], _ = fusion.coop_sample_euler(ca, cb, x, x, sig, sig, v1, v2, "eps", "eps", d=d, extra_a=ex, extra_b=ex)
        if d > 0:
            assert ca.nfe == cb.nfe == 8 and vaes.vae_calls(v1, v2) == 4 * 8
        else:  # B cannot contribute: the chain does no work at all (what the ComfyUI guider runs)
            assert ca.nfe == 8 and cb.nfe == 0 and vaes.vae_calls(v1, v2) == 0
    assert torch.equal(out[0.0], lat_a)
    mse = lambda a, b: float((a - b).pow(2).mean())  # noqa: E731
    imgs = {d: v1.decode_model(z) for d, z in out.items()}
    ab = mse(img_a, img_b)
    # between: closer to each single-model result than the two are to each other, and moving
    # from A towards B as d grows
    assert mse(imgs[0.5], img_a) < ab and mse(imgs[0.5], img_b) < ab
    assert mse(imgs[0.0], img_a) < mse(imgs[0.5], img_a) < mse(imgs[1.0], img_a)
    assert mse(imgs[1.0], img_b) < mse(imgs[0.5], img_b) < mse(imgs[0.0], img_b)


def test_resolution_handoff_ours_is_closest_at_equal_nfe(tbs, batch):
    """The resolution hand-off on a small batch: 32 px -> 64 px on testbed-hr, decoded PSNR to the full
    64 px reference from coupled noise. All routes at the same split of one 12-step schedule
    (k low-res steps, 12 - k high-res steps: equal NFE and equal cost). The noisy bridge at the
    pack's resolution-aware level (the default) is closest for splits k = 3..6 (switch timesteps
    ~850 down to ~500, the paper's T_struct), and beats the paper's equal-SNR level there.
    Measured on this batch: at k = 7 (t ~345) ours leads by only 0.04 dB, and from k = 8 (t < 200)
    the step hand-off and latent upscale are 0.2-0.3 dB closer (every route then sits near the
    composition floor, see the README)."""
    _, tbh, _, v2 = tbs
    cond, noise_hr, noise_lr = batch
    ex = {"cond": cond}
    den = tbh.cfg_denoiser(CFG)
    n = 12
    fn = lambda k: schedules.get_sigmas("karras", k)  # noqa: E731
    sig = fn(n)
    ref = v2.decode_model(routes.route_reference(den, noise_hr, sig, ex).x)

    def score(r):
        return float(coop_bench.psnr_db(v2.decode_model(r.x), ref).mean())

    for k in (3, 4, 5, 6):
        m = n - k
        ours, paper = (
            routes.route_noisy_bridge(
                den,
                den,
                v2,
                v2,
                noise_lr,
                noise_hr,
                sig,
                SCHED,
                switch_timestep=None,
                switch_sigma=float(sig[k - 1]),
                extra=ex,
                renoise=lvl,
            )
            for lvl in ("resolution", "paper")
        )
        assert ours.settings["k"] == k and ours.nfe == n and ours.nfe_hr == m
        # hand-off levels (plan_handoff, as the node: not snapped to the table, the model takes any sigma):
        # 2 sigma_k (clamped to sigma_max) and sigma_k
        assert ours.settings["handoff_sigma"] == pytest.approx(
            min(2 * float(sig[k]), SCHED.sigma_max), rel=1e-3
        )  # settings round to 4 digits
        assert paper.settings["handoff_sigma"] == pytest.approx(float(sig[k]), rel=1e-3)
        others = {
            "paper_level": paper,
            "step_handoff": routes.route_step_handoff(den, den, noise_lr, sig, k, ex),
            "latent_upscale": routes.route_latent_upscale(den, den, noise_lr, noise_hr, fn, k, m, m / n, ex),
            "pixel_hires": routes.route_pixel_hires(den, den, v2, v2, noise_lr, noise_hr, fn, k, m, m / n, ex),
        }
        s_ours = score(ours)
        for name, r in others.items():
            assert r.nfe == n and r.nfe_hr == m, name
            assert s_ours > score(r), (k, name, s_ours, score(r))


def test_linear_vae_is_a_cheap_stand_in(tbs):
    tb1, _, v1, _ = tbs
    img, _ = tb1.dataset()
    lin = vaes.LinearVAE.fit(v1, img[:800])
    held, _ = tb1.dataset("heldout")
    z = v1.encode_model(held[:64])
    # the linear decoder of the real latents, and the linear encoder into the real decoder
    assert float(coop_bench.psnr_db(lin.decode_model(z), held[:64]).mean()) > 16.0
    assert float(coop_bench.psnr_db(v1.decode_model(lin.encode_model(held[:64])), held[:64]).mean()) > 16.0


def test_bench_coop_cli_writes_rows_and_the_noise_claim(tmp_path):
    """`comfyui-tempo bench coop --quick` (two cases): the JSON has the shared columns, and the
    noise after the noisy bridge is white at the level while a bilinear latent upscale is not."""
    import json

    from comfyui_tempo import cli

    out = tmp_path / "coop.json"
    assert (
        cli.main(["bench", "coop", "--quick", "--quiet", "--cases", "noise_white,time_decoupled", "--json", str(out)])
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    for key in ("case", "method", "nfe", "vae_calls", "psnr_db", "noise_std_ratio", "noise_lag1_corr", "wall_s"):
        assert all(key in r for r in rows), key
    noise = {r["method"]: r for r in rows if r["case"] == "noise_white" and r.get("model") == "testbed"}
    ours, up = noise["noisy_bridge (testbed)"], noise["latent_upscale_bilinear (testbed)"]
    assert ours["std_worst"] < 0.05 and abs(ours["noise_lag1_corr"]) < 0.03  # 3 images: loose bounds
    assert 0.5 < up["noise_std_ratio"] < 0.75 and 0.6 < up["noise_lag1_corr"] < 0.85
    same = [r for r in rows if r["case"] == "time_decoupled" and r["method"].startswith("same model")]
    assert same and same[0]["identical"] is True


def test_flow_switch_timestep_follows_the_shift():
    """A flow model's switch timestep maps to sigma as ComfyUI's ModelSamplingDiscreteFlow does:
    t = 500 is sigma 0.5 without shift and 0.75 with SD3's shift 3."""
    from comfyui_tempo.bridges.core import ModelSchedule
    from comfyui_tempo.bridges.decoupled import switch_to_sigma

    assert abs(switch_to_sigma(ModelSchedule.flow(), timestep=500) - 0.5) < 1e-9
    assert abs(switch_to_sigma(ModelSchedule.flow(shift=3.0), timestep=500) - 0.75) < 1e-9
