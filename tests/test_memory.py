"""pneumodet.memory: large blocks come from the heap and stay there when freed, so the next step reuses
pages that are already mapped instead of a fresh mmap (and its page faults) each time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pneumodet.memory import ENV

# glibc's mallinfo2 while a 64 MiB block is alive and after it is freed, before and after keep_freed_memory():
# hblkhd is the bytes in mmapped blocks, fordblks the free bytes the heap keeps
SCRIPT = """
import ctypes, ctypes.util
from pneumodet.memory import keep_freed_memory

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def block():
    p = libc.malloc(64 << 20)
    mapped = libc.mallinfo2().hblkhd
    libc.free(p)
    return mapped >> 20, libc.mallinfo2().fordblks >> 20

print(*block(), keep_freed_memory(), *block(), keep_freed_memory())
"""


def _run(env: dict) -> list[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True,
                          env={**os.environ, **env}).stdout.split()


def _glibc() -> bool:
    import platform

    return platform.libc_ver()[0] == "glibc" and tuple(map(int, platform.libc_ver()[1].split(".")[:2])) >= (2, 33)


@pytest.mark.skipif(not _glibc(), reason="glibc's mallopt and mallinfo2 (2.33 or later)")
def test_large_blocks_come_from_the_heap_and_stay():
    mapped_before, free_before, changed, mapped_after, free_after, again = _run({ENV: "1"})
    assert int(mapped_before) >= 64 and int(free_before) < 64  # malloc as it was: its own mmap, unmapped on free
    assert changed == "True" and again == "True"  # a second call keeps the answer
    assert int(mapped_after) == 0 and int(free_after) >= 64  # from the heap, and kept there for the next step


@pytest.mark.skipif(not _glibc(), reason="glibc's mallopt and mallinfo2 (2.33 or later)")
def test_the_environment_turns_it_off():
    mapped_before, _, changed, mapped_after, free_after, _ = _run({ENV: "0"})
    assert changed == "False"
    assert int(mapped_after) >= 64 and int(free_after) < 64
