"""The interface every distillation method implements.

A method says three things: what the synthetic set starts as (``initial``), the scalar the outer
optimiser minimises given the set, this iteration's networks and a real batch (``loss``), and what
it adds to the final report (``report``). Everything else (optimiser, schedule, networks, resume,
processes, evaluation) belongs to the outer loop and the job around it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, NamedTuple

import torch
import torch.nn as nn

from .. import artifacts
from ..baselines import herding_sample
from ..data import Split, class_balanced_sample
from ..errors import ConfigError
from ..factorize import check_factor, encode
from ..models import Params
from ..synthetic import LearnableSet, SyntheticSet, class_major_labels, noise_images

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..nets import NetSource
    from ..runtime import Runtime


class MethodLoss(NamedTuple):
    """``objective``: a scalar whose gradient w.r.t. the learned tensors is this process's share of
    the outer gradient (it need not equal the loss: a surrogate with the right gradient is fine);
    ``value``: this process's share of the loss to report, detached (the shares sum to the loss)."""

    objective: torch.Tensor
    value: torch.Tensor


@dataclass
class Setup:
    """What a method may read when it builds its starting set and its report.

    ``train`` is the only real data the optimisation sees; ``val`` serves every choice a report
    makes (a baseline's step size); ``test`` is read once, for the final figures.
    """

    model: nn.Module
    train: Split
    val: Split | None
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    generator: torch.Generator  # the run's stream
    seed: int  # the run's seed, for reports that draw their own baselines


def real_start(setup: Setup, per_class: int, image_init: str, source: dict[int, int] | None = None
               ) -> torch.Tensor:
    """``per_class`` training images of each class, class by class, on the CPU: random ones
    (``image_init`` "real", from the run's stream) or herding's picks ("herding": the images whose
    running mean tracks the class mean, a start that already covers the class; no random draw).
    ``source`` as in ``data.class_balanced_sample``."""
    if image_init == "herding":
        return herding_sample(setup.train, per_class, setup.num_classes, source)[0].cpu()
    return class_balanced_sample(setup.train, per_class, setup.num_classes, setup.generator, source)[0].cpu()


def one_batch_start(setup: Setup, ipc: int, image_init: str, factor: int = 1, init_from: str | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The start of a set held as one batch (dm, gm, mtt): stored images (1, ipc * K, C, H, W) on
    the CPU and their labels (1, ipc * K), class-major. ``image_init`` "real" or "herding":
    training images of each class (``real_start``), ``factor ** 2`` of them encoded into each
    stored image when ``factor`` > 1 (IDC's start); "noise": N(0, 1) in normalised space.
    ``init_from``: a ``distilled.pt`` whose stored images are the start instead (``stored_start``)."""
    k, shape = setup.num_classes, tuple(setup.train.x.shape[1:])
    check_factor(factor, *shape[1:])
    if init_from is not None:
        images = stored_start(setup, ipc, factor, init_from)
    elif image_init == "noise":
        images = noise_images(1, ipc * k, shape, setup.generator)
    else:
        images = encode(real_start(setup, ipc * factor * factor, image_init), factor).unsqueeze(0)
    return images, class_major_labels(1, ipc, k)


def stored_start(setup: Setup, ipc: int, factor: int, path: str) -> torch.Tensor:
    """The stored images (1, ipc * K, C, H, W) of another run's ``distilled.pt`` at ``path``, on
    the CPU: a set one method made, continued by another (gm from a dm set, say). The file must
    hold one class-major batch of ``ipc`` stored images per class of this dataset, normalised
    alike, in the same multi-formation ``factor``; its labels, learned or not, are not read beyond
    that check (each method starts its own). ``ConfigError`` otherwise, saying what differs."""
    found = artifacts.load_distilled(path)
    k, shape = setup.num_classes, tuple(setup.train.x.shape[1:])
    what = f"--init_from {path}"
    file_factor = int(found.meta.get("factor", 1))
    if file_factor != factor:
        raise ConfigError(f"{what} holds a set of --factor {file_factor}, this run has --factor {factor}; "
                          f"give the same --factor")
    stored = found.meta.get("stored_images") if factor > 1 else found.images
    if not isinstance(stored, torch.Tensor):
        raise ConfigError(f"{what} has --factor {factor} but no stored images; expected a distilled.pt "
                          f"written by datadistill")
    if found.num_classes != k or tuple(stored.shape[2:]) != shape:
        raise ConfigError(f"{what} holds images of {tuple(stored.shape[2:])} in {found.num_classes} classes; "
                          f"this dataset has {shape} in {k}")
    if tuple(stored.shape[:2]) != (1, ipc * k):
        raise ConfigError(f"{what} holds {tuple(stored.shape[:2])} (steps, images) stored images; this run "
                          f"needs one batch of --ipc {ipc} x {k} classes = (1, {ipc * k})")
    if not torch.equal(found.hard_labels.cpu(), class_major_labels(1, ipc * factor * factor, k)):
        raise ConfigError(f"{what} is not ordered class by class with {ipc} stored images each, as dm, gm "
                          f"and mtt write their sets")
    if not (torch.allclose(torch.tensor(found.mean), torch.tensor(setup.mean))
            and torch.allclose(torch.tensor(found.std), torch.tensor(setup.std))):
        raise ConfigError(f"{what} was normalised with mean {list(found.mean)}, std {list(found.std)}; "
                          f"this dataset's are {list(setup.mean)}, {list(setup.std)}: another dataset's set")
    return stored.detach().to("cpu", torch.get_default_dtype()).clone()


class Method:
    """Base class; subclasses are registered by ``methods.register``."""

    name: ClassVar[str] = ""
    protocol: ClassVar[str] = "from_scratch"  # how its sets are scored unless --protocol says otherwise
    learns_step_sizes: ClassVar[bool] = False  # whether its sets hold step sizes to replay unrolled

    @classmethod
    def from_config(cls, config: "RunConfig", model: nn.Module, runtime: "Runtime") -> "Method":
        """The method as a run's configuration asks for it."""
        raise NotImplementedError

    def initial(self, setup: Setup) -> LearnableSet:
        raise NotImplementedError

    def loss(self, learned: LearnableSet, nets: Params, real_x: torch.Tensor, real_y: torch.Tensor,
             total_nets: int) -> MethodLoss:
        """``nets``: this process's share of the iteration's initial weights (k, ...);
        ``total_nets``: networks over all processes, the mean's denominator."""
        raise NotImplementedError

    def net_source(self, config: "RunConfig", model: nn.Module, device, generator: torch.Generator,
                   world) -> "NetSource | None":
        """Where this method's networks come from, when not from ``--train_nets_type`` (e.g. the
        expert trajectories of mtt); None: the source ``--train_nets_type`` names."""
        return None

    def state_dict(self) -> dict:
        """State the method keeps across iterations (e.g. a network it trains along), for checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def backward_context(self, learned: LearnableSet):
        """Process-wide settings under which the outer loop differentiates ``loss``'s objective."""
        return contextlib.nullcontext()

    def validation_split(self, val: Split) -> Split:
        """What a snapshot is validated against: the validation split with the labels the
        method asks the trained networks to predict (its own images, other labels for an attack)."""
        return val

    def report(self, synthetic: SyntheticSet, setup: Setup, test: Split, train_nets: Params | None,
               test_nets: Params, progress: Callable[[str], None]) -> dict:
        """Figures beyond the test accuracy, computed once after distillation; ``progress(what)``
        is called before each long part."""
        return {}
