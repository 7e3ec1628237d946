"""Gradient matching: Zhao, Mopuri and Bilen, "Dataset Condensation with Gradient Matching" (ICLR
2021); with ``--augment dsa``, Zhao and Bilen's DSA (ICML 2021), the same transform applied to the
real and the synthetic images of a class.

The synthetic set is one batch of ``ipc`` images per class (labels class-major, no step sizes).
For a network w the loss is, summed over classes c,
    D(grad_w CE(f(A(real_c); w), c), grad_w CE(f(A(syn_c); w), c)),
the real gradient a constant, the synthetic one differentiated w.r.t. the images (second order),
with DC's layer-wise distance: for each weight of two or more dimensions, viewed as (output
nodes, rest), the sum over output nodes of 1 - cosine similarity of the two gradients' rows
(epsilon 1e-6 in the denominator); one-dimensional weights (biases, norm scales) count 0, as in
the paper's code. A is DSA (one draw per class, shared by both sides) or the identity.

DC's loops per network: ``outer_loop`` image updates, and between two of them ``inner_steps`` SGD
steps (``inner_lr``, momentum 0.5) of the network on the synthetic set as it stands (detached,
augmented with DSA). On the outer loop's interface, one ``loss`` call is one image update: the
method keeps its current networks and, at calls where ``count % outer_loop == 0``, adopts the
fresh ones the loop passes in; at the other calls it first trains the kept ones on the current
set (the set after the previous update, as in DC), then computes the loss, which is therefore a
function of the current set and this call's real batch alone. The kept networks, their momentum,
the call count and the method's random stream (inner shuffles, DSA draws) are its state.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from ..augment import augmenter
from ..config import MethodConfig, RunConfig, SyntheticConfig
from ..inner import training_loss
from ..models import Params
from ..runtime import Runtime
from ..synthetic import LearnableSet
from ..transfer import to_device
from . import register
from .base import Method, MethodLoss, Setup, one_batch_start

DEFAULT_IPC = 10
INNER_MOMENTUM = 0.5  # DC's network optimiser
INNER_BATCH = 256  # DC's batch_train: a larger set is trained on random batches of this many
EPS = 1e-6  # DC's distance_wb


def layer_distance(real: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
    """DC's distance of one weight's two gradients: sum over output nodes (rows of the weight
    viewed as (out, rest)) of 1 - cosine similarity; 0 for one-dimensional weights."""
    if real.dim() <= 1:
        return syn.new_zeros(())
    real, syn = real.flatten(1), syn.flatten(1)
    cos = (real * syn).sum(-1) / (real.norm(dim=-1) * syn.norm(dim=-1) + EPS)
    return (1 - cos).sum()


def match_distance(real: Sequence[torch.Tensor], syn: Sequence[torch.Tensor]) -> torch.Tensor:
    """D of two lists of per-weight gradients: the sum of ``layer_distance`` over weights."""
    return sum((layer_distance(r, s) for r, s in zip(real, syn, strict=True)), syn[0].new_zeros(()))


@register("gm")
class Gm(Method):
    protocol = "from_scratch"

    def __init__(self, model: nn.Module, synthetic: SyntheticConfig, methods: MethodConfig, seed: int = 0,
                 compiled: bool = False):
        self.model, self.synthetic, self.config = model, synthetic, methods
        self.ipc = synthetic.ipc or DEFAULT_IPC
        self._augment = augmenter(methods.augment)  # the matching: one draw for real and synthetic
        # the network's own training on the set: a draw per image, as when any network trains
        self._augment_training = augmenter(methods.augment, siamese=False)
        self._training_loss = training_loss(model, compiled)  # --compile: through torch.compile
        self.generator = torch.Generator().manual_seed(seed)  # reseeded from the run's stream by initial
        self.count = 0  # loss calls so far
        self.kept: Params | None = None  # the current networks (k, ...)
        self.momentum: Params | None = None  # their SGD momentum buffers; None before the first step
        self.device = torch.device("cpu")  # where the kept networks live (the run's device)

    @classmethod
    def from_config(cls, config: RunConfig, model: nn.Module, runtime: Runtime) -> "Gm":
        return cls(model, config.synthetic, config.methods, config.seed, config.compile)

    def initial(self, setup: Setup) -> LearnableSet:
        images, labels = one_batch_start(setup, self.ipc, self.synthetic.image_init, self.synthetic.factor,
                                         self.synthetic.init_from)
        # the method's own stream (inner batches, DSA draws), from the run's
        self.generator.manual_seed(int(torch.randint(2**62, (1,), generator=setup.generator)))
        self.device = torch.device(setup.device)
        return LearnableSet(images, labels, None, setup.num_classes, setup.mean, setup.std,
                            learn_labels=self.synthetic.learn_labels, factor=self.synthetic.factor).to(setup.device)

    # -- the interface ---------------------------------------------------------------------------

    def loss(self, learned: LearnableSet, nets: Params, real_x: torch.Tensor, real_y: torch.Tensor,
             total_nets: int) -> MethodLoss:
        self.advance(learned, nets)
        value = self.matching(learned, real_x, real_y) / total_nets
        return MethodLoss(value, value.detach())

    def advance(self, learned: LearnableSet, nets: Params) -> None:
        """The networks of this call: the fresh ``nets`` every ``outer_loop`` calls, else the kept
        ones trained ``inner_steps`` more steps on the set as it stands now."""
        if self.kept is None or self.count % self.config.outer_loop == 0:
            self.kept = {k: v.detach().clone() for k, v in nets.items()}
            self.momentum = None
        else:
            self.train_kept(learned)
        self.count += 1

    def train_kept(self, learned: LearnableSet) -> None:
        """``inner_steps`` steps of ``torch.optim.SGD`` with momentum of every kept network on the
        detached set, its momentum buffers carried over from the previous calls' steps."""
        x = learned.decoded().detach()[0]
        y = learned.targets().detach()[0]
        n = x.shape[0]
        leaves = {k: v.detach().clone().requires_grad_() for k, v in self.kept.items()}
        # SGD is elementwise, so one optimiser over the stacked weights is one SGD per network;
        # on a GPU its default multi-tensor update is a few launches for all the weights
        optimizer = torch.optim.SGD(list(leaves.values()), lr=self.config.inner_lr, momentum=INNER_MOMENTUM)
        if self.momentum is not None:  # one SGD run across calls, as DC's network optimiser
            for k, leaf in leaves.items():
                optimizer.state[leaf]["momentum_buffer"] = self.momentum[k].clone()
        for _ in range(self.config.inner_steps):
            if n > INNER_BATCH:
                idx = to_device(torch.randperm(n, generator=self.generator)[:INNER_BATCH], x.device)
                xb, yb = x[idx], y[idx]
            else:
                xb, yb = x, y
            if self._augment_training is not None:
                xb = self._augment_training(xb, self.generator)
            optimizer.zero_grad(set_to_none=True)
            with torch.enable_grad():
                self._training_loss(leaves, xb, yb).backward()
            optimizer.step()
        self.kept = {k: leaf.detach() for k, leaf in leaves.items()}
        self.momentum = {k: optimizer.state[leaf]["momentum_buffer"] for k, leaf in leaves.items()}

    def matching(self, learned: LearnableSet, real_x: torch.Tensor, real_y: torch.Tensor) -> torch.Tensor:
        """Sum over the kept networks and the classes of the gradient-matching distance; its graph
        reaches the synthetic images (and learned labels) through the synthetic gradients."""
        images, targets, labels = learned.decoded()[0], learned.targets()[0], learned.decoded_labels()[0]
        n_nets = next(iter(self.kept.values())).shape[0]
        # each class's rows found on the host from one copy of the labels: a mask of device
        # tensors would make the host wait for the device at every class
        real_labels, syn_labels = torch.cat([real_y, labels]).cpu().split([real_y.shape[0], labels.shape[0]])
        per_class = []
        for c in range(learned.num_classes):
            real_rows = (real_labels == c).nonzero().squeeze(1)[:self.config.embed_batch]
            syn_rows = (syn_labels == c).nonzero().squeeze(1)
            if real_rows.numel() == 0 or syn_rows.numel() == 0:
                per_class.append(None)
                continue
            seed = int(torch.randint(2**62, (1,), generator=self.generator))
            real_rows, syn_rows = to_device(real_rows, real_x.device), to_device(syn_rows, images.device)
            per_class.append((real_x[real_rows], images[syn_rows], targets[syn_rows], seed))
        total = images.new_zeros(())
        for i in range(n_nets):
            leaves = {k: v[i].detach().requires_grad_() for k, v in self.kept.items()}
            names = list(leaves)
            for c, item in enumerate(per_class):
                if item is None:
                    continue
                real_c, syn_c, syn_t, seed = item
                if self._augment is not None:  # the same draw for both sides: Siamese
                    real_c = self._augment(real_c, torch.Generator().manual_seed(seed))
                    syn_c = self._augment(syn_c, torch.Generator().manual_seed(seed))
                with torch.enable_grad():
                    real_y_c = torch.full((real_c.shape[0],), c, dtype=torch.long, device=real_c.device)
                    real_loss = F.cross_entropy(functional_call(self.model, leaves, (real_c,)), real_y_c)
                    g_real = [g.detach() for g in torch.autograd.grad(real_loss, [leaves[k] for k in names])]
                    syn_loss = F.cross_entropy(functional_call(self.model, leaves, (syn_c,)), syn_t)
                    g_syn = torch.autograd.grad(syn_loss, [leaves[k] for k in names], create_graph=True)
                    total = total + match_distance(g_real, g_syn)
        return total

    # -- resume ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        cpu = lambda p: None if p is None else {k: v.detach().cpu().clone() for k, v in p.items()}  # noqa: E731
        return {"count": self.count, "kept": cpu(self.kept), "momentum": cpu(self.momentum),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        to = lambda p: None if p is None else {k: v.to(self.device, copy=True) for k, v in p.items()}  # noqa: E731
        self.count, self.kept, self.momentum = state["count"], to(state["kept"]), to(state["momentum"])
        self.generator.set_state(state["generator"])
