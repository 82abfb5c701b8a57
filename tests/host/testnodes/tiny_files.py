"""Tiny model files a user's loader nodes read (host tier, run under ComfyUI's Python in a snippet).

The example workflows in workflows/ load a user's models through ComfyUI's own loaders
(CheckpointLoaderSimple, UNETLoader, LoraLoaderModelOnly, VAELoader). The host tests give those loaders
small real files instead of test doubles. Every file is built with ComfyUI's own classes, so its keys are
the ones ComfyUI writes and reads, and `check()` loads each one back through the loader nodes:

* ``checkpoints/tempo_tiny_sd15.safetensors``: what ComfyUI's model detection takes for an SD1.5
  checkpoint (model_channels 320, context_dim 768, no linear transformer proj, no adm) but with one UNet
  level (channel_mult [1], one res block, transformer depth 1); the SD1.5 CLIP-L text encoder at full
  size (12 layers, width 768; its weights random, small); the real TAESD weights as its VAE
  (``first_stage_model.taesd_encoder/decoder.*`` with TAESD's SD1.5 scale).
* ``checkpoints/tempo_tiny_sd15_b.safetensors``: model B of the Coop workflows (their SDXL checkpoint)
  and the released-DMD2 workflow's checkpoint: the same architecture with another seed and the TAESDXL
  VAE (its own latent space: SDXL's latent scale). A real SDXL-detected file needs the 2048-wide
  CLIP-G and adm; far too large here.
* ``diffusion_models/tempo_tiny_unet.safetensors``: a UNet alone (UNETLoader), fp16, another seed.
* ``loras/tempo_tiny_lora.safetensors``: a rank-4 LoRA in the kohya / diffusers-name layout
  (``lora_unet_<diffusers name>.lora_down/lora_up.weight`` + ``.alpha``, as the released DMD2 LoRA)
  on every attention and feed-forward linear of the tiny UNet.
* ``vae_approx/``: links to the real TAESD files (VAELoader lists them as "taesd", "taesdxl", ...).

The real files are never copied: the vae_approx entries are symlinks, the checkpoints embed the TAESD
weights in a temporary base directory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

CKPT_A = "tempo_tiny_sd15.safetensors"
CKPT_B = "tempo_tiny_sd15_b.safetensors"
UNET = "tempo_tiny_unet.safetensors"
LORA = "tempo_tiny_lora.safetensors"
TAESD_NAMES = ("taesd", "taesdxl", "taesd3", "taef1")
VAE_SCALE = {"taesd": (0.18215, 0.0), "taesdxl": (0.13025, 0.0)}  # what nodes.VAELoader.load_taesd sets

# what comfy.model_detection.detect_unet_config reads back from the file, SD1.5's keys included
UNET_CONFIG = dict(
    use_checkpoint=False,
    image_size=32,
    out_channels=4,
    use_spatial_transformer=True,
    legacy=False,
    adm_in_channels=None,
    in_channels=4,
    model_channels=320,
    num_res_blocks=[1],
    transformer_depth=[1],
    channel_mult=[1],
    transformer_depth_middle=1,
    use_linear_in_transformer=False,
    context_dim=768,
    num_head_channels=-1,
    num_heads=8,
    transformer_depth_output=[1, 1],
    use_temporal_resblock=False,
    use_temporal_attention=False,
)


def _randomise(sd: dict, seed: int, out_scale: float = 1.0) -> dict:
    """Random weights: matrices / kernels N(0, 1/fan_in), norms 1, biases 0 (a stable random net). Every 1-D
    weight is a norm's scale (GroupNorm, LayerNorm), whatever its name: the UNet's GroupNorms are called
    in_layers.0, out_layers.0 and out.0, and a zero there made the UNet predict zero everywhere."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif v.dim() >= 2:
            fan_in = v[0].numel()
            out[k] = torch.randn(v.shape, generator=g) / fan_in**0.5
        elif k.endswith("weight"):
            out[k] = torch.ones(v.shape)
        else:
            out[k] = torch.zeros(v.shape)
    return out


def unet_state_dict(seed: int) -> dict:
    """A tiny SD1.5-detected UNet's state dict (keys as in a checkpoint under model.diffusion_model.)."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        net = UNetModel(**UNET_CONFIG, dtype=torch.float32, device="meta", operations=comfy.ops.disable_weight_init)
    sd = _randomise({k: torch.empty(v.shape, dtype=v.dtype) for k, v in net.state_dict().items()}, seed)
    sd["out.2.weight"] *= 0.1  # eps of order 0.1..1
    return sd


def clip_state_dict(seed: int) -> dict:
    """The SD1.5 CLIP-L text encoder at full size with random weights, keys as ComfyUI saves a SD1.5
    checkpoint (cond_stage_model.transformer.text_model.*; no text_projection, no logit_scale)."""
    import comfy.sd1_clip
    import comfy.supported_models

    with torch.device("meta"):
        model = comfy.sd1_clip.SD1ClipModel(device="meta", dtype=torch.float32)
    sd = {"clip_l." + k: torch.empty(v.shape, dtype=v.dtype) for k, v in model.clip_l.state_dict().items()}
    sd = comfy.supported_models.SD15(dict(UNET_CONFIG)).process_clip_state_dict_for_saving(sd)
    sd = {k: v for k, v in sd.items() if k.startswith("cond_stage_model.transformer.text_model.")}
    sd = _randomise(sd, seed)
    pos = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
    sd[pos] = sd[pos] * 0.02
    return sd


def taesd_state_dict(taesd_dir: Path, name: str) -> dict:
    from safetensors.torch import load_file

    sd = {}
    for part in ("encoder", "decoder"):
        for k, v in load_file(str(taesd_dir / f"{name}_{part}.safetensors")).items():
            sd[f"taesd_{part}.{k}"] = v
    scale, shift = VAE_SCALE[name]
    sd["vae_scale"] = torch.tensor(scale)
    sd["vae_shift"] = torch.tensor(shift)
    return sd


def lora_state_dict(unet_sd: dict, seed: int, rank: int = 4) -> dict:
    """A rank-`rank` LoRA in the kohya layout with diffusers names, on every attention / ff linear."""
    import comfy.utils

    to_diffusers = comfy.utils.unet_to_diffusers(dict(UNET_CONFIG))  # diffusers key -> ComfyUI key
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for dk, ck in sorted(to_diffusers.items()):
        if not dk.endswith(".weight") or ck not in unet_sd or unet_sd[ck].dim() != 2:
            continue
        if not any(s in dk for s in (".attn1.", ".attn2.", ".ff.")):
            continue
        out_f, in_f = unet_sd[ck].shape
        name = "lora_unet_" + dk[: -len(".weight")].replace(".", "_")
        sd[name + ".lora_down.weight"] = (torch.randn(rank, in_f, generator=g) / in_f**0.5).half()
        sd[name + ".lora_up.weight"] = (torch.randn(out_f, rank, generator=g) * 0.05).half()
        sd[name + ".alpha"] = torch.tensor(float(rank)).half()
    return sd


def write_all(base: str | os.PathLike, taesd_dir: str | os.PathLike) -> dict:
    """Writes the tiny files into BASE/models; returns their sizes (bytes) and the seconds taken."""
    from safetensors.torch import save_file

    base, taesd_dir = Path(base), Path(taesd_dir)
    models = base / "models"
    t0 = time.monotonic()
    approx = models / "vae_approx"
    approx.mkdir(parents=True, exist_ok=True)
    for n in TAESD_NAMES:
        for p in ("encoder", "decoder"):
            link = approx / f"{n}_{p}.safetensors"
            if not link.exists():
                link.symlink_to(taesd_dir / link.name)
    written = {}

    def save(folder, name, sd, meta=None):
        path = models / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata=meta)
        tmp.rename(path)  # the loader's file list never sees a half-written file
        written[f"{folder}/{name}"] = path.stat().st_size

    clip = {k: v.half() for k, v in clip_state_dict(seed=1).items()}
    unet_a = unet_state_dict(seed=10)
    for name, seed, vae in ((CKPT_A, 10, "taesd"), (CKPT_B, 20, "taesdxl")):
        unet = unet_a if seed == 10 else unet_state_dict(seed)
        sd = {"model.diffusion_model." + k: v.half() for k, v in unet.items()}
        sd.update(clip)
        sd.update({"first_stage_model." + k: v for k, v in taesd_state_dict(taesd_dir, vae).items()})
        save("checkpoints", name, sd)
    save("diffusion_models", UNET, {k: v.half() for k, v in unet_state_dict(seed=30).items()})
    save("loras", LORA, lora_state_dict(unet_a, seed=40))
    return {"bytes": written, "write_s": round(time.monotonic() - t0, 2)}


def check(taesd_dir: str | os.PathLike) -> dict:
    """Loads every tiny file through ComfyUI's own loader nodes and checks what they built: the model
    type ComfyUI detected, the UNet / CLIP / VAE weights equal to the file's (nothing left
    uninitialised), every LoRA key applied. Returns what it found and the seconds each load took."""
    import folder_paths
    import nodes
    from safetensors.torch import load_file

    def call(node_cls, *args, **kwargs):
        node = node_cls()
        return getattr(node, node_cls.FUNCTION)(*args, **kwargs)

    R = {"load_s": {}}
    for name, vae_name in ((CKPT_A, "taesd"), (CKPT_B, "taesdxl")):
        t0 = time.monotonic()
        model, clip, vae = call(nodes.CheckpointLoaderSimple, name)[:3]
        R["load_s"][name] = round(time.monotonic() - t0, 2)
        file_sd = load_file(folder_paths.get_full_path_or_raise("checkpoints", name))
        # the model ComfyUI detected
        R[name] = {
            "config": type(model.model.model_config).__name__,
            "model": type(model.model).__name__,
            "vae_model": type(vae.first_stage_model).__name__,
        }
        unet = model.model.diffusion_model.state_dict()
        R[name]["unet_mismatch"] = [
            k for k, v in unet.items() if not torch.equal(v.float(), file_sd["model.diffusion_model." + k].float())
        ]
        # the CLIP: every weight of the text model is the file's (a missing one would be uninitialised)
        te = clip.cond_stage_model.clip_l.transformer.state_dict()
        bad = []
        for k, v in te.items():
            fk = "cond_stage_model.transformer." + k
            if k == "text_projection.weight":  # not in SD1.5 files; ComfyUI's own
                continue
            if fk not in file_sd or not torch.equal(v.float(), file_sd[fk].float()):
                bad.append(k)
        R[name]["clip_mismatch"] = bad
        R[name]["clip_params"] = sum(v.numel() for v in te.values())
        ref = taesd_state_dict(Path(taesd_dir), vae_name)
        fsm = vae.first_stage_model.state_dict()
        R[name]["vae_mismatch"] = [k for k, v in ref.items() if not torch.allclose(fsm[k].float(), v.float())]
        cond = call(nodes.CLIPTextEncode, clip, "a photograph of a red fox")[0]
        R[name]["cond_shape"] = list(cond[0][0].shape)
        R[name]["cond_finite"] = bool(torch.isfinite(cond[0][0]).all())
        R[name]["cond_std"] = float(cond[0][0].std())
        with torch.no_grad():  # the UNet predicts something (a zero GroupNorm scale once made it predict 0)
            x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
            eps = model.model.diffusion_model(x, torch.tensor([500.0]), context=cond[0][0].float())
        R[name]["eps_std"] = float(eps.std())
        R[name]["eps_finite"] = bool(torch.isfinite(eps).all())
    t0 = time.monotonic()
    unet_model = call(nodes.UNETLoader, UNET, "default")[0]
    R["load_s"][UNET] = round(time.monotonic() - t0, 2)
    R[UNET] = {"config": type(unet_model.model.model_config).__name__}
    lora_sd = load_file(folder_paths.get_full_path_or_raise("loras", LORA))
    patched = call(nodes.LoraLoaderModelOnly, model, LORA, 1.0)[0]
    R[LORA] = {
        "modules": sum(1 for k in lora_sd if k.endswith(".lora_up.weight")),
        "patched": len(patched.patches),
        "before": len(model.patches),
    }
    return R
