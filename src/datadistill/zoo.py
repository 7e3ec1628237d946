"""A model zoo: many networks of one architecture trained on one dataset from independent
initialisations, kept together as stacked weights (``datadistill train-zoo``).

Distillation against *loaded* networks (adaptation, attack, or basic with ``--train_nets_type
loaded``) draws from a zoo of phase ``train``; scoring uses a zoo of phase ``test``. The two phases
draw their initialisations from disjoint seed ranges, so a network that shaped the distilled images
is never one that scores them.

An *expert* zoo (``train-zoo --trajectories``, for ``--method mtt``) also keeps each network's
weights at the start and after every epoch of plain SGD, its training trajectory (Cazenavette et
al. 2022); it lives in a folder of its own (``-experts``, or ``-experts-dsa`` for experts trained
on augmented batches, ``train-zoo --trajectories --augment dsa``), so it never stands in for an
ordinary zoo, nor one for it, nor experts trained on other batches for each other.

Training is pure here (weights in, weights out); ``jobs.zoo`` stores the result through
``artifacts``, one part per chunk of networks so that an interrupted run resumes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .augment import Augment
from .config import OuterConfig
from .data import Split, batches_per_epoch, shuffled_batches
from .errors import ArtifactError
from .inner import mean_loss_per_net_summed
from .models import Params

FORMAT = "datadistill.zoo/1"
PHASES = ("train", "test")
EXPERTS_SUFFIX = "-experts"  # the folder of a zoo that holds trajectories
EXPERT_LR = 0.01  # MTT's experts: SGD at this rate, no momentum, no decay


def zoo_dir_for(root: str | Path, dataset: str, arch: str, init: str, phase: str,
                experts: bool = False, augment: str = "none") -> Path:
    """Where the zoo of (dataset, arch, init, phase) lives under ``root``; ``experts``: the zoo
    of expert trajectories of the same, in a folder of its own (``...-experts``), and experts
    trained on augmented batches (``augment``) in another (``...-experts-dsa``)."""
    name = f"{dataset}-{arch}-{init}-{phase}"
    if experts:
        name += EXPERTS_SUFFIX + ("" if augment == "none" else f"-{augment}")
    return Path(root) / name


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
    # expert zoos only: each network's weights at the start and after every epoch, (n, epochs + 1, ...)
    trajectories: Params | None = None

    def __len__(self) -> int:
        return int(self.accuracies.shape[0])

    def select(self, index: torch.Tensor | list[int], device=None) -> Params:
        """Stacked weights of the networks at ``index``."""
        index = torch.as_tensor(index, dtype=torch.long)
        return {k: v[index].to(device or v.device) for k, v in self.params.items()}

    def check_layout(self, model: nn.Module, what: str, retrain: str) -> None:
        """Refuse weights of other shapes than ``model``'s (another --width, or an older layout of
        the class, e.g. ConvNet before its 28-pixel padding): one line naming ``what`` and the
        ``retrain`` command, instead of a shape error inside the first forward pass."""
        if {k: tuple(v.shape[1:]) for k, v in self.params.items()} != \
                {k: tuple(v.shape) for k, v in model.named_parameters()}:
            raise ArtifactError(f"{what}: weights of other shapes than this run's {self.arch} "
                                f"(another --width, or an older layout); train {retrain}")

    def check(self, dataset: str, arch: str, n_nets: int, what: str) -> None:
        """Refuse a zoo of another dataset or arch, or one smaller than asked for."""
        if self.dataset != dataset or self.arch != arch:
            raise ArtifactError(f"{what} zoo holds {self.arch} networks trained on {self.dataset}, "
                                f"this run needs {arch} on {dataset}")
        if len(self) < n_nets:
            raise ArtifactError(f"{what} zoo has {len(self)} networks, {n_nets} asked for; train more "
                                f"with datadistill train-zoo --n_nets {n_nets} --phase {self.phase}")

    def to_dict(self) -> dict:
        d = {"format": FORMAT, "params": {k: v.detach().cpu() for k, v in self.params.items()},
             "accuracies": self.accuracies.cpu(), "dataset": self.dataset, "arch": self.arch,
             "init": self.init, "phase": self.phase, "input_shape": list(self.input_shape),
             "num_classes": self.num_classes, "config": self.config}
        if self.trajectories is not None:  # an ordinary zoo's file has no such key
            d["trajectories"] = {k: v.detach().cpu() for k, v in self.trajectories.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Zoo":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ArtifactError(f"not a model zoo (expected a dict with format {FORMAT!r})")
        return cls(d["params"], d["accuracies"], d["dataset"], d["arch"], d["init"], d["phase"],
                   tuple(d["input_shape"]), int(d["num_classes"]), d.get("config", {}), d.get("trajectories"))

    @classmethod
    def concat(cls, parts: list["Zoo"]) -> "Zoo":
        first = parts[0]
        params = {k: torch.cat([p.params[k] for p in parts]) for k in first.params}
        if any((p.trajectories is None) != (first.trajectories is None) for p in parts):
            raise ArtifactError("cannot join a zoo of expert trajectories with an ordinary zoo")
        trajectories = None if first.trajectories is None else {
            k: torch.cat([p.trajectories[k] for p in parts]) for k in first.trajectories}
        return cls(params, torch.cat([p.accuracies for p in parts]), first.dataset, first.arch,
                   first.init, first.phase, first.input_shape, first.num_classes, first.config, trajectories)


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


def train_trajectories(model: nn.Module, stacked: Params, train: Split, epochs: int, batch_size: int,
                       generator: torch.Generator, lr: float = EXPERT_LR, momentum: float = 0.0,
                       augment: Augment | None = None, augment_generator: torch.Generator | None = None
                       ) -> tuple[Params, Params]:
    """Train the stacked networks as MTT's experts: plain SGD at a constant ``lr`` (no momentum by
    default, no weight decay) for ``epochs`` passes over ``train`` in batches of ``batch_size``.
    ``augment``: each batch is transformed first (one draw per image from ``augment_generator``),
    as MTT trains its experts with the DSA its synthetic steps see.

    Returns (trained weights (n, ...), trajectories (n, epochs + 1, ...)): entry 0 of a trajectory
    is the network's initial weights, entry e its weights after epoch e, so the last is the
    trained weights. Batches are drawn as ``train_networks`` draws them; all networks see the same.
    """
    leaves = {k: v.detach().clone().requires_grad_() for k, v in stacked.items()}
    optimizer = torch.optim.SGD(leaves.values(), lr=lr, momentum=momentum)
    snapshots = [{k: v.detach().cpu().clone() for k, v in leaves.items()}]
    for _ in range(epochs):
        for x, y in shuffled_batches(train, batch_size, generator):
            if augment is not None:
                x = augment(x, augment_generator)
            optimizer.zero_grad(set_to_none=True)
            mean_loss_per_net_summed(model, leaves, x, y).backward()
            optimizer.step()
        snapshots.append({k: v.detach().cpu().clone() for k, v in leaves.items()})
    trajectories = {k: torch.stack([s[k] for s in snapshots], dim=1) for k in leaves}
    return {k: v.detach() for k, v in leaves.items()}, trajectories
