"""Run configuration: frozen dataclasses, one per concern, validated once when built.

The CLI builds these from flags; the Python API builds them directly. Nothing mutates them: a
changed setting is a new config (``dataclasses.replace``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import ConfigError

MODES = ("distill_basic", "distill_adapt", "distill_attack", "train")
TRAIN_NETS_TYPES = ("known_init", "unknown_init", "loaded")
TEST_NETS_TYPES = ("same_as_train", "unknown_init", "loaded")
PHASES = ("train", "test")
IMAGE_INITS = ("noise", "real")
CONV_BACKENDS = ("native", "mkldnn", "auto")  # CPU convolutions of the unrolled steps (see runtime)
LR_SCHEDULES = ("cosine", "step")
RANDOM_INITS = ("xavier", "xavier_unif", "kaiming", "kaiming_out", "orthogonal", "default")
INITS = RANDOM_INITS + ("imagenet_pretrained",)  # the last: torchvision's ImageNet AlexNet
PRETRAINED_ARCHS = ("AlexNet",)  # archs imagenet_pretrained applies to (models checks again)
TEST_IMAGES = ("loaded", "random_train", "average_train", "kmeans_train")
TEST_LRS = ("loaded", "fix", "nearest_neighbor")
STOCHASTIC_IMAGES = ("random_train", "kmeans_train")  # a fresh draw gives another set


def _choice(what: str, value: str, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ConfigError(f"unknown {what} {value!r}; accepted: {', '.join(accepted)}")


def _positive(what: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{what} must be positive, got {value}")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, and where its files live."""

    dataset: str = "MNIST"  # what is distilled and scored; the target domain when adapting
    root: str | None = None  # None: ./data
    download: bool = False
    source_dataset: str | None = None  # distill_adapt: the domain the loaded networks know
    # training images held out as the validation split (every choice is made on it, never on the
    # test split); None: min(5000, a tenth of the training split)
    val_size: int | None = None

    def __post_init__(self):
        if self.val_size is not None and self.val_size < 0:
            raise ConfigError(f"--val_size must be >= 0, got {self.val_size}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and how fresh weights are drawn."""

    arch: str = "LeNet"
    init: str = "xavier"
    init_param: float = 1.0  # gain for xavier/orthogonal, negative slope for kaiming
    pretrained_weights: str | None = None  # imagenet_pretrained: the .pth file; None: torch hub cache
    width: int | None = None  # ConvNet channels / MLP hidden units; None: the arch's default (128)

    def __post_init__(self):
        _choice("init", self.init, INITS)
        # checked here, not only when the first network is drawn, so a run fails before loading data
        if self.init == "imagenet_pretrained" and self.arch.lower() not in {a.lower() for a in PRETRAINED_ARCHS}:
            raise ConfigError(f"--init imagenet_pretrained needs --arch {' or '.join(PRETRAINED_ARCHS)}; "
                              f"{self.arch} has no ImageNet weights")
        if self.pretrained_weights is not None and self.init != "imagenet_pretrained":
            raise ConfigError(f"--pretrained_weights is only read with --init imagenet_pretrained, "
                              f"not --init {self.init}")


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape of the distilled set and the inner GD it drives.

    The inner loop takes ``steps * epochs`` GD steps: ``epochs`` passes over ``steps`` batches of
    ``images_per_class_per_step * num_classes`` images, each step with its own learned step size.
    """

    steps: int = 10
    epochs: int = 3  # passes over the steps (the paper's 3)
    images_per_class_per_step: int = 1
    init_lr: float = 0.02
    image_init: str = "noise"  # "noise": N(0, 1) in normalised space; "real": random training images
    # learn each image's label as a distribution over the classes (the target of the inner
    # cross-entropy; --label_mode soft) instead of the paper's fixed one-per-class labels
    learn_labels: bool = False
    # images per class in the whole set; None: steps * images_per_class_per_step. The methods
    # without steps (dm, gm, mtt) hold all of them in one batch
    ipc: int | None = None

    def __post_init__(self):
        _choice("--image_init", self.image_init, IMAGE_INITS)
        _positive("--distill_steps", self.steps)
        _positive("--distill_epochs", self.epochs)
        _positive("--distilled_images_per_class_per_step", self.images_per_class_per_step)
        _positive("--distill_lr", self.init_lr)
        if self.ipc is not None:
            _positive("--ipc", self.ipc)

    @property
    def images_per_class(self) -> int:
        return self.ipc if self.ipc is not None else self.steps * self.images_per_class_per_step


@dataclass(frozen=True)
class OuterConfig:
    """The outer optimisation of images and step sizes: Adam, and how its learning rate decays."""

    # a smaller real batch than the original's 1024 buys more outer iterations for the same time,
    # and a cosine decay to zero over the run ends each run at its own settled point
    epochs: int = 3  # passes over the training split
    schedule: str = "cosine"  # "cosine": to zero over all epochs; "step": x decay_factor every decay_epochs
    decay_epochs: int = 3
    decay_factor: float = 0.8
    lr: float = 0.05  # Adam's rate of the images (and learned labels); of the weights when training a zoo
    step_size_lr: float = 0.01  # Adam's rate of the log step sizes
    batch_size: int = 256  # real images per outer step

    def __post_init__(self):
        _choice("--lr_schedule", self.schedule, LR_SCHEDULES)
        _positive("--epochs", self.epochs)
        _positive("--decay_epochs", self.decay_epochs)
        _positive("--decay_factor", self.decay_factor)
        _positive("--lr", self.lr)
        _positive("--step_size_lr", self.step_size_lr)
        _positive("--batch_size", self.batch_size)

    def lr_factor(self, iteration: int, iterations_per_epoch: int) -> float:
        """Multiplier of ``lr`` at outer iteration ``iteration`` (0-based)."""
        if self.schedule == "step":
            return self.decay_factor ** (iteration // iterations_per_epoch // self.decay_epochs)
        progress = min(1.0, iteration / (self.epochs * iterations_per_epoch))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class NetsConfig:
    """Which networks the images are distilled against and scored on."""

    train_nets_type: str = "unknown_init"
    n_nets: int = 1  # networks per outer iteration; with loaded nets, how many of the zoo to use
    test_nets_type: str = "unknown_init"
    test_n_nets: int = 1
    sample_n_nets: int | None = None  # loaded nets: draw this many of the n_nets per iteration

    def __post_init__(self):
        _choice("--train_nets_type", self.train_nets_type, TRAIN_NETS_TYPES)
        _choice("--test_nets_type", self.test_nets_type, TEST_NETS_TYPES)
        _positive("--n_nets", self.n_nets)
        _positive("--test_n_nets", self.test_n_nets)
        if self.sample_n_nets is not None:
            _positive("--sample_n_nets", self.sample_n_nets)
            if self.sample_n_nets > self.n_nets:
                raise ConfigError(f"--sample_n_nets ({self.sample_n_nets}) cannot exceed --n_nets ({self.n_nets})")

    @property
    def nets_per_iteration(self) -> int:
        if self.train_nets_type == "loaded" and self.sample_n_nets is not None:
            return self.sample_n_nets
        return self.n_nets


AUGMENTS = ("none", "dsa")
PROTOCOLS = ("unrolled", "from_scratch")


@dataclass(frozen=True)
class MethodConfig:
    """Settings of the later methods (``--method dm|gm|mtt``); wang2018 reads none of them."""

    augment: str = "none"  # dsa: differentiable Siamese augmentation (Zhao and Bilen 2021)
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


@dataclass(frozen=True)
class RunConfig:
    """Everything one job needs; ``to_dict`` is what goes into result files.

    The defaults are those of the ``fresh`` preset; ``build_config`` applies the preset a run's
    setting calls for (``PRESETS``) under the flags given explicitly.
    """

    mode: str = "distill_basic"
    method: str = "wang2018"
    preset: str = "fresh"  # the preset the defaults came from (recorded, not applied here)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)
    nets: NetsConfig = field(default_factory=NetsConfig)
    test: TestPhaseConfig = field(default_factory=TestPhaseConfig)  # the test phase (``datadistill test``)
    methods: MethodConfig = field(default_factory=MethodConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    skip_test: bool = False  # report on the validation split only (tuning runs never read the test split)
    eval_every: int = 0  # validate every N outer epochs; 0: about five times per run
    results_dir: str = "./results"
    seed: int = 1
    device: str = "cpu"
    phase: str = "train"  # train-zoo: which zoo to fill
    attack_class: int | None = None  # distill_attack: images of this class ...
    target_class: int | None = None  # ... should be taken for this one
    attack_weight: float = 1.0  # distill_attack: weight of attack_class images in the outer loss (1: the paper's)
    zoo_dir: str | None = None  # None: <results_dir>/zoo
    conv_backend: str = "native"  # CPU convolutions of the unrolled steps; auto: timed on the first step

    def __post_init__(self):
        _choice("mode", self.mode, MODES)
        _choice("--phase", self.phase, PHASES)
        _choice("--conv_backend", self.conv_backend, CONV_BACKENDS)
        _choice("--preset", self.preset, tuple(PRESETS))
        if self.mode == "distill_attack":
            if self.attack_class is None or self.target_class is None:
                raise ConfigError("--mode distill_attack needs --attack_class and --target_class")
            if self.attack_class == self.target_class:
                raise ConfigError(f"--attack_class and --target_class are both {self.attack_class}; "
                                  f"an attack needs two different classes")
            if min(self.attack_class, self.target_class) < 0:
                raise ConfigError("--attack_class and --target_class must be class indices >= 0")
        _positive("--attack_weight", self.attack_weight)
        if self.mode == "distill_adapt":
            if self.data.source_dataset is None:
                raise ConfigError("--mode distill_adapt needs --source_dataset, the domain the "
                                  "loaded networks were trained on")
            if self.nets.train_nets_type != "loaded":
                raise ConfigError("--mode distill_adapt needs --train_nets_type loaded (networks "
                                  "trained on --source_dataset with train-zoo)")
        if self.eval_every < 0:
            raise ConfigError(f"--eval_every must be >= 0, got {self.eval_every}")

    @property
    def setting(self) -> str:
        """basic, adapt or attack: the mode without its prefix."""
        return self.mode.removeprefix("distill_")

    @property
    def zoo_dataset(self) -> str:
        """The dataset whose zoo loaded networks come from: the source domain when adapting."""
        return self.data.source_dataset if self.mode == "distill_adapt" else self.data.dataset

    @property
    def zoo_root(self) -> str:
        return self.zoo_dir or f"{self.results_dir.rstrip('/')}/zoo"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        kwargs = {k: (SECTIONS[k](**v) if k in SECTIONS else v) for k, v in d.items()}
        return cls(**kwargs)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "synthetic": SyntheticConfig, "outer": OuterConfig,
            "nets": NetsConfig, "test": TestPhaseConfig, "methods": MethodConfig, "evaluation": EvalConfig}


# Named presets: the values a setting takes for what its flags leave out. The first five run the
# paper's method (fixed one-per-class labels, 3 passes, noise images, attack weight 1) with outer
# settings per source of networks; the others are the improvements, opt-in by name. Each was
# chosen on the validation split (benchmarks/RESULTS.md: the current figures and their commands).
_FRESH = {"outer.lr": 0.05, "outer.step_size_lr": 0.01, "outer.epochs": 3}
_FIXED = {"outer.lr": 0.03, "outer.step_size_lr": 0.03, "outer.epochs": 45}
_ZOO = {"outer.lr": 0.01, "outer.step_size_lr": 0.01, "outer.epochs": 45}
_ATTACK = {"outer.lr": 0.01, "outer.step_size_lr": 0.01, "outer.epochs": 4}
PRESETS: dict[str, dict[str, object]] = {
    "fresh": _FRESH,  # fresh networks every iteration; step sizes move slower than the images
    "fixed": _FIXED,  # one fixed network
    "zoo": _ZOO,  # networks of a trained zoo (adaptation, zoo distillation)
    "attack": _ATTACK,  # zoo networks; longer runs overfit the zoo
    "train-zoo": {"outer.lr": 1e-3, "outer.epochs": 45},  # Adam's usual rate for the networks' own weights
    # more passes over the same images train a network from scratch much further
    "fresh-long": {**_FRESH, "synthetic.epochs": 10, "outer.epochs": 5},
    # learned labels (Sucholutsky and Schonlau 2019) reach the level in far fewer epochs
    "fixed-labels": {**_FIXED, "synthetic.learn_labels": True, "outer.lr": 0.04, "outer.step_size_lr": 0.04,
                     "outer.epochs": 27},
    # real images: already what trained networks read
    "zoo-real": {**_ZOO, "synthetic.image_init": "real"},
    # real images, learned labels, and the attacked class weighted against the nine others
    "attack-tuned": {**_ATTACK, "synthetic.image_init": "real", "synthetic.learn_labels": True,
                     "attack_weight": 3.0},
    # matching training trajectories (--method mtt): real images to start from; PROVISIONAL
    "mtt": {"synthetic.image_init": "real", "synthetic.init_lr": 0.01, "outer.lr": 0.01, "outer.epochs": 50},
    # distribution matching (--method dm): real images to start from, as in the paper; PROVISIONAL
    "dm": {"synthetic.image_init": "real", "outer.lr": 0.05, "outer.epochs": 50, "outer.batch_size": 256},
}


def default_preset(mode: str, train_nets_type: str, method: str = "wang2018") -> str:
    """The preset a setting takes when ``--preset`` is not given."""
    if method != "wang2018" and method in PRESETS:
        return method
    if mode == "train":
        return "train-zoo"
    if mode == "distill_attack":
        return "attack"
    return {"unknown_init": "fresh", "known_init": "fixed"}.get(train_nets_type, "zoo")


def build_config(given: dict[str, object], preset: str | None = None) -> RunConfig:
    """A RunConfig from ``given`` values keyed by dotted field (``"outer.lr"``, ``"seed"``), over
    the values of ``preset`` (default: ``default_preset`` of the setting), over the defaults."""
    mode = given.get("mode", RunConfig.mode)
    preset = preset or default_preset(mode, given.get("nets.train_nets_type", NetsConfig.train_nets_type),
                                      given.get("method", RunConfig.method))
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; accepted: {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **given, "preset": preset}
    top = {k: v for k, v in values.items() if "." not in k}
    for name, cls in SECTIONS.items():
        fields = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(name + ".")}
        if name not in top:
            top[name] = cls(**fields)
    return RunConfig(**top)
