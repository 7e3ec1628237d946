"""Choosing the CPU convolution backend for the unrolled steps by timing both, once per run.

The unrolled steps convolve only the few synthetic images, and oneDNN (mkldnn) is slow on some of
those small shapes: LeNet's first layer (one input channel) on a few images, for the unrolled
steps and their backward, runs faster on PyTorch's native kernels. On the large real batch oneDNN
wins by far. Neither is best everywhere, so, like
``torch.backends.cudnn.benchmark``, a run times both on its own shapes and keeps the faster one.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, ContextManager

import torch


@contextlib.contextmanager
def _mkldnn(enabled: bool):
    # only this one switch: torch.backends.mkldnn.flags would also reset the user's
    # deterministic and TF32 settings for the duration
    old = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = old


def no_change() -> ContextManager:
    return contextlib.nullcontext()


BACKENDS: dict[str, Callable[[], ContextManager]] = {
    "mkldnn": lambda: _mkldnn(True),
    "native": lambda: _mkldnn(False),
    "unchanged": no_change,  # off the CPU, or without oneDNN
}


def pinned_backend(name: str, device: torch.device) -> str | None:
    """The backend ``name`` (``mkldnn`` or ``native``) where it applies, ``None`` for ``auto``."""
    if name == "auto":
        return None
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return "unchanged"
    return name


def fastest_backend(work: Callable[[], object], device: torch.device, reps: int = 5) -> str:
    """The name (in ``BACKENDS``) of the context under which ``work()`` runs fastest here.

    Off the CPU, or when oneDNN is not built in, ``"unchanged"``. The two give results equal up
    to float rounding, not bit for bit, so a run records its choice (checkpoints keep it).
    """
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return "unchanged"
    best, best_time = "mkldnn", float("inf")
    for name in ("mkldnn", "native"):
        ctx = BACKENDS[name]
        with ctx():
            work()  # warm-up: oneDNN builds its kernels on first use
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                work()
                times.append(time.perf_counter() - t0)
        median = sorted(times)[len(times) // 2]
        if median < best_time:
            best, best_time = name, median
    return best
