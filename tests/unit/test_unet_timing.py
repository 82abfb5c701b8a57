"""`bench adaptive --unet-timing` (the GPU measurement of issue 12) on its CPU smoke-test network: the rows it
writes, the default's 2x fewer evaluations, and the clear errors for bad inputs and for SD-size UNets without a GPU."""

from __future__ import annotations

import json

import pytest
import torch

from comfyui_tempo import cli

torch.set_num_threads(1)


def test_tiny_unet_timing_rows(tmp_path):
    out = tmp_path / "t.json"
    argv = ["bench", "adaptive", "--unet-timing", "--unets", "tiny", "--batches", "1,2", "--steps", "6", "--quiet"]
    assert cli.main(argv + ["--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert [(r["batch"], r["sampler"]) for r in d["rows"]] == [
        (1, "euler"),
        (1, "dpmpp_2m"),
        (2, "euler"),
        (2, "dpmpp_2m"),
    ]
    for r in d["rows"]:
        assert r["nfe_full"] == 6 and r["nfe_adaptive"] == 3
        assert r["unet_ms"] > 0 and r["full_s"] > 0 and r["adaptive_s"] > 0
        assert r["speedup"] == pytest.approx(r["full_s"] / r["adaptive_s"])
        assert r["ctl_pct_of_unet"] == pytest.approx(100 * r["ctl_ms_per_step"] / r["unet_ms"])


@pytest.mark.parametrize(
    "extra, message",
    [(["--unets", "sd3"], "--unets: expected names from"), (["--unets", "tiny", "--batches", "0"], "--batches")],
)
def test_bad_inputs_are_clear_errors(extra, message):
    with pytest.raises(SystemExit, match=message):
        cli.main(["bench", "adaptive", "--unet-timing", *extra])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the SD-size UNets would run")
def test_sd_size_unets_need_a_gpu():
    with pytest.raises(SystemExit, match="need a CUDA GPU"):
        cli.main(["bench", "adaptive", "--unet-timing", "--unets", "sd15"])
