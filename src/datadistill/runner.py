"""Running a configured job end to end: data in, distillation, artifacts out.

This is the seam between the pure core and the outside world: it loads the dataset, builds the
model, wires the checkpoint callback, and writes the result files. The CLI and the Python API
both call ``distill``.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import artifacts
from .config import RunConfig
from .adapt import adaptation_report
from .attack import attack_report
from .data import Dataset, canonical_name, load_dataset
from .distill import Callback, Distillation, check_divides
from .errors import ArtifactError, ConfigError
from .evaluate import EvalResult, accuracy, eval_seeds, evaluate_synthetic, fresh_nets
from .models import Params, arch_class, build_model
from .pretrained import weights_file
from .synthetic import SyntheticSet
from .world import World
from .zoo import Zoo, net_seeds, train_networks, zoo_dir_for


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


def normalise_config(config: RunConfig) -> RunConfig:
    """Check names against the registries and spell them canonically (``cifar10`` -> ``Cifar10``)."""
    arch = arch_class(config.model.arch).__name__
    dataset = canonical_name(config.data.dataset)
    source = None if config.data.source_dataset is None else canonical_name(config.data.source_dataset)
    resolve_device(config.device)
    if config.model.init == "imagenet_pretrained":
        weights_file(config.model.pretrained_weights)  # before minutes of image loading
    return dataclasses.replace(config, model=dataclasses.replace(config.model, arch=arch),
                               data=dataclasses.replace(config.data, dataset=dataset, source_dataset=source))


def load_for(config: RunConfig, shape: tuple[int, int, int] | None = None) -> Dataset:
    """The configured dataset on the configured device, sized for the configured arch, or mapped
    to ``shape`` (C, H, W): the input shape of the loaded networks when adapting."""
    size = arch_class(config.model.arch).default_size
    return load_dataset(config.data.dataset, config.data.root, config.data.download,
                        image_size=size, device=resolve_device(config.device), shape=shape)


class Checkpointer(Callback):
    """Writes the run's state after every outer epoch, so ``--resume`` loses at most one epoch."""

    def __init__(self, path: Path):
        self.path = path

    def on_epoch_end(self, run: Distillation) -> None:
        artifacts.save_checkpoint(self.path, run.state_dict())


# config fields a resumed run may change; anything else must match the checkpoint
# (test: the test phase's own settings; conv_backend: a resumed run keeps its checkpoint's backend)
_RESUMABLE_CHANGES = {("outer", "epochs"), ("device",), ("results_dir",), ("eval_every",),
                      ("data", "root"), ("data", "download"), ("test",), ("conv_backend",)}


# fields added after checkpoints were first written, with the value every older run had (or a
# function of the older run's section giving it: the step sizes moved at the images' rate)
_BEFORE_THE_FIELD = {("attack_weight",): 1.0, ("synthetic", "learn_labels"): False,
                     ("outer", "step_size_lr"): lambda outer: outer["lr"]}


def _check_resumable(saved: dict, current: dict, prefix=()) -> None:
    for key, value in current.items():
        path = prefix + (key,)
        if path in _RESUMABLE_CHANGES:
            continue
        before = _BEFORE_THE_FIELD.get(path)
        old = saved[key] if key in saved else before(saved) if callable(before) else before
        if isinstance(value, dict) and isinstance(old, dict):
            _check_resumable(old, value, path)
        elif old != value:
            raise ArtifactError(f"checkpoint was made with {'.'.join(path)}={old!r}, this run has "
                                f"{value!r}; rerun with the same settings or without --resume")


@dataclass
class RunResult:
    synthetic: SyntheticSet
    final: EvalResult | None
    metrics: dict
    results_dir: Path


def zoo_file(config: RunConfig, phase: str, dataset: str | None = None) -> Path:
    """The zoo file of (dataset, arch, init, phase) under the configured zoo root."""
    return zoo_dir_for(config.zoo_root, dataset or config.data.dataset, config.model.arch,
                       config.model.init, phase) / ZOO_FILE


def load_zoo_nets(config: RunConfig, phase: str, n: int) -> tuple[Params, tuple[int, int, int]]:
    """Stacked weights of the first ``n`` networks of a zoo, checked against the run, and the
    input shape they take."""
    path = zoo_file(config, phase, config.zoo_dataset)
    zoo = artifacts.load_zoo(path)
    zoo.check(config.zoo_dataset, config.model.arch, n, phase)
    return zoo.select(list(range(n))), zoo.input_shape


def loaded_nets(config: RunConfig) -> tuple[Params | None, Params | None, tuple | None]:
    """(train zoo nets, test zoo nets, their input shape) the run asks for; read before anything
    else is done, so a missing zoo fails fast."""
    nets = config.nets
    train = test = shape = None
    if nets.train_nets_type == "loaded":
        train, shape = load_zoo_nets(config, "train", nets.n_nets)
    if nets.test_nets_type == "loaded":
        test, test_shape = load_zoo_nets(config, "test", nets.test_n_nets)
        if shape is not None and test_shape != shape:
            raise ArtifactError(f"train zoo takes {shape} images, test zoo {test_shape}")
        shape = test_shape
    return train, test, shape


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
                       pretrained_weights=config.model.pretrained_weights)


def build_run(config: RunConfig, dataset: Dataset, loaded: tuple = (None, None),
              world: World = World()) -> Distillation:
    model = model_for(config, dataset)
    return Distillation(config, model, dataset.train, dataset.test, dataset.num_classes,
                        dataset.mean, dataset.std, device=resolve_device(config.device),
                        loaded_train=loaded[0], loaded_test=loaded[1], world=world)


# -- the model zoo (--mode train) -----------------------------------------------------------------
ZOO_FILE = "zoo.pt"
ZOO_CHUNK = 10  # networks trained at once (vmapped) and stored per part file


def _zoo_training(config: RunConfig) -> dict:
    """The settings that make two zoos interchangeable."""
    d = config.to_dict()
    return {"dataset": config.data.dataset, "arch": config.model.arch, "model": d["model"],
            "outer": d["outer"], "phase": config.phase}


def train_zoo(config: RunConfig, progress: Callable[[int, int], None] | None = None,
              dataset: Dataset | None = None, world: World = World()) -> tuple[Zoo, Path]:
    """Train ``config.nets.n_nets`` networks (``--mode train``) into the zoo of
    (dataset, arch, init, phase); returns the zoo and its file.

    Networks are trained ``ZOO_CHUNK`` at a time and each chunk is stored as a part, so a killed
    run resumes from the last finished part; an existing zoo of the same settings is extended,
    never retrained. ``progress(done, total)`` is called after every chunk this process trains.
    In a group of processes, chunk i is trained by rank i mod size, so no two write one file;
    rank 0 joins the parts into the zoo once all are done (the zoo folder must be one that all
    processes see).
    """
    config = normalise_config(config)
    path = zoo_file(config, config.phase)
    folder, n, wanted = path.parent, config.nets.n_nets, _zoo_training(config)
    existing = world.agree(lambda: _matching(artifacts.load_zoo(path), wanted, path) if path.exists() else None)
    if existing is not None and len(existing) >= n:
        return existing, path
    dataset = world.agree(lambda: dataset if dataset is not None else load_for(config))
    device = resolve_device(config.device)
    model = model_for(config, dataset)
    m = config.model
    done = len(existing) if existing is not None else 0
    starts = list(range(done, n, ZOO_CHUNK))
    # parts left by an interrupted run are checked by every process up front: a collective inside
    # the loop below would pair up differently on processes with different numbers of chunks
    world.agree(lambda: [_matching(artifacts.load_zoo(p), wanted, p)
                         for p in (_part_path(folder, s, n) for s in starts) if p.exists()])
    for start in starts[world.rank::world.size]:
        stop = min(start + ZOO_CHUNK, n)
        part_path = _part_path(folder, start, n)
        if not part_path.exists():
            seeds = net_seeds(config.phase, start, stop)
            init = fresh_nets(model, m.init, m.init_param, seeds, device)
            generator = torch.Generator().manual_seed(seeds[0])  # batch order of this chunk
            trained = train_networks(model, init, dataset.train, config.outer, generator)
            part = Zoo({k: v.cpu() for k, v in trained.items()}, accuracy(model, trained, dataset.test).cpu(),
                       config.data.dataset, config.model.arch, m.init, config.phase,
                       (dataset.in_channels, dataset.image_size, dataset.image_size),
                       dataset.num_classes, wanted)
            artifacts.save_zoo(part_path, part)
        if progress is not None:
            progress(stop, n)
    world.barrier()  # every part is on disk
    if world.is_main:
        parts = [existing] if existing is not None else []
        parts += [artifacts.load_zoo(_part_path(folder, s, n)) for s in starts]
        artifacts.save_zoo(path, Zoo.concat(parts))
        for stale in folder.glob("part-*.pt"):
            stale.unlink()
    world.barrier()  # the zoo is on disk
    return artifacts.load_zoo(path), path


def _part_path(folder: Path, start: int, n: int) -> Path:
    return folder / f"part-{start:06d}-{min(start + ZOO_CHUNK, n):06d}.pt"


def _matching(zoo: Zoo, wanted: dict, path: Path) -> Zoo:
    if zoo.config != wanted:
        diff = sorted(k for k in wanted if zoo.config.get(k) != wanted[k])
        raise ArtifactError(f"zoo {path} was trained with other settings ({', '.join(diff)}); "
                            f"use the same settings, another --zoo_dir, or delete it")
    return zoo


def _read_checkpoint(path: Path, config: RunConfig) -> dict:
    state = artifacts.load_checkpoint(path)
    _check_resumable(state["config"], config.to_dict())
    return state


def _check_classes(config: RunConfig, dataset: Dataset) -> None:
    for flag in ("attack_class", "target_class"):
        value = getattr(config, flag)
        if config.mode == "distill_attack" and value >= dataset.num_classes:
            raise ConfigError(f"--{flag} {value} is not a class of {dataset.name}; "
                              f"accepted: 0..{dataset.num_classes - 1}")


def distill(config: RunConfig, callbacks: list[Callback] = (), resume: bool = False,
            dataset: Dataset | None = None, world: World = World()) -> RunResult:
    """Distil ``config.data.dataset`` and write distilled.pt, metrics.json, plots and a
    checkpoint under ``config.results_dir``. ``resume`` continues from that checkpoint.

    In a group of processes (``world``) every process calls this; each trains its share of the
    networks, and rank 0 alone reads the checkpoint (and hands it to the others) and writes files.
    Inputs are checked on every process before any work, and a failure on one fails all.
    """
    start = time.perf_counter()
    config = normalise_config(config)
    world.agree(lambda: check_divides(config, world))
    results = Path(config.results_dir)
    ckpt_path = results / artifacts.CHECKPOINT
    state = None
    if resume:  # read before any work, so a bad checkpoint fails fast and writes nothing
        state = world.broadcast(world.agree(lambda: _read_checkpoint(ckpt_path, config) if world.is_main else None))
    loaded = world.agree(lambda: loaded_nets(config))
    dataset = world.agree(lambda: dataset_for(config, loaded[2], dataset))
    world.agree(lambda: _check_classes(config, dataset))
    run = build_run(config, dataset, loaded[:2], world)
    if state is not None:
        world.agree(lambda: run.load_state_dict(state))
    writers = [Checkpointer(ckpt_path)] if world.is_main else []
    synthetic = run.run([*writers, *callbacks])
    if not world.is_main:
        world.barrier()  # rank 0 writes the results; wait, so a failure there fails every process
        return RunResult(synthetic, None, {}, results)
    synthetic.meta.update({"dataset": config.data.dataset, "arch": config.model.arch,
                           "config": config.to_dict()})
    final = EvalResult(tuple(run.final_result["accuracies"])) if run.final_result else None
    report = attack = None
    if config.mode == "distill_adapt":
        report = adaptation_report(run.model, run.current(), run.loaded_train, run.test_nets(True), dataset,
                                   torch.Generator().manual_seed(config.seed))
    if config.mode == "distill_attack":
        attack = attack_report(run.model, run.current(), run.train_nets(), run.test_nets(True), dataset.train,
                               dataset.test, config.attack_class, config.target_class,
                               torch.Generator().manual_seed(config.seed))
    metrics = {
        "final_accuracy": None if final is None else {k: v for k, v in final.to_dict().items()},
        "history": {"evaluations": run.history.evaluations, "losses": run.history.losses},
        "distill_seconds": run.history.seconds,
        "wall_seconds": time.perf_counter() - start,
        "iterations": run.iteration,
        "unroll_backend": run.unroll_backend,  # CPU conv backend the unrolled steps ran on
        "processes": world.size,
        "config": config.to_dict(),
    }
    if report is not None:
        metrics["adaptation"] = report
    if attack is not None:
        metrics["attack"] = attack
        artifacts.plot_per_class(results / "attack_per_class.png", attack)
    artifacts.save_distilled(results / artifacts.DISTILLED, synthetic)
    artifacts.save_image_grids(results / "images", synthetic)
    artifacts.plot_step_sizes(results / "step_sizes.png", synthetic.lrs, synthetic.steps)
    if run.history.evaluations:
        artifacts.plot_accuracy(results / "accuracy.png", run.history.evaluations)
    artifacts.write_json(results / artifacts.METRICS, metrics)
    world.barrier()
    return RunResult(synthetic, final, metrics, results)


def evaluate(synthetic: SyntheticSet, dataset: Dataset, arch: str | None = None,
             n_nets: int = 10, init: str = "xavier", init_param: float = 1.0, seed: int = 0,
             pretrained_weights: str | None = None) -> EvalResult:
    """Train ``n_nets`` fresh networks of ``arch`` on ``synthetic`` and score them on the test split
    (``pretrained_weights``: the file of ``init="imagenet_pretrained"``, else torch's cache)."""
    arch = arch or synthetic.meta.get("arch") or "LeNet"
    if n_nets < 1:
        raise ConfigError(f"n_nets must be positive, got {n_nets}")
    expected = (dataset.in_channels, dataset.image_size, dataset.image_size)
    if tuple(synthetic.images.shape[2:]) != expected:
        raise ConfigError(f"distilled images are {tuple(synthetic.images.shape[2:])}, "
                          f"{dataset.name} images are {expected}")
    device = dataset.train.x.device
    model = build_model(arch, dataset.in_channels, dataset.image_size, dataset.num_classes,
                        pretrained_weights=pretrained_weights)
    nets = fresh_nets(model, init, init_param, eval_seeds(seed, n_nets), device)
    return evaluate_synthetic(model, synthetic.to(device), nets, dataset.test)


# -- the test phase of a distill mode (--phase test) ------------------------------------------------
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
OPTIMIZE_SEED_SHIFT = 500_000  # selection networks: eval_seeds shifted past any evaluation network


def distilled_path(config: RunConfig) -> Path:
    """The distilled set the test phase reads: --distilled, else <results_dir>/distilled.pt."""
    return Path(config.test.distilled or Path(config.results_dir) / artifacts.DISTILLED)


def _read_distilled(config: RunConfig) -> SyntheticSet:
    path = distilled_path(config)
    if not path.is_file():
        raise ArtifactError(f"distilled file {path} does not exist; distil first with the same "
                            f"--results_dir, or pass --distilled PATH")
    return artifacts.load_distilled(path)


def test_phase(config: RunConfig, command: str | None = None, dataset: Dataset | None = None) -> dict:
    """Score the distilled set of a run, or baselines of its shape (``config.test``), and write
    results.json and results.md under ``config.results_dir``; returns what results.json holds.

    Everything that can be wrong with the input (files, zoos, shapes) is checked before any
    scoring, and nothing is written unless the whole run succeeds.
    """
    from .testphase import format_markdown, run_test_phase

    start = time.perf_counter()
    config = normalise_config(config)
    test, nets_cfg, m = config.test, config.nets, config.model
    knn = test.lrs == "nearest_neighbor"
    loaded = _read_distilled(config) if test.needs_distilled else None
    selecting = test.optimize_n_runs is not None and not knn
    same_as_train = not knn and nets_cfg.test_nets_type == "same_as_train"
    if same_as_train and nets_cfg.train_nets_type == "known_init":
        raise ConfigError("--test_nets_type same_as_train with known_init cannot be rebuilt in the test "
                          "phase (the fixed network is not stored); use unknown_init or loaded")
    train_zoo = test_zoo = shape = None
    if nets_cfg.train_nets_type == "loaded" and (selecting or same_as_train):
        train_zoo, shape = load_zoo_nets(config, "train", nets_cfg.n_nets)
    if not knn and nets_cfg.test_nets_type == "loaded":
        test_zoo, shape = load_zoo_nets(config, "test", nets_cfg.test_n_nets)
    if dataset is None and shape is None and config.mode == "distill_adapt" and loaded is not None:
        dataset = load_for(config, tuple(loaded.images.shape[2:]))  # the input space it was distilled in
    dataset = dataset_for(config, shape, dataset)
    got = (dataset.in_channels, dataset.image_size, dataset.image_size)
    if loaded is not None:
        if tuple(loaded.images.shape[2:]) != got:
            raise ConfigError(f"distilled images are {tuple(loaded.images.shape[2:])} (C, H, W), "
                              f"{dataset.name} images are {got}")
        if loaded.num_classes != dataset.num_classes:
            raise ConfigError(f"distilled set has {loaded.num_classes} classes, {dataset.name} has "
                              f"{dataset.num_classes}")
        steps, per_class = loaded.steps, loaded.images.shape[1] // loaded.num_classes
        epochs = test.distill_epochs or loaded.epochs
        loaded = loaded.to(dataset.train.x.device)
    else:
        steps, per_class = config.synthetic.steps, config.synthetic.images_per_class_per_step
        epochs = test.distill_epochs or config.synthetic.epochs
    device = resolve_device(config.device)
    model = model_for(config, dataset)

    n_test = nets_cfg.test_n_nets
    zoo_nets = test_zoo if test_zoo is not None else train_zoo if same_as_train else None
    if zoo_nets is not None:
        fixed = {k: v.to(device) for k, v in zoo_nets.items()}
        test_nets = lambda run: fixed  # noqa: E731 -- a zoo has one set of networks for every run
        test_desc = f"{'test' if test_zoo is not None else 'train'} zoo, {next(iter(fixed.values())).shape[0]}"
    else:  # every run its own fresh networks; run 0 has those a distill run is scored on
        seeds = eval_seeds(config.seed, test.n_runs * n_test)
        test_nets = lambda run: fresh_nets(model, m.init, m.init_param,  # noqa: E731
                                           seeds[run * n_test:(run + 1) * n_test], device)
        test_desc = f"fresh {m.init}, {n_test} per run"
    optimize_nets = None
    if selecting:
        k = test.optimize_n_nets
        if train_zoo is not None:  # successive slices of the train zoo, cycling
            n = nets_cfg.n_nets
            optimize_nets = [{name: v[torch.arange(i * k, (i + 1) * k) % n].to(device)
                              for name, v in train_zoo.items()} for i in range(test.niter)]
        else:
            base = eval_seeds(config.seed, 1)[0] + OPTIMIZE_SEED_SHIFT
            if test.n_runs * n_test > OPTIMIZE_SEED_SHIFT:
                raise ConfigError(f"at most {OPTIMIZE_SEED_SHIFT} test networks per test phase")
            optimize_nets = [fresh_nets(model, m.init, m.init_param,
                                        list(range(base + i * k, base + (i + 1) * k)), device)
                             for i in range(test.niter)]
    row = run_test_phase(model, dataset.train, dataset.test, dataset.num_classes, dataset.mean, dataset.std,
                         test, steps, per_class, epochs, loaded, test_nets, optimize_nets, config.seed,
                         config.outer.batch_size)
    results = {
        "command": command,
        "dataset": dataset.name,
        "arch": m.arch,
        "test_nets": "none (nearest neighbour)" if knn else test_desc,
        "distilled": str(distilled_path(config)) if loaded is not None else None,
        "steps": steps, "images_per_class_per_step": per_class, "epochs": epochs,
        "config": config.to_dict(),
        "rows": [row],
        "wall_seconds": time.perf_counter() - start,
    }
    folder = Path(config.results_dir)
    markdown = format_markdown(results)
    artifacts.write_json(folder / RESULTS_JSON, results)
    artifacts.atomic_write(folder / RESULTS_MD, lambda f: f.write(markdown.encode()))
    return results


test_phase.__test__ = False  # a library function, not a pytest test
