"""Keep freed activation buffers in the process instead of handing them back to the OS.

Why: a forward pass allocates and frees the same few MiB-sized tensors every call (in_proj's
output, u, Δ, y ...). glibc serves blocks above its mmap threshold with fresh mmap()s and returns
the heap top above its trim threshold, so every call pays page faults and zeroing again: at
L=4096 that measured 12.7 ms -> 7.7 ms for the whole 2-layer forward on 2 cores once both
thresholds are raised (perf: exc_page_fault, clear_page and munmap were ~15% of the samples).

    from kernels.cpu_memory import keep_freed_memory
    keep_freed_memory()          # once, at process start (app.py, bench/, training.eval)

Process-wide, so it is opt-in and never done on import. Blocks above MMAP_THRESHOLD (a 2^20-token
trace's GiB-sized arrays) are still mmap()ed and returned on free; at most TRIM_THRESHOLD of freed
heap is kept. A no-op where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # glibc's mallopt() parameter numbers
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 256 << 20
_DONE = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (once); True if they were set."""
    global _DONE
    if _DONE:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _DONE = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _DONE
