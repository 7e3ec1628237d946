"""Where networks come from: fixed, fresh every draw, or a trained zoo. Seeds live here.

A source's ``sample()`` returns stacked initial weights ``{name: (k, ...)}`` for this process's
share of one outer iteration's networks. Every process draws the same random numbers (seeds,
permutations) from the run's generator and keeps its own block of them, so the random stream
stays in step across a group of processes and the shares stay disjoint.

Seeds are disjoint by construction. torch's CPU generator (mt19937) keeps only the low 32 bits
of a seed (2**40 + i draws what i draws), so every family lives in its own range below 2**32:
training draws from the run's generator in [0, 2**31); then ``SEEDS_PER_FAMILY`` each for
train-phase zoo networks, test-phase zoo networks, evaluation networks and selection networks
(``zoo_seeds``, ``eval_seeds``, ``selection_seeds``). So no evaluation network ever trained the
images, no zoo network ever scores them, and no test-phase zoo network repeats a train-phase one.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from .errors import ConfigError
from .models import Params
from .weights import init_params, stack_params
from .world import World

# recorded in every zoo: zoos without it were drawn by an earlier layout whose test-phase networks
# were the train phase's (their seeds differed above the low 32 bits only)
SEED_LAYOUT = 2
SEEDS_PER_FAMILY = 2**29  # networks of one kind (a zoo phase, a run's scorers) with distinct seeds
_FAMILY_BASE = {"train": 2**31, "test": 2**31 + SEEDS_PER_FAMILY,  # zoo phases
                "eval": 2**31 + 2 * SEEDS_PER_FAMILY, "selection": 2**31 + 3 * SEEDS_PER_FAMILY}
EVAL_SEED_OFFSET = 1_000_003  # between the evaluation networks of consecutive run seeds


def fresh_nets(model: nn.Module, init: str, init_param: float, seeds: list[int], device) -> Params:
    """Stacked (len(seeds), ...) weights, network i drawn from ``seeds[i]``."""
    check_room(model, len(seeds), device)
    return stack_params([init_params(model, init, init_param, s, device) for s in seeds])


def check_room(model: nn.Module, n: int, device) -> None:
    """Raise MemoryError at once when the weights of ``n`` networks alone exceed the whole memory of
    ``device``, rather than after minutes of drawing them one by one (training needs more still)."""
    need = n * sum(p.numel() * p.element_size() for p in model.parameters())
    device = torch.device(device)
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
    elif hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    else:  # no way to ask: let the allocator say
        return
    if need > have:
        raise MemoryError(f"{n} networks' weights need more than the device's {have / 2**30:.1f} GiB; "
                          f"tried to allocate {need / 2**30:.1f} GiB")


def _family(kind: str, start: int, stop: int) -> list[int]:
    """Seeds ``start..stop-1`` of a family, wrapping within it (``stop - start`` of them distinct)."""
    if stop - start > SEEDS_PER_FAMILY:
        raise ConfigError(f"at most {SEEDS_PER_FAMILY} networks of one kind, asked for {stop - start}")
    return [_FAMILY_BASE[kind] + i % SEEDS_PER_FAMILY for i in range(start, stop)]


def eval_seeds(run_seed: int, n: int) -> list[int]:
    """Seeds of the ``n`` networks that score a run seeded ``run_seed``."""
    start = EVAL_SEED_OFFSET * (run_seed + 1)
    return _family("eval", start, start + n)


def selection_seeds(run_seed: int, n: int) -> list[int]:
    """Seeds of networks that choose among candidate sets, never among the scoring ones."""
    start = EVAL_SEED_OFFSET * (run_seed + 1)
    return _family("selection", start, start + n)


def zoo_seeds(phase: str, start: int, stop: int) -> list[int]:
    """Seeds of zoo networks ``start..stop-1`` of ``phase`` (train and test zoos are disjoint)."""
    return _family(phase, start, stop)


def draw_seeds(generator: torch.Generator, n: int) -> list[int]:
    """``n`` training seeds from the run's stream."""
    return torch.randint(0, 2**31 - 1, (n,), generator=generator).tolist()


class NetSource:
    """Initial weights of the networks one outer iteration trains."""

    total: int  # networks per iteration over all processes (the mean of the outer loss is over these)

    def sample(self, generator: torch.Generator) -> Params:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class FreshNets(NetSource):
    """``n`` networks drawn afresh every iteration (the paper's unknown initialisation)."""

    def __init__(self, model: nn.Module, init: str, init_param: float, n: int, device,
                 world: World = World()):
        self.model, self.init, self.init_param, self.device, self.world = model, init, init_param, device, world
        self.total = n
        check_room(model, n // world.size, device)  # once, before any iteration draws seeds

    def sample(self, generator: torch.Generator) -> Params:
        seeds = draw_seeds(generator, self.total)
        return fresh_nets(self.model, self.init, self.init_param, seeds[self.world.block(self.total)], self.device)


class FixedNets(NetSource):
    """The same ``n`` networks every iteration (the paper's known initialisation); drawn once from
    the run's stream. ``params`` holds all of them, this process's share in ``mine``."""

    def __init__(self, model: nn.Module, init: str, init_param: float, n: int, device,
                 generator: torch.Generator, world: World = World()):
        self.model, self.init, self.init_param, self.device, self.world = model, init, init_param, device, world
        self.total = n
        check_room(model, n, device)  # before drawing the seeds
        self._set(draw_seeds(generator, n))

    def _set(self, seeds: list[int]) -> None:
        self.seeds = seeds
        self.params = fresh_nets(self.model, self.init, self.init_param, seeds, self.device)
        own = self.world.block(self.total)
        self.mine = {k: v[own] for k, v in self.params.items()}

    def sample(self, generator: torch.Generator) -> Params:
        return self.mine

    def state_dict(self) -> dict:
        return {"seeds": self.seeds}

    def load_state_dict(self, state: dict) -> None:
        self._set(state["seeds"])


class ZooNets(NetSource):
    """``per_iteration`` distinct networks of a trained zoo each iteration, in the order of fresh
    permutations, cycling, so that every network is used once before any is used twice."""

    def __init__(self, zoo: Params, per_iteration: int, device, world: World = World()):
        n = next(iter(zoo.values())).shape[0]
        self.world, self.total = world, per_iteration
        self.all = zoo  # every network, where it was read (rank 0's reports use them all)
        own = world.block(n)
        self.mine = {k: v[own].to(device) for k, v in zoo.items()}  # a contiguous block per process
        self.order = torch.empty(0, dtype=torch.long)
        self.device = device

    def sample(self, generator: torch.Generator) -> Params:
        # positions within each process's block: the same draw everywhere, applied to its own block
        k = self.total // self.world.size
        n = next(iter(self.mine.values())).shape[0]
        if self.order.numel() < k:
            # queue a new permutation behind the rest of the current one, minus those still queued,
            # so that one draw never holds a network twice
            # the ones still queued go to the end of the new cycle rather than leave it, so that
            # every cycle is a whole permutation
            fresh = torch.randperm(n, generator=generator)
            queued = torch.isin(fresh, self.order)
            self.order = torch.cat([self.order, fresh[~queued], fresh[queued]])
        index, self.order = self.order[:k], self.order[k:]
        return {name: v[index.to(self.device)] for name, v in self.mine.items()}

    def state_dict(self) -> dict:
        return {"order": self.order.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.order = state["order"]
