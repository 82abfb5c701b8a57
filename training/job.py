"""A DMD job folder (plain PyTorch, no ComfyUI import): what a cluster needs to run a DMD Trainer run with
``comfyui-tempo train dmd --job FOLDER`` (torchrun), without text encoders or ComfyUI's front end.

    job.json                    format, the DMDConfig, the latent shape, steps, checkpoint interval, LoRA rank,
                                the generator's name, the teacher's file (name, path at export, size) and the
                                kind of every conditioning entry
    conditioning.safetensors    the encoded conditionings, as the model gets them (``positive.<i>.<key>``,
                                ``negative.<key>``: ComfyUI's processed model conds, e.g. c_crossattn, y)
    pairs.safetensors           optional: the regression pairs / GAN real data (noise, target, cond_index)

An entry of a conditioning is ``{key: {"kind": class name, "tensor": Tensor}}`` or ``{key: {"kind": class name,
"value": JSON value}}`` (a constant); ``nodes/dmd_job.py`` turns ComfyUI's cond objects into these and back.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path

import torch

from .config import DMDConfig
from .guidance import RegressionPairs
from .run import RunError, atomic_save

FORMAT = "tempo-dmd-job"
VERSION = 1
JOB_FILE = "job.json"
COND_FILE = "conditioning.safetensors"
PAIRS_FILE = "pairs.safetensors"


def _flatten(prefix: str, item: dict, tensors: dict) -> dict:
    kinds = {}
    for key, entry in item.items():
        if "tensor" in entry:
            tensors[f"{prefix}.{key}"] = entry["tensor"].detach().cpu().contiguous()
            kinds[key] = {"kind": entry["kind"]}
        else:
            kinds[key] = {"kind": entry["kind"], "value": entry["value"]}
    return kinds


def _unflatten(prefix: str, kinds: dict, tensors: dict) -> dict:
    out = {}
    for key, k in kinds.items():
        if "value" in k:
            out[key] = {"kind": k["kind"], "value": k["value"]}
        else:
            out[key] = {"kind": k["kind"], "tensor": tensors[f"{prefix}.{key}"]}
    return out


def write_job(
    folder,
    *,
    teacher_file,
    config: DMDConfig,
    latent_shape,
    steps: int,
    positive: list[dict],
    negative: dict | None,
    checkpoint_interval: int = 100,
    lora_rank: int = 0,
    name: str = "generator",
    pairs: RegressionPairs | None = None,
    extra: dict | None = None,
) -> Path:
    """Write the job folder (each file atomically, job.json last). ``teacher_file``: the teacher's checkpoint
    (recorded by name, path and size; the cluster resolves it, ``resolve_teacher``). Returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.validate()
    teacher_file = Path(teacher_file)
    if not teacher_file.is_file():
        raise RunError(f"teacher_file: expected the teacher's checkpoint file, got {os.fspath(teacher_file)!r}")
    if not positive:
        raise RunError("positive: expected at least one conditioning entry")
    tensors: dict = {}
    pos_kinds = [_flatten(f"positive.{i}", item, tensors) for i, item in enumerate(positive)]
    neg_kinds = _flatten("negative", negative, tensors) if negative is not None else None
    atomic_save(lambda p: save_file(tensors, p), folder / COND_FILE)
    if pairs is not None:
        pt = {"noise": pairs.noise.float().contiguous(), "target": pairs.target.float().contiguous()}
        if pairs.cond_index is not None:
            pt["cond_index"] = torch.as_tensor(pairs.cond_index, dtype=torch.long).contiguous()
        atomic_save(lambda p: save_file(pt, p), folder / PAIRS_FILE)
    elif (folder / PAIRS_FILE).exists():
        (folder / PAIRS_FILE).unlink()
    job = {
        "format": FORMAT,
        "version": VERSION,
        "name": str(name),
        "teacher": {
            "name": teacher_file.name,
            "path": os.fspath(teacher_file.resolve()),
            "size": teacher_file.stat().st_size,
        },
        "config": json.loads(json.dumps(asdict(config))),
        "latent_shape": [int(d) for d in latent_shape],
        "steps": int(steps),
        "checkpoint_interval": int(checkpoint_interval),
        "lora_rank": int(lora_rank),
        "positive": pos_kinds,
        "negative": neg_kinds,
        "pairs": pairs is not None,
        **(extra or {}),
    }
    text = json.dumps(job, indent=1) + "\n"

    def write(p):
        with open(p, "w") as f:
            f.write(text)

    atomic_save(write, folder / JOB_FILE)
    return folder


def read_job(folder) -> dict:
    """The job in ``folder``: job.json's fields, ``config`` as a DMDConfig, ``positive`` / ``negative`` with their
    tensors, ``pairs`` a RegressionPairs or None. A folder that is not a job is a ``RunError`` naming it."""
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / JOB_FILE
    try:
        job = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"job: {os.fspath(folder)} is not a DMD job folder (no readable {JOB_FILE}: {e})") from None
    if job.get("format") != FORMAT or int(job.get("version", 0)) > VERSION:
        raise RunError(f"job: {os.fspath(path)} is not a DMD job of version <= {VERSION} ({job.get('format')!r})")
    names = {f.name for f in fields(DMDConfig)}
    cfg = {k: v for k, v in job["config"].items() if k in names}
    for k in ("betas", "denoising_timesteps"):
        if cfg.get(k) is not None:
            cfg[k] = tuple(cfg[k])
    job["config"] = DMDConfig(**cfg)
    job["config"].validate()
    tensors = load_file(folder / COND_FILE)
    job["positive"] = [_unflatten(f"positive.{i}", k, tensors) for i, k in enumerate(job["positive"])]
    job["negative"] = _unflatten("negative", job["negative"], tensors) if job["negative"] is not None else None
    pairs = None
    if job.get("pairs"):
        pt = load_file(folder / PAIRS_FILE)
        pairs = RegressionPairs(pt["noise"], pt["target"], pt.get("cond_index"))
    job["pairs"] = pairs
    return job


def resolve_teacher(job: dict, override=None, search=()) -> Path:
    """The teacher's file on this machine: ``override``, else the path recorded at export, else a file of the
    recorded name in one of the ``search`` folders; its size must be the recorded one."""
    t = job["teacher"]
    cands = [Path(override)] if override else [Path(t["path"])] + [Path(s) / t["name"] for s in search]
    for c in cands:
        if c.is_file():
            if c.stat().st_size != int(t["size"]):
                raise RunError(
                    f"teacher: {os.fspath(c)} has {c.stat().st_size} bytes, the job's teacher {t['name']} had "
                    f"{t['size']}: another file (pass the right one with --teacher)"
                )
            return c
    raise RunError(
        f"teacher: the job's teacher {t['name']} is not at {t['path']} nor in {[os.fspath(s) for s in search]}; "
        "pass it with --teacher PATH"
    )
