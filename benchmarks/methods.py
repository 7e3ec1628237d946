"""Methods x images per class x dataset: test accuracy (mean +- std over fresh networks trained
from scratch), wall time and peak memory, with random real images of the same IPC beside each row.

Each cell is one `datadistill distill --method M --ipc N ...` run (its own process, so peak RSS is
its own) and one `datadistill test --test_distilled_images random_train` run under the same
from-scratch protocol. mtt first trains its experts (`train-zoo --trajectories`), timed apart.

    python benchmarks/methods.py [--methods dm,gm,mtt] [--ipc 1,10] [--datasets MNIST] [--width 32]
        [--test_n_nets 10] [--extra "--epochs 2"]
"""
import argparse
import json
import resource
import shlex
import tempfile
from pathlib import Path

from _common import datadistill, require_mnist, timed


def peak_rss_mib() -> float:
    """Largest resident set of any finished child so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="dm,gm,mtt")
    p.add_argument("--ipc", default="1,10")
    p.add_argument("--datasets", default="MNIST")
    p.add_argument("--width", default="32")
    p.add_argument("--test_n_nets", default="10")
    p.add_argument("--extra", default="", help="more flags for every distill run")
    p.add_argument("--expert_epochs", default="15", help="mtt: epochs each expert trains")
    args = p.parse_args()
    root = require_mnist()
    arch = ["--arch", "ConvNet", "--width", args.width, "--dataset_root", root, "--no_progress"]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for dataset in args.datasets.split(","):
            zoo = str(Path(d) / "zoo")
            for method in args.methods.split(","):
                if method == "mtt":
                    seconds, _ = timed(datadistill("train-zoo", "--trajectories", "--dataset", dataset, *arch,
                                                   "--n_nets", "5", "--epochs", args.expert_epochs, "--zoo_dir", zoo,
                                                   "--results_dir", d))
                    print(f"mtt experts on {dataset}: {seconds:.0f} s wall", flush=True)
                for ipc in args.ipc.split(","):
                    out = str(Path(d) / f"{dataset}-{method}-{ipc}")
                    extra = ["--zoo_dir", zoo] if method == "mtt" else []
                    cmd = datadistill("distill", "--method", method, "--dataset", dataset, "--ipc", ipc, *arch,
                                      "--test_n_nets", args.test_n_nets, "--results_dir", out, *extra,
                                      *shlex.split(args.extra))
                    if method == "gm":
                        cmd += ["--augment", "dsa"]
                    seconds, _ = timed(cmd)
                    peak = peak_rss_mib()
                    m = json.loads((Path(out) / "metrics.json").read_text())
                    real_cmd = datadistill("test", "--dataset", dataset, *arch, "--test_distilled_images",
                                           "random_train", "--distill_steps", "1",
                                           "--distilled_images_per_class_per_step", ipc, "--test_n_nets",
                                           args.test_n_nets, "--protocol", "from_scratch", "--results_dir", out)
                    _, proc = timed(real_cmd)
                    real = json.loads((Path(out) / "results.json").read_text())["rows"][0]
                    acc = m["final_accuracy"]
                    rows.append((dataset, method, ipc, acc, real, seconds, peak))
                    print(f"{' '.join(cmd[3:])}\n  test {100 * acc['mean']:.2f} +- {100 * acc['std']:.2f} "
                          f"(random real {100 * real['mean']:.2f}); {seconds:.0f} s; peak {peak:.0f} MiB", flush=True)
    print("\n| dataset | method | ipc | test accuracy (%) | random real (%) | wall (s) | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for dataset, method, ipc, acc, real, seconds, peak in rows:
        print(f"| {dataset} | {method} | {ipc} | {100 * acc['mean']:.2f} +- {100 * acc['std']:.2f} | "
              f"{100 * real['mean']:.2f} +- {100 * real['std']:.2f} | {seconds:.0f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
