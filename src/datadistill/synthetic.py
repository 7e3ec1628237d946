"""The distilled set: images, labels and per-step step sizes, and its plain-dict file form."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .errors import ArtifactError

FORMAT = "datadistill.distilled/1"


@dataclass
class SyntheticSet:
    """A training set of ``steps`` batches used for ``epochs`` passes of GD.

    images: (S, N, C, H, W), normalised like the real data; labels: (S, N) int64 classes, or
    (S, N, num_classes) float target vectors when they were learned (the inner GD's cross-entropy
    -sum_c y_c log p_c takes either; learned targets may be negative and need not sum to 1);
    lrs: (S * epochs,) positive step sizes, one per GD step in the order they are taken.
    """

    images: torch.Tensor
    labels: torch.Tensor
    lrs: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    meta: dict = field(default_factory=dict)  # dataset, arch, config, ...

    @property
    def steps(self) -> int:
        return self.images.shape[0]

    @property
    def epochs(self) -> int:
        return self.lrs.shape[0] // self.steps

    @property
    def hard_labels(self) -> torch.Tensor:
        """(S, N) int64: the labels, or the class with the largest learned weight."""
        return self.labels.argmax(-1) if self.labels.is_floating_point() else self.labels

    def to(self, device) -> "SyntheticSet":
        """The same set with its tensors on ``device``."""
        return dataclasses.replace(self, images=self.images.to(device), labels=self.labels.to(device),
                                   lrs=self.lrs.to(device))

    def denormalised(self) -> torch.Tensor:
        """Images in [0, 1] pixel space, (S, N, C, H, W)."""
        mean = torch.tensor(self.mean).view(1, 1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, 1, -1, 1, 1)
        return (self.images.detach().cpu() * std + mean).clamp(0, 1)

    def to_dict(self) -> dict:
        """A dict of tensors and plain values that ``torch.load`` reads with no datadistill import."""
        return {
            "format": FORMAT,
            "images": self.images.detach().cpu(),
            "labels": self.labels.detach().cpu(),
            "lrs": self.lrs.detach().cpu(),
            "mean": list(self.mean),
            "std": list(self.std),
            "num_classes": self.num_classes,
            "steps": self.steps,
            "epochs": self.epochs,
            **self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SyntheticSet":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ArtifactError(f"not a distilled set (expected a dict with format {FORMAT!r})")
        core = {"format", "images", "labels", "lrs", "mean", "std", "num_classes", "steps", "epochs"}
        return cls(d["images"], d["labels"], d["lrs"], tuple(d["mean"]), tuple(d["std"]),
                   int(d["num_classes"]), {k: v for k, v in d.items() if k not in core})


def initial_set(num_classes: int, in_channels: int, image_size: int, steps: int, epochs: int,
                per_class: int, init_lr: float, mean, std, generator: torch.Generator) -> SyntheticSet:
    """Gaussian-noise images with one-per-class labels (class-major within a step) and every step
    size at ``init_lr``."""
    n = num_classes * per_class
    images = torch.randn(steps, n, in_channels, image_size, image_size, generator=generator)
    labels = torch.arange(num_classes).repeat_interleave(per_class).repeat(steps, 1)
    lrs = torch.full((steps * epochs,), float(init_lr))
    return SyntheticSet(images, labels, lrs, tuple(mean), tuple(std), num_classes)
