"""The test phase job: score a distilled set, or baselines of its shape, and write a table."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from .. import artifacts
from ..config import RunConfig
from ..data import Dataset, canonical_name, dataset_names
from ..errors import ArtifactError, ConfigError
from ..models import arch_class, check_image_size
from ..nets import eval_seeds, fresh_nets, selection_seeds
from ..synthetic import SyntheticSet
from ..teacher import relabelled
from ..testphase import TestPhaseInputs, format_markdown, run_test_phase
from .common import (check_data_flags, check_writable_folder, dataset_for, load_for, load_zoo_nets, model_for,
                     normalise_config, resolve_device, teacher_nets, teachers_report)

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


def distilled_path(config: RunConfig) -> Path:
    """The distilled set the test phase reads: --distilled, else <results_dir>/distilled.pt."""
    return Path(config.test.distilled or Path(config.results_dir) / artifacts.DISTILLED)


def _read_distilled(config: RunConfig) -> SyntheticSet:
    path = distilled_path(config)
    if not path.exists():  # load_distilled names the other ways a path fails
        raise ArtifactError(f"distilled file {path} does not exist; distil first with the same "
                            f"--results_dir, or pass --distilled PATH")
    return artifacts.load_distilled(path)


# the shape flags a loaded file fixes: (flag, dotted field)
SHAPE_FLAGS = (("--distill_steps", "synthetic.steps"),
               ("--distilled_images_per_class_per_step", "synthetic.images_per_class_per_step"),
               ("--distill_epochs", "synthetic.epochs"))


def test_phase(config: RunConfig, command: str | None = None, dataset: Dataset | None = None,
               progress=lambda what: None, typed: dict[str, object] | None = None) -> dict:
    """Score the distilled set of a run, or baselines of its shape (``config.test``), and write
    results.json and results.md under ``config.results_dir``; returns what results.json holds.
    ``typed``: the fields typed on the command line (dotted, as ``build_config`` takes them). A
    loaded file fixes the shape, so a shape field (``SHAPE_FLAGS``) that disagrees with it is
    refused rather than ignored; without ``data.dataset`` the file's own dataset is scored.

    Everything that can be wrong with the input (files, zoos, shapes) is checked before any
    scoring, and nothing is written unless the whole run succeeds.
    """
    start = time.perf_counter()
    config = normalise_config(config)
    check_writable_folder(config.results_dir, "--results_dir")
    test, nets_cfg, m = config.test, config.nets, config.model
    knn = test.lrs == "nearest_neighbor"
    from_scratch = config.evaluation.protocol == "from_scratch"
    if from_scratch and test.lrs == "fix":
        raise ConfigError("--test_distilled_lrs fix gives step sizes, and --protocol from_scratch uses none (it "
                          "trains with SGD at --scratch_lr); leave it out, or use --protocol unrolled")
    needs_file = test.needs_distilled and not (from_scratch and test.images != "loaded" and test.distilled is None)
    loaded = _read_distilled(config) if needs_file else None
    typed = {} if typed is None else typed
    if loaded is not None:  # before the dataset is loaded at a size the set could not match
        check_image_size(arch_class(m.arch), loaded.images.shape[-1], f"{distilled_path(config)}'s images have")
    if loaded is not None and "data.dataset" not in typed and loaded.meta.get("dataset") in dataset_names() \
            and dataset is None:
        # the set's own dataset, as evaluate does, rather than the default MNIST
        config = dataclasses.replace(config, data=dataclasses.replace(
            config.data, dataset=canonical_name(loaded.meta["dataset"])))
        check_data_flags(config.data)
    selecting = test.optimize_n_runs is not None and not knn
    same_as_train = not knn and nets_cfg.test_nets_type == "same_as_train"
    fixed = None
    if same_as_train and nets_cfg.train_nets_type == "known_init":
        fixed = None if loaded is None else loaded.meta.get("init_params")
        if fixed is None:
            raise ConfigError("--test_nets_type same_as_train with known_init needs the distilled file's "
                              "fixed networks (init_params), and it has none; use unknown_init or loaded")
        meta = loaded.meta
        file_nets = (meta.get("arch"), meta.get("init"), meta.get("config", {}).get("model", {}).get("width"))
        if file_nets != (m.arch, m.init, m.width):
            raise ConfigError(f"the file's fixed networks are {_networks(*file_nets)}; --arch/--init/--width ask for "
                              f"{_networks(m.arch, m.init, m.width)}; give the file's, or --test_nets_type unknown_init")
    train_zoo = test_zoo = shape = None
    if nets_cfg.train_nets_type == "loaded" and (selecting or same_as_train):
        train_zoo, shape, _ = load_zoo_nets(config, "train", nets_cfg.n_nets)
    if not knn and nets_cfg.test_nets_type == "loaded":
        test_zoo, shape, _ = load_zoo_nets(config, "test", nets_cfg.test_n_nets)
    teachers = teacher_accuracy = None
    if config.synthetic.teacher_labels:
        teachers, teacher_accuracy = teacher_nets(config)
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
        for (flag, field), have in zip(SHAPE_FLAGS, (steps, per_class, loaded.epochs)):
            value = typed.get(field)
            if value is not None and value != have:
                hint = "; --test_distill_epochs sets the passes scored" if field == "synthetic.epochs" else ""
                raise ConfigError(f"{flag} {value} disagrees with {distilled_path(config)}, which holds {have}; a "
                                  f"loaded set is scored in its own shape{hint}")
        run = loaded.meta.get("config", {})
        for field in ("attack_class", "target_class"):  # read by no row: the file's attack is the one scored
            value = typed.get(field)
            if value is not None and run.get(field) is not None and value != run[field]:
                raise ConfigError(f"--{field} {value} disagrees with {distilled_path(config)}, distilled with "
                                  f"{field} {run[field]}; the test phase scores the set as it was distilled")
        if loaded.epochs == 0 and not from_scratch and test.lrs == "loaded":
            raise ConfigError(f"{distilled_path(config)} has no step sizes (a set of a method scored from "
                              f"scratch); score it with --protocol from_scratch, or give --test_distilled_lrs fix LR")
        # a set without step sizes (dm, gm) is scored from scratch, where the passes play no part
        epochs = test.distill_epochs or loaded.epochs or 1
        loaded = loaded.to(dataset.train.x.device)
    else:
        steps, per_class = config.synthetic.steps, config.synthetic.images_per_class_per_step
        epochs = test.distill_epochs or config.synthetic.epochs
    device = resolve_device(config.device)
    model = model_for(config, dataset)

    n_test = nets_cfg.test_n_nets
    zoo_nets = test_zoo
    if zoo_nets is None and same_as_train:  # the networks the set was distilled for
        zoo_nets = train_zoo if train_zoo is not None else fixed
    if zoo_nets is not None:
        fixed = {k: v.to(device) for k, v in zoo_nets.items()}
        test_nets = lambda run: fixed  # noqa: E731 -- a zoo has one set of networks for every run
        what = "test zoo" if test_zoo is not None else "train zoo" if train_zoo is not None else "fixed init"
        test_desc = f"{what}, {next(iter(fixed.values())).shape[0]}"
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
            chooser_seeds = selection_seeds(config.seed, k * test.niter)
            optimize_nets = [fresh_nets(model, m.init, m.init_param, chooser_seeds[i * k:(i + 1) * k], device)
                             for i in range(test.niter)]
    relabel = None
    if teachers is not None:
        teachers = {k: v.to(device) for k, v in teachers.items()}
        relabel = lambda s: relabelled(s, model, teachers, config.synthetic.label_temperature)  # noqa: E731
    row = run_test_phase(test, TestPhaseInputs(model, dataset, steps, per_class, epochs, loaded, test_nets,
                                               optimize_nets, config.seed, config.outer.batch_size,
                                               config.evaluation, progress, relabel, config.compile))
    results = {
        "command": command,
        "dataset": dataset.name,
        "arch": m.arch,
        "test_nets": "none (nearest neighbour)" if knn else test_desc,
        "distilled": str(distilled_path(config)) if loaded is not None else None,
        "steps": steps, "images_per_class_per_step": per_class, "epochs": epochs,
        "protocol": config.evaluation.protocol or "unrolled",
        "split": test.score_on,  # the split the rows' accuracies are on: "test", or "val" (to choose)
        "config": config.to_dict(),
        "rows": [row],
        # the sets' labels: their own, or (--label_mode teacher) the train zoo's networks'
        "labels": "own" if teachers is None else {
            "teacher": teachers_report(teachers, config.synthetic.label_temperature, teacher_accuracy)},
        "wall_seconds": time.perf_counter() - start,
    }
    folder = Path(config.results_dir)
    markdown = format_markdown(results)
    artifacts.write_json(folder / RESULTS_JSON, results)
    artifacts.atomic_write(folder / RESULTS_MD, lambda f: f.write(markdown.encode()))
    return results


test_phase.__test__ = False  # a library function, not a pytest test


def _networks(arch: str, init: str, width: int | None) -> str:
    return f"{arch} with {init} init" + (f", width {width}" if width else "")
