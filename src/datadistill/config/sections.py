"""Names accepted by the flags, the checks every section shares, and the sections of a run that
describe the data, the model, the synthetic set, the outer optimisation and the networks."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

MODES = ("distill_basic", "distill_adapt", "distill_attack", "train")
TRAIN_NETS_TYPES = ("known_init", "unknown_init", "loaded")
TEST_NETS_TYPES = ("same_as_train", "unknown_init", "loaded")
PHASES = ("train", "test")
IMAGE_INITS = ("noise", "real", "herding")
STEP_SIZE_PARAMS = ("exp", "softplus")  # how learned step sizes stay positive (synthetic.LearnableSet)
CONV_BACKENDS = ("native", "mkldnn", "auto")  # CPU convolutions of the unrolled steps (see runtime)
LR_SCHEDULES = ("cosine", "step")
RANDOM_INITS = ("xavier", "xavier_unif", "kaiming", "kaiming_out", "orthogonal", "default")
PARAM_INITS = ("xavier", "xavier_unif", "kaiming", "kaiming_out", "orthogonal")  # those --init_param shapes
INITS = RANDOM_INITS + ("imagenet_pretrained",)  # the last: torchvision's ImageNet AlexNet
PRETRAINED_ARCHS = ("AlexNet",)  # archs imagenet_pretrained applies to (models checks again)
TEST_IMAGES = ("loaded", "random_train", "average_train", "kmeans_train", "herding_train")
TEST_LRS = ("loaded", "fix", "nearest_neighbor")
STOCHASTIC_IMAGES = ("random_train", "kmeans_train")  # a fresh draw gives another set


def _choice(what: str, value: str, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ConfigError(f"unknown {what} {value!r}; accepted: {', '.join(accepted)}")


# every seed the run derives (networks, candidates: offsets times seed + 1) then stays inside the
# 64-bit range torch.manual_seed takes
SEED_LIMIT = 2**32


def _seed(what: str, value: int) -> None:
    if not 0 <= value < SEED_LIMIT:
        raise ConfigError(f"{what} must be in 0..{SEED_LIMIT - 1}, got {value}")


def _positive(what: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{what} must be positive, got {value}")
    if not math.isfinite(value):
        raise ConfigError(f"{what} must be finite, got {value}")


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
        if not (self.init_param >= 0 and math.isfinite(self.init_param)):  # a gain or a leaky slope
            raise ConfigError(f"--init_param must be a finite number >= 0, got {self.init_param}")
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
    # "noise": N(0, 1) in normalised space; "real": random training images; "herding": herding's
    # picks of each class (baselines.herding_sample), whose running mean tracks the class mean
    image_init: str = "noise"
    # learn each image's label as a distribution over the classes (the target of the inner
    # cross-entropy; --label_mode soft) instead of the paper's fixed one-per-class labels
    learn_labels: bool = False
    # label each image by trained networks instead (--label_mode teacher, teacher.py): the mean
    # softmax(logits / label_temperature) of every network of the run's train zoo, set on the
    # final images and on every snapshot validated. Temperature 4 of 1 / 2 / 4 / 8 on MNIST's
    # validation split (a dm set of one image per class; benchmarks/RESULTS.md)
    teacher_labels: bool = False
    label_temperature: float = 4.0
    # images per class in the whole set; None: steps * images_per_class_per_step. The methods
    # without steps (dm, gm, mtt) hold all of them in one batch
    ipc: int | None = None
    # learned step sizes are exp(raw) or softplus(raw) (the paper's code); see synthetic.LearnableSet.
    # exp chosen on MNIST's validation split with the fixed preset (benchmarks/RESULTS.md)
    step_size_param: str = "exp"
    # multi-formation (factorize.py, IDC): each stored image holds factor x factor tiles, each a
    # training image at 1/factor of the resolution; 1: plain images. dm, gm and mtt read it
    factor: int = 1
    # a distilled.pt whose stored images start the set instead of image_init (dm, gm, mtt): one
    # method continuing another's set; None: image_init
    init_from: str | None = None

    def __post_init__(self):
        _choice("--image_init", self.image_init, IMAGE_INITS)
        _choice("--step_size_param", self.step_size_param, STEP_SIZE_PARAMS)
        _positive("--distill_steps", self.steps)
        _positive("--distill_epochs", self.epochs)
        _positive("--distilled_images_per_class_per_step", self.images_per_class_per_step)
        _positive("--distill_lr", self.init_lr)
        _positive("--label_temperature", self.label_temperature)
        if self.teacher_labels and self.learn_labels:
            raise ConfigError("labels are learned (--label_mode soft) or set by teachers (--label_mode teacher), "
                              "not both")
        if self.ipc is not None:
            _positive("--ipc", self.ipc)
        _positive("--factor", self.factor)

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
    step_size_lr: float = 0.01  # Adam's rate of the raw step sizes (log or softplus-inverse; --step_size_param)
    batch_size: int = 256  # real images per outer step
    # Adam's first-moment decay (the second's is 0.999). 0.5 is the original code's; with it one
    # gradient far larger than the recent ones moves a tensor by up to (1 - b1) / sqrt(1 - 0.999),
    # about 16 times the rate, against about 3 times at 0.9
    adam_beta1: float = 0.5
    # 0: the run gives its learned tensors as they are; d in (0, 1): it gives and validates their
    # exponential moving average, each iteration's tensors weighted 1 - d (a horizon of about
    # 1 / (1 - d) iterations), which smooths the outer gradient's noise out of the final set
    ema_decay: float = 0.0

    def __post_init__(self):
        _choice("--lr_schedule", self.schedule, LR_SCHEDULES)
        if not 0 <= self.adam_beta1 < 1:
            raise ConfigError(f"--adam_beta1 must be in [0, 1), got {self.adam_beta1}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"--ema_decay must be in [0, 1) (0: no average), got {self.ema_decay}")
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
    # loaded nets: up to this many networks of the train zoo after its first n_nets, never drawn
    # for distillation, score the validation split, so that choices are made on networks that are
    # neither trained against nor the test zoo; none there: the run is not validated
    val_n_nets: int = 10

    def __post_init__(self):
        _choice("--train_nets_type", self.train_nets_type, TRAIN_NETS_TYPES)
        _choice("--test_nets_type", self.test_nets_type, TEST_NETS_TYPES)
        _positive("--n_nets", self.n_nets)
        _positive("--test_n_nets", self.test_n_nets)
        if self.val_n_nets < 0:
            raise ConfigError(f"--val_n_nets must be >= 0, got {self.val_n_nets}")
        if self.sample_n_nets is not None:
            _positive("--sample_n_nets", self.sample_n_nets)
            if self.sample_n_nets > self.n_nets:
                raise ConfigError(f"--sample_n_nets ({self.sample_n_nets}) cannot exceed --n_nets ({self.n_nets})")

    @property
    def nets_per_iteration(self) -> int:
        if self.train_nets_type == "loaded" and self.sample_n_nets is not None:
            return self.sample_n_nets
        return self.n_nets
