"""``datadistill evaluate DISTILLED.pt``: score a saved set on networks of any architecture."""
from __future__ import annotations

import shlex

from ..config import AUGMENTS, INITS, EvalConfig
from .flags import Parser

E = EvalConfig()  # the from-scratch defaults a file without its run's settings falls back to

NAME = "evaluate"
HELP = "train networks on a saved distilled.pt and score them on the test split"


def build_parser(prog: str = "datadistill evaluate") -> Parser:
    from ..jobs.evaluate import NETS, PROTOCOLS, RESULTS

    p = Parser(prog=prog, description="Train networks on a distilled set and score them on the test split. "
                                      "Dataset, architecture, init and fixed networks default to what the file says.")
    p.add_argument("distilled", metavar="DISTILLED.pt", help="a distilled.pt written by datadistill")
    p.add_argument("--dataset", help="whose test split to score on (default: the file's)")
    p.add_argument("--dataset_root", help="folder holding the dataset files (default: the folder the run read, "
                                          "for the file's own dataset; else ./data)")
    p.add_argument("--download", action="store_true", help="download the dataset if its files are missing")
    p.add_argument("--arch", help="architecture of the networks, or a comma-separated list scored one after "
                                  "another (cross-architecture; e.g. ConvNet,LeNet,MLP,AlexCifarNet; 28-pixel "
                                  "sets are padded to 32 for an arch that takes only 32) (default: the file's)")
    p.add_argument("--init", help=f"one of: {', '.join(INITS)} (default: the file's, else xavier)")
    p.add_argument("--init_param", type=float, help="gain or negative slope of --init (default: the file's, else 1)")
    p.add_argument("--pretrained_weights", metavar="PATH", help="--init imagenet_pretrained: the AlexNet weights file")
    p.add_argument("--nets", help=f"{' or '.join(NETS)}: the file's fixed networks (known_init) or new ones "
                                  "(default: fixed when the file holds them and arch and init match)")
    p.add_argument("--width", type=int, help="ConvNet channels / MLP hidden units, for each listed arch that has "
                                             "them (default: the file's, when --arch is the file's; else the class's)")
    p.add_argument("--test_n_nets", type=int, help="fresh networks to train and score (default 10; not with the "
                                                   "file's fixed networks, which are all scored)")
    p.add_argument("--protocol", help=f"{' or '.join(PROTOCOLS)}: the set's batches and learned step sizes, as "
                                      "distilled; or SGD (momentum 0.9, weight decay 5e-4) on all images pooled "
                                      "(default: the run's; wang2018 unrolled, the later methods from_scratch)")
    p.add_argument("--scratch_epochs", type=int, help="from_scratch: passes over the images (default: the run's, "
                                                      f"else {E.scratch_epochs})")
    p.add_argument("--scratch_lr", type=float, help="from_scratch: SGD rate, a tenth after half the epochs (default: the run's, "
                                                    f"else {E.scratch_lr})")
    p.add_argument("--scratch_batch_size", type=int, help="from_scratch: images per SGD step (default: the run's, "
                                                          f"else {E.scratch_batch_size})")
    p.add_argument("--eval_augment", help=f"from_scratch: {' or '.join(AUGMENTS)} on each batch (default: the "
                                          "run's, else none)")
    p.add_argument("--seed", type=int, help="seeds the networks and the batch order (default: the run's, so the "
                                            "run's own evaluation networks; else 0)")
    p.add_argument("--results_dir", help=f"write {RESULTS} here (default: none)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar while the networks train")
    p.add_argument("--compile", action="store_true",
                   help="from_scratch: the networks' SGD steps through torch.compile: fused kernels, faster after a "
                        "compile of seconds; the same numbers up to float rounding, not bit for bit (default off; "
                        "needs a C++ compiler on a CPU, triton on a GPU)")
    return p


def run(args, argv: list[str], session) -> int:
    from ..jobs.evaluate import EvaluateConfig, evaluate_command
    from ..progress import evaluation_progress
    from ..runtime import apply_process_switches

    settings = vars(args)
    quiet = settings.pop("no_progress", False)
    cfg = EvaluateConfig(**settings)
    apply_process_switches()  # training networks from scratch allocates large blocks every step
    with evaluation_progress(disable=quiet) as progress:
        scored = evaluate_command(cfg, shlex.join(["datadistill", *argv]), progress)
    for result, what in scored:
        print(f"test accuracy ({what['settings']['protocol']}, {what['arch']} on {what['dataset']}, "
              f"{what['nets']} nets): {result}")
    return 0
