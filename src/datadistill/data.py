"""Datasets held in memory as normalised tensors: torchvision's files, and a bundled one.

Every dataset becomes a ``Dataset`` of two ``Split``s of float32 images (N, C, H, W), normalised
per channel with the training split's own mean and std, plus int64 labels. Whole MNIST is 180 MB
as float32, so keeping it on the device removes the data loader from the outer loop entirely.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, DatasetError


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
    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]  # per channel, of the raw [0, 1] pixels
    std: tuple[float, ...]

    @property
    def in_channels(self) -> int:
        return self.train.x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.x.shape[-1]

    def to(self, device) -> "Dataset":
        return Dataset(self.name, self.train.to(device), self.test.to(device),
                       self.num_classes, self.mean, self.std)


# name -> loader(root, download, image_size) returning raw ([0,1] float (N,C,H,W), labels) per split
_LOADERS: dict[str, Callable] = {}


def _loader(name: str):
    def deco(fn):
        _LOADERS[name] = fn
        return fn
    return deco


def dataset_names() -> list[str]:
    return list(_LOADERS)


def canonical_name(name: str) -> str:
    """The registered spelling of ``name``, matched case-insensitively (``cifar10`` -> ``Cifar10``)."""
    by_lower = {k.lower(): k for k in _LOADERS}
    if name.lower() not in by_lower:
        raise ConfigError(f"unknown dataset {name!r}; accepted: {', '.join(_LOADERS)}")
    return by_lower[name.lower()]


def _as_float_nchw(images, channels_last: bool) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(images))
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif channels_last:
        t = t.permute(0, 3, 1, 2)
    t = t.float()
    return t / 255.0 if t.max() > 1.5 else t


def _torchvision(cls_name: str, root: str, download: bool, split_kw: Callable[[bool], dict],
                 channels_last: bool, label_attr: str = "targets"):
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    out = []
    for train in (True, False):
        try:
            # torchvision prints download progress; keep our stdout for our own report
            with contextlib.redirect_stdout(io.StringIO()):
                ds = cls(root, download=download, **split_kw(train))
        except RuntimeError as e:
            if download:
                raise DatasetError(f"could not download {cls_name} into {root}: {e}") from None
            raise DatasetError(
                f"{cls_name} files not found under {root}; pass --dataset_root DIR holding "
                f"{cls_name}'s files, or --download to fetch them") from None
        except OSError as e:  # network failures surface as URLError / OSError
            raise DatasetError(f"could not download {cls_name} into {root}: {e}") from None
        out.append((_as_float_nchw(ds.data, channels_last),
                    torch.as_tensor(np.asarray(getattr(ds, label_attr)), dtype=torch.int64)))
    return out


@_loader("MNIST")
def _mnist(root, download, image_size):
    return _torchvision("MNIST", root, download, lambda t: {"train": t}, False)


@_loader("FashionMNIST")
def _fashion(root, download, image_size):
    return _torchvision("FashionMNIST", root, download, lambda t: {"train": t}, False)


@_loader("Cifar10")
def _cifar10(root, download, image_size):
    return _torchvision("CIFAR10", root, download, lambda t: {"train": t}, True)


@_loader("SVHN")
def _svhn(root, download, image_size):
    return _torchvision("SVHN", root, download, lambda t: {"split": "train" if t else "test"},
                        False, label_attr="labels")


@_loader("USPS")
def _usps(root, download, image_size):
    return _torchvision("USPS", root, download, lambda t: {"train": t}, False)


@_loader("digits")
def _digits(root, download, image_size):
    """scikit-learn's 1797 8x8 handwritten digits (shipped inside the package, no file, no network),
    upsampled bilinearly to ``image_size``, split 70/30 per class with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.3, random_state=0,
                                           stratify=bunch.target)
    return [(x[idx_train], y[idx_train]), (x[idx_test], y[idx_test])]


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


def load_dataset(name: str, root: str | None = None, download: bool = False,
                 image_size: int = 28, device: torch.device | str = "cpu",
                 shape: tuple[int, int, int] | None = None) -> Dataset:
    """Load ``name`` into memory on ``device``.

    ``image_size`` only matters for the bundled ``digits`` (resized to what the model takes);
    torchvision datasets keep their native size unless ``shape`` (C, H, W) asks for another, in
    which case ``to_shape`` maps both splits before normalisation. Raises ``DatasetError`` when
    files are missing.
    """
    name = canonical_name(name)
    root = os.path.expanduser(root or "./data")
    if name != "digits" and not download and not os.path.isdir(root):
        raise DatasetError(f"dataset root {root} does not exist; pass --dataset_root DIR holding "
                           f"{name}'s files, or --download to fetch them")
    (xtr, ytr), (xte, yte) = _LOADERS[name](root, download, image_size if shape is None else shape[-1])
    if shape is not None:
        xtr, xte = to_shape(xtr, shape), to_shape(xte, shape)
    mean = xtr.mean(dim=(0, 2, 3))
    std = xtr.std(dim=(0, 2, 3))
    norm = lambda x: (x - mean[:, None, None]) / std[:, None, None]  # noqa: E731
    num_classes = int(ytr.max()) + 1
    return Dataset(name, Split(norm(xtr), ytr), Split(norm(xte), yte), num_classes,
                   tuple(mean.tolist()), tuple(std.tolist())).to(device)


def shuffled_batches(split: Split, batch_size: int, generator: torch.Generator
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of random batches of exactly ``batch_size`` (the remainder is dropped so every
    outer step costs the same; a split smaller than a batch gives one batch of all of it)."""
    n = len(split)
    order = torch.randperm(n, generator=generator).to(split.x.device)
    size = min(batch_size, n)
    for start in range(0, n - size + 1, size):
        idx = order[start:start + size]
        yield split.x[idx], split.y[idx]


def batches_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // min(batch_size, n))


def class_balanced_sample(split: Split, per_class: int, num_classes: int,
                          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` distinct random images of each class, ordered class by class."""
    picks = []
    for c in range(num_classes):
        idx = (split.y == c).nonzero().squeeze(1).cpu()
        if len(idx) < per_class:
            raise ConfigError(f"class {c} has {len(idx)} training images, {per_class} asked for")
        picks.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    idx = torch.cat(picks).to(split.x.device)
    return split.x[idx], split.y[idx]
