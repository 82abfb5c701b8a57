"""The DMD Job Export node: writes the job folder of a DMD Trainer run (``nodes/dmd_job.py`` ``export_job``, the
format ``training/job.py``) for ``comfyui-tempo train dmd --job`` under torchrun on a cluster that has no text
encoders (docs/dmd-distributed.md). Its inputs are the DMD Trainer node's (the same schema entries, taken from
``DMDTrainerNode.define_schema``) plus the teacher's checkpoint file and the job's name.
"""

from __future__ import annotations

import copy
import os
import shlex

import folder_paths
import torch
from comfy_api.latest import io, ui

from . import compat, files
from .dmd_files import DMDNodeError, checked
from .dmd_job import export_job
from .dmd_train import TRAIN_CATEGORY, DMDTrainerNode

JOB_FOLDER = "tempo_jobs"  # under ComfyUI's output directory
# the DMD Trainer node's inputs a job does not take: resuming and the sample images happen on the cluster
NOT_IN_JOB = {"resume", "vae"}
TOOLTIPS = {  # the trainer's inputs whose meaning changes in a job
    "teacher": "The teacher (eps, v-prediction or flow), as loaded from teacher_checkpoint: the cluster loads that "
    "file alone, so a MODEL with LoRAs or other weight patches is refused.",
    "save_name": "The generator's name, written into its file's metadata (its title). The cluster writes the "
    "generator to its --out folder (generator.safetensors); copy it into models/dmd_generators to load it.",
    "checkpoint_interval": "The cluster run's checkpoint interval in steps (train dmd --checkpoint-every overrides it).",
    "batch_size": "The global batch per step, split over the torchrun processes (a multiple of their number; "
    "train dmd --batch overrides it).",
}


def teacher_files() -> list[str]:
    """The teacher_checkpoint list: models/checkpoints files, then models/diffusion_models ones (prefixed)."""
    names = list(folder_paths.get_filename_list("checkpoints"))
    try:
        names += [f"diffusion_models/{n}" for n in folder_paths.get_filename_list("diffusion_models")]
    except Exception:  # a folder type this ComfyUI does not have
        pass
    return names


def trainer_inputs() -> list:
    """The DMD Trainer node's inputs a job takes, in its order (copies, with the tooltips a job needs)."""
    out = []
    for inp in DMDTrainerNode.define_schema().inputs:
        if inp.id in NOT_IN_JOB:
            continue
        if inp.id in TOOLTIPS:
            inp = copy.copy(inp)
            inp.tooltip = TOOLTIPS[inp.id]
        out.append(inp)
    return out


def teacher_path(name) -> str:
    """teacher_checkpoint -> its file in models/checkpoints or models/diffusion_models."""
    name = checked(files.check_listed_name, name, "teacher_checkpoint")
    folder = "checkpoints"
    if name.startswith("diffusion_models/"):
        folder, name = "diffusion_models", name[len("diffusion_models/") :]
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise DMDNodeError(f"teacher_checkpoint: no file {name!r} in models/{folder}")
    try:
        roots = list(folder_paths.get_folder_paths(folder))
    except Exception:
        roots = []
    return checked(files.inside, path, roots, "teacher_checkpoint")


def job_folder(job_name) -> str:
    """job_name -> output/tempo_jobs/<job_name>, a name that stays there on every OS; an existing folder must be
    a job (it is then overwritten)."""
    name = checked(files.safe_save_name, job_name, "job_name", "")
    root = os.path.join(folder_paths.get_output_directory(), JOB_FOLDER)
    path = checked(files.inside, os.path.join(root, *name.split("/")), [root], "job_name")
    if os.path.exists(path) and not os.path.isdir(path):
        raise DMDNodeError(f"job_name: output/{JOB_FOLDER}/{name} is a file, not a job folder")
    if os.path.isdir(path) and os.listdir(path) and not os.path.isfile(os.path.join(path, "job.json")):
        raise DMDNodeError(
            f"job_name: output/{JOB_FOLDER}/{name} holds other files and no job.json; choose another job_name"
        )
    return path


def check_teacher(teacher, path: str) -> None:
    """A job carries the teacher's file only: refuse a MODEL with weight patches (LoRAs), and one that this
    ComfyUI says was loaded from another file (``cached_patcher_init``, ComfyUI >= 0.12)."""
    patches = getattr(teacher, "patches", None) or {}
    if patches:
        raise DMDNodeError(
            f"teacher: the MODEL carries weight patches on {len(patches)} weights (a LoRA or a merge), which a job "
            "cannot carry: the cluster loads teacher_checkpoint alone. Save the patched model as a checkpoint "
            "(Save Checkpoint) and export with that file, or train in ComfyUI with DMD Trainer"
        )
    init = getattr(teacher, "cached_patcher_init", None)
    src = init[1][0] if isinstance(init, tuple) and len(init) > 1 and init[1] else None
    if isinstance(src, str) and os.path.isfile(src) and not os.path.samefile(src, path):
        raise DMDNodeError(
            f"teacher_checkpoint: the teacher MODEL was loaded from {os.path.basename(src)!r}, not from "
            f"{os.path.basename(path)!r}; pick the file it was loaded from"
        )


def commands(folder: str, lora_rank: int) -> str:
    """The two torchrun command lines of the job (one machine, several machines)."""
    tree = os.path.dirname(os.path.abspath(folder_paths.__file__))
    strategy = "fsdp" if int(lora_rank) == 0 else "ddp"
    run = f"-m comfyui_tempo.cli train dmd --job {shlex.quote(folder)} --comfyui {shlex.quote(tree)} --strategy {strategy}"
    name = os.path.basename(folder)
    return (
        f"Job written to {folder}\n\n"
        "One machine, N GPUs:\n"
        f"torchrun --standalone --nproc-per-node N {run} --out {shlex.quote('runs/' + name)}\n\n"
        "Several machines (the same on each; --out on a shared filesystem):\n"
        "torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST0:29500 "
        f"--rdzv-id {shlex.quote(name)} {run} --out {shlex.quote('/shared/runs/' + name)}\n\n"
        "(torchrun: python -m torch.distributed.run of ComfyUI's Python, its custom_nodes on PYTHONPATH; "
        "docs/dmd-distributed.md)"
    )


class DMDJobExportNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        inputs = trainer_inputs()
        extra = [
            io.Combo.Input(
                "teacher_checkpoint",
                options=teacher_files(),
                tooltip="The file the teacher MODEL was loaded from (models/checkpoints, or diffusion_models/...). "
                "The job refers to it by name, path and size; the cluster loads it with ComfyUI's loader "
                "(train dmd --teacher when it lies elsewhere there). A teacher with LoRAs applied is refused.",
            ),
            io.String.Input(
                "job_name",
                default="dmd/job",
                tooltip=f"The job folder under output/{JOB_FOLDER} (overwritten when it is a job already). "
                "A relative name: no drive, absolute path or '..'.",
            ),
        ]
        at = [i.id for i in inputs].index("negative") + 1  # the links first, then the job's own widgets
        return compat.schema(
            node_id="TempoDMDJobExport",
            display_name="DMD Job Export",
            category=TRAIN_CATEGORY,
            description="Writes the job of a DMD Trainer run (the same inputs) to a folder for multi-GPU / multi-machine "
            "training with torchrun (comfyui-tempo train dmd --job): the settings, checked as DMD Trainer checks "
            "them, the conditionings already encoded (the cluster needs no text encoders) and a reference to the "
            "teacher's checkpoint file. Shows the torchrun commands; trains nothing here.",
            inputs=inputs[:at] + extra + inputs[at:],
            outputs=[
                io.String.Output(
                    display_name="job_folder", tooltip="The job folder's path on this machine (train dmd --job)."
                )
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, teacher, positive, negative, teacher_checkpoint, job_name, **settings) -> io.NodeOutput:
        folder, path = job_folder(job_name), teacher_path(teacher_checkpoint)
        check_teacher(teacher, path)
        with torch.inference_mode(False):
            export_job(folder, path, teacher, positive, negative, **settings)
        return io.NodeOutput(folder, ui=ui.PreviewText(commands(folder, settings["lora_rank"])))


NODES = [DMDJobExportNode]
