"""The math of the inner loop: plain gradient descent on a synthetic set, written with torch.func.

Pure functions, no I/O. Weights are dicts of tensors (see ``models``). Every function here is
differentiable end to end: when the synthetic images or step sizes require grad, the returned
weights carry the whole unrolled graph, and ``.backward()`` on a loss of them yields the
hypergradients (Wang et al. 2018, eq. 2-4). ``vmap`` over the leading dimension of stacked weights
runs many networks at once.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from .models import Params, in_fast_layout

StepGrad = Callable[[Params, torch.Tensor, torch.Tensor], Params]  # (weights, x, y) -> gradient


def task_loss(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the network ``params`` on images x (B, C, H, W) with labels y: (B,)
    classes, or (B, classes) target vectors y_c in -sum_c y_c log p_c (learned labels)."""
    return F.cross_entropy(functional_call(model, params, (x,)), y)


def unroll(model: nn.Module, params: Params, images: torch.Tensor, labels: torch.Tensor,
           lrs: torch.Tensor, step_grad: StepGrad | None = None) -> Params:
    """Weights after ``len(lrs)`` GD steps on the synthetic set.

    Step t uses batch ``t % S``: images (S, N, C, H, W), labels (S, N) or (S, N, classes),
    step sizes lrs (T,), so T = S * epochs cycles through the batches ``epochs`` times, as in
    the paper.
        w_{t+1} = w_t - lrs[t] * grad_w CE(f(images[t % S]; w_t), labels[t % S])
    ``step_grad(params, x, y)`` gives that gradient: by default ``torch.func.grad``, which
    composes with ``vmap``; ``reverse_mode_grad`` for one network outside any transform.
    """
    step_grad = step_grad or grad(partial(task_loss, model))
    n_batches = images.shape[0]
    for t in range(lrs.shape[0]):
        g = step_grad(params, images[t % n_batches], labels[t % n_batches])
        params = {k: w - lrs[t] * g[k] for k, w in params.items()}
    return params


def reverse_mode_grad(model: nn.Module) -> StepGrad:
    """A ``step_grad`` for ``unroll`` by plain reverse mode (``torch.autograd.grad`` with
    ``create_graph``), whose result can be differentiated again like ``torch.func.grad``'s.

    For one network only: it does not compose with ``vmap``. It exists for speed: the transform's
    wrappers add a cost to every operation of the unrolled steps and of their backward, and those
    operations, on a few synthetic images, are small. Weights that do not require grad become
    leaves that do, so the loss can be differentiated w.r.t. them; a caller that pushes a gradient
    back through the steps names its ``inputs``, so nothing flows into those leaves.
    """
    def step_grad(params: Params, x: torch.Tensor, y: torch.Tensor) -> Params:
        with torch.enable_grad():
            leaves = {k: w if w.requires_grad else w.detach().requires_grad_() for k, w in params.items()}
            loss = task_loss(model, leaves, x, y)
            return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()), create_graph=True)))
    return step_grad


def unrolled_loss(model: nn.Module, params: Params, images: torch.Tensor, labels: torch.Tensor,
                  lrs: torch.Tensor, real_x: torch.Tensor, real_y: torch.Tensor) -> torch.Tensor:
    """Loss on a real batch of the network trained on the synthetic set from ``params``."""
    return task_loss(model, unroll(model, params, images, labels, lrs), real_x, real_y)


def batched_unrolled_loss(model: nn.Module, stacked: Params, images: torch.Tensor,
                          labels: torch.Tensor, lrs: torch.Tensor, real_x: torch.Tensor,
                          real_y: torch.Tensor) -> torch.Tensor:
    """``unrolled_loss`` of each of n_nets networks stacked along dim 0, shape (n_nets,)."""
    n_nets = next(iter(stacked.values())).shape[0]
    if n_nets == 1:  # vmap of one network only adds overhead
        one = {k: v[0] for k, v in stacked.items()}
        return unrolled_loss(model, one, images, labels, lrs, real_x, real_y).unsqueeze(0)
    fn = vmap(partial(unrolled_loss, model), in_dims=(0, None, None, None, None, None))
    return fn(stacked, images, labels, lrs, real_x, real_y)


def batched_unroll(model: nn.Module, stacked: Params, images: torch.Tensor, labels: torch.Tensor,
                   lrs: torch.Tensor) -> Params:
    """``unroll`` of each of n_nets networks stacked along dim 0; keeps the graph."""
    n_nets = next(iter(stacked.values())).shape[0]
    if n_nets == 1:  # vmap of one network only adds overhead, and so does torch.func.grad
        one = unroll(model, {k: v[0] for k, v in stacked.items()}, images, labels, lrs,
                     reverse_mode_grad(model))
        return {k: v.unsqueeze(0) for k, v in one.items()}
    return vmap(partial(unroll, model), in_dims=(0, None, None, None))(stacked, images, labels, lrs)


def summed_loss(model: nn.Module, stacked: Params, x: torch.Tensor, y: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy summed over the n_nets stacked networks and the B images x, a scalar; each
    image's term times ``weights`` (B,) when given."""
    n_nets = next(iter(stacked.values())).shape[0]
    if n_nets == 1:
        one = {k: v[0] for k, v in stacked.items()}
        logits = functional_call(model, one, (in_fast_layout(model, x),)).unsqueeze(0)
    else:
        logits = vmap(lambda p: functional_call(model, p, (x,)))(stacked)  # (n_nets, B, classes)
    # y: (B,) classes or (B, classes) target vectors (learned labels), the same for every network
    y = y.repeat(n_nets, *[1] * (y.dim() - 1))
    if weights is None:
        return F.cross_entropy(logits.flatten(0, 1), y, reduction="sum")
    per_image = F.cross_entropy(logits.flatten(0, 1), y, reduction="none")
    return (per_image * weights.to(per_image.dtype).repeat(n_nets)).sum()


def summed_loss_grad(model: nn.Module, stacked: Params, x: torch.Tensor, y: torch.Tensor,
                     weights: torch.Tensor | None = None) -> tuple[Params, torch.Tensor]:
    """(gradient w.r.t. ``stacked``, value) of ``summed_loss``: first order, no graph kept.

    Summed rather than averaged so that chunks of one batch add up exactly to the whole. Plain
    reverse mode rather than ``torch.func.grad_and_value``: nothing is differentiated twice here,
    and skipping the transform's wrappers saves their per-operation cost on every chunk.
    """
    with torch.enable_grad():
        leaves = {k: v.detach().requires_grad_() for k, v in stacked.items()}
        value = summed_loss(model, leaves, x, y, weights)
        g = torch.autograd.grad(value, list(leaves.values()))
    return dict(zip(leaves, g)), value.detach()


def mean_loss_per_net_summed(model: nn.Module, stacked: Params, x: torch.Tensor, y: torch.Tensor
                             ) -> torch.Tensor:
    """Sum over the stacked networks of each one's mean cross-entropy on the shared batch x.

    Its gradient w.r.t. network i's weights is exactly that network's own mean-loss gradient, so
    one elementwise optimiser (SGD, Adam) over the stacked tensors trains every network as if alone.
    """
    return summed_loss(model, stacked, x, y) / x.shape[0]


def training_loss(model: nn.Module, compiled: bool = False) -> Callable[[Params, torch.Tensor, torch.Tensor],
                                                                      torch.Tensor]:
    """``mean_loss_per_net_summed`` of ``model`` as a function of (stacked, x, y): the loss of the
    networks' SGD steps on a synthetic set (from-scratch scoring, gm's network steps).

    ``compiled``: through ``torch.compile`` (inductor), so its forward and backward run as generated
    kernels that fuse each layer's elementwise work (norm, activation, pooling: one pass over
    memory, and on a GPU one launch, instead of several). The first call with each new batch shape,
    network or label kind traces and compiles (seconds on a CPU; inductor keeps the kernels on
    disk for later runs). Its numbers agree with the plain function's up to float rounding, not
    bit for bit, which is why it is a switch (``--compile``) and not the default.

    The compiled graph is specialised to its inputs' strides, and images of one channel come with
    either of two stride patterns that describe the same memory (DSA's crop leaves channels-last
    ones, which still count as contiguous): x is given row-major strides first, so that such a pair
    compiles once rather than twice.
    """
    loss = partial(mean_loss_per_net_summed, model)
    if not compiled:
        return loss
    compiled_loss = torch.compile(loss, dynamic=False)

    def row_major_loss(stacked: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.stride() != row_major_strides(x.shape):
            x = x.clone(memory_format=torch.contiguous_format)
        return compiled_loss(stacked, x, y)

    return row_major_loss


def row_major_strides(shape: torch.Size) -> tuple[int, ...]:
    """The strides of a freshly allocated contiguous tensor of ``shape``, size-one dimensions included."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


@torch.no_grad()
def batched_logits(model: nn.Module, stacked: Params, x: torch.Tensor, images: int = 2048) -> torch.Tensor:
    """Logits (n_nets, B, classes) of each stacked network on x (B, C, H, W), in chunks of about
    ``images`` (network, image) pairs: every layer's activation holds n_nets x chunk images'
    feature maps, so the chunk shrinks as networks are added and memory stays bounded."""
    n_nets = next(iter(stacked.values())).shape[0]
    chunk = max(16, images // n_nets)
    fn = vmap(lambda p, xb: functional_call(model, p, (xb,)), in_dims=(0, None))
    return torch.cat([fn(stacked, x[i:i + chunk]) for i in range(0, x.shape[0], chunk)], dim=1)


def batched_train(model: nn.Module, stacked: Params, images: torch.Tensor, labels: torch.Tensor,
                  lrs: torch.Tensor) -> Params:
    """``unroll`` each stacked network on a fixed synthetic set, without building a graph."""
    images, labels, lrs = images.detach(), labels.detach(), lrs.detach()
    fn = vmap(partial(unroll, model), in_dims=(0, None, None, None))
    with torch.enable_grad():  # torch.func.grad needs grad mode, but nothing outside requires grad
        out = fn(stacked, images, labels, lrs)
    return {k: v.detach() for k, v in out.items()}
