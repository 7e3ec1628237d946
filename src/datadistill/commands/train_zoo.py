"""``datadistill train-zoo``: many networks trained from independent initialisations."""
from __future__ import annotations

from ..config import PHASES, PRESETS, build_config
from ..errors import ConfigError
from ..zoo import EXPERT_LR
from .flags import D, Parser, add_data, add_model, add_outer, add_run, add_world, given_fields, refuse

NAME = "train-zoo"
HELP = "train a zoo of networks (for loaded networks: adaptation, attack, zoo distillation)"


def build_parser(prog: str = "datadistill train-zoo") -> Parser:
    p = Parser(prog=prog, description="Train networks from independent initialisations into a zoo file; the "
                                      "train and test phases draw disjoint seeds. An existing zoo of the same "
                                      "settings is extended, never retrained.")
    p.add_argument("--phase", help=f"{' or '.join(PHASES)}: which zoo to fill (default train)")
    add_data(p, source=False)
    add_model(p, zoo=True)
    p.add_argument("--n_nets", type=int, help=f"networks in the zoo (default {D.nets.n_nets})")
    p.add_argument("--zoo_dir", help="where zoos live (default <results_dir>/zoo)")
    p.add_argument("--trajectories", action="store_true",
                   help="expert trajectories for --method mtt: train with SGD (--lr, default "
                        f"{EXPERT_LR:g}, constant, no momentum) and keep every network's weights at the start "
                        "and after each epoch, in a zoo of its own (<dataset>-<arch>-<init>-<phase>-experts)")
    p.add_argument("--augment", help="with --trajectories: none, dsa or dsa-noflip: train the experts on "
                                     "batches augmented per image, as MTT's experts are; an mtt run with the "
                                     "same --augment reads them (folder ...-experts-<augment>) (default none)")
    add_outer(p, zoo=True)
    # no --compile: on a CPU the compiled loss of ten stacked networks on real batches is slower
    # (benchmarks/RESULTS.md)
    add_run(p, seed=False, compile=False)
    add_world(p)
    return p


def run(args, argv: list[str], session) -> int:
    from ..jobs import train_zoo
    from ..progress import zoo_progress

    trajectories = getattr(args, "trajectories", False)
    if trajectories:  # experts train with constant SGD, and mtt reads train-phase ones only
        for flag in ("lr_schedule", "decay_epochs", "decay_factor"):
            refuse(args, flag, "does not apply with --trajectories: experts train with SGD at a constant --lr")
        if getattr(args, "phase", "train") == "test":
            raise ConfigError("--phase test does not apply with --trajectories: mtt reads train-phase experts only")
    elif getattr(args, "lr_schedule", None) == "cosine":
        for flag in ("decay_epochs", "decay_factor"):
            refuse(args, flag, "applies to --lr_schedule step, not cosine")
    given = given_fields(args)
    if "methods.augment" in given and not trajectories:
        raise ConfigError("--augment applies to train-zoo --trajectories only (expert trajectories for mtt)")
    if trajectories:
        # MTT's experts: SGD at 0.01 unless --lr says otherwise (the preset's rate is Adam's), from
        # the init the mtt preset's runs look their zoo up by
        given.setdefault("outer.lr", EXPERT_LR)
        given.setdefault("model.init", PRESETS["mtt"]["model.init"])
    config = build_config({**given, "mode": "train"}, "train-zoo")
    config, quiet = session.join(args, config)
    world = session.world
    with zoo_progress(config.nets.n_nets, disable=quiet) as progress:
        zoo, path = train_zoo(config, progress, world=world, trajectories=trajectories)
    if world.is_main:
        acc = zoo.accuracies  # the whole zoo's, which an --n_nets below its size leaves as it is
        std = float(acc.std()) if acc.numel() > 1 else 0.0
        kind = "expert trajectories" if trajectories else "zoo"
        print(f"{kind} of {len(zoo)} {zoo.arch} networks on {zoo.dataset} ({zoo.phase} phase): test accuracy "
              f"{100 * float(acc.mean()):.2f}% +- {100 * std:.2f}; in {path}")
    return 0
