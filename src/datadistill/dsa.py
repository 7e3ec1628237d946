"""Differentiable Siamese augmentation (Zhao and Bilen, ICML 2021).

``dsa(x, generator)`` transforms a batch x (B, C, H, W) by one of the six families of the paper's
strategy ``color_crop_cutout_flip_scale_rotate``, chosen at random per call. With ``siamese=True``
(the default) ONE set of random parameters drawn from ``generator`` serves the whole batch: two
calls with generators in the same state apply the same transform, so a real and a synthetic batch
are augmented alike, as in the papers' matching losses. With ``siamese=False`` every image draws
its own parameters (the family is still one per call): the papers' code does this wherever it
trains a network on a set (evaluation, gradient matching's inner training, trajectory matching's
steps), and it is what makes DSA a data augmentation there: one transform per batch would give a
100-image set a single view per epoch. Every transform is differentiable w.r.t. x (each is linear
or affine in x for fixed parameters), so a loss of augmented synthetic images reaches the images.

The families and their ranges are those of the paper's code (``ParamDiffAug``), in its single-
family mode (``aug_mode='S'``); u, v, w ~ U[0, 1) are an image's three uniforms:
- color: brightness x + (u - 0.5), then saturation (x - mean_channels) * 2v + mean_channels, then
  contrast (x - mean_image) * (w + 0.5) + mean_image;
- crop: a translation by whole pixels, up to 1/8 of the side each way, zeros shifted in;
- cutout: a square of half the side (centred anywhere in the image, clipped at the border) set to 0;
- flip: left-right, when u < 1/2;
- scale: x and y scaled independently by factors in [1/1.2, 1.2] about the centre;
- rotate: by an angle in [-15, 15] degrees about the centre.
Scale and rotate resample bilinearly (``F.affine_grid`` / ``F.grid_sample``, zeros outside); crop,
cutout and flip move or zero whole pixels (exact). Zero is the mean image of the data in
normalised space, which is why zeros are what is shifted in and cut out.

The uniforms are drawn on the host, from a CPU generator, so one seed gives one transform on any
device; what a transform needs of them reaches the images' device through ``transfer.to_device``,
which does not make a CUDA device's queue drain first (a transform runs at every training step).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .transfer import to_device

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
STRATEGY = "_".join(FAMILIES)  # the paper's 'color_crop_cutout_flip_scale_rotate'
# the paper's strategy without left-right flips: a mirrored digit or letter is not the same class
NO_FLIP = tuple(f for f in FAMILIES if f != "flip")

BRIGHTNESS = 1.0  # ParamDiffAug of the paper's code
SATURATION = 2.0
CONTRAST = 0.5
CROP_PAD = 0.125
CUTOUT = 0.5
FLIP_PROB = 0.5
SCALE = 1.2
ROTATE_DEGREES = 15.0


@dataclass(frozen=True, eq=False)
class DsaParams:
    """One draw: the family and the uniforms u in [0, 1), (n, 3) (a tensor or nested sequences;
    one triple stands for n = 1): one row for the whole batch (n = 1) or one per image (n = B).
    Each family reads the columns it needs; drawing three per row whatever the family keeps a
    generator's consumption independent of the family."""

    family: str
    u: torch.Tensor | tuple

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown DSA family {self.family!r}; accepted: {', '.join(FAMILIES)}")

    def table(self) -> torch.Tensor:
        """u as an (n, 3) float64 tensor."""
        return torch.as_tensor(self.u, dtype=torch.float64).reshape(-1, 3)


def sample_params(generator: torch.Generator | None = None, families: tuple[str, ...] = FAMILIES,
                  n: int = 1) -> DsaParams:
    """A family among ``families`` and n rows of uniforms, from ``generator`` (None: torch's global one)."""
    index = int(torch.randint(len(families), (1,), generator=generator))
    return DsaParams(families[index], torch.rand(n, 3, generator=generator, dtype=torch.float64))


def _pixels(u: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """Integers uniform in low..high (inclusive) from uniforms u in [0, 1); same shape, int64."""
    return low + torch.clamp((u * (high - low + 1)).long(), max=high - low)


def _column(u: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
    """Column i of u as (n, 1, 1, 1) in x's dtype and device, to broadcast over x's images."""
    return to_device(u[:, i].to(x.dtype), x.device).view(-1, 1, 1, 1)


def _color(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    x = x + _column((u - 0.5) * BRIGHTNESS, 0, x)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * _column(u * SATURATION, 1, x) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _column(u + CONTRAST, 2, x) + mean


def _crop(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """out[b, :, i, j] = x[b, :, i + ti_b, j + tj_b], zero where that falls outside."""
    b, _, h, w = x.shape
    sh, sw = int(h * CROP_PAD + 0.5), int(w * CROP_PAD + 0.5)
    ti, tj = to_device(_pixels(u[:, 0], -sh, sh), x.device), to_device(_pixels(u[:, 1], -sw, sw), x.device)
    rows = (torch.arange(h, device=x.device) + sh + ti[:, None]).expand(b, h)  # in the padded image
    cols = (torch.arange(w, device=x.device) + sw + tj[:, None]).expand(b, w)
    padded = F.pad(x, (sw, sw, sh, sh))
    images = torch.arange(b, device=x.device)[:, None, None]
    # indices on dims 0, 2, 3 around a slice: the result is (B, H, W, C)
    return padded[images, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    ch, cw = int(h * CUTOUT + 0.5), int(w * CUTOUT + 0.5)
    # the centre's range and the clipping of the paper's code
    ci, cj = to_device(_pixels(u[:, 0], 0, h - ch % 2), x.device), to_device(_pixels(u[:, 1], 0, w - cw % 2), x.device)
    i, j = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    rows = (i >= ci[:, None] - ch // 2) & (i < ci[:, None] - ch // 2 + ch)  # (n, H)
    cols = (j >= cj[:, None] - cw // 2) & (j < cj[:, None] - cw // 2 + cw)  # (n, W)
    return x.masked_fill((rows[:, :, None] & cols[:, None, :])[:, None], 0.0)


def _flip(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    flipped = to_device(u[:, 0] < FLIP_PROB, x.device).view(-1, 1, 1, 1)
    return torch.where(flipped, x.flip(-1), x)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample each image b at the points theta[b] @ (x, y, 1) of the output grid ([-1, 1]
    coordinates); theta (n, 2, 3) float64, n = 1 or B."""
    t = to_device(theta.to(x.dtype), x.device).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(t, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _scale(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    s = u[:, :2] * (SCALE - 1 / SCALE) + 1 / SCALE  # (n, 2): the x and y factors
    zero = torch.zeros_like(s[:, 0])
    theta = torch.stack([torch.stack([s[:, 0], zero, zero], -1), torch.stack([zero, s[:, 1], zero], -1)], 1)
    return _affine(x, theta)


def _rotate(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    t = (u[:, 0] - 0.5) * 2 * ROTATE_DEGREES / 180 * math.pi
    zero = torch.zeros_like(t)
    theta = torch.stack([torch.stack([t.cos(), -t.sin(), zero], -1), torch.stack([t.sin(), t.cos(), zero], -1)], 1)
    return _affine(x, theta)


_APPLY = {"color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip, "scale": _scale, "rotate": _rotate}


def apply(x: torch.Tensor, params: DsaParams) -> torch.Tensor:
    """The transform ``params`` stands for applied to x (B, C, H, W): its one row to every image,
    or row b to image b."""
    u = params.table()
    if u.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"DSA parameters for {u.shape[0]} images, a batch of {x.shape[0]}")
    return _APPLY[params.family](x, u).contiguous()


def apply_by_group(x: torch.Tensor, groups: torch.Tensor, draws: Sequence[DsaParams]) -> torch.Tensor:
    """Image b of x (B, C, H, W) under the one-row transform ``draws[groups[b]]``; same shape and
    order. ``groups`` (B,) int64 on the CPU. Images whose draws share a family go through one call
    with a row per image, so G groups cost at most six calls instead of G: what a matching loss with
    one Siamese draw per class needs on a device where each call's launches, not its arithmetic,
    take the time. The result equals ``apply`` group by group."""
    rows = torch.cat([d.table() for d in draws])  # (G, 3)
    parts, order = [], []
    for family in dict.fromkeys(d.family for d in draws):
        mine = torch.tensor([d.family == family for d in draws])[groups].nonzero().squeeze(1)  # (n_f,)
        parts.append(_APPLY[family](x[to_device(mine, x.device)], rows[groups[mine]]))
        order.append(mine)
    inverse = torch.empty(x.shape[0], dtype=torch.long)
    inverse[torch.cat(order)] = torch.arange(x.shape[0])
    return torch.cat(parts)[to_device(inverse, x.device)].contiguous()


def dsa(x: torch.Tensor, generator: torch.Generator | None = None, siamese: bool = True,
        families: tuple[str, ...] = FAMILIES) -> torch.Tensor:
    """x (B, C, H, W) under one random DSA transform of ``families`` drawn from ``generator``; same
    shape. ``siamese``: one parameter set for the batch; else one per image (see the module's doc)."""
    return apply(x, sample_params(generator, families, n=1 if siamese else x.shape[0]))
