"""What the attack setting (``--mode distill_attack``) adds to basic distillation: its report.

The optimisation is basic distillation with relabelled real data (``methods.wang2018.Relabel``).
The report scores networks of the *test* zoo, before and after the GD steps, through their
confusion matrices on the test split:
- accuracy per class;
- attack success rate: the share of ``attack_class`` test images predicted as ``target_class``;
- accuracy on the other classes (every class but ``attack_class``, pooled over their images);
and the same after the baseline: the same number of steps on as many real ``attack_class``
training images labelled ``target_class``, with the best fixed step size (chosen by the attack
objective on the validation split with train-zoo networks). Pure: no files, no printing.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .adapt import best_fixed_lr, selection_split
from .baselines import fixed_lrs
from .data import Split
from .inner import batched_logits, batched_train
from .models import Params
from .synthetic import SyntheticSet


def wanted_labels(y: torch.Tensor, attack_class: int, target_class: int) -> torch.Tensor:
    """y (B,) with ``attack_class`` replaced by ``target_class``: what the attack wants predicted."""
    return torch.where(y == attack_class, torch.full_like(y, target_class), y)


def confusion(model: nn.Module, stacked: Params, split: Split, num_classes: int) -> torch.Tensor:
    """Counts (n_nets, true class, predicted class) of each stacked network on ``split``."""
    pred = batched_logits(model, stacked, split.x).argmax(-1)  # (n_nets, N)
    index = split.y * num_classes + pred  # (n_nets, N)
    counts = torch.zeros(pred.shape[0], num_classes * num_classes, dtype=torch.long, device=pred.device)
    counts.scatter_add_(1, index, torch.ones_like(index))
    return counts.view(-1, num_classes, num_classes)


def attack_figures(conf: torch.Tensor, attack_class: int, target_class: int) -> dict:
    """Per-network figures from confusion counts (n_nets, C, C): mean and per-net lists."""
    conf = conf.double()
    per_class = conf.diagonal(dim1=1, dim2=2) / conf.sum(2)  # (n_nets, C)
    success = conf[:, attack_class, target_class] / conf[:, attack_class].sum(1)
    others = [c for c in range(conf.shape[1]) if c != attack_class]
    other_acc = conf[:, others, others].sum(1) / conf[:, others].sum((1, 2))  # paired index: the diagonal
    return {"per_class_accuracy": per_class.mean(0).tolist(),
            "attack_success": float(success.mean()), "attack_success_per_net": success.tolist(),
            "other_classes_accuracy": float(other_acc.mean()),
            "other_classes_accuracy_per_net": other_acc.tolist()}


def _trained(model, synthetic: SyntheticSet, nets: Params) -> Params:
    return batched_train(model, nets, synthetic.images, synthetic.labels, synthetic.lrs)


def real_attack_baseline(train: Split, like: SyntheticSet, attack_class: int, target_class: int,
                         generator: torch.Generator) -> SyntheticSet:
    """As many real ``attack_class`` training images as ``like`` holds, labelled ``target_class``,
    in the same steps (step sizes to be set)."""
    pool = (train.y == attack_class).nonzero().squeeze(1).cpu()
    steps, per_step = like.images.shape[:2]
    pick = pool[torch.randperm(len(pool), generator=generator)[:steps * per_step]]
    if len(pick) < steps * per_step:  # a small class: reuse images rather than fail
        pick = pick.repeat((steps * per_step + len(pick) - 1) // len(pick))[:steps * per_step]
    pick = pick.to(train.x.device)
    images = train.x[pick].view(steps, per_step, *train.x.shape[1:])
    labels = torch.full((steps, per_step), target_class, dtype=torch.long, device=train.x.device)
    return SyntheticSet(images, labels, like.lrs.detach().clone(), like.mean, like.std, like.num_classes)


def attack_report(model: nn.Module, synthetic: SyntheticSet, train_nets: Params, test_nets: Params,
                  train: Split, val: Split | None, test: Split, attack_class: int, target_class: int,
                  generator: torch.Generator, progress: Callable[[str], None] = lambda what: None) -> dict:
    """Before / distilled / baseline figures on the test networks, and the baseline's step size;
    ``progress(what)`` is called before each part."""
    progress("attack report: before and after the distilled steps")
    c = synthetic.num_classes
    report = {"attack_class": attack_class, "target_class": target_class,
              "before": attack_figures(confusion(model, test_nets, test, c), attack_class, target_class),
              "distilled": attack_figures(confusion(model, _trained(model, synthetic, test_nets), test, c),
                                          attack_class, target_class)}
    baseline = real_attack_baseline(train, synthetic, attack_class, target_class, generator)
    progress("attack report: real-image baseline, choosing its step size on validation")
    chosen_on = selection_split(train, val)
    selection = Split(chosen_on.x, wanted_labels(chosen_on.y, attack_class, target_class))
    choosers = {k: v[:10] for k, v in train_nets.items()}
    # best by the attack objective: accuracy against the wanted labels of training images
    best = best_fixed_lr(model, baseline, choosers, selection)
    baseline.lrs = fixed_lrs(synthetic.lrs.shape[0], best).to(synthetic.lrs.device)
    report["baseline"] = {**attack_figures(confusion(model, _trained(model, baseline, test_nets), test, c),
                                           attack_class, target_class), "lr": best}
    return report


def format_attack_table(report: dict) -> str:
    """Per-class accuracy rows, then success rate and other-class accuracy, in percent."""
    cols = ("before", "distilled", "baseline")
    n = len(report["before"]["per_class_accuracy"])
    lines = [f"{'class':>18} " + " ".join(f"{c:>10}" for c in cols)]
    for k in range(n):
        mark = " (attacked)" if k == report["attack_class"] else ""
        lines.append(f"{str(k) + mark:>18} " + " ".join(
            f"{100 * report[c]['per_class_accuracy'][k]:9.2f}%" for c in cols))
    lines.append(f"{'attack success':>18} " + " ".join(f"{100 * report[c]['attack_success']:9.2f}%" for c in cols))
    lines.append(f"{'other classes':>18} " + " ".join(
        f"{100 * report[c]['other_classes_accuracy']:9.2f}%" for c in cols))
    lines.append(f"(attack: class {report['attack_class']} -> {report['target_class']}; baseline step size "
                 f"{report['baseline']['lr']:g})")
    return "\n".join(lines)
