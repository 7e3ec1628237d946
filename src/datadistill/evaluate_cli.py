"""``datadistill evaluate DISTILLED.pt``: score a saved set on fresh networks, any architecture.

Flags -> checks -> load -> evaluate -> print and (with --results_dir) results.json. Errors become
one line on stderr and exit status 2, as in ``cli``.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from . import artifacts
from .cli import EXIT_USAGE, _Parser
from .config import INITS
from .data import canonical_name, load_dataset
from .errors import ConfigError, DatadistillError
from .evaluate import EvalResult, eval_seeds, evaluate_from_scratch, evaluate_synthetic, fresh_nets
from .models import arch_class, build_model
from .runner import resolve_device

PROTOCOLS = ("unrolled", "from_scratch")
RESULTS = "results.json"


def build_parser() -> _Parser:
    p = _Parser(prog="datadistill evaluate",
                description="Train fresh networks on a distilled set and score them on the test split.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("distilled", metavar="DISTILLED.pt", help="a distilled.pt written by datadistill")
    p.add_argument("--dataset", default=None, help="whose test split to score on (default: the file's)")
    p.add_argument("--dataset_root", default="./data", help="folder holding the dataset files")
    p.add_argument("--download", action="store_true", help="download the dataset if its files are missing")
    p.add_argument("--arch", default=None, help="architecture of the fresh networks (default: the file's)")
    p.add_argument("--init", default="xavier", help=f"one of: {', '.join(INITS)}")
    p.add_argument("--init_param", type=float, default=1.0, help="gain or negative slope of --init")
    p.add_argument("--pretrained_weights", default=None, metavar="PATH",
                   help="--init imagenet_pretrained: torchvision's AlexNet ImageNet weights (default: "
                        "torch hub's cache)")
    p.add_argument("--test_n_nets", type=int, default=10, help="fresh networks to train and score")
    p.add_argument("--protocol", default="unrolled",
                   help="unrolled: the set's batches and learned step sizes, as distilled; "
                        "from_scratch: SGD (momentum 0.9, weight decay 5e-4) on all images pooled")
    p.add_argument("--scratch_epochs", type=int, default=300, help="from_scratch: passes over the images")
    p.add_argument("--scratch_lr", type=float, default=0.01, help="from_scratch: SGD learning rate")
    p.add_argument("--scratch_batch_size", type=int, default=256, help="from_scratch: images per SGD step")
    p.add_argument("--seed", type=int, default=0, help="seeds the networks and the batch order")
    p.add_argument("--results_dir", default=None, help=f"write {RESULTS} here")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    return p


def _check_flags(args) -> None:
    if args.protocol not in PROTOCOLS:
        raise ConfigError(f"unknown --protocol {args.protocol!r}; accepted: {', '.join(PROTOCOLS)}")
    if args.init not in INITS:
        raise ConfigError(f"unknown init {args.init!r}; accepted: {', '.join(INITS)}")
    if args.pretrained_weights is not None and args.init != "imagenet_pretrained":
        raise ConfigError(f"--pretrained_weights is only read with --init imagenet_pretrained, not --init {args.init}")
    for flag in ("test_n_nets", "scratch_epochs", "scratch_batch_size"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag} must be positive, got {getattr(args, flag)}")
    if not args.scratch_lr > 0:
        raise ConfigError(f"--scratch_lr must be positive, got {args.scratch_lr}")


def evaluate_file(args) -> tuple[EvalResult, dict]:
    """Run the evaluation the parsed ``args`` describe; (result, what was evaluated)."""
    _check_flags(args)
    device = resolve_device(args.device)
    synthetic = artifacts.load_distilled(args.distilled)
    if args.dataset is None and not synthetic.meta.get("dataset"):
        raise ConfigError(f"{args.distilled} does not name its dataset; pass --dataset")
    dataset_name = canonical_name(args.dataset or synthetic.meta["dataset"])
    arch_cls = arch_class(args.arch or synthetic.meta.get("arch") or "LeNet")
    size = synthetic.images.shape[-1]
    # only the bundled digits are resized; load them at the set's size when the arch takes it
    dataset = load_dataset(dataset_name, args.dataset_root, args.download,
                           image_size=size if size in arch_cls.supported_sizes else arch_cls.default_size,
                           device=device)
    got = tuple(synthetic.images.shape[2:])
    want = (dataset.in_channels, dataset.image_size, dataset.image_size)
    if got != want:
        raise ConfigError(f"distilled images are {got} (C, H, W), {dataset.name} images are {want}")
    if synthetic.num_classes != dataset.num_classes:
        raise ConfigError(f"distilled set has {synthetic.num_classes} classes, "
                          f"{dataset.name} has {dataset.num_classes}")
    model = build_model(arch_cls.__name__, dataset.in_channels, dataset.image_size, dataset.num_classes,
                        pretrained_weights=args.pretrained_weights)
    nets = fresh_nets(model, args.init, args.init_param, eval_seeds(args.seed, args.test_n_nets), device)
    synthetic = synthetic.to(device)
    if args.protocol == "unrolled":
        result = evaluate_synthetic(model, synthetic, nets, dataset.test)
    else:
        result = evaluate_from_scratch(model, synthetic, nets, dataset.test, args.scratch_epochs,
                                       args.scratch_lr, args.scratch_batch_size,
                                       generator=torch.Generator().manual_seed(args.seed))
    return result, {"dataset": dataset.name, "arch": arch_cls.__name__}


def main(argv: list[str]) -> int:
    """``argv`` is what follows ``datadistill evaluate``."""
    start = time.perf_counter()
    args = build_parser().parse_args(argv)
    try:
        result, what = evaluate_file(args)
        if args.results_dir is not None:
            settings = {"test_n_nets": args.test_n_nets, "init": args.init, "init_param": args.init_param,
                        "seed": args.seed}
            if args.protocol == "from_scratch":
                settings.update(scratch_epochs=args.scratch_epochs, scratch_lr=args.scratch_lr,
                                scratch_batch_size=args.scratch_batch_size)
            artifacts.write_json(Path(args.results_dir) / RESULTS, {
                "command": shlex.join(["datadistill", "evaluate", *map(str, argv)]),
                "protocol": args.protocol,
                "distilled": str(args.distilled),
                **what,
                "settings": settings,
                "result": result.to_dict(),
                "wall_seconds": time.perf_counter() - start,
            })
    except DatadistillError as e:
        sys.stderr.write(f"datadistill: error: {e}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("datadistill: interrupted\n")
        return 130
    print(f"test accuracy ({args.protocol}, {what['arch']} on {what['dataset']}): {result}")
    return 0
