"""Process-wide performance switches, in one place, applied explicitly by the command that runs a
job: never at import, never for ``--help``.

- the allocator (``allocator.keep_freed_memory``): glibc keeps freed blocks for reuse;
- thread chunking (``parallel.ChunkPool``): a large real batch as one-thread chunks on all cores;
- the CPU convolution backend of the unrolled steps (``backends``): fixed by default, so that a
  run is repeatable bit for bit; ``auto`` times both on the first step and records its choice.
"""
from __future__ import annotations

from typing import Callable, ContextManager

import torch
import torch.nn as nn

from .allocator import keep_freed_memory
from .backends import BACKENDS, fastest_backend, pinned_backend
from .parallel import ChunkPool
from .world import World

DEFAULT_CONV_BACKEND = "native"  # small convolutions of a few synthetic images suit native kernels


def apply_process_switches() -> bool:
    """The switches that hold for the whole process (the allocator); True if applied."""
    return keep_freed_memory()


class Runtime:
    """The per-job side of the switches: thread pools and the unroll's conv backend.

    Close it (or use it as a context manager) when the job ends, which stops its threads.
    """

    def __init__(self, device: torch.device | str = "cpu", conv_backend: str = DEFAULT_CONV_BACKEND,
                 world: World = World()):
        self.device, self.world = torch.device(device), world
        self.backend: str | None = pinned_backend(conv_backend, self.device)
        self._pools: list[ChunkPool] = []

    def chunk_pool(self, model: nn.Module) -> ChunkPool:
        pool = ChunkPool(model, self.device)
        self._pools.append(pool)
        return pool

    def unroll_backend(self, time_work: Callable[[], object]) -> ContextManager:
        """The context the unrolled steps run in; with ``auto``, chosen by timing ``time_work`` on
        the first call (rank 0's choice for every process: one set of numerics per run)."""
        if self.backend is None:
            self.backend = self.world.broadcast(fastest_backend(time_work, self.device))
        return BACKENDS[self.backend]()

    def close(self) -> None:
        for pool in self._pools:
            pool.close()
        self._pools.clear()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
