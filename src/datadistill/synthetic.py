"""The distilled set: images, labels and per-step step sizes, and its plain-dict file form."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from .errors import ArtifactError
from .factorize import decode, decode_labels

FORMAT = "datadistill.distilled/1"


@dataclass
class SyntheticSet:
    """A training set of ``steps`` batches used for ``epochs`` passes of GD.

    images: (S, N, C, H, W), normalised like the real data; labels: (S, N) int64 classes, or
    (S, N, num_classes) float probability vectors when they were learned (the inner GD's
    cross-entropy -sum_c y_c log p_c takes either);
    lrs: (S * epochs,) positive step sizes, one per GD step in the order they are taken.
    """

    images: torch.Tensor
    labels: torch.Tensor
    lrs: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    meta: dict = field(default_factory=dict)  # dataset, arch, config, ...

    @property
    def steps(self) -> int:
        return self.images.shape[0]

    @property
    def epochs(self) -> int:
        return self.lrs.shape[0] // self.steps

    @property
    def hard_labels(self) -> torch.Tensor:
        """(S, N) int64: the labels, or the class with the largest learned weight."""
        return self.labels.argmax(-1) if self.labels.is_floating_point() else self.labels

    def to(self, device) -> "SyntheticSet":
        """The same set with its tensors on ``device``."""
        return dataclasses.replace(self, images=self.images.to(device), labels=self.labels.to(device),
                                   lrs=self.lrs.to(device))

    def denormalised(self) -> torch.Tensor:
        """Images in [0, 1] pixel space, (S, N, C, H, W)."""
        return self.pixels(self.images)

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (..., C, H, W), normalised like this set's, in [0, 1] pixel space."""
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (images.detach().cpu() * std + mean).clamp(0, 1)

    def to_dict(self) -> dict:
        """A dict of tensors and plain values that ``torch.load`` reads with no datadistill import."""
        return {
            "format": FORMAT,
            "images": self.images.detach().cpu(),
            "labels": self.labels.detach().cpu(),
            "lrs": self.lrs.detach().cpu(),
            "mean": list(self.mean),
            "std": list(self.std),
            "num_classes": self.num_classes,
            "steps": self.steps,
            "epochs": self.epochs,
            **self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SyntheticSet":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ArtifactError(f"not a distilled set (expected a dict with format {FORMAT!r})")
        core = {"format", "images", "labels", "lrs", "mean", "std", "num_classes", "steps", "epochs"}
        return cls(d["images"], d["labels"], d["lrs"], tuple(d["mean"]), tuple(d["std"]),
                   int(d["num_classes"]), {k: v for k, v in d.items() if k not in core})


def noise_images(steps: int, per_step: int, shape: tuple[int, int, int], generator: torch.Generator
                 ) -> torch.Tensor:
    """N(0, 1) images (steps, per_step, C, H, W) in normalised space: the paper's start."""
    return torch.randn(steps, per_step, *shape, generator=generator)


def class_major_labels(steps: int, per_class: int, num_classes: int) -> torch.Tensor:
    """(steps, num_classes * per_class) int64: ``per_class`` images of class 0, then of class 1, ..."""
    return torch.arange(num_classes).repeat_interleave(per_class).repeat(steps, 1)


LABEL_START = 0.99  # learned labels start as this much probability on the image's own class


def step_sizes_from_raw(raw: torch.Tensor, param: str) -> torch.Tensor:
    """Positive step sizes from the learned raw values: softplus(raw) (the paper's code) or exp(raw)."""
    return torch.nn.functional.softplus(raw) if param == "softplus" else raw.exp()


def raw_from_step_sizes(lrs: torch.Tensor, param: str) -> torch.Tensor:
    """The inverse of ``step_sizes_from_raw``: log(expm1(lr)) or log(lr)."""
    return lrs.expm1().log() if param == "softplus" else lrs.log()


class LearnableSet:
    """The tensors the outer optimiser updates, and the synthetic set they stand for.

    images (S, N, C, H, W) and, when step sizes are learned, ``raw_lrs`` (T,): the step sizes are
    ``softplus(raw_lrs)`` (``step_size_param`` "softplus", the paper's code) or ``exp(raw_lrs)``
    ("exp"), so that they stay positive. Both act alike on small step sizes (softplus(x) ~ e^x for
    x << 0); on large ones softplus grows additively under Adam's bounded steps and exp
    multiplicatively. ``labels`` (S, N) are the fixed classes; with learned labels,
    ``label_logits`` (S, N, classes) are learned and the inner cross-entropy's targets are
    ``softmax(label_logits)``: probability vectors, so that cross-entropy stays a proper one,
    bounded below by 0 (free target vectors with a negative entry would make it unbounded below).
    They start at ``LABEL_START`` on the image's class and the rest spread evenly.

    ``factor`` > 1 stores the images in multi-formation (``factorize``): ``images`` and ``labels``
    (and ``label_logits``) are the stored ones, and ``decoded()`` and ``targets()`` the
    ``factor ** 2`` times as many training images and their labels that a network reads.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, lrs: torch.Tensor | None,
                 num_classes: int, mean, std, learn_labels: bool = False, meta: dict | None = None,
                 step_size_param: str = "exp", factor: int = 1):
        self.factor = factor
        self.images = images.detach().clone().requires_grad_()
        self.labels = labels
        self.step_size_param = step_size_param
        self.raw_lrs = None if lrs is None else raw_from_step_sizes(lrs.detach(), step_size_param).requires_grad_()
        self.label_logits = None
        if learn_labels:
            # logit gap g between the class and each other one: e^g / (e^g + K - 1) = LABEL_START
            gap = math.log(LABEL_START * (num_classes - 1) / (1 - LABEL_START))
            one_hot = torch.nn.functional.one_hot(labels, num_classes).to(images.dtype)
            self.label_logits = (gap * one_hot).requires_grad_()
        self.num_classes, self.mean, self.std = num_classes, tuple(mean), tuple(std)
        self.meta = dict(meta or {})

    def decoded(self) -> torch.Tensor:
        """The training images (S, N * factor ** 2, C, H, W), differentiable w.r.t. ``images``."""
        return decode(self.images, self.factor)

    def targets(self) -> torch.Tensor:
        """The inner loss's labels of the training images: (S, N * factor ** 2) classes, or
        (S, N * factor ** 2, classes) learned distributions."""
        return decode_labels(self.labels if self.label_logits is None else self.label_logits.softmax(-1),
                             self.factor)

    def decoded_labels(self) -> torch.Tensor:
        """(S, N * factor ** 2) int64: the fixed class of each training image."""
        return decode_labels(self.labels, self.factor)

    def lrs(self) -> torch.Tensor:
        return step_sizes_from_raw(self.raw_lrs, self.step_size_param)

    def param_groups(self, lr: float, step_size_lr: float) -> list[dict]:
        """Adam's groups: images and labels at ``lr``, the raw step sizes at ``step_size_lr``."""
        groups = [{"params": [self.images] + ([] if self.label_logits is None else [self.label_logits])}]
        if self.raw_lrs is not None:
            groups.append({"params": [self.raw_lrs], "lr": step_size_lr})
        return groups

    def tensors(self) -> list[torch.Tensor]:
        """Every learned tensor, in a fixed order (checkpoints, replica checks, all-reduce)."""
        return [t for t in (self.images, self.raw_lrs, self.label_logits) if t is not None]

    def to(self, device) -> "LearnableSet":
        with torch.no_grad():
            for name in ("images", "raw_lrs", "label_logits"):
                t = getattr(self, name)
                if t is not None:
                    setattr(self, name, t.detach().to(device).requires_grad_())
        self.labels = self.labels.to(device)
        return self

    def current(self, tensors: list[torch.Tensor] | None = None) -> SyntheticSet:
        """A detached snapshot of the training set (decoded, with ``factor`` > 1, so that it
        replays with no datadistill code); sets without learned step sizes store an empty ``lrs``.
        ``tensors``: values to take in place of ``tensors()`` (same order), e.g. their average."""
        images, raw_lrs, logits = self.images, self.raw_lrs, self.label_logits
        if tensors is not None:
            it = iter(tensors)
            images, raw_lrs, logits = (None if t is None else next(it) for t in (images, raw_lrs, logits))
        lrs = torch.empty(0) if raw_lrs is None else step_sizes_from_raw(raw_lrs, self.step_size_param)
        targets = decode_labels(self.labels if logits is None else logits.softmax(-1), self.factor)
        meta = dict(self.meta) if self.factor == 1 else {
            **self.meta, "factor": self.factor, "stored_images": images.detach().cpu().clone()}
        return SyntheticSet(decode(images.detach(), self.factor).clone(), targets.detach().clone(),
                            lrs.detach().clone(), self.mean, self.std, self.num_classes, meta)
