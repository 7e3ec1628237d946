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


def dsa_families(name: str) -> tuple[str, ...] | None:
    """The DSA families the augmentation called ``name`` draws from; None for ``none``."""
    if name == "none":
        return None
    from .dsa import FAMILIES, NO_FLIP

    if name == "dsa":
        return FAMILIES
    if name == "dsa-noflip":
        return NO_FLIP
    raise ValueError(f"unknown augmentation {name!r}")


def augmenter(name: str, siamese: bool = True) -> Augment | None:
    """The batch transform ``(x, generator) -> x'`` called ``name``; None for ``none``.
    ``siamese``: one random transform per batch (matching losses), else one per image (training)."""
    families = dsa_families(name)
    if families is None:
        return None
    from .dsa import dsa

    return functools.partial(dsa, siamese=siamese, families=families)
