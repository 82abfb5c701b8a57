"""The benchmark's ComfyUI grid (`comfyui-tempo bench adaptive --comfyui-grid`): the testbeds built as ComfyUI
MODELs sample as the pack's own problems do, and the command writes the grid's rows for samplers that exist only in
ComfyUI. (Snippets run under the host's Python; like the other host snippets they need scikit-learn and scikit-image
there.)"""

import json
import os
import subprocess
from pathlib import Path

import pytest

#: the real TAESD files the latent testbeds decode with (as conftest's TAESD_DIR)
TAESD_DIR = Path(os.environ.get("TEMPO_TAESD_DIR") or "/work/shared/assets/taesd")


def have_taesd() -> bool:
    return all(
        (TAESD_DIR / f"{n}_{p}.safetensors").is_file()
        for n in ("taesd", "taesdxl", "taesd3", "taef1")
        for p in ("encoder", "decoder")
    )


PARITY = r"""
import torch
import comfy.model_sampling
import comfy.sample
import comfy.samplers
from comfyui_tempo.bench import adaptive_grid as ag
from comfyui_tempo.bench.common import psnr_db
from comfyui_tempo.harness import comfy_testbed as ct
from comfyui_tempo.samplers import kdiff, schedules

RESULT = {}
for grid_name in MODELS:
    name = {"testbed_hr": "hr"}.get(grid_name, grid_name)
    p = ag.build_problem(grid_name, "normal", 5.0, 3, 1)
    model = ct.build_model(name)
    sig = comfy.samplers.KSampler(model, 12, model.load_device, "euler", "normal", 1.0, model.model_options).sigmas
    mine = schedules.ksampler_sigmas("normal", 12, ag._sampling(p), "euler")
    pos = [[torch.nn.functional.one_hot(p.cond, ct.CONTEXT_DIM).float()[:, None, :], {}]]
    neg = [[ct.class_cond(ct.NULL_CLASS), {}]]
    with torch.inference_mode():
        sampler = comfy.samplers.sampler_object("euler")
        out = comfy.sample.sample_custom(model, p.noise, 5.0, sampler, sig, pos, neg, torch.zeros_like(p.noise), seed=0)
    ref = kdiff.sample_euler(p.denoiser, p.noise * mine[0], mine, extra_args={"cond": p.cond})
    ms = model.get_model_object("model_sampling")
    RESULT[grid_name] = {
        "const": isinstance(ms, comfy.model_sampling.CONST),
        "v": isinstance(ms, comfy.model_sampling.V_PREDICTION),
        "shift": float(getattr(ms, "shift", 0.0)),
        "sigma_max": float(ms.sigma_max),
        "sigma_diff": float((sig - mine).abs().max()),
        "psnr": float(psnr_db(p.decode(out.float()), p.decode(ref)).min()),
    }
"""


def test_the_thirteen_testbeds_sample_in_comfyui_as_the_packs_problems(comfy_snippet):
    """Each testbed as a ComfyUI MODEL (sd_latent / sdxl_latent / sd3_flow / flux_flow, in SD1.x's / SDXL's / SD3's /
    FLUX.1's latent space,
    where the real TAESD files are found) (its type's model sampling, a flow model's shift, the zero-terminal-SNR table
    where the testbed has it) gives ComfyUI's euler the
    pack's sigmas and, image for image, the pack's own euler run on the same noise (the discrete models differ by
    ComfyUI's rounding to the nearest timestep and its first-step noise scaling only)."""
    from comfyui_tempo.bench import adaptive_grid as ag

    latent = {"sd_latent", "sdxl_latent", "sd3_flow", "flux_flow"}  # in TAESD's spaces: only with the real TAESD files
    models = [m for m in ag.MODELS if m not in latent or have_taesd()]
    head = f"import os\nos.environ.setdefault('TEMPO_TAESD_DIR', {str(TAESD_DIR)!r})\nMODELS = {models!r}\n"
    res = comfy_snippet(head + PARITY, timeout=600)
    zsnr = {"vpred_zsnr", "shapes_zsnr"}
    nine = {"testbed", "testbed_hr", "flow", "vpred", "shapes_eps", "shapes_v", "digits_flow"} | zsnr
    assert set(res) == nine | (latent if have_taesd() else set())
    for name, r in res.items():
        flow = name in ("flow", "digits_flow", "sd3_flow", "flux_flow")
        assert r["const"] == flow and r["v"] == (name in {"vpred", "shapes_v"} | zsnr), (name, r)
        shifts = {"flow": 3.0, "digits_flow": 8.0, "sd3_flow": 3.0, "flux_flow": 3.158193}
        assert r["shift"] == pytest.approx(shifts.get(name, 0.0)), (name, r)
        assert (4000 < r["sigma_max"] < 5000) == (name in zsnr), (name, r)
        assert r["sigma_diff"] < 1e-5, (name, r)
        assert r["psnr"] > (90.0 if flow else 35.0), (name, r)


def _run_grid(comfy_install, comfy_base, tmp_path, flags: str):
    """The --comfyui-grid command under the host's Python with flags: (the finished process, its JSON)."""
    env = dict(
        os.environ,
        PYTHONPATH=str(comfy_base / "custom_nodes"),
        TEMPO_COMFYUI_PYTHON=str(comfy_install.python),
        OMP_NUM_THREADS="1",
    )
    out = tmp_path / "grid.json"
    cmd = [str(comfy_install.python), "-m", "comfyui_tempo.cli", "bench", "adaptive", "--comfyui-grid"]
    cmd += ["--comfyui", str(comfy_install.tree), *flags.split(), "--json", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_comfyui_grid_command_writes_the_grids_rows(comfy_install, comfy_base, tmp_path):
    """The command, run under the host's Python: two ComfyUI-only samplers on one model and scheduler; each cell
    has the grid's four methods, the default's NFE cut, a summary line with the three checks, and with
    --grid-respace the default's path skipped and re-spaced."""
    flags = "--grid-models shapes_v --grid-schedulers karras --comfyui-samplers deis,seeds_2 --grid-steps 12"
    flags += " --classes 2 --grid-respace --comfyui-respace-sweep chunks"
    proc, result = _run_grid(comfy_install, comfy_base, tmp_path, flags)
    rows = result["rows"]
    cells = {(r["sampler"], r["method"]): r for r in rows}
    assert len(rows) == 14 and all(r["host"] == "comfyui" and r["model"] == "shapes_v" for r in rows)
    for sampler, evals in (("deis", 1), ("seeds_2", 2)):
        full, ada = cells[(sampler, "full")], cells[(sampler, "adaptive")]
        assert full["nfe"] == 12 * evals - (evals - 1)  # seeds_2's last step to sigma 0 is one evaluation
        assert ada["nfe"] <= full["nfe"] / 1.95 + 1 and ada["path"].count("C") == 6
        assert cells[(sampler, "uniform_skip")]["path"] == "Cs" * 6
        assert cells[(sampler, "fewer_steps")]["setting"] == f"{ada['path'].count('C')} steps"
        for method in ("adaptive", "fewer_steps", "uniform_skip", "adaptive_respaced"):
            assert 0 < cells[(sampler, method)]["psnr_db"] < 200
        skip, respaced = cells[(sampler, "adaptive_skip")], cells[(sampler, "adaptive_respaced")]
        assert skip["psnr_db"] == ada["psnr_db"] and not skip["respaced"]  # neither sampler re-spaces under auto
        assert respaced["respaced"] and respaced["path"] == ada["path"] and respaced["psnr_db"] != ada["psnr_db"]
        assert respaced["nfe"] <= ada["nfe"]  # seeds_2: a re-spaced last step to sigma 0 is one evaluation
        chunks = cells[(sampler, "adaptive_respace_chunks")]  # the default with the "chunks" rule in place
        assert chunks["respaced"] and chunks["path"] == "Cs" * 6 and 0 < chunks["psnr_db"] < 200
    assert {s["sampler"]: s["ok"] in ("yes", "NO") for s in result["summary"]} == {"deis": True, "seeds_2": True}
    assert all(isinstance(s["respaced_vs_skip"], float) for s in result["summary"])
    # each image's PSNR inside ComfyUI too, and the margins' paired standard errors and verdicts from them
    assert all(len(cells[(sa, "adaptive")]["psnr_images_db"]) == 2 for sa in ("deis", "seeds_2"))
    for s in result["summary"]:
        assert s["vs_fewer_se"] >= 0 and s["vs_uniform_se"] >= 0
        assert s["margin_verdict"] in ("clear", "within noise", "clear miss")
    assert "standard errors of the paired per-image differences" in proc.stdout
    assert [(r["sampler"], r["chunks meets"] in (0, 1)) for r in result["respace_sweep"]] == [
        ("deis", True),
        ("seeds_2", True),
    ]
    assert result["meta"]["comfyui"] not in ("", "?")
    assert "cells meet the three checks" in proc.stdout


def test_comfyui_grid_x0_rows_turn_the_x0_reuse_off_and_place_it_by_each_rule(comfy_install, comfy_base, tmp_path):
    """--grid-noise-x0-off / --grid-noise-x0-rules inside ComfyUI: on the zero-terminal-SNR model a noisy ComfyUI sampler
    (er_sde) with the x0 reuse off gives another result than the default; placed by the default's own rule it gives
    the default's; each rule has its summary."""
    from comfyui_tempo.samplers.adaptive import NOISE_X0_RULE, NOISE_X0_RULES

    flags = "--grid-models vpred_zsnr --grid-schedulers karras --comfyui-samplers er_sde --grid-steps 12 --classes 2"
    flags += f" --grid-noise-x0-off --grid-noise-x0-rules {','.join(NOISE_X0_RULES)}"
    _, result = _run_grid(comfy_install, comfy_base, tmp_path, flags)
    m = {r["method"]: r["psnr_db"] for r in result["rows"]}
    assert m["adaptive_noise_x0_off"] != m["adaptive"]
    assert m[f"adaptive_noise_x0_rule_{NOISE_X0_RULE}"] == m["adaptive"]
    for rule in NOISE_X0_RULES:
        assert result[f"noise_x0_rule_{rule}_summary"]["cells"] == 1


def test_comfyui_grid_post_cfg_sweep_runs_the_cfgpp_samplers_forms(comfy_install, comfy_base, tmp_path):
    """--comfyui-post-cfg-sweep: each CFG++ sampler's default with each reuse form of the unguided prediction; the
    pack's form reproduces the default, the held guidance differs; a sampler that is not CFG++ gets no such rows."""
    flags = "--grid-models testbed --grid-schedulers karras --comfyui-samplers euler_cfg_pp,deis --grid-steps 12"
    flags += " --classes 2 --comfyui-post-cfg-sweep same_rule,held_guidance"
    proc, result = _run_grid(comfy_install, comfy_base, tmp_path, flags)
    cells = {(r["sampler"], r["method"]): r for r in result["rows"]}
    ada = cells[("euler_cfg_pp", "adaptive")]
    same, held = (
        cells[("euler_cfg_pp", "adaptive_postcfg_same_rule")],
        cells[("euler_cfg_pp", "adaptive_postcfg_held_guidance")],
    )
    assert same["psnr_db"] == ada["psnr_db"] and same["path"] == held["path"] == ada["path"]
    assert held["psnr_db"] != ada["psnr_db"] and 0 < held["psnr_db"] < 200
    assert not [m for s, m in cells if s == "deis" and m.startswith("adaptive_postcfg_")]
    assert [r["sampler"] for r in result["post_cfg_sweep"]] == ["euler_cfg_pp"]
    assert "CFG++ reuse form in place of the sampler's own" in proc.stdout
    # without a CFG++ sampler the sweep has nothing to run, and says so
    proc, result = _run_grid(comfy_install, comfy_base, tmp_path, flags.replace("euler_cfg_pp,", ""))
    assert result["post_cfg_sweep"] == [] and "no sampler in this run has that rule" in proc.stdout


def test_comfyui_grid_without_a_tree_says_what_it_needs(comfy_install, comfy_base, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(comfy_base / "custom_nodes"), TEMPO_COMFYUI="")
    cmd = [str(comfy_install.python), "-m", "comfyui_tempo.cli", "bench", "adaptive", "--comfyui-grid"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    assert "--comfyui-grid: needs a ComfyUI tree" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "bad",
    [
        "--grid-models nope",
        "--comfyui-samplers dpm_adaptive",
        "--comfyui-respace-sweep sometimes",
        "--comfyui-post-cfg-sweep sometimes",
    ],
)
def test_comfyui_grid_names_a_bad_name(comfy_install, comfy_base, tmp_path, bad):
    env = dict(os.environ, PYTHONPATH=str(comfy_base / "custom_nodes"))
    flag, value = bad.split()
    cmd = [str(comfy_install.python), "-m", "comfyui_tempo.cli", "bench", "adaptive", "--comfyui-grid"]
    cmd += ["--comfyui", str(comfy_install.tree), flag, value]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0 and f"{flag}: '{value}' unknown" in proc.stderr, proc.stderr[-2000:]


PECE = r"""
import torch
import comfy.sample
import comfy.samplers
from comfyui_tempo.bench.common import psnr_db
from comfyui_tempo.harness import comfy_testbed as ct
from comfyui_tempo.nodes import adaptive as adaptive_nodes
from comfyui_tempo.samplers.adaptive import AdaptiveConfig
from comfyui_tempo.testbed import problems

tb, model = ct.testbed("testbed"), ct.build_model("testbed")
noise, cond = problems._batch(4, 1, tb.latent_shape)
pos = [[torch.nn.functional.one_hot(cond, ct.CONTEXT_DIM).float()[:, None, :], {}]]
neg = [[ct.class_cond(ct.NULL_CLASS), {}]]
n = 16
sig = comfy.samplers.KSampler(model, n, model.load_device, "sa_solver_pece", "simple", 1.0, model.model_options).sigmas
path = torch.tensor([i % 2 == 0 for i in range(n)])

def run(config=None):
    sampler = comfy.samplers.sampler_object("sa_solver_pece")
    sink = []
    if config is not None:
        sampler = adaptive_nodes.wrap_sampler(sampler, "sa_solver_pece", config, sink)
    with torch.inference_mode():
        out = comfy.sample.sample_custom(model, noise, 5.0, sampler, sig, pos, neg, torch.zeros_like(noise), seed=0)
    return tb.decode(out.float()), sink

ref, _ = run()
RESULT = {}
for ex in ("hold", "linear", "log_linear"):
    img, sink = run(AdaptiveConfig(mode="path", path=path, extrapolation=ex))
    RESULT[ex] = float(psnr_db(img, ref).mean())
    RESULT[ex + "_evals"] = [r.evals for r in sink[-1].records]
"""


def test_sa_solver_pece_extrapolates_from_distinct_sigmas(comfy_snippet):
    """sa_solver_pece evaluates each step twice at its own sigma (the second time its corrected state). Both went
    into the reuse history, so a linear extrapolation had two nodes at one sigma, gave a zero direction and the
    noisy latent as x0: 20 dB below holding the direction (testbed, 20 simple steps, every other step). Now the
    second evaluation replaces the first, and extrapolating is not far below holding (above it on this testbed)."""
    res = comfy_snippet(PECE, timeout=600)
    assert res["hold_evals"] == [1] + [2] * 15, res["hold_evals"]  # its first step has no corrector
    for ex in ("linear", "log_linear"):
        assert res[ex] > res["hold"] - 3.0, res
