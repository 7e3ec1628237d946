"""Issue 4's figure: adapting MNIST-trained LeNets to the bundled digits with distilled images.

Trains a zoo of 50 train-phase and 20 test-phase LeNets on real MNIST (--mode train), then distils
10 images per class (10 steps x 1 per class, 3 passes) against the train zoo from digits' training
split, and prints the report on the 20 test-zoo networks: no adaptation, distilled, random real
digits with the best fixed step size, and the full fine-tune bound, with the wall times.

    python benchmarks/adapt_mnist_digits.py [--zoo_epochs 2] [--epochs 100]
"""
import argparse
import json
import tempfile
from pathlib import Path

from _common import datadistill, require_mnist, timed


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo_epochs", default="2")
    p.add_argument("--epochs", default="100")
    p.add_argument("--keep", default=None, help="results folder to keep (default: a temporary one)")
    args = p.parse_args()
    root = require_mnist()
    with tempfile.TemporaryDirectory() as tmp:
        results = args.keep or tmp
        common = ["--arch", "LeNet", "--dataset_root", root, "--results_dir", results, "--no_progress"]
        zoo = ["--mode", "train", "--dataset", "MNIST", "--epochs", args.zoo_epochs, "--lr", "1e-3"]
        for phase, n in (("train", "50"), ("test", "20")):
            seconds, proc = timed(datadistill(*zoo, "--n_nets", n, "--phase", phase, *common))
            print(proc.stdout.strip(), f"[{seconds:.0f} s wall]", flush=True)
        cmd = datadistill("--mode", "distill_adapt", "--source_dataset", "MNIST", "--dataset", "digits",
                          "--train_nets_type", "loaded", "--n_nets", "50", "--sample_n_nets", "4",
                          "--test_nets_type", "loaded", "--test_n_nets", "20", "--epochs", args.epochs, *common)
        print("command: datadistill " + " ".join(cmd[3:]), flush=True)
        seconds, proc = timed(cmd)
        print(proc.stdout.strip())
        rows = json.loads((Path(results) / "metrics.json").read_text())["adaptation"]
    distilled = rows["distilled (learned step sizes)"]["mean"]
    for name in ("no adaptation", "random real (best fixed step size)"):
        print(f"distilled beats {name} by {100 * (distilled - rows[name]['mean']):.2f} points")
    print(f"adaptation run: {seconds:.0f} s wall")


if __name__ == "__main__":
    main()
