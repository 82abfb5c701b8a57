"""Settings of one DMD2 run (``DMDConfig``) and the error every DMD input check raises (``DMDConfigError``).

Plain Python (no torch, no ComfyUI). Defaults and ranges follow the official DMD2 code (tianweiy/DMD2,
HEAD 8d8fa55; Yin et al., "Improved Distribution Matching Distillation for Fast Image Synthesis",
NeurIPS 2024) and DMD (Yin et al., "One-step Diffusion with Distribution Matching Distillation",
CVPR 2024); file:line references are to that repository.
"""

from __future__ import annotations

from dataclasses import dataclass

MODEL_TYPES = ("eps", "v", "ve", "flow")
FAKE_WEIGHTINGS = ("auto", "eps", "v", "edm", "flow", "x0")
REGRESSION_LOSSES = ("pseudo_huber", "l2", "lpips")


class DMDConfigError(ValueError):
    """An input of the DMD trainer is out of range; the message starts with the input's name."""


@dataclass
class DMDConfig:
    """Settings of one DMD2 run. Defaults are the official SD1.5 recipe where one exists
    (experiments/sdv1.5/laion6.25_sd_baseline_8node_guidance1.75_lr1e-5_seed10_dfake10_from_scratch.sh).

    model_type: "eps" | "v" | "ve" | "flow" (see ``training.guidance``).
    conditioning_timestep: timestep the one-step generator is evaluated at; 999 (DMD2 default
        ``--conditioning_timestep``; the released 1-step SDXL model uses 399), in [0, T).
    real_guidance_scale: CFG scale of the real score (DMD2: SD1.5 1.75, SDXL 8, ImageNet 1).
    min_step_percent, max_step_percent: DM timestep range, t ~ U{int(0.02 T), ..., int(0.98 T)}
        (main/sd_guidance.py:178-241, DMD's DreamFusion convention).
    dfake_gen_update_ratio: fake-score updates per generator update (TTUR; DMD2 5 for ImageNet and
        SDXL, 10 for SD1.5; DMD1 used 1).
    batch_size: generator samples per iteration.
    generator_lr, fake_lr: AdamW learning rates (DMD2 SD1.5 1e-5 both).
    betas, weight_decay: AdamW (0.9, 0.999), 0.01 for both networks (main/train_sd.py).
    warmup_steps: diffusers ``constant_with_warmup``: lr * min(1, k / warmup_steps) at the k-th
        optimizer step (k from 0), 500 in DMD2; each optimizer has its own schedule.
    max_grad_norm: ``clip_grad_norm_`` of each network's gradient (10 in DMD2).
    fake_loss_weighting: "auto" (eps -> "eps", v -> "v", ve -> "edm", flow -> "flow"), or one of
        "eps", "v", "edm", "flow", "x0" (``NoiseSchedule.fake_loss_weight``).
    sigma_data: data standard deviation of the "edm" weighting (0.5 in EDM).
    regression_weight: lambda_reg of DMD1's regression loss on teacher ODE pairs (DMD1 0.25; 0 =
        off, DMD2). regression_loss: "pseudo_huber" (iCT, Song and Dhariwal, ICLR 2024:
        c = 0.00054 sqrt(d); the offline stand-in for LPIPS), "l2" (mean squared error), or "lpips"
        (DMD1's loss: LPIPS on decoded images; the trainer then needs ``regression_loss_fn``, e.g.
        ``training.lpips.LatentLPIPS`` built from weight files the user has). regression_batch_size:
        pairs per generator update (default ``batch_size``).
    use_fake_score, train_fake_score: ablation switches for the control runs only
        (``tests/unit/test_dmd.py``): use_fake_score=False drops the fake score from the DM gradient
        ("real score only", SDS-like);
        train_fake_score=False keeps the fake score frozen at its initialisation.
    seed: seed of the trainer's random generator (all noise, timesteps, conditioning draws).

    DMD2 options (flags of main/train_sd.py:656-677), all off by default:
    gen_cls_loss_weight, guidance_cls_loss_weight: the GAN head (``gan.GANHead``) on the fake
        score's features (DMD2: gen 3e-3 ImageNet / 1e-3 SD1.5 / 5e-3 SDXL, guidance 1e-2). The
        generator adds ``gen_cls_loss_weight * softplus(-D(G(z)))``, the fake-score update
        ``guidance_cls_loss_weight * (softplus(D(fake)) + softplus(-D(real)))`` (non-saturating),
        both inputs noised at t ~ U{0, ..., diffusion_gan_max_timestep - 1}. The GAN is on when
        either weight is > 0; it needs ``gan_feature_module`` (dotted name of the fake score's
        submodule whose output is the feature map, e.g. the UNet bottleneck) and the trainer's
        ``real_data``.
    denoising_timesteps: None (one step at ``conditioning_timestep``) or the multi-step generator's
        timesteps, e.g. (999, 749, 499, 249) (DMD2 ``--denoising --num_denoising_step 4``).
    backward_simulation: multi-step only: the generator's training input at a random step of the
        list is made by running the current generator from pure noise through the earlier steps
        without grad, re-noising with fresh noise (DMD2 ``--backward_simulation``,
        main/sd_unified_model.py:128-162 and 186-189); False noises ``real_data`` to that step
        instead (DMD2 without backward simulation).
    mixed_precision: "no" or "bf16": ``torch.autocast(bfloat16)`` around the network calls on CUDA
        (DMD2 ``--use_fp16``); a no-op on CPU.
    gradient_checkpointing: recompute the activations of each block of the generator and fake
        score in backward (``enable_gradient_checkpointing``; DMD2 ``--gradient_checkpointing``).
    lora_rank, lora_alpha: used by ``DMDTrainer.from_teacher``: > 0 makes the generator and fake
        score LoRA copies of the teacher sharing its weights (``training.lora``; DMD2 SDXL LoRA:
        rank 64, alpha 8); 0 = full-weight copies. Checkpoints of LoRA networks hold only the LoRA
        factors (plus optimizer state).

    Pack option (not in DMD2's training loop, which has no EMA; NVlabs/FastGen uses one):
    ema_decay: > 0 keeps an exponential moving average of the generator's trainable weights,
        updated after every generator step (ema = d * ema + (1 - d) * w); ``sample`` and
        ``training.run.DMDRun.save_generator`` then use the averaged weights (``use_ema=False`` for
        the raw ones).
        0 = off (faithful).
    """

    model_type: str = "eps"
    conditioning_timestep: int = 999
    real_guidance_scale: float = 1.75
    min_step_percent: float = 0.02
    max_step_percent: float = 0.98
    dfake_gen_update_ratio: int = 10
    batch_size: int = 1
    generator_lr: float = 1e-5
    fake_lr: float = 1e-5
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.01
    warmup_steps: int = 500
    max_grad_norm: float = 10.0
    fake_loss_weighting: str = "auto"
    sigma_data: float = 0.5
    regression_weight: float = 0.0
    regression_loss: str = "pseudo_huber"
    regression_batch_size: int | None = None
    use_fake_score: bool = True
    train_fake_score: bool = True
    seed: int = 0
    gen_cls_loss_weight: float = 0.0
    guidance_cls_loss_weight: float = 0.0
    gan_feature_module: str | None = None
    diffusion_gan_max_timestep: int = 1000
    denoising_timesteps: tuple | None = None
    backward_simulation: bool = True
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    lora_rank: int = 0
    lora_alpha: float | None = None
    ema_decay: float = 0.0

    def validate(self, num_timesteps: int | None = None) -> None:
        def err(name, msg):
            raise DMDConfigError(f"{name}: {msg}, got {getattr(self, name)!r}")

        if self.model_type not in MODEL_TYPES:
            err("model_type", f"expected one of {MODEL_TYPES}")
        if isinstance(self.conditioning_timestep, bool) or not isinstance(self.conditioning_timestep, int):
            err("conditioning_timestep", "expected an integer timestep")
        if num_timesteps is not None and not 0 <= self.conditioning_timestep < num_timesteps:
            err("conditioning_timestep", f"expected an integer in [0, {num_timesteps - 1}]")
        if not self.real_guidance_scale >= 0:
            err("real_guidance_scale", "expected a number >= 0")
        if not 0 <= self.min_step_percent <= self.max_step_percent <= 1:
            err("min_step_percent", "expected 0 <= min_step_percent <= max_step_percent <= 1")
        if not (isinstance(self.dfake_gen_update_ratio, int) and self.dfake_gen_update_ratio >= 1):
            err("dfake_gen_update_ratio", "expected an integer >= 1")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            err("batch_size", "expected an integer >= 1")
        for name in ("generator_lr", "fake_lr"):
            if not getattr(self, name) > 0:
                err(name, "expected a number > 0")
        if not self.weight_decay >= 0:
            err("weight_decay", "expected a number >= 0")
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            err("warmup_steps", "expected an integer >= 0")
        if not self.max_grad_norm > 0:
            err("max_grad_norm", "expected a number > 0")
        if self.fake_loss_weighting not in FAKE_WEIGHTINGS:
            err("fake_loss_weighting", f"expected one of {FAKE_WEIGHTINGS}")
        if not self.sigma_data > 0:
            err("sigma_data", "expected a number > 0")
        if not self.regression_weight >= 0:
            err("regression_weight", "expected a number >= 0")
        if self.regression_loss not in REGRESSION_LOSSES:
            err("regression_loss", f"expected one of {REGRESSION_LOSSES}")
        if self.regression_batch_size is not None and not (
            isinstance(self.regression_batch_size, int) and self.regression_batch_size >= 1
        ):
            err("regression_batch_size", "expected None or an integer >= 1")

        for name in ("gen_cls_loss_weight", "guidance_cls_loss_weight"):
            if not getattr(self, name) >= 0:
                err(name, "expected a number >= 0")
        if self.use_gan and not (isinstance(self.gan_feature_module, str) and self.gan_feature_module):
            err("gan_feature_module", "expected the dotted name of a fake-score submodule when the GAN loss is on")
        if not (isinstance(self.diffusion_gan_max_timestep, int) and self.diffusion_gan_max_timestep >= 1):
            err("diffusion_gan_max_timestep", "expected an integer >= 1")
        if self.denoising_timesteps is not None:
            ts = self.denoising_timesteps
            ok = (
                isinstance(ts, (tuple, list))
                and len(ts) >= 1
                and all(isinstance(t, int) and not isinstance(t, bool) for t in ts)
            )
            ok = ok and all(b < a for a, b in zip(ts, ts[1:])) and min(ts) >= 0
            if ok and num_timesteps is not None:
                ok = max(ts) < num_timesteps
            if not ok:
                err("denoising_timesteps", "expected None or strictly decreasing integer timesteps in [0, T)")
        if self.mixed_precision not in ("no", "bf16"):
            err("mixed_precision", "expected 'no' or 'bf16'")
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            err("lora_rank", "expected an integer >= 0 (0 = full weights)")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            err("lora_alpha", "expected None or a number > 0")
        if not 0 <= self.ema_decay < 1:
            err("ema_decay", "expected a number in [0, 1) (0 = off)")

    @property
    def use_gan(self) -> bool:
        return self.gen_cls_loss_weight > 0 or self.guidance_cls_loss_weight > 0

    def generator_timesteps(self) -> list[int]:
        """The generator's timesteps: ``denoising_timesteps`` or [conditioning_timestep]."""
        if self.denoising_timesteps is None:
            return [int(self.conditioning_timestep)]
        return [int(t) for t in self.denoising_timesteps]

    def weighting(self) -> str:
        if self.fake_loss_weighting != "auto":
            return self.fake_loss_weighting
        return {"eps": "eps", "v": "v", "ve": "edm", "flow": "flow"}[self.model_type]
