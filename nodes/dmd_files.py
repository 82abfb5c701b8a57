"""The DMD nodes' files: ComfyUI's folders for generators, regression pairs and run checkpoints, the
generator / pairs file a node input names, and ``DMDNodeError``.

The comfy-free checks of the names users type live in ``nodes/files.py``; the generator file's layout and
its reader in ``samplers/dmd.py``, its writer in ``training/run.py``.
"""

from __future__ import annotations

import os

import comfy.utils
import folder_paths

from ..samplers import dmd as dmd_sampling
from . import files

FOLDER = "dmd_generators"  # the pack's model folder type: models/dmd_generators and output/dmd_generators
PAIRS_FOLDER = "dmd_pairs"
CKPT_FOLDER = "dmd_checkpoints"
META_KEY = dmd_sampling.METADATA_KEY  # the files' metadata key, and the MODEL's model_options key of its DMD settings
EXTENSIONS = {".safetensors"}


class DMDNodeError(ValueError):
    """A DMD node input is wrong; the message starts with the input's name."""


# ----------------------------------------------------------------------------- folders
def _register_folders() -> None:
    """models/<folder> and output/<folder> for generators and pairs (listed by the loader at once)."""
    out = folder_paths.get_output_directory()
    for name in (FOLDER, PAIRS_FOLDER):
        paths = [os.path.join(folder_paths.models_dir, name), os.path.join(out, name)]
        if name not in folder_paths.folder_names_and_paths:
            folder_paths.folder_names_and_paths[name] = (paths, set(EXTENSIONS))
        else:
            for p in paths:
                folder_paths.add_model_folder_path(name, p)


_register_folders()


def invalidate(folder: str) -> None:
    """Drop ComfyUI's cached file list so a file written now is listed by the next request."""
    folder_paths.filename_list_cache.pop(folder, None)
    helper = getattr(folder_paths, "cache_helper", None)
    if helper is not None and getattr(helper, "cache", None) is not None:
        helper.cache.pop(folder, None)


def generator_files() -> list[str]:
    """The loader's list: the pack's folder, then ``loras/`` and ``diffusion_models/`` safetensors."""
    names = [n for n in folder_paths.get_filename_list(FOLDER) if n.endswith(".safetensors")]
    for folder in ("loras", "diffusion_models"):
        try:
            names += [f"{folder}/{n}" for n in folder_paths.get_filename_list(folder) if n.endswith(".safetensors")]
        except Exception:  # a folder type this ComfyUI does not have
            pass
    return names


def folder_paths_of(folder: str) -> list[str]:
    try:
        return list(folder_paths.get_folder_paths(folder))
    except Exception:  # a folder type this ComfyUI does not have
        return []


def resolve_generator(name: str) -> str:
    """generator_name -> its file in models/ or output/dmd_generators, loras/ or diffusion_models/ (never
    anywhere else: absolute paths and drive letters are refused, '..' is refused by ComfyUI's get_full_path)."""
    name = checked(files.check_listed_name, name, "generator_name")
    folder = FOLDER
    for f in ("loras", "diffusion_models"):
        if name.startswith(f + "/"):
            folder, name = f, name[len(f) + 1 :]
            break
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise DMDNodeError(
            f"generator_name: no file {name!r} in models/{FOLDER}, output/{FOLDER}, loras or diffusion_models"
        )
    return checked(files.inside, path, folder_paths_of(folder), "generator_name")


def checked(check, *args):
    """A ``files`` check with its FileNameError raised as the node's error (same message)."""
    try:
        return check(*args)
    except files.FileNameError as e:
        raise DMDNodeError(str(e)) from None


def safe_name(save_name: str, what: str = "save_name") -> str:
    """save_name -> "dir/name" that stays in output/<folder> on every OS (``files.safe_save_name``)."""
    return checked(files.safe_save_name, save_name, what)


def output_path(folder: str, name: str, suffix: str) -> str:
    """output/<folder>/<name><suffix>, checked to stay inside output/<folder>."""
    root = os.path.join(folder_paths.get_output_directory(), folder)
    return checked(files.inside, os.path.join(root, *name.split("/")) + suffix, [root], "save_name")


# ----------------------------------------------------------------------------- files
def read_generator(path: str, what: str = "generator_name") -> tuple[dict, dict | None]:
    """(state dict, DMD settings or None) of a generator file (``samplers.dmd.read_generator``: either metadata
    layout, safetensors only); its errors named ``what``."""
    try:
        return dmd_sampling.read_generator(path)
    except dmd_sampling.DMDSamplingError as e:
        raise DMDNodeError(what + str(e)[len("path") :]) from None


def _metadata_object(meta: dict, what: str, path: str) -> dict:
    """The pack's metadata entry of a file (a JSON object; {} when absent), or a clear error naming ``what`` and the file."""
    try:
        return dmd_sampling.metadata_object(meta) or {}
    except dmd_sampling.DMDSamplingError as e:
        raise DMDNodeError(f"{what}: {os.path.basename(path)!r} has {str(e)[len('path: ') :]}") from None


def pairs_path(name: str) -> str:
    """regression_pairs -> its file in models/ or output/dmd_pairs (absolute paths and drive letters refused)."""
    name = (name or "").strip()
    if not name:
        raise DMDNodeError("regression_pairs: expected a file name")
    name = checked(files.check_listed_name, name, "regression_pairs")
    if not name.endswith(".safetensors"):
        name += ".safetensors"
    path = folder_paths.get_full_path(PAIRS_FOLDER, name)
    if path is None:
        raise DMDNodeError(f"regression_pairs: no file {name!r} in models/{PAIRS_FOLDER} or output/{PAIRS_FOLDER}")
    return checked(files.inside, path, folder_paths_of(PAIRS_FOLDER), "regression_pairs")


def load_pairs(name: str, kind: str, ct: int, shape, n_conds: int):
    """The regression pairs file ``name`` (DMD Regression Pairs), checked against the trainer's model type,
    conditioning timestep ``ct``, latent shape and number of conditionings."""
    from safetensors import safe_open

    path = pairs_path(name)
    try:
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = set(f.keys())
    except Exception as e:
        raise DMDNodeError(
            f"regression_pairs: {os.path.basename(path)!r} is not a readable safetensors file ({type(e).__name__})"
        ) from None
    info = _metadata_object(meta, "regression_pairs", path)
    if not {"noise", "target"} <= keys:
        raise DMDNodeError(
            f"regression_pairs: {os.path.basename(path)!r} is not a pairs file (no noise/target tensors)"
        )
    sd = comfy.utils.load_torch_file(path, safe_load=True)
    if tuple(sd["noise"].shape[1:]) != tuple(shape):
        raise DMDNodeError(
            f"regression_pairs: latents of shape {tuple(sd['noise'].shape[1:])}, the trainer's are {tuple(shape)} "
            "(width/height differ)"
        )
    if info.get("conditioning_timestep") is not None and int(info["conditioning_timestep"]) != ct:
        raise DMDNodeError(
            f"regression_pairs: made at conditioning timestep {info['conditioning_timestep']}, the trainer uses {ct}"
        )
    if info.get("model_type") and info["model_type"] != kind:
        raise DMDNodeError(f"regression_pairs: made with a {info['model_type']} teacher, this teacher is {kind}")
    ci = sd.get("cond_index")
    if ci is not None and int(ci.max()) >= n_conds:
        raise DMDNodeError(f"regression_pairs: made for {int(ci.max()) + 1} conditionings, positive has {n_conds}")
    from ..training.dmd import RegressionPairs  # here: nodes/comfy_vae.py (the bridge nodes) needs no trainer

    return RegressionPairs(sd["noise"].float(), sd["target"].float(), ci.long() if ci is not None else None)
