"""The bundled testbed as a ``comfyui-tempo train dmd --testbed`` job: the teacher, the trainer and the generator
file, with no ComfyUI (so the whole multi-process path runs on a CPU with the gloo backend).

The trainer is ``testbed.distill.make_trainer`` (the shipped generator's recipe: the frozen teacher with CFG as
the real score, full-weight copies of its UNet as the generator and the fake score, the 10 classes as the
conditioning list, the null class as the negative) with small settings; the generator file is the shipped
generator's layout (``testbed.distill.save_generator``: fp16 ``net.<UNet key>``, model type eps, base
"testbed"), which DMD Generator Loader loads onto the testbed's ComfyUI MODEL.
"""

from __future__ import annotations

import dataclasses

import torch

from ..training import gan
from . import distill, trained

#: small settings: a few seconds per 10 steps on one CPU thread (the shipped generator: testbed.distill.DEFAULTS)
SETTINGS = dict(
    batch=4,
    generator_lr=2e-4,
    fake_lr=2e-4,
    ratio=2,
    guidance=5.0,
    warmup=5,
    conditioning_timestep=999,
    seed=0,
    ema=0.0,
    regression_weight=0.0,
)


def build(
    settings: dict | None = None,
    device: str | torch.device = "cpu",
    mixed_precision: str | None = None,
    gradient_checkpointing: bool | None = None,
):
    """(trainer, save options for ``DMDRun.save_generator``) for the testbed with ``settings`` over ``SETTINGS``.
    Every process builds the same networks (fixed seeds). ``mixed_precision`` "bf16" (autocast on CUDA) and
    ``gradient_checkpointing`` as the DMDConfig options."""
    s = {**SETTINGS, **(settings or {})}
    tb = trained.load(device)
    trainer = distill.make_trainer(tb, s)
    trainer.teacher_module = tb.net  # the real score is the testbed's denoiser method around it
    changes = {}
    if mixed_precision is not None:
        changes["mixed_precision"] = mixed_precision
    if gradient_checkpointing:
        changes["gradient_checkpointing"] = True
        gan.enable_gradient_checkpointing(trainer.generator.net)
        gan.enable_gradient_checkpointing(trainer.fake_score)
    if changes:
        trainer.config = dataclasses.replace(trainer.config, **changes)
        trainer.config.validate()
    ct = int(s["conditioning_timestep"])
    save = dict(
        dtype=torch.float16,  # the denoiser's state dict is "net.<UNet key>": the shipped file's layout
        info={"format": "full", "base": "testbed", "conditioning_timestep": ct, "timesteps": [ct]},
    )
    return trainer, save
