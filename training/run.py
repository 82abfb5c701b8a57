"""One resumable DMD training run (plain PyTorch, no ComfyUI import): what the DMD Trainer node, the
testbed distillation and the tests share around a ``DMDTrainer``.

* ``DMDRun``: checkpoints at a path the caller gives (written atomically: a temporary file, then a
  rename), the loss history, resume with its checks (same latent shape, same number of conditionings,
  same settings), and the interrupt-safe save: a run stopped between steps, or inside a step before
  any weight moved, saves its state with the step's random draws undone; a run stopped after a weight
  update of the step (``DMDTrainer.updating``, a half-done iteration) keeps its last checkpoint.
* ``read_checkpoint`` / ``save_checkpoint``: the checkpoint file (``DMDTrainer.state_dict`` plus the
  history and the run's shape), read without unpickling code.
* ``write_generator``: the one writer of generator files, a .safetensors file with the DMD settings in
  the metadata layout ``samplers.dmd`` reads (``samplers.dmd.read_generator``).

The loop itself is ``DMDTrainer.train``; DMD2's own trainer keeps its run management beside the loop the
same way (tianweiy/DMD2 main/train_sd.py: ``accelerator.save_state`` every ``checkpointing_steps``).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import torch
from torch import nn

from ..samplers import dmd as dmd_sampling
from . import lora

log = logging.getLogger("comfyui_tempo")

CHECKPOINT_KEYS = (
    "config",
    "step",
    "generator_steps",
    "fake_steps",
    "generator",
    "fake_score",
    "opt_g",
    "opt_f",
    "sched_g",
    "sched_f",
    "rng",
)  # what DMDTrainer.state_dict() always holds
LOSS_KEYS = ("loss_dm", "loss_fake", "loss_reg", "loss_gan_g", "loss_gan_d")


class RunError(ValueError):
    """A run cannot start from its checkpoint; the message starts with the name of what is wrong."""


def atomic_save(write: Callable[[str], None], path) -> None:
    """``write(tmp)`` then rename onto ``path``: a run stopped while writing keeps the previous file."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(path, trainer, history: dict | None = None) -> None:
    """``trainer.state_dict()`` (LoRA runs: only the LoRA factors, the base is the teacher), the loss
    history and the run's shape (latents, number of conditionings), atomically."""
    state = trainer.state_dict()
    state["history"] = {k: [list(p) for p in v] for k, v in (history or {}).items()}
    state["run"] = {"latent_shape": list(trainer.latent_shape), "conditionings": len(trainer.conditioning)}
    atomic_save(lambda p: torch.save(state, p), path)


def read_checkpoint(path, shown: str | None = None, advice: str = "delete it or start over") -> dict:
    """The checkpoint at ``path``; a ``resume:`` ``RunError`` naming it (as ``shown``) for an empty, truncated
    or foreign file. Never unpickles code (weights_only) and never writes the file."""
    shown = shown or os.fspath(path)
    # onto the CPU (the trainer copies it onto its device): loading it onto the GPU would hold a second copy
    # of both networks and their optimizer states there next to the trainer's
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # empty (EOFError), truncated (zip reader), random bytes / pickles (UnpicklingError)
        size = os.path.getsize(path) if os.path.exists(path) else 0
        raise RunError(
            f"resume: the checkpoint {shown} ({size} bytes) is not a readable DMD Trainer checkpoint "
            f"({type(e).__name__}: empty, cut short or another kind of file); it was left as it is: {advice}"
        ) from None
    missing = [k for k in CHECKPOINT_KEYS if k not in state] if isinstance(state, dict) else list(CHECKPOINT_KEYS)
    if missing:
        kind = f"a {type(state).__name__}" + (f" without {', '.join(missing[:4])}" if isinstance(state, dict) else "")
        raise RunError(
            f"resume: the checkpoint {shown} is not a DMD Trainer checkpoint ({kind}); it was left as it is: {advice}"
        )
    return state


def generator_state_dict(net: nn.Module, prefix: str = "", dtype: torch.dtype | None = None) -> dict:
    """The tensors of a generator file: a LoRA network's factors (kohya layout, ``lora.lora_state_dict``),
    else the full state dict, floating-point tensors in ``dtype`` (default: as they are); keys prefixed."""
    if lora.lora_layers(net):
        return lora.lora_state_dict(net, prefix=prefix, dtype=dtype)
    return {
        prefix + k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach())
        .contiguous()
        .cpu()
        for k, v in net.state_dict().items()
    }


def write_generator(path, state_dict: dict, info: dict, title: str | None = None) -> dict:
    """Write a generator file: ``state_dict`` with the DMD settings ``info`` (``samplers.dmd.generator_metadata``;
    must hold ``format``, ``model_type``, ``conditioning_timestep`` and ``timesteps``), atomically. Returns the
    metadata written."""
    from safetensors.torch import save_file

    if not os.fspath(path).endswith(".safetensors"):
        raise RunError(f"path: expected a .safetensors file name, got {os.fspath(path)!r}")
    info = {"kind": "generator", **info}
    missing = [k for k in ("format", "model_type", "conditioning_timestep", "timesteps") if k not in info]
    if missing:
        raise RunError(f"info: the generator's settings lack {missing}")
    meta = {**dmd_sampling.generator_metadata(info), "modelspec.architecture": "dmd-generator"}
    if title:
        meta["modelspec.title"] = str(title)
    # checked as a reader will read it
    dmd_sampling.parse_generator_metadata(meta, state_dict.keys(), "info")
    atomic_save(lambda p: save_file(state_dict, p, metadata=meta), path)
    return meta


def generator_info(trainer) -> dict:
    """The DMD settings of a trainer's generator, as a generator file records them."""
    cfg = trainer.config
    ts = [int(t) for t in trainer.gen_timesteps]
    return {
        "kind": "generator",
        "format": "lora" if trainer.lora else "full",
        "model_type": cfg.model_type,
        "conditioning_timestep": ts[0],
        "timesteps": ts,
        "steps": int(trainer.step_count),
        "generator_steps": int(trainer.generator_steps),
        "guidance": float(cfg.real_guidance_scale),
        "lora_rank": int(cfg.lora_rank) if trainer.lora else 0,
        "latent_shape": list(trainer.latent_shape),
        "method": "DMD2" if cfg.regression_weight == 0 else "DMD (regression)",
        "gan_weight": float(cfg.gen_cls_loss_weight),
        "update_ratio": int(cfg.dfake_gen_update_ratio),
        "ema": trainer.ema is not None,
    }


class DMDRun:
    """A ``DMDTrainer`` run with its checkpoint file and loss history.

    checkpoint_path: where the checkpoint is written every ``checkpoint_interval`` steps, at the end and
        when stopped (``shown``: how errors name it, e.g. a path relative to the user's folder).
    names: the caller's names for what a resume checks, ``{"latent_shape": ..., "conditioning": ...}``
        (errors start with them); ``advice``: what an error tells the user to do instead.
    """

    #: stopped by an exception, save the run's state (one process); ``training.distributed`` keeps its last
    #: checkpoint instead (the other ranks may be gone or blocked in a collective)
    save_on_stop = True

    def __init__(
        self,
        trainer,
        checkpoint_path,
        checkpoint_interval: int = 100,
        *,
        shown: str | None = None,
        names: dict | None = None,
        advice: str = "start over or use another checkpoint path",
    ):
        if isinstance(checkpoint_interval, bool) or not isinstance(checkpoint_interval, int) or checkpoint_interval < 1:
            raise RunError(f"checkpoint_interval: expected a positive integer, got {checkpoint_interval!r}")
        self.trainer = trainer
        self.checkpoint_path = os.fspath(checkpoint_path)
        self.checkpoint_interval = checkpoint_interval
        self.shown = shown or self.checkpoint_path
        self.names = {"latent_shape": "latent_shape", "conditioning": "conditioning", **(names or {})}
        self.advice = advice
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.resumed_from: int | None = None

    # ---- checkpoint
    def resume(self) -> bool:
        """Continue from the checkpoint when it exists (False when there is none). A file that is not a
        checkpoint, or one made for another latent shape, number of conditionings or settings, is a
        ``RunError`` and the file is left as it is (nothing is written before training starts)."""
        if not os.path.isfile(self.checkpoint_path):
            return False
        tr, shown = self.trainer, self.shown
        state = read_checkpoint(self.checkpoint_path, shown, "delete it, " + self.advice)
        made = state.get("run") if isinstance(state.get("run"), dict) else {}
        shape = tuple(tr.latent_shape)
        if made and tuple(made.get("latent_shape", [])) != shape:
            raise RunError(
                f"{self.names['latent_shape']}: the checkpoint {shown} was made for latents "
                f"{tuple(made['latent_shape'])}, this run's are {shape}; {self.advice}"
            )
        n = len(tr.conditioning)
        if made and int(made.get("conditionings", n)) != n:
            raise RunError(
                f"{self.names['conditioning']}: the checkpoint {shown} was made with "
                f"{made['conditionings']} conditionings, this run has {n}; {self.advice}"
            )
        try:
            tr.load_state_dict(state)
            history = {k: [tuple(p) for p in v] for k, v in state.get("history", {}).items()}
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:  # DMDConfigError is a ValueError
            raise RunError(
                f"resume: the checkpoint {shown} was made with other settings ({e}); {self.advice}"
            ) from None
        self.history = history
        self.resumed_from = tr.step_count
        log.info("DMD run: resumed from step %d (%s)", tr.step_count, self.checkpoint_path)
        return True

    def save_checkpoint(self) -> None:
        save_checkpoint(self.checkpoint_path, self.trainer, self.history)

    # ---- training
    def status(self, step: int, total: int, rate: float) -> str:
        last = {k: v[-1][1] for k, v in self.history.items() if v}
        return f"DMD step {step}/{total} ({rate:.1f} it/s) " + " ".join(f"{k[5:]} {v:.4g}" for k, v in last.items())

    def train(
        self,
        steps: int,
        *,
        on_step: Callable[[int, int], None] | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        """Train to ``steps`` (a resumed run continues). After every step: the losses go into the history,
        the checkpoint is written every ``checkpoint_interval`` steps, ``on_status(text)`` gets a status
        line about 100 times a run (every 10 steps at most), then ``on_step(step, steps)`` runs and may
        raise to stop the run (a cancel). Stopped by any exception, the run saves what it consistently can
        (see the module docstring) and re-raises; at the end the checkpoint is written."""
        tr = self.trainer
        t0, start = time.monotonic(), tr.step_count
        boundary = [tr.rng.get_state()]  # the random generator's state at the start of the current step
        every = max(1, min(10, steps // 100 or 1))

        def after_step(step, total, losses):
            boundary[0] = tr.rng.get_state()
            for k, v in losses.items():
                if k.startswith("loss_"):
                    self.history.setdefault(k, []).append((step, float(v)))
            if step % self.checkpoint_interval == 0:
                self.save_checkpoint()
            if on_status is not None and (step % every == 0 or step == total):
                on_status(self.status(step, total, (step - start) / max(1e-9, time.monotonic() - t0)))
            if on_step is not None:
                on_step(step, total)

        try:
            tr.train(steps, progress=after_step)
        except BaseException:
            # Cancel, an error or an out-of-memory. Stopped between steps or inside a step before any weight
            # moved: that state (the step's random draws undone) is saved. Stopped after an update of the step
            # (a half-done iteration): the last checkpoint is kept as it is.
            if tr.updating:
                log.warning(
                    "DMD run: stopped inside step %d after a weight update; keeping the checkpoint %s of "
                    "the last interval",
                    tr.step_count,
                    self.checkpoint_path,
                )
            elif not self.save_on_stop:
                log.info(
                    "DMD run: stopped at step %d; keeping the last checkpoint %s", tr.step_count, self.checkpoint_path
                )
            else:
                tr.rng.set_state(boundary[0])
                self.save_checkpoint()
                log.info("DMD run: stopped at step %d; checkpoint %s", tr.step_count, self.checkpoint_path)
            raise
        self.save_checkpoint()

    # ---- the result
    def save_generator(
        self,
        path,
        net: nn.Module | None = None,
        prefix: str = "",
        dtype: torch.dtype | None = None,
        info: dict | None = None,
        title: str | None = None,
        use_ema: bool | None = None,
    ) -> tuple[dict, dict]:
        """Write the generator (``net``: the network to save, default the trainer's generator denoiser;
        its EMA weights when the trainer keeps them, unless ``use_ema`` is False) with ``generator_info``
        updated by ``info``. Returns (the state dict written, the info)."""
        tr = self.trainer
        net = net if net is not None else tr.generator.net
        with tr.ema_weights(use_ema):
            sd = generator_state_dict(net, prefix, dtype)
        full = {**generator_info(tr), **(info or {})}
        full["ema"] = tr.ema is not None and use_ema is not False
        write_generator(path, sd, full, title)
        return sd, full
