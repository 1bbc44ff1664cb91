"""Keep freed activation buffers in the process instead of handing them back to the OS.

Why: a forward pass allocates and frees the same few MiB-sized tensors every call (in_proj's
output, u, Δ, y ...). glibc serves blocks above its mmap threshold with fresh mmap()s and returns
the heap top above its trim threshold, so every call pays page faults and zeroing again: at
L=4096 that measured 12.7 ms -> 7.7 ms for the whole 2-layer forward on 2 cores once both
thresholds are raised (perf: exc_page_fault, clear_page and munmap were ~15% of the samples).

    from kernels.cpu_memory import keep_freed_memory
    keep_freed_memory()                  # once, at process start (app.py, bench/, training.eval)
    keep_freed_memory(every_size=True)   # a training or analysis run that repeats one large shape

Process-wide, so it is opt-in and never done on import. By default blocks above MMAP_THRESHOLD (a
2^20-token trace's GiB-sized arrays) are still mmap()ed and returned on free, and at most
TRIM_THRESHOLD of freed heap is kept: right for a server whose requests differ.

every_size: no block is mmap()ed and up to MAX_TRIM of freed heap is kept, so RSS stays near the
peak. Training repeats one step whose activations are far above any mmap threshold (the 2-layer
Mamba-2 at batch 8, L = 16,384: 64-155 MiB each); with the default every step faulted in ~4 GB of
fresh zeroed pages (3.9M minor faults, 15 s of system time beside 11 s of user time per step on one
core), with every_size 10 s in all and ~0 faults after the first step (peak RSS 4.1 -> 5.6 GB).
A no-op where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4     # glibc's mallopt() parameter numbers
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 256 << 20
MAX_TRIM = (1 << 31) - 1                                         # mallopt takes an int
_DONE: set[bool] = set()


def keep_freed_memory(*, every_size: bool = False) -> bool:
    """Raise glibc's mmap and trim thresholds (once per mode); True if they were set.

    every_size: never mmap() a block and keep up to 2 GiB of freed heap (see the module docstring)."""
    if every_size in _DONE or True in _DONE:       # every_size already keeps more than the default
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if every_size:
        ok = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, MAX_TRIM))
    else:
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if ok:
        _DONE.add(every_size)
    return ok
