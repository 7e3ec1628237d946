import platform
import subprocess
import sys

import pytest

from datadistill import allocator

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# In a fresh interpreter: bytes glibc maps for one malloc of argv[3] MiB (mallinfo2's hblkhd) and
# bytes of heap (arena) its free returns to the system, with or without keep_freed_memory() first.
# The block is never touched, so even a large one costs address space only. mallinfo2 is glibc >=
# 2.33. The module is loaded from its file, without the package (and torch), whose freed imports
# would raise glibc's own threshold.
MAPPED_FOR_ONE_BLOCK = """
import ctypes, importlib.util, sys
spec = importlib.util.spec_from_file_location("allocator", sys.argv[2])
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype = Info, ctypes.c_void_p
libc.malloc.argtypes, libc.free.argtypes = [ctypes.c_size_t], [ctypes.c_void_p]
if sys.argv[1] == "keep":
    assert allocator.keep_freed_memory()
size = int(sys.argv[3]) << 20
before = libc.mallinfo2()
block = libc.malloc(size)
during = libc.mallinfo2()
libc.free(block)
after = libc.mallinfo2()
# bytes mapped for the block, and bytes of heap its free handed back to the system
print(during.hblkhd - before.hblkhd, during.arena - after.arena)
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt and mallinfo2 are glibc's")
@pytest.mark.skipif(GLIBC and tuple(map(int, platform.libc_ver()[1].split(".")[:2])) < (2, 33),
                    reason="mallinfo2 needs glibc 2.33")
@pytest.mark.slow  # a fresh interpreter per measurement
def test_a_large_block_comes_from_the_heap_and_stays_there_when_freed():
    def mapped_and_returned(mode, mib):
        out = subprocess.run([sys.executable, "-c", MAPPED_FOR_ONE_BLOCK, mode, allocator.__file__, str(mib)],
                             capture_output=True, text=True, check=True).stdout
        return tuple(map(int, out.split()))
    # 64 MiB is above the 32 MiB ceiling of the mapping threshold: glibc's default maps it afresh
    assert mapped_and_returned("default", 64)[0] >= 64 << 20
    assert mapped_and_returned("keep", 64) == (0, 0)
    # 1.5 GiB (a step of 10 stacked ConvNets frees that much) is above a high trim threshold such
    # as 1 GiB; with trimming off the heap keeps it
    assert mapped_and_returned("keep", 1536) == (0, 0)


def test_elsewhere_nothing_is_changed(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
