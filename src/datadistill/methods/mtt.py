"""Cazenavette, Wang, Torralba, Efros and Zhu 2022: dataset distillation by matching training
trajectories (MTT).

Experts are networks trained on the real training split with plain SGD, their weights kept at the
start and after every epoch (``datadistill train-zoo --trajectories``: theta*_0 .. theta*_E). Each
outer iteration draws an expert and a start epoch t < ``max_start_epoch``, takes N = ``syn_steps``
gradient steps on the synthetic set (X, Y) from the expert's weights at t, all with the one
learned step size alpha,
    theta_0 = theta*_t,   theta_{n+1} = theta_n - alpha grad CE(f(X; theta_n), Y)   (``inner.unroll``)
and asks them to land where the expert stood M = ``expert_epochs`` epochs later, relative to how
far the expert moved:
    L = ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2
(sums over every parameter). X (``ipc`` images per class, one batch) and log alpha are learned.

The synthetic set is used as one batch at every step (the paper's minibatches of it matter only
for sets too big for one batch); with ``--augment dsa`` each step sees its own augmentation of it,
and the experts are the ones trained on batches augmented alike (``train-zoo --trajectories
--augment dsa``), as the paper trains them: steps on augmented images are matched to a trajectory
of steps on augmented images.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn

from .. import artifacts
from ..augment import augmenter
from ..config import RunConfig
from ..data import Split, batches_per_epoch
from ..errors import ArtifactError, ConfigError
from ..inner import batched_unroll
from ..models import Params
from ..nets import NetSource, fresh_nets
from ..runtime import Runtime
from ..synthetic import LearnableSet, SyntheticSet
from ..transfer import to_device
from ..world import World
from . import register
from .base import Method, MethodLoss, Setup, one_batch_start

if TYPE_CHECKING:
    from ..zoo import Zoo

DEFAULT_IPC = 10  # images per class when --ipc is not given


def matching_loss(trained: Params, start: Params, target: Params) -> torch.Tensor:
    """||trained - target||^2 / ||start - target||^2 per stacked network, shape (k,): each sum runs
    over every parameter tensor."""
    def sq(a: Params, b: Params) -> torch.Tensor:
        return sum(((a[k] - b[k]) ** 2).flatten(1).sum(1) for k in a)
    return sq(trained, target) / sq(start, target)


class ExpertSegments(NetSource):
    """Segments of expert trajectories: ``sample`` draws, for each of the iteration's ``total``
    segments, an expert and a start epoch t in [0, ``max_start_epoch``) from the run's stream, and
    returns this process's share as ``{"start": theta*_t, "target": theta*_{t+expert_epochs}}``,
    each stacked weights (k, ...). (The outer loop hands this to ``Mtt.loss`` untouched.)

    ``trajectories``: {name: (n_experts, epochs + 1, ...)}, as an expert zoo stores them.
    """

    def __init__(self, trajectories: Params, expert_epochs: int, max_start_epoch: int, device,
                 per_iteration: int = 1, world: World = World()):
        first = next(iter(trajectories.values()))
        self.n_experts, epochs = first.shape[0], first.shape[1] - 1
        if max_start_epoch - 1 + expert_epochs > epochs:
            need = max_start_epoch - 1 + expert_epochs
            raise ConfigError(f"--max_start_epoch {max_start_epoch} with --expert_epochs {expert_epochs} needs "
                              f"experts trained for {need} epochs (the latest start, epoch {max_start_epoch - 1}, "
                              f"plus {expert_epochs}), but these were trained for {epochs}; lower either flag, "
                              f"or train longer experts (train-zoo --trajectories --epochs {need})")
        self.trajectories, self.expert_epochs, self.max_start_epoch = trajectories, expert_epochs, max_start_epoch
        self.device, self.world, self.total = device, world, per_iteration
        self.epochs = epochs

    def draw(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(experts, start epochs) of all ``total`` segments: the same draw on every process."""
        experts = torch.randint(self.n_experts, (self.total,), generator=generator)
        starts = torch.randint(self.max_start_epoch, (self.total,), generator=generator)
        return experts, starts

    def segment(self, experts: torch.Tensor, starts: torch.Tensor) -> dict[str, Params]:
        at = lambda epochs: {k: to_device(v[experts, epochs], self.device)  # noqa: E731
                             for k, v in self.trajectories.items()}
        return {"start": at(starts), "target": at(starts + self.expert_epochs)}

    def sample(self, generator: torch.Generator) -> dict[str, Params]:
        experts, starts = self.draw(generator)
        own = self.world.block(self.total)
        return self.segment(experts[own], starts[own])


def load_experts(config: RunConfig, model: nn.Module) -> tuple[Params, "Zoo"]:
    """The trajectories of the expert zoo of (dataset, arch, init, "train"), checked against the run."""
    from ..jobs.zoo import expert_zoo_file  # the jobs import the methods: here, not at module level

    path = expert_zoo_file(config, "train")
    if not path.is_file():
        flags = "" if config.model.width is None else f" --width {config.model.width}"
        flags += "" if config.methods.augment == "none" else f" --augment {config.methods.augment}"
        raise ArtifactError(f"no expert trajectories at {path}; train them first: datadistill train-zoo "
                            f"--trajectories --dataset {config.data.dataset} --arch {config.model.arch}{flags} "
                            f"--init {config.model.init} "
                            + (f"--zoo_dir {config.zoo_dir}" if config.zoo_dir else
                               f"--results_dir {config.results_dir} (or --zoo_dir {config.zoo_root})"))
    zoo = artifacts.load_zoo(path)
    zoo.check(config.data.dataset, config.model.arch, 1, "expert")
    if zoo.trajectories is None:
        raise ArtifactError(f"{path} holds no trajectories; train experts with datadistill train-zoo --trajectories")
    wanted, got = config.to_dict()["model"], zoo.config.get("model")
    if got != wanted:
        diff = sorted(k for k in wanted if (got or {}).get(k) != wanted[k])
        raise ArtifactError(f"the experts in {path} differ from this run's model ({', '.join(diff)}); "
                            f"train experts with the same --width and --init_param, in another --results_dir")
    zoo.check_layout(model, f"the experts in {path}", "them again with datadistill train-zoo --trajectories")
    return zoo.trajectories, zoo


@register("mtt")
class Mtt(Method):
    """One batch of ``ipc`` images per class and one learned step size, matched to expert
    trajectories (see the module docstring)."""

    protocol = "from_scratch"
    learns_step_sizes = True  # one, the rate of its unrolled steps

    def __init__(self, model: nn.Module, runtime: Runtime, ipc: int = DEFAULT_IPC, init_lr: float = 0.01,
                 image_init: str = "real", syn_steps: int = 20, expert_epochs: int = 2, max_start_epoch: int = 10,
                 augment: str = "none", learn_labels: bool = False, init: tuple[str, float] = ("xavier", 1.0),
                 seed: int = 0, step_size_param: str = "exp", factor: int = 1, init_from: str | None = None):
        self.model, self.runtime, self.ipc, self.init_lr, self.image_init = model, runtime, ipc, init_lr, image_init
        self.factor, self.init_from = factor, init_from
        self.syn_steps, self.expert_epochs, self.max_start_epoch = syn_steps, expert_epochs, max_start_epoch
        self.learn_labels, self.init, self.step_size_param = learn_labels, init, step_size_param
        # each step trains the network on an augmented set: a draw per image (the papers' code)
        self._augment = augmenter(augment, siamese=False)
        # the augmentations' own stream, so that --augment leaves the run's stream as it is
        self.generator = torch.Generator().manual_seed(seed)
        self.experts: dict = {}  # what the report says about them, once loaded
        self._expert_batch: int | None = None  # the experts' batch size, where their zoo records it

    @classmethod
    def from_config(cls, config: RunConfig, model: nn.Module, runtime: Runtime) -> "Mtt":
        m, s = config.methods, config.synthetic
        seed = config.seed * 1_000 + runtime.world.rank  # each process augments for its own segments
        return cls(model, runtime, s.ipc or DEFAULT_IPC, s.init_lr, s.image_init, m.syn_steps, m.expert_epochs,
                   m.max_start_epoch, m.augment, s.learn_labels, (config.model.init, config.model.init_param),
                   seed, s.step_size_param, s.factor, s.init_from)

    def net_source(self, config: RunConfig, model: nn.Module, device, generator: torch.Generator,
                   world) -> ExpertSegments:
        trajectories, zoo = world.agree(lambda: load_experts(config, model))
        source = world.agree(lambda: ExpertSegments(trajectories, self.expert_epochs, self.max_start_epoch,
                                                    device, config.nets.n_nets, world))
        self.experts = {"experts": source.n_experts, "expert_epochs_trained": source.epochs,
                        "expert_test_accuracy": float(zoo.accuracies.mean())}
        self._expert_batch = (zoo.config.get("outer") or {}).get("batch_size")
        return source

    def initial(self, setup: Setup) -> LearnableSet:
        images, labels = one_batch_start(setup, self.ipc, self.image_init, self.factor, self.init_from)
        lrs = torch.tensor([float(self.init_lr)], dtype=images.dtype)
        return LearnableSet(images, labels, lrs, setup.num_classes, setup.mean, setup.std,
                            learn_labels=self.learn_labels, step_size_param=self.step_size_param,
                            factor=self.factor).to(setup.device)

    def step_batches(self, learned: LearnableSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, labels, step sizes) of the ``syn_steps`` steps for ``inner.unroll``: the set as
        one batch (augmented afresh for each step with --augment), the one step size repeated."""
        images, labels = learned.decoded(), learned.targets()
        if self._augment is not None:
            images = torch.stack([self._augment(images[0], self.generator) for _ in range(self.syn_steps)])
            labels = labels.expand(self.syn_steps, *labels.shape[1:])
        return images, labels, learned.lrs().expand(self.syn_steps)

    def loss(self, learned: LearnableSet, nets: dict[str, Params], real_x: torch.Tensor, real_y: torch.Tensor,
             total_nets: int) -> MethodLoss:
        """``nets``: ``ExpertSegments.sample``'s {"start", "target"}; the real batch is not read
        (the experts hold what the real data has to say)."""
        start, target = nets["start"], nets["target"]
        with self.backward_context(learned):
            trained = batched_unroll(self.model, start, *self.step_batches(learned))
            value = matching_loss(trained, start, target).sum() / total_nets
        return MethodLoss(value, value.detach())

    def backward_context(self, learned: LearnableSet):
        """The CPU convolution backend of the unrolled steps, forward and backward."""
        return self.runtime.unroll_backend(lambda: self._time_unroll(learned))

    def _time_unroll(self, learned: LearnableSet) -> None:
        """One unroll and its backward with the run's shapes, for ``--conv_backend auto``; a network
        from a fixed seed, so timing does not consume the run's random stream."""
        nets = fresh_nets(self.model, *self.init, [0], learned.images.device)
        state = self.generator.get_state()
        trained = batched_unroll(self.model, nets, *self.step_batches(learned))
        self.generator.set_state(state)
        torch.autograd.grad(list(trained.values()), learned.tensors(),
                            [torch.ones_like(v) for v in trained.values()], allow_unused=True)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])

    def report(self, synthetic: SyntheticSet, setup: Setup, test: Split, train_nets: Params | None,
               test_nets: Params, progress: Callable[[str], None]) -> dict:
        # the experts' SGD steps a segment spans, beside syn_steps: where the set has far more steps
        # than the expert took (a small dataset's few batches an epoch), they overshoot its target
        spans = {} if self._expert_batch is None else {
            "expert_steps": self.expert_epochs * batches_per_epoch(len(setup.train), self._expert_batch)}
        return {"mtt": {"step_size": float(synthetic.lrs[0]), "syn_steps": self.syn_steps,
                        "expert_epochs": self.expert_epochs, "max_start_epoch": self.max_start_epoch,
                        **spans, **self.experts}}
