"""What adaptation (``--mode distill_adapt``) adds to basic distillation: its report.

The optimisation itself is basic distillation against networks loaded from a zoo trained on the
source domain, with the target's training split as the real data (``distill.Distillation``). The
report then compares, on the *test* zoo's networks and the target's test split:

- no adaptation: the source networks as they are;
- distilled: the networks after the distilled GD steps with the learned step sizes;
- random real: the same number of random real target training images, in the same steps, with
  the best single fixed step size (chosen on the target's *validation* split with *train* zoo
  networks, so the test split only scores);
- full fine-tune (a bound): the networks fine-tuned with Adam on the whole target training split,
  for at least ``FINETUNE_STEPS`` steps (whole epochs): a budget in steps, not epochs, so that a
  small target (digits: 4 batches an epoch) gets a bound worth the name.

Pure: no files, no printing.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from .baselines import fixed_lrs, random_train
from .config import OuterConfig
from .data import Dataset, Split, batches_per_epoch
from .evaluate import EvalResult, accuracy, evaluate_synthetic
from .models import Params
from .synthetic import SyntheticSet
from .zoo import train_networks

FIXED_LR_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
SELECTION_IMAGES = 5000  # target training images used to choose the fixed step size
FINETUNE_STEPS = 500  # Adam steps of the fine-tune bound, at least (MNIST: 2 epochs; digits: 125)


def best_fixed_lr(model: nn.Module, candidate: SyntheticSet, nets: Params, split: Split,
                  grid=FIXED_LR_GRID) -> float:
    """The step size in ``grid`` whose GD steps on ``candidate`` give ``nets`` the best mean
    accuracy on ``split`` (which must not be a test split)."""
    n = candidate.lrs.shape[0]
    scores = []
    for lr in grid:
        trial = SyntheticSet(candidate.images, candidate.labels, fixed_lrs(n, lr).to(candidate.images.device),
                             candidate.mean, candidate.std, candidate.num_classes)
        scores.append(evaluate_synthetic(model, trial, nets, split).mean)
    return grid[max(range(len(grid)), key=scores.__getitem__)]


def selection_split(train: Split, val: Split | None) -> Split:
    """Where a baseline's step size is chosen: the validation split, else (``--val_size 0``) the
    first ``SELECTION_IMAGES`` training images; never the test split."""
    if val is not None:
        return val
    return Split(train.x[:SELECTION_IMAGES], train.y[:SELECTION_IMAGES])


def adaptation_report(model: nn.Module, synthetic: SyntheticSet, train_nets: Params, test_nets: Params,
                      target: Dataset, generator: torch.Generator, finetune_steps: int = FINETUNE_STEPS,
                      finetune_lr: float = 1e-3, finetune_batch: int = 256,
                      progress: Callable[[str], None] = lambda what: None) -> dict[str, dict]:
    """Rows of the adaptation table: name -> EvalResult dict (plus ``lr`` where one was chosen);
    ``progress(what)`` is called before each row."""
    device = synthetic.images.device
    selection = selection_split(target.train, target.val)
    choosers = {k: v[:10] for k, v in train_nets.items()}  # a few train-zoo nets pick the lr
    rows: dict[str, dict] = {}
    progress("adaptation report: source networks and distilled steps")
    rows["no adaptation"] = EvalResult(tuple(accuracy(model, test_nets, target.test).tolist())).to_dict()
    rows["distilled (learned step sizes)"] = evaluate_synthetic(model, synthetic, test_nets, target.test).to_dict()
    progress("adaptation report: random real images, choosing their step size on validation")
    real = random_train(target.train, synthetic.steps, synthetic.images.shape[1] // synthetic.num_classes,
                        synthetic.num_classes, synthetic.lrs.detach(), synthetic.mean, synthetic.std, generator)
    real = real.to(device)
    lr = best_fixed_lr(model, real, choosers, selection)
    real.lrs = fixed_lrs(real.lrs.shape[0], lr).to(device)
    rows["random real (best fixed step size)"] = {**evaluate_synthetic(model, real, test_nets, target.test).to_dict(),
                                                  "lr": lr}
    progress("adaptation report: full fine-tune bound")
    finetune_epochs = math.ceil(finetune_steps / batches_per_epoch(len(target.train), finetune_batch))
    outer = OuterConfig(epochs=finetune_epochs, lr=finetune_lr, batch_size=finetune_batch)
    tuned = train_networks(model, test_nets, target.train, outer, generator)
    rows[f"full fine-tune ({finetune_epochs} epochs, bound)"] = EvalResult(
        tuple(accuracy(model, tuned, target.test).tolist())).to_dict()
    return rows


def format_table(rows: dict[str, dict]) -> str:
    """The report as aligned text lines, accuracies in percent."""
    width = max(len(name) for name in rows)
    lines = [f"{'':{width}}  test accuracy (mean +- std over n nets)"]
    for name, r in rows.items():
        extra = f"  lr {r['lr']:g}" if "lr" in r else ""
        lines.append(f"{name:{width}}  {100 * r['mean']:6.2f}% +- {100 * r['std']:5.2f}  n={r['n']}{extra}")
    return "\n".join(lines)
