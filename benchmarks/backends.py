"""Speed of an mtt segment under each CPU convolution backend (``--conv_backend``).

One segment is what an mtt outer iteration computes: ``--steps`` unrolled SGD steps of one
network on the whole synthetic set (``--ipc`` x 10 images of ``--channels`` x ``--size`` x
``--size``, as one batch) and the backward of the matching loss through them to the images and the
step size. The default shape, 1 x 28 x 28, is MNIST's and also what ConvNet reads of the bundled
digits (upsampled from 8 x 8); CIFAR10's is ``--channels 3 --size 32``. Times it under oneDNN
(``mkldnn``) and PyTorch's native kernels, alternating, after one warm-up each; prints the median
seconds per segment and the ratio. The images are noise: only the shapes matter here.

    python benchmarks/backends.py [--arch ConvNet] [--width 32] [--ipc 10] [--channels 1] [--size 28]
                                  [--steps 50] [--repeats 3] [--threads 2]
"""
import argparse
import statistics
import time

import torch

from datadistill.backends import BACKENDS
from datadistill.inner import batched_unroll
from datadistill.methods.mtt import matching_loss
from datadistill.models import build_model
from datadistill.nets import fresh_nets
from datadistill.runtime import apply_process_switches


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="ConvNet")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--channels", type=int, default=1, help="image channels")
    p.add_argument("--size", type=int, default=28, help="image height and width, pixels")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    apply_process_switches()  # as the command line runs
    model = build_model(args.arch, args.channels, args.size, 10, width=args.width)
    start, target = (fresh_nets(model, "xavier", 1.0, [seed], "cpu") for seed in (0, 1))
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, 10 * args.ipc, args.channels, args.size, args.size, generator=generator).requires_grad_()
    labels = torch.arange(10).repeat_interleave(args.ipc)[None]
    lr = torch.tensor([0.01], requires_grad=True)

    def segment():
        trained = batched_unroll(model, start, images, labels, lr.expand(args.steps))
        matching_loss(trained, start, target).sum().backward()

    seconds = {name: [] for name in ("mkldnn", "native")}
    for name in seconds:  # warm-up: oneDNN builds its kernels on first use
        with BACKENDS[name]():
            segment()
    for _ in range(args.repeats):
        for name in seconds:
            with BACKENDS[name]():
                t0 = time.perf_counter()
                segment()
                seconds[name].append(time.perf_counter() - t0)
    print(f"{args.arch} width {args.width}, {10 * args.ipc} images of {args.channels} x {args.size} x "
          f"{args.size}, {args.steps} steps a segment, "
          f"{args.threads} threads: median of {args.repeats}")
    median = {name: statistics.median(s) for name, s in seconds.items()}
    for name, s in median.items():
        print(f"  {name}: {s:.2f} s a segment")
    print(f"  native / mkldnn: {median['native'] / median['mkldnn']:.2f}")


if __name__ == "__main__":
    main()
