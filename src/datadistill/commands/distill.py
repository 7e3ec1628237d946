"""``datadistill distill``: distil a dataset into a few images (and step sizes)."""
from __future__ import annotations

import argparse

from ..config import CONV_BACKENDS, IMAGE_INITS, PRESETS, RunConfig, build_config
from ..errors import ConfigError
from .flags import (D, Parser, add_data, add_model, add_mode, add_nets, add_outer, add_run, add_shape, add_world,
                    given_fields, preset_note, refuse, refuse_scratch_flags)
from .flags import METHOD_FLAGS

NAME = "distill"
HELP = "distil a dataset into a few synthetic images and step sizes"


def build_parser(prog: str = "datadistill distill") -> Parser:
    p = Parser(prog=prog, description="Distil a dataset into a few synthetic images (and learned step sizes) "
                                      "that train a network; the test split scores the result once, at the end.")
    add_mode(p)
    p.add_argument("--method", help=f"distillation method (default {D.method})")
    p.add_argument("--preset", help=f"named defaults for what the flags leave out: {', '.join(PRESETS)} "
                                    "(default: dm, gm and mtt take their own; wang2018 by setting: fresh for "
                                    "unknown_init, fixed for known_init, zoo for loaded nets, attack for "
                                    "distill_attack)")
    add_data(p)
    add_model(p)
    g = add_shape(p)
    g.add_argument("--distill_lr", type=float,
                   help="initial step size of every step (" + preset_note("synthetic.init_lr") + ")")
    g.add_argument("--image_init", help=f"{', '.join(IMAGE_INITS)}: Gaussian noise, random training images, or "
                                        "herding's picks of each class (images whose running mean tracks the class "
                                        "mean); in an "
                                        "attack, target_class slots start as attack_class images "
                                        "(" + preset_note("synthetic.image_init") + ")")
    g.add_argument("--learn_labels", action=argparse.BooleanOptionalAction,
                   help="learn each image's label as a distribution over the classes, from its own class "
                        "(" + preset_note("synthetic.learn_labels") + ")")
    g.add_argument("--step_size_param", help="exp or softplus: learned step sizes are exp(raw), or softplus(raw) "
                                             "as in the paper's code (" + preset_note("synthetic.step_size_param") + ")")
    g.add_argument("--label_mode", help="hard (fixed one-per-class labels), soft (learned; = --learn_labels) or "
                                        "teacher (each image's label the mean softmax(logits / --label_temperature) "
                                        "of the networks of the train zoo of this dataset, arch, width and --init, "
                                        "from datadistill train-zoo; set on the final images)")
    g.add_argument("--label_temperature", type=float,
                   help=f"--label_mode teacher: T > 1 softens the teachers' labels "
                        f"(default {D.synthetic.label_temperature:g})")
    g.add_argument("--ipc", type=int, help="images per class in the whole set (default: wang2018's steps x images "
                                           "per class per step; dm/gm/mtt: 10)")
    g = p.add_argument_group("later methods (--method dm, gm, mtt)")
    g.add_argument("--augment", help=f"none, dsa (differentiable Siamese augmentation in distillation and "
                                     f"evaluation) or dsa-noflip (dsa without left-right flips); mtt reads "
                                     f"experts trained alike (train-zoo --trajectories --augment) ("
                                     + preset_note("methods.augment") + ")")
    g.add_argument("--factor", type=int, help="multi-formation (IDC, Kim et al. 2022): each stored image holds "
                                              "factor x factor tiles, each upsampled into one training image, so "
                                              "the stored pixels stay --ipc images' and networks train on "
                                              "ipc x factor^2 images per class; distilled.pt holds the training "
                                              f"images and the stored ones (default {D.synthetic.factor}: plain "
                                              "images)")
    g.add_argument("--init_from", metavar="DISTILLED_PT",
                   help="start from the stored images of another run's distilled.pt instead of --image_init "
                        "(one method continuing another's set, e.g. gm from a dm set): the same dataset, --ipc "
                        "and --factor; its labels are not carried over")
    g.add_argument("--embed_batch", type=int, help=f"dm, gm: real images per class per iteration "
                                                   f"(default {D.methods.embed_batch})")
    g.add_argument("--outer_loop", type=int, help=f"gm: synthetic updates per network (default {D.methods.outer_loop})")
    g.add_argument("--inner_steps", type=int, help=f"gm: network steps on the set between updates "
                                                   f"(default {D.methods.inner_steps})")
    g.add_argument("--inner_lr", type=float, help=f"gm: their learning rate (default {D.methods.inner_lr})")
    g.add_argument("--syn_steps", type=int, help="mtt: steps on the set from an expert's start ("
                                                 + preset_note("methods.syn_steps") + "); metrics.json's "
                                                 "mtt.expert_steps is the experts' own SGD steps they stand for")
    g.add_argument("--expert_epochs", type=int, help=f"mtt: expert epochs they should cover "
                                                     f"(default {D.methods.expert_epochs})")
    g.add_argument("--max_start_epoch", type=int, help=f"mtt: segments start at expert epochs drawn from "
                                                       f"0 .. N-1 (default {D.methods.max_start_epoch})")
    g = p.add_argument_group("evaluation")
    g.add_argument("--protocol", help="unrolled (the set's steps and step sizes) or from_scratch (SGD on all images "
                                      "pooled); default: wang2018 unrolled, the others from_scratch")
    g.add_argument("--scratch_epochs", type=int,
                   help="from_scratch: epochs (" + preset_note("evaluation.scratch_epochs") + ")")
    g.add_argument("--scratch_lr", type=float, help=f"from_scratch: SGD rate, a tenth after half the epochs (default "
                                                    f"{D.evaluation.scratch_lr})")
    g.add_argument("--scratch_batch_size", type=int, help=f"from_scratch: batch (default "
                                                          f"{D.evaluation.scratch_batch_size})")
    g.add_argument("--eval_augment", help="none, dsa or dsa-noflip in from_scratch evaluation ("
                   + preset_note("evaluation.augment", otherwise="--augment") + ")")
    g.add_argument("--skip_test", action="store_true", help="report on the validation split only, never reading "
                                                            "the test split (tuning runs)")
    add_nets(p)
    g = p.add_argument_group("attack (--mode distill_attack)")
    g.add_argument("--attack_class", type=int, help="the class whose images the attacked networks should misclassify")
    g.add_argument("--target_class", type=int, help="the class they should take those images for")
    g.add_argument("--attack_weight", type=float, help="weight of attack_class images in the outer loss against 1 "
                                                       "(" + preset_note("attack_weight") + "; 1 is the paper's)")
    g = add_outer(p)
    g.add_argument("--step_size_lr", type=float, help="Adam's rate of the raw step sizes, log(lr) or softplus^-1(lr) "
                                                      "(" + preset_note("outer.step_size_lr") + ")")
    g.add_argument("--adam_beta1", type=float, help="Adam's first-moment decay of the outer optimiser (" +
                   preset_note("outer.adam_beta1") + "; 0.5 is the original code's)")
    g.add_argument("--ema_decay", type=float, help="give and validate the exponential moving average of the "
                   "learned tensors, each iteration weighted 1 - D (" + preset_note("outer.ema_decay") +
                   ": the last tensors as they are)")
    g.add_argument("--eval_every", type=int, help="validate every N epochs, and at the start and the end ("
                   + preset_note("eval_every") + ": about five times a run)")
    g.add_argument("--keep_best", action=argparse.BooleanOptionalAction,
                   help="write and score the snapshot that validated best, not the last (early stopping on the "
                        "validation split; " + preset_note("keep_best") + "; a preset's lapses with --val_size 0)")
    g = add_run(p)
    g.add_argument("--resume", action="store_true", help="continue from checkpoint.pt in --results_dir")
    g.add_argument("--conv_backend", help=f"CPU convolutions of the unrolled steps: {', '.join(CONV_BACKENDS)} "
                                          "(auto times both on the first step; " + preset_note("conv_backend") + ")")
    add_world(p)
    return p


def check_applies(args) -> None:
    """Refuse flags the chosen setting would ignore."""
    mode = getattr(args, "mode", D.mode)
    method = getattr(args, "method", D.method)
    from ..methods import method_class  # here, not at import: it loads torch, which --help does not need

    method_cls = method_class(method)  # an unknown method is named before its flags are judged
    for flag, methods in METHOD_FLAGS.items():
        if method not in methods:
            refuse(args, flag, f"applies to --method {' or '.join(methods)}, not {method}")
    if getattr(args, "lr_schedule", None) == "cosine":
        for flag in ("decay_epochs", "decay_factor"):
            refuse(args, flag, "applies to --lr_schedule step, not cosine")
    if getattr(args, "val_size", None) == 0:
        refuse(args, "eval_every", "validates on the validation split, and --val_size 0 holds none out")
    if "init_from" in vars(args):
        refuse(args, "image_init", "does not apply with --init_from: the set starts from that file's images")
    if "ipc" in vars(args) and "distill_steps" in vars(args):
        per_step = getattr(args, "distilled_images_per_class_per_step", D.synthetic.images_per_class_per_step)
        if args.ipc != args.distill_steps * per_step:
            raise ConfigError(f"--ipc {args.ipc} is not --distill_steps {args.distill_steps} x "
                              f"--distilled_images_per_class_per_step {per_step}; give one of --ipc and "
                              f"--distill_steps")
    protocol = getattr(args, "protocol", None) or method_cls.protocol
    refuse_scratch_flags(args, protocol)
    if protocol == "unrolled" and not method_cls.learns_step_sizes:
        raise ConfigError(f"--protocol unrolled replays a set's learned step sizes, and --method {method} learns "
                          f"none; its sets are scored from_scratch")
    if method != "wang2018" and mode != "distill_basic":
        raise ConfigError(f"--mode {mode} is a setting of --method wang2018, not {method}")
    nets = getattr(args, "train_nets_type", D.nets.train_nets_type)
    if mode == "train":
        raise ConfigError("--mode train trains a zoo: use `datadistill train-zoo`")
    if mode != "distill_attack":
        for flag in ("attack_class", "target_class", "attack_weight"):
            refuse(args, flag, f"applies to --mode distill_attack only, not {mode}")
    if mode != "distill_adapt":
        refuse(args, "source_dataset", f"applies to --mode distill_adapt only, not {mode}")
    if nets != "loaded":
        refuse(args, "sample_n_nets", f"draws from loaded networks; --train_nets_type is {nets}")
        refuse(args, "val_n_nets", f"holds out loaded networks; --train_nets_type is {nets}")
    if getattr(args, "test_nets_type", D.nets.test_nets_type) == "same_as_train":
        refuse(args, "test_n_nets", "does not apply with --test_nets_type same_as_train (the training networks score)")
    teachers = getattr(args, "label_mode", None) == "teacher"  # they come from the train zoo
    if "loaded" not in (nets, getattr(args, "test_nets_type", D.nets.test_nets_type)) and method != "mtt" \
            and not teachers:
        refuse(args, "zoo_dir", "is read only with loaded networks (--train_nets_type or --test_nets_type "
                                "loaded), mtt's experts or --label_mode teacher")


def config_from_args(args) -> RunConfig:
    check_applies(args)
    given = given_fields(args)
    return build_config(given, getattr(args, "preset", None))


def run(args, argv: list[str], session) -> int:
    from ..jobs import distill
    from ..progress import ProgressBar

    config, quiet = session.join(args, config_from_args(args))
    world = session.world
    result = distill(config, callbacks=[] if quiet else [ProgressBar()], resume=getattr(args, "resume", False),
                     world=world)
    if world.is_main:
        print_result(result)
    return 0


def print_result(result) -> None:
    if "adaptation" in result.metrics:
        from ..adapt import format_table

        print(format_table(result.metrics["adaptation"]))
    if "attack" in result.metrics:
        from ..attack import format_attack_table

        print(format_attack_table(result.metrics["attack"]))
    val = result.metrics.get("validation")
    val_text = f"; validation {100 * val['mean']:.2f}%" if val else ""
    test = "test split not read (--skip_test)" if result.final is None else f"test accuracy: {result.final}"
    print(f"{test}{val_text} ({result.metrics['wall_seconds']:.0f} s wall); "
          f"results in {result.results_dir}")
