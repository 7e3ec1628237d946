"""Choosing the CPU convolution backend for the unrolled steps by timing both, once per run.

The unrolled steps convolve only the few synthetic images, and oneDNN (mkldnn) is slow on some of
those small shapes: LeNet's first layer (one input channel) on 10 MNIST images took 18.6 ms for
three unrolled steps and their backward with oneDNN, 13.9 ms with PyTorch's native kernels. On the
large real batch oneDNN wins by far. Neither is best everywhere, so, like
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


BACKENDS: dict[str, Callable[[], ContextManager]] = {
    "mkldnn": lambda: _mkldnn(True),
    "native": lambda: _mkldnn(False),
}


def no_change() -> ContextManager:
    return contextlib.nullcontext()


def fastest_backend(work: Callable[[], object], device: torch.device, reps: int = 5
                    ) -> Callable[[], ContextManager]:
    """The context (from ``BACKENDS``) under which ``work()`` runs fastest on this machine.

    Off the CPU, or when oneDNN is not built in, nothing changes.
    """
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return no_change
    best, best_time = "mkldnn", float("inf")
    for name, ctx in BACKENDS.items():
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
    return BACKENDS[best]
