"""Allocator settings for `gdo build`: freed memory goes back to the system sooner (lower peak RSS).

polars' jemalloc keeps freed pages for up to 1.5 s by default (`dirty_decay_ms:500,muzzy_decay_ms:1000`):
0.5 s as dirty pages, then 1 s as "muzzy" ones, which Linux still counts in the resident set.
`gdo build` turns the muzzy second off (`prefer_prompt_release`), which cost no measurable time,
and gives jemalloc one arena per 4 CPUs instead of 4 per CPU (`arenas_for`): the threads of a
build (polars' pool, the parse's reader, the writers) then reuse each other's freed pages.
glibc's malloc, once a large block has been freed, serves later large blocks from heaps that it
seldom trims; `gdo build --low-memory` (`prefer_low_memory`) also shortens the dirty time and fixes
glibc's mmap threshold, for a lower peak at some cost in time (and builds with
`build.build_subsets(low_memory=True)`: one pool file parsed at a time, texts kept on disk).
`benchmarks/build.py` builds the same way; the output bytes are the same. README.md ("Memory")
gives the measured effect.
"""

from __future__ import annotations

import ctypes
import os
import sys

# Appended after polars' own defaults, so these win; a user's own _RJEM_MALLOC_CONF comes after them.
# (polars' jemalloc already purges on a background thread, so background_thread is not needed)
# --low-memory: freed pages kept 0.1 s. The dirty time is wall time, so a faster machine frees more
# within it: on a quick machine (2026-11-30, 8 arenas) 0.25 s peaked at 344-366 MB at 230k QAs
# cold and 0.1 s at 327-352, cold 1M builds above 15x with both; on a slower one 0.25 s had peaked
# at 319-331 MB and made a cold 1M build 7-11% faster. polars' default 0.5 s peaked at 358 MB.
JEMALLOC_CONF = "dirty_decay_ms:100,muzzy_decay_ms:0"
DEFAULT_JEMALLOC_CONF = "muzzy_decay_ms:0"  # every `gdo build`
# jemalloc's default is 4 arenas per CPU, and a thread keeps to its arena: pages one thread frees
# are not reused by another's allocations. On 2 CPUs one arena (instead of 8) cut a cold 1M
# --low-memory build's page faults from 820-845k to 680-700k and its wall by 1-9% (3 interleaved
# pairs), and the 230k peaks by 10-20 MB in both settings. One per 4 CPUs keeps the arena lock
# uncontended on larger machines (not measured there).
CPUS_PER_ARENA = 4
JEMALLOC_ENV = "_RJEM_MALLOC_CONF"  # read by polars when it is imported
MMAP_THRESHOLD_BYTES = 2**20  # glibc: blocks from 1 MiB up are mapped, and unmapped when freed
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def arenas_for(cpus: int) -> int:
    """jemalloc arenas for a process that may run on `cpus` CPUs: one per CPUS_PER_ARENA, at least one."""
    return max(1, cpus // CPUS_PER_ARENA)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the platform tells it, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


def default_conf() -> str:
    """The jemalloc settings of every `gdo build` on this machine."""
    return f"{DEFAULT_JEMALLOC_CONF},narenas:{arenas_for(usable_cpus())}"


def low_memory_conf() -> str:
    """The jemalloc settings of `gdo build --low-memory` on this machine."""
    return f"{JEMALLOC_CONF},narenas:{arenas_for(usable_cpus())}"


def prefer_prompt_release() -> list[str]:
    """Apply `gdo build`'s default allocator setting to this process; returns the parts that could not apply."""
    return _jemalloc_conf(default_conf())


def prefer_low_memory() -> list[str]:
    """Apply the low-memory allocator settings to this process; returns the parts that could not apply."""
    missed = _jemalloc_conf(low_memory_conf())
    if not _set_mmap_threshold(MMAP_THRESHOLD_BYTES):
        missed.append("malloc's mmap threshold (not glibc)")
    return missed


def _jemalloc_conf(conf: str) -> list[str]:
    """Put conf before a user's own _RJEM_MALLOC_CONF (so theirs wins); missed if polars is loaded."""
    if "polars" in sys.modules:
        return ["polars' allocator (polars was imported before the setting)"]
    own = os.environ.get(JEMALLOC_ENV)
    os.environ[JEMALLOC_ENV] = conf + (f",{own}" if own else "")
    return []


def _set_mmap_threshold(size: int) -> bool:
    """glibc's `mallopt(M_MMAP_THRESHOLD, size)`, which also stops glibc from raising it; False elsewhere."""
    try:  # not glibc: macOS has no mallopt, Windows no CDLL(None)
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, size) == 1  # musl's mallopt does nothing and returns 0
