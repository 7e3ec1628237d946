"""The paper's random-init command, verbatim plus --dataset_root and --test_n_nets 20.

Prints the validation and test accuracy (mean +- std over 20 fresh networks) and the wall time.
Extra flags pass through, e.g. the improved preset:

    python benchmarks/unknown_init_mnist.py [--preset fresh-long]
"""
import json
import sys
from pathlib import Path

from _common import datadistill, require_mnist, results_dir, timed

COMMAND = ["--mode", "distill_basic", "--dataset", "MNIST", "--arch", "LeNet"]


def main():
    root = require_mnist()
    # --keep DIR: write the results there instead of a temporary folder
    with results_dir(sys.argv[1:]) as (d, extra):
        cmd = datadistill(*COMMAND, "--dataset_root", root, "--test_n_nets", "20", "--results_dir", d,
                          "--no_progress", *extra)
        print("command: datadistill " + " ".join(cmd[3:]), flush=True)
        seconds, _ = timed(cmd)
        metrics = json.loads((Path(d) / "metrics.json").read_text())
    acc, val = metrics.get("final_accuracy"), metrics["validation"]
    print(f"preset {metrics['preset']}; validation accuracy: {100 * val['mean']:.2f}% +- {100 * val['std']:.2f}")
    test = (f"final test accuracy: {100 * acc['mean']:.2f}% +- {100 * acc['std']:.2f} over {acc['n']} fresh "
            "networks" if acc else "test split not read (--skip_test)")
    print(f"{test}; {metrics['iterations']} iterations; {seconds:.0f} s wall")


if __name__ == "__main__":
    main()
