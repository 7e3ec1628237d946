"""The test-phase table: a distilled MNIST set beside its baselines.

Reads a distilled set (MNIST, LeNet, unknown_init, 10 images per class, e.g. the one
benchmarks/unknown_init_mnist.py makes) and scores, over 20 fresh networks per run:
the set with its learned step sizes; random_train, average_train, kmeans_train and herding_train,
each with the fixed step size of a grid that scores best on the *validation* split
(``--score_on val``); and nearest_neighbor (k=1, L2). Only the kept rows are scored on the test
split.

With ``--from_scratch`` (a set of dm, gm or mtt) every row is scored by the later methods'
protocol instead: 10 fresh ConvNets of width 32 (PyTorch's default init) trained from scratch on
the set, so no step size is chosen; nearest neighbour rows as above.

    python benchmarks/test_phase_mnist.py DISTILLED.pt [--runs 5] [--from_scratch]
"""
import argparse
import json
import tempfile
from pathlib import Path

from _common import datadistill, require_mnist, timed

GRID = ("0.01", "0.03", "0.1", "0.3")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("distilled")
    p.add_argument("--runs", default="5")
    p.add_argument("--from_scratch", action="store_true", help="score every row from scratch on ConvNets")
    args = p.parse_args()
    root = require_mnist()
    nets = (["--arch", "ConvNet", "--width", "32", "--init", "default", "--protocol", "from_scratch",
             "--test_n_nets", "10"] if args.from_scratch else ["--arch", "LeNet", "--test_n_nets", "20"])
    # the networks' flags are refused where no network trains (nearest_neighbor): only --arch stays
    base = ["--mode", "distill_basic", "--dataset", "MNIST", *nets[:2], "--phase", "test",
            "--train_nets_type", "unknown_init", "--distilled", args.distilled, "--dataset_root", root]
    rows = {}
    total = 0.0
    with tempfile.TemporaryDirectory() as d:
        def score(images, lrs, runs="1", split="test"):
            nonlocal total
            trained = [] if lrs[0] == "nearest_neighbor" else [*nets[2:], "--test_nets_type", "unknown_init"]
            seconds, _ = timed(datadistill(*base, *trained, "--test_distilled_images", images, "--test_distilled_lrs",
                                           *lrs, "--test_n_runs", runs, "--results_dir", d, "--score_on", split))
            total += seconds
            row = json.loads((Path(d) / "results.json").read_text())["rows"][0]
            print(f"{images:>14} {' '.join(lrs):>22} on {split:>4}: {100 * row['mean']:6.2f}% +- "
                  f"{100 * row['std']:5.2f} (runs x nets {row['runs']} x {row['nets']})", flush=True)
            return row

        # from scratch, a set's step sizes play no part: "loaded" passes the set's own
        rows["distilled"] = score("loaded", ["loaded"])
        for images in ("random_train", "average_train", "kmeans_train", "herding_train"):
            runs = "1" if images in ("average_train", "herding_train") else args.runs  # deterministic
            if args.from_scratch:
                rows[images] = score(images, ["loaded"], runs)
                continue
            on_val = {lr: score(images, ["fix", lr], runs, "val")["mean"] for lr in GRID}
            best = max(GRID, key=on_val.get)
            rows[images] = score(images, ["fix", best], runs)
        rows["nearest_neighbor"] = score("loaded", ["nearest_neighbor", "1", "2"])
        rows["nearest_neighbor random_train"] = score("random_train", ["nearest_neighbor", "1", "2"], args.runs)
    print("\n| set | step sizes | accuracy (%) |\n|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['lrs']} | {100 * r['mean']:.2f} +- {100 * r['std']:.2f} |")
    d = rows["distilled"]["mean"]
    for name, r in rows.items():
        if name != "distilled":
            print(f"distilled - {name}: {100 * (d - r['mean']):+.2f} points")
    print(f"{total:.0f} s wall in all")


if __name__ == "__main__":
    main()
