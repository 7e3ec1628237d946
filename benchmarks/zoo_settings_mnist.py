"""The settings that distil against a zoo of trained networks, on real MNIST.

Trains a zoo of --train_zoo + --val_nets train-phase and 20 test-phase LeNets on MNIST
(`train-zoo`; the last --val_nets of the train zoo are held out of distillation and score the
validation split, where presets are compared), then
- adaptation MNIST -> digits (the bundled dataset as the second domain): 10 images per class
  (10 steps x 1 per class, 3 passes) distilled from digits' training split against the train
  zoo; prints the report on the 20 test-zoo networks (no adaptation, distilled, random real digits
  with the fixed step size chosen on validation, full fine-tune bound) and the margins;
- attack on MNIST, class 0 -> 1: 10 images, one step; prints the per-class table, attack success
  and other-class accuracy before / after / baseline.
Each runs its preset (default: the paper's method, `zoo` and `attack`; the improved ones are
`--adapt_preset zoo-real --attack_preset attack-tuned`). The reports are on the test zoo and the
test split; the validation figure on the held-out networks; wall times are printed. A zoo trained
once is reused (and extended when it holds fewer networks) from --keep DIR.

    python benchmarks/zoo_settings_mnist.py [--train_zoo 50] [--val_nets 10] [--zoo_epochs 1]
        [--adapt_preset zoo] [--attack_preset attack] [--keep DIR] [--skip adapt,attack]
"""
import argparse
import json
import tempfile
from pathlib import Path

from _common import datadistill, require_mnist, timed


def run(cmd, results):
    print("command: datadistill " + " ".join(cmd[3:]), flush=True)
    seconds, proc = timed(cmd)
    print(proc.stdout.strip())
    metrics = json.loads((Path(results) / "metrics.json").read_text())
    val = metrics["validation"]
    print(f"validation ({metrics['validation_nets']}): {100 * val['mean']:.2f}% +- {100 * val['std']:.2f}"
          if val else "not validated")
    print(f"[{seconds:.0f} s wall]", flush=True)
    return metrics


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo_epochs", default="1", help="epochs each zoo network trains")
    p.add_argument("--adapt_preset", default="zoo")
    p.add_argument("--attack_preset", default="attack")
    p.add_argument("--train_zoo", default="50", help="train zoo networks to distil against (the test zoo has 20)")
    p.add_argument("--val_nets", default="10", help="train zoo networks held out for validation")
    p.add_argument("--keep", default=None, help="results folder to keep (default: a temporary one)")
    p.add_argument("--skip", default="", help="comma list of adapt,attack to skip")
    args = p.parse_args()
    root = require_mnist()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep or tmp)
        zoo_dir = str(base / "zoo")
        common = ["--arch", "LeNet", "--dataset_root", root, "--zoo_dir", zoo_dir, "--no_progress"]
        zoo = ["--mode", "train", "--dataset", "MNIST", "--epochs", args.zoo_epochs, "--lr", "1e-3",
               "--results_dir", str(base / "zoo_run")]
        # a zoo kept from an earlier run (--keep) is reused; train-zoo trains only what it lacks
        for phase, n in (("train", str(int(args.train_zoo) + int(args.val_nets))), ("test", "20")):
            seconds, proc = timed(datadistill(*zoo, "--n_nets", n, "--phase", phase, *common))
            print(proc.stdout.strip(), f"[{seconds:.0f} s wall]", flush=True)
        loaded = ["--train_nets_type", "loaded", "--n_nets", args.train_zoo, "--val_n_nets", args.val_nets,
                  "--sample_n_nets", "4",
                  "--test_nets_type", "loaded", "--test_n_nets", "20"]
        if "adapt" not in args.skip:
            out = str(base / "adapt")
            rows = run(datadistill("--mode", "distill_adapt", "--source_dataset", "MNIST", "--dataset", "digits",
                                   *loaded, "--preset", args.adapt_preset, "--results_dir", out, *common),
                       out)["adaptation"]
            distilled = rows["distilled (learned step sizes)"]["mean"]
            for name in ("no adaptation", "random real (best fixed step size)"):
                print(f"distilled beats {name} by {100 * (distilled - rows[name]['mean']):.2f} points")
        if "attack" not in args.skip:
            out = str(base / "attack")
            report = run(datadistill("--mode", "distill_attack", "--dataset", "MNIST", *loaded,
                                     "--attack_class", "0", "--target_class", "1", "--distill_steps", "1",
                                     "--preset", args.attack_preset, "--results_dir", out, *common), out)["attack"]
            drop = report["before"]["other_classes_accuracy"] - report["distilled"]["other_classes_accuracy"]
            print(f"attack success {100 * report['distilled']['attack_success']:.2f}% (baseline "
                  f"{100 * report['baseline']['attack_success']:.2f}%); other classes lose {100 * drop:.2f} points")


if __name__ == "__main__":
    main()
