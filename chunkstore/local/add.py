"""Adding a file: chunk, hash, compress and store it, streaming with bounded memory."""

from __future__ import annotations

import os
import stat as statmod
from collections.abc import Callable
from pathlib import Path

from chunkstore.errors import InputError
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


def add_file(
    store: Store,
    path: Path | str,
    *,
    name: str | None = None,
    level: int = DEFAULT_LEVEL,
    chunker: ChunkerParams | None = None,
    progress: Progress | None = None,
) -> AddResult:
    """Add the file at `path` to `store` under `name` (default: the file's base name)."""
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
        manifest = Manifest(size=sum(r.size for r in refs), chunker=chunker, chunks=tuple(refs))
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
