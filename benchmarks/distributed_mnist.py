"""Issue 7's figure: one process against a group of processes (gloo on CPU, NCCL on GPUs) on real
MNIST, the same seeds and networks. Prints how far apart the two distilled sets are, both test
accuracies, and the wall times with their ratio.

    python benchmarks/distributed_mnist.py [--nproc 2] [--device cpu|cuda] [extra datadistill flags]

On CPU the single process runs on all cores (its real batch split over threads) and each of the
N processes on cores/N threads, so the ratio compares two ways of using the same machine.
Rounding differences (another summation order) grow over hundreds of outer steps as in any
long optimisation, so the script also shows how far one process drifts from itself on another
thread count, and the agreement after a few steps.
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


def _drift(a: dict, b: dict) -> tuple[float, float]:
    """Relative norm of the images' difference, largest relative difference of the step sizes."""
    return (float((a["images"] - b["images"]).norm() / a["images"].norm()),
            float(((a["lrs"] - b["lrs"]).abs() / a["lrs"]).max()))


def _run(workdir: Path, name: str, flags: list[str], threads: int, nproc: int = 1) -> tuple[float, dict, dict]:
    """(wall seconds, distilled set, metrics) of one run with ``nproc`` processes."""
    out = workdir / name
    launch = datadistill() if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "datadistill"]
    seconds, _ = timed([*launch, *flags, "--results_dir", str(out)],
                       env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return (seconds, torch.load(out / "distilled.pt", weights_only=True),
            json.loads((out / "metrics.json").read_text()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args, extra = parser.parse_known_args()
    root = require_mnist()
    flags = [*RUN, "--dataset_root", root, "--device", args.device, *extra]
    cores = os.cpu_count() or 1
    per_proc = max(1, cores // args.nproc)
    print("command: datadistill " + " ".join(flags), flush=True)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        # a few steps (batches of 6000 images): the two runs agree to rounding
        short = [*flags, "--batch_size", "6000"]
        _, one, m1 = _run(d, "short-one", short, cores)
        _, many, _ = _run(d, "short-many", short, per_proc, args.nproc)
        images, lrs = _drift(one, many)
        print(f"after {m1['iterations']} outer steps: images differ by {images:.2e} (relative norm), "
              f"step sizes by at most {lrs:.2e} (relative)", flush=True)
        # a full epoch: speed, accuracy, and how far rounding alone carries two runs apart
        one_s, one, m1 = _run(d, "one", flags, cores)
        many_s, many, mn = _run(d, "many", flags, per_proc, args.nproc)
        _, threads, _ = _run(d, "one-thread", flags, per_proc)
    images, lrs = _drift(one, many)
    ref_images, ref_lrs = _drift(one, threads)
    per_it = lambda m: m["distill_seconds"] / m["iterations"]  # noqa: E731
    print(f"after {m1['iterations']} outer steps: images differ by {images:.2e}, step sizes by {lrs:.2e}; "
          f"one process on {cores} vs {per_proc} thread(s), rounding alone: {ref_images:.2e} and {ref_lrs:.2e}")
    print(f"test accuracy: 1 process {100 * m1['final_accuracy']['mean']:.2f}%, {args.nproc} processes "
          f"{100 * mn['final_accuracy']['mean']:.2f}% (over {mn['final_accuracy']['n']} networks)")
    print(f"wall: 1 process {one_s:.0f} s ({per_it(m1):.3f} s/iteration), {args.nproc} processes "
          f"{many_s:.0f} s ({per_it(mn):.3f} s/iteration); ratio {one_s / many_s:.2f}")


if __name__ == "__main__":
    main()
