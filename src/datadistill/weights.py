"""Weights as plain dicts of tensors: drawn from an init scheme and a seed, or ImageNet's for
AlexNet; stacked along a leading networks dimension for ``vmap``."""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn as nn

from . import pretrained
from .errors import ArtifactError, ConfigError
from .models import Params, pretrained_archs
from .transfer import to_device


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
    layer initialisation); norm layers start as the identity. ``imagenet_pretrained`` (AlexNet
    only): see ``pretrained_params``. The template ``model`` is untouched.
    """
    if scheme == "imagenet_pretrained":
        return pretrained_params(model, gain, seed, device)
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
                # drawn on the host, one seed one network on any device; copied without making
                # the device's queue drain (fresh networks are drawn at every outer iteration)
                params[f"{prefix}.{k}" if prefix else k] = to_device(v, device)
    return params


def check_pretrained_fits(arch: type, channels: int | None) -> None:
    """Raise ``ConfigError`` unless ``arch`` has ImageNet weights and its inputs (``channels``; None
    where not known yet) are RGB, as ImageNet's are."""
    if not hasattr(arch, "pretrained_weights"):
        raise ConfigError(f"--init imagenet_pretrained needs --arch {', '.join(pretrained_archs())}; "
                          f"{arch.__name__} has no ImageNet weights")
    if channels not in (None, 3):
        raise ConfigError(f"--init imagenet_pretrained needs RGB images (ImageNet's), this dataset has "
                          f"{channels} channel(s)")


@torch.no_grad()
def pretrained_params(model: nn.Module, gain: float, seed: int, device: torch.device | str = "cpu") -> Params:
    """ImageNet weights for every layer but the head, which is drawn from ``seed`` (xavier normal
    with ``gain``, zero bias): networks differ only in their head, as a new task's would.

    The weights come from ``model.pretrained_weights``, or torchvision's hub cache when that is
    None (see ``pretrained.weights_file``); raises ``ConfigError`` for an arch without ImageNet
    weights, non-RGB inputs or a missing file, ``ArtifactError`` for a file of another network.
    """
    check_pretrained_fits(type(model), model.features[0].in_channels if hasattr(model, "features") else None)
    state = pretrained.alexnet_state(model.pretrained_weights)
    source = model.pretrained_weights or pretrained.hub_cache_path()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        params: Params = {}
        for name, template in model.named_parameters():
            if name.startswith(model.head + "."):
                fresh = torch.empty_like(template, device="cpu")
                if name.endswith("weight"):
                    nn.init.xavier_normal_(fresh, gain=gain)
                else:
                    fresh.zero_()
                params[name] = fresh.to(device)
                continue
            loaded = state.get(name)
            if loaded is None or loaded.shape != template.shape:
                got = "missing" if loaded is None else tuple(loaded.shape)
                raise ArtifactError(
                    f"{source} does not fit {type(model).__name__}: {name} is {got}, expected "
                    f"{tuple(template.shape)}; pass torchvision's AlexNet ImageNet weights")
            # a copy: the loaded state is shared between networks and must stay as read
            params[name] = loaded.to(device=device, dtype=template.dtype, copy=True)
    return params


def stack_params(param_list: list[Params]) -> Params:
    """Stack per-network dicts into one dict of (n_nets, ...) tensors for ``vmap``."""
    return {k: torch.stack([p[k] for p in param_list]) for k in param_list[0]}


def unstack_params(stacked: Params) -> list[Params]:
    n = next(iter(stacked.values())).shape[0]
    return [{k: v[i] for k, v in stacked.items()} for i in range(n)]


def count_params(params: Params) -> int:
    return sum(math.prod(v.shape) for v in params.values())


def check_finite(params: Params, diverged: str) -> None:
    """Raise FloatingPointError (exit 1, one line) saying ``diverged`` when any trained weight is
    NaN or infinite: such networks score chance and must not pass for a result or a zoo."""
    if not all(bool(torch.isfinite(v).all()) for v in params.values()):
        raise FloatingPointError(diverged)
