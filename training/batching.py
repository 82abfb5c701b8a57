"""Conditioning batches for the DMD trainer (plain PyTorch): a batch's items -> the denoiser's ``cond``."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .config import DMDConfigError


def default_collate(items: Sequence[Any]) -> Any:
    """Conditioning items of one batch -> the ``cond`` argument: None, a LongTensor of class
    indices, or stacked tensors (an item with a leading batch dim of 1 is concatenated)."""
    if all(i is None for i in items):
        return None
    if all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        return torch.tensor(items, dtype=torch.long)
    if all(isinstance(i, torch.Tensor) for i in items):
        if items[0].ndim >= 1 and items[0].shape[0] == 1:
            return torch.cat(list(items))
        return torch.stack(list(items))
    raise DMDConfigError("conditioning: items must all be None, all ints or all tensors (or pass a collate function)")


def to_device(c, device):
    return c.to(device) if isinstance(c, torch.Tensor) else c
