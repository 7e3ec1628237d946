"""Differentiable Siamese augmentation (Zhao and Bilen, ICML 2021).

``dsa(x, generator)`` transforms a batch x (B, C, H, W) by one of the six families of the paper's
strategy ``color_crop_cutout_flip_scale_rotate``, chosen at random per call, with ONE set of random
parameters drawn from ``generator`` for the whole batch. Two calls with generators in the same
state therefore apply the same transform (the Siamese property: a real and a synthetic batch are
augmented alike), and every transform is differentiable w.r.t. x (each one is linear or affine in
x for fixed parameters), so a loss of augmented synthetic images reaches the images.

The families and their ranges are those of the paper's code (``ParamDiffAug``), in its single-
family mode (``aug_mode='S'``):
- color: brightness x + (b - 0.5), then saturation (x - mean_channels) * 2s + mean_channels, then
  contrast (x - mean_image) * (c + 0.5) + mean_image, with b, s, c ~ U[0, 1);
- crop: a translation by whole pixels, up to 1/8 of the side each way, zeros shifted in;
- cutout: a square of half the side (centred anywhere in the image, clipped at the border) set to 0;
- flip: left-right, with probability 1/2;
- scale: x and y scaled independently by factors in [1/1.2, 1.2] about the centre;
- rotate: by an angle in [-15, 15] degrees about the centre.
Scale and rotate resample bilinearly (``F.affine_grid`` / ``F.grid_sample``, zeros outside);
flip, crop and cutout are ``torchvision.transforms.v2.functional``'s (exact pixel moves); color is
elementwise arithmetic, written here because torchvision's colour functions clamp to [0, 1] and
these images are normalised. Zero is the mean image of the data in normalised space.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
STRATEGY = "_".join(FAMILIES)  # the paper's 'color_crop_cutout_flip_scale_rotate'

BRIGHTNESS = 1.0  # ParamDiffAug of the paper's code
SATURATION = 2.0
CONTRAST = 0.5
CROP_PAD = 0.125
CUTOUT = 0.5
FLIP_PROB = 0.5
SCALE = 1.2
ROTATE_DEGREES = 15.0


@dataclass(frozen=True)
class DsaParams:
    """One draw: the family and its three uniforms u in [0, 1) (each family reads what it needs;
    drawing the same count every call keeps a generator's consumption independent of the family)."""

    family: str
    u: tuple[float, float, float]


def sample_params(generator: torch.Generator | None = None, families: tuple[str, ...] = FAMILIES) -> DsaParams:
    """A family among ``families`` and its parameters, from ``generator`` (None: torch's global one)."""
    index = int(torch.randint(len(families), (1,), generator=generator))
    u = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
    return DsaParams(families[index], tuple(u))


def _pixels(u: float, low: int, high: int) -> int:
    """An integer uniform in low..high (inclusive) from a uniform u in [0, 1)."""
    return low + min(int(u * (high - low + 1)), high - low)


def _color(x: torch.Tensor, u) -> torch.Tensor:
    b, s, c = u
    x = x + (b - 0.5) * BRIGHTNESS
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (s * SATURATION) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (c + CONTRAST) + mean


def _crop(x: torch.Tensor, u) -> torch.Tensor:
    """out[i, j] = x[i + ti, j + tj], zero where that falls outside (pad by the shift, crop back)."""
    h, w = x.shape[-2:]
    sh, sw = int(h * CROP_PAD + 0.5), int(w * CROP_PAD + 0.5)
    ti, tj = _pixels(u[0], -sh, sh), _pixels(u[1], -sw, sw)
    return TF.crop(x, ti, tj, h, w)  # torchvision zero-pads a crop box that leaves the image


def _cutout(x: torch.Tensor, u) -> torch.Tensor:
    h, w = x.shape[-2:]
    ch, cw = int(h * CUTOUT + 0.5), int(w * CUTOUT + 0.5)
    # the centre's range and the clipping of the paper's code
    ci, cj = _pixels(u[0], 0, h - ch % 2), _pixels(u[1], 0, w - cw % 2)
    top, left = max(0, ci - ch // 2), max(0, cj - cw // 2)
    bottom, right = min(h, ci - ch // 2 + ch), min(w, cj - cw // 2 + cw)
    return TF.erase(x, top, left, bottom - top, right - left, torch.zeros((), dtype=x.dtype, device=x.device))


def _flip(x: torch.Tensor, u) -> torch.Tensor:
    return TF.horizontal_flip(x) if u[0] < FLIP_PROB else x


def _affine(x: torch.Tensor, theta: list[list[float]]) -> torch.Tensor:
    """Resample x at the points theta @ (x, y, 1) of the output grid ([-1, 1] coordinates)."""
    t = torch.tensor(theta, dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(t, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _scale(x: torch.Tensor, u) -> torch.Tensor:
    sx = u[0] * (SCALE - 1 / SCALE) + 1 / SCALE
    sy = u[1] * (SCALE - 1 / SCALE) + 1 / SCALE
    return _affine(x, [[sx, 0.0, 0.0], [0.0, sy, 0.0]])


def _rotate(x: torch.Tensor, u) -> torch.Tensor:
    t = (u[0] - 0.5) * 2 * ROTATE_DEGREES / 180 * math.pi
    return _affine(x, [[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]])


_APPLY = {"color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip, "scale": _scale, "rotate": _rotate}


def apply(x: torch.Tensor, params: DsaParams) -> torch.Tensor:
    """The transform ``params`` stands for, applied alike to every image of x (B, C, H, W)."""
    return _APPLY[params.family](x, params.u).contiguous()


def dsa(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x (B, C, H, W) under one random DSA transform drawn from ``generator``; same shape."""
    return apply(x, sample_params(generator))
