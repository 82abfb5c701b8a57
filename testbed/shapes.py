"""The flow testbed's data set: procedurally drawn coloured shapes and textures in 10 classes.

Built offline and deterministically from a seed (no file is read). Each image is 3 x size x size in
[0, 1]: a shape (or a two-colour texture) in a random saturated foreground colour over a flat or
two-colour gradient background, at a random position, size and small rotation. Colours and
backgrounds are drawn independently of the class, so only the shape tells the class. Edges are
anti-aliased by drawing on a 4x finer grid and box-averaging.

Classes: 0 disc, 1 square, 2 triangle, 3 ring, 4 plus, 5 diagonal cross, 6 five-point star,
7 stripes (full frame, near horizontal), 8 checkerboard (full frame), 9 crescent.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .data import _LUMA, _random_colours

CLASSES = ("disc", "square", "triangle", "ring", "plus", "cross", "star", "stripes", "checker", "crescent")
DEFAULT_SEED = 4321
DEFAULT_SIZE = 16
DEFAULT_PER_CLASS = 500
#: the shape's luma differs at least this much from the mean luma of its background
MIN_CONTRAST = 0.3
SUPERSAMPLE = 4


def _masks(labels: np.ndarray, rng: np.random.Generator, size: int) -> torch.Tensor:
    """Coverage masks [N, 1, size, size] in [0, 1] of the classes `labels` at random poses."""
    n = labels.shape[0]
    cx = size / 2 + (size / 10) * (2 * rng.random(n) - 1)
    cy = size / 2 + (size / 10) * (2 * rng.random(n) - 1)
    radius = size * (0.24 + 0.1 * rng.random(n))
    rot = np.deg2rad(15.0) * (2 * rng.random(n) - 1)
    free_rot = 2 * np.pi * rng.random(n)  # for the crescent's opening
    period = size * (0.2 + 0.1 * rng.random(n))  # stripes and checkerboard
    phase = rng.random((n, 2))

    s = size * SUPERSAMPLE
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / SUPERSAMPLE
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    inside = torch.zeros(n, s, s, dtype=torch.bool)
    poses = np.stack([cx, cy, radius, rot, free_rot, period, phase[:, 0], phase[:, 1]], 1).astype(np.float32)
    for k in range(10):
        sel = torch.from_numpy(np.nonzero(labels == k)[0])
        if sel.numel():
            inside[sel] = _shape(k, xx, yy, *torch.from_numpy(poses)[sel, :, None, None].unbind(1))
    return F.avg_pool2d(inside.float()[:, None], SUPERSAMPLE)


def _shape(k, xx, yy, cx, cy, radius, rot, free_rot, period, ph0, ph1) -> torch.Tensor:
    """Inside-test of class k's shape on the fine grid (xx, yy) for a batch of poses ([m, 1, 1] each)."""
    dx, dy = xx[None] - cx, -(yy[None] - cy)  # y up
    c, si = torch.cos(rot), torch.sin(rot)
    u, v = c * dx + si * dy, -si * dx + c * dy
    un, vn = u / radius, v / radius
    rho = torch.sqrt(un**2 + vn**2)
    arm = 0.3

    def plus(a, b):
        return ((a.abs() <= arm) & (b.abs() <= 1.0)) | ((b.abs() <= arm) & (a.abs() <= 1.0))

    if k == 0:
        return rho <= 1.0
    if k == 1:
        return torch.maximum(un.abs(), vn.abs()) <= 0.82
    if k == 2:
        tri_v = vn * 0.95 + 0.2
        return (tri_v >= -0.5) & (tri_v <= 1 - math.sqrt(3) * (un * 0.95).abs())
    if k == 3:
        return (rho <= 1.0) & (rho >= 0.58)
    if k == 4:
        return plus(un, vn)
    if k == 5:
        q = math.sqrt(0.5)
        return plus(q * (un - vn), q * (un + vn))
    if k == 6:
        phi = torch.atan2(vn, un) - math.pi / 2
        tri_wave = 1 - (((5 * phi / (2 * math.pi)) % 1.0) * 2 - 1).abs()
        return rho <= 0.42 + 0.63 * tri_wave
    if k == 7:
        return torch.sin(2 * math.pi * (v / period + ph0)) > 0
    if k == 8:
        return torch.sin(2 * math.pi * (u / period + ph0)) * torch.sin(2 * math.pi * (v / period + ph1)) > 0
    off = 0.5
    ox, oy = torch.cos(free_rot) * off, torch.sin(free_rot) * off
    return (rho <= 1.0) & ((un - ox) ** 2 + (vn - oy) ** 2 > 0.85**2)


def build(
    seed: int = DEFAULT_SEED, size: int = DEFAULT_SIZE, per_class: int = DEFAULT_PER_CLASS
) -> tuple[torch.Tensor, torch.Tensor]:
    """The shapes data set: images [N, 3, size, size] float32 in [0, 1], labels [N], N = 10 * per_class,
    classes interleaved (image i has class i % 10). Same arguments -> bit-identical output."""
    n = 10 * per_class
    labels = np.arange(n) % 10
    rng = np.random.default_rng(seed)
    masks = torch.cat([_masks(labels[i : i + 500], rng, size) for i in range(0, n, 500)]).double().numpy()

    c0 = _random_colours(rng, n, 0.2, 0.15)
    c1 = _random_colours(rng, n, 0.2, 0.15)
    gradient = rng.random(n) < 0.5
    ang = 2 * np.pi * rng.random(n)
    lin = np.linspace(-1, 1, size)
    yy, xx = np.meshgrid(lin, lin, indexing="ij")
    w = np.clip((np.cos(ang)[:, None, None] * xx + np.sin(ang)[:, None, None] * yy) / np.sqrt(2) * 0.5 + 0.5, 0, 1)
    w = np.where(gradient[:, None, None], w, 0.0)[:, None]
    bg = c0[:, :, None, None] * (1 - w) + c1[:, :, None, None] * w

    bg_luma = np.einsum("nchw,c->n", bg, _LUMA) / (size * size)
    fg = _random_colours(rng, n, 0.4, 0.1)
    for _ in range(256):
        bad = np.abs(fg @ _LUMA - bg_luma) < MIN_CONTRAST
        if not bad.any():
            break
        fg[bad] = _random_colours(rng, int(bad.sum()), 0.4, 0.1)

    images = bg * (1 - masks) + fg[:, :, None, None] * masks
    return torch.from_numpy(images).float().clamp(0, 1), torch.from_numpy(labels.astype(np.int64))


def split_indices(n: int, every: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic train / held-out split: every `every`-th block of 10 (one image per class) is held out."""
    idx = torch.arange(n)
    held = (idx // 10) % every == every - 1
    return idx[~held], idx[held]
