"""DMD Regression Pairs: teacher ODE pairs (noise and the teacher's deterministic sample from it) for DMD's
regression loss and the GAN's real data, saved in output/dmd_pairs for the DMD Trainer (``nodes/dmd_train.py``)."""

from __future__ import annotations

import json

import comfy.utils
import torch
from comfy_api.latest import io, ui

from ..training import dmd as dmd_training
from ..training import run as training_run
from . import compat
from .comfy_model import collate_conds, dmd_schedule, encode_conditioning, latent_shape, teacher_denoiser
from .dmd_files import META_KEY, PAIRS_FOLDER, DMDNodeError, invalidate, output_path, safe_name
from .dmd_train import TRAIN_CATEGORY


class DMDRegressionPairs(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return compat.schema(
            node_id="TempoDMDRegressionPairs",
            display_name="DMD Regression Pairs",
            category=TRAIN_CATEGORY,
            description="Teacher ODE pairs for DMD's regression loss: noise z and the teacher's deterministic "
            "sample from it (Heun, with CFG), for each conditioning entry, saved as safetensors in "
            f"output/{PAIRS_FOLDER} for DMD Trainer.",
            inputs=[
                io.Model.Input("teacher", tooltip="The teacher model (eps, v-prediction or flow)."),
                io.Conditioning.Input(
                    "positive", tooltip="One pair set per entry (combine several with Conditioning (Combine))."
                ),
                io.Conditioning.Input("negative", tooltip="The unconditional / negative conditioning for CFG."),
                io.Int.Input(
                    "width", default=512, min=8, max=8192, step=8, tooltip="Image width in pixels (multiple of 8)."
                ),
                io.Int.Input(
                    "height", default=512, min=8, max=8192, step=8, tooltip="Image height in pixels (multiple of 8)."
                ),
                io.Int.Input(
                    "pairs_per_conditioning",
                    default=16,
                    min=1,
                    max=100000,
                    tooltip="Pairs made per conditioning entry.",
                ),
                io.Int.Input(
                    "steps",
                    default=25,
                    min=1,
                    max=1000,
                    tooltip="Heun steps of the teacher's ODE (2*steps-1 evaluations).",
                ),
                io.Float.Input(
                    "guidance",
                    default=1.75,
                    min=0.0,
                    max=100.0,
                    step=0.05,
                    tooltip="The teacher's CFG scale (use the trainer's guidance).",
                ),
                io.Int.Input(
                    "conditioning_timestep",
                    default=999,
                    min=0,
                    max=10000,
                    tooltip="The generator's conditioning timestep (the ODE starts there from the same noise).",
                ),
                io.Int.Input("batch_size", default=8, min=1, max=4096, tooltip="Pairs computed per teacher call."),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Seed of the noise.",
                ),
                io.String.Input(
                    "save_name", default="dmd/pairs", tooltip=f"File name under output/{PAIRS_FOLDER} (overwritten)."
                ),
            ],
            outputs=[
                io.String.Output(
                    display_name="regression_pairs",
                    tooltip="The saved file's name, for DMD Trainer's regression_pairs input.",
                )
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls,
        teacher,
        positive,
        negative,
        width,
        height,
        pairs_per_conditioning,
        steps,
        guidance,
        conditioning_timestep,
        batch_size,
        seed,
        save_name,
    ) -> io.NodeOutput:
        kind, table = dmd_schedule(teacher, "teacher")
        shape = latent_shape(teacher, width, height)
        name = safe_name(save_name)
        if not 0 <= conditioning_timestep < table.numel():
            raise DMDNodeError(
                f"conditioning_timestep: expected an integer in [0, {table.numel() - 1}], got {conditioning_timestep}"
            )
        base, teacher_d, device = teacher_denoiser(teacher)
        pos = encode_conditioning(base, positive, shape, device, "positive")
        neg = encode_conditioning(base, negative, shape, device, "negative", "negative")[0]
        schedule = dmd_training.NoiseSchedule(kind, table)
        g = torch.Generator().manual_seed(int(seed))
        n_total = len(pos) * pairs_per_conditioning
        z_all = torch.randn((n_total,) + shape, generator=g)
        ci_all = torch.arange(len(pos)).repeat_interleave(pairs_per_conditioning)
        targets = []
        pbar = comfy.utils.ProgressBar(n_total)
        with torch.no_grad():
            for i in range(0, n_total, batch_size):
                z = z_all[i : i + batch_size].to(device)
                ci = ci_all[i : i + batch_size]
                cond = collate_conds([pos[int(c)] for c in ci])
                unc = collate_conds([neg] * z.shape[0])
                y = dmd_training.teacher_ode_samples(
                    teacher_d, z, schedule, conditioning_timestep, steps, cond, unc, guidance
                )
                targets.append(y.float().cpu())
                pbar.update_absolute(min(i + batch_size, n_total), n_total)
        meta = {
            META_KEY: json.dumps(
                {
                    "kind": "regression_pairs",
                    "model_type": kind,
                    "conditioning_timestep": int(conditioning_timestep),
                    "steps": int(steps),
                    "guidance": float(guidance),
                    "conditionings": len(pos),
                    "latent_shape": list(shape),
                    "seed": int(seed),
                }
            )
        }
        path = output_path(PAIRS_FOLDER, name, ".safetensors")
        from safetensors.torch import save_file

        tensors = {
            "noise": z_all.contiguous(),
            "target": torch.cat(targets).contiguous(),
            "cond_index": ci_all.contiguous(),
        }
        training_run.atomic_save(lambda p: save_file(tensors, p, metadata=meta), path)
        invalidate(PAIRS_FOLDER)
        rel = name + ".safetensors"
        return io.NodeOutput(
            rel, ui=ui.PreviewText(f"{n_total} pairs ({len(pos)} conditionings, {steps} Heun steps) -> {rel}")
        )


NODES = [DMDRegressionPairs]
