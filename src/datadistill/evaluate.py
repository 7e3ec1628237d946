"""Scoring a synthetic set: train networks on it with its step sizes, test on held-out data."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .data import Split
from .inner import batched_logits, batched_train
from .models import Params, init_params, stack_params
from .synthetic import SyntheticSet

EVAL_SEED_OFFSET = 1_000_003  # evaluation networks come from seeds no training draw uses


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


def fresh_nets(model: nn.Module, init: str, init_param: float, seeds: list[int], device) -> Params:
    """Stacked (n_nets, ...) weights, one network per seed."""
    return stack_params([init_params(model, init, init_param, s, device) for s in seeds])


def eval_seeds(run_seed: int, n: int) -> list[int]:
    return [EVAL_SEED_OFFSET * (run_seed + 1) + i for i in range(n)]


@torch.no_grad()
def accuracy(model: nn.Module, stacked: Params, split: Split) -> torch.Tensor:
    """Share of ``split`` each stacked network classifies correctly, shape (n_nets,)."""
    logits = batched_logits(model, stacked, split.x)  # (n_nets, N, classes)
    return (logits.argmax(-1) == split.y).float().mean(-1)


def evaluate_synthetic(model: nn.Module, synthetic: SyntheticSet, stacked_init: Params,
                       test: Split, chunk_nets: int = 25) -> EvalResult:
    """Train each network in ``stacked_init`` on ``synthetic`` (its learned step sizes), score it
    on ``test``. Networks are processed ``chunk_nets`` at a time to bound memory."""
    n = next(iter(stacked_init.values())).shape[0]
    accs = []
    for i in range(0, n, chunk_nets):
        part = {k: v[i:i + chunk_nets] for k, v in stacked_init.items()}
        trained = batched_train(model, part, synthetic.images, synthetic.labels, synthetic.lrs)
        accs.append(accuracy(model, trained, test))
    return EvalResult(tuple(torch.cat(accs).tolist()))
