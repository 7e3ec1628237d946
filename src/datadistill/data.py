"""Datasets held in memory as normalised tensors: torchvision's files, folders of JPEGs (PASCAL VOC,
CUB-200-2011), and a bundled one.

Every dataset becomes a ``Dataset`` of two ``Split``s of float32 images (N, C, H, W), normalised
per channel with the training split's own mean and std, plus int64 labels. Whole MNIST is 180 MB
as float32, so keeping it on the device removes the data loader from the outer loop entirely.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch

from .datasets import (_DOWNLOADABLE, _LOADERS, canonical_name, check_source_flags,  # noqa: F401 (re-exported)
                       dataset_channels, dataset_names)
from .errors import ConfigError, DatasetError
from .transfer import to_device


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # (N, C, H, W) float32, normalised
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return self.y.shape[0]

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Dataset:
    """``train`` is what distillation reads; ``val``, held out from the training files, is where
    every choice is made; ``test`` is read once, for the final report."""

    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]  # per channel, of the raw [0, 1] pixels
    std: tuple[float, ...]
    val: Split | None = None

    @property
    def in_channels(self) -> int:
        return self.train.x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.x.shape[-1]

    def to(self, device) -> "Dataset":
        return Dataset(self.name, self.train.to(device), self.test.to(device), self.num_classes,
                       self.mean, self.std, None if self.val is None else self.val.to(device))


def to_shape(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Raw [0, 1] images (N, C, H, W) mapped to ``shape`` (C', H', W'), deterministically.

    The transform that puts digit domains of different shapes into one input space (SVHN 32x32
    RGB, MNIST 28x28, USPS 16x16): RGB to grayscale by ITU-R 601 luma (torchvision's
    ``rgb_to_grayscale``), grayscale to RGB by repeating the channel, then a bilinear antialiased
    resize. Identity when the shape already matches.
    """
    import torchvision.transforms.functional as TF

    channels, height, width = shape
    if x.shape[1] != channels:
        if x.shape[1] == 3 and channels == 1:
            x = TF.rgb_to_grayscale(x)
        elif x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        else:
            raise ConfigError(f"cannot map {x.shape[1]}-channel images to {channels} channels; "
                              f"accepted: 1 <-> 3")
    if tuple(x.shape[-2:]) != (height, width):
        x = TF.resize(x, [height, width], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return x.clamp(0, 1).contiguous()


VAL_SEED = 0  # the validation split is the same images on every run


def default_val_size(n_train: int) -> int:
    """Validation images held out of ``n_train`` training files when ``--val_size`` is not given."""
    return min(5000, n_train // 10)


def load_dataset(name: str, root: str | None = None, download: bool = False,
                 image_size: int = 28, device: torch.device | str = "cpu",
                 shape: tuple[int, int, int] | None = None, val_size: int | None = None) -> Dataset:
    """Load ``name`` into memory on ``device``.

    ``image_size`` only matters for the bundled ``digits`` and the JPEG folders (PASCAL_VOC,
    CUB200), which are resized to what the model takes; torchvision datasets keep their native size
    unless ``shape`` (C, H, W) asks for another, in which case ``to_shape`` maps both splits before
    normalisation. ``val_size`` training images (a fixed random draw; default
    ``default_val_size``) become the validation split. Raises ``DatasetError`` when files are
    missing.
    """
    name = canonical_name(name)
    root = os.path.expanduser(root or "./data")
    if name in _DOWNLOADABLE and not download and not os.path.isdir(root):
        raise DatasetError(f"dataset root {root} does not exist; pass --dataset_root DIR holding "
                           f"{name}'s files, or --download to fetch them")
    (xtr, ytr), (xte, yte) = _LOADERS[name](root, download, image_size if shape is None else shape[-1])
    if shape is not None:
        xtr, xte = to_shape(xtr, shape), to_shape(xte, shape)
    n_val = default_val_size(len(ytr)) if val_size is None else val_size
    if n_val >= len(ytr):
        raise ConfigError(f"--val_size {n_val} leaves no training images of {name}'s {len(ytr)}; "
                          f"accepted: 0..{len(ytr) - 1}")
    order = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(VAL_SEED))
    xva, yva = xtr[order[:n_val]], ytr[order[:n_val]]
    keep = order[n_val:].sort().values  # the training split keeps the files' order
    xtr, ytr = xtr[keep], ytr[keep]
    mean = xtr.mean(dim=(0, 2, 3))
    std = xtr.std(dim=(0, 2, 3))
    norm = lambda x: (x - mean[:, None, None]) / std[:, None, None]  # noqa: E731
    num_classes = int(max(ytr.max(), yte.max())) + 1
    val = Split(norm(xva), yva) if n_val else None
    return Dataset(name, Split(norm(xtr), ytr), Split(norm(xte), yte), num_classes,
                   tuple(mean.tolist()), tuple(std.tolist()), val).to(device)


def shuffled_batches(split: Split, batch_size: int, generator: torch.Generator
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of random batches of exactly ``batch_size`` (the remainder is dropped so every
    outer step costs the same; a split smaller than a batch gives one batch of all of it)."""
    n = len(split)
    order = to_device(torch.randperm(n, generator=generator), split.x.device)
    size = min(batch_size, n)
    for start in range(0, n - size + 1, size):
        idx = order[start:start + size]
        yield split.x[idx], split.y[idx]


def batches_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // min(batch_size, n))


def class_balanced_sample(split: Split, per_class: int, num_classes: int,
                          generator: torch.Generator, source: dict[int, int] | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` distinct random images of each class, ordered class by class; the slots of a
    class c in ``source`` hold images of class ``source[c]`` instead (labels stay c)."""
    picks = []
    for c in range(num_classes):
        drawn = (source or {}).get(c, c)
        idx = (split.y == drawn).nonzero().squeeze(1).cpu()
        if len(idx) < per_class:
            raise ConfigError(f"{per_class} real images per class asked for (the set's images per class: --ipc, "
                              f"or --distill_steps x --distilled_images_per_class_per_step), but class {drawn} "
                              f"has {len(idx)} training images")
        picks.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    idx = torch.cat(picks).to(split.x.device)
    labels = torch.arange(num_classes, device=split.y.device).repeat_interleave(per_class)
    return split.x[idx], labels
