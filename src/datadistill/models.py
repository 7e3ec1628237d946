"""Architectures, found by name, and the weight-initialisation schemes.

Models are ordinary ``nn.Module``s used as stateless templates: the weights that training and
distillation work on are plain dicts ``{name: tensor}`` passed through ``torch.func.functional_call``,
so many networks can be stacked along a leading dimension and run with ``vmap``. No model here has
buffers (no BatchNorm), which keeps that functional view exact.
"""
from __future__ import annotations

import inspect

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import pretrained
from .errors import ConfigError

ARCHS: dict[str, type[nn.Module]] = {}

Params = dict[str, torch.Tensor]


def register(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: make ``--arch cls.__name__`` find this class."""
    ARCHS[cls.__name__] = cls
    return cls


def arch_class(name: str) -> type[nn.Module]:
    """The registered class called ``name`` (case-insensitive)."""
    by_lower = {k.lower(): v for k, v in ARCHS.items()}
    if name.lower() not in by_lower:
        raise ConfigError(f"unknown arch {name!r}; accepted: {', '.join(sorted(ARCHS))}")
    return by_lower[name.lower()]


def has_width(cls: type) -> bool:
    """Whether an architecture class takes ``width`` (ConvNet channels, MLP hidden units)."""
    return "width" in inspect.signature(cls).parameters


def check_image_size(cls: type, image_size: int, whose: str = "this dataset has") -> None:
    """Raise ``ConfigError`` unless architecture class ``cls`` takes ``image_size``-pixel images."""
    sizes = cls.supported_sizes
    if image_size not in sizes:
        takes = (f"images of at least {sizes.start} pixels" if isinstance(sizes, range)
                 else f"{', '.join(str(s) for s in sorted(sizes))}-pixel images")
        raise ConfigError(f"{cls.__name__} takes {takes}, {whose} {image_size}")


def check_takes_width(*classes: type) -> None:
    """Raise ``ConfigError`` unless one of the architecture classes takes ``--width``."""
    if not any(has_width(cls) for cls in classes):
        widths = ", ".join(n for n, c in sorted(ARCHS.items()) if has_width(c))
        raise ConfigError(f"--width applies to {widths}, not {', '.join(cls.__name__ for cls in classes)}")


def build_model(arch: str, in_channels: int, image_size: int, num_classes: int,
                pretrained_weights: str | None = None, width: int | None = None) -> nn.Module:
    """An instance of ``arch`` for inputs of shape (in_channels, image_size, image_size).

    ``pretrained_weights``: the file ``init_params(model, "imagenet_pretrained", ...)`` reads
    (None: torchvision's hub cache). Only the path is kept on the template, not the weights, so
    copies of the template stay cheap. ``width``: channels (ConvNet) or hidden units (MLP);
    None keeps the class's default.
    """
    cls = arch_class(arch)
    if width is not None:
        check_takes_width(cls)
    if width is not None and width < 1:
        raise ConfigError(f"--width must be positive, got {width}")
    check_image_size(cls, image_size)
    if pretrained_weights is not None and not hasattr(cls, "pretrained_weights"):
        raise ConfigError(f"--pretrained_weights is for --arch {', '.join(pretrained_archs())}, "
                          f"not {cls.__name__}")
    model = cls(in_channels, image_size, num_classes) if width is None else \
        cls(in_channels, image_size, num_classes, width=width)
    if pretrained_weights is not None:
        model.pretrained_weights = str(pretrained.weights_file(pretrained_weights))
    return model


def in_fast_layout(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The images x (B, C, H, W) laid out in memory as ``model`` runs them fastest on the CPU:
    channels-last where its class sets ``channels_last_input``, else x itself. Only the layout
    changes, not the values. For one network outside ``vmap``; several stacked networks gain
    nothing from the layout.
    """
    if not getattr(model, "channels_last_input", False) or x.dim() != 4 or x.device.type != "cpu":
        return x
    # not x.contiguous(memory_format=...): with one channel both layouts count as contiguous and
    # it returns x unchanged, while convolutions follow the strides of what they are given
    return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)


def pretrained_archs() -> list[str]:
    """Archs that can load ImageNet weights: their class declares a ``pretrained_weights`` slot."""
    return sorted(name for name, cls in ARCHS.items() if hasattr(cls, "pretrained_weights"))


@register
class LeNet(nn.Module):
    """LeCun et al. 1998 as in the Dataset Distillation paper: two 5x5 convs, three linears."""

    supported_sizes = {28, 32}
    default_size = 28
    # one network's large batch runs faster with channels-last activations, max-pooling above all
    channels_last_input = True

    def __init__(self, in_channels: int, image_size: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2 if image_size == 28 else 0)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        # ReLU after the pooling: max and ReLU commute, so outputs and gradients are the same as
        # pool(relu(.)), but ReLU and its backward touch a quarter of the values (2x2 pooling)
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@register
class AlexCifarNet(nn.Module):
    """The cuda-convnet CIFAR network used by the paper for CIFAR10 (32x32 RGB)."""

    supported_sizes = {32}
    default_size = 32

    def __init__(self, in_channels: int, image_size: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 5, padding=2), nn.ReLU(),
            nn.MaxPool2d(3, 2, padding=1), nn.LocalResponseNorm(4, alpha=0.001 / 9.0, beta=0.75, k=1),
            nn.Conv2d(64, 64, 5, padding=2), nn.ReLU(),
            nn.LocalResponseNorm(4, alpha=0.001 / 9.0, beta=0.75, k=1), nn.MaxPool2d(3, 2, padding=1),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * 8 * 8, 384), nn.ReLU(),
            nn.Linear(384, 192), nn.ReLU(),
            nn.Linear(192, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@register
class ConvNet(nn.Module):
    """The ConvNet of the later distillation literature (Zhao et al. 2021 onwards).

    Three blocks of 3x3 conv (``width`` channels, 128 in the papers), instance norm (GroupNorm with one group per channel,
    affine, no running statistics), ReLU and 2x2 average pooling, then one linear layer.
    A 28-pixel input is padded by 3 in the first conv, as in the papers' code, so that the blocks
    see 32, 16 and 8 pixels and the linear layer 4 x 4 (without it the last pooling would drop
    the seventh row and column of a 7 x 7 map).
    """

    supported_sizes = {28, 32}
    default_size = 32

    def __init__(self, in_channels: int, image_size: int, num_classes: int, width: int = 128):
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for block in range(3):
            padding = 3 if block == 0 and image_size == 28 else 1
            layers += [nn.Conv2d(channels, width, 3, padding=padding), nn.GroupNorm(width, width),
                       nn.ReLU(), nn.AvgPool2d(2)]
            channels, size = width, (size + 2 * padding - 2) // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@register
class MLP(nn.Module):
    """Two hidden layers of ``width`` (default 128) ReLU units on the flattened image."""

    supported_sizes = {8, 16, 28, 32}
    default_size = 28

    def __init__(self, in_channels: int, image_size: int, num_classes: int, width: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * image_size * image_size, width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(), nn.Linear(width, num_classes),
        )

    def forward(self, x):
        return self.net(x)


@register
class AlexNet(nn.Module):
    """torchvision's AlexNet (Krizhevsky 2014, the layout of ``torchvision.models.alexnet``).

    Same parameter names and shapes as torchvision's, so its ImageNet weights load unchanged
    (``--init imagenet_pretrained``); ``num_classes`` sets the last linear layer, the head. The
    adaptive average pooling to 6x6 makes any input of 63 pixels or more work (below that the third
    max-pooling has nothing left to pool). Its dropout layers are replaced by identities: the
    inner loop differentiates through a deterministic network, and dropout under ``vmap`` would
    draw one mask for all networks or need ``randomness="different"``.
    """

    supported_sizes = range(63, sys.maxsize)
    default_size = 224
    head = "classifier.6"  # replaced for num_classes; drawn from the seed even when pretrained
    pretrained_weights: str | None = None  # set by build_model; None: torchvision's hub cache

    def __init__(self, in_channels: int, image_size: int, num_classes: int):
        super().__init__()
        # imported here: torchvision is slow to import, and most runs never get here
        from torchvision.models import AlexNet as TorchvisionAlexNet

        reference = TorchvisionAlexNet(num_classes=num_classes)
        self.features, self.avgpool = reference.features, reference.avgpool
        self.classifier = reference.classifier
        if in_channels != 3:
            self.features[0] = nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2)
        for i, layer in enumerate(self.classifier):
            if isinstance(layer, nn.Dropout):
                self.classifier[i] = nn.Identity()  # keeps the indices, hence the names, of the linears

    def forward(self, x):
        x = self.avgpool(self.features(x))  # (B, 256, 6, 6)
        return self.classifier(x.flatten(1))
