"""Scoring a synthetic set: train networks on it, test on held-out data.

Two protocols: ``unrolled`` replays the set as distilled (its batches in order, its learned step
sizes; Wang et al. 2018), ``from_scratch`` pools every image into one training set and runs
ordinary SGD with momentum for many epochs (the protocol of the later literature, Zhao et al.
2021 onwards), which also scores sets that have no meaningful step sizes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from .data import Split
from .inner import batched_logits, batched_train, training_loss
from .models import Params
from .synthetic import SyntheticSet
from .transfer import to_device
from .weights import check_finite

Augment = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]  # (B, C, H, W) -> same shape
CHUNK_NETS = 25  # networks trained together (vmap) by the scoring functions: bounds memory
LR_DECAY = 0.1  # from-scratch training's learning rate after half of its epochs, as a fraction


@dataclass(frozen=True)
class EvalResult:
    accuracies: tuple[float, ...]  # one per network, in [0, 1]

    @property
    def n(self) -> int:
        return len(self.accuracies)

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / self.n

    @property
    def std(self) -> float:
        if self.n < 2:
            return 0.0
        return float(torch.tensor(self.accuracies, dtype=torch.float64).std())

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n, "accuracies": list(self.accuracies)}

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f}% +- {100 * self.std:.2f} over {self.n} nets"


@torch.no_grad()
def accuracy(model: nn.Module, stacked: Params, split: Split) -> torch.Tensor:
    """Share of ``split`` each stacked network classifies correctly, shape (n_nets,)."""
    logits = batched_logits(model, stacked, split.x)  # (n_nets, N, classes)
    return (logits.argmax(-1) == split.y).float().mean(-1)


def evaluate_synthetic(model: nn.Module, synthetic: SyntheticSet, stacked_init: Params,
                       test: Split, chunk_nets: int = CHUNK_NETS) -> EvalResult:
    """Train each network in ``stacked_init`` on ``synthetic`` (its learned step sizes), score it
    on ``test``. Networks are processed ``chunk_nets`` at a time to bound memory."""
    n = next(iter(stacked_init.values())).shape[0]
    accs = []
    for i in range(0, n, chunk_nets):
        part = {k: v[i:i + chunk_nets] for k, v in stacked_init.items()}
        trained = batched_train(model, part, synthetic.images, synthetic.labels, synthetic.lrs)
        accs.append(accuracy(model, trained, test))
    return EvalResult(tuple(torch.cat(accs).tolist()))


def scratch_chunk(device: torch.device | str) -> int:
    """Networks ``evaluate_from_scratch`` trains together on ``device``. A GPU trains many stacked
    networks (vmap) at once; on a CPU the stacked form turns each convolution into a grouped one,
    slower than plain convolutions one network after another (``benchmarks/scoring_speed.py``)."""
    return 1 if torch.device(device).type == "cpu" else CHUNK_NETS


def train_from_scratch(model: nn.Module, stacked_init: Params, synthetic: SyntheticSet, epochs: int,
                       lr: float, batch_size: int | None = 256, momentum: float = 0.9,
                       weight_decay: float = 5e-4, generator: torch.Generator | None = None,
                       augment: Augment | None = None, on_epoch: Callable[[], None] | None = None,
                       compiled: bool = False) -> Params:
    """Train each stacked network with SGD on all of ``synthetic``'s images pooled into one set.

    The S * N images (S, N, C, H, W) are flattened to (S * N, C, H, W); its step sizes are ignored.
    Each epoch visits them in the order ``torch.randperm(S * N, generator=generator)`` in batches
    of ``batch_size`` (the last may be smaller; None: one full batch, in the stored order).
    The update is ``torch.optim.SGD``'s with ``momentum`` and L2 ``weight_decay`` on every weight:
        b <- momentum * b + (g + weight_decay * w);  w <- w - lr * b
    All networks see the same batches; returns the trained (n_nets, ...) weights, no graph.
    At half of the epochs the learning rate drops to a tenth and the momentum restarts (the papers'
    code builds a new optimiser there: Zhao et al. 2021, ``evaluate_synset``), and
    ``augment(x, generator)``, when given, transforms each batch (DSA, a draw per image);
    ``on_epoch()`` is told after every epoch (a progress bar); ``compiled``: the loss through
    ``torch.compile`` (``inner.training_loss``).
    """
    x = synthetic.images.detach().flatten(0, 1)  # (S * N, C, H, W)
    y = synthetic.labels.detach().flatten(0, 1)  # (S * N,), or (S * N, classes) if learned
    n = x.shape[0]
    size = n if batch_size is None else min(batch_size, n)
    # SGD is elementwise, so one optimiser over the stacked weights is one SGD per network
    leaves = [v.detach().clone().requires_grad_() for v in stacked_init.values()]
    params = dict(zip(stacked_init, leaves))
    optimizer = torch.optim.SGD(leaves, lr=lr, momentum=momentum, weight_decay=weight_decay)
    loss = training_loss(model, compiled)
    for epoch in range(epochs):
        if epoch == epochs // 2 and epochs > 1:
            optimizer = torch.optim.SGD(leaves, lr=lr * LR_DECAY, momentum=momentum, weight_decay=weight_decay)
        order = to_device(torch.arange(n) if batch_size is None else torch.randperm(n, generator=generator),
                          x.device)
        for start in range(0, n, size):
            idx = order[start:start + size]
            xb = x[idx] if augment is None else augment(x[idx], generator)
            optimizer.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss(params, xb, y[idx]).backward()
            optimizer.step()
        if on_epoch is not None:
            on_epoch()
    return {k: v.detach() for k, v in params.items()}


def evaluate_from_scratch(model: nn.Module, synthetic: SyntheticSet, stacked_init: Params,
                          test: Split, epochs: int, lr: float, batch_size: int | None = 256,
                          generator: torch.Generator | None = None, chunk_nets: int | None = None,
                          augment: Augment | None = None, on_epoch: Callable[[], None] | None = None,
                          compiled: bool = False, **sgd) -> EvalResult:
    """``train_from_scratch`` each network in ``stacked_init`` on ``synthetic``, score it on
    ``test``; ``chunk_nets`` networks at a time (None: ``scratch_chunk`` of the images' device;
    ``on_epoch`` is told ceil(n / chunk_nets) * epochs times). The networks of a chunk see the
    same batches; each chunk draws its own from ``generator``. ``compiled`` and ``sgd`` (momentum,
    weight_decay) pass on to ``train_from_scratch``."""
    n = next(iter(stacked_init.values())).shape[0]
    chunk_nets = chunk_nets or scratch_chunk(synthetic.images.device)
    accs = []
    for i in range(0, n, chunk_nets):
        part = {k: v[i:i + chunk_nets] for k, v in stacked_init.items()}
        trained = train_from_scratch(model, part, synthetic, epochs, lr, batch_size,
                                     generator=generator, augment=augment, on_epoch=on_epoch, compiled=compiled,
                                     **sgd)
        check_finite(trained, f"networks trained from scratch on the set diverged (weights NaN or infinite) at "
                              f"rate {lr:g}; try a smaller --scratch_lr")
        accs.append(accuracy(model, trained, test))
    return EvalResult(tuple(torch.cat(accs).tolist()))


def score_set(model: nn.Module, synthetic: SyntheticSet, stacked_init: Params, split: Split, protocol: str,
              scratch: tuple[int, float, int] = (300, 0.01, 256), seed: int = 0,
              augment: Augment | None = None, compiled: bool = False) -> EvalResult:
    """``synthetic`` scored on ``split`` by the networks ``stacked_init`` under ``protocol``:
    ``unrolled`` (its steps and step sizes) or ``from_scratch`` (``scratch`` = epochs, lr, batch;
    ``compiled``: its loss through ``torch.compile``)."""
    if protocol == "unrolled":
        return evaluate_synthetic(model, synthetic, stacked_init, split)
    epochs, lr, batch = scratch
    return evaluate_from_scratch(model, synthetic, stacked_init, split, epochs, lr, batch,
                                 generator=torch.Generator().manual_seed(seed), augment=augment, compiled=compiled)
