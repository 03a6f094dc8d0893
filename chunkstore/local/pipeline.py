"""An ordered, bounded map over a few worker threads.

blake3 and zstandard release the GIL, so two threads use both cores. Work is submitted a
chunk at a time (a chunk is ~1 MiB, so the hand-off cost is small next to the work) and
results come back in submission order; at most `window` items are in flight, which bounds
memory whatever the file size.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

A = TypeVar("A")
R = TypeVar("R")


def default_workers() -> int:
    return max(2, min(4, os.cpu_count() or 2))


def ordered_map(
    fn: Callable[[A], R],
    items: Iterable[A],
    *,
    workers: int | None = None,
    window: int | None = None,
) -> Iterator[R]:
    """Yield fn(item) for each item, in order, computed on `workers` threads.

    An exception from fn is raised here, in order, after the pending work is cancelled."""
    workers = workers or default_workers()
    window = window or 3 * workers
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="chunkstore") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


class BackgroundWriter:
    """Runs `write(batch)` for each submitted batch on one thread of its own, in order.

    Lets LMDB commits (disk writes) overlap the chunking and compressing that feed them. At
    most `depth` batches wait, which bounds memory; `submit` blocks when they do. The first
    error from `write` is raised by the next `submit` or by `close`.
    """

    def __init__(self, write: Callable[[A], R], depth: int = 2) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="chunkstore-writer")
        self._write = write
        self._depth = depth
        self._pending: deque[Future[R]] = deque()
        self.results: list[R] = []

    def _reap(self, keep: int) -> None:
        while len(self._pending) > keep:
            self.results.append(self._pending.popleft().result())

    def submit(self, batch: A) -> None:
        self._reap(self._depth - 1)  # block while `depth` batches are still pending
        self._pending.append(self._pool.submit(self._write, batch))

    def close(self) -> list[R]:
        """Wait for every batch; returns the results of `write`, in order."""
        try:
            self._reap(0)
        finally:
            for f in self._pending:
                f.cancel()
            self._pool.shutdown(wait=True)
        return self.results
