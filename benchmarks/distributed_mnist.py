"""Issue 7's figure: one process against a group of processes (gloo on CPU, NCCL on GPUs) on real
MNIST, the same seeds and networks. Prints how far apart the two distilled sets are, both test
accuracies, and the wall times with their ratio.

    python benchmarks/distributed_mnist.py [--nproc 2] [--device cpu|cuda] [extra datadistill flags]

On CPU the single process runs on all cores (its real batch split over threads) and each of the
N processes on cores/N threads, so the ratio compares two ways of using the same machine.
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from _common import datadistill, require_mnist, timed

RUN = ["--mode", "distill_basic", "--dataset", "MNIST", "--arch", "LeNet", "--n_nets", "4",
       "--test_n_nets", "8", "--epochs", "1", "--lr_schedule", "step", "--conv_backend", "native",
       "--no_progress"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args, extra = parser.parse_known_args()
    root = require_mnist()
    flags = [*RUN, "--dataset_root", root, "--device", args.device, *extra]
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as d:
        one_dir, many_dir = Path(d) / "one", Path(d) / "many"
        print("command: datadistill " + " ".join(flags), flush=True)
        one_s, _ = timed(datadistill(*flags, "--results_dir", str(one_dir)),
                         env={**os.environ, "OMP_NUM_THREADS": str(cores)})
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                  f"--nproc_per_node={args.nproc}", "-m", "datadistill"]
        many_s, _ = timed([*launch, *flags, "--results_dir", str(many_dir)],
                          env={**os.environ, "OMP_NUM_THREADS": str(max(1, cores // args.nproc))})
        one = torch.load(one_dir / "distilled.pt", weights_only=True)
        many = torch.load(many_dir / "distilled.pt", weights_only=True)
        m1 = json.loads((one_dir / "metrics.json").read_text())
        mn = json.loads((many_dir / "metrics.json").read_text())
    drift = float((one["images"] - many["images"]).norm() / one["images"].norm())
    lr_drift = float(((one["lrs"] - many["lrs"]).abs() / one["lrs"]).max())
    per_it = lambda m: m["distill_seconds"] / m["iterations"]  # noqa: E731
    print(f"after {m1['iterations']} outer steps: images differ by {drift:.2e} (relative norm), "
          f"step sizes by at most {lr_drift:.2e} (relative)")
    print(f"test accuracy: 1 process {100 * m1['final_accuracy']['mean']:.2f}%, {args.nproc} processes "
          f"{100 * mn['final_accuracy']['mean']:.2f}% (over {mn['final_accuracy']['n']} networks)")
    print(f"wall: 1 process {one_s:.0f} s ({per_it(m1):.3f} s/iteration), {args.nproc} processes "
          f"{many_s:.0f} s ({per_it(mn):.3f} s/iteration); ratio {one_s / many_s:.2f}")


if __name__ == "__main__":
    main()
