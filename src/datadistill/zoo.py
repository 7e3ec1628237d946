"""A model zoo: many networks of one architecture trained on one dataset from independent
initialisations, kept together as stacked weights (``--mode train``).

Distillation against *loaded* networks (adaptation, attack, or basic with ``--train_nets_type
loaded``) draws from a zoo of phase ``train``; scoring uses a zoo of phase ``test``. The two phases
draw their initialisations from disjoint seed ranges, so a network that shaped the distilled images
is never one that scores them.

Training is pure here (weights in, weights out); ``runner`` stores the result through
``artifacts``, one part per chunk of networks so that an interrupted run resumes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .config import OuterConfig
from .data import Split, batches_per_epoch, shuffled_batches
from .errors import ArtifactError
from .inner import mean_loss_per_net_summed
from .models import Params

FORMAT = "datadistill.zoo/1"
PHASES = ("train", "test")
def zoo_dir_for(root: str | Path, dataset: str, arch: str, init: str, phase: str) -> Path:
    """Where the zoo of (dataset, arch, init, phase) lives under ``root``."""
    return Path(root) / f"{dataset}-{arch}-{init}-{phase}"


@dataclass
class Zoo:
    """Stacked weights of ``len(self)`` networks, with what they were trained on."""

    params: Params  # each (n, ...)
    accuracies: torch.Tensor  # (n,) test accuracy of each network on its own dataset
    dataset: str
    arch: str
    init: str
    phase: str
    input_shape: tuple[int, int, int]  # (C, H, W) the networks take
    num_classes: int
    config: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.accuracies.shape[0])

    def select(self, index: torch.Tensor | list[int], device=None) -> Params:
        """Stacked weights of the networks at ``index``."""
        index = torch.as_tensor(index, dtype=torch.long)
        return {k: v[index].to(device or v.device) for k, v in self.params.items()}

    def check(self, dataset: str, arch: str, n_nets: int, what: str) -> None:
        """Refuse a zoo of another dataset or arch, or one smaller than asked for."""
        if self.dataset != dataset or self.arch != arch:
            raise ArtifactError(f"{what} zoo holds {self.arch} networks trained on {self.dataset}, "
                                f"this run needs {arch} on {dataset}")
        if len(self) < n_nets:
            raise ArtifactError(f"{what} zoo has {len(self)} networks, {n_nets} asked for; train more "
                                f"with --mode train --n_nets {n_nets} --phase {self.phase}")

    def to_dict(self) -> dict:
        return {"format": FORMAT, "params": {k: v.detach().cpu() for k, v in self.params.items()},
                "accuracies": self.accuracies.cpu(), "dataset": self.dataset, "arch": self.arch,
                "init": self.init, "phase": self.phase, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "config": self.config}

    @classmethod
    def from_dict(cls, d: dict) -> "Zoo":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ArtifactError(f"not a model zoo (expected a dict with format {FORMAT!r})")
        return cls(d["params"], d["accuracies"], d["dataset"], d["arch"], d["init"], d["phase"],
                   tuple(d["input_shape"]), int(d["num_classes"]), d.get("config", {}))

    @classmethod
    def concat(cls, parts: list["Zoo"]) -> "Zoo":
        first = parts[0]
        params = {k: torch.cat([p.params[k] for p in parts]) for k in first.params}
        return cls(params, torch.cat([p.accuracies for p in parts]), first.dataset, first.arch,
                   first.init, first.phase, first.input_shape, first.num_classes, first.config)


def train_networks(model: nn.Module, stacked: Params, train: Split, outer: OuterConfig,
                   generator: torch.Generator) -> Params:
    """Train the stacked networks with Adam for ``outer.epochs`` passes over ``train``.

    All networks see the same batches (one forward over a stacked batch is what makes training
    many at once cheap); they differ in their initialisation. Adam is elementwise, so one optimiser
    over the stacked tensors is exactly one Adam per network.
    """
    leaves = {k: v.detach().clone().requires_grad_() for k, v in stacked.items()}
    optimizer = torch.optim.Adam(leaves.values(), lr=outer.lr)
    per_epoch = batches_per_epoch(len(train), outer.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: outer.lr_factor(it, per_epoch))
    for _ in range(outer.epochs):
        for x, y in shuffled_batches(train, outer.batch_size, generator):
            optimizer.zero_grad(set_to_none=True)
            mean_loss_per_net_summed(model, leaves, x, y).backward()
            optimizer.step()
            scheduler.step()
    return {k: v.detach() for k, v in leaves.items()}
