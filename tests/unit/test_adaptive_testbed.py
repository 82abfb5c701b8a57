"""The main claim on the trained testbed: at the default settings (2x fewer network
evaluations) the pack's AdaptiveDiffusion is closer to the full run than fewer steps, uniform
every-other-step skipping and the paper's rule (10 classes, 50 steps, CFG 5)."""

import pytest
import torch

from comfyui_tempo.bench import adaptive as bench
from comfyui_tempo.bench.common import psnr_db
from comfyui_tempo.samplers.adaptive import AdaptiveConfig
from comfyui_tempo.testbed import problems


@pytest.fixture(scope="module")
def problem():
    return problems.trained_problem(classes=10, seeds=1)


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_default_beats_the_alternatives_at_matched_nfe(problem, sampler):
    full, _, _, full_nfe = bench._sample(problem, sampler, 50)
    ref = problem.decode(full)

    def psnr(out):
        return float(psnr_db(problem.decode(out), ref).mean())

    out, rep, _, nfe = bench._sample(problem, sampler, 50, AdaptiveConfig())
    assert full_nfe / nfe >= 2.0
    ours = psnr(out)
    fewer, _, _, fewer_nfe = bench._sample(problem, sampler, int(nfe))
    assert fewer_nfe == nfe
    path = torch.zeros(50, dtype=torch.bool)
    path[::2] = True
    uniform, _, _, uniform_nfe = bench._sample(
        problem, sampler, 50, AdaptiveConfig(mode="path", path=path, extrapolation="hold")
    )
    assert uniform_nfe == nfe
    paper, _, _, paper_nfe = bench._sample(problem, sampler, 50, AdaptiveConfig.paper(0.01, 4))
    assert ours > psnr(fewer) + 0.5
    assert ours > psnr(uniform) + 3.0
    assert ours > psnr(paper) + 5.0 and paper_nfe >= nfe - 2
