"""The analysis tools behind `bench adaptive`: greedy search, the EasyCache port, the table."""

import math

import torch

from comfyui_tempo.bench import adaptive as adaptive_bench
from comfyui_tempo.bench.greedy import greedy_skip_path
from comfyui_tempo.bench.peers import EasyCacheNet
from comfyui_tempo.samplers import kdiff
from comfyui_tempo.samplers.adaptive import AdaptiveConfig, adaptive_sample
from comfyui_tempo.testbed import problems


def test_greedy_finds_the_best_single_skip_by_brute_force():
    p = problems.gmm_problem(classes=2, seeds=1).subset(slice(0, 1))
    steps = 12
    sig = p.sigmas(steps)
    full = kdiff.sample_euler(p.denoiser, p.noise * sig[0], sig, extra_args={"cond": p.cond})

    def run_paths(paths):
        n = paths.shape[0]
        out, _ = adaptive_sample(
            kdiff.sample_euler,
            p.denoiser,
            p.noise.repeat(n, 1, 1, 1) * sig[0],
            sig,
            AdaptiveConfig(mode="path", path=paths, extrapolation="hold"),
            extra_args={"cond": p.cond.repeat(n)},
        )
        return out

    def err(res):
        return ((res - full) ** 2).flatten(1).mean(1)

    g = greedy_skip_path(run_paths, steps, 1, err)
    brute = []
    for k in range(1, steps):
        path = torch.ones(1, steps, dtype=torch.bool)
        path[0, k] = False
        brute.append(float(err(run_paths(path))))
    assert g.path_string().count("s") == 1
    assert g.path_string().index("s") == 1 + min(range(len(brute)), key=brute.__getitem__)
    assert math.isclose(g.errors[0], min(brute), rel_tol=1e-9)
    g3 = greedy_skip_path(run_paths, steps, 3, err)
    assert g3.path_string().count("s") == 3 and g3.errors == sorted(g3.errors)


def test_easycache_port_skips_more_as_threshold_rises():
    def net(x, scale):
        return torch.tanh(x) * scale

    nfes = []
    for thr in (0.0, 0.2, 1.0):
        ec = EasyCacheNet(lambda x: net(x, 1.0), thr, start_sigma=100.0, end_sigma=0.0, halves=1, subsample_factor=1)
        x = torch.ones(1, 2, 8, 8)
        for i in range(20):
            out = ec(x * (1 + 0.01 * i), 10.0 - i * 0.4)
            if ec.skipped and out is not None:
                # a skipped call returns input + the cached (output - input)
                assert out.shape == x.shape
        nfes.append(ec.calls)
    assert nfes[0] == 20 and nfes[0] > nfes[1] >= nfes[2]


def test_bench_rows_on_an_exact_problem(tmp_path):
    p = problems.gmm_problem(classes=2, seeds=2)
    result = adaptive_bench.run(p, samplers=("euler",), steps=16, greedy_conds=1, log=lambda *a: None)
    methods = {r["method"] for r in result["rows"]}
    assert {
        "full",
        "adaptive",
        "adaptive_paper",
        "adaptive_paper_matched",
        "fewer_steps",
        "uniform_skip",
        "greedy_optimal",
    } <= methods
    for r in result["rows"]:
        assert {"method", "sampler", "steps", "nfe", "psnr_db", "wall_s"} <= set(r)
    by = {r["method"]: r for r in result["rows"]}
    assert by["full"]["nfe"] == 16
    assert by["adaptive"]["nfe"] < 16
    assert abs(by["fewer_steps"]["nfe"] - by["adaptive"]["nfe"]) <= 1
    g = by["greedy_optimal"]
    # the greedy path at the estimator's skip count is at least as close to the full run
    assert g["psnr_db"] >= g["estimator_psnr_db"] - 1e-6
    summary = adaptive_bench.summarize(result)
    assert len(summary) == len(methods)
