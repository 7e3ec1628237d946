"""Keeping freed memory in the process, for a loop that allocates the same buffers every step.

glibc's malloc serves large blocks (from 128 KiB, rising with use to at most 32 MiB) by mapping
fresh pages, and hands freed memory at the top of the heap back to the system once more than a
threshold (128 KiB by default) is free. A distillation step allocates and frees the same
few-hundred-KiB to few-MiB buffers (im2col columns of the unrolled convolutions, activations of
the real batch) thousands of times, so each allocation can page-fault afresh, and the kernel
zero-fills every fresh page (784 KB for the columns of LeNet's first layer on 10 images). Raising
the mapping threshold and turning trimming off keeps those pages in the heap for reuse, so the
steps stop paying for page faults and zero-fill. Trimming is off rather than set high: one step
of 10 stacked ConvNets (width 32) on 256 MNIST images frees well over 1 GiB at once, so a
threshold of 1 GiB still handed it back and faulted it in again every step.
Blocks above 32 MiB (one activation of 5 stacked ConvNets on 256 MNIST images, 5 x 256 x 32 x
32 x 32 floats, is 168 MB) are mapped whatever the threshold, so mapping is turned off
(``M_MMAP_MAX`` 0) and every block comes from the heap: without it, training such networks spent
as much time in the kernel as in user code. The cost is that the process keeps its peak memory
until it exits, which a training run does anyway.

Process-wide, so only the command line calls it; Python users may call it themselves.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's own ceiling for it on 64-bit; older glibc refuses more
TRIM_THRESHOLD = -1  # mallopt(3): -1 turns trimming off


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve every block from the heap (no mapping; the threshold first, in
    case a C library refuses to turn mapping off) and to keep all freed memory instead of returning
    it. True if applied; False (and nothing changed) where the C library is not glibc
    or offers no ``mallopt``."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success, 0 when it refuses a value
    return (bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            and bool(mallopt(M_MMAP_MAX, 0)))
