"""Sections of a run that say how sets are scored and what the later methods read."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .sections import STOCHASTIC_IMAGES, TEST_IMAGES, TEST_LRS, _choice, _positive


AUGMENTS = ("none", "dsa", "dsa-noflip")
PROTOCOLS = ("unrolled", "from_scratch")


@dataclass(frozen=True)
class MethodConfig:
    """Settings of the later methods (``--method dm|gm|mtt``); wang2018 reads none of them."""

    augment: str = "none"  # dsa: differentiable Siamese augmentation (Zhao and Bilen 2021); dsa-noflip: without flips
    outer_loop: int = 10  # gm: synthetic updates per network before a fresh one is drawn
    inner_steps: int = 50  # gm: SGD steps of that network on the synthetic set between updates
    inner_lr: float = 0.01  # gm: their learning rate
    syn_steps: int = 20  # mtt: steps on the synthetic set from an expert's start
    expert_epochs: int = 2  # mtt: the expert epochs those steps should cover
    max_start_epoch: int = 10  # mtt: starts are drawn from expert epochs 0..max_start_epoch-1
    embed_batch: int = 256  # dm, gm: real images per class per iteration

    def __post_init__(self):
        _choice("--augment", self.augment, AUGMENTS)
        for name in ("outer_loop", "inner_steps", "inner_lr", "syn_steps", "expert_epochs",
                     "max_start_epoch", "embed_batch"):
            _positive(f"--{name}", getattr(self, name))


@dataclass(frozen=True)
class EvalConfig:
    """How a set is scored: ``unrolled`` replays its steps and step sizes (Wang et al.);
    ``from_scratch`` trains fresh networks on all its images with SGD (momentum 0.9, weight decay
    5e-4; the later literature's protocol), with DSA when ``augment`` is dsa. None: the method's."""

    protocol: str | None = None
    scratch_epochs: int = 300
    scratch_lr: float = 0.01
    scratch_batch_size: int = 256
    augment: str | None = None  # None: the method's --augment

    def __post_init__(self):
        if self.protocol is not None:
            _choice("--protocol", self.protocol, PROTOCOLS)
        if self.augment is not None:
            _choice("--eval_augment", self.augment, AUGMENTS)
        for name in ("scratch_epochs", "scratch_lr", "scratch_batch_size"):
            _positive(f"--{name}", getattr(self, name))


@dataclass(frozen=True)
class TestPhaseConfig:
    """``--phase test`` of a distill mode: which sets are scored, and how (no distillation).

    images: the distilled set (``loaded``) or a baseline of its shape built from training images;
    lrs: its learned step sizes (``loaded``), one ``fixed_lr`` for every step (``fix``), or no
    training at all (``nearest_neighbor``: a ``knn_k``-NN classifier under the ``knn_p``-norm with
    the set as its memory). ``optimize_n_runs``: draw that many candidate sets, keep the best
    ``n_runs`` as scored on ``niter`` training batches by ``optimize_n_nets`` training networks.
    """

    __test__ = False  # not a pytest class, whatever its name

    images: str = "loaded"
    lrs: str = "loaded"
    fixed_lr: float | None = None
    knn_k: int | None = None
    knn_p: float | None = None
    n_runs: int = 1
    distill_epochs: int | None = None  # None: the loaded set's passes, else --distill_epochs
    optimize_n_runs: int | None = None  # None: no selection, n_runs draws are scored as they come
    optimize_n_nets: int = 1
    niter: int = 1
    distilled: str | None = None  # None: <results_dir>/distilled.pt
    score_on: str = "test"  # "val": score on the validation split instead (choosing a baseline's step size)

    def __post_init__(self):
        _choice("--score_on", self.score_on, ("test", "val"))
        _choice("--test_distilled_images", self.images, TEST_IMAGES)
        _choice("--test_distilled_lrs", self.lrs, TEST_LRS)
        if self.lrs == "fix":
            if self.fixed_lr is None:
                raise ConfigError("--test_distilled_lrs fix needs a step size, e.g. fix 0.3")
            _positive("the fixed step size of --test_distilled_lrs fix", self.fixed_lr)
        if self.lrs == "nearest_neighbor":
            if self.knn_k is None or self.knn_k < 1:
                raise ConfigError(f"--test_distilled_lrs nearest_neighbor needs K >= 1 neighbours, "
                                  f"got {self.knn_k}; e.g. nearest_neighbor 1 2")
            if self.knn_p is None or not self.knn_p > 0:
                raise ConfigError(f"--test_distilled_lrs nearest_neighbor needs a norm P > 0, "
                                  f"got {self.knn_p}; e.g. nearest_neighbor 1 2")
        _positive("--test_n_runs", self.n_runs)
        if self.distill_epochs is not None:
            _positive("--test_distill_epochs", self.distill_epochs)
        _positive("--test_optimize_n_nets", self.optimize_n_nets)
        _positive("--test_niter", self.niter)
        if self.optimize_n_runs is not None:
            if self.images not in STOCHASTIC_IMAGES:
                raise ConfigError(f"--test_optimize_n_runs picks among random draws; "
                                  f"--test_distilled_images {self.images} gives one set; "
                                  f"accepted: {', '.join(STOCHASTIC_IMAGES)}")
            if self.optimize_n_runs < self.n_runs:
                raise ConfigError(f"--test_optimize_n_runs ({self.optimize_n_runs}) must be at least "
                                  f"--test_n_runs ({self.n_runs})")

    @property
    def needs_distilled(self) -> bool:
        """Whether a distilled file must be read (for its images or its step sizes)."""
        return self.images == "loaded" or self.lrs == "loaded" or self.distilled is not None

    @property
    def lrs_label(self) -> str:
        """The step-size mode as given on the command line: ``fix 0.3``, ``nearest_neighbor 1 2``."""
        if self.lrs == "fix":
            return f"fix {self.fixed_lr:g}"
        if self.lrs == "nearest_neighbor":
            return f"nearest_neighbor {self.knn_k} {self.knn_p:g}"
        return self.lrs
