"""Wang, Zhu, Torralba and Efros 2018: images and step sizes through unrolled gradient descent.

The synthetic set is ``steps`` batches of ``per_class`` images per class, and ``steps * epochs``
learned step sizes. For initial weights w_0 of each sampled network,
    w_{t+1} = w_t - lr_t grad_w CE(f(x_{t mod S}; w_t), y_{t mod S})      (``inner.unroll``)
and the outer loss is the trained networks' mean weighted cross-entropy on a real batch,
    L = sum_i a(y_i) CE(f(x_i; w_T), y'_i) / sum_i a(y_i),
where the three settings of the paper differ only in y', a, where the networks come from and
their report:
- basic: y' = y, a = 1;
- adapt: as basic, against networks trained on another domain (the job loads that zoo);
- attack (sec. 3.4): y' = target_class where y = attack_class, else y, so that after the steps
  ``attack_class`` is taken for ``target_class`` while the other classes stay intact; a =
  ``attack_weight`` on ``attack_class`` images (1, the paper's objective, by default).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..adapt import adaptation_report
from ..attack import attack_report, wanted_labels
from ..config import RunConfig, SyntheticConfig
from ..data import Dataset, Split, class_balanced_sample
from ..errors import ConfigError
from ..inner import batched_unroll, summed_loss_grad
from ..models import Params
from ..nets import fresh_nets, selection_seeds
from ..parallel import ChunkPool
from ..runtime import Runtime
from ..synthetic import LearnableSet, SyntheticSet, class_major_labels, noise_images
from . import register
from .base import Method, MethodLoss, Setup, real_start


@dataclass(frozen=True)
class Relabel:
    """y' and a of the outer loss (see the module docstring); the identity for basic and adapt."""

    attack_class: int | None = None
    target_class: int | None = None
    attack_weight: float = 1.0

    def labels(self, y: torch.Tensor) -> torch.Tensor:
        """y' for labels y (B,)."""
        return y if self.attack_class is None else wanted_labels(y, self.attack_class, self.target_class)

    def weights(self, y: torch.Tensor) -> torch.Tensor | None:
        """a(y) (B,), or None when every weight is 1."""
        if self.attack_class is None or self.attack_weight == 1.0:
            return None
        return torch.where(y == self.attack_class, self.attack_weight, 1.0)


def real_batch_gradient(pool: ChunkPool, trained: Params, real_x: torch.Tensor, real_y: torch.Tensor,
                        total_nets: int, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, Params]:
    """This process's share of the outer loss (mean over ``total_nets`` networks and the weighted
    batch) and its gradient w.r.t. the ``trained`` weights (k, ...), first order, chunk by chunk on
    all cores. No graph is kept: each chunk differentiates its own detached copy of the weights."""
    batch = (real_x, real_y) if weights is None else (real_x, real_y, weights)
    parts = pool.map(lambda model, *chunk: summed_loss_grad(model, trained, *chunk), *batch)
    total = real_x.shape[0] if weights is None else weights.sum()
    scale = 1.0 / (total * total_nets)
    grads = {k: sum(g[k] for g, _ in parts) * scale for k in trained}
    return sum(v for _, v in parts) * scale, grads


@register("wang2018")
class Wang2018(Method):
    """``setting``: basic, adapt or attack (the ``--mode`` without its ``distill_`` prefix)."""

    protocol = "unrolled"
    learns_step_sizes = True

    def __init__(self, model: nn.Module, synthetic: SyntheticConfig, relabel: Relabel, setting: str,
                 runtime: Runtime, init: tuple[str, float] = ("xavier", 1.0)):
        self.model, self.config, self.relabel, self.setting = model, synthetic, relabel, setting
        self.runtime, self.init = runtime, init
        self.pool = runtime.chunk_pool(model)

    @classmethod
    def from_config(cls, config: RunConfig, model: nn.Module, runtime: Runtime) -> "Wang2018":
        relabel = Relabel(config.attack_class, config.target_class, config.attack_weight) \
            if config.mode == "distill_attack" else Relabel()
        synthetic = config.synthetic
        if synthetic.ipc is not None:  # --ipc N: N / images_per_class_per_step steps
            per_step = synthetic.images_per_class_per_step
            if synthetic.ipc % per_step:
                raise ConfigError(f"--ipc {synthetic.ipc} is not a multiple of "
                                  f"--distilled_images_per_class_per_step {per_step}")
            synthetic = dataclasses.replace(synthetic, steps=synthetic.ipc // per_step)
        return cls(model, synthetic, relabel, config.setting, runtime,
                   (config.model.init, config.model.init_param))

    def initial(self, setup: Setup) -> LearnableSet:
        c = self.config
        shape = tuple(setup.train.x.shape[1:])
        # an attack starts from its baseline: the images labelled target_class are real images of
        # attack_class, the others real images of their own class
        source = None if self.relabel.attack_class is None else {self.relabel.target_class: self.relabel.attack_class}
        if c.image_init == "real":  # each step its own draw
            images = torch.stack([class_balanced_sample(setup.train, c.images_per_class_per_step,
                                                        setup.num_classes, setup.generator, source)[0].cpu()
                                  for _ in range(c.steps)])
        elif c.image_init == "herding":  # distinct picks, dealt out over the steps in the order herding made them
            per_class = c.images_per_class_per_step
            picks = real_start(setup, c.steps * per_class, c.image_init, source)  # (K * steps * per_class, ...)
            images = (picks.view(setup.num_classes, c.steps, per_class, *shape).transpose(0, 1)
                      .reshape(c.steps, setup.num_classes * per_class, *shape))
        else:
            images = noise_images(c.steps, c.images_per_class_per_step * setup.num_classes, shape,
                                  setup.generator)
        labels = class_major_labels(c.steps, c.images_per_class_per_step, setup.num_classes)
        lrs = torch.full((c.steps * c.epochs,), float(c.init_lr))
        return LearnableSet(images, labels, lrs, setup.num_classes, setup.mean, setup.std,
                            learn_labels=c.learn_labels, step_size_param=c.step_size_param).to(setup.device)

    def loss(self, learned: LearnableSet, nets: Params, real_x: torch.Tensor, real_y: torch.Tensor,
             total_nets: int) -> MethodLoss:
        # two phases, equal to one .backward() of the mean unrolled loss: the real-batch gradient
        # w.r.t. the trained weights (first order, the bulk of the work, over the cores), then a
        # surrogate <trained, that gradient> whose backward pushes it through the unrolled steps
        with self.backward_context(learned):
            trained = batched_unroll(self.model, nets, learned.images, learned.targets(), learned.lrs())
        with self.pool.cores_to_chunks():
            value, grads = real_batch_gradient(self.pool, trained, real_x, self.relabel.labels(real_y),
                                               total_nets, self.relabel.weights(real_y))
        surrogate = sum((trained[k] * grads[k]).sum() for k in trained)
        return MethodLoss(surrogate, value)

    def backward_context(self, learned: LearnableSet):
        """The CPU convolution backend of the unrolled steps, forward and backward."""
        return self.runtime.unroll_backend(lambda: self._time_unroll(learned))

    def _time_unroll(self, learned: LearnableSet) -> None:
        """One unroll and its backward with the run's shapes, for ``--conv_backend auto``; networks
        from fixed seeds, so timing does not consume the run's random stream."""
        nets = fresh_nets(self.model, *self.init, [0], learned.images.device)
        trained = batched_unroll(self.model, nets, learned.images, learned.targets(), learned.lrs())
        torch.autograd.grad(list(trained.values()), learned.tensors(),
                            [torch.ones_like(v) for v in trained.values()])

    def validation_split(self, val: Split) -> Split:
        """An attack is validated by its own objective, as its baseline's step size is chosen:
        accuracy against y' (attack_class images count as right when taken for target_class)."""
        return Split(val.x, self.relabel.labels(val.y))

    def report(self, synthetic: SyntheticSet, setup: Setup, test: Split, train_nets: Params | None,
               test_nets: Params, progress: Callable[[str], None]) -> dict:
        generator = torch.Generator().manual_seed(setup.seed)
        if self.setting == "adapt":
            target = Dataset("target", setup.train, test, setup.num_classes, setup.mean, setup.std, val=setup.val)
            return {"adaptation": adaptation_report(self.model, synthetic, train_nets, test_nets, target,
                                                    generator, progress=progress)}
        if self.setting == "attack":
            if train_nets is None:  # fresh networks: the real-image baseline's step size is chosen on
                # networks of its own, never the scoring ones
                train_nets = fresh_nets(self.model, *self.init, selection_seeds(setup.seed, 10), setup.device)
            return {"attack": attack_report(self.model, synthetic, train_nets, test_nets, setup.train,
                                            setup.val, test, self.relabel.attack_class,
                                            self.relabel.target_class, generator, progress=progress)}
        return {}
