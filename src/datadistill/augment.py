"""Augmentations applied to image batches, by name: ``none`` or ``dsa``.

``dsa`` is differentiable Siamese augmentation (Zhao and Bilen 2021): random transforms that are
differentiable w.r.t. the images, drawn once and applied alike to a real and a synthetic batch.
"""
from __future__ import annotations

from typing import Callable

import torch

Augment = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


def augmenter(name: str) -> Augment | None:
    """The batch transform ``(x, generator) -> x'`` called ``name``; None for ``none``."""
    if name == "none":
        return None
    if name == "dsa":
        from .dsa import dsa

        return dsa
    raise ValueError(f"unknown augmentation {name!r}")
