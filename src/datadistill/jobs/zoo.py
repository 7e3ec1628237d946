"""The train-zoo job: many networks trained from independent initialisations, stored as one file;
with ``trajectories``, MTT's experts (SGD, every epoch's weights kept) in a zoo of their own."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from .. import artifacts
from ..augment import augmenter
from ..config import RunConfig
from ..data import Dataset
from ..errors import ArtifactError
from ..evaluate import accuracy
from ..nets import SEED_LAYOUT, fresh_nets, zoo_seeds
from ..weights import check_finite
from ..world import World
from ..zoo import Zoo, train_networks, train_trajectories, zoo_dir_for
from .common import (ZOO_FILE, check_writable_folder, load_for, model_for, normalise_config, resolve_device,
                     zoo_file)

ZOO_CHUNK = 10  # networks trained at once (vmapped) and stored per part file
# what an expert zoo's settings add to an ordinary zoo's: a zoo of one kind never matches the other
DAMAGED_HINT = "delete it, or give another --zoo_dir"  # what to do with a damaged zoo file train-zoo would extend
EXPERT_TRAINING = {"trajectories": True, "optimizer": "sgd", "momentum": 0.0, "schedule": "constant"}


def expert_zoo_file(config: RunConfig, phase: str, dataset: str | None = None) -> Path:
    """The file of the expert zoo (trajectories) of (dataset, arch, init, phase), trained on
    batches augmented as ``config.methods.augment`` says."""
    return zoo_dir_for(config.zoo_root, dataset or config.data.dataset, config.model.arch,
                       config.model.init, phase, experts=True, augment=config.methods.augment) / ZOO_FILE


def _zoo_training(config: RunConfig, trajectories: bool = False) -> dict:
    """The settings that make two zoos interchangeable; an expert zoo says so (and how it trained)."""
    d = config.to_dict()
    wanted = {"dataset": config.data.dataset, "arch": config.model.arch, "model": d["model"],
              "outer": d["outer"], "phase": config.phase, "seed_layout": SEED_LAYOUT,
              "val_size": config.data.val_size}  # the images held out of the networks' training
    return {**wanted, **EXPERT_TRAINING, "augment": config.methods.augment} if trajectories else wanted


def train_zoo(config: RunConfig, progress: Callable[[int, int], None] | None = None,
              dataset: Dataset | None = None, world: World = World(), trajectories: bool = False
              ) -> tuple[Zoo, Path]:
    """Train ``config.nets.n_nets`` networks into the zoo of
    (dataset, arch, init, phase); returns the zoo and its file.

    ``trajectories``: an expert zoo for ``--method mtt`` instead (``zoo.train_trajectories``: SGD
    at ``config.outer.lr``, constant, no momentum, ``outer.epochs`` epochs, on batches augmented
    per image as ``config.methods.augment`` says), in its own folder (``expert_zoo_file``),
    holding every network's weights at the start and after each epoch.

    Networks are trained ``ZOO_CHUNK`` at a time and each chunk is stored as a part, so a killed
    run resumes from the last finished part; an existing zoo of the same settings is extended,
    never retrained. ``progress(done, total)`` is called after every part this process trains.
    In a group of processes, part i is trained by rank i mod size, so no two write one file, and
    where there are fewer chunks than processes each chunk is cut into smaller parts
    (``zoo_parts``) so that every process trains; rank 0 joins the parts into the zoo once all
    are done (the zoo folder must be one that all processes see).
    """
    config = normalise_config(config)
    world.agree(lambda: check_writable_folder(config.zoo_root, "--zoo_dir") if world.is_main else None)
    path = expert_zoo_file(config, config.phase) if trajectories else zoo_file(config, config.phase)
    folder, n, wanted = path.parent, config.nets.n_nets, _zoo_training(config, trajectories)
    existing = world.agree(lambda: _matching(artifacts.load_zoo(path, DAMAGED_HINT), wanted, path)
                           if path.exists() else None)
    if existing is not None and len(existing) >= n:
        return existing, path
    dataset = world.agree(lambda: dataset if dataset is not None else load_for(config))
    device = resolve_device(config.device)
    model = model_for(config, dataset)
    m = config.model
    done = len(existing) if existing is not None else 0
    reach = done  # finished parts an interrupted run left from here on are kept, whatever --n_nets
    while True:
        after = sorted(folder.glob(f"part-{reach:06d}-*.pt"))
        if not after:
            break
        reach = int(after[-1].stem.split("-")[2])
    n = max(n, reach)
    parts = zoo_parts(done, n, world.size)
    # parts left by an interrupted run are checked by every process up front: a collective inside
    # the loop below would pair up differently on processes with different numbers of parts
    world.agree(lambda: [_matching(artifacts.load_zoo(p, DAMAGED_HINT), wanted, p)
                         for p in (_part_path(folder, a, b) for a, b, _ in parts) if p.exists()])
    augment = augmenter(config.methods.augment, siamese=False) if trajectories else None  # experts only
    for start, stop, chunk in parts[world.rank::world.size]:
        part_path = _part_path(folder, start, stop)
        if not part_path.exists():
            seeds = zoo_seeds(config.phase, start, stop)
            init = fresh_nets(model, m.init, m.init_param, seeds, device)
            # the batch order (and the experts' augmentations) of the whole chunk, drawn from its
            # first network's seed, so that a network trains alike in a part of any size
            chunk_seed = zoo_seeds(config.phase, chunk, chunk + 1)[0]
            generator = torch.Generator().manual_seed(chunk_seed)
            trajectory = None
            if trajectories:
                # the augmentations draw from a stream of their own, so the batch order is the same
                # with and without them
                trained, trajectory = train_trajectories(
                    model, init, dataset.train, config.outer.epochs, config.outer.batch_size, generator,
                    config.outer.lr, augment=augment, augment_generator=torch.Generator().manual_seed(chunk_seed))
            else:
                trained = train_networks(model, init, dataset.train, config.outer, generator)
            check_finite(trained, f"zoo networks diverged (weights NaN or infinite) at --lr {config.outer.lr:g}; "
                                  f"try a smaller --lr")
            part = Zoo({k: v.cpu() for k, v in trained.items()}, accuracy(model, trained, dataset.test).cpu(),
                       config.data.dataset, config.model.arch, m.init, config.phase,
                       (dataset.in_channels, dataset.image_size, dataset.image_size),
                       dataset.num_classes, wanted, trajectory)
            artifacts.save_zoo(part_path, part)
        if progress is not None:
            progress(stop, n)
    world.barrier()  # every part is on disk
    if world.is_main:
        zoos = [existing] if existing is not None else []
        zoos += [artifacts.load_zoo(_part_path(folder, a, b)) for a, b, _ in parts]
        artifacts.save_zoo(path, Zoo.concat(zoos))
        for stale in folder.glob("part-*.pt"):
            stale.unlink()
    world.barrier()  # the zoo is on disk
    return artifacts.load_zoo(path, DAMAGED_HINT), path


def zoo_parts(done: int, n: int, processes: int) -> list[tuple[int, int, int]]:
    """The parts networks ``done..n-1`` are trained in, as (start, stop, chunk start): chunks of
    ``ZOO_CHUNK`` from ``done``, each cut into near-equal parts where there are fewer chunks than
    ``processes``, so that every process has one (5 networks on 2 processes: 0-1 and 2-4). A part
    trains with its chunk's batch order, so the networks do not depend on the cut."""
    chunks = [(a, min(a + ZOO_CHUNK, n)) for a in range(done, n, ZOO_CHUNK)]
    cuts = -(-processes // len(chunks)) if chunks else 1
    parts = []
    for a, b in chunks:
        k = min(cuts, b - a)
        bounds = [a + (b - a) * i // k for i in range(k + 1)]
        parts += [(lo, hi, a) for lo, hi in zip(bounds, bounds[1:])]
    return parts


def _part_path(folder: Path, start: int, stop: int) -> Path:
    return folder / f"part-{start:06d}-{stop:06d}.pt"


# the outer settings ``zoo.train_networks`` reads; others (the distillation's step-size rate, its
# Adam's beta1) do not change a zoo, and zoos written before such a field existed lack it
ZOO_OUTER = ("epochs", "schedule", "decay_epochs", "decay_factor", "lr", "batch_size")


def _comparable(settings: dict) -> dict:
    # zoos written before the layout (and val_size) were recorded: layout 1, the default hold-out
    settings = {"seed_layout": 1, "val_size": None, **settings}
    if settings.get("trajectories"):  # experts written before --augment trained on plain batches
        settings = {"augment": "none", **settings}
    outer = settings.get("outer")
    return {**settings, "outer": {k: outer.get(k) for k in ZOO_OUTER}} if isinstance(outer, dict) else settings


def _matching(zoo: Zoo, wanted: dict, path: Path) -> Zoo:
    have, want = _comparable(zoo.config), _comparable(wanted)
    if have["seed_layout"] != want["seed_layout"]:  # its networks and new ones would come from two layouts
        raise ArtifactError(f"zoo {path} was drawn by an earlier datadistill (seed layout {have['seed_layout']}, "
                            f"whose test-phase networks repeated the train phase's); delete it and train it again")
    if have != want:
        diff = "; ".join(f"{key}: {old} there, {new} here" for key, old, new in _differences(have, want))
        raise ArtifactError(f"zoo {path} was trained with other settings ({diff}); "
                            f"use the same settings, another --zoo_dir, or delete it")
    return zoo


def _differences(have: dict, want: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, value in the zoo, value asked for) for each setting that differs, sorted."""
    out = []
    for key in sorted(set(have) | set(want)):
        old, new = have.get(key), want.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append((f"{prefix}{key}", old, new))
    return out
