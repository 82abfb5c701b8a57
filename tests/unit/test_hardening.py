"""QA hardening, the comfy-free parts: the loss-curve smoothing, the NaN/inf note of the nodes' reports, and the
DMD Trainer's checkpoint size (the README's formula, measured)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from comfyui_tempo.samplers.finite import nonfinite_note, with_nonfinite_note
from comfyui_tempo.samplers.plot import moving_average
from comfyui_tempo.testbed.exact import ring_mixture
from comfyui_tempo.testbed.toy import MLPDenoiser
from comfyui_tempo.training import dmd as dmd_training


# ---------------------------------------------------------------------------- smoothing (plot_losses)
@pytest.mark.parametrize("n, window", [(21, 1), (21, 2), (100, 5), (1000, 50), (7, 20)])
def test_moving_average_keeps_a_constant_series_constant_at_both_ends(n, window):
    out = moving_average(np.full(n, 3.25), window)
    assert out.shape == (n,)
    np.testing.assert_allclose(out, 3.25, rtol=0, atol=1e-12)  # zero padding gave 3.25 * (w/2 + 1) / w at the ends


def test_moving_average_is_the_mean_of_the_points_that_exist():
    v = np.arange(10, dtype=float)
    out = moving_average(v, 3)
    np.testing.assert_allclose(out[1:-1], v[1:-1])  # a line stays a line inside
    assert out[0] == pytest.approx(0.5) and out[-1] == pytest.approx(8.5)  # ends: the two points there
    np.testing.assert_allclose(moving_average(v, 1), v)
    assert moving_average([], 5).shape == (0,)


def test_moving_average_leaves_non_finite_points_out():
    v = np.array([1.0, 1.0, np.nan, 1.0, np.inf, 1.0, 1.0])
    out = moving_average(v, 3)
    np.testing.assert_allclose(out, 1.0)
    assert np.isnan(moving_average([np.nan, np.nan], 2)).all()


# ---------------------------------------------------------------------------- NaN / inf note
def test_nonfinite_note_counts_nan_and_inf():
    x = torch.zeros(2, 4, 8, 8)
    assert nonfinite_note(x) == "" and with_nonfinite_note("report", x) == "report"
    x[0, 0, 0, :3] = float("nan")
    x[1, 2, 3, 4] = float("-inf")
    assert nonfinite_note(x) == "warning: the output holds NaN/inf (4 of 512 values)"
    assert (
        with_nonfinite_note("Latent Bridge: 32x32", x)
        == "Latent Bridge: 32x32; warning: the output holds NaN/inf (4 of 512 values)"
    )
    assert (
        nonfinite_note(torch.full((3,), float("nan")), "the latent")
        == "warning: the latent holds NaN/inf (3 of 3 values)"
    )
    assert nonfinite_note(torch.zeros(3, dtype=torch.long)) == "" and nonfinite_note(None) == ""


# ---------------------------------------------------------------------------- checkpoint size
def _trainer(teacher, **kw):
    cfg = dmd_training.DMDConfig(
        model_type="ve",
        real_guidance_scale=1.0,
        dfake_gen_update_ratio=1,
        batch_size=8,
        generator_lr=1e-3,
        fake_lr=1e-3,
        warmup_steps=0,
        sigma_data=1.0,
        seed=3,
        **kw,
    )
    if cfg.lora_rank:
        return dmd_training.DMDTrainer.from_teacher(teacher, (2,), cfg, real_score=ring_mixture())
    return dmd_training.DMDTrainer(
        ring_mixture(), dmd_training.copy_teacher(teacher), dmd_training.copy_teacher(teacher), (2,), cfg
    )


def _checkpoint_bytes(tr) -> int:
    buf = io.BytesIO()
    torch.save(tr.state_dict(), buf)
    return len(buf.getvalue())


def test_checkpoint_holds_about_six_fp32_copies_of_the_trainable_weights():
    """Full weights: generator + fake score + AdamW's two moments of each = 6 fp32 copies (README, DMD Trainer)."""
    torch.manual_seed(0)
    teacher = MLPDenoiser(2, 256, 4)  # 0.2 M parameters: the file's per-tensor overhead is small against them
    n_params = sum(p.numel() for p in teacher.parameters())
    tr = _trainer(teacher)
    tr.train(1)  # both optimizers have stepped once: their moments exist
    st = tr.state_dict()
    assert len(st["opt_g"]["state"]) == len(st["opt_f"]["state"]) == len(list(teacher.parameters()))
    ratio = _checkpoint_bytes(tr) / (4 * n_params)
    assert 5.95 < ratio < 6.2, ratio  # measured 6.04
    # the README's examples: 25.6 M parameters -> ~614 MB (+ overhead: 642 MB measured by QA); SD1.5's 860 M -> ~20 GB
    assert 6 * 4 * 25.6e6 / 1e6 == pytest.approx(614.4)
    assert 6 * 4 * 860e6 / 1e9 == pytest.approx(20.6, abs=0.05)


def test_lora_checkpoint_is_far_smaller():
    torch.manual_seed(0)
    teacher = MLPDenoiser(2, 256, 4)
    n_params = sum(p.numel() for p in teacher.parameters())
    tr = _trainer(teacher, lora_rank=4)
    tr.train(1)
    ratio = _checkpoint_bytes(tr) / (4 * n_params)
    assert ratio < 0.5, ratio  # LoRA factors and their moments only (0.28 measured at rank 4 of 256)
