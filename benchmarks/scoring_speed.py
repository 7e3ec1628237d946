"""Speed of from-scratch scoring on a CPU: networks stacked (vmap) against one after another, and
one after another with the loss through ``torch.compile`` (``--compile``).

Trains 10 fresh ConvNets (width 32) from scratch on a synthetic set of MNIST-sized noise images,
as the dm / gm / mtt validation does (SGD, batches of 256, DSA without flips drawn per image),
once with all networks in one stacked chunk, once one network at a time (``scratch_chunk``'s
choice on a CPU) and once so compiled, alternating. Prints the fastest run's seconds per epoch of
the 10 networks and the minutes 1000 epochs take; the compile itself happens in a warm-up epoch
before the timed ones and is printed apart.

    python benchmarks/scoring_speed.py [--images 100,400] [--epochs 3] [--repeats 3] [--threads 2]
"""
import argparse
import time

import torch

from datadistill.augment import augmenter
from datadistill.data import Split
from datadistill.evaluate import evaluate_from_scratch
from datadistill.models import build_model
from datadistill.nets import fresh_nets
from datadistill.runtime import apply_process_switches
from datadistill.synthetic import SyntheticSet


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default="100,400", help="synthetic set sizes, comma-separated")
    p.add_argument("--nets", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each mode; the fastest counts")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    apply_process_switches()  # as the command line does
    model = build_model("ConvNet", 1, 28, 10, width=32)
    nets = fresh_nets(model, "default", 1.0, list(range(args.nets)), "cpu")
    test = Split(torch.randn(1000, 1, 28, 28), torch.arange(1000) % 10)
    augment = augmenter("dsa-noflip", siamese=False)
    print(f"{args.nets} ConvNets (width 32), batches of 256, dsa-noflip, {args.threads} threads")
    for n in (int(s) for s in args.images.split(",")):
        synthetic = SyntheticSet(torch.randn(1, n, 1, 28, 28), (torch.arange(n) % 10).view(1, n), torch.ones(1),
                                 (0.0,), (1.0,), 10)
        modes = {"stacked": (args.nets, False), "one by one": (1, False), "one by one, compiled": (1, True)}
        seconds = {name: [] for name in modes}
        warm_up = {}  # the first warm-up epoch of a compiled mode: its compile included
        for _ in range(args.repeats):  # alternated, so that a slow spell of the machine hits both
            for name, (chunk, compiled) in modes.items():
                def score(epochs):
                    evaluate_from_scratch(model, synthetic, nets, test, epochs, 0.01, 256,
                                          generator=torch.Generator().manual_seed(0), chunk_nets=chunk,
                                          augment=augment, compiled=compiled)
                t0 = time.perf_counter()
                score(1)  # warm-up: the first calls allocate and pick kernels (and compile)
                if compiled and name not in warm_up:
                    warm_up[name] = time.perf_counter() - t0
                t0 = time.perf_counter()
                score(args.epochs)
                seconds[name].append((time.perf_counter() - t0) / args.epochs)
        seconds = {name: min(times) for name, times in seconds.items()}  # the least disturbed run
        for name in modes:
            print(f"{n} images, {name}: {seconds[name]:.2f} s per epoch (best of {args.repeats}), "
                  f"{seconds[name] * 1000 / 60:.1f} min per 1000 epochs", flush=True)
        print(f"{n} images: one by one is {seconds['stacked'] / seconds['one by one']:.2f}x as fast as stacked; "
              f"compiled {seconds['one by one'] / seconds['one by one, compiled']:.2f}x as fast as one by one "
              f"(its first epoch, with the compile: {warm_up['one by one, compiled']:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
