"""Leases: what a running operation (add, get, restore) needs the store to keep.

A lease is a file `HOME/leases/<random>.lease` that its operation holds an exclusive flock
on for as long as it runs, and to which it appends what it covers: records of one kind byte
(b"c" a chunk, b"m" a manifest and every chunk it lists) and a 32-byte id. Liveness is the
flock, not a process id: the kernel drops it the moment its holder exits, however it dies
(SIGKILL included), a reused pid holds nothing, and a pid namespace changes nothing. Each
lease is its own open file, so two leases of one process are independent (flock locks
belong to an open file, not to a process).

gc coordinates with leases through `HOME/gc.lock`: gc holds it exclusively from its first
reading of the leases to its last deletion, and re-reads the leases inside each deleting
transaction. An operation records what it covers *before* it looks at the store, then looks
while it holds gc.lock shared (briefly): so either no gc was running when it looked, and
every later gc sees its record, or it waits (a reader) or does not rely on what it saw (an
add stores the chunk again).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

LEASES_DIR = "leases"
GC_LOCK = "gc.lock"
GC_RUNNING = "gc.running"  # held by the one gc running on a home
COVER_CHUNK = b"c"
COVER_MANIFEST = b"m"
_ID_BYTES = 32
_RECORD = 1 + _ID_BYTES
_SUFFIX = ".lease"


def _open_lock(home: Path, name: str) -> int:
    return os.open(home / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def try_flock(fd: int, how: int) -> bool:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


@contextlib.contextmanager
def _exclusive(home: Path, name: str, wait: bool) -> Iterator[bool]:
    """Hold the lock file `name` exclusively; yields False instead when `wait` is off and
    another open file holds it."""
    fd = _open_lock(home, name)
    try:
        if wait:
            fcntl.flock(fd, fcntl.LOCK_EX)
        elif not try_flock(fd, fcntl.LOCK_EX):
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the open file drops its lock


def gc_exclusive(home: Path, *, wait: bool) -> contextlib.AbstractContextManager[bool]:
    """Hold gc.lock exclusively (what gc and the dropping of a released manifest do);
    yields False instead when `wait` is off and another process or thread holds it."""
    return _exclusive(home, GC_LOCK, wait)


def only_gc(home: Path) -> contextlib.AbstractContextManager[bool]:
    """Yields True while this is the only gc running on `home`, False at once if another is.
    Not gc.lock itself: operations hold that shared for a moment (an add checking a chunk),
    and a gc that tried it without waiting failed "another gc is running" when it met one."""
    return _exclusive(home, GC_RUNNING, wait=False)


class Lease:
    """One operation's hold on what it needs of a store. Thread-safe; `release` (or leaving
    the `with` block) ends it, and a process that dies ends its leases at once."""

    def __init__(self, home: Path) -> None:
        self.home = home
        folder = home / LEASES_DIR
        folder.mkdir(mode=0o700, exist_ok=True)
        while True:
            # Made under a temporary name and locked before it gets its final one: gc deletes
            # any unlocked file it finds, so a lease is never seen unlocked under its name.
            # gc may delete the temporary file before the lock is taken; the rename then
            # fails and we start again.
            token = secrets.token_hex(16)
            temporary = folder / f".{token}.new"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                os.rename(temporary, folder / f"{token}{_SUFFIX}")
            except FileNotFoundError:
                os.close(fd)
                continue
            break
        self.path = folder / f"{token}{_SUFFIX}"
        self._fd: int | None = fd
        self._gc_fd = _open_lock(home, GC_LOCK)
        self._gc_guard = threading.Lock()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def cover(self, kind: bytes, ids: Iterable[bytes]) -> None:
        """Record that this operation needs `ids` (chunks with COVER_CHUNK, manifests and
        their chunks with COVER_MANIFEST) kept; visible to gc when this returns."""
        data = b"".join(kind + i for i in ids if len(i) == _ID_BYTES)
        if data and self._fd is not None:
            os.write(self._fd, data)  # O_APPEND: one write, never interleaved with another

    @contextlib.contextmanager
    def no_gc_running(self, *, wait: bool) -> Iterator[bool]:
        """While inside, no gc runs on this home (yields True); without `wait`, yields
        False at once when a gc is running. Hold it only for a quick look at the store."""
        with self._gc_guard:  # one flock per open file: threads of this lease take turns
            if wait:
                fcntl.flock(self._gc_fd, fcntl.LOCK_SH)
            elif not try_flock(self._gc_fd, fcntl.LOCK_SH):
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(self._gc_fd, fcntl.LOCK_UN)

    def release(self) -> None:
        """End the lease (twice is harmless)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(fd)
        os.close(self._gc_fd)


@dataclass
class LeaseScan:
    """What the live leases of a home cover, read incrementally: each `read()` returns what
    was recorded since the last one, and deletes the files of leases whose holder is gone."""

    home: Path
    _offsets: dict[str, int] = field(default_factory=dict)
    _tails: dict[str, bytes] = field(default_factory=dict)

    def read(self) -> tuple[set[bytes], set[bytes]]:
        """(chunk ids, manifest ids) newly covered by live leases."""
        chunks: set[bytes] = set()
        manifests: set[bytes] = set()
        try:
            names = os.listdir(self.home / LEASES_DIR)
        except FileNotFoundError:
            return chunks, manifests
        for name in names:
            path = self.home / LEASES_DIR / name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # ended meanwhile
            try:
                if try_flock(fd, fcntl.LOCK_SH):
                    # Nobody holds it: its operation ended without deleting it (killed), or
                    # it is a lease still being made, whose maker then starts again.
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    self._offsets.pop(name, None)
                    continue
                if not name.endswith(_SUFFIX):
                    continue
                data = self._read_from(fd, name)
            finally:
                os.close(fd)
            for i in range(0, len(data), _RECORD):
                kind, oid = data[i : i + 1], data[i + 1 : i + _RECORD]
                (manifests if kind == COVER_MANIFEST else chunks).add(oid)
        return chunks, manifests

    def _read_from(self, fd: int, name: str) -> bytes:
        """The whole records appended to lease `name` since it was last read."""
        offset = self._offsets.get(name, 0)
        parts = []
        while block := os.pread(fd, 1 << 20, offset):
            parts.append(block)
            offset += len(block)
        data = b"".join(parts)
        whole = len(data) - len(data) % _RECORD  # a record being written is read next time
        self._offsets[name] = self._offsets.get(name, 0) + whole
        return data[:whole]


def live_manifests(home: Path) -> set[bytes]:
    """The manifest ids live leases of `home` cover now."""
    return LeaseScan(home).read()[1]
