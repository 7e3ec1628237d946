import platform
import subprocess
import sys

import pytest

from datadistill import allocator

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# In a fresh interpreter: bytes glibc maps for one 64 MiB malloc (above the 32 MiB ceiling of the
# mapping threshold, so only turning mapping off keeps it in the heap) (mallinfo2's hblkhd), with or
# without keep_freed_memory() first. mallinfo2 is glibc >= 2.33. The module is loaded from its
# file, without the package (and torch), whose freed imports would raise glibc's own threshold.
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
before = libc.mallinfo2().hblkhd
block = libc.malloc(64 << 20)
print(libc.mallinfo2().hblkhd - before)
libc.free(block)
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt and mallinfo2 are glibc's")
@pytest.mark.skipif(GLIBC and tuple(map(int, platform.libc_ver()[1].split(".")[:2])) < (2, 33),
                    reason="mallinfo2 needs glibc 2.33")
@pytest.mark.slow  # a fresh interpreter per measurement
def test_a_large_block_comes_from_the_heap_instead_of_fresh_pages():
    def mapped(mode):
        out = subprocess.run([sys.executable, "-c", MAPPED_FOR_ONE_BLOCK, mode, allocator.__file__],
                             capture_output=True, text=True, check=True).stdout
        return int(out)
    assert mapped("default") >= 64 << 20  # glibc's default: mapped afresh, unmapped on free
    assert mapped("keep") == 0


def test_elsewhere_nothing_is_changed(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
