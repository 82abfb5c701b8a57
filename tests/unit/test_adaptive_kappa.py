"""`comfyui-tempo bench adaptive --kappa-fit` (bench/adaptive_kappa.py): the extrapolation-error scale of the noisy
samplers' candidate, measured on full runs and fitted per model."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from comfyui_tempo import cli
from comfyui_tempo.bench.adaptive_kappa import fit_power_law, run_kappa
from comfyui_tempo.samplers import schedules
from comfyui_tempo.samplers.skip_plan import median_log_step

torch.set_num_threads(1)


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_kappa_is_the_curvature_of_a_direction_quadratic_in_log_sigma(sampler):
    """d = a + b t + c t^2 (t = log sigma) whatever x is: linear extrapolation from the two steps before errs by exactly
    c (t_i-1 - t_i)(t_i-2 - t_i), so kappa is c's root mean square; a direction linear in t gives 0."""
    sig = schedules.get_sigmas("karras", 12)
    for c, want in ((0.0, 0.0), (0.3, 0.3), (-1.5, 1.5)):

        def denoiser(x, sigma, c=c, **extra):
            s = sigma.reshape(-1)[0]
            t = torch.log(s)
            return x - s * (0.2 + 0.7 * t + c * t * t)

        cell = SimpleNamespace(
            sampler=sampler, p=SimpleNamespace(denoiser=denoiser, noise=torch.randn(2, 3, 4, 4), cond=None)
        )
        assert run_kappa(cell, sig) == pytest.approx(want, abs=1e-4)


def test_fit_and_median_step():
    h = [0.1, 0.2, 0.4, 0.8]
    fit = fit_power_law(h, [0.05 * v**-1.4 for v in h])
    assert fit["scale"] == pytest.approx(0.05) and fit["power"] == pytest.approx(-1.4) and fit["rms_log"] < 1e-9
    sig = schedules.get_sigmas("exponential", 9)  # equal steps in log sigma, then 0
    assert median_log_step(sig) == pytest.approx((math.log(float(sig[0])) - math.log(float(sig[-2]))) / 8, rel=1e-5)


def test_kappa_fit_command_rows_fits_and_a_clear_error_for_flow(tmp_path):
    out = tmp_path / "kappa.json"
    rc = cli.main(
        ["bench", "adaptive", "--kappa-fit", "--grid-models", "testbed", "--grid-schedulers", "karras,normal",
         "--grid-steps", "8", "--grid-step-sweep", "12", "--classes", "1", "--seeds", "1", "--threads", "1",
         "--quiet", "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    d = json.loads(out.read_text())
    assert len(d["rows"]) == 2 * 2 * 2 and {r["sampler"] for r in d["rows"]} == {"euler", "dpmpp_2m"}
    assert all(r["kappa"] > 0 and math.isfinite(r["kappa"]) for r in d["rows"])
    assert [f["model"] for f in d["fits"]] == ["testbed", "pack (KAPPA_SCALE, KAPPA_POWER)"]
    assert d["fits"][0]["power"] < 0  # kappa grows as the steps shorten
    with pytest.raises(SystemExit, match="flow model"):
        cli.main(["bench", "adaptive", "--kappa-fit", "--grid-models", "flow", "--grid-schedulers", "karras",
                  "--grid-steps", "8", "--grid-step-sweep", "", "--classes", "1", "--seeds", "1", "--quiet"])  # fmt: skip
