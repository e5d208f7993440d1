"""Keep freed memory in the process on a CPU (glibc), instead of returning each large block to the system.

glibc serves every block over its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it
on free, so each new large tensor costs page faults that zero its pages again. A Loci-s training chunk
allocates many trace-sized tensors (B·O x C x C floats, 64 MiB at B·O = 16, C = 1024): on the 2-core CPU
machine that was more than half of its CPU time. With mmap off and a high trim threshold, freed blocks
are reused; the numbers computed do not change, only where the memory comes from. The same effect for
any command: ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 loci-fast ...``.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes: keep up to 2 GiB of free heap top


def keep_freed_memory() -> bool:
    """Turn glibc's mmap for large blocks off and raise its trim threshold; False where there is no
    glibc ``mallopt`` (macOS, musl) or it refuses, and then nothing changes."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
