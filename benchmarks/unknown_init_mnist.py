"""Figure 3 of issue 3: the random-init command, verbatim plus --dataset_root and --test_n_nets 20.

Prints the mean +- std test accuracy over 20 fresh networks and the wall time (about 18.5
minutes on a 2-core CPU at the defaults: 10 passes over the steps, 5 epochs; the paper's 3
passes with `--distill_epochs 3 --epochs 3` gave 79.52% in 242 s).

    python benchmarks/unknown_init_mnist.py [extra flags, e.g. --epochs 1 for a quick look]
"""
import json
import sys
import tempfile
from pathlib import Path

from _common import datadistill, require_mnist, timed

COMMAND = ["--mode", "distill_basic", "--dataset", "MNIST", "--arch", "LeNet"]


def main():
    root = require_mnist()
    with tempfile.TemporaryDirectory() as d:
        cmd = datadistill(*COMMAND, "--dataset_root", root, "--test_n_nets", "20", "--results_dir", d,
                          "--no_progress", *sys.argv[1:])
        print("command: datadistill " + " ".join(cmd[3:]), flush=True)
        seconds, _ = timed(cmd)
        metrics = json.loads((Path(d) / "metrics.json").read_text())
    acc = metrics["final_accuracy"]
    print(f"final test accuracy: {100 * acc['mean']:.2f}% +- {100 * acc['std']:.2f} over {acc['n']} "
          f"fresh networks; {metrics['iterations']} iterations; {seconds:.0f} s wall")


if __name__ == "__main__":
    main()
