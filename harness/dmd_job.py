"""A DMD job folder (``training/job.py``) as a trainer for ``comfyui-tempo train dmd --job``: ComfyUI's own loader
reads the teacher's checkpoint (the UNet architectures are ComfyUI's), ``nodes/dmd_job.py`` builds the trainer the
DMD Trainer node builds. Needs a ComfyUI tree (``--comfyui`` or $TEMPO_COMFYUI) unless ComfyUI is importable.
"""

from __future__ import annotations

import dataclasses
import os
import sys


def setup_comfyui(tree, device) -> None:
    """Make a ComfyUI tree importable, on the CPU when ``device`` is the CPU."""
    if tree:
        tree = os.path.abspath(os.fspath(tree))
        if not os.path.isfile(os.path.join(tree, "comfy", "model_management.py")):
            raise FileNotFoundError(f"--comfyui: {tree} is not a ComfyUI tree (no comfy/model_management.py)")
        if tree not in sys.path:
            sys.path.insert(0, tree)
    try:
        from comfy.cli_args import args
    except ImportError:
        raise FileNotFoundError("--comfyui: a job needs a ComfyUI tree (--comfyui PATH or $TEMPO_COMFYUI)") from None
    if "comfy.model_management" not in sys.modules:
        args.cpu = getattr(device, "type", str(device)) == "cpu"
    try:  # before anything imports ComfyUI's nodes.py (see tests/host/comfy_client.py)
        import utils.extra_config  # noqa: F401
    except ImportError:
        pass


def build(folder, comfyui, device, batch=None, teacher=None, mixed_precision=None, gradient_checkpointing=None):
    """(trainer, save options, the job) of the job in ``folder``; ``batch`` overrides the job's global batch,
    ``teacher`` its teacher file, ``mixed_precision`` / ``gradient_checkpointing`` its settings (a GPU cluster:
    bf16 and activation checkpointing)."""
    from ..training import job as training_job

    job = training_job.read_job(folder)
    changes = {}
    if batch is not None:
        changes["batch_size"] = int(batch)
    if mixed_precision is not None:
        changes["mixed_precision"] = mixed_precision
    if gradient_checkpointing is not None:
        changes["gradient_checkpointing"] = bool(gradient_checkpointing)
    if changes:
        job["config"] = dataclasses.replace(job["config"], **changes)
        job["config"].validate()
    setup_comfyui(comfyui, device)
    import folder_paths

    from ..nodes import dmd_job

    path = training_job.resolve_teacher(job, teacher, folder_paths.get_folder_paths("checkpoints"))
    model = dmd_job.load_teacher(path)
    trainer, save = dmd_job.job_trainer(job, model)
    return trainer, save, job
