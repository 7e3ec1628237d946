"""``datadistill test``: score a distilled set, or baselines of its shape (the paper's test phase)."""
from __future__ import annotations

import dataclasses
import shlex
import sys

from ..config import TEST_IMAGES, build_config, default_preset
from ..errors import ConfigError
from .flags import (D, Parser, add_data, add_model, add_mode, add_nets, add_run, add_shape, given_fields, refuse,
                    refuse_scratch_flags, test_phase_config)

NAME = "test"
HELP = "score a distilled set or baselines (random, average, k-means real images; fixed steps; nearest neighbour)"


def build_parser(prog: str = "datadistill test") -> Parser:
    p = Parser(prog=prog, description="Score a distilled set, or baselines of its shape, on fresh or zoo "
                                      "networks; any selection among random draws is made on the validation "
                                      "split, and the test split scores the kept sets.")
    add_mode(p)
    add_data(p, default=f"the loaded set's, else {D.data.dataset}")
    add_model(p)
    add_shape(p)
    add_nets(p, sampling=False)
    g = p.add_argument_group("attack (--mode distill_attack: the setting the set was distilled in)")
    g.add_argument("--attack_class", type=int, help="the class whose images the attacked networks should misclassify")
    g.add_argument("--target_class", type=int, help="the class they should take those images for")
    g = p.add_argument_group("test phase")
    g.add_argument("--test_distilled_images", help=f"the set under test: {', '.join(TEST_IMAGES)} "
                                                   "(default loaded: the distilled one)")
    g.add_argument("--test_distilled_lrs", nargs="+", metavar="MODE",
                   help="loaded (the learned step sizes), fix LR (one step size), or nearest_neighbor K P "
                        "(no training: K-NN with the set as memory, P-norm) (default loaded)")
    g.add_argument("--test_n_runs", type=int, help="sets scored (baselines: draws kept) (default 1)")
    g.add_argument("--test_distill_epochs", type=int,
                   help="passes of GD on the set (default: the distilled set's, else --distill_epochs)")
    g.add_argument("--test_optimize_n_runs", type=int,
                   help="random_train/kmeans_train: draw this many sets, keep the best --test_n_runs as scored "
                        "on validation batches (default: no selection)")
    g.add_argument("--test_optimize_n_nets", type=int, help="training networks scoring each candidate per batch (default 1)")
    g.add_argument("--test_niter", type=int, help="validation batches scoring each candidate (default 1)")
    g.add_argument("--batch_size", type=int, help=f"images per validation batch (default {D.outer.batch_size})")
    g.add_argument("--protocol", help="unrolled (GD steps with the set's step sizes) or from_scratch (SGD on all the "
                                      "images pooled, momentum 0.9, weight decay 5e-4) (default unrolled)")
    g.add_argument("--scratch_epochs", type=int, help=f"from_scratch: epochs (default {D.evaluation.scratch_epochs})")
    g.add_argument("--scratch_lr", type=float, help=f"from_scratch: SGD rate (default {D.evaluation.scratch_lr})")
    g.add_argument("--scratch_batch_size", type=int, help="from_scratch: batch (default "
                                                          f"{D.evaluation.scratch_batch_size})")
    g.add_argument("--eval_augment", help="from_scratch: none, dsa or dsa-noflip, the same random transforms a dm / "
                                          "gm / mtt run with that --augment is scored under (default none)")
    g.add_argument("--score_on", help="test, or val: score on the validation split (to choose, e.g., a baseline's "
                                      "fixed step size without reading the test split) (default test)")
    g.add_argument("--distilled", metavar="PATH", help="the distilled set to test (default <results_dir>/distilled.pt)")
    g.add_argument("--label_mode", help="teacher: every set scored (loaded or a baseline) takes as labels the mean "
                                        "softmax(logits / --label_temperature) of the train zoo's networks, as "
                                        "`distill --label_mode teacher` does (default: the set's own labels)")
    g.add_argument("--label_temperature", type=float,
                   help=f"--label_mode teacher: the temperature (default {D.synthetic.label_temperature:g})")
    add_run(p)
    return p


def run(args, argv: list[str], session) -> int:
    from ..jobs import test_phase
    from ..runtime import apply_process_switches
    from ..testphase import format_table

    mode = getattr(args, "mode", D.mode)
    if mode == "train":
        raise ConfigError("--mode train trains a zoo: use `datadistill train-zoo --phase test`")
    if mode != "distill_adapt":
        refuse(args, "source_dataset", f"applies to --mode distill_adapt only, not {mode}")
    if mode != "distill_attack":
        for flag in ("attack_class", "target_class"):
            refuse(args, flag, f"applies to --mode distill_attack only, not {mode}")
    if getattr(args, "test_nets_type", D.nets.test_nets_type) == "same_as_train":
        refuse(args, "test_n_nets", "does not apply with --test_nets_type same_as_train (the training networks score)")
    protocol = getattr(args, "protocol", "unrolled")
    refuse_scratch_flags(args, protocol)
    if "test_optimize_n_runs" not in vars(args):
        for flag in ("test_optimize_n_nets", "test_niter", "batch_size"):
            refuse(args, flag, "applies with --test_optimize_n_runs only (the search among random draws)")
    if (getattr(args, "test_distilled_lrs", None) or ["loaded"])[0] == "nearest_neighbor":
        for flag in ("protocol", "test_distill_epochs", "test_n_nets", "init", "init_param"):
            refuse(args, flag, "does not apply with --test_distilled_lrs nearest_neighbor (no network trains: "
                               "the set is the memory of a nearest-neighbour classifier)")
    if protocol == "from_scratch":
        refuse(args, "test_distill_epochs", "applies to --protocol unrolled (from_scratch trains --scratch_epochs "
                                            "epochs of SGD)")
    label_mode = getattr(args, "label_mode", None)
    if label_mode not in (None, "teacher"):
        raise ConfigError(f"datadistill test takes --label_mode teacher only (relabel the sets scored), not "
                          f"{label_mode!r}; without it each set keeps its own labels")
    given = given_fields(args)
    config = build_config(given, default_preset(mode, given.get("nets.train_nets_type", "unknown_init")))
    config = dataclasses.replace(config, test=test_phase_config(args))
    if config.synthetic.teacher_labels and config.test.lrs == "nearest_neighbor":
        raise ConfigError("--label_mode teacher does not apply with --test_distilled_lrs nearest_neighbor "
                          "(a nearest neighbour reads one class per image)")
    apply_process_switches()  # training networks from scratch allocates large blocks every step
    quiet = getattr(args, "no_progress", False)
    results = test_phase(config, command=shlex.join(["datadistill", *argv]),
                         progress=(lambda what: None) if quiet else (lambda what: print(what + " ...", file=sys.stderr)),
                         typed=given)
    print(format_table(results["rows"]))
    print(f"test phase: {results['wall_seconds']:.0f} s wall; {results['command']}; results in "
          f"{config.results_dir}/results.md")
    return 0
