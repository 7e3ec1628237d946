"""Soft labels from teacher networks (``--label_mode teacher``).

Each synthetic image's label becomes the mean, over trained networks, of softmax(f(x) / T): the
soft targets of knowledge distillation (Hinton, Vinyals and Dean 2015), used as a distilled set's
labels by TESLA (Cui et al. 2023) and RDED (Sun et al. 2024). A network trained from scratch on a
few images learns, besides each image's class, how much it resembles the other classes; with one
image per class that is most of what the set can say about the classes' boundaries. A temperature
T > 1 keeps that resemblance visible where a trained network is near certain of the class.

Pure: weights and images in, labels out; ``jobs`` finds the teachers (the run's train zoo).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from .inner import batched_logits
from .models import Params
from .synthetic import SyntheticSet


def teacher_labels(model: nn.Module, teachers: Params, images: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N, classes) probability vectors: the mean over ``teachers`` (stacked weights, each (k, ...))
    of softmax(logits / ``temperature``) on ``images`` (N, C, H, W)."""
    logits = batched_logits(model, teachers, images)  # (k, N, classes), without gradients
    return (logits / temperature).softmax(-1).mean(0)


def relabelled(synthetic: SyntheticSet, model: nn.Module, teachers: Params, temperature: float) -> SyntheticSet:
    """``synthetic`` with its labels (S, N) replaced by the teachers' (S, N, classes), in the
    images' dtype; the images and step sizes are the same tensors."""
    steps, n = synthetic.images.shape[:2]
    probs = teacher_labels(model, teachers, synthetic.images.flatten(0, 1), temperature)
    return dataclasses.replace(synthetic, labels=probs.view(steps, n, -1).to(synthetic.images.dtype))
