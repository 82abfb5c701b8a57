"""The testbed's data set: scikit-learn's bundled 8x8 digits, upsampled and coloured.

Everything is built offline (the digits ship inside scikit-learn's wheel, the photos inside
scikit-image's) and deterministically from a seed. Each digit is drawn in a random foreground
colour over a random background (a flat colour, a two-colour gradient or a softened crop of a
bundled photo); colours and backgrounds are drawn independently of the class, so every class has
diverse samples.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: scikit-image sample photos that ship inside its wheel (no pooch download).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
#: background kinds: flat colour, linear gradient, photo crop.
BACKGROUND_P = (0.25, 0.25, 0.5)
#: the digit's luma differs at least this much from the mean of its background.
MIN_CONTRAST = 0.3
#: random pose of the digit: rotation (degrees), shift (pixels), scale range.
POSE_ROT, POSE_SHIFT, POSE_SCALE = 8.0, 1.5, (0.92, 1.08)

DEFAULT_SEED = 1234
DEFAULT_SIZE = 32
DEFAULT_COPIES = 3


def load_digit_masks(size: int = DEFAULT_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 digits as smooth intensity maps in [0, 1], shape [N, 1, size, size], and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    # pad by one pixel so the strokes do not touch the border, then upsample smoothly
    x = F.pad(x, (1, 1, 1, 1))
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    return x.clamp(0, 1), torch.from_numpy(digits.target.astype(np.int64))


def _pose(
    masks: torch.Tensor, rng: np.random.Generator, max_rot: float, max_shift: float, scale_range: tuple[float, float]
) -> torch.Tensor:
    """A random small rotation, scale and shift per image (bilinear resampling)."""
    n, _, h, w = masks.shape
    rot = np.deg2rad(max_rot) * (2 * rng.random(n) - 1)
    scale = scale_range[0] + (scale_range[1] - scale_range[0]) * rng.random(n)
    shift = max_shift * (2 * rng.random((n, 2)) - 1) * 2 / h  # pixels -> normalised coordinates
    cos, sin = np.cos(rot) / scale, np.sin(rot) / scale
    theta = np.stack([np.stack([cos, -sin, shift[:, 0]], -1), np.stack([sin, cos, shift[:, 1]], -1)], 1)
    grid = F.affine_grid(torch.from_numpy(theta).float(), list(masks.shape), align_corners=False)
    return F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _crisp(m: torch.Tensor, lo: float = 0.3, width: float = 0.4) -> torch.Tensor:
    """Contrast curve (smoothstep): solid strokes with soft edges a couple of pixels wide."""
    m = ((m - lo) / width).clamp(0, 1)
    return m * m * (3 - 2 * m)


def load_photos(names=PHOTOS) -> list[torch.Tensor]:
    """The bundled photos as float tensors [3, H, W] in [0, 1]."""
    import skimage.data

    out = []
    for name in names:
        im = np.asarray(getattr(skimage.data, name)())
        if im.ndim == 2:
            im = np.stack([im] * 3, -1)
        out.append(torch.from_numpy(im[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1))
    return out


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """h, s, v in [0, 1], shape [N] -> rgb [N, 3]."""
    k = np.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], -1)
    f = np.clip(np.minimum(k, 4 - k), 0, 1)
    return v[:, None] - v[:, None] * s[:, None] * f


_LUMA = np.array([0.299, 0.587, 0.114])


def _random_colours(rng: np.random.Generator, n: int, s_lo: float, v_lo: float) -> np.ndarray:
    return _hsv_to_rgb(rng.random(n), s_lo + (1 - s_lo) * 0.9 * rng.random(n), v_lo + (1 - v_lo) * rng.random(n))


def _photo_crops(rng: np.random.Generator, photos: list[np.ndarray], n: int, cells: int) -> np.ndarray:
    """n random square crops of random photos, box-averaged to cells x cells: [n, 3, cells, cells]."""
    which = rng.integers(len(photos), size=n)
    frac = 0.25 + 0.5 * rng.random(n)
    uy, ux = rng.random(n), rng.random(n)
    out = np.empty((n, 3, cells, cells))
    for p, photo in enumerate(photos):
        sel = np.nonzero(which == p)[0]
        if sel.size == 0:
            continue
        ph, pw, _ = photo.shape
        # integral image, so any box average is four look-ups
        ii = np.zeros((ph + 1, pw + 1, 3))
        ii[1:, 1:] = photo.cumsum(0).cumsum(1)
        crop = (np.minimum(ph, pw) * frac[sel]).astype(np.int64)
        y0 = (uy[sel] * (ph - crop + 1)).astype(np.int64)
        x0 = (ux[sel] * (pw - crop + 1)).astype(np.int64)
        edges = np.rint(crop[:, None] * np.arange(cells + 1)[None] / cells).astype(np.int64)
        ys, xs = y0[:, None] + edges, x0[:, None] + edges  # [m, cells + 1]
        a = ys[:, :-1, None], ys[:, 1:, None], xs[:, None, :-1], xs[:, None, 1:]
        box = ii[a[1], a[3]] - ii[a[0], a[3]] - ii[a[1], a[2]] + ii[a[0], a[2]]  # [m, c, c, 3]
        area = ((a[1] - a[0]) * (a[3] - a[2]))[..., None]
        out[sel] = (box / area).transpose(0, 3, 1, 2)
    return out


def build(
    seed: int = DEFAULT_SEED, size: int = DEFAULT_SIZE, copies: int = DEFAULT_COPIES
) -> tuple[torch.Tensor, torch.Tensor]:
    """The coloured-digits data set: images [N, 3, size, size] float32 in [0, 1], labels [N].

    N = 1797 * copies; copy k of digit i is at index k * 1797 + i, each with its own colours and
    background. Same seed -> bit-identical output.
    """
    masks, labels = load_digit_masks(size)
    photos = [p.permute(1, 2, 0).double().numpy() for p in load_photos()]
    rng = np.random.default_rng(seed)
    n = masks.shape[0] * copies
    kind = rng.choice(len(BACKGROUND_P), size=n, p=BACKGROUND_P)

    # flat colours and gradients: two colours and a direction per image
    c0 = _random_colours(rng, n, 0.2, 0.15)
    c1 = _random_colours(rng, n, 0.2, 0.15)
    ang = 2 * np.pi * rng.random(n)
    lin = np.linspace(-1, 1, size)
    yy, xx = np.meshgrid(lin, lin, indexing="ij")
    w = np.clip((np.cos(ang)[:, None, None] * xx + np.sin(ang)[:, None, None] * yy) / np.sqrt(2) * 0.5 + 0.5, 0, 1)
    w = np.where((kind == 1)[:, None, None], w, 0.0)[:, None]
    bg = c0[:, :, None, None] * (1 - w) + c1[:, :, None, None] * w

    # photo crops: box-averaged to size/2 cells, smoothly upsampled, contrast 0.6-1
    idx = np.nonzero(kind == 2)[0]
    cells = _photo_crops(rng, photos, idx.size, size // 2)
    flip = rng.random(idx.size) < 0.5
    cells[flip] = cells[flip][..., ::-1]
    crops = F.interpolate(torch.from_numpy(cells), size=(size, size), mode="bicubic", align_corners=False).numpy()
    contrast = 0.6 + 0.4 * rng.random(idx.size)[:, None, None, None]
    mean = crops.mean(axis=(2, 3), keepdims=True)
    bg[idx] = np.clip(mean + contrast * (crops - mean), 0, 1)

    # a saturated foreground colour whose brightness (luma) differs from the background's mean
    # by at least MIN_CONTRAST, lighter or darker
    bg_luma = np.einsum("nchw,c->n", bg, _LUMA) / (size * size)
    fg = _random_colours(rng, n, 0.4, 0.1)
    for _ in range(256):
        bad = np.abs(fg @ _LUMA - bg_luma) < MIN_CONTRAST
        if not bad.any():
            break
        fg[bad] = _random_colours(rng, int(bad.sum()), 0.4, 0.1)

    m = _crisp(_pose(masks.repeat(copies, 1, 1, 1), rng, POSE_ROT, POSE_SHIFT, POSE_SCALE)).double().numpy()
    images = bg * (1 - m) + fg[:, :, None, None] * m
    return torch.from_numpy(images).float().clamp(0, 1), labels.repeat(copies)


def split_indices(n: int, every: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic train / held-out split: every `every`-th image is held out."""
    idx = torch.arange(n)
    held = idx % every == every - 1
    return idx[~held], idx[held]
