"""What every job needs before its work: a checked config, the device, the data, the model, zoos."""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import shutil
from pathlib import Path

import torch

from .. import artifacts
from ..config import DataConfig, RunConfig
from ..data import Dataset, canonical_name, check_source_flags, dataset_channels, load_dataset
from ..errors import ArtifactError, ConfigError
from ..models import Params, arch_class, build_model
from ..nets import SEED_LAYOUT
from ..pretrained import weights_file
from ..weights import check_pretrained_fits
from ..zoo import Zoo, zoo_dir_for

ZOO_FILE = "zoo.pt"


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``, checked against what this machine has."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; accepted: cpu, cuda, cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r}; accepted: cpu, cuda, cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device} asked for, but this machine has no CUDA GPU; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device} asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    return dev


RECOMPILE_LIMIT = 64  # graphs per compiled function (prepare_compile)


def prepare_compile(device: torch.device) -> None:
    """Fail before any work where ``--compile`` cannot build its kernels on ``device``: inductor
    writes C++ for a CPU (a compiler: $CXX, g++, clang++ or c++) and triton kernels for a GPU.
    Then set what compiling needs process-wide: dynamo keeps one cache for every compiled
    ``functools.partial`` (``torch.compile`` wraps them all in one function), with a graph per
    architecture and batch shape, and past its default of 8 graphs it runs the rest uncompiled,
    with one warning; a multi-architecture ``evaluate`` reaches 8 (4 architectures, a full and a
    last batch), so the limit is raised to ``RECOMPILE_LIMIT``."""
    if device.type == "cpu":
        # inductor's C++ build looks for CUDA and warns that this machine has none: not news on a CPU run
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++", "c++"]
        if not any(shutil.which(name) for name in names):
            raise ConfigError(f"--compile on a CPU needs a C++ compiler on PATH ({', '.join(names)}), and none "
                              f"is there; install one or drop --compile")
    elif importlib.util.find_spec("triton") is None:
        raise ConfigError("--compile on a GPU needs the triton package, which is not installed; install it "
                          "or drop --compile")
    import torch._dynamo.config

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)


def check_writable_folder(path: str | os.PathLike, flag: str) -> None:
    """Fail before any work where ``path`` cannot hold the job's files (a file is there, a file
    stands on its way, or no write is allowed), rather than after it when writing them. A folder
    made to find out is removed again, so a failing run still leaves nothing behind."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{flag} {path} is a file; give a folder")
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{flag} {path} is not writable")
        return
    made = []
    try:
        for folder in reversed([path, *path.parents]):  # from the root down
            if not folder.exists():
                folder.mkdir()
                made.append(folder)
    except OSError as e:
        raise ConfigError(f"{flag} {path} cannot be created: {e.strerror}") from None
    finally:
        for folder in reversed(made):
            folder.rmdir()


def normalise_config(config: RunConfig, dataset_given: bool = False) -> RunConfig:
    """Check names against the registries and spell them canonically (``cifar10`` -> ``Cifar10``);
    with ``dataset_given`` (an in-memory dataset handed to the job) its name is taken as it is."""
    from ..methods import method_class

    method_class(config.method)
    arch = arch_class(config.model.arch).__name__
    dataset = config.data.dataset if dataset_given else canonical_name(config.data.dataset)
    source = None if config.data.source_dataset is None else canonical_name(config.data.source_dataset)
    if not dataset_given:
        check_data_flags(dataclasses.replace(config.data, dataset=dataset, source_dataset=source))
        if config.mode == "distill_adapt" and source == dataset:
            raise ConfigError(f"--source_dataset {source} is the --dataset itself; adaptation distils for networks "
                              f"of another dataset (e.g. --dataset USPS --source_dataset MNIST); for networks "
                              f"trained on {dataset}, use --mode distill_basic --train_nets_type loaded")
    device = resolve_device(config.device)
    if config.compile:
        prepare_compile(device)
    if config.zoo_dir and os.path.exists(config.zoo_dir) and not os.path.isdir(config.zoo_dir):
        raise ConfigError(f"--zoo_dir {config.zoo_dir} is a file; give a folder")
    if config.model.init == "imagenet_pretrained":  # all before minutes of image loading
        # adaptation maps the target's images into the shape of the source the networks trained on
        inputs = source if config.mode == "distill_adapt" and source is not None else dataset
        check_pretrained_fits(arch_class(arch), dataset_channels(inputs))
        weights_file(config.model.pretrained_weights)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, arch=arch),
                               data=dataclasses.replace(config.data, dataset=dataset, source_dataset=source))


def check_data_flags(data: DataConfig) -> None:
    """``--dataset_root`` and ``--download`` refused where none of the datasets the run reads (the
    dataset, and the source when adapting; canonical names) would use them."""
    check_source_flags([data.dataset, *([data.source_dataset] if data.source_dataset else [])], data.root,
                       data.download)


def load_for(config: RunConfig, shape: tuple[int, int, int] | None = None) -> Dataset:
    """The configured dataset on the configured device, sized for the configured arch, or mapped
    to ``shape`` (C, H, W): the input shape of the loaded networks when adapting."""
    size = arch_class(config.model.arch).default_size
    return load_dataset(config.data.dataset, config.data.root, config.data.download, image_size=size,
                        device=resolve_device(config.device), shape=shape, val_size=config.data.val_size)


def dataset_for(config: RunConfig, shape: tuple | None, dataset: Dataset | None = None) -> Dataset:
    """The run's dataset, checked against the loaded networks' input ``shape``; when adapting, the
    target is mapped into that shape (the source networks' input space)."""
    if dataset is None:
        dataset = load_for(config, shape if config.mode == "distill_adapt" else None)
    got = (dataset.in_channels, dataset.image_size, dataset.image_size)
    if shape is not None and tuple(shape) != got:
        raise ArtifactError(f"the zoo's networks take {tuple(shape)} images, {dataset.name} has {got}")
    return dataset


def model_for(config: RunConfig, dataset: Dataset):
    """The configured arch, shaped for ``dataset``'s images and classes."""
    return build_model(config.model.arch, dataset.in_channels, dataset.image_size, dataset.num_classes,
                       pretrained_weights=config.model.pretrained_weights, width=config.model.width)


def zoo_file(config: RunConfig, phase: str, dataset: str | None = None) -> Path:
    """The zoo file of (dataset, arch, init, phase) under the configured zoo root."""
    return zoo_dir_for(config.zoo_root, dataset or config.data.dataset, config.model.arch,
                       config.model.init, phase) / ZOO_FILE


def checked_zoo(config: RunConfig, phase: str, n: int) -> Zoo:
    """The zoo of ``phase`` for the run's networks, refused unless it holds at least ``n`` networks
    of the run's dataset (the source's when adapting), arch and layout."""
    path = zoo_file(config, phase, config.zoo_dataset)
    zoo = artifacts.load_zoo(path)
    zoo.check(config.zoo_dataset, config.model.arch, n, phase)
    if phase == "test" and zoo.config.get("seed_layout", 1) != SEED_LAYOUT:
        raise ArtifactError(f"the test zoo {path} was drawn by an earlier datadistill, whose test-phase networks "
                            f"started from the train phase's weights; delete it and train it again "
                            f"(datadistill train-zoo --phase test)")
    held_out = zoo.config.get("val_size")
    if "val_size" in zoo.config and config.zoo_dataset == config.data.dataset and held_out != config.data.val_size:
        shown = lambda v: "the default" if v is None else v  # noqa: E731
        raise ArtifactError(f"the {phase} zoo {path} trained with --val_size {shown(held_out)}, this run holds out "
                            f"{shown(config.data.val_size)}: its networks may have trained on this run's validation "
                            f"images; give the zoo's --val_size, or train a zoo with this one")
    c, h, _ = zoo.input_shape
    zoo.check_layout(build_model(config.model.arch, c, h, zoo.num_classes, width=config.model.width),
                     f"the {phase} zoo in {path}", "it again with datadistill train-zoo")
    return zoo


def load_zoo_nets(config: RunConfig, phase: str, n: int, held_out: int = 0
                  ) -> tuple[Params, tuple[int, int, int], Params | None]:
    """Stacked weights of the first ``n`` networks of a zoo, checked against the run, the input
    shape they take, and up to ``held_out`` networks after them (None when there are none)."""
    zoo = checked_zoo(config, phase, n)
    rest = list(range(n, min(len(zoo), n + held_out)))
    return zoo.select(list(range(n))), zoo.input_shape, zoo.select(rest) if rest else None


def loaded_nets(config: RunConfig) -> tuple[Params | None, Params | None, Params | None, tuple | None]:
    """(train zoo nets, held-out train zoo nets for validation, test zoo nets, their input shape)
    the run asks for; read before anything else is done, so a missing zoo fails fast."""
    nets = config.nets
    train = val = test = shape = None
    if nets.train_nets_type == "loaded":
        train, shape, val = load_zoo_nets(config, "train", nets.n_nets, nets.val_n_nets)
    if nets.test_nets_type == "loaded":
        test, test_shape, _ = load_zoo_nets(config, "test", nets.test_n_nets)
        if shape is not None and test_shape != shape:
            raise ArtifactError(f"train zoo takes {shape} images, test zoo {test_shape}")
        shape = test_shape
    return train, val, test, shape


def teacher_nets(config: RunConfig) -> tuple[Params, float]:
    """Every network of the run's train zoo (stacked weights) and their mean test accuracy, the
    teachers of ``--label_mode teacher``; read before any work, so a missing zoo fails fast."""
    path = zoo_file(config, "train")
    if not path.is_file():
        width = "" if config.model.width is None else f" --width {config.model.width}"
        raise ArtifactError(f"--label_mode teacher reads trained networks from {path}, and there are none; "
                            f"train them first: datadistill train-zoo --dataset {config.data.dataset} --arch "
                            f"{config.model.arch}{width} --init {config.model.init} --n_nets 5 --epochs 2 "
                            f"--zoo_dir {config.zoo_root}")
    zoo = checked_zoo(config, "train", 1)
    return zoo.params, float(zoo.accuracies.mean())


def teachers_report(teachers: Params, temperature: float, zoo_test_accuracy: float) -> dict:
    """What metrics.json (``teacher_labels``) and results.json (``labels.teacher``) say of the
    teachers: how many, the temperature, their zoo's mean test accuracy."""
    return {"networks": len(next(iter(teachers.values()))), "temperature": temperature,
            "zoo_test_accuracy": zoo_test_accuracy}


def check_classes(config: RunConfig, dataset: Dataset) -> None:
    for flag in ("attack_class", "target_class"):
        value = getattr(config, flag)
        if config.mode == "distill_attack" and value >= dataset.num_classes:
            raise ConfigError(f"--{flag} {value} is not a class of {dataset.name}; "
                              f"accepted: 0..{dataset.num_classes - 1}")
