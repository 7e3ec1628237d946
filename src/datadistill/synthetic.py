"""The distilled set: images, labels and per-step step sizes, and its plain-dict file form."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from .errors import ArtifactError
from .factorize import decode, decode_labels

FORMAT = "datadistill.distilled/1"
REQUIRED_KEYS = ("images", "labels", "lrs", "mean", "std", "num_classes")
# optional entries that other code reads, and the type each must have when present and not None
META_TYPES = {"dataset": str, "arch": str, "init": str, "method": str, "init_param": (int, float),
              "config": dict, "init_params": dict, "factor": int}
SOFT_LABEL_TOLERANCE = 1e-3  # how far a stored probability vector's sum may stray from 1 (float rounding)


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
        """The set a ``to_dict`` dict holds, checked field by field (``ArtifactError`` naming the
        first field that departs from docs/formats.md), so that a hand-edited or damaged file fails
        here and not inside torch after networks have trained."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ArtifactError(f"not a distilled set (expected a dict with format {FORMAT!r})")
        missing = [k for k in REQUIRED_KEYS if k not in d]
        if missing:
            raise ArtifactError(f"it lacks {', '.join(missing)} (a distilled set holds {', '.join(REQUIRED_KEYS)})")
        images = _checked_images(d["images"])
        steps, per_step, channels = images.shape[:3]
        num_classes = _checked_num_classes(d["num_classes"])
        labels = _checked_labels(d["labels"], steps, per_step, num_classes)
        lrs = _checked_lrs(d["lrs"], steps)
        mean = _checked_per_channel(d["mean"], "mean", channels, positive=False)
        std = _checked_per_channel(d["std"], "std", channels, positive=True)
        for key, value in (("steps", steps), ("epochs", lrs.shape[0] // steps)):
            if key in d and d[key] != value:  # replays in plain PyTorch read them (docs/formats.md)
                raise ArtifactError(f"{key} is {_shown(d[key])}, but images and lrs make it {value}")
        meta = {k: v for k, v in d.items() if k not in REQUIRED_KEYS + ("format", "steps", "epochs")}
        _check_meta(meta, images.shape)
        # float32 throughout, whatever float precision the file holds (the networks compute in float32)
        if meta.get("stored_images") is not None:
            meta["stored_images"] = meta["stored_images"].float()
        if meta.get("init_params") is not None:
            meta["init_params"] = {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                                   for k, v in meta["init_params"].items()}
        return cls(images, labels, lrs, mean, std, num_classes, meta)


def _shown(value) -> str:
    """A value read from a file as an error shows it: a tensor's dtype and shape, else a short repr."""
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"{'an' if dtype[0] in 'aeiou' else 'a'} {dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _checked_images(images) -> torch.Tensor:
    if not (isinstance(images, torch.Tensor) and images.is_floating_point() and images.dim() == 5
            and images.numel() > 0):
        raise ArtifactError(f"images is {_shown(images)}; expected a float tensor of shape "
                            f"(steps, images per step, C, H, W), none of them 0")
    bad = int((~torch.isfinite(images)).sum())
    if bad:
        raise ArtifactError(f"images holds {bad} NaN or infinite value(s); expected finite values")
    return images.float()


def _checked_num_classes(value) -> int:
    whole = (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, torch.Tensor) and value.numel() == 1 and _is_integer(value))
    if not whole or int(value) < 1:
        raise ArtifactError(f"num_classes is {_shown(value)}; expected a positive integer")
    return int(value)


def _checked_labels(labels, steps: int, per_step: int, num_classes: int) -> torch.Tensor:
    """Class indices (S, N), made int64 as cross-entropy takes them, or probability vectors (S, N, K)."""
    hard, soft = (steps, per_step), (steps, per_step, num_classes)
    if not (isinstance(labels, torch.Tensor) and (
            (_is_integer(labels) and tuple(labels.shape) == hard)
            or (labels.is_floating_point() and tuple(labels.shape) == soft))):
        raise ArtifactError(f"labels is {_shown(labels)}; expected class indices, an integer tensor {hard}, or "
                            f"probability vectors, a float tensor {soft}, to match images and num_classes")
    if labels.is_floating_point():
        if not (torch.isfinite(labels).all() and (labels >= 0).all()
                and ((labels.sum(-1) - 1).abs() <= SOFT_LABEL_TOLERANCE).all()):
            raise ArtifactError("labels holds float rows that are not probability vectors; expected "
                                "non-negative, finite values summing to 1 over the last dimension")
        return labels.float()
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if outside.numel():
        raise ArtifactError(f"labels holds class {int(outside[0])}; expected classes 0 to {num_classes - 1} "
                            f"(num_classes is {num_classes})")
    return labels.long()


def _checked_lrs(lrs, steps: int) -> torch.Tensor:
    if not (isinstance(lrs, torch.Tensor) and lrs.is_floating_point() and lrs.dim() == 1
            and lrs.shape[0] % steps == 0):
        raise ArtifactError(f"lrs is {_shown(lrs)}; expected a 1-D float tensor of steps x epochs step sizes "
                            f"({steps} x E), or an empty one for a set without step sizes")
    bad = lrs[~(torch.isfinite(lrs) & (lrs > 0))]
    if bad.numel():
        raise ArtifactError(f"lrs holds the step size {float(bad[0]):g}; expected positive, finite ones")
    return lrs.float()


def _checked_per_channel(values, key: str, channels: int, positive: bool) -> tuple[float, ...]:
    numbers = values.tolist() if isinstance(values, torch.Tensor) and values.dim() == 1 else values
    ok = isinstance(numbers, (list, tuple)) and len(numbers) == channels and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
        for v in numbers)
    if not ok:
        kind = "positive, finite numbers" if positive else "finite numbers"
        raise ArtifactError(f"{key} is {_shown(values)}; expected a list of {channels} {kind}, one per "
                            f"image channel")
    return tuple(float(v) for v in numbers)


def _check_meta(meta: dict, shape: torch.Size) -> None:
    for key, kind in META_TYPES.items():
        value = meta.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise ArtifactError(f"{key} is {_shown(value)}; expected a {names}")
    factor = meta.get("factor") or 1
    steps, per_step, *image = shape
    if factor < 1 or per_step % factor ** 2:
        raise ArtifactError(f"factor is {factor} with {per_step} images per step; expected a positive integer "
                            f"f whose f x f tiles of each stored image make up the images")
    stored = meta.get("stored_images")
    expected = (steps, per_step // factor ** 2, *image)
    if stored is not None and not (isinstance(stored, torch.Tensor) and stored.is_floating_point()
                                   and tuple(stored.shape) == expected):
        raise ArtifactError(f"stored_images is {_shown(stored)}; expected a float tensor {expected}, "
                            f"the stored images whose {factor} x {factor} tiles are images")


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
