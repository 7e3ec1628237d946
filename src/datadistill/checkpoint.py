"""Checkpoints: the outer loop's whole state after every epoch, and the rules for resuming it.

A resumed run continues bit for bit: the learned tensors, Adam's moments, the schedule, the run's
random generator, the network source's state (fixed seeds, zoo order) and the history.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import artifacts
from .backends import BACKENDS
from .config import RunConfig
from .distill import Callback, Distillation, History
from .errors import ArtifactError, ConfigError, DatadistillError
from .synthetic import SyntheticSet

# config fields a resumed run may change; anything else must match the checkpoint
# (test, evaluation: how results are scored; preset: what is recorded is the values it gave)
RESUMABLE_CHANGES = {("outer", "epochs"), ("device",), ("results_dir",), ("eval_every",), ("data", "root"),
                     ("data", "download"), ("test",), ("preset",), ("skip_test",),
                     ("evaluation",)}
DAMAGED = "damaged, or written by another version of datadistill; run without --resume to start afresh"
# what load_state_dict and the resume read (averaged and best only with the settings that write them)
REQUIRED_KEYS = ("config", "learned", "optimizer", "scheduler", "generator", "nets", "method", "world_size",
                 "conv_backend", "epoch", "iteration", "history")


def state_dict(run: Distillation, world_size: int, backend: str | None) -> dict:
    """Everything ``load_state_dict`` needs, as plain tensors and values on the CPU."""
    return {
        "learned": [t.detach().cpu() for t in run.learned.tensors()],
        "averaged": None if run.averaged is None else [t.cpu() for t in run.averaged],
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "generator": run.generator.get_state(),
        "nets": run.nets.state_dict(),
        "method": run.method.state_dict(),
        "world_size": world_size,
        "conv_backend": backend,  # the numerics the run chose; a resumed run keeps them
        "epoch": run.epoch,
        "iteration": run.iteration,
        "best": None if run.best is None else {"index": run.best[0], "images": run.best[1].images.cpu(),
                                               "labels": run.best[1].labels.cpu(), "lrs": run.best[1].lrs.cpu()},
        "history": {"evaluations": run.history.evaluations, "losses": run.history.losses,
                    "seconds": run.history.seconds},
    }


def load_state_dict(run: Distillation, state: dict, world_size: int) -> None:
    """Restore ``run`` from ``state`` (checked by ``read_checkpoint``); a part torch or the run's
    pieces cannot take back (a hand-edited or damaged file) is an ``ArtifactError``."""
    try:
        _restore(run, state, world_size)
    except DatadistillError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and type(e).__name__ == "OutOfMemoryError":
            raise
        raise ArtifactError(f"the checkpoint's state cannot be restored ({type(e).__name__}: {e}): "
                            f"{DAMAGED}") from None


def _restore(run: Distillation, state: dict, world_size: int) -> None:
    if state["world_size"] != world_size:
        raise ArtifactError(f"checkpoint was made by {state['world_size']} process(es), this run has "
                            f"{world_size}; resume with the same number")
    mine_shapes = [tuple(t.shape) for t in run.learned.tensors()]
    saved_shapes = [tuple(t.shape) for t in state["learned"]]
    if saved_shapes != mine_shapes:  # the config matched, so only a damaged file differs
        raise ArtifactError(f"checkpoint holds learned tensors of shapes {saved_shapes}, this run's are "
                            f"{mine_shapes}: the checkpoint is damaged; run without --resume to start afresh")
    with torch.no_grad():
        for mine, saved in zip(run.learned.tensors(), state["learned"], strict=True):
            mine.copy_(saved)
        if run.averaged is not None:  # a run with --ema_decay; the checkpoint matched it (its config)
            for mine, saved in zip(run.averaged, state["averaged"], strict=True):
                mine.copy_(saved)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.generator.set_state(state["generator"])
    run.nets.load_state_dict(state["nets"])
    run.method.load_state_dict(state["method"])
    run.epoch, run.iteration = state["epoch"], state["iteration"]
    run.history = History(**state["history"])
    best = state.get("best")  # absent in checkpoints written before --keep_best
    if best is not None:
        device, learned = run.learned.images.device, run.learned
        run.best = (best["index"], SyntheticSet(best["images"].to(device), best["labels"].to(device),
                                                best["lrs"].to(device), learned.mean, learned.std,
                                                learned.num_classes, dict(learned.meta)))
    run.check_replicas()


class Checkpointer(Callback):
    """Writes the run's state (and its config) after every outer epoch: ``--resume`` loses at most one."""

    def __init__(self, path: Path, config: RunConfig, world_size: int, backend):
        self.path, self.config, self.world_size, self.backend = path, config, world_size, backend

    def on_epoch_end(self, run: Distillation) -> None:
        state = state_dict(run, self.world_size, self.backend())
        artifacts.save_checkpoint(self.path, {"config": self.config.to_dict(), **state})


def read_checkpoint(path: Path, config: RunConfig) -> dict:
    """The checkpoint at ``path``, checked to be whole and one this config may continue."""
    state = artifacts.load_checkpoint(path)
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ArtifactError(f"checkpoint {path} lacks {', '.join(missing)}: {DAMAGED}")
    for key, kind in (("config", dict), ("history", dict), ("learned", (list, tuple))):
        if not isinstance(state[key], kind):
            raise ArtifactError(f"checkpoint {path} holds a {type(state[key]).__name__} as {key}: {DAMAGED}")
    if not all(isinstance(t, torch.Tensor) for t in state["learned"]):
        raise ArtifactError(f"checkpoint {path} holds learned values that are not tensors: {DAMAGED}")
    if not all(bool(torch.isfinite(t).all()) for t in state["learned"] if t.is_floating_point()):
        raise ArtifactError(f"checkpoint {path} holds NaN or infinite learned values: {DAMAGED}")
    lost = [k for k in ("evaluations", "losses", "seconds") if k not in state["history"]]
    if lost:
        raise ArtifactError(f"checkpoint {path}'s history lacks {', '.join(lost)}: {DAMAGED}")
    for key, least in (("epoch", 0), ("iteration", 0), ("world_size", 1)):
        value = state[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ArtifactError(f"checkpoint {path} holds {value!r} as {key}, not a whole number >= {least}: {DAMAGED}")
    if state["conv_backend"] is not None and state["conv_backend"] not in BACKENDS:
        raise ArtifactError(f"checkpoint {path} holds an unknown conv_backend {state['conv_backend']!r}: {DAMAGED}")
    check_resumable(state["config"], config.to_dict())
    if isinstance(state["epoch"], int) and state["epoch"] > config.outer.epochs:  # more epochs extend a run
        raise ConfigError(f"checkpoint {path} is at epoch {state['epoch']}, past --epochs {config.outer.epochs}; "
                          f"give --epochs {state['epoch']} or more, or run without --resume")
    return state


def check_resumable(saved: dict, current: dict, prefix: tuple = (), defaults: dict | None = None) -> None:
    """Refuse a resume whose config differs from the checkpoint's outside ``RESUMABLE_CHANGES``.
    A field the saved config lacks (added to the tool after the checkpoint was written) counts as
    its default, the value the older code had built in."""
    defaults = RunConfig().to_dict() if defaults is None else defaults
    for key, value in current.items():
        path = prefix + (key,)
        if path in RESUMABLE_CHANGES:
            continue
        old = saved.get(key, defaults.get(key))
        if isinstance(value, dict) and isinstance(old, dict):
            check_resumable(old, value, path, defaults.get(key) or {})
        elif old != value:
            shown = lambda v: "the default" if v is None else repr(v)  # noqa: E731 (None: the flag not given)
            raise ArtifactError(f"checkpoint was made with {'.'.join(path)}={shown(old)}, this run has "
                                f"{shown(value)}; rerun with the same settings or without --resume")
