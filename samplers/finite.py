"""One check the nodes share: does a result hold NaN or inf? (plain PyTorch, no ComfyUI)."""

from __future__ import annotations

import torch


def nonfinite_note(x, what: str = "the output") -> str:
    """ "" when ``x`` (a tensor) is all finite, else "warning: the output holds NaN/inf (N of M values)"."""
    if not isinstance(x, torch.Tensor) or x.numel() == 0 or not (x.is_floating_point() or x.is_complex()):
        return ""
    bad = int((~torch.isfinite(x)).sum())
    if bad == 0:
        return ""
    return f"warning: {what} holds NaN/inf ({bad} of {x.numel()} values)"


def with_nonfinite_note(text: str, x, what: str = "the output") -> str:
    """A node's report ``text`` with ``nonfinite_note`` appended when ``x`` holds NaN or inf."""
    note = nonfinite_note(x, what)
    return f"{text}; {note}" if note else text
