"""A picture of a skip path: the estimator per step and which steps ran the network.

Drawn with Pillow (ComfyUI's own dependency) into an RGB float array, so the node can return it as
an IMAGE and the CLI can save it.
"""

from __future__ import annotations

import math

import numpy as np

from .adaptive import SkipReport

def moving_average(values, window: int) -> np.ndarray:
    """Centred moving average over ``window`` points (float64), each point the mean of the points that exist
    around it: the window shrinks at both ends instead of padding with zeros, so a constant series stays
    constant there. Non-finite points are left out of every mean (a point with none finite around it is NaN)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    n, window = v.size, max(1, int(window))
    if n == 0 or window == 1:
        return v.copy()
    ok = np.isfinite(v)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, v, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(ok)])
    half = window // 2
    idx = np.arange(n)
    lo = np.clip(idx - half, 0, n)
    hi = np.clip(idx - half + window, 0, n)  # [i - half, i - half + window): centred, `window` points inside the series
    count = ccount[hi] - ccount[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (csum[hi] - csum[lo]) / np.maximum(count, 1), np.nan)


_BG = (24, 24, 28)
_RAN = (80, 200, 120)
_SKIP = (230, 90, 80)
_PART = (235, 190, 70)
_TEXT = (220, 220, 220)
_AXIS = (90, 90, 100)
_SCORE = (120, 160, 255)


def plot_report(report: SkipReport, width: int = 640, height: int = 240, threshold: float | None = None) -> np.ndarray:
    """[H, W, 3] float32 in 0..1: estimator scores (log scale) above a ran/skipped strip."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(img)
    n = max(1, len(report.records))
    left, right, top = 8, width - 8, 22
    strip_h = 26
    chart_bottom = height - strip_h - 16
    bar_w = (right - left) / n
    draw.text((left, 4), report.summary()[:110], fill=_TEXT)

    scores = [r.score for r in report.records if r.score is not None and r.score > 0]
    if scores:
        lo = math.log10(max(min(scores), 1e-6))
        hi = math.log10(max(scores))
        if threshold:
            lo = min(lo, math.log10(threshold))
            hi = max(hi, math.log10(threshold))
        span = max(hi - lo, 1e-6)

        def y_of(v: float) -> float:
            return chart_bottom - (math.log10(max(v, 1e-6)) - lo) / span * (chart_bottom - top)

        for i, r in enumerate(report.records):
            if r.score is None or r.score <= 0:
                continue
            x0 = left + i * bar_w
            draw.rectangle([x0 + 1, y_of(r.score), x0 + max(bar_w - 1, 1), chart_bottom], fill=_SCORE)
        if threshold:
            yt = y_of(threshold)
            draw.line([left, yt, right, yt], fill=_SKIP, width=1)
            draw.text((right - 120, yt - 12), f"threshold {threshold:g}", fill=_SKIP)
    draw.line([left, chart_bottom, right, chart_bottom], fill=_AXIS)
    draw.text((left, chart_bottom + 1), "estimator |(d_i + d_i-2)/2 - d_i-1| / d_i-1 (log)", fill=_AXIS)

    y0 = height - strip_h - 2
    for i, r in enumerate(report.records):
        color = _RAN if r.computed >= 1.0 else (_SKIP if r.computed <= 0.0 else _PART)
        x0 = left + i * bar_w
        draw.rectangle([x0 + 1, y0, x0 + max(bar_w - 1, 1), height - 4], fill=color)
    return np.asarray(img, dtype=np.float32) / 255.0
