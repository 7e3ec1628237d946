"""Seconds of one outer iteration of dm and of gm at the papers' shapes, on one device.

- dm: one step of distribution matching with DSA without flips (the preset's): a fresh ConvNet,
  ``--real_per_class`` real images of each of 10 classes and ``--ipc`` synthetic ones embedded, the
  loss's backward to the images.
- gm: one image update of gradient matching with DSA (the paper's), split into its two parts: the
  kept network's ``--inner_steps`` SGD steps on the synthetic set, and the matching (each class's
  real and synthetic gradients, the distance, its backward to the images).

These are the iterations ``benchmarks/methods.py --paper`` runs 20000 (dm) and 10000 (gm) of; their
time says what fits a device window. The images are noise of MNIST's shape (1 x 28 x 28): only the
shapes matter. Prints the median over ``--steps`` iterations after two warm-up ones and, on a
CUDA device, how many times one more iteration of each part made the host wait for the device
(the synchronisations ``torch.cuda.set_sync_debug_mode`` reports): each one stops the host from
queueing work ahead of the device, which is where a loop of small kernels loses its time.

``--compile``: dm's embeddings and gm's network steps through ``torch.compile``, as ``--compile``
runs them (the compiles happen in the warm-up).

    python benchmarks/method_steps.py [--device cuda] [--width 128] [--steps 30] [--real_per_class 256]
                                      [--ipc 10] [--inner_steps 50] [--threads 2] [--compile]
"""
import argparse
import statistics
import time
import warnings

import torch

from datadistill.config import MethodConfig, SyntheticConfig
from datadistill.methods.dm import Dm
from datadistill.methods.gm import Gm
from datadistill.models import build_model
from datadistill.nets import fresh_nets
from datadistill.synthetic import LearnableSet

CLASSES = 10
WARM_UP = 2


def median_after_warm_up(seconds: list[float]) -> float:
    return statistics.median(seconds[WARM_UP:])


def host_waits(work, device: torch.device) -> int | None:
    """How many times ``work()`` made the host wait for the CUDA device; None on other devices."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            work()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--steps", type=int, default=30, help="timed iterations of each, after two warm-up ones")
    p.add_argument("--real_per_class", type=int, default=256)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--inner_steps", type=int, default=50, help="gm's network steps between image updates")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--compile", action="store_true",
                   help="dm's embeddings and gm's network steps through torch.compile")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    generator = torch.Generator().manual_seed(0)
    model = build_model("ConvNet", 1, 28, CLASSES, width=args.width).to(device)
    real_x = torch.randn(CLASSES * args.real_per_class, 1, 28, 28, generator=generator).to(device)
    real_y = torch.arange(CLASSES).repeat(args.real_per_class).to(device)
    labels = torch.arange(CLASSES).repeat_interleave(args.ipc).unsqueeze(0)
    learned = LearnableSet(torch.randn(1, CLASSES * args.ipc, 1, 28, 28, generator=generator), labels, None,
                           CLASSES, (0.0,), (1.0,)).to(device)
    n = WARM_UP + args.steps

    dm = Dm(model, ipc=args.ipc, augment="dsa-noflip", compiled=args.compile)
    dm_seconds = []
    for i in range(n):
        sync()
        start = time.perf_counter()
        nets = fresh_nets(model, "default", 1.0, [i], device)
        dm.loss(learned, nets, real_x, real_y, 1).objective.backward()
        sync()
        dm_seconds.append(time.perf_counter() - start)
    dm_waits = host_waits(lambda: dm.loss(learned, fresh_nets(model, "default", 1.0, [n], device), real_x, real_y,
                                          1).objective.backward(), device)

    gm = Gm(model, SyntheticConfig(ipc=args.ipc, image_init="real"),
            MethodConfig(augment="dsa", inner_steps=args.inner_steps), compiled=args.compile)
    gm.kept = fresh_nets(model, "default", 1.0, [0], device)
    inner, matching = [], []
    for _ in range(n):
        sync()
        start = time.perf_counter()
        gm.train_kept(learned)
        sync()
        middle = time.perf_counter()
        gm.matching(learned, real_x, real_y).backward()
        sync()
        inner.append(middle - start)
        matching.append(time.perf_counter() - middle)
    inner_waits = host_waits(lambda: gm.train_kept(learned), device)
    matching_waits = host_waits(lambda: gm.matching(learned, real_x, real_y).backward(), device)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} threads"
    print(f"{where}, torch {torch.__version__}; ConvNet width {args.width}, {args.real_per_class} real and "
          f"{args.ipc} synthetic images a class; median of {args.steps}")
    print(f"dm step{' (compiled embeddings)' if args.compile else ''}: {median_after_warm_up(dm_seconds):.4f} s")
    gm_inner, gm_matching = median_after_warm_up(inner), median_after_warm_up(matching)
    print(f"gm update{' (compiled network steps)' if args.compile else ''}: {gm_inner + gm_matching:.4f} s = "
          f"{args.inner_steps} inner steps {gm_inner:.4f} s "
          f"+ matching {gm_matching:.4f} s")
    if dm_waits is not None:
        print(f"host waits for the device: dm step {dm_waits}; gm update {inner_waits + matching_waits} = "
              f"inner steps {inner_waits} + matching {matching_waits}")


if __name__ == "__main__":
    main()
