"""The DMD run's loss curves as a picture (plain PyTorch side, no ComfyUI import): one panel per loss,
drawn with Pillow (ComfyUI's own dependency) into an RGB float array, so the trainer node can return it
as an IMAGE."""

from __future__ import annotations

import math

import numpy as np

from ..samplers.plot import moving_average

# the trainer's losses (DMDTrainer.step), in this order; any other "loss_*" key follows
LOSS_ORDER = ("loss_dm", "loss_fake", "loss_reg", "loss_gen_cls", "loss_guidance_cls")
_COLORS = [(90, 160, 255), (240, 120, 90), (110, 210, 120), (230, 190, 70), (200, 130, 230)]


def plot_losses(history: dict[str, list[tuple[int, float]]], width: int = 640, height: int = 300) -> np.ndarray:
    """[H, W, 3] float32 in [0, 1]: one panel per loss of ``history`` (name -> [(step, value)], as
    ``training.run.DMDRun.history``), each with its own y range, the step on x; curves of more than 20
    points are smoothed over about 1/20 of the run."""
    from PIL import Image, ImageDraw

    keys = [k for k in LOSS_ORDER if history.get(k)]
    keys += sorted(k for k in history if k.startswith("loss_") and k not in LOSS_ORDER and history[k])
    img = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(img)
    if not keys:
        draw.text((8, 8), "no losses yet", fill=(220, 220, 220))
    else:
        ph = height // len(keys)
        for i, k in enumerate(keys):
            pts = history[k]
            top, bottom, left, right = i * ph + 16, (i + 1) * ph - 6, 50, width - 8
            steps = [p[0] for p in pts]
            vals = np.array([p[1] for p in pts], dtype=np.float64)
            if len(vals) > 20:  # a moving average over ~1/20 of the run, the raw curve is noisy
                vals = moving_average(vals, len(vals) // 20)
            lo, hi = float(np.nanmin(vals)), float(np.nanmax(vals))
            if not math.isfinite(lo) or not math.isfinite(hi):
                lo, hi = 0.0, 1.0
            if hi - lo < 1e-12:
                hi = lo + 1e-12
            s0, s1 = min(steps), max(max(steps), min(steps) + 1)
            draw.rectangle([left, top, right, bottom], outline=(90, 90, 100))
            xy = [
                (left + (s - s0) / (s1 - s0) * (right - left), bottom - (v - lo) / (hi - lo) * (bottom - top))
                for s, v in zip(steps, vals)
            ]
            if len(xy) > 1:
                draw.line(xy, fill=_COLORS[i % len(_COLORS)], width=1)
            draw.text((left + 4, top - 14), f"{k}  last {pts[-1][1]:.4g}  steps {s0}-{s1}", fill=(220, 220, 220))
            draw.text((2, top), f"{hi:.3g}", fill=(150, 150, 160))
            draw.text((2, bottom - 10), f"{lo:.3g}", fill=(150, 150, 160))
    return np.asarray(img, dtype=np.float32) / 255.0
