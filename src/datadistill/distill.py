"""The outer loop: Adam on a method's learned tensors, over batches of the training split.

Each iteration draws networks from a source (``nets``), asks the method (``methods``) for the
scalar to minimise on a real batch, descends it, and reports through callbacks. It names no
method and no mode, never reads the test split, never writes files or prints.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .config import OuterConfig
from .data import Split, batches_per_epoch, shuffled_batches
from .evaluate import EvalResult
from .methods import Method
from .nets import NetSource
from .synthetic import LearnableSet, SyntheticSet
from .world import World

CHECK_EVERY = 100  # iterations between checks that all processes hold the same learned tensors


class Callback:
    """Hooks the outer loop calls; subclass and override what you need."""

    def on_start(self, run: "Distillation") -> None: ...
    def on_iteration(self, run: "Distillation", loss: torch.Tensor) -> None: ...
    def on_evaluation(self, run: "Distillation", result: EvalResult) -> None: ...
    def on_epoch_end(self, run: "Distillation") -> None: ...
    def on_end(self, run: "Distillation") -> None: ...
    def on_report(self, run: "Distillation", what: str) -> None: ...  # a long report part begins


@dataclass
class History:
    """What happened so far; goes into checkpoints and metrics.json."""

    # {"epoch", "iteration", "mean", "std", "n", ..., "seconds": its wall time}
    evaluations: list[dict] = field(default_factory=list)
    losses: list[dict] = field(default_factory=list)  # {"epoch", "loss"}: mean outer loss per epoch
    seconds: float = 0.0  # wall time of the loop, validation included, across resumes


class Distillation:
    """One run of the outer loop; holds the learned set, its optimiser and the run's generator.

    ``validate(synthetic)`` scores a snapshot on held-out data (the validation split) every
    ``eval_every`` epochs and at the end; with ``keep_best`` the run returns the snapshot that
    scored highest there (early stopping on validation) rather than the last. In a group of
    processes (``world``) every process runs the loop on its share of the networks and the
    learned tensors stay identical.
    """

    def __init__(self, method: Method, learned: LearnableSet, nets: NetSource, outer: OuterConfig,
                 train: Split, generator: torch.Generator, eval_every: int = 0,
                 validate: Callable[[SyntheticSet], EvalResult] | None = None, world: World = World(),
                 keep_best: bool = False):
        self.method, self.learned, self.nets, self.outer = method, learned, nets, outer
        self.keep_best = keep_best
        self.best: tuple[int, SyntheticSet] | None = None  # (its index in history.evaluations, snapshot)
        self.train, self.generator, self.validate, self.world = train, generator, validate, world
        self.eval_every = eval_every or max(1, outer.epochs // 5)
        self.optimizer = torch.optim.Adam(learned.param_groups(outer.lr, outer.step_size_lr),
                                          lr=outer.lr, betas=(outer.adam_beta1, 0.999))
        # the factor is a pure function of the iteration, so a resumed run lands on the same curve
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: outer.lr_factor(it, self.iterations_per_epoch))
        self.epoch = self.iteration = 0
        self.history = History()
        # the moving average of the learned tensors (--ema_decay), or None
        self.averaged = [t.detach().clone() for t in learned.tensors()] if outer.ema_decay else None

    @property
    def iterations_per_epoch(self) -> int:
        return batches_per_epoch(len(self.train), self.outer.batch_size)

    def current(self) -> SyntheticSet:
        """The set the run stands at: the learned tensors, or their moving average."""
        return self.learned.current(self.averaged)

    def step(self, real_x: torch.Tensor, real_y: torch.Tensor) -> torch.Tensor:
        """One outer iteration on a real batch; returns the loss as a device tensor (no sync)."""
        learned = self.learned.tensors()
        self.optimizer.zero_grad(set_to_none=True)
        out = self.method.loss(self.learned, self.nets.sample(self.generator), real_x, real_y, self.nets.total)
        with self.method.backward_context(self.learned):
            out.objective.backward(inputs=learned)
        loss = out.value.detach().clone()
        # each process pushed back its networks' share of the mean; the sum is the step of all
        self.world.all_reduce_sum([p.grad for p in learned] + [loss])
        self.optimizer.step()
        self.scheduler.step()
        if self.averaged is not None:
            with torch.no_grad():
                for average, now in zip(self.averaged, learned):
                    average.lerp_(now, 1 - self.outer.ema_decay)
        self.iteration += 1
        if self.iteration % CHECK_EVERY == 0:
            self.check_replicas()
        return loss

    def check_replicas(self) -> None:
        """Fail loudly if the processes' learned tensors have drifted apart."""
        self.world.check_identical(self.learned.tensors(), "the synthetic set")

    def run(self, callbacks: list[Callback] = ()) -> SyntheticSet:
        """Optimise until ``outer.epochs``, from wherever ``self.epoch`` stands (a resumed run)."""
        for cb in callbacks:
            cb.on_start(self)
        while self.epoch < self.outer.epochs:
            t0 = time.perf_counter()
            if self.epoch % self.eval_every == 0:
                self._validate(callbacks)
            total = torch.zeros((), device=self.learned.images.device)
            count = 0
            for real_x, real_y in shuffled_batches(self.train, self.outer.batch_size, self.generator):
                loss = self.step(real_x, real_y)
                total += loss
                count += 1
                for cb in callbacks:
                    cb.on_iteration(self, loss)
            self.epoch += 1
            mean_loss = float(total / count)  # one host sync per epoch
            if mean_loss != mean_loss:
                raise FloatingPointError(f"outer loss became NaN in epoch {self.epoch}; try a smaller --lr, "
                                         f"--distill_lr or --step_size_lr, or a smaller --init_param")
            self.history.losses.append({"epoch": self.epoch, "loss": mean_loss})
            self.history.seconds += time.perf_counter() - t0
            for cb in callbacks:
                cb.on_epoch_end(self)
        t0 = time.perf_counter()
        self._validate(callbacks)
        self.history.seconds += time.perf_counter() - t0
        for cb in callbacks:
            cb.on_end(self)
        return self.selected()

    def selected(self) -> SyntheticSet:
        """The set the run gives: the best validated snapshot with ``keep_best``, else the last."""
        return self.best[1] if self.keep_best and self.best is not None else self.current()

    def selected_evaluation(self) -> dict | None:
        """The validation of ``selected()``; None when the run was never validated."""
        evaluations = self.history.evaluations
        if self.keep_best and self.best is not None:
            return evaluations[self.best[0]]
        return evaluations[-1] if evaluations else None

    def _validate(self, callbacks) -> None:
        if self.validate is None:
            return
        snapshot = self.current()
        t0 = time.perf_counter()
        result = self.validate(snapshot)
        self.history.evaluations.append({"epoch": self.epoch, "iteration": self.iteration, **result.to_dict(),
                                         "seconds": time.perf_counter() - t0})
        # strictly higher: of equal scores the earlier snapshot stays
        if self.keep_best and (self.best is None or result.mean > self.history.evaluations[self.best[0]]["mean"]):
            self.best = (len(self.history.evaluations) - 1, snapshot)
        for cb in callbacks:
            cb.on_evaluation(self, result)
