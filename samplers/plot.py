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
_CAPTION = (175, 175, 185)
_AXIS = (90, 90, 100)
_GRIDLINE = (44, 44, 52)
_SCORE = (120, 160, 255)
ELLIPSIS = "..."


def default_font(size: int = 12):
    """Pillow's own font at ``size`` px (no download); on Pillow < 10.1 its fixed bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def fit_text(draw, text: str, font, max_width: float) -> str:
    """``text`` if it fits in ``max_width`` px, else its longest prefix that fits with an ellipsis appended."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if draw.textlength(text[:mid].rstrip() + ELLIPSIS, font=font) <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + ELLIPSIS


def _legend(draw, x: float, y: float, items, font) -> None:
    """A row of (colour, label, kind) entries, kind "box" or "line"."""
    for color, label, kind in items:
        if kind == "line":
            draw.line([x, y + 6, x + 14, y + 6], fill=color, width=2)
        else:
            draw.rectangle([x, y + 1, x + 11, y + 11], fill=color)
        x += 16
        draw.text((x, y), label, fill=_TEXT, font=font)
        x += draw.textlength(label, font=font) + 14


def _step_ticks(bar_w: float, min_px: float = 28.0) -> int:
    """A tick spacing (1, 2, 5, 10, 20, 50, ...) whose labels are at least ``min_px`` apart."""
    decade = 1
    while True:
        for every in (decade, 2 * decade, 5 * decade):
            if every * bar_w >= min_px:
                return every
        decade *= 10


def put_text(draw, x: float, y: float, text: str, font, fill, h: str = "l", v: str = "t") -> None:
    """Text placed by its left/middle/right (``h``) and top/middle (``v``) edge; only textlength is
    measured, so Pillow's bitmap font (Pillow < 10.1) places it too."""
    if h != "l":
        x -= draw.textlength(text, font=font) / (2 if h == "m" else 1)
    if v == "m":
        y -= (getattr(font, "size", 11) + 2) / 2
    draw.text((x, y), text, fill=fill, font=font)


def plot_report(report: SkipReport, width: int = 640, height: int = 240, threshold: float | None = None) -> np.ndarray:
    """[H, W, 3] float32 in 0..1: estimator scores (log scale) above a ran/skipped strip.

    Title: the report's summary (the strip shows the path), cut with an ellipsis when it does not fit; a
    legend for the colours; the estimator axis with decade ticks; the strip with sampler step numbers."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(img)
    font, title_font = default_font(11), default_font(13)
    n = max(1, len(report.records))
    left, right = 44, width - 8
    top = 44
    strip_h = 18
    chart_bottom = height - strip_h - 52
    strip_top = chart_bottom + 20
    bar_w = (right - left) / n
    title = report.summary().replace(f", path {report.path_string()}", "")
    draw.text((8, 4), fit_text(draw, title, title_font, width - 16), fill=_TEXT, font=title_font)

    partial = any(0.0 < r.computed < 1.0 for r in report.records)
    dropped = "merged into the step before (re-spaced)" if getattr(report, "respaced", False) else "skipped (reused)"
    items = [(_SCORE, "estimator score", "box"), (_RAN, "network ran", "box"), (_SKIP, dropped, "box")]
    if partial:
        items.append((_PART, "ran for part of the batch", "box"))
    if threshold:
        items.append((_SKIP, f"threshold {threshold:g}", "line"))
    _legend(draw, 8, 22, items, font)

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

        mantissas = (1,) if hi - lo >= 1.5 else (1, 2, 5)  # decades, or 1-2-5 ticks on a short axis
        ticks = [m * 10.0**k for k in range(math.floor(lo), math.ceil(hi) + 1) for m in mantissas]
        for v in [v for v in ticks if lo - 1e-9 <= math.log10(v) <= hi + 1e-9]:
            y = y_of(v)
            draw.line([left, y, right, y], fill=_GRIDLINE)
            draw.line([left - 4, y, left, y], fill=_CAPTION)
            label = f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")
            put_text(draw, left - 6, y, label, font, _CAPTION, h="r", v="m")
        for i, r in enumerate(report.records):
            if r.score is None or r.score <= 0:
                continue
            x0 = left + i * bar_w
            draw.rectangle([x0 + 1, y_of(r.score), x0 + max(bar_w - 1, 1), chart_bottom], fill=_SCORE)
        if threshold:
            yt = y_of(threshold)
            draw.line([left, yt, right, yt], fill=_SKIP, width=1)
    draw.line([left, top, left, chart_bottom], fill=_AXIS)
    draw.line([left, chart_bottom, right, chart_bottom], fill=_AXIS)
    caption = "bars: estimator |(d_i + d_i-2)/2 - d_i-1| / d_i-1 per step (log scale); strip: did the network run?"
    draw.text((left, chart_bottom + 3), fit_text(draw, caption, font, right - left), fill=_CAPTION, font=font)

    put_text(draw, left - 6, strip_top + strip_h / 2, "net", font, _CAPTION, h="r", v="m")
    for i, r in enumerate(report.records):
        color = _RAN if r.computed >= 1.0 else (_SKIP if r.computed <= 0.0 else _PART)
        x0 = left + i * bar_w
        draw.rectangle([x0 + 1, strip_top, x0 + max(bar_w - 1, 1), strip_top + strip_h], fill=color)
    every = _step_ticks(bar_w)
    tick_y = strip_top + strip_h + 2
    put_text(draw, left - 6, tick_y + 4, "step", font, _CAPTION, h="r")
    for i in range(0, len(report.records), every):
        xc = left + (i + 0.5) * bar_w
        draw.line([xc, tick_y, xc, tick_y + 3], fill=_CAPTION)
        put_text(draw, xc, tick_y + 4, str(i), font, _CAPTION, h="m")
    return np.asarray(img, dtype=np.float32) / 255.0
