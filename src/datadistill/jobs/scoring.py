"""Which networks score a set: fresh ones from evaluation seeds, the fixed ones, or a zoo's."""
from __future__ import annotations

from typing import Callable

from ..config import RunConfig
from ..models import Params
from ..nets import FixedNets, NetSource, ZooNets, eval_seeds, fresh_nets
from ..world import World


def my_part(zoo: Params, device, world: World) -> Params:
    """This process's part of scoring networks, on ``device`` (accuracies are gathered afterwards)."""
    part = world.part(next(iter(zoo.values())).shape[0])
    return {k: v[part.start:part.stop].to(device) for k, v in zoo.items()}


def scoring_nets(config: RunConfig, model, device, world: World, source: NetSource,
                 zoo_test: Params | None) -> Callable[[bool], Params]:
    """``score(all_processes)``: this process's part of the scoring networks (evaluation, whose
    accuracies are gathered afterwards), or every one of them (the reports rank 0 computes)."""
    nets, m = config.nets, config.model
    on_device = lambda params: {k: v.to(device) for k, v in params.items()}  # noqa: E731
    mine_of_test = None if zoo_test is None else my_part(zoo_test, device, world)

    def score(all_processes: bool) -> Params:
        everyone = all_processes and world.distributed
        if nets.test_nets_type == "loaded":
            return on_device(zoo_test) if everyone else mine_of_test
        if nets.test_nets_type == "same_as_train" and isinstance(source, FixedNets):
            return source.params if everyone else source.mine
        if nets.test_nets_type == "same_as_train" and isinstance(source, ZooNets):
            return on_device(source.all) if everyone else source.mine
        part = range(nets.test_n_nets) if everyone else world.part(nets.test_n_nets)
        return fresh_nets(model, m.init, m.init_param, eval_seeds(config.seed, nets.test_n_nets)[part.start:part.stop],
                          device)
    return score
