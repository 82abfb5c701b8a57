"""The learning-rate schedule of DMD2's optimizers (plain PyTorch)."""

from __future__ import annotations

import torch


def constant_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """diffusers ``get_scheduler("constant_with_warmup")`` (DMD2 main/train_sd.py:205-216): factor
    k / warmup before ``warmup_steps`` optimizer steps, 1 after."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: float(k) / float(max(1, warmup_steps)) if k < warmup_steps else 1.0
    )
