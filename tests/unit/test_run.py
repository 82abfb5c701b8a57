"""training/run.py: the resumable DMD run the DMD Trainer node uses (checkpoint, history, resume checks,
interrupt-safe save, the generator file), on small exact-teacher trainers. One thread, fixed seeds."""

import os

import pytest
import torch

from comfyui_tempo.samplers import dmd as dmd_sampling
from comfyui_tempo.testbed.exact import ring_mixture
from comfyui_tempo.testbed.toy import MLPDenoiser
from comfyui_tempo.training import dmd as dmd_training
from comfyui_tempo.training import run as dmd_run

torch.set_num_threads(1)


def _trainer(teacher, conditioning=None, **kw):
    opts = dict(
        model_type="ve",
        real_guidance_scale=1.0,
        dfake_gen_update_ratio=3,
        batch_size=16,
        generator_lr=1e-3,
        fake_lr=1e-3,
        warmup_steps=2,
        sigma_data=1.0,
        seed=3,
    )
    cfg = dmd_training.DMDConfig(**{**opts, **kw})
    return dmd_training.DMDTrainer(
        ring_mixture(),
        dmd_training.copy_teacher(teacher),
        dmd_training.copy_teacher(teacher),
        (2,),
        cfg,
        conditioning=conditioning,
    )


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.generator.parameters(), b.generator.parameters())) and all(
        torch.equal(x, y) for x, y in zip(a.fake_score.parameters(), b.fake_score.parameters())
    )


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return MLPDenoiser(2, 16, 1)


@pytest.fixture(scope="module")
def reference(teacher):
    tr = _trainer(teacher)
    tr.train(12)
    return tr


def test_a_cancelled_run_resumes_to_the_same_weights(tmp_path, teacher, reference):
    path = tmp_path / "ckpt" / "run.pt"
    run = dmd_run.DMDRun(_trainer(teacher), path, checkpoint_interval=4)
    steps, texts = [], []

    def cancel_at_7(step, total):
        steps.append((step, total))
        if step == 7:
            raise KeyboardInterrupt  # what ComfyUI's cancel check does: raise from the progress callback

    with pytest.raises(KeyboardInterrupt):
        run.train(12, on_step=cancel_at_7, on_status=texts.append)
    assert steps[-1] == (7, 12) and texts and texts[0].startswith("DMD step 1/12")
    state = torch.load(path, weights_only=True)
    assert state["step"] == 7 and sorted(state["history"]) == ["loss_dm", "loss_fake"]
    assert state["run"] == {"latent_shape": [2], "conditionings": 1}
    assert set(dmd_run.CHECKPOINT_KEYS) <= set(state) and not os.path.exists(str(path) + ".tmp")
    again = dmd_run.DMDRun(_trainer(teacher), path, checkpoint_interval=4)
    assert again.resume() and again.resumed_from == 7 and len(again.history["loss_fake"]) == 7
    again.train(12)
    assert _same(again.trainer, reference) and len(again.history["loss_fake"]) == 12
    assert torch.load(path, weights_only=True)["step"] == 12
    assert not dmd_run.DMDRun(_trainer(teacher), tmp_path / "none.pt").resume()  # no checkpoint: starts over


@pytest.mark.parametrize("where", ["fake_loss", "generate"])
def test_a_crash_inside_a_step_keeps_a_consistent_checkpoint(tmp_path, teacher, reference, monkeypatch, where):
    """After the step's generator update (fake_loss runs after it at step 6, a generator turn) the last
    checkpoint is kept; before any update (generate) the step's state is saved with its random draws undone.
    Either way the resumed run ends with the weights of a run that never stopped."""
    path = tmp_path / "run.pt"
    run = dmd_run.DMDRun(_trainer(teacher), path, checkpoint_interval=4)
    original = getattr(dmd_training.DMDTrainer, where)

    def crash(self, *a, **kw):
        if self.step_count == 6:
            raise RuntimeError("simulated out of memory")
        return original(self, *a, **kw)

    monkeypatch.setattr(dmd_training.DMDTrainer, where, crash)
    with pytest.raises(RuntimeError, match="simulated"):
        run.train(12)
    monkeypatch.setattr(dmd_training.DMDTrainer, where, original)
    assert torch.load(path, weights_only=True)["step"] == (4 if where == "fake_loss" else 6)
    again = dmd_run.DMDRun(_trainer(teacher), path, checkpoint_interval=4)
    assert again.resume()
    again.train(12)
    assert _same(again.trainer, reference)


def test_checkpoint_write_is_atomic(tmp_path, teacher, monkeypatch):
    """A run stopped while writing its checkpoint keeps the previous one (no half-written file)."""
    path = tmp_path / "run.pt"
    run = dmd_run.DMDRun(_trainer(teacher), path, checkpoint_interval=100)
    run.train(3)
    real_save = torch.save

    def dies_while_writing(obj, f, *a, **kw):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_while_writing)
    with pytest.raises(KeyboardInterrupt):
        run.save_checkpoint()
    monkeypatch.setattr(torch, "save", real_save)
    assert dmd_run.read_checkpoint(path)["step"] == 3


def test_resume_checks_name_the_input_and_keep_the_file(tmp_path, teacher):
    path = tmp_path / "run.pt"
    dmd_run.DMDRun(_trainer(teacher), path).train(2)
    before = path.read_bytes()
    names = {"latent_shape": "width/height", "conditioning": "positive"}

    def resume(trainer, p=path):
        return dmd_run.DMDRun(trainer, p, shown="output/x/run.pt", names=names, advice="turn resume off").resume()

    with pytest.raises(
        dmd_run.RunError,
        match=r"^positive: the checkpoint output/x/run.pt was made with 1 conditionings, "
        r"this run has 2; turn resume off",
    ):
        resume(_trainer(teacher, conditioning=[None, None]))
    with pytest.raises(dmd_run.RunError, match=r"^resume: the checkpoint output/x/run.pt was made with other settings"):
        resume(_trainer(teacher, dfake_gen_update_ratio=5))
    state = torch.load(path, weights_only=True)
    state["run"]["latent_shape"] = [3]
    other = tmp_path / "other.pt"
    torch.save(state, other)
    with pytest.raises(dmd_run.RunError, match=r"^width/height: .* latents \(3,\), this run's are \(2,\)"):
        resume(_trainer(teacher), other)
    for name, data in {"empty": b"", "truncated": before[: len(before) // 2], "random": os.urandom(512)}.items():
        bad = tmp_path / f"{name}.pt"
        bad.write_bytes(data)
        with pytest.raises(
            dmd_run.RunError, match=r"^resume: the checkpoint output/x/run.pt \(\d+ bytes\) is not a readable"
        ):
            resume(_trainer(teacher), bad)
        assert bad.read_bytes() == data
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(dmd_run.RunError, match=r"^resume: .* is not a DMD Trainer checkpoint \(a dict without config"):
        resume(_trainer(teacher), tmp_path / "foreign.pt")
    assert path.read_bytes() == before


def test_generator_file_of_a_run(tmp_path, teacher):
    """The run's generator file: full weights in the dtype asked for, or LoRA factors in ComfyUI's kohya layout,
    with the trainer's settings in the one metadata layout."""
    from comfyui_tempo.training import lora

    run = dmd_run.DMDRun(_trainer(teacher, denoising_timesteps=(999, 749, 499, 249)), tmp_path / "run.pt")
    run.train(3)
    sd, info = run.save_generator(
        tmp_path / "g.safetensors", prefix="diffusion_model.", dtype=torch.float16, info={"base": "mlp"}, title="g"
    )
    back, m = dmd_sampling.read_generator(tmp_path / "g.safetensors")
    assert set(back) == set(sd) and all(k.startswith("diffusion_model.") for k in sd)
    assert all(v.dtype == torch.float16 for v in back.values() if v.is_floating_point())
    assert m == {**info, "kind": "generator"} and m["timesteps"] == [999, 749, 499, 249] and m["steps"] == 3
    assert m["format"] == "full" and m["model_type"] == "ve" and m["base"] == "mlp" and m["generator_steps"] == 1
    lora_gen = lora.lora_copy(teacher, 2)
    lora_fake = lora.lora_copy(teacher, 2)
    cfg = dmd_training.DMDConfig(model_type="ve", real_guidance_scale=1.0, batch_size=8, sigma_data=1.0, lora_rank=2)
    tr = dmd_training.DMDTrainer(ring_mixture(), lora_gen, lora_fake, (2,), cfg)
    sd, info = dmd_run.DMDRun(tr, tmp_path / "lora.pt").save_generator(
        tmp_path / "l.safetensors", prefix="diffusion_model."
    )
    _, m = dmd_sampling.read_generator(tmp_path / "l.safetensors")
    assert m["format"] == "lora" and m["lora_rank"] == 2 and dmd_sampling.is_lora_keys(sd)
