"""Restoring a file from the local store: read, decompress, verify and write in parallel."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from chunkstore.errors import NotFound
from chunkstore.local.output import Output, PartialLog, atomic_output
from chunkstore.local.pipeline import ordered_map
from chunkstore.local.store import Store
from chunkstore.objects.codec import ChunkCodec
from chunkstore.objects.manifest import ChunkRef, Manifest

Progress = Callable[[int], None]
# Bytes restored between two releases of the store pages this process has mapped.
RELEASE_EVERY = 16 * 1024 * 1024


def _seekable_fd(out: BinaryIO) -> int | None:
    """The descriptor of `out` when chunks can be written at their offsets (a regular file)."""
    try:
        fd = out.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (OSError, AttributeError, ValueError):
        return None


def write_to_stream(
    store: Store, manifest: Manifest, out: BinaryIO, progress: Progress | None = None
) -> None:
    """Write the file described by `manifest` to the stream `out`, verifying every chunk.

    Into a regular file the worker threads write each chunk at its offset themselves, so the
    write system calls (a large share of a restore's time) run on both cores; a pipe or
    terminal gets the chunks in order from this thread.
    Raises CorruptChunk naming the first chunk whose stored bytes do not match its id or
    whose length is not the one the manifest declares."""
    codec = ChunkCodec()
    out.flush()
    fd = _seekable_fd(out)
    base = out.tell() if fd is not None else 0

    def load(item: tuple[int, ChunkRef]) -> tuple[int, bytes | memoryview | None]:
        offset, ref = item
        stored = store.get_stored(ref.chunk_id)
        if stored is None:
            raise NotFound(f"chunk {ref.chunk_id.hex()} is missing from the store")
        # The manifest's size too: a chunk shorter than declared would leave a hole of zeros.
        raw = codec.decode_verified(ref.chunk_id, stored, ref.size)
        if fd is None:
            return len(raw), raw
        os.pwrite(fd, raw, base + offset)
        return len(raw), None

    since_release = 0
    for size, raw in ordered_map(load, manifest.offsets()):
        if raw is not None:
            out.write(raw)
        since_release += size
        if since_release >= RELEASE_EVERY:
            store.release_pages()
            since_release = 0
        if progress:
            progress(size)
    if fd is not None:
        out.seek(base + manifest.size)


def restore(
    store: Store,
    manifest: Manifest,
    output: Output,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> str:
    """Write a file whose chunks are all in the store to a path (atomically) or a stream;
    returns how to show the output ("-" for a stream)."""
    if isinstance(output, Path):
        log = PartialLog(store.home)
        with atomic_output(output, force=force, key=manifest.id, log=log) as f:
            write_to_stream(store, manifest, f, progress)
        return str(output)
    write_to_stream(store, manifest, output, progress)
    output.flush()
    return "-"
