"""Zhao and Bilen 2023, "Dataset Condensation with Distribution Matching" (WACV): match the mean
embedding of each class under randomly initialised networks.

The synthetic set is one batch of ``ipc`` images per class (class-major, no step sizes), started
from random real training images of each class (``--image_init real``, the paper's start) or
noise. Each iteration the outer loop hands k fresh networks and a real batch; with e_w(x) the
network's embedding (its output before the last linear layer, ``Embedder``), the loss is
    L = (1 / total_nets) sum_w sum_{c in batch} || mean_i e_w(A_c(x_c,i)) - mean_j e_w(A_c(s_c,j)) ||^2
over the classes c present in the real batch (at most ``embed_batch`` real images of each), where
x_c are its real images of class c, s_c the synthetic ones and A_c one random DSA transform
applied alike to both (``--augment dsa``; the identity otherwise). The networks' weights are
constants. Sets are scored from scratch.

With learned soft labels (``--label_mode soft``) each synthetic image belongs to every class in
proportion to its label, softmax(logits) = w_i (K,), and a class's synthetic mean is the weighted
one, mean_c = sum_i w_ic e_w(A_c(s_i)) / sum_i w_ic over all the synthetic images: the labels get
the gradient of the same loss (an image moves its weight towards the classes whose mean it helps
match) and are the targets a network later trains on, so both read w_ic as "how much of class c
this image is". With one-hot labels this is the plain per-class mean above.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.func import functional_call

from ..augment import dsa_families
from ..config import RunConfig
from ..dsa import DsaParams, apply_by_group, sample_params
from ..errors import ConfigError
from ..models import Params
from ..runtime import Runtime
from ..synthetic import LearnableSet
from ..transfer import to_device
from . import register
from .base import Method, MethodLoss, Setup, one_batch_start

DEFAULT_IPC = 10


class Embedder:
    """e_w(x): a model's output before its last linear layer, for weights ``w`` given as a dict.

    Every registered arch ends its forward with one ``nn.Linear`` (ConvNet ``classifier``, LeNet
    ``fc3``, MLP ``net.5``, AlexCifarNet ``classifier.4``, AlexNet ``classifier.6``), the last
    ``nn.Linear`` it registers; a copy of the template with that layer replaced by the identity
    runs everything before it: ``features(x).flatten(1)`` for ConvNet, ``relu(fc2(...))`` for LeNet.
    ``compiled`` (``--compile``): through ``torch.compile``; a step's class groups change size from
    batch to batch, and a second size compiles one graph for any.
    """

    def __init__(self, model: nn.Module, compiled: bool = False):
        linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError(f"dm needs a network that ends in a linear layer; {type(model).__name__} has none")
        self.head = linears[-1]
        self.headless = copy.deepcopy(model)
        parent, _, child = self.head.rpartition(".")
        setattr(self.headless.get_submodule(parent) if parent else self.headless, child, nn.Identity())
        self.names = {name for name, _ in self.headless.named_parameters()}
        self._embed = torch.compile(self._plain) if compiled else self._plain

    def _plain(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.headless, {k: v for k, v in params.items() if k in self.names}, (x,)).flatten(1)

    def __call__(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """(B, D) embeddings of x (B, C, H, W) under one network's weights ``params``."""
        return self._embed(params, x)


def class_means(e: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean rows of ``e`` (B, D) with labels ``y`` (B,): (num_classes, D) and the
    count of each class (num_classes,); classes with no row get a zero mean."""
    counts = nn.functional.one_hot(y, num_classes).sum(0)  # bincount would wait for the device's max of y
    sums = torch.zeros(num_classes, e.shape[1], dtype=e.dtype, device=e.device).index_add_(0, y, e)
    return sums / counts.clamp(min=1).unsqueeze(1).to(e.dtype), counts


def first_per_class(y: torch.Tensor, num_classes: int, cap: int) -> torch.Tensor:
    """Bool mask (B,) keeping the first ``cap`` entries of each class of ``y`` (B,)."""
    one_hot = nn.functional.one_hot(y, num_classes)
    rank = one_hot.cumsum(0).gather(1, y.unsqueeze(1)).squeeze(1) - 1  # position within its class
    return rank < cap


@register("dm")
class Dm(Method):
    """``ipc`` images per class matched in embedding space; ``augment``: none, dsa or dsa-noflip;
    ``learn_labels``: soft labels learned through the weighted class means (module docstring);
    ``embed_batch``: at most this many real images per class of each batch are embedded;
    ``seed``: the stream of DSA transforms (checkpointed with ``state_dict``); ``factor``: stored
    images in multi-formation (``factorize``), matched through their decoded training images;
    ``compiled``: the embeddings through ``torch.compile`` (``Embedder``)."""

    protocol = "from_scratch"

    def __init__(self, model: nn.Module, ipc: int = DEFAULT_IPC, image_init: str = "real", augment: str = "none",
                 embed_batch: int = 256, seed: int = 0, learn_labels: bool = False, factor: int = 1,
                 init_from: str | None = None, compiled: bool = False):
        self.model, self.ipc, self.image_init, self.learn_labels = model, ipc, image_init, learn_labels
        self.factor, self.init_from = factor, init_from
        self.embed_batch = embed_batch
        self.families = dsa_families(augment)  # None: no augmentation
        self.embed = Embedder(model, compiled)
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_config(cls, config: RunConfig, model: nn.Module, runtime: Runtime) -> "Dm":
        # each process draws other DSA transforms for its networks
        seed = config.seed * 1_000 + runtime.world.rank
        return cls(model, config.synthetic.ipc or DEFAULT_IPC, config.synthetic.image_init, config.methods.augment,
                   config.methods.embed_batch, seed, config.synthetic.learn_labels, config.synthetic.factor,
                   config.synthetic.init_from, config.compile)

    def initial(self, setup: Setup) -> LearnableSet:
        images, labels = one_batch_start(setup, self.ipc, self.image_init, self.factor, self.init_from)
        return LearnableSet(images, labels, None, setup.num_classes, setup.mean, setup.std,
                            learn_labels=self.learn_labels, factor=self.factor).to(setup.device)

    def loss(self, learned: LearnableSet, nets: Params, real_x: torch.Tensor, real_y: torch.Tensor,
             total_nets: int) -> MethodLoss:
        syn = learned.decoded()[0]  # (ipc * factor ** 2 * K, C, H, W), class-major
        k = learned.num_classes
        # the batch's classes, and the rows kept of each, decided on the host from one copy of the
        # labels: masks and reductions of device tensors would each make the host wait for the device
        labels = real_y.cpu()
        keep = first_per_class(labels, k, self.embed_batch)
        if not bool(keep.all()):
            rows = to_device(keep.nonzero().squeeze(1), real_x.device)
            real_x, real_y, labels = real_x[rows], real_y[rows], labels[keep]
        present = torch.unique(labels)  # (G,) the classes in the batch, ascending
        # (N, K) class weights of the synthetic images with soft labels; None: class-major one-hot
        weights = None if learned.label_logits is None else learned.targets()[0]
        n = next(iter(nets.values())).shape[0]
        total = syn.new_zeros(())
        for i in range(n):
            params = {name: v[i].detach() for name, v in nets.items()}
            total = total + (self._matched(params, syn, weights, real_x, real_y, present, k) if self.families is None
                             else self._matched_augmented(params, syn, weights, real_x, real_y, labels, present, k))
        objective = total / total_nets
        return MethodLoss(objective, objective.detach())

    def _matched(self, params: Params, syn: torch.Tensor, weights: torch.Tensor | None, real_x: torch.Tensor,
                 real_y: torch.Tensor, present: torch.Tensor, k: int) -> torch.Tensor:
        """sum over the batch's classes (``present``, on the host) of ||mean real embedding - mean
        synthetic embedding||^2, all classes in one pass of each batch through the network;
        ``weights`` (N, K), if given, weigh the synthetic images into each class's mean."""
        with torch.no_grad():
            real_mean = class_means(self.embed(params, real_x), real_y, k)[0]
        e_syn = self.embed(params, syn)
        syn_mean = (e_syn.view(k, -1, e_syn.shape[1]).mean(1) if weights is None
                    else weights.t() @ e_syn / weights.sum(0).unsqueeze(1))  # (K, D)
        present = to_device(present, syn.device)
        return ((real_mean[present] - syn_mean[present]) ** 2).sum()

    def _matched_augmented(self, params: Params, syn: torch.Tensor, weights: torch.Tensor | None,
                           real_x: torch.Tensor, real_y: torch.Tensor, labels: torch.Tensor, present: torch.Tensor,
                           k: int) -> torch.Tensor:
        """As ``_matched``, each class's real and synthetic images through the same DSA transform,
        one draw per class present, in class order (``_draw``). The classes' transforms run together
        (``apply_by_group``) and each side is embedded in one pass: the same loss as class by
        class, in a handful of calls. With soft labels every synthetic image enters every class's
        mean, so all of them pass each class's transform. ``labels``: real_y on the host; ``present``:
        the classes in it, ascending."""
        classes = present.tolist()
        draws = [self._draw() for _ in classes]
        group_of_class = torch.full((k,), -1, dtype=torch.long)
        group_of_class[classes] = torch.arange(len(classes))
        present = to_device(present, real_y.device)
        with torch.no_grad():
            real = apply_by_group(real_x, group_of_class[labels], draws)
            real_mean = class_means(self.embed(params, real), real_y, k)[0][present]  # (G, D)
        n, g = syn.shape[0], len(classes)
        if weights is not None:  # (G * N) images: every synthetic image under each present class's transform
            mine = apply_by_group(syn.repeat(g, 1, 1, 1), torch.arange(g).repeat_interleave(n), draws)
            e_syn = self.embed(params, mine).view(g, n, -1)
            w = weights[:, present].t()  # (G, N)
            syn_mean = (w.unsqueeze(2) * e_syn).sum(1) / w.sum(1, keepdim=True)
        else:  # class-major: the present classes' blocks of ipc images
            per_class = n // k
            blocks = syn.view(k, per_class, *syn.shape[1:])[present].flatten(0, 1)
            mine = apply_by_group(blocks, torch.arange(g).repeat_interleave(per_class), draws)
            syn_mean = self.embed(params, mine).view(g, per_class, -1).mean(1)
        return ((real_mean - syn_mean) ** 2).sum()

    def _draw(self) -> DsaParams:
        """One DSA transform: a seed from the method's stream, then ``sample_params`` of a generator
        so seeded."""
        seed = int(torch.randint(0, 2**31 - 1, (), generator=self.generator))
        return sample_params(torch.Generator().manual_seed(seed), self.families)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
