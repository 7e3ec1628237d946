"""What the outer loop asks of the trained networks: the labels and weights of the real batch.

With w_T the weights after the unrolled GD steps on the distilled set, every mode minimises
    L = sum_i a(y_i) CE(f(x_i; w_T), y'_i) / sum_i a(y_i)     over real batches (x, y) of the train split
and differs only in y' and a:
- basic and adapt: y' = y, a = 1 (the networks should classify the real data correctly);
- attack (Wang et al. 2018, sec. 3.4): y' = target_class where y = attack_class, else y, so that
  after the steps images of ``attack_class`` are taken for ``target_class`` while every other class
  stays intact; a = attack_weight on images of ``attack_class``, 1 elsewhere. With a = 1 (the
  paper's objective) the attacked class is one tenth of MNIST's loss, and the optimum trades much
  of the attack away to spare the other nine; a larger weight moves that trade-off.
Pure functions, no state.
"""
from __future__ import annotations

import torch


def wanted_labels(y: torch.Tensor, attack_class: int | None = None, target_class: int | None = None
                  ) -> torch.Tensor:
    """y' for labels y (B,): y itself, or y with ``attack_class`` replaced by ``target_class``."""
    if attack_class is None:
        return y
    return torch.where(y == attack_class, torch.full_like(y, target_class), y)


def loss_weights(y: torch.Tensor, attack_class: int | None = None, attack_weight: float = 1.0
                 ) -> torch.Tensor | None:
    """a(y) for labels y (B,): ``attack_weight`` on ``attack_class``, 1 elsewhere; None when all 1."""
    if attack_class is None or attack_weight == 1.0:
        return None
    return torch.where(y == attack_class, attack_weight, 1.0)
