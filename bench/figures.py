"""Labelled image grids for the demo: column headers, row labels, the metric under each column and
difference maps with their gain written on them. Pillow only (its default font), no ComfyUI."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..samplers.plot import default_font, fit_text, put_text

BACKGROUND = (28, 28, 32)
BORDER = (75, 75, 85)
TEXT = (225, 225, 225)
MUTED = (170, 170, 180)
WRONG = (235, 70, 60)


@dataclass
class Column:
    """One column of a grid: a header of one or two lines, a tile per row and lines printed under it."""

    header: tuple[str, ...]
    tiles: list  # [H, W, 3] float arrays in 0..1, one per row
    metric: tuple[str, ...] = ()
    notes: list = field(default_factory=list)  # per tile: a short text drawn in its corner, or None
    frames: list = field(default_factory=list)  # per tile: an RGB frame colour, or None


def to_tiles(images) -> list[np.ndarray]:
    """Images [B, 3, H, W] (torch or numpy, 0..1) -> B arrays [H, W, 3]."""
    a = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images, dtype=np.float32)
    return list(np.clip(a, 0, 1).transpose(0, 2, 3, 1))


def abs_difference(images, reference) -> np.ndarray:
    """Per-pixel |images - reference|, the largest over the colour channels: [B, H, W]."""
    a = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images, dtype=np.float32)
    b = np.asarray(reference.detach().cpu() if hasattr(reference, "detach") else reference, dtype=np.float32)
    return np.abs(np.clip(a, 0, 1) - np.clip(b, 0, 1)).max(axis=1)


def nice_gain(differences, percentile: float = 99.5) -> int:
    """The largest gain of 1, 2, 5, 10, 20, 50, ... that keeps ``percentile`` of the differences below 1
    after amplification (one gain for a whole figure, so its maps compare)."""
    top = float(np.percentile(np.concatenate([np.ravel(d) for d in differences]), percentile))
    gain, decade = 1, 1
    while True:
        for g in (decade, 2 * decade, 5 * decade):
            if g * top > 1.0 or g > 10000:
                return gain
            gain = g
        decade *= 10


def heat(values: np.ndarray) -> np.ndarray:
    """[...] values in 0..1 -> [..., 3]: black, red, yellow, white."""
    v = np.clip(values, 0, 1)[..., None]
    return np.clip(np.concatenate([3 * v, 3 * v - 1, 3 * v - 2], axis=-1), 0, 1)


def difference_tiles(differences, gain: int) -> list[np.ndarray]:
    """[B, H, W] absolute differences -> B heat-map tiles at ``gain``."""
    return [heat(d * gain) for d in differences]


def colour_bar(draw, x: float, y: float, gain: int, font, width: int = 140, height: int = 10) -> float:
    """The heat scale: 0 (black) .. 1/gain and above (white), with its numbers; returns the x after it."""
    put_text(draw, x, y + height / 2, "0", font, MUTED, v="m")
    x += draw.textlength("0 ", font=font)
    ramp = heat(np.linspace(0, 1, width))
    for i, rgb in enumerate(ramp):
        draw.line([x + i, y, x + i, y + height], fill=tuple(int(round(c * 255)) for c in rgb))
    draw.rectangle([x, y, x + width, y + height], outline=BORDER)
    label = f" {1 / gain:g} or more"
    put_text(draw, x + width + 2, y + height / 2, label, font, MUTED, v="m")
    return x + width + 2 + draw.textlength(label, font=font)


def labelled_grid(
    title: str,
    lines,
    groups,
    row_labels,
    tile_px: int = 128,
    gain: int | None = None,
    difference: str = "|method - reference|",
):
    """A PIL image: ``title`` and explanation ``lines`` (with the heat scale when ``gain`` is given) above
    ``groups`` [(group label, [Column, ...]), ...] side by side; one row per entry of ``row_labels``."""
    from PIL import Image, ImageDraw

    title_font, font, small = default_font(16), default_font(13), default_font(12)
    pad, col_gap, group_gap, row_gap = 12, 6, 22, 6
    label_w = 64
    n_rows = len(row_labels)
    n_cols = sum(len(cols) for _, cols in groups)
    tiles_w = n_cols * tile_px + (n_cols - len(groups)) * col_gap + (len(groups) - 1) * group_gap
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    intro = f"difference maps: {difference} per pixel (largest over R, G, B) x{gain}, the same gain in every map:"
    text_w = max(
        [measure.textlength(title, font=title_font)]
        + [measure.textlength(t, font=font) for t in lines]
        + ([measure.textlength(intro + " 0 " + f" {1 / gain:g} or more", font=font) + 8 + 140] if gain else [])
    )
    width = int(max(pad + label_w + tiles_w + pad, text_w + 2 * pad + 4))  # one seed: the text sets the width
    line_h = 18
    head_y = pad + 24 + line_h * (len(lines) + (1 if gain else 0)) + 8
    tiles_y = head_y + 18 + 2 * 16 + 4
    height = tiles_y + n_rows * (tile_px + row_gap) + 2 * 16 + pad
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)

    draw.text((pad, pad), fit_text(draw, title, title_font, width - 2 * pad), fill=TEXT, font=title_font)
    y = pad + 24
    for line in lines:
        draw.text((pad, y), fit_text(draw, line, font, width - 2 * pad), fill=MUTED, font=font)
        y += line_h
    if gain:
        draw.text((pad, y), intro, fill=MUTED, font=font)
        colour_bar(draw, pad + draw.textlength(intro, font=font) + 8, y + 3, gain, font)

    for r, label in enumerate(row_labels):
        put_text(draw, pad, tiles_y + r * (tile_px + row_gap) + tile_px / 2, label, font, TEXT, v="m")
    x = pad + label_w
    for group_label, cols in groups:
        group_w = len(cols) * tile_px + (len(cols) - 1) * col_gap
        put_text(draw, x + group_w / 2, head_y, group_label, font, TEXT, h="m")
        draw.line([x, head_y + 16, x + group_w, head_y + 16], fill=BORDER)
        for col in cols:
            for i, text in enumerate(col.header[:2]):
                text = fit_text(draw, text, small if i else font, tile_px)
                put_text(
                    draw,
                    x + tile_px / 2,
                    head_y + 20 + 16 * i,
                    text,
                    small if i else font,
                    TEXT if i == 0 else MUTED,
                    h="m",
                )
            for r, tile in enumerate(col.tiles):
                ty = tiles_y + r * (tile_px + row_gap)
                arr = (np.clip(tile, 0, 1) * 255).round().astype(np.uint8)
                scale = max(1, tile_px // arr.shape[1])
                im = Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)
                img.paste(im, (int(x), int(ty)))
                frame = col.frames[r] if r < len(col.frames) else None
                draw.rectangle(
                    [x - 1, ty - 1, x + im.width, ty + im.height], outline=frame or BORDER, width=3 if frame else 1
                )
                note = col.notes[r] if r < len(col.notes) else None
                if note:
                    w = draw.textlength(note, font=small)
                    draw.rectangle([x + 2, ty + im.height - 17, x + w + 7, ty + im.height - 2], fill=(0, 0, 0))
                    draw.text((x + 5, ty + im.height - 17), note, fill=frame or TEXT, font=small)
            my = tiles_y + n_rows * (tile_px + row_gap)
            for i, text in enumerate(col.metric[:2]):
                put_text(
                    draw,
                    x + tile_px / 2,
                    my + 16 * i,
                    fit_text(draw, text, font, tile_px + col_gap),
                    font,
                    TEXT if i == 0 else MUTED,
                    h="m",
                )
            x += tile_px + col_gap
        x += group_gap - col_gap
    return img
