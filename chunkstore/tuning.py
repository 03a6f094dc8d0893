"""Process-wide tuning a program embedding chunkstore may opt into."""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def tune_allocator() -> None:
    """Keep large buffers on glibc's heap instead of fresh mmaps.

    Every chunk allocates a few MiB-sized buffers (read copy, compressed output, LMDB's
    overflow pages). Above its mmap threshold glibc maps fresh pages for each and unmaps them
    on free, and page faults on fresh memory made `add` up to ~2x slower on our 2-core
    machines. Reusing heap memory removes that; memory stays bounded by the pipeline window.
    A no-op where glibc is not the C library.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024 * 1024)
        libc.mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024)
    except (OSError, AttributeError):
        pass
