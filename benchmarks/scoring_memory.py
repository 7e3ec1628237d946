"""Peak host memory of scoring stacked networks on a split (``inner.batched_logits``): 10 fresh
ConvNets of width 32 on 5000 MNIST-sized images, the validation step of a dm / gm / mtt run.

    python benchmarks/scoring_memory.py [--nets 10] [--width 32] [--images 5000] [--chunk 2048]

Prints the peak resident set (MiB) before and after the call; ``--chunk`` is the (network, image)
pairs held at once (the default of ``batched_logits``; 20480 is what one 2048-image chunk of 10
networks used to hold).
"""
import argparse
import resource

import torch

from datadistill.inner import batched_logits
from datadistill.models import build_model
from datadistill.nets import fresh_nets


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", type=int, default=10)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--chunk", type=int, default=2048)
    args = p.parse_args()
    model = build_model("ConvNet", 1, 28, 10, width=args.width)
    nets = fresh_nets(model, "xavier", 1.0, list(range(args.nets)), "cpu")
    x = torch.randn(args.images, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    before = peak_mib()
    batched_logits(model, nets, x, images=args.chunk)
    print(f"{args.nets} ConvNets (width {args.width}) on {args.images} images, chunk {args.chunk} pairs: "
          f"peak RSS {peak_mib():.0f} MiB (before the call {before:.0f} MiB)")


if __name__ == "__main__":
    main()
