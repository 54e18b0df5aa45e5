"""Low-memory allocator settings: freed memory goes back to the system promptly (lower peak RSS, a little slower).

polars' jemalloc keeps freed pages for up to 1.5 s by default (`dirty_decay_ms:500,muzzy_decay_ms:1000`),
and glibc's malloc, once a large block has been freed, serves later large blocks from heaps that it
seldom trims. `gdo build --low-memory` and `benchmarks/build.py --low-memory` turn both down; the
output bytes are the same. README.md ("Memory") gives the measured effect.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# Appended after polars' own defaults, so these win; a user's own _RJEM_MALLOC_CONF comes after them.
JEMALLOC_CONF = "dirty_decay_ms:100,muzzy_decay_ms:0,background_thread:true"
JEMALLOC_ENV = "_RJEM_MALLOC_CONF"  # read by polars when it is imported
MMAP_THRESHOLD_BYTES = 2**20  # glibc: blocks from 1 MiB up are mapped, and unmapped when freed
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def prefer_low_memory() -> list[str]:
    """Apply the low-memory allocator settings to this process; returns the parts that could not apply."""
    missed = []
    if "polars" in sys.modules:
        missed.append("polars' allocator (polars was imported before the setting)")
    else:
        own = os.environ.get(JEMALLOC_ENV)
        os.environ[JEMALLOC_ENV] = JEMALLOC_CONF + (f",{own}" if own else "")
    if not _set_mmap_threshold(MMAP_THRESHOLD_BYTES):
        missed.append("malloc's mmap threshold (not glibc)")
    return missed


def _set_mmap_threshold(size: int) -> bool:
    """glibc's `mallopt(M_MMAP_THRESHOLD, size)`, which also stops glibc from raising it; False elsewhere."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # no C library found, or not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, size) == 1
