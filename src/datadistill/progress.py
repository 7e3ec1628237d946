"""A tqdm progress bar as a distillation callback: loss and the latest validation accuracy."""
from __future__ import annotations

import contextlib
import sys

from .distill import Callback, Distillation
from .evaluate import EvalResult


class ProgressBar(Callback):
    """Shows iterations over the whole run; reads the loss only every ``every`` iterations so the
    bar does not stall the loop."""

    def __init__(self, every: int = 20, file=None):
        self.every, self.file = every, file or sys.stderr  # looked up now: tests swap sys.stderr
        self.bar = None
        self.acc = "-"

    def on_start(self, run: Distillation) -> None:
        from tqdm.auto import tqdm

        total = run.outer.epochs * run.iterations_per_epoch
        self.bar = tqdm(total=total, initial=run.iteration, unit="it", file=self.file,
                        dynamic_ncols=True, desc="distilling")
        self.bar.set_postfix(val_acc=self.acc, refresh=False)

    def on_iteration(self, run: Distillation, loss) -> None:
        self.bar.update(1)
        if run.iteration % self.every == 0:
            self.bar.set_postfix(loss=f"{float(loss):.3f}", val_acc=self.acc, refresh=False)

    def on_evaluation(self, run: Distillation, result: EvalResult) -> None:
        self.acc = f"{100 * result.mean:.2f}%"
        if self.bar is not None:
            self.bar.write(f"epoch {run.epoch}: validation accuracy {result}", file=self.file)
            self.bar.set_postfix(val_acc=self.acc, refresh=False)

    def on_end(self, run: Distillation) -> None:
        if self.bar is not None:
            self.bar.close()

    def on_report(self, run: Distillation, what: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(what + " ...", file=self.file)


@contextlib.contextmanager
def zoo_progress(total: int, disable: bool = False, file=None):
    """A tqdm bar over the networks of a zoo; yields the ``progress(done, total)`` callback."""
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="net", file=file or sys.stderr, disable=disable, desc="training zoo") as bar:
        def progress(done: int, _total: int) -> None:
            bar.update(done - bar.n)
        yield progress


@contextlib.contextmanager
def evaluation_progress(disable: bool = False, file=None):
    """Yields ``progress(what, total)``: opens a tqdm bar of ``total`` units described by ``what``
    and returns its ``tick()``; the bar closes when the context does."""
    from tqdm.auto import tqdm

    bars = []

    def progress(what: str, total: int):
        bars.append(tqdm(total=total, file=file or sys.stderr, disable=disable, desc=what, dynamic_ncols=True))
        return lambda: bars[-1].update(1)
    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()
