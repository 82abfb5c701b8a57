"""Diffusion fine-tuning restricted to a timestep range: the training side of PanGu-Draw's time-decoupled
experts (plain PyTorch, no ComfyUI import).

PanGu-Draw (Lu et al., arXiv 2312.16486, section 3.1, "time-decoupled training") splits a text-to-image model by
timestep into a *structure* generator, trained on t >= T_struct, and a *texture* generator, trained on t < T_struct,
each at its own resolution and on its own data. ``FinetuneTrainer`` is one such expert's training: the ordinary
denoising loss (the x0 squared error weighted as the model type's own loss, ``guidance.fake_loss``, the same loss
the DMD trainer trains its fake score with) at t ~ U{timestep_min, ..., timestep_max} on the caller's latents at
the expert's resolution, with optional dropout of the conditioning to the unconditional item (so the expert keeps
a CFG branch). The network is a LoRA copy (``lora.lora_copy``) or a trainable full copy.

* ``FinetuneRun``: the resumable run, ``training.run.DMDRun``'s loop, checkpoints, interrupt-safe save and
  resume checks around a ``FinetuneTrainer`` (only the checkpoint's keys differ).
* ``expert_state_dict`` / ``write_expert``: the result as a file ComfyUI's LoraLoader reads: LoRA factors in the
  kohya layout, or, for full weights, the difference to the base as ``<module>.diff`` / ``.diff_b`` tensors (the
  "diff" patches of ``comfy/lora.py``, which core's TrainLoraNode also writes for 1-D weights and biases).
* ``expert_ranges``: the two experts' timestep ranges for a T_struct; ``train_cost``: latent pixels x samples.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import guidance, lora
from . import run as training_run
from .batching import default_collate, to_device
from .lr import constant_with_warmup

log = logging.getLogger("comfyui_tempo")

MODEL_TYPES = ("eps", "v", "flow")
WEIGHTINGS = ("auto", "eps", "v", "flow", "edm", "x0")
CHECKPOINT_KEYS = ("config", "step", "net", "opt", "sched", "rng")
METADATA_KEY = "tempo_expert"


class FinetuneError(ValueError):
    """A fine-tuning input is out of range; the message starts with the input's name."""


@dataclass
class FinetuneConfig:
    """One expert's training settings. ``timestep_min`` / ``timestep_max``: the trained range, both included
    (the structure expert of T_struct = 500: 500..999; the texture expert: 0..499)."""

    model_type: str = "eps"
    timestep_min: int = 0
    timestep_max: int = 999
    batch_size: int = 4
    lr: float = 1e-4
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    uncond_dropout: float = 0.0
    lora_rank: int = 0
    lora_alpha: float | None = None
    weighting: str = "auto"
    sigma_data: float = 0.5
    seed: int = 0
    mixed_precision: str = "no"

    def loss_weighting(self) -> str:
        return self.weighting if self.weighting != "auto" else self.model_type

    def validate(self, num_timesteps: int | None = None) -> "FinetuneConfig":
        def integer(name, lo, hi=None):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
                rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise FinetuneError(f"{name}: expected an integer {rng}, got {v!r}")

        if self.model_type not in MODEL_TYPES:
            raise FinetuneError(f"model_type: expected one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.weighting not in WEIGHTINGS:
            raise FinetuneError(f"weighting: expected one of {WEIGHTINGS}, got {self.weighting!r}")
        top = (num_timesteps - 1) if num_timesteps is not None else None
        integer("timestep_min", 0, top)
        integer("timestep_max", 0, top)
        if self.timestep_max < self.timestep_min:
            raise FinetuneError(
                f"timestep_max: expected >= timestep_min ({self.timestep_min}), got {self.timestep_max} "
                "(the range includes both ends)"
            )
        integer("batch_size", 1)
        integer("warmup_steps", 0)
        integer("lora_rank", 0)
        integer("seed", 0)
        for name in ("lr", "max_grad_norm"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise FinetuneError(f"{name}: expected a number > 0, got {v!r}")
        if not 0.0 <= float(self.uncond_dropout) < 1.0:
            raise FinetuneError(f"uncond_dropout: expected a number in [0, 1), got {self.uncond_dropout!r}")
        if self.mixed_precision not in ("no", "bf16"):
            raise FinetuneError(f"mixed_precision: expected 'no' or 'bf16', got {self.mixed_precision!r}")
        return self


def expert_ranges(t_struct: int, num_timesteps: int = 1000) -> dict[str, tuple[int, int]]:
    """{"structure": (t_struct, T - 1), "texture": (0, t_struct - 1)}: PanGu-Draw's split at T_struct (the
    structure expert serves t >= T_struct, as the Time-Decoupled Sampler's switch does)."""
    if isinstance(t_struct, bool) or not isinstance(t_struct, int) or not 1 <= t_struct <= num_timesteps - 1:
        raise FinetuneError(f"t_struct: expected an integer in [1, {num_timesteps - 1}], got {t_struct!r}")
    return {"structure": (t_struct, num_timesteps - 1), "texture": (0, t_struct - 1)}


def train_cost(steps: int, batch_size: int, latent_shape: Sequence[int]) -> int:
    """Training compute as latent pixels x samples: steps x batch x H x W (a convolutional UNet's FLOPs per sample
    are about proportional to its pixels)."""
    return int(steps) * int(batch_size) * int(latent_shape[-2]) * int(latent_shape[-1])


def resize_latents(latents: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Latents [N, C, H, W] at (h, w) latent pixels in latent space: area averaging down, bilinear up (the
    through-pixels route, decode / resize / encode, is ``bridges.core.bridge_latent``)."""
    h, w = int(size[0]), int(size[1])
    if tuple(latents.shape[-2:]) == (h, w):
        return latents
    down = h <= latents.shape[-2] and w <= latents.shape[-1]
    if down:
        return F.interpolate(latents.float(), size=(h, w), mode="area").to(latents.dtype)
    return F.interpolate(latents.float(), size=(h, w), mode="bilinear", align_corners=False).to(latents.dtype)


class FinetuneTrainer:
    """Denoising fine-tuning of ``net`` (``net(x, sigma, cond=...) -> x0``, k-diffusion convention) on ``latents``
    at t ~ U{timestep_min, ..., timestep_max}.

    latents: [N, *latent_shape] clean (model-space) latents at the expert's resolution.
    conditioning: the conditioning items (default ``[None]``); cond_index: [N] the item of each latent (may be
        None with one item). uncond: the unconditional item that ``uncond_dropout`` swaps in. collate: items ->
        the ``cond`` argument (``default_collate``). sigmas: the ascending timestep table (default the model type's).
    """

    def __init__(
        self,
        net: nn.Module,
        latents: torch.Tensor,
        config: FinetuneConfig | None = None,
        *,
        conditioning: Sequence[Any] | None = None,
        cond_index: torch.Tensor | None = None,
        uncond: Any = None,
        collate: Callable[[Sequence[Any]], Any] | None = None,
        sigmas: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ):
        self.config = cfg = config if config is not None else FinetuneConfig()
        if not isinstance(cfg, FinetuneConfig):
            raise FinetuneError(f"config: expected a FinetuneConfig, got {type(cfg).__name__}")
        try:
            self.schedule = guidance.NoiseSchedule(cfg.model_type, sigmas)
        except ValueError as e:
            raise FinetuneError(str(e)) from None
        cfg.validate(self.schedule.num_timesteps)
        if not isinstance(net, nn.Module):
            raise FinetuneError(f"net: expected a torch.nn.Module denoiser, got {type(net).__name__}")
        self.params = [p for p in net.parameters() if p.requires_grad]
        if not self.params:
            raise FinetuneError("net: the network has no trainable parameter (a LoRA copy or a trainable copy)")
        if not isinstance(latents, torch.Tensor) or latents.ndim < 3 or latents.shape[0] < 1:
            raise FinetuneError(
                f"latents: expected a tensor [N, C, H, W] of at least one latent, got "
                f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}"
            )
        if not torch.isfinite(latents).all():
            raise FinetuneError("latents: the latents hold NaN or infinite values")
        conditioning = [None] if conditioning is None else list(conditioning)
        if not conditioning:
            raise FinetuneError("conditioning: expected a non-empty list of conditioning items")
        n = latents.shape[0]
        if cond_index is None:
            if len(conditioning) == 1:
                cond_index = torch.zeros(n, dtype=torch.long)
            elif len(conditioning) == n:
                cond_index = torch.arange(n)
            else:
                raise FinetuneError(
                    f"conditioning: {len(conditioning)} items for {n} latents; give one item, one per latent, "
                    "or cond_index"
                )
        cond_index = torch.as_tensor(cond_index, dtype=torch.long).reshape(-1).cpu()
        if cond_index.numel() != n:
            raise FinetuneError(f"cond_index: expected {n} indices (one per latent), got {cond_index.numel()}")
        if int(cond_index.min()) < 0 or int(cond_index.max()) >= len(conditioning):
            raise FinetuneError(f"cond_index: expected indices in [0, {len(conditioning) - 1}]")
        if cfg.uncond_dropout > 0 and uncond is None and conditioning != [None]:
            raise FinetuneError("uncond: uncond_dropout > 0 needs the unconditional item (the empty prompt)")
        self.net = net
        self.latents = latents.detach()
        self.latent_shape = tuple(int(d) for d in latents.shape[1:])
        self.conditioning = conditioning
        self.cond_index = cond_index
        self.uncond = uncond
        self.collate = collate or default_collate
        if device is None:
            device = self.params[0].device
        self.device = torch.device(device)
        self.rng = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.lora = bool(lora.lora_layers(net))
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.sched = constant_with_warmup(self.opt, cfg.warmup_steps)
        self.step_count = 0
        self.updating = False  # inside the optimizer update of a step (training.run's interrupt-safe save)

    def _randint(self, low: int, high: int, n: int) -> torch.Tensor:
        return torch.randint(low, high, (n,), generator=self.rng, device=self.device)

    def _autocast(self):
        if self.config.mixed_precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sample_timesteps(self, n: int) -> torch.Tensor:
        """t ~ U{timestep_min, ..., timestep_max}."""
        return self._randint(self.config.timestep_min, self.config.timestep_max + 1, n)

    def step(self) -> dict:
        """One optimizer step on a random batch; returns {"loss_denoise", "grad_norm", "step"}."""
        cfg = self.config
        b = cfg.batch_size
        idx = self._randint(0, self.latents.shape[0], b).cpu()
        x0 = self.latents[idx].to(self.device).float()
        items = [self.conditioning[int(i)] for i in self.cond_index[idx].tolist()]
        if cfg.uncond_dropout > 0:
            drop = torch.rand(b, generator=self.rng, device=self.device).cpu() < cfg.uncond_dropout
            items = [self.uncond if d else it for it, d in zip(items, drop.tolist())]
        cond = to_device(self.collate(items), self.device)
        t = self.sample_timesteps(b)
        sigma = self.schedule.sigma(t.cpu()).to(self.device)
        noise = torch.randn(x0.shape, generator=self.rng, device=self.device)
        self.updating = False
        self.net.train()
        loss = guidance.fake_loss(
            self.net, self.schedule, x0, sigma, noise, cond, cfg.loss_weighting(), cfg.sigma_data, self._autocast
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.updating = True
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm))
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step_count += 1
        self.updating = False
        return {"step": self.step_count, "loss_denoise": float(loss.detach()), "grad_norm": grad_norm}

    def train(self, steps: int, progress: Callable[[int, int, dict], None] | None = None) -> list[dict]:
        """Run until ``step_count == steps`` (a resumed trainer continues); ``progress(step, steps, losses)``
        after every step may raise to interrupt."""
        logs = []
        while self.step_count < steps:
            out = self.step()
            logs.append(out)
            if progress is not None:
                progress(self.step_count, steps, out)
        return logs

    # ---- state (the checkpoint file is training.run's)
    def state_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "step": self.step_count,
            "net": lora.trainable_state(self.net),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "rng": self.rng.get_state(),
            "lora": self.lora,
        }

    def load_state_dict(self, state: dict) -> None:
        saved, mine = dict(state.get("config", {})), asdict(self.config)
        for d in (saved, mine):
            if d.get("betas") is not None:
                d["betas"] = tuple(d["betas"])
        diff = [f.name for f in fields(FinetuneConfig) if f.name in saved and saved[f.name] != mine[f.name]]
        if diff:
            raise FinetuneError(f"state: the checkpoint's settings differ from this run's in {diff}")
        if not lora.load_trainable_state(self.net, state["net"]):
            raise FinetuneError("state: the checkpoint's LoRA layers differ from this run's")
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.rng.set_state(state["rng"].cpu())
        self.step_count = int(state["step"])


# ----------------------------------------------------------------------------- the run
def read_checkpoint(path, shown: str, advice: str) -> dict:
    """A fine-tuning checkpoint (``training.run.save_checkpoint`` of a ``FinetuneTrainer``), read without
    unpickling code; a ``resume:`` ``RunError`` naming it for an empty, cut or foreign file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise training_run.RunError(
            f"resume: the checkpoint {shown} is not a readable fine-tuning checkpoint ({type(e).__name__}: empty, "
            f"cut short or another kind of file); it was left as it is: {advice}"
        ) from None
    missing = [k for k in CHECKPOINT_KEYS if k not in state] if isinstance(state, dict) else list(CHECKPOINT_KEYS)
    if missing:
        raise training_run.RunError(
            f"resume: the checkpoint {shown} is not a fine-tuning checkpoint (it lacks {', '.join(missing[:4])}); "
            f"it was left as it is: {advice}"
        )
    return state


class FinetuneRun(training_run.DMDRun):
    """``training.run.DMDRun`` (checkpoint every ``checkpoint_interval`` steps, at the end and when stopped; the
    loss history; the interrupt-safe save) around a ``FinetuneTrainer``; resume checks the latent shape, the
    number of conditionings and the settings."""

    def resume(self) -> bool:
        if not os.path.isfile(self.checkpoint_path):
            return False
        tr, shown = self.trainer, self.shown
        state = read_checkpoint(self.checkpoint_path, shown, "delete it, " + self.advice)
        made = state.get("run") if isinstance(state.get("run"), dict) else {}
        if made and tuple(made.get("latent_shape", [])) != tuple(tr.latent_shape):
            raise training_run.RunError(
                f"{self.names['latent_shape']}: the checkpoint {shown} was made for latents "
                f"{tuple(made['latent_shape'])}, this run's are {tuple(tr.latent_shape)}; {self.advice}"
            )
        if made and int(made.get("conditionings", len(tr.conditioning))) != len(tr.conditioning):
            raise training_run.RunError(
                f"{self.names['conditioning']}: the checkpoint {shown} was made with {made['conditionings']} "
                f"conditionings, this run has {len(tr.conditioning)}; {self.advice}"
            )
        try:
            tr.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
            raise training_run.RunError(
                f"resume: the checkpoint {shown} was made with other settings ({e}); {self.advice}"
            ) from None
        self.history = {k: [tuple(p) for p in v] for k, v in state.get("history", {}).items()}
        self.resumed_from = tr.step_count
        log.info("fine-tuning run: resumed from step %d (%s)", tr.step_count, self.checkpoint_path)
        return True

    def status(self, step: int, total: int, rate: float) -> str:
        return "expert " + super().status(step, total, rate).removeprefix("DMD ")


# ----------------------------------------------------------------------------- the expert file
def expert_state_dict(
    net: nn.Module, base: nn.Module | None = None, prefix: str = "diffusion_model.", dtype: torch.dtype | None = None
) -> dict:
    """The trained expert as a LoRA file's tensors: a LoRA network's factors (``lora.lora_state_dict``), or a full
    copy's difference to ``base`` (its untrained network) as ``<prefix><module>.diff`` for weights and
    ``.diff_b`` for biases, which ComfyUI's LoRA loader adds to the model's weights."""
    if lora.lora_layers(net):
        return lora.lora_state_dict(net, prefix=prefix, dtype=dtype)
    if base is None:
        raise FinetuneError("base: a full-weights expert is saved as its difference to the base network; give it")
    own, ref = dict(net.named_parameters()), dict(base.named_parameters())
    sd = {}
    for name, p in own.items():
        if not p.requires_grad:
            continue
        if name not in ref or ref[name].shape != p.shape:
            raise FinetuneError(f"base: the base network has no parameter {name!r} of shape {tuple(p.shape)}")
        module, _, leaf = name.rpartition(".")
        if leaf not in ("weight", "bias"):
            raise FinetuneError(
                f"net: parameter {name!r} is neither a weight nor a bias; a LoRA file cannot carry it (use LoRA)"
            )
        d = (p.detach().float() - ref[name].detach().to(p.device).float()).cpu()
        sd[prefix + module + (".diff" if leaf == "weight" else ".diff_b")] = (
            d.to(dtype) if dtype is not None else d
        ).contiguous()
    return sd


def expert_info(trainer: FinetuneTrainer, **extra) -> dict:
    """What an expert file records of its training."""
    cfg = trainer.config
    return {
        "kind": "time_decoupled_expert",
        "format": "lora" if trainer.lora else "diff",
        "model_type": cfg.model_type,
        "timestep_min": int(cfg.timestep_min),
        "timestep_max": int(cfg.timestep_max),
        "latent_shape": list(trainer.latent_shape),
        "steps": int(trainer.step_count),
        "batch_size": int(cfg.batch_size),
        "lora_rank": int(cfg.lora_rank) if trainer.lora else 0,
        "train_cost": train_cost(trainer.step_count, cfg.batch_size, trainer.latent_shape),
        **extra,
    }


def write_expert(path, state_dict: dict, info: dict, title: str | None = None) -> dict:
    """Write an expert file (.safetensors, ``info`` under the ``tempo_expert`` metadata key), atomically."""
    from safetensors.torch import save_file

    if not os.fspath(path).endswith(".safetensors"):
        raise FinetuneError(f"path: expected a .safetensors file name, got {os.fspath(path)!r}")
    if not state_dict:
        raise FinetuneError("state_dict: the expert has no tensors to save")
    meta = {METADATA_KEY: json.dumps(info, sort_keys=True), "modelspec.architecture": "time-decoupled-expert"}
    if title:
        meta["modelspec.title"] = str(title)
    training_run.atomic_save(lambda p: save_file(state_dict, p, metadata=meta), path)
    return meta


def read_expert_info(path) -> dict | None:
    """The ``tempo_expert`` settings of an expert file (None for another file)."""
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
    raw = meta.get(METADATA_KEY)
    return json.loads(raw) if raw else None
