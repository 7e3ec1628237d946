"""Command line: flags -> config -> run. The only place that turns errors into exit codes."""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from . import __version__
from .allocator import keep_freed_memory
from .config import (CONV_BACKENDS, IMAGE_INITS, INITS, MODES, TEST_IMAGES, TEST_LRS, TEST_NETS_TYPES,
                     TRAIN_NETS_TYPES, DataConfig, ModelConfig, NetsConfig, OuterConfig, RunConfig, SyntheticConfig,
                     TestPhaseConfig)
from .errors import ConfigError, DatadistillError
from .world import DEFAULT_TIMEOUT, DistributedError, World, launched_size, start, stop

EXIT_USAGE = 2
_DEFAULTS = RunConfig()


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        sys.stderr.write(f"datadistill: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    d = _DEFAULTS
    p = _Parser(prog="datadistill", description="Dataset distillation (Wang et al. 2018) on CPU or GPU.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--version", action="version", version=f"datadistill {__version__}")
    p.add_argument("--mode", default=d.mode, help=f"one of: {', '.join(MODES)}")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.data.dataset,
                   help="MNIST, FashionMNIST, Cifar10, SVHN, USPS, PASCAL_VOC, CUB200, or digits "
                        "(bundled, offline); any case")
    g.add_argument("--source_dataset", default=None,
                   help="distill_adapt: the domain the loaded networks were trained on")
    g.add_argument("--dataset_root", default=d.data.root, help="folder holding the dataset files (default ./data)")
    g.add_argument("--download", action="store_true", help="download the dataset if its files are missing")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default=d.model.arch, help="LeNet, AlexCifarNet, ConvNet, MLP or AlexNet")
    g.add_argument("--init", default=d.model.init, help=f"one of: {', '.join(INITS)}")
    g.add_argument("--init_param", type=float, default=d.model.init_param,
                   help="gain (xavier, orthogonal) or negative slope (kaiming)")
    g.add_argument("--pretrained_weights", default=None, metavar="PATH",
                   help="--init imagenet_pretrained: torchvision's AlexNet ImageNet weights (.pth); "
                        "default: the file in torch hub's cache, never downloaded")
    g = p.add_argument_group("distilled set")
    g.add_argument("--distill_steps", type=int, default=d.synthetic.steps, help="GD steps, each with its own images")
    g.add_argument("--distill_epochs", type=int, default=None,
                   help="passes over the steps (default: 10 with fresh networks, unknown_init; else 3)")
    g.add_argument("--distilled_images_per_class_per_step", type=int, default=d.synthetic.images_per_class_per_step)
    g.add_argument("--distill_lr", type=float, default=d.synthetic.init_lr, help="initial step size of every step")
    g.add_argument("--image_init", default=None,
                   help=f"start from Gaussian noise or random training images: {', '.join(IMAGE_INITS)} "
                        "(default: real against loaded networks, else noise)")
    g.add_argument("--learn_labels", action=argparse.BooleanOptionalAction, default=None,
                   help="learn each image's label as a vector of class weights, starting from its "
                        "one-hot class (default: in an attack and with known_init; elsewhere fixed "
                        "one-per-class labels)")
    g = p.add_argument_group("networks")
    g.add_argument("--train_nets_type", default=d.nets.train_nets_type, help=" or ".join(TRAIN_NETS_TYPES))
    g.add_argument("--n_nets", type=int, default=d.nets.n_nets, help="networks per outer iteration")
    g.add_argument("--test_nets_type", default=d.nets.test_nets_type, help=" or ".join(TEST_NETS_TYPES))
    g.add_argument("--test_n_nets", type=int, default=d.nets.test_n_nets, help="networks to score on")
    g.add_argument("--sample_n_nets", type=int, default=None,
                   help="loaded nets: networks drawn from the --n_nets per iteration (default all)")
    g.add_argument("--attack_class", type=int, default=None,
                   help="distill_attack: the class whose images the attacked networks should misclassify")
    g.add_argument("--target_class", type=int, default=None,
                   help="distill_attack: the class they should take those images for")
    g.add_argument("--attack_weight", type=float, default=d.attack_weight,
                   help="distill_attack: weight of attack_class images in the outer loss against 1 "
                        "for the other classes' (1: the paper's objective; default: 3, measured)")
    g.add_argument("--phase", default=d.phase,
                   help="--mode train: fill the train or the test zoo; distill modes: test scores a "
                        "distilled set or baselines instead of distilling (see the test phase flags)")
    g.add_argument("--zoo_dir", default=None, help="where zoos live (default <results_dir>/zoo)")
    g = p.add_argument_group("outer optimisation")
    g.add_argument("--epochs", type=int, default=None,
                   help="passes over the training split (default: 5 with fresh networks every "
                        "iteration, 27 with known_init, 4 in an attack, else 45)")
    g.add_argument("--lr_schedule", default=None,
                   help=f"cosine (to zero over the run) or step; default {d.outer.schedule}, or step "
                        f"when --decay_epochs or --decay_factor is given")
    g.add_argument("--decay_epochs", type=int, default=None,
                   help=f"step schedule: epochs between lr decays (default {d.outer.decay_epochs})")
    g.add_argument("--decay_factor", type=float, default=None,
                   help=f"step schedule: lr multiplier at each decay (default {d.outer.decay_factor})")
    g.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate of the images and learned labels (default 0.04 with "
                        "known_init, 0.05 with fresh nets, 0.01 with loaded ones), or of the networks "
                        "in --mode train (default 1e-3)")
    g.add_argument("--step_size_lr", type=float, default=None,
                   help="Adam learning rate of the log step sizes (default: --lr, but at most 0.01 "
                        "with fresh nets every iteration)")
    g.add_argument("--batch_size", type=int, default=d.outer.batch_size, help="real images per outer step")
    g.add_argument("--eval_every", type=int, default=d.eval_every,
                   help="evaluate every N epochs (0: about five times per run)")
    t = d.test
    g = p.add_argument_group("test phase (--phase test of a distill mode)")
    g.add_argument("--test_distilled_images", default=t.images,
                   help=f"the set under test: {', '.join(TEST_IMAGES)} (loaded: the distilled one)")
    g.add_argument("--test_distilled_lrs", nargs="+", default=[t.lrs], metavar="MODE",
                   help="loaded (the learned step sizes), fix LR (one step size), or nearest_neighbor K P "
                        "(no training: K-NN with the set as memory, P-norm)")
    g.add_argument("--test_n_runs", type=int, default=t.n_runs, help="sets scored (baselines: draws kept)")
    g.add_argument("--test_distill_epochs", type=int, default=None,
                   help="passes of GD on the set (default: the distilled set's, else --distill_epochs)")
    g.add_argument("--test_optimize_n_runs", type=int, default=None,
                   help="random_train/kmeans_train: draw this many sets, keep the best --test_n_runs "
                        "as scored on training batches (default: no selection)")
    g.add_argument("--test_optimize_n_nets", type=int, default=t.optimize_n_nets,
                   help="training networks scoring each candidate per batch")
    g.add_argument("--test_niter", type=int, default=t.niter, help="training batches scoring each candidate")
    g.add_argument("--distilled", default=None, metavar="PATH",
                   help="the distilled set to test (default <results_dir>/distilled.pt)")
    g = p.add_argument_group("run")
    g.add_argument("--results_dir", default=d.results_dir)
    g.add_argument("--seed", "--base_seed", dest="seed", type=int, default=d.seed)
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cpu)")
    g.add_argument("--device_id", type=int, default=None,
                   help="the original's device flag: N for cuda:N, negative for CPU")
    g.add_argument("--resume", action="store_true", help="continue from checkpoint.pt in --results_dir")
    g.add_argument("--no_progress", action="store_true", help="no progress bar")
    g.add_argument("--conv_backend", default=d.conv_backend,
                   help=f"CPU convolutions of the unrolled steps: {', '.join(CONV_BACKENDS)} (auto times "
                        f"both on the first step; fix one for bit-for-bit repeatable runs)")
    g = p.add_argument_group("many processes (torchrun, or the original's launch)")
    g.add_argument("--world_size", type=int, default=None,
                   help="processes in the run, with RANK and MASTER_ADDR/MASTER_PORT or INIT_FILE in "
                        "the environment (default: WORLD_SIZE as torchrun sets it, else 1)")
    g.add_argument("--dist_timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="seconds to wait for the other processes before failing")
    return p


def _device(args) -> str:
    if args.device is not None and args.device_id is not None:
        raise DatadistillError("give --device or --device_id, not both")
    if args.device_id is not None:
        return "cpu" if args.device_id < 0 else f"cuda:{args.device_id}"
    if args.device is None and launched_size(args.world_size) > 1 and torch.cuda.is_available():
        return "cuda"  # a launched process takes the GPU of its LOCAL_RANK
    return args.device or "cpu"


def _outer(args) -> OuterConfig:
    d = _DEFAULTS.outer
    step_flags = args.decay_epochs is not None or args.decay_factor is not None
    # the original's decay flags mean a step schedule; honour them rather than ignore them
    schedule = args.lr_schedule or ("step" if step_flags else d.schedule)
    return OuterConfig(epochs=args.epochs, schedule=schedule,
                       decay_epochs=d.decay_epochs if args.decay_epochs is None else args.decay_epochs,
                       decay_factor=d.decay_factor if args.decay_factor is None else args.decay_factor,
                       lr=args.lr, step_size_lr=args.step_size_lr, batch_size=args.batch_size)


def _number(kind, text: str, what: str):
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{what} must be a number, got {text!r}") from None


def _test(args) -> TestPhaseConfig:
    """``--test_distilled_lrs`` is a mode and its values: ``loaded``, ``fix LR``, ``nearest_neighbor K P``."""
    mode, *values = args.test_distilled_lrs
    if mode not in TEST_LRS:
        raise ConfigError(f"unknown --test_distilled_lrs {mode!r}; accepted: loaded, fix LR, nearest_neighbor K P")
    wanted = {"loaded": 0, "fix": 1, "nearest_neighbor": 2}[mode]
    if len(values) > wanted:
        raise ConfigError(f"--test_distilled_lrs {mode} takes {wanted} value(s), got {' '.join(values)}")
    fixed_lr = knn_k = knn_p = None
    if mode == "fix" and values:
        fixed_lr = _number(float, values[0], "the step size of --test_distilled_lrs fix")
    if mode == "nearest_neighbor":
        if len(values) < 2:
            raise ConfigError("--test_distilled_lrs nearest_neighbor needs K and P, e.g. nearest_neighbor 1 2")
        knn_k = _number(int, values[0], "K of --test_distilled_lrs nearest_neighbor")
        knn_p = _number(float, values[1], "P of --test_distilled_lrs nearest_neighbor")
    return TestPhaseConfig(args.test_distilled_images, mode, fixed_lr, knn_k, knn_p, args.test_n_runs,
                           args.test_distill_epochs, args.test_optimize_n_runs, args.test_optimize_n_nets,
                           args.test_niter, args.distilled)


def config_from_args(args) -> RunConfig:
    """Build (and thereby validate) the run configuration from parsed flags."""
    return RunConfig(
        mode=args.mode,
        data=DataConfig(args.dataset, args.dataset_root, args.download, args.source_dataset),
        model=ModelConfig(args.arch, args.init, args.init_param, args.pretrained_weights),
        synthetic=SyntheticConfig(args.distill_steps, args.distill_epochs,
                                  args.distilled_images_per_class_per_step, args.distill_lr,
                                  args.image_init, args.learn_labels),
        outer=_outer(args),
        nets=NetsConfig(args.train_nets_type, args.n_nets, args.test_nets_type, args.test_n_nets,
                        args.sample_n_nets),
        test=_test(args),
        eval_every=args.eval_every, results_dir=args.results_dir, seed=args.seed, device=_device(args),
        phase=args.phase, zoo_dir=args.zoo_dir, attack_class=args.attack_class,
        target_class=args.target_class, attack_weight=args.attack_weight, conv_backend=args.conv_backend,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the steps allocate the same buffers thousands of times: keep them mapped (``allocator``)
    keep_freed_memory()
    if argv[:1] == ["evaluate"]:
        from .evaluate_cli import main as evaluate_main
        return evaluate_main(argv[1:])
    args = build_parser().parse_args(argv)
    world = World()
    try:
        config = config_from_args(args)
        world, device = start(args.world_size, config.device, args.dist_timeout)
        config = dataclasses.replace(config, device=device)
        quiet = args.no_progress or not world.is_main
        if config.mode == "train":
            return _train_zoo(config, quiet, world)
        if config.phase == "test":
            if world.distributed:
                raise ConfigError("--phase test runs in one process; start it without torchrun or --world_size")
            return _test_phase(config, argv)
        from .progress import ProgressBar
        from .runner import distill

        result = distill(config, callbacks=[] if quiet else [ProgressBar()], resume=args.resume,
                         world=world)
    except DatadistillError as e:
        _error(world, e)
        return EXIT_USAGE
    except (FloatingPointError, DistributedError) as e:  # not bad input, but no traceback either
        _error(world, e)
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("datadistill: interrupted; rerun with --resume to continue\n")
        return 130
    finally:
        stop(world)
    if not world.is_main:
        return 0
    if "adaptation" in result.metrics:
        from .adapt import format_table

        print(format_table(result.metrics["adaptation"]))
    if "attack" in result.metrics:
        from .attack import format_attack_table

        print(format_attack_table(result.metrics["attack"]))
    final = result.final
    seconds = result.metrics["wall_seconds"]
    print(f"test accuracy: {final} ({seconds:.0f} s wall); results in {result.results_dir}")
    return 0


def _error(world: World, error: Exception) -> None:
    where = f"{world}: " if world.distributed and not str(error).startswith("rank ") else ""
    sys.stderr.write(f"datadistill: error: {where}{error}\n")


def _train_zoo(config, no_progress: bool, world: World) -> int:
    from .progress import zoo_progress
    from .runner import train_zoo

    with zoo_progress(config.nets.n_nets, disable=no_progress) as progress:
        zoo, path = train_zoo(config, progress, world=world)
    if not world.is_main:
        return 0
    acc = zoo.accuracies[:config.nets.n_nets]
    std = float(acc.std()) if acc.numel() > 1 else 0.0
    print(f"zoo of {len(zoo)} {zoo.arch} networks on {zoo.dataset} ({zoo.phase} phase): test accuracy "
          f"{100 * float(acc.mean()):.2f}% +- {100 * std:.2f}; in {path}")
    return 0


def _test_phase(config, argv: list[str]) -> int:
    import shlex

    from .runner import RESULTS_MD, test_phase
    from .testphase import format_table

    results = test_phase(config, command=shlex.join(["datadistill", *argv]))
    print(format_table(results["rows"]))
    print(f"test phase: {results['wall_seconds']:.0f} s wall; {results['command']}; results in "
          f"{config.results_dir}/{RESULTS_MD}")
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
