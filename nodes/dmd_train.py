"""The DMD Trainer node, which distils a ComfyUI MODEL into a one-step or few-step generator (its regression
pairs come from DMD Regression Pairs, ``nodes/dmd_pairs.py``).

The training is plain PyTorch: ``training/dmd.py`` (the trainer and its losses) and ``training/run.py`` (the
resumable run: checkpoints, resume, the interrupt-safe save, the generator file). These nodes connect them to
ComfyUI: the MODEL and its conditioning (``nodes/comfy_model.py``), the folders (``nodes/dmd_files.py``), the
progress bar, Cancel and the progress text.
"""

from __future__ import annotations

import dataclasses

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io, ui

from ..samplers import dmd as dmd_sampling
from ..training import dmd as dmd_training
from ..training import run as training_run
from ..training.plot import plot_losses
from . import compat
from .comfy_model import (
    ComfyDenoiser,
    collate_conds,
    dmd_schedule,
    encode_conditioning,
    gan_feature_module,
    latent_picture,
    latent_shape,
    param_dtype,
    teacher_denoiser,
    trainable_networks,
)
from .dmd import apply_generator, attach_info
from .dmd_files import CKPT_FOLDER, FOLDER, DMDNodeError, invalidate, load_pairs, output_path, safe_name

TRAIN_CATEGORY = "training/tempo"


class DMDTrainerNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return compat.schema(
            node_id="TempoDMDTrainer",
            display_name="DMD Trainer",
            category=TRAIN_CATEGORY,
            description="Distils a teacher MODEL into a one-step (generator_steps 1) or few-step generator with DMD / DMD2 (distribution matching with a "
            "trained fake score, optional regression loss). Runs inside ComfyUI with its progress bar; Cancel saves a "
            f"checkpoint and resume continues from it. The generator is saved to output/{FOLDER} (listed by DMD Generator "
            "Loader at once) and returned as a MODEL.",
            inputs=[
                io.Model.Input(
                    "teacher", tooltip="The teacher (eps, v-prediction or flow). Its LoRAs/patches are part of it."
                ),
                io.Conditioning.Input(
                    "positive",
                    tooltip="The prompts to distil: every entry is one conditioning "
                    "(combine several with Conditioning (Combine)); each sample draws one.",
                ),
                io.Conditioning.Input("negative", tooltip="The negative / empty prompt for the teacher's CFG."),
                io.Int.Input(
                    "width", default=512, min=8, max=8192, step=8, tooltip="Image width in pixels (multiple of 8)."
                ),
                io.Int.Input(
                    "height", default=512, min=8, max=8192, step=8, tooltip="Image height in pixels (multiple of 8)."
                ),
                io.Int.Input("batch_size", default=1, min=1, max=4096, tooltip="Generator samples per step."),
                io.Int.Input(
                    "steps",
                    default=1000,
                    min=1,
                    max=10**7,
                    tooltip="Total training steps (one DMD2 iteration each; the generator updates every update_ratio-th).",
                ),
                io.Float.Input(
                    "generator_lr",
                    default=1e-5,
                    min=1e-9,
                    max=1.0,
                    step=1e-8,
                    round=1e-9,
                    tooltip="AdamW learning rate of the generator (DMD2: SD1.5 1e-5, SDXL 5e-7; LoRA ~5e-5 or more).",
                ),
                io.Float.Input(
                    "fake_lr",
                    default=1e-5,
                    min=1e-9,
                    max=1.0,
                    step=1e-8,
                    round=1e-9,
                    tooltip="AdamW learning rate of the fake score.",
                ),
                io.Float.Input(
                    "guidance",
                    default=1.75,
                    min=0.0,
                    max=100.0,
                    step=0.05,
                    tooltip="CFG scale of the real score (the teacher); baked into the generator (DMD2: SD1.5 1.75, SDXL 8).",
                ),
                io.Int.Input(
                    "update_ratio",
                    default=5,
                    min=1,
                    max=100,
                    tooltip="Fake-score updates per generator update (DMD2's two-time-scale rule: 5, SD1.5 10).",
                ),
                io.Int.Input(
                    "conditioning_timestep",
                    default=999,
                    min=0,
                    max=10000,
                    tooltip="The timestep the generator is evaluated at (999; DMD2's 1-step SDXL used 399).",
                ),
                io.Int.Input(
                    "generator_steps",
                    default=1,
                    min=1,
                    max=50,
                    tooltip="1 = one-step generator at conditioning_timestep; n > 1 = DMD2 multi-step generator at "
                    "range(T-1, 0, -T/n) (4: 999/749/499/249), trained with backward simulation.",
                ),
                io.Int.Input(
                    "warmup_steps",
                    default=500,
                    min=0,
                    max=10**6,
                    tooltip="Linear learning-rate warm-up (optimizer steps).",
                ),
                io.Float.Input(
                    "regression_weight",
                    default=0.0,
                    min=0.0,
                    max=100.0,
                    step=0.01,
                    tooltip="Weight of the regression loss on teacher pairs (the original DMD used 0.25; DMD2 drops it: 0 = off).",
                ),
                io.String.Input(
                    "regression_pairs",
                    default="",
                    tooltip="Pairs file from DMD Regression Pairs (output/dmd_pairs/...); needed when regression_weight > 0.",
                ),
                io.Float.Input(
                    "gan_weight",
                    default=0.0,
                    min=0.0,
                    max=10.0,
                    step=0.001,
                    round=1e-5,
                    tooltip="DMD2's GAN loss weight for the generator (SD1.5 1e-3, SDXL 5e-3; 0 = off). The "
                    "critic is a head on the fake score's bottleneck, trained with weight 1e-2 on the regression "
                    "pairs' teacher samples as real data (so it needs regression_pairs).",
                ),
                io.Int.Input(
                    "lora_rank",
                    default=0,
                    min=0,
                    max=1024,
                    tooltip="0 = train full weights (a trainable copy of the network for the generator and one for the fake "
                    "score); >0 = LoRA of this rank on both, which then share the teacher's weights (saved as a LoRA; "
                    "the checkpoint is far smaller).",
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
                    default="dmd/generator",
                    tooltip=f"Generator file name under output/{FOLDER} (and the run's checkpoint under output/{CKPT_FOLDER}: "
                    "one file per save_name, overwritten at every save. With lora_rank 0 it holds about 6 float32 copies "
                    "of the diffusion model (generator, fake score, two AdamW moments of each): ~20 GB for SD1.5; "
                    "lora_rank > 0 stores only the LoRA factors). A relative name: no drive, absolute path or '..'.",
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
                io.Boolean.Input(
                    "gradient_checkpointing",
                    default=False,
                    tooltip="Recompute activations in backward: less memory, slower (large models).",
                ),
                io.Vae.Input(
                    "vae", optional=True, tooltip="Optional: decodes the sample images (else a latent preview)."
                ),
            ],
            outputs=[
                io.Model.Output(
                    display_name="MODEL", tooltip="The generator, usable at once (DMD KSampler / DMD Sampler)."
                ),
                io.Image.Output(display_name="loss_curves", tooltip="The training losses."),
                io.Image.Output(
                    display_name="samples",
                    tooltip="Samples of the generator (at its own steps), one per conditioning (up to 8).",
                ),
                io.Latent.Output(display_name="sample_latents", tooltip="The same samples as a LATENT."),
                io.String.Output(display_name="generator_name", tooltip="The saved file, for DMD Generator Loader."),
            ],
            hidden=[io.Hidden.unique_id],
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
        resume,
        gradient_checkpointing=False,
        vae=None,
    ) -> io.NodeOutput:
        node_id = getattr(getattr(cls, "hidden", None), "unique_id", None)
        with torch.inference_mode(False), torch.enable_grad():
            return _train(
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
                resume,
                gradient_checkpointing,
                vae,
                node_id,
            )


def _train(
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
    resume,
    gradient_checkpointing,
    vae,
    node_id,
):
    name = safe_name(save_name)
    setup = setup_run(
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
    base, device, pos = setup.base, setup.device, setup.pos
    trainer, gen_net = build_trainer(setup)
    run = training_run.DMDRun(
        trainer,
        output_path(CKPT_FOLDER, name, ".pt"),
        int(checkpoint_interval),
        shown=f"output/{CKPT_FOLDER}/{name}.pt",  # not the server's path
        names={"latent_shape": "width/height", "conditioning": "positive"},
        advice="turn resume off or change save_name",
    )
    train_in_comfyui(run, steps, resume, node_id, DMDNodeError)

    # the generator: saved, then applied to a clone of the teacher the same way the loader applies it
    sd, info = run.save_generator(
        output_path(FOLDER, name, ".safetensors"), gen_net, title=name, **generator_file_options(base, lora_rank)
    )
    invalidate(FOLDER)
    generator = attach_info(apply_generator(teacher, sd, info["format"], 1.0, what="save_name"), info)
    n = min(8, len(pos))
    with torch.no_grad():
        x0 = trainer.sample(
            n, collate_conds(pos[:n]), generator=torch.Generator(device=device).manual_seed(int(seed) % 2**63)
        )
    raw = base.process_latent_out(x0.float()).cpu()
    status = f"resumed from step {run.resumed_from}, " if run.resumed_from is not None else ""
    rel = name + ".safetensors"
    text = f"DMD Trainer: {status}{trainer.step_count} steps ({trainer.generator_steps} generator updates) -> {FOLDER}/{rel}"
    curves = torch.from_numpy(plot_losses(run.history)).unsqueeze(0)
    return io.NodeOutput(
        generator, curves, latent_picture(teacher, raw, vae), {"samples": raw}, rel, ui=ui.PreviewText(text)
    )


@dataclasses.dataclass
class DMDSetup:
    """What a DMD run on a ComfyUI teacher trains from: the node's inputs checked and encoded (``setup_run``), or
    read back from a job folder (``dmd_job.job_trainer``)."""

    kind: str  # the model sampling's kind (eps, v, flow...)
    table: torch.Tensor  # the teacher's sigma table
    shape: tuple  # one latent's shape
    config: dmd_training.DMDConfig
    base: object  # the teacher's BaseModel
    teacher_d: ComfyDenoiser
    device: torch.device
    pos: list  # encoded conditionings (key -> ComfyUI cond), one per prompt
    neg: dict | None
    pairs: object  # the regression pairs, or None


def setup_run(
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
) -> DMDSetup:
    """The DMD Trainer node's inputs as a DMDSetup: checked (errors named by the inputs), the conditionings
    encoded by the teacher, the regression pairs read when a loss needs them."""
    kind, table = dmd_schedule(teacher, "teacher")
    shape = latent_shape(teacher, width, height)
    config = _config(
        teacher,
        kind,
        table.numel(),
        positive,
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
    base, teacher_d, device = teacher_denoiser(teacher)
    pos = encode_conditioning(base, positive, shape, device, "positive")
    neg = encode_conditioning(base, negative, shape, device, "negative", "negative")[0]
    pairs = None
    if regression_weight > 0 or gan_weight > 0:
        pairs = load_pairs(regression_pairs, kind, config.generator_timesteps()[0], shape, len(pos))
    return DMDSetup(kind, table, shape, config, base, teacher_d, device, pos, neg, pairs)


def build_trainer(s: DMDSetup) -> tuple[dmd_training.DMDTrainer, torch.nn.Module]:
    """(the DMDTrainer, its generator network) for a setup: the node and ``train dmd --job`` build it here."""
    config = s.config
    real, gen_net, fake_net = trainable_networks(s.base, s.teacher_d, config.lora_rank, config.seed)
    trainer = dmd_training.DMDTrainer(
        real,
        ComfyDenoiser(s.base, gen_net),
        ComfyDenoiser(s.base, fake_net),
        s.shape,
        config,
        conditioning=s.pos,
        uncond=s.neg,
        collate=collate_conds,
        sigmas=s.table,
        regression_pairs=s.pairs if config.regression_weight > 0 else None,
        real_data=s.pairs if config.gen_cls_loss_weight > 0 else None,
        device=s.device,
    )
    return trainer, gen_net


def generator_file_options(base, lora_rank: int) -> dict:
    """``save_generator``'s options for the generator file DMD Generator Loader reads: full weights in the model's
    own dtype under the UNet's keys, or the LoRA under ``diffusion_model.``."""
    full = int(lora_rank) == 0
    return dict(
        prefix="" if full else "diffusion_model.",
        dtype=param_dtype(base.diffusion_model, torch.float32) if full else None,
        info={"base": type(base).__name__ + "/" + type(base.diffusion_model).__name__},
    )


def _config(
    teacher,
    kind,
    T,
    positive,
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
) -> dmd_training.DMDConfig:
    """The run's DMDConfig from the node's inputs, checked (errors named by the node's inputs)."""
    if not 0 <= conditioning_timestep < T:
        raise DMDNodeError(f"conditioning_timestep: expected an integer in [0, {T - 1}], got {conditioning_timestep}")
    if not isinstance(positive, list) or len(positive) == 0:
        raise DMDNodeError(
            "positive: expected a CONDITIONING with at least one entry (the list of prompts to distil is empty)"
        )
    if regression_weight > 0 and not (regression_pairs or "").strip():
        raise DMDNodeError(
            "regression_pairs: a pairs file is required when regression_weight > 0 (make one with DMD Regression Pairs)"
        )
    if gan_weight > 0 and not (regression_pairs or "").strip():
        raise DMDNodeError(
            "regression_pairs: a pairs file is required when gan_weight > 0 (its teacher samples are the GAN's real data)"
        )
    gan_module = gan_feature_module(teacher.model.diffusion_model) if gan_weight > 0 else None
    if gan_weight > 0 and gan_module is None:
        raise DMDNodeError(
            "gan_weight: this model has no bottleneck the GAN head knows (a UNet middle_block); set gan_weight 0"
        )
    denoising = tuple(dmd_sampling.dmd2_timesteps(int(generator_steps), T)) if generator_steps > 1 else None
    config = dmd_training.DMDConfig(
        model_type=kind,
        conditioning_timestep=int(conditioning_timestep),
        real_guidance_scale=float(guidance),
        dfake_gen_update_ratio=int(update_ratio),
        batch_size=int(batch_size),
        generator_lr=float(generator_lr),
        fake_lr=float(fake_lr),
        warmup_steps=int(warmup_steps),
        regression_weight=float(regression_weight),
        seed=int(seed) % (2**63),
        denoising_timesteps=denoising,
        gen_cls_loss_weight=float(gan_weight),
        guidance_cls_loss_weight=1e-2 if gan_weight > 0 else 0.0,
        gan_feature_module=gan_module,
        gradient_checkpointing=bool(gradient_checkpointing),
        mixed_precision="bf16" if mm.get_torch_device().type == "cuda" else "no",
        lora_rank=int(lora_rank),
    )
    try:
        config.validate(T)
    except dmd_training.DMDConfigError as e:
        raise DMDNodeError(_node_error_name(str(e))) from None
    return config


def _node_error_name(msg: str) -> str:
    """Map the core's config names onto the node's input names."""
    for core, node in (("real_guidance_scale", "guidance"), ("dfake_gen_update_ratio", "update_ratio")):
        if msg.startswith(core + ":"):
            return node + msg[len(core) :]
    return msg


def train_in_comfyui(run, steps: int, resume: bool, node_id, error: type[Exception]) -> None:
    """A node's training run (``training.run.DMDRun`` or a subclass) inside ComfyUI: resumed from its checkpoint when
    asked (a checkpoint that does not fit is ``error``), ComfyUI's progress bar and Cancel at every step, the
    status line on the node."""
    try:
        if resume:
            run.resume()
    except training_run.RunError as e:
        raise error(str(e)) from None
    pbar = comfy.utils.ProgressBar(steps, node_id=node_id)
    pbar.update_absolute(min(run.trainer.step_count, steps), steps)

    def on_step(step, total):
        pbar.update_absolute(step, total)  # in the server this also raises on Cancel
        mm.throw_exception_if_processing_interrupted()

    run.train(steps, on_step=on_step, on_status=lambda text: _progress_text(text, node_id))


def _progress_text(text: str, node_id) -> None:
    try:
        from server import PromptServer

        if node_id is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(text, node_id)
    except Exception:
        pass


NODES = [DMDTrainerNode]
