"""The outer loop of distillation: Adam on the synthetic images and log step sizes.

Each outer iteration draws a batch of real training images, trains ``n_nets`` networks (fixed,
fresh, or drawn from a zoo) on the synthetic set by unrolled GD (``inner``), and descends the
mean loss of the trained networks on the real batch, with the labels the mode wants
(``objectives``: basic and adapt keep them, attack relabels one class). The loop reports through
callbacks and never writes files or prints.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backends import BACKENDS, fastest_backend, pinned_backend
from .config import RunConfig
from .data import Split, batches_per_epoch, class_balanced_sample, shuffled_batches
from .errors import ArtifactError
from .evaluate import EvalResult, eval_seeds, evaluate_synthetic, fresh_nets
from .inner import batched_unroll, summed_loss_grad
from .models import Params
from .objectives import loss_weights, wanted_labels
from .parallel import ChunkPool
from .synthetic import SyntheticSet, initial_set
from .world import World

CHECK_EVERY = 100  # iterations between checks that all processes hold the same synthetic set


def real_batch_gradient(pool: ChunkPool, trained: Params, real_x: torch.Tensor, real_y: torch.Tensor,
                        n_nets: int | None = None, weights: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, Params]:
    """Real-batch loss of the ``trained`` networks, and its gradient w.r.t. their weights,
    computed chunk by chunk on all cores, as their share of the mean over ``n_nets`` networks
    (default: these alone; more when other processes hold the rest). With per-image ``weights``
    the mean is a weighted one (``objectives``). Nothing here keeps a graph: each chunk's
    ``summed_loss_grad`` differentiates its own detached copy of the weights."""
    batch = (real_x, real_y) if weights is None else (real_x, real_y, weights)
    parts = pool.map(lambda model, *chunk: summed_loss_grad(model, trained, *chunk), *batch)
    total = real_x.shape[0] if weights is None else weights.sum()
    scale = 1.0 / (total * (n_nets or next(iter(trained.values())).shape[0]))
    grads = {k: sum(g[k] for g, _ in parts) * scale for k in trained}
    return sum(v for _, v in parts) * scale, grads


class Callback:
    """Hooks the outer loop calls; subclass and override what you need."""

    def on_start(self, run: "Distillation") -> None: ...
    def on_iteration(self, run: "Distillation", loss: torch.Tensor) -> None: ...
    def on_evaluation(self, run: "Distillation", result: EvalResult) -> None: ...
    def on_epoch_end(self, run: "Distillation") -> None: ...
    def on_end(self, run: "Distillation") -> None: ...


@dataclass
class History:
    """What happened so far; goes into checkpoints and metrics.json."""

    evaluations: list[dict] = field(default_factory=list)  # {"epoch", "iteration", "mean", "std", "n"}
    losses: list[dict] = field(default_factory=list)  # {"epoch", "loss"}: mean outer loss per epoch
    seconds: float = 0.0  # distillation wall time, evaluation included, across resumes


class Distillation:
    """One distillation run: owns the synthetic set, its optimiser, the networks, and the RNG.

    ``train`` is the only data the optimisation reads; ``test`` is used by ``evaluate`` alone.
    In a group of processes (``world``) this one trains and scores its share of the networks;
    the rest of the state is replicated and stays identical.
    """

    def __init__(self, config: RunConfig, model: nn.Module, train: Split, test: Split | None,
                 num_classes: int, mean, std, device: torch.device | str = "cpu",
                 loaded_train: Params | None = None, loaded_test: Params | None = None,
                 world: World = World()):
        """``loaded_train`` / ``loaded_test``: stacked weights from the train / test zoo, needed
        when ``train_nets_type`` / ``test_nets_type`` is ``loaded``; in a group of processes,
        all of them (each process keeps its share)."""
        self.config, self.model, self.train, self.test = config, model, train, test
        self.world = world
        check_divides(config, world)
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(config.seed)
        syn, nets = config.synthetic, config.nets
        self.synthetic = initial_set(num_classes, train.x.shape[1], train.x.shape[-1], syn.steps,
                                     syn.epochs, syn.images_per_class_per_step, syn.init_lr,
                                     mean, std, self.generator)
        if syn.image_init == "real":
            # an attack starts from its baseline: the images labelled target_class are real
            # images of attack_class, the rest real images of their own class
            attack_class, target_class = config.relabel
            source = None if attack_class is None else {target_class: attack_class}
            self.synthetic.images = torch.stack([
                class_balanced_sample(train, syn.images_per_class_per_step, num_classes, self.generator,
                                      source)[0].cpu()
                for _ in range(syn.steps)])
        self.synthetic.images = self.synthetic.images.to(self.device).requires_grad_()
        self.synthetic.labels = self.synthetic.labels.to(self.device)
        # step sizes are optimised in log space: positive by construction, and Adam's
        # scale-free updates suit a quantity whose useful range spans orders of magnitude
        self.log_lrs = self.synthetic.lrs.log().to(self.device).requires_grad_()
        # learned labels are free target vectors (any real weights on the classes' log-probabilities)
        # that start as the fixed labels' one-hot vectors. Attack 0 -> 1 against a 200-network zoo:
        # 74.40% success with 82.76% on the other classes, against 67.02% / 75.93% with fixed
        # labels and 72.64% / 76.43% with labels kept to distributions (softmax of learned logits)
        self.label_targets: torch.Tensor | None = None
        if syn.learn_labels:
            self.label_targets = F.one_hot(self.synthetic.labels, num_classes).float().requires_grad_()
        # the step sizes have their own rate: with fresh networks they must move slower than the images
        images_and_labels = [t for t in self._learned() if t is not self.log_lrs]
        self.optimizer = torch.optim.Adam(
            [{"params": images_and_labels}, {"params": [self.log_lrs], "lr": config.outer.step_size_lr}],
            lr=config.outer.lr, betas=(0.5, 0.999))
        # stepped every iteration; the factor is a pure function of the iteration and the config,
        # so a resumed run (even one with more epochs) lands on the same curve
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: config.outer.lr_factor(it, self.iterations_per_epoch))
        self.pool = ChunkPool(model, self.device)
        self.unroll_backend: str | None = None  # conv backend of the unroll, timed on the first step
        self.fixed_nets: Params | None = None
        self.fixed_seeds: list[int] | None = None
        if nets.train_nets_type == "known_init":
            self.fixed_seeds = self._draw_seeds(nets.n_nets)
            self.fixed_nets = self._nets_from(self.fixed_seeds)
        if (nets.train_nets_type == "loaded") != (loaded_train is not None):
            raise ValueError("loaded_train is needed exactly when train_nets_type is 'loaded'")
        if nets.test_nets_type == "loaded" and loaded_test is None:
            raise ValueError("loaded_test is needed when test_nets_type is 'loaded'")
        # each process keeps a contiguous block of the train zoo, and its part of the test zoo,
        # on the device; the whole zoos stay where they were read, for rank 0's reports
        self._zoos = (loaded_train, loaded_test)
        own, scored = world.block(nets.n_nets), world.part(nets.test_n_nets)
        self.loaded_train = None if loaded_train is None else {
            k: v[own].to(self.device) for k, v in loaded_train.items()}
        self.loaded_test = None if loaded_test is None else {
            k: v[scored.start:scored.stop].to(self.device) for k, v in loaded_test.items()}
        # loaded nets are drawn in the order of a fresh permutation, cycling, so every network of
        # the zoo is used once before any is used twice
        self.zoo_order = torch.empty(0, dtype=torch.long)
        self.epoch = 0
        self.iteration = 0
        self.history = History()

    # -- networks ---------------------------------------------------------------------------
    def _draw_seeds(self, n: int) -> list[int]:
        """Seeds of ``n`` fresh networks; every process draws all of them, which keeps the random
        stream the same on all, and builds its own share."""
        return torch.randint(0, 2**31 - 1, (n,), generator=self.generator).tolist()

    def _nets_from(self, seeds: list[int]) -> Params:
        m = self.config.model
        return fresh_nets(self.model, m.init, m.init_param, seeds[self.world.block(len(seeds))], self.device)

    def _sample_loaded(self, k: int) -> Params:
        """``k`` distinct networks of the zoo (this process's ``k / world.size`` of its block)."""
        k //= self.world.size
        # the permutation is of block positions: the same draw on every process, each applying
        # it to its own block, so the shares stay disjoint and the random stream in step
        n = next(iter(self.loaded_train.values())).shape[0]
        if self.zoo_order.numel() < k:
            # queue a new permutation behind what is left of the current one, minus those left,
            # so that one draw never holds a network twice
            fresh = torch.randperm(n, generator=self.generator)
            self.zoo_order = torch.cat([self.zoo_order, fresh[~torch.isin(fresh, self.zoo_order)]])
        index, self.zoo_order = self.zoo_order[:k], self.zoo_order[k:]
        return {name: v[index.to(self.device)] for name, v in self.loaded_train.items()}

    def train_nets(self) -> Params:
        """Initial weights for this iteration: the fixed ones, fresh ones every time, or
        ``sample_n_nets`` distinct networks of the loaded zoo."""
        if self.fixed_nets is not None:
            return self.fixed_nets
        if self.loaded_train is not None:
            return self._sample_loaded(self.config.nets.nets_per_iteration)
        return self._nets_from(self._draw_seeds(self.config.nets.n_nets))

    def test_nets(self, all_processes: bool = False) -> Params:
        """The networks that score the set: this process's part of them (evaluation, gathered
        afterwards), or with ``all_processes`` every one of them (the reports rank 0 computes)."""
        nets, m = self.config.nets, self.config.model
        everyone = all_processes and self.world.distributed
        on_device = lambda params: {k: v.to(self.device) for k, v in params.items()}  # noqa: E731
        if nets.test_nets_type == "loaded":
            return on_device(self._zoos[1]) if everyone else self.loaded_test
        if nets.test_nets_type == "same_as_train" and self.fixed_nets is not None:
            return fresh_nets(self.model, m.init, m.init_param, self.fixed_seeds, self.device) \
                if everyone else self.fixed_nets
        if nets.test_nets_type == "same_as_train" and self.loaded_train is not None:
            return on_device(self._zoos[0]) if everyone else self.loaded_train
        part = range(nets.test_n_nets) if everyone else self.world.part(nets.test_n_nets)
        return fresh_nets(self.model, m.init, m.init_param,
                          eval_seeds(self.config.seed, nets.test_n_nets)[part.start:part.stop], self.device)

    # -- the synthetic set ------------------------------------------------------------------
    def _learned(self) -> list[torch.Tensor]:
        """The tensors the outer optimiser updates."""
        learned = [self.synthetic.images, self.log_lrs]
        return learned if self.label_targets is None else learned + [self.label_targets]

    def inner_labels(self) -> torch.Tensor:
        """The labels the inner GD trains on: fixed classes, or the learned target vectors."""
        return self.synthetic.labels if self.label_targets is None else self.label_targets

    def current(self) -> SyntheticSet:
        """A detached snapshot of the synthetic set with its step sizes."""
        s = self.synthetic
        return SyntheticSet(s.images.detach().clone(), self.inner_labels().detach().clone(),
                            self.log_lrs.detach().exp(), s.mean, s.std, s.num_classes, dict(s.meta))

    def step(self, real_x: torch.Tensor, real_y: torch.Tensor) -> torch.Tensor:
        """One outer iteration on a real batch; returns the mean loss (a tensor, not synced).

        The hypergradient is taken in two phases, which equal one ``.backward()`` of the mean
        unrolled loss: the gradient of the real-batch loss w.r.t. the trained weights (first
        order, the bulk of the compute, split over the cores), then that gradient pushed back
        through the unrolled steps to the images and step sizes.
        """
        s = self.synthetic
        self.optimizer.zero_grad(set_to_none=True)
        # the unrolled steps run on all intra-op threads, the real batch as one-thread chunks on
        # all cores: on 2 cores, one LeNet step at batch 64 / 256 / 1024 took 27.5 / 40.9 / 82.5 ms
        # so, against 32.4 / 43.4 / 88.3 ms with the unrolled steps on one thread as well
        with self._unroll_backend():
            trained = batched_unroll(self.model, self.train_nets(), s.images, self.inner_labels(),
                                     self.log_lrs.exp())  # (n_nets, ...) each, with the graph
        attack_class, target_class = self.config.relabel
        wanted = wanted_labels(real_y, attack_class, target_class)
        weights = loss_weights(real_y, attack_class, self.config.attack_weight)
        with self.pool.cores_to_chunks():
            loss, grads = real_batch_gradient(self.pool, trained, real_x, wanted,
                                              self.config.nets.nets_per_iteration, weights)
        with self._unroll_backend():
            # only to what is learned: fixed networks' initial weights need no gradient
            torch.autograd.backward(list(trained.values()), [grads[k] for k in trained],
                                    inputs=self._learned())
        # every process pushed back its networks' share of the mean; their sum is the step of all
        self.world.all_reduce_sum([p.grad for p in self._learned()] + [loss])
        self.optimizer.step()
        self.scheduler.step()
        self.iteration += 1
        if self.iteration % CHECK_EVERY == 0:
            self.check_replicas()
        return loss

    def check_replicas(self) -> None:
        """Fail loudly if the processes' synthetic sets have drifted apart."""
        self.world.check_identical(self._learned(), "the synthetic set")

    def _unroll_backend(self):
        if self.unroll_backend is None:
            self.unroll_backend = pinned_backend(self.config.conv_backend, self.device)
        if self.unroll_backend is None:
            # all processes run rank 0's choice: one set of numerics for the whole run
            self.unroll_backend = self.world.broadcast(fastest_backend(self._time_unroll, self.device))
        return BACKENDS[self.unroll_backend]()

    def _time_unroll(self) -> None:
        """One unroll and its backward with the run's shapes and threads, for choosing the conv
        backend; called from within the step."""
        s, m = self.synthetic, self.config.model
        # networks from fixed seeds: timing must not consume the run's random stream
        n = self.config.nets.nets_per_iteration // self.world.size
        nets = fresh_nets(self.model, m.init, m.init_param, list(range(n)), self.device)
        trained = batched_unroll(self.model, nets, s.images, self.inner_labels(), self.log_lrs.exp())
        torch.autograd.grad(list(trained.values()), self._learned(),
                            [torch.ones_like(v) for v in trained.values()])

    def evaluate(self) -> EvalResult:
        if self.test is None:
            raise RuntimeError("this run has no test split to evaluate on")
        mine = evaluate_synthetic(self.model, self.current(), self.test_nets(), self.test)
        return EvalResult(tuple(self.world.gather(list(mine.accuracies))))

    # -- the loop ---------------------------------------------------------------------------
    def run(self, callbacks: list[Callback] = ()) -> SyntheticSet:
        """Optimise until ``config.outer.epochs``; resumes from wherever ``self.epoch`` stands."""
        outer = self.config.outer
        for cb in callbacks:
            cb.on_start(self)
        while self.epoch < outer.epochs:
            t0 = time.perf_counter()
            if self.epoch % self.config.eval_interval == 0 and self.test is not None:
                self._record_evaluation(callbacks)
            total = torch.zeros((), device=self.device)
            count = 0
            for real_x, real_y in shuffled_batches(self.train, outer.batch_size, self.generator):
                loss = self.step(real_x, real_y)
                total += loss
                count += 1
                for cb in callbacks:
                    cb.on_iteration(self, loss)
            self.epoch += 1
            mean_loss = float(total / count)
            if mean_loss != mean_loss:
                raise FloatingPointError(f"outer loss became NaN in epoch {self.epoch}; "
                                         f"try a smaller --lr or --distill_lr")
            self.history.losses.append({"epoch": self.epoch, "loss": mean_loss})
            self.history.seconds += time.perf_counter() - t0
            for cb in callbacks:
                cb.on_epoch_end(self)
        if self.test is not None:
            t0 = time.perf_counter()
            self._record_evaluation(callbacks)
            self.history.seconds += time.perf_counter() - t0
        for cb in callbacks:
            cb.on_end(self)
        return self.current()

    def _record_evaluation(self, callbacks) -> EvalResult:
        result = self.evaluate()
        self.history.evaluations.append({"epoch": self.epoch, "iteration": self.iteration,
                                         **{k: v for k, v in result.to_dict().items()}})
        for cb in callbacks:
            cb.on_evaluation(self, result)
        return result

    @property
    def iterations_per_epoch(self) -> int:
        return batches_per_epoch(len(self.train), self.config.outer.batch_size)

    @property
    def final_result(self) -> dict | None:
        return self.history.evaluations[-1] if self.history.evaluations else None

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "images": self.synthetic.images.detach().cpu(),
            "log_lrs": self.log_lrs.detach().cpu(),
            "label_targets": None if self.label_targets is None else self.label_targets.detach().cpu(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "fixed_seeds": self.fixed_seeds,  # the fixed networks, rebuilt from these on resume
            "world_size": self.world.size,
            "zoo_order": self.zoo_order.clone(),
            "unroll_backend": self.unroll_backend,
            "epoch": self.epoch,
            "iteration": self.iteration,
            "history": {"evaluations": self.history.evaluations, "losses": self.history.losses,
                        "seconds": self.history.seconds},
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.synthetic.images.copy_(state["images"])
            self.log_lrs.copy_(state["log_lrs"])
            if self.label_targets is not None:
                self.label_targets.copy_(state["label_targets"])
        optimizer, scheduler = state["optimizer"], state["scheduler"]
        if len(optimizer["param_groups"]) == 1:
            optimizer, scheduler = _split_step_size_group(optimizer, scheduler)
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(scheduler)
        self.generator.set_state(state["generator"])
        saved_size = state.get("world_size", 1)
        if saved_size != self.world.size:
            raise ArtifactError(f"checkpoint was made by {saved_size} process(es), this run has "
                                f"{self.world.size}; resume with the same number")
        if state.get("fixed_seeds") is not None:
            self.fixed_seeds = state["fixed_seeds"]
            self.fixed_nets = self._nets_from(self.fixed_seeds)
        elif state.get("fixed_nets") is not None:  # checkpoints before fixed_seeds
            self.fixed_nets = {k: v.to(self.device) for k, v in state["fixed_nets"].items()}
        self.zoo_order = state.get("zoo_order", torch.empty(0, dtype=torch.long))
        self.unroll_backend = state.get("unroll_backend")  # a resumed run keeps its numerics
        self.epoch, self.iteration = state["epoch"], state["iteration"]
        self.history = History(**state["history"])
        self.check_replicas()


def _split_step_size_group(optimizer: dict, scheduler: dict) -> tuple[dict, dict]:
    """Adam and scheduler states of a checkpoint from before the step sizes had their own rate,
    in today's layout. Then one group held [images, log step sizes, (labels)], all at ``--lr``;
    now the images and labels form the first group and the step sizes the second, at the same
    rate (``default_step_size_lr`` of such a run equals its ``--lr``, which the resume check asks)."""
    group = optimizer["param_groups"][0]
    images, step_sizes, *labels = group["params"]
    groups = [{**group, "params": [images, *labels]}, {**group, "params": [step_sizes]}]
    twice = {k: scheduler[k] * 2 for k in ("base_lrs", "_last_lr") if k in scheduler}
    return {**optimizer, "param_groups": groups}, {**scheduler, **twice}


def check_divides(config: RunConfig, world: World) -> None:
    """The networks of every outer step are split equally over the processes."""
    nets = config.nets
    world.check_divides("--n_nets", nets.n_nets)
    if nets.train_nets_type == "loaded" and nets.sample_n_nets is not None:
        world.check_divides("--sample_n_nets", nets.sample_n_nets)
