"""Shared pieces of the benchmarks: a metric, a timer, a table printer and the JSON writer (the problems
they sample, ``Problem``, are in ``testbed/problems.py``)."""

from __future__ import annotations

import json
import math
import time

import torch


def psnr_db(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in 0..1 (peak 1), [B]."""
    mse = ((images.float() - reference.float()) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return -10 * torch.log10(mse)


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def number_list(text: str, option: str, cast=float, low=None, high=None) -> list:
    """A command-line list like "1,3,10" as numbers (cast: int or float), each in [low, high]; anything else is
    a SystemExit naming the option and what was expected."""
    kind = "whole numbers" if cast is int else "numbers"
    try:
        values = [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{option}: expected {kind} separated by commas, got {text!r}") from None
    if not values or (low is not None and min(values) < low) or (high is not None and max(values) > high):
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        raise SystemExit(f"{option}: expected {kind} {bounds}, got {text!r}")
    return values


def print_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    text = "\n".join(lines)
    print(text)
    return text


def write_json(path: str, payload: dict) -> None:
    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    with open(path, "w") as f:
        json.dump(clean(payload), f, indent=1)
