"""DMD job folders on the ComfyUI side (``training/job.py`` is the format): ``export_job`` writes what the DMD
Trainer node would train (its settings checked as the node checks them, the conditionings encoded by the teacher's
own ``extra_conds``, the regression pairs, a reference to the teacher's checkpoint file), and ``job_trainer``
builds, from a job and the teacher's MODEL, the trainer the node builds (the same ``DMDTrainer`` over the same
``ComfyDenoiser`` copies), for ``comfyui-tempo train dmd --job`` on a cluster (``harness/dmd_job.py``).
"""

from __future__ import annotations

import comfy.conds
import torch

from ..training import job as training_job
from .comfy_model import dmd_schedule, teacher_denoiser
from .dmd_files import DMDNodeError


def conds_to_job(item: dict, what: str) -> dict:
    """An encoded conditioning entry (``encode_conditioning``: key -> ComfyUI cond object) as a job entry."""
    out = {}
    for key, c in item.items():
        kind = type(c).__name__
        if getattr(comfy.conds, kind, None) is not type(c):
            raise DMDNodeError(f"{what}: its {key!r} is a {kind}, which a job cannot carry")
        if isinstance(c.cond, torch.Tensor):
            out[key] = {"kind": kind, "tensor": c.cond}
        elif isinstance(c.cond, (int, float, str, bool)) or c.cond is None:
            out[key] = {"kind": kind, "value": c.cond}
        else:
            raise DMDNodeError(
                f"{what}: its {key!r} ({kind}) holds a {type(c.cond).__name__}, which a job cannot carry"
            )
    return out


def job_to_conds(entry: dict, device) -> dict:
    """A job entry back as ComfyUI cond objects on ``device``."""
    out = {}
    for key, e in entry.items():
        cls = getattr(comfy.conds, e["kind"], None)
        if not (isinstance(cls, type) and issubclass(cls, comfy.conds.CONDRegular)):
            raise DMDNodeError(f"job: conditioning {key!r} is of kind {e['kind']!r}, which this ComfyUI does not have")
        out[key] = cls(e["tensor"].to(device) if "tensor" in e else e["value"])
    return out


def export_job(
    folder,
    teacher_file,
    teacher,
    positive,
    negative,
    width,
    height,
    batch_size,
    steps,
    generator_lr,
    fake_lr,
    guidance,
    update_ratio,
    conditioning_timestep,
    generator_steps,
    warmup_steps,
    regression_weight,
    regression_pairs,
    gan_weight,
    lora_rank,
    seed,
    save_name,
    checkpoint_interval,
    gradient_checkpointing=False,
):
    """Write the job of a DMD Trainer run with these inputs (the node's; ``teacher_file``: the checkpoint the
    teacher MODEL was loaded from) into ``folder``. Returns the folder."""
    from .dmd_train import setup_run

    s = setup_run(
        teacher,
        positive,
        negative,
        width,
        height,
        batch_size,
        generator_lr,
        fake_lr,
        guidance,
        update_ratio,
        conditioning_timestep,
        generator_steps,
        warmup_steps,
        regression_weight,
        regression_pairs,
        gan_weight,
        lora_rank,
        seed,
        gradient_checkpointing,
    )
    return training_job.write_job(
        folder,
        teacher_file=teacher_file,
        config=s.config,
        latent_shape=s.shape,
        steps=int(steps),
        positive=[conds_to_job(p, "positive") for p in s.pos],
        negative=conds_to_job(s.neg, "negative"),
        checkpoint_interval=int(checkpoint_interval),
        lora_rank=int(lora_rank),
        name=str(save_name),
        pairs=s.pairs,
        extra={"model_type": s.kind, "width": int(width), "height": int(height)},
    )


def load_teacher(path):
    """The teacher MODEL of a checkpoint file, through ComfyUI's own loader (a full checkpoint, else a diffusion
    model alone)."""
    import comfy.sd

    try:
        out = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=False)
        model = out[0]
    except Exception:
        model = None
    if model is None:
        try:
            model = comfy.sd.load_diffusion_model(str(path))
        except Exception as e:
            raise DMDNodeError(
                f"teacher: ComfyUI cannot load {path} as a checkpoint ({type(e).__name__}: {e})"
            ) from None
    return model


def job_trainer(job: dict, teacher):
    """(the DMDTrainer the DMD Trainer node builds for this job, the ``save_generator`` options of the node's
    generator file) on the teacher MODEL (``load_teacher``)."""
    from .dmd_train import DMDSetup, build_trainer, generator_file_options

    config = job["config"]
    kind, table = dmd_schedule(teacher, "teacher")
    if kind != config.model_type:
        raise DMDNodeError(f"teacher: the job was made for a {config.model_type} model, this teacher is {kind}")
    base, teacher_d, device = teacher_denoiser(teacher)
    pos = [job_to_conds(p, device) for p in job["positive"]]
    neg = job_to_conds(job["negative"], device) if job["negative"] is not None else None
    setup = DMDSetup(kind, table, tuple(job["latent_shape"]), config, base, teacher_d, device, pos, neg, job["pairs"])
    trainer, _ = build_trainer(setup)
    return trainer, dict(submodule="net", **generator_file_options(base, config.lora_rank))
