"""kdistill.allocator: freed memory kept in the process on glibc (checked in a child process,
so the test session keeps its own allocator)."""

import platform
import subprocess
import sys

import pytest

from kdistill.allocator import keep_freed_memory
from kdistill.errors import InputError

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# allocate 64 MiB, then ask glibc how much it holds in mmapped chunks (hblkhd)
PROBE = """
import ctypes, sys
from kdistill.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "apply" else False
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
buf = bytearray(64 * 2**20)
print(int(applied), libc.mallinfo2().hblkhd >= 64 * 2**20)
"""


def _probe(mode: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's")
def test_large_allocations_stay_in_the_heap_once_applied():
    assert _probe("leave") == ["0", "True"]  # glibc's default: a 64 MiB buffer is mmapped
    assert _probe("apply") == ["1", "False"]


def test_system_keeps_the_defaults_and_a_bad_value_is_one_line():
    assert keep_freed_memory({"KDISTILL_CPU_ALLOCATOR": "system"}) is False
    with pytest.raises(InputError, match=r"KDISTILL_CPU_ALLOCATOR='jemalloc'.*'system'"):
        keep_freed_memory({"KDISTILL_CPU_ALLOCATOR": "jemalloc"})
