"""The GPU table: on one CUDA device, the project's own commands with `--device cuda`.

Prints, each from a timed subprocess:
- per outer iteration at the original's settings (MNIST, LeNet, known_init, 1 step x 3 passes,
  batch 1024), as (3-epoch wall - 1-epoch wall) / iterations, beside the original's on the same
  GPU when its reference copy is present (`time-original ... --device_id 0`);
- the seed's fixed-init command (its defaults) and random-init command (`--test_n_nets 20`):
  wall time and test accuracy;
- 1 / 8 / 32 networks per iteration (`--n_nets`, vmapped) for one epoch of the random-init
  setting: wall, test accuracy over 20 fresh networks, accuracy per minute, peak GPU memory.
Written to finish within about 8 minutes on an H200-class GPU.

    python benchmarks/gpu.py [--skip-original] [--nets 1,8,32]
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import TIME_ORIGINAL, datadistill, require_mnist, timed

ORIGINAL = ["--mode", "distill_basic", "--dataset", "MNIST", "--arch", "LeNet", "--distill_steps", "1",
            "--train_nets_type", "known_init", "--n_nets", "1", "--test_nets_type", "same_as_train",
            "--batch_size", "1024", "--distill_epochs", "3", "--distill_lr", "0.02", "--val_size", "0"]
ITERATIONS_PER_EPOCH = 60000 // 1024  # the whole training split (--val_size 0) in batches of 1024
FIXED = ["--mode", "distill_basic", "--dataset", "MNIST", "--arch", "LeNet", "--distill_steps", "1",
         "--train_nets_type", "known_init", "--n_nets", "1", "--test_nets_type", "same_as_train"]
FRESH = ["--mode", "distill_basic", "--dataset", "MNIST", "--arch", "LeNet", "--test_n_nets", "20"]


def run(flags: list[str], root: str) -> tuple[float, dict]:
    """(wall seconds, metrics.json) of one `datadistill` run on the GPU."""
    with tempfile.TemporaryDirectory() as d:
        seconds, _ = timed(datadistill(*flags, "--device", "cuda", "--dataset_root", root, "--results_dir", d,
                                       "--no_progress"))
        return seconds, json.loads((Path(d) / "metrics.json").read_text())


def percent(metrics: dict) -> str:
    acc = metrics["final_accuracy"]
    return f"{100 * acc['mean']:.2f}% +- {100 * acc['std']:.2f} (n={acc['n']})"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-original", action="store_true")
    p.add_argument("--nets", default="1,8,32", help="networks per iteration to compare")
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs a GPU")
    root = require_mnist()
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    rows = []
    walls = {e: run([*ORIGINAL, "--epochs", str(e), "--skip_test"], root)[0] for e in (1, 3)}
    ours = (walls[3] - walls[1]) / (2 * ITERATIONS_PER_EPOCH)
    original = None
    if not args.skip_original and TIME_ORIGINAL.exists():
        orig = {}
        for e in (1, 3):
            _, proc = timed([str(TIME_ORIGINAL), sys.executable, str(e), "--device_id", "0"])
            orig[e] = float(proc.stdout.strip().splitlines()[-1].split(":")[1].split()[0])
        original = (orig[3] - orig[1]) / (2 * ITERATIONS_PER_EPOCH)
    rows.append(("per outer iteration at the original's settings", f"{original:.4f} s" if original else "-",
                 f"{ours:.4f} s", f"{original / ours:.2f}x" if original else "original not run"))
    print(rows[-1], flush=True)
    seconds, m = run(FIXED, root)
    rows.append(("the seed's fixed-init command (defaults)", "", f"{seconds:.0f} s, {percent(m)}",
                 f"{m['iterations']} iterations"))
    print(rows[-1], flush=True)
    seconds, m = run(FRESH, root)
    rows.append(("the seed's random-init command, --test_n_nets 20", "", f"{seconds:.0f} s, {percent(m)}",
                 f"{m['iterations']} iterations"))
    print(rows[-1], flush=True)
    for n in args.nets.split(","):
        seconds, m = run([*FRESH, "--n_nets", n, "--epochs", "1"], root)
        per_minute = 100 * m["final_accuracy"]["mean"] / (seconds / 60)
        rows.append((f"{n} networks per iteration, 1 epoch", "", f"{seconds:.0f} s, {percent(m)}",
                     f"{per_minute:.1f} points per minute; peak {m['peak_memory']['device'] / 2**30:.2f} GiB"))
        print(rows[-1], flush=True)
    print("\n| measured on one GPU, side by side | original | datadistill | note |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
