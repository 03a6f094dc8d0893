"""Adding a file: chunk, hash, compress and store it, streaming with bounded memory."""

from __future__ import annotations

import os
import stat as statmod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chunkstore.errors import InputChanged, InputError
from chunkstore.local.pipeline import BackgroundWriter, ordered_map
from chunkstore.local.store import Store
from chunkstore.objects.chunking import ChunkerParams, iter_chunks
from chunkstore.objects.codec import DEFAULT_LEVEL, ChunkCodec
from chunkstore.objects.ids import object_id
from chunkstore.objects.manifest import ChunkRef, Manifest
from chunkstore.objects.name_syntax import validate_name
from chunkstore.results import AddResult

# One LMDB transaction per this many stored bytes: big enough to amortise the commit,
# small enough that a kill loses little work and memory stays flat.
BATCH_BYTES = 4 * 1024 * 1024
# Chunks in flight: compressible chunks take ~5x longer than incompressible ones, and with
# a short window the workers idled (~40%) while the oldest chunk held up the ordered results.
INGEST_WINDOW = 16
# Input bytes between two releases of the store pages this process has mapped.
RELEASE_EVERY = 4 * 1024 * 1024

Progress = Callable[[int], None]


def open_input(path: Path) -> os.FileIO:
    """Open a regular file for reading, or raise InputError saying what is wrong with it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"no such file: {path}") from None
    except OSError as e:
        raise InputError(f"cannot access {path}: {e.strerror}") from None
    if statmod.S_ISDIR(st.st_mode):
        raise InputError(f"{path} is a directory: only single files can be added for now")
    if not statmod.S_ISREG(st.st_mode):
        raise InputError(f"{path} is not a regular file")
    try:
        return open(path, "rb", buffering=0)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None


@dataclass(frozen=True)
class FileState:
    """What tells one state of a regular file's contents from another without reading it."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileState:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def input_change(
    before: FileState, after: FileState, at_path: FileState | None, bytes_read: int
) -> str | None:
    """How a file read from `before` to `after` (its descriptor's states) changed, or None
    when what was read is the file as it was: same size, times and inode, as many bytes read
    as it holds, and still the file at its path (`at_path`; None: the path is gone).

    A write that lands within one tick of the file system's clock and keeps the size cannot
    be seen this way; restic and borg rely on the same states."""
    if after.size != before.size:
        return f"its size went from {before.size:,} to {after.size:,} bytes"
    if bytes_read != before.size:
        return f"{bytes_read:,} bytes were read of the {before.size:,} it held"
    # Before the times: unlinking the file read (to remove or replace it) changes its ctime.
    if at_path is None:
        return "it was removed"
    if (at_path.inode, at_path.device) != (before.inode, before.device):
        return "another file replaced it"
    if (after.mtime_ns, after.ctime_ns) != (before.mtime_ns, before.ctime_ns):
        return "it was modified"
    return None


def _state_at(path: Path) -> FileState | None:
    try:
        return FileState.of(os.stat(path))
    except OSError:
        return None


def add_file(
    store: Store,
    path: Path | str,
    *,
    name: str | None = None,
    level: int = DEFAULT_LEVEL,
    chunker: ChunkerParams | None = None,
    progress: Progress | None = None,
) -> AddResult:
    """Add the file at `path` to `store` under `name` (default: the file's base name).

    Raises InputChanged, storing no name, when the file changed while it was read (chunks
    already written stay until a gc frees them)."""
    path = Path(path)
    name = validate_name(name if name is not None else path.name)
    chunker = chunker or ChunkerParams()
    codec = ChunkCodec(level)

    def encode(raw: bytes) -> tuple[bytes, int, bytes | None]:
        cid = object_id(raw)
        # Skip compression for chunks the store already has: re-adding a file is cheap.
        # (kept by this add's lease from here on, so a gc cannot free it before the manifest)
        stored = None if store.keep_chunk(lease, cid) else codec.encode(raw)
        return cid, len(raw), stored

    refs: list[ChunkRef] = []
    batch: list[tuple[bytes, bytes]] = []
    batch_bytes = 0

    def write(items: list[tuple[bytes, bytes]]) -> tuple[int, int]:
        result = store.put_chunks(items)
        store.release_pages()  # the B-tree pages the commit touched: keep RSS flat
        return result

    # One batch committing while the next fills: memory stays at about two batches.
    writer = BackgroundWriter(write, depth=1)
    since_release = 0
    with open_input(path) as f, store.lease() as lease:
        before = FileState.of(os.fstat(f.fileno()))
        try:
            for cid, size, stored in ordered_map(
                encode, iter_chunks(f, chunker), window=INGEST_WINDOW
            ):
                refs.append(ChunkRef(cid, size))
                if stored is not None:
                    batch.append((cid, stored))
                    batch_bytes += len(stored)
                    if batch_bytes >= BATCH_BYTES:
                        writer.submit(batch)
                        batch, batch_bytes = [], 0
                since_release += size
                if since_release >= RELEASE_EVERY:
                    store.release_pages()  # store pages mapped by lookups: keep RSS flat
                    since_release = 0
                if progress:
                    progress(size)
            if batch:
                writer.submit(batch)
        except OSError as e:
            raise InputError(f"error reading {path}: {e.strerror}") from None
        finally:
            written = writer.close()
        total = sum(r.size for r in refs)
        change = input_change(before, FileState.of(os.fstat(f.fileno())), _state_at(path), total)
        if change is not None:
            raise InputChanged(str(path), change)
        manifest = Manifest(size=total, chunker=chunker, chunks=tuple(refs))
        mid = store.put_manifest(manifest, name=name)
    new = sum(n for n, _ in written)
    stored_bytes = sum(b for _, b in written)
    store.sync()
    return AddResult(
        name=name,
        manifest_id=mid.hex(),
        size=manifest.size,
        chunks=len(refs),
        new_chunks=new,
        dedup_chunks=len(refs) - new,
        stored_bytes=stored_bytes,
    )
