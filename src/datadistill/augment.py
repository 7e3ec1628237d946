"""Augmentations applied to image batches, by name: ``none``, ``dsa`` or ``dsa-noflip``.

``dsa`` is differentiable Siamese augmentation (Zhao and Bilen 2021): random transforms that are
differentiable w.r.t. the images, drawn once and applied alike to a real and a synthetic batch
(``siamese``), or drawn per image where a network trains on a set (evaluation). ``dsa-noflip``
draws from the same families but left-right flips: digits and letters are not mirror-symmetric.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

Augment = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


def augmenter(name: str, siamese: bool = True) -> Augment | None:
    """The batch transform ``(x, generator) -> x'`` called ``name``; None for ``none``.
    ``siamese``: one random transform per batch (matching losses), else one per image (training)."""
    if name == "none":
        return None
    if name in ("dsa", "dsa-noflip"):
        from .dsa import NO_FLIP, dsa

        if name == "dsa-noflip":
            return functools.partial(dsa, siamese=siamese, families=NO_FLIP)
        return dsa if siamese else functools.partial(dsa, siamese=False)
    raise ValueError(f"unknown augmentation {name!r}")
