"""Keep freed memory in the process for reuse instead of handing it back to the operating system.

glibc's malloc serves large blocks (a batch's feature maps and their gradients: tens of megabytes each) with a
fresh ``mmap`` and returns them with ``munmap`` when freed, so every step touches new pages and pays a page
fault per 4 KiB before it can write them. Raising the mmap threshold and the heap's trim threshold keeps those
blocks in the heap, where the next step reuses pages that are already mapped.

``pneumodet train`` calls it: training steps measured faster with it (docs/benchmarks-history.md: training
step). Inference is left as it is: ``pneumodet predict`` measured the same with and without it.

The cost is memory that stays reserved between steps (at most ``trim_mb`` of free heap per process). Set
``PNEUMODET_KEEP_FREED_MEMORY=0`` to leave malloc as it is. Elsewhere than glibc (macOS, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: set to 0 (or false/no/off) to leave malloc as it is
ENV = "PNEUMODET_KEEP_FREED_MEMORY"

_done: bool | None = None


def keep_freed_memory(mmap_mb: int = 512, trim_mb: int = 1024) -> bool:
    """Let blocks up to ``mmap_mb`` come from the heap and keep up to ``trim_mb`` of freed heap for reuse.

    Call once per process before the heavy work; later calls do nothing. Returns whether malloc was changed
    (False: turned off by the environment, or not glibc)."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, mmap_mb << 20) and mallopt(M_TRIM_THRESHOLD, trim_mb << 20))
    return _done
