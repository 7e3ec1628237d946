"""Architectures, found by name, and the weight-initialisation schemes.

Models are ordinary ``nn.Module``s used as stateless templates: the weights that training and
distillation work on are plain dicts ``{name: tensor}`` passed through ``torch.func.functional_call``,
so many networks can be stacked along a leading dimension and run with ``vmap``. No model here has
buffers (no BatchNorm), which keeps that functional view exact.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

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


def build_model(arch: str, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """An instance of ``arch`` for inputs of shape (in_channels, image_size, image_size)."""
    cls = arch_class(arch)
    if image_size not in cls.supported_sizes:
        sizes = ", ".join(str(s) for s in sorted(cls.supported_sizes))
        raise ConfigError(f"{cls.__name__} takes {sizes}-pixel images, this dataset has {image_size}")
    return cls(in_channels, image_size, num_classes)


@register
class LeNet(nn.Module):
    """LeCun et al. 1998 as in the Dataset Distillation paper: two 5x5 convs, three linears."""

    supported_sizes = {28, 32}
    default_size = 28

    def __init__(self, in_channels: int, image_size: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2 if image_size == 28 else 0)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
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

    Three blocks of 3x3 conv (128 channels), instance norm (GroupNorm with one group per channel,
    affine, no running statistics), ReLU and 2x2 average pooling, then one linear layer.
    """

    supported_sizes = {28, 32}
    default_size = 32

    def __init__(self, in_channels: int, image_size: int, num_classes: int, width: int = 128):
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for _ in range(3):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(width, width),
                       nn.ReLU(), nn.AvgPool2d(2)]
            channels, size = width, size // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@register
class MLP(nn.Module):
    """Two hidden layers of 128 ReLU units on the flattened image."""

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


def _weight_init(scheme: str, gain: float) -> Callable[[torch.Tensor], None]:
    return {
        "xavier": lambda w: nn.init.xavier_normal_(w, gain=gain),
        "xavier_unif": lambda w: nn.init.xavier_uniform_(w, gain=gain),
        "kaiming": lambda w: nn.init.kaiming_normal_(w, a=gain, mode="fan_in"),
        "kaiming_out": lambda w: nn.init.kaiming_normal_(w, a=gain, mode="fan_out"),
        "orthogonal": lambda w: nn.init.orthogonal_(w, gain=gain),
    }[scheme]


@torch.no_grad()
def init_params(model: nn.Module, scheme: str, gain: float, seed: int,
                device: torch.device | str = "cpu") -> Params:
    """Fresh weights for ``model`` as a dict, drawn deterministically from ``seed``.

    Conv and linear weights follow ``scheme`` with zero biases (``default`` keeps PyTorch's own
    layer initialisation); norm layers start as the identity. The template ``model`` is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        params: Params = {}
        for prefix, module in model.named_modules():
            own = dict(module.named_parameters(recurse=False))
            if not own:
                continue
            fresh = {k: torch.empty_like(v, device="cpu") for k, v in own.items()}
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                if scheme == "default":
                    # the layer's own reset_parameters, run on a throwaway copy
                    clone = copy.deepcopy(module).to("cpu")
                    clone.reset_parameters()
                    fresh = {k: v.detach().clone() for k, v in clone.named_parameters(recurse=False)}
                else:
                    _weight_init(scheme, gain)(fresh["weight"])
                    if "bias" in fresh:
                        fresh["bias"].zero_()
            elif isinstance(module, (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)):
                fresh["weight"].fill_(1.0)
                fresh["bias"].zero_()
            else:
                raise ConfigError(f"no init rule for {type(module).__name__} parameters")
            for k, v in fresh.items():
                params[f"{prefix}.{k}" if prefix else k] = v.to(device)
    return params


def stack_params(param_list: list[Params]) -> Params:
    """Stack per-network dicts into one dict of (n_nets, ...) tensors for ``vmap``."""
    return {k: torch.stack([p[k] for p in param_list]) for k in param_list[0]}


def unstack_params(stacked: Params) -> list[Params]:
    n = next(iter(stacked.values())).shape[0]
    return [{k: v[i] for k, v in stacked.items()} for i in range(n)]


def count_params(params: Params) -> int:
    return sum(math.prod(v.shape) for v in params.values())
