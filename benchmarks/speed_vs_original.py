"""Speed against the original code at its settings, side by side, per outer iteration.

Settings: MNIST, LeNet, known_init, distill_steps 1, distill_epochs 3, batch 1024, one net. Both
programs are timed as whole runs of 1 and 3 epochs (data loading, start-up and evaluation
included); the difference / 2 is the wall time of one epoch. Then our per-iteration time at batch
64, 256 and 1024 with a breakdown.

    python benchmarks/speed_vs_original.py [--skip-original]
"""
import argparse
import statistics
import sys
import tempfile
import time

import torch

from _common import TIME_ORIGINAL, datadistill, require_mnist, timed

ITERATIONS_PER_EPOCH = 60000 // 1024  # both programs: the whole training split (--val_size 0), batch 1024
SETTINGS = ["--mode", "distill_basic", "--dataset", "MNIST", "--arch", "LeNet", "--distill_steps", "1",
            "--train_nets_type", "known_init", "--n_nets", "1", "--test_nets_type", "same_as_train",
            "--batch_size", "1024", "--distill_epochs", "3", "--distill_lr", "0.02",
            "--device", "cpu", "--no_progress", "--no-learn_labels", "--val_size", "0"]  # the original's fixed labels


def per_epoch_ours(root: str) -> float:
    walls = {}
    for epochs in (1, 3):
        with tempfile.TemporaryDirectory() as d:
            walls[epochs], _ = timed(datadistill(*SETTINGS, "--epochs", str(epochs), "--dataset_root", root,
                                                 "--results_dir", d))
        print(f"datadistill, {epochs} epoch(s): {walls[epochs]:.1f} s wall", flush=True)
    return (walls[3] - walls[1]) / 2


def per_epoch_original() -> float:
    walls = {}
    for epochs in (1, 3):
        _, proc = timed([str(TIME_ORIGINAL), sys.executable, str(epochs)])
        line = proc.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        walls[epochs] = float(line.split(":")[1].split()[0])
    return (walls[3] - walls[1]) / 2


def breakdown(root: str, batch_sizes=(64, 256, 1024), reps: int = 30) -> None:
    """Per-iteration seconds of ``Distillation.step``, split as the step runs: the unrolled steps
    (forward through the synthetic GD, and later the backward through it), the real-batch
    forward/backward (chunked over the cores), and the Adam step."""
    from datadistill import data, models
    from datadistill.config import OuterConfig, SyntheticConfig
    from datadistill.distill import Distillation
    from datadistill.inner import batched_unroll
    from datadistill.methods.base import Setup
    from datadistill.methods.wang2018 import Relabel, Wang2018, real_batch_gradient
    from datadistill.nets import FixedNets
    from datadistill.runtime import Runtime, apply_process_switches

    apply_process_switches()  # as the command line does
    ds = data.load_dataset("MNIST", root, val_size=0)
    model = models.build_model("LeNet", 1, 28, 10)
    print(f"\nper iteration (median of {reps}), seconds:")
    print(f"{'batch':>6} {'total':>8} {'unrolled':>9} {'real f/b':>9} {'optim':>8}")
    for bs in batch_sizes:
        with Runtime("cpu") as runtime:
            g = torch.Generator().manual_seed(1)
            method = Wang2018(model, SyntheticConfig(steps=1, epochs=3), Relabel(), "basic", runtime)
            learned = method.initial(Setup(model, ds.train, None, 10, ds.mean, ds.std, torch.device("cpu"), g, 1))
            nets = FixedNets(model, "xavier", 1.0, 1, "cpu", g)
            run = Distillation(method, learned, nets, OuterConfig(batch_size=bs, lr=0.01), ds.train, g)
            x, y = ds.train.x[:bs], ds.train.y[:bs]
            run.step(x, y)
            rows = []
            for rep in range(reps + 3):
                t0 = time.perf_counter()
                run.optimizer.zero_grad(set_to_none=True)
                with method.backward_context(learned):  # as Wang2018.loss runs it
                    trained = batched_unroll(model, nets.sample(g), learned.images, learned.targets(), learned.lrs())
                t1 = time.perf_counter()
                with method.pool.cores_to_chunks():
                    loss, grads = real_batch_gradient(method.pool, trained, x, y, 1)
                t2 = time.perf_counter()
                with method.backward_context(learned):
                    torch.autograd.backward(list(trained.values()), [grads[k] for k in trained],
                                            inputs=learned.tensors())
                t3 = time.perf_counter()
                run.optimizer.step()
                run.scheduler.step()
                t4 = time.perf_counter()
                if rep >= 3:
                    rows.append((t4 - t0, (t1 - t0) + (t3 - t2), t2 - t1, t4 - t3))
            med = [statistics.median(c) for c in zip(*rows)]
            print(f"{bs:>6} {med[0]:8.4f} {med[1]:9.4f} {med[2]:9.4f} {med[3]:8.4f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-original", action="store_true")
    args = p.parse_args()
    root = require_mnist()
    torch.set_num_threads(2)
    ours = per_epoch_ours(root)
    print(f"datadistill: {ours:.2f} s per epoch, {ours / ITERATIONS_PER_EPOCH:.4f} s per iteration")
    if not args.skip_original:
        orig = per_epoch_original()
        print(f"original:    {orig:.2f} s per epoch, {orig / ITERATIONS_PER_EPOCH:.4f} s per iteration")
        print(f"speed-up:    {orig / ours:.2f}x per outer iteration ((3-epoch wall - 1-epoch wall) / iterations)")
    breakdown(root)


if __name__ == "__main__":
    main()
