"""The distill job: config in; distilled.pt, metrics.json, pictures and a checkpoint out."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import artifacts
from ..checkpoint import Checkpointer, load_state_dict, read_checkpoint
from ..config import PRESETS, RunConfig
from ..data import Dataset
from ..distill import Callback, Distillation
from ..errors import ConfigError
from ..augment import augmenter
from ..evaluate import EvalResult, score_set
from ..methods import Setup, method_class
from ..models import Params
from ..nets import FixedNets, FreshNets, NetSource, ZooNets
from ..runtime import Runtime
from ..synthetic import SyntheticSet
from ..world import World
from ..teacher import relabelled
from .common import (check_classes, check_writable_folder, dataset_for, loaded_nets, model_for, normalise_config,
                     resolve_device, teacher_nets, teachers_report)
from .scoring import my_part, scoring_nets


@dataclass
class RunResult:
    synthetic: SyntheticSet
    final: EvalResult | None  # on the test split, read once at the end
    metrics: dict
    results_dir: Path


def check_divides(config: RunConfig, world: World) -> None:
    """The networks of every outer step are split equally over the processes."""
    world.check_divides("--n_nets", config.nets.n_nets)
    if config.nets.train_nets_type == "loaded" and config.nets.sample_n_nets is not None:
        world.check_divides("--sample_n_nets", config.nets.sample_n_nets)


def net_source(config: RunConfig, model, device, generator, zoo, world: World) -> NetSource:
    nets, m = config.nets, config.model
    if nets.train_nets_type == "known_init":
        return FixedNets(model, m.init, m.init_param, nets.n_nets, device, generator, world)
    if nets.train_nets_type == "loaded":
        return ZooNets(zoo, nets.nets_per_iteration, device, world)
    return FreshNets(model, m.init, m.init_param, nets.n_nets, device, world)


def distill(config: RunConfig, callbacks: list[Callback] = (), resume: bool = False,
            dataset: Dataset | None = None, world: World = World()) -> RunResult:
    """Distil ``config.data.dataset`` and write the results under ``config.results_dir``;
    ``resume`` continues from the checkpoint there.

    In a group of processes (``world``) every process calls this; each trains its share of the
    networks, rank 0 alone reads the checkpoint (and hands it to the others) and writes files.
    Inputs are checked on every process before any work, and a failure on one fails all.
    """
    start = time.perf_counter()
    config = normalise_config(config, dataset_given=dataset is not None)
    world.agree(lambda: check_divides(config, world))
    world.agree(lambda: check_writable_folder(config.results_dir, "--results_dir") if world.is_main else None)
    results = Path(config.results_dir)
    ckpt_path = results / artifacts.CHECKPOINT
    state = None
    if resume:  # read before any work, so a bad checkpoint fails fast and writes nothing
        state = world.broadcast(world.agree(lambda: read_checkpoint(ckpt_path, config) if world.is_main else None))
    zoo_train, zoo_val, zoo_test, shape = world.agree(lambda: loaded_nets(config))
    teachers, teacher_accuracy = world.agree(lambda: teacher_nets(config)) \
        if config.synthetic.teacher_labels else (None, None)
    dataset = world.agree(lambda: dataset_for(config, shape, dataset))
    world.agree(lambda: check_classes(config, dataset))
    device = resolve_device(config.device)
    model = model_for(config, dataset)
    generator = torch.Generator().manual_seed(config.seed)
    with Runtime(device, config.conv_backend, world) as runtime:
        method = method_class(config.method).from_config(config, model, runtime)
        setup = Setup(model, dataset.train, dataset.val, dataset.num_classes, dataset.mean, dataset.std,
                      device, generator, config.seed)
        learned = method.initial(setup)
        source = method.net_source(config, model, device, generator, world) \
            or net_source(config, model, device, generator, zoo_train, world)
        score = scoring_nets(config, model, device, world, source, zoo_test)

        protocol = config.evaluation.protocol or method.protocol
        scratch = (config.evaluation.scratch_epochs, config.evaluation.scratch_lr,
                   config.evaluation.scratch_batch_size)
        augment = augmenter(config.evaluation.augment or config.methods.augment, siamese=False)

        if teachers is not None:
            teachers = {k: v.to(device) for k, v in teachers.items()}

        def labelled(synthetic: SyntheticSet) -> SyntheticSet:
            """The set as it is scored and written: with --label_mode teacher, labelled by the
            teachers (the method distils with its own labels; dm reads none)."""
            if teachers is None:
                return synthetic
            return relabelled(synthetic, model, teachers, config.synthetic.label_temperature)

        def scored(synthetic: SyntheticSet, split, nets: Params) -> EvalResult:
            mine = score_set(model, synthetic, nets, split, protocol, scratch, config.seed, augment, config.compile)
            return EvalResult(tuple(world.gather(list(mine.accuracies))))

        # with a train zoo, held-out networks of it validate (neither trained against nor the test
        # zoo's); a zoo with none left over is not validated
        loaded = config.nets.train_nets_type == "loaded"
        val_nets = my_part(zoo_val, device, world) if zoo_val is not None else None

        val_split = None if dataset.val is None else method.validation_split(dataset.val)

        def validate(synthetic: SyntheticSet) -> EvalResult:
            return scored(labelled(synthetic), val_split, val_nets if loaded else score(False))

        validated = dataset.val is not None and (val_nets is not None or not loaded)
        validation_nets = None if not validated else (
            f"{len(next(iter(zoo_val.values())))} held-out train zoo networks" if loaded else "the scoring networks")
        # a preset's early stopping lapses where nothing validates; one asked for by name is refused
        if config.keep_best and not validated and not PRESETS[config.preset].get("keep_best"):
            raise ConfigError("--keep_best picks the snapshot that validates best, and this run has no validation "
                              "(--val_size 0, or a zoo without held-out networks: see --val_n_nets)")
        if config.eval_every and not validated and not PRESETS[config.preset].get("eval_every"):
            raise ConfigError("--eval_every sets how often the set is validated, and this run has no validation "
                              "(--val_size 0, or a zoo without held-out networks: see --val_n_nets)")
        run = Distillation(method, learned, source, config.outer, dataset.train, generator, config.eval_every,
                           validate if validated else None, world, config.keep_best and validated)
        if state is not None:
            runtime.backend = state["conv_backend"] or runtime.backend
            world.agree(lambda: load_state_dict(run, state, world.size))
        writers = [Checkpointer(ckpt_path, config, world.size, lambda: runtime.backend)] if world.is_main else []
        synthetic = labelled(run.run([*writers, *callbacks]))
        progress = lambda what: [cb.on_report(run, what) for cb in callbacks]  # noqa: E731
        if not config.skip_test:
            progress(f"scoring on the test split with {config.nets.test_n_nets} networks")
        # the test split, read once: the final figure
        final = None if config.skip_test else scored(synthetic, dataset.test, score(False))
        if not world.is_main:
            world.barrier()  # rank 0 writes the results; wait, so a failure there fails every process
            return RunResult(synthetic, final, {}, results)
        train_all = zoo_train if zoo_train is not None else getattr(source, "params", None)
        report = {} if config.skip_test else method.report(synthetic, setup, dataset.test, train_all, score(True),
                                                           progress)
        backend = runtime.backend
        if teachers is not None:
            report["teacher_labels"] = teachers_report(teachers, config.synthetic.label_temperature,
                                                       teacher_accuracy)
    synthetic.meta.update(file_meta(config, source))
    metrics = {
        "final_accuracy": None if final is None else final.to_dict(),
        "protocol": protocol,
        "validation": run.selected_evaluation(),  # of the set written (the best with --keep_best)
        "validation_nets": validation_nets,
        "history": {"evaluations": run.history.evaluations, "losses": run.history.losses},
        "distill_seconds": run.history.seconds,
        "validation_seconds": sum(e.get("seconds", 0.0) for e in run.history.evaluations),
        "wall_seconds": time.perf_counter() - start,
        "iterations": run.iteration,
        # what each iteration read: --batch_size, capped at the training split (config keeps the typed value)
        "real_batch_size": min(config.outer.batch_size, len(dataset.train)),
        "conv_backend": backend,
        "processes": world.size,
        "peak_memory": peak_memory(synthetic.images.device),
        "preset": config.preset,
        "config": config.to_dict(),
        **report,
    }
    write_results(results, synthetic, metrics, run.history.evaluations)
    world.barrier()
    return RunResult(synthetic, final, metrics, results)


def file_meta(config: RunConfig, source: NetSource) -> dict:
    """What distilled.pt says about how to replay it (see docs/formats.md)."""
    meta = {"dataset": config.data.dataset, "arch": config.model.arch, "init": config.model.init,
            "init_param": config.model.init_param, "method": config.method, "config": config.to_dict()}
    if isinstance(source, FixedNets):  # the fixed networks' initial weights: replayable without a seed
        meta["init_params"] = {k: v.detach().cpu() for k, v in source.params.items()}
    return meta


PLOTS = ("attack_per_class.png", "step_sizes.png", "accuracy.png")  # each written only where it applies


def write_results(results: Path, synthetic: SyntheticSet, metrics: dict, evaluations: list[dict]) -> None:
    """The run's files; pictures an earlier run left in the folder that this one does not draw
    (another set's steps, its plots) are removed, so that none describes another set."""
    written = set(artifacts.save_image_grids(results / "images", synthetic))
    if "attack" in metrics:
        artifacts.plot_per_class(results / "attack_per_class.png", metrics["attack"])
        written.add(results / "attack_per_class.png")
    artifacts.save_distilled(results / artifacts.DISTILLED, synthetic)
    if synthetic.lrs.numel():
        artifacts.plot_step_sizes(results / "step_sizes.png", synthetic.lrs, synthetic.steps)
        written.add(results / "step_sizes.png")
    if evaluations:
        artifacts.plot_accuracy(results / "accuracy.png", evaluations)
        written.add(results / "accuracy.png")
    ours = {*(results / name for name in PLOTS), results / "images" / "stored.png",
            *(results / "images").glob("step*.png")}
    for stale in ours - written:
        stale.unlink(missing_ok=True)
    artifacts.write_json(results / artifacts.METRICS, metrics)


def peak_memory(device: torch.device) -> dict:
    """This process's peak memory so far, bytes: ``host_rss`` (resident set; ``None`` where the
    platform has no ``resource`` module) and ``device`` (CUDA tensors allocated; ``None`` off CUDA)."""
    try:
        import resource
    except ImportError:  # Windows
        rss = None
    else:  # ru_maxrss is KiB on Linux, bytes on macOS
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    gpu = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"host_rss": rss, "device": gpu}
