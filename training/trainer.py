"""DMD2's training loop, plain PyTorch (no ComfyUI import): ``DMDTrainer`` owns the generator and
fake-score updates (optimizers, LR warm-up, gradient clipping, the two time-scale update rule), the
GAN head's wiring, the generator's EMA, sampling and its state (``state_dict`` / ``load_state_dict``;
the run around it, checkpoint files, resume and the generator file, is ``training.run``).

The counterpart of DMD2's ``Trainer`` (tianweiy/DMD2, HEAD 8d8fa55, main/edm/train_edm.py and
main/train_sd.py; Yin et al., "Improved Distribution Matching Distillation for Fast Image Synthesis",
NeurIPS 2024). The losses it combines are the guidance functions of ``training.guidance``; its
settings are ``training.config.DMDConfig``. File:line references are to the DMD2 repository.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, fields
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..samplers import dmd as dmd_sampling
from . import gan, guidance, lora
from .batching import default_collate, to_device
from .config import DMDConfig, DMDConfigError
from .guidance import NoiseSchedule, OneStepGenerator, RegressionPairs, copy_teacher, regression_loss
from .lr import constant_with_warmup


class DMDTrainer:
    """DMD2 training loop over caller-supplied networks.

    real_score: frozen teacher, ``real_score(x, sigma, cond=...) -> x0`` (any callable; never
        backpropagated through, main/sd_guidance.py:64-67).
    generator_net: trainable denoiser (a ``copy_teacher`` copy or a ``lora.lora_copy``), wrapped in
        ``OneStepGenerator``.
    fake_score: trainable denoiser (a ``copy_teacher`` copy or a LoRA copy); run without CFG
        (DMD2 asserts ``fake_guidance_scale == 1``).
    latent_shape: shape of one latent (without batch).
    conditioning: non-empty list of conditioning items (default ``[None]``, unconditional); every
        sample draws one uniformly. uncond: the unconditional item for CFG (None = the teacher's
        unconditional branch). collate: items -> ``cond`` argument (``default_collate``).
    sigmas: the timestep table (default: the model type's, ``NoiseSchedule``).
    regression_pairs: ``RegressionPairs`` for DMD1's regression loss (used when
        ``config.regression_weight > 0``).
    real_data: "real" latents for the GAN critic (and for multi-step training without backward
        simulation): a tensor [N, *latent_shape], a ``RegressionPairs`` (its targets, e.g. teacher
        ODE outputs, with their cond_index) or a callable ``(n, torch.Generator) -> latents``.
        real_cond_index: [N] conditioning indices of a real_data tensor (needed with more than one
        conditioning item).
    progress: ``progress(step, total, losses)`` called by ``train`` after every step.

    One ``step()`` is one DMD2 iteration (main/train_sd.py:330, main/edm/train_edm.py:235): the
    generator produces a batch (with grad on generator turns, ``step % ratio == 0``, where it is
    updated with the DM loss [+ regression] [+ GAN]); then the fake score takes one denoising step
    on that batch, detached, at t ~ U{0, ..., T-1} (main/sd_guidance.py:255-310) [+ the critic's GAN
    loss, same optimizer].
    """

    def __init__(
        self,
        real_score: Callable,
        generator_net: nn.Module,
        fake_score: nn.Module,
        latent_shape: Sequence[int],
        config: DMDConfig | None = None,
        *,
        conditioning: Sequence[Any] | None = None,
        uncond: Any = None,
        collate: Callable[[Sequence[Any]], Any] | None = None,
        sigmas: torch.Tensor | None = None,
        flow_shift: float = 1.0,
        regression_pairs: RegressionPairs | None = None,
        regression_loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        real_data: Any = None,
        real_cond_index: torch.Tensor | None = None,
        progress: Callable[[int, int, dict], None] | None = None,
        device: torch.device | str | None = None,
    ):
        self.config = cfg = config if config is not None else DMDConfig()
        if not isinstance(cfg, DMDConfig):
            raise DMDConfigError(f"config: expected a DMDConfig, got {type(cfg).__name__}")
        cfg.validate()
        self.schedule = NoiseSchedule(cfg.model_type, sigmas, flow_shift)
        cfg.validate(self.schedule.num_timesteps)
        if conditioning is None:
            conditioning = [None]
        if isinstance(conditioning, (str, bytes)) or not isinstance(conditioning, Sequence) or len(conditioning) == 0:
            raise DMDConfigError(f"conditioning: expected a non-empty list of conditioning items, got {conditioning!r}")
        self.conditioning = list(conditioning)
        self.uncond = uncond
        self.collate = collate or default_collate
        self.latent_shape = tuple(int(d) for d in latent_shape)
        if not self.latent_shape or min(self.latent_shape) < 1:
            raise DMDConfigError(f"latent_shape: expected a non-empty shape of positive sizes, got {latent_shape!r}")
        if cfg.regression_weight > 0:
            if regression_pairs is None:
                raise DMDConfigError("regression_pairs: required when regression_weight > 0")
            if (
                tuple(regression_pairs.noise.shape[1:]) != self.latent_shape
                or regression_pairs.noise.shape != regression_pairs.target.shape
            ):
                raise DMDConfigError("regression_pairs: noise and target must both be [N, *latent_shape]")
            if regression_pairs.cond_index is None and len(conditioning) > 1:
                raise DMDConfigError("regression_pairs: cond_index is required with more than one conditioning item")
            if cfg.regression_loss == "lpips" and not callable(regression_loss_fn):
                raise DMDConfigError(
                    "regression_loss_fn: regression_loss 'lpips' needs a loss on latents, e.g. "
                    "training.lpips.LatentLPIPS(decode, load_lpips(vgg_weights, lin_weights))"
                )
        self.regression_loss_fn = regression_loss_fn
        if not isinstance(generator_net, nn.Module) or not isinstance(fake_score, nn.Module):
            raise DMDConfigError("generator_net: generator_net and fake_score must be torch.nn.Module")
        self.gen_timesteps = cfg.generator_timesteps()
        needs_real = cfg.use_gan or (len(self.gen_timesteps) > 1 and not cfg.backward_simulation)
        self.real_data, self.real_cond_index = self._check_real_data(real_data, real_cond_index, needs_real)
        self.pairs = regression_pairs
        self.progress = progress
        self.real_score = real_score
        self.generator = OneStepGenerator(generator_net, self.schedule, self.gen_timesteps[0])
        self.fake_score = fake_score
        if device is None:
            p = next(generator_net.parameters(), None)
            device = p.device if p is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.rng = torch.Generator(device=self.device).manual_seed(cfg.seed)
        # data parallelism (``training.distributed``): every rank draws the whole batch of ``batch_size`` from the
        # same random sequence and trains on its slice ``rank`` of ``world``; one process is rank 0 of 1
        self.rank, self.world = 0, 1
        self.reduce_log: Callable[[dict], dict] | None = None  # the step's logs -> their mean over the ranks
        self.lora = bool(lora.lora_layers(generator_net)) or bool(lora.lora_layers(fake_score))
        if cfg.gradient_checkpointing:
            gan.enable_gradient_checkpointing(generator_net)
            gan.enable_gradient_checkpointing(fake_score)

        self.gan_head = None
        self.tap = None
        if cfg.use_gan:
            self.tap = gan.FeatureTap(fake_score, cfg.gan_feature_module)
            with torch.no_grad():
                n0 = 2
                probe = self._randn_local(n0)
                s0 = self.schedule.sigma(self.schedule.num_timesteps // 2).to(self.device).expand(n0)
                cond0 = self._cond(torch.zeros(n0, dtype=torch.long))
                f = self.tap.features(self.fake_score, probe, s0, cond=cond0)
            self.gan_head = gan.GANHead(tuple(f.shape[1:])).to(self.device)

        self.build_optimizers()
        self.step_count = 0
        self.generator_steps = 0
        self.fake_steps = 0
        self.last_generator_timestep: int | None = None
        self.updating = False  # inside an iteration's optimizer updates (``step``)
        T = self.schedule.num_timesteps
        self.min_step = int(cfg.min_step_percent * T)
        self.max_step = min(int(cfg.max_step_percent * T), T - 1)

    @classmethod
    def from_teacher(
        cls,
        teacher: nn.Module,
        latent_shape: Sequence[int],
        config: DMDConfig | None = None,
        *,
        real_score: Callable | None = None,
        lora_include=None,
        lora_exclude=None,
        lora_targets=None,
        **kwargs,
    ) -> "DMDTrainer":
        """Build the generator and fake score from ``teacher`` (a denoiser module) and the trainer.

        ``config.lora_rank`` > 0: both are ``lora.lora_copy`` copies (rank, ``lora_alpha``, target
        selection by ``lora_include`` / ``lora_exclude`` name patterns and ``lora_targets`` types)
        that share the teacher's tensors; else full ``copy_teacher`` copies. The real score is
        ``real_score`` or the teacher itself (frozen: ``requires_grad_(False)``, eval mode)."""
        cfg = config if config is not None else DMDConfig()
        if not isinstance(cfg, DMDConfig):
            raise DMDConfigError(f"config: expected a DMDConfig, got {type(cfg).__name__}")
        cfg.validate()
        if not isinstance(teacher, nn.Module):
            raise DMDConfigError(f"teacher: expected a torch.nn.Module denoiser, got {type(teacher).__name__}")
        teacher.requires_grad_(False)
        teacher.eval()
        if cfg.lora_rank > 0:
            kw = {}
            if lora_targets is not None:
                kw["targets"] = tuple(lora_targets)
            gen = lora.lora_copy(
                teacher, cfg.lora_rank, cfg.lora_alpha, include=lora_include, exclude=lora_exclude, **kw
            )
            fake = lora.lora_copy(
                teacher, cfg.lora_rank, cfg.lora_alpha, include=lora_include, exclude=lora_exclude, **kw
            )
            gen.train()
            fake.train()
        else:
            gen, fake = copy_teacher(teacher), copy_teacher(teacher)
        return cls(real_score if real_score is not None else teacher, gen, fake, latent_shape, cfg, **kwargs)

    def _check_real_data(self, real_data, real_cond_index, needed: bool):
        if real_data is None:
            if needed:
                raise DMDConfigError(
                    "real_data: required when the GAN loss is on or a multi-step generator is "
                    "trained without backward simulation"
                )
            return None, None
        if isinstance(real_data, RegressionPairs):
            real_cond_index = real_data.cond_index if real_cond_index is None else real_cond_index
            real_data = real_data.target
        if isinstance(real_data, torch.Tensor):
            if tuple(real_data.shape[1:]) != self.latent_shape or real_data.shape[0] < 1:
                raise DMDConfigError(
                    f"real_data: expected a tensor [N, {', '.join(map(str, self.latent_shape))}], "
                    f"got {tuple(real_data.shape)}"
                )
            if real_cond_index is None and len(self.conditioning) > 1:
                raise DMDConfigError(
                    "real_cond_index: required for a real_data tensor with more than one conditioning item"
                )
            if real_cond_index is not None:
                real_cond_index = torch.as_tensor(real_cond_index, dtype=torch.long).reshape(-1)
                if real_cond_index.numel() != real_data.shape[0]:
                    raise DMDConfigError("real_cond_index: expected one conditioning index per real_data sample")
                if int(real_cond_index.min()) < 0 or int(real_cond_index.max()) >= len(self.conditioning):
                    raise DMDConfigError(
                        f"real_cond_index: expected indices into the conditioning list, in "
                        f"[0, {len(self.conditioning) - 1}]"
                    )
        elif not callable(real_data):
            raise DMDConfigError(
                f"real_data: expected a tensor, RegressionPairs or callable, got {type(real_data).__name__}"
            )
        return real_data, real_cond_index

    def build_optimizers(self) -> None:
        """The AdamW optimizers, their warm-up schedules and the generator's EMA over the current networks (the
        constructor's; ``training.distributed`` calls it again once it has wrapped or sharded them)."""
        cfg = self.config
        self.opt_g = torch.optim.AdamW(
            [p for p in self.generator.net.parameters() if p.requires_grad],
            lr=cfg.generator_lr,
            betas=tuple(cfg.betas),
            weight_decay=cfg.weight_decay,
        )
        self.opt_f = torch.optim.AdamW(
            self._critic_params(), lr=cfg.fake_lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
        )
        self.sched_g = constant_with_warmup(self.opt_g, cfg.warmup_steps)
        self.sched_f = constant_with_warmup(self.opt_f, cfg.warmup_steps)
        self.ema: dict[str, torch.Tensor] | None = None
        if cfg.ema_decay > 0:
            self.ema = {k: v.detach().clone() for k, v in self.generator.net.named_parameters() if v.requires_grad}

    def _critic_params(self) -> list:
        ps = [p for p in self.fake_score.parameters() if p.requires_grad]
        if self.gan_head is not None:
            ps += list(self.gan_head.parameters())
        return ps

    # ---- random draws (all from self.rng, so a resumed run replays exactly)

    def _randn(self, n: int) -> torch.Tensor:
        """n draws of this rank: its slice of ``n * world`` draws (the whole batch's)."""
        x = torch.randn((n * self.world,) + self.latent_shape, generator=self.rng, device=self.device)
        return x if self.world == 1 else x[self.rank * n : (self.rank + 1) * n]

    def _randn_local(self, n: int) -> torch.Tensor:
        g = torch.Generator(device=self.device).manual_seed(12345)
        return torch.randn((n,) + self.latent_shape, generator=g, device=self.device)

    def _randint(self, low: int, high: int, n: int, shared: bool = False) -> torch.Tensor:
        """n draws of this rank (its slice of the whole batch's), or with ``shared`` n draws every rank shares."""
        w = 1 if shared else self.world
        x = torch.randint(low, high, (n * w,), generator=self.rng, device=self.device)
        return x if w == 1 else x[self.rank * n : (self.rank + 1) * n]

    def sample_dm_timesteps(self, n: int) -> torch.Tensor:
        """t ~ U{int(0.02 T), ..., int(0.98 T)} (``randint(min_step, max_step + 1)``)."""
        return self._randint(self.min_step, self.max_step + 1, n)

    def _cond(self, idx: torch.Tensor):
        items = [self.conditioning[int(i)] for i in idx.tolist()]
        return to_device(self.collate(items), self.device)

    def _uncond(self, n: int):
        return to_device(self.collate([self.uncond] * n), self.device)

    def _autocast(self):
        if self.config.mixed_precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- generator

    def _sigma_of(self, t: int, n: int) -> torch.Tensor:
        return self.schedule.sigma(int(t)).to(self.device).expand(n).clone()

    def generate(self, z: torch.Tensor, cond: Any, grad: bool) -> torch.Tensor:
        """The generator's training output for noise z: one step at the conditioning timestep, or
        (multi-step) its x0 at a random step of ``denoising_timesteps`` (one draw per batch, as
        DMD2's ``randint(0, num_denoising_step, (1,))``), whose input comes from backward simulation
        (the current generator run without grad from pure noise through the earlier steps,
        re-noising its x0 with fresh noise at each next step; the first step is pure noise) or from
        ``real_data`` noised to that step. Sets ``last_generator_timestep``."""
        ts = self.gen_timesteps
        n = z.shape[0]
        net = self.generator.net
        ctx = torch.enable_grad() if grad else torch.no_grad()
        if len(ts) == 1:
            self.last_generator_timestep = ts[0]
            with ctx, self._autocast():
                return self.generator(z, cond).float()
        sel = int(self._randint(0, len(ts), 1, shared=True))
        with torch.no_grad(), self._autocast():
            if sel == 0:
                x = self.schedule.generator_input(z, float(self.schedule.sigma(ts[0])))
            elif self.config.backward_simulation:
                x = self.schedule.generator_input(z, float(self.schedule.sigma(ts[0])))
                for i in range(sel):
                    x0 = net(x, self._sigma_of(ts[i], n).to(x.dtype), cond=cond).float()
                    x = self.schedule.add_noise(x0, self._randn(n), self._sigma_of(ts[i + 1], n))
            else:
                real, _ = self._real_batch(n)
                x = self.schedule.add_noise(real, self._randn(n), self._sigma_of(ts[sel], n))
        self.last_generator_timestep = ts[sel]
        with ctx, self._autocast():
            return net(x, self._sigma_of(ts[sel], n).to(x.dtype), cond=cond).float()

    def _real_batch(self, n: int):
        if callable(self.real_data) and not isinstance(self.real_data, torch.Tensor):
            x = self.real_data(n * self.world, self.rng).to(self.device)
            return (x if self.world == 1 else x[self.rank * n : (self.rank + 1) * n]), None
        idx = self._randint(0, self.real_data.shape[0], n).cpu()
        ci = self.real_cond_index[idx] if self.real_cond_index is not None else None
        return self.real_data[idx].to(self.device), ci

    # ---- losses

    def dm_loss(self, x: torch.Tensor, cond: Any, uncond: Any) -> tuple[torch.Tensor, dict]:
        """DM surrogate loss of generator samples x (with grad) and its logs (``guidance.dm_loss`` at
        t ~ U{min_step, ..., max_step})."""
        cfg = self.config
        n = x.shape[0]
        t = self.sample_dm_timesteps(n)
        sigma = self.schedule.sigma(t.cpu()).to(self.device)
        noise = self._randn(n)
        fake = self.fake_score if cfg.use_fake_score else None
        return guidance.dm_loss(
            self.real_score, fake, self.schedule, x, sigma, noise, cond, uncond, cfg.real_guidance_scale, self._autocast
        )

    def fake_loss(self, x: torch.Tensor, cond: Any) -> torch.Tensor:
        """Denoising loss of the fake score on detached generator samples, t ~ U{0, ..., T-1}
        (``guidance.fake_loss``)."""
        n = x.shape[0]
        t = self._randint(0, self.schedule.num_timesteps, n)
        sigma = self.schedule.sigma(t.cpu()).to(self.device)
        noise = self._randn(n)
        return guidance.fake_loss(
            self.fake_score,
            self.schedule,
            x,
            sigma,
            noise,
            cond,
            self.config.weighting(),
            self.config.sigma_data,
            self._autocast,
        )

    def gan_logits(self, x: torch.Tensor, cond: Any) -> torch.Tensor:
        """Critic logits of latents x noised at t ~ U{0, ..., diffusion_gan_max_timestep - 1}
        (``guidance.gan_logits``: fake-score features at ``gan_feature_module``, ``GANHead``)."""
        n = x.shape[0]
        hi = min(self.config.diffusion_gan_max_timestep, self.schedule.num_timesteps)
        t = self._randint(0, hi, n)
        sigma = self.schedule.sigma(t.cpu()).to(self.device)
        noise = self._randn(n)
        return guidance.gan_logits(
            self.fake_score, self.tap, self.gan_head, self.schedule, x, sigma, noise, cond, self._autocast
        )

    # ---- one iteration

    def step(self) -> dict:
        """One DMD2 iteration; returns the losses as floats (keys present only when computed)."""
        cfg = self.config
        n = cfg.batch_size // self.world  # this rank's part of the batch
        gen_turn = self.step_count % cfg.dfake_gen_update_ratio == 0
        cond_idx = self._randint(0, len(self.conditioning), n)
        cond = self._cond(cond_idx)
        uncond = self._uncond(n) if float(cfg.real_guidance_scale) != 1.0 else None
        z = self._randn(n)
        out: dict = {"step": self.step_count}
        g_params = [p for p in self.generator.parameters() if p.requires_grad]
        # True from the first optimizer update of this iteration to its end: a state saved after an error
        # in between would hold a half-done iteration
        self.updating = False
        if gen_turn:
            self.generator.train()
            x = self.generate(z, cond, grad=True)
            out["generator_timestep"] = self.last_generator_timestep
            loss_dm, log = self.dm_loss(x, cond, uncond)
            loss = loss_dm
            out["loss_dm"] = float(loss_dm.detach())
            out.update(log)
            if cfg.regression_weight > 0:
                m = (cfg.regression_batch_size or cfg.batch_size) // self.world
                idx = self._randint(0, self.pairs.noise.shape[0], m).cpu()
                pz = self.pairs.noise[idx].to(self.device)
                ci = (
                    self.pairs.cond_index[idx]
                    if self.pairs.cond_index is not None
                    else torch.zeros(m, dtype=torch.long)
                )
                pc = self._cond(ci)
                with self._autocast():
                    pred = self.generator(pz, pc).float()
                target = self.pairs.target[idx].to(pred.device, pred.dtype)
                if cfg.regression_loss == "lpips":
                    loss_reg = self.regression_loss_fn(pred, target)
                else:
                    loss_reg = regression_loss(pred, target, cfg.regression_loss)
                loss = loss + cfg.regression_weight * loss_reg
                out["loss_reg"] = float(loss_reg.detach())
            if cfg.gen_cls_loss_weight > 0:
                loss_gan = gan.gen_gan_loss(self.gan_logits(x, cond))
                loss = loss + cfg.gen_cls_loss_weight * loss_gan
                out["loss_gen_cls"] = float(loss_gan.detach())
            # gradients w.r.t. the generator only: the critic is not updated by the generator's
            # losses (DMD2's generator_turn sets guidance_model.requires_grad_(False); toggling
            # requires_grad would break gradient checkpointing's recomputation, autograd.grad does not)
            self.opt_g.zero_grad(set_to_none=True)
            if self.world == 1:
                grads = torch.autograd.grad(loss, g_params, allow_unused=True)
                self.updating = True
                for p, gr in zip(g_params, grads):
                    p.grad = gr
            else:
                # through DDP / FSDP, whose hooks average the gradients over the ranks (autograd.grad would bypass
                # them); what reaches the critic here is discarded by its own zero_grad below
                loss.backward()
                self.updating = True
            out["grad_norm_g"] = float(torch.nn.utils.clip_grad_norm_(g_params, cfg.max_grad_norm))
            self.opt_g.step()
            self.sched_g.step()
            self.opt_g.zero_grad(set_to_none=True)
            self.generator_steps += 1
            if self.ema is not None:
                with torch.no_grad():
                    for k, v in self.generator.net.named_parameters():
                        if k in self.ema:
                            self.ema[k].lerp_(v.detach(), 1 - cfg.ema_decay)
            x = x.detach()
        else:
            x = self.generate(z, cond, grad=False)
        if cfg.use_fake_score and cfg.train_fake_score:
            f_params = self._critic_params()
            self.fake_score.train()
            loss_f = self.fake_loss(x, cond)
            total = loss_f
            if cfg.guidance_cls_loss_weight > 0:
                real, rci = self._real_batch(n)
                rcond = self._cond(rci) if rci is not None else cond
                loss_c = gan.critic_gan_loss(self.gan_logits(x, cond), self.gan_logits(real, rcond))
                total = total + cfg.guidance_cls_loss_weight * loss_c
                out["loss_guidance_cls"] = float(loss_c.detach())
            self.opt_f.zero_grad(set_to_none=True)
            total.backward()
            self.updating = True
            out["grad_norm_f"] = float(torch.nn.utils.clip_grad_norm_(f_params, cfg.max_grad_norm))
            self.opt_f.step()
            self.sched_f.step()
            self.opt_f.zero_grad(set_to_none=True)
            self.fake_steps += 1
            out["loss_fake"] = float(loss_f.detach())
        self.step_count += 1
        self.updating = False
        return out if self.reduce_log is None else self.reduce_log(out)

    def train(
        self,
        steps: int,
        progress: Callable[[int, int, dict], None] | None = None,
        should_stop: Callable[[int], bool] | None = None,
    ) -> list[dict]:
        """Run until ``step_count == steps`` (a resumed trainer continues where it stopped).

        ``progress(step, steps, losses)`` (or the constructor's) is called after every step; it may
        raise to interrupt (as ComfyUI's ``throw_exception_if_processing_interrupted`` does).
        ``should_stop(step)`` returning True stops cleanly after that step. Returns the step logs.
        """
        hook = progress or self.progress
        logs = []
        while self.step_count < steps:
            out = self.step()
            logs.append(out)
            if hook is not None:
                hook(self.step_count, steps, out)
            if should_stop is not None and should_stop(self.step_count):
                break
        return logs

    @contextlib.contextmanager
    def ema_weights(self, use_ema: bool | None = None):
        """Context in which the generator carries its EMA weights (when ``ema_decay`` > 0 and
        ``use_ema`` is not False); the trained weights are restored on exit."""
        if self.ema is None or use_ema is False:
            yield
            return
        params = dict(self.generator.net.named_parameters())
        saved = {k: params[k].detach().clone() for k in self.ema}
        with torch.no_grad():
            for k, v in self.ema.items():
                params[k].copy_(v)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in saved.items():
                    params[k].copy_(v)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        cond: Any = None,
        generator: torch.Generator | None = None,
        timesteps: Sequence[int] | None = None,
        use_ema: bool | None = None,
    ) -> torch.Tensor:
        """n samples (noise from ``generator`` or a fresh one seeded 0; the trainer's RNG is not
        touched): one step at the conditioning timestep, or the multi-step generator's
        ``denoising_timesteps`` (``samplers.dmd.sample_dmd``), or the given ``timesteps``. With
        ``ema_decay`` > 0 the EMA weights are used unless ``use_ema`` is False."""
        with self.ema_weights(use_ema):
            return self._sample(n, cond, generator, timesteps)

    def _sample(self, n, cond, generator, timesteps):
        g = generator if generator is not None else torch.Generator(device=self.device).manual_seed(0)
        z = torch.randn((n,) + self.latent_shape, generator=g, device=self.device)
        self.generator.eval()
        ts = list(timesteps) if timesteps is not None else self.gen_timesteps
        if len(ts) == 1 and ts[0] == self.generator.conditioning_timestep:
            with self._autocast():
                return self.generator(z, cond).float()
        sig = dmd_sampling.timesteps_to_sigmas(ts, self.schedule.sigmas).to(self.device)
        with self._autocast():
            return dmd_sampling.sample_dmd(
                self.generator.net, z, sig, self.config.model_type, extra_args={"cond": cond}, generator=g
            ).float()

    # ---- state (the checkpoint file, resume and the generator file are training.run's)

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly: networks (LoRA factors only for
        LoRA networks), GAN head, optimizers, LR schedules, counters and the random generator's
        state (plus the config, checked on load)."""
        st = {
            "config": asdict(self.config),
            "step": self.step_count,
            "generator_steps": self.generator_steps,
            "fake_steps": self.fake_steps,
            "generator": lora.trainable_state(self.generator.net),
            "fake_score": lora.trainable_state(self.fake_score),
            "opt_g": self.opt_g.state_dict(),
            "opt_f": self.opt_f.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_f": self.sched_f.state_dict(),
            "rng": self.rng.get_state(),
            "lora": self.lora,
        }
        if self.gan_head is not None:
            st["gan_head"] = self.gan_head.state_dict()
        if self.ema is not None:
            st["ema"] = {k: v.clone() for k, v in self.ema.items()}
        return st

    def load_state_dict(self, state: dict) -> None:
        saved = dict(state.get("config", {}))
        mine = asdict(self.config)
        for d in (saved, mine):
            for k in ("betas", "denoising_timesteps"):
                if d.get(k) is not None:
                    d[k] = tuple(d[k])
        diff = [f.name for f in fields(DMDConfig) if f.name in saved and saved[f.name] != mine[f.name]]
        if diff:
            raise DMDConfigError(f"state: checkpoint config differs from this trainer's in {diff}")
        for net, sd in ((self.generator.net, state["generator"]), (self.fake_score, state["fake_score"])):
            if not lora.load_trainable_state(net, sd):
                raise DMDConfigError("state: the checkpoint's LoRA layers differ from this trainer's")
        if self.gan_head is not None:
            self.gan_head.load_state_dict(state["gan_head"])
        if self.ema is not None:
            if set(state.get("ema", {})) != set(self.ema):
                raise DMDConfigError("state: the checkpoint has no EMA weights matching this generator")
            for k, v in state["ema"].items():
                self.ema[k].copy_(v)
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_f.load_state_dict(state["opt_f"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_f.load_state_dict(state["sched_f"])
        # a CPU ByteTensor: get_state() gives one even for a CUDA generator, but torch.load with
        # map_location="cuda" moves it, and set_state refuses anything else
        self.rng.set_state(state["rng"].cpu())
        self.step_count = int(state["step"])
        self.generator_steps = int(state["generator_steps"])
        self.fake_steps = int(state["fake_steps"])
