"""Methods x images per class x dataset: test accuracy (mean +- std over fresh networks trained
from scratch), wall time and peak memory, with random real images of the same IPC beside each row.

Each cell is one `datadistill distill --method M --ipc N ...` run (its peak resident set is the
one its metrics.json records) with the flags of ``SETTINGS`` (sized to about 20 minutes of
distillation on 2 CPU cores on MNIST; mtt's as a count of segments, ``MTT_SEGMENTS``, the same on
every dataset, of the preset's steps unless ``MTT_SYN_STEPS`` names the dataset), then one
`datadistill test --test_distilled_images random_train` run under the same from-scratch protocol
(the run's init, augmentation and epochs, read from its metrics.json). mtt first trains its
experts (`train-zoo --trajectories`), timed apart, once per dataset.

A cell ``method:ipc:fK`` runs the same flags with ``--factor K`` (multi-formation: ipc stored
images per class, ipc x K^2 training images); its random real images are ``ipc`` per class, the
same stored pixels. A cell ``method:ipc:teacher`` runs them with ``--label_mode teacher``: the set
labelled by a zoo of 5 networks (``train-zoo``, 2 epochs, 30 on digits; timed apart, once per
dataset and init); its random real images are scored twice, with hard labels and with the same
teachers' labels (``datadistill test --label_mode teacher``), so that what the images add is
read apart from what the labels add. A cell ``method:ipc:init-NAME`` runs them with ``--init NAME``
(the networks it distils against and is scored on; mtt's experts, trained once per dataset and
init, start so too), where ``INITS`` gives each method's preset.

    python benchmarks/methods.py [--cells dm:10,dm:50,dm:1,gm:10,gm:50,gm:1,mtt:10,mtt:1,mtt:50,gm:1:f2,dm:1:teacher]
        [--datasets MNIST,digits] [--width 32] [--test_n_nets 10] [--threads 2] [--extra "--epochs 2"]
        [--keep DIR] [--device cuda] [--paper [--fraction F | --budget_s S]]

``--paper`` runs dm:10, gm:10 and mtt:10 at the papers' iteration counts and loop shapes
(``PAPER_SETTINGS``), the rest as each preset; with ``--device cuda --width 128`` these are issue
20's GPU rows, and ``--fraction F`` runs F of the papers' iterations to fit a device window (each
cell's line gives the iterations run and the seconds each, to size the next window); ``--budget_s S``
instead sizes each cell from a short probe run to about S seconds of distillation.

MNIST is read from ../shared/data (or $DATADISTILL_DATA), never downloaded; ``digits`` is bundled;
another torchvision dataset must already lie in that folder in torchvision's layout.
"""
import argparse
import contextlib
import json
import os
import shlex
import tempfile
from pathlib import Path
from typing import NamedTuple

from _common import DATA, datadistill, require_mnist, timed

from datadistill.config import OuterConfig
from datadistill.config.presets import PRESETS
from datadistill.config.sections import RANDOM_INITS, ModelConfig
from datadistill.data import batches_per_epoch, load_dataset

# flags of each (method, ipc) beyond its preset; gm at one image per class takes DC's loops for it
# (one update per network, one network step between) and learned soft labels
SETTINGS = {
    ("dm", 10): [],
    # 500 images: 15 epochs (3210 steps) instead of the preset's 40, as each step embeds five times
    # the synthetic images of a 10-per-class step; scored for 300 epochs, not the preset's 1000, to
    # fit a CPU (times in RESULTS.md), its random real images alike
    ("dm", 50): ["--epochs", "15", "--eval_every", "15", "--scratch_epochs", "300"],
    # one image per class, herding's pick (the coreset start that helps gm at 10 per class; a random
    # real start validates alike here); its validation is above gm's one-per-class sets (RESULTS.md)
    ("dm", 1): ["--image_init", "herding"],
    ("gm", 10): [],  # the preset: herding's picks, DSA without flips, 1000 scoring epochs
    # 500 images: DC's loops for 50 per class (50 updates per network, 10 network steps between),
    # herding's picks and DSA without flips as at 10 per class, 10 epochs (210 updates) to fit about
    # 20 minutes; scored for 300 epochs as dm:50
    ("gm", 50): ["--augment", "dsa-noflip", "--image_init", "herding", "--outer_loop", "50", "--inner_steps", "10",
                 "--epochs", "10", "--eval_every", "10", "--scratch_epochs", "300"],
    # from random real images (herding's pick validates alike at one per class) with DSA; scored
    # without flips for 1000 epochs, the protocol its validation chose (RESULTS.md)
    ("gm", 1): ["--image_init", "real", "--augment", "dsa", "--label_mode", "soft", "--outer_loop", "1",
                "--inner_steps", "1", "--epochs", "30", "--eval_every", "30", "--eval_augment", "dsa-noflip",
                "--scratch_epochs", "1000"],
    # mtt's segments: MTT_SEGMENTS. At 10 and 1 per class the preset's 70 steps a segment and its
    # scoring (DSA without flips, 1000 epochs); at 50 per class 20 steps (above 10 on MNIST's validation
    # split, RESULTS.md), scored without augmentation for 300 epochs, as 70 steps of 500 images and
    # 1000 scoring epochs would take hours here
    ("mtt", 10): ["--max_start_epoch", "3", "--expert_epochs", "2"],
    ("mtt", 1): ["--max_start_epoch", "3", "--expert_epochs", "2"],
    ("mtt", 50): ["--max_start_epoch", "3", "--expert_epochs", "2", "--syn_steps", "20", "--batch_size", "512",
                  "--eval_augment", "none", "--scratch_epochs", "300"],
}
# mtt reads no real batch, but its iterations (one segment of unrolled steps each) are counted in
# epochs of them, so the epochs of a cell are worked out per dataset from these counts: at 10 per
# class 128 segments of 70 steps (one MNIST epoch of batches of 428, the preset's); at 1 per class,
# where a segment unrolls a tenth of the images, 640 of 70 steps (5 MNIST epochs; above 128 of 70
# and 640 and 1920 of 10 on MNIST's validation split, figures in RESULTS.md); at 50 per class, where
# a segment unrolls five times the images, 107 of 20 steps (one MNIST epoch of batches of 512).
# Validated at the start and the end only.
MTT_SEGMENTS = {10: 128, 1: 640, 50: 107}
# steps a segment where a dataset's experts take far fewer SGD steps than MNIST's 428 in 2 epochs:
# digits' 1132 training images make 4 batches of 256 an epoch, 8 steps in 2, which the preset's 70
# overshoot. 20 chosen among 5 / 10 / 20 / 70 on digits' validation split at 10 per class (figures
# in RESULTS.md); used at 1 per class too (at 50 per class every dataset runs SETTINGS' 20)
MTT_SYN_STEPS = {"digits": "20"}
# 10 experts of 4 epochs cover starts 0..2 plus 2 expert epochs; more starting points than 5 of 5,
# chosen on MNIST's validation split (figures and times in RESULTS.md)
EXPERTS = ["--n_nets", "10"]
# where 4 epochs leave the experts far from trained (digits: 4 SGD steps an epoch), they run longer
# and segments start anywhere before MTT_MAX_START_EPOCH: digits' 30 epochs and starts 0..19 above
# 4 epochs and starts 0..2 on digits' validation split at 10 and at 1 per class (figures in RESULTS.md)
MTT_EXPERT_EPOCHS = {"digits": "30"}  # others: 4
MTT_MAX_START_EPOCH = {"digits": "20"}  # others: SETTINGS' 3
# 5 teachers: 2 Adam epochs on MNIST (about 430 steps); the bundled digits' few batches (about 6 an
# epoch) need 30, a count chosen on digits' validation split
TEACHERS = ["--n_nets", "5"]
TEACHER_EPOCHS = {"digits": "30"}  # others: 2
# each preset's, which its teachers (and mtt's experts) share
INITS = {m: PRESETS[m].get("model.init", ModelConfig.init) for m in ("dm", "gm", "mtt")}

# --paper (issue 20's GPU rows, 10 per class; with --device cuda --width 128): the papers' iteration
# counts and loop shapes on top of each method's preset, whose rates and scoring were chosen on
# MNIST's validation split at width 32. dm: 20000 steps of 256 real images per class (Zhao and Bilen
# 2023); gm with DSA from random real images: 1000 iterations of 10 image updates, 50 network steps
# between, 256 real images per class (Zhao and Bilen 2021; the defaults of --outer_loop and
# --inner_steps); mtt: 5000 segments of 50 steps covering 2 expert epochs from starts before epoch
# 20 (Cazenavette et al. 2022, MNIST), on 10 experts of the 21 epochs those starts need (the paper
# trains 100 for 50 epochs, of which its starts read the first 22). PAPER_ITERATIONS counts outer
# steps, image updates, segments. mtt reads no real batch, so its batch size only sets the segments
# in an epoch: 2500 makes an epoch of MNIST 20 of them, as dm's and gm's 2560 make 20 steps, so
# that runs cut to a device window (--fraction, --budget_s) end near the count asked for.
PAPER_SETTINGS = {
    ("dm", 10): ["--batch_size", "2560"],
    ("gm", 10): ["--image_init", "real", "--augment", "dsa", "--batch_size", "2560"],
    ("mtt", 10): ["--syn_steps", "50", "--expert_epochs", "2", "--max_start_epoch", "20", "--batch_size", "2500"],
}
PAPER_ITERATIONS = {"dm": 20000, "gm": 10000, "mtt": 5000}
PAPER_EXPERTS = ["--n_nets", "10", "--epochs", "21"]


class Row(NamedTuple):
    """One cell's line of the table; accuracies as the runs' json holds them ({mean, std, ...})."""
    dataset: str
    method: str
    ipc: str  # "10", or "1:f2" with --factor, "1:teacher" with --label_mode teacher
    test: dict
    validation: dict
    random_real: dict
    random_real_taught: dict | None  # teacher cells: the same draw with the teachers' labels
    wall_s: float
    distill_s: float
    peak_mib: float


def probe_seconds(distill: list[str], out: Path, env: dict) -> float:
    """Seconds of one outer iteration of ``distill`` here, from a run of one epoch of its batches,
    scored for one epoch on one network, not tested. Its first iterations carry the warm-up (kernel
    choice, caches), so the figure errs long."""
    timed([*distill, "--epochs", "1", "--eval_every", "1", "--scratch_epochs", "1",
           "--test_n_nets", "1", "--skip_test", "--results_dir", str(out)], env=env)
    return seconds_per_iteration(json.loads((out / "metrics.json").read_text()))


def seconds_per_iteration(metrics: dict) -> float:
    """A run's distillation seconds, its validation left out, per outer iteration (its metrics.json)."""
    return (metrics["distill_seconds"] - metrics["validation_seconds"]) / max(1, metrics["iterations"])


def run_cell(dataset: str, cell: str, folder: Path, args, env: dict, root: str) -> Row:
    """One cell on one dataset: distil, then random real images under the run's own protocol."""
    source = [] if dataset == "digits" else ["--dataset_root", root]  # digits are bundled: no root to read
    arch = ["--dataset", dataset, "--arch", "ConvNet", "--width", args.width, *source, "--no_progress",
            *(["--device", args.device] if args.device else [])]
    method, ipc, *variants = cell.split(":")
    flags = list((PAPER_SETTINGS if args.paper else SETTINGS)[(method, int(ipc))])

    def epochs_for(iterations: int) -> str:
        """Whole epochs of the run's batches that make at least ``iterations`` outer steps."""
        preset_batch = PRESETS[method].get("outer.batch_size", OuterConfig().batch_size)
        batch = int(flags[flags.index("--batch_size") + 1]) if "--batch_size" in flags else preset_batch
        return str(-(-iterations // batches_per_epoch(len(load_dataset(dataset, root).train.y), batch)))

    if method == "mtt" and not args.paper:
        epochs = epochs_for(MTT_SEGMENTS[int(ipc)])
        flags += ["--epochs", epochs, "--eval_every", epochs]
        if dataset in MTT_SYN_STEPS and "--syn_steps" not in flags:
            flags += ["--syn_steps", MTT_SYN_STEPS[dataset]]
        if dataset in MTT_MAX_START_EPOCH:
            flags[flags.index("--max_start_epoch") + 1] = MTT_MAX_START_EPOCH[dataset]
    init = INITS[method]
    for variant in variants:
        if variant.startswith("f") and variant[1:].isdigit():
            flags += ["--factor", variant[1:]]
        elif variant == "teacher":
            flags += ["--label_mode", "teacher"]
        elif variant.startswith("init-") and variant[5:] in RANDOM_INITS:
            init = variant[5:]
            flags += ["--init", init]
        else:
            raise SystemExit(f"unknown variant {variant!r} of cell {cell}; accepted: fK (a number K), teacher, "
                             f"init-NAME (NAME one of {', '.join(RANDOM_INITS)})")
    zoo = folder / "zoo"  # the experts and the teachers, shared by this dataset's cells
    extra = ["--zoo_dir", str(zoo)] if method == "mtt" or "teacher" in variants else []
    if method == "mtt" and not any(zoo.glob(f"*-{init}-train-experts/zoo.pt")):
        experts = PAPER_EXPERTS if args.paper else [*EXPERTS, "--epochs", MTT_EXPERT_EPOCHS.get(dataset, "4")]
        seconds, _ = timed(datadistill("train-zoo", "--trajectories", *arch, "--init", init, *experts, *extra,
                                       "--results_dir", str(folder)), env=env)
        print(f"{dataset} mtt experts ({init} init): {seconds:.0f} s wall", flush=True)
    if "teacher" in variants and not any(zoo.glob(f"*-{init}-train/zoo.pt")):
        epochs = ["--epochs", TEACHER_EPOCHS.get(dataset, "2")]
        seconds, _ = timed(datadistill("train-zoo", *arch, "--init", init, *TEACHERS, *epochs, *extra,
                                       "--results_dir", str(folder)), env=env)
        print(f"{dataset} teachers ({init} init): {seconds:.0f} s wall", flush=True)
    out = folder / cell.replace(":", "-")
    distill = datadistill("distill", "--method", method, "--ipc", ipc, *arch, *flags, *extra, *shlex.split(args.extra))
    fraction = args.fraction
    if args.budget_s:
        each = probe_seconds(distill, out.with_name(out.name + "-probe"), env)
        fraction = min(1.0, args.budget_s / each / PAPER_ITERATIONS[method])
        print(f"{dataset} {cell} probe: {each:.4f} s an iteration, so {fraction:.4f} of the paper's "
              f"{PAPER_ITERATIONS[method]} in {args.budget_s:.0f} s", flush=True)
    if args.paper:
        epochs = epochs_for(max(1, round(fraction * PAPER_ITERATIONS[method])))
        distill += ["--epochs", epochs, "--eval_every", epochs]
    cmd = [*distill, "--test_n_nets", args.test_n_nets, "--results_dir", str(out)]
    seconds, _ = timed(cmd, env=env)
    m = json.loads((out / "metrics.json").read_text())
    peak = m["peak_memory"]["host_rss"] / 2 ** 20  # the distilling process's own peak
    # random real images on the networks the run scored with: its init, augmentation and epochs
    scoring = m["config"]["evaluation"]
    protocol = ["--init", m["config"]["model"]["init"],
                "--eval_augment", scoring["augment"] or m["config"]["methods"]["augment"],
                "--scratch_epochs", str(scoring["scratch_epochs"])]
    baseline = ["test", *arch, "--test_distilled_images", "random_train", "--distill_steps", "1",
                "--distilled_images_per_class_per_step", ipc, "--test_n_nets", args.test_n_nets,
                "--protocol", "from_scratch", *protocol]
    timed(datadistill(*baseline, "--results_dir", str(out)), env=env)
    real = json.loads((out / "results.json").read_text())["rows"][0]
    taught = None
    if "teacher" in variants:
        taught_dir = out / "random-real-teacher"
        timed(datadistill(*baseline, "--label_mode", "teacher", *extra, "--results_dir", str(taught_dir)), env=env)
        taught = json.loads((taught_dir / "results.json").read_text())["rows"][0]
    acc, val = m["final_accuracy"], m["validation"]
    paper_note = f" of the paper's {PAPER_ITERATIONS[method]}" if args.paper else ""
    taught_note = "" if taught is None else f"; with the teachers' labels {100 * taught['mean']:.2f}"
    print(f"{' '.join(cmd[3:])}\n  test {100 * acc['mean']:.2f} +- {100 * acc['std']:.2f} "
          f"(validation {100 * val['mean']:.2f}; random real {100 * real['mean']:.2f}"
          f"{taught_note}); "
          f"{seconds:.0f} s wall; peak {peak:.0f} MiB; {m['iterations']} iterations{paper_note}, "
          f"{seconds_per_iteration(m):.3f} s each", flush=True)
    return Row(dataset, method, ":".join([ipc, *variants]), acc, val, real, taught, seconds, m["distill_seconds"], peak)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", help="method:ipc pairs of SETTINGS, each optionally :fK for --factor K, :teacher "
                                    "for --label_mode teacher and :init-NAME for --init NAME (default "
                                    "dm:10,gm:10,gm:1,mtt:10; with --paper dm:10,gm:10,mtt:10)")
    p.add_argument("--datasets", default="MNIST", help="comma-separated datasets; each runs every cell")
    p.add_argument("--width", default="32")
    p.add_argument("--test_n_nets", default="10")
    p.add_argument("--threads", help="OMP_NUM_THREADS of every run (default: torch's)")
    p.add_argument("--device", help="--device of every run: cpu, cuda or cuda:N (default: the runs' own, cpu)")
    p.add_argument("--paper", action="store_true",
                   help="the papers' iteration counts and loop shapes at 10 per class (PAPER_SETTINGS; cells dm:10, "
                        "gm:10, mtt:10), for a GPU: --device cuda --width 128")
    p.add_argument("--fraction", type=float, default=1.0,
                   help="with --paper: this fraction of the papers' iterations, to fit a device window (default 1)")
    p.add_argument("--extra", default="", help="more flags for every distill run")
    p.add_argument("--keep", help="write the runs (and the experts) under this folder and keep them (default: a "
                                   "temporary folder)")
    p.add_argument("--budget_s", type=float,
                   help="with --paper, instead of --fraction: seconds of distillation for each cell here; a "
                        "probe (one epoch of the cell's batches, validated on one network, not tested) times "
                        "an iteration, and the cell runs the fraction of the papers' iterations that fits, "
                        "at most all")
    args = p.parse_args()
    if not 0 < args.fraction <= 1 or (args.fraction != 1 and not args.paper):
        p.error("--fraction takes a number in (0, 1], and only with --paper")
    if args.budget_s is not None and (not args.paper or args.fraction != 1 or not args.budget_s > 0):
        p.error("--budget_s takes a positive number of seconds, only with --paper and without --fraction")
    settings = PAPER_SETTINGS if args.paper else SETTINGS
    cells = (args.cells or ("dm:10,gm:10,mtt:10" if args.paper else "dm:10,gm:10,gm:1,mtt:10")).split(",")
    accepted = [f"{m}:{n}" for m, n in settings]
    for cell in cells:  # all checked before the first run, which may take an hour
        if ":".join(cell.split(":")[:2]) not in accepted:
            p.error(f"no settings for cell {cell}{' with --paper' if args.paper else ''}; accepted: "
                    + ", ".join(accepted))
    datasets = args.datasets.split(",")
    root = require_mnist() if "MNIST" in datasets else str(DATA)
    env = {**os.environ, **({"OMP_NUM_THREADS": args.threads} if args.threads else {})}
    with contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory() as d:
        rows = [run_cell(dataset, cell, Path(d) / dataset, args, env, root)
                for dataset in datasets for cell in cells]
    print("\n| dataset | method | ipc | test accuracy (%) | validation (%) | random real (%) "
          "| random real, teachers' labels (%) | wall (s) | distillation (s) | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        taught = "-" if r.random_real_taught is None else \
            f"{100 * r.random_real_taught['mean']:.2f} +- {100 * r.random_real_taught['std']:.2f}"
        print(f"| {r.dataset} | {r.method} | {r.ipc} | {100 * r.test['mean']:.2f} +- {100 * r.test['std']:.2f} | "
              f"{100 * r.validation['mean']:.2f} | {100 * r.random_real['mean']:.2f} +- "
              f"{100 * r.random_real['std']:.2f} | {taught} | {r.wall_s:.0f} | {r.distill_s:.0f} | {r.peak_mib:.0f} |")


if __name__ == "__main__":
    main()
