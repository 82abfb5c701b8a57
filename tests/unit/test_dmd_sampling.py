"""samplers/dmd.py: one-step and few-step DMD sampling for eps, v, ve and flow generators."""

import math

import pytest
import torch

from comfyui_tempo.samplers import dmd as dmd_sampling
from comfyui_tempo.samplers import schedules
from comfyui_tempo.testbed.toy import MLPDenoiser
from comfyui_tempo.training import dmd as dmd_training

torch.set_num_threads(1)


class Recorder:
    """Denoiser returning a constant x0; records every (x, sigma) it is called with."""

    def __init__(self, value=0.0):
        self.value = value
        self.calls = []

    def __call__(self, x, sigma, **extra):
        self.calls.append((x.clone(), sigma.clone(), extra))
        return torch.full_like(x, self.value)


def test_dmd2_timesteps_and_sigmas():
    assert dmd_sampling.dmd2_timesteps(4) == [999, 749, 499, 249]
    assert dmd_sampling.dmd2_timesteps(1) == [999]
    assert dmd_sampling.dmd2_timesteps(2) == [999, 499]
    table = schedules.discrete_sigmas()
    sig = dmd_sampling.timesteps_to_sigmas([999, 749, 499, 249], table)
    assert sig.shape == (5,) and float(sig[-1]) == 0
    assert torch.equal(sig[:4], table[[999, 749, 499, 249]])
    assert dmd_sampling.parse_timesteps("999, 749,499,249") == [999, 749, 499, 249]
    for bad in ("999,1000", "499,749", "", "a,b"):
        with pytest.raises(ValueError, match="^timesteps"):
            dmd_sampling.parse_timesteps(bad)
    with pytest.raises(ValueError, match="^timesteps"):
        dmd_sampling.timesteps_to_sigmas([1000], table)
    with pytest.raises(ValueError, match="^num_steps"):
        dmd_sampling.dmd2_timesteps(0)
    with pytest.raises(ValueError, match="^model_type"):
        dmd_sampling.input_scale(1.0, "edm")


@pytest.mark.parametrize("model_type", ["eps", "v", "ve", "flow"])
def test_one_step_matches_one_step_generator(model_type):
    torch.manual_seed(0)
    sched = dmd_training.NoiseSchedule(model_type)
    net = MLPDenoiser(6, 16, 2)
    z = torch.randn(5, 6)
    for tc in (999, 399):
        gen = dmd_training.OneStepGenerator(net, sched, tc)
        sig = dmd_sampling.timesteps_to_sigmas([tc], sched.sigmas)
        calls = []

        def model(x, s, **kw):
            calls.append(s)
            return net(x, s, **kw)

        with torch.no_grad():
            out = dmd_sampling.sample_dmd(model, z, sig, model_type)
            assert torch.equal(out, gen(z))
        assert len(calls) == 1 and torch.allclose(calls[0], torch.full((5,), gen.conditioning_sigma))
    # the input scaling of the conditioning timestep
    s = float(sched.sigma(399))
    rec = Recorder()
    dmd_sampling.sample_dmd(rec, z, dmd_sampling.timesteps_to_sigmas([399], sched.sigmas), model_type)
    expect = {"eps": math.sqrt(1 + s * s), "v": math.sqrt(1 + s * s), "ve": s, "flow": math.sqrt((1 - s) ** 2 + s * s)}
    assert torch.allclose(rec.calls[0][0], z * expect[model_type], rtol=1e-6)


@pytest.mark.parametrize("model_type", ["eps", "flow"])
def test_few_step_schedule_and_renoise_statistics(model_type):
    sched = dmd_training.NoiseSchedule(model_type)
    sig = dmd_sampling.timesteps_to_sigmas(dmd_sampling.dmd2_timesteps(4), sched.sigmas)
    n = 20000
    z = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    c = 0.7
    rec = Recorder(c)
    out = dmd_sampling.sample_dmd(
        rec, z, sig, model_type, generator=torch.Generator().manual_seed(1), extra_args={"cond": 3}
    )
    assert torch.equal(out, torch.full_like(z, c))
    assert len(rec.calls) == 4
    assert [float(cl[1][0]) for cl in rec.calls] == [float(s) for s in sig[:4]]
    assert all(cl[2] == {"cond": 3} for cl in rec.calls)
    noises = []
    for i, (x, s, _) in enumerate(rec.calls[1:], start=1):
        si = float(sig[i])
        mean = (1 - si) * c if model_type == "flow" else c
        # re-noised to the next timestep: mean and std of x0 re-noised with unit noise at sigma_i
        assert abs(float(x.mean()) - mean) < 4 * si / math.sqrt(x.numel())
        assert abs(float(x.std()) / si - 1) < 0.02
        noises.append(((x - mean) / si).reshape(-1))
    # fresh noise at each step: uncorrelated with the first step's noise and with each other
    z0 = z.reshape(-1)
    for a in noises:
        assert abs(float(torch.corrcoef(torch.stack([a, z0]))[0, 1])) < 0.02
    assert abs(float(torch.corrcoef(torch.stack(noises[:2]))[0, 1])) < 0.02


def test_kdiff_signature_matches_sample_dmd():
    torch.manual_seed(0)
    sched = dmd_training.NoiseSchedule("eps")
    net = MLPDenoiser(3, 16, 2)
    sig = dmd_sampling.timesteps_to_sigmas(dmd_sampling.dmd2_timesteps(4), sched.sigmas)
    z = torch.randn(4, 3)
    fresh = [torch.randn(4, 3) for _ in range(3)]

    def ns_factory():
        it = iter(fresh)
        return lambda a, b: next(it)

    with torch.no_grad():
        a = dmd_sampling.sample_dmd(net, z, sig, "eps", noise_sampler=ns_factory())
        x = dmd_sampling.noise_input(z, sig[0], "eps")
        seen = []
        b = dmd_sampling.sample_dmd_kdiff(
            net, x, sig, noise_sampler=ns_factory(), callback=lambda d: seen.append(d["i"])
        )
    assert torch.equal(a, b) and seen == [0, 1, 2, 3]


def test_generator_file_metadata(tmp_path):
    """One layout (the JSON object under tempo_dmd, written by training.run.write_generator), one reader."""
    import json

    from safetensors.torch import save_file

    from comfyui_tempo.training import run as dmd_run

    info = {
        "format": "full",
        "model_type": "ve",
        "conditioning_timestep": 999,
        "timesteps": [999, 749, 499, 249],
        "note": "x",
    }
    path = tmp_path / "gen.safetensors"
    meta = dmd_run.write_generator(path, {"w": torch.ones(2)}, info, title="gen")
    assert set(meta) == {dmd_sampling.METADATA_KEY, "modelspec.title", "modelspec.architecture"}
    assert json.loads(meta[dmd_sampling.METADATA_KEY])["kind"] == "generator"
    sd, m = dmd_sampling.read_generator(path)
    assert torch.equal(sd["w"], torch.ones(2)) and not (tmp_path / "gen.safetensors.tmp").exists()
    assert m["timesteps"] == [999, 749, 499, 249] and m["conditioning_timestep"] == 999
    assert m["model_type"] == "ve" and m["format"] == "full" and m["note"] == "x"
    assert dmd_sampling.read_generator(path, load_tensors=False) == (None, m)
    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    # a plain UNet / LoRA: no DMD settings
    assert dmd_sampling.read_generator(tmp_path / "plain.safetensors")[1] is None
    with pytest.raises(ValueError, match="^path: .*pickled"):
        dmd_sampling.read_generator(tmp_path / "gen.ckpt")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="^path: 'bad.safetensors' is not a readable safetensors"):
        dmd_sampling.read_generator(tmp_path / "bad.safetensors")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "list.safetensors"), metadata={dmd_sampling.METADATA_KEY: "[1, 2]"})
    with pytest.raises(ValueError, match="^path: 'list.safetensors' has unreadable DMD metadata .*list"):
        dmd_sampling.read_generator(tmp_path / "list.safetensors")
    with pytest.raises(ValueError, match="^path: .*differs"):
        dmd_sampling.parse_generator_metadata(
            {dmd_sampling.METADATA_KEY: json.dumps(dict(info, conditioning_timestep=399))}
        )
    with pytest.raises(ValueError, match="^info: "):  # the writer checks what it writes as a reader reads it
        dmd_run.write_generator(tmp_path / "x.safetensors", {"w": torch.ones(1)}, dict(info, format="diff"))
    with pytest.raises(ValueError, match="^info: .*lack"):
        dmd_run.write_generator(tmp_path / "x.safetensors", {"w": torch.ones(1)}, {"format": "full"})
    assert not (tmp_path / "x.safetensors").exists()


def test_files_of_earlier_versions_still_load(tmp_path):
    """Generator files written before the one layout load through the same reader: the flat dmd.* strings
    of the core's earlier writer (with or without dmd.format; LoRA told apart by its tensor names), the
    node's tempo_dmd JSON (without "kind"), and the shipped testbed generators (flat, no dmd.format)."""
    import json

    from safetensors.torch import save_file

    from comfyui_tempo.testbed import distill

    flat = {
        "dmd.model_type": "eps",
        "dmd.conditioning_timestep": "999",
        "dmd.timesteps": "999,749,499,249",
        "dmd.format": "lora",
        "dmd.lora_rank": "4",
        "dmd.generator_steps": "12",
        "dmd.ema": "0",
    }
    save_file({"diffusion_model.x.lora_up.weight": torch.zeros(1)}, str(tmp_path / "core.safetensors"), metadata=flat)
    _, m = dmd_sampling.read_generator(tmp_path / "core.safetensors")
    assert m["timesteps"] == [999, 749, 499, 249] and m["conditioning_timestep"] == 999
    assert m["format"] == "lora" and m["lora_rank"] == 4 and m["model_type"] == "eps" and m["generator_steps"] == 12
    noformat = {k: v for k, v in flat.items() if k != "dmd.format"}
    assert (
        dmd_sampling.parse_generator_metadata(noformat, keys=["diffusion_model.x.lora_up.weight"])["format"] == "lora"
    )
    assert dmd_sampling.parse_generator_metadata(noformat, keys=["input_blocks.0.weight"])["format"] == "full"
    with pytest.raises(ValueError, match="^path: unknown generator format 'diff'"):
        dmd_sampling.parse_generator_metadata(dict(flat, **{"dmd.format": "diff"}))
    node = {
        "tempo_dmd": json.dumps(
            {
                "format": "full",
                "model_type": "eps",
                "conditioning_timestep": 999,
                "timesteps": [999],
                "steps": 40,
                "guidance": 3.0,
            }
        )
    }
    save_file({"input_blocks.0.weight": torch.zeros(1)}, str(tmp_path / "node.safetensors"), metadata=node)
    _, m = dmd_sampling.read_generator(tmp_path / "node.safetensors")
    assert m["timesteps"] == [999] and m["steps"] == 40 and m["format"] == "full"
    assert dmd_sampling.parse_generator_metadata({"tempo_dmd": json.dumps({"conditioning_timestep": 399})})[
        "timesteps"
    ] == [399]
    for path in (distill.GENERATOR_FILE, distill.CONTROL_FILE):
        sd, m = dmd_sampling.read_generator(path)
        assert m["format"] == "full" and m["model_type"] == "eps" and m["conditioning_timestep"] == 999, path
        assert m["timesteps"] == [999] and m["record"]["settings"]["conditioning_timestep"] == 999
        assert all(k.startswith("net.") for k in sd)
