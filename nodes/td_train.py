"""The Time-Decoupled Trainer node: fine-tunes a MODEL on a timestep range at the expert's own resolution (PanGu-Draw's
structure and texture experts), saved as a LoRA file that ComfyUI's LoraLoader loads.

The training is plain PyTorch, ``training/finetune.py`` (the trainer, its run: checkpoints, resume, the
interrupt-safe save, and the expert file); this module connects it to ComfyUI: the MODEL as a denoiser and its
conditioning (``nodes/comfy_model.py``), the latents at the expert's resolution (through the VAE with
``bridges.core.bridge_latent`` when one is connected), the folders, the progress bar, Cancel and the progress text.
"""

from __future__ import annotations

import comfy.model_management as mm
import torch
from comfy_api.latest import io, ui

from ..bridges.core import bridge_latent
from ..training import finetune, lora
from ..training.plot import plot_losses
from . import compat
from .comfy_model import (
    ComfyDenoiser,
    collate_conds,
    encode_conditioning,
    has_inference_tensors,
    model_kind,
    param_dtype,
    teacher_denoiser,
    to_trainable,
)
from .comfy_vae import bridge_vae_for, vae_factor
from .dmd_files import DMDNodeError, invalidate, output_path, safe_name
from .dmd_train import TRAIN_CATEGORY, train_in_comfyui

LORA_FOLDER = "loras"  # output/loras: ComfyUI lists it in LoraLoader's loras (main.py adds it at start-up)
CKPT_FOLDER = "td_checkpoints"


class ExpertNodeError(DMDNodeError):
    """A Time-Decoupled Trainer input is wrong; the message starts with the input's name."""


class TimeDecoupledTrainer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return compat.schema(
            node_id="TempoTimeDecoupledTrainer",
            display_name="Time-Decoupled Trainer",
            category=TRAIN_CATEGORY,
            description="Fine-tunes a MODEL on one timestep range at the expert's own resolution: PanGu-Draw's "
            "time-decoupled training. Train a structure expert on t >= 500 at a low resolution and a texture "
            "expert on t < 500 at the full resolution, then sample them with the Time-Decoupled Sampler (switch 500). "
            f"The expert is saved as a LoRA in output/{LORA_FOLDER} (LoraLoader lists it at once) and returned "
            "applied to the model. Progress bar, Cancel (saves a checkpoint) and resume.",
            inputs=[
                io.Model.Input("model", tooltip="The model to fine-tune (eps, v-prediction or flow)."),
                io.Latent.Input(
                    "latents",
                    tooltip="The training images as latents (VAE Encode of an image batch), as core's Train LoRA "
                    "takes them; resized to width x height when these differ.",
                ),
                io.Conditioning.Input(
                    "positive",
                    tooltip="One conditioning for all latents, or one entry per latent (in the latents' order).",
                ),
                io.Int.Input(
                    "timestep_min",
                    default=500,
                    min=0,
                    max=999,
                    tooltip="Lowest trained timestep (included). Structure expert: the switch (500); texture: 0.",
                ),
                io.Int.Input(
                    "timestep_max",
                    default=999,
                    min=0,
                    max=999,
                    tooltip="Highest trained timestep (included). Structure expert: 999; texture: the switch - 1 (499).",
                ),
                io.Int.Input(
                    "width",
                    default=0,
                    min=0,
                    max=8192,
                    step=8,
                    tooltip="The expert's image width in pixels (0: the latents' own size). The structure expert "
                    "trains at a low resolution (PanGu-Draw: the cheap part), the texture expert at the full one.",
                ),
                io.Int.Input(
                    "height",
                    default=0,
                    min=0,
                    max=8192,
                    step=8,
                    tooltip="The expert's image height in pixels (0: the latents' own size).",
                ),
                io.Int.Input("batch_size", default=1, min=1, max=4096, tooltip="Latents per training step."),
                io.Int.Input("steps", default=500, min=1, max=10**7, tooltip="Total training steps."),
                io.Float.Input(
                    "learning_rate",
                    default=1e-4,
                    min=1e-9,
                    max=1.0,
                    step=1e-6,
                    round=1e-9,
                    tooltip="AdamW learning rate (LoRA about 1e-4; full weights about 1e-5).",
                ),
                io.Int.Input(
                    "lora_rank",
                    default=8,
                    min=0,
                    max=1024,
                    tooltip="Rank of the LoRA trained on every linear and convolution layer; 0 trains the full "
                    "weights and saves their difference to the model (LoraLoader applies it as well).",
                ),
                io.Int.Input(
                    "warmup_steps", default=0, min=0, max=10**6, tooltip="Linear learning-rate warm-up steps."
                ),
                io.Float.Input(
                    "uncond_dropout",
                    default=0.0,
                    min=0.0,
                    max=0.9,
                    step=0.01,
                    tooltip="Share of samples trained with the negative conditioning instead (keeps the expert's "
                    "CFG branch in step with it; needs negative). 0 = off, as core's Train LoRA.",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Seed of every random draw of the run (a resumed run continues the same sequence).",
                ),
                io.String.Input(
                    "save_name",
                    default="time_decoupled/structure",
                    tooltip=f"The LoRA's file name under output/{LORA_FOLDER} (and the run's checkpoint under "
                    f"output/{CKPT_FOLDER}, overwritten at every save). A relative name: no drive, absolute path "
                    "or '..'.",
                ),
                io.Int.Input(
                    "checkpoint_interval",
                    default=100,
                    min=1,
                    max=10**6,
                    tooltip="Save a checkpoint every this many steps (also on Cancel and on an error).",
                ),
                io.Boolean.Input(
                    "resume",
                    default=True,
                    tooltip="Continue from save_name's checkpoint when one exists (same settings); off starts over.",
                ),
                io.Conditioning.Input(
                    "negative", optional=True, tooltip="Optional: the empty prompt uncond_dropout trains with."
                ),
                io.Vae.Input(
                    "vae",
                    optional=True,
                    tooltip="Optional: resize the latents through pixels (decode, resize, encode) instead of in "
                    "latent space.",
                ),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The model with the trained expert applied."),
                io.String.Output(
                    display_name="lora_name", tooltip=f"The saved LoRA, as LoraLoader lists it (output/{LORA_FOLDER})."
                ),
                io.Image.Output(display_name="loss_curves", tooltip="The training loss."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls,
        model,
        latents,
        positive,
        timestep_min,
        timestep_max,
        width,
        height,
        batch_size,
        steps,
        learning_rate,
        lora_rank,
        warmup_steps,
        uncond_dropout,
        seed,
        save_name,
        checkpoint_interval,
        resume,
        negative=None,
        vae=None,
    ) -> io.NodeOutput:
        node_id = getattr(getattr(cls, "hidden", None), "unique_id", None)
        settings = dict(
            timestep_min=int(timestep_min),
            timestep_max=int(timestep_max),
            batch_size=int(batch_size),
            lr=float(learning_rate),
            warmup_steps=int(warmup_steps),
            uncond_dropout=float(uncond_dropout),
            lora_rank=int(lora_rank),
            seed=int(seed) % (2**63),
        )
        # ComfyUI runs nodes under inference mode; training needs autograd (as core's Train LoRA does)
        with torch.inference_mode(False), torch.enable_grad():
            return _train(
                model,
                latents,
                positive,
                negative,
                vae,
                int(width),
                int(height),
                settings,
                int(steps),
                save_name,
                int(checkpoint_interval),
                bool(resume),
                node_id,
            )


def _kind_and_table(model) -> tuple[str, torch.Tensor]:
    kind = model_kind(model)
    ms = model.get_model_object("model_sampling")
    sigmas = getattr(ms, "sigmas", None)
    if kind not in finetune.MODEL_TYPES or not isinstance(sigmas, torch.Tensor) or sigmas.numel() < 2:
        raise ExpertNodeError(
            f"model: the Time-Decoupled Trainer trains eps, v-prediction or flow models with a timestep table; this "
            f"model's sampling is {type(ms).__name__}"
        )
    return kind, sigmas.detach().float().cpu()


def training_latents(base, model, latents, width: int, height: int, vae) -> torch.Tensor:
    """The LATENT's samples in model space at width x height pixels (0: as they are): through the VAE's pixels
    (``bridge_latent``) when one is given, else resized in latent space (``finetune.resize_latents``)."""
    if not isinstance(latents, dict) or not isinstance(latents.get("samples"), torch.Tensor):
        raise ExpertNodeError("latents: expected a LATENT (the output of VAE Encode)")
    raw = compat.refuse_not_image_latent(latents["samples"], "latents")
    if raw.ndim != 4 or raw.shape[0] < 1:
        raise ExpertNodeError(f"latents: expected image latents [B, C, H, W], got shape {tuple(raw.shape)}")
    z = base.process_latent_in(raw.detach().clone().float())
    if (width == 0) != (height == 0):
        raise ExpertNodeError(f"width: give both width and height, or 0 for both (got {width} x {height})")
    if width == 0:
        return z
    factor = vae_factor(vae) if vae is not None else 8
    for name, v in (("width", width), ("height", height)):
        if v % factor:
            raise ExpertNodeError(f"{name}: expected a multiple of {factor} (the latent is 1/{factor} of it), got {v}")
    if vae is None:
        return finetune.resize_latents(z, (height // factor, width // factor))
    if tuple(z.shape[-2:]) == (height // factor, width // factor):
        return z
    bvae = bridge_vae_for(model, vae, "vae", {})
    with torch.no_grad():
        return torch.cat([bridge_latent(c, bvae, bvae, size=(height, width)) for c in z.split(8)])


def apply_expert(model, sd: dict, what: str = "save_name"):
    """A clone of ``model`` with the expert file's tensors applied through ComfyUI's own LoRA loader (as LoraLoader
    applies them: LoRA factors, or .diff / .diff_b weight differences)."""
    import comfy.lora
    import comfy.lora_convert

    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    loaded = comfy.lora.load_lora(comfy.lora_convert.convert_lora(sd), key_map)
    new_model = model.clone()
    patched = set(new_model.add_patches(loaded, 1.0))
    # one patch per LoRA layer, per .diff (a weight) and per .diff_b (a bias)
    want = len({k.rsplit(".lora_", 1)[0] for k in sd if ".lora_" in k}) + sum(
        k.endswith((".diff", ".diff_b")) for k in sd
    )
    if len(patched) < want:
        raise ExpertNodeError(
            f"{what}: the expert patches {len(patched)} of its {want} tensors on this model: it was made for another "
            "model"
        )
    return new_model


def _train(
    model, latents, positive, negative, vae, width, height, settings, steps, save_name, interval, resume, node_id
):
    kind, table = _kind_and_table(model)
    name = safe_name(save_name)
    config = finetune.FinetuneConfig(
        model_type=kind, mixed_precision="bf16" if mm.get_torch_device().type == "cuda" else "no", **settings
    )
    try:
        config.validate(table.numel())
    except finetune.FinetuneError as e:
        raise ExpertNodeError(str(e).replace("lr:", "learning_rate:", 1)) from None
    if config.uncond_dropout > 0 and negative is None:
        raise ExpertNodeError("negative: uncond_dropout > 0 trains with the negative conditioning; connect one")
    base, _, device = teacher_denoiser(model)
    z = training_latents(base, model, latents, width, height, vae)
    shape = tuple(z.shape[1:])
    pos = encode_conditioning(base, positive, shape, device, "positive")
    if len(pos) not in (1, z.shape[0]):
        raise ExpertNodeError(
            f"positive: {len(pos)} conditionings for {z.shape[0]} latents; give one for all or one per latent"
        )
    neg = encode_conditioning(base, negative, shape, device, "negative", "negative")[0] if negative else None
    src = base.diffusion_model
    if config.lora_rank > 0:
        shared = to_trainable(src, trainable=False) if has_inference_tensors(src) else src
        shared.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):  # the LoRA's initial factors follow the seed too
            torch.manual_seed(config.seed)
            net = lora.lora_copy(shared, config.lora_rank)
    else:
        net = to_trainable(src)
    net.train()
    trainer = finetune.FinetuneTrainer(
        ComfyDenoiser(base, net),
        z.to(device),
        config,
        conditioning=pos,
        uncond=neg,
        collate=collate_conds,
        sigmas=table,
        device=device,
    )
    run = finetune.FinetuneRun(
        trainer,
        output_path(CKPT_FOLDER, name, ".pt"),
        interval,
        shown=f"output/{CKPT_FOLDER}/{name}.pt",  # not the server's path
        names={"latent_shape": "width/height", "conditioning": "positive"},
        advice="turn resume off or change save_name",
    )
    train_in_comfyui(run, steps, resume, node_id, ExpertNodeError)

    with torch.no_grad():
        # a full-weights expert's difference in the model's own dtype (float32 would double an fp16 model's file)
        dtype = None if trainer.lora else param_dtype(src, torch.float32)
        sd = finetune.expert_state_dict(net, None if trainer.lora else src, "diffusion_model.", dtype)
    rel = name + ".safetensors"
    info = finetune.expert_info(trainer, base=type(base).__name__ + "/" + type(src).__name__)
    finetune.write_expert(output_path(LORA_FOLDER, name, ".safetensors"), sd, info, title=name)
    invalidate(LORA_FOLDER)
    expert = apply_expert(model, sd)
    status = f"resumed from step {run.resumed_from}, " if run.resumed_from is not None else ""
    text = (
        f"Time-Decoupled Trainer: {status}{trainer.step_count} steps on t {config.timestep_min}..{config.timestep_max} "
        f"at latents {shape[-1]}x{shape[-2]} -> {LORA_FOLDER}/{rel}"
    )
    curves = torch.from_numpy(plot_losses(run.history)).unsqueeze(0)
    return io.NodeOutput(expert, rel, curves, ui=ui.PreviewText(text))


NODES = [TimeDecoupledTrainer]
