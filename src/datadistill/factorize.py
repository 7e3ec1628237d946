"""Multi-formation (Kim et al. 2022, "Dataset Condensation via Efficient Synthetic-Data
Parameterization", IDC): each stored image of H x W pixels holds f x f tiles of H/f x W/f pixels,
and each tile, upsampled back to H x W, is one training image. The stored pixels, the budget an
"images per class" figure counts, stay those of ``ipc`` images per class; a network trains on
``ipc * f * f`` images per class at 1/f of the resolution. Every decoded image carries the label
of the image it came from.

Shapes: stored images (..., N, C, H, W); decoded (..., N * f * f, C, H, W), the f * f tiles of
stored image n at positions n * f * f ... (n + 1) * f * f - 1, row-major within it, so a
class-major stored set decodes to a class-major set.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ConfigError


def check_factor(factor: int, height: int, width: int) -> None:
    """One line naming the problem when ``factor`` does not split H x W images into whole tiles."""
    if factor < 1 or height % factor or width % factor:
        raise ConfigError(f"--factor {factor} must be a positive divisor of the images' {height} x {width} pixels")


def decode(images: torch.Tensor, factor: int) -> torch.Tensor:
    """The training images (..., N * f * f, C, H, W) of stored ``images`` (..., N, C, H, W):
    each tile upsampled bilinearly (IDC's choice), differentiable w.r.t. ``images``."""
    if factor == 1:
        return images
    *lead, n, c, h, w = images.shape
    th, tw = h // factor, w // factor
    # (..., N, C, f, th, f, tw) -> (..., N, f, f, C, th, tw): tile (i, j) of each image
    tiles = images.reshape(*lead, n, c, factor, th, factor, tw).movedim((-4, -2), (-5, -4))
    tiles = tiles.reshape(-1, c, th, tw)
    up = F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)
    return up.reshape(*lead, n * factor * factor, c, h, w)


def encode(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Stored images (..., N, C, H, W) from (..., N * f * f, C, H, W): each run of f * f
    consecutive images area-downsampled to H/f x W/f and tiled row-major, the inverse of
    ``decode`` up to resolution. Used to start a set from real images (IDC's start)."""
    if factor == 1:
        return images
    *lead, m, c, h, w = images.shape
    if m % (factor * factor):
        raise ConfigError(f"{m} images do not fill stored images of {factor} x {factor} tiles")
    th, tw = h // factor, w // factor
    small = F.interpolate(images.reshape(-1, c, h, w), size=(th, tw), mode="area")
    tiles = small.reshape(*lead, m // (factor * factor), factor, factor, c, th, tw)
    return tiles.movedim((-5, -4), (-4, -2)).reshape(*lead, m // (factor * factor), c, h, w)


def decode_labels(labels: torch.Tensor, factor: int) -> torch.Tensor:
    """Labels (S, N) or (S, N, K) of stored images -> those of their decoded images (S, N * f * f[, K])."""
    return labels if factor == 1 else labels.repeat_interleave(factor * factor, dim=1)
