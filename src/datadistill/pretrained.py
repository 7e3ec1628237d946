"""torchvision's ImageNet AlexNet weights (``--init imagenet_pretrained``), found on disk.

Nothing here downloads: the weights come from ``--pretrained_weights PATH`` or from the file
torchvision itself would have cached (``torch.hub.get_dir()/checkpoints/alexnet-owt-*.pth``), so a
run never stalls or fails half-way on the network, and tests never touch it.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from .errors import ArtifactError, ConfigError

StateDict = dict[str, torch.Tensor]


def _weights_url() -> str:
    # imported here: torchvision is slow to import, and most runs never get here
    from torchvision.models import AlexNet_Weights

    return AlexNet_Weights.IMAGENET1K_V1.url


def hub_cache_path() -> Path:
    """Where torchvision caches AlexNet's ImageNet weights: the file looked for when no
    ``--pretrained_weights`` is given (honours ``$TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_weights_url())


def weights_file(path: str | os.PathLike | None) -> Path:
    """The weights file to read: ``path`` if given, else the hub cache; ``ConfigError`` naming
    the file to provide when it does not exist."""
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"--pretrained_weights {path} is not a file; pass torchvision's AlexNet "
                              f"ImageNet weights ({os.path.basename(_weights_url())})")
        return Path(path)
    cached = hub_cache_path()
    if not cached.is_file():
        raise ConfigError(f"--init imagenet_pretrained needs torchvision's AlexNet ImageNet weights: put "
                          f"{_weights_url()} at {cached}, or pass --pretrained_weights PATH")
    return cached


def alexnet_state(path: str | os.PathLike | None) -> StateDict:
    """The state dict in ``weights_file(path)``, on the CPU; shared, so callers must not modify it."""
    file = weights_file(path).resolve()
    return _load(str(file), file.stat().st_mtime_ns)


# One network per seed asks for the same 233 MB file; read it once. The modification time is part
# of the key so that a file replaced on disk is read again.
@functools.lru_cache(maxsize=1)
def _load(file: str, mtime_ns: int) -> StateDict:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and unpickler errors have no common base class
        first_line = (str(e).strip().splitlines() or [""])[0]  # weights_only errors span many lines
        raise ArtifactError(f"cannot read pretrained weights {file}: {type(e).__name__}: "
                            f"{first_line}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtifactError(f"{file} is not a state dict (name -> tensor); pass torchvision's AlexNet "
                            f"ImageNet weights")
    return state
