"""The processes of one run: which one this is, how many there are, and what they exchange.

A run started by ``torchrun`` (or the original's ``--world_size N`` with ``RANK`` and
``MASTER_ADDR``/``MASTER_PORT`` or ``INIT_FILE`` in the environment) is a group of processes that
each own a disjoint share of the networks; everything else (the synthetic set, its optimiser, the
real batches, the random stream) is replicated, kept identical by summing the hypergradients over
the group. A plain run is a group of one, and every method here is then a no-op, so the core
never asks whether it is distributed.

Collectives that fail (a process died, the network dropped, a timeout passed) raise
``DistributedError`` with one line instead of torch's multi-line backend errors.
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from .errors import ConfigError, DatadistillError

T = TypeVar("T")
DEFAULT_TIMEOUT = 900.0  # seconds a collective may wait for the slowest process


class DistributedError(RuntimeError):
    """The process group broke down: a process died, a timeout passed, or replicas diverged."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The process that reads shared inputs first and alone writes results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def __str__(self) -> str:
        return f"rank {self.rank}/{self.size}"

    # -- splitting work ----------------------------------------------------------------------
    def check_divides(self, what: str, n: int) -> None:
        """Work that every process must share equally (the networks of an outer step)."""
        if n % self.size:
            raise ConfigError(f"{what} {n} does not split over {self.size} processes; use a multiple of "
                              f"{self.size} or another number of processes")

    def block(self, n: int) -> slice:
        """This process's equal share of ``n`` items, contiguous and in rank order."""
        self.check_divides("the work of", n)
        k = n // self.size
        return slice(self.rank * k, (self.rank + 1) * k)

    def part(self, n: int) -> range:
        """This process's share of ``n`` items when they need not split evenly (evaluation)."""
        k = math.ceil(n / self.size)
        return range(min(n, self.rank * k), min(n, (self.rank + 1) * k))

    # -- collectives ---------------------------------------------------------------------------
    def all_reduce_sum(self, tensors: list[torch.Tensor]) -> None:
        """Sum ``tensors`` over the processes, in place, in one collective."""
        if not self.distributed:
            return
        # one flat vector on the backend's device (gloo: the CPU, even for CUDA gradients)
        flat = torch.cat([t.reshape(-1) for t in tensors]).to(collective_device())
        _collective("summing the hypergradients", dist.all_reduce, flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def gather(self, values: list[T]) -> list[T]:
        """Every process's ``values``, concatenated in rank order, on every process.

        An object collective: torch pickles ``values`` into tensors on the backend's device itself.
        """
        if not self.distributed:
            return list(values)
        out: list = [None] * self.size
        _collective("gathering results", dist.all_gather_object, out, list(values))
        return [v for part in out for v in part]

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every process."""
        if not self.distributed:
            return value
        box = [value]
        _collective("receiving from rank 0", dist.broadcast_object_list, box, 0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            _collective("waiting for the other processes", dist.barrier)

    def agree(self, fn: Callable[[], T]) -> T:
        """``fn()`` on every process; if it fails with a user error on any of them, raise that
        error on all of them, so no process is left waiting for one that gave up."""
        value = error = None
        try:
            value = fn()
        except DatadistillError as e:
            error = e
        if not self.distributed:
            if error is not None:
                raise error
            return value
        errors = self.gather([None if error is None else (type(error), str(error))])
        for i, failure in enumerate(errors):
            if failure is not None:
                kind, message = failure
                raise kind(message if i == self.rank else f"on rank {i}: {message}")
        return value

    def check_identical(self, tensors: list[torch.Tensor], what: str) -> None:
        """Fail on every process if the replicas of ``tensors`` differ between processes.

        A cheap checksum (sum and sum of squares, in float64) compared by its minimum and maximum
        over the group; the replicas receive the same summed update, so they agree to the bit
        unless a process computed something else.
        """
        if not self.distributed:
            return
        sums = torch.stack([torch.stack([t.detach().double().sum(), t.detach().double().square().sum()])
                            for t in tensors]).reshape(-1).to(collective_device())
        low, high = sums.clone(), sums.clone()
        _collective("comparing replicas", dist.all_reduce, low, dist.ReduceOp.MIN)
        _collective("comparing replicas", dist.all_reduce, high, dist.ReduceOp.MAX)
        if not torch.allclose(low, high, rtol=1e-6, atol=1e-9):
            raise DistributedError(f"{self}: the processes' copies of {what} differ (checksums "
                                   f"{low.tolist()} vs {high.tolist()}); the run is not deterministic "
                                   f"across processes")


def collective_device() -> torch.device:
    """The device whose tensors the current process group's backend takes: NCCL serves only CUDA
    tensors (on this process's current CUDA device, which ``start`` set to ``cuda:LOCAL_RANK``),
    gloo the CPU. Tensor collectives fail on any other device ("No backend type associated with
    device type"). Needs an initialised group."""
    if dist.get_backend() == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _collective(what: str, fn, *args) -> None:
    try:
        fn(*args)
    except (RuntimeError, ValueError) as e:  # gloo / NCCL report lost peers and timeouts as these
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(f"{_current()}: lost the other processes while {what} (did one of "
                               f"them fail or stop?): {first}") from None


def _current() -> str:
    return f"rank {dist.get_rank()}/{dist.get_world_size()}" if dist.is_initialized() else "this process"


# -- starting and ending the group ------------------------------------------------------------------
def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer") from None


def launched_size(world_size: int | None = None) -> int:
    """How many processes this run has: ``--world_size``, else torchrun's ``WORLD_SIZE``, else 1."""
    env = _env_int("WORLD_SIZE")
    if world_size is not None:
        if world_size < 1:
            raise ConfigError(f"--world_size must be >= 1, got {world_size}")
        if env is not None and env != world_size:
            raise ConfigError(f"--world_size {world_size} but the launcher set WORLD_SIZE={env}; "
                              f"give one of them")
        return world_size
    if env is not None and env < 1:
        raise ConfigError(f"WORLD_SIZE must be >= 1, got {env}")
    return env or 1


def start(world_size: int | None = None, device: str = "cpu",
          timeout: float = DEFAULT_TIMEOUT) -> tuple[World, str]:
    """Join the process group this process was launched into, if any; returns the world and the
    device to run on (``cuda`` becomes ``cuda:LOCAL_RANK``).

    torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
    the original's launch gives ``--world_size`` and ``RANK`` with ``MASTER_ADDR``/``MASTER_PORT``
    or ``INIT_FILE`` (a path on a filesystem all processes share). NCCL on GPUs, gloo on CPUs.
    """
    if not (math.isfinite(timeout) and timeout > 0):  # checked alone too: the flag is wrong either way
        raise ConfigError(f"--dist_timeout must be a positive number of seconds, got {timeout:g}")
    size = launched_size(world_size)
    if size == 1:
        return World(), device
    rank = _env_int("RANK")
    if rank is None:
        raise ConfigError(f"a run over {size} processes needs RANK in the environment (torchrun sets "
                          f"it; with --world_size set RANK=0..{size - 1} for each process)")
    if not 0 <= rank < size:
        raise ConfigError(f"RANK={rank} is not in 0..{size - 1} for {size} processes")
    local_rank = _env_int("LOCAL_RANK")
    local_rank = rank if local_rank is None else local_rank
    init_file = os.environ.get("INIT_FILE")
    if init_file:
        method = f"file://{os.path.abspath(init_file)}"
    elif os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
        _env_int("MASTER_PORT")
        method = "env://"
    else:
        raise ConfigError(f"a run over {size} processes needs MASTER_ADDR and MASTER_PORT (or INIT_FILE) "
                          f"in the environment; torchrun sets them")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device} asked for, but this machine has no CUDA GPU; use --device cpu")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    try:
        with _native_stderr_silenced():
            dist.init_process_group(backend, init_method=method, rank=rank, world_size=size,
                                    timeout=datetime.timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as e:  # DistStoreError and friends: no rendezvous in time
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(f"rank {rank}/{size}: could not meet the other processes via {method} "
                               f"within {timeout:g} s: {first}") from None
    return World(rank, size, local_rank), device


@contextlib.contextmanager
def _native_stderr_silenced():
    """c10d logs every failed connection attempt with a C++ stack trace on file descriptor 2
    (not through Python); the failure reaches us as an exception, which we report in one line."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def stop(world: World) -> None:
    """Leave the group. The processes first meet once more, so none tears its connections down
    while a peer still finishes its last collective (seen once in CI: the second rank aborted at
    exit with "terminate called without an active exception" after a complete run)."""
    if world.distributed and dist.is_initialized():
        try:
            dist.barrier()
        except (RuntimeError, ValueError):
            pass  # a peer already gone: the error that brought us here has been reported
        dist.destroy_process_group()
