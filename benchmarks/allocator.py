"""What the allocator switch buys: one command under three glibc malloc settings, side by side.

- `off`: glibc's defaults (blocks from 128 KiB mapped afresh and unmapped on free, freed heap
  above 128 KiB handed back);
- `trim-1gib`: mapping off, but freed heap above 1 GiB handed back (a high trim threshold in
  place of no trimming);
- `on`: `allocator.keep_freed_memory()` as the command line applies it (mapping and trimming off).

Each runs in a fresh process that sets the variant and then calls the CLI. Prints wall, user and
system seconds and peak RSS of each. The default command trains 10 ConvNets (width 32) for one
epoch on 10000 real MNIST images as mtt's experts: their activations (10 x 256 images x 32
channels x 32 x 32 floats, 335 MB) are above the 32 MiB mapping threshold, and a step frees more
than 1 GiB at once.

    python benchmarks/allocator.py [--threads 2] [-- datadistill flags ...]
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

from _common import require_mnist

DRIVER = """
import ctypes, ctypes.util, resource, sys
import datadistill.runtime as runtime
from datadistill.allocator import M_MMAP_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, MMAP_THRESHOLD_MAX
from datadistill.commands import main
mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
variant = sys.argv[1]
if variant == "off":
    runtime.keep_freed_memory = lambda: False
elif variant == "trim-1gib":
    runtime.keep_freed_memory = lambda: all(mallopt(*a) for a in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX),
                                                                (M_TRIM_THRESHOLD, 1 << 30), (M_MMAP_MAX, 0)))
code = main(sys.argv[2:])
print("peak_rss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="2", help="OMP_NUM_THREADS of the command")
    p.add_argument("flags", nargs="*", help="datadistill flags (default: 1 epoch of 10 mtt experts)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        flags = args.flags or ["train-zoo", "--trajectories", "--dataset", "MNIST", "--arch", "ConvNet",
                               "--width", "32", "--n_nets", "10", "--epochs", "1", "--val_size", "50000", "--dataset_root",
                               require_mnist(), "--no_progress"]
        env = {**os.environ, "OMP_NUM_THREADS": args.threads}
        print(f"command: datadistill {' '.join(flags)} (OMP_NUM_THREADS={args.threads})")
        print("| malloc | wall (s) | user (s) | system (s) | peak RSS (GB) |\n|---|---:|---:|---:|---:|")
        for variant in ("off", "trim-1gib", "on"):
            out = os.path.join(tmp, variant)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", DRIVER, variant, *flags, "--results_dir", out,
                                   *(["--zoo_dir", os.path.join(out, "zoo")] if flags[0] == "train-zoo" else [])],
                                  env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                sys.exit(f"{variant}: failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            peak = int(proc.stderr.rsplit("peak_rss_kib", 1)[1].split()[0])  # the driver's own, KiB
            print(f"| {variant} | {wall:.0f} | {after.ru_utime - before.ru_utime:.0f} | "
                  f"{after.ru_stime - before.ru_stime:.0f} | {peak / 2**20:.2f} |", flush=True)


if __name__ == "__main__":
    main()
