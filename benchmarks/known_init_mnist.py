"""The paper's fixed-init command, verbatim plus --dataset_root, on real MNIST.

Prints the validation accuracy during the run, the final test accuracy (full 10k test split) and
the wall time of the whole command. Extra flags pass through, e.g. the improved preset:

    python benchmarks/known_init_mnist.py [--preset fixed-labels]
"""
import json
import sys
from pathlib import Path

from _common import datadistill, require_mnist, results_dir, timed

COMMAND = ["--mode", "distill_basic", "--dataset", "MNIST", "--arch", "LeNet", "--distill_steps", "1",
           "--train_nets_type", "known_init", "--n_nets", "1", "--test_nets_type", "same_as_train"]


def main():
    root = require_mnist()
    # --keep DIR: write the results there instead of a temporary folder
    with results_dir(sys.argv[1:]) as (d, extra):
        cmd = datadistill(*COMMAND, "--dataset_root", root, "--results_dir", d, "--no_progress", *extra)
        print("command: datadistill " + " ".join(cmd[3:]), flush=True)
        seconds, _ = timed(cmd)
        metrics = json.loads((Path(d) / "metrics.json").read_text())
    acc, val = metrics.get("final_accuracy"), metrics["validation"]
    print(f"preset {metrics['preset']}; validation accuracy: {100 * val['mean']:.2f}% +- {100 * val['std']:.2f}")
    print("accuracy during the run: " + ", ".join(
        f"it {e['iteration']}: {100 * e['mean']:.2f}%" for e in metrics["history"]["evaluations"]))
    test = f"final test accuracy: {100 * acc['mean']:.2f}% (n={acc['n']})" if acc else "test split not read (--skip_test)"
    print(f"{test}; {metrics['iterations']} iterations; {seconds:.0f} s wall")


if __name__ == "__main__":
    main()
