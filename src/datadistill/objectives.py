"""What the outer loop asks of the trained networks, expressed as the labels of the real batch.

With w_T the weights after the unrolled GD steps on the distilled set, every mode minimises
    L = E_{(x, y) ~ train split} CE(f(x; w_T), y')
and differs only in y':
- basic and adapt: y' = y (the networks should classify the real data correctly);
- attack (Wang et al. 2018, sec. 3.4): y' = target_class where y = attack_class, else y, so that
  after the steps images of ``attack_class`` are taken for ``target_class`` while every other class
  stays intact.
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
