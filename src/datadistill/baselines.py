"""Baselines a distilled set is compared against, built from the training split alone.

Each image source returns a ``SyntheticSet`` of the same shape as a distilled one (``steps``
batches of ``per_class`` images per class, labels class-major within a step, the given step
sizes), so it can be scored by exactly the same protocol: random real images, per-class means,
per-class k-means centres (Wang et al. 2018, sec. 4) and herding's picks (the coreset baseline of
the later papers). ``knn_accuracy`` scores a set as the
memory of a nearest-neighbour classifier instead of as training data. Pure: no file I/O.
"""
from __future__ import annotations

import torch

from .data import Split, class_balanced_sample
from .errors import ConfigError
from .synthetic import SyntheticSet


def fixed_lrs(n: int, lr: float) -> torch.Tensor:
    """``n`` equal step sizes ``lr``, shape (n,): the untuned schedule a baseline is trained with."""
    if n < 1:
        raise ConfigError(f"the number of step sizes must be positive, got {n}")
    if not lr > 0:
        raise ConfigError(f"the step size must be positive, got {lr}")
    return torch.full((n,), float(lr))


def _check_shape(steps: int, per_class: int, num_classes: int, lrs: torch.Tensor) -> None:
    for name, value in (("steps", steps), ("per_class", per_class), ("num_classes", num_classes)):
        if value < 1:
            raise ConfigError(f"{name} must be positive, got {value}")
    if lrs.ndim != 1 or lrs.shape[0] < steps or lrs.shape[0] % steps:
        raise ConfigError(f"lrs must be a 1-d tensor of steps x epochs step sizes, got shape "
                          f"{tuple(lrs.shape)} for {steps} steps")


def _class_images(train: Split, c: int, need: int) -> torch.Tensor:
    x = train.x[train.y == c]
    if x.shape[0] < need:
        raise ConfigError(f"{need} real images per class asked for (the set's images per class: --distill_steps x "
                          f"--distilled_images_per_class_per_step), but class {c} has {x.shape[0]} training images")
    return x


def _as_set(per_class_images: torch.Tensor, steps: int, per_class: int, lrs: torch.Tensor,
            mean, std) -> SyntheticSet:
    """(classes, steps * per_class, C, H, W) -> a set whose step s holds, class by class, images
    s * per_class .. (s + 1) * per_class - 1 of every class."""
    num_classes, _, *chw = per_class_images.shape
    images = (per_class_images.reshape(num_classes, steps, per_class, *chw)
              .transpose(0, 1).reshape(steps, num_classes * per_class, *chw))  # (S, N, C, H, W)
    labels = (torch.arange(num_classes, device=images.device)
              .repeat_interleave(per_class).repeat(steps, 1))  # (S, N)
    return SyntheticSet(images.contiguous(), labels, lrs.detach().clone(), tuple(mean), tuple(std),
                        num_classes)


def random_train(train_split: Split, steps: int, per_class: int, num_classes: int,
                 lrs: torch.Tensor, mean, std, generator: torch.Generator) -> SyntheticSet:
    """``steps * per_class`` distinct random training images of each class."""
    _check_shape(steps, per_class, num_classes, lrs)
    x, _ = class_balanced_sample(train_split, steps * per_class, num_classes, generator)
    return _as_set(x.reshape(num_classes, steps * per_class, *x.shape[1:]), steps, per_class,
                   lrs, mean, std)


def average_train(train_split: Split, steps: int, per_class: int, num_classes: int,
                  lrs: torch.Tensor, mean, std, generator: torch.Generator | None = None
                  ) -> SyntheticSet:
    """Every image of class c is the mean of class c's training images (``generator`` unused,
    accepted so that all sources share one signature)."""
    _check_shape(steps, per_class, num_classes, lrs)
    k = steps * per_class
    means = torch.stack([_class_images(train_split, c, 1).mean(0) for c in range(num_classes)])
    return _as_set(means.unsqueeze(1).expand(-1, k, *means.shape[1:]), steps, per_class,
                   lrs, mean, std)


def kmeans_train(train_split: Split, steps: int, per_class: int, num_classes: int,
                 lrs: torch.Tensor, mean, std, generator: torch.Generator,
                 n_init: int = 3) -> SyntheticSet:
    """``steps * per_class`` k-means centres of each class's training images (scikit-learn's
    ``KMeans``, ``n_init`` restarts, seeded from ``generator``), dealt out over the steps."""
    from sklearn.cluster import KMeans

    _check_shape(steps, per_class, num_classes, lrs)
    k = steps * per_class
    centres = []
    for c in range(num_classes):
        x = _class_images(train_split, c, k)
        flat = x.detach().flatten(1).cpu().double().numpy()  # (n_c, C*H*W)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        fit = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(flat)
        centres.append(torch.as_tensor(fit.cluster_centers_, dtype=x.dtype).view(k, *x.shape[1:]))
    return _as_set(torch.stack(centres).to(train_split.x.device), steps, per_class, lrs, mean, std)


def _herd(x: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` herding picks of images ``x`` (n, ...), in the order herding makes them."""
    flat = x.detach().flatten(1).double()  # (n, D)
    target, total = flat.mean(0), torch.zeros_like(flat[0])
    taken = torch.zeros(len(flat), dtype=torch.bool, device=flat.device)
    chosen = []
    for i in range(1, k + 1):
        gap = ((target - (total + flat) / i) ** 2).sum(1).masked_fill(taken, float("inf"))  # (n,)
        j = int(gap.argmin())
        chosen.append(j)
        taken[j] = True
        total += flat[j]
    return x[chosen]


def herding_sample(split: Split, per_class: int, num_classes: int, source: dict[int, int] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` training images of each class picked by herding (Welling 2009) in pixel space,
    ordered class by class, as ``data.class_balanced_sample`` orders its random ones: the i-th pick
    of class c is the image that brings the mean of the first i closest to the class mean, so the
    picks' running mean tracks it. The slots of a class c in ``source`` hold picks of class
    ``source[c]`` (labels stay c); classes drawn from the same class take its successive picks, so
    no image is taken twice. Deterministic: no random stream."""
    drawn = [(source or {}).get(c, c) for c in range(num_classes)]
    picks = {d: _herd(_class_images(split, d, per_class * drawn.count(d)), per_class * drawn.count(d))
             for d in set(drawn)}
    used = dict.fromkeys(picks, 0)
    out = []
    for d in drawn:
        out.append(picks[d][used[d]:used[d] + per_class])
        used[d] += per_class
    labels = torch.arange(num_classes, device=split.y.device).repeat_interleave(per_class)
    return torch.cat(out), labels


def herding_train(train_split: Split, steps: int, per_class: int, num_classes: int,
                  lrs: torch.Tensor, mean, std, generator: torch.Generator | None = None) -> SyntheticSet:
    """``steps * per_class`` training images of each class picked by herding (``herding_sample``),
    dealt out over the steps (``generator`` unused)."""
    _check_shape(steps, per_class, num_classes, lrs)
    x, _ = herding_sample(train_split, steps * per_class, num_classes)
    return _as_set(x.reshape(num_classes, steps * per_class, *x.shape[1:]), steps, per_class, lrs, mean, std)


def knn_predict(memory_x: torch.Tensor, memory_y: torch.Tensor, test_x: torch.Tensor, k: int = 1,
                p: float = 2.0) -> torch.Tensor:
    """Labels (B,) of test_x (B, ...) by a majority vote of the ``k`` nearest of memory_x (M, ...)
    under the p-norm; a tied vote goes to the tied class whose nearest member is nearest."""
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if not p > 0:
        raise ConfigError(f"p must be positive, got {p}")
    memory = memory_x.detach().flatten(1)  # (M, D)
    if k > memory.shape[0]:
        raise ConfigError(f"k={k} neighbours asked for (nearest_neighbor K P), the memory holds {memory.shape[0]} "
                          f"images; accepted: K in 1..{memory.shape[0]}")
    labels = memory_y.to(memory.device)
    num_classes = int(labels.max()) + 1
    rank = torch.arange(k, device=memory.device)
    chunk = max(1, 2**24 // memory.shape[0])  # rows of the distance matrix held at once (64 MB)
    out = []
    for i in range(0, test_x.shape[0], chunk):
        d = torch.cdist(test_x[i:i + chunk].detach().flatten(1).to(memory), memory, p=p)  # (b, M)
        nearest = d.topk(k, dim=1, largest=False, sorted=True).indices  # (b, k), nearest first
        classes = torch.arange(num_classes, device=memory.device)
        hit = labels[nearest].unsqueeze(-1) == classes  # (b, k, classes)
        votes = hit.sum(1)  # (b, classes)
        first = torch.where(hit, rank[:, None], k).amin(1)  # (b, classes): rank of nearest member
        # more votes wins; among equal votes the smaller first rank wins (first < k + 1)
        out.append((votes * (k + 1) - first).argmax(1))
    return torch.cat(out)


def knn_accuracy(memory_x: torch.Tensor, memory_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, k: int = 1, p: float = 2.0) -> float:
    """Share of test_x that ``knn_predict`` labels as test_y, in [0, 1]."""
    pred = knn_predict(memory_x, memory_y, test_x, k, p)
    return float((pred == test_y.to(pred.device)).float().mean())
