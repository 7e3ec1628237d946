"""Flag groups shared by the subcommands, and flags -> config.

Parsers are built with ``argument_default=SUPPRESS``: the parsed namespace holds only the flags a
person typed, so presets fill the rest (``config.build_config``) and a flag can be refused when it
does not apply. Help texts state the real defaults.
"""
from __future__ import annotations

import argparse
import sys

import torch

from ..config import (CONV_BACKENDS, IMAGE_INITS, INITS, LR_SCHEDULES, MODES, PRESETS, TEST_IMAGES,
                      TEST_LRS, TEST_NETS_TYPES, TRAIN_NETS_TYPES, RunConfig, TestPhaseConfig)
from ..errors import ConfigError
from ..world import DEFAULT_TIMEOUT, launched_size

EXIT_USAGE = 2
D = RunConfig()

# flag -> dotted RunConfig field
FIELDS = {
    "dataset": "data.dataset", "source_dataset": "data.source_dataset", "dataset_root": "data.root",
    "download": "data.download", "val_size": "data.val_size",
    "arch": "model.arch", "init": "model.init", "init_param": "model.init_param",
    "pretrained_weights": "model.pretrained_weights",
    "distill_steps": "synthetic.steps", "distill_epochs": "synthetic.epochs",
    "distilled_images_per_class_per_step": "synthetic.images_per_class_per_step",
    "distill_lr": "synthetic.init_lr", "image_init": "synthetic.image_init", "learn_labels": "synthetic.learn_labels",
    "label_temperature": "synthetic.label_temperature",
    "step_size_param": "synthetic.step_size_param",
    "train_nets_type": "nets.train_nets_type", "n_nets": "nets.n_nets", "test_nets_type": "nets.test_nets_type",
    "test_n_nets": "nets.test_n_nets", "sample_n_nets": "nets.sample_n_nets", "val_n_nets": "nets.val_n_nets",
    "epochs": "outer.epochs", "lr_schedule": "outer.schedule", "decay_epochs": "outer.decay_epochs",
    "decay_factor": "outer.decay_factor", "lr": "outer.lr", "step_size_lr": "outer.step_size_lr",
    "batch_size": "outer.batch_size", "adam_beta1": "outer.adam_beta1",
    "ema_decay": "outer.ema_decay",
    "mode": "mode", "method": "method", "eval_every": "eval_every", "keep_best": "keep_best",
    "results_dir": "results_dir", "seed": "seed",
    "phase": "phase", "attack_class": "attack_class", "target_class": "target_class",
    "attack_weight": "attack_weight", "zoo_dir": "zoo_dir", "conv_backend": "conv_backend",
    "width": "model.width", "ipc": "synthetic.ipc", "factor": "synthetic.factor",
    "init_from": "synthetic.init_from", "augment": "methods.augment", "outer_loop": "methods.outer_loop",
    "inner_steps": "methods.inner_steps", "inner_lr": "methods.inner_lr", "syn_steps": "methods.syn_steps",
    "expert_epochs": "methods.expert_epochs", "max_start_epoch": "methods.max_start_epoch",
    "embed_batch": "methods.embed_batch", "protocol": "evaluation.protocol",
    "scratch_epochs": "evaluation.scratch_epochs", "scratch_lr": "evaluation.scratch_lr",
    "scratch_batch_size": "evaluation.scratch_batch_size", "eval_augment": "evaluation.augment",
    "skip_test": "skip_test", "compile": "compile",
}

# flags only some methods read: flag -> those methods
METHOD_FLAGS = {"outer_loop": ("gm",), "inner_steps": ("gm",), "inner_lr": ("gm",), "syn_steps": ("mtt",),
                "expert_epochs": ("mtt",), "max_start_epoch": ("mtt",), "embed_batch": ("dm", "gm"),
                "augment": ("dm", "gm", "mtt"), "factor": ("dm", "gm", "mtt"), "init_from": ("dm", "gm", "mtt"),
                "attack_class": ("wang2018",), "target_class": ("wang2018",),
                "attack_weight": ("wang2018",), "distill_epochs": ("wang2018",),
                "distilled_images_per_class_per_step": ("wang2018",), "sample_n_nets": ("wang2018", "mtt"),
                "step_size_param": ("wang2018", "mtt"), "distill_steps": ("wang2018",),
                "distill_lr": ("wang2018", "mtt"), "step_size_lr": ("wang2018", "mtt"),
                "conv_backend": ("wang2018", "mtt")}  # the backend of unrolled steps: dm and gm unroll none


class Parser(argparse.ArgumentParser):
    """One-line errors and exit status 2; unknown flags are named as not applying to the command."""

    def __init__(self, *args, **kwargs):
        # no abbreviations: a prefix (--distilled) must not be read as a longer flag of this command
        super().__init__(*args, argument_default=argparse.SUPPRESS, allow_abbrev=False, **kwargs)

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            flags = [w for w in message.split(":", 1)[1].split() if w.startswith("-")]
            message = (f"{', '.join(flags) or message} does not apply to `{self.prog}`; "
                       f"see `{self.prog} --help`")
        sys.stderr.write(f"datadistill: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def preset_note(field: str, otherwise: str | None = None) -> str:
    """The defaults a preset-dependent field takes, e.g. ``fresh 0.05, fixed 0.1, ...``; ``otherwise``
    says what the field's own default means where its value would not (None for "as --augment")."""
    section, name = field.split(".") if "." in field else (None, field)
    base = otherwise or (getattr(getattr(D, section), name) if section else getattr(D, name))
    values = [f"{p} {v[field]:g}" if isinstance(v.get(field), float) else f"{p} {v[field]}"
              for p, v in PRESETS.items() if field in v]
    return f"by preset: {', '.join(values)}; else {base}" if values else f"default {base}"


def add_data(p, source: bool = True, default: str = D.data.dataset) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help=f"MNIST, FashionMNIST, Cifar10, SVHN, USPS, PASCAL_VOC, CUB200, or digits "
                                     f"(bundled, offline); any case (default {default})")
    if source:
        g.add_argument("--source_dataset", help="distill_adapt: the domain the loaded networks were trained on")
    g.add_argument("--dataset_root", help="folder holding the dataset files (default ./data)")
    g.add_argument("--download", action="store_true", help="download the dataset if its files are missing")
    g.add_argument("--val_size", type=int, help="training images held out for validation, where every "
                                                "choice is made (default min(5000, a tenth))")


def add_model(p, zoo: bool = False) -> None:
    g = p.add_argument_group("model")
    # a zoo trains under its own preset, which leaves the init at its default; experts for mtt
    # start as the mtt preset's networks do
    init_note = (f"default {D.model.init}; with --trajectories {PRESETS['mtt']['model.init']}, as the mtt "
                 "preset's networks" if zoo else preset_note("model.init"))
    g.add_argument("--width", type=int, help="ConvNet channels / MLP hidden units (default 128)")
    g.add_argument("--arch", help=f"LeNet, AlexCifarNet, ConvNet, MLP or AlexNet (default {D.model.arch})")
    g.add_argument("--init", help=f"one of: {', '.join(INITS)} ({init_note})")
    g.add_argument("--init_param", type=float, help="gain (xavier, orthogonal) or negative slope (kaiming) "
                                                    f"(default {D.model.init_param:g})")
    g.add_argument("--pretrained_weights", metavar="PATH",
                   help="--init imagenet_pretrained: torchvision's AlexNet ImageNet weights (.pth); "
                        "default: the file in torch hub's cache, never downloaded")


def add_shape(p) -> None:
    g = p.add_argument_group("distilled set")
    g.add_argument("--distill_steps", type=int, help=f"GD steps, each with its own images (default {D.synthetic.steps})")
    g.add_argument("--distill_epochs", type=int, help="passes over the steps (" + preset_note("synthetic.epochs") + ")")
    g.add_argument("--distilled_images_per_class_per_step", type=int,
                   help=f"images per class in each step (default {D.synthetic.images_per_class_per_step})")
    return g


def add_outer(p, zoo: bool = False) -> None:
    g = p.add_argument_group("training the networks" if zoo else "outer optimisation")
    # a zoo always trains under its own preset: its help shows that preset's values, not the distill table
    note = (lambda field: f"default {PRESETS['train-zoo'][field]:g}") if zoo else preset_note
    g.add_argument("--epochs", type=int, help="passes over the training split (" + note("outer.epochs") + ")")
    g.add_argument("--lr", type=float, help=("Adam's rate of the networks" if zoo else
                                             "Adam's rate of the images and learned labels")
                   + " (" + note("outer.lr") + ")")
    g.add_argument("--lr_schedule", help=f"{' or '.join(LR_SCHEDULES)}: to zero over the run, or x--decay_factor every "
                                         f"--decay_epochs (default cosine; step when a decay flag is given)")
    g.add_argument("--decay_epochs", type=int, help=f"step schedule: epochs between decays (default {D.outer.decay_epochs})")
    g.add_argument("--decay_factor", type=float, help=f"step schedule: lr multiplier (default {D.outer.decay_factor})")
    g.add_argument("--batch_size", type=int, help="real images per step (" + (
        f"default {D.outer.batch_size}" if zoo else preset_note("outer.batch_size")) + ")")
    return g


def add_run(p, seed: bool = True, compile: bool = True) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--results_dir", help=f"where files go (default {D.results_dir})")
    if seed:
        g.add_argument("--seed", "--base_seed", dest="seed", type=int,
                       help=f"the run's seed, 0..2^32-1 (default {D.seed})")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default cpu; cuda:LOCAL_RANK when launched on GPUs)")
    g.add_argument("--device_id", type=int, help="the original's device flag: N for cuda:N, negative for CPU")
    g.add_argument("--no_progress", action="store_true", help="no progress bar")
    if compile:
        g.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    return g


COMPILE_HELP = ("the networks' SGD steps on a synthetic set (from_scratch scoring; gm's network steps) and "
                "dm's embeddings through torch.compile: fused kernels, faster after a compile of seconds a batch "
                "shape; the same numbers up to float rounding, not bit for bit (default off; needs a C++ compiler "
                "on a CPU, triton on a GPU)")


def add_world(p) -> None:
    g = p.add_argument_group("many processes (torchrun, or the original's launch)")
    g.add_argument("--world_size", type=int, help="processes in the run, with RANK and MASTER_ADDR/MASTER_PORT or "
                                                  "INIT_FILE in the environment (default: WORLD_SIZE, else 1)")
    g.add_argument("--dist_timeout", type=float, help="seconds to wait for the other processes before failing "
                                                      f"(default {DEFAULT_TIMEOUT:g})")


def add_nets(p, sampling: bool = True) -> None:
    g = p.add_argument_group("networks")
    g.add_argument("--train_nets_type", help=f"{' or '.join(TRAIN_NETS_TYPES)} (default {D.nets.train_nets_type})")
    g.add_argument("--n_nets", type=int, help=f"networks per outer iteration; with loaded nets, how many of the zoo "
                                              f"(default {D.nets.n_nets})")
    if sampling:
        g.add_argument("--sample_n_nets", type=int, help="loaded nets: networks drawn per iteration (default all)")
        g.add_argument("--val_n_nets", type=int,
                       help="loaded nets: networks of the train zoo after the first --n_nets, held out of "
                            "distillation, that score the validation split (up to this many; default "
                            f"{D.nets.val_n_nets}; none in the zoo: no validation)")
    g.add_argument("--test_nets_type", help=f"{' or '.join(TEST_NETS_TYPES)} (default {D.nets.test_nets_type})")
    g.add_argument("--test_n_nets", type=int, help=f"networks that score the set (default {D.nets.test_n_nets})")
    g.add_argument("--zoo_dir", help="where zoos live (default <results_dir>/zoo)")


def add_mode(p) -> None:
    p.add_argument("--mode", help=f"{', '.join(m for m in MODES if m != 'train')} (default {D.mode})")


def device_of(args) -> str:
    device, device_id = getattr(args, "device", None), getattr(args, "device_id", None)
    if device is not None and device_id is not None:
        raise ConfigError("give --device or --device_id, not both")
    if device_id is not None:
        return "cpu" if device_id < 0 else f"cuda:{device_id}"
    if device is None and launched_size(getattr(args, "world_size", None)) > 1 and torch.cuda.is_available():
        return "cuda"  # a launched process takes the GPU of its LOCAL_RANK
    return device or "cpu"


def given_fields(args) -> dict[str, object]:
    """The typed flags as dotted RunConfig fields."""
    given = {FIELDS[k]: v for k, v in vars(args).items() if k in FIELDS}
    label_mode = getattr(args, "label_mode", None)
    if label_mode is not None:
        if label_mode not in ("hard", "soft", "teacher"):
            raise ConfigError(f"unknown --label_mode {label_mode!r}; accepted: hard, soft, teacher")
        if "synthetic.learn_labels" in given and given["synthetic.learn_labels"] != (label_mode == "soft"):
            raise ConfigError("--label_mode and --learn_labels disagree; give one")
        given["synthetic.learn_labels"] = label_mode == "soft"
        given["synthetic.teacher_labels"] = label_mode == "teacher"
    if "synthetic.label_temperature" in given and not given.get("synthetic.teacher_labels"):
        raise ConfigError("--label_temperature applies to --label_mode teacher only")
    if "outer.schedule" not in given and ("outer.decay_epochs" in given or "outer.decay_factor" in given):
        given["outer.schedule"] = "step"  # the original's decay flags mean a step schedule
    given["device"] = device_of(args)
    return given


def refuse(args, flag: str, why: str) -> None:
    if flag in vars(args):
        raise ConfigError(f"--{flag} {why}")


SCRATCH_FLAGS = ("scratch_epochs", "scratch_lr", "scratch_batch_size", "eval_augment", "compile")


def refuse_scratch_flags(args, protocol: str) -> None:
    """The from-scratch settings, refused where sets are scored unrolled (they would be ignored)."""
    if protocol != "from_scratch":
        for flag in SCRATCH_FLAGS:
            refuse(args, flag, f"applies to --protocol from_scratch; this run scores {protocol} "
                               f"(add --protocol from_scratch)")


def _number(kind, text: str, what: str):
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{what} must be {'a whole number' if kind is int else 'a number'}, got {text!r}") from None


def test_phase_config(args) -> TestPhaseConfig:
    """``--test_distilled_lrs`` is a mode and its values: ``loaded``, ``fix LR``, ``nearest_neighbor K P``."""
    t = TestPhaseConfig()
    mode, *values = getattr(args, "test_distilled_lrs", [t.lrs])
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
    a = vars(args)
    return TestPhaseConfig(a.get("test_distilled_images", t.images), mode, fixed_lr, knn_k, knn_p,
                           a.get("test_n_runs", t.n_runs), a.get("test_distill_epochs"),
                           a.get("test_optimize_n_runs"), a.get("test_optimize_n_nets", t.optimize_n_nets),
                           a.get("test_niter", t.niter), a.get("distilled"), a.get("score_on", t.score_on))


__all__ = ["CONV_BACKENDS", "IMAGE_INITS", "EXIT_USAGE", "Parser", "TEST_IMAGES"]
