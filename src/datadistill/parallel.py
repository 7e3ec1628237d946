"""Spreading one large batch over the CPU cores: chunks evaluated concurrently in threads.

oneDNN parallelises a LeNet-sized convolution over a batch poorly, so concurrent single-threaded
chunks of the batch use a few cores better than intra-op threads on the whole of it. PyTorch
kernels release the GIL, so plain Python threads run chunks truly in parallel. Each worker owns a
replica of the model template because ``functional_call`` swaps a module's parameters while it
runs and so must not share a module between threads.

On a GPU, or with one core, chunks run one after another in the calling thread.
"""
from __future__ import annotations

import contextlib
import copy
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import torch
import torch.nn as nn

T = TypeVar("T")


class ChunkPool:
    """Maps ``fn(model, *chunk)`` over slices of a batch on ``workers`` threads.

    ``max_chunk`` bounds the images per call: smaller chunks keep their activations in cache;
    ``min_chunk`` keeps tiny batches in one piece, where threads cost more than they save.
    """

    def __init__(self, model: nn.Module, device: torch.device | str = "cpu", workers: int | None = None,
                 max_chunk: int = 256, min_chunk: int = 64):
        self.model = model
        self.workers = workers or torch.get_num_threads()
        if torch.device(device).type != "cpu":
            self.workers = 1
        self.max_chunk, self.min_chunk = max_chunk, min_chunk
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(self.workers) if self.workers > 1 else None

    def _replica(self) -> nn.Module:
        replica = getattr(self._local, "model", None)
        if replica is None:
            replica = self._local.model = copy.deepcopy(self.model)
        return replica

    def _run(self, fn: Callable[..., T], chunk: Sequence[torch.Tensor]) -> T:
        # a fresh worker thread starts with torch's default of one intra-op thread, which is what
        # we want: the parallelism is across chunks
        return fn(self._replica(), *chunk)

    def chunk_bounds(self, n: int) -> list[tuple[int, int]]:
        """[start, stop) of each chunk: a multiple of ``workers`` chunks of near-equal size."""
        if self._executor is None or n < 2 * self.min_chunk:
            return [(0, n)]
        k = self.workers * math.ceil(n / (self.workers * self.max_chunk))
        size = math.ceil(n / k)
        return [(i, min(i + size, n)) for i in range(0, n, size)]

    def map(self, fn: Callable[..., T], *batch: torch.Tensor) -> list[T]:
        """``fn(model, *[t[a:b] for t in batch])`` for each chunk [a, b), in order."""
        bounds = self.chunk_bounds(batch[0].shape[0])
        chunks = [[t[a:b] for t in batch] for a, b in bounds]
        if len(chunks) == 1:
            return [fn(self.model, *chunks[0])]
        futures = [self._executor.submit(self._run, fn, c) for c in chunks]
        return [f.result() for f in futures]

    @contextlib.contextmanager
    def cores_to_chunks(self):
        """Run the enclosed code with one intra-op thread in the calling thread.

        With the chunks spread over the cores, a second intra-op thread in the caller only
        competes with them for the same cores, so the caller keeps one.
        """
        if self._executor is None:
            yield
            return
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
